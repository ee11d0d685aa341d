//! The slots and the one worker thread that runs the model.
//!
//! The worker binds the model once and owns `--parallel` slots, each with its own KV cache and
//! the tokens that cache holds. Requests wait in a bounded queue and join a free slot between
//! steps; a finished (or abandoned) request leaves its slot at once. Each step:
//! 1. admits waiting requests into free slots, preferring the slot whose cached tokens share the
//!    longest prefix with the prompt (a multi-turn chat re-sends its history: only the new turn
//!    is computed);
//! 2. drops requests whose client went away (their receiver is closed);
//! 3. feeds one prompt chunk (≤ n_batch tokens) of the oldest request still reading its prompt;
//! 4. feeds the last sampled token of every generating request, all in one forward pass
//!    (continuous batching: one read of the weights serves every sequence), and samples each.
//!
//! A request's tokens go through the same kernels whether it is alone or shares steps with
//! others (prompt chunks alone, decode tokens on the per-token small-batch path), so a greedy
//! answer does not depend on who else is being served.

use crate::api::{ApiError, GenParams, Usage};
use pith::model::{CacheType, KvCache, Logits, Model, Seq, Workspace};
use pith::sampling::Sampler;
use pith::session::{LoadedModel, StopMatcher};
use pith::tokenizer::StreamDecoder;
use pith::Pool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// A logit mask that constrains output (JSON, a JSON schema): applied before sampling, told
/// every sampled token, and able to say the output is complete.
pub trait LogitMask: Send {
    fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), String>;
    fn accept(&mut self, token: u32) -> Result<(), String>;
    fn is_finished(&self) -> bool;
}

/// Why a request stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End of generation, a stop string, or a constraint that is complete.
    Stop,
    /// `max_tokens` or the context.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One sampled token with its log-probability under the model and the best alternatives.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: u32,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// (id, bytes, logprob), best first.
    pub top: Vec<(u32, Vec<u8>, f32)>,
}

/// What the worker tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// Text now safe to show (stop strings held back, UTF-8 complete) and the tokens sampled
    /// since the last event (when log-probabilities were asked for).
    Delta {
        text: String,
        tokens: Vec<TokenInfo>,
    },
    Done {
        finish: Finish,
        usage: Usage,
        timings: Timings,
    },
    Error(ApiError),
}

/// How long a request took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Prompt tokens found in the slot's cache (not computed again).
    pub cached_tokens: usize,
    /// From admission to the first token.
    pub prompt_ms: f64,
    /// From the first token to the last.
    pub gen_ms: f64,
    /// From submission to admission into a slot.
    pub queued_ms: f64,
}

/// A request for the worker.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenParams,
    pub mask: Option<Box<dyn LogitMask>>,
    pub events: UnboundedSender<Event>,
    pub submitted: Instant,
}

/// Counters for `/metrics`, shared with the HTTP side.
#[derive(Default)]
pub struct Metrics {
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Microseconds spent in decode steps (generated tokens / this = aggregate tokens/s).
    pub decode_us: AtomicU64,
    pub prompt_us: AtomicU64,
    pub steps: AtomicU64,
    /// Aggregate generated tokens/s over the last second of work, × 1000.
    pub recent_tps_milli: AtomicU64,
}

/// Worker settings.
#[derive(Debug, Clone, Copy)]
pub struct SlotConfig {
    pub parallel: usize,
    /// Context of each slot.
    pub n_ctx: usize,
    pub n_batch: usize,
    pub threads: usize,
    pub queue: usize,
    pub cache_k: CacheType,
    pub cache_v: CacheType,
}

/// The HTTP side's handle on the worker.
pub struct Scheduler {
    /// Memory of all slots' KV caches.
    pub kv_bytes: usize,
    tx: mpsc::Sender<Job>,
    pub metrics: Arc<Metrics>,
    pub config: SlotConfig,
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// The queue is full.
#[derive(Debug)]
pub struct Busy;

impl Scheduler {
    /// Starts the worker on `model`. Fails when the slots' caches cannot be made.
    pub fn start(model: Arc<LoadedModel>, config: SlotConfig) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (m, s) = (metrics.clone(), stop.clone());
        let worker = std::thread::Builder::new()
            .name("pith-serve-worker".into())
            .spawn(move || worker(model, config, rx, m, s, ready_tx))
            .map_err(|e| format!("starting the worker thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(kv_bytes)) => Ok(Scheduler { kv_bytes, tx, metrics, config, stop, worker: Some(worker) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the worker thread ended while starting".into()),
        }
    }

    /// Queues a request; `Busy` when `queue` requests are already waiting.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        let q = &self.metrics.queued;
        if q.fetch_add(1, Ordering::SeqCst) >= self.config.queue {
            q.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy);
        }
        if self.tx.send(job).is_err() {
            q.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy);
        }
        Ok(())
    }

    /// Stops the worker after the requests in flight (the HTTP side stops first).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.worker.take() {
            // Wake it if it is waiting for work.
            let (tx, _) = tokio::sync::mpsc::unbounded_channel();
            let _ = self.tx.send(Job {
                prompt: Vec::new(),
                params: GenParams {
                    max_tokens: Some(1),
                    sampling: Default::default(),
                    presence_penalty: 0.0,
                    frequency_penalty: 0.0,
                    stop: Vec::new(),
                    logprobs: None,
                    stream: false,
                    include_usage: false,
                    response_format: None,
                    ignore_eos: false,
                    cache_prompt: true,
                },
                mask: None,
                events: tx,
                submitted: Instant::now(),
            });
            let _ = w.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A request in a slot.
struct Active {
    job: Job,
    sampler: Sampler,
    /// Prompt tokens not yet in the cache.
    to_feed: Vec<u32>,
    /// The last sampled token, not yet in the cache.
    next: Option<u32>,
    generated: usize,
    /// Generated-token counts (presence and frequency penalties).
    counts: HashMap<u32, u32>,
    dec: StreamDecoder,
    stops: StopMatcher,
    max_tokens: usize,
    pending_info: Vec<TokenInfo>,
    timings: Timings,
    admitted: Instant,
    first_token: Option<Instant>,
    seq: u64,
}

/// One token for each of `feeds` (slot index, token), in one forward pass; the logits of each,
/// in order.
fn decode_step(
    model: &Model<'_>,
    ws: &mut Workspace,
    pool: &Pool,
    slots: &mut [Slot],
    feeds: &[(usize, [u32; 1])],
) -> pith::Result<Vec<f32>> {
    // Mutable borrows of the chosen slots' caches, in `feeds` order (indices ascend).
    let mut seqs: Vec<Seq<'_>> = Vec::with_capacity(feeds.len());
    let mut rest: &mut [Slot] = slots;
    let mut base = 0;
    for (i, f) in feeds {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(i - base + 1);
        base = i + 1;
        rest = tail;
        if let Some(s) = head.last_mut() {
            seqs.push(Seq { cache: &mut s.cache, tokens: f, want: Logits::Last });
        }
    }
    model.forward_seqs(ws, pool, &mut seqs).map(<[f32]>::to_vec)
}

struct Slot {
    cache: KvCache,
    /// The tokens the cache holds (`cache.pos` of them).
    tokens: Vec<u32>,
    last_used: u64,
    active: Option<Active>,
}

fn worker(
    loaded: Arc<LoadedModel>,
    cfg: SlotConfig,
    rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<usize, String>>,
) {
    let setup = || -> Result<_, String> {
        let model = loaded.bind().map_err(|e| e.to_string())?;
        let ws = Workspace::new(&model, cfg.n_ctx, cfg.n_batch).map_err(|e| e.to_string())?;
        let slots = (0..cfg.parallel)
            .map(|_| {
                KvCache::new(&model, cfg.n_ctx, cfg.cache_k, cfg.cache_v)
                    .map(|cache| Slot { cache, tokens: Vec::new(), last_used: 0, active: None })
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pool = Pool::new(cfg.threads).map_err(|e| e.to_string())?;
        Ok((model, ws, slots, pool))
    };
    let (model, mut ws, mut slots, pool) = match setup() {
        Ok(v) => {
            let _ = ready.send(Ok(v.2.iter().map(|s| s.cache.bytes()).sum()));
            v
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let tok = loaded.tokenizer();
    let n_vocab = model.config.n_vocab;
    let mut clock = 0u64;
    let mut seq = 0u64;
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    let mut logits_buf = vec![0f32; n_vocab];
    let mut window = (Instant::now(), 0u64);
    loop {
        // 1. Admit. Block for work when nothing is active.
        let idle = slots.iter().all(|s| s.active.is_none()) && waiting.is_empty();
        if idle {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match rx.recv() {
                Ok(j) => waiting.push_back(j),
                Err(_) => return,
            }
        }
        while let Ok(j) = rx.try_recv() {
            waiting.push_back(j);
        }
        // Wake-up jobs from shutdown() carry no prompt.
        waiting.retain(|j| {
            if j.prompt.is_empty() {
                metrics.queued.fetch_sub(1, Ordering::SeqCst);
            }
            !j.prompt.is_empty()
        });
        while let Some(free) = pick_slot(&slots, waiting.front().map(|j| j.prompt.as_slice())) {
            let Some(job) = waiting.pop_front() else { break };
            metrics.queued.fetch_sub(1, Ordering::SeqCst);
            if job.events.is_closed() {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            seq += 1;
            admit(&mut slots[free], job, seq, &metrics);
        }
        // 2. Drop requests whose client is gone.
        for s in slots.iter_mut() {
            if s.active.as_ref().is_some_and(|a| a.job.events.is_closed()) {
                s.active = None;
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        metrics.active.store(slots.iter().filter(|s| s.active.is_some()).count(), Ordering::Relaxed);
        // 3. One prompt chunk of the oldest request still reading its prompt.
        let oldest = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.active.as_ref().filter(|a| !a.to_feed.is_empty()).map(|a| (a.seq, i)))
            .min()
            .map(|(_, i)| i);
        if let Some(i) = oldest {
            let t0 = Instant::now();
            let s = &mut slots[i];
            let Some(a) = s.active.as_mut() else { continue };
            let n = a.to_feed.len().min(cfg.n_batch);
            let chunk: Vec<u32> = a.to_feed.drain(..n).collect();
            let last = a.to_feed.is_empty();
            let want = if last { Logits::Last } else { Logits::None };
            let r = model.forward_seqs(&mut ws, &pool, &mut [Seq { cache: &mut s.cache, tokens: &chunk, want }]);
            metrics.prompt_us.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            match r {
                Ok(l) => {
                    s.tokens.extend_from_slice(&chunk);
                    if last {
                        logits_buf.copy_from_slice(&l[..n_vocab]);
                        advance(s, &logits_buf, tok, &metrics);
                    }
                }
                Err(e) => fail(s, &e.to_string()),
            }
        }
        // 4. One token of every generating request, together.
        let t0 = Instant::now();
        let mut feeds: Vec<(usize, [u32; 1])> = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            if let Some(a) = &s.active {
                if let (true, Some(id)) = (a.to_feed.is_empty(), a.next) {
                    feeds.push((i, [id]));
                }
            }
        }
        if !feeds.is_empty() {
            let order: Vec<usize> = feeds.iter().map(|f| f.0).collect();
            let r = decode_step(&model, &mut ws, &pool, &mut slots, &feeds);
            match r {
                Ok(all) => {
                    for (k, (i, f)) in feeds.iter().enumerate() {
                        let s = &mut slots[*i];
                        s.tokens.push(f[0]);
                        advance(s, &all[k * n_vocab..(k + 1) * n_vocab], tok, &metrics);
                    }
                }
                Err(e) => {
                    for i in order {
                        fail(&mut slots[i], &e.to_string());
                    }
                }
            }
            let us = t0.elapsed().as_micros() as u64;
            metrics.decode_us.fetch_add(us, Ordering::Relaxed);
            window.1 += feeds.len() as u64;
            let dt = window.0.elapsed();
            if dt >= Duration::from_secs(1) {
                metrics.recent_tps_milli.store((window.1 as f64 / dt.as_secs_f64() * 1000.0) as u64, Ordering::Relaxed);
                window = (Instant::now(), 0);
            }
        }
        metrics.steps.fetch_add(1, Ordering::Relaxed);
        for s in slots.iter_mut() {
            if s.active.is_some() {
                clock += 1;
                s.last_used = clock;
            }
        }
    }
}

/// A free slot for `prompt`: the one whose cache shares the longest prefix with it when that
/// prefix is at least half the prompt (a conversation's next turn), else the least recently
/// used one (so a new, unrelated prompt does not evict a conversation that another free slot
/// could spare).
fn pick_slot(slots: &[Slot], prompt: Option<&[u32]>) -> Option<usize> {
    let prompt = prompt?;
    let free = || slots.iter().enumerate().filter(|(_, s)| s.active.is_none());
    let (best, lcp) =
        free().map(|(i, s)| (i, common_prefix(&s.tokens, prompt))).max_by_key(|&(i, l)| (l, std::cmp::Reverse(i)))?;
    if lcp > 0 && 2 * lcp >= prompt.len() {
        return Some(best);
    }
    free().min_by_key(|(_, s)| s.last_used).map(|(i, _)| i)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn admit(s: &mut Slot, job: Job, seq: u64, metrics: &Metrics) {
    let n_ctx = s.cache.n_ctx;
    let p = &job.prompt;
    if p.len() >= n_ctx {
        let e = ApiError::bad_request(format!(
            "the prompt is {} tokens; this server's context is {n_ctx} tokens per slot",
            p.len()
        ))
        .with_code("context_length_exceeded");
        let _ = job.events.send(Event::Error(e));
        return;
    }
    // Keep at least one prompt token to compute: its logits give the first sample.
    let common = if job.params.cache_prompt { common_prefix(&s.tokens, p).min(p.len() - 1) } else { 0 };
    s.cache.truncate(common);
    s.tokens.truncate(common);
    let mut sampler = Sampler::new(job.params.sampling.clone());
    for &t in p {
        sampler.accept(t);
    }
    let room = n_ctx - p.len();
    let max_tokens = job.params.max_tokens.unwrap_or(room).min(room + 1);
    metrics.prompt_tokens.fetch_add(p.len() as u64, Ordering::Relaxed);
    metrics.cached_prompt_tokens.fetch_add(common as u64, Ordering::Relaxed);
    let queued_ms = job.submitted.elapsed().as_secs_f64() * 1e3;
    let stops = StopMatcher::new(&job.params.stop);
    s.active = Some(Active {
        to_feed: p[common..].to_vec(),
        sampler,
        next: None,
        generated: 0,
        counts: HashMap::new(),
        dec: StreamDecoder::new(),
        stops,
        max_tokens,
        pending_info: Vec::new(),
        timings: Timings { cached_tokens: common, queued_ms, ..Default::default() },
        admitted: Instant::now(),
        first_token: None,
        seq,
        job,
    });
}

fn fail(s: &mut Slot, msg: &str) {
    // The cache may hold part of what this request fed: forget all of it.
    s.cache.reset();
    s.tokens.clear();
    if let Some(a) = s.active.take() {
        let e = ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "server_error", msg.to_string());
        let _ = a.job.events.send(Event::Error(e));
    }
}

/// Samples the next token of the request in `s` from `logits` and tells its client.
fn advance(s: &mut Slot, logits: &[f32], tok: &pith::tokenizer::Tokenizer, metrics: &Metrics) {
    let Some(a) = s.active.as_mut() else { return };
    let now = Instant::now();
    if a.first_token.is_none() {
        a.first_token = Some(now);
        a.timings.prompt_ms = (now - a.admitted).as_secs_f64() * 1e3;
    }
    let mut l = logits.to_vec();
    if a.job.params.presence_penalty != 0.0 || a.job.params.frequency_penalty != 0.0 {
        for (&id, &c) in &a.counts {
            if let Some(v) = l.get_mut(id as usize) {
                *v -= a.job.params.frequency_penalty * c as f32 + a.job.params.presence_penalty;
            }
        }
    }
    if a.job.params.ignore_eos {
        for &id in tok.eog_ids() {
            if let Some(v) = l.get_mut(id as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    let mut finish = None;
    if let Some(m) = a.job.mask.as_mut() {
        if let Err(e) = m.mask_logits(&mut l) {
            return fail(s, &format!("constrained output: {e}"));
        }
    }
    let id = a.sampler.sample(&l);
    a.sampler.accept(id);
    if let Some(k) = a.job.params.logprobs {
        a.pending_info.push(token_info(logits, id, k, tok));
    }
    let mut text = String::new();
    if tok.is_eog(id) {
        finish = Some(Finish::Stop);
    } else {
        a.generated += 1;
        metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
        *a.counts.entry(id).or_insert(0) += 1;
        let piece = a.dec.push(tok, id);
        text.push_str(a.stops.push(&piece));
        if a.stops.hit() {
            finish = Some(Finish::Stop);
        }
        if let Some(m) = a.job.mask.as_mut() {
            if let Err(e) = m.accept(id) {
                return fail(s, &format!("constrained output: {e}"));
            }
            if finish.is_none() && m.is_finished() {
                finish = Some(Finish::Stop);
            }
        }
        if finish.is_none() && (a.generated >= a.max_tokens || s.cache.pos + 1 > s.cache.n_ctx) {
            finish = Some(Finish::Length);
        }
    }
    if finish.is_some() && !a.stops.hit() {
        let rest = a.dec.flush();
        text.push_str(a.stops.push(&rest));
        if !a.stops.hit() {
            text.push_str(&a.stops.finish());
        }
    }
    if !text.is_empty() || !a.pending_info.is_empty() {
        let tokens = std::mem::take(&mut a.pending_info);
        if a.job.events.send(Event::Delta { text, tokens }).is_err() {
            s.active = None;
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    match finish {
        None => a.next = Some(id),
        Some(f) => {
            let prompt_tokens = a.job.prompt.len();
            a.timings.gen_ms = a.first_token.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
            let usage =
                Usage { prompt_tokens, completion_tokens: a.generated, total_tokens: prompt_tokens + a.generated };
            let _ = a.job.events.send(Event::Done { finish: f, usage, timings: a.timings });
            metrics.completed.fetch_add(1, Ordering::Relaxed);
            s.active = None;
        }
    }
}

/// The log-probability of `id` under `logits` (log-softmax) and the `k` best alternatives.
fn token_info(logits: &[f32], id: u32, k: usize, tok: &pith::tokenizer::Tokenizer) -> TokenInfo {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln() as f32;
    let mut top: Vec<(u32, Vec<u8>, f32)> = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        top = idx.into_iter().map(|t| (t, tok.token_bytes(t, false), logits[t as usize] - lse)).collect();
    }
    TokenInfo { id, bytes: tok.token_bytes(id, false), logprob: logits[id as usize] - lse, top }
}
