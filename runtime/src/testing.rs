//! Fixtures for the workspace's test suites (the `test-util` feature, which only
//! dev-dependencies turn on): tiny llama-architecture GGUF files with random weights and,
//! optionally, an SPM tokenizer, written by the test itself, and a naive f64 reference forward
//! pass to check pith's against.

use crate::gguf::writer::{GgufBuilder, OwnedValue};
use pith_kernels::GgmlType;
use std::collections::HashMap;

pub struct TinySpec {
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
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
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
    let hd = spec.n_embd / spec.n_head;
    let (d, q, kv, ff) = (spec.n_embd, spec.n_embd, spec.n_head_kv * hd, spec.n_ff);
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", OwnedValue::String("llama".into()))
        .kv("general.name", OwnedValue::String("tiny".into()))
        .kv("llama.embedding_length", OwnedValue::U32(d as u32))
        .kv("llama.block_count", OwnedValue::U32(spec.n_layer as u32))
        .kv("llama.attention.head_count", OwnedValue::U32(spec.n_head as u32))
        .kv("llama.attention.head_count_kv", OwnedValue::U32(spec.n_head_kv as u32))
        .kv("llama.feed_forward_length", OwnedValue::U32(ff as u32))
        .kv("llama.context_length", OwnedValue::U32(256))
        .kv("llama.rope.freq_base", OwnedValue::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", OwnedValue::F32(1e-5));
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
    (b.to_bytes(), refw)
}

/// Naive f64 forward pass over `tokens` from position 0; returns logits for every position.
pub fn reference_logits(spec: &TinySpec, w: &RefWeights, tokens: &[u32]) -> Vec<Vec<f64>> {
    let hd = spec.n_embd / spec.n_head;
    let (d, kvd, ff, nv) = (spec.n_embd, spec.n_head_kv * hd, spec.n_ff, spec.n_vocab);
    let t = |name: &str| &w.tensors[name];
    let matvec = |m: &[f32], rows: usize, x: &[f64]| -> Vec<f64> {
        (0..rows).map(|r| (0..x.len()).map(|c| m[r * x.len() + c] as f64 * x[c]).sum()).collect()
    };
    let rms = |x: &[f64], g: &[f32]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + 1e-5).sqrt();
        x.iter().zip(g).map(|(v, &gi)| v * s * gi as f64).collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        for h in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let th = pos as f64 * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                let (a, b) = (h[2 * i], h[2 * i + 1]);
                h[2 * i] = a * th.cos() - b * th.sin();
                h[2 * i + 1] = a * th.sin() + b * th.cos();
            }
        }
    };
    let mut kc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); spec.n_layer];
    let mut vc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); spec.n_layer];
    let mut out = Vec::new();
    for (pos, &tok) in tokens.iter().enumerate() {
        let emb = t("token_embd.weight");
        let mut x: Vec<f64> = emb[tok as usize * d..(tok as usize + 1) * d].iter().map(|&v| v as f64).collect();
        for l in 0..spec.n_layer {
            let n = |s: &str| format!("blk.{l}.{s}");
            let xb = rms(&x, t(&n("attn_norm.weight")));
            let mut q = matvec(t(&n("attn_q.weight")), d, &xb);
            let mut k = matvec(t(&n("attn_k.weight")), kvd, &xb);
            let v = matvec(t(&n("attn_v.weight")), kvd, &xb);
            rope(&mut q, pos);
            rope(&mut k, pos);
            kc[l].push(k);
            vc[l].push(v);
            let mut att = vec![0.0; d];
            for h in 0..spec.n_head {
                let kh = h / (spec.n_head / spec.n_head_kv);
                let qh = &q[h * hd..(h + 1) * hd];
                let sc: Vec<f64> = (0..=pos)
                    .map(|p| (0..hd).map(|i| qh[i] * kc[l][p][kh * hd + i]).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for p in 0..=pos {
                    for i in 0..hd {
                        att[h * hd + i] += e[p] / z * vc[l][p][kh * hd + i];
                    }
                }
            }
            let o = matvec(t(&n("attn_output.weight")), d, &att);
            for i in 0..d {
                x[i] += o[i];
            }
            let xb = rms(&x, t(&n("ffn_norm.weight")));
            let g = matvec(t(&n("ffn_gate.weight")), ff, &xb);
            let u = matvec(t(&n("ffn_up.weight")), ff, &xb);
            let h: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let o = matvec(t(&n("ffn_down.weight")), d, &h);
            for i in 0..d {
                x[i] += o[i];
            }
        }
        let xb = rms(&x, t("output_norm.weight"));
        let ow = if spec.tied { t("token_embd.weight") } else { t("output.weight") };
        out.push(matvec(ow, nv, &xb));
    }
    out
}
