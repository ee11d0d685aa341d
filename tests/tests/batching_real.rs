//! On the default model, with the default precision: sequences decoding together in one
//! forward pass get bit-identical logits to the same sequences decoding alone (what makes a
//! server's greedy answers independent of who else is being served).

use pith::engine::Engine;
use pith::file::MappedFile;
use pith::model::{CacheType, KvCache, Seq, Workspace};
use pith::{Logits, Pool};

#[test]
fn decoding_together_is_bit_identical_to_alone() {
    let path = pith_fetch::ensure_default_model().expect("the default model ($PITH_MODEL or the cache)");
    let file = MappedFile::open(&path).expect("map");
    let engine = Engine::load(&file, 1).expect("load");
    let model = &engine.model;
    let prompts = ["Tell me about cats.", "What is 2+2? The answer", "Hello!", "Write a haiku about rain, please, now"];
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| engine.tokenize_prompt(p).expect("tokenize")).collect();
    for threads in [1, 2] {
        let pool = Pool::new(threads).expect("pool");
        let mut ws = Workspace::new(model, 256, 64).expect("workspace");
        let new = || KvCache::new(model, 256, CacheType::F16, CacheType::F16).expect("cache");
        let (mut alone, mut together): (Vec<KvCache>, Vec<KvCache>) =
            (ids.iter().map(|_| new()).collect(), ids.iter().map(|_| new()).collect());
        let n_vocab = model.config.n_vocab;
        let mut next = Vec::new();
        for (i, p) in ids.iter().enumerate() {
            let a = model
                .forward_seqs(&mut ws, &pool, &mut [Seq { cache: &mut alone[i], tokens: p, want: Logits::Last }])
                .expect("prompt")
                .to_vec();
            let b = model
                .forward_seqs(&mut ws, &pool, &mut [Seq { cache: &mut together[i], tokens: p, want: Logits::Last }])
                .expect("prompt")
                .to_vec();
            assert_eq!(a, b, "prompt {i}");
            next.push(argmax(&a));
        }
        for step in 0..12 {
            let feeds: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let mut alone_logits = Vec::new();
            for (i, c) in alone.iter_mut().enumerate() {
                alone_logits.push(
                    model
                        .forward_seqs(&mut ws, &pool, &mut [Seq { cache: c, tokens: &feeds[i], want: Logits::Last }])
                        .expect("decode")
                        .to_vec(),
                );
            }
            // Together, skipping one sequence on odd steps (sequences join and leave).
            let skip = if step % 2 == 1 { Some(step % ids.len()) } else { None };
            let mut seqs: Vec<Seq<'_>> = together
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| Some(*i) != skip)
                .map(|(i, c)| Seq { cache: c, tokens: &feeds[i], want: Logits::Last })
                .collect();
            let l = model.forward_seqs(&mut ws, &pool, &mut seqs).expect("together").to_vec();
            drop(seqs);
            let mut k = 0;
            for i in 0..ids.len() {
                if Some(i) == skip {
                    // Catch it up alone so both sets hold the same tokens.
                    let c = &mut together[i];
                    let r = model
                        .forward_seqs(&mut ws, &pool, &mut [Seq { cache: c, tokens: &feeds[i], want: Logits::Last }])
                        .expect("catch up")
                        .to_vec();
                    assert_eq!(r, alone_logits[i], "threads {threads}, step {step}, sequence {i} (alone both ways)");
                    continue;
                }
                let t = &l[k * n_vocab..(k + 1) * n_vocab];
                let diff = t.iter().zip(&alone_logits[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff == 0.0, "threads {threads}, step {step}, sequence {i}: logits differ by up to {diff}");
                k += 1;
            }
            next = alone_logits.iter().map(|l| argmax(l)).collect();
        }
    }
}

fn argmax(l: &[f32]) -> u32 {
    l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}
