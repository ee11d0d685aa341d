//! Single-thread throughput of the decode-path dot products on every kernel path this
//! CPU has: `vec_dot_f32` (weights · f32 activations) and `vec_dot` (weights · 8-bit
//! activations), one call per weight row as the runtime's decode matmul does.
//!
//! ```sh
//! cargo run --release -p pith-kernels --example bench_dot            # L2-resident + streaming
//! cargo run --release -p pith-kernels --example bench_dot -- q4_1 q8_0  # only these types
//! ```
//!
//! Two working sets: `cache` (rows × 2048 with ~256 KiB of weights, reused: compute bound)
//! and `stream` (~128 MiB of weights, each byte read once per pass: memory bound). GFLOP/s
//! counts 2 flops per weight; GB/s counts weight bytes (the activations stay in L1/L2).
//! Numbers only — nothing is asserted.

use pith_kernels::{
    available_kernel_paths, has_simd_kernel, quantize_row, vec_dot_f32_on, vec_dot_on, GgmlType, KernelPath,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

const COLS: usize = 2048;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Sum of 4 uniforms: roughly Gaussian, like weights.
            (0..4).map(|k| ((s >> (16 * k)) & 0xffff) as f32 / 65536.0 - 0.5).sum::<f32>()
        })
        .collect()
}

/// Best-of-5 seconds per pass of `f` (each repetition runs for at least ~60 ms).
fn time(mut f: impl FnMut() -> f32) -> f64 {
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..reps {
            black_box(f());
        }
        if t.elapsed() > Duration::from_millis(60) {
            break;
        }
        reps *= 2;
    }
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                black_box(f());
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let types: Vec<GgmlType> = if args.is_empty() {
        use GgmlType::*;
        vec![Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, F16, F32]
    } else {
        args.iter().map(|a| GgmlType::from_name(a).unwrap_or_else(|| panic!("unknown type {a}"))).collect()
    };
    let paths: Vec<KernelPath> = available_kernel_paths().collect();
    println!("kernel paths: {paths:?}; {COLS} columns per row, 1 thread");
    println!("{:<6} {:<6} {:<13} {:>9} {:>8} {:>9} {:>8}", "type", "set", "path", "GFLOP/s", "GB/s", "ns/row", "simd");
    let x = data(COLS, 1);
    for ty in types {
        let row_bytes = ty.row_bytes(COLS).unwrap();
        for (set, bytes) in [("cache", 256usize << 10), ("stream", 128usize << 20)] {
            let rows = (bytes / row_bytes).max(1);
            let w_f = data(rows * COLS, 2);
            let mut w = vec![0u8; rows * row_bytes];
            for (src, dst) in w_f.chunks_exact(COLS).zip(w.chunks_exact_mut(row_bytes)) {
                quantize_row(ty, src, dst);
            }
            drop(w_f);
            let xty = ty.vec_dot_type();
            let mut xq = vec![0u8; xty.row_bytes(COLS).unwrap()];
            quantize_row(xty, &x, &mut xq);
            for (op, int) in [("f32", false), ("int", true)] {
                if int && ty == GgmlType::F32 {
                    continue;
                }
                for &p in &paths {
                    let simd = if int { has_simd_kernel(p, ty).1 } else { has_simd_kernel(p, ty).0 };
                    if p != KernelPath::Scalar && !simd {
                        continue; // same code as scalar
                    }
                    let secs = time(|| {
                        let mut s = 0.0f32;
                        for r in w.chunks_exact(row_bytes) {
                            s += if int { vec_dot_on(p, ty, COLS, r, &xq) } else { vec_dot_f32_on(p, ty, r, &x) };
                        }
                        s
                    });
                    let elems = (rows * COLS) as f64;
                    println!(
                        "{:<6} {:<6} {:<13} {:>9.2} {:>8.2} {:>9.1} {:>8}",
                        ty.name(),
                        set,
                        format!("{p}/{op}"),
                        2.0 * elems / secs / 1e9,
                        (rows * row_bytes) as f64 / secs / 1e9,
                        secs / rows as f64 * 1e9,
                        if simd { "yes" } else { "-" }
                    );
                }
            }
        }
    }
}
