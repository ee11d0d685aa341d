//! Decode attention of one query head over an f16 KV cache, read in place (no widened copy of
//! the cache per token): scores `q·k_p`, the scaled softmax, then `Σ_p w_p v_p`.

use half::f16;

use crate::KernelPath;

/// `out = Σ_p softmax(scale · q·k_p)_p · v_p` over the positions `p < scores.len()`: row `p`
/// of `k` / `v` starts at `p · stride`, and this head's `q.len()` values sit at `off` in it.
/// `scores` is scratch (it ends up holding the weights).
#[allow(clippy::too_many_arguments)]
pub fn attend_f16(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_f16_on(crate::kernel_path(), q, k, v, stride, off, scale, scores, out)
}

/// [`attend_f16`] on an explicit kernel path (a path without a kernel here uses the reference).
#[allow(clippy::too_many_arguments)]
pub fn attend_f16_on(
    path: KernelPath,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (hd, n) = (q.len(), scores.len());
    assert_eq!(out.len(), hd, "attend_f16: output of {} for a head of {hd}", out.len());
    assert!(off + hd <= stride, "attend_f16: head at {off}..{} past the row of {stride}", off + hd);
    if n == 0 {
        out.fill(0.0);
        return;
    }
    let need = (n - 1) * stride + off + hd;
    assert!(k.len() >= need && v.len() >= need, "attend_f16: {n} positions need {need} cached values");
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx512 && path.is_available() && hd.is_multiple_of(16) && hd <= 256 {
        return x86::attend_f16_avx512(q, k, v, stride, off, scale, scores, out);
    }
    let _ = path;
    attend_f16_scalar(q, k, v, stride, off, scale, scores, out)
}

/// The reference for [`attend_f16`].
#[allow(clippy::too_many_arguments)]
pub fn attend_f16_scalar(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    for (p, s) in scores.iter_mut().enumerate() {
        let row = &k[p * stride + off..p * stride + off + hd];
        *s = q.iter().zip(row).map(|(&a, &b)| a * b.to_f32()).sum();
    }
    crate::vmath::softmax_scaled_on(KernelPath::Scalar, scores, scale);
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        for (o, &b) in out.iter_mut().zip(&v[p * stride + off..p * stride + off + hd]) {
            *o += w * b.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;
    use half::f16;

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend_f16_avx512(
        q: &[f32],
        k: &[f16],
        v: &[f16],
        stride: usize,
        off: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        assert!(crate::KernelPath::Avx512.is_available(), "attend_f16: AVX-512 is not available");
        let hd = q.len();
        assert!(hd.is_multiple_of(16) && hd <= 256 && out.len() == hd);
        let n = scores.len();
        assert!(n > 0 && k.len() >= (n - 1) * stride + off + hd && v.len() >= (n - 1) * stride + off + hd);
        // SAFETY: AVX-512 F is available (asserted above); every row read, `p · stride + off ..
        // + hd` for `p < n`, lies inside `k` and `v` (asserted above), `q` and `out` hold `hd`.
        unsafe {
            scores_impl(q, k, stride, off, scores);
            crate::vmath::softmax_scaled_on(crate::KernelPath::Avx512, scores, scale);
            weighted_sum_impl(v, stride, off, scores, out);
        }
    }

    /// `scores[p] = q · k_p` (the query kept in registers, `hd / 16` vectors).
    ///
    /// # Safety
    /// AVX-512 F; shapes as asserted by the caller.
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn scores_impl(q: &[f32], k: &[f16], stride: usize, off: usize, scores: &mut [f32]) {
        let nc = q.len() / 16;
        let mut qv = [_mm512_setzero_ps(); 16];
        for (c, qc) in qv.iter_mut().enumerate().take(nc) {
            // SAFETY: 16 floats at 16c inside `q`.
            *qc = _mm512_loadu_ps(q.as_ptr().add(16 * c));
        }
        let kp = k.as_ptr().add(off).cast::<u8>();
        // The hot loop: one position per step, the head's dot product in one vector.
        for (p, s) in scores.iter_mut().enumerate() {
            let row = kp.add(2 * p * stride);
            let mut acc = _mm512_setzero_ps();
            for (c, &qc) in qv.iter().enumerate().take(nc) {
                // SAFETY: 16 halves at 16c inside this head's part of row p.
                let kc = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32 * c).cast()));
                acc = _mm512_fmadd_ps(qc, kc, acc);
            }
            *s = _mm512_reduce_add_ps(acc);
        }
    }

    /// `out = Σ_p w_p v_p` (the output kept in registers).
    ///
    /// # Safety
    /// AVX-512 F; shapes as asserted by the caller.
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn weighted_sum_impl(v: &[f16], stride: usize, off: usize, w: &[f32], out: &mut [f32]) {
        let nc = out.len() / 16;
        let mut acc = [_mm512_setzero_ps(); 16];
        let vp = v.as_ptr().add(off).cast::<u8>();
        for (p, &wp) in w.iter().enumerate() {
            let row = vp.add(2 * p * stride);
            let wv = _mm512_set1_ps(wp);
            for (c, a) in acc.iter_mut().enumerate().take(nc) {
                // SAFETY: 16 halves at 16c inside this head's part of row p.
                let vc = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32 * c).cast()));
                *a = _mm512_fmadd_ps(wv, vc, *a);
            }
        }
        for (c, a) in acc.iter().enumerate().take(nc) {
            // SAFETY: 16 floats at 16c inside `out`.
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use rand::Rng;

    /// `n` values in ±2.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::test_util::rng(seed);
        (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
    }

    /// Every path against an f64 evaluation on the same f16 values: f32 rounding only (the
    /// weights sum to 1 and |v| ≤ 2, so 1e-5 absolute).
    #[test]
    fn attend_f16_matches_f64_on_every_path() {
        for (hd, stride, off, n) in
            [(64, 192, 64, 1), (64, 192, 128, 37), (16, 48, 0, 5), (128, 256, 128, 300), (8, 8, 0, 9)]
        {
            let k: Vec<f16> = data(n * stride, 1).into_iter().map(f16::from_f32).collect();
            let v: Vec<f16> = data(n * stride, 2).into_iter().map(f16::from_f32).collect();
            let q = data(hd, 3);
            let scale = 1.0 / (hd as f32).sqrt();
            let s: Vec<f64> = (0..n)
                .map(|p| {
                    let r = &k[p * stride + off..p * stride + off + hd];
                    scale as f64 * q.iter().zip(r).map(|(&a, &b)| a as f64 * b.to_f64()).sum::<f64>()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let want: Vec<f64> =
                (0..hd).map(|d| (0..n).map(|p| e[p] / z * v[p * stride + off + d].to_f64()).sum()).collect();
            for path in crate::available_kernel_paths() {
                let (mut scores, mut out) = (alloc::vec![0.0f32; n], alloc::vec![0.0f32; hd]);
                attend_f16_on(path, &q, &k, &v, stride, off, scale, &mut scores, &mut out);
                for (d, (&g, &w)) in out.iter().zip(&want).enumerate() {
                    assert!((g as f64 - w).abs() <= 1e-5, "{path} ({hd},{stride},{off},{n}) d {d}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn short_caches_are_refused() {
        let k = [f16::ZERO; 100];
        let r = std::panic::catch_unwind(|| {
            let (mut s, mut o) = ([0.0f32; 2], [0.0f32; 64]);
            attend_f16(&[0.0; 64], &k, &k, 64, 0, 1.0, &mut s, &mut o);
        });
        assert!(r.is_err());
    }
}
