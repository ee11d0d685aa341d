//! Continuous batching and quantized KV caches on the tiny models of every family:
//! `Model::forward_seqs` (several sequences in one step) against each sequence run alone, and
//! Q8_0 / Q4_0 caches against the f16 cache.

use pith::gguf::Gguf;
use pith::testing::{build, TinySpec};
use pith::{CacheType, KvCache, Logits, Model, Pool, Precision, Seq, State, Workspace};

fn tokens(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 31 + 7 + seed * 13) % vocab) as u32).collect()
}

/// llama (default), qwen2 (QKV bias), gemma3 (windowed layers: window 5, shorter than the
/// cached prefixes below, so the window bites; post-norms, soft-cap). head_dim 32 throughout,
/// so the same models serve the quantized-cache tests.
fn specs() -> Vec<TinySpec> {
    vec![
        TinySpec { head_dim: Some(32), seed: 3, ..Default::default() },
        TinySpec { arch: "qwen2", head_dim: Some(32), seed: 11, ..Default::default() },
        TinySpec {
            arch: "gemma3",
            n_head: 4,
            n_head_kv: 1,
            head_dim: Some(32),
            sliding_window: Some((5, 2)),
            softcap: Some(5.0),
            tied: true,
            seed: 17,
            ..Default::default()
        },
    ]
}

/// One sequence of the test: `prefix` tokens already cached, then `feed` in the shared step.
struct Case {
    prefix: Vec<u32>,
    feed: Vec<u32>,
    want: Logits,
}

fn cases(nv: usize) -> Vec<Case> {
    vec![
        // A prompt chunk from an empty cache, every logit.
        Case { prefix: vec![], feed: tokens(7, nv, 1), want: Logits::From(0) },
        // A decode token after 9 cached (past gemma3's window of 5).
        Case { prefix: tokens(9, nv, 2), feed: tokens(1, nv, 3), want: Logits::Last },
        // A chunk of 4 after 3 cached (the batch path at a later position).
        Case { prefix: tokens(3, nv, 4), feed: tokens(4, nv, 5), want: Logits::From(1) },
        // A decode token after 5 cached.
        Case { prefix: tokens(5, nv, 6), feed: tokens(1, nv, 7), want: Logits::Last },
    ]
}

/// Bound of the shared step against each sequence alone with f32 matmuls: the attention and
/// elementwise work of a token do not depend on the other tokens, and f32 matmuls compute each
/// token's row alike at any batch size, so only f32 summation order may differ.
const SHARED_F32_BOUND: f32 = 1e-5;

#[test]
fn forward_seqs_equals_each_sequence_alone() {
    for spec in specs() {
        let (bytes, _) = build(&spec);
        let g = Gguf::parse(&bytes).unwrap();
        let model = Model::from_gguf(&g).unwrap();
        let nv = spec.n_vocab;
        let cs = cases(nv);
        for threads in [1, 2] {
            let pool = Pool::new(threads).unwrap();
            // Alone: each sequence through `forward` on its own state.
            let alone: Vec<Vec<f32>> = cs
                .iter()
                .map(|c| {
                    let mut st = State::new(&model, 32, 64).unwrap();
                    st.set_precision(Precision::F32);
                    if !c.prefix.is_empty() {
                        model.forward(&mut st, &pool, &c.prefix, Logits::None).unwrap();
                    }
                    model.forward(&mut st, &pool, &c.feed, c.want).unwrap().to_vec()
                })
                .collect();
            // Shared: the prefixes filled one sequence at a time, then one step for all.
            let mut ws = Workspace::new(&model, 32, 64).unwrap();
            ws.set_precision(Precision::F32);
            let mut caches: Vec<KvCache> =
                cs.iter().map(|_| KvCache::new(&model, 32, CacheType::F16, CacheType::F16).unwrap()).collect();
            for (c, cache) in cs.iter().zip(caches.iter_mut()) {
                let mut one = [Seq { cache, tokens: &c.prefix, want: Logits::None }];
                model.forward_seqs(&mut ws, &pool, &mut one).unwrap();
            }
            let mut seqs: Vec<Seq> = cs
                .iter()
                .zip(caches.iter_mut())
                .map(|(c, cache)| Seq { cache, tokens: &c.feed, want: c.want })
                .collect();
            let got = model.forward_seqs(&mut ws, &pool, &mut seqs).unwrap().to_vec();
            let want: Vec<f32> = alone.concat();
            assert_eq!(got.len(), want.len(), "{}: logits rows", spec.arch);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            println!("{} threads {threads}: shared step vs alone, max |Δlogit| = {err:.3e}", spec.arch);
            assert!(err <= SHARED_F32_BOUND, "{} threads {threads}: shared vs alone {err:.3e}", spec.arch);
            for (c, cache) in cs.iter().zip(&caches) {
                assert_eq!(cache.pos, c.prefix.len() + c.feed.len());
            }
        }
    }
}

/// A step split over several (n_batch 3) still gives every sequence its logits in order.
#[test]
fn forward_seqs_splits_long_steps() {
    let spec = &specs()[0];
    let (bytes, _) = build(spec);
    let g = Gguf::parse(&bytes).unwrap();
    let model = Model::from_gguf(&g).unwrap();
    let pool = Pool::new(2).unwrap();
    let nv = spec.n_vocab;
    let (a, b) = (tokens(5, nv, 1), tokens(4, nv, 2));
    let run = |n_batch: usize| {
        let mut ws = Workspace::new(&model, 16, n_batch).unwrap();
        ws.set_precision(Precision::F32);
        let mut ca = KvCache::new(&model, 16, CacheType::F16, CacheType::F16).unwrap();
        let mut cb = KvCache::new(&model, 16, CacheType::F16, CacheType::F16).unwrap();
        let mut seqs = [
            Seq { cache: &mut ca, tokens: &a, want: Logits::From(2) },
            Seq { cache: &mut cb, tokens: &b, want: Logits::From(0) },
        ];
        model.forward_seqs(&mut ws, &pool, &mut seqs).unwrap().to_vec()
    };
    let (one, split) = (run(64), run(3));
    assert_eq!(one.len(), 7 * nv);
    // Different splits change which tokens share a batch (and the f16 cache's rounding point
    // relative to the batch path): f32 rounding only; a misplaced row is off by O(1).
    let err = one.iter().zip(&split).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err <= 1e-3, "n_batch 3 vs one step: {err:.3e}");
}

#[test]
fn forward_seqs_checks_everything_before_touching_a_cache() {
    let spec = &specs()[0];
    let (bytes, _) = build(spec);
    let g = Gguf::parse(&bytes).unwrap();
    let model = Model::from_gguf(&g).unwrap();
    let pool = Pool::single();
    let mut ws = Workspace::new(&model, 8, 8).unwrap();
    let mut ca = KvCache::new(&model, 8, CacheType::F16, CacheType::F16).unwrap();
    let mut cb = KvCache::new(&model, 4, CacheType::Q8_0, CacheType::F16).unwrap();
    let good = [1u32, 2];
    // The second sequence overflows its context of 4.
    let long = [1u32, 2, 3, 4, 5];
    let r = model.forward_seqs(
        &mut ws,
        &pool,
        &mut [
            Seq { cache: &mut ca, tokens: &good, want: Logits::Last },
            Seq { cache: &mut cb, tokens: &long, want: Logits::Last },
        ],
    );
    assert!(matches!(r, Err(pith::Error::ContextOverflow { needed: 5, n_ctx: 4 })), "{:?}", r.err());
    let bad = [1u32, 9999];
    let r = model.forward_seqs(
        &mut ws,
        &pool,
        &mut [
            Seq { cache: &mut ca, tokens: &good, want: Logits::Last },
            Seq { cache: &mut cb, tokens: &bad, want: Logits::Last },
        ],
    );
    assert!(matches!(r, Err(pith::Error::BadToken { id: 9999, .. })), "{:?}", r.err());
    assert_eq!((ca.pos, cb.pos), (0, 0), "a rejected step leaves every cache as it was");
    // A cache longer than the workspace's RoPE tables.
    let mut cc = KvCache::new(&model, 16, CacheType::F16, CacheType::F16).unwrap();
    let nine = [1u32; 9];
    let r = model.forward_seqs(&mut ws, &pool, &mut [Seq { cache: &mut cc, tokens: &nine, want: Logits::None }]);
    assert!(matches!(r, Err(pith::Error::ContextOverflow { needed: 9, n_ctx: 8 })), "{:?}", r.err());
}

/// max |a − b| relative to b's RMS.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let rms = (b.iter().map(|v| v * v).sum::<f32>() / b.len() as f32).sqrt();
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / rms
}

/// Bounds of a quantized cache's logits against the f16 cache's, relative to the logits' RMS
/// (measured maxima over the three models: q8_0 1.9e-2, q4_0 2.7e-1; the random tiny models
/// amplify K/V rounding). The tight check of the formats is the next one: a cache read in place
/// by the decode kernels against the same cache widened by the batch path.
const Q8_0_BOUND: f32 = 3e-2;
const Q4_0_BOUND: f32 = 4e-1;
/// Token-by-token decoding (the quantized-cache kernels) against one batch over the same cache
/// type (the cache dequantized to f32): both see the same quantized values, so f32 rounding
/// only; a wrong block layout or scale in either gives O(1).
const SAME_CACHE_BOUND: f32 = 1e-4;

#[test]
fn quantized_caches_track_the_f16_cache() {
    for spec in specs() {
        let (bytes, _) = build(&spec);
        let g = Gguf::parse(&bytes).unwrap();
        let model = Model::from_gguf(&g).unwrap();
        let pool = Pool::new(2).unwrap();
        let nv = spec.n_vocab;
        let (prompt, gen) = (tokens(10, nv, 1), tokens(6, nv, 2));
        let run = |k: CacheType, v: CacheType| {
            let mut st = State::with_cache_types(&model, 32, 64, k, v).unwrap();
            st.set_precision(Precision::F32);
            // The prompt through the batch path (the cache widened), then decode steps that
            // read the quantized cache in place.
            let mut out = model.forward(&mut st, &pool, &prompt, Logits::From(0)).unwrap().to_vec();
            for &t in &gen {
                out.extend_from_slice(model.forward(&mut st, &pool, &[t], Logits::Last).unwrap());
            }
            out
        };
        let f16 = run(CacheType::F16, CacheType::F16);
        for (k, v, bound) in [
            (CacheType::Q8_0, CacheType::Q8_0, Q8_0_BOUND),
            (CacheType::Q8_0, CacheType::F16, Q8_0_BOUND),
            (CacheType::F16, CacheType::Q8_0, Q8_0_BOUND),
            (CacheType::Q4_0, CacheType::Q4_0, Q4_0_BOUND),
        ] {
            let q = run(k, v);
            let e = rel(&q, &f16);
            let decode = rel(&q[prompt.len() * nv..], &f16[prompt.len() * nv..]);
            println!("{} K {k} V {v}: rel err all {e:.3e}, decode steps {decode:.3e} (bound {bound:.0e})", spec.arch);
            assert!(e <= bound, "{} K {k} V {v}: {e:.3e} > {bound:.0e}", spec.arch);
            // The same cache type, all tokens in one batch vs one at a time.
            let all: Vec<u32> = prompt.iter().chain(&gen).copied().collect();
            let mut st = State::with_cache_types(&model, 32, 64, k, v).unwrap();
            st.set_precision(Precision::F32);
            let batch = model.forward(&mut st, &pool, &all, Logits::From(0)).unwrap().to_vec();
            let mut st = State::with_cache_types(&model, 32, 64, k, v).unwrap();
            st.set_precision(Precision::F32);
            let mut one = Vec::new();
            for &t in &all {
                one.extend_from_slice(model.forward(&mut st, &pool, &[t], Logits::Last).unwrap());
            }
            let e = rel(&one, &batch);
            println!("{} K {k} V {v}: token by token vs one batch {e:.3e} (bound {SAME_CACHE_BOUND:.0e})", spec.arch);
            assert!(e <= SAME_CACHE_BOUND, "{} K {k} V {v}: decode vs batch {e:.3e}", spec.arch);
        }
    }
}

#[test]
fn quantized_caches_need_whole_blocks_per_head() {
    // head_dim 16.
    let spec = TinySpec::default();
    let (bytes, _) = build(&spec);
    let g = Gguf::parse(&bytes).unwrap();
    let model = Model::from_gguf(&g).unwrap();
    let e = match KvCache::new(&model, 8, CacheType::F16, CacheType::Q4_0) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a q4_0 cache for head_dim 16 was accepted"),
    };
    assert!(e.contains("q4_0") && e.contains("head_dim is 16"), "{e}");
    assert!(KvCache::new(&model, 8, CacheType::F16, CacheType::F16).is_ok());
}

#[test]
fn cache_types_parse_print_and_size() {
    for t in CacheType::ALL {
        assert_eq!(t.to_string().parse::<CacheType>().unwrap(), t);
    }
    let e = "q5_0".parse::<CacheType>().unwrap_err();
    assert!(e.contains("f16, q8_0, q4_0"), "{e}");
    let spec = &specs()[0];
    let (bytes, _) = build(spec);
    let g = Gguf::parse(&bytes).unwrap();
    let model = Model::from_gguf(&g).unwrap();
    let kv = spec.n_head_kv * 32; // kv_dim
    for (t, per) in [(CacheType::F16, 2 * kv), (CacheType::Q8_0, kv / 32 * 34), (CacheType::Q4_0, kv / 32 * 18)] {
        let c = KvCache::new(&model, 10, t, t).unwrap();
        assert_eq!(c.bytes(), 2 * spec.n_layer * 10 * per, "{t}");
        assert_eq!(KvCache::bytes_for(&model, 10, t, t).unwrap(), c.bytes());
    }
}
