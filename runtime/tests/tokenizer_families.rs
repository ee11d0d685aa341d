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

/// Chat templates render through minijinja exactly as Jinja renders them (jinja2 with
/// trim_blocks and lstrip_blocks, as llama.cpp's Jinja engine and HF's apply_chat_template do):
/// qwen2's own template (default system prompt, multi-turn, generation prompt), and for gemma3,
/// whose file has no template, llama.cpp's ChatML fallback.
#[test]
fn chat_templates_render_as_jinja_does() {
    use pith::chat::{ChatTemplate, Message};
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("chat.json")).expect("chat fixture")).unwrap();
    for model in ["qwen2", "gemma3"] {
        let bytes = vocab(model);
        let g = Gguf::parse(&bytes).unwrap();
        let tok = Tokenizer::from_gguf(&g).unwrap();
        let text = |id: Option<u32>| id.map(|i| tok.decode(&[i], true)).unwrap_or_default();
        let src = g.get_str("tokenizer.chat_template").unwrap();
        assert_eq!(src.is_none(), model == "gemma3", "{model}: template presence");
        let t = ChatTemplate::new(src, &text(tok.bos()), &text(tok.eos())).unwrap();
        for (i, c) in json["cases"].as_array().unwrap().iter().enumerate() {
            let msgs: Vec<Message> = c["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let got = t.render(&msgs, c["add_generation_prompt"].as_bool().unwrap()).unwrap();
            assert_eq!(got, c[model].as_str().unwrap(), "{model} conversation {i}");
        }
    }
}
