//! Small batches (2 ..= `SMALL_BATCH` tokens, `Precision::Q8`) give each token exactly its
//! one-token result: the same f32 bits whatever else is in the batch, for every type of the
//! kernel table, on every x86 kernel path this CPU has, for any thread count, through `matmul`
//! and `matmul_many`.
//!
//! The kernel path is process-wide, so the tests take turns ([`LOCK`]).

use std::sync::Mutex;

use pith::tensor::{matmul, matmul_many, MatmulScratch, Precision, Weight, SMALL_BATCH};
use pith::Pool;
use pith_kernels::{GgmlType, KernelPath};

/// Held by each test: one switches the process-wide kernel path.
static LOCK: Mutex<()> = Mutex::new(());

/// `n_rows × n_cols` pseudo-random weights of `ty`, encoded (an outlier now and then so that
/// block scales vary).
fn weight_bytes(ty: GgmlType, n_rows: usize, n_cols: usize, seed: u32) -> Vec<u8> {
    let rb = ty.row_bytes(n_cols).unwrap();
    let mut data = vec![0u8; n_rows * rb];
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut row = vec![0.0f32; n_cols];
    for r in 0..n_rows {
        for v in row.iter_mut() {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            if s.is_multiple_of(29) {
                *v *= 6.0;
            }
        }
        pith_kernels::quantize_row(ty, &row, &mut data[r * rb..(r + 1) * rb]);
    }
    data
}

/// `n_tok` tokens of `k` activations, different for every `seed`.
fn acts(n_tok: usize, k: usize, seed: usize) -> Vec<f32> {
    (0..n_tok * k).map(|i| (((i + 13 * seed) * 7919 + seed * 104_729) % 2003) as f32 / 1000.0 - 1.0).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every weight in `ws` (same columns) against `n_tok` tokens, three ways: `matmul` per weight
/// and `matmul_many` on the batch, each token alone through both (n = 1) and checks every
/// token's rows are the same bits.
fn check(pool: &Pool, ws: &[Weight<'_>], x: &[f32], n_tok: usize, what: &str) {
    let k = ws[0].n_cols;
    let mut scratch = MatmulScratch::default();
    assert_eq!(scratch.precision, Precision::Q8);
    // Each token alone.
    let alone: Vec<Vec<Vec<f32>>> = (0..n_tok)
        .map(|t| {
            ws.iter()
                .map(|w| {
                    let mut o = vec![0.0f32; w.n_rows];
                    matmul(pool, &mut scratch, w, &x[t * k..(t + 1) * k], 1, &mut o);
                    o
                })
                .collect()
        })
        .collect();
    // Each token alone through matmul_many (one region for every weight).
    for (t, alone_t) in alone.iter().enumerate() {
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0f32; w.n_rows]).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        matmul_many(pool, &mut scratch, &ws.iter().collect::<Vec<_>>(), &x[t * k..(t + 1) * k], 1, &mut refs);
        for (i, (a, b)) in outs.iter().zip(alone_t).enumerate() {
            assert_eq!(bits(a), bits(b), "{what}: token {t} weight {i}: matmul_many vs matmul, one token");
        }
    }
    // The batch through matmul, weight by weight.
    for (i, w) in ws.iter().enumerate() {
        let mut out = vec![f32::NAN; n_tok * w.n_rows];
        matmul(pool, &mut scratch, w, x, n_tok, &mut out);
        for (t, row) in out.chunks_exact(w.n_rows).enumerate() {
            assert_eq!(bits(row), bits(&alone[t][i]), "{what}: matmul of {n_tok} tokens, token {t} weight {i}");
        }
    }
    // The batch through matmul_many.
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n_tok * w.n_rows]).collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
    matmul_many(pool, &mut scratch, &ws.iter().collect::<Vec<_>>(), x, n_tok, &mut refs);
    for (i, (out, w)) in outs.iter().zip(ws).enumerate() {
        for (t, row) in out.chunks_exact(w.n_rows).enumerate() {
            assert_eq!(bits(row), bits(&alone[t][i]), "{what}: matmul_many of {n_tok} tokens, token {t} weight {i}");
        }
    }
}

/// The paths to test: every x86 SIMD path this CPU has (AVX2, AVX-512), and scalar.
fn paths() -> Vec<KernelPath> {
    pith_kernels::available_kernel_paths().collect()
}

#[test]
fn small_batches_equal_each_token_alone() {
    let _turn = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pools = [Pool::single(), Pool::new(2).unwrap(), Pool::new(3).unwrap()];
    let types: Vec<GgmlType> = pith_kernels::kernel_table().iter().map(|r| r.ty).chain([GgmlType::F16]).collect();
    for path in paths() {
        pith_kernels::set_kernel_path(path).unwrap();
        for &ty in &types {
            // Tiny shapes (rows not multiples of the kernels' 4 or the batch's 16-row steps,
            // weights of a few rows), then SmolLM2's FFN up (1536 × 576) with Q/K/V-like
            // neighbours, and its down projection (576 × 1536).
            let k_small = if ty.block_size() == 256 { 256 } else { 64 };
            let cases: Vec<(Vec<usize>, usize)> =
                vec![(vec![37, 3, 100], k_small), (vec![1], k_small), (vec![1536, 576, 64], 576), (vec![576], 1536)];
            for (shapes, k) in cases {
                if ty.block_size() > 32 && !k.is_multiple_of(ty.block_size()) {
                    continue;
                }
                let bytes: Vec<Vec<u8>> =
                    shapes.iter().enumerate().map(|(i, &n)| weight_bytes(ty, n, k, i as u32 + 1)).collect();
                let ws: Vec<Weight<'_>> =
                    shapes.iter().zip(&bytes).map(|(&n_rows, data)| Weight { ty, n_rows, n_cols: k, data }).collect();
                let big = k >= 576;
                for n_tok in 2..=SMALL_BATCH {
                    if big && ![2, 4, SMALL_BATCH].contains(&n_tok) {
                        continue;
                    }
                    let x = acts(n_tok, k, n_tok);
                    for pool in if big { &pools[1..2] } else { &pools[..] } {
                        let what = format!("{path} {ty} {shapes:?}x{k}, {} threads", pool.threads());
                        check(pool, &ws, &x, n_tok, &what);
                    }
                }
            }
        }
    }
    pith_kernels::reset_kernel_path();
}

/// A token's result does not depend on its neighbours: the same token in different batches
/// (and at different places in them) gives the same bits.
#[test]
fn a_tokens_result_does_not_depend_on_the_batch() {
    let _turn = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (ty, n_rows, k) = (GgmlType::Q4_1, 300, 576);
    let data = weight_bytes(ty, n_rows, k, 9);
    let w = Weight { ty, n_rows, n_cols: k, data: &data };
    let pool = Pool::new(2).unwrap();
    let mut scratch = MatmulScratch::default();
    let me = acts(1, k, 100);
    let mut alone = vec![0.0f32; n_rows];
    matmul(&pool, &mut scratch, &w, &me, 1, &mut alone);
    for n_tok in 2..=SMALL_BATCH {
        for at in [0, n_tok - 1] {
            let mut x = acts(n_tok, k, n_tok + 50);
            x[at * k..(at + 1) * k].copy_from_slice(&me);
            let mut out = vec![0.0f32; n_tok * n_rows];
            matmul(&pool, &mut scratch, &w, &x, n_tok, &mut out);
            assert_eq!(bits(&out[at * n_rows..(at + 1) * n_rows]), bits(&alone), "{n_tok} tokens, at {at}");
        }
    }
}
