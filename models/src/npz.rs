//! `pith-compress convert MODEL.npz OUT.gguf`: a glassllm model (numpy `.npz` of FP16 weights +
//! its character-BPE tokenizer JSON) → a llama GGUF that pith and llama.cpp run.
//!
//! glassllm (PyPI `glassllm`, MIT) is a llama-shaped decoder: RMSNorm, RoPE on adjacent pairs
//! (llama.cpp's "normal" rope, so Q/K need no permutation), grouped-query attention, SwiGLU,
//! tied embeddings. Its matrices are stored input × output (`x @ W`); GGUF rows are outputs, so
//! each is transposed. Its FFN width (⌊8·d/3⌋ = 341 at d = 128) is no multiple of 32, which
//! would keep `ffn_down` out of every block format: the FFN is padded with zero neurons to the
//! next multiple of 32 — a zero gate and up row give silu(0)·0 = 0, a zero down column adds
//! 0 — so the padded model computes exactly what the original does.
//!
//! The tokenizer (vocabulary = `<pad> <unk> <bos> <eos>`, the alphabet, one token per merge;
//! spaces as `▁`; no byte fallback; no space prefix; no BOS at generation) is written as a
//! SentencePiece-style vocabulary whose scores rank the merges (earlier merge = higher score).
//! Merging by score over a word gives what glassllm's merge-by-rank gives on its text: a merged
//! token never crosses glassllm's pre-split boundaries (its merges were learned inside them),
//! which the tokenizer test checks against ids glassllm computed.

use crate::error::{CompressError, Result};
use crate::export::model_err;
use crate::output::check_output;
use crate::prune::encode;
use crate::quantize::write_gguf;
use half::f16;
use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::ValueType;
use pith_kernels::GgmlType;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One array of an `.npz`: little-endian f16/f32 data (C order) or a unicode string.
pub enum NpyArray {
    /// shape, values (as f32).
    Float(Vec<usize>, Vec<f32>),
    Text(String),
}

/// Reads every array of a numpy `.npz` (a zip of `.npy` files, stored or deflated).
pub fn read_npz(path: &Path) -> Result<HashMap<String, NpyArray>> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| CompressError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| model_err(&what, format!("not a .npz (zip) file: {e}")))?;
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| model_err(&what, format!("zip entry {i}: {e}")))?;
        let name = f.name().to_string();
        let Some(key) = name.strip_suffix(".npy") else {
            return Err(model_err(&what, format!("entry {name} is not a .npy array")));
        };
        if f.size() > 1 << 30 {
            return Err(model_err(
                &what,
                format!("{name}: {} bytes is more than a model of this kind holds", f.size()),
            ));
        }
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes).map_err(|e| model_err(&what, format!("{name}: {e}")))?;
        let arr = parse_npy(&bytes).map_err(|why| model_err(&what, format!("{name}: {why}")))?;
        out.insert(key.to_string(), arr);
    }
    Ok(out)
}

/// Parses one `.npy` (format versions 1–3): the header's dict gives dtype, order and shape.
pub fn parse_npy(b: &[u8]) -> std::result::Result<NpyArray, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("no .npy magic".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!(".npy format version {v} is not known")),
    };
    let header = b.get(start..start + hlen).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |k: &str| -> std::result::Result<&str, String> {
        let at = header.find(&format!("'{k}':")).ok_or(format!("header has no '{k}'"))?;
        Ok(header[at + k.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or("descr is not a string")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("shape is not a tuple")?;
    let shape: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("shape entry {s:?} is not a number")))
        .collect::<std::result::Result<_, _>>()?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let data = &b[start + hlen..];
    let take = |width: usize| -> std::result::Result<&[u8], String> {
        let need = n.checked_mul(width).ok_or("shape overflows")?;
        data.get(..need).ok_or(format!("{} data bytes for {n} elements of {width}", data.len()))
    };
    match descr {
        "<f2" => {
            let d = take(2)?;
            Ok(NpyArray::Float(shape, d.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()))
        }
        "<f4" => {
            let d = take(4)?;
            Ok(NpyArray::Float(
                shape,
                d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            ))
        }
        u if u.starts_with("<U") => {
            let len: usize = u[2..].parse().map_err(|_| format!("dtype {u}"))?;
            let d = take(4 * len)?;
            let s: String = d
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .take_while(|&c| c != 0)
                .map(|c| char::from_u32(c).ok_or(format!("U+{c:X} is not a character")))
                .collect::<std::result::Result<_, _>>()?;
            Ok(NpyArray::Text(s))
        }
        other => Err(format!("dtype {other} is not supported (f2, f4, U)")),
    }
}

/// glassllm's hyperparameters (its `__config__`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlassConfig {
    pub vocab: usize,
    pub d: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ctx: usize,
    pub rope_base: f32,
    pub eps: f32,
}

fn config_of(j: &Json, what: &str) -> Result<GlassConfig> {
    let u = |k: &str| -> Result<usize> {
        j.get(k)
            .and_then(Json::as_u64)
            .filter(|&v| v > 0)
            .map(|v| v as usize)
            .ok_or_else(|| model_err(what, format!("__config__.{k} is missing or not a positive integer")))
    };
    let f = |k: &str| -> Result<f32> {
        j.get(k)
            .and_then(Json::as_f64)
            .map(|v| v as f32)
            .ok_or_else(|| model_err(what, format!("__config__.{k} is missing or not a number")))
    };
    let c = GlassConfig {
        vocab: u("vocab_size")?,
        d: u("d_model")?,
        layers: u("n_layers")?,
        heads: u("n_heads")?,
        kv_heads: u("n_kv_heads")?,
        ctx: u("max_len")?,
        rope_base: f("rope_base")?,
        eps: f("eps")?,
    };
    if !c.d.is_multiple_of(c.heads) || !c.heads.is_multiple_of(c.kv_heads) || !(c.d / c.heads).is_multiple_of(2) {
        return Err(model_err(what, format!("{c:?}: heads must divide d, KV heads divide heads, head size be even")));
    }
    Ok(c)
}

/// Converts a glassllm `.npz` + tokenizer JSON into a GGUF builder (weights in `ty`: f32 or
/// f16; norms f32). Returns the builder and the padded FFN width.
pub fn convert(npz: &Path, tokenizer: &Path, ty: GgmlType) -> Result<(GgufBuilder, GlassConfig, usize)> {
    let what = npz.display().to_string();
    let mut arrays = read_npz(npz)?;
    let cfg_text = match arrays.remove("__config__") {
        Some(NpyArray::Text(s)) => s,
        _ => return Err(model_err(&what, "no __config__ string: not a glassllm model")),
    };
    let cfg_json: Json = serde_json::from_str(&cfg_text).map_err(|e| model_err(&what, format!("__config__: {e}")))?;
    let c = config_of(&cfg_json, &what)?;
    let head = c.d / c.heads;
    let kv = c.kv_heads * head;
    let mut get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        match arrays.remove(name) {
            Some(NpyArray::Float(s, v)) if s == shape => Ok(v),
            Some(NpyArray::Float(s, _)) => Err(model_err(&what, format!("{name} has shape {s:?}, expected {shape:?}"))),
            _ => Err(model_err(&what, format!("{name} is missing"))),
        }
    };
    // glassllm's SwiGLU width.
    let ff = 8 * c.d / 3;
    let ff_pad = ff.div_ceil(32) * 32;
    let tok = read_tokenizer(tokenizer, c.vocab)?;

    let mut b = GgufBuilder::new();
    let s = |v: &str| OwnedValue::String(v.to_string());
    b.kv("general.architecture", s("llama"));
    b.kv("general.name", s(&format!("glassllm {}", npz.file_stem().and_then(|s| s.to_str()).unwrap_or("model"))));
    b.kv("general.license", s("MIT"));
    b.kv("general.source.url", s("https://pypi.org/project/glassllm/"));
    b.kv("llama.context_length", OwnedValue::U32(c.ctx as u32));
    b.kv("llama.embedding_length", OwnedValue::U32(c.d as u32));
    b.kv("llama.block_count", OwnedValue::U32(c.layers as u32));
    b.kv("llama.feed_forward_length", OwnedValue::U32(ff_pad as u32));
    b.kv("llama.attention.head_count", OwnedValue::U32(c.heads as u32));
    b.kv("llama.attention.head_count_kv", OwnedValue::U32(c.kv_heads as u32));
    b.kv("llama.attention.layer_norm_rms_epsilon", OwnedValue::F32(c.eps));
    b.kv("llama.rope.freq_base", OwnedValue::F32(c.rope_base));
    b.kv("llama.rope.dimension_count", OwnedValue::U32(head as u32));
    b.kv("llama.vocab_size", OwnedValue::U32(c.vocab as u32));
    b.kv("general.file_type", OwnedValue::U32(if ty == GgmlType::F16 { 1 } else { 0 }));
    b.kv("tokenizer.ggml.model", s("llama"));
    b.kv("tokenizer.ggml.tokens", OwnedValue::strings(tok.tokens.iter().cloned()));
    b.kv("tokenizer.ggml.scores", OwnedValue::f32s(tok.scores.iter().copied()));
    b.kv(
        "tokenizer.ggml.token_type",
        OwnedValue::Array(ValueType::I32, tok.types.iter().map(|&t| OwnedValue::I32(t)).collect()),
    );
    b.kv("tokenizer.ggml.padding_token_id", OwnedValue::U32(0));
    b.kv("tokenizer.ggml.unknown_token_id", OwnedValue::U32(1));
    b.kv("tokenizer.ggml.bos_token_id", OwnedValue::U32(2));
    b.kv("tokenizer.ggml.eos_token_id", OwnedValue::U32(3));
    b.kv("tokenizer.ggml.add_bos_token", OwnedValue::Bool(false));
    b.kv("tokenizer.ggml.add_eos_token", OwnedValue::Bool(false));
    b.kv("tokenizer.ggml.add_space_prefix", OwnedValue::Bool(false));

    // An input × output matrix (`x @ W`, rows = inputs) as GGUF rows (= outputs), padded to
    // `n_out` outputs and `n_in` inputs with zeros.
    let rows_of = |w: &[f32], rin: usize, rout: usize, n_in: usize, n_out: usize| -> Vec<f32> {
        let mut m = vec![0f32; n_out * n_in];
        for i in 0..rin {
            for o in 0..rout {
                m[o * n_in + i] = w[i * rout + o];
            }
        }
        m
    };
    let e = get("E", &[c.vocab, c.d])?;
    b.tensor("token_embd.weight", &[c.d as u64, c.vocab as u64], ty, encode(&e, ty));
    for l in 0..c.layers {
        let p = format!("blocks.{l}.");
        let n1 = get(&format!("{p}norm1.gamma"), &[c.d])?;
        let wq = get(&format!("{p}attn.W_Q"), &[c.d, c.d])?;
        let wk = get(&format!("{p}attn.W_K"), &[c.d, kv])?;
        let wv = get(&format!("{p}attn.W_V"), &[c.d, kv])?;
        let wo = get(&format!("{p}attn.W_O"), &[c.d, c.d])?;
        let n2 = get(&format!("{p}norm2.gamma"), &[c.d])?;
        let w1 = get(&format!("{p}ffn.W1"), &[c.d, ff])?;
        let w3 = get(&format!("{p}ffn.W3"), &[c.d, ff])?;
        let w2 = get(&format!("{p}ffn.W2"), &[ff, c.d])?;
        let g = format!("blk.{l}.");
        let (d, kvu, ffp) = (c.d as u64, kv as u64, ff_pad as u64);
        b.tensor(&format!("{g}attn_norm.weight"), &[d], GgmlType::F32, encode(&n1, GgmlType::F32));
        b.tensor(&format!("{g}attn_q.weight"), &[d, d], ty, encode(&rows_of(&wq, c.d, c.d, c.d, c.d), ty));
        b.tensor(&format!("{g}attn_k.weight"), &[d, kvu], ty, encode(&rows_of(&wk, c.d, kv, c.d, kv), ty));
        b.tensor(&format!("{g}attn_v.weight"), &[d, kvu], ty, encode(&rows_of(&wv, c.d, kv, c.d, kv), ty));
        b.tensor(&format!("{g}attn_output.weight"), &[d, d], ty, encode(&rows_of(&wo, c.d, c.d, c.d, c.d), ty));
        b.tensor(&format!("{g}ffn_norm.weight"), &[d], GgmlType::F32, encode(&n2, GgmlType::F32));
        b.tensor(&format!("{g}ffn_gate.weight"), &[d, ffp], ty, encode(&rows_of(&w1, c.d, ff, c.d, ff_pad), ty));
        b.tensor(&format!("{g}ffn_up.weight"), &[d, ffp], ty, encode(&rows_of(&w3, c.d, ff, c.d, ff_pad), ty));
        b.tensor(&format!("{g}ffn_down.weight"), &[ffp, d], ty, encode(&rows_of(&w2, ff, c.d, ff_pad, c.d), ty));
    }
    let nf = get("norm_f.gamma", &[c.d])?;
    b.tensor("output_norm.weight", &[c.d as u64], GgmlType::F32, encode(&nf, GgmlType::F32));
    if let Some(k) = arrays.keys().next() {
        return Err(model_err(&what, format!("array {k} is not part of a glassllm model this converter knows")));
    }
    Ok((b, c, ff_pad))
}

/// A glassllm tokenizer as a SentencePiece-style vocabulary.
pub struct GlassVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control.
    pub types: Vec<i32>,
}

/// Reads glassllm's tokenizer JSON (`{"version": 1, "alphabet": [...], "merges": [[a, b]...]}`).
pub fn read_tokenizer(path: &Path, n_vocab: usize) -> Result<GlassVocab> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CompressError::io(path, e))?;
    let j: Json = serde_json::from_str(&text).map_err(|e| model_err(&what, format!("not JSON: {e}")))?;
    if j.get("version").and_then(Json::as_u64) != Some(1) {
        return Err(model_err(&what, "not a glassllm tokenizer (version 1)"));
    }
    let strs = |v: &Json| v.as_str().map(str::to_string);
    let alphabet: Vec<String> = j
        .get("alphabet")
        .and_then(Json::as_array)
        .and_then(|a| a.iter().map(strs).collect())
        .ok_or_else(|| model_err(&what, "alphabet is not an array of strings"))?;
    let merges: Vec<(String, String)> = j
        .get("merges")
        .and_then(Json::as_array)
        .and_then(|a| {
            a.iter()
                .map(|m| match m.as_array().map(Vec::as_slice) {
                    Some([x, y]) => Some((x.as_str()?.to_string(), y.as_str()?.to_string())),
                    _ => None,
                })
                .collect()
        })
        .ok_or_else(|| model_err(&what, "merges is not an array of string pairs"))?;
    let mut tokens: Vec<String> = ["<pad>", "<unk>", "<bos>", "<eos>"].iter().map(|s| s.to_string()).collect();
    let mut types = vec![3, 2, 3, 3];
    let mut scores = vec![0f32; 4];
    for a in &alphabet {
        tokens.push(a.clone());
        types.push(1);
        scores.push(0.0);
    }
    for (i, (x, y)) in merges.iter().enumerate() {
        tokens.push(format!("{x}{y}"));
        types.push(1);
        // Earlier merges win; every merge scores below the characters' 0, which never compete
        // (no merge produces a single character).
        scores.push(-1.0 - i as f32);
    }
    if tokens.len() != n_vocab {
        return Err(model_err(&what, format!("{} tokens, the model has {n_vocab}", tokens.len())));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(t) = tokens.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(model_err(&what, format!("token {t:?} appears twice")));
    }
    Ok(GlassVocab { tokens, scores, types })
}

/// `pith-compress convert` on a `.npz`.
pub fn run(input: &Path, tokenizer: Option<&Path>, output: &Path, ty: Option<GgmlType>, force: bool) -> Result<()> {
    let ty = ty.unwrap_or(GgmlType::F16);
    if !matches!(ty, GgmlType::F16 | GgmlType::F32) {
        return Err(CompressError::BadOption(format!(
            "--type {}: a .npz converts to f32 or f16 (quantize the result with `pith-compress quantize`)",
            ty.name()
        )));
    }
    let tok: PathBuf = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => input.with_extension("tokenizer.json"),
    };
    check_output(output, force, &[input, &tok])?;
    let (b, c, ff_pad) = convert(input, &tok, ty)?;
    write_gguf(&b, output, force, &[input, &tok])?;
    crate::progress::note(&format!(
        "convert: glassllm {} layers, d {}, {} heads ({} KV), vocab {}, FFN {} padded with zeros to {} → {}",
        c.layers,
        c.d,
        c.heads,
        c.kv_heads,
        c.vocab,
        8 * c.d / 3,
        ff_pad,
        output.display()
    ));
    Ok(())
}
