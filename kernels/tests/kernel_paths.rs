//! The public API on every kernel path this CPU has, forced with `set_kernel_path` (this
//! test binary is its own process, so the override cannot disturb other tests), on real
//! SmolLM2-135M weight rows: every dispatch function against the scalar path.
//!
//! Bound: SIMD and scalar sum the same per-element products in a different order, so
//! `|simd - scalar| <= 2 (n/4 + 64) ε Σ|w̃ x|` (f32 dots), `2 (blocks + 64) ε (Σ|w̃ x̃| +
//! Σ|m s|)` (integer dots; see `src/simd/tests.rs` for the derivation).

mod common;

use common::*;
use pith_kernels::{
    available_kernel_paths, best_kernel_path, dot_f32, gemm_f32, kernel_path, reset_kernel_path, set_kernel_path,
    vec_dot, vec_dot_f32, GgmlType, KernelPath, ALL_TYPES,
};

#[test]
fn every_path_on_real_rows() {
    let rows = real_rows();
    // Activations: the real rows themselves, each dotted with the next one.
    let n = REAL_ROW_LEN;
    let eps = f32::EPSILON as f64;
    // Scalar results first.
    set_kernel_path(KernelPath::Scalar).unwrap();
    assert_eq!(kernel_path(), KernelPath::Scalar);
    let mut scalar = Vec::new();
    for ty in ALL_TYPES {
        for (i, w) in rows.iter().enumerate() {
            let x = &rows[(i + 1) % rows.len()];
            let wq = quantize(ty, w);
            let xq = quantize(ty.vec_dot_type(), x);
            scalar.push((vec_dot_f32(ty, &wq, x), vec_dot(ty, n, &wq, &xq)));
        }
    }
    let paths: Vec<KernelPath> = available_kernel_paths().collect();
    eprintln!("paths: {paths:?}");
    for &p in &paths {
        set_kernel_path(p).unwrap();
        assert_eq!(kernel_path(), p);
        assert_eq!(kernel_path().to_string(), p.name());
        let mut k = 0;
        let mut worst = 0.0f64;
        for ty in ALL_TYPES {
            for (i, w) in rows.iter().enumerate() {
                let x = &rows[(i + 1) % rows.len()];
                let wq = quantize(ty, w);
                let xq = quantize(ty.vec_dot_type(), x);
                let (wd, xd) = (dequantize(ty, &wq, n), dequantize(ty.vec_dot_type(), &xq, n));
                let (sf, si) = scalar[k];
                k += 1;
                let got = vec_dot_f32(ty, &wq, x) as f64;
                let s = abs_dot64(&wd, x);
                let bound = 2.0 * (n as f64 / 4.0 + 64.0) * eps * s;
                assert!((got - sf as f64).abs() <= bound, "{ty} on {p}, row {i}: vec_dot_f32 {got} vs scalar {sf}");
                worst = worst.max((got - sf as f64).abs() / (eps * s));
                let got = vec_dot(ty, n, &wq, &xq) as f64;
                let mut s = abs_dot64(&wd, &xd);
                if ty.vec_dot_type() == GgmlType::Q8_1 && ty != GgmlType::Q8_1 {
                    // The offset term m·s: m at bytes 2..4 of the weight block, s at 2..4 of Q8_1's.
                    let (wb, xb) = (ty.type_size(), GgmlType::Q8_1.type_size());
                    for (w, x) in wq.chunks_exact(wb).zip(xq.chunks_exact(xb)) {
                        let m = half::f16::from_le_bytes([w[2], w[3]]).to_f32() as f64;
                        s += (m * half::f16::from_le_bytes([x[2], x[3]]).to_f32() as f64).abs();
                    }
                }
                let blocks = n / ty.block_size();
                let bound = 2.0 * (blocks as f64 + 64.0) * eps * s;
                assert!((got - si as f64).abs() <= bound, "{ty} on {p}, row {i}: vec_dot {got} vs scalar {si}");
            }
        }
        // dot_f32 and gemm_f32 follow the override too.
        let (a, b) = (&rows[0], &rows[1]);
        let want = dot64(a, b);
        let got = dot_f32(a, b) as f64;
        assert!((got - want).abs() <= (n as f64 / 4.0 + 64.0) * eps * abs_dot64(a, b), "dot_f32 on {p}");
        let w: Vec<f32> = rows[..3].concat();
        let x: Vec<f32> = rows[3..5].concat();
        let mut out = vec![0.0f32; 6];
        gemm_f32(&w, &x, n, &mut out);
        for r in 0..3 {
            for t in 0..2 {
                let (wr, xt) = (&rows[r], &rows[3 + t]);
                let bound = (n as f64 / 4.0 + 64.0) * eps * abs_dot64(wr, xt);
                assert!((out[r * 2 + t] as f64 - dot64(wr, xt)).abs() <= bound, "gemm_f32 on {p} at ({r}, {t})");
            }
        }
        eprintln!("{p}: vec_dot_f32 vs scalar on real rows, max |diff| = {worst:.2} ε Σ|w̃x|");
    }
    // A path this CPU lacks is refused and leaves the choice alone.
    if let Some(missing) = KernelPath::ALL.into_iter().find(|p| !p.is_available()) {
        let before = kernel_path();
        assert!(set_kernel_path(missing).is_err());
        assert_eq!(kernel_path(), before);
    }
    reset_kernel_path();
    assert_eq!(kernel_path(), best_kernel_path());
}
