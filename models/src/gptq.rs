//! Error-compensating quantization in the spirit of GPTQ (Frantar et al., 2022).
//!
//! A weight row `w` meets inputs whose second moment is `H = E[x xᵀ]`; the output error of
//! a quantized row `ŵ` is `(w − ŵ)ᵀ H (w − ŵ)`. Columns are quantized in order; after column
//! `i` is rounded, its error is pushed onto the columns not yet quantized so that they absorb
//! it, using the upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`):
//!
//! ```text
//! e = (w_i − ŵ_i) / U_ii;   w_j -= e · U_ij  for j > i
//! ```
//!
//! Block formats fix their parameters (scales, mins) per block: when the first column of a
//! block is reached, the block's parameters are chosen by the importance-weighted quantizer
//! from the current (already compensated) values, and its columns are then rounded one at a
//! time on that block's grid (`pith_kernels::block_grid`). Rows are independent, so they are
//! spread over threads.

use crate::error::{CompressError, Result};
use pith_kernels::GgmlType;
use rayon::prelude::*;

/// Lower Cholesky factor of the symmetric positive definite `a` (n × n, row-major), in place
/// (the upper triangle is left as it was). Fails with the index of the first non-positive pivot.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n, "cholesky_lower: shape");
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (i * n, j * n);
            let s: f64 = a[ri + j] - dot64(&a[ri..ri + j], &a[rj..rj + j]);
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return Err(i);
                }
                a[ri + i] = s.sqrt();
            } else {
                a[ri + j] = s / a[rj + j];
            }
        }
    }
    Ok(())
}

#[inline]
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    // Four partial sums let the compiler vectorise the loop.
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Prepares `H` for GPTQ: columns that never saw input get a unit diagonal, then
/// `damp · mean(diag H)` is added to the diagonal. Returns the number of dead columns.
pub fn dampen(h: &mut [f64], n: usize, damp: f64) -> usize {
    let mut dead = 0;
    for i in 0..n {
        if h[i * n + i] <= 0.0 {
            h[i * n + i] = 1.0;
            dead += 1;
        }
    }
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        h[i * n + i] += damp * mean;
    }
    dead
}

/// The upper triangular `U` with `H⁻¹ = UᵀU` (row-major, f32), from a damped `H`.
///
/// With `J` the reversal permutation: if `J H J = L Lᵀ` (lower Cholesky) then
/// `H = (J L J)(J L J)ᵀ` with `J L J` upper, so `H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J)` and
/// `U = J L⁻¹ J`: one Cholesky and one triangular inverse, no explicit `H⁻¹`.
pub fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f32>, usize> {
    let mut r = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            r[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    cholesky_lower(&mut r, n).map_err(|i| n - 1 - i)?;
    // X = L⁻¹ (lower), row by row: L X = I  ⇒  X_i = (e_i − Σ_{k<i} L_ik X_k) / L_ii.
    let mut x = vec![0.0f64; n * n];
    let mut row = vec![0.0f64; n];
    for i in 0..n {
        row.fill(0.0);
        row[i] = 1.0;
        for k in 0..i {
            let l = r[i * n + k];
            if l != 0.0 {
                let xk = &x[k * n..k * n + k + 1];
                for (a, b) in row[..=k].iter_mut().zip(xk) {
                    *a -= l * b;
                }
            }
        }
        let d = r[i * n + i];
        for (dst, v) in x[i * n..i * n + i + 1].iter_mut().zip(&row[..=i]) {
            *dst = v / d;
        }
    }
    let mut u = vec![0.0f32; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = x[(n - 1 - i) * n + (n - 1 - j)] as f32;
        }
    }
    Ok(u)
}

/// The factor GPTQ runs on, from a mean second-moment matrix: damped, inverted, factored.
/// Retries with ten times the damping (up to three times) if `H` is not positive definite
/// in floating point.
pub fn factor(h_mean: &[f64], n: usize, damp: f64, what: &str) -> Result<Vec<f32>> {
    let mut d = damp;
    for _ in 0..4 {
        let mut h = h_mean.to_vec();
        dampen(&mut h, n, d);
        match inverse_cholesky_upper(&h, n) {
            Ok(u) => return Ok(u),
            Err(_) => d *= 10.0,
        }
    }
    Err(CompressError::Tensor {
        tensor: what.into(),
        why: format!("the calibration second-moment matrix is not positive definite even with damping {d}"),
    })
}

/// Quantizes `rows` (n_rows × n, row-major f32) to `ty` with error compensation. `u` is the
/// factor from [`factor`] (n × n), `importance` the per-column weights for choosing block
/// parameters. Returns the encoded rows. `on_rows` is called with the number of rows done.
pub fn quantize_rows(
    ty: GgmlType,
    rows: &[f32],
    n: usize,
    u: &[f32],
    importance: &[f32],
    on_rows: &(dyn Fn(usize) + Sync),
) -> Vec<u8> {
    assert_eq!(u.len(), n * n, "gptq: factor shape");
    assert_eq!(importance.len(), n, "gptq: importance length");
    let bs = ty.block_size();
    assert!(n.is_multiple_of(bs), "gptq: {n} columns is not a whole number of {ty} blocks");
    let rb = ty.row_bytes(n).unwrap_or(0);
    let n_rows = rows.len() / n;
    let mut out = vec![0u8; n_rows * rb];
    const GROUP: usize = 16;
    out.par_chunks_mut(rb * GROUP).zip(rows.par_chunks(n * GROUP)).for_each(|(dst, src)| {
        let mut w = vec![0.0f32; n];
        let mut scale = vec![0.0f32; bs];
        let mut offset = vec![0.0f32; bs];
        let mut codes = vec![0i32; bs];
        for (d, s) in dst.chunks_exact_mut(rb).zip(src.chunks_exact(n)) {
            w.copy_from_slice(s);
            quantize_row_compensated(ty, &mut w, u, importance, d, &mut scale, &mut offset, &mut codes);
        }
        on_rows(src.len() / n);
    });
    out
}

/// One row: the hot loop of GPTQ. `w` is consumed (it ends holding compensated values).
#[allow(clippy::too_many_arguments)]
fn quantize_row_compensated(
    ty: GgmlType,
    w: &mut [f32],
    u: &[f32],
    importance: &[f32],
    dst: &mut [u8],
    scale: &mut [f32],
    offset: &mut [f32],
    codes: &mut [i32],
) {
    let n = w.len();
    let bs = ty.block_size();
    let bb = ty.type_size();
    for (b, block) in dst.chunks_exact_mut(bb).enumerate() {
        let c0 = b * bs;
        // Parameters from the current, compensated values of this block.
        pith_kernels::quantize_row_weighted(ty, &w[c0..c0 + bs], &importance[c0..c0 + bs], block);
        let (qmin, qmax) = pith_kernels::block_grid(ty, block, scale, offset);
        for j in 0..bs {
            let i = c0 + j;
            let q = if scale[j] != 0.0 {
                ((w[i] - offset[j]) / scale[j]).round().clamp(qmin as f32, qmax as f32)
            } else {
                0.0f32.clamp(qmin as f32, qmax as f32)
            };
            codes[j] = q as i32;
            let deq = scale[j] * q + offset[j];
            let urow = &u[i * n..(i + 1) * n];
            let err = (w[i] - deq) / urow[i];
            w[i] = deq;
            if err != 0.0 {
                for (x, &c) in w[i + 1..].iter_mut().zip(&urow[i + 1..]) {
                    *x -= err * c;
                }
            }
        }
        pith_kernels::set_block_codes(ty, block, codes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// A random symmetric positive definite matrix `A Aᵀ / m + εI`.
    fn spd(n: usize, seed: &mut u64) -> Vec<f64> {
        let m = n + 8;
        let a: Vec<f64> = (0..n * m).map(|_| lcg(seed)).collect();
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..m).map(|k| a[i * m + k] * a[j * m + k]).sum::<f64>() / m as f64;
            }
            h[i * n + i] += 1e-3;
        }
        h
    }

    #[test]
    fn upper_factor_inverts_h() {
        let mut seed = 7;
        for n in [1, 5, 32, 70] {
            let h = spd(n, &mut seed);
            let u = inverse_cholesky_upper(&h, n).unwrap();
            for i in 0..n {
                for j in 0..i {
                    assert_eq!(u[i * n + j], 0.0, "U must be upper triangular");
                }
            }
            // (UᵀU) H = I
            let mut worst = 0.0f64;
            for i in 0..n {
                for j in 0..n {
                    let mut s = 0.0f64;
                    for k in 0..n {
                        let hinv_ik: f64 = (0..n).map(|l| u[l * n + i] as f64 * u[l * n + k] as f64).sum();
                        s += hinv_ik * h[k * n + j];
                    }
                    let want = if i == j { 1.0 } else { 0.0 };
                    worst = worst.max((s - want).abs());
                }
            }
            assert!(worst < 2e-3, "n={n}: |U'U H - I| = {worst}");
        }
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky_lower(&mut a, 2), Err(1));
    }

    #[test]
    fn dead_columns_get_a_unit_diagonal() {
        let mut h = vec![2.0, 0.0, 0.0, 0.0];
        assert_eq!(dampen(&mut h, 2, 0.0), 1);
        assert_eq!(h, vec![2.0, 0.0, 0.0, 1.0]);
    }

    /// Output error `Σ_t (x_t · (w − ŵ))²` of the encoded rows on inputs `x`.
    fn output_error(ty: GgmlType, w: &[f32], enc: &[u8], n: usize, xs: &[Vec<f32>]) -> f64 {
        let rb = ty.row_bytes(n).unwrap();
        let mut deq = vec![0.0f32; n];
        let mut e = 0.0f64;
        for (r, row) in w.chunks_exact(n).enumerate() {
            pith_kernels::dequantize_row(ty, &enc[r * rb..(r + 1) * rb], &mut deq);
            for x in xs {
                let d: f64 = (0..n).map(|j| x[j] as f64 * (row[j] - deq[j]) as f64).sum();
                e += d * d;
            }
        }
        e
    }

    /// On correlated inputs, compensation must beat round-to-nearest on the output error
    /// it minimises, for every block type.
    #[test]
    fn compensation_lowers_output_error_for_every_type() {
        let mut seed = 11;
        let n = 256;
        let n_rows = 24;
        // Inputs with strongly correlated columns and uneven scales, like real activations.
        let basis: Vec<Vec<f32>> = (0..16).map(|_| (0..n).map(|_| lcg(&mut seed) as f32).collect()).collect();
        let xs: Vec<Vec<f32>> = (0..600)
            .map(|_| {
                let c: Vec<f32> = (0..16).map(|_| lcg(&mut seed) as f32).collect();
                (0..n)
                    .map(|j| {
                        let s: f32 = (0..16).map(|k| c[k] * basis[k][j]).sum();
                        s * (1.0 + 3.0 * (j % 7) as f32 / 7.0) + 0.1 * lcg(&mut seed) as f32
                    })
                    .collect()
            })
            .collect();
        let mut h = vec![0.0f64; n * n];
        for x in &xs {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += x[i] as f64 * x[j] as f64;
                }
            }
        }
        for v in h.iter_mut() {
            *v /= xs.len() as f64;
        }
        let imp: Vec<f32> = (0..n).map(|i| h[i * n + i] as f32).collect();
        let u = factor(&h, n, 0.01, "test").unwrap();
        let w: Vec<f32> = (0..n_rows * n).map(|_| lcg(&mut seed) as f32 * 0.05).collect();
        use GgmlType::*;
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
            let rb = ty.row_bytes(n).unwrap();
            let mut rtn = vec![0u8; n_rows * rb];
            for (r, row) in w.chunks_exact(n).enumerate() {
                pith_kernels::quantize_row(ty, row, &mut rtn[r * rb..(r + 1) * rb]);
            }
            let comp = quantize_rows(ty, &w, n, &u, &imp, &|_| {});
            let (e_rtn, e_comp) = (output_error(ty, &w, &rtn, n, &xs), output_error(ty, &w, &comp, n, &xs));
            assert!(
                e_comp < 0.8 * e_rtn,
                "{ty}: compensated output error {e_comp:.4e} vs round-to-nearest {e_rtn:.4e}"
            );
        }
    }
}
