//! Every SIMD kernel against the scalar reference, on every path this CPU can run.
//!
//! Error bounds. Every weight the kernels form (`q d`, `q d + m`, `q (d sc) - dmin m`, …)
//! is either exact in f32 (an f16 scale has 11 significant bits, a quant at most 8) or
//! carries one rounding, as in the scalar dequantizer; what differs is the summation
//! order. For `n` terms summed in at least 4 lanes, with per-block partial sums and a
//! final horizontal reduction, the classic bound is `|err| <= (n/4 + c) ε Σ|w̃ x|`; the
//! tests use `c = 64` and check both the SIMD and the scalar result against an f64 sum
//! of the dequantized weights times the activations. Integer dots compute each block's
//! `Σ qw qx` exactly, so SIMD and scalar differ only in how the per-block f32 terms are
//! rounded and summed: `|simd - scalar| <= 2 (blocks + 64) ε S` with
//! `S = Σ|w̃ x̃| + Σ_blocks |m s|`. A layout or indexing mistake is off by O(1) relative to
//! `Σ|w̃ x|`, i.e. by 10^3–10^6 times these bounds. The worst measured ratio is printed
//! (in units of `ε Σ|·|`).

use super::*;
use crate::test_util::{dequantize, gaussian, quantize, rng};
use crate::{gemm_f32, vec_dot_f32_on, vec_dot_on, ALL_TYPES};
use half::f16;
use rand::rngs::StdRng;
use rand::Rng;
use std::string::ToString;
use std::sync::Mutex;
use std::vec;
use std::vec::Vec;

/// Serializes the tests that change the process-wide override.
static OVERRIDE_LOCK: Mutex<()> = Mutex::new(());

fn simd_paths() -> Vec<KernelPath> {
    available_kernel_paths().filter(|&p| p != KernelPath::Scalar).collect()
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn abs_dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum()
}

/// Block counts: one block, a few, odd counts, and rows longer than any unrolling.
const BLOCK_COUNTS: [usize; 9] = [1, 2, 3, 5, 8, 9, 17, 64, 129];

/// Checks `vec_dot_f32_on(path)` (and the scalar path) against the f64 reference for one
/// weight row; returns `|err| / (ε Σ|w̃ x|)` of the SIMD result.
fn check_f32_row(path: KernelPath, ty: GgmlType, wq: &[u8], x: &[f32], what: &str) -> f64 {
    let n = x.len();
    let wd = dequantize(ty, wq, n);
    assert!(wd.iter().all(|v| v.is_finite()), "{ty} {what}: non-finite weights in the test data");
    let exact = dot64(&wd, x);
    let scale = abs_dot64(&wd, x);
    let bound = (n as f64 / 4.0 + 64.0) * f32::EPSILON as f64 * scale;
    let got = vec_dot_f32_on(path, ty, wq, x) as f64;
    let reference = vec_dot_f32_on(KernelPath::Scalar, ty, wq, x) as f64;
    assert!(
        (got - exact).abs() <= bound,
        "{ty} on {path}, {what}, n={n}: {got} vs exact {exact} (scalar {reference}), bound {bound:.3e}"
    );
    assert!((reference - exact).abs() <= bound, "{ty} scalar, {what}, n={n}: {reference} vs exact {exact}");
    if scale == 0.0 {
        assert_eq!(got, 0.0, "{ty} on {path}, {what}: all-zero products must give 0");
        return 0.0;
    }
    (got - exact).abs() / (f32::EPSILON as f64 * scale)
}

/// Checks `vec_dot_on(path)` against the scalar integer dot for one row.
fn check_int_row(path: KernelPath, ty: GgmlType, wq: &[u8], xq: &[u8], n: usize, what: &str) -> f64 {
    let xty = ty.vec_dot_type();
    let wd = dequantize(ty, wq, n);
    let xd = dequantize(xty, xq, n);
    let mut s = abs_dot64(&wd, &xd);
    if xty == GgmlType::Q8_1 && ty != GgmlType::Q8_1 {
        // The offset term m·s of Q4_1/Q5_1 (m at bytes 2..4 of the weight block, s at
        // bytes 2..4 of the Q8_1 block).
        let (wb, xb) = (ty.type_size(), xty.type_size());
        for (w, x) in wq.chunks_exact(wb).zip(xq.chunks_exact(xb)) {
            let m = f16::from_le_bytes([w[2], w[3]]).to_f32() as f64;
            let sx = f16::from_le_bytes([x[2], x[3]]).to_f32() as f64;
            s += (m * sx).abs();
        }
    }
    let blocks = n / ty.block_size();
    let bound = 2.0 * (blocks as f64 + 64.0) * f32::EPSILON as f64 * s;
    let got = vec_dot_on(path, ty, n, wq, xq) as f64;
    let reference = vec_dot_on(KernelPath::Scalar, ty, n, wq, xq) as f64;
    assert!(
        (got - reference).abs() <= bound,
        "{ty} on {path}, {what}, n={n}: vec_dot {got} vs scalar {reference}, bound {bound:.3e}"
    );
    if s == 0.0 {
        assert_eq!(got, 0.0, "{ty} on {path}, {what}: all-zero products must give 0");
        return 0.0;
    }
    (got - reference).abs() / (f32::EPSILON as f64 * s)
}

/// Types the path has a SIMD kernel for (`f32`: vec_dot_f32, else vec_dot).
fn covered(path: KernelPath, f32_dots: bool) -> Vec<GgmlType> {
    ALL_TYPES
        .into_iter()
        .filter(|&t| if f32_dots { has_simd_kernel(path, t).0 } else { has_simd_kernel(path, t).1 })
        .collect()
}

#[test]
fn names_round_trip() {
    for p in KernelPath::ALL {
        assert_eq!(p.to_string().parse::<KernelPath>(), Ok(p));
        assert_eq!(KernelPath::from_name(&p.name().to_uppercase()), Some(p));
    }
    assert_eq!(KernelPath::from_name("neon_dotprod"), Some(KernelPath::NeonDotprod));
    assert_eq!(KernelPath::from_name("sse9"), None);
    assert!("sse9".parse::<KernelPath>().is_err());
    assert_eq!(std::format!("{:>8}", KernelPath::Avx2), "    avx2");
}

#[test]
fn detection_is_consistent() {
    let best = best_kernel_path();
    assert!(best.is_available());
    assert!(KernelPath::Scalar.is_available());
    assert!(available_kernel_paths().any(|p| p == best));
    // The best path is the most specialized one available.
    assert!(available_kernel_paths().all(|p| p as u8 <= best as u8));
    if KernelPath::Avx512.is_available() {
        assert!(KernelPath::Avx2.is_available());
    }
    if KernelPath::NeonDotprod.is_available() {
        assert!(KernelPath::Neon.is_available());
    }
    std::eprintln!("kernel paths here: {:?} (best {best})", available_kernel_paths().collect::<Vec<_>>());
}

#[test]
fn set_kernel_path_forces_and_refuses() {
    let _g = OVERRIDE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for p in KernelPath::ALL {
        let before = kernel_path();
        match set_kernel_path(p) {
            Ok(()) => {
                assert!(p.is_available(), "{p} accepted but not available");
                assert_eq!(kernel_path(), p);
            }
            Err(e) => {
                assert!(!p.is_available(), "{p} refused ({e}) but available");
                assert!(e.contains(p.name()), "{e}");
                assert_eq!(kernel_path(), before, "a refused path must not change the choice");
            }
        }
    }
    reset_kernel_path();
    assert_eq!(kernel_path(), best_kernel_path());
}

#[test]
fn forced_path_drives_every_dispatch_function() {
    let _g = OVERRIDE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = rng(11);
    for p in available_kernel_paths() {
        set_kernel_path(p).unwrap();
        for ty in ALL_TYPES {
            let n = 8 * crate::QK_K;
            let wq = quantize(ty, &gaussian(&mut r, n, 1.0));
            let x = gaussian(&mut r, n, 1.0);
            let xq = quantize(ty.vec_dot_type(), &x);
            let a = crate::vec_dot_f32(ty, &wq, &x);
            assert_eq!(a.to_bits(), vec_dot_f32_on(p, ty, &wq, &x).to_bits(), "{ty} on {p}: vec_dot_f32");
            let b = crate::vec_dot(ty, n, &wq, &xq);
            assert_eq!(b.to_bits(), vec_dot_on(p, ty, n, &wq, &xq).to_bits(), "{ty} on {p}: vec_dot");
        }
        let (a, b) = (gaussian(&mut r, 1000, 1.0), gaussian(&mut r, 1000, 1.0));
        let want = vec_dot_f32_on(p, GgmlType::F32, bytemuck::cast_slice(&a), &b);
        assert_eq!(crate::dot_f32(&a, &b).to_bits(), want.to_bits(), "dot_f32 on {p}");
        // gemm_f32 on Scalar must be the scalar reference bit for bit.
        let (w, x) = (gaussian(&mut r, 5 * 64, 1.0), gaussian(&mut r, 3 * 64, 1.0));
        let (mut o1, mut o2) = (vec![0.0; 15], vec![0.0; 15]);
        gemm_f32(&w, &x, 64, &mut o1);
        crate::gemm::gemm_f32_scalar(&w, &x, 64, &mut o2);
        if p == KernelPath::Scalar {
            assert_eq!(o1, o2, "gemm_f32 on scalar");
        }
    }
    reset_kernel_path();
}

#[test]
#[should_panic(expected = "kernel path")]
fn unavailable_path_panics_in_explicit_calls() {
    let missing = KernelPath::ALL.into_iter().find(|p| !p.is_available()).expect("some path is missing everywhere");
    vec_dot_f32_on(missing, GgmlType::Q4_0, &[0; 18], &[0.0; 32]);
}

#[test]
fn vec_dot_f32_gaussian_rows_every_length() {
    let mut r = rng(1);
    for path in simd_paths() {
        for ty in covered(path, true) {
            let mut worst = 0.0f64;
            for nb in BLOCK_COUNTS {
                let n = nb * ty.block_size();
                let wq = quantize(ty, &gaussian(&mut r, n, 1.0));
                let x = gaussian(&mut r, n, 1.0);
                worst = worst.max(check_f32_row(path, ty, &wq, &x, "gaussian"));
            }
            std::eprintln!("{path:>12} {ty:>5} vec_dot_f32 gaussian: max |err| = {worst:.2} ε Σ|w̃x|");
        }
    }
}

#[test]
fn vec_dot_gaussian_rows_every_length() {
    let mut r = rng(2);
    for path in simd_paths() {
        for ty in covered(path, false) {
            let mut worst = 0.0f64;
            for nb in BLOCK_COUNTS {
                let n = nb * ty.block_size();
                let wq = quantize(ty, &gaussian(&mut r, n, 1.0));
                let xq = quantize(ty.vec_dot_type(), &gaussian(&mut r, n, 1.0));
                worst = worst.max(check_int_row(path, ty, &wq, &xq, n, "gaussian"));
            }
            std::eprintln!("{path:>12} {ty:>5} vec_dot gaussian: max |err| = {worst:.2} ε S");
        }
    }
}

/// Copies `bytes` to offset 1 of a fresh buffer (so no block type with alignment > 1 can
/// be cast in place) and calls `f` with that view.
fn at_odd_address<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let mut store = vec![0u64; bytes.len() / 8 + 2];
    let raw: &mut [u8] = bytemuck::cast_slice_mut(&mut store);
    raw[1..1 + bytes.len()].copy_from_slice(bytes);
    f(&raw[1..1 + bytes.len()])
}

#[test]
fn misaligned_weights_and_offset_activations() {
    let mut r = rng(3);
    for path in simd_paths() {
        for ty in ALL_TYPES {
            let (f32_k, int_k) = has_simd_kernel(path, ty);
            if !f32_k && !int_k {
                continue;
            }
            for nb in [1usize, 3, 9, 17] {
                let n = nb * ty.block_size();
                let wq = quantize(ty, &gaussian(&mut r, n, 1.0));
                // Activations at element offsets 1..4 of a longer vector (not 32-byte aligned).
                let big = gaussian(&mut r, n + 3, 1.0);
                if f32_k {
                    for off in 0..4 {
                        let x = &big[off..off + n];
                        check_f32_row(path, ty, &wq, x, "offset activations");
                        at_odd_address(&wq, |wm| check_f32_row(path, ty, wm, x, "misaligned weights"));
                    }
                }
                if int_k {
                    let xq = quantize(ty.vec_dot_type(), &big[..n]);
                    at_odd_address(&wq, |wm| {
                        at_odd_address(&xq, |xm| check_int_row(path, ty, wm, xm, n, "misaligned blocks"))
                    });
                }
            }
        }
    }
}

/// Byte offsets of the f16 scale fields of a block of `ty` (the types with SIMD kernels).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K | Q8_1 => &[0, 2],
        Q6_K => &[208],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        _ => &[],
    }
}

/// A weight row of `nb` blocks with random quant bytes (every bit pattern, including
/// Q8_0's -128) and every f16 scale field set to `scale` (or random finite values when
/// `None`). F16 rows get random finite elements scaled to `scale`'s magnitude.
fn random_row(r: &mut StdRng, ty: GgmlType, nb: usize, scale: Option<f32>) -> Vec<u8> {
    let bs = ty.type_size();
    let mut q: Vec<u8> = (0..nb * bs).map(|_| r.gen()).collect();
    if ty == GgmlType::F16 || ty == GgmlType::F32 {
        let mag = scale.map_or(1.0, f32::abs);
        let vals: Vec<f32> = (0..nb).map(|_| mag * (r.gen::<f32>() * 2.0 - 1.0)).collect();
        return if ty == GgmlType::F16 {
            vals.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect()
        } else {
            bytemuck::cast_slice(&vals).to_vec()
        };
    }
    for b in q.chunks_exact_mut(bs) {
        for &o in f16_fields(ty) {
            let v = scale.unwrap_or_else(|| (r.gen::<f32>() * 2.0 - 1.0) * 4.0);
            b[o..o + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    q
}

/// f16 extremes: largest finite, smallest subnormal, zero, one.
const EXTREME_SCALES: [Option<f32>; 7] =
    [Some(65504.0), Some(-65504.0), Some(5.960_464_5e-8), Some(0.0), Some(1.0), Some(-1.0), None];

#[test]
fn vec_dot_f32_extreme_blocks() {
    let mut r = rng(4);
    for path in simd_paths() {
        for ty in covered(path, true) {
            let mut worst = 0.0f64;
            for scale in EXTREME_SCALES {
                for nb in [1usize, 2, 7, 33] {
                    let nb = if ty == GgmlType::F32 || ty == GgmlType::F16 { nb * 32 + 5 } else { nb };
                    let n = nb * ty.block_size();
                    let wq = random_row(&mut r, ty, nb, scale);
                    // Activations up to ±1e3, some exactly zero.
                    let x: Vec<f32> =
                        (0..n).map(|i| if i % 7 == 3 { 0.0 } else { (r.gen::<f32>() * 2.0 - 1.0) * 1e3 }).collect();
                    worst = worst.max(check_f32_row(path, ty, &wq, &x, "random blocks, extreme scales"));
                }
            }
            // An all-zero row gives exactly zero.
            let n = 4 * ty.block_size();
            let zero = vec![0u8; ty.row_bytes(n).unwrap()];
            assert_eq!(vec_dot_f32_on(path, ty, &zero, &vec![1.0; n]), 0.0, "{ty} on {path}: zero blocks");
            std::eprintln!("{path:>12} {ty:>5} vec_dot_f32 extremes: max |err| = {worst:.2} ε Σ|w̃x|");
        }
    }
}

#[test]
fn vec_dot_extreme_blocks() {
    let mut r = rng(5);
    for path in simd_paths() {
        for ty in covered(path, false) {
            let xty = ty.vec_dot_type();
            let mut worst = 0.0f64;
            for scale in EXTREME_SCALES {
                for nb in [1usize, 2, 7, 33] {
                    let n = nb * ty.block_size();
                    let wq = random_row(&mut r, ty, nb, scale);
                    // Activations from the quantizer (quants in [-127, 127]): large, tiny,
                    // saturating (±amax everywhere) and mixed blocks.
                    let x: Vec<f32> = (0..n)
                        .map(|i| match (i / 32) % 4 {
                            0 => (r.gen::<f32>() * 2.0 - 1.0) * 1e3,
                            1 => (r.gen::<f32>() * 2.0 - 1.0) * 1e-3,
                            2 => {
                                if i % 2 == 0 {
                                    500.0
                                } else {
                                    -500.0
                                }
                            }
                            _ => 0.0,
                        })
                        .collect();
                    let xq = quantize(xty, &x);
                    worst = worst.max(check_int_row(path, ty, &wq, &xq, n, "random blocks, extreme scales"));
                }
            }
            let n = 4 * ty.block_size();
            let zero = vec![0u8; ty.row_bytes(n).unwrap()];
            let xq = quantize(xty, &vec![1.0; n]);
            assert_eq!(vec_dot_on(path, ty, n, &zero, &xq), 0.0, "{ty} on {path}: zero blocks");
            std::eprintln!("{path:>12} {ty:>5} vec_dot extremes: max |err| = {worst:.2} ε S");
        }
    }
}

#[test]
fn integer_dots_are_exact_when_everything_is_representable() {
    // d = 1 everywhere and short rows: every partial sum is an integer below 2^24, so
    // every path must return exactly the scalar result.
    let mut r = rng(6);
    for path in simd_paths() {
        for ty in covered(path, false).into_iter().filter(|t| t.is_quantized()) {
            let xty = ty.vec_dot_type();
            for nb in [1usize, 2, 3, 8] {
                let n = nb * ty.block_size();
                let wq = random_row(&mut r, ty, nb, Some(1.0));
                let x: Vec<f32> = (0..n).map(|_| r.gen_range(-127i32..=127) as f32).collect();
                let mut xq = quantize(xty, &x);
                // Force the activation scale to 1 (quants = x exactly) and Q8_1's s = Σq.
                for (b, xs) in xq.chunks_exact_mut(xty.type_size()).zip(x.chunks_exact(32)) {
                    b[0..2].copy_from_slice(&f16::ONE.to_le_bytes());
                    for (q, &v) in b[xty.type_size() - 32..].iter_mut().zip(xs) {
                        *q = v as i8 as u8;
                    }
                    if xty == GgmlType::Q8_1 {
                        let s: f32 = xs.iter().sum();
                        b[2..4].copy_from_slice(&f16::from_f32(s).to_le_bytes());
                    }
                }
                let got = vec_dot_on(path, ty, n, &wq, &xq);
                let want = vec_dot_on(KernelPath::Scalar, ty, n, &wq, &xq);
                assert_eq!(got, want, "{ty} on {path}, {nb} blocks");
            }
        }
    }
}

#[test]
fn every_type_falls_back_or_matches_on_every_path() {
    // Types without a kernel on a path must give the scalar result bit for bit.
    let mut r = rng(7);
    for path in simd_paths() {
        for ty in ALL_TYPES {
            let n = 3 * crate::QK_K;
            let wq = quantize(ty, &gaussian(&mut r, n, 1.0));
            let x = gaussian(&mut r, n, 1.0);
            let xq = quantize(ty.vec_dot_type(), &x);
            let (f32_k, int_k) = has_simd_kernel(path, ty);
            if !f32_k {
                assert_eq!(vec_dot_f32_on(path, ty, &wq, &x), vec_dot_f32_on(KernelPath::Scalar, ty, &wq, &x));
            }
            if !int_k {
                assert_eq!(vec_dot_on(path, ty, n, &wq, &xq), vec_dot_on(KernelPath::Scalar, ty, n, &wq, &xq));
            }
        }
    }
}
