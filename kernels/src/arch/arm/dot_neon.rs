//! AArch64 NEON kernels, plus `sdot` (FEAT_DotProd) integer dots.
//!
//! f32-activation dots widen the quants i8 → i16 → i32 → f32 (`sxtl`/`scvtf`) and
//! accumulate `Σ q·x` per block in 4-lane vectors, scaled by the block's scale into
//! independent accumulators. Integer dots use `smull`/`smlal2` (i8 × i8 → i16, two products
//! per lane: no overflow for |w| ≤ 128, |x| ≤ 127) and `sadalp` (pairwise → i32) on plain
//! NEON, and `sdot` (four i8 products into each i32 lane) with the dot-product extension.
//!
//! `sdot` is emitted with `asm!`: the `vdotq_s32` intrinsic is still unstable
//! (`stdarch_neon_dotprod`). f16 scales are widened with `fcvt` (base AArch64 FP) through
//! `asm!` too, since `float16x4_t`/`vcvt_f32_f16` are unstable.
//!
//! Safety scheme as in `avx2.rs`: safe `#[target_feature]` kernels, unsafe only in the
//! load helpers, the `asm!` wrappers and the entry points.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::kquant::get_scale_min_k4;
use crate::q4_0::BlockQ4_0;
use crate::q4_1::BlockQ4_1;
use crate::q4_k::BlockQ4K;
use crate::q5_0::BlockQ5_0;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_1::BlockQ8_1;
use crate::QK_K;
use half::f16;

/// Declares a safe entry point `$name` for the `#[target_feature]` kernel `$imp`, valid on
/// `$path` (and paths above it).
macro_rules! entry {
    ($path:ident: $name:ident => $imp:ident ($w:ident: $wt:ty, $x:ident: $xt:ty)) => {
        pub(crate) fn $name($w: $wt, $x: $xt) -> f32 {
            debug_assert!(crate::KernelPath::$path.is_available());
            // SAFETY: the selectors in simd/mod.rs hand this function out only for the
            // paths that include its target features (NEON: `Neon`, `NeonDotprod` and
            // `NeonI8mm`; `sdot` kernels: `NeonDotprod` and `NeonI8mm`, which requires
            // dotprod too), which are selected only when the CPU has them
            // (KernelPath::is_available).
            unsafe { $imp($w, $x) }
        }
    };
}

entry!(Neon: f32_f32 => f32_f32_impl(w: &[f32], x: &[f32]));
entry!(Neon: q4_0_f32 => q4_0_f32_impl(w: &[BlockQ4_0], x: &[f32]));
entry!(Neon: q4_1_f32 => q4_1_f32_impl(w: &[BlockQ4_1], x: &[f32]));
entry!(Neon: q5_0_f32 => q5_0_f32_impl(w: &[BlockQ5_0], x: &[f32]));
entry!(Neon: q8_0_f32 => q8_0_f32_impl(w: &[BlockQ8_0], x: &[f32]));
entry!(Neon: q4_k_f32 => q4_k_f32_impl(w: &[BlockQ4K], x: &[f32]));
entry!(Neon: q6_k_f32 => q6_k_f32_impl(w: &[BlockQ6K], x: &[f32]));
entry!(Neon: q4_0_q8_0 => q4_0_q8_0_impl(w: &[BlockQ4_0], x: &[BlockQ8_0]));
entry!(Neon: q4_1_q8_1 => q4_1_q8_1_impl(w: &[BlockQ4_1], x: &[BlockQ8_1]));
entry!(Neon: q8_0_q8_0 => q8_0_q8_0_impl(w: &[BlockQ8_0], x: &[BlockQ8_0]));
entry!(NeonDotprod: q4_0_q8_0_sdot => q4_0_q8_0_sdot_impl(w: &[BlockQ4_0], x: &[BlockQ8_0]));
entry!(NeonDotprod: q4_1_q8_1_sdot => q4_1_q8_1_sdot_impl(w: &[BlockQ4_1], x: &[BlockQ8_1]));
entry!(NeonDotprod: q8_0_q8_0_sdot => q8_0_q8_0_sdot_impl(w: &[BlockQ8_0], x: &[BlockQ8_0]));

// ----- helpers --------------------------------------------------------------------------

type X4 = [f32; 4];

#[inline(always)]
fn x32(xs: &[f32]) -> &[X4; 8] {
    let a: &[f32; 32] = xs.try_into().expect("32 activations");
    bytemuck::cast_ref(a)
}

#[inline(always)]
fn x256(xs: &[f32]) -> &[X4; 64] {
    let a: &[f32; QK_K] = xs.try_into().expect("256 activations");
    bytemuck::cast_ref(a)
}

#[inline]
#[target_feature(enable = "neon")]
fn ld4(a: &X4) -> float32x4_t {
    // SAFETY: `a` is 4 readable f32s; `ld1` has no alignment requirement beyond the element.
    unsafe { vld1q_f32(a.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn ldu8(a: &[u8; 16]) -> uint8x16_t {
    // SAFETY: `a` is 16 readable bytes.
    unsafe { vld1q_u8(a.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn lds8(a: &[i8; 16]) -> int8x16_t {
    // SAFETY: `a` is 16 readable bytes.
    unsafe { vld1q_s8(a.as_ptr()) }
}

#[inline(always)]
fn halves<T: bytemuck::Pod>(a: &[T; 32]) -> &[[T; 16]; 2] {
    bytemuck::cast_ref(a)
}

/// f16 → f32 (`fcvt s, h`, base AArch64 FP).
#[inline]
#[target_feature(enable = "neon")]
fn f16f(h: f16) -> f32 {
    let r: f32;
    // SAFETY: FCVT (half to single precision) is part of the base AArch64 FP ISA; the asm
    // only reads and writes the given registers.
    unsafe {
        asm!("fcvt {r:s}, {h:h}", r = lateout(vreg) r, h = in(vreg) h.to_bits() as i16,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// Four f32 vectors from 16 signed bytes.
#[inline]
#[target_feature(enable = "neon")]
fn i8_to_f32(v: int8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_s8(vget_low_s8(v));
    let hi = vmovl_high_s8(v);
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
        vcvtq_f32_s32(vmovl_high_s16(lo)),
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
        vcvtq_f32_s32(vmovl_high_s16(hi)),
    ]
}

/// Four f32 vectors from 16 unsigned bytes.
#[inline]
#[target_feature(enable = "neon")]
fn u8_to_f32(v: uint8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_u8(vget_low_u8(v));
    let hi = vmovl_high_u8(v);
    [
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
        vcvtq_f32_u32(vmovl_high_u16(lo)),
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
        vcvtq_f32_u32(vmovl_high_u16(hi)),
    ]
}

/// `Σ_k q[k] x[k]` over four vectors, as two independent chains added at the end.
#[inline]
#[target_feature(enable = "neon")]
fn dot4(q: &[float32x4_t; 4], x: &[X4]) -> float32x4_t {
    let a = vfmaq_f32(vmulq_f32(q[0], ld4(&x[0])), q[1], ld4(&x[1]));
    let b = vfmaq_f32(vmulq_f32(q[2], ld4(&x[2])), q[3], ld4(&x[3]));
    vaddq_f32(a, b)
}

/// Low and high nibbles of 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(v: uint8x16_t) -> (uint8x16_t, uint8x16_t) {
    (vandq_u8(v, vdupq_n_u8(0x0f)), vshrq_n_u8(v, 4))
}

// ----- f32 activations --------------------------------------------------------------------

#[target_feature(enable = "neon")]
fn f32_f32_impl(w: &[f32], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f32: length mismatch ({} vs {})", w.len(), x.len());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let (wc, xc) = (w.chunks_exact(16), x.chunks_exact(16));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        let a: &[X4; 4] = bytemuck::cast_ref::<[f32; 16], _>(a.try_into().unwrap());
        let b: &[X4; 4] = bytemuck::cast_ref::<[f32; 16], _>(b.try_into().unwrap());
        for k in 0..4 {
            acc[k] = vfmaq_f32(acc[k], ld4(&a[k]), ld4(&b[k]));
        }
    }
    let mut tail = 0.0f32;
    for (&a, &b) in wt.iter().zip(xt) {
        tail += a * b;
    }
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]))) + tail
}

#[target_feature(enable = "neon")]
fn q8_0_f32_impl(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q8_0_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        let xs = x32(xs);
        let d = f16f(b.d);
        let [q0, q1] = halves(&b.qs);
        let t0 = dot4(&i8_to_f32(lds8(q0)), &xs[0..4]);
        let t1 = dot4(&i8_to_f32(lds8(q1)), &xs[4..8]);
        acc[0] = vfmaq_n_f32(acc[0], t0, d);
        acc[1] = vfmaq_n_f32(acc[1], t1, d);
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

#[target_feature(enable = "neon")]
fn q4_0_f32_impl(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q4_0_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [vdupq_n_f32(0.0); 2];
    let c8 = vdupq_n_s8(8);
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        let xs = x32(xs);
        let d = f16f(b.d);
        let (lo, hi) = nibbles(ldu8(&b.qs));
        let lo = vsubq_s8(vreinterpretq_s8_u8(lo), c8);
        let hi = vsubq_s8(vreinterpretq_s8_u8(hi), c8);
        let t0 = dot4(&i8_to_f32(lo), &xs[0..4]);
        let t1 = dot4(&i8_to_f32(hi), &xs[4..8]);
        acc[0] = vfmaq_n_f32(acc[0], t0, d);
        acc[1] = vfmaq_n_f32(acc[1], t1, d);
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

/// Q4_1 · f32: weights dequantized in registers (`q d + m`, one FMA) into 4 accumulators.
#[target_feature(enable = "neon")]
fn q4_1_f32_impl(w: &[BlockQ4_1], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q4_1_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        let xs = x32(xs);
        let d = vdupq_n_f32(f16f(b.d));
        let m = vdupq_n_f32(f16f(b.m));
        let (lo, hi) = nibbles(ldu8(&b.qs));
        let (ql, qh) = (u8_to_f32(lo), u8_to_f32(hi));
        for k in 0..4 {
            acc[k] = vfmaq_f32(acc[k], vfmaq_f32(m, ql[k], d), ld4(&xs[k]));
            acc[k] = vfmaq_f32(acc[k], vfmaq_f32(m, qh[k], d), ld4(&xs[4 + k]));
        }
    }
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
}

/// Q5_0 · f32: the fifth bits are spread to bytes with `cmtst` against a bit pattern.
#[target_feature(enable = "neon")]
fn q5_0_f32_impl(w: &[BlockQ5_0], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q5_0_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [vdupq_n_f32(0.0); 2];
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = ldu8(&BITS);
    let b4 = vdupq_n_u8(0x10);
    let c16 = vdupq_n_s8(16);
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        let xs = x32(xs);
        let d = f16f(b.d);
        let (lo, hi) = nibbles(ldu8(&b.qs));
        let h0 = vcombine_u8(vdup_n_u8(b.qh[0]), vdup_n_u8(b.qh[1]));
        let h1 = vcombine_u8(vdup_n_u8(b.qh[2]), vdup_n_u8(b.qh[3]));
        let lo = vorrq_u8(lo, vandq_u8(vtstq_u8(h0, bits), b4));
        let hi = vorrq_u8(hi, vandq_u8(vtstq_u8(h1, bits), b4));
        let lo = vsubq_s8(vreinterpretq_s8_u8(lo), c16);
        let hi = vsubq_s8(vreinterpretq_s8_u8(hi), c16);
        acc[0] = vfmaq_n_f32(acc[0], dot4(&i8_to_f32(lo), &xs[0..4]), d);
        acc[1] = vfmaq_n_f32(acc[1], dot4(&i8_to_f32(hi), &xs[4..8]), d);
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

/// Q4_K · f32: per 32 quant bytes, sub-block `2c` (low nibbles) and `2c + 1` (high),
/// weights dequantized in registers as `q (d sc) - dmin m`.
#[target_feature(enable = "neon")]
fn q4_k_f32_impl(w: &[BlockQ4K], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK_K, x.len(), "vec_dot_q4_k_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK_K)) {
        let xs = x256(xs);
        let (d, dmin) = (f16f(b.d), f16f(b.dmin));
        let qs: &[[u8; 16]; 8] = bytemuck::cast_ref(&b.qs);
        for c in 0..4 {
            let (s0, m0) = get_scale_min_k4(2 * c, &b.scales);
            let (s1, m1) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (dl0, ml0) = (vdupq_n_f32(d * s0 as f32), vdupq_n_f32(-(dmin * m0 as f32)));
            let (dl1, ml1) = (vdupq_n_f32(d * s1 as f32), vdupq_n_f32(-(dmin * m1 as f32)));
            for k in 0..2 {
                // Bytes 32 c + 16 k ..: elements 64 c + 16 k .. (low), 64 c + 32 + 16 k .. (high).
                let (lo, hi) = nibbles(ldu8(&qs[2 * c + k]));
                let (ql, qh) = (u8_to_f32(lo), u8_to_f32(hi));
                let (xl, xh) = (16 * c + 4 * k, 16 * c + 8 + 4 * k);
                for j in 0..4 {
                    acc[j] = vfmaq_f32(acc[j], vfmaq_f32(ml0, ql[j], dl0), ld4(&xs[xl + j]));
                    acc[j] = vfmaq_f32(acc[j], vfmaq_f32(ml1, qh[j], dl1), ld4(&xs[xh + j]));
                }
            }
        }
    }
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
}

/// Q6_K · f32: 16 quants (one sub-block) at a time rebuilt bytewise from `ql` and `qh`.
#[target_feature(enable = "neon")]
fn q6_k_f32_impl(w: &[BlockQ6K], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK_K, x.len(), "vec_dot_q6_k_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let m4 = vdupq_n_u8(0x0f);
    let m30 = vdupq_n_u8(0x30);
    let c32 = vdupq_n_s8(32);
    for (b, xs) in w.iter().zip(x.chunks_exact(QK_K)) {
        let xs = x256(xs);
        let d = f16f(b.d);
        let ql: &[[u8; 16]; 8] = bytemuck::cast_ref(&b.ql);
        let qh: &[[u8; 16]; 4] = bytemuck::cast_ref(&b.qh);
        for h in 0..2 {
            for l in 0..2 {
                let qa = ldu8(&ql[4 * h + l]);
                let qb = ldu8(&ql[4 * h + 2 + l]);
                let hb = ldu8(&qh[2 * h + l]);
                let q = [
                    vorrq_u8(vandq_u8(qa, m4), vandq_u8(vshlq_n_u8(hb, 4), m30)),
                    vorrq_u8(vandq_u8(qb, m4), vandq_u8(vshlq_n_u8(hb, 2), m30)),
                    vorrq_u8(vshrq_n_u8(qa, 4), vandq_u8(hb, m30)),
                    vorrq_u8(vshrq_n_u8(qb, 4), vandq_u8(vshrq_n_u8(hb, 2), m30)),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    // Elements 128 h + 32 k + 16 l + (0..16): sub-block 8 h + 2 k + l.
                    let qk = vsubq_s8(vreinterpretq_s8_u8(qk), c32);
                    let xi = 32 * h + 8 * k + 4 * l;
                    let t = dot4(&i8_to_f32(qk), &xs[xi..xi + 4]);
                    acc[k] = vfmaq_n_f32(acc[k], t, d * b.scales[8 * h + 2 * k + l] as f32);
                }
            }
        }
    }
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
}

// ----- integer dots: plain NEON -----------------------------------------------------------

/// Four i32 sums of `w·x` over 16 byte pairs (`smull`/`smlal2` + `saddlp`).
#[inline]
#[target_feature(enable = "neon")]
fn dot16(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let p = vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(x)), w, x);
    vpaddlq_s16(p)
}

/// Four i32 sums over the 32 byte pairs of a block.
#[inline]
#[target_feature(enable = "neon")]
fn dot32(w: [int8x16_t; 2], x: &[i8; 32]) -> int32x4_t {
    let [x0, x1] = halves(x);
    vaddq_s32(dot16(w[0], lds8(x0)), dot16(w[1], lds8(x1)))
}

/// The 32 quants of a Q4_0 block minus 8, as signed bytes (elements 0..16, 16..32).
#[inline]
#[target_feature(enable = "neon")]
fn q4_0_bytes(qs: &[u8; 16]) -> [int8x16_t; 2] {
    let (lo, hi) = nibbles(ldu8(qs));
    let c8 = vdupq_n_s8(8);
    [vsubq_s8(vreinterpretq_s8_u8(lo), c8), vsubq_s8(vreinterpretq_s8_u8(hi), c8)]
}

/// The 32 quants of a Q4_1 block (0..=15) as bytes.
#[inline]
#[target_feature(enable = "neon")]
fn q4_1_bytes(qs: &[u8; 16]) -> [int8x16_t; 2] {
    let (lo, hi) = nibbles(ldu8(qs));
    [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)]
}

#[inline]
#[target_feature(enable = "neon")]
fn q8_bytes(qs: &[i8; 32]) -> [int8x16_t; 2] {
    let [a, b] = halves(qs);
    [lds8(a), lds8(b)]
}

#[target_feature(enable = "neon")]
fn q8_0_q8_0_impl(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q8_0_q8_0: block count mismatch");
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
        let p = vcvtq_f32_s32(dot32(q8_bytes(&bw.qs), &bx.qs));
        acc[i & 1] = vfmaq_n_f32(acc[i & 1], p, f16f(bw.d) * f16f(bx.d));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

#[target_feature(enable = "neon")]
fn q4_0_q8_0_impl(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q4_0_q8_0: block count mismatch");
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
        let p = vcvtq_f32_s32(dot32(q4_0_bytes(&bw.qs), &bx.qs));
        acc[i & 1] = vfmaq_n_f32(acc[i & 1], p, f16f(bw.d) * f16f(bx.d));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

#[target_feature(enable = "neon")]
fn q4_1_q8_1_impl(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q4_1_q8_1: block count mismatch");
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut ms = [0.0f32; 2];
    for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
        let p = vcvtq_f32_s32(dot32(q4_1_bytes(&bw.qs), &bx.qs));
        acc[i & 1] = vfmaq_n_f32(acc[i & 1], p, f16f(bw.d) * f16f(bx.d));
        ms[i & 1] += f16f(bw.m) * f16f(bx.s);
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1])) + (ms[0] + ms[1])
}

// ----- integer dots: sdot -----------------------------------------------------------------

/// `acc[i] += Σ_{j<4} a[4i + j] b[4i + j]` (SDOT Vd.4S, Vn.16B, Vm.16B).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SDOT is available (this function requires `dotprod`); the asm only reads
    // and writes the given vector registers.
    unsafe {
        asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
             options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot32(w: [int8x16_t; 2], x: &[i8; 32]) -> int32x4_t {
    let [x0, x1] = halves(x);
    sdot(sdot(vdupq_n_s32(0), w[0], lds8(x0)), w[1], lds8(x1))
}

#[target_feature(enable = "neon,dotprod")]
fn q8_0_q8_0_sdot_impl(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q8_0_q8_0: block count mismatch");
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
        let p = vcvtq_f32_s32(sdot32(q8_bytes(&bw.qs), &bx.qs));
        acc[i & 1] = vfmaq_n_f32(acc[i & 1], p, f16f(bw.d) * f16f(bx.d));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

#[target_feature(enable = "neon,dotprod")]
fn q4_0_q8_0_sdot_impl(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q4_0_q8_0: block count mismatch");
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
        let p = vcvtq_f32_s32(sdot32(q4_0_bytes(&bw.qs), &bx.qs));
        acc[i & 1] = vfmaq_n_f32(acc[i & 1], p, f16f(bw.d) * f16f(bx.d));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

#[target_feature(enable = "neon,dotprod")]
fn q4_1_q8_1_sdot_impl(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q4_1_q8_1: block count mismatch");
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut ms = [0.0f32; 2];
    for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
        let p = vcvtq_f32_s32(sdot32(q4_1_bytes(&bw.qs), &bx.qs));
        acc[i & 1] = vfmaq_n_f32(acc[i & 1], p, f16f(bw.d) * f16f(bx.d));
        ms[i & 1] += f16f(bw.m) * f16f(bx.s);
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1])) + (ms[0] + ms[1])
}
