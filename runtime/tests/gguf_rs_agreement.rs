//! pith's GGUF reader against an independent implementation, the crates.io `gguf-rs` crate,
//! on the real model file (SmolLM2-135M-Instruct Q4_1; `PITH_TEST_MODEL` overrides it).
//!
//! Compared: the version, the key and tensor counts, the data-section offset and alignment,
//! every metadata key and value (arrays element by element, all 49152 tokens and every merge),
//! and every tensor's name, shape, type id, offset and size, in file order.
//!
//! What gguf-rs cannot represent, and how it is compared instead:
//! * It keeps metadata as `serde_json::Value` in a `BTreeMap`, so the GGUF value *type* and the
//!   key order are lost. Keys are matched by name (the map's size against pith's count and the
//!   header's count catches duplicates); types are compared at JSON granularity: every integer
//!   type must be a JSON integer, f32/f64 a JSON float, bool a JSON bool, string a JSON string,
//!   array a JSON array (with the same rule for each element against pith's `elem_type`).
//! * Numbers: gguf-rs enables serde_json's `arbitrary_precision`, which keeps each number as its
//!   decimal text (integers exactly; floats as the shortest text that round-trips the f32/f64).
//!   Integers are compared as i128, floats by parsing the text back to f32/f64 and comparing bits.
//!   Non-finite floats become JSON `null` in gguf-rs; pith's value must then be non-finite too.
//! * Strings go through `String::from_utf8_lossy` in gguf-rs; pith rejects invalid UTF-8, so on a
//!   valid file both must be byte-identical.
//! * gguf-rs reads any non-zero byte as `true`; pith accepts only 0/1. Same result on a valid file.
#![cfg(feature = "std")]

use std::io::{BufReader, Read};
use std::path::PathBuf;

use gguf_rs::{ByteOrder, GGUFContainer, GGUFModel};
use pith::file::MappedFile;
use pith::gguf::{Gguf, Value, ValueType};
use serde_json::Value as Json;

/// The real model: `$PITH_TEST_MODEL`, else the default model from the pith-fetch cache
/// (fetched on first use).
fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PITH_TEST_MODEL") {
        return p.into();
    }
    pith_fetch::ensure_model(pith_fetch::default_model()).expect("fetch the default model (or set PITH_TEST_MODEL)")
}

/// Decodes the file with gguf-rs, reading every array in full (`max_array_size = u64::MAX`).
/// Same as `gguf_rs::get_gguf_container_array_size` but through a `BufReader` (gguf-rs issues
/// one `read` per field, which is slow on a bare `File`).
fn decode_with_gguf_rs(path: &std::path::Path) -> GGUFModel {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    decode_reader(BufReader::with_capacity(1 << 20, f))
        .unwrap_or_else(|e| panic!("gguf-rs failed to decode {}: {e}", path.display()))
}

/// gguf-rs on a little-endian GGUF stream (the container expects the magic already consumed).
fn decode_reader(mut rd: impl Read + 'static) -> Result<GGUFModel, String> {
    let mut magic = [0u8; 4];
    rd.read_exact(&mut magic).map_err(|e| format!("read magic: {e}"))?;
    if &magic != b"GGUF" {
        return Err(format!("not a little-endian GGUF file (magic {magic:?})"));
    }
    GGUFContainer::new(ByteOrder::LE, Box::new(rd), u64::MAX).decode().map_err(|e| format!("{e:#}"))
}

/// The JSON category a GGUF value type must map to in gguf-rs.
fn json_kind_ok(ty: ValueType, j: &Json) -> bool {
    use ValueType::*;
    match ty {
        U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64 => {
            matches!(j, Json::Number(n) if (n.is_i64() || n.is_u64()) && !n.is_f64())
        }
        // Non-finite floats are `null` in gguf-rs (serde_json has no NaN/inf).
        F32 | F64 => matches!(j, Json::Number(n) if n.is_f64()) || j.is_null(),
        Bool => j.is_boolean(),
        String => j.is_string(),
        Array => j.is_array(),
    }
}

fn int_of(j: &Json) -> Option<i128> {
    match j {
        Json::Number(n) => n.to_string().parse::<i128>().ok(),
        _ => None,
    }
}

/// Compares one value (`what` names it in messages); pushes mismatches to `errs`.
fn compare_value(what: &str, p: &Value<'_>, j: &Json, errs: &mut Vec<String>) {
    let ty = p.value_type();
    if !json_kind_ok(ty, j) {
        errs.push(format!("{what}: type differs: pith {ty:?} = {p:?}, gguf-rs {}", short(j)));
        return;
    }
    let ok = match *p {
        Value::U8(v) => int_of(j) == Some(v as i128),
        Value::I8(v) => int_of(j) == Some(v as i128),
        Value::U16(v) => int_of(j) == Some(v as i128),
        Value::I16(v) => int_of(j) == Some(v as i128),
        Value::U32(v) => int_of(j) == Some(v as i128),
        Value::I32(v) => int_of(j) == Some(v as i128),
        Value::U64(v) => int_of(j) == Some(v as i128),
        Value::I64(v) => int_of(j) == Some(v as i128),
        Value::F32(v) => match j {
            Json::Null => !v.is_finite(),
            Json::Number(n) => n.to_string().parse::<f32>().is_ok_and(|g| g.to_bits() == v.to_bits()),
            _ => false,
        },
        Value::F64(v) => match j {
            Json::Null => !v.is_finite(),
            Json::Number(n) => n.to_string().parse::<f64>().is_ok_and(|g| g.to_bits() == v.to_bits()),
            _ => false,
        },
        Value::Bool(v) => j.as_bool() == Some(v),
        Value::String(s) => j.as_str() == Some(s),
        Value::Array(ref a) => {
            let ja = j.as_array().expect("kind checked");
            if ja.len() != a.len() {
                errs.push(format!(
                    "{what}: array length differs: pith {} ({:?}), gguf-rs {}",
                    a.len(),
                    a.elem_type,
                    ja.len()
                ));
                return;
            }
            let mut n = 0usize;
            for (i, (pe, je)) in a.iter().zip(ja).enumerate() {
                if pe.value_type() != a.elem_type {
                    errs.push(format!(
                        "{what}[{i}]: pith element type {:?} in an array of {:?}",
                        pe.value_type(),
                        a.elem_type
                    ));
                }
                compare_value(&format!("{what}[{i}]"), &pe, je, errs);
                n += 1;
            }
            if n != a.len() {
                errs.push(format!("{what}: pith's iterator yielded {n} of {} elements", a.len()));
            }
            return;
        }
    };
    if !ok {
        errs.push(format!("{what}: value differs: pith {ty:?} {p:?}, gguf-rs {}", short(j)));
    }
}

/// A JSON value shortened for a message.
fn short(j: &Json) -> String {
    let s = j.to_string();
    if s.len() > 120 {
        format!(
            "{}… ({} chars)",
            &s[..s.char_indices().take_while(|&(i, _)| i < 120).last().map_or(0, |(i, c)| i + c.len_utf8())],
            s.len()
        )
    } else {
        s
    }
}

fn fail_if_any(errs: &[String], what: &str) {
    if !errs.is_empty() {
        let shown: Vec<&str> = errs.iter().take(40).map(String::as_str).collect();
        panic!(
            "pith and gguf-rs disagree on {} {what} item(s):\n  {}{}",
            errs.len(),
            shown.join("\n  "),
            if errs.len() > shown.len() { "\n  …" } else { "" }
        );
    }
}

/// Header mismatches (version, counts, layout).
fn header_errors(g: &Gguf<'_>, r: &GGUFModel) -> Vec<String> {
    let mut errs = Vec::new();
    let mut eq = |what: &str, a: String, b: String| {
        if a != b {
            errs.push(format!("{what}: pith {a}, gguf-rs {b}"));
        }
    };
    eq("GGUF version", format!("v{}", g.version), r.get_version());
    eq("metadata key count (header)", g.metadata.len().to_string(), r.num_kv().to_string());
    eq("distinct metadata keys", g.metadata.len().to_string(), r.metadata().len().to_string());
    eq("tensor count (header)", g.tensors.len().to_string(), r.num_tensor().to_string());
    eq("tensors decoded", g.tensors.len().to_string(), r.tensors().len().to_string());
    eq("alignment", g.alignment.to_string(), r.alignment().to_string());
    eq("data section offset", g.data_offset.to_string(), r.data_offset().to_string());
    errs
}

/// Metadata mismatches: every key both ways, every value, every array element.
/// Also returns how many scalars / array elements were found equal.
fn metadata_errors(g: &Gguf<'_>, r: &GGUFModel) -> (Vec<String>, usize) {
    let mut errs = Vec::new();
    let mut elements = 0usize;
    for (key, pv) in &g.metadata {
        match r.metadata().get(*key) {
            None => errs.push(format!("key '{key}': missing in gguf-rs")),
            Some(j) => {
                let before = errs.len();
                compare_value(&format!("key '{key}'"), pv, j, &mut errs);
                if errs.len() == before {
                    elements += if let Value::Array(a) = pv { a.len() } else { 1 };
                }
            }
        }
    }
    for key in r.metadata().keys() {
        if g.get(key).is_none() {
            errs.push(format!("key '{key}': present in gguf-rs only"));
        }
    }
    (errs, elements)
}

/// Tensor mismatches, in file order. `file` is the buffer `g` was parsed from.
fn tensor_errors(g: &Gguf<'_>, file: &[u8], r: &GGUFModel) -> Vec<String> {
    let base = file.as_ptr() as usize;
    let mut errs = Vec::new();
    for (i, (p, t)) in g.tensors.iter().zip(r.tensors()).enumerate() {
        let name = p.name;
        if t.name != name {
            errs.push(format!("tensor #{i}: name differs: pith '{name}', gguf-rs '{}'", t.name));
            continue;
        }
        if t.n_dimensions as usize != p.dims.len() || t.shape != p.dims {
            errs.push(format!(
                "tensor '{name}': shape differs: pith {:?}, gguf-rs {:?} ({} dims)",
                p.dims, t.shape, t.n_dimensions
            ));
        }
        if t.kind != p.ty as u32 {
            errs.push(format!(
                "tensor '{name}': type id differs: pith {} ({:?}), gguf-rs {}",
                p.ty as u32, p.ty, t.kind
            ));
        }
        if t.offset != p.offset {
            errs.push(format!("tensor '{name}': offset differs: pith {}, gguf-rs {}", p.offset, t.offset));
        }
        if t.size != p.data.len() as u64 {
            errs.push(format!("tensor '{name}': size differs: pith {} bytes, gguf-rs {}", p.data.len(), t.size));
        }
        // pith's borrowed slice must start where gguf-rs says the data is.
        let at = (p.data.as_ptr() as usize - base) as u64;
        if at != r.data_offset() + t.offset {
            errs.push(format!("tensor '{name}': data at file byte {at}, gguf-rs says {}", r.data_offset() + t.offset));
        }
    }
    errs
}

#[test]
fn pith_and_gguf_rs_agree_on_the_real_model() {
    let path = model_path();
    let file = MappedFile::open(&path).expect("map the model");
    let g: Gguf<'_> = file.gguf().expect("pith parses the model");
    let r = decode_with_gguf_rs(&path);

    fail_if_any(&header_errors(&g, &r), "header");

    // Sanity: this really is the big-vocabulary file, so the arrays below are exercised.
    let tokens = g.get_array("tokenizer.ggml.tokens").unwrap().expect("token list");
    assert!(tokens.len() >= 1000, "expected a real vocabulary, got {} tokens", tokens.len());
    assert!(g.get_array("tokenizer.ggml.merges").unwrap().is_some_and(|m| m.len() > 1000), "expected BPE merges");

    let (errs, elements) = metadata_errors(&g, &r);
    fail_if_any(&errs, "metadata");
    eprintln!("{} keys agree ({elements} scalar values / array elements)", g.metadata.len());

    fail_if_any(&tensor_errors(&g, file.bytes(), &r), "tensor");
    eprintln!("{} tensors agree", g.tensors.len());
}

/// A small file with every GGUF value type (the real model uses only a few), so the comparison
/// itself is exercised on all of them, and so a deliberate difference is shown to be caught.
fn all_types_file(tweak: bool) -> Vec<u8> {
    use pith::gguf::writer::{GgufBuilder, OwnedValue as O};
    use pith_kernels::GgmlType;
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", O::String("llama".into()))
        .kv("t.u8", O::U8(250))
        .kv("t.i8", O::I8(-128))
        .kv("t.u16", O::U16(65535))
        .kv("t.i16", O::I16(-32768))
        .kv("t.u32", O::U32(u32::MAX))
        .kv("t.i32", O::I32(i32::MIN))
        .kv("t.u64", O::U64(u64::MAX))
        .kv("t.i64", O::I64(i64::MIN))
        .kv("t.f32", O::F32(if tweak { f32::from_bits(0.1f32.to_bits() + 1) } else { 0.1 }))
        .kv("t.f32_tiny", O::F32(1e-45))
        .kv("t.f64", O::F64(-1.0e300 / 3.0))
        .kv("t.bool", O::Bool(true))
        .kv("t.string", O::String("héllo \u{0} \"quoted\" ▁tok".into()))
        .kv("t.empty_string", O::String(String::new()))
        .kv("t.strings", O::strings(["a", "", "Ġb", "日本"]))
        .kv("t.f32s", O::f32s([0.0, -0.0, 1.5, f32::MIN_POSITIVE, f32::MAX]))
        .kv("t.i32s", O::i32s([1, -2, i32::MAX]))
        .kv("t.u8s", O::Array(ValueType::U8, vec![O::U8(0), O::U8(255)]))
        .kv("t.u64s", O::Array(ValueType::U64, vec![O::U64(u64::MAX), O::U64(if tweak { 8 } else { 7 })]))
        .kv("t.bools", O::Array(ValueType::Bool, vec![O::Bool(false), O::Bool(true)]))
        .kv("t.f64s", O::Array(ValueType::F64, vec![O::F64(std::f64::consts::PI)]))
        .kv("t.empty", O::Array(ValueType::I32, vec![]));
    b.tensor("a", &[64, 2], GgmlType::Q4_1, vec![1; 2 * 2 * 20]);
    b.tensor("b", &[32], GgmlType::F32, vec![2; 128]);
    b.tensor("c", &[256, 1, 2], GgmlType::Q6_K, vec![3; 2 * 210]);
    b.to_bytes()
}

#[test]
fn every_value_type_agrees_on_a_generated_file() {
    let bytes = all_types_file(false);
    let g = Gguf::parse(&bytes).expect("pith parses the generated file");
    let r = decode_reader(std::io::Cursor::new(bytes.clone())).expect("gguf-rs decodes it");
    fail_if_any(&header_errors(&g, &r), "header");
    let (errs, n) = metadata_errors(&g, &r);
    fail_if_any(&errs, "metadata");
    assert!(n > 30, "compared only {n} values");
    fail_if_any(&tensor_errors(&g, &bytes, &r), "tensor");
}

#[test]
fn a_difference_is_reported_with_the_key_name() {
    // pith reads the original file, gguf-rs a copy with two values changed.
    let bytes = all_types_file(false);
    let g = Gguf::parse(&bytes).unwrap();
    let r = decode_reader(std::io::Cursor::new(all_types_file(true))).unwrap();
    let (errs, _) = metadata_errors(&g, &r);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].contains("key 't.f32'"), "{errs:#?}");
    assert!(errs[1].contains("key 't.u64s'[1]"), "{errs:#?}");
}
