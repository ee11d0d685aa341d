//! Hyper-parameters, read from GGUF metadata (nothing is assumed about a particular model).

use crate::gguf::Gguf;
use crate::{Error, Result};
use alloc::format;
use alloc::string::{String, ToString};

/// How rotary embedding pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (x[2i], x[2i+1]): GGUF llama files (the converter permutes Q/K for this).
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX style (qwen2, gemma).
    Neox,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub arch: String,
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
}

impl Config {
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self> {
        let arch = g.architecture()?.to_string();
        let rope_style = match arch.as_str() {
            "llama" => RopeStyle::Normal,
            other => return Err(Error::UnsupportedArch(other.to_string())),
        };
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
        let rope_theta = g.get_f32(&k("rope.freq_base"))?.unwrap_or(10000.0);
        if !(rope_theta > 1.0 && rope_theta.is_finite()) {
            return Err(bad(k("rope.freq_base"), format!("{rope_theta}")));
        }
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
        Ok(Config {
            arch,
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
        })
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
