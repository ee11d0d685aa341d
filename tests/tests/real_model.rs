//! End-to-end checks on SmolLM2-135M-Instruct Q4_1 (fetched into the cache on first use)
//! against llama.cpp's reference figures for the same file.

use pith::engine::Engine;
use pith::file::MappedFile;
use pith::sampling::{Sampler, SamplerConfig};
use pith::{Logits, State};
use std::path::PathBuf;

fn model_path() -> PathBuf {
    pith_fetch::ensure_default_model().expect("the default model ($PITH_MODEL or the cache)")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn reference() -> serde_json::Value {
    let s = std::fs::read_to_string(fixture("smollm2/greedy_q4_1.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn greedy_generation_matches_llama_cpp() {
    let r = reference();
    let file = MappedFile::open(model_path()).unwrap();
    let eng = Engine::load(&file, 2).unwrap();
    let prompt = eng.tokenize_prompt(r["prompt"].as_str().unwrap()).unwrap();
    assert_eq!(prompt, ids(&r["prompt_ids"]), "prompt tokenization");
    let want = ids(&r["Q4_1"]["generated_ids"]);
    let mut state = State::new(&eng.model, 512, 512).unwrap();
    let mut sampler = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() });
    let mut text = String::new();
    let g = eng.generate(&mut state, &mut sampler, &prompt, 32, |s| text.push_str(s)).unwrap();
    assert!(text.starts_with(" Paris.\n\nThe"), "{text:?}");
    // pith computes in f32 on the exactly dequantized weights, like llama.cpp's F16 copy, which
    // (per the reference README) leaves the Q4_1 run at the 6th generated token. Require at
    // least the first 5 to agree, and report the rest.
    let same = g.tokens.iter().zip(&want).take_while(|(a, b)| a == b).count();
    eprintln!("greedy: {same}/32 tokens equal to llama.cpp Q4_1; pith: {text:?}");
    assert!(same >= 5, "diverged at token {same}: {:?} vs {:?}", g.tokens, want);
    assert!(g.tokens.len() == 32 || g.stop == pith::engine::Stop::EndOfGeneration, "{:?}", g.stop);
}

#[test]
fn perplexity_first_chunks_match_f16_reference() {
    // llama.cpp's running PPL on the F16 copy after chunks 1 and 2 (perplexity.reference.md).
    let want = [12.8463, 21.6836];
    let text = std::fs::read_to_string(fixture("wikitext-2-raw-test.head16k.txt")).unwrap();
    let file = MappedFile::open(model_path()).unwrap();
    let eng = Engine::load(&file, 2).unwrap();
    let tokens = eng.tokenizer.encode(&text, false).unwrap();
    let mut got = Vec::new();
    pith::perplexity::perplexity(
        &eng.model,
        &eng.pool,
        &tokens,
        pith::perplexity::PerplexityParams { n_ctx: 512, max_chunks: 2, bos: None, precision: pith::Precision::F32 },
        |s| got.push(s.ppl()),
    )
    .unwrap();
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let rel = (g - w).abs() / w;
        eprintln!("chunk {}: pith {g:.4}, llama.cpp F16 {w:.4} ({:.3} %)", k + 1, rel * 100.0);
        assert!(rel < 0.005, "chunk {}: {g} vs {w}", k + 1);
    }
}

#[test]
fn perplexity_q8_ten_chunks_match_llama_cpp_q4_1() {
    // llama.cpp's running PPL on the Q4_1 file after 10 chunks, with its activations quantized
    // to 8 bits as pith's default precision (q8) does. Over one chunk, 8-bit rounding noise moves
    // PPL by up to ~1 % (a near-tie between rounding directions flips with any change in
    // summation order), so the comparison is over 10 chunks (2,560 scored tokens).
    let want = 26.7896;
    let text = std::fs::read_to_string(fixture("wikitext-2-raw-test.head48k.txt")).unwrap();
    let file = MappedFile::open(model_path()).unwrap();
    let eng = Engine::load(&file, 2).unwrap();
    let tokens = eng.tokenizer.encode(&text, false).unwrap();
    let params =
        pith::perplexity::PerplexityParams { n_ctx: 512, max_chunks: 10, bos: None, precision: pith::Precision::Q8 };
    let s = pith::perplexity::perplexity(&eng.model, &eng.pool, &tokens, params, |_| {}).unwrap();
    assert_eq!(s.chunks, 10, "the fixture holds 10 chunks");
    let rel = (s.ppl() - want).abs() / want;
    eprintln!("10 chunks: pith q8 {:.4}, llama.cpp Q4_1 {want:.4} ({:.3} %)", s.ppl(), rel * 100.0);
    assert!(rel < 0.005, "{} vs {want}", s.ppl());
}

/// `toks` fed in calls of `parts` tokens (one fresh state), the last call's last logits.
fn logits_in_parts(eng: &Engine<'_>, toks: &[u32], parts: &[usize], precision: pith::Precision) -> Vec<f32> {
    assert_eq!(parts.iter().sum::<usize>(), toks.len());
    let mut st = State::new(&eng.model, 64, 64).unwrap();
    st.set_precision(precision);
    let mut at = 0;
    let mut last = Vec::new();
    for (i, &n) in parts.iter().enumerate() {
        let want = if i + 1 == parts.len() { Logits::Last } else { Logits::None };
        last = eng.model.forward(&mut st, &eng.pool, &toks[at..at + n], want).unwrap().to_vec();
        at += n;
    }
    last
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// A prompt fed in two calls through the KV cache gives the logits of one call over the whole
/// prompt, when both run the same matmul kernels: a cache or position bug gives errors of
/// order 1. Under Precision::Q8 a batch of up to `SMALL_BATCH` tokens runs the decode kernels
/// and a larger one the gemm, so the Q8 splits keep every call on one side of that line.
#[test]
fn kv_cache_reuse_equals_full_recompute() {
    use pith::tensor::SMALL_BATCH;
    use pith::Precision::{F32, Q8};
    let file = MappedFile::open(model_path()).unwrap();
    let eng = Engine::load(&file, 2).unwrap();
    let enc = |s: &str| eng.tokenizer.encode(s, false).unwrap();
    // F32 (nothing requantized): the split 7 + 3 of a 10-token prompt, whole on the f32 gemm.
    let toks = enc("The quick brown fox jumps over the lazy dog because");
    let (full, inc) = (logits_in_parts(&eng, &toks, &[toks.len()], F32), logits_in_parts(&eng, &toks, &[7, 3], F32));
    assert!(max_diff(&full, &inc) < 1e-3, "F32: incremental logits differ by {}", max_diff(&full, &inc));
    // Q8 on the gemm: both calls and the whole prompt more than SMALL_BATCH tokens.
    let long =
        enc("The quick brown fox jumps over the lazy dog because it was late for dinner, and the dog did not care");
    let n = long.len();
    assert!(n > 2 * SMALL_BATCH + 1, "{n} tokens");
    let (full, inc) = (logits_in_parts(&eng, &long, &[n], Q8), logits_in_parts(&eng, &long, &[n - 9, 9], Q8));
    assert!(max_diff(&full, &inc) < 1e-3, "Q8 gemm: incremental logits differ by {}", max_diff(&full, &inc));
    // Q8 on the decode kernels: a prompt of SMALL_BATCH tokens, whole and as 5 + 3.
    let short = &long[..SMALL_BATCH];
    let (full, inc) = (logits_in_parts(&eng, short, &[SMALL_BATCH], Q8), logits_in_parts(&eng, short, &[5, 3], Q8));
    assert!(max_diff(&full, &inc) < 1e-3, "Q8 decode kernels: incremental logits differ by {}", max_diff(&full, &inc));
}

/// The same split across the kernels (the whole 10-token prompt on the gemm, its 7 + 3 on the
/// decode kernels) is not within 1e-3 under Precision::Q8, and that is rounding, not a cache bug:
/// the two kernels sum in different f32 orders (~1e-7 of an output apart, tested in
/// pith-kernels), which flips 8-bit activation codes at rounding ties in later matmuls, and a
/// flipped code moves its input by a whole quantization step. Measured here: gemm vs decode
/// kernels 0.74 max over the logits (RMS 3.6), each against the F32 logits 0.58 (gemm) and 0.92
/// (decode kernels), and the F32 path, which requantizes nothing, splits to within 1e-3 (the
/// test above). So the bound is that of 8-bit activations themselves: both within 1.5 (about
/// 2x the largest measured gap) of F32, of each other, and the exact greedy token unless the
/// exact top two are within twice that run's distance (a near-tie that rounding decides).
#[test]
fn kv_cache_reuse_across_kernels_stays_within_q8_rounding() {
    use pith::Precision::{F32, Q8};
    let file = MappedFile::open(model_path()).unwrap();
    let eng = Engine::load(&file, 2).unwrap();
    let toks = eng.tokenizer.encode("The quick brown fox jumps over the lazy dog because", false).unwrap();
    assert!(toks.len() > pith::tensor::SMALL_BATCH && 7 <= pith::tensor::SMALL_BATCH);
    let exact = logits_in_parts(&eng, &toks, &[toks.len()], F32);
    let gemm = logits_in_parts(&eng, &toks, &[toks.len()], Q8);
    let decode = logits_in_parts(&eng, &toks, &[7, 3], Q8);
    let (d, dg, dd) = (max_diff(&gemm, &decode), max_diff(&gemm, &exact), max_diff(&decode, &exact));
    eprintln!("Q8 gemm vs decode kernels {d:.3}; vs F32: gemm {dg:.3}, decode kernels {dd:.3}");
    assert!(d < 1.5 && dg < 1.5 && dd < 1.5, "{d} {dg} {dd}");
    // The greedy token: a perturbation of at most `e` per logit can change the argmax only where
    // the exact top two are within 2e, so each run must pick the exact token unless it is such a
    // near-tie. (This prompt is one: f32's top two, 357 and 282, are 0.023 apart, and since 5 Dec
    // the gemm picks 282, decode 357.)
    let gap = |l: &[f32]| {
        let top = argmax(l);
        l[top] - l.iter().enumerate().filter(|&(i, _)| i != top).map(|(_, &v)| v).fold(f32::MIN, f32::max)
    };
    let g = gap(&exact);
    eprintln!(
        "f32 top-2 gap {g:.3}; tokens: f32 {}, gemm {}, decode kernels {}",
        argmax(&exact),
        argmax(&gemm),
        argmax(&decode)
    );
    for (name, l, e) in [("gemm", &gemm, dg), ("decode kernels", &decode, dd)] {
        assert!(
            argmax(l) == argmax(&exact) || g <= 2.0 * e,
            "{name}: token {} where f32 gives {} (gap {g}, max |diff| {e})",
            argmax(l),
            argmax(&exact)
        );
    }
}
