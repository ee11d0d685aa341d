//! `pith-compress eval` on tiny synthetic models written by the test: a model against itself,
//! quantized copies, the report, the plot, and every bad input.

use pith::engine::Engine;
use pith::file::MappedFile;
use pith::testing::{build, spm_vocab, Rng, TinySpec};
use pith_kernels::GgmlType;
use pith_models::eval::{self, EvalArgs, OutputFormat};
use std::path::{Path, PathBuf};

const WORDS: [&str; 12] = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "big", "red", "hat"];

/// A tiny llama GGUF with an SPM tokenizer over WORDS plus `extra_tokens` unused tokens:
/// weights drawn from `seed` (the same values for every `weight_type`, which only changes how
/// they are stored, the token embedding's included).
fn tiny_gguf(weight_type: GgmlType, extra_tokens: usize, seed: u64) -> Vec<u8> {
    let vocab = spm_vocab(&WORDS, extra_tokens);
    let spec = TinySpec {
        n_vocab: vocab.len(),
        weight_type,
        embd_type: Some(weight_type),
        seed,
        vocab: Some(vocab),
        ..Default::default()
    };
    build(&spec).0
}

/// Pseudo-random sentences of WORDS and odd letters.
fn text(n_words: usize) -> String {
    let mut rng = Rng(42);
    let mut s = String::new();
    for i in 0..n_words {
        let r = rng.next_u64() as usize;
        if r.is_multiple_of(7) {
            s.push_str(&format!("x{}q", (b'a' + (r / 7 % 26) as u8) as char));
        } else {
            s.push_str(WORDS[r / 7 % WORDS.len()]);
        }
        s.push(if i % 11 == 10 { '\n' } else { ' ' });
    }
    s
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files { dir: tempfile::tempdir().unwrap() }
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn args(models: &[&Path], base: &Path, file: &Path, ctx: usize) -> EvalArgs {
    EvalArgs {
        models: models.iter().map(|p| p.to_path_buf()).collect(),
        base: base.to_path_buf(),
        file: file.to_path_buf(),
        ctx,
        chunks: 0,
        threads: 1,
        plot: None,
        force: false,
        format: OutputFormat::Table,
        precision: "f32".into(),
    }
}

fn err(a: &EvalArgs) -> String {
    match eval::run(a) {
        Ok(()) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

const CTX: usize = 32;

#[test]
fn a_model_against_itself_has_zero_kld_and_pith_perplexitys_ppl() {
    let f = Files::new();
    let p = f.write("base.gguf", &tiny_gguf(GgmlType::F32, 0, 1));
    let (fa, fb) = (MappedFile::open(&p).unwrap(), MappedFile::open(&p).unwrap());
    for threads in [1, 2] {
        let base = Engine::load(&fa, threads).unwrap();
        let same = Engine::load(&fb, threads).unwrap();
        let tokens = base.tokenizer.encode(&text(400), false).unwrap();
        assert!(tokens.len() >= 4 * CTX, "{} tokens", tokens.len());
        assert!(base.tokenizer.add_bos());
        let mut calls = 0;
        let ev = eval::evaluate(&base, &[("self", &same)], &tokens, CTX, 3, |e| {
            calls += 1;
            assert_eq!(e.base.chunks, calls);
            assert_eq!(e.models[0].ppl.chunks, calls);
        })
        .unwrap();
        assert_eq!((calls, ev.n_chunks), (3, 3));
        let m = &ev.models[0];
        let scored = 3 * (CTX - 1 - CTX / 2);
        assert_eq!(m.count(), scored);
        assert!(m.kld.iter().all(|k| k.abs() <= 1e-9), "{:?}", m.kld);
        assert_eq!(m.mean_kld().0, 0.0);
        assert_eq!(m.same_top, scored);
        assert_eq!(m.ln_ppl_ratio().0, 0.0);
        // `pith perplexity`'s own function on the same tokens.
        let bos = if base.tokenizer.add_bos() { base.tokenizer.bos() } else { None };
        let want = pith::perplexity::perplexity(
            &base.model,
            &base.pool,
            &tokens,
            pith::perplexity::PerplexityParams { n_ctx: CTX, max_chunks: 3, bos, precision: pith::Precision::F32 },
            |_| {},
        )
        .unwrap();
        assert_eq!(ev.base, want);
        assert_eq!(m.ppl, want);
        assert!(want.ppl() > 1.0 && want.ppl().is_finite());
    }
}

#[test]
fn quantized_copies_diverge_in_order_of_precision() {
    let f = Files::new();
    let base_p = f.write("base.gguf", &tiny_gguf(GgmlType::F32, 0, 1));
    let q8_p = f.write("tiny-q8_0.gguf", &tiny_gguf(GgmlType::Q8_0, 0, 1));
    let q4_p = f.write("tiny-q4_0.gguf", &tiny_gguf(GgmlType::Q4_0, 0, 1));
    let other_p = f.write("other.gguf", &tiny_gguf(GgmlType::F32, 0, 2));
    let files: Vec<MappedFile> =
        [&base_p, &q8_p, &q4_p, &other_p].iter().map(|p| MappedFile::open(p).unwrap()).collect();
    let e: Vec<Engine> = files.iter().map(|f| Engine::load(f, 2).unwrap()).collect();
    let tokens = e[0].tokenizer.encode(&text(400), false).unwrap();
    let ev = eval::evaluate(&e[0], &[("q8", &e[1]), ("q4", &e[2]), ("other", &e[3])], &tokens, CTX, 0, |_| {}).unwrap();
    assert_eq!(ev.n_chunks, tokens.len() / CTX);
    let k: Vec<f64> = ev.models.iter().map(|m| m.mean_kld().0).collect();
    assert!(0.0 < k[0] && k[0] < k[1] && k[1] < k[2], "mean KLDs {k:?}");
    assert!(ev.models.iter().all(|m| m.kld.iter().all(|&v| v >= -1e-12 && v.is_finite())));
    let top: Vec<f64> = ev.models.iter().map(|m| m.same_top_fraction().0).collect();
    assert!(top[0] > top[2] && top[2] < 0.9, "same top {top:?}");
    // Each model's PPL is the runtime's perplexity of that model on the same tokens.
    let bos = e[0].tokenizer.bos();
    for (m, eng) in ev.models.iter().zip(&e[1..]) {
        let want = pith::perplexity::perplexity(
            &eng.model,
            &eng.pool,
            &tokens,
            pith::perplexity::PerplexityParams { n_ctx: CTX, max_chunks: 0, bos, precision: pith::Precision::F32 },
            |_| {},
        )
        .unwrap();
        assert_eq!(m.ppl, want, "{}", m.name);
        assert!(m.ppl.ppl() != ev.base.ppl());
        assert!((m.ln_ppl_ratio().0 - (m.ppl.ppl() / ev.base.ppl()).ln()).abs() < 1e-9);
    }
    // Sizes and bits per weight.
    let info = |i: usize| eval::FileInfo::of(files[i].bytes().len() as u64, &e[i].gguf);
    let (b, q8, q4) = (info(0), info(1), info(2));
    assert!(b.bytes > q8.bytes && q8.bytes > q4.bytes);
    assert!(b.bits_per_weight() > 31.0 && b.bits_per_weight() <= 32.0, "{}", b.bits_per_weight());
    assert!((q8.bits_per_weight() - 8.5).abs() < 0.3, "{}", q8.bits_per_weight()); // norms are f32
    assert!((q4.bits_per_weight() - 4.5).abs() < 0.3, "{}", q4.bits_per_weight());
}

#[test]
fn run_prints_and_plots_and_refuses_to_overwrite() {
    let f = Files::new();
    let base = f.write("base-f32.gguf", &tiny_gguf(GgmlType::F32, 0, 1));
    let q8 = f.write("tiny-q8_0.gguf", &tiny_gguf(GgmlType::Q8_0, 0, 1));
    let q4 = f.write("tiny-q4_0.gguf", &tiny_gguf(GgmlType::Q4_0, 0, 1));
    let txt = f.write("text.txt", text(300).as_bytes());
    let svg = f.path("plot.svg");
    let mut a = args(&[&q8, &q4], &base, &txt, CTX);
    a.chunks = 2;
    a.plot = Some(svg.clone());
    a.format = OutputFormat::Json;
    eval::run(&a).unwrap();
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    for want in [">tiny-q8_0<", ">tiny-q4_0<", "base-f32", "File size vs KL divergence", "file size (MiB)"] {
        assert!(s.contains(want), "plot lacks {want}");
    }
    assert_eq!(s.matches("<circle").count(), 2);
    // The plot exists now: refused without --force (before any work), replaced with it.
    let e = err(&a);
    assert!(e.contains("plot.svg") && e.contains("--force"), "{e}");
    a.force = true;
    a.format = OutputFormat::Table;
    eval::run(&a).unwrap();
    // Never over an input.
    let mut a2 = args(&[&q8], &base, &txt, CTX);
    a2.plot = Some(q8.clone());
    a2.force = true;
    assert!(err(&a2).contains("input"));
}

#[test]
fn bad_inputs_give_errors_naming_the_problem() {
    let f = Files::new();
    let base = f.write("base.gguf", &tiny_gguf(GgmlType::F32, 0, 1));
    let txt = f.write("text.txt", text(300).as_bytes());
    // A model that does not exist, or is not GGUF: the file is named.
    let missing = f.path("missing.gguf");
    let e = err(&args(&[&missing], &base, &txt, CTX));
    assert!(e.contains("missing.gguf"), "{e}");
    let junk = f.write("junk.gguf", b"this is not a GGUF file at all, just text");
    let e = err(&args(&[&junk], &base, &txt, CTX));
    assert!(e.contains("junk.gguf"), "{e}");
    let e = err(&args(&[&base], &junk, &txt, CTX));
    assert!(e.contains("junk.gguf"), "{e}");
    let empty_model = f.write("empty.gguf", b"");
    assert!(err(&args(&[&empty_model], &base, &txt, CTX)).contains("empty.gguf"));
    // Text: missing, empty, not UTF-8, shorter than one chunk.
    let e = err(&args(&[&base], &base, &f.path("nope.txt"), CTX));
    assert!(e.contains("nope.txt"), "{e}");
    let empty = f.write("empty.txt", b"");
    let e = err(&args(&[&base], &base, &empty, CTX));
    assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");
    let bin = f.write("bin.txt", &[b'a', 0xff, 0xfe]);
    assert!(err(&args(&[&base], &base, &bin, CTX)).contains("UTF-8"));
    let short = f.write("short.txt", b"the cat sat");
    let e = err(&args(&[&base], &base, &short, CTX));
    assert!(e.contains("short.txt") && e.contains("fewer than one chunk"), "{e}");
    // Context too small.
    let e = err(&args(&[&base], &base, &txt, 3));
    assert!(e.contains("-c 3") && e.contains("at least 4"), "{e}");
    // A different vocabulary: the model is named.
    let wide = f.write("wide-vocab.gguf", &tiny_gguf(GgmlType::F32, 5, 1));
    let e = err(&args(&[&wide], &base, &txt, CTX));
    assert!(e.contains("wide-vocab.gguf") && e.contains("vocabulary"), "{e}");
    // And through the library function.
    let (fb, fw) = (MappedFile::open(&base).unwrap(), MappedFile::open(&wide).unwrap());
    let (eb, ew) = (Engine::load(&fb, 1).unwrap(), Engine::load(&fw, 1).unwrap());
    let e = eval::evaluate(&eb, &[("wide", &ew)], &[1; 64], CTX, 0, |_| {}).unwrap_err().to_string();
    assert!(e.contains("wide") && e.contains("vocabulary"), "{e}");
    let e = eval::evaluate(&eb, &[("self", &eb)], &[1; 10], CTX, 0, |_| {}).unwrap_err().to_string();
    assert!(e.contains("fewer than one chunk"), "{e}");
    let e = eval::evaluate(&eb, &[("self", &eb)], &[1; 64], 2, 0, |_| {}).unwrap_err().to_string();
    assert!(e.contains("-c 2"), "{e}");
}

#[test]
fn the_binary_prints_json_rows() {
    let f = Files::new();
    let base = f.write("base.gguf", &tiny_gguf(GgmlType::F32, 0, 1));
    let q4 = f.write("tiny-q4_0.gguf", &tiny_gguf(GgmlType::Q4_0, 0, 1));
    let txt = f.write("text.txt", text(300).as_bytes());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pith-compress"))
        .args(["eval", "-m", &s(&q4), "-m", &s(&base), "--base", &s(&base), "-f", &s(&txt), "-c", "32"])
        .args(["--chunks", "2", "-t", "1", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[0]["role"].as_str(), rows[0]["name"].as_str()), (Some("base"), Some("base")));
    assert_eq!(rows[1]["name"], "tiny-q4_0");
    assert!(rows[1]["kld_mean"].as_f64().unwrap() > 0.0);
    assert_eq!(rows[2]["kld_mean"].as_f64(), Some(0.0));
    assert_eq!(rows[2]["same_top_percent"].as_f64(), Some(100.0));
    assert_eq!(rows[2]["ppl"], rows[0]["ppl"]);
    assert_eq!(rows[1]["chunks"], 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[2/2]") && stderr.contains("per chunk"), "{stderr}");
    // A bad option is an error with a non-zero exit status, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pith-compress"))
        .args(["eval", "-m", &s(&q4), "--base", &s(&base), "-f", &s(&txt), "-c", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-c 2"));
}

/// `eval > /dev/full` is an error naming stdout (exit 1, no panic); `eval | head -c 5` ends
/// quietly (issue 12).
#[test]
fn the_binary_checks_its_stdout() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let f = Files::new();
    let base = f.write("base.gguf", &tiny_gguf(GgmlType::F32, 0, 1));
    let q4 = f.write("tiny-q4_0.gguf", &tiny_gguf(GgmlType::Q4_0, 0, 1));
    let txt = f.write("text.txt", text(300).as_bytes());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cmd = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pith-compress"));
        c.args(["eval", "-m", &s(&q4), "--base", &s(&base), "-f", &s(&txt), "-c", "32", "--chunks", "2", "-t", "1"])
            .env("RUST_BACKTRACE", "1")
            .env("PITH_NO_PROGRESS", "1")
            .stderr(Stdio::piped());
        c
    };
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = cmd().stdout(full).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("pith-compress: error: writing to stdout: No space left on device"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    let mut child = cmd().stdout(Stdio::piped()).spawn().unwrap();
    let mut head = [0u8; 5];
    let mut out = child.stdout.take().unwrap();
    out.read_exact(&mut head).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(!e.contains("panicked") && !e.contains("error"), "{e}");
}
