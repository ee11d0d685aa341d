//! Round-trip and dot-product accuracy on real weight rows of SmolLM2-135M-Instruct
//! (`fixtures/real_rows.f32`: 4 rows each of blk.0.ffn_down (Q4_1 in the model file),
//! blk.5.attn_q (Q4_1) and token_embd (Q8_0), dequantized by gguf-py, 512 elements).
//!
//! Note the rows are *already* on a Q4_1 / Q8_0 grid, so re-quantizing them to the same
//! format is nearly lossless (only the f16 rounding of the recomputed scales remains);
//! the other formats see realistic, non-Gaussian weight distributions.

mod common;

use common::*;
use pith_kernels::{vec_dot, vec_dot_f32, GgmlType, ALL_TYPES};
use GgmlType::*;

/// Round-trip relative RMSE bound per type on the 12 real rows (aggregated), with the
/// measured value. Gaussian figures for comparison are in each module's unit tests.
fn roundtrip_bound(ty: GgmlType) -> f64 {
    match ty {
        F32 => 0.0,      // exact
        F16 => 2.5e-4,   // measured 1.92e-4
        BF16 => 1.8e-3,  // measured 1.39e-3
        Q8_0 => 7.0e-3,  // measured 5.49e-3 (token_embd rows: exactly 0, they are Q8_0 already)
        Q8_1 => 7.0e-3,  // measured 5.49e-3
        Q8_K => 0.010,   // measured 8.09e-3
        Q6_K => 0.023,   // measured 1.87e-2
        Q5_1 => 0.060,   // measured 4.78e-2 (31 steps do not contain Q4_1's 15-step grid)
        Q5_0 => 0.058,   // measured 4.67e-2
        Q5_K => 0.029,   // measured 2.32e-2
        Q4_1 => 0.037,   // measured 2.97e-2 (Q4_1 rows: exactly 0; token_embd 8.0e-2)
        Q4_0 => 0.115,   // measured 9.15e-2
        Q4_K => 0.041,   // measured 3.28e-2
        Q3_K => 0.20,    // measured 1.60e-1
        Q2_K => 0.38,    // measured 3.17e-1
        IQ4_NL => 0.10,  // measured 8.07e-2
        IQ4_XS => 0.097, // measured 7.80e-2
    }
}

#[test]
fn roundtrip_real_rows() {
    let rows = real_rows();
    assert_eq!(rows.len(), 12);
    let mut report = String::new();
    for ty in ALL_TYPES {
        let mut all_x = Vec::new();
        let mut all_y = Vec::new();
        let mut groups = Vec::new();
        for (g, group) in rows.chunks(4).enumerate() {
            let (mut gx, mut gy) = (Vec::new(), Vec::new());
            for x in group {
                let y = dequantize(ty, &quantize(ty, x), x.len());
                gx.extend_from_slice(x);
                gy.extend_from_slice(&y);
            }
            groups.push(format!("{}: {:.2e}", REAL_GROUPS[g], rel_rmse(&gx, &gy)));
            all_x.extend(gx);
            all_y.extend(gy);
        }
        // Re-quantizing rows that already sit on the format's grid is lossless.
        if ty == Q4_1 || ty == Q8_0 {
            let native = if ty == Q4_1 { 0..8 } else { 8..12 };
            for x in &rows[native] {
                assert_eq!(&dequantize(ty, &quantize(ty, x), x.len()), x, "{ty}: native row not reproduced");
            }
        }
        let e = rel_rmse(&all_x, &all_y);
        report += &format!("{ty:>5}: rel RMSE {e:.3e}   ({})\n", groups.join(", "));
        let bound = roundtrip_bound(ty);
        assert!(e <= bound, "{ty}: real-row round-trip rel RMSE {e:.3e} > {bound}");
    }
    eprintln!("{report}");
}

/// For every type, with a real row as weights and another real row as activations:
/// the integer `vec_dot` equals `Σ w̃ x̃` to f32 rounding, is within 1 % (normalized by
/// ‖w̃‖ ‖x‖) of the f32 dot with the unquantized activations, and `vec_dot_f32` equals
/// dequantize + sum to 1e-5 of `Σ |w̃ x|`.
#[test]
fn vec_dots_on_real_rows() {
    let rows = real_rows();
    let n = REAL_ROW_LEN;
    let mut report = String::new();
    for ty in ALL_TYPES {
        let xty = ty.vec_dot_type();
        let (mut worst_int, mut worst_f32) = (0.0f64, 0.0f64);
        for i in 0..rows.len() {
            let (w, x) = (&rows[i], &rows[(i + 5) % rows.len()]);
            let wq = quantize(ty, w);
            let xq = quantize(xty, x);
            let (wd, xd) = (dequantize(ty, &wq, n), dequantize(xty, &xq, n));

            let got = vec_dot(ty, n, &wq, &xq) as f64;
            let mut tol = 1e-5 * abs_dot64(&wd, &xd);
            if xty == Q8_1 {
                for (wb, xb) in wd.chunks(32).zip(xd.chunks(32)) {
                    let m = wb.iter().fold(0.0f64, |a, &v| a.max((v as f64).abs()));
                    tol += m * xb.iter().map(|&v| v as f64).sum::<f64>().abs() / 1024.0;
                }
            }
            let exact = dot64(&wd, &xd);
            assert!((got - exact).abs() <= tol, "{ty} row {i}: vec_dot {got} vs Σ w̃x̃ {exact}");
            let err = (got - dot64(&wd, x)).abs() / (norm64(&wd) * norm64(x));
            assert!(err <= 0.01, "{ty} row {i}: vec_dot vs f32 dot: {err:.3e}");
            worst_int = worst_int.max(err);

            let got = vec_dot_f32(ty, &wq, x) as f64;
            let err = (got - dot64(&wd, x)).abs() / abs_dot64(&wd, x);
            assert!(err <= 1e-5, "{ty} row {i}: vec_dot_f32 vs dequantize+sum: {err:.3e}");
            worst_f32 = worst_f32.max(err);
        }
        report += &format!(
            "{ty:>5}: vec_dot vs f32 dot {worst_int:.2e} (of ‖w̃‖‖x‖); vec_dot_f32 vs deq+sum {worst_f32:.2e} (of Σ|w̃x|)\n"
        );
    }
    eprintln!("{report}");
}

/// The importance-weighted quantizers on the real rows: with uniform importance never
/// worse than the reference quantizers in plain squared error (block by block), with
/// per-column log-normal importance (as an importance matrix gives: one value per input
/// column, shared by the rows) clearly better in weighted squared error.
#[test]
fn weighted_quantizers_on_real_rows() {
    let rows = real_rows();
    let n = REAL_ROW_LEN;
    // Deterministic per-column importance exp(1.5 z), z ~ N(0, 1) (Box–Muller on an LCG).
    let mut seed = 0x5eed_u64;
    let mut uniform01 = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let imp: Vec<f32> = (0..n)
        .map(|_| {
            let z = (-2.0 * uniform01().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform01()).cos();
            (1.5 * z).exp() as f32
        })
        .collect();
    let ones = vec![1.0f32; n];
    let mut report = String::new();
    for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
        let bs = ty.block_size();
        let mut tot = [[0.0f64; 2]; 2];
        for x in &rows {
            let yr = dequantize(ty, &quantize(ty, x), n);
            for (k, w) in [&ones, &imp].into_iter().enumerate() {
                let mut q = vec![0u8; ty.row_bytes(n).unwrap()];
                pith_kernels::quantize_row_weighted(ty, x, w, &mut q);
                let yw = dequantize(ty, &q, n);
                for b in 0..n / bs {
                    let e = |y: &[f32]| -> f64 {
                        (b * bs..(b + 1) * bs).map(|i| w[i] as f64 * (x[i] as f64 - y[i] as f64).powi(2)).sum()
                    };
                    let (ew, er) = (e(&yw), e(&yr));
                    if k == 0 {
                        assert!(ew <= er * (1.0 + 1e-12), "{ty} block {b}: {ew:e} > reference {er:e}");
                    }
                    tot[k][0] += ew;
                    tot[k][1] += er;
                }
            }
        }
        let (u, l) = (tot[0][0] / tot[0][1], tot[1][0] / tot[1][1]);
        report += &format!("{ty}: uniform {u:.3}, per-column log-normal {l:.3}\n");
        assert!(u <= 1.0, "{ty}: uniform importance ratio {u}");
        assert!(l < 0.9, "{ty}: weighted ratio {l}");
    }
    eprintln!("weighted / reference squared error on real rows:\n{report}");
}
