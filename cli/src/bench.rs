//! `pith bench`: prompt-processing and generation throughput, peak memory, effective weight
//! bandwidth, and a STREAM-style read-bandwidth probe to put the generation figure next to
//! the machine's limit.

use pith::model::{CacheType, KvCache, Logits, Model, Seq, State, Workspace};
use pith::parallel::Pool;
use pith::tensor::Precision;
use pith::Result;
use std::time::Instant;

/// One measured test (`pp512`, `tg128`) at one thread count.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub test: String,
    pub threads: usize,
    /// Median over repetitions.
    pub tokens_per_second: f64,
    pub min_tokens_per_second: f64,
    pub max_tokens_per_second: f64,
    pub repetitions: usize,
    /// Weight bytes streamed per second during generation (tg tests only).
    pub weight_gb_per_second: Option<f64>,
    pub kernels: String,
    pub precision: String,
    pub cache_type_k: String,
    pub cache_type_v: String,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Deterministic pseudo-random token ids (as llama-bench, content does not matter for speed).
fn tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n_vocab as u64) as u32
        })
        .collect()
}

/// What every test shares: the arithmetic, the cache types and the depth (tokens already in
/// the cache when the timed tokens start, as llama-bench's `-d`).
#[derive(Clone, Copy)]
pub struct Setup {
    pub precision: Precision,
    pub cache: (CacheType, CacheType),
    pub depth: usize,
    /// Sequences decoding together in the generation test (one token of each per step).
    pub sequences: usize,
}

/// Fills `cache` with `depth` tokens (untimed), in prompt batches of up to [`FILL_BATCH`].
fn fill(model: &Model<'_>, ws: &mut Workspace, pool: &Pool, cache: &mut KvCache, depth: usize) -> Result<()> {
    for chunk in tokens(depth, model.config.n_vocab).chunks(FILL_BATCH) {
        model.forward_seqs(ws, pool, &mut [Seq { cache: &mut *cache, tokens: chunk, want: Logits::None }])?;
    }
    Ok(())
}

/// Largest batch that fills the cache to the depth.
const FILL_BATCH: usize = 512;

/// A state for `n_timed` tokens (in batches of up to `n_batch`) after `setup.depth` cached ones.
fn state_at_depth(model: &Model<'_>, pool: &Pool, n_timed: usize, n_batch: usize, setup: Setup) -> Result<State> {
    let (k, v) = setup.cache;
    let n_batch = n_batch.max(FILL_BATCH.min(setup.depth));
    let mut st = State::with_cache_types(model, setup.depth + n_timed, n_batch, k, v)?;
    st.set_precision(setup.precision);
    fill(model, &mut st.ws, pool, &mut st.cache, setup.depth)?;
    Ok(st)
}

/// Prompt processing: `n_prompt` tokens in one batch after `depth` cached tokens.
pub fn bench_pp(model: &Model<'_>, pool: &Pool, n_prompt: usize, setup: Setup) -> Result<f64> {
    let mut st = state_at_depth(model, pool, n_prompt, n_prompt, setup)?;
    let toks = tokens(n_prompt, model.config.n_vocab);
    let t = Instant::now();
    model.forward(&mut st, pool, &toks, Logits::Last)?;
    Ok(n_prompt as f64 / t.elapsed().as_secs_f64())
}

/// Generation: `n_gen` single-token steps after `depth` cached tokens.
pub fn bench_tg(model: &Model<'_>, pool: &Pool, n_gen: usize, setup: Setup) -> Result<f64> {
    let mut st = state_at_depth(model, pool, n_gen + 1, 1, setup)?;
    let toks = tokens(n_gen, model.config.n_vocab);
    // One warm-up token (page faults, thread start) outside the timing, as llama-bench does.
    model.forward(&mut st, pool, &toks[..1], Logits::Last)?;
    st.truncate(setup.depth);
    let t = Instant::now();
    for &tok in &toks {
        model.forward(&mut st, pool, &[tok], Logits::Last)?;
    }
    Ok(n_gen as f64 / t.elapsed().as_secs_f64())
}

/// Generation of `setup.sequences` sequences together: `n_gen` steps, each one token of every
/// sequence in one forward pass (as `pith serve --parallel` decodes); aggregate tokens/s.
pub fn bench_tg_together(model: &Model<'_>, pool: &Pool, n_gen: usize, setup: Setup) -> Result<f64> {
    let (k, v) = setup.cache;
    let n = setup.sequences;
    let n_ctx = setup.depth + n_gen + 1;
    let mut ws = Workspace::new(model, n_ctx, n.max(FILL_BATCH.min(setup.depth)))?;
    ws.set_precision(setup.precision);
    let mut caches = (0..n).map(|_| KvCache::new(model, n_ctx, k, v)).collect::<Result<Vec<_>>>()?;
    for c in caches.iter_mut() {
        fill(model, &mut ws, pool, c, setup.depth)?;
    }
    let toks = tokens(n_gen * n, model.config.n_vocab);
    let step = |ws: &mut Workspace, caches: &mut [KvCache], step: &[u32]| {
        let mut seqs: Vec<Seq<'_>> = caches
            .iter_mut()
            .zip(step.chunks_exact(1))
            .map(|(c, tok)| Seq { cache: c, tokens: tok, want: Logits::Last })
            .collect();
        model.forward_seqs(ws, pool, &mut seqs).map(|_| ())
    };
    // One warm-up step outside the timing, as for one sequence.
    step(&mut ws, &mut caches, &toks[..n])?;
    for c in caches.iter_mut() {
        c.truncate(setup.depth);
    }
    let t = Instant::now();
    for s in toks.chunks_exact(n) {
        step(&mut ws, &mut caches, s)?;
    }
    Ok((n_gen * n) as f64 / t.elapsed().as_secs_f64())
}

/// Runs `f` `reps` times and summarises.
pub fn repeat(reps: usize, mut f: impl FnMut() -> Result<f64>) -> Result<(f64, f64, f64)> {
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        v.push(f()?);
    }
    let (lo, hi) = (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max));
    Ok((median(&mut v), lo, hi))
}

/// Peak resident memory of this process so far, in bytes (Linux; `None` elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// STREAM-style read bandwidth in GB/s: `threads` threads each sum their share of a
/// `bytes`-sized buffer, best of `reps` passes.
pub fn read_bandwidth(pool: &Pool, bytes: usize, reps: usize) -> f64 {
    let n = bytes / 4;
    let mut buf = vec![1.0f32; n];
    // Touch every page before timing.
    for (i, v) in buf.iter_mut().enumerate() {
        *v = (i % 7) as f32;
    }
    let chunk = n.div_ceil(pool.threads());
    let mut sums = vec![0.0f32; pool.threads()];
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let src = &buf;
        let t = Instant::now();
        pool.for_each_chunk(&mut sums, 1, &|i, out: &mut [f32]| {
            let lo = (i * chunk).min(n);
            let hi = ((i + 1) * chunk).min(n);
            out[0] = pith_kernels::vmath::sum_f32(&src[lo..hi]);
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max(bytes as f64 / secs / 1e9);
    }
    // Keep the sums alive so the reads are not optimised away.
    if sums.iter().any(|s| s.is_nan()) {
        eprintln!("pith: bandwidth probe saw NaN");
    }
    best
}
