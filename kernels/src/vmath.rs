//! Elementwise math of the forward pass, vectorized: the attention softmax and the SwiGLU /
//! GeGLU gates (`silu(g) · u`, `gelu(g) · u`), all built on `exp`.
//!
//! The scalar reference calls `libm::expf` (correctly rounded to within 1 ulp). The AVX-512
//! and AVX2 paths use the classic range reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, a degree-7
//! polynomial for `eᴿ` (Cephes' `expf` coefficients) and `2ⁿ` put into the exponent: at most a
//! few ulps from `expf` over the whole range where the result is a normal float (the tests bound
//! it by 4 ulps).
//!
//! Inputs are clamped before the reduction so no lane overflows the integer exponent: results
//! saturate at `e^88.37` (AVX2) / `+inf` (AVX-512) above and at ~`1e-38` (AVX2) / `0` (AVX-512)
//! below. NaN propagates.

use crate::KernelPath;

/// `x ← softmax(scale · x)`: `exp(scale·x_i - scale·max x) / Σ`, in place (`scale > 0`).
///
/// With `scale = 1` this is the plain softmax. An empty slice is left as is.
pub fn softmax_scaled(x: &mut [f32], scale: f32) {
    softmax_scaled_on(crate::kernel_path(), x, scale)
}

/// [`softmax_scaled`] on an explicit kernel path (a path without a kernel here uses the
/// reference).
pub fn softmax_scaled_on(path: KernelPath, x: &mut [f32], scale: f32) {
    if x.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match path {
        KernelPath::Avx512 if path.is_available() => return x86::softmax_scaled_avx512(x, scale),
        KernelPath::Avx2 | KernelPath::Avx512 if KernelPath::Avx2.is_available() => {
            return x86::softmax_scaled_avx2(x, scale)
        }
        _ => {}
    }
    let _ = path;
    softmax_scaled_scalar(x, scale)
}

/// The reference for [`softmax_scaled`].
pub fn softmax_scaled_scalar(x: &mut [f32], scale: f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v * scale - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `g ← silu(g) · u = g / (1 + e^{-g}) · u`, elementwise (the SwiGLU feed-forward gate).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    silu_mul_on(crate::kernel_path(), g, u)
}

/// [`silu_mul`] on an explicit kernel path (a path without a kernel here uses the reference).
pub fn silu_mul_on(path: KernelPath, g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "silu_mul: {} gates vs {} values", g.len(), u.len());
    #[cfg(target_arch = "x86_64")]
    match path {
        KernelPath::Avx512 if path.is_available() => return x86::silu_mul_avx512(g, u),
        KernelPath::Avx2 | KernelPath::Avx512 if KernelPath::Avx2.is_available() => return x86::silu_mul_avx2(g, u),
        _ => {}
    }
    let _ = path;
    silu_mul_scalar(g, u)
}

/// The reference for [`silu_mul`].
pub fn silu_mul_scalar(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + libm::expf(-*g)) * u;
    }
}

/// `2·√(2/π)` and `2·√(2/π)·0.044715`: GELU's tanh form as a logistic,
/// `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) = x / (1 + e^{-x(C1 + C2·x²)})`.
const GELU_C1: f32 = 1.595_769;
const GELU_C2: f32 = 0.071_354_816;

/// `g ← gelu(g) · u`, GELU in its tanh approximation (the GeGLU feed-forward gate of gemma),
/// computed as `g / (1 + e^{-g(C1 + C2 g²)})` — the same exp as [`silu_mul`].
pub fn gelu_mul(g: &mut [f32], u: &[f32]) {
    gelu_mul_on(crate::kernel_path(), g, u)
}

/// [`gelu_mul`] on an explicit kernel path (a path without a kernel here uses the reference).
pub fn gelu_mul_on(path: KernelPath, g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "gelu_mul: {} gates vs {} values", g.len(), u.len());
    #[cfg(target_arch = "x86_64")]
    match path {
        KernelPath::Avx512 if path.is_available() => return x86::gelu_mul_avx512(g, u),
        KernelPath::Avx2 | KernelPath::Avx512 if KernelPath::Avx2.is_available() => return x86::gelu_mul_avx2(g, u),
        _ => {}
    }
    let _ = path;
    gelu_mul_scalar(g, u)
}

/// The reference for [`gelu_mul`].
pub fn gelu_mul_scalar(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let x = *g;
        *g = x / (1.0 + libm::expf(-x * (GELU_C1 + GELU_C2 * x * x))) * u;
    }
}

/// `Σ x`, read at the widest vector width the kernel path has, with independent accumulators
/// so that only the memory system limits it: the hot loop of `pith bench --roofline`'s
/// bandwidth probe. The summation order differs between paths.
pub fn sum_f32(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel_path() == KernelPath::Avx512 {
        return x86::sum_f32_avx512(x);
    }
    sum_f32_scalar(x)
}

/// The reference for [`sum_f32`]: 16 accumulators, which LLVM vectorizes for the baseline ISA.
pub fn sum_f32_scalar(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..16 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    const LOG2E: f32 = core::f32::consts::LOG2_E;
    /// ln 2 split in two (Cephes): `C1` has few enough bits that `n · C1` is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    /// Cephes `expf` polynomial, highest degree first: `eʳ ≈ 1 + r + r²·P(r)`.
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

    /// `eˣ` for 16 lanes; `2ⁿ` by `scalef`, so over- and underflow give `inf` / `0`.
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp512(x: __m512) -> __m512 {
        // max(lo, x) / min(hi, ·) return `x` when it is NaN, so NaN propagates.
        let x = _mm512_min_ps(_mm512_set1_ps(89.0), _mm512_max_ps(_mm512_set1_ps(-104.0), x));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(C1), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(C2), r);
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(y, n)
    }

    /// `eˣ` for 8 lanes; `2ⁿ` built in the exponent field, so inputs are clamped to
    /// `[-87.33, 88.37]` (`n` in `-126..=127`).
    ///
    /// # Safety
    /// AVX2 + FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp256(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_set1_ps(88.37), _mm256_max_ps(_mm256_set1_ps(-87.33), x));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C1), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C2), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // NaN lanes: cvtps gives i32::MIN, a garbage scale, but `y` is NaN and stays NaN.
        let pow2n = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
    }

    /// Lanes `0..len` set (`len ≤ 16`).
    fn mask16(len: usize) -> __mmask16 {
        ((1u32 << len) - 1) as __mmask16
    }

    pub(super) fn sum_f32_avx512(x: &[f32]) -> f32 {
        assert!(crate::KernelPath::Avx512.is_available(), "sum_f32: AVX-512 is not available");
        let cut = x.len() / 64 * 64;
        // SAFETY: AVX-512 F is available (asserted above); whole 64-float steps inside `x`.
        let body = unsafe { sum_f32_avx512_impl(&x[..cut]) };
        body + x[cut..].iter().sum::<f32>()
    }

    /// # Safety
    /// AVX-512 F; `x.len()` a multiple of 64.
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_f32_avx512_impl(x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        for c in x.chunks_exact(64) {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` is 64 floats.
                *a = _mm512_add_ps(*a, _mm512_loadu_ps(c.as_ptr().add(16 * k)));
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    pub(super) fn softmax_scaled_avx512(x: &mut [f32], scale: f32) {
        assert!(crate::KernelPath::Avx512.is_available(), "softmax: AVX-512 is not available");
        // SAFETY: AVX-512 F is available (asserted above); the kernel reads and writes only
        // lanes inside `x` (masked tail).
        unsafe { softmax_scaled_avx512_impl(x, scale) }
    }

    /// # Safety
    /// AVX-512 F.
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_scaled_avx512_impl(x: &mut [f32], scale: f32) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < n {
            let m = mask16((n - i).min(16));
            // SAFETY: lanes of `m` are i..min(i + 16, n), inside `x`.
            let v = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), m, p.add(i));
            mx = _mm512_max_ps(mx, v);
            i += 16;
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx) * scale);
        let sc = _mm512_set1_ps(scale);
        let mut sum = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let m = mask16((n - i).min(16));
            // SAFETY: as above.
            let v = _mm512_maskz_loadu_ps(m, p.add(i));
            let e = exp512(_mm512_fmsub_ps(v, sc, max));
            sum = _mm512_mask_add_ps(sum, m, sum, e);
            _mm512_mask_storeu_ps(p.add(i), m, e);
            i += 16;
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        let mut i = 0;
        while i < n {
            let m = mask16((n - i).min(16));
            // SAFETY: as above.
            let v = _mm512_maskz_loadu_ps(m, p.add(i));
            _mm512_mask_storeu_ps(p.add(i), m, _mm512_mul_ps(v, inv));
            i += 16;
        }
    }

    pub(super) fn softmax_scaled_avx2(x: &mut [f32], scale: f32) {
        assert!(crate::KernelPath::Avx2.is_available(), "softmax: AVX2 is not available");
        // SAFETY: AVX2 + FMA are available (asserted above); whole 8-lane steps stay inside `x`,
        // the tail goes through the scalar exp below.
        unsafe { softmax_scaled_avx2_impl(x, scale) }
    }

    /// # Safety
    /// AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_scaled_avx2_impl(x: &mut [f32], scale: f32) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
        let (body, tail) = x.split_at_mut(x.len() / 8 * 8);
        let (mv, sc) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
        let mut sum = _mm256_setzero_ps();
        for c in body.chunks_exact_mut(8) {
            // SAFETY: `c` is 8 floats.
            let e = exp256(_mm256_fmsub_ps(_mm256_loadu_ps(c.as_ptr()), sc, mv));
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` is 8 floats.
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut total: f32 = lanes.iter().sum();
        for v in tail.iter_mut() {
            *v = libm::expf(*v * scale - max);
            total += *v;
        }
        let inv = 1.0 / total;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }

    pub(super) fn silu_mul_avx512(g: &mut [f32], u: &[f32]) {
        gate_avx512::<false>(g, u)
    }

    pub(super) fn gelu_mul_avx512(g: &mut [f32], u: &[f32]) {
        gate_avx512::<true>(g, u)
    }

    fn gate_avx512<const GELU: bool>(g: &mut [f32], u: &[f32]) {
        assert!(crate::KernelPath::Avx512.is_available(), "gate: AVX-512 is not available");
        assert_eq!(g.len(), u.len());
        // SAFETY: AVX-512 F is available (asserted above); masked lanes stay inside `g` and `u`
        // (equal lengths, asserted above).
        unsafe { gate_avx512_impl::<GELU>(g, u) }
    }

    /// `g ← g / (1 + e^{-z}) · u`, `z = g` (SiLU) or `g(C1 + C2 g²)` (GELU, tanh form).
    ///
    /// # Safety
    /// AVX-512 F; `g.len() == u.len()`.
    #[target_feature(enable = "avx512f")]
    unsafe fn gate_avx512_impl<const GELU: bool>(g: &mut [f32], u: &[f32]) {
        let n = g.len();
        let one = _mm512_set1_ps(1.0);
        let (c1, c2) = (_mm512_set1_ps(super::GELU_C1), _mm512_set1_ps(super::GELU_C2));
        let mut i = 0;
        while i < n {
            let m = mask16((n - i).min(16));
            // SAFETY: lanes of `m` are i..min(i + 16, n), inside both slices.
            let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
            let uv = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
            let z =
                if GELU { _mm512_mul_ps(gv, _mm512_add_ps(c1, _mm512_mul_ps(c2, _mm512_mul_ps(gv, gv)))) } else { gv };
            let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), z));
            let s = _mm512_div_ps(gv, _mm512_add_ps(one, e));
            _mm512_mask_storeu_ps(g.as_mut_ptr().add(i), m, _mm512_mul_ps(s, uv));
            i += 16;
        }
    }

    pub(super) fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
        gate_avx2::<false>(g, u);
    }

    pub(super) fn gelu_mul_avx2(g: &mut [f32], u: &[f32]) {
        gate_avx2::<true>(g, u);
    }

    fn gate_avx2<const GELU: bool>(g: &mut [f32], u: &[f32]) {
        assert!(crate::KernelPath::Avx2.is_available(), "gate: AVX2 is not available");
        assert_eq!(g.len(), u.len());
        let cut = g.len() / 8 * 8;
        // SAFETY: AVX2 + FMA are available (asserted above); whole 8-lane steps inside both
        // slices (equal lengths, asserted above).
        unsafe { gate_avx2_impl::<GELU>(&mut g[..cut], &u[..cut]) };
        if GELU {
            super::gelu_mul_scalar(&mut g[cut..], &u[cut..]);
        } else {
            super::silu_mul_scalar(&mut g[cut..], &u[cut..]);
        }
    }

    /// The AVX2 form of [`gate_avx512_impl`].
    ///
    /// # Safety
    /// AVX2 + FMA; `g.len() == u.len()`, a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gate_avx2_impl<const GELU: bool>(g: &mut [f32], u: &[f32]) {
        let one = _mm256_set1_ps(1.0);
        let (c1, c2) = (_mm256_set1_ps(super::GELU_C1), _mm256_set1_ps(super::GELU_C2));
        for (gc, uc) in g.chunks_exact_mut(8).zip(u.chunks_exact(8)) {
            // SAFETY: 8 floats each.
            let gv = _mm256_loadu_ps(gc.as_ptr());
            let z =
                if GELU { _mm256_mul_ps(gv, _mm256_add_ps(c1, _mm256_mul_ps(c2, _mm256_mul_ps(gv, gv)))) } else { gv };
            let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), z));
            let s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
            _mm256_storeu_ps(gc.as_mut_ptr(), _mm256_mul_ps(s, _mm256_loadu_ps(uc.as_ptr())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// ulps between two finite floats of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-8700..=8800).map(|i| i as f32 * 0.01 + 0.003).collect();
        v.extend([0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1e-7]);
        v
    }

    /// exp through the softmax of a pair `[x, 0]` would mix in the division; test the exp of
    /// every path directly through `silu_mul` with `u = 1`: silu(g) = g / (1 + e^{-g}).
    #[test]
    fn silu_mul_matches_the_reference_on_every_path() {
        let g0 = inputs();
        let u: Vec<f32> = g0.iter().enumerate().map(|(i, _)| 0.5 + (i % 7) as f32 * 0.25).collect();
        let mut want = g0.clone();
        silu_mul_scalar(&mut want, &u);
        for path in crate::available_kernel_paths() {
            for len in [g0.len(), 1, 15, 17, 33] {
                let mut got = g0[..len].to_vec();
                silu_mul_on(path, &mut got, &u[..len]);
                for (i, (&a, &b)) in got.iter().zip(&want[..len]).enumerate() {
                    // A few ulps of exp, then one rounding each for the add, divide and multiply.
                    let ok = if b.abs() < 1e-30 { a.abs() < 1e-30 } else { ulps(a, b) <= 6 };
                    assert!(ok, "{path} silu_mul({}) = {a}, reference {b}", g0[i]);
                }
            }
        }
    }

    /// GELU (tanh form) on every path against the reference, and the reference against the
    /// textbook `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))` in f64.
    #[test]
    fn gelu_mul_matches_the_reference_on_every_path() {
        let g0: Vec<f32> = inputs().into_iter().filter(|x| x.abs() < 20.0).collect();
        let u: Vec<f32> = g0.iter().enumerate().map(|(i, _)| 0.5 + (i % 7) as f32 * 0.25).collect();
        let mut want = g0.clone();
        gelu_mul_scalar(&mut want, &u);
        for (i, (&x, &w)) in g0.iter().zip(&want).enumerate() {
            let xd = x as f64;
            let t = 0.5 * xd * (1.0 + ((2.0 / core::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd)).tanh());
            let t = t * u[i] as f64;
            // (Far left, tanh rounds to -1 in f64 while the logistic form keeps a tiny tail.)
            assert!((w as f64 - t).abs() <= 1e-6 * t.abs() + 1e-9, "gelu({x}) = {w}, textbook {t}");
        }
        for path in crate::available_kernel_paths() {
            for len in [g0.len(), 1, 15, 17, 33] {
                let mut got = g0[..len].to_vec();
                gelu_mul_on(path, &mut got, &u[..len]);
                for (i, (&a, &b)) in got.iter().zip(&want[..len]).enumerate() {
                    // exp's few ulps, plus z's own rounding amplified by |z| through e^{-z}.
                    let x = g0[i];
                    let z = (x * (GELU_C1 + GELU_C2 * x * x)).abs();
                    let ok = (a - b).abs() <= 2e-7 * (8.0 + z) * b.abs() + 1e-30;
                    assert!(ok, "{path} gelu_mul({}) = {a}, reference {b}", g0[i]);
                }
            }
        }
    }

    #[test]
    fn softmax_matches_the_reference_on_every_path() {
        let base: Vec<f32> = (0..203).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
        for path in crate::available_kernel_paths() {
            for len in [1, 2, 7, 16, 17, 64, 203] {
                for scale in [1.0f32, 0.125] {
                    let (mut got, mut want) = (base[..len].to_vec(), base[..len].to_vec());
                    softmax_scaled_on(path, &mut got, scale);
                    softmax_scaled_scalar(&mut want, scale);
                    let sum: f32 = got.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "{path} len {len}: weights sum to {sum}");
                    for (&a, &b) in got.iter().zip(&want) {
                        // exp within a few ulps, a different summation order: relative 1e-6.
                        assert!((a - b).abs() <= 1e-6 * b + 1e-38, "{path} len {len} scale {scale}: {a} vs {b}");
                    }
                }
            }
        }
        // Equal scores give equal weights; a lone score gives 1.
        for path in crate::available_kernel_paths() {
            let mut x = [3.0f32; 20];
            softmax_scaled_on(path, &mut x, 1.0);
            assert!(x.iter().all(|&v| (v - 0.05).abs() < 1e-7), "{path}: {x:?}");
            let mut one = [-1e30f32];
            softmax_scaled_on(path, &mut one, 1.0);
            assert_eq!(one, [1.0]);
        }
    }

    #[test]
    fn sum_matches_the_reference() {
        let x: Vec<f32> = (0..1000).map(|i| (i % 13) as f32 - 6.0).collect();
        for len in [0, 5, 64, 130, 1000] {
            let want: f32 = x[..len].iter().sum();
            assert_eq!(sum_f32_scalar(&x[..len]), want);
            assert_eq!(sum_f32(&x[..len]), want, "len {len}");
        }
    }

    #[test]
    fn exp_saturates_and_propagates_nan() {
        for path in crate::available_kernel_paths() {
            // silu(-200) = -200 / (1 + e^200): ~0; silu(200) = 200.
            let mut g = [-200.0f32, 200.0, f32::NAN, -1e30, 1e30];
            silu_mul_on(path, &mut g, &[1.0; 5]);
            assert!(g[0].abs() < 1e-30 && g[0] <= 0.0, "{path}: {g:?}");
            assert_eq!(g[1], 200.0, "{path}");
            assert!(g[2].is_nan(), "{path}");
            assert!(g[3].abs() < 1e-30 && g[4] == 1e30, "{path}: {g:?}");
            let mut s = [0.0f32, f32::NAN, 1.0];
            softmax_scaled_on(path, &mut s, 1.0);
            assert!(s.iter().all(|v| v.is_nan()) || s[1].is_nan(), "{path}: NaN must not vanish: {s:?}");
        }
    }
}
