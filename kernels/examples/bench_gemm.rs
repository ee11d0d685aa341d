//! Single-thread throughput of the integer kernels of every type in the kernel table, on every
//! kernel path this CPU has: the prefill kernel `gemm_q8` (weights · 8-bit activations of 512
//! tokens) and the decode kernel `gemv_q8` (one token).
//!
//! ```sh
//! cargo run --release -p pith-kernels --example bench_gemm            # every table type
//! cargo run --release -p pith-kernels --example bench_gemm -- q4_k     # only these types
//! cargo run --release -p pith-kernels --example bench_gemm -- --gemv   # only the decode kernel
//! cargo run --release -p pith-kernels --example bench_gemm -- --gemv --shape 262144x640 q8_0
//! ```
//!
//! Shapes: SmolLM2-135M's FFN up / down (1536 × 576, 576 × 1536) and output matrix (49152 ×
//! 576) where the type's blocks fit the rows (K-quants need rows of 256), and 4096 × 4096 for
//! every type. GMAC/s counts one multiply-accumulate per weight per token, packing and
//! activation quantization included; GB/s is weight bytes read per second; `vs q4_0` is the
//! GB/s ratio to Q4_0 on the same path and shape (Q4_0 runs first). Numbers only — nothing is
//! asserted.

use pith_kernels::{
    available_kernel_paths, gemm_q8_on, gemm_q8_supported, gemv_kernel, gemv_q8_on, gemv_q8_supported, kernel_table,
    quantize_row, ActsQ8, GgmlType, KernelPath, PackedTile, VecQ8,
};
use std::collections::HashMap;
use std::time::Instant;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (0..4).map(|k| ((s >> (16 * k)) & 0xffff) as f32 / 65536.0 - 0.5).sum::<f32>()
        })
        .collect()
}

/// `rows` rows of `ty` with `k` columns, quantized from pseudo-random data.
fn weights(ty: GgmlType, rows: usize, k: usize) -> Vec<u8> {
    let rb = ty.row_bytes(k).expect("shape");
    let wf = data(rows * k, 3);
    let mut w = vec![0u8; rows * rb];
    for r in 0..rows {
        quantize_row(ty, &wf[r * k..(r + 1) * k], &mut w[r * rb..(r + 1) * rb]);
    }
    w
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let only_gemv = args.iter().any(|a| a == "--gemv");
    args.retain(|a| a != "--gemv");
    // `--shape RxK`: the decode kernels on that shape only (e.g. a model's output matrix).
    let mut gemv_shapes = vec![(49152usize, 576usize), (4096, 4096)];
    if let Some(i) = args.iter().position(|a| a == "--shape") {
        let s = args.get(i + 1).expect("--shape RxK");
        let (r, k) = s.split_once('x').expect("--shape RxK");
        gemv_shapes = vec![(r.parse().expect("rows"), k.parse().expect("columns"))];
        args.drain(i..i + 2);
    }
    let mut types: Vec<GgmlType> = if args.is_empty() {
        kernel_table().iter().map(|t| t.ty).collect()
    } else {
        args.iter().map(|a| GgmlType::from_name(a).unwrap_or_else(|| panic!("unknown type {a}"))).collect()
    };
    // Q4_0 first: the reference of the `vs q4_0` column.
    types.sort_by_key(|&t| t != GgmlType::Q4_0);
    let n_tok = 512;
    // (op, rows, k, path) → Q4_0's GB/s.
    let mut q4: HashMap<(&str, usize, usize, KernelPath), f64> = HashMap::new();
    let mut line =
        |op: &'static str, ty: GgmlType, rows: usize, k: usize, path: KernelPath, secs: f64, bytes: usize| {
            let gbs = bytes as f64 / secs / 1e9;
            if ty == GgmlType::Q4_0 {
                q4.insert((op, rows, k, path), gbs);
            }
            let vs =
                q4.get(&(op, rows, k, path)).map_or(String::new(), |&r| format!("{:5.0} % of q4_0", 100.0 * gbs / r));
            let rate = if op == "gemm" {
                format!("{:7.1} GMAC/s", (rows * k * n_tok) as f64 / secs / 1e9)
            } else {
                String::from("             ")
            };
            let kernel = if op == "gemv" { gemv_kernel(ty, path).map_or("-", |(p, _)| p.name()) } else { path.name() };
            println!(
                "{ty:>5} {op} {rows:>5}x{k:<5} {path:<8} (kernel {kernel:<8}) {:8.3} ms {rate} {gbs:6.1} GB/s {vs}",
                secs * 1e3
            );
        };
    let gemm_shapes: &[(usize, usize)] = if only_gemv { &[] } else { &[(1536, 576), (576, 1536), (4096, 4096)] };
    for &(rows, k) in gemm_shapes {
        let x = data(n_tok * k, 7);
        let mut acts = ActsQ8::default();
        for &ty in &types {
            if !gemm_q8_supported(ty, k) {
                continue;
            }
            let w = weights(ty, rows, k);
            // The scalar oracle takes seconds per 4096 × 4096 × 512 product: left out there.
            for path in available_kernel_paths().filter(|&p| k < 4096 || p != KernelPath::Scalar) {
                let mut out = vec![0.0f32; n_tok * rows];
                let mut tile = PackedTile::default();
                let mut best = f64::INFINITY;
                for _ in 0..if k == 4096 { 2 } else { 5 } {
                    let t = Instant::now();
                    acts.quantize(&x, k);
                    let mut o: Vec<&mut [f32]> = out.chunks_exact_mut(rows).collect();
                    gemm_q8_on(path, ty, &w, rows, &acts, &mut o, &mut tile);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                line("gemm", ty, rows, k, path, best, w.len());
            }
        }
    }
    for &(rows, k) in &gemv_shapes {
        for &ty in &types {
            if !gemv_q8_supported(ty, k) {
                continue;
            }
            let w = weights(ty, rows, k);
            let mut v = VecQ8::default();
            v.quantize_for_every_path(&data(k, 9));
            let mut out = vec![0.0f32; rows];
            for path in available_kernel_paths() {
                let mut best = f64::INFINITY;
                for _ in 0..7 {
                    let t = Instant::now();
                    gemv_q8_on(path, ty, &w, rows, &v, &mut out);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                line("gemv", ty, rows, k, path, best, w.len());
            }
        }
    }
}
