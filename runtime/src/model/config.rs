//! Hyper-parameters, read from GGUF metadata (nothing is assumed about a particular model).

use super::arch::{self, Arch, QueryScale};
use crate::gguf::Gguf;
use crate::{Error, Result};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// How rotary embedding pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (x[2i], x[2i+1]): GGUF llama files (the converter permutes Q/K for this).
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX style (qwen2, gemma).
    Neox,
}

/// Sliding-window attention (gemma3's local layers).
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// A query at position `p` sees keys at `p - window + 1 ..= p`.
    pub window: usize,
    /// Which layers attend over the window (the others attend globally). (n_layer)
    pub layers: Vec<bool>,
    /// RoPE base of the windowed layers (they use no RoPE scaling).
    pub rope_theta: f32,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub arch: String,
    /// The architecture's description (which tensors, norms, gate, scales).
    pub traits: &'static Arch,
    pub n_vocab: usize,
    /// Model width (embedding length).
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Hidden size of the feed-forward block.
    pub n_ff: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Dimensions rotated per head (≤ head_dim).
    pub rope_dim: usize,
    /// Multiplier on positions (1 / linear scaling factor).
    pub rope_freq_scale: f32,
    pub rope_style: RopeStyle,
    /// Factor on `q·k` before the softmax.
    pub attn_scale: f32,
    /// Factor on embedding rows (`√n_embd` for gemma, else 1).
    pub embd_scale: f32,
    pub sliding_window: Option<SlidingWindow>,
    /// `logits = cap · tanh(logits / cap)`.
    pub logit_softcap: Option<f32>,
}

impl Config {
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self> {
        let arch = g.architecture()?.to_string();
        let traits = arch::find(&arch).ok_or_else(|| Error::UnsupportedArch(arch.clone()))?;
        let rope_style = traits.rope_style;
        let k = |s: &str| format!("{arch}.{s}");
        let req = |s: &str| -> Result<usize> {
            let key = k(s);
            let v = g.require_u64(&key)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= (1 << 24))
                .ok_or(Error::BadHyperParam { key, reason: format!("{v} is out of range") })
        };
        let n_embd = req("embedding_length")?;
        let n_layer = req("block_count")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = match g.get_u64(&k("attention.head_count_kv"))? {
            Some(_) => req("attention.head_count_kv")?,
            None => n_head,
        };
        let n_ff = req("feed_forward_length")?;
        let n_ctx_train = req("context_length")?;
        let head_dim = match g.get_u64(&k("attention.key_length"))? {
            Some(_) => req("attention.key_length")?,
            None => n_embd / n_head,
        };
        let bad = |key: String, reason: String| Error::BadHyperParam { key, reason };
        if n_head % n_head_kv != 0 {
            return Err(bad(
                k("attention.head_count_kv"),
                format!("{n_head} heads is not a multiple of {n_head_kv} KV heads"),
            ));
        }
        if head_dim % 2 != 0 || head_dim == 0 {
            return Err(bad(k("attention.key_length"), format!("head dimension {head_dim} must be even")));
        }
        if let Some(v) = g.get_u64(&k("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(bad(k("attention.value_length"), format!("{v} differs from key length {head_dim}")));
            }
        }
        let rope_dim = match g.get_u64(&k("rope.dimension_count"))? {
            Some(_) => req("rope.dimension_count")?,
            None => head_dim,
        };
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(bad(k("rope.dimension_count"), format!("{rope_dim} must be even and ≤ head dim {head_dim}")));
        }
        let rms_eps = g.get_f32(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        if !(rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(bad(k("attention.layer_norm_rms_epsilon"), format!("{rms_eps}")));
        }
        let rope_base = |key: &str, default: f32| -> Result<f32> {
            let v = g.get_f32(&k(key))?.unwrap_or(default);
            if !(v > 1.0 && v.is_finite()) {
                return Err(bad(k(key), format!("{v}")));
            }
            Ok(v)
        };
        let rope_theta = rope_base("rope.freq_base", traits.default_rope_theta)?;
        let mut rope_freq_scale = 1.0;
        match g.get_str(&k("rope.scaling.type"))? {
            None | Some("none") => {}
            Some("linear") => {
                let f = g.get_f32(&k("rope.scaling.factor"))?.unwrap_or(1.0);
                if !(f > 0.0 && f.is_finite()) {
                    return Err(bad(k("rope.scaling.factor"), format!("{f}")));
                }
                rope_freq_scale = 1.0 / f;
            }
            Some(other) => return Err(bad(k("rope.scaling.type"), format!("'{other}' is not supported"))),
        }
        // Vocabulary size: the explicit key, else the embedding matrix's row count.
        let n_vocab = match g.get_u64(&k("vocab_size"))? {
            Some(_) => req("vocab_size")?,
            None => g
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or_else(|| Error::MissingTensor("token_embd.weight".to_string()))? as usize,
        };
        let sliding_window = match traits.swa_period {
            None => None,
            Some(period) => sliding_window(g, &k, n_layer, period, rope_base("rope.freq_base_swa", 10000.0)?)?,
        };
        let attn_scale = match traits.query_scale {
            QueryScale::Gemma3 if n_layer == 62 => 1.0 / libm::sqrtf((n_embd / n_head) as f32),
            QueryScale::Gemma3 | QueryScale::KeyLength => 1.0 / libm::sqrtf(head_dim as f32),
        };
        let embd_scale = if traits.embd_scale_sqrt { libm::sqrtf(n_embd as f32) } else { 1.0 };
        let logit_softcap = match traits.logit_softcap {
            false => None,
            true => match g.get_f32(&k("final_logit_softcapping"))? {
                None | Some(0.0) => None,
                Some(c) if c > 0.0 && c.is_finite() => Some(c),
                Some(c) => return Err(bad(k("final_logit_softcapping"), format!("{c} must be positive"))),
            },
        };
        Ok(Config {
            arch,
            traits,
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rms_eps,
            rope_theta,
            rope_dim,
            rope_freq_scale,
            rope_style,
            attn_scale,
            embd_scale,
            sliding_window,
            logit_softcap,
        })
    }

    /// The window layer `il` attends over, or `None` for the whole context.
    pub fn window(&self, il: usize) -> Option<usize> {
        self.sliding_window.as_ref().filter(|s| s.layers[il]).map(|s| s.window)
    }

    /// Width of the query projection (n_head × head_dim).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Width of the key/value projections (n_head_kv × head_dim).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// `attention.sliding_window` (0 or absent: none, as in llama.cpp) and which layers use it:
/// `attention.sliding_window_pattern` as one bool per layer, or as a period `p` (every `p`-th
/// layer global; 0: every layer windowed), or the architecture's default period.
fn sliding_window(
    g: &Gguf<'_>,
    k: &dyn Fn(&str) -> String,
    n_layer: usize,
    default_period: u32,
    rope_theta: f32,
) -> Result<Option<SlidingWindow>> {
    let bad = |key: &str, reason: String| Error::BadHyperParam { key: k(key), reason };
    let window = match g.get_u64(&k("attention.sliding_window"))? {
        None | Some(0) => return Ok(None),
        Some(w) if w > 1 << 24 => return Err(bad("attention.sliding_window", format!("{w} is out of range"))),
        Some(w) => w as usize,
    };
    let key = "attention.sliding_window_pattern";
    let layers = match g.get(&k(key)) {
        None => period_layers(n_layer, default_period),
        Some(crate::gguf::Value::Array(a)) => {
            let flags: Vec<bool> = a
                .iter()
                .map(|v| match v {
                    crate::gguf::Value::Bool(b) => Some(b),
                    other => other.as_u64().map(|i| i != 0),
                })
                .collect::<Option<_>>()
                .ok_or_else(|| bad(key, "an array that is not of bools".to_string()))?;
            if flags.len() != n_layer {
                return Err(bad(key, format!("{} entries for {n_layer} layers", flags.len())));
            }
            flags
        }
        Some(v) => {
            let p = v.as_u64().ok_or_else(|| bad(key, "neither a number nor an array of bools".to_string()))?;
            let p = u32::try_from(p).map_err(|_| bad(key, format!("{p} is out of range")))?;
            period_layers(n_layer, p)
        }
    };
    Ok(Some(SlidingWindow { window, layers, rope_theta }))
}

/// Layers windowed by a period `p`: all but the last of every `p` (all of them when `p` is 0).
fn period_layers(n_layer: usize, p: u32) -> Vec<bool> {
    (0..n_layer).map(|il| p == 0 || (il as u64 % p as u64) < p as u64 - 1).collect()
}
