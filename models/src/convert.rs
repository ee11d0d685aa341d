//! `pith-compress convert`: a Hugging Face llama folder (`config.json`, safetensors, the
//! tokenizer files) → a GGUF, the inverse of [`crate::export`]: the Q/K rows permuted back to
//! llama.cpp's layout, the GGUF metadata derived from the Hugging Face files, and whatever
//! export carried in `config.json`'s `pith_gguf_metadata` (key order, value types, values
//! Hugging Face has no place for, the tensor order) put back, so that an exported F32/F16/BF16
//! file comes back byte for byte. [`derive_metadata`] is also how export decides what to carry.

use crate::error::{CompressError, Result};
use crate::export::{
    cast, gguf_name, hf_name, is_byte_token, json_f32, majority, model_err, parse_full_type, permute_qk, tensor_err,
    value_from_json, HfModel, HfTensor, Hyper, CARRY_KEY, HF_HOMED, TYPE_BYTE, TYPE_CONTROL, TYPE_NORMAL, TYPE_UNKNOWN,
    TYPE_UNUSED, TYPE_USER_DEFINED,
};
use crate::output::check_output;
use crate::quantize::{parse_type, write_gguf};
use pith::file::MappedFile;
use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith_kernels::GgmlType;
use safetensors::Dtype;
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

// ---- the GGUF metadata a Hugging Face model gives ------------------------------------------------

fn cfg_usize(c: &Json, k: &str) -> Option<usize> {
    c.get(k).and_then(Json::as_u64).map(|v| v as usize)
}

pub(crate) fn hyper_of_config(c: &Json, what: &str) -> Result<Hyper> {
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
pub(crate) fn json_seq<'a>(j: Option<&'a Json>, key: &str) -> impl Iterator<Item = &'a Json> {
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
pub(crate) fn derive_metadata(
    m: &HfModel,
    file_type: u32,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, OwnedValue)>> {
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

pub(crate) fn ggml_type_of(d: Dtype) -> Option<GgmlType> {
    match d {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

pub(crate) fn file_type_of(t: GgmlType) -> u32 {
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

// ---- reading a folder ----------------------------------------------------------------------

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

/// `pith-compress convert` options.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Input Hugging Face model folder (llama: config.json, model.safetensors or shards,
    /// tokenizer.json), or a glassllm model (`.npz`; its tokenizer beside it as
    /// `NAME.tokenizer.json`, or --tokenizer).
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
    /// The tokenizer JSON of a `.npz` input (default: NAME.tokenizer.json beside it).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// Runs `pith-compress convert`.
pub fn run(a: &ConvertArgs) -> Result<()> {
    let ty = a.ty.as_deref().map(parse_type).transpose()?;
    if a.input.extension().is_some_and(|e| e == "npz") {
        return crate::npz::run(&a.input, a.tokenizer.as_deref(), &a.output, ty, a.force);
    }
    if a.tokenizer.is_some() {
        return Err(CompressError::BadOption("--tokenizer is for a .npz input".into()));
    }
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
