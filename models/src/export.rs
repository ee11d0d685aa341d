//! `pith-compress export` (a llama GGUF → a Hugging Face model folder) and `pith-compress
//! convert` (back), so that a model pruned with pith can be trained elsewhere (torchtune, NeMo,
//! transformers) and come back.
//!
//! * **Weights**: `model.safetensors` under the Hugging Face llama names. F32, F16 and BF16
//!   tensors keep their type and bytes; quantized ones are dequantized to F32 (exactly: every
//!   quantized value is a product of an f16 scale and a small integer, which f32 holds).
//! * **Q and K**: llama.cpp's `convert_hf_to_gguf.py` permutes the rows of `q_proj` and
//!   `k_proj` (`reshape(n_head, 2, head_dim / 2, n_embd).swapaxes(1, 2)`): Hugging Face rotates
//!   the two halves of a head, ggml adjacent pairs. Export undoes it, convert re-applies it.
//! * **Metadata**: `config.json` (LlamaForCausalLM), `tokenizer.json` (byte-level BPE: the
//!   vocabulary, merges and the pre-tokenizer regexes llama.cpp uses for the file's
//!   `tokenizer.ggml.pre`; SentencePiece: transformers' byte-fallback BPE form, merges derived
//!   from the scores), `tokenizer_config.json` (special tokens, chat template),
//!   `generation_config.json`. Everything else — GGUF keys Hugging Face has no place for
//!   (`general.name`, `tokenizer.ggml.pre`, ...), the order and value type of every key, the
//!   order of the tensors — goes into a `pith_gguf_metadata` entry of `config.json`: a key's
//!   value is carried there only when reading the Hugging Face files back does not give it
//!   again. So an F32/F16/BF16 GGUF exported and converted back is the same file, byte for
//!   byte, while what Hugging Face does hold is read from its files (the weights and the
//!   hyper-parameters always; the tokenizer unless export had to carry it), so edits made
//!   there (a distilled model's weights, a pruned config) win.
//!
//! Output folders are written whole or not at all (a temporary folder beside the destination,
//! renamed into place). The other direction is [`crate::convert`]; the two share the names,
//! the permutation and the metadata encoding defined here.

use crate::convert::{derive_metadata, file_type_of, ggml_type_of};
use crate::error::{CompressError, Result};
use crate::quantize::to_f32;
use pith::file::MappedFile;
use pith::gguf::writer::OwnedValue;
use pith::gguf::{Gguf, TensorInfo, ValueType};
use pith_fetch::cleanup::Tracked;
use pith_kernels::GgmlType;
use safetensors::Dtype;
use serde_json::{json, Map, Value as Json};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The `config.json` entry holding what Hugging Face has no place for.
pub const CARRY_KEY: &str = "pith_gguf_metadata";

/// GGUF keys that always come from the Hugging Face config (a carried value never overrides
/// them): the hyper-parameters. (`general.file_type` is carried only when export changed no
/// tensor's type and convert is given no `--type`.)
pub(crate) const HF_HOMED: &[&str] = &[
    "general.architecture",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.attention.key_length",
    "llama.attention.value_length",
    "llama.vocab_size",
    "llama.rope.dimension_count",
];

/// Per-layer tensors: GGUF name, Hugging Face name (both without `.weight`).
pub(crate) const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

pub(crate) fn model_err(what: impl std::fmt::Display, why: impl Into<String>) -> CompressError {
    CompressError::Model { what: what.to_string(), why: why.into() }
}

pub(crate) fn tensor_err(tensor: &str, why: impl Into<String>) -> CompressError {
    CompressError::Tensor { tensor: tensor.into(), why: why.into() }
}

/// GGUF ↔ Hugging Face names of the tensors outside the layers.
const TOP_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The Hugging Face name of a GGUF llama tensor.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = TOP_NAMES.iter().find(|(g, _)| *g == gguf) {
        return Some((*hf).into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let base = rest.strip_suffix(".weight")?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == base)?;
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// The GGUF name of a Hugging Face llama tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = TOP_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some((*g).into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let base = rest.strip_suffix(".weight")?;
    let (g, _) = LAYER_NAMES.iter().find(|(_, h)| *h == base)?;
    Some(format!("blk.{layer}.{g}.weight"))
}

/// Reorders the rows of a Q or K projection (`rows` rows of `row_bytes` bytes, `n_head` heads)
/// between llama.cpp's layout and Hugging Face's: within each head, Hugging Face row
/// `j * head_dim / 2 + i` is GGUF row `2 * i + j` (`j` in 0..2). `to_hf`: GGUF → Hugging Face.
pub fn permute_qk(data: &[u8], rows: usize, n_head: usize, to_hf: bool) -> Option<Vec<u8>> {
    if rows == 0
        || n_head == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
        || !data.len().is_multiple_of(rows)
    {
        return None;
    }
    let (hd, rb) = (rows / n_head, data.len() / rows);
    let half = hd / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let hf = h * hd + j * half + i;
                let gg = h * hd + 2 * i + j;
                let (src, dst) = if to_hf { (gg, hf) } else { (hf, gg) };
                out[dst * rb..(dst + 1) * rb].copy_from_slice(&data[src * rb..(src + 1) * rb]);
            }
        }
    }
    Some(out)
}

/// A tensor of a Hugging Face model: its name, type, shape (PyTorch order) and bytes.
#[derive(Clone, Debug)]
pub struct HfTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A Hugging Face model folder in memory.
#[derive(Clone, Debug)]
pub struct HfModel {
    pub config: Json,
    pub tokenizer: Option<Json>,
    pub tokenizer_config: Option<Json>,
    pub generation_config: Option<Json>,
    /// `chat_template.jinja` (where transformers 5 saves the template).
    pub chat_template: Option<String>,
    pub tensors: Vec<HfTensor>,
}

/// The llama hyper-parameters both directions need.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Hyper {
    pub(crate) n_embd: usize,
    pub(crate) n_layer: usize,
    pub(crate) n_head: usize,
    pub(crate) n_head_kv: usize,
    pub(crate) n_ff: usize,
    pub(crate) head_dim: usize,
    pub(crate) n_ctx: usize,
    pub(crate) n_vocab: usize,
    pub(crate) eps: f32,
    pub(crate) theta: f32,
}

impl Hyper {
    /// Refuses sizes no model has (they would only overflow the shape arithmetic).
    pub(crate) fn checked(self, what: &str, n_tensors: usize) -> Result<Self> {
        let sizes = [self.n_embd, self.n_ff, self.head_dim, self.n_head, self.n_head_kv, self.n_vocab];
        if sizes.iter().any(|&v| v == 0 || v > 1 << 26) {
            return Err(model_err(what, format!("implausible sizes {self:?}")));
        }
        if self.n_layer == 0 || self.n_layer * LAYER_NAMES.len() > n_tensors {
            return Err(model_err(what, format!("{} layers, but there are only {n_tensors} tensors", self.n_layer)));
        }
        Ok(self)
    }

    /// The Hugging Face shape (rows, columns; one number for a vector) of GGUF tensor `name`.
    pub(crate) fn shape_of(&self, gguf: &str) -> Option<Vec<usize>> {
        let (d, q, kv, ff) = (self.n_embd, self.n_head * self.head_dim, self.n_head_kv * self.head_dim, self.n_ff);
        Some(match gguf {
            "token_embd.weight" | "output.weight" => vec![self.n_vocab, d],
            "output_norm.weight" => vec![d],
            _ => {
                let rest = gguf.strip_prefix("blk.")?.split_once('.')?.1.strip_suffix(".weight")?;
                match rest {
                    "attn_norm" | "ffn_norm" => vec![d],
                    "attn_q" => vec![q, d],
                    "attn_k" | "attn_v" => vec![kv, d],
                    "attn_output" => vec![d, q],
                    "ffn_gate" | "ffn_up" => vec![ff, d],
                    "ffn_down" => vec![d, ff],
                    _ => return None,
                }
            }
        })
    }

    /// The GGUF tensors a model with these parameters has, in llama.cpp's order.
    pub(crate) fn tensor_names(&self, tied: bool) -> Vec<String> {
        let mut v = vec!["token_embd.weight".to_string()];
        for l in 0..self.n_layer {
            v.extend(LAYER_NAMES.iter().map(|(g, _)| format!("blk.{l}.{g}.weight")));
        }
        v.push("output_norm.weight".into());
        if !tied {
            v.push("output.weight".into());
        }
        v
    }

    /// Heads of the projection `gguf`, if it is a Q or K projection.
    pub(crate) fn permuted_heads(&self, gguf: &str) -> Option<usize> {
        if gguf.ends_with(".attn_q.weight") {
            Some(self.n_head)
        } else if gguf.ends_with(".attn_k.weight") {
            Some(self.n_head_kv)
        } else {
            None
        }
    }
}

/// An f32 as a JSON number that reads back (as f64, then rounded to f32) as the same f32: its
/// shortest decimal form when that does (`1e-5`, not `9.999999747378752e-6`), else its exact
/// value.
fn f32_json(x: f32) -> Json {
    if !x.is_finite() {
        return json!(x.to_string());
    }
    let short: f64 = x.to_string().parse().unwrap_or(x as f64);
    json!(if short as f32 == x { short } else { x as f64 })
}

pub(crate) fn json_f32(j: &Json) -> Option<f32> {
    match j {
        Json::String(s) => s.parse().ok(),
        _ => j.as_f64().map(|v| v as f32),
    }
}

pub(crate) fn json_f64(j: &Json) -> Option<f64> {
    match j {
        Json::String(s) => s.parse().ok(),
        _ => j.as_f64(),
    }
}

// ---- GGUF metadata values as JSON ------------------------------------------------------------

fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "u8",
        ValueType::I8 => "i8",
        ValueType::U16 => "u16",
        ValueType::I16 => "i16",
        ValueType::U32 => "u32",
        ValueType::I32 => "i32",
        ValueType::F32 => "f32",
        ValueType::Bool => "bool",
        ValueType::String => "string",
        ValueType::Array => "array",
        ValueType::U64 => "u64",
        ValueType::I64 => "i64",
        ValueType::F64 => "f64",
    }
}

fn type_of_name(s: &str) -> Option<ValueType> {
    (0..=12).filter_map(ValueType::from_id).find(|&t| type_name(t) == s)
}

/// `u32`, `string`, `array<i32>`, ...
fn full_type_name(v: &OwnedValue) -> String {
    match v {
        OwnedValue::Array(t, _) => format!("array<{}>", type_name(*t)),
        _ => type_name(v.value_type()).into(),
    }
}

pub(crate) fn parse_full_type(s: &str) -> Option<(ValueType, Option<ValueType>)> {
    if let Some(inner) = s.strip_prefix("array<").and_then(|r| r.strip_suffix('>')) {
        return Some((ValueType::Array, Some(type_of_name(inner)?)));
    }
    let t = type_of_name(s)?;
    (t != ValueType::Array).then_some((t, None))
}

fn value_to_json(v: &OwnedValue) -> Json {
    match v {
        OwnedValue::U8(x) => json!(x),
        OwnedValue::I8(x) => json!(x),
        OwnedValue::U16(x) => json!(x),
        OwnedValue::I16(x) => json!(x),
        OwnedValue::U32(x) => json!(x),
        OwnedValue::I32(x) => json!(x),
        OwnedValue::U64(x) => json!(x),
        OwnedValue::I64(x) => json!(x),
        OwnedValue::F32(x) => f32_json(*x),
        OwnedValue::F64(x) => {
            if x.is_finite() {
                json!(x)
            } else {
                json!(x.to_string())
            }
        }
        OwnedValue::Bool(x) => json!(x),
        OwnedValue::String(s) => json!(s),
        OwnedValue::Array(ValueType::Array, items) => {
            Json::Array(items.iter().map(|i| json!({"type": full_type_name(i), "value": value_to_json(i)})).collect())
        }
        OwnedValue::Array(_, items) => Json::Array(items.iter().map(value_to_json).collect()),
    }
}

pub(crate) fn scalar_from_json(t: ValueType, j: &Json) -> Option<OwnedValue> {
    let int = || j.as_i64().map(i128::from).or_else(|| j.as_u64().map(i128::from));
    Some(match t {
        ValueType::U8 => OwnedValue::U8(int()?.try_into().ok()?),
        ValueType::I8 => OwnedValue::I8(int()?.try_into().ok()?),
        ValueType::U16 => OwnedValue::U16(int()?.try_into().ok()?),
        ValueType::I16 => OwnedValue::I16(int()?.try_into().ok()?),
        ValueType::U32 => OwnedValue::U32(int()?.try_into().ok()?),
        ValueType::I32 => OwnedValue::I32(int()?.try_into().ok()?),
        ValueType::U64 => OwnedValue::U64(int()?.try_into().ok()?),
        ValueType::I64 => OwnedValue::I64(int()?.try_into().ok()?),
        ValueType::F32 => OwnedValue::F32(json_f32(j)?),
        ValueType::F64 => OwnedValue::F64(json_f64(j)?),
        ValueType::Bool => OwnedValue::Bool(j.as_bool()?),
        ValueType::String => OwnedValue::String(j.as_str()?.into()),
        ValueType::Array => {
            let (t, e) = parse_full_type(j.get("type")?.as_str()?)?;
            return value_from_json(t, e, j.get("value")?);
        }
    })
}

pub(crate) fn value_from_json(t: ValueType, elem: Option<ValueType>, j: &Json) -> Option<OwnedValue> {
    match (t, elem) {
        (ValueType::Array, Some(e)) => {
            let items = j.as_array()?.iter().map(|i| scalar_from_json(e, i)).collect::<Option<Vec<_>>>()?;
            Some(OwnedValue::Array(e, items))
        }
        (ValueType::Array, None) => None,
        _ => scalar_from_json(t, j),
    }
}

/// `v` as type `t` (array elements as `elem`), when it holds that value exactly.
pub(crate) fn cast(v: &OwnedValue, t: ValueType, elem: Option<ValueType>) -> Option<OwnedValue> {
    let as_int = |v: &OwnedValue| -> Option<i128> {
        Some(match *v {
            OwnedValue::U8(x) => x.into(),
            OwnedValue::I8(x) => x.into(),
            OwnedValue::U16(x) => x.into(),
            OwnedValue::I16(x) => x.into(),
            OwnedValue::U32(x) => x.into(),
            OwnedValue::I32(x) => x.into(),
            OwnedValue::U64(x) => x.into(),
            OwnedValue::I64(x) => x.into(),
            _ => return None,
        })
    };
    let float = |v: &OwnedValue| match *v {
        OwnedValue::F32(x) => Some(x as f64),
        OwnedValue::F64(x) => Some(x),
        _ => None,
    };
    Some(match t {
        ValueType::U8 => OwnedValue::U8(as_int(v)?.try_into().ok()?),
        ValueType::I8 => OwnedValue::I8(as_int(v)?.try_into().ok()?),
        ValueType::U16 => OwnedValue::U16(as_int(v)?.try_into().ok()?),
        ValueType::I16 => OwnedValue::I16(as_int(v)?.try_into().ok()?),
        ValueType::U32 => OwnedValue::U32(as_int(v)?.try_into().ok()?),
        ValueType::I32 => OwnedValue::I32(as_int(v)?.try_into().ok()?),
        ValueType::U64 => OwnedValue::U64(as_int(v)?.try_into().ok()?),
        ValueType::I64 => OwnedValue::I64(as_int(v)?.try_into().ok()?),
        ValueType::F32 => OwnedValue::F32(float(v)? as f32),
        ValueType::F64 => OwnedValue::F64(float(v)?),
        ValueType::Bool | ValueType::String => (v.value_type() == t).then(|| v.clone())?,
        ValueType::Array => {
            let OwnedValue::Array(_, items) = v else { return None };
            let e = elem?;
            if e == ValueType::Array {
                return None;
            }
            OwnedValue::Array(e, items.iter().map(|i| cast(i, e, None)).collect::<Option<Vec<_>>>()?)
        }
    })
}

// ---- export ----------------------------------------------------------------------------------

fn hyper_of_gguf(g: &Gguf<'_>, what: &str) -> Result<Hyper> {
    let u = |k: &str| -> Result<usize> {
        g.get_u64(&format!("llama.{k}"))?
            .map(|v| v as usize)
            .ok_or_else(|| model_err(what, format!("llama.{k} is missing")))
    };
    let n_embd = u("embedding_length")?;
    let n_head = u("attention.head_count")?;
    let n_head_kv = g.get_u64("llama.attention.head_count_kv")?.map_or(n_head, |v| v as usize);
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(model_err(what, format!("{n_head} attention heads and {n_head_kv} KV heads do not fit")));
    }
    let head_dim = match g.get_u64("llama.attention.key_length")? {
        Some(v) => v as usize,
        None => n_embd / n_head,
    };
    let n_vocab = match g.get_u64("llama.vocab_size")? {
        Some(v) => v as usize,
        None => g
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| model_err(what, "tensor token_embd.weight is missing"))? as usize,
    };
    Ok(Hyper {
        n_embd,
        n_layer: u("block_count")?,
        n_head,
        n_head_kv,
        n_ff: u("feed_forward_length")?,
        head_dim,
        n_ctx: u("context_length")?,
        n_vocab,
        eps: g
            .get_f32("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| model_err(what, "llama.attention.layer_norm_rms_epsilon is missing"))?,
        theta: g.get_f32("llama.rope.freq_base")?.unwrap_or(10000.0),
    })
}

fn torch_dtype(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

fn export_tensor(t: &TensorInfo<'_>) -> Result<(Dtype, Vec<u8>, bool)> {
    Ok(match t.ty {
        GgmlType::F32 => (Dtype::F32, t.data.to_vec(), false),
        GgmlType::F16 => (Dtype::F16, t.data.to_vec(), false),
        GgmlType::BF16 => (Dtype::BF16, t.data.to_vec(), false),
        ty if ty.is_quantized() => (Dtype::F32, bytemuck::cast_slice(&to_f32(t)).to_vec(), true),
        ty => return Err(tensor_err(t.name, format!("type {ty} has no place in a Hugging Face model"))),
    })
}

/// What [`export`] did, for the report.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Tensors that were quantized and are now F32.
    pub dequantized: usize,
    /// Metadata keys whose values travel in `pith_gguf_metadata`.
    pub carried: Vec<String>,
    /// Keys left out (`pith.quantization.*` of a file export dequantized).
    pub dropped: Vec<String>,
    pub notes: Vec<String>,
}

/// The Hugging Face form of the llama GGUF `g` (`what` names it in errors).
pub fn export(g: &Gguf<'_>, what: &str) -> Result<(HfModel, ExportReport)> {
    let arch = g.architecture()?;
    if arch != "llama" {
        return Err(model_err(what, format!("general.architecture is '{arch}'; export handles llama models only")));
    }
    if let Some(s) = g.get_str("llama.rope.scaling.type")? {
        if s != "none" {
            return Err(model_err(what, format!("llama.rope.scaling.type '{s}' is not supported by export")));
        }
    }
    let h = hyper_of_gguf(g, what)?.checked(what, g.tensors.len())?;
    if let Some(n) = g.get_u64("llama.rope.dimension_count")? {
        if n as usize != h.head_dim {
            return Err(model_err(
                what,
                format!("llama.rope.dimension_count {n} is not the head size {} (partial RoPE)", h.head_dim),
            ));
        }
    }
    if g.get_u64("llama.attention.value_length")?.is_some_and(|v| v as usize != h.head_dim) {
        return Err(model_err(what, "llama.attention.value_length differs from key_length"));
    }
    let tied = g.tensor("output.weight").is_none();
    let mut rep = ExportReport::default();
    let expected: HashSet<String> = h.tensor_names(tied).into_iter().collect();
    for name in h.tensor_names(tied) {
        if g.tensor(&name).is_none() {
            return Err(model_err(what, format!("tensor {name} is missing")));
        }
    }
    let mut tensors = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        if !expected.contains(t.name) {
            return Err(tensor_err(
                t.name,
                "has no Hugging Face llama counterpart (export handles token_embd, output_norm, output and \
                 the blk.N attention, feed-forward and norm weights)",
            ));
        }
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let want = h.shape_of(t.name).unwrap_or_default();
        if shape != want {
            return Err(tensor_err(t.name, format!("shape {shape:?} (rows, columns), expected {want:?}")));
        }
        let (dtype, mut data, deq) = export_tensor(t)?;
        rep.dequantized += deq as usize;
        if let Some(heads) = h.permuted_heads(t.name) {
            data = permute_qk(&data, shape[0], heads, true)
                .ok_or_else(|| tensor_err(t.name, format!("{} rows do not split into {heads} heads", shape[0])))?;
        }
        let name = hf_name(t.name).ok_or_else(|| tensor_err(t.name, "no Hugging Face name"))?;
        tensors.push(HfTensor { name, dtype, shape, data });
    }
    let matrix_dtypes: Vec<Dtype> = tensors.iter().filter(|t| t.shape.len() == 2).map(|t| t.dtype).collect();
    let dtype = majority(&matrix_dtypes).unwrap_or(Dtype::F32);

    let id = |k: &str| -> Result<Option<u64>> { Ok(g.get_u64(&format!("tokenizer.ggml.{k}"))?) };
    let mut config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h.n_embd,
        "intermediate_size": h.n_ff,
        "num_attention_heads": h.n_head,
        "num_key_value_heads": h.n_head_kv,
        "num_hidden_layers": h.n_layer,
        "head_dim": h.head_dim,
        "rms_norm_eps": f32_json(h.eps),
        "rope_theta": f32_json(h.theta),
        "rope_scaling": null,
        "max_position_embeddings": h.n_ctx,
        "vocab_size": h.n_vocab,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "torch_dtype": torch_dtype(dtype),
    });
    for (k, hk) in
        [("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("padding_token_id", "pad_token_id")]
    {
        if let Some(v) = id(k)? {
            config[hk] = json!(v);
        }
    }
    let (tokenizer, tokenizer_config) = match export_tokenizer(g, &h, what, &mut rep.notes)? {
        Some((t, c)) => (Some(t), Some(c)),
        None => (None, None),
    };
    let mut generation_config = json!({"_from_model_config": true});
    for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config.get(k) {
            generation_config[k] = v.clone();
        }
    }
    let mut m = HfModel {
        config,
        tokenizer,
        tokenizer_config,
        generation_config: Some(generation_config),
        chat_template: None,
        tensors,
    };

    // What reading the Hugging Face files back gives; carry the rest.
    let reread = |j: &Option<Json>| -> Result<Option<Json>> {
        j.as_ref()
            .map(|j| serde_json::to_string(j).and_then(|s| serde_json::from_str(&s)))
            .transpose()
            .map_err(|e| model_err(what, format!("JSON: {e}")))
    };
    let back = HfModel {
        config: reread(&Some(m.config.clone()))?.unwrap_or(Json::Null),
        tokenizer: reread(&m.tokenizer)?,
        tokenizer_config: reread(&m.tokenizer_config)?,
        generation_config: None,
        chat_template: None,
        tensors: Vec::new(),
    };
    let derived: HashMap<String, OwnedValue> =
        derive_metadata(&back, ggml_type_of(dtype).map_or(0, file_type_of), &mut Vec::new())?.into_iter().collect();
    let mut entries = Vec::new();
    for (k, v) in &g.metadata {
        let orig = OwnedValue::from_value(v);
        if rep.dequantized > 0 && k.starts_with("pith.quantization.") {
            rep.dropped.push(k.to_string());
            continue;
        }
        let ty = full_type_name(&orig);
        let mut e = json!({"key": k, "type": ty});
        let Some((t, elem)) = parse_full_type(&ty) else {
            e["value"] = value_to_json(&orig);
            rep.carried.push(k.to_string());
            entries.push(e);
            continue;
        };
        let again = derived.get(*k).and_then(|d| cast(d, t, elem));
        if (*k == "general.file_type" && rep.dequantized > 0) || again.as_ref() == Some(&orig) {
            entries.push(e);
            continue;
        }
        if HF_HOMED.contains(k) {
            return Err(model_err(
                what,
                format!(
                    "metadata key {k} ({}) does not survive the Hugging Face config (it reads back as {:?})",
                    pith::gguf::display_value(v, 4),
                    again
                ),
            ));
        }
        e["value"] = value_to_json(&orig);
        rep.carried.push(k.to_string());
        entries.push(e);
    }
    let order: Vec<&str> = g.tensors.iter().map(|t| t.name).collect();
    m.config[CARRY_KEY] = json!({
        "about": "GGUF metadata Hugging Face has no place for, written by pith-compress export and read by \
                  pith-compress convert: every key in order with its type, with a value where the Hugging Face \
                  files do not give it back; and the order of the tensors",
        "metadata": entries,
        "tensors": order,
    });
    Ok((m, rep))
}

/// The most frequent element (the last of equally frequent ones).
pub(crate) fn majority<T: Copy + PartialEq>(v: &[T]) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for &d in v {
        match counts.iter_mut().find(|(x, _)| *x == d) {
            Some(c) => c.1 += 1,
            None => counts.push((d, 1)),
        }
    }
    counts.iter().max_by_key(|(_, n)| *n).map(|(d, _)| *d)
}

pub(crate) const TYPE_NORMAL: i32 = 1;
pub(crate) const TYPE_UNKNOWN: i32 = 2;
pub(crate) const TYPE_CONTROL: i32 = 3;
pub(crate) const TYPE_USER_DEFINED: i32 = 4;
pub(crate) const TYPE_UNUSED: i32 = 5;
pub(crate) const TYPE_BYTE: i32 = 6;

/// The tokenizer files for `g`'s tokenizer: `None` when it has none.
fn export_tokenizer(g: &Gguf<'_>, h: &Hyper, what: &str, notes: &mut Vec<String>) -> Result<Option<(Json, Json)>> {
    let Some(model) = g.get_str("tokenizer.ggml.model")? else {
        notes.push("the file has no tokenizer; no tokenizer.json written".into());
        return Ok(None);
    };
    let spm = match model {
        "gpt2" => false,
        "llama" => true,
        _ => {
            return Err(model_err(
                what,
                format!(
                    "tokenizer.ggml.model '{model}' is not supported: export writes byte-level BPE ('gpt2') and \
                     SentencePiece ('llama') tokenizers"
                ),
            ))
        }
    };
    let arr = |k: &str| -> Result<_> { g.get_array(k)?.ok_or_else(|| model_err(what, format!("{k} is missing"))) };
    let tokens: Vec<&str> = arr("tokenizer.ggml.tokens")?
        .strings()
        .ok_or_else(|| model_err(what, "tokenizer.ggml.tokens is not an array of strings"))?
        .collect();
    let merges: Vec<String> = if spm {
        let scores: Vec<f32> = match g.get_array("tokenizer.ggml.scores")? {
            Some(a) => a.f32s().ok_or_else(|| model_err(what, "tokenizer.ggml.scores is not numbers"))?.collect(),
            None => vec![0.0; tokens.len()],
        };
        spm_merges(&tokens, &scores)
    } else {
        arr("tokenizer.ggml.merges")?
            .strings()
            .ok_or_else(|| model_err(what, "tokenizer.ggml.merges is not an array of strings"))?
            .map(String::from)
            .collect()
    };
    let types: Vec<i64> = match g.get_array("tokenizer.ggml.token_type")? {
        Some(a) => a.ints().ok_or_else(|| model_err(what, "tokenizer.ggml.token_type is not integers"))?.collect(),
        None => vec![TYPE_NORMAL as i64; tokens.len()],
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !vocab.contains_key(*t) {
            vocab.insert(t.to_string(), json!(i));
        }
        let ty = types.get(i).copied().unwrap_or(TYPE_NORMAL as i64) as i32;
        if matches!(ty, TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED) {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty != TYPE_USER_DEFINED,
            }));
        }
    }
    let pre = g.get_str("tokenizer.ggml.pre")?;
    let (pre_tokenizer, ignore_merges) = match pre.and_then(pith::tokenizer::bpe_pre_split) {
        _ if spm => (Json::Null, false),
        Some((regexes, ignore)) => {
            let mut seq: Vec<Json> = regexes
                .iter()
                .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
                .collect();
            seq.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));
            (json!({"type": "Sequence", "pretokenizers": seq}), ignore)
        }
        None => {
            notes.push(format!(
                "tokenizer.ggml.pre {pre:?} is not one pith knows; tokenizer.json uses the GPT-2 byte-level \
                 pre-tokenizer"
            ));
            (json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}), false)
        }
    };
    let id = |k: &str| -> Result<Option<usize>> {
        Ok(g.get_u64(&format!("tokenizer.ggml.{k}"))?.map(|v| v as usize).filter(|&v| v < tokens.len()))
    };
    let add_bos = g.get_bool("tokenizer.ggml.add_bos_token")?;
    let add_eos = g.get_bool("tokenizer.ggml.add_eos_token")?;
    // llama.cpp's defaults where the keys are absent: SentencePiece adds BOS, BPE does not.
    let (bos, eos) = (id("bos_token_id")?.or(Some(1).filter(|_| spm)), id("eos_token_id")?);
    let bos = bos.filter(|_| add_bos.unwrap_or(spm));
    let eos = eos.filter(|_| add_eos == Some(true));
    let post_processor = if bos.is_some() || eos.is_some() {
        let piece = |seq: &str, type_id: u32| -> Vec<Json> {
            let tok = |i: usize| json!({"SpecialToken": {"id": tokens[i], "type_id": type_id}});
            bos.map(tok)
                .into_iter()
                .chain([json!({"Sequence": {"id": seq, "type_id": type_id}})])
                .chain(eos.map(tok))
                .collect()
        };
        let single = piece("A", 0);
        let pair: Vec<Json> = single.iter().cloned().chain(piece("B", 1)).collect();
        let mut specials = Map::new();
        for i in bos.into_iter().chain(eos) {
            specials.insert(tokens[i].into(), json!({"id": tokens[i], "ids": [i], "tokens": [tokens[i]]}));
        }
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    };
    let (normalizer, decoder, unk_token) = if spm {
        // Hugging Face's LlamaTokenizerFast form: spaces as ▁ (and one in front), byte fallback.
        let space_prefix = g.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
        let mut norms = Vec::new();
        if space_prefix {
            norms.push(json!({"type": "Prepend", "prepend": "▁"}));
        }
        norms.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let unk = id("unknown_token_id")?.or(Some(0).filter(|&u| u < tokens.len())).map(|u| tokens[u]);
        (
            json!({"type": "Sequence", "normalizers": norms}),
            json!({"type": "Sequence", "decoders": decoders}),
            json!(unk),
        )
    } else {
        (
            Json::Null,
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
            Json::Null,
        )
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk_token, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": spm, "byte_fallback": spm,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
        },
    });
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "model_max_length": h.n_ctx,
    });
    for (k, hk) in [
        ("bos_token_id", "bos_token"),
        ("eos_token_id", "eos_token"),
        ("unknown_token_id", "unk_token"),
        ("padding_token_id", "pad_token"),
    ] {
        if let Some(i) = id(k)? {
            tc[hk] = json!(tokens[i]);
        }
    }
    if let Some(b) = add_bos {
        tc["add_bos_token"] = json!(b);
    }
    if let Some(b) = add_eos {
        tc["add_eos_token"] = json!(b);
    }
    if let Some(t) = g.get_str("tokenizer.chat_template")? {
        tc["chat_template"] = json!(t);
    }
    Ok(Some((tokenizer, tc)))
}

/// `<0xXX>`: a SentencePiece byte token.
pub(crate) fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// BPE merges that reproduce SentencePiece's score-driven merging (as transformers'
/// `SentencePieceExtractor` derives them): every split of a token into two tokens, ranked by
/// the merged token's score, highest first (ties: the merged token's id, then the split's ids).
fn spm_merges(tokens: &[&str], scores: &[f32]) -> Vec<String> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        if !is_byte_token(t) {
            index.entry(t).or_insert(i);
        }
    }
    let mut merges: Vec<(f32, usize, usize, usize, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if index.get(t) != Some(&i) {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(k);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                merges.push((scores.get(i).copied().unwrap_or(0.0), i, ia, ib, format!("{a} {b}")));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2, x.3).cmp(&(y.1, y.2, y.3))));
    merges.into_iter().map(|m| m.4).collect()
}

// ---- files -----------------------------------------------------------------------------------

fn write_json(dir: &Path, name: &str, j: &Json) -> Result<()> {
    let p = dir.join(name);
    let mut bytes = serde_json::to_vec_pretty(j).map_err(|e| model_err(p.display(), e.to_string()))?;
    bytes.push(b'\n');
    std::fs::write(&p, bytes).map_err(|e| CompressError::io(&p, e))
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| CompressError::io(path, e))
}

/// Checks that `dest` may become the output folder: absent, or (with `force`) an existing
/// folder that is empty or holds a `config.json` (a model folder; anything else is never
/// replaced).
pub fn check_output_dir(dest: &Path, force: bool) -> Result<()> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(CompressError::BadOption(format!(
            "{}: the folder {} does not exist",
            dest.display(),
            parent.display()
        )));
    }
    let Ok(meta) = std::fs::symlink_metadata(dest) else { return Ok(()) };
    if !meta.is_dir() {
        return Err(CompressError::BadOption(format!("{} exists and is not a folder", dest.display())));
    }
    if !force {
        return Err(CompressError::OutputExists(dest.to_path_buf()));
    }
    let empty = std::fs::read_dir(dest).map_err(|e| CompressError::io(dest, e))?.next().is_none();
    if !empty && !dest.join("config.json").is_file() {
        return Err(CompressError::BadOption(format!(
            "{} is a folder that is neither empty nor a model folder (no config.json); it is not replaced, \
             --force or not",
            dest.display()
        )));
    }
    Ok(())
}

/// Writes `m` as a Hugging Face model folder `dest`, whole or not at all.
pub fn write_hf(m: &HfModel, dest: &Path, force: bool) -> Result<()> {
    check_output_dir(dest, force)?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name =
        dest.file_name().ok_or_else(|| CompressError::BadOption(format!("{}: not a folder name", dest.display())))?;
    let prefix = format!(".{}.", name.to_string_lossy());
    let tmp = Tracked::create(
        || tempfile::Builder::new().prefix(&prefix).suffix(".pith-tmp").tempdir_in(&parent),
        |d| d.path(),
    )
    .map_err(|e| CompressError::io(dest, e))?;
    let dir = tmp.path().to_path_buf();
    let views = m
        .tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| tensor_err(&t.name, format!("safetensors: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let st = dir.join("model.safetensors");
    let info: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(info), &st)
        .map_err(|e| model_err(dest.join("model.safetensors").display(), e.to_string()))?;
    sync(&st)?;
    write_json(&dir, "config.json", &m.config)?;
    for (name, j) in [
        ("tokenizer.json", &m.tokenizer),
        ("tokenizer_config.json", &m.tokenizer_config),
        ("generation_config.json", &m.generation_config),
    ] {
        if let Some(j) = j {
            write_json(&dir, name, j)?;
        }
    }
    for e in std::fs::read_dir(&dir).map_err(|e| CompressError::io(dest, e))? {
        let e = e.map_err(|e| CompressError::io(dest, e))?;
        sync(&e.path())?;
    }
    // Into place: an existing folder (checked above) is moved aside first and removed after.
    let old =
        dest.exists().then(|| parent.join(format!(".{}.old-{}.pith-tmp", name.to_string_lossy(), std::process::id())));
    if let Some(old) = &old {
        std::fs::rename(dest, old).map_err(|e| CompressError::io(dest, e))?;
    }
    if let Err(e) = tmp.finish(|d| {
        let p = d.keep();
        std::fs::rename(&p, dest).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&p);
        })
    }) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, dest);
        }
        return Err(CompressError::io(dest, e));
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).map_err(|e| CompressError::io(&old, e))?;
    }
    Ok(())
}

// ---- the command -------------------------------------------------------------------------------

/// `pith-compress export` options.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Input GGUF (a llama model; quantized weights are dequantized to f32).
    pub input: PathBuf,
    /// Output folder (Hugging Face layout: model.safetensors, config.json, tokenizer files).
    pub output: PathBuf,
    /// Replace an existing output folder (an empty one or one holding a config.json).
    #[arg(long)]
    pub force: bool,
}

/// Runs `pith-compress export`.
pub fn run_export(a: &ExportArgs) -> Result<()> {
    check_output_dir(&a.output, a.force)?;
    let t0 = std::time::Instant::now();
    let file = MappedFile::open(&a.input)?;
    let g = file.gguf()?;
    let (m, rep) = export(&g, &a.input.display().to_string())?;
    write_hf(&m, &a.output, a.force)?;
    for n in &rep.notes {
        crate::progress::note(&format!("export: {n}"));
    }
    if !rep.dropped.is_empty() {
        crate::progress::note(&format!(
            "export: left out (they described the quantization undone): {}",
            rep.dropped.join(", ")
        ));
    }
    crate::progress::note(&format!(
        "export: {} tensors ({} dequantized to f32) → {}; {} metadata keys carried in config.json {CARRY_KEY}{} ({:.1} s)",
        m.tensors.len(),
        rep.dequantized,
        a.output.display(),
        rep.carried.len(),
        if rep.carried.is_empty() { String::new() } else { format!(" ({})", rep.carried.join(", ")) },
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
            "blk.12.attn_k.weight",
            "blk.0.ffn_down.weight",
        ] {
            let h = hf_name(g).unwrap();
            assert_eq!(gguf_name(&h).as_deref(), Some(g), "{h}");
        }
        assert_eq!(hf_name("blk.3.attn_q.weight").as_deref(), Some("model.layers.3.self_attn.q_proj.weight"));
        assert!(hf_name("rope_freqs.weight").is_none() && gguf_name("model.layers.0.self_attn.q_proj.bias").is_none());
    }

    #[test]
    fn permutation_inverts() {
        let data: Vec<u8> = (0..48u8).collect();
        let hf = permute_qk(&data, 12, 2, true).unwrap();
        assert_ne!(hf, data);
        assert_eq!(permute_qk(&hf, 12, 2, false).unwrap(), data);
        assert!(permute_qk(&data, 12, 5, true).is_none());
    }

    #[test]
    fn values_survive_json() {
        let vals = [
            OwnedValue::F32(1e-5),
            OwnedValue::F32(0.1),
            OwnedValue::F32(f32::MIN_POSITIVE),
            OwnedValue::F64(0.1),
            OwnedValue::I8(-3),
            OwnedValue::U64(u64::MAX),
            OwnedValue::strings(["a", "b"]),
            OwnedValue::Array(ValueType::Array, vec![OwnedValue::i32s([1, 2])]),
        ];
        for v in vals {
            let j: Json = serde_json::from_str(&serde_json::to_string(&value_to_json(&v)).unwrap()).unwrap();
            let (t, e) = parse_full_type(&full_type_name(&v)).unwrap();
            let back = value_from_json(t, e, &j);
            assert_eq!(back.as_ref(), Some(&v));
        }
    }
}
