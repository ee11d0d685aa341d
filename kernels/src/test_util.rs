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

pub fn quantize_weighted(ty: GgmlType, x: &[f32], importance: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    crate::quantize_row_weighted(ty, x, importance, &mut q);
    q
}

/// `n` samples of `exp(sigma z)`, z ~ N(0, 1): importance spread over orders of magnitude.
pub fn lognormal(rng: &mut StdRng, n: usize, sigma: f32) -> Vec<f32> {
    gaussian(rng, n, sigma).into_iter().map(|z| z.exp()).collect()
}

/// `Σ w (x - y)²` per block of `bs` elements.
fn block_wsse(x: &[f32], y: &[f32], w: &[f32], bs: usize) -> Vec<f64> {
    x.chunks(bs)
        .zip(y.chunks(bs))
        .zip(w.chunks(bs))
        .map(|((x, y), w)| x.iter().zip(y).zip(w).map(|((&a, &b), &w)| w as f64 * (a as f64 - b as f64).powi(2)).sum())
        .collect()
}

/// The weighted quantizer against the reference (round-to-nearest) quantizer on `rows`
/// seeded rows of `n` N(0, 1) values, returning the error ratios
/// `(SSE_weighted / SSE_reference` with uniform importance,
/// `Σ imp err²_weighted / Σ imp err²_reference` with log-normal importance (σ = 1.5)`).
///
/// Also checks, block by block, that the weighted quantizer is never worse than the
/// reference under the block's importance (it keeps the reference block otherwise): with
/// uniform importance exactly (up to f64 summation order), with log-normal importance up
/// to 1e-5 relative (the quantizer also gives zero-importance elements a 1e-6 floor).
pub fn weighted_vs_reference(ty: GgmlType, rows: usize, n: usize) -> (f64, f64) {
    let mut rng = rng(0x1a7 ^ ty.id() as u64);
    let bs = ty.block_size();
    let mut tot = [[0.0f64; 2]; 2];
    for r in 0..rows {
        let x = gaussian(&mut rng, n, 1.0);
        let imp_l = lognormal(&mut rng, n, 1.5);
        let ones = vec![1.0f32; n];
        for (k, imp) in [&ones, &imp_l].into_iter().enumerate() {
            let yw = dequantize(ty, &quantize_weighted(ty, &x, imp), n);
            let yr = dequantize(ty, &quantize(ty, &x), n);
            let (ew, er) = (block_wsse(&x, &yw, imp, bs), block_wsse(&x, &yr, imp, bs));
            for (b, (&a, &c)) in ew.iter().zip(&er).enumerate() {
                let tol = if k == 0 { 1e-12 } else { 1e-5 };
                assert!(
                    a <= c * (1.0 + tol),
                    "{ty} row {r} block {b} (importance {k}): weighted {a:e} > reference {c:e}"
                );
            }
            tot[k][0] += ew.iter().sum::<f64>();
            tot[k][1] += er.iter().sum::<f64>();
        }
    }
    let (u, w) = (tot[0][0] / tot[0][1], tot[1][0] / tot[1][1]);
    std::eprintln!("{ty}: weighted/reference error ratio: uniform importance {u:.4}, log-normal importance {w:.4}");
    (u, w)
}

/// Degenerate inputs: all-zero, constant, one-hot, tiny (f16-subnormal scales) and
/// huge-range blocks, with all-zero, one-hot and sparse importance. The weighted quantizer
/// must not panic, must give finite values, and must not be worse than the reference
/// under the block's importance (all-zero importance counting as uniform).
pub fn check_weighted_edge_cases(ty: GgmlType) {
    let bs = ty.block_size();
    let n = 2 * bs;
    let mut rng = rng(0xed9e ^ ty.id() as u64);
    let g = gaussian(&mut rng, n, 1.0);
    let xs: Vec<(&str, Vec<f32>)> = vec![
        ("zeros", vec![0.0; n]),
        ("constant", vec![0.75; n]),
        ("negative constant", vec![-3.0; n]),
        ("one-hot", (0..n).map(|i| if i % bs == 5 { 2.5 } else { 0.0 }).collect()),
        ("tiny", g.iter().map(|v| v * 1e-7).collect()),
        ("outlier", g.iter().enumerate().map(|(i, v)| if i % bs == 3 { 300.0 } else { *v }).collect()),
        ("gaussian", g.clone()),
    ];
    let imps: Vec<(&str, Vec<f32>)> = vec![
        ("zero", vec![0.0; n]),
        ("uniform", vec![1.0; n]),
        ("one-hot", (0..n).map(|i| if i % bs == 7 { 1.0 } else { 0.0 }).collect()),
        ("sparse", (0..n).map(|i| if i % 5 == 0 { (i % 7) as f32 + 0.5 } else { 0.0 }).collect()),
        ("invalid", (0..n).map(|i| [f32::NAN, -1.0, f32::INFINITY, 2.0][i % 4]).collect()),
    ];
    for (xn, x) in &xs {
        for (iname, imp) in &imps {
            let q = quantize_weighted(ty, x, imp);
            let q2 = quantize_weighted(ty, x, imp);
            assert_eq!(q, q2, "{ty} {xn}/{iname}: not deterministic");
            let y = dequantize(ty, &q, n);
            assert!(y.iter().all(|v| v.is_finite()), "{ty} {xn}/{iname}: non-finite output");
            let yr = dequantize(ty, &quantize(ty, x), n);
            // The quantizer's own view of the importance: invalid entries are 0, an
            // all-zero block is uniform.
            let eff: Vec<f32> = imp
                .chunks(bs)
                .flat_map(|b| {
                    let ok = |v: f32| v > 0.0 && v.is_finite();
                    let any = b.iter().any(|&v| ok(v));
                    b.iter().map(move |&v| {
                        if !any {
                            1.0
                        } else if ok(v) {
                            v
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let (ew, er) = (block_wsse(x, &y, &eff, bs), block_wsse(x, &yr, &eff, bs));
            for (b, (&a, &c)) in ew.iter().zip(&er).enumerate() {
                // Absolute slack for the 1e-6 floor on zero-importance elements.
                let slack = 1e-5 * x[b * bs..(b + 1) * bs].iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
                assert!(a <= c * (1.0 + 1e-5) + slack, "{ty} {xn}/{iname} block {b}: weighted {a:e} > reference {c:e}");
            }
            if *xn == "zeros" {
                assert!(y.iter().all(|&v| v == 0.0), "{ty} {xn}/{iname}: zeros must stay zeros");
            }
        }
    }
    // Non-finite or huge input: no panic, deterministic (the output may be non-finite, as
    // the reference quantizer's is).
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -3e38] {
        let mut x = g.clone();
        x[3] = bad;
        x[bs + 17] = bad;
        let q = quantize_weighted(ty, &x, &vec![1.0; n]);
        assert_eq!(q, quantize_weighted(ty, &x, &vec![1.0; n]), "{ty} input {bad}: not deterministic");
    }
}

/// The block-grid contract for `ty`, on blocks from both quantizers (N(0, σ²) rows for
/// several σ, so f16-subnormal and large scales occur) and on random bytes:
///
/// 1. every code [`crate::block_codes`] reads is in the reported range, and
///    `dequantize == scale * q + offset` for every element: equal as f32 (the bits may
///    differ only in the sign of a zero), i.e. a bound of 0 ulp;
/// 2. codes derived from the dequantized values, `q = round((x̂ - offset) / scale)` (exact
///    integers up to 1e-3), agree with the stored ones wherever `scale != 0` (where
///    `scale == 0` the value does not depend on the code, and the stored code is used), and
///    writing them back with [`crate::set_block_codes`] into a block whose codes were first
///    scrambled reproduces the original bytes exactly;
/// 3. arbitrary in-range codes written with `set_block_codes` read back unchanged, leave the
///    parameters (and hence the grid) untouched, and dequantize to `scale * code + offset`.
pub fn check_block_grid(ty: GgmlType) {
    use crate::{block_codes, block_grid, set_block_codes};
    let (bs, tsz) = (ty.block_size(), ty.type_size());
    let mut rng = rng(0x9a1d ^ ty.id() as u64);
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for sigma in [1.0f32, 1e-6, 3e-3, 40.0] {
        let x = gaussian(&mut rng, 8 * bs, sigma);
        let imp = lognormal(&mut rng, 8 * bs, 1.5);
        for q in [quantize(ty, &x), quantize_weighted(ty, &x, &imp)] {
            blocks.extend(q.chunks(tsz).map(|b| b.to_vec()));
        }
    }
    let n_quantized = blocks.len();
    for _ in 0..64 {
        blocks.push((0..tsz).map(|_| rng.gen()).collect());
    }
    let same = |a: f32, b: f32| a == b && (a.to_bits() == b.to_bits() || a == 0.0);
    let (mut scale, mut offset) = (vec![0.0f32; bs], vec![0.0f32; bs]);
    let mut codes = vec![0i32; bs];
    let mut zero_scales = 0usize;
    for (bi, block) in blocks.iter().enumerate() {
        let (lo, hi) = block_grid(ty, block, &mut scale, &mut offset);
        let finite = scale.iter().chain(&offset).all(|v| v.is_finite());
        let random: Vec<i32> = (0..bs).map(|_| rng.gen_range(lo..=hi)).collect();
        if bi < n_quantized {
            assert!(finite, "{ty} block {bi}: quantizers must give finite parameters");
            block_codes(ty, block, &mut codes);
            assert!(codes.iter().all(|&q| (lo..=hi).contains(&q)), "{ty} block {bi}: code out of {lo}..={hi}");
            let y = dequantize(ty, block, bs);
            let mut derived = codes.clone();
            for i in 0..bs {
                let g = scale[i] * codes[i] as f32 + offset[i];
                assert!(same(y[i], g), "{ty} block {bi} element {i}: dequantized {:e} vs grid {g:e}", y[i]);
                if scale[i] != 0.0 {
                    let r = (y[i] - offset[i]) / scale[i];
                    assert!((r - r.round()).abs() < 1e-3, "{ty} block {bi} element {i}: {r} is not a grid point");
                    derived[i] = r.round() as i32;
                    assert_eq!(derived[i], codes[i], "{ty} block {bi} element {i}: derived code");
                } else {
                    zero_scales += 1;
                }
            }
            let mut b2 = block.clone();
            set_block_codes(ty, &mut b2, &random);
            set_block_codes(ty, &mut b2, &derived);
            assert_eq!(&b2, block, "{ty} block {bi}: codes written back change the bytes");
        }
        // Arbitrary codes into this block's parameters.
        let mut b2 = block.clone();
        set_block_codes(ty, &mut b2, &random);
        block_codes(ty, &b2, &mut codes);
        assert_eq!(codes, random, "{ty} block {bi}: codes read back");
        let (mut s2, mut o2) = (vec![0.0f32; bs], vec![0.0f32; bs]);
        assert_eq!(block_grid(ty, &b2, &mut s2, &mut o2), (lo, hi));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&s2), bits(&o2)), (bits(&scale), bits(&offset)), "{ty} block {bi}: parameters changed");
        if finite {
            let y = dequantize(ty, &b2, bs);
            for i in 0..bs {
                let g = scale[i] * random[i] as f32 + offset[i];
                assert!(same(y[i], g), "{ty} block {bi} element {i}: dequantized {:e} vs grid {g:e}", y[i]);
            }
        }
    }
    std::eprintln!("{ty}: block grid checked on {} blocks ({zero_scales} elements with scale 0)", blocks.len());
}

/// Values already on a grid of `ty` (dequantized blocks of N(0, 1) data) are found again:
/// re-quantizing them with log-normal importance reproduces them exactly in at least the
/// fraction `min_exact` of the blocks (the sweeps' windows cover typical grids, not every
/// conceivable one). Returns the fraction reproduced exactly.
pub fn check_grid_data_is_reproduced(ty: GgmlType, min_exact: f64) -> f64 {
    let bs = ty.block_size();
    let n = 64 * bs;
    let mut rng = rng(0x0e9a ^ ty.id() as u64);
    let x = gaussian(&mut rng, n, 1.0);
    let y = dequantize(ty, &quantize(ty, &x), n);
    let imp = lognormal(&mut rng, n, 1.5);
    let z = dequantize(ty, &quantize_weighted(ty, &y, &imp), n);
    let exact = y.chunks(bs).zip(z.chunks(bs)).filter(|(a, b)| a == b).count();
    let frac = exact as f64 / (n / bs) as f64;
    std::eprintln!("{ty}: grid data reproduced exactly in {exact} of {} blocks", n / bs);
    assert!(frac >= min_exact, "{ty}: only {exact} of {} blocks reproduced", n / bs);
    frac
}
