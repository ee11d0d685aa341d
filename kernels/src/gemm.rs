//! f32 matrix × matrix in dot-product form (both operands contiguous along k), the inner
//! kernel of batched (prefill) matmuls: `out[r][t] = Σ_k w[r][k] · x[t][k]`.
//!
//! A scalar reference, and an AVX2+FMA micro-kernel (3 rows × 4 tokens per step, 12 vector
//! accumulators) used when [`kernel_path`](crate::kernel_path) is `Avx2` or `Avx512`
//! (`KernelPath::Scalar`, e.g. forced with `set_kernel_path`, takes the scalar branch).

#[cfg(target_arch = "x86_64")]
use crate::KernelPath;

/// `out[r * n_tok + t] = Σ_k w[r * k_len + k] · x[t * k_len + k]` for `r < n_rows`, `t < n_tok`.
pub fn gemm_f32(w: &[f32], x: &[f32], k_len: usize, out: &mut [f32]) {
    assert!(k_len > 0, "gemm_f32: empty rows");
    assert_eq!(w.len() % k_len, 0, "gemm_f32: weights are not whole rows");
    assert_eq!(x.len() % k_len, 0, "gemm_f32: activations are not whole rows");
    let (n_rows, n_tok) = (w.len() / k_len, x.len() / k_len);
    assert_eq!(out.len(), n_rows * n_tok, "gemm_f32: output shape");
    #[cfg(target_arch = "x86_64")]
    if k_len.is_multiple_of(8)
        && matches!(crate::kernel_path(), KernelPath::Avx2 | KernelPath::Avx512)
        && x86::has_avx2_fma()
    {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above); shapes were checked.
        unsafe { x86::gemm_f32_avx2(w, x, k_len, n_rows, n_tok, out) };
        return;
    }
    gemm_f32_scalar(w, x, k_len, out);
}

/// The reference: one dot product per output.
pub fn gemm_f32_scalar(w: &[f32], x: &[f32], k_len: usize, out: &mut [f32]) {
    let n_tok = x.len() / k_len;
    for (r, wr) in w.chunks_exact(k_len).enumerate() {
        for (t, xt) in x.chunks_exact(k_len).enumerate() {
            out[r * n_tok + t] = crate::f32::dot_f32(wr, xt);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// Rows per micro-kernel step.
    const MR: usize = 3;
    /// Tokens per micro-kernel step.
    const NR: usize = 4;

    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL; shapes as checked by `gemm_f32_nn`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn gemm_f32_nn_avx512<T: super::Elem, const ACC: bool>(
        a: super::Mat<'_>,
        b: super::Mat<'_, T>,
        out: &mut [f32],
        ldo: usize,
    ) {
        let mut i = 0;
        while i < a.rows {
            let mr = (a.rows - i).min(4);
            match mr {
                4 => gemm_nn_rows::<T, 4, ACC>(a, b, out, ldo, i),
                3 => gemm_nn_rows::<T, 3, ACC>(a, b, out, ldo, i),
                2 => gemm_nn_rows::<T, 2, ACC>(a, b, out, ldo, i),
                _ => gemm_nn_rows::<T, 1, ACC>(a, b, out, ldo, i),
            }
            i += mr;
        }
    }

    /// Rows `i..i + MR` of the output, 32 columns per step (masked at the right edge); `ACC`:
    /// added to what the output holds.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; rows `i..i + MR` exist; shapes as checked by `gemm_f32_nn`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn gemm_nn_rows<T: super::Elem, const MR: usize, const ACC: bool>(
        a: super::Mat<'_>,
        b: super::Mat<'_, T>,
        out: &mut [f32],
        ldo: usize,
        i: usize,
    ) {
        let n = b.cols;
        let mut j = 0;
        while j < n {
            let left = n - j;
            let m0: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
            let m1: __mmask16 = if left >= 32 {
                0xffff
            } else if left > 16 {
                (1u16 << (left - 16)) - 1
            } else {
                0
            };
            // The hot loop: MR rows × 32 columns, one row of B per step.
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            if ACC {
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row i + r of the output, columns j..n (masked).
                    let op = out.as_ptr().add((i + r) * ldo + j);
                    acc[0] = _mm512_maskz_loadu_ps(m0, op);
                    acc[1] = _mm512_maskz_loadu_ps(m1, op.wrapping_add(16));
                }
            }
            for p in 0..a.cols {
                // SAFETY: row p < b.rows; masked-off lanes are not accessed, the rest lie in
                // columns j..n of the row.
                let bp = b.data.as_ptr().add(p * b.stride + j);
                let (b0, b1) = if T::HALF {
                    let hp = bp.cast::<i16>();
                    (
                        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, hp)),
                        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, hp.wrapping_add(16))),
                    )
                } else {
                    let fp = bp.cast::<f32>();
                    (_mm512_maskz_loadu_ps(m0, fp), _mm512_maskz_loadu_ps(m1, fp.wrapping_add(16)))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row i + r < a.rows, column p < a.cols.
                    let av = _mm512_set1_ps(*a.data.get_unchecked((i + r) * a.stride + p));
                    acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: row i + r of the output, columns j..n (masked).
                let op = out.as_mut_ptr().add((i + r) * ldo + j);
                _mm512_mask_storeu_ps(op, m0, acc[0]);
                _mm512_mask_storeu_ps(op.wrapping_add(16), m1, acc[1]);
            }
            j += 32;
        }
    }

    /// [`gemm_f32_nn_avx512`] on AVX2: each output the same fused steps in the same order (so
    /// the same bits), 4 rows × 16 columns per step, the right edge one column at a time.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; shapes as checked by `gemm_f32_nn`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemm_f32_nn_avx2<T: super::Elem, const ACC: bool>(
        a: super::Mat<'_>,
        b: super::Mat<'_, T>,
        out: &mut [f32],
        ldo: usize,
    ) {
        let mut i = 0;
        while i < a.rows {
            let mr = (a.rows - i).min(4);
            match mr {
                4 => gemm_nn_rows_avx2::<T, 4, ACC>(a, b, out, ldo, i),
                3 => gemm_nn_rows_avx2::<T, 3, ACC>(a, b, out, ldo, i),
                2 => gemm_nn_rows_avx2::<T, 2, ACC>(a, b, out, ldo, i),
                _ => gemm_nn_rows_avx2::<T, 1, ACC>(a, b, out, ldo, i),
            }
            i += mr;
        }
    }

    /// Rows `i..i + MR`: 16 columns per step, then the last `b.cols % 16` one by one.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; rows `i..i + MR` exist; shapes as checked by `gemm_f32_nn`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn gemm_nn_rows_avx2<T: super::Elem, const MR: usize, const ACC: bool>(
        a: super::Mat<'_>,
        b: super::Mat<'_, T>,
        out: &mut [f32],
        ldo: usize,
        i: usize,
    ) {
        let n = b.cols;
        let mut j = 0;
        while j + 16 <= n {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            if ACC {
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row i + r of the output, columns j..j + 16 < n.
                    let op = out.as_ptr().add((i + r) * ldo + j);
                    *acc = [_mm256_loadu_ps(op), _mm256_loadu_ps(op.add(8))];
                }
            }
            for p in 0..a.cols {
                // SAFETY: row p < b.rows, columns j..j + 16 ≤ b.cols.
                let bp = b.data.as_ptr().add(p * b.stride + j);
                let (b0, b1) = if T::HALF {
                    let hp = bp.cast::<__m128i>();
                    (_mm256_cvtph_ps(_mm_loadu_si128(hp)), _mm256_cvtph_ps(_mm_loadu_si128(hp.add(1))))
                } else {
                    let fp = bp.cast::<f32>();
                    (_mm256_loadu_ps(fp), _mm256_loadu_ps(fp.add(8)))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row i + r < a.rows, column p < a.cols.
                    let av = _mm256_set1_ps(*a.data.get_unchecked((i + r) * a.stride + p));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: row i + r of the output, columns j..j + 16.
                let op = out.as_mut_ptr().add((i + r) * ldo + j);
                _mm256_storeu_ps(op, acc[0]);
                _mm256_storeu_ps(op.add(8), acc[1]);
            }
            j += 16;
        }
        for r in 0..MR {
            for jj in j..n {
                let o = (i + r) * ldo + jj;
                let mut x = if ACC { out[o] } else { 0.0 };
                for p in 0..a.cols {
                    let bv = _mm_set_ss(b.data[p * b.stride + jj].to_f32());
                    let av = _mm_set_ss(a.data[(i + r) * a.stride + p]);
                    x = _mm_cvtss_f32(_mm_fmadd_ss(av, bv, _mm_set_ss(x)));
                }
                out[o] = x;
            }
        }
    }

    cpufeatures::new!(avx2_fma, "avx2", "fma");

    pub fn has_avx2_fma() -> bool {
        avx2_fma::get()
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `k_len % 8 == 0`; `w` holds `n_rows` rows and `x`
    /// `n_tok` rows of `k_len`; `out` holds `n_rows * n_tok`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_f32_avx2(w: &[f32], x: &[f32], k_len: usize, n_rows: usize, n_tok: usize, out: &mut [f32]) {
        let mut r = 0;
        while r < n_rows {
            let mr = MR.min(n_rows - r);
            let mut t = 0;
            while t < n_tok {
                let nr = NR.min(n_tok - t);
                if mr == MR && nr == NR {
                    // The hot loop: 3 rows × 4 tokens, 8 lanes of k at a time.
                    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
                    let wp = w.as_ptr().add(r * k_len);
                    let xp = x.as_ptr().add(t * k_len);
                    let mut k = 0;
                    while k < k_len {
                        // SAFETY: r + 2 < n_rows, t + 3 < n_tok and k + 8 <= k_len keep every
                        // load inside `w` and `x`.
                        let w0 = _mm256_loadu_ps(wp.add(k));
                        let w1 = _mm256_loadu_ps(wp.add(k_len + k));
                        let w2 = _mm256_loadu_ps(wp.add(2 * k_len + k));
                        for (j, a) in (0..NR).zip(0..) {
                            let xv = _mm256_loadu_ps(xp.add(j * k_len + k));
                            acc[0][a] = _mm256_fmadd_ps(w0, xv, acc[0][a]);
                            acc[1][a] = _mm256_fmadd_ps(w1, xv, acc[1][a]);
                            acc[2][a] = _mm256_fmadd_ps(w2, xv, acc[2][a]);
                        }
                        k += 8;
                    }
                    for (i, row) in acc.iter().enumerate() {
                        for (j, v) in row.iter().enumerate() {
                            out[(r + i) * n_tok + t + j] = hsum(*v);
                        }
                    }
                } else {
                    // Edge tiles: one vector dot per output.
                    for i in 0..mr {
                        for j in 0..nr {
                            let wp = w.as_ptr().add((r + i) * k_len);
                            let xp = x.as_ptr().add((t + j) * k_len);
                            let mut a = _mm256_setzero_ps();
                            let mut k = 0;
                            while k < k_len {
                                // SAFETY: row r+i < n_rows, token t+j < n_tok, k + 8 <= k_len.
                                a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(k)), _mm256_loadu_ps(xp.add(k)), a);
                                k += 8;
                            }
                            out[(r + i) * n_tok + t + j] = hsum(a);
                        }
                    }
                }
                t += nr;
            }
            r += mr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn nn_dispatched_matches_scalar_on_every_edge_shape() {
        for (m, n, k) in [(1, 1, 1), (4, 32, 64), (7, 45, 64), (33, 64, 100), (5, 16, 3), (2, 70, 512)] {
            // Strided views: a inside rows of k + 3, b inside rows of n + 5.
            let (sa, sb, so) = (k + 3, n + 5, n + 2);
            let a = data(m * sa, 3);
            let b = data(k * sb, 4);
            let (mut x, mut y) = (alloc::vec![7.0; m * so], alloc::vec![7.0; m * so]);
            let am = Mat { data: &a, rows: m, cols: k, stride: sa };
            let bm = Mat { data: &b, rows: k, cols: n, stride: sb };
            gemm_f32_nn(am, bm, &mut x, so);
            gemm_f32_nn_scalar(am, bm, &mut y, so);
            // Every path: the same fused steps in the same order per element, so the same bits.
            for path in crate::available_kernel_paths() {
                let mut z = alloc::vec![7.0; m * so];
                gemm_f32_nn_into::<f32, false>(path, am, bm, &mut z, so);
                assert_eq!(z, y, "{path} {m}x{n}x{k}");
                let bh: Vec<half::f16> = b.iter().map(|&v| half::f16::from_f32(v)).collect();
                let bhm = Mat { data: &bh, rows: k, cols: n, stride: sb };
                let (mut z1, mut z2) = (alloc::vec![7.0; m * so], alloc::vec![7.0; m * so]);
                gemm_f32_nn_into::<half::f16, true>(path, am, bhm, &mut z1, so);
                gemm_f32_nn_into::<half::f16, true>(crate::KernelPath::Scalar, am, bhm, &mut z2, so);
                assert_eq!(z1, z2, "{path} {m}x{n}x{k}, f16, accumulating");
            }
            for (i, (p, q)) in x.iter().zip(&y).enumerate() {
                // The reference against a plain f64 sum: k · ε · max|a·b|.
                let e: f64 = (0..k).map(|p| a[i / so * sa + p] as f64 * b[p * sb + i % so] as f64).sum();
                let bound = k as f64 * f32::EPSILON as f64 * 0.25 * 2.0;
                if i % so < n {
                    assert!((*q as f64 - e).abs() <= bound, "{m}x{n}x{k} at {i}: {q} vs {e}");
                }
                assert_eq!(p, q, "{m}x{n}x{k} at {i}");
            }
            // Padding between rows is left alone.
            assert!(x.chunks_exact(so).all(|r| r[n..].iter().all(|&v| v == 7.0)));
            // B as f16, widened as it is read: the same as widening it first.
            let bh: Vec<half::f16> = b.iter().map(|&v| half::f16::from_f32(v)).collect();
            let bw: Vec<f32> = bh.iter().map(|h| h.to_f32()).collect();
            let (mut h1, mut h2) = (alloc::vec![7.0; m * so], alloc::vec![7.0; m * so]);
            gemm_f32_nn(am, Mat { data: &bh, rows: k, cols: n, stride: sb }, &mut h1, so);
            gemm_f32_nn(am, Mat { data: &bw, rows: k, cols: n, stride: sb }, &mut h2, so);
            assert_eq!(h1, h2, "{m}x{n}x{k}: f16 b");
            gemm_f32_nn_acc(am, Mat { data: &bh, rows: k, cols: n, stride: sb }, &mut h1, so);
            gemm_f32_nn_acc(am, Mat { data: &bw, rows: k, cols: n, stride: sb }, &mut h2, so);
            assert_eq!(h1, h2, "{m}x{n}x{k}: f16 b, accumulated");
            // Accumulating: the product taken in two pieces along k, added to what is there.
            if k >= 2 {
                let (k1, k2) = (k / 2, k - k / 2);
                let mut z = alloc::vec![7.0; m * so];
                let a1 = Mat { data: &a, rows: m, cols: k1, stride: sa };
                let a2 = Mat { data: &a[k1..], rows: m, cols: k2, stride: sa };
                let b1 = Mat { data: &b, rows: k1, cols: n, stride: sb };
                let b2 = Mat { data: &b[k1 * sb..], rows: k2, cols: n, stride: sb };
                gemm_f32_nn_acc(a1, b1, &mut z, so);
                gemm_f32_nn_acc(a2, b2, &mut z, so);
                for (i, (p, q)) in z.iter().zip(&y).enumerate() {
                    let want = if i % so < n { q + 7.0 } else { 7.0 };
                    let bound = k as f32 * f32::EPSILON * 0.25 * 2.0 + 7.0 * f32::EPSILON;
                    assert!((p - want).abs() <= bound, "acc {m}x{n}x{k} at {i}: {p} vs {want}");
                }
            }
        }
    }

    #[test]
    fn dispatched_matches_scalar_on_every_edge_shape() {
        for (rows, toks, k) in [(1, 1, 8), (3, 4, 64), (7, 9, 576), (5, 2, 40), (4, 13, 1536), (2, 3, 7)] {
            let w = data(rows * k, 1);
            let x = data(toks * k, 2);
            let mut a = alloc::vec![0.0; rows * toks];
            let mut b = alloc::vec![0.0; rows * toks];
            gemm_f32(&w, &x, k, &mut a);
            gemm_f32_scalar(&w, &x, k, &mut b);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                // Different summation order: bound by k · ε · max|w·x| (entries are in ±0.5).
                let bound = k as f32 * f32::EPSILON * 0.25 * 4.0;
                assert!((p - q).abs() <= bound, "{rows}x{toks}x{k} at {i}: {p} vs {q}");
            }
        }
    }
}

/// A row-major matrix view of f32 (or, as [`gemm_f32_nn`]'s `b`, f16) values: element `(i, j)`
/// at `data[i * stride + j]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, T = f32> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// What a [`Mat`] may hold for [`gemm_f32_nn`]'s `b`: f32, or f16 widened as it is read (the KV
/// cache's keys and values in place).
pub trait Elem: Copy + sealed::Sealed {
    /// Whether the values are f16 (else f32).
    const HALF: bool;
    fn to_f32(self) -> f32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

impl Elem for f32 {
    const HALF: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for half::f16 {
    const HALF: bool = true;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl<T> Mat<'_, T> {
    fn check(&self, what: &str) {
        assert!(
            self.cols <= self.stride || self.rows <= 1,
            "gemm_f32_nn: {what} stride {} < cols {}",
            self.stride,
            self.cols
        );
        let need = if self.rows == 0 { 0 } else { (self.rows - 1) * self.stride + self.cols };
        assert!(self.data.len() >= need, "gemm_f32_nn: {what} needs {need} values, has {}", self.data.len());
    }
}

/// `out[i * ldo + j] = Σ_p a(i, p) · b(p, j)`: matrix × matrix with B not transposed (attention's
/// scores against transposed keys, and its weights against the values as they are cached).
pub fn gemm_f32_nn<T: Elem>(a: Mat<'_>, b: Mat<'_, T>, out: &mut [f32], ldo: usize) {
    gemm_f32_nn_into::<T, false>(crate::kernel_path(), a, b, out, ldo)
}

/// [`gemm_f32_nn`] adding the product to what `out` holds: `out[i][j] += Σ_p a[i][p] · b[p][j]`
/// (a product taken in pieces along the inner dimension).
pub fn gemm_f32_nn_acc<T: Elem>(a: Mat<'_>, b: Mat<'_, T>, out: &mut [f32], ldo: usize) {
    gemm_f32_nn_into::<T, true>(crate::kernel_path(), a, b, out, ldo)
}

fn gemm_f32_nn_into<T: Elem, const ACC: bool>(
    path: crate::KernelPath,
    a: Mat<'_>,
    b: Mat<'_, T>,
    out: &mut [f32],
    ldo: usize,
) {
    assert_eq!(a.cols, b.rows, "gemm_f32_nn: inner dimensions {} vs {}", a.cols, b.rows);
    a.check("a");
    b.check("b");
    assert!(b.cols <= ldo || a.rows <= 1, "gemm_f32_nn: output stride {ldo} < {} columns", b.cols);
    let need = if a.rows == 0 { 0 } else { (a.rows - 1) * ldo + b.cols };
    assert!(out.len() >= need, "gemm_f32_nn: output needs {need} values, has {}", out.len());
    #[cfg(target_arch = "x86_64")]
    match path {
        KernelPath::Avx512 if path.is_available() => {
            // SAFETY: AVX-512 F/BW/VL are available (checked in the match guard); every shape
            // was checked above.
            unsafe { x86::gemm_f32_nn_avx512::<T, ACC>(a, b, out, ldo) };
            return;
        }
        KernelPath::Avx2 if path.is_available() => {
            // SAFETY: AVX2, FMA and F16C are available (checked in the match guard);
            // every shape was checked above.
            unsafe { x86::gemm_f32_nn_avx2::<T, ACC>(a, b, out, ldo) };
            return;
        }
        _ => {}
    }
    let _ = path;
    gemm_f32_nn_scalar_into::<T, ACC>(a, b, out, ldo);
}

/// The reference for [`gemm_f32_nn`].
pub fn gemm_f32_nn_scalar<T: Elem>(a: Mat<'_>, b: Mat<'_, T>, out: &mut [f32], ldo: usize) {
    gemm_f32_nn_scalar_into::<T, false>(a, b, out, ldo)
}

fn gemm_f32_nn_scalar_into<T: Elem, const ACC: bool>(a: Mat<'_>, b: Mat<'_, T>, out: &mut [f32], ldo: usize) {
    for i in 0..a.rows {
        let o = &mut out[i * ldo..i * ldo + b.cols];
        if !ACC {
            o.fill(0.0);
        }
        for p in 0..a.cols {
            let av = a.data[i * a.stride + p];
            for (x, &bv) in o.iter_mut().zip(&b.data[p * b.stride..p * b.stride + b.cols]) {
                // Fused, as the SIMD kernels: every path gives the same bits.
                *x = crate::f32::fma(av, bv.to_f32(), *x);
            }
        }
    }
}
