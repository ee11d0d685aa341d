//! Quantized KV caches on the default model (SmolLM2-135M-Instruct Q4_1, head_dim 64): greedy
//! generation with a Q8_0 cache for keys and values equals the f16 cache's on the README's
//! benchmark prompts (`bench/prompts/p1..p5`).

use pith::engine::Engine;
use pith::file::MappedFile;
use pith::sampling::{Sampler, SamplerConfig};
use pith::{CacheType, State};
use std::path::PathBuf;

fn greedy(eng: &Engine<'_>, prompt: &[u32], n: usize, k: CacheType, v: CacheType) -> Vec<u32> {
    let mut state = State::with_cache_types(&eng.model, 512, 512, k, v).unwrap();
    let mut sampler = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() });
    let g = eng.generate(&mut state, &mut sampler, prompt, n, |_| {}).unwrap();
    g.tokens.iter().chain(g.eog_token.iter()).copied().collect()
}

#[test]
fn greedy_with_a_q8_0_cache_equals_f16_for_16_tokens() {
    let path = pith_fetch::ensure_default_model().expect("the default model ($PITH_MODEL or the cache)");
    let file = MappedFile::open(path).unwrap();
    let eng = Engine::load(&file, 2).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/prompts");
    for p in 1..=5 {
        let text = std::fs::read_to_string(dir.join(format!("p{p}.txt"))).unwrap();
        let prompt = eng.tokenize_prompt(&text).unwrap();
        let f16 = greedy(&eng, &prompt, 16, CacheType::F16, CacheType::F16);
        let q8 = greedy(&eng, &prompt, 16, CacheType::Q8_0, CacheType::Q8_0);
        assert_eq!(q8, f16, "p{p}: greedy tokens with a q8_0 KV cache differ from f16's");
        assert!(f16.len() >= 2, "p{p}: generated {} tokens", f16.len());
    }
}
