//! Fixtures for the workspace's test suites (the `test-util` feature, which only
//! dev-dependencies turn on): tiny GGUF files of every architecture pith runs (llama, qwen2,
//! gemma3) with random weights and, optionally, an SPM tokenizer, written by the test itself,
//! and a naive f64 reference forward pass — written from the families' papers and llama.cpp's
//! graphs, independently of pith's forward pass — to check pith's against.

use crate::gguf::writer::{GgufBuilder, OwnedValue};
use pith_kernels::GgmlType;
use std::collections::HashMap;

pub struct TinySpec {
    /// `general.architecture`: "llama", "qwen2" or "gemma3".
    pub arch: &'static str,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub weight_type: GgmlType,
    /// The token embedding's type; `None`: Q8_0 when `weight_type` is quantized, else
    /// `weight_type`.
    pub embd_type: Option<GgmlType>,
    pub tied: bool,
    pub seed: u64,
    /// A tokenizer (`tokenizer.ggml.*`, SPM) over these tokens, laid out as [`spm_vocab`] makes
    /// them; `n_vocab` must be their number.
    pub vocab: Option<Vec<String>>,
    /// Head dimension (`attention.key_length`); `None`: n_embd / n_head.
    pub head_dim: Option<usize>,
    /// gemma3: (`attention.sliding_window`, `attention.sliding_window_pattern` as a period).
    pub sliding_window: Option<(usize, u32)>,
    /// llama: a `rope_freqs.weight` of divisors (llama 3.1 style).
    pub rope_freqs: bool,
    /// gemma3: `final_logit_softcapping`.
    pub softcap: Option<f32>,
}

impl TinySpec {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }
    fn rope_base(&self) -> f64 {
        if self.arch == "llama" {
            10000.0
        } else {
            1e6
        }
    }
    /// The window layer `l` attends over, if any.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.sliding_window.filter(|&(_, p)| p == 0 || (l as u32 % p) < p - 1).map(|(w, _)| w)
    }
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            arch: "llama",
            n_vocab: 96,
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            weight_type: GgmlType::F32,
            embd_type: None,
            tied: false,
            seed: 1,
            vocab: None,
            head_dim: None,
            sliding_window: None,
            rope_freqs: false,
            softcap: None,
        }
    }
}

/// A small deterministic generator (splitmix64) so fixtures need no extra crates.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// An SPM vocabulary (the model adds BOS): <unk> <s> </s>, 256 byte tokens, ▁, the letters,
/// `words` (with ▁), then `extra` unused tokens.
pub fn spm_vocab(words: &[&str], extra: usize) -> Vec<String> {
    let mut t: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    t.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    t.push("▁".into());
    t.extend(('a'..='z').map(|c| c.to_string()));
    t.extend(words.iter().map(|w| format!("▁{w}")));
    t.extend((0..extra).map(|i| format!("extra{i}")));
    t
}

/// Dequantized (exact) weights as the file holds them, for the reference.
pub struct RefWeights {
    pub tensors: HashMap<String, Vec<f32>>,
}

/// Builds the GGUF bytes and the reference copy of the weights.
pub fn build(spec: &TinySpec) -> (Vec<u8>, RefWeights) {
    let mut rng = Rng(spec.seed);
    let hd = spec.head_dim();
    let (d, q, kv, ff) = (spec.n_embd, spec.n_head * hd, spec.n_head_kv * hd, spec.n_ff);
    let a = spec.arch;
    let key = |k: &str| format!("{a}.{k}");
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", OwnedValue::String(a.into()))
        .kv("general.name", OwnedValue::String("tiny".into()))
        .kv(&key("embedding_length"), OwnedValue::U32(d as u32))
        .kv(&key("block_count"), OwnedValue::U32(spec.n_layer as u32))
        .kv(&key("attention.head_count"), OwnedValue::U32(spec.n_head as u32))
        .kv(&key("attention.head_count_kv"), OwnedValue::U32(spec.n_head_kv as u32))
        .kv(&key("feed_forward_length"), OwnedValue::U32(ff as u32))
        .kv(&key("context_length"), OwnedValue::U32(256))
        .kv(&key("rope.freq_base"), OwnedValue::F32(spec.rope_base() as f32))
        .kv(&key("attention.layer_norm_rms_epsilon"), OwnedValue::F32(1e-5));
    if spec.head_dim.is_some() {
        b.kv(&key("attention.key_length"), OwnedValue::U32(hd as u32));
        b.kv(&key("attention.value_length"), OwnedValue::U32(hd as u32));
    }
    if let Some((w, p)) = spec.sliding_window {
        b.kv(&key("attention.sliding_window"), OwnedValue::U32(w as u32));
        b.kv(&key("attention.sliding_window_pattern"), OwnedValue::U32(p));
    }
    if let Some(c) = spec.softcap {
        b.kv(&key("final_logit_softcapping"), OwnedValue::F32(c));
    }
    if let Some(toks) = &spec.vocab {
        assert_eq!(toks.len(), spec.n_vocab, "n_vocab is the tokenizer's");
        let types: Vec<i32> = (0..toks.len())
            .map(|i| match i {
                0 => 2,
                1 | 2 => 3,
                3..=258 => 6,
                _ => 1,
            })
            .collect();
        let scores: Vec<f32> =
            toks.iter().enumerate().map(|(i, t)| if i >= 259 { -(t.chars().count() as f32) } else { 0.0 }).collect();
        b.kv("tokenizer.ggml.model", OwnedValue::String("llama".into()))
            .kv("tokenizer.ggml.tokens", OwnedValue::strings(toks.iter().cloned()))
            .kv("tokenizer.ggml.scores", OwnedValue::f32s(scores))
            .kv("tokenizer.ggml.token_type", OwnedValue::i32s(types));
    }
    let mut refw = RefWeights { tensors: Default::default() };
    let mut mat = |b: &mut GgufBuilder, name: &str, rows: usize, cols: usize, ty: GgmlType, scale: f32| {
        let vals: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * scale).collect();
        let rb = ty.row_bytes(cols).expect("row fits the block size");
        let mut data = vec![0u8; rb * rows];
        let mut deq = vec![0f32; rows * cols];
        for r in 0..rows {
            pith_kernels::quantize_row(ty, &vals[r * cols..(r + 1) * cols], &mut data[r * rb..(r + 1) * rb]);
            pith_kernels::dequantize_row(ty, &data[r * rb..(r + 1) * rb], &mut deq[r * cols..(r + 1) * cols]);
        }
        let dims: Vec<u64> = if rows == 1 { vec![cols as u64] } else { vec![cols as u64, rows as u64] };
        b.tensor(name, &dims, ty, data);
        refw.tensors.insert(name.to_string(), deq);
    };
    let wt = spec.weight_type;
    let et = spec.embd_type.unwrap_or(if wt.is_quantized() { GgmlType::Q8_0 } else { wt });
    // Embeddings are large-ish in magnitude so the residual stream is not dominated by noise.
    mat(&mut b, "token_embd.weight", spec.n_vocab, d, et, 1.0);
    for l in 0..spec.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}");
        mat(&mut b, &n("attn_norm.weight"), 1, d, GgmlType::F32, 1.0);
        mat(&mut b, &n("attn_q.weight"), q, d, wt, 0.3);
        mat(&mut b, &n("attn_k.weight"), kv, d, wt, 0.3);
        mat(&mut b, &n("attn_v.weight"), kv, d, wt, 0.3);
        if a == "qwen2" {
            mat(&mut b, &n("attn_q.bias"), 1, q, GgmlType::F32, 0.5);
            mat(&mut b, &n("attn_k.bias"), 1, kv, GgmlType::F32, 0.5);
            mat(&mut b, &n("attn_v.bias"), 1, kv, GgmlType::F32, 0.5);
        }
        if a == "gemma3" {
            mat(&mut b, &n("attn_q_norm.weight"), 1, hd, GgmlType::F32, 1.0);
            mat(&mut b, &n("attn_k_norm.weight"), 1, hd, GgmlType::F32, 1.0);
            mat(&mut b, &n("post_attention_norm.weight"), 1, d, GgmlType::F32, 1.0);
            mat(&mut b, &n("post_ffw_norm.weight"), 1, d, GgmlType::F32, 1.0);
        }
        mat(&mut b, &n("attn_output.weight"), d, q, wt, 0.2);
        mat(&mut b, &n("ffn_norm.weight"), 1, d, GgmlType::F32, 1.0);
        mat(&mut b, &n("ffn_gate.weight"), ff, d, wt, 0.2);
        mat(&mut b, &n("ffn_up.weight"), ff, d, wt, 0.2);
        mat(&mut b, &n("ffn_down.weight"), d, ff, wt, 0.2);
    }
    mat(&mut b, "output_norm.weight", 1, d, GgmlType::F32, 1.0);
    if !spec.tied {
        mat(&mut b, "output.weight", spec.n_vocab, d, wt, 0.5);
    }
    if spec.rope_freqs {
        // Divisors in [1, 8): llama 3.1's long-wavelength factors, at random.
        let f: Vec<f32> = (0..hd / 2).map(|_| 4.5 + 3.5 * rng.uniform()).collect();
        refw.tensors.insert("rope_freqs.weight".to_string(), f.clone());
        b.tensor(
            "rope_freqs.weight",
            &[(hd / 2) as u64],
            GgmlType::F32,
            f.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
    }
    (b.to_bytes(), refw)
}

/// What the reference forward pass shows a [`reference_forward`] caller, in order, per token.
pub enum RefStep<'s> {
    /// The residual entering layer `l` (`l = n_layer`: after the last layer).
    Residual(usize, &'s [f64]),
    /// A normed vector: each layer's attention then feed-forward norm, then the output norm.
    Normed(&'s [f64]),
    /// Layer `l`'s attention output (all heads, before `attn_output`).
    Attention(usize, &'s [f64]),
    /// Layer `l`'s gated feed-forward activation (the input of `ffn_down`).
    Gated(usize, &'s [f64]),
}

/// Naive f64 forward pass over `tokens` from position 0; returns logits for every position.
pub fn reference_logits(spec: &TinySpec, w: &RefWeights, tokens: &[u32]) -> Vec<Vec<f64>> {
    reference_forward(spec, w, tokens, &mut |_| {})
}

/// [`reference_logits`], showing its intermediate activations to `see` (the compression tool's
/// importance scores are checked against these).
pub fn reference_forward(
    spec: &TinySpec,
    w: &RefWeights,
    tokens: &[u32],
    see: &mut dyn FnMut(RefStep<'_>),
) -> Vec<Vec<f64>> {
    let hd = spec.head_dim();
    let (d, qd, kvd, ff, nv) = (spec.n_embd, spec.n_head * hd, spec.n_head_kv * hd, spec.n_ff, spec.n_vocab);
    let (gemma, neox) = (spec.arch == "gemma3", spec.arch != "llama");
    let t = |name: &str| &w.tensors[name];
    let matvec = |m: &[f32], rows: usize, x: &[f64]| -> Vec<f64> {
        (0..rows).map(|r| (0..x.len()).map(|c| m[r * x.len() + c] as f64 * x[c]).sum()).collect()
    };
    let rms = |x: &[f64], g: &[f32]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + 1e-5).sqrt();
        x.iter().zip(g).map(|(v, &gi)| v * s * gi as f64).collect()
    };
    let add = |x: &mut [f64], o: &[f64]| x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
    // RoPE: llama rotates adjacent pairs (its converter permutes Q/K rows for that), NeoX-style
    // families rotate the two halves of each head.
    let rope = |v: &mut [f64], pos: usize, base: f64, divisors: Option<&Vec<f32>>| {
        for h in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let div = divisors.map_or(1.0, |f| f[i] as f64);
                let th = pos as f64 * base.powf(-2.0 * i as f64 / hd as f64) / div;
                let (ia, ib) = if neox { (i, i + hd / 2) } else { (2 * i, 2 * i + 1) };
                let (a, b) = (h[ia], h[ib]);
                h[ia] = a * th.cos() - b * th.sin();
                h[ib] = a * th.sin() + b * th.cos();
            }
        }
    };
    let mut kc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); spec.n_layer];
    let mut vc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); spec.n_layer];
    let mut out = Vec::new();
    for (pos, &tok) in tokens.iter().enumerate() {
        let emb = t("token_embd.weight");
        let mut x: Vec<f64> = emb[tok as usize * d..(tok as usize + 1) * d].iter().map(|&v| v as f64).collect();
        if gemma {
            x.iter_mut().for_each(|v| *v *= (d as f64).sqrt());
        }
        for l in 0..spec.n_layer {
            see(RefStep::Residual(l, &x));
            let n = |s: &str| format!("blk.{l}.{s}");
            let xb = rms(&x, t(&n("attn_norm.weight")));
            see(RefStep::Normed(&xb));
            let mut q = matvec(t(&n("attn_q.weight")), qd, &xb);
            let mut k = matvec(t(&n("attn_k.weight")), kvd, &xb);
            let mut v = matvec(t(&n("attn_v.weight")), kvd, &xb);
            if spec.arch == "qwen2" {
                add(&mut q, &t(&n("attn_q.bias")).iter().map(|&b| b as f64).collect::<Vec<_>>());
                add(&mut k, &t(&n("attn_k.bias")).iter().map(|&b| b as f64).collect::<Vec<_>>());
                add(&mut v, &t(&n("attn_v.bias")).iter().map(|&b| b as f64).collect::<Vec<_>>());
            }
            if gemma {
                q = q.chunks(hd).flat_map(|h| rms(h, t(&n("attn_q_norm.weight")))).collect();
                k = k.chunks(hd).flat_map(|h| rms(h, t(&n("attn_k_norm.weight")))).collect();
            }
            let window = spec.window(l);
            // Windowed layers use gemma's local RoPE base (10000), the others the file's.
            let base = if window.is_some() { 10000.0 } else { spec.rope_base() };
            let divisors = if spec.rope_freqs { Some(t("rope_freqs.weight")) } else { None };
            rope(&mut q, pos, base, divisors);
            rope(&mut k, pos, base, divisors);
            kc[l].push(k);
            vc[l].push(v);
            let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let mut att = vec![0.0; qd];
            for h in 0..spec.n_head {
                let kh = h / (spec.n_head / spec.n_head_kv);
                let qh = &q[h * hd..(h + 1) * hd];
                let sc: Vec<f64> = (lo..=pos)
                    .map(|p| (0..hd).map(|i| qh[i] * kc[l][p][kh * hd + i]).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, p) in (lo..=pos).enumerate() {
                    for i in 0..hd {
                        att[h * hd + i] += e[j] / z * vc[l][p][kh * hd + i];
                    }
                }
            }
            see(RefStep::Attention(l, &att));
            let mut o = matvec(t(&n("attn_output.weight")), d, &att);
            if gemma {
                o = rms(&o, t(&n("post_attention_norm.weight")));
            }
            add(&mut x, &o);
            let xb = rms(&x, t(&n("ffn_norm.weight")));
            see(RefStep::Normed(&xb));
            let g = matvec(t(&n("ffn_gate.weight")), ff, &xb);
            let u = matvec(t(&n("ffn_up.weight")), ff, &xb);
            let act = |g: f64| {
                if gemma {
                    // GELU, tanh form.
                    0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh())
                } else {
                    g / (1.0 + (-g).exp())
                }
            };
            let h: Vec<f64> = g.iter().zip(&u).map(|(&g, u)| act(g) * u).collect();
            see(RefStep::Gated(l, &h));
            let mut o = matvec(t(&n("ffn_down.weight")), d, &h);
            if gemma {
                o = rms(&o, t(&n("post_ffw_norm.weight")));
            }
            add(&mut x, &o);
        }
        see(RefStep::Residual(spec.n_layer, &x));
        let xb = rms(&x, t("output_norm.weight"));
        see(RefStep::Normed(&xb));
        let ow = if spec.tied { t("token_embd.weight") } else { t("output.weight") };
        let mut logits = matvec(ow, nv, &xb);
        if let Some(c) = spec.softcap {
            logits.iter_mut().for_each(|v| *v = c as f64 * (*v / c as f64).tanh());
        }
        out.push(logits);
    }
    out
}
