//! `pith-compress prune`: structured pruning in the manner of NVIDIA's Minitron.
//!
//! Calibration text runs through the runtime's forward pass ([`Model::forward_observed`]) and an
//! [`Observer`] scores, per chunk of text (one "sequence" of the batch):
//! - **FFN neurons**: the SwiGLU output (the input of `ffn_down`), `|a_i|` averaged over the
//!   chunk's tokens;
//! - **attention heads**: the L2 norm of each head's attention output (the input of
//!   `attn_output`), averaged over the chunk's tokens; a GQA group (the query heads sharing one
//!   KV head) scores the sum of its heads, and whole groups are kept or dropped;
//! - **embedding channels**: `|x_i|` of every RMSNorm output (both norms of every layer and the
//!   final one), averaged over the chunk's tokens and summed over the norms;
//!
//! and the chunk scores are combined by the L2 norm over chunks (Minitron's "mean over the
//! sequence, L2 over the batch"). Layers are ranked two ways: **Block Influence**
//! `BI = 1 − cos(x_in, x_out)` of the residual stream around the block, averaged over tokens
//! (recovered from the normed inputs the observer sees: `rmsnorm(x)·g / g` is `x` up to scale),
//! and the **perplexity** of the calibration text with the layer skipped.
//!
//! The pruned model is an ordinary llama GGUF of uniform width (every layer keeps the same
//! number of neurons and groups, chosen per layer), f32 or f16, that pith and llama.cpp load.

use crate::error::{CompressError, Result};
use crate::output::check_output;
use crate::quantize::{carry_metadata, to_f32, write_gguf};
use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::Gguf;
use pith::model::{Config, Logits, Model, Observer, Site, State};
use pith::parallel::Pool;
use pith::Precision;
use pith_kernels::GgmlType;
use std::path::PathBuf;

/// The hyper-parameters that decide a llama model's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// The output projection is the token embedding.
    pub tied: bool,
}

impl Shape {
    pub fn of(c: &Config, tied: bool) -> Self {
        Shape {
            n_vocab: c.n_vocab,
            n_embd: c.n_embd,
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            n_ff: c.n_ff,
            tied,
        }
    }

    /// Parameters of the token embedding (and of a separate output matrix).
    pub fn embedding_params(&self) -> u64 {
        let e = (self.n_vocab * self.n_embd) as u64;
        if self.tied {
            e
        } else {
            2 * e
        }
    }

    /// Parameters of one block: two norms, Q/K/V/O, gate/up/down.
    pub fn layer_params(&self) -> u64 {
        let (d, q, kv, ff) = (self.n_embd, self.n_head * self.head_dim, self.n_head_kv * self.head_dim, self.n_ff);
        (2 * d + d * q + 2 * d * kv + q * d + 3 * d * ff) as u64
    }

    /// Every parameter the file holds (an tied output matrix counted once).
    pub fn params(&self) -> u64 {
        self.embedding_params() + self.non_embedding_params()
    }

    /// Parameters outside the token embedding and output matrix.
    pub fn non_embedding_params(&self) -> u64 {
        self.n_layer as u64 * self.layer_params() + self.n_embd as u64
    }

    /// `n_embd 576, 30 layers, 9 heads / 3 KV (64), n_ff 1536`.
    pub fn describe(&self) -> String {
        format!(
            "n_embd {}, {} layers, {} heads / {} KV heads (dim {}), n_ff {}: {} parameters ({} outside the embedding)",
            self.n_embd,
            self.n_layer,
            self.n_head,
            self.n_head_kv,
            self.head_dim,
            self.n_ff,
            human(self.params()),
            human(self.non_embedding_params())
        )
    }
}

/// `134.5M`.
pub fn human(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}K", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// Parses a count with an optional K/M/B suffix: `90M`, `1.5B`, `120000`.
pub fn parse_count(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mul) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('B') | Some('G') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| CompressError::BadOption(format!("'{s}' is not a count (e.g. 90M)")))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(CompressError::BadOption(format!("'{s}' must be positive")));
    }
    Ok((v * mul).round() as u64)
}

/// Activation importance of every prunable unit, and the layers' Block Influence.
#[derive(Clone, Debug, Default)]
pub struct Importance {
    /// Per layer, per FFN neuron.
    pub ffn: Vec<Vec<f64>>,
    /// Per layer, per query head.
    pub heads: Vec<Vec<f64>>,
    /// Per embedding channel.
    pub embd: Vec<f64>,
    /// Per layer, `1 − cos(in, out)` averaged over tokens.
    pub block_influence: Vec<f64>,
    /// Chunks and tokens seen.
    pub chunks: usize,
    pub tokens: usize,
}

impl Importance {
    /// A GQA group's score: the sum of its query heads' scores.
    pub fn groups(&self, layer: usize, n_head_kv: usize) -> Vec<f64> {
        let h = &self.heads[layer];
        let g = h.len() / n_head_kv.max(1);
        (0..n_head_kv).map(|k| h[k * g..(k + 1) * g].iter().sum()).collect()
    }
}

/// Per-chunk sums (mean over the sequence) and their squares over chunks (L2 over the batch).
struct Scores {
    chunk: Vec<f64>,
    sq: Vec<f64>,
}

impl Scores {
    fn new(n: usize) -> Self {
        Scores { chunk: vec![0.0; n], sq: vec![0.0; n] }
    }
    fn end_chunk(&mut self, n_tok: usize) {
        let n = n_tok.max(1) as f64;
        for (s, c) in self.sq.iter_mut().zip(self.chunk.iter_mut()) {
            *s += (*c / n) * (*c / n);
            *c = 0.0;
        }
    }
    fn finish(&self) -> Vec<f64> {
        self.sq.iter().map(|v| v.sqrt()).collect()
    }
}

/// The [`Observer`] gathering [`Importance`].
struct Collector<'m> {
    attn_norms: Vec<&'m [f32]>,
    output_norm: &'m [f32],
    n_head: usize,
    head_dim: usize,
    ffn: Vec<Scores>,
    heads: Vec<Scores>,
    embd: Scores,
    /// The residual entering the layer being run (direction only), (n_tok, n_embd).
    prev: Option<(usize, Vec<f32>)>,
    bi_sum: Vec<f64>,
    bi_count: Vec<u64>,
    n_tok: usize,
}

impl Collector<'_> {
    /// `x / g` per channel (channels with `g = 0` carry nothing and are left at 0).
    fn unnorm(x: &[f32], g: &[f32]) -> Vec<f32> {
        let d = g.len();
        let mut out = vec![0.0f32; x.len()];
        for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            for ((o, &v), &w) in o.iter_mut().zip(r).zip(g) {
                *o = if w != 0.0 { v / w } else { 0.0 };
            }
        }
        out
    }

    /// The residual `cur` leaves layer `layer - 1` (or the last layer, for the output): its
    /// Block Influence against the residual that entered it.
    fn residual(&mut self, layer: usize, cur: Vec<f32>) {
        if let Some((l, prev)) = self.prev.take() {
            if l + 1 == layer {
                let d = self.output_norm.len();
                for (a, b) in prev.chunks_exact(d).zip(cur.chunks_exact(d)) {
                    self.bi_sum[l] += 1.0 - cosine(a, b);
                    self.bi_count[l] += 1;
                }
            }
        }
        self.prev = Some((layer, cur));
    }

    fn embd_channels(&mut self, x: &[f32]) {
        let d = self.embd.chunk.len();
        for row in x.chunks_exact(d) {
            for (s, &v) in self.embd.chunk.iter_mut().zip(row) {
                *s += v.abs() as f64;
            }
        }
    }

    fn end_chunk(&mut self) {
        for s in self.ffn.iter_mut().chain(self.heads.iter_mut()) {
            s.end_chunk(self.n_tok);
        }
        self.embd.end_chunk(self.n_tok);
        self.prev = None;
        self.n_tok = 0;
    }
}

/// `cos(a, b)` in f64; 1 when either is zero (no change measured).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 1.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

impl Observer for Collector<'_> {
    fn matmul_input(&mut self, layer: Option<usize>, site: Site, x: &[f32], n_tok: usize) {
        if n_tok == 0 {
            return;
        }
        match (layer, site) {
            (Some(l), Site::AttnIn) => {
                if l == 0 {
                    self.n_tok += n_tok;
                }
                self.embd_channels(x);
                let r = Self::unnorm(x, self.attn_norms[l]);
                self.residual(l, r);
            }
            (Some(_), Site::FfnIn) => self.embd_channels(x),
            (Some(l), Site::AttnOut) => {
                let (hd, s) = (self.head_dim, &mut self.heads[l]);
                for row in x.chunks_exact(self.n_head * hd) {
                    for (acc, h) in s.chunk.iter_mut().zip(row.chunks_exact(hd)) {
                        *acc += h.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
                    }
                }
            }
            (Some(l), Site::FfnDown) => {
                let s = &mut self.ffn[l];
                let ff = s.chunk.len();
                for row in x.chunks_exact(ff) {
                    for (acc, &v) in s.chunk.iter_mut().zip(row) {
                        *acc += v.abs() as f64;
                    }
                }
            }
            (None, _) | (Some(_), Site::Output) => {
                self.embd_channels(x);
                let r = Self::unnorm(x, self.output_norm);
                self.residual(self.attn_norms.len(), r);
            }
        }
    }
}

/// Runs `model` over each chunk (a fresh sequence each, all positions' logits so the output
/// norm is observed for every token) and scores every unit. `chunks` must not be empty.
/// `precision`: the matmuls' arithmetic (the runtime's default, Q8, is the fast one).
pub fn importance(model: &Model<'_>, pool: &Pool, chunks: &[Vec<u32>], precision: Precision) -> Result<Importance> {
    let c = &model.config;
    let n_ctx = chunks.iter().map(Vec::len).max().unwrap_or(0);
    if n_ctx == 0 {
        return Err(CompressError::BadOption("no calibration tokens to score the model on".into()));
    }
    let mut col = Collector {
        attn_norms: model.layers.iter().map(|l| l.attn_norm).collect(),
        output_norm: model.output_norm,
        n_head: c.n_head,
        head_dim: c.head_dim,
        ffn: (0..c.n_layer).map(|_| Scores::new(c.n_ff)).collect(),
        heads: (0..c.n_layer).map(|_| Scores::new(c.n_head)).collect(),
        embd: Scores::new(c.n_embd),
        prev: None,
        bi_sum: vec![0.0; c.n_layer],
        bi_count: vec![0; c.n_layer],
        n_tok: 0,
    };
    let mut state = State::new(model, n_ctx, n_ctx)?;
    state.set_precision(precision);
    let mut tokens = 0;
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        state.reset();
        model.forward_observed(&mut state, pool, chunk, Logits::From(0), &mut col)?;
        col.end_chunk();
        tokens += chunk.len();
    }
    Ok(Importance {
        ffn: col.ffn.iter().map(Scores::finish).collect(),
        heads: col.heads.iter().map(Scores::finish).collect(),
        embd: col.embd.finish(),
        block_influence: col.bi_sum.iter().zip(&col.bi_count).map(|(s, &n)| s / n.max(1) as f64).collect(),
        chunks: chunks.len(),
        tokens,
    })
}

/// Which units of the input survive, and where they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keep {
    /// Embedding channels kept, ascending.
    pub embd: Vec<usize>,
    pub layers: Vec<LayerKeep>,
}

/// One layer of the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerKeep {
    /// The input layer it is taken from.
    pub src: usize,
    /// KV heads (GQA groups) kept, ascending; each brings its query heads.
    pub groups: Vec<usize>,
    /// FFN neurons kept, ascending.
    pub ffn: Vec<usize>,
}

impl Keep {
    /// Everything kept: the identity.
    pub fn all(s: &Shape) -> Self {
        Keep {
            embd: (0..s.n_embd).collect(),
            layers: (0..s.n_layer)
                .map(|l| LayerKeep { src: l, groups: (0..s.n_head_kv).collect(), ffn: (0..s.n_ff).collect() })
                .collect(),
        }
    }

    /// The shape of the pruned model.
    pub fn shape(&self, from: &Shape) -> Shape {
        let g = from.n_head / from.n_head_kv;
        let n_kv = self.layers.first().map_or(from.n_head_kv, |l| l.groups.len());
        Shape {
            n_embd: self.embd.len(),
            n_layer: self.layers.len(),
            n_head: n_kv * g,
            n_head_kv: n_kv,
            n_ff: self.layers.first().map_or(from.n_ff, |l| l.ffn.len()),
            ..*from
        }
    }
}

/// The indices of the `k` largest scores, ascending (ties: the lower index first).
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// A width target; `None` keeps that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Width {
    pub ffn: Option<usize>,
    pub heads: Option<usize>,
    pub embd: Option<usize>,
}

impl Width {
    /// Parses `ffn=1024,heads=6,embd=512` (any subset, any order).
    pub fn parse(s: &str) -> Result<Self> {
        let mut w = Width::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                CompressError::BadOption(format!("--width {s}: expected KEY=N[,KEY=N…] with keys ffn, heads, embd"))
            })?;
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| CompressError::BadOption(format!("--width {s}: '{v}' is not a whole number")))?;
            let slot = match k.trim() {
                "ffn" => &mut w.ffn,
                "heads" => &mut w.heads,
                "embd" => &mut w.embd,
                other => {
                    return Err(CompressError::BadOption(format!(
                        "--width {s}: unknown key '{other}' (keys: ffn, heads, embd)"
                    )))
                }
            };
            *slot = Some(n);
        }
        if w == Width::default() {
            return Err(CompressError::BadOption(format!("--width '{s}': nothing to prune")));
        }
        Ok(w)
    }

    /// Checks the target against the model's shape: no dimension grows or vanishes, and heads
    /// come in whole GQA groups.
    pub fn check(&self, s: &Shape) -> Result<()> {
        let bad = |m: String| Err(CompressError::BadOption(m));
        let g = s.n_head / s.n_head_kv;
        for (name, v, max) in
            [("ffn", self.ffn, s.n_ff), ("heads", self.heads, s.n_head), ("embd", self.embd, s.n_embd)]
        {
            match v {
                Some(0) => return bad(format!("--width {name}=0: at least one must remain")),
                Some(n) if n > max => return bad(format!("--width {name}={n}: the model has only {max}")),
                _ => {}
            }
        }
        if let Some(h) = self.heads {
            if h % g != 0 {
                return bad(format!(
                    "--width heads={h}: heads are pruned in whole GQA groups of {g} (the model has {} heads sharing {} KV heads), so the count must be a multiple of {g}",
                    s.n_head, s.n_head_kv
                ));
            }
        }
        Ok(())
    }
}

/// Keeps the most important units of every layer for a width target (every layer the same
/// width; which units, per layer).
pub fn width_keep(s: &Shape, imp: &Importance, w: &Width) -> Result<Keep> {
    w.check(s)?;
    let g = s.n_head / s.n_head_kv;
    let n_groups = w.heads.map_or(s.n_head_kv, |h| h / g);
    let n_ff = w.ffn.unwrap_or(s.n_ff);
    Ok(Keep {
        embd: top_k(&imp.embd, w.embd.unwrap_or(s.n_embd)),
        layers: (0..s.n_layer)
            .map(|l| LayerKeep {
                src: l,
                groups: top_k(&imp.groups(l, s.n_head_kv), n_groups),
                ffn: top_k(&imp.ffn[l], n_ff),
            })
            .collect(),
    })
}

/// Drops the given layers, keeping every unit of the others.
pub fn depth_keep(s: &Shape, drop: &[usize]) -> Keep {
    let mut k = Keep::all(s);
    k.layers.retain(|l| !drop.contains(&l.src));
    k
}

/// The width shape for a parameter budget: every head kept; for each embedding width (a
/// multiple of 32), the widest FFN (a multiple of 32) that fits; of those, the one whose larger
/// relative cut (FFN or embedding) is the smallest — both narrowed about equally.
pub fn width_for_budget(s: &Shape, budget: u64) -> Result<Width> {
    let mut best: Option<(f64, usize, usize)> = None;
    let mut d = s.n_embd / 32 * 32;
    while d >= 32 {
        let mut lo = 0usize;
        // The widest FFN, a multiple of 32, with the parameter count within budget.
        let mut ff = s.n_ff / 32 * 32;
        while ff >= 32 {
            if (Shape { n_ff: ff, n_embd: d, ..*s }).params() <= budget {
                lo = ff;
                break;
            }
            ff -= 32;
        }
        if lo > 0 {
            let cut = (1.0 - d as f64 / s.n_embd as f64).max(1.0 - lo as f64 / s.n_ff as f64);
            if best.is_none_or(|(c, _, _)| cut < c) {
                best = Some((cut, d, lo));
            }
        }
        d -= 32;
    }
    if (Shape { ..*s }).params() <= budget {
        return Ok(Width::default());
    }
    best.map(|(_, d, ff)| Width { ffn: Some(ff), heads: None, embd: Some(d) }).ok_or_else(|| {
        CompressError::BadOption(format!(
            "--target-params {}: too small for this model keeping every head ({} parameters at 32 channels and 32 neurons)",
            human(budget),
            human(Shape { n_ff: 32, n_embd: 32, ..*s }.params())
        ))
    })
}

/// Layers to remove for a parameter budget.
pub fn depth_for_budget(s: &Shape, budget: u64) -> Result<usize> {
    (0..s.n_layer).find(|&n| Shape { n_layer: s.n_layer - n, ..*s }.params() <= budget).ok_or_else(|| {
        CompressError::BadOption(format!(
            "--target-params {}: even one layer is {} parameters",
            human(budget),
            human(Shape { n_layer: 1, ..*s }.params())
        ))
    })
}

/// The pruned model: every tensor dequantized, its kept rows and columns written as `ty`
/// (F32 or F16), the hyper-parameters updated, the rest of the metadata carried over.
pub fn apply(g: &Gguf<'_>, from: &Shape, keep: &Keep, ty: GgmlType) -> Result<GgufBuilder> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16) {
        return Err(CompressError::BadOption(format!("--type {ty}: prune writes f32 or f16")));
    }
    let to = keep.shape(from);
    let hd = from.head_dim;
    let qpg = from.n_head / from.n_head_kv;
    let mut b = carry_metadata(g);
    let put = |b: &mut GgufBuilder, k: &str, v: usize| {
        b.kv(&format!("llama.{k}"), OwnedValue::U32(v as u32));
    };
    put(&mut b, "embedding_length", to.n_embd);
    put(&mut b, "block_count", to.n_layer);
    put(&mut b, "feed_forward_length", to.n_ff);
    put(&mut b, "attention.head_count", to.n_head);
    put(&mut b, "attention.head_count_kv", to.n_head_kv);
    // The head size no longer follows from n_embd / n_head once either is pruned.
    put(&mut b, "attention.key_length", hd);
    put(&mut b, "attention.value_length", hd);
    b.kv("general.file_type", OwnedValue::U32(if ty == GgmlType::F32 { 0 } else { 1 }));
    b.kv("pith.prune.shape", OwnedValue::String(to.describe()));
    b.kv("pith.quantization.tool", OwnedValue::String(format!("pith-compress {}", env!("CARGO_PKG_VERSION"))));
    let tensor =
        |name: &str| g.tensor(name).ok_or_else(|| CompressError::Tensor { tensor: name.into(), why: "missing".into() });
    // Rows `rows` and columns `cols` of a matrix (or the `cols` of a vector when `rows` is None).
    let pick = |b: &mut GgufBuilder, src: &str, dst: &str, rows: Option<&[usize]>, cols: &[usize]| -> Result<()> {
        let t = tensor(src)?;
        let vals = to_f32(t);
        let n = t.n_cols();
        let sel: Vec<f32> = match rows {
            None => cols.iter().map(|&c| vals[c]).collect(),
            Some(rows) => {
                rows.iter().flat_map(|&r| cols.iter().map(move |&c| (r, c))).map(|(r, c)| vals[r * n + c]).collect()
            }
        };
        let (dims, ty) = match rows {
            None => (vec![cols.len() as u64], GgmlType::F32),
            Some(r) => (vec![cols.len() as u64, r.len() as u64], ty),
        };
        let data = encode(&sel, ty);
        b.tensor(dst, &dims, ty, data);
        Ok(())
    };
    let e = &keep.embd;
    let vocab: Vec<usize> = (0..from.n_vocab).collect();
    pick(&mut b, "token_embd.weight", "token_embd.weight", Some(&vocab), e)?;
    for (i, lk) in keep.layers.iter().enumerate() {
        let s = |n: &str| format!("blk.{}.{n}", lk.src);
        let d = |n: &str| format!("blk.{i}.{n}");
        let q_rows: Vec<usize> =
            lk.groups.iter().flat_map(|&k| (k * qpg..(k + 1) * qpg).flat_map(move |h| h * hd..(h + 1) * hd)).collect();
        let kv_rows: Vec<usize> = lk.groups.iter().flat_map(|&k| k * hd..(k + 1) * hd).collect();
        pick(&mut b, &s("attn_norm.weight"), &d("attn_norm.weight"), None, e)?;
        pick(&mut b, &s("attn_q.weight"), &d("attn_q.weight"), Some(&q_rows), e)?;
        pick(&mut b, &s("attn_k.weight"), &d("attn_k.weight"), Some(&kv_rows), e)?;
        pick(&mut b, &s("attn_v.weight"), &d("attn_v.weight"), Some(&kv_rows), e)?;
        pick(&mut b, &s("attn_output.weight"), &d("attn_output.weight"), Some(e), &q_rows)?;
        pick(&mut b, &s("ffn_norm.weight"), &d("ffn_norm.weight"), None, e)?;
        pick(&mut b, &s("ffn_gate.weight"), &d("ffn_gate.weight"), Some(&lk.ffn), e)?;
        pick(&mut b, &s("ffn_up.weight"), &d("ffn_up.weight"), Some(&lk.ffn), e)?;
        pick(&mut b, &s("ffn_down.weight"), &d("ffn_down.weight"), Some(e), &lk.ffn)?;
    }
    pick(&mut b, "output_norm.weight", "output_norm.weight", None, e)?;
    if !from.tied {
        pick(&mut b, "output.weight", "output.weight", Some(&vocab), e)?;
    }
    // Tensors this function does not know (rope_freqs, …) are carried over unchanged.
    for t in &g.tensors {
        let known = t.name.starts_with("blk.")
            || matches!(t.name, "token_embd.weight" | "output_norm.weight" | "output.weight");
        if !known {
            b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
        }
    }
    Ok(b)
}

/// f32 values as F32 or F16 bytes.
pub fn encode(v: &[f32], ty: GgmlType) -> Vec<u8> {
    match ty {
        GgmlType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

/// Checks that `g` is a llama model this tool can prune (plain llama blocks: no biases, no
/// other architectures), returning its config.
pub fn check_llama(g: &Gguf<'_>, what: &str) -> Result<Config> {
    let arch = g.architecture().map_err(pith::Error::from)?;
    if arch != "llama" {
        return Err(CompressError::BadOption(format!(
            "{what}: the model's architecture is '{arch}'; pith-compress prunes llama models only"
        )));
    }
    if g.tensors.iter().any(|t| t.name.ends_with(".bias")) {
        return Err(CompressError::BadOption(format!(
            "{what}: the model has bias tensors, which prune does not handle"
        )));
    }
    Ok(Config::from_gguf(g)?)
}

/// The file without some layers (renumbered), every other tensor's bytes as they are: for
/// the perplexity of the model with a layer skipped.
pub fn without_layers(g: &Gguf<'_>, drop: &[usize]) -> GgufBuilder {
    let mut b = carry_metadata(g);
    let n_layer = g.get_u64("llama.block_count").ok().flatten().unwrap_or(0) as usize;
    let map: Vec<Option<usize>> = {
        let mut next = 0;
        (0..n_layer)
            .map(|l| {
                (!drop.contains(&l)).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    };
    b.kv("llama.block_count", OwnedValue::U32((n_layer - drop.len().min(n_layer)) as u32));
    for t in &g.tensors {
        let name = match t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((l, rest)) => match l.parse::<usize>().ok().and_then(|l| map.get(l).copied().flatten()) {
                Some(n) => format!("blk.{n}.{rest}"),
                None => continue,
            },
            None => t.name.to_string(),
        };
        b.tensor(&name, &t.dims, t.ty, t.data.to_vec());
    }
    b
}

/// Mean negative log-likelihood per predicted token of `chunks` (every position after the
/// first of each chunk).
pub fn mean_nll(model: &Model<'_>, pool: &Pool, chunks: &[Vec<u32>], precision: Precision) -> Result<f64> {
    let n_ctx = chunks.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let nv = model.config.n_vocab;
    let mut state = State::new(model, n_ctx, n_ctx)?;
    state.set_precision(precision);
    let (mut sum, mut n) = (0.0f64, 0usize);
    for c in chunks.iter().filter(|c| c.len() >= 2) {
        state.reset();
        let logits = model.forward(&mut state, pool, c, Logits::From(0))?;
        for j in 0..c.len() - 1 {
            sum += pith::perplexity::nll(&logits[j * nv..(j + 1) * nv], c[j + 1]);
            n += 1;
        }
    }
    Ok(sum / n.max(1) as f64)
}

/// Perplexity of the calibration chunks with each layer skipped in turn.
pub fn skip_perplexities(
    g: &Gguf<'_>,
    pool: &Pool,
    chunks: &[Vec<u32>],
    mut on_layer: impl FnMut(usize),
) -> Result<Vec<f64>> {
    let n_layer = Config::from_gguf(g)?.n_layer;
    let mut out = Vec::with_capacity(n_layer);
    for l in 0..n_layer {
        let bytes = AlignedBytes::from(without_layers(g, &[l]));
        let gl = Gguf::parse(bytes.as_slice()).map_err(pith::Error::from)?;
        let m = Model::from_gguf(&gl)?;
        out.push(mean_nll(&m, pool, chunks, Precision::default())?.exp());
        on_layer(l);
    }
    Ok(out)
}

/// A GGUF image in memory, 8-byte aligned (so f32 tensors can be viewed in place).
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl From<GgufBuilder> for AlignedBytes {
    fn from(b: GgufBuilder) -> Self {
        let len = b.file_size() as usize;
        let mut words = vec![0u64; len.div_ceil(8)];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let mut at = 0;
        let _ = b.write_with(|s| {
            bytes[at..at + s.len()].copy_from_slice(s);
            at += s.len();
            Ok::<(), std::convert::Infallible>(())
        });
        AlignedBytes { words, len }
    }
}

impl AlignedBytes {
    pub fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

/// Cuts `tokens` into `n` chunks of `n_ctx` (the first token of each replaced by `bos` when
/// given, as perplexity and imatrix do).
pub fn chunks_of(tokens: &[u32], n_ctx: usize, n: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    (0..n)
        .map(|c| {
            let mut v = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
            if let (Some(b), Some(f)) = (bos, v.first_mut()) {
                *f = b;
            }
            v
        })
        .collect()
}

/// `pith-compress prune` options.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["width", "depth", "target_params"])))]
pub struct PruneArgs {
    /// The model to prune (llama architecture; any weight type: it is dequantized).
    pub input: PathBuf,
    /// The pruned model (F32 or F16).
    pub output: PathBuf,
    /// Calibration text (UTF-8); never the evaluation text.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Width target, e.g. `ffn=1024,heads=6,embd=512` (heads in whole GQA groups).
    #[arg(long)]
    pub width: Option<String>,
    /// Remove this many layers.
    #[arg(long)]
    pub depth: Option<usize>,
    /// A parameter budget (e.g. 90M) for which a shape is chosen (see --by).
    #[arg(long)]
    pub target_params: Option<String>,
    /// With --target-params: narrow the width (FFN and embedding) or remove layers.
    #[arg(long, value_parser = ["width", "depth"], default_value = "width")]
    pub by: String,
    /// Layer ranking that --depth removes by: Block Influence or perplexity when skipped.
    #[arg(long, value_parser = ["bi", "ppl"], default_value = "bi")]
    pub depth_metric: String,
    /// Tokens per calibration chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 256)]
    pub ctx: usize,
    /// Calibration chunks for the importance scores (0 = the whole text).
    #[arg(long, default_value_t = 64)]
    pub chunks: usize,
    /// Calibration chunks for each skipped-layer perplexity (depth).
    #[arg(long, default_value_t = 8)]
    pub ppl_chunks: usize,
    /// Output type: f32 or f16.
    #[arg(long = "type", default_value = "f32")]
    pub ty: String,
    /// Rank and print the new shape, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Threads (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// Runs `pith-compress prune`.
pub fn run(a: &PruneArgs) -> Result<()> {
    use std::fmt::Write as _;
    let ty = match a.ty.to_ascii_lowercase().as_str() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        other => return Err(CompressError::BadOption(format!("--type {other}: prune writes f32 or f16"))),
    };
    if !a.dry_run {
        check_output(&a.output, a.force, &[&a.input, &a.file])?;
    }
    let text = crate::imatrix::read_calibration(&a.file)?;
    let file = pith::file::MappedFile::open(&a.input)?;
    let g = file.gguf()?;
    let cfg = check_llama(&g, &a.input.display().to_string())?;
    let shape = Shape::of(&cfg, g.tensor("output.weight").is_none());
    // The plan is checked before the long work.
    let budget = a.target_params.as_deref().map(parse_count).transpose()?;
    let width = match (&a.width, budget) {
        (Some(w), _) => Some(Width::parse(w)?),
        (None, Some(p)) if a.by == "width" => Some(width_for_budget(&shape, p)?),
        _ => None,
    };
    let depth = match (a.depth, budget) {
        (Some(n), _) => Some(n),
        (None, Some(p)) if a.by == "depth" => Some(depth_for_budget(&shape, p)?),
        _ => None,
    };
    if let Some(w) = &width {
        w.check(&shape)?;
    }
    if let Some(n) = depth {
        if n == 0 || n >= shape.n_layer {
            return Err(CompressError::BadOption(format!(
                "--depth {n}: remove between 1 and {} of the {} layers",
                shape.n_layer - 1,
                shape.n_layer
            )));
        }
    }
    let engine = pith::engine::Engine::load(&file, a.threads)?;
    let tokens = engine.tokenizer.encode(&text, false)?;
    let n_ctx = a.ctx.max(2);
    let n_chunks =
        pith::perplexity::chunk_count(tokens.len(), n_ctx, a.chunks).ok_or_else(|| CompressError::Calibration {
            path: a.file.clone(),
            why: format!("{} tokens, fewer than one chunk of {n_ctx} (use a smaller -c or more text)", tokens.len()),
        })?;
    let bos = if engine.tokenizer.add_bos() { engine.tokenizer.bos() } else { None };
    let chunks = chunks_of(&tokens, n_ctx, n_chunks, bos);
    crate::progress::note(&format!("prune: {} — scoring on {n_chunks} chunks of {n_ctx} tokens", shape.describe()));
    let t0 = std::time::Instant::now();
    let imp = importance(&engine.model, &engine.pool, &chunks, Precision::default())?;
    crate::progress::note(&format!("prune: importance in {:.1} s", t0.elapsed().as_secs_f64()));
    let mut report = String::new();
    let keep = if let Some(n) = depth {
        let ppl_chunks = &chunks[..a.ppl_chunks.clamp(1, chunks.len())];
        let base = mean_nll(&engine.model, &engine.pool, ppl_chunks, Precision::default())?.exp();
        let pb = crate::progress::bar(shape.n_layer as u64, "skip-ppl");
        let ppl = skip_perplexities(&g, &engine.pool, ppl_chunks, |l| pb.set_position(l as u64 + 1))?;
        pb.finish_and_clear();
        let rank = |v: &[f64]| {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
            idx
        };
        let bi_order = rank(&imp.block_influence);
        let ppl_order = rank(&ppl);
        let _ = writeln!(
            report,
            "layer ranking (least important first); calibration perplexity {base:.3} with every layer ({} chunks)",
            ppl_chunks.len()
        );
        let _ = writeln!(report, "{:>4}  {:>5} {:>10}  {:>5} {:>10}", "rank", "layer", "BI", "layer", "ppl w/o");
        for r in 0..shape.n_layer {
            let (lb, lp) = (bi_order[r], ppl_order[r]);
            let _ = writeln!(report, "{r:>4}  {lb:>5} {:>10.5}  {lp:>5} {:>10.3}", imp.block_influence[lb], ppl[lp]);
        }
        let order = if a.depth_metric == "ppl" { &ppl_order } else { &bi_order };
        let mut drop: Vec<usize> = order[..n].to_vec();
        drop.sort_unstable();
        let _ = writeln!(report, "removing layers {drop:?} (by {})", a.depth_metric);
        depth_keep(&shape, &drop)
    } else if let Some(w) = &width {
        width_keep(&shape, &imp, w)?
    } else {
        return Err(CompressError::BadOption("give --width, --depth or --target-params".into()));
    };
    let to = keep.shape(&shape);
    let _ = writeln!(report, "from: {}", shape.describe());
    let _ = writeln!(report, "to:   {}", to.describe());
    crate::progress::out(&report)?;
    if a.dry_run {
        return Ok(());
    }
    let b = apply(&g, &shape, &keep, ty)?;
    write_gguf(&b, &a.output, a.force, &[&a.input, &a.file])?;
    crate::progress::note(&format!("prune: {} → {}", human(to.params()), a.output.display()));
    Ok(())
}
