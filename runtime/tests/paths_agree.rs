//! Every kernel path computes the same function: a batch (prefill, perplexity) gives the same
//! f32 bits for every logit on the scalar reference and on every SIMD path this CPU has.
//!
//! Why bits and not a bound: the default precision quantizes activations to 8 bits before every
//! matmul, and any difference upstream, one ulp included, flips the rounding of some code and
//! grows from layer to layer. On SmolLM2-135M (WikiText-2, 2 chunks of 512) the paths used to
//! read 21.62 / 21.74 / 21.67 (scalar / AVX2 / AVX-512) from nothing but a fused vs separate
//! multiply-add in attention, `exp` polynomials and summation orders; the per-token
//! log-likelihoods of two such paths differ by 0.09 nats (standard deviation). So the gemm's
//! scaling, attention's f32 gemm, the softmax and the gates are each one sequence of f32
//! operations that every path performs, and this test pins it.
//!
//! Decode (one token per step, the gemv kernels and decode attention) is the same bits on every
//! path for Q4_0, Q4_1 and Q8_0 weights (`pith_kernels::decode_order`), which is what the
//! default SmolLM2 file holds; the other types' decode kernels still sum in each path's order.
//!
//! The kernel path is process-wide, so the tests take turns ([`LOCK`]).

use std::sync::Mutex;

use pith::gguf::Gguf;
use pith::testing::{build, TinySpec};
use pith::{Logits, Model, Pool, State};
use pith_kernels::{available_kernel_paths, reset_kernel_path, set_kernel_path, GgmlType, KernelPath};

static LOCK: Mutex<()> = Mutex::new(());

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 5) % vocab) as u32).collect()
}

/// The batch logits of `spec` on every available path, as bits; panics naming the first
/// (path, position, logit) that differs from the scalar path's.
fn check(spec: &TinySpec, n_tok: usize) {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (bytes, _) = build(spec);
    let g = Gguf::parse(&bytes).expect("tiny file parses");
    let model = Model::from_gguf(&g).expect("tiny model binds");
    let toks = tokens(n_tok, spec.n_vocab);
    let run = |path: KernelPath, threads: usize| -> Vec<u32> {
        set_kernel_path(path).expect("available path");
        let pool = Pool::new(threads).unwrap();
        let mut st = State::new(&model, 128, 128).unwrap();
        let out = model.forward(&mut st, &pool, &toks, Logits::From(0)).unwrap().iter().map(|v| v.to_bits()).collect();
        reset_kernel_path();
        out
    };
    let want = run(KernelPath::Scalar, 1);
    let paths: Vec<KernelPath> = available_kernel_paths().collect();
    assert!(paths.contains(&KernelPath::Scalar));
    for &path in &paths {
        for threads in [1, 2] {
            let got = run(path, threads);
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                let nv = spec.n_vocab;
                panic!(
                    "{} {:?}: {path} with {threads} threads differs from scalar at position {} logit {}: {} vs {}",
                    spec.arch,
                    spec.weight_type,
                    i / nv,
                    i % nv,
                    f32::from_bits(got[i]),
                    f32::from_bits(want[i])
                );
            }
        }
    }
}

/// The logits of `n_decode` one-token steps after a prompt of 8, on every available path, as
/// bits; panics naming the first (path, step, logit) that differs from the scalar path's.
fn check_decode(spec: &TinySpec, n_decode: usize) {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (bytes, _) = build(spec);
    let g = Gguf::parse(&bytes).expect("tiny file parses");
    let model = Model::from_gguf(&g).expect("tiny model binds");
    let toks = tokens(8 + n_decode, spec.n_vocab);
    let run = |path: KernelPath, threads: usize| -> Vec<Vec<u32>> {
        set_kernel_path(path).expect("available path");
        let pool = Pool::new(threads).unwrap();
        let mut st = State::new(&model, 128, 128).unwrap();
        model.forward(&mut st, &pool, &toks[..8], Logits::None).unwrap();
        let steps = toks[8..]
            .iter()
            .map(|&t| model.forward(&mut st, &pool, &[t], Logits::Last).unwrap().iter().map(|v| v.to_bits()).collect())
            .collect();
        reset_kernel_path();
        steps
    };
    let want = run(KernelPath::Scalar, 1);
    for path in available_kernel_paths() {
        for threads in [1, 2] {
            for (step, (got, want)) in run(path, threads).iter().zip(&want).enumerate() {
                if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
                    panic!(
                        "{} {:?}: decode on {path} with {threads} threads differs from scalar at step {step} logit {i}: {} vs {}",
                        spec.arch,
                        spec.weight_type,
                        f32::from_bits(got[i]),
                        f32::from_bits(want[i])
                    );
                }
            }
        }
    }
}

/// Decode of the default file's types: Q4_1 (with its Q8_0 embedding as the tied output), Q8_0,
/// Q4_0; 40 steps, so decode attention runs over up to 48 cached positions.
#[test]
fn llama_decode_logits_are_the_same_bits_on_every_path() {
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0] {
        check_decode(&TinySpec { weight_type: ty, n_embd: 128, n_ff: 256, seed: 25, ..Default::default() }, 40);
    }
}

/// llama (SwiGLU), Q4_1 weights and a Q8_0 embedding as the default SmolLM2 file has, a batch
/// of 40 (the integer gemm; softmax over up to 40 keys, past one 16-lane step).
#[test]
fn llama_batch_logits_are_the_same_bits_on_every_path() {
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0] {
        check(&TinySpec { weight_type: ty, n_embd: 128, n_ff: 256, seed: 21, ..Default::default() }, 40);
    }
}

/// The K-quants' 16-element groups (Q6_K) and 256-wide blocks.
#[test]
fn k_quant_batch_logits_are_the_same_bits_on_every_path() {
    check(&TinySpec { weight_type: GgmlType::Q6_K, n_embd: 256, n_ff: 256, seed: 22, ..Default::default() }, 33);
}

/// gemma3 (GeGLU, QK-norm, sliding window, soft-cap) and qwen2 (biases).
#[test]
fn other_families_batch_logits_are_the_same_bits_on_every_path() {
    let gemma = TinySpec {
        arch: "gemma3",
        n_head: 4,
        n_head_kv: 1,
        head_dim: Some(32),
        sliding_window: Some((5, 2)),
        softcap: Some(5.0),
        tied: true,
        weight_type: GgmlType::Q4_0,
        seed: 23,
        ..Default::default()
    };
    check(&gemma, 37);
    check(&TinySpec { arch: "qwen2", weight_type: GgmlType::Q8_0, seed: 24, ..Default::default() }, 37);
}
