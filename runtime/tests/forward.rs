//! The forward pass against a naive f64 reference, on tiny random models of every weight type.

use pith::gguf::Gguf;
use pith::testing::{build, reference_logits, TinySpec};
use pith::{Logits, Model, Pool, Precision, State};
use pith_kernels::GgmlType;

/// max |pith − reference| over all logits, relative to the reference's RMS.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max) / rms
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 31 + 7) % vocab) as u32).collect()
}

/// Error bounds of [`check_with`]: against the f64 reference, token-by-token against one batch.
struct Bounds {
    reference: f64,
    incremental: f64,
}

fn check(spec: &TinySpec, bound: f64) {
    check_with(spec, Precision::F32, Bounds { reference: bound, incremental: 1e-3 });
}

fn check_with(spec: &TinySpec, precision: Precision, bounds: Bounds) {
    let bound = bounds.reference;
    let (bytes, w) = build(spec);
    let g = Gguf::parse(&bytes).expect("tiny file parses");
    let model = Model::from_gguf(&g).expect("tiny model binds");
    let toks = tokens(12, spec.n_vocab);
    let want = reference_logits(spec, &w, &toks);
    let nv = spec.n_vocab;
    for threads in [1, 2] {
        let pool = Pool::new(threads).unwrap();
        // Whole prompt in one batch, logits for every position.
        let mut st = State::new(&model, 32, 64).unwrap();
        st.set_precision(precision);
        let all = model.forward(&mut st, &pool, &toks, Logits::From(0)).unwrap().to_vec();
        for (p, row) in want.iter().enumerate() {
            let e = rel_err(&all[p * nv..(p + 1) * nv], row);
            let ty = spec.weight_type;
            assert!(e < bound, "{ty:?} {precision:?} threads {threads} pos {p}: rel err {e:.2e} ≥ {bound:.0e}");
        }
        // Token by token through the KV cache: same logits as the batch up to summation order
        // (fused dequantize-dot vs dequantize + FMA gemm) and the f16 rounding of K/V that
        // it can flip; a cache or position bug gives errors of order 1.
        let mut st = State::new(&model, 32, 64).unwrap();
        st.set_precision(precision);
        for (p, &t) in toks.iter().enumerate() {
            let l = model.forward(&mut st, &pool, &[t], Logits::Last).unwrap();
            let e = rel_err(l, &all[p * nv..(p + 1) * nv].iter().map(|&v| v as f64).collect::<Vec<_>>());
            let b = bounds.incremental;
            assert!(e < b, "{:?} {precision:?}: incremental vs batch at pos {p}: {e:.2e}", spec.weight_type);
        }
        // Small batches (n_batch 5) give the same result as one batch. Under Precision::Q8
        // batches of up to `SMALL_BATCH` tokens run the decode kernels (each token bit-identical
        // to its one-token matmul), so against the one batch of 12 (the gemm) they differ as
        // token-by-token does: by the 8-bit codes that f32 order can flip.
        let mut st = State::new(&model, 32, 5).unwrap();
        st.set_precision(precision);
        let split = model.forward(&mut st, &pool, &toks, Logits::From(0)).unwrap();
        let e = rel_err(split, &all.iter().map(|&v| v as f64).collect::<Vec<_>>());
        let b = if precision == Precision::Q8 { bounds.incremental.max(1e-4) } else { 1e-4 };
        assert!(e < b, "{:?}: batch of 5 vs one batch: {e:.2e}", spec.weight_type);
    }
}

#[test]
fn f32_weights_match_reference() {
    // f32 weights: the only differences are f16 KV storage and f32 accumulation.
    check(&TinySpec::default(), 1e-2);
}

#[test]
fn tied_embeddings_and_mqa() {
    check(&TinySpec { tied: true, n_head_kv: 1, seed: 5, ..Default::default() }, 1e-2);
}

/// The bound for the architecture tests with f32 weights: measured ≤ 7e-4 (the f16 KV cache);
/// a wrong RoPE base on one layer alone gives 1e-2.
const ARCH_BOUND: f64 = 3e-3;

/// qwen2: Q/K/V biases, NeoX RoPE at base 1e6, an untied output.
#[test]
fn qwen2_matches_reference() {
    check(&TinySpec { arch: "qwen2", seed: 11, ..Default::default() }, ARCH_BOUND);
}

/// gemma3: √n_embd embeddings, per-head Q/K norms, post-norms, GeGLU, a head dimension that is
/// not n_embd / n_head, windowed layers (window 5 < the 12 test tokens, so it bites) with
/// their own RoPE base interleaved with a global one, logit soft-capping, tied output.
#[test]
fn gemma3_matches_reference() {
    let spec = TinySpec {
        arch: "gemma3",
        n_head: 4,
        n_head_kv: 1,
        head_dim: Some(32),
        sliding_window: Some((5, 2)),
        softcap: Some(5.0),
        tied: true,
        seed: 12,
        ..Default::default()
    };
    check(&spec, ARCH_BOUND);
    // The fast path on quantized weights (the default precision).
    let q = TinySpec { weight_type: GgmlType::Q4_0, ..spec };
    check_with(&q, Precision::Q8, Bounds { reference: 6e-2, incremental: 1e-4 });
}

/// llama 3.1's `rope_freqs.weight` divides each RoPE frequency.
#[test]
fn llama_rope_freqs_are_used() {
    check(&TinySpec { rope_freqs: true, seed: 13, ..Default::default() }, ARCH_BOUND);
}

/// A tiny model whose matrices are all of type `ty`, one block (at least 64 values) wide.
fn block_type_spec(ty: GgmlType) -> TinySpec {
    let k = ty.block_size().max(64);
    TinySpec { n_embd: k, n_head: 4, n_ff: k, weight_type: ty, seed: ty.id() as u64, ..Default::default() }
}

/// The quantized weight types (every type in the kernel table: Q4_0 … Q8_0, Q2_K … Q6_K,
/// IQ4_NL, IQ4_XS).
fn quantized_types() -> impl Iterator<Item = GgmlType> {
    pith_kernels::kernel_table().iter().map(|r| r.ty)
}

#[test]
fn every_block_type_runs_exactly_on_its_dequantized_weights() {
    // The reference uses the exact dequantized weights, so the bound is the same for every
    // type: pith computes in f32 on the weights the file holds.
    for ty in [GgmlType::F16, GgmlType::BF16].into_iter().chain(quantized_types()) {
        check(&block_type_spec(ty), 1e-2);
    }
}

#[test]
fn every_block_type_runs_close_under_q8() {
    // 8-bit activations (the default, fast path): each matmul adds the activations' rounding.
    // Every type decodes with the same per-32 quantization as the prefill gemm (the kernel
    // table's gemv), so token-by-token equals the batch up to f32 order.
    for ty in quantized_types() {
        assert!(pith_kernels::gemv_q8_supported(ty, 256), "{ty} has no decode kernel");
        // Decode (gemv) and prefill (gemm) agree within a few ulps per dot product (tested in
        // pith-kernels, ~1e-7 of the output), but on these tiny random models a rounding
        // difference can flip an 8-bit activation code in a later matmul. Q2_K, Q3_K, Q5_K and
        // IQ4_XS show such a flip on these models: measured 0.023 / 0.022 / 0.027 / 0.018 decode
        // vs batch (Q5_K's since prefill fuses its scaling as every path now does); the other
        // types stay below 1e-4. Against the f64 reference the prefill of the
        // K-quants sits up to 0.13 away (Q4_K, unchanged from before the kernel table), the
        // 32-element types below 6e-2.
        let reference = if ty.block_size() == 256 { 2e-1 } else { 6e-2 };
        let flips = matches!(ty, GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q5_K | GgmlType::IQ4_XS);
        let incremental = if flips { 5e-2 } else { 1e-4 };
        let bounds = Bounds { reference, incremental };
        check_with(&block_type_spec(ty), Precision::Q8, bounds);
    }
}

#[test]
fn context_overflow_and_bad_tokens_are_errors() {
    let spec = TinySpec::default();
    let (bytes, _) = build(&spec);
    let g = Gguf::parse(&bytes).unwrap();
    let model = Model::from_gguf(&g).unwrap();
    let pool = Pool::single();
    let mut st = State::new(&model, 8, 8).unwrap();
    let e = model.forward(&mut st, &pool, &tokens(9, spec.n_vocab), Logits::Last).unwrap_err();
    assert!(e.to_string().contains("context overflow"), "{e}");
    assert_eq!(st.pos, 0, "a rejected call leaves the cache as it was");
    let e = model.forward(&mut st, &pool, &[spec.n_vocab as u32], Logits::Last).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
}

#[test]
fn missing_or_wrong_tensors_and_hyper_parameters() {
    use pith::gguf::writer::OwnedValue;
    let spec = TinySpec::default();
    let (bytes, _) = build(&spec);
    let g = Gguf::parse(&bytes).unwrap();
    // Rebuild the file with one thing removed or changed at a time.
    let rebuild = |edit: &dyn Fn(&mut pith::gguf::writer::GgufBuilder)| {
        let mut b = pith::gguf::writer::GgufBuilder::new();
        for (k, v) in &g.metadata {
            b.kv(k, OwnedValue::from_value(v));
        }
        for t in &g.tensors {
            b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
        }
        edit(&mut b);
        b.to_bytes()
    };
    type Edit = Box<dyn Fn(&mut pith::gguf::writer::GgufBuilder)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("llama.block_count", Box::new(|b| b.metadata.retain(|(k, _)| k != "llama.block_count"))),
        ("llama.embedding_length", Box::new(|b| b.metadata.retain(|(k, _)| k != "llama.embedding_length"))),
        ("general.architecture", Box::new(|b| b.metadata.retain(|(k, _)| k != "general.architecture"))),
        (
            "unsupported architecture 'mamba'",
            Box::new(|b| {
                b.kv("general.architecture", OwnedValue::String("mamba".into()));
            }),
        ),
        (
            "llama.attention.head_count_kv",
            Box::new(|b| {
                b.kv("llama.attention.head_count_kv", OwnedValue::U32(3));
            }),
        ),
        ("blk.1.ffn_up.weight", Box::new(|b| b.tensors.retain(|t| t.name != "blk.1.ffn_up.weight"))),
        (
            "blk.0.attn_q.weight",
            Box::new(|b| {
                let t = b.tensors.iter_mut().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
                t.dims = vec![32, 128];
            }),
        ),
        (
            "llama.block_count",
            Box::new(|b| {
                b.kv("llama.block_count", OwnedValue::String("two".into()));
            }),
        ),
    ];
    for (needle, edit) in cases {
        let bytes = rebuild(&*edit);
        let g = Gguf::parse(&bytes).unwrap();
        let e = Model::from_gguf(&g).err().unwrap_or_else(|| panic!("{needle}: model loaded"));
        assert!(e.to_string().contains(needle), "expected '{needle}' in: {e}");
    }
}
