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
mod config;

pub use arch::{Arch, Gate, Need};
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
use half::f16;
use pith_kernels::GgmlType;

/// One transformer block's weights.
pub struct Layer<'a> {
    pub attn_norm: &'a [f32],              // (n_embd)
    pub wq: Weight<'a>,                    // (q_dim, n_embd)
    pub wk: Weight<'a>,                    // (kv_dim, n_embd)
    pub wv: Weight<'a>,                    // (kv_dim, n_embd)
    pub bq: Option<&'a [f32]>,             // (q_dim)
    pub bk: Option<&'a [f32]>,             // (kv_dim)
    pub bv: Option<&'a [f32]>,             // (kv_dim)
    pub q_norm: Option<&'a [f32]>,         // (head_dim) per-head RMSNorm of queries
    pub k_norm: Option<&'a [f32]>,         // (head_dim) per-head RMSNorm of keys
    pub wo: Weight<'a>,                    // (n_embd, q_dim)
    pub post_attn_norm: Option<&'a [f32]>, // (n_embd) on the attention output
    pub ffn_norm: &'a [f32],               // (n_embd)
    pub w_gate: Weight<'a>,                // (n_ff, n_embd)
    pub w_up: Weight<'a>,                  // (n_ff, n_embd)
    pub w_down: Weight<'a>,                // (n_embd, n_ff)
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
                wq: b.weight(&n("attn_q.weight"), q, d)?,
                wk: b.weight(&n("attn_k.weight"), kv, d)?,
                wv: b.weight(&n("attn_v.weight"), kv, d)?,
                bq: b.vector(&n("attn_q.bias"), q, a.qkv_bias)?,
                bk: b.vector(&n("attn_k.bias"), kv, a.qkv_bias)?,
                bv: b.vector(&n("attn_v.bias"), kv, a.qkv_bias)?,
                q_norm: b.vector(&n("attn_q_norm.weight"), hd, a.qk_norm)?,
                k_norm: b.vector(&n("attn_k_norm.weight"), hd, a.qk_norm)?,
                wo: b.weight(&n("attn_output.weight"), d, q)?,
                post_attn_norm: b.vector(&n("post_attention_norm.weight"), d, a.post_norms)?,
                ffn_norm: b.required(&n("ffn_norm.weight"), d)?,
                w_gate: b.weight(&n("ffn_gate.weight"), ff, d)?,
                w_up: b.weight(&n("ffn_up.weight"), ff, d)?,
                w_down: b.weight(&n("ffn_down.weight"), d, ff)?,
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
                n += w.data.len();
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

/// Per-sequence state: the KV cache, the position, and reusable activation buffers.
pub struct State {
    pub n_ctx: usize,
    /// Tokens already in the cache.
    pub pos: usize,
    /// Largest batch processed at once.
    pub n_batch: usize,
    k_cache: Vec<f16>,         // (n_layer, n_ctx, kv_dim)
    v_cache: Vec<f16>,         // (n_layer, n_ctx, kv_dim)
    x: Vec<f32>,               // (n, n_embd) residual stream
    xb: Vec<f32>,              // (n, n_embd) normed input
    q: Vec<f32>,               // (n, q_dim)
    k: Vec<f32>,               // (n, kv_dim)
    v: Vec<f32>,               // (n, kv_dim)
    att: Vec<f32>,             // (n, q_dim) attention output
    proj: Vec<f32>,            // (n, n_embd) projection output
    hb: Vec<f32>,              // (n, n_ff)
    hb2: Vec<f32>,             // (n, n_ff)
    logits: Vec<f32>,          // (n_out, n_vocab)
    kf: Vec<f32>,              // (n_pos, kv_dim) one layer's keys, widened for attention
    vf: Vec<f32>,              // (n_pos, kv_dim) one layer's values, widened for attention
    att_tmp: Vec<f32>,         // batch: (n_head, n_batch rounded up, head_dim); decode: (n_head, n_pos + head_dim)
    rope: Vec<(f32, f32)>,     // (n_ctx, rope_dim / 2) cos, sin
    rope_swa: Vec<(f32, f32)>, // (n_ctx, rope_dim / 2) for sliding-window layers, or empty
    scratch: MatmulScratch,
}

impl State {
    /// A fresh state for `model` holding up to `n_ctx` tokens, processing at most `n_batch` at once.
    pub fn new(model: &Model<'_>, n_ctx: usize, n_batch: usize) -> Result<Self> {
        let c = &model.config;
        if n_ctx == 0 {
            return Err(Error::BadHyperParam { key: "n_ctx".to_string(), reason: "must be at least 1".to_string() });
        }
        let cache = c.n_layer.checked_mul(n_ctx).and_then(|v| v.checked_mul(c.kv_dim())).ok_or_else(|| {
            Error::BadHyperParam { key: "n_ctx".to_string(), reason: "KV cache size overflows".to_string() }
        })?;
        let kv_cache = || -> Result<Vec<f16>> {
            let too_big = || Error::BadHyperParam {
                key: "n_ctx".to_string(),
                reason: alloc::format!("a KV cache for {n_ctx} tokens ({} bytes) cannot be allocated", cache * 4),
            };
            Vec::<f16>::new().try_reserve_exact(cache).map_err(|_| too_big())?;
            // Zeroed memory straight from the allocator: fresh pages, touched only as positions
            // are written (a memset of the whole cache cost ~5 ms of start-up).
            bytemuck::allocation::try_cast_vec(alloc::vec![0u16; cache]).map_err(|_| too_big())
        };
        let (k_cache, v_cache) = (kv_cache()?, kv_cache()?);
        // Rotation tables: theta = pos * scale * base^(-2i/rope_dim) / divisor_i, for the global
        // layers and (their own base, no scaling, no divisors) for the windowed ones.
        let table = |theta: f32, scale: f32, divisors: Option<&[f32]>| {
            let half = c.rope_dim / 2;
            let freqs: Vec<f32> = (0..half)
                .map(|i| math::powf(theta, -2.0 * i as f32 / c.rope_dim as f32) / divisors.map_or(1.0, |d| d[i]))
                .collect();
            let mut rope = Vec::with_capacity(n_ctx * half);
            for p in 0..n_ctx {
                let pos = p as f32 * scale;
                for &freq in &freqs {
                    let (s, co) = math::sin_cos(pos * freq);
                    rope.push((co, s));
                }
            }
            rope
        };
        let rope = table(c.rope_theta, c.rope_freq_scale, model.rope_freqs);
        let rope_swa = match &c.sliding_window {
            Some(sw) if sw.layers.iter().any(|&w| w) => table(sw.rope_theta, 1.0, None),
            _ => Vec::new(),
        };
        Ok(State {
            n_ctx,
            pos: 0,
            n_batch: n_batch.max(1),
            k_cache,
            v_cache,
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
            kf: Vec::new(),
            vf: Vec::new(),
            att_tmp: Vec::new(),
            rope,
            rope_swa,
            scratch: MatmulScratch::default(),
        })
    }

    /// Chooses how activations meet weights in every matmul (see [`Precision`]).
    pub fn set_precision(&mut self, p: Precision) {
        self.scratch.precision = p;
    }

    /// Forgets every cached token.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Drops cached tokens from position `pos` on.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }
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
        let nv = self.config.n_vocab;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= nv) {
            return Err(Error::BadToken { id, n_vocab: nv });
        }
        let needed = state.pos + tokens.len();
        if needed > state.n_ctx {
            return Err(Error::ContextOverflow { needed, n_ctx: state.n_ctx });
        }
        let start = match want {
            Logits::Last => tokens.len().saturating_sub(1),
            Logits::From(s) => s.min(tokens.len()),
            Logits::None => tokens.len(),
        };
        state.logits.clear();
        let mut done = 0;
        while done < tokens.len() {
            let n = state.n_batch.min(tokens.len() - done);
            let batch = &tokens[done..done + n];
            // Logits for this batch's tokens at or after `start`.
            let out_from = start.saturating_sub(done).min(n);
            self.forward_batch(state, pool, batch, out_from, obs);
            done += n;
        }
        Ok(&state.logits)
    }

    /// One batch of `n` tokens; logits for batch positions `out_from..n` are appended.
    fn forward_batch(&self, s: &mut State, pool: &Pool, tokens: &[u32], out_from: usize, obs: &mut dyn Observer) {
        let c = &self.config;
        let n = tokens.len();
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
        for (t, &tok) in tokens.iter().enumerate() {
            let row = &mut s.x[t * d..(t + 1) * d];
            self.token_embd.dequantize_row(tok as usize, row);
            if c.embd_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embd_scale);
            }
        }
        let p0 = s.pos;
        for (li, l) in self.layers.iter().enumerate() {
            // Attention block. The elementwise work between matmuls is shared out over whole
            // tokens of the batch (run inline for a single token).
            if li == 0 {
                let (x, norm, eps) = (&s.x, l.attn_norm, c.rms_eps);
                per_token(pool, n, &mut s.xb, d, &|t0, xb| {
                    for (t, o) in xb.chunks_exact_mut(d).enumerate() {
                        math::rmsnorm(o, &x[(t0 + t) * d..(t0 + t + 1) * d], norm, eps);
                    }
                });
            }
            obs.matmul_input(Some(li), Site::AttnIn, &s.xb, n);
            matmul_many(pool, &mut s.scratch, &[&l.wq, &l.wk, &l.wv], &s.xb, n, &mut [&mut s.q, &mut s.k, &mut s.v]);
            add_bias(&mut s.v, l.bv);
            let window = c.window(li);
            let rope = if window.is_some() { &s.rope_swa } else { &s.rope };
            let (rd, style, hd, eps) = (c.rope_dim / 2, c.rope_style, c.head_dim, c.rms_eps);
            per_token2(pool, n, (&mut s.q, qd), (&mut s.k, kvd), &|t0, q, k| {
                add_bias(q, l.bq);
                add_bias(k, l.bk);
                for (t, (qt, kt)) in q.chunks_exact_mut(qd).zip(k.chunks_exact_mut(kvd)).enumerate() {
                    let rot = &rope[(p0 + t0 + t) * rd..(p0 + t0 + t + 1) * rd];
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
            let layer_off = li * s.n_ctx * kvd;
            for t in 0..n {
                let at = layer_off + (p0 + t) * kvd;
                narrow(&s.k[t * kvd..(t + 1) * kvd], &mut s.k_cache[at..at + kvd]);
                narrow(&s.v[t * kvd..(t + 1) * kvd], &mut s.v_cache[at..at + kvd]);
            }
            let n_pos = p0 + n;
            let q = &s.q;
            let group = c.n_head / c.n_head_kv;
            let scale = c.attn_scale;
            if n > 1 {
                // Widen this layer's cached keys and values once; every query of the batch reuses them.
                s.kf.resize(n_pos * kvd, 0.0);
                s.vf.resize(n_pos * kvd, 0.0);
                widen(&s.k_cache[layer_off..layer_off + n_pos * kvd], &mut s.kf);
                widen(&s.v_cache[layer_off..layer_off + n_pos * kvd], &mut s.vf);
                let shape =
                    attention::Shape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: hd, p0, n, scale, window };
                attention::attention_batch(pool, &shape, q, &s.kf, &s.vf, &mut s.att, &mut s.att_tmp);
            } else {
                // One token reads the f16 cache in place. One chunk per head; a single token's
                // heads over a short context are less work than handing them to threads
                // (measured: 32 positions).
                // A windowed layer reads only the window's positions.
                let lo = window.map_or(0, |w| n_pos.saturating_sub(w));
                let n_seen = n_pos - lo;
                let (kc, vc) = (&s.k_cache[layer_off + lo * kvd..], &s.v_cache[layer_off + lo * kvd..]);
                let single = Pool::single();
                let att_pool = if n_seen < 32 { &single } else { pool };
                // Per head: its scores, then its output (scratch reused across tokens; it grows
                // with the context by doubling, not once per token).
                let stride = n_seen + hd;
                s.att_tmp.resize(c.n_head * stride, 0.0);
                att_pool.for_each_chunk(&mut s.att_tmp[..c.n_head * stride], stride, &|h, buf: &mut [f32]| {
                    let (scores, out) = buf.split_at_mut(n_seen);
                    let qh = &q[h * hd..(h + 1) * hd];
                    pith_kernels::attend_f16(qh, kc, vc, kvd, (h / group) * hd, scale, scores, out);
                });
                for (o, buf) in s.att.chunks_exact_mut(hd).zip(s.att_tmp.chunks_exact(stride)) {
                    o.copy_from_slice(&buf[n_seen..]);
                }
            }
            obs.matmul_input(Some(li), Site::AttnOut, &s.att, n);
            matmul(pool, &mut s.scratch, &l.wo, &s.att, n, &mut s.proj);
            // [Post-norm,] residual, then the feed-forward block's norm.
            let (proj, norm, post) = (&s.proj, l.ffn_norm, l.post_attn_norm);
            per_token2(pool, n, (&mut s.x, d), (&mut s.xb, d), &|t0, x, xb| {
                add_residual(x, &proj[t0 * d..], post, eps);
                for (o, xt) in xb.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    math::rmsnorm(o, xt, norm, eps);
                }
            });
            // Feed-forward block (SwiGLU or GeGLU).
            obs.matmul_input(Some(li), Site::FfnIn, &s.xb, n);
            matmul_many(pool, &mut s.scratch, &[&l.w_gate, &l.w_up], &s.xb, n, &mut [&mut s.hb, &mut s.hb2]);
            let (up, gate) = (&s.hb2, c.traits.gate);
            per_token(pool, n, &mut s.hb, ff, &|t0, g| {
                let u = &up[t0 * ff..t0 * ff + g.len()];
                match gate {
                    Gate::Silu => pith_kernels::silu_mul(g, u),
                    Gate::GeluTanh => pith_kernels::gelu_mul(g, u),
                }
            });
            obs.matmul_input(Some(li), Site::FfnDown, &s.hb, n);
            matmul(pool, &mut s.scratch, &l.w_down, &s.hb, n, &mut s.proj);
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
        s.pos += n;
        let n_out = n - out_from;
        if n_out == 0 {
            return;
        }
        for t in out_from..n {
            let r = (t - out_from) * d;
            math::rmsnorm(&mut s.xb[r..r + d], &s.x[t * d..(t + 1) * d], self.output_norm, c.rms_eps);
        }
        obs.matmul_input(None, Site::Output, &s.xb[..n_out * d], n_out);
        let base = s.logits.len();
        s.logits.resize(base + n_out * c.n_vocab, 0.0);
        matmul(pool, &mut s.scratch, &self.output, &s.xb[..n_out * d], n_out, &mut s.logits[base..]);
        if let Some(cap) = c.logit_softcap {
            for v in &mut s.logits[base..] {
                *v = cap * libm::tanhf(*v / cap);
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

/// f16 → f32 for a slice.
fn widen(src: &[f16], dst: &mut [f32]) {
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
}

/// f32 → f16 (round to nearest even) for a slice.
fn narrow(src: &[f32], dst: &mut [f16]) {
    half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
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
