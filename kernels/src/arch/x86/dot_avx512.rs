//! x86-64 AVX-512 (F/BW/VL + VNNI) kernels, where they beat the AVX2 ones.
//!
//! f32-activation dots on 4-bit quants use `vpermps` as a 16-entry lookup table: the
//! table holds the block's 16 dequantized values (`(i - 8) d`, `i d + m`, `i dl - ml`,
//! built with one multiply/FMA per block or sub-block), and the table index is the nibble
//! itself (`vpermps` ignores index bits above 3, so the low nibble needs no mask). This
//! replaces the per-element int→float conversion and scaling.
//!
//! Integer dots use VNNI `vpdpbusd` (u8 × i8, four products summed into each i32 lane,
//! no intermediate i16 saturation) on 256-bit vectors, one block per vector. (Measured on
//! Sapphire Rapids: on par with the AVX2 `maddubs` kernels, the per-block f16 scale work
//! dominates.) Types without a kernel here (Q8_0 · f32, Q5_0, Q6_K, F16) run the AVX2
//! ones: a 512-bit Q8_0 · f32 measured no faster.
//!
//! Safety scheme as in `avx2.rs`: safe `#[target_feature]` kernels, unsafe only in the
//! load helpers and the entry points.

use core::arch::x86_64::*;

use super::dot_avx2::{f16f, f16x8, hsum, ld16b, ld32b, prefetch, q4_bytes, x256, x32};
use crate::kquant::get_scale_min_k4;
use crate::q4_0::BlockQ4_0;
use crate::q4_1::BlockQ4_1;
use crate::q4_k::BlockQ4K;
use crate::q8_0::BlockQ8_0;
use crate::q8_1::BlockQ8_1;
use crate::QK_K;

/// Declares a safe entry point `$name` for the `#[target_feature]` kernel `$imp`.
macro_rules! entry {
    ($name:ident => $imp:ident ($w:ident: $wt:ty, $x:ident: $xt:ty)) => {
        pub(crate) fn $name($w: $wt, $x: $xt) -> f32 {
            debug_assert!(crate::KernelPath::Avx512.is_available());
            // SAFETY: the selectors in simd/mod.rs hand this function out only for
            // KernelPath::Avx512, which is selected only when the CPU has AVX-512
            // F/BW/VL/VNNI besides AVX2, FMA and F16C (KernelPath::is_available).
            unsafe { $imp($w, $x) }
        }
    };
}

entry!(f32_f32 => f32_f32_impl(w: &[f32], x: &[f32]));
entry!(q4_0_f32 => q4_0_f32_impl(w: &[BlockQ4_0], x: &[f32]));
entry!(q4_1_f32 => q4_1_f32_impl(w: &[BlockQ4_1], x: &[f32]));
entry!(q4_k_f32 => q4_k_f32_impl(w: &[BlockQ4K], x: &[f32]));
entry!(q4_0_q8_0 => q4_0_q8_0_impl(w: &[BlockQ4_0], x: &[BlockQ8_0]));
entry!(q4_1_q8_1 => q4_1_q8_1_impl(w: &[BlockQ4_1], x: &[BlockQ8_1]));
entry!(q8_0_q8_0 => q8_0_q8_0_impl(w: &[BlockQ8_0], x: &[BlockQ8_0]));

/// Sixteen activations.
type X16 = [f32; 16];

#[inline]
#[target_feature(enable = "avx512f")]
fn ld16(a: &X16) -> __m512 {
    // SAFETY: `a` is 16 readable f32s; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(a.as_ptr()) }
}

/// A 32-element chunk of activations as two 16-lane vectors' worth.
#[inline(always)]
fn x32w(xs: &[f32]) -> &[X16; 2] {
    bytemuck::cast_ref(x32(xs))
}

/// A 256-element chunk of activations as sixteen 16-lane vectors' worth.
#[inline(always)]
fn x256w(xs: &[f32]) -> &[X16; 16] {
    bytemuck::cast_ref(x256(xs))
}

/// f16 → f32 in all 16 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx2,f16c")]
fn f16x16(h: half::f16) -> __m512 {
    _mm512_cvtph_ps(_mm256_set1_epi16(h.to_bits() as i16))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn iota() -> __m512 {
    _mm512_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0)
}

// ----- f32 activations --------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn f32_f32_impl(w: &[f32], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f32: length mismatch ({} vs {})", w.len(), x.len());
    let mut acc = [_mm512_setzero_ps(); 4];
    let (wc, xc) = (w.chunks_exact(64), x.chunks_exact(64));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        let a: &[X16; 4] = bytemuck::cast_ref::<[f32; 64], _>(a.try_into().unwrap());
        prefetch(a);
        let b: &[X16; 4] = bytemuck::cast_ref::<[f32; 64], _>(b.try_into().unwrap());
        for k in 0..4 {
            acc[k] = _mm512_fmadd_ps(ld16(&a[k]), ld16(&b[k]), acc[k]);
        }
    }
    let mut v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let (wc, xc) = (wt.chunks_exact(16), xt.chunks_exact(16));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        v = _mm512_fmadd_ps(ld16(a.try_into().unwrap()), ld16(b.try_into().unwrap()), v);
    }
    let mut tail = 0.0f32;
    for (&a, &b) in wt.iter().zip(xt) {
        tail += a * b;
    }
    _mm512_reduce_add_ps(v) + tail
}

/// Q4_0 · f32: table `(i - 8) d`, looked up with the nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q4_0_f32_impl(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q4_0_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm512_setzero_ps(); 2];
    let levels = _mm512_sub_ps(iota(), _mm512_set1_ps(8.0));
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        prefetch(b);
        let xs = x32w(xs);
        let table = _mm512_mul_ps(levels, f16x16(b.d));
        let z = _mm512_cvtepu8_epi32(ld16b(&b.qs));
        let wl = _mm512_permutexvar_ps(z, table);
        let wh = _mm512_permutexvar_ps(_mm512_srli_epi32(z, 4), table);
        acc[0] = _mm512_fmadd_ps(wl, ld16(&xs[0]), acc[0]);
        acc[1] = _mm512_fmadd_ps(wh, ld16(&xs[1]), acc[1]);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Q4_1 · f32: table `i d + m`, looked up with the nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q4_1_f32_impl(w: &[BlockQ4_1], x: &[f32]) -> f32 {
    assert_eq!(w.len() * 32, x.len(), "vec_dot_q4_1_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm512_setzero_ps(); 2];
    let levels = iota();
    for (b, xs) in w.iter().zip(x.chunks_exact(32)) {
        prefetch(b);
        let xs = x32w(xs);
        let table = _mm512_fmadd_ps(levels, f16x16(b.d), f16x16(b.m));
        let z = _mm512_cvtepu8_epi32(ld16b(&b.qs));
        let wl = _mm512_permutexvar_ps(z, table);
        let wh = _mm512_permutexvar_ps(_mm512_srli_epi32(z, 4), table);
        acc[0] = _mm512_fmadd_ps(wl, ld16(&xs[0]), acc[0]);
        acc[1] = _mm512_fmadd_ps(wh, ld16(&xs[1]), acc[1]);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Q4_K · f32: one table `i (d sc) - dmin m` per sub-block of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q4_k_f32_impl(w: &[BlockQ4K], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK_K, x.len(), "vec_dot_q4_k_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [_mm512_setzero_ps(); 4];
    let levels = iota();
    for (b, xs) in w.iter().zip(x.chunks_exact(QK_K)) {
        prefetch(b);
        let xs = x256w(xs);
        let (d, dmin) = (f16f(b.d), f16f(b.dmin));
        let qs: &[[u8; 16]; 8] = bytemuck::cast_ref(&b.qs);
        for c in 0..4 {
            let (s0, m0) = get_scale_min_k4(2 * c, &b.scales);
            let (s1, m1) = get_scale_min_k4(2 * c + 1, &b.scales);
            let t0 = _mm512_fmadd_ps(levels, _mm512_set1_ps(d * s0 as f32), _mm512_set1_ps(-(dmin * m0 as f32)));
            let t1 = _mm512_fmadd_ps(levels, _mm512_set1_ps(d * s1 as f32), _mm512_set1_ps(-(dmin * m1 as f32)));
            for k in 0..2 {
                // Bytes 32 c + 16 k ..: elements 64 c + 16 k .. (low) and 64 c + 32 + 16 k .. (high).
                let z = _mm512_cvtepu8_epi32(ld16b(&qs[2 * c + k]));
                let wl = _mm512_permutexvar_ps(z, t0);
                let wh = _mm512_permutexvar_ps(_mm512_srli_epi32(z, 4), t1);
                acc[k] = _mm512_fmadd_ps(wl, ld16(&xs[4 * c + k]), acc[k]);
                acc[2 + k] = _mm512_fmadd_ps(wh, ld16(&xs[4 * c + 2 + k]), acc[2 + k]);
            }
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

// ----- integer dots (VNNI) ------------------------------------------------------------------

/// Eight i32 sums of four `w·x` products each (signed bytes; `x` must not be -128 where
/// `w` is -128).
#[inline]
#[target_feature(enable = "avx512vnni,avx512vl,avx2")]
fn dot_i8(w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// Eight i32 sums of four `u·x` products each (`u` unsigned bytes, `x` signed), with VNNI.
#[inline]
#[target_feature(enable = "avx512vnni,avx512vl,avx2")]
fn dot_u8i8(u: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
}

super::dot_avx2::int_dots!("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
