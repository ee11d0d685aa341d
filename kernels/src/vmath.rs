//! Elementwise math of the forward pass, vectorized: the attention softmax and the SwiGLU /
//! GeGLU gates (`silu(g) · u`, `gelu(g) · u`), all built on `exp`.
//!
//! **Every path computes the same bits.** The 8-bit activation quantizer downstream turns any
//! difference, one ulp included, into a different rounding of some code, and that difference
//! grows layer by layer: measured on SmolLM2 (WikiText-2, 2 chunks of 512), making only the
//! softmax's `exp` differ moved perplexity by 0.13 %, and the per-token log-likelihoods by
//! 0.09 nats (standard deviation). So there is one `exp` ([`exp_canon`]): the classic range
//! reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, Cephes' degree-7 polynomial for `eʳ` evaluated with
//! separate multiplies and adds (no FMA, which the scalar code of a CPU without one could not
//! match cheaply), `2ⁿ` put into the exponent — a few ulps from `expf` (the tests bound it by 4)
//! — and the SIMD paths evaluate exactly these operations lane by lane. Sums run in 16 lanes
//! (element `i` into lane `i mod 16`, each lane in order), then lane 0 + lane 1 + … + lane 15:
//! the scalar reference and the 8-lane AVX2 path keep the same 16 partial sums.
//!
//! Range: `exp(x) = +inf` above `ln(f32::MAX)`, `0` below −86.6 (where `eˣ` < 2.5e-38, near the
//! bottom of the normal floats); NaN propagates.

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

/// Lanes of the canonical sums (see the module doc).
const SUM_LANES: usize = 16;

/// `log2(e)`.
const LOG2E: f32 = core::f32::consts::LOG2_E;
/// ln 2 split in two (Cephes): `C1` has few enough bits that `n · C1` is exact.
const C1: f32 = 0.693_359_4;
const C2: f32 = -2.121_944_4e-4;
/// Cephes `expf` polynomial, highest degree first: `eʳ ≈ 1 + r + r²·P(r)`.
const P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
/// Above this, `eˣ` overflows f32: `+inf`.
const EXP_HI: f32 = 88.722_84;
/// Below this, `eˣ` is taken as 0 (`n` stays ≥ −125, so `2ⁿ⁻¹` is a normal float).
const EXP_LO: f32 = -86.6;

/// The one `exp` of every path (the SIMD kernels evaluate these operations lane by lane).
#[inline]
pub fn exp_canon(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > EXP_HI {
        return f32::INFINITY;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let n = libm::rintf(x * LOG2E);
    let r = x - n * C1;
    let r = r - n * C2;
    let mut p = P[0];
    for &c in &P[1..] {
        p = p * r + c;
    }
    let y = p * r * r + (r + 1.0);
    // 2ⁿ as 2ⁿ⁻¹ · 2: n ≤ 128 at the top of the range, where 2ⁿ itself is not a float.
    let pow = f32::from_bits(((n as i32 - 1 + 127) as u32) << 23);
    y * pow * 2.0
}

/// The reference for [`softmax_scaled`].
pub fn softmax_scaled_scalar(x: &mut [f32], scale: f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
    let mut lanes = [0.0f32; SUM_LANES];
    for (i, v) in x.iter_mut().enumerate() {
        *v = exp_canon(*v * scale - max);
        lanes[i % SUM_LANES] += *v;
    }
    let inv = 1.0 / sum_lanes(&lanes);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Lane 0 + lane 1 + … + lane 15, in that order.
#[inline]
fn sum_lanes(lanes: &[f32; SUM_LANES]) -> f32 {
    lanes.iter().fold(0.0, |a, &b| a + b)
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
        *g = *g / (1.0 + exp_canon(-*g)) * u;
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
        // z = x·(C1 + C2·x²), grouped as the SIMD paths group it.
        let z = x * (GELU_C1 + GELU_C2 * (x * x));
        *g = x / (1.0 + exp_canon(-z)) * u;
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

    use super::{C1, C2, EXP_HI, EXP_LO, LOG2E, P, SUM_LANES};

    /// [`exp_canon`](super::exp_canon) on 16 lanes, operation for operation.
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp512(x: __m512) -> __m512 {
        // max(lo, x) / min(hi, ·) return `x` when it is NaN, so NaN propagates (the range
        // masks below are false for NaN).
        let (lo, hi) = (_mm512_set1_ps(EXP_LO), _mm512_set1_ps(EXP_HI));
        let inf = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi);
        let zero = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
        let x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(C1)));
        let r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(C2)));
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        // NaN lanes: the conversion gives i32::MIN, a garbage scale, but `y` is NaN and stays NaN.
        let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(126));
        let pow = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e));
        let v = _mm512_mul_ps(_mm512_mul_ps(y, pow), _mm512_set1_ps(2.0));
        let v = _mm512_mask_mov_ps(v, inf, _mm512_set1_ps(f32::INFINITY));
        _mm512_mask_mov_ps(v, zero, _mm512_setzero_ps())
    }

    /// [`exp_canon`](super::exp_canon) on 8 lanes, operation for operation.
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn exp256(x: __m256) -> __m256 {
        let (lo, hi) = (_mm256_set1_ps(EXP_LO), _mm256_set1_ps(EXP_HI));
        let inf = _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi);
        let zero = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(C1)));
        let r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(C2)));
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126));
        let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e));
        let v = _mm256_mul_ps(_mm256_mul_ps(y, pow), _mm256_set1_ps(2.0));
        let v = _mm256_blendv_ps(v, _mm256_set1_ps(f32::INFINITY), inf);
        _mm256_andnot_ps(zero, v)
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
            let e = exp512(_mm512_sub_ps(_mm512_mul_ps(v, sc), max));
            sum = _mm512_mask_add_ps(sum, m, sum, e);
            _mm512_mask_storeu_ps(p.add(i), m, e);
            i += 16;
        }
        let mut lanes = [0.0f32; SUM_LANES];
        // SAFETY: `lanes` is 16 floats.
        _mm512_storeu_ps(lanes.as_mut_ptr(), sum);
        let inv = _mm512_set1_ps(1.0 / super::sum_lanes(&lanes));
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
        // SAFETY: AVX2 is available (asserted above); whole 16-lane steps stay inside `x`,
        // the tail goes through the scalar exp below.
        unsafe { softmax_scaled_avx2_impl(x, scale) }
    }

    /// The 16 lanes of the canonical sum as two 8-lane halves.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn softmax_scaled_avx2_impl(x: &mut [f32], scale: f32) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
        let (body, tail) = x.split_at_mut(x.len() / SUM_LANES * SUM_LANES);
        let (mv, sc) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
        let mut sum = [_mm256_setzero_ps(); 2];
        for c in body.chunks_exact_mut(SUM_LANES) {
            for (h, s) in sum.iter_mut().enumerate() {
                // SAFETY: `c` is 16 floats.
                let p = c.as_mut_ptr().add(8 * h);
                let e = exp256(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(p), sc), mv));
                *s = _mm256_add_ps(*s, e);
                _mm256_storeu_ps(p, e);
            }
        }
        let mut lanes = [0.0f32; SUM_LANES];
        // SAFETY: `lanes` is 16 floats.
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum[0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), sum[1]);
        for (l, v) in tail.iter_mut().enumerate() {
            *v = super::exp_canon(*v * scale - max);
            lanes[l] += *v;
        }
        let inv = 1.0 / super::sum_lanes(&lanes);
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
        // SAFETY: AVX2 is available (asserted above); whole 8-lane steps inside both
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
    /// AVX2; `g.len() == u.len()`, a multiple of 8.
    #[target_feature(enable = "avx2")]
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

    /// The one `exp` against `libm::expf`: within 4 ulps wherever the result is a normal float,
    /// and the range ends (0 below −86.6, `inf` above `ln(f32::MAX)`, NaN kept).
    #[test]
    fn exp_canon_is_within_4_ulps_of_expf() {
        for x in inputs() {
            let (got, want) = (exp_canon(x), libm::expf(x));
            if x < EXP_LO {
                assert_eq!(got, 0.0, "exp({x}) flushes to 0 (expf {want})");
            } else {
                assert!(ulps(got, want) <= 4, "exp({x}) = {got}, expf {want}");
            }
        }
        assert_eq!(exp_canon(-86.7), 0.0);
        assert_eq!(exp_canon(-1e30), 0.0);
        assert_eq!(exp_canon(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_canon(88.8), f32::INFINITY);
        assert_eq!(exp_canon(f32::INFINITY), f32::INFINITY);
        assert!(exp_canon(f32::NAN).is_nan());
        assert!(exp_canon(88.72).is_finite() && exp_canon(-86.5) > 0.0);
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every path's gate gives the reference's bits (the SIMD `exp` is `exp_canon` lane by
    /// lane), and the reference is within a few ulps of `g / (1 + expf(-g)) · u`.
    #[test]
    fn silu_mul_is_the_same_bits_on_every_path() {
        let g0 = inputs();
        let u: Vec<f32> = g0.iter().enumerate().map(|(i, _)| 0.5 + (i % 7) as f32 * 0.25).collect();
        let mut want = g0.clone();
        silu_mul_scalar(&mut want, &u);
        for (i, (&w, &g)) in want.iter().zip(&g0).enumerate() {
            let t = g / (1.0 + libm::expf(-g)) * u[i];
            // A few ulps of exp, then one rounding each for the add, divide and multiply.
            let ok = if t.abs() < 1e-30 { w.abs() < 1e-30 } else { ulps(w, t) <= 6 };
            assert!(ok, "silu_mul({g}) = {w}, with expf {t}");
        }
        for path in crate::available_kernel_paths() {
            for len in [g0.len(), 1, 15, 17, 33] {
                let mut got = g0[..len].to_vec();
                silu_mul_on(path, &mut got, &u[..len]);
                assert_eq!(bits(&got), bits(&want[..len]), "{path} silu_mul, {len} values");
            }
        }
    }

    /// GELU (tanh form) on every path against the reference, and the reference against the
    /// textbook `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))` in f64.
    #[test]
    fn gelu_mul_is_the_same_bits_on_every_path() {
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
                assert_eq!(bits(&got), bits(&want[..len]), "{path} gelu_mul, {len} values");
            }
        }
    }

    #[test]
    fn softmax_is_the_same_bits_on_every_path() {
        let base: Vec<f32> = (0..203).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
        for path in crate::available_kernel_paths() {
            for len in [1, 2, 7, 16, 17, 64, 203] {
                for scale in [1.0f32, 0.125] {
                    let (mut got, mut want) = (base[..len].to_vec(), base[..len].to_vec());
                    softmax_scaled_on(path, &mut got, scale);
                    softmax_scaled_scalar(&mut want, scale);
                    let sum: f32 = got.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "{path} len {len}: weights sum to {sum}");
                    assert_eq!(bits(&got), bits(&want), "{path} softmax, {len} values, scale {scale}");
                    // The reference against the f64 softmax: exp's ulps and the sums' rounding.
                    let m = base[..len].iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 * scale as f64;
                    let e: Vec<f64> = base[..len].iter().map(|&v| (v as f64 * scale as f64 - m).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for (&a, &b) in want.iter().zip(&e) {
                        let b = b / total;
                        assert!(
                            (a as f64 - b).abs() <= 2e-6 * b + 1e-38,
                            "softmax len {len} scale {scale}: {a} vs {b}"
                        );
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
