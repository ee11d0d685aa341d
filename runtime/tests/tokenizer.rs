//! Tokenizer conformance: pith must produce llama.cpp's token ids exactly.
//!
//! * SmolLM2 reference ids (`tests/fixtures/tokenize/`, produced by llama.cpp) on the real model.
//! * llama.cpp's own test vectors (`ggml-vocab-*.gguf` with `.inp`/`.out`), fetched by
//!   `scripts/fetch-test-vectors.sh`.
//! * Round trips and streaming decode.
//!
//! Missing inputs make the tests fail with instructions; they never pass silently.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pith::gguf::Gguf;
use pith::tokenizer::{StreamDecoder, Tokenizer};

/// The SmolLM2 model file.
fn model_path() -> PathBuf {
    pith_fetch::ensure_default_model().expect("the default model ($PITH_MODEL or the cache)")
}

/// Where `scripts/fetch-test-vectors.sh` puts llama.cpp's vocab test files by default.
fn vectors_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PITH_TEST_VECTORS") {
        return PathBuf::from(p);
    }
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cache = nonempty("PITH_CACHE_DIR").unwrap_or_else(|| {
        nonempty("XDG_CACHE_HOME")
            .unwrap_or_else(|| nonempty("HOME").unwrap_or_else(|| PathBuf::from("/root")).join(".cache"))
            .join("pith")
    });
    cache.join("llama-vocab-0.3.36")
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenize")
}

fn read(path: &Path, hint: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}\n{hint}", path.display()))
}

fn load(bytes: &[u8], what: &str) -> Tokenizer {
    let g = Gguf::parse(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `[1, 2, 3]` → ids.
fn parse_json_ids(s: &str) -> Vec<u32> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap_or_else(|e| panic!("bad id {t:?}: {e}")))
        .collect()
}

fn smollm2() -> (Vec<u8>, PathBuf) {
    let p = model_path();
    let hint = "set PITH_TEST_MODEL to SmolLM2-135M-Instruct (Q4_1 GGUF)";
    (read(&p, hint), p)
}

/// The reference cases: (name, text, ids with special tokens parsed).
fn smollm2_cases() -> Vec<(String, String, Vec<u32>)> {
    let dir = fixtures_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".txt").map(str::to_owned))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no reference cases in {}", dir.display());
    names
        .into_iter()
        .map(|n| {
            let text = String::from_utf8(read(&dir.join(format!("{n}.txt")), "")).expect("UTF-8 text");
            let ids = parse_json_ids(&String::from_utf8_lossy(&read(&dir.join(format!("{n}.ids")), "")));
            (n, text, ids)
        })
        .collect()
}

#[test]
fn smollm2_reference_ids() {
    let (bytes, path) = smollm2();
    let t0 = Instant::now();
    let tok = load(&bytes, &path.display().to_string());
    eprintln!("SmolLM2 tokenizer built in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let mut failures = Vec::new();
    let cases = smollm2_cases();
    for (name, text, want) in &cases {
        let got = tok.encode(text, true).expect("encode");
        if &got != want {
            failures.push(format!("{name}:\n  want {want:?}\n  got  {got:?}"));
        }
    }
    // The chat template with special-token parsing off.
    let dir = fixtures_dir();
    let text = String::from_utf8(read(&dir.join("04_chat_template.txt"), "")).expect("UTF-8");
    let want = parse_json_ids(&String::from_utf8_lossy(&read(&dir.join("04_chat_template.no_parse_special.ids"), "")));
    let got = tok.encode(&text, false).expect("encode");
    if got != want {
        failures.push(format!("04_chat_template (no parse_special):\n  want {want:?}\n  got  {got:?}"));
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len() + 1, failures.join("\n"));
}

#[test]
fn smollm2_metadata() {
    let (bytes, path) = smollm2();
    let tok = load(&bytes, &path.display().to_string());
    assert_eq!(tok.n_vocab(), 49152);
    assert!(!tok.add_bos(), "SmolLM2 sets add_bos_token = false");
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    let im_end = tok.token_id("<|im_end|>").expect("<|im_end|>");
    let endoftext = tok.token_id("<|endoftext|>").expect("<|endoftext|>");
    assert!(tok.is_eog(im_end) && tok.is_eog(endoftext) && tok.is_eog(2));
    assert!(!tok.is_eog(tok.token_id("<|im_start|>").expect("<|im_start|>")));
    assert!(!tok.is_eog(504), "504 is \"The\"");
    // Control tokens print only when asked.
    assert_eq!(tok.token_bytes(im_end, false), b"");
    assert_eq!(tok.token_bytes(im_end, true), b"<|im_end|>");
    assert_eq!(tok.decode(&[1, 504, 2], true), "<|im_start|>The<|im_end|>");
    assert_eq!(tok.decode(&[1, 504, 2], false), "The");
    assert!(tok.token_bytes(u32::MAX, true).is_empty());
}

#[test]
fn smollm2_round_trip_and_streaming() {
    let (bytes, path) = smollm2();
    let tok = load(&bytes, &path.display().to_string());
    let mut split_chars = 0;
    for (name, text, _) in smollm2_cases() {
        for parse_special in [false, true] {
            let ids = tok.encode(&text, parse_special).expect("encode");
            assert_eq!(tok.decode(&ids, true), text, "{name}: decode(encode(x)) != x");
            let (streamed, partial) = stream(&tok, &ids);
            split_chars += partial;
            assert_eq!(streamed, tok.decode(&ids, false), "{name}: streamed text differs from decode");
        }
    }
    // 🦀 and 🚀 are byte-level tokens in SmolLM2: the stream must have held partial characters.
    assert!(split_chars > 0, "no multi-byte character was split across tokens");
}

/// Feeds `ids` one by one; returns the text and how many pushes held back a partial character.
fn stream(tok: &Tokenizer, ids: &[u32]) -> (String, usize) {
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    let mut partial = 0;
    for &id in ids {
        let piece = dec.push(tok, id);
        let bytes = tok.token_bytes(id, false);
        if piece.len() != bytes.len() && std::str::from_utf8(&bytes).is_err() {
            partial += 1;
        }
        out.push_str(&piece);
    }
    out.push_str(&dec.flush());
    (out, partial)
}

#[test]
fn stream_decoder_splits_and_invalid_bytes() {
    let (bytes, path) = smollm2();
    let tok = load(&bytes, &path.display().to_string());
    let ids = tok.encode("a🦀b", false).expect("encode");
    let mut dec = StreamDecoder::new();
    let pieces: Vec<String> = ids.iter().map(|&id| dec.push(&tok, id)).collect();
    assert_eq!(pieces.concat() + &dec.flush(), "a🦀b");
    assert!(pieces.iter().any(|p| p.is_empty()), "🦀 should arrive in several tokens: {ids:?}");
    // A lone continuation byte is replaced; an unfinished character is held, then replaced.
    let byte = |b: u8| tok.token_id(&byte_level(b)).expect("byte token");
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.push(&tok, byte(0x80)), "\u{FFFD}");
    assert_eq!(dec.push(&tok, byte(0xF0)), "");
    assert_eq!(dec.push(&tok, byte(0x9F)), "");
    assert_eq!(dec.flush(), "\u{FFFD}");
    assert_eq!(dec.flush(), "");
}

/// GPT-2's printable character for byte `b`, as a token text.
fn byte_level(b: u8) -> String {
    let keep = |b: u8| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    if keep(b) {
        return char::from(b).to_string();
    }
    let rank = (0..b).filter(|&x| !keep(x)).count() as u32;
    char::from_u32(256 + rank).expect("char").to_string()
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's test vectors

struct Vocab {
    tok: Tokenizer,
    cases: Vec<(String, Vec<u32>)>,
}

fn vocab(name: &str) -> Vocab {
    let dir = vectors_dir();
    let base = dir.join(format!("ggml-vocab-{name}.gguf"));
    let hint = format!(
        "llama.cpp's tokenizer test vectors are missing from {}: run scripts/fetch-test-vectors.sh \
         (or set PITH_TEST_VECTORS to a directory holding ggml-vocab-*.gguf{{,.inp,.out}})",
        dir.display()
    );
    let bytes = read(&base, &hint);
    let inp = read(&dir.join(format!("ggml-vocab-{name}.gguf.inp")), &hint);
    let out = read(&dir.join(format!("ggml-vocab-{name}.gguf.out")), &hint);
    let tok = load(&bytes, &base.display().to_string());
    // Framing as in llama.cpp's test-tokenizer-0.cpp: texts separated by the marker line, one
    // line of space-separated ids per text.
    let raw = String::from_utf8(inp).expect("UTF-8 .inp");
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(sep) {
            Some(i) => {
                texts.push(raw[pos..pos + i].to_owned());
                pos += i + sep.len();
            }
            None => {
                texts.push(raw[pos..].to_owned());
                break;
            }
        }
    }
    let outs: Vec<Vec<u32>> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().expect("id")).collect())
        .collect();
    assert_eq!(texts.len(), outs.len(), "{name}: .inp and .out disagree on the number of tests");
    assert!(!texts.is_empty(), "{name}: no tests");
    Vocab { tok, cases: texts.into_iter().zip(outs).collect() }
}

/// Every case must match llama.cpp (tokenized with add_special = false, parse_special = false).
fn check_vocab(name: &str) {
    let v = vocab(name);
    let mut failures = Vec::new();
    for (text, want) in &v.cases {
        let got = v.tok.encode(text, false).expect("encode");
        if &got != want {
            failures.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    eprintln!("{name}: {}/{} cases match", v.cases.len() - failures.len(), v.cases.len());
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        v.cases.len(),
        failures.join("\n")
    );
}

/// decode(encode(x)) == x and streaming == decode, on every test text (where lossless).
fn check_round_trip(name: &str) {
    let v = vocab(name);
    for (text, _) in &v.cases {
        let ids = v.tok.encode(text, false).expect("encode");
        assert_eq!(&v.tok.decode(&ids, false), text, "{name}: decode(encode({text:?}))");
        // Streaming is a continuation: it keeps the SPM space prefix that decode strips from a
        // first token, exactly as decode does after a BOS.
        let (streamed, _) = stream(&v.tok, &ids);
        let mut with_bos = Vec::from_iter(v.tok.bos());
        with_bos.extend(&ids);
        assert_eq!(streamed, v.tok.decode(&with_bos, false), "{name}: streaming {text:?}");
    }
}

macro_rules! vocab_tests {
    ($($test:ident => $name:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            check_vocab($name);
        }
    )*};
}

vocab_tests! {
    vocab_gpt_2 => "gpt-2",
    vocab_llama_bpe => "llama-bpe",
    vocab_llama_spm => "llama-spm",
    vocab_qwen2 => "qwen2",
    vocab_phi_3 => "phi-3",
    vocab_qwen35 => "qwen35",
    vocab_starcoder => "starcoder",
    vocab_refact => "refact",
    vocab_command_r => "command-r",
    vocab_mpt => "mpt",
    vocab_falcon => "falcon",
    vocab_deepseek_llm => "deepseek-llm",
    vocab_deepseek_coder => "deepseek-coder",
    vocab_gemma_4 => "gemma-4",
}

#[test]
fn round_trip_gpt_2() {
    check_round_trip("gpt-2");
}

#[test]
fn round_trip_llama_bpe() {
    check_round_trip("llama-bpe");
}

#[test]
fn round_trip_qwen2() {
    check_round_trip("qwen2");
}

#[test]
fn round_trip_llama_spm() {
    check_round_trip("llama-spm");
}

#[test]
fn llama_spm_details() {
    let v = vocab("llama-spm");
    let tok = &v.tok;
    assert!(tok.add_bos());
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    assert!(tok.is_eog(2));
    // Space prefix, and again after a special token.
    let hello = tok.encode("Hello", false).expect("encode");
    assert_eq!(hello, vec![tok.token_id("▁Hello").expect("▁Hello")]);
    let ids = tok.encode("Hello</s>Hello", true).expect("encode");
    assert_eq!(ids, [hello.clone(), vec![2], hello.clone()].concat());
    // Without parse_special, "</s>" is text.
    assert!(!tok.encode("Hello</s>Hello", false).expect("encode").contains(&2));
    // Byte fallback: a character missing from the vocabulary goes out as <0xXX> tokens.
    let ids = tok.encode("\u{10348}", false).expect("encode");
    let bytes: Vec<u32> = "\u{10348}".bytes().map(|b| tok.token_id(&format!("<0x{b:02X}>")).expect("byte")).collect();
    assert_eq!(ids[1..], bytes[..]);
    assert_eq!(tok.decode(&ids, false), "\u{10348}");
}

// ---------------------------------------------------------------------------------------------
// Synthetic vocabularies: behaviour the test vectors do not reach (checked against llama.cpp)

mod synthetic {
    use super::{byte_level, stream};
    use pith::gguf::writer::{GgufBuilder, OwnedValue};
    use pith::gguf::{Gguf, ValueType};
    use pith::tokenizer::Tokenizer;

    fn build(kvs: Vec<(&str, OwnedValue)>) -> Vec<u8> {
        let mut b = GgufBuilder::new();
        b.kv("general.architecture", OwnedValue::String("llama".into()));
        for (k, v) in kvs {
            b.kv(k, v);
        }
        b.to_bytes()
    }

    fn tok(bytes: &[u8]) -> Tokenizer {
        Tokenizer::from_gguf(&Gguf::parse(bytes).expect("gguf")).expect("tokenizer")
    }

    fn i32s(v: &[i32]) -> OwnedValue {
        OwnedValue::Array(ValueType::I32, v.iter().map(|&x| OwnedValue::I32(x)).collect())
    }

    /// An SPM vocabulary: <unk> <s> </s>, 256 byte tokens, then `normal` with their scores, then
    /// a user-defined "<|user|>".
    fn spm(name: &str, normal: &[(&str, f32)]) -> Vec<u8> {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for &(t, s) in normal {
            tokens.push(t.into());
            types.push(1);
            scores.push(s);
        }
        tokens.push("<|user|>".into());
        types.push(4);
        scores.push(0.0);
        build(vec![
            ("general.name", OwnedValue::String(name.into())),
            ("tokenizer.ggml.model", OwnedValue::String("llama".into())),
            ("tokenizer.ggml.tokens", OwnedValue::strings(tokens)),
            ("tokenizer.ggml.scores", OwnedValue::f32s(scores)),
            ("tokenizer.ggml.token_type", i32s(&types)),
        ])
    }

    fn ids(t: &Tokenizer, texts: &[&str]) -> Vec<u32> {
        texts.iter().map(|s| t.token_id(s).unwrap_or_else(|| panic!("no token {s:?}"))).collect()
    }

    #[test]
    fn spm_merge_order() {
        let base = [("▁", -1.0), ("a", -1.0), ("b", -1.0), ("c", -1.0)];
        // Equal scores: the leftmost pair merges first.
        let t = tok(&spm("toy", &[&base[..], &[("ab", -2.0), ("bc", -2.0)]].concat()));
        assert_eq!(t.encode("abc", false).unwrap(), ids(&t, &["▁", "ab", "c"]));
        // A higher score wins wherever it is.
        let t = tok(&spm("toy", &[&base[..], &[("ab", -2.0), ("bc", -1.5)]].concat()));
        assert_eq!(t.encode("abc", false).unwrap(), ids(&t, &["▁", "a", "bc"]));
        // Characters without a token fall back to bytes; decode restores them.
        let got = t.encode("aä", false).unwrap();
        assert_eq!(got, ids(&t, &["▁", "a", "<0xC3>", "<0xA4>"]));
        assert_eq!(t.decode(&got, false), "aä");
        assert_eq!(stream(&t, &got).0, " aä");
    }

    #[test]
    fn spm_user_defined_and_rstrip() {
        let normal = [("▁", -1.0), ("a", -1.0), ("b", -1.0), ("ab", -0.5)];
        // User-defined tokens are matched even without parse_special; the text after a special
        // token gets the space prefix again.
        let t = tok(&spm("toy", &normal));
        let got = t.encode("ab<|user|>  ab", false).unwrap();
        assert_eq!(got, ids(&t, &["▁", "ab", "<|user|>", "▁", "▁", "▁", "ab"]));
        // llama.cpp gives every special token of a model named Phi-3 `rstrip`.
        let t = tok(&spm("Phi3 mini", &normal));
        let got = t.encode("ab<|user|>  ab", false).unwrap();
        assert_eq!(got, ids(&t, &["▁", "ab", "<|user|>", "▁", "ab"]));
        // Control tokens only with parse_special.
        assert_eq!(t.encode("</s>", true).unwrap(), vec![2]);
        assert!(!t.encode("</s>", false).unwrap().contains(&2));
    }

    /// A byte-level BPE vocabulary: the 256 byte characters, then `extra`, with `merges`.
    fn bpe(pre: &str, extra: &[&str], merges: &[&str]) -> Vec<u8> {
        let mut tokens: Vec<String> = (0..=255u8).map(byte_level).collect();
        tokens.extend(extra.iter().map(|s| s.to_string()));
        tokens.push("<|endoftext|>".into());
        let mut types = vec![1; tokens.len()];
        *types.last_mut().unwrap() = 3;
        build(vec![
            ("tokenizer.ggml.model", OwnedValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", OwnedValue::String(pre.into())),
            ("tokenizer.ggml.tokens", OwnedValue::strings(tokens)),
            ("tokenizer.ggml.token_type", i32s(&types)),
            ("tokenizer.ggml.merges", OwnedValue::strings(merges.iter().copied())),
        ])
    }

    #[test]
    fn bpe_merge_order() {
        // The same pair twice in a word: the leftmost merges first.
        let t = tok(&bpe("gpt-2", &["aa"], &["a a"]));
        assert_eq!(t.encode("aaa", false).unwrap(), ids(&t, &["aa", "a"]));
        // Lower rank first; a pair listed twice keeps its first rank.
        let t = tok(&bpe("gpt-2", &["ab", "bc"], &["b c", "a b", "b c"]));
        assert_eq!(t.encode("abc", false).unwrap(), ids(&t, &["a", "bc"]));
        let t = tok(&bpe("gpt-2", &["ab", "bc"], &["a b", "b c", "a b"]));
        assert_eq!(t.encode("abc", false).unwrap(), ids(&t, &["ab", "c"]));
        // Merges go through intermediate strings that are not tokens (llama.cpp matches by text).
        let t = tok(&bpe("gpt-2", &["xyz"], &["x y", "xy z"]));
        assert_eq!(t.encode("xyz", false).unwrap(), ids(&t, &["xyz"]));
        // A space joins the next word: "Ġ" is byte-level for ' '.
        let t = tok(&bpe("gpt-2", &["Ġa"], &["Ġ a"]));
        assert_eq!(t.encode("a a", false).unwrap(), ids(&t, &["a", "Ġa"]));
    }

    #[test]
    fn bpe_ignore_merges() {
        // llama-bpe takes a word that is a token whole; gpt-2 only gets there through merges.
        let t = tok(&bpe("llama-bpe", &["hello"], &[]));
        assert_eq!(t.encode("hello", false).unwrap(), ids(&t, &["hello"]));
        let t = tok(&bpe("gpt-2", &["hello"], &[]));
        assert_eq!(t.encode("hello", false).unwrap(), ids(&t, &["h", "e", "l", "l", "o"]));
        assert!(t.is_eog(t.token_id("<|endoftext|>").unwrap()));
        assert_eq!(t.encode("<|endoftext|>", true).unwrap(), ids(&t, &["<|endoftext|>"]));
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let err = |bytes: Vec<u8>| Tokenizer::from_gguf(&Gguf::parse(&bytes).expect("gguf")).unwrap_err().to_string();
        assert!(err(build(vec![])).contains("tokenizer.ggml.model"));
        let e = err(build(vec![("tokenizer.ggml.model", OwnedValue::String("bert".into()))]));
        assert!(e.contains("not supported"), "{e}");
        assert!(err(bpe("no-such-pre", &[], &[])).contains("no-such-pre"));
        let e = err(build(vec![
            ("tokenizer.ggml.model", OwnedValue::String("llama".into())),
            ("tokenizer.ggml.tokens", OwnedValue::strings(["a", "b"])),
            ("tokenizer.ggml.scores", OwnedValue::f32s([0.0])),
        ]));
        assert!(e.contains("scores"), "{e}");
        let e = err(build(vec![
            ("tokenizer.ggml.model", OwnedValue::String("gpt2".into())),
            ("tokenizer.ggml.tokens", OwnedValue::strings(["a"])),
        ]));
        assert!(e.contains("merges"), "{e}");
    }
}
