//! x86-64 AVX2 + FMA + F16C kernels.
//!
//! Every kernel is a safe `#[target_feature]` function over typed blocks; the only
//! `unsafe` is in the small load helpers (which read fixed-size arrays, so the bounds are
//! in the types) and in the entry points, which call a `#[target_feature]` function and
//! rely on the selector in `simd/mod.rs` handing them out only when
//! `KernelPath::Avx2` (or `Avx512`, a superset) is available.
//!
//! f32-activation dots: per block, the quants are widened to i32 and converted to f32,
//! `Σ q·x` is formed in 8-lane vectors and scaled by the block's f16 scale (converted with
//! F16C) into independent lane accumulators. Integer dots follow the classic
//! `maddubs`/`madd` scheme: `|w|` (unsigned) times `sign(x, w)` (signed) in u8×i8 → i16
//! pairs (no saturation: |w| ≤ 128, |x| ≤ 127), then pairs of i16 → i32.

use core::arch::x86_64::*;

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

/// Declares a safe entry point `$name` for the `#[target_feature]` kernel `$imp`.
macro_rules! entry {
    ($name:ident => $imp:ident ($w:ident: $wt:ty, $x:ident: $xt:ty)) => {
        pub(crate) fn $name($w: $wt, $x: $xt) -> f32 {
            debug_assert!(crate::KernelPath::Avx2.is_available());
            // SAFETY: the selectors in simd/mod.rs hand this function out only for
            // KernelPath::Avx2/Avx512, which are selected only when the CPU has AVX2, FMA
            // and F16C (KernelPath::is_available).
            unsafe { $imp($w, $x) }
        }
    };
}

entry!(f32_f32 => f32_f32_impl(w: &[f32], x: &[f32]));
entry!(f16_f32 => f16_f32_impl(w: &[f16], x: &[f32]));
entry!(q4_0_f32 => q4_0_f32_impl(w: &[BlockQ4_0], x: &[f32]));
entry!(q4_1_f32 => q4_1_f32_impl(w: &[BlockQ4_1], x: &[f32]));
entry!(q5_0_f32 => q5_0_f32_impl(w: &[BlockQ5_0], x: &[f32]));
entry!(q8_0_f32 => q8_0_f32_impl(w: &[BlockQ8_0], x: &[f32]));
entry!(q4_k_f32 => q4_k_f32_impl(w: &[BlockQ4K], x: &[f32]));
entry!(q6_k_f32 => q6_k_f32_impl(w: &[BlockQ6K], x: &[f32]));
entry!(q4_0_q8_0 => q4_0_q8_0_impl(w: &[BlockQ4_0], x: &[BlockQ8_0]));
entry!(q4_1_q8_1 => q4_1_q8_1_impl(w: &[BlockQ4_1], x: &[BlockQ8_1]));
entry!(q8_0_q8_0 => q8_0_q8_0_impl(w: &[BlockQ8_0], x: &[BlockQ8_0]));

// ----- helpers --------------------------------------------------------------------------

/// Eight activations.
type X8 = [f32; 8];

/// Views a 32-element chunk of activations as four vectors' worth.
#[inline(always)]
pub(crate) fn x32(xs: &[f32]) -> &[X8; 4] {
    let a: &[f32; 32] = xs.try_into().expect("32 activations");
    bytemuck::cast_ref(a)
}

/// Views a 256-element chunk of activations as 32 vectors' worth.
#[inline(always)]
pub(crate) fn x256(xs: &[f32]) -> &[X8; 32] {
    let a: &[f32; QK_K] = xs.try_into().expect("256 activations");
    bytemuck::cast_ref(a)
}

#[inline]
#[target_feature(enable = "avx")]
pub(crate) fn ld8(a: &X8) -> __m256 {
    // SAFETY: `a` is 8 readable f32s; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn ld16b<T: bytemuck::Pod>(a: &[T; 16]) -> __m128i {
    const { assert!(core::mem::size_of::<T>() == 1) };
    // SAFETY: `a` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx")]
pub(crate) fn ld32b<T: bytemuck::Pod>(a: &[T; 32]) -> __m256i {
    const { assert!(core::mem::size_of::<T>() == 1) };
    // SAFETY: `a` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "sse2")]
fn ld8b<T: bytemuck::Pod>(a: &[T; 8]) -> __m128i {
    const { assert!(core::mem::size_of::<T>() == 1) };
    // SAFETY: `a` is 8 readable bytes; `loadl_epi64` reads exactly 8, unaligned.
    unsafe { _mm_loadl_epi64(a.as_ptr().cast()) }
}

/// Bytes ahead of the current block that the f32-activation kernels prefetch. The decode
/// matmul streams weight rows back to back, so this reaches into the next row(s): the
/// hardware prefetchers alone left the streaming kernels at ~40 % of their in-cache speed.
pub(crate) const PREFETCH: usize = 4096;

/// Prefetches the cache lines `PREFETCH` bytes past `*p` (one per 64 bytes of `T`) into
/// L1. A hint: any address is fine, nothing is dereferenced (`wrapping_add` keeps the
/// arithmetic defined; PREFETCHT0 never faults).
#[inline]
#[target_feature(enable = "sse")]
pub(crate) fn prefetch<T>(p: &T) {
    let a = (p as *const T).cast::<i8>().wrapping_add(PREFETCH);
    let mut off = 0;
    while off < core::mem::size_of::<T>() {
        _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(off));
        off += 64;
    }
}

/// f16 → f32 with F16C. (`set1` rather than `cvtsi32`: LLVM turns the latter into a
/// `vpinsrw` that merges into whatever register it picks — often an accumulator — which
/// chains every block to the previous one.)
#[inline]
#[target_feature(enable = "avx,f16c")]
pub(crate) fn f16f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16)))
}

/// f16 → f32 in all 8 lanes (`vpbroadcastw` + `vcvtph2ps`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn f16x8(h: f16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16))
}

#[inline]
#[target_feature(enable = "avx")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The low 8 signed bytes of `v` as f32.
#[inline]
#[target_feature(enable = "avx2")]
fn i8lo_ps(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

/// The high 8 signed bytes of `v` as f32.
#[inline]
#[target_feature(enable = "avx2")]
fn i8hi_ps(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)))
}

/// Low and high nibbles of 16 bytes: `(v & 15, v >> 4)` bytewise.
#[inline]
#[target_feature(enable = "sse2")]
fn nibbles(v: __m128i) -> (__m128i, __m128i) {
    let m4 = _mm_set1_epi8(0x0f);
    (_mm_and_si128(v, m4), _mm_and_si128(_mm_srli_epi16(v, 4), m4))
}

// ----- f32 activations --------------------------------------------------------------------

/// `Σ w x` over f32 rows (any length; the tail runs scalar).
#[target_feature(enable = "avx2,fma,f16c")]
fn f32_f32_impl(w: &[f32], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f32: length mismatch ({} vs {})", w.len(), x.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wc, xc) = (w.chunks_exact(32), x.chunks_exact(32));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        let (a, b) = (x32(a), x32(b));
        prefetch(a);
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(ld8(&a[k]), ld8(&b[k]), acc[k]);
        }
    }
    let mut v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let (wc, xc) = (wt.chunks_exact(8), xt.chunks_exact(8));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        v = _mm256_fmadd_ps(ld8(a.try_into().unwrap()), ld8(b.try_into().unwrap()), v);
    }
    let mut tail = 0.0f32;
    for (&a, &b) in wt.iter().zip(xt) {
        tail += a * b;
    }
    hsum(v) + tail
}

/// F16 weights · f32: 8 halves at a time through `vcvtph2ps`.
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_f32_impl(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_f16_f32: length mismatch ({} vs {})", w.len(), x.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wc, xc) = (w.chunks_exact(32), x.chunks_exact(32));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        let a: &[u8; 64] = bytemuck::cast_slice::<f16, u8>(a).try_into().unwrap();
        prefetch(a);
        let a: &[[u8; 16]; 4] = bytemuck::cast_ref(a);
        let b = x32(b);
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(_mm256_cvtph_ps(ld16b(&a[k])), ld8(&b[k]), acc[k]);
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut tail = 0.0f32;
    for (&a, &b) in wt.iter().zip(xt) {
        tail += f16f(a) * b;
    }
    hsum(v) + tail
}

/// Q8_0 · f32: `Σ q x` per block in two 8-lane halves, scaled by `d`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_f32_impl(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q8_0_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm256_setzero_ps(); 2];
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        prefetch(b);
        let xs = x32(xs);
        let d = f16x8(b.d);
        let q: &[[i8; 8]; 4] = bytemuck::cast_ref(&b.qs);
        let t0 = _mm256_mul_ps(i8lo_ps(ld8b(&q[0])), ld8(&xs[0]));
        let t0 = _mm256_fmadd_ps(i8lo_ps(ld8b(&q[1])), ld8(&xs[1]), t0);
        let t1 = _mm256_mul_ps(i8lo_ps(ld8b(&q[2])), ld8(&xs[2]));
        let t1 = _mm256_fmadd_ps(i8lo_ps(ld8b(&q[3])), ld8(&xs[3]), t1);
        acc[0] = _mm256_fmadd_ps(d, t0, acc[0]);
        acc[1] = _mm256_fmadd_ps(d, t1, acc[1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Q4_0 · f32: nibbles minus 8 as signed bytes, then as Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_f32_impl(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q4_0_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm256_setzero_ps(); 2];
    let c8 = _mm_set1_epi8(8);
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        prefetch(b);
        let xs = x32(xs);
        let d = f16x8(b.d);
        let (lo, hi) = nibbles(ld16b(&b.qs));
        let (lo, hi) = (_mm_sub_epi8(lo, c8), _mm_sub_epi8(hi, c8));
        let t0 = _mm256_mul_ps(i8lo_ps(lo), ld8(&xs[0]));
        let t0 = _mm256_fmadd_ps(i8hi_ps(lo), ld8(&xs[1]), t0);
        let t1 = _mm256_mul_ps(i8lo_ps(hi), ld8(&xs[2]));
        let t1 = _mm256_fmadd_ps(i8hi_ps(hi), ld8(&xs[3]), t1);
        acc[0] = _mm256_fmadd_ps(d, t0, acc[0]);
        acc[1] = _mm256_fmadd_ps(d, t1, acc[1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Q4_1 · f32: each weight dequantized in registers, `q d + m` (one FMA), then
/// multiplied into four lane accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_f32_impl(w: &[BlockQ4_1], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q4_1_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        prefetch(b);
        let xs = x32(xs);
        let d = f16x8(b.d);
        let m = f16x8(b.m);
        let (lo, hi) = nibbles(ld16b(&b.qs));
        let q = [i8lo_ps(lo), i8hi_ps(lo), i8lo_ps(hi), i8hi_ps(hi)];
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(_mm256_fmadd_ps(q[k], d, m), ld8(&xs[k]), acc[k]);
        }
    }
    hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

/// Q5_0 · f32: the fifth bit of element `j` is bit `j` of `qh`; lane `j` of an 8-lane
/// vector gets it with a variable shift of `qh` (pre-shifted so bit `j` lands on bit 4).
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_f32_impl(w: &[BlockQ5_0], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q5_0_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm256_setzero_ps(); 2];
    let shifts = [_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)];
    let bit4 = _mm256_set1_epi32(16);
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        prefetch(b);
        let xs = x32(xs);
        let d = f16x8(b.d);
        let qh = u32::from_le_bytes(b.qh);
        // Elements 0..16 use bits 0..16 (shifted up by 4), elements 16..32 bits 16..32.
        let hv = [_mm256_set1_epi32((qh << 4) as i32), _mm256_set1_epi32((qh >> 12) as i32)];
        let (lo, hi) = nibbles(ld16b(&b.qs));
        let nib = [lo, _mm_unpackhi_epi64(lo, lo), hi, _mm_unpackhi_epi64(hi, hi)];
        let mut q = [_mm256_setzero_ps(); 4];
        for k in 0..4 {
            let h = _mm256_and_si256(_mm256_srlv_epi32(hv[k / 2], shifts[k % 2]), bit4);
            let v = _mm256_sub_epi32(_mm256_or_si256(_mm256_cvtepu8_epi32(nib[k]), h), bit4);
            q[k] = _mm256_cvtepi32_ps(v);
        }
        let t0 = _mm256_fmadd_ps(q[1], ld8(&xs[1]), _mm256_mul_ps(q[0], ld8(&xs[0])));
        let t1 = _mm256_fmadd_ps(q[3], ld8(&xs[3]), _mm256_mul_ps(q[2], ld8(&xs[2])));
        acc[0] = _mm256_fmadd_ps(d, t0, acc[0]);
        acc[1] = _mm256_fmadd_ps(d, t1, acc[1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Q4_K · f32: per 32-byte group of quants (sub-blocks `2c` in the low nibbles, `2c + 1`
/// in the high ones), weights dequantized in registers as `q (d sc) - dmin m`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_f32_impl(w: &[BlockQ4K], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK_K, x.len(), "vec_dot_q4_k_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let m4 = _mm256_set1_epi32(15);
    for (b, xs) in w.iter().zip(x.chunks_exact(QK_K)) {
        prefetch(b);
        let xs = x256(xs);
        let (d, dmin) = (f16f(b.d), f16f(b.dmin));
        let qs: &[[u8; 8]; 16] = bytemuck::cast_ref(&b.qs);
        for c in 0..4 {
            let (s0, m0) = get_scale_min_k4(2 * c, &b.scales);
            let (s1, m1) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (dl0, ml0) = (_mm256_set1_ps(d * s0 as f32), _mm256_set1_ps(-(dmin * m0 as f32)));
            let (dl1, ml1) = (_mm256_set1_ps(d * s1 as f32), _mm256_set1_ps(-(dmin * m1 as f32)));
            for k in 0..4 {
                let z = _mm256_cvtepu8_epi32(ld8b(&qs[4 * c + k]));
                let ql = _mm256_cvtepi32_ps(_mm256_and_si256(z, m4));
                let qh = _mm256_cvtepi32_ps(_mm256_srli_epi32(z, 4));
                let a = k & 1;
                acc[a] = _mm256_fmadd_ps(_mm256_fmadd_ps(ql, dl0, ml0), ld8(&xs[8 * c + k]), acc[a]);
                acc[2 + a] = _mm256_fmadd_ps(_mm256_fmadd_ps(qh, dl1, ml1), ld8(&xs[8 * c + 4 + k]), acc[2 + a]);
            }
        }
    }
    hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

/// Q6_K · f32: 16 quants at a time are rebuilt bytewise from `ql` and `qh` (each group of
/// 16 is one sub-block), then `Σ q x` is scaled by `d sc`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_f32_impl(w: &[BlockQ6K], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK_K, x.len(), "vec_dot_q6_k_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let m4 = _mm_set1_epi8(0x0f);
    let m30 = _mm_set1_epi8(0x30);
    let c32 = _mm_set1_epi8(32);
    for (b, xs) in w.iter().zip(x.chunks_exact(QK_K)) {
        prefetch(b);
        let xs = x256(xs);
        let d = f16f(b.d);
        let ql: &[[u8; 16]; 8] = bytemuck::cast_ref(&b.ql);
        let qh: &[[u8; 16]; 4] = bytemuck::cast_ref(&b.qh);
        for h in 0..2 {
            for l in 0..2 {
                // Bytes l0 = 16 l .. 16 l + 16 of this half's ql/qh rows.
                let qa = ld16b(&ql[4 * h + l]);
                let qb = ld16b(&ql[4 * h + 2 + l]);
                let hb = ld16b(&qh[2 * h + l]);
                let q = [
                    _mm_or_si128(_mm_and_si128(qa, m4), _mm_and_si128(_mm_slli_epi16(hb, 4), m30)),
                    _mm_or_si128(_mm_and_si128(qb, m4), _mm_and_si128(_mm_slli_epi16(hb, 2), m30)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qa, 4), m4), _mm_and_si128(hb, m30)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qb, 4), m4), _mm_and_si128(_mm_srli_epi16(hb, 2), m30)),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    // Elements 128 h + 32 k + 16 l + (0..16): sub-block 8 h + 2 k + l.
                    let qk = _mm_sub_epi8(qk, c32);
                    let xi = 16 * h + 4 * k + 2 * l;
                    let t = _mm256_mul_ps(i8lo_ps(qk), ld8(&xs[xi]));
                    let t = _mm256_fmadd_ps(i8hi_ps(qk), ld8(&xs[xi + 1]), t);
                    let s = _mm256_set1_ps(d * b.scales[8 * h + 2 * k + l] as f32);
                    acc[k] = _mm256_fmadd_ps(s, t, acc[k]);
                }
            }
        }
    }
    hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

// ----- integer dots -----------------------------------------------------------------------

/// Eight i32 sums of four `w·x` products each, for signed bytes `w` and `x` (`x` must not
/// be -128 where `w` is -128: `sign(x, w)` would wrap).
#[inline]
#[target_feature(enable = "avx2")]
fn dot_i8(w: __m256i, x: __m256i) -> __m256i {
    let aw = _mm256_sign_epi8(w, w);
    let sx = _mm256_sign_epi8(x, w);
    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
}

/// The 32 nibbles of a Q4 block as bytes in element order (low nibbles, then high).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn q4_bytes(qs: &[u8; 16]) -> __m256i {
    let (lo, hi) = nibbles(ld16b(qs));
    _mm256_set_m128i(hi, lo)
}

/// The integer dots of the 32-element formats, shared by the AVX2 and AVX-512 modules: each
/// instantiation supplies its target features and its two byte-dot primitives, `dot_i8`
/// (signed × signed) and `dot_u8i8` (unsigned × signed), both giving eight i32 sums of four.
macro_rules! int_dots {
    ($feat:literal) => {
        #[target_feature(enable = $feat)]
        fn q8_0_q8_0_impl(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
            assert_eq!(w.len(), x.len(), "vec_dot_q8_0_q8_0: block count mismatch");
            let mut acc = [_mm256_setzero_ps(); 2];
            for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
                prefetch(bw);
                let p = _mm256_cvtepi32_ps(dot_i8(ld32b(&bw.qs), ld32b(&bx.qs)));
                let dd = _mm256_mul_ps(f16x8(bw.d), f16x8(bx.d));
                acc[i & 1] = _mm256_fmadd_ps(dd, p, acc[i & 1]);
            }
            hsum(_mm256_add_ps(acc[0], acc[1]))
        }

        #[target_feature(enable = $feat)]
        fn q4_0_q8_0_impl(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
            assert_eq!(w.len(), x.len(), "vec_dot_q4_0_q8_0: block count mismatch");
            let mut acc = [_mm256_setzero_ps(); 2];
            let c8 = _mm256_set1_epi8(8);
            for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
                prefetch(bw);
                let q = _mm256_sub_epi8(q4_bytes(&bw.qs), c8);
                let p = _mm256_cvtepi32_ps(dot_i8(q, ld32b(&bx.qs)));
                let dd = _mm256_mul_ps(f16x8(bw.d), f16x8(bx.d));
                acc[i & 1] = _mm256_fmadd_ps(dd, p, acc[i & 1]);
            }
            hsum(_mm256_add_ps(acc[0], acc[1]))
        }

        /// Q4_1 · Q8_1: unsigned nibbles straight into the u8 × i8 dot; the offset term `m s`
        /// is summed in two scalar chains.
        #[target_feature(enable = $feat)]
        fn q4_1_q8_1_impl(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
            assert_eq!(w.len(), x.len(), "vec_dot_q4_1_q8_1: block count mismatch");
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut ms = [0.0f32; 2];
            for (i, (bw, bx)) in w.iter().zip(x).enumerate() {
                prefetch(bw);
                let p = dot_u8i8(q4_bytes(&bw.qs), ld32b(&bx.qs));
                let dd = _mm256_mul_ps(f16x8(bw.d), f16x8(bx.d));
                acc[i & 1] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), acc[i & 1]);
                ms[i & 1] += f16f(bw.m) * f16f(bx.s);
            }
            hsum(_mm256_add_ps(acc[0], acc[1])) + (ms[0] + ms[1])
        }
    };
}
pub(crate) use int_dots;

/// Eight i32 sums of four `u·x` products each (`u` unsigned bytes, `x` signed).
#[inline]
#[target_feature(enable = "avx2")]
fn dot_u8i8(u: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
}

int_dots!("avx2,fma,f16c");
