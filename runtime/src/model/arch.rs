//! What differs between model families, as data. One [`Arch`] row per `general.architecture`
//! value; [`Config::from_gguf`](super::Config::from_gguf) reads the file's keys as the row says,
//! binding checks each tensor against the row's [`Need`]s, and the one forward pass in
//! `model/mod.rs` reads the resulting [`Config`](super::Config). Adding a family that fits this
//! shape (pre-norm decoder, RoPE, gated FFN) is one more row, not another layer loop.
//!
//! Each row was checked against the GGUF files themselves and llama.cpp's model code (b11312,
//! `src/models/{llama,qwen2,gemma3}.cpp`).

use super::config::RopeStyle;

/// Whether an architecture's layers carry an optional kind of tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Every layer has it; a file without it is refused (named error).
    Required,
    /// Used when present.
    Optional,
    /// Not part of this architecture: a file carrying it gets a warning (it is not used).
    Absent,
}

/// The feed-forward block's gate: `act(gate) · up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// SwiGLU: `silu(g) · u`.
    Silu,
    /// GeGLU with GELU's tanh approximation: `gelu(g) · u`.
    GeluTanh,
}

/// The query scale (the factor on `q·k` before the softmax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryScale {
    /// `1 / √head_dim` (the key length).
    KeyLength,
    /// gemma3: `1 / √head_dim`, except the 62-layer (27B) model, which was trained with
    /// `query_pre_attn_scalar = n_embd / n_head` (gemma_pytorch's config; llama.cpp decides by
    /// the layer count, as here, because the file does not say).
    Gemma3,
}

/// One model family's forward pass, described.
#[derive(Debug)]
pub struct Arch {
    /// `general.architecture`.
    pub name: &'static str,
    pub rope_style: RopeStyle,
    /// `rope.freq_base` when the file has none.
    pub default_rope_theta: f32,
    /// `blk.N.attn_{q,k,v}.bias`, (q_dim) / (kv_dim).
    pub qkv_bias: Need,
    /// `blk.N.attn_{q,k}_norm.weight`, (head_dim): RMSNorm of each query and key head before RoPE.
    pub qk_norm: Need,
    /// `blk.N.post_attention_norm.weight` and `blk.N.post_ffw_norm.weight`, (n_embd): RMSNorm of
    /// the attention and feed-forward outputs before each residual add.
    pub post_norms: Need,
    /// `output.weight`; when absent (and not `Required`) the embedding matrix is the output.
    pub output: Need,
    /// `rope_freqs.weight`, (rope_dim / 2): per-frequency divisors (llama 3.1 and later).
    pub rope_freqs: Need,
    pub gate: Gate,
    /// Embedding rows are multiplied by `√n_embd` (gemma).
    pub embd_scale_sqrt: bool,
    /// Reads `attention.sliding_window`; `Some(p)`: when the file gives no
    /// `attention.sliding_window_pattern`, every `p`-th layer (the last of each period) attends
    /// globally and the others over the window, with their own RoPE base
    /// (`rope.freq_base_swa`, default 10000) and no RoPE scaling.
    pub swa_period: Option<u32>,
    pub query_scale: QueryScale,
    /// Reads `final_logit_softcapping`: logits become `cap · tanh(logits / cap)`.
    pub logit_softcap: bool,
}

pub const LLAMA: Arch = Arch {
    name: "llama",
    rope_style: RopeStyle::Normal,
    default_rope_theta: 10000.0,
    qkv_bias: Need::Optional,
    qk_norm: Need::Absent,
    post_norms: Need::Absent,
    output: Need::Optional,
    rope_freqs: Need::Optional,
    gate: Gate::Silu,
    embd_scale_sqrt: false,
    swa_period: None,
    query_scale: QueryScale::KeyLength,
    logit_softcap: false,
};

pub const QWEN2: Arch =
    Arch { name: "qwen2", rope_style: RopeStyle::Neox, default_rope_theta: 10000.0, qkv_bias: Need::Required, ..LLAMA };

pub const GEMMA3: Arch = Arch {
    name: "gemma3",
    rope_style: RopeStyle::Neox,
    default_rope_theta: 1_000_000.0,
    qkv_bias: Need::Absent,
    qk_norm: Need::Required,
    post_norms: Need::Required,
    output: Need::Optional,
    rope_freqs: Need::Absent,
    gate: Gate::GeluTanh,
    embd_scale_sqrt: true,
    swa_period: Some(6),
    query_scale: QueryScale::Gemma3,
    logit_softcap: true,
};

/// Every architecture pith runs.
pub const ARCHES: &[&Arch] = &[&LLAMA, &QWEN2, &GEMMA3];

/// The row for `general.architecture = name`.
pub fn find(name: &str) -> Option<&'static Arch> {
    ARCHES.iter().copied().find(|a| a.name == name)
}
