//! gemma3 (SPM-style vocabulary, 262144 tokens) and qwen2 (byte-level BPE, 151936 tokens)
//! tokenizers against llama.cpp's ids on 246 texts each: wiki leads, code, CJK, emoji, whitespace
//! runs, special tokens, other scripts, random Unicode (`tests/fixtures/families/`: the real
//! files' vocabularies as vocabulary-only GGUFs, made by `examples/vocab_only.rs`, and the ids
//! from llama.cpp b11312's `llama-tokenize --ids --no-bos`). Decoding gives the text back.

use pith::gguf::Gguf;
use pith::tokenizer::Tokenizer;
use std::io::Read;
use std::path::Path;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/families"))
}

fn vocab(name: &str) -> Vec<u8> {
    let f = std::fs::File::open(fixtures().join(format!("{name}.vocab.gguf.gz"))).expect("vocabulary fixture");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f).read_to_end(&mut out).expect("gzip");
    out
}

fn check(model: &str, n_vocab: usize) {
    let bytes = vocab(model);
    let g = Gguf::parse(&bytes).expect("vocabulary parses");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer builds");
    assert_eq!(tok.n_vocab(), n_vocab);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenize.json")).expect("ids")).expect("json");
    let cases = json["cases"].as_array().expect("cases");
    assert!(cases.len() >= 200, "{} cases", cases.len());
    let mut failed = Vec::new();
    for c in cases {
        let (name, text) = (c["name"].as_str().unwrap(), c["text"].as_str().unwrap());
        let want: Vec<u32> = c[model].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, true).expect("encodes");
        if got != want {
            failed.push(format!("{name} {text:?}:\n  pith  {got:?}\n  llama {want:?}"));
            continue;
        }
        // Decoding the ids (special tokens as text) gives the input back, except where the
        // vocabulary cannot hold it (gemma's SPM pieces normalize nothing, so it round-trips too).
        assert_eq!(tok.decode(&got, true), text, "{model} {name}: decode");
    }
    assert!(failed.is_empty(), "{model}: {} of {} differ:\n{}", failed.len(), cases.len(), failed.join("\n"));
}

#[test]
fn gemma3_ids_equal_llama_cpp() {
    check("gemma3", 262144);
}

#[test]
fn qwen2_ids_equal_llama_cpp() {
    check("qwen2", 151936);
}
