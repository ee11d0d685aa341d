//! Single-thread throughput of the prefill kernel `gemm_q8` (weights · 8-bit activations of a
//! batch of tokens) on every kernel path this CPU has, at SmolLM2-135M's shapes.
//!
//! ```sh
//! cargo run --release -p pith-kernels --example bench_gemm            # q4_0 q4_1 q8_0
//! cargo run --release -p pith-kernels --example bench_gemm -- q4_k     # only these types
//! ```
//!
//! GMAC/s counts one multiply-accumulate per weight per token, packing and activation
//! quantization included. The decode kernel `gemv_q8` (one token) is timed too, in GB/s of
//! weights, on the output matrix's shape (49152 × 576: larger than L2, streamed). Numbers
//! only — nothing is asserted.

use pith_kernels::{
    available_kernel_paths, gemm_q8_on, gemv_q8_on, gemv_q8_supported, quantize_row, ActsQ8, GgmlType, PackedTile,
    VecQ8,
};
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let types: Vec<GgmlType> = if args.is_empty() {
        vec![GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0]
    } else {
        args.iter().map(|a| GgmlType::from_name(a).unwrap_or_else(|| panic!("unknown type {a}"))).collect()
    };
    let n_tok = 512;
    // (rows, k): the FFN up projection and the FFN down projection of SmolLM2-135M.
    for &(rows, k) in &[(1536usize, 576usize), (576, 1536)] {
        let x = data(n_tok * k, 7);
        let mut acts = ActsQ8::default();
        for &ty in &types {
            let rb = ty.row_bytes(k).expect("shape");
            let wf = data(rows * k, 3);
            let mut w = vec![0u8; rows * rb];
            for r in 0..rows {
                quantize_row(ty, &wf[r * k..(r + 1) * k], &mut w[r * rb..(r + 1) * rb]);
            }
            for path in available_kernel_paths() {
                let mut out = vec![0.0f32; n_tok * rows];
                let mut tile = PackedTile::default();
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let t = Instant::now();
                    acts.quantize(&x, k);
                    let mut o: Vec<&mut [f32]> = out.chunks_exact_mut(rows).collect();
                    gemm_q8_on(path, ty, &w, rows, &acts, &mut o, &mut tile);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let gmac = (rows * k * n_tok) as f64 / best / 1e9;
                println!(
                    "{ty:>5} {rows:>5}x{k:<5} x {n_tok} tokens  {path:<8} {:8.2} ms  {gmac:7.1} GMAC/s",
                    best * 1e3
                );
            }
        }
    }
    for &ty in &types {
        if !gemv_q8_supported(ty) {
            continue;
        }
        let (rows, k) = (49152usize, 576usize);
        let rb = ty.row_bytes(k).expect("shape");
        let wf = data(rows * k, 5);
        let mut w = vec![0u8; rows * rb];
        for r in 0..rows {
            quantize_row(ty, &wf[r * k..(r + 1) * k], &mut w[r * rb..(r + 1) * rb]);
        }
        let mut v = VecQ8::default();
        v.quantize(&data(k, 9));
        let mut out = vec![0.0f32; rows];
        for path in available_kernel_paths() {
            let mut best = f64::INFINITY;
            for _ in 0..7 {
                let t = Instant::now();
                gemv_q8_on(path, ty, &w, rows, &v, &mut out);
                best = best.min(t.elapsed().as_secs_f64());
            }
            let gbs = w.len() as f64 / best / 1e9;
            println!("{ty:>5} gemv {rows}x{k} {path:<8} {:8.3} ms  {gbs:6.1} GB/s", best * 1e3);
        }
    }
}
