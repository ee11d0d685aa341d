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
//!   byte, while values Hugging Face does hold (the shapes, the vocabulary) are read from
//!   the Hugging Face files, so edits made there (a distilled model's weights, a
//!   pruned config) win.
//!
//! Output folders are written whole or not at all (a temporary folder beside the destination,
//! renamed into place); GGUF files through [`crate::output`].

use crate::error::{CompressError, Result};
use crate::output::check_output;
use crate::quantize::{parse_type, to_f32, write_gguf};
use pith::file::MappedFile;
use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::{Gguf, TensorInfo, ValueType};
use pith_fetch::cleanup::Tracked;
use pith_kernels::GgmlType;
use safetensors::Dtype;
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The `config.json` entry holding what Hugging Face has no place for.
pub const CARRY_KEY: &str = "pith_gguf_metadata";

/// GGUF keys that always come from the Hugging Face config (a carried value never overrides
/// them): the hyper-parameters. (`general.file_type` is carried only when export changed no
/// tensor's type and convert is given no `--type`.)
const HF_HOMED: &[&str] = &[
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
const LAYER_NAMES: [(&str, &str); 9] = [
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

fn model_err(what: impl std::fmt::Display, why: impl Into<String>) -> CompressError {
    CompressError::Model { what: what.to_string(), why: why.into() }
}

fn tensor_err(tensor: &str, why: impl Into<String>) -> CompressError {
    CompressError::Tensor { tensor: tensor.into(), why: why.into() }
}

/// The Hugging Face name of a GGUF llama tensor.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
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
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
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
struct Hyper {
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    n_ff: usize,
    head_dim: usize,
    n_ctx: usize,
    n_vocab: usize,
    eps: f32,
    theta: f32,
}

impl Hyper {
    /// Refuses sizes no model has (they would only overflow the shape arithmetic).
    fn checked(self, what: &str, n_tensors: usize) -> Result<Self> {
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
    fn shape_of(&self, gguf: &str) -> Option<Vec<usize>> {
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
    fn tensor_names(&self, tied: bool) -> Vec<String> {
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
    fn permuted_heads(&self, gguf: &str) -> Option<usize> {
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

fn json_f32(j: &Json) -> Option<f32> {
    match j {
        Json::String(s) => s.parse().ok(),
        _ => j.as_f64().map(|v| v as f32),
    }
}

fn json_f64(j: &Json) -> Option<f64> {
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

fn value_type(v: &OwnedValue) -> ValueType {
    match v {
        OwnedValue::U8(_) => ValueType::U8,
        OwnedValue::I8(_) => ValueType::I8,
        OwnedValue::U16(_) => ValueType::U16,
        OwnedValue::I16(_) => ValueType::I16,
        OwnedValue::U32(_) => ValueType::U32,
        OwnedValue::I32(_) => ValueType::I32,
        OwnedValue::F32(_) => ValueType::F32,
        OwnedValue::Bool(_) => ValueType::Bool,
        OwnedValue::String(_) => ValueType::String,
        OwnedValue::Array(..) => ValueType::Array,
        OwnedValue::U64(_) => ValueType::U64,
        OwnedValue::I64(_) => ValueType::I64,
        OwnedValue::F64(_) => ValueType::F64,
    }
}

/// `u32`, `string`, `array<i32>`, ...
fn full_type_name(v: &OwnedValue) -> String {
    match v {
        OwnedValue::Array(t, _) => format!("array<{}>", type_name(*t)),
        _ => type_name(value_type(v)).into(),
    }
}

fn parse_full_type(s: &str) -> Option<(ValueType, Option<ValueType>)> {
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

fn scalar_from_json(t: ValueType, j: &Json) -> Option<OwnedValue> {
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

fn value_from_json(t: ValueType, elem: Option<ValueType>, j: &Json) -> Option<OwnedValue> {
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
fn cast(v: &OwnedValue, t: ValueType, elem: Option<ValueType>) -> Option<OwnedValue> {
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
        ValueType::Bool | ValueType::String => (value_type(v) == t).then(|| v.clone())?,
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
fn majority<T: Copy + PartialEq>(v: &[T]) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for &d in v {
        match counts.iter_mut().find(|(x, _)| *x == d) {
            Some(c) => c.1 += 1,
            None => counts.push((d, 1)),
        }
    }
    counts.iter().max_by_key(|(_, n)| *n).map(|(d, _)| *d)
}

const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;
const TYPE_BYTE: i32 = 6;

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
fn is_byte_token(t: &str) -> bool {
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

// ---- the GGUF metadata a Hugging Face model gives ------------------------------------------------

fn cfg_usize(c: &Json, k: &str) -> Option<usize> {
    c.get(k).and_then(Json::as_u64).map(|v| v as usize)
}

fn hyper_of_config(c: &Json, what: &str) -> Result<Hyper> {
    let need = |k: &str| cfg_usize(c, k).ok_or_else(|| model_err(what, format!("{k} is missing or not a number")));
    let n_embd = need("hidden_size")?;
    let n_head = need("num_attention_heads")?;
    let n_head_kv = cfg_usize(c, "num_key_value_heads").unwrap_or(n_head);
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(model_err(what, format!("{n_head} attention heads and {n_head_kv} KV heads do not fit")));
    }
    let head_dim = cfg_usize(c, "head_dim").unwrap_or(n_embd / n_head);
    let f = |k: &str, default: f32| -> Result<f32> {
        match c.get(k) {
            None | Some(Json::Null) => Ok(default),
            Some(j) => json_f32(j).ok_or_else(|| model_err(what, format!("{k} is not a number"))),
        }
    };
    Ok(Hyper {
        n_embd,
        n_layer: need("num_hidden_layers")?,
        n_head,
        n_head_kv,
        n_ff: need("intermediate_size")?,
        head_dim,
        n_ctx: cfg_usize(c, "max_position_embeddings").unwrap_or(2048),
        n_vocab: need("vocab_size")?,
        // transformers' LlamaConfig defaults.
        eps: f("rms_norm_eps", 1e-6)?,
        // transformers 5 writes it into `rope_parameters`.
        theta: match c
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .filter(|_| c.get("rope_theta").is_none())
        {
            Some(j) => json_f32(j).ok_or_else(|| model_err(what, "rope_parameters.rope_theta is not a number"))?,
            None => f("rope_theta", 10000.0)?,
        },
    })
}

/// The steps of a `Sequence` normalizer or pre-tokenizer (or the one step it is).
fn json_seq<'a>(j: Option<&'a Json>, key: &str) -> impl Iterator<Item = &'a Json> {
    let steps = match j {
        Some(j) => match j.get(key).and_then(Json::as_array) {
            Some(a) => a.iter().collect(),
            None if !j.is_null() => vec![j],
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    steps.into_iter()
}

/// A special token of `tokenizer_config.json` (a string, or an object with `content`).
fn token_text(j: Option<&Json>) -> Option<&str> {
    match j? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// The GGUF metadata of `m`, in llama.cpp's order with llama.cpp's types; `file_type` is the
/// weights' `general.file_type`.
fn derive_metadata(m: &HfModel, file_type: u32, notes: &mut Vec<String>) -> Result<Vec<(String, OwnedValue)>> {
    let c = &m.config;
    let h = hyper_of_config(c, "config.json")?;
    let u32v = |v: usize| OwnedValue::U32(v as u32);
    let mut out: Vec<(String, OwnedValue)> = vec![
        ("general.architecture".into(), OwnedValue::String("llama".into())),
        ("llama.block_count".into(), u32v(h.n_layer)),
        ("llama.context_length".into(), u32v(h.n_ctx)),
        ("llama.embedding_length".into(), u32v(h.n_embd)),
        ("llama.feed_forward_length".into(), u32v(h.n_ff)),
        ("llama.attention.head_count".into(), u32v(h.n_head)),
        ("llama.attention.head_count_kv".into(), u32v(h.n_head_kv)),
        ("llama.rope.freq_base".into(), OwnedValue::F32(h.theta)),
        ("llama.attention.layer_norm_rms_epsilon".into(), OwnedValue::F32(h.eps)),
        ("llama.attention.key_length".into(), u32v(h.head_dim)),
        ("llama.attention.value_length".into(), u32v(h.head_dim)),
        ("general.file_type".into(), OwnedValue::U32(file_type)),
        ("llama.vocab_size".into(), u32v(h.n_vocab)),
        ("llama.rope.dimension_count".into(), u32v(h.head_dim)),
    ];
    let Some(tok) = &m.tokenizer else {
        out.push(("general.quantization_version".into(), OwnedValue::U32(2)));
        return Ok(out);
    };
    let what = "tokenizer.json";
    let model = tok.get("model").ok_or_else(|| model_err(what, "no model"))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("");
    if mtype != "BPE" {
        return Err(model_err(what, format!("model type '{mtype}' is not supported (byte-level BPE only)")));
    }
    let spm = model.get("byte_fallback").and_then(Json::as_bool) == Some(true);
    let vocab =
        model.get("vocab").and_then(Json::as_object).ok_or_else(|| model_err(what, "model.vocab is missing"))?;
    let mut by_id: BTreeMap<usize, (String, i32)> = BTreeMap::new();
    for (t, i) in vocab {
        let i = i.as_u64().ok_or_else(|| model_err(what, format!("vocab id of {t:?} is not a number")))? as usize;
        by_id.entry(i).or_insert((t.clone(), TYPE_NORMAL));
    }
    for a in tok.get("added_tokens").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
        let (Some(i), Some(t)) = (a.get("id").and_then(Json::as_u64), a.get("content").and_then(Json::as_str)) else {
            return Err(model_err(what, "an added token lacks its id or content"));
        };
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        by_id.insert(i as usize, (t.into(), if special { TYPE_CONTROL } else { TYPE_USER_DEFINED }));
    }
    if spm {
        let unk = model.get("unk_token").and_then(Json::as_str);
        for (t, ty) in by_id.values_mut() {
            if Some(t.as_str()) == unk {
                *ty = TYPE_UNKNOWN;
            } else if *ty == TYPE_NORMAL && is_byte_token(t) {
                *ty = TYPE_BYTE;
            }
        }
    }
    let n = by_id.keys().next_back().map_or(0, |&k| k + 1).max(h.n_vocab);
    let (mut tokens, mut types) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        match by_id.get(&i) {
            Some((t, ty)) => {
                tokens.push(t.clone());
                types.push(*ty);
            }
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(TYPE_UNUSED);
            }
        }
    }
    let merges: Vec<String> = model
        .get("merges")
        .and_then(Json::as_array)
        .ok_or_else(|| model_err(what, "model.merges is missing"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) => match p.as_slice() {
                [Json::String(a), Json::String(b)] => Some(format!("{a} {b}")),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| model_err(what, "model.merges holds something other than pairs"))?;
    let index: HashMap<&str, usize> = tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();
    if spm {
        // Scores that make SentencePiece's merging follow the merge ranks: a token's score is
        // minus the rank of the first merge giving it; tokens no merge gives score 0.
        let mut scores = vec![0f32; tokens.len()];
        let mut seen = vec![false; tokens.len()];
        for (rank, m) in merges.iter().enumerate() {
            if let Some((a, b)) = m.split_once(' ') {
                if let Some(&i) = index.get(format!("{a}{b}").as_str()) {
                    if !seen[i] {
                        seen[i] = true;
                        scores[i] = -(rank as f32);
                    }
                }
            }
        }
        let pre = tok.get("pre_tokenizer");
        let space_prefix = json_seq(tok.get("normalizer"), "normalizers")
            .any(|n| n.get("type").and_then(Json::as_str) == Some("Prepend"))
            || json_seq(pre, "pretokenizers").any(|p| {
                p.get("type").and_then(Json::as_str) == Some("Metaspace")
                    && p.get("prepend_scheme").and_then(Json::as_str) != Some("never")
                    && p.get("add_prefix_space").and_then(Json::as_bool) != Some(false)
            });
        out.push(("tokenizer.ggml.model".into(), OwnedValue::String("llama".into())));
        out.push(("tokenizer.ggml.tokens".into(), OwnedValue::strings(tokens.iter().cloned())));
        out.push(("tokenizer.ggml.scores".into(), OwnedValue::f32s(scores)));
        out.push(("tokenizer.ggml.token_type".into(), OwnedValue::i32s(types)));
        out.push(("tokenizer.ggml.add_space_prefix".into(), OwnedValue::Bool(space_prefix)));
    } else {
        out.push(("tokenizer.ggml.model".into(), OwnedValue::String("gpt2".into())));
        if let Some(pre) = pre_name(tok.get("pre_tokenizer"), model.get("ignore_merges").and_then(Json::as_bool)) {
            out.push(("tokenizer.ggml.pre".into(), OwnedValue::String(pre.into())));
        } else {
            notes.push(
                "the pre-tokenizer of tokenizer.json is not one convert recognises; tokenizer.ggml.pre is 'default'"
                    .into(),
            );
            out.push(("tokenizer.ggml.pre".into(), OwnedValue::String("default".into())));
        }
        out.push(("tokenizer.ggml.tokens".into(), OwnedValue::strings(tokens.iter().cloned())));
        out.push(("tokenizer.ggml.token_type".into(), OwnedValue::i32s(types)));
        out.push(("tokenizer.ggml.merges".into(), OwnedValue::strings(merges)));
    }
    let tc = m.tokenizer_config.as_ref();
    let by_text = |k: &str| token_text(tc.and_then(|t| t.get(k))).and_then(|s| index.get(s).copied());
    let ids = [
        ("bos_token_id", cfg_usize(c, "bos_token_id").or_else(|| by_text("bos_token"))),
        ("eos_token_id", cfg_usize(c, "eos_token_id").or_else(|| by_text("eos_token"))),
        ("unknown_token_id", by_text("unk_token")),
        ("padding_token_id", cfg_usize(c, "pad_token_id").or_else(|| by_text("pad_token"))),
    ];
    for (k, v) in ids {
        if let Some(v) = v {
            out.push((format!("tokenizer.ggml.{k}"), u32v(v)));
        }
    }
    // tokenizer_config.json's flags, else what tokenizer.json's post-processor does (transformers
    // 5 saves no flags).
    let single: Vec<&str> = tok
        .get("post_processor")
        .map(|p| json_seq(Some(p), "processors").collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.get("type").and_then(Json::as_str) == Some("TemplateProcessing"))
        .flat_map(|p| p.get("single").and_then(Json::as_array).cloned().unwrap_or_default())
        .map(|piece| match piece.get("SpecialToken").and_then(|t| t.get("id")).and_then(Json::as_str) {
            Some(_) => "special",
            None => "sequence",
        })
        .collect();
    let seq_at = single.iter().position(|&p| p == "sequence");
    let from_post = [seq_at.is_some_and(|i| i > 0), seq_at.is_some_and(|i| i + 1 < single.len())];
    for (k, post) in ["add_bos_token", "add_eos_token"].into_iter().zip(from_post) {
        let b = tc.and_then(|t| t.get(k)).and_then(Json::as_bool).unwrap_or(post);
        out.push((format!("tokenizer.ggml.{k}"), OwnedValue::Bool(b)));
    }
    let template =
        tc.and_then(|t| t.get("chat_template")).cloned().or_else(|| m.chat_template.clone().map(Json::String));
    match template.as_ref() {
        Some(Json::String(s)) => out.push(("tokenizer.chat_template".into(), OwnedValue::String(s.clone()))),
        Some(Json::Array(list)) => {
            for t in list {
                let (Some(name), Some(s)) =
                    (t.get("name").and_then(Json::as_str), t.get("template").and_then(Json::as_str))
                else {
                    continue;
                };
                let key = if name == "default" {
                    "tokenizer.chat_template".into()
                } else {
                    format!("tokenizer.chat_template.{name}")
                };
                out.push((key, OwnedValue::String(s.into())));
            }
        }
        _ => {}
    }
    out.push(("general.quantization_version".into(), OwnedValue::U32(2)));
    Ok(out)
}

/// The `tokenizer.ggml.pre` whose export gives this pre-tokenizer, among common names.
fn pre_name(pre: Option<&Json>, ignore_merges: Option<bool>) -> Option<&'static str> {
    let pre = pre?;
    let ty = pre.get("type").and_then(Json::as_str)?;
    if ty == "ByteLevel" && pre.get("use_regex").and_then(Json::as_bool) != Some(false) {
        return Some("gpt-2");
    }
    let seq = pre.get("pretokenizers")?.as_array()?;
    // SmolLM's and StarCoder's own form: digits one by one, then GPT-2's byte-level split.
    if let [d, b] = seq.as_slice() {
        if d.get("type").and_then(Json::as_str) == Some("Digits")
            && d.get("individual_digits").and_then(Json::as_bool) == Some(true)
            && b.get("type").and_then(Json::as_str) == Some("ByteLevel")
            && b.get("use_regex").and_then(Json::as_bool) != Some(false)
        {
            return Some("smollm");
        }
    }
    let regexes: Vec<&str> = seq
        .iter()
        .filter(|p| p.get("type").and_then(Json::as_str) == Some("Split"))
        .filter_map(|p| p.get("pattern")?.get("Regex")?.as_str())
        .collect();
    const CANDIDATES: &[&str] = &[
        "smollm",
        "gpt-2",
        "default",
        "llama-bpe",
        "qwen2",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "bloom",
        "gpt-4o",
        "tekken",
        "chameleon",
        "viking",
        "jais-2",
        "dbrx",
        "qwen35",
    ];
    CANDIDATES.iter().copied().find(|c| {
        pith::tokenizer::bpe_pre_split(c)
            .is_some_and(|(r, ig)| r == regexes.as_slice() && ignore_merges.unwrap_or(false) == ig)
    })
}

// ---- convert ---------------------------------------------------------------------------------

fn ggml_type_of(d: Dtype) -> Option<GgmlType> {
    match d {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

fn file_type_of(t: GgmlType) -> u32 {
    match t {
        GgmlType::F16 => 1,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// `data` (`ty`, rows of `n`) as `to`.
fn retype(name: &str, data: &[u8], n: usize, ty: GgmlType, to: GgmlType) -> Result<Vec<u8>> {
    if ty == to {
        return Ok(data.to_vec());
    }
    let (rb_in, rb_out) = match (ty.row_bytes(n), to.row_bytes(n)) {
        (Some(a), Some(b)) if a > 0 => (a, b),
        _ => return Err(tensor_err(name, format!("rows of {n} cannot be {to}"))),
    };
    let mut row = vec![0f32; n];
    let mut out = vec![0u8; data.len() / rb_in * rb_out];
    for (src, dst) in data.chunks_exact(rb_in).zip(out.chunks_exact_mut(rb_out)) {
        pith_kernels::dequantize_row(ty, src, &mut row);
        pith_kernels::quantize_row(to, &row, dst);
    }
    Ok(out)
}

/// What [`convert`] did, for the report.
#[derive(Debug, Default)]
pub struct ConvertReport {
    pub notes: Vec<String>,
}

/// The GGUF form of a Hugging Face llama model. `ty`: the type of the weight matrices (F32,
/// F16 or BF16; vectors are then F32); `None` keeps every tensor's own type.
pub fn convert(mut m: HfModel, ty: Option<GgmlType>) -> Result<(GgufBuilder, ConvertReport)> {
    let what = "config.json";
    let c = &m.config;
    let mt = c.get("model_type").and_then(Json::as_str);
    let archs: Vec<&str> = c
        .get("architectures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    if mt != Some("llama") && !archs.contains(&"LlamaForCausalLM") {
        return Err(model_err(
            what,
            format!("model_type {mt:?} / architectures {archs:?}: convert handles llama (LlamaForCausalLM) only"),
        ));
    }
    for k in ["rope_scaling", "rope_parameters"] {
        let Some(r) = c.get(k).filter(|r| !r.is_null()) else { continue };
        let ty = r.get("rope_type").or_else(|| r.get("type")).and_then(Json::as_str);
        if ty != Some("default") {
            return Err(model_err(what, format!("{k} of type {ty:?} is not supported by convert (plain RoPE only)")));
        }
    }
    if let Some(act) = c.get("hidden_act").and_then(Json::as_str) {
        if act != "silu" {
            return Err(model_err(what, format!("hidden_act '{act}' is not supported (silu only)")));
        }
    }
    for k in ["attention_bias", "mlp_bias"] {
        if c.get(k).and_then(Json::as_bool) == Some(true) {
            return Err(model_err(what, format!("{k} is true; llama without biases only")));
        }
    }
    if let Some(t) = ty {
        if !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return Err(CompressError::BadOption(format!("--type {t}: convert writes f32, f16 or bf16")));
        }
    }
    let h = hyper_of_config(c, what)?;
    let mut rep = ConvertReport::default();
    let mut by_name: HashMap<String, HfTensor> = HashMap::new();
    for t in std::mem::take(&mut m.tensors) {
        let g = gguf_name(&t.name).ok_or_else(|| {
            tensor_err(&t.name, "is not a tensor of a Hugging Face llama model (no GGUF name for it)")
        })?;
        if by_name.insert(g, t).is_some() {
            return Err(model_err("safetensors", "a tensor appears twice"));
        }
    }
    let tie_cfg = c.get("tie_word_embeddings").and_then(Json::as_bool);
    let tied = match (tie_cfg, by_name.contains_key("output.weight")) {
        (Some(true), true) => {
            by_name.remove("output.weight");
            rep.notes.push("tie_word_embeddings is true: lm_head.weight left out".into());
            true
        }
        (Some(true), false) | (None, false) => true,
        (Some(false) | None, true) => false,
        (Some(false), false) => return Err(model_err("safetensors", "tensor lm_head.weight is missing")),
    };
    let h = h.checked(what, by_name.len() + 1)?;
    let names = h.tensor_names(tied);
    let mut out: HashMap<String, (Vec<u64>, GgmlType, Vec<u8>)> = HashMap::new();
    for name in &names {
        let hf = hf_name(name).unwrap_or_default();
        let t = by_name.remove(name).ok_or_else(|| model_err("safetensors", format!("tensor {hf} is missing")))?;
        let want = h.shape_of(name).unwrap_or_default();
        if t.shape != want {
            return Err(tensor_err(
                &hf,
                format!("shape {:?} does not match config.json, which makes it {want:?}", t.shape),
            ));
        }
        let src = ggml_type_of(t.dtype).ok_or_else(|| {
            tensor_err(&hf, format!("safetensors dtype {:?} is not supported (F32, F16 or BF16)", t.dtype))
        })?;
        let to = match ty {
            None => src,
            Some(to) if t.shape.len() == 2 => to,
            Some(_) => GgmlType::F32,
        };
        let n = *t.shape.last().unwrap_or(&0);
        let mut data = retype(&hf, &t.data, n, src, to)?;
        if let Some(heads) = h.permuted_heads(name) {
            data = permute_qk(&data, t.shape[0], heads, false)
                .ok_or_else(|| tensor_err(&hf, format!("{} rows do not split into {heads} heads", t.shape[0])))?;
        }
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        out.insert(name.clone(), (dims, to, data));
    }
    if let Some(extra) = by_name.keys().next() {
        return Err(tensor_err(extra, "is more than config.json's layers hold"));
    }
    let matrix_types: Vec<GgmlType> =
        names.iter().filter_map(|n| out.get(n)).filter(|(d, _, _)| d.len() == 2).map(|(_, t, _)| *t).collect();
    let file_type = majority(&matrix_types).map_or(0, file_type_of);
    let derived = derive_metadata(&m, file_type, &mut rep.notes)?;
    let carry = c.get(CARRY_KEY);
    let mut b = GgufBuilder::new();
    match carry.and_then(|c| c.get("metadata")).and_then(Json::as_array) {
        Some(entries) => {
            let derived: HashMap<&str, &OwnedValue> = derived.iter().map(|(k, v)| (k.as_str(), v)).collect();
            for e in entries {
                let bad = |why: &str| model_err(format!("config.json {CARRY_KEY}"), why.to_string());
                let key = e.get("key").and_then(Json::as_str).ok_or_else(|| bad("an entry has no key"))?;
                let tname = e.get("type").and_then(Json::as_str).ok_or_else(|| bad("an entry has no type"))?;
                let carried = e.get("value");
                let v = match (parse_full_type(tname), carried) {
                    (Some((t, elem)), carried) => {
                        let from_hf = derived.get(key).and_then(|d| cast(d, t, elem));
                        let homed = HF_HOMED.contains(&key) || (key == "general.file_type" && ty.is_some());
                        match (homed, from_hf, carried) {
                            (true, Some(v), _) | (false, Some(v), None) => v,
                            (_, _, Some(j)) => value_from_json(t, elem, j)
                                .ok_or_else(|| bad(&format!("the value of {key} is not a {tname}")))?,
                            (_, None, None) => {
                                rep.notes.push(format!(
                                    "{CARRY_KEY} lists {key}, which the Hugging Face files no longer give; left out"
                                ));
                                continue;
                            }
                        }
                    }
                    (None, _) => return Err(bad(&format!("{key}: unknown type '{tname}'"))),
                };
                b.kv(key, v);
            }
        }
        None => {
            for (k, v) in derived {
                let default_hd = h.head_dim == h.n_embd / h.n_head;
                if default_hd && (k == "llama.attention.key_length" || k == "llama.attention.value_length") {
                    continue;
                }
                b.kv(&k, v);
            }
        }
    }
    let order: Vec<String> = carry
        .and_then(|c| c.get("tensors"))
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let same_set = order.len() == names.len() && order.iter().all(|n| out.contains_key(n));
    let order = if same_set { order } else { names };
    for name in order {
        if let Some((dims, t, data)) = out.remove(&name) {
            b.tensor(&name, &dims, t, data);
        }
    }
    Ok((b, rep))
}

// ---- files -----------------------------------------------------------------------------------

fn read_json(path: &Path) -> Result<Json> {
    let bytes = std::fs::read(path).map_err(|e| CompressError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| model_err(path.display(), format!("not valid JSON: {e}")))
}

fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The safetensors files of the folder: `model.safetensors`, or the shards its index names.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(model_err(dir.display(), "has neither model.safetensors nor model.safetensors.index.json"));
    }
    let j = read_json(&index)?;
    let map = j
        .get("weight_map")
        .and_then(Json::as_object)
        .ok_or_else(|| model_err(index.display(), "weight_map is missing"))?;
    let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    for f in &files {
        if f.contains('/') || f.contains("..") {
            return Err(model_err(index.display(), format!("shard name {f:?} is not a file of the folder")));
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Reads a Hugging Face model folder.
pub fn read_hf(dir: &Path) -> Result<HfModel> {
    if !dir.is_dir() {
        return Err(model_err(dir.display(), "is not a folder"));
    }
    let config = read_json(&dir.join("config.json"))?;
    let mut tensors = Vec::new();
    for f in safetensors_files(dir)? {
        let map = MappedFile::open(&f)?;
        let st = safetensors::SafeTensors::deserialize(map.bytes())
            .map_err(|e| model_err(f.display(), format!("not a safetensors file: {e}")))?;
        for (name, v) in st.iter() {
            tensors.push(HfTensor {
                name: name.into(),
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            });
        }
    }
    Ok(HfModel {
        config,
        tokenizer: read_json_opt(&dir.join("tokenizer.json"))?,
        tokenizer_config: read_json_opt(&dir.join("tokenizer_config.json"))?,
        generation_config: read_json_opt(&dir.join("generation_config.json"))?,
        chat_template: {
            let p = dir.join("chat_template.jinja");
            match std::fs::read_to_string(&p) {
                Ok(s) => Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(CompressError::io(&p, e)),
            }
        },
        tensors,
    })
}

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

// ---- the commands ------------------------------------------------------------------------------

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

/// `pith-compress convert` options.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Input Hugging Face model folder (llama: config.json, model.safetensors or shards,
    /// tokenizer.json).
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// Type of the weight matrices: f32, f16 or bf16 (vectors then f32); default: each tensor's
    /// safetensors dtype.
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Overwrite an existing output file.
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

/// Runs `pith-compress convert`.
pub fn run_convert(a: &ConvertArgs) -> Result<()> {
    let ty = a.ty.as_deref().map(parse_type).transpose()?;
    let files = if a.input.is_dir() { safetensors_files(&a.input).unwrap_or_default() } else { Vec::new() };
    let inputs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    check_output(&a.output, a.force, &inputs)?;
    let t0 = std::time::Instant::now();
    let m = read_hf(&a.input)?;
    let (b, rep) = convert(m, ty)?;
    write_gguf(&b, &a.output, a.force, &inputs)?;
    for n in &rep.notes {
        crate::progress::note(&format!("convert: {n}"));
    }
    crate::progress::note(&format!(
        "convert: {} tensors, {} metadata keys → {} ({:.1} s)",
        b.tensors.len(),
        b.metadata.len(),
        a.output.display(),
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
