//! Shared helpers for the per-module unit tests: seeded Gaussian data, the round-trip
//! error measure and the two dot-product checks every type runs.

use crate::{dequantize_row, quantize_row, vec_dot, vec_dot_f32, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::vec;
use std::vec::Vec;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` samples of N(0, sigma²) (Box–Muller).
pub fn gaussian(rng: &mut StdRng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.gen();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * core::f64::consts::PI * u2).cos();
            sigma * z as f32
        })
        .collect()
}

pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quantize_row(ty, x, &mut q);
    q
}

pub fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n];
    dequantize_row(ty, q, &mut y);
    y
}

/// `sqrt(Σ (x - y)²) / sqrt(Σ x²)`: the round-trip RMSE relative to the data's RMS.
pub fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let den: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Relative RMSE of quantize → dequantize over `rows` seeded N(0, 1) rows of `n`.
pub fn gaussian_roundtrip_error(ty: GgmlType, rows: usize, n: usize) -> f64 {
    let mut rng = rng(0x5eed ^ ty.id() as u64);
    let mut all_x = Vec::new();
    let mut all_y = Vec::new();
    for _ in 0..rows {
        let x = gaussian(&mut rng, n, 1.0);
        let y = dequantize(ty, &quantize(ty, &x), n);
        all_x.extend_from_slice(&x);
        all_y.extend_from_slice(&y);
    }
    let e = rel_rmse(&all_x, &all_y);
    std::eprintln!("{ty}: round-trip rel RMSE (Gaussian) = {e:.3e}");
    e
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn abs_dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum()
}

fn norm64(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// Checks the integer-path `vec_dot` on seeded Gaussian rows of each length in `ns`:
///
/// 1. It computes the dot product of the *dequantized* operands, `Σ w̃ x̃`, up to f32
///    rounding: `|got - Σ w̃ x̃| <= 1e-5 Σ |w̃ x̃|` (plus, for Q8_1 activations, the f16
///    rounding of the stored `s = d Σ q`, at most `2^-10 |m| |Σ_block x̃|` per block with
///    `|m| <= max |w̃|` in the block). Any layout or scale mistake breaks this by orders
///    of magnitude.
/// 2. Against the f32 dot of the dequantized weights with the *original* activations,
///    the error is the activation quantization's: `|got - Σ w̃ x| / (‖w̃‖ ‖x‖) <= bound`
///    (Cauchy–Schwarz bounds it by ‖x - x̃‖ / ‖x‖, the activation round-trip error).
///
/// Returns the largest normalized error seen in (2).
pub fn check_vec_dot(ty: GgmlType, ns: &[usize], bound: f64) -> f64 {
    let xty = ty.vec_dot_type();
    let mut rng = rng(0xd07 ^ ty.id() as u64);
    let mut worst = 0.0f64;
    for &n in ns {
        for _ in 0..8 {
            let w = gaussian(&mut rng, n, 1.0);
            let x = gaussian(&mut rng, n, 1.0);
            let wq = quantize(ty, &w);
            let xq = quantize(xty, &x);
            let wd = dequantize(ty, &wq, n);
            let xd = dequantize(xty, &xq, n);
            let got = vec_dot(ty, n, &wq, &xq) as f64;

            let mut tol = 1e-5 * abs_dot64(&wd, &xd) + 1e-30;
            if xty == GgmlType::Q8_1 {
                for (wb, xb) in wd.chunks(32).zip(xd.chunks(32)) {
                    let m = wb.iter().fold(0.0f64, |a, &v| a.max((v as f64).abs()));
                    let s: f64 = xb.iter().map(|&v| v as f64).sum();
                    tol += m * s.abs() / 1024.0;
                }
            }
            let exact = dot64(&wd, &xd);
            assert!((got - exact).abs() <= tol, "{ty} n={n}: vec_dot {got} vs Σ w̃x̃ {exact} (tol {tol:.3e})");

            let reference = dot64(&wd, &x);
            let err = (got - reference).abs() / (norm64(&wd) * norm64(&x));
            assert!(err <= bound, "{ty} n={n}: vec_dot {got} vs f32 dot {reference}: {err:.3e} > {bound}");
            worst = worst.max(err);
        }
    }
    std::eprintln!("{ty}: vec_dot vs f32 dot, max |err|/(‖w̃‖‖x‖) = {worst:.3e}");
    worst
}

/// Checks `vec_dot_f32` against dequantize + a plain f64 sum:
/// `|got - Σ w̃ x| <= 1e-5 Σ |w̃ x|`. Returns the largest ratio `|err| / Σ |w̃ x|`.
pub fn check_vec_dot_f32(ty: GgmlType, ns: &[usize]) -> f64 {
    let mut rng = rng(0xf32 ^ ty.id() as u64);
    let mut worst = 0.0f64;
    for &n in ns {
        for _ in 0..8 {
            let w = gaussian(&mut rng, n, 1.0);
            let x = gaussian(&mut rng, n, 1.0);
            let wq = quantize(ty, &w);
            let wd = dequantize(ty, &wq, n);
            let got = vec_dot_f32(ty, &wq, &x) as f64;
            let reference = dot64(&wd, &x);
            let scale = abs_dot64(&wd, &x) + 1e-30;
            let err = (got - reference).abs() / scale;
            assert!(err <= 1e-5, "{ty} n={n}: vec_dot_f32 {got} vs {reference}: {err:.3e}");
            worst = worst.max(err);
        }
    }
    std::eprintln!("{ty}: vec_dot_f32 vs dequantize+sum, max |err|/Σ|w̃x| = {worst:.3e}");
    worst
}
