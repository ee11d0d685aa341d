//! The transformer: weights borrowed from a GGUF file, a KV cache, and the one forward pass
//! every architecture runs; what differs between families is data (`arch.rs`, read into
//! [`Config`]).
//!
//! Data flow for a batch of `n` tokens (shapes in comments are row-major, tokens first; steps
//! in brackets exist only where the architecture says so):
//! embed [× √n_embd] → for each layer { RMSNorm → Q,K,V [+ bias] → [per-head RMSNorm of Q, K]
//! → RoPE (the layer's base) → cache → attention (causal [, windowed]) → O → [RMSNorm] →
//! +residual → RMSNorm → gate,up → SwiGLU | GeGLU → down → [RMSNorm] → +residual } → RMSNorm →
//! output [→ soft-cap] → logits.

pub mod arch;
mod attention;
mod cache;
mod config;

pub use arch::{Arch, Gate, Need};
pub use cache::{CacheType, KvCache};
pub use config::{Config, RopeStyle, SlidingWindow};

use crate::gguf::Gguf;
use crate::math;
use crate::parallel::Pool;
use crate::tensor::{matmul, matmul_many, MatmulScratch, Precision, Weight};
use crate::{Error, Result};
use alloc::collections::BTreeSet;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use pith_kernels::GgmlType;

/// A linear layer's weight: one matrix, or two factors run as two matmuls, `y = A·(B·x)`.
/// The factors are pith's low-rank extension (`pith-compress lowrank` without `--merge`): the
/// file holds `NAME_a` (n_out, rank) and `NAME_b` (rank, n_in) instead of `NAME`; llama.cpp
/// does not load such files.
#[derive(Clone, Copy, Debug)]
pub struct Linear<'a> {
    pub w: Weight<'a>,             // (n_out, n_in), or A (n_out, rank) when factored
    pub right: Option<Weight<'a>>, // B (rank, n_in) when factored
}

impl Linear<'_> {
    /// Output features.
    pub fn n_rows(&self) -> usize {
        self.w.n_rows
    }

    /// Bytes of weights read per token.
    pub fn bytes(&self) -> usize {
        self.w.data.len() + self.right.map_or(0, |b| b.data.len())
    }
}

/// One transformer block's weights.
pub struct Layer<'a> {
    pub attn_norm: &'a [f32],              // (n_embd)
    pub wq: Linear<'a>,                    // (q_dim, n_embd)
    pub wk: Linear<'a>,                    // (kv_dim, n_embd)
    pub wv: Linear<'a>,                    // (kv_dim, n_embd)
    pub bq: Option<&'a [f32]>,             // (q_dim)
    pub bk: Option<&'a [f32]>,             // (kv_dim)
    pub bv: Option<&'a [f32]>,             // (kv_dim)
    pub q_norm: Option<&'a [f32]>,         // (head_dim) per-head RMSNorm of queries
    pub k_norm: Option<&'a [f32]>,         // (head_dim) per-head RMSNorm of keys
    pub wo: Linear<'a>,                    // (n_embd, q_dim)
    pub post_attn_norm: Option<&'a [f32]>, // (n_embd) on the attention output
    pub ffn_norm: &'a [f32],               // (n_embd)
    pub w_gate: Linear<'a>,                // (n_ff, n_embd)
    pub w_up: Linear<'a>,                  // (n_ff, n_embd)
    pub w_down: Linear<'a>,                // (n_embd, n_ff)
    pub post_ffn_norm: Option<&'a [f32]>,  // (n_embd) on the feed-forward output
}

/// A loaded model: configuration plus weights that point into the file.
pub struct Model<'a> {
    pub config: Config,
    pub token_embd: Weight<'a>, // (n_vocab, n_embd)
    pub layers: Vec<Layer<'a>>, // (n_layer)
    pub output_norm: &'a [f32], // (n_embd)
    /// The output projection; the embedding matrix itself when the file ties them.
    pub output: Weight<'a>, // (n_vocab, n_embd)
    /// RoPE frequency divisors (llama 3.1+), (rope_dim / 2).
    pub rope_freqs: Option<&'a [f32]>,
    /// Tensors of the file this architecture does not use (callers warn about them).
    pub unused: Vec<String>,
}

/// Binds tensors by name, remembering which ones were taken.
struct Binder<'g, 'a> {
    g: &'g Gguf<'a>,
    used: BTreeSet<String>,
}

impl<'a> Binder<'_, 'a> {
    fn weight(&mut self, name: &str, n_rows: usize, n_cols: usize) -> Result<Weight<'a>> {
        self.used.insert(name.to_string());
        weight(self.g, name, n_rows, n_cols)
    }
    /// A linear layer's weight: `name`, or its factors `name_a` and `name_b` (see [`Linear`]).
    fn linear(&mut self, name: &str, n_rows: usize, n_cols: usize) -> Result<Linear<'a>> {
        let (na, nb) = (alloc::format!("{name}_a"), alloc::format!("{name}_b"));
        let Some(ta) = self.g.tensor(&na).filter(|_| self.g.tensor(name).is_none()) else {
            return Ok(Linear { w: self.weight(name, n_rows, n_cols)?, right: None });
        };
        // The rank is A's column count; both shapes are then checked as any weight's.
        let rank = ta.dims.first().and_then(|&r| usize::try_from(r).ok()).unwrap_or(0);
        if rank == 0 {
            return Err(Error::ShapeMismatch { tensor: na, expected: vec![1, n_rows as u64], found: ta.dims.clone() });
        }
        let w = self.weight(&na, n_rows, rank)?;
        let right = Some(self.weight(&nb, rank, n_cols)?);
        Ok(Linear { w, right })
    }
    /// A vector the architecture needs, may use, or does not know (then it is left unused).
    fn vector(&mut self, name: &str, n: usize, need: Need) -> Result<Option<&'a [f32]>> {
        match need {
            Need::Absent => Ok(None),
            Need::Optional => {
                self.used.insert(name.to_string());
                vector(self.g, name, n)
            }
            Need::Required => self.required(name, n).map(Some),
        }
    }
    fn required(&mut self, name: &str, n: usize) -> Result<&'a [f32]> {
        self.used.insert(name.to_string());
        required(self.g, name, n)
    }
    fn unused(&self) -> Vec<String> {
        self.g.tensors.iter().map(|t| t.name).filter(|n| !self.used.contains(*n)).map(|n| n.to_string()).collect()
    }
}

fn weight<'a>(g: &Gguf<'a>, name: &str, n_rows: usize, n_cols: usize) -> Result<Weight<'a>> {
    let t = g.tensor(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    let expected = vec![n_cols as u64, n_rows as u64];
    if t.dims != expected {
        return Err(Error::ShapeMismatch { tensor: name.to_string(), expected, found: t.dims.clone() });
    }
    if t.ty == GgmlType::Q8_K {
        return Err(Error::BadTensorType { tensor: name.to_string(), ty: t.ty, why: "an activation-only format" });
    }
    Ok(Weight { ty: t.ty, n_rows, n_cols, data: t.data })
}

fn vector<'a>(g: &Gguf<'a>, name: &str, n: usize) -> Result<Option<&'a [f32]>> {
    let Some(t) = g.tensor(name) else { return Ok(None) };
    if t.dims != [n as u64] {
        return Err(Error::ShapeMismatch { tensor: name.to_string(), expected: vec![n as u64], found: t.dims.clone() });
    }
    if t.ty != GgmlType::F32 {
        return Err(Error::BadTensorType { tensor: name.to_string(), ty: t.ty, why: "norms and biases must be f32" });
    }
    bytemuck::try_cast_slice(t.data).map(Some).map_err(|_| Error::Misaligned(name.to_string()))
}

fn required<'a>(g: &Gguf<'a>, name: &str, n: usize) -> Result<&'a [f32]> {
    vector(g, name, n)?.ok_or_else(|| Error::MissingTensor(name.to_string()))
}

impl<'a> Model<'a> {
    /// Binds the weights of a parsed GGUF file, checking every tensor's shape and type against
    /// what the file's architecture needs.
    pub fn from_gguf(g: &Gguf<'a>) -> Result<Self> {
        let c = Config::from_gguf(g)?;
        let a = c.traits;
        let (d, q, kv, ff, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff, c.head_dim);
        let mut b = Binder { g, used: BTreeSet::new() };
        let token_embd = b.weight("token_embd.weight", c.n_vocab, d)?;
        let output = match (a.output, g.tensor("output.weight").is_some()) {
            (Need::Required, _) | (Need::Optional, true) => b.weight("output.weight", c.n_vocab, d)?,
            _ => token_embd,
        };
        // Layers are pushed as their tensors are found: nothing is sized by `block_count` before
        // the file has shown it holds that many blocks.
        let mut layers = Vec::new();
        for i in 0..c.n_layer {
            let n = |s: &str| alloc::format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: b.required(&n("attn_norm.weight"), d)?,
                wq: b.linear(&n("attn_q.weight"), q, d)?,
                wk: b.linear(&n("attn_k.weight"), kv, d)?,
                wv: b.linear(&n("attn_v.weight"), kv, d)?,
                bq: b.vector(&n("attn_q.bias"), q, a.qkv_bias)?,
                bk: b.vector(&n("attn_k.bias"), kv, a.qkv_bias)?,
                bv: b.vector(&n("attn_v.bias"), kv, a.qkv_bias)?,
                q_norm: b.vector(&n("attn_q_norm.weight"), hd, a.qk_norm)?,
                k_norm: b.vector(&n("attn_k_norm.weight"), hd, a.qk_norm)?,
                wo: b.linear(&n("attn_output.weight"), d, q)?,
                post_attn_norm: b.vector(&n("post_attention_norm.weight"), d, a.post_norms)?,
                ffn_norm: b.required(&n("ffn_norm.weight"), d)?,
                w_gate: b.linear(&n("ffn_gate.weight"), ff, d)?,
                w_up: b.linear(&n("ffn_up.weight"), ff, d)?,
                w_down: b.linear(&n("ffn_down.weight"), d, ff)?,
                post_ffn_norm: b.vector(&n("post_ffw_norm.weight"), d, a.post_norms)?,
            });
        }
        let output_norm = b.required("output_norm.weight", d)?;
        let rope_freqs = b.vector("rope_freqs.weight", c.rope_dim / 2, a.rope_freqs)?;
        if let Some(f) = rope_freqs {
            if let Some(bad) = f.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
                return Err(Error::BadHyperParam {
                    key: "rope_freqs.weight".to_string(),
                    reason: alloc::format!("frequency divisor {bad} must be positive"),
                });
            }
        }
        let unused = b.unused();
        Ok(Model { config: c, token_embd, layers, output_norm, output, rope_freqs, unused })
    }

    /// Bytes of weights (what a token streams from memory, roughly).
    pub fn weight_bytes(&self) -> usize {
        let mut n = self.token_embd.data.len() + self.output_norm.len() * 4;
        if !core::ptr::eq(self.output.data, self.token_embd.data) {
            n += self.output.data.len();
        }
        for l in &self.layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                n += w.bytes();
            }
        }
        n
    }
}

/// Where a matmul input is observed by [`Model::forward_observed`]: each site is the shared
/// input of the weights named beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// Normed residual into `attn_q`, `attn_k`, `attn_v`.
    AttnIn,
    /// Attention output into `attn_output`.
    AttnOut,
    /// Normed residual into `ffn_gate`, `ffn_up`.
    FfnIn,
    /// SwiGLU output into `ffn_down`.
    FfnDown,
    /// Final normed residual into the output projection (layer `None`).
    Output,
}

impl Site {
    /// The weights (GGUF names without the `blk.N.` prefix) fed by this site.
    pub fn weights(self) -> &'static [&'static str] {
        match self {
            Site::AttnIn => &["attn_q.weight", "attn_k.weight", "attn_v.weight"],
            Site::AttnOut => &["attn_output.weight"],
            Site::FfnIn => &["ffn_gate.weight", "ffn_up.weight"],
            Site::FfnDown => &["ffn_down.weight"],
            Site::Output => &["output.weight"],
        }
    }
}

/// Sees the input of every matmul of a forward pass (calibration statistics).
pub trait Observer {
    /// `x`: (n_tok, n_in) rows, the input of the weights at `site` in `layer` (`None` for
    /// the output projection).
    fn matmul_input(&mut self, layer: Option<usize>, site: Site, x: &[f32], n_tok: usize);
}

/// An [`Observer`] that ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {
    #[inline]
    fn matmul_input(&mut self, _: Option<usize>, _: Site, _: &[f32], _: usize) {}
}

/// Which positions of a call get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Tokens `start..` of the call (perplexity scores a suffix).
    From(usize),
    /// None (filling the cache).
    None,
}

/// The shared half of a forward pass: activation buffers, RoPE tables and matmul scratch,
/// sized for steps of up to `n_batch` tokens at positions below `n_ctx_max`. One workspace
/// serves any number of [`KvCache`]s (one per sequence), one step at a time.
pub struct Workspace {
    /// Largest position (exclusive) the RoPE tables cover.
    pub n_ctx_max: usize,
    /// Largest number of tokens processed in one step.
    pub n_batch: usize,
    x: Vec<f32>,               // (n, n_embd) residual stream
    xb: Vec<f32>,              // (n, n_embd) normed input
    q: Vec<f32>,               // (n, q_dim)
    k: Vec<f32>,               // (n, kv_dim)
    v: Vec<f32>,               // (n, kv_dim)
    att: Vec<f32>,             // (n, q_dim) attention output
    proj: Vec<f32>,            // (n, n_embd) projection output
    hb: Vec<f32>,              // (n, n_ff)
    hb2: Vec<f32>,             // (n, n_ff)
    logits: Vec<f32>,          // (n_out of all sequences, n_vocab)
    step_logits: Vec<f32>,     // (n_out of a step, n_vocab) when its rows are not contiguous in `logits`
    att_tmp: Vec<f32>, // batch: outputs + cache panels (attention.rs); decode: (n_seqs · n_head, n_pos + head_dim)
    tpos: Vec<usize>,  // (n) each token's position in its sequence
    lr: Vec<f32>,      // (n, rank) a factored linear's intermediate B·x
    rope: Vec<(f32, f32)>, // (n_ctx_max, rope_dim / 2) cos, sin
    rope_swa: Vec<(f32, f32)>, // (n_ctx_max, rope_dim / 2) for sliding-window layers, or empty
    scratch: MatmulScratch,
}

/// `out = l·x` for `n` tokens: one matmul, or for a factored layer two, through `tmp`.
fn linear(
    pool: &Pool,
    scratch: &mut MatmulScratch,
    tmp: &mut Vec<f32>,
    l: &Linear<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    match &l.right {
        None => matmul(pool, scratch, &l.w, x, n, out),
        Some(b) => {
            tmp.resize(n * b.n_rows, 0.0);
            matmul(pool, scratch, b, x, n, tmp);
            matmul(pool, scratch, &l.w, tmp, n, out);
        }
    }
}

/// [`linear`] for layers sharing their input: one pass over it when none is factored.
fn linear_many<const K: usize>(
    pool: &Pool,
    scratch: &mut MatmulScratch,
    tmp: &mut Vec<f32>,
    ls: [&Linear<'_>; K],
    x: &[f32],
    n: usize,
    outs: [&mut Vec<f32>; K],
) {
    if ls.iter().all(|l| l.right.is_none()) {
        let mut outs = outs.map(|o| o.as_mut_slice());
        matmul_many(pool, scratch, &ls.map(|l| &l.w), x, n, &mut outs);
    } else {
        for (l, o) in ls.into_iter().zip(outs) {
            linear(pool, scratch, tmp, l, x, n, o);
        }
    }
}

impl Workspace {
    /// Buffers for `model`, RoPE tables for positions `..n_ctx_max`, steps of up to `n_batch`
    /// tokens (buffers grow with the largest step seen).
    pub fn new(model: &Model<'_>, n_ctx_max: usize, n_batch: usize) -> Result<Self> {
        let c = &model.config;
        if n_ctx_max == 0 {
            return Err(Error::BadHyperParam { key: "n_ctx".to_string(), reason: "must be at least 1".to_string() });
        }
        // Rotation tables: theta = pos * scale * base^(-2i/rope_dim) / divisor_i, for the global
        // layers and (their own base, no scaling, no divisors) for the windowed ones.
        let table = |theta: f32, scale: f32, divisors: Option<&[f32]>| -> Result<Vec<(f32, f32)>> {
            let half = c.rope_dim / 2;
            let freqs: Vec<f32> = (0..half)
                .map(|i| math::powf(theta, -2.0 * i as f32 / c.rope_dim as f32) / divisors.map_or(1.0, |d| d[i]))
                .collect();
            let mut rope = Vec::new();
            rope.try_reserve_exact(n_ctx_max.saturating_mul(half)).map_err(|_| Error::BadHyperParam {
                key: "n_ctx".to_string(),
                reason: alloc::format!("RoPE tables for {n_ctx_max} positions cannot be allocated"),
            })?;
            for p in 0..n_ctx_max {
                let pos = p as f32 * scale;
                for &freq in &freqs {
                    let (s, co) = math::sin_cos(pos * freq);
                    rope.push((co, s));
                }
            }
            Ok(rope)
        };
        let rope = table(c.rope_theta, c.rope_freq_scale, model.rope_freqs)?;
        let rope_swa = match &c.sliding_window {
            Some(sw) if sw.layers.iter().any(|&w| w) => table(sw.rope_theta, 1.0, None)?,
            _ => Vec::new(),
        };
        Ok(Workspace {
            n_ctx_max,
            n_batch: n_batch.max(1),
            x: Vec::new(),
            xb: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            att: Vec::new(),
            proj: Vec::new(),
            hb: Vec::new(),
            hb2: Vec::new(),
            logits: Vec::new(),
            step_logits: Vec::new(),
            att_tmp: Vec::new(),
            tpos: Vec::new(),
            lr: Vec::new(),
            rope,
            rope_swa,
            scratch: MatmulScratch::default(),
        })
    }

    /// Chooses how activations meet weights in every matmul (see [`Precision`]).
    pub fn set_precision(&mut self, p: Precision) {
        self.scratch.precision = p;
    }
}

/// One sequence's part of a [`Model::forward_seqs`] step: its cache, the tokens to append at
/// positions `cache.pos..`, and which of their logits it wants.
pub struct Seq<'c> {
    pub cache: &'c mut KvCache,
    pub tokens: &'c [u32],
    pub want: Logits,
}

/// A single sequence's state: a [`Workspace`] and the [`KvCache`] it fills. Derefs to the
/// cache (`state.pos`, `state.n_ctx`).
pub struct State {
    pub ws: Workspace,
    pub cache: KvCache,
}

impl core::ops::Deref for State {
    type Target = KvCache;
    fn deref(&self) -> &KvCache {
        &self.cache
    }
}

impl core::ops::DerefMut for State {
    fn deref_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }
}

impl State {
    /// A fresh state for `model` holding up to `n_ctx` tokens (f16 cache), processing at most
    /// `n_batch` at once.
    pub fn new(model: &Model<'_>, n_ctx: usize, n_batch: usize) -> Result<Self> {
        Self::with_cache_types(model, n_ctx, n_batch, CacheType::F16, CacheType::F16)
    }

    /// [`State::new`] with keys stored as `k` and values as `v`.
    pub fn with_cache_types(
        model: &Model<'_>,
        n_ctx: usize,
        n_batch: usize,
        k: CacheType,
        v: CacheType,
    ) -> Result<Self> {
        let cache = KvCache::new(model, n_ctx, k, v)?;
        Ok(State { ws: Workspace::new(model, n_ctx, n_batch)?, cache })
    }

    /// Chooses how activations meet weights in every matmul (see [`Precision`]).
    pub fn set_precision(&mut self, p: Precision) {
        self.ws.set_precision(p);
    }

    /// Largest batch processed at once.
    pub fn n_batch(&self) -> usize {
        self.ws.n_batch
    }
}

/// One sequence's tokens in one step: `n` tokens from `t0` of its call, at positions `p0..`.
struct Seg {
    seq: usize,
    t0: usize,
    n: usize,
    p0: usize,
    /// First token of the segment (0-based within it) that gets logits.
    out_from: usize,
    /// Row of the call's logits the segment's first output goes to.
    out_row: usize,
}

impl Model<'_> {
    /// Runs `tokens` through the model at positions `state.pos..`, appending them to the cache.
    /// Returns the requested logits, (n_out, n_vocab).
    pub fn forward<'s>(&self, state: &'s mut State, pool: &Pool, tokens: &[u32], want: Logits) -> Result<&'s [f32]> {
        self.forward_observed(state, pool, tokens, want, &mut NoObserver)
    }

    /// [`Model::forward`], showing every matmul input to `obs`.
    pub fn forward_observed<'s>(
        &self,
        state: &'s mut State,
        pool: &Pool,
        tokens: &[u32],
        want: Logits,
        obs: &mut dyn Observer,
    ) -> Result<&'s [f32]> {
        let State { ws, cache } = state;
        self.run_seqs(ws, pool, &mut [Seq { cache, tokens, want }], obs)
    }

    /// Several sequences in one forward pass (continuous batching). All tokens of all sequences
    /// go through each matmul together (one weight read per step); each sequence's tokens take
    /// that sequence's positions and attend only to its own cache. Returns the wanted logits of
    /// every sequence, concatenated in `seqs` order, (Σ n_out, n_vocab).
    ///
    /// Steps hold up to `ws.n_batch` tokens (sequences are taken in order; a longer call is
    /// split, a sequence's tokens over consecutive steps). Within a step a sequence of one token
    /// uses the decode attention path, of more the batch path, and the elementwise work is per
    /// token, so its results are those of [`Model::forward`] on it alone with the same split.
    /// Everything is checked (token ids, each cache's context and the workspace's RoPE range)
    /// before any cache changes.
    pub fn forward_seqs<'w>(&self, ws: &'w mut Workspace, pool: &Pool, seqs: &mut [Seq<'_>]) -> Result<&'w [f32]> {
        self.run_seqs(ws, pool, seqs, &mut NoObserver)
    }

    fn run_seqs<'w>(
        &self,
        ws: &'w mut Workspace,
        pool: &Pool,
        seqs: &mut [Seq<'_>],
        obs: &mut dyn Observer,
    ) -> Result<&'w [f32]> {
        let nv = self.config.n_vocab;
        for s in seqs.iter() {
            if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= nv) {
                return Err(Error::BadToken { id, n_vocab: nv });
            }
            if !s.cache.fits(self) {
                return Err(Error::BadHyperParam {
                    key: "kv_cache".to_string(),
                    reason: "the KV cache was made for a model of another shape".to_string(),
                });
            }
            let needed = s.cache.pos + s.tokens.len();
            if needed > s.cache.n_ctx {
                return Err(Error::ContextOverflow { needed, n_ctx: s.cache.n_ctx });
            }
            if needed > ws.n_ctx_max {
                return Err(Error::ContextOverflow { needed, n_ctx: ws.n_ctx_max });
            }
        }
        // Where each sequence's logits start (`start`: its first token with logits).
        let mut starts = Vec::with_capacity(seqs.len());
        let mut rows = Vec::with_capacity(seqs.len());
        let mut n_out = 0;
        for s in seqs.iter() {
            let n = s.tokens.len();
            let start = match s.want {
                Logits::Last => n.saturating_sub(1),
                Logits::From(f) => f.min(n),
                Logits::None => n,
            };
            starts.push(start);
            rows.push(n_out);
            n_out += n - start;
        }
        ws.logits.clear();
        ws.logits.resize(n_out * nv, 0.0);
        let mut done = alloc::vec![0usize; seqs.len()];
        let mut segs = Vec::new();
        loop {
            segs.clear();
            let mut budget = ws.n_batch;
            for (i, s) in seqs.iter().enumerate() {
                let left = s.tokens.len() - done[i];
                if left == 0 || budget == 0 {
                    continue;
                }
                let n = left.min(budget);
                let t0 = done[i];
                let out_from = starts[i].saturating_sub(t0).min(n);
                let out_row = rows[i] + (t0 + out_from).saturating_sub(starts[i]);
                segs.push(Seg { seq: i, t0, n, p0: s.cache.pos, out_from, out_row });
                budget -= n;
            }
            if segs.is_empty() {
                break;
            }
            self.forward_step(ws, pool, seqs, &segs, obs);
            for g in &segs {
                done[g.seq] += g.n;
                seqs[g.seq].cache.pos += g.n;
            }
        }
        Ok(&ws.logits)
    }

    /// One step: the segments' tokens together through every matmul; logits of each segment's
    /// tokens `out_from..` written at its `out_row`.
    fn forward_step(&self, s: &mut Workspace, pool: &Pool, seqs: &mut [Seq<'_>], segs: &[Seg], obs: &mut dyn Observer) {
        let c = &self.config;
        let n: usize = segs.iter().map(|g| g.n).sum();
        let (d, qd, kvd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        for (buf, len) in [
            (&mut s.x, n * d),
            (&mut s.xb, n * d),
            (&mut s.q, n * qd),
            (&mut s.k, n * kvd),
            (&mut s.v, n * kvd),
            (&mut s.att, n * qd),
            (&mut s.proj, n * d),
            (&mut s.hb, n * ff),
            (&mut s.hb2, n * ff),
        ] {
            buf.resize(len, 0.0);
        }
        s.tpos.clear();
        let mut t = 0;
        for g in segs {
            for (j, &tok) in seqs[g.seq].tokens[g.t0..g.t0 + g.n].iter().enumerate() {
                s.tpos.push(g.p0 + j);
                let row = &mut s.x[t * d..(t + 1) * d];
                self.token_embd.dequantize_row(tok as usize, row);
                if c.embd_scale != 1.0 {
                    row.iter_mut().for_each(|v| *v *= c.embd_scale);
                }
                t += 1;
            }
        }
        for (li, l) in self.layers.iter().enumerate() {
            // Attention block. The elementwise work between matmuls is shared out over whole
            // tokens of the step (run inline for a single token); none of it depends on which
            // other tokens share the step.
            if li == 0 {
                let (x, norm, eps) = (&s.x, l.attn_norm, c.rms_eps);
                per_token(pool, n, &mut s.xb, d, &|t0, xb| {
                    for (t, o) in xb.chunks_exact_mut(d).enumerate() {
                        math::rmsnorm(o, &x[(t0 + t) * d..(t0 + t + 1) * d], norm, eps);
                    }
                });
            }
            obs.matmul_input(Some(li), Site::AttnIn, &s.xb, n);
            linear_many(
                pool,
                &mut s.scratch,
                &mut s.lr,
                [&l.wq, &l.wk, &l.wv],
                &s.xb,
                n,
                [&mut s.q, &mut s.k, &mut s.v],
            );
            add_bias(&mut s.v, l.bv);
            let window = c.window(li);
            let rope = if window.is_some() { &s.rope_swa } else { &s.rope };
            let (rd, style, hd, eps) = (c.rope_dim / 2, c.rope_style, c.head_dim, c.rms_eps);
            let tpos = &s.tpos;
            per_token2(pool, n, (&mut s.q, qd), (&mut s.k, kvd), &|t0, q, k| {
                add_bias(q, l.bq);
                add_bias(k, l.bk);
                for (t, (qt, kt)) in q.chunks_exact_mut(qd).zip(k.chunks_exact_mut(kvd)).enumerate() {
                    let p = tpos[t0 + t];
                    let rot = &rope[p * rd..(p + 1) * rd];
                    for h in qt.chunks_exact_mut(hd) {
                        if let Some(w) = l.q_norm {
                            math::rmsnorm_in_place(h, w, eps);
                        }
                        apply_rope(h, rot, style);
                    }
                    for h in kt.chunks_exact_mut(hd) {
                        if let Some(w) = l.k_norm {
                            math::rmsnorm_in_place(h, w, eps);
                        }
                        apply_rope(h, rot, style);
                    }
                }
            });
            let group = c.n_head / c.n_head_kv;
            let scale = c.attn_scale;
            // Every segment's new keys and values into its cache first.
            let mut a = 0; // the segment's first token in the step
            for g in segs {
                let cache = &mut *seqs[g.seq].cache;
                for t in 0..g.n {
                    let r = (a + t) * kvd..(a + t + 1) * kvd;
                    cache.write(li, g.p0 + t, &s.k[r.clone()], &s.v[r]);
                }
                a += g.n;
            }
            // Segments of several tokens: batch attention, which reads this layer's cache once,
            // in panels shared out over the threads; every query of the segment reuses it.
            // Segments of one token (decoding) read their caches in place: gathered here, then
            // every (segment, head) in one parallel region, so several sequences' decode steps
            // share it out. A windowed layer reads only the window's positions.
            let mut ones = Vec::new(); // (first token in the step, positions seen, K rows, V rows)
            let mut a = 0;
            for g in segs {
                let cache = &*seqs[g.seq].cache;
                let (p0, gn) = (g.p0, g.n);
                if gn > 1 {
                    let shape = attention::Shape {
                        n_head: c.n_head,
                        n_head_kv: c.n_head_kv,
                        head_dim: hd,
                        p0,
                        n: gn,
                        scale,
                        window,
                    };
                    let (q, att) = (&s.q[a * qd..(a + gn) * qd], &mut s.att[a * qd..(a + gn) * qd]);
                    attention::attention_batch(pool, &shape, q, &cache.layer(li), att, &mut s.att_tmp);
                } else {
                    let n_pos = p0 + 1;
                    let lo = window.map_or(0, |w| n_pos.saturating_sub(w));
                    let (kc, vc) = cache.rows(li, lo);
                    ones.push((a, n_pos - lo, kc, vc));
                }
                a += gn;
            }
            if !ones.is_empty() {
                let max_seen = ones.iter().map(|o| o.1).max().unwrap_or(0);
                let seen: usize = ones.iter().map(|o| o.1).sum();
                // A few short contexts are less work than handing them to threads (measured:
                // 32 positions).
                let single = Pool::single();
                let att_pool = if seen < 32 { &single } else { pool };
                // Per (segment, KV head): the scores of the query heads that share it, then
                // their outputs (each cached row read once for them; scratch reused across
                // steps, growing with the context by doubling, not once per token). Where that
                // makes fewer pieces than threads (one sequence of a model with one KV head),
                // each group is cut into `per`-head parts; every head's result is the same bits
                // however the heads are grouped. (Cutting SmolLM2's 3 groups into 6 parts for 2
                // threads was slower: 224-230 against 243-248 t/s at depth 1000 — each part
                // reads the rows again.)
                let n_kv = c.n_head_kv;
                let parts = att_pool.threads().div_ceil(ones.len() * n_kv).clamp(1, group);
                let per = group.div_ceil(parts);
                let sub = group.div_ceil(per);
                let stride = per * (max_seen + hd);
                let n_chunks = ones.len() * n_kv * sub;
                // Chunk i: (segment, first head, heads).
                let piece = |i: usize| {
                    let (o, kh, part) = (i / (n_kv * sub), (i / sub) % n_kv, i % sub);
                    let h0 = kh * group + part * per;
                    (o, h0, per.min((kh + 1) * group - h0))
                };
                s.att_tmp.resize(n_chunks * stride, 0.0);
                let (q, ones_ref) = (&s.q, &ones);
                att_pool.for_each_chunk(&mut s.att_tmp[..n_chunks * stride], stride, &|i, buf: &mut [f32]| {
                    let (o, h0, gh) = piece(i);
                    let (a, n_seen, kc, vc) = ones_ref[o];
                    let (scores, rest) = buf.split_at_mut(gh * n_seen);
                    let qg = &q[a * qd + h0 * hd..a * qd + (h0 + gh) * hd];
                    let off = (h0 / group) * hd;
                    pith_kernels::attend_group(gh, qg, kc, vc, kvd, off, scale, scores, &mut rest[..gh * hd]);
                });
                for (i, buf) in s.att_tmp.chunks_exact(stride).take(n_chunks).enumerate() {
                    let (o, h0, gh) = piece(i);
                    let (a, n_seen, ..) = ones[o];
                    let at = a * qd + h0 * hd;
                    s.att[at..at + gh * hd].copy_from_slice(&buf[gh * n_seen..gh * (n_seen + hd)]);
                }
            }
            obs.matmul_input(Some(li), Site::AttnOut, &s.att, n);
            linear(pool, &mut s.scratch, &mut s.lr, &l.wo, &s.att, n, &mut s.proj);
            // [Post-norm,] residual, then the feed-forward block's norm.
            let (proj, norm, post) = (&s.proj, l.ffn_norm, l.post_attn_norm);
            per_token2(pool, n, (&mut s.x, d), (&mut s.xb, d), &|t0, x, xb| {
                add_residual(x, &proj[t0 * d..], post, eps);
                for (o, xt) in xb.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    math::rmsnorm(o, xt, norm, eps);
                }
            });
            // Feed-forward block (SwiGLU or GeGLU), one token's row at a time.
            obs.matmul_input(Some(li), Site::FfnIn, &s.xb, n);
            linear_many(pool, &mut s.scratch, &mut s.lr, [&l.w_gate, &l.w_up], &s.xb, n, [&mut s.hb, &mut s.hb2]);
            let (up, gate) = (&s.hb2, c.traits.gate);
            per_token(pool, n, &mut s.hb, ff, &|t0, g| {
                for (i, gt) in g.chunks_exact_mut(ff).enumerate() {
                    let u = &up[(t0 + i) * ff..(t0 + i + 1) * ff];
                    match gate {
                        Gate::Silu => pith_kernels::silu_mul(gt, u),
                        Gate::GeluTanh => pith_kernels::gelu_mul(gt, u),
                    }
                }
            });
            obs.matmul_input(Some(li), Site::FfnDown, &s.hb, n);
            linear(pool, &mut s.scratch, &mut s.lr, &l.w_down, &s.hb, n, &mut s.proj);
            // [Post-norm,] residual, then the next layer's attention norm.
            let (proj, next, post) = (&s.proj, self.layers.get(li + 1).map(|nl| nl.attn_norm), l.post_ffn_norm);
            per_token2(pool, n, (&mut s.x, d), (&mut s.xb, d), &|t0, x, xb| {
                add_residual(x, &proj[t0 * d..], post, eps);
                if let Some(norm) = next {
                    for (o, xt) in xb.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        math::rmsnorm(o, xt, norm, eps);
                    }
                }
            });
        }
        // Final norm of the tokens that get logits, gathered in order.
        let mut r = 0;
        let mut a = 0;
        let mut contiguous = true;
        let mut next_row = None;
        for g in segs {
            for t in g.out_from..g.n {
                let src = (a + t) * d;
                math::rmsnorm(&mut s.xb[r * d..(r + 1) * d], &s.x[src..src + d], self.output_norm, c.rms_eps);
                r += 1;
            }
            if g.out_from < g.n {
                contiguous &= next_row.is_none_or(|nr| nr == g.out_row);
                next_row = Some(g.out_row + g.n - g.out_from);
            }
            a += g.n;
        }
        let n_out = r;
        if n_out == 0 {
            return;
        }
        let nv = c.n_vocab;
        obs.matmul_input(None, Site::Output, &s.xb[..n_out * d], n_out);
        let out: &mut [f32] = if contiguous {
            let first = segs.iter().find(|g| g.out_from < g.n).map_or(0, |g| g.out_row);
            &mut s.logits[first * nv..(first + n_out) * nv]
        } else {
            s.step_logits.resize(n_out * nv, 0.0);
            &mut s.step_logits[..n_out * nv]
        };
        matmul(pool, &mut s.scratch, &self.output, &s.xb[..n_out * d], n_out, out);
        if let Some(cap) = c.logit_softcap {
            for v in out.iter_mut() {
                *v = cap * libm::tanhf(*v / cap);
            }
        }
        if !contiguous {
            let mut r = 0;
            for g in segs {
                let k = g.n - g.out_from;
                s.logits[g.out_row * nv..(g.out_row + k) * nv].copy_from_slice(&s.step_logits[r * nv..(r + k) * nv]);
                r += k;
            }
        }
    }
}

/// Tokens per chunk of a token-parallel region, or `None` to run inline: a batch too small
/// to pay for handing work to the threads.
fn token_chunk(pool: &Pool, n: usize) -> Option<usize> {
    (pool.threads() > 1 && n >= 4).then(|| n.div_ceil(pool.threads() * 2))
}

/// `f(t0, rows)` over chunks of whole tokens of `a` (`width` values per token, `n` tokens),
/// shared out over the pool.
fn per_token(pool: &Pool, n: usize, a: &mut [f32], width: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let a = &mut a[..n * width];
    match token_chunk(pool, n) {
        None => f(0, a),
        Some(per) => pool.for_each_chunk(a, per * width, &|i, rows: &mut [f32]| f(i * per, rows)),
    }
}

/// The work of [`per_token2`]: `(t0, a_rows, b_rows)`.
type TokenRows2<'a> = dyn Fn(usize, &mut [f32], &mut [f32]) + Sync + 'a;

/// `f(t0, a_rows, b_rows)` over matching chunks of whole tokens of two arrays (`(array, width)`).
fn per_token2(pool: &Pool, n: usize, (a, wa): (&mut [f32], usize), (b, wb): (&mut [f32], usize), f: &TokenRows2<'_>) {
    let (a, b) = (&mut a[..n * wa], &mut b[..n * wb]);
    match token_chunk(pool, n) {
        None => f(0, a, b),
        Some(per) => {
            let mut parts: Vec<(&mut [f32], &mut [f32])> = a.chunks_mut(per * wa).zip(b.chunks_mut(per * wb)).collect();
            pool.for_each_chunk(&mut parts, 1, &|i, p: &mut [(&mut [f32], &mut [f32])]| {
                let (x, y) = &mut p[0];
                f(i * per, x, y)
            });
        }
    }
}

/// `x += p` over whole rows of `x`, or `x += rmsnorm(p) · w` with a post-norm `w`.
fn add_residual(x: &mut [f32], p: &[f32], post: Option<&[f32]>, eps: f32) {
    match post {
        None => {
            for (v, p) in x.iter_mut().zip(p) {
                *v += p;
            }
        }
        Some(w) => {
            for (xt, pt) in x.chunks_exact_mut(w.len()).zip(p.chunks_exact(w.len())) {
                let r = math::rms_scale(pt, eps);
                for ((v, &p), &wi) in xt.iter_mut().zip(pt).zip(w) {
                    *v += p * r * wi;
                }
            }
        }
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            for (v, bi) in row.iter_mut().zip(b) {
                *v += bi;
            }
        }
    }
}

/// Rotates one head's vector by the position's angles.
fn apply_rope(h: &mut [f32], rot: &[(f32, f32)], style: RopeStyle) {
    match style {
        RopeStyle::Normal => {
            for (pair, &(co, si)) in h.chunks_exact_mut(2).zip(rot) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * co - b * si;
                pair[1] = a * si + b * co;
            }
        }
        RopeStyle::Neox => {
            let half = rot.len();
            for (i, &(co, si)) in rot.iter().enumerate() {
                let (a, b) = (h[i], h[i + half]);
                h[i] = a * co - b * si;
                h[i + half] = a * si + b * co;
            }
        }
    }
}
