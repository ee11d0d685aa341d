//! `pith-compress convert MODEL.npz`: glassllm's FP16 model (fetched, sha256-pinned) becomes a
//! llama GGUF on which pith gives glassllm's own greedy tokens and tokenization (ids computed
//! by glassllm 0.1.0's Python in `tests/fixtures/glassllm-en.json`); broken inputs are refused
//! with the array or file named.

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::Command;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/glassllm-en.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn convert(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pith-compress"))
        .arg("convert")
        .args(args)
        .env("PITH_NO_PROGRESS", "1")
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn glassllm_converts_and_runs_as_glassllm_does() {
    let npz = pith_fetch::ensure_model(pith_fetch::model_by_name("glassllm-en").unwrap()).expect("fetch glassllm-en");
    let tok = pith_fetch::ensure_model(pith_fetch::model_by_name("glassllm-en-tokenizer").unwrap())
        .expect("fetch glassllm-en-tokenizer");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("glass.f32.gguf");
    let (ok, err) = convert(&[
        npz.as_os_str(),
        out.as_os_str(),
        "--tokenizer".as_ref(),
        tok.as_os_str(),
        "--type".as_ref(),
        "f32".as_ref(),
    ]);
    assert!(ok && err.contains("FFN 341 padded with zeros to 352"), "{err}");

    let bytes = std::fs::read(&out).unwrap();
    let g = pith::gguf::Gguf::parse(&bytes).unwrap();
    let m = pith::Model::from_gguf(&g).unwrap();
    assert!(m.unused.is_empty(), "{:?}", m.unused);
    let t = pith::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let f = fixture();
    // Tokenization: glassllm's pre-split + merge-by-rank equals the score-ranked vocabulary,
    // unknown characters (a tab, ⁇) one <unk> each.
    let text = f["tokenize"]["text"].as_str().unwrap();
    assert_eq!(t.encode(text, false).unwrap(), ids(&f["tokenize"]["ids"]), "{text:?}");
    // Greedy continuations: the converted model computes what glassllm computes (f32 here;
    // glassllm runs numpy float32), token for token.
    for case in f["greedy"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let p = t.encode(prompt, false).unwrap();
        assert_eq!(p, ids(&case["prompt_ids"]), "{prompt:?}");
        let want = ids(&case["ids"]);
        let mut st = pith::State::new(&m, 128, p.len()).unwrap();
        st.set_precision(pith::Precision::F32);
        let pool = pith::Pool::single();
        let mut logits = m.forward(&mut st, &pool, &p, pith::Logits::Last).unwrap().to_vec();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let next =
                logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &l)| if l > b.1 { (i, l) } else { b }).0 as u32;
            got.push(next);
            logits = m.forward(&mut st, &pool, &[next], pith::Logits::Last).unwrap().to_vec();
        }
        assert_eq!(got, want, "{prompt:?}: pith {:?} vs glassllm {:?}", t.decode(&got, false), t.decode(&want, false));
    }
}

/// A .npz of `arrays` (name, .npy bytes), stored uncompressed.
fn npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, data) in arrays {
        z.start_file(
            format!("{name}.npy"),
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend(data);
    b
}

fn f16s(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| half::f16::from_f32(((i * 7919) % 200) as f32 / 1000.0 - 0.1).to_le_bytes()).collect()
}

fn text(s: &str) -> Vec<u8> {
    let data: Vec<u8> = s.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
    npy(&format!("<U{}", s.chars().count()), &[], &data)
}

#[test]
fn broken_npz_inputs_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // A tiny glassllm-shaped model: vocab 4 + 2 characters + 2 merges, d 8, 1 layer, 2 heads.
    let (v, d, ff) = (8usize, 8usize, 21usize);
    let cfg = r#"{"vocab_size": 8, "d_model": 8, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "max_len": 16, "rope_base": 10000.0, "eps": 1e-06, "init_std": 0.02}"#;
    let tok = dir.path().join("m.tokenizer.json");
    std::fs::write(&tok, r#"{"version": 1, "alphabet": ["a", "b"], "merges": [["a", "b"], ["ab", "a"]]}"#).unwrap();
    let good = |skip: &str, reshape: &str| -> Vec<(&'static str, Vec<u8>)> {
        let all: Vec<(&'static str, Vec<usize>)> = vec![
            ("E", vec![v, d]),
            ("blocks.0.norm1.gamma", vec![d]),
            ("blocks.0.attn.W_Q", vec![d, d]),
            ("blocks.0.attn.W_K", vec![d, d / 2]),
            ("blocks.0.attn.W_V", vec![d, d / 2]),
            ("blocks.0.attn.W_O", vec![d, d]),
            ("blocks.0.norm2.gamma", vec![d]),
            ("blocks.0.ffn.W1", vec![d, ff]),
            ("blocks.0.ffn.W3", vec![d, ff]),
            ("blocks.0.ffn.W2", vec![ff, d]),
            ("norm_f.gamma", vec![d]),
        ];
        let mut out = vec![("__config__", text(cfg))];
        for (name, mut shape) in all {
            if name == skip {
                continue;
            }
            if name == reshape {
                shape[0] += 1;
            }
            let n = shape.iter().product();
            out.push((name, npy("<f2", &shape, &f16s(n))));
        }
        out
    };
    let input = dir.path().join("m.npz");
    let out = dir.path().join("m.gguf");
    let run = |a: &[(&str, Vec<u8>)]| {
        npz(&input, a);
        let _ = std::fs::remove_file(&out);
        convert(&[input.as_os_str(), out.as_os_str()])
    };
    // The good one converts (FFN 21 → 32) and binds.
    let (ok, err) = run(&good("", ""));
    assert!(ok && err.contains("FFN 21 padded with zeros to 32"), "{err}");
    let bytes = std::fs::read(&out).unwrap();
    let g = pith::gguf::Gguf::parse(&bytes).unwrap();
    assert!(pith::Model::from_gguf(&g).is_ok());
    assert_eq!(pith::tokenizer::Tokenizer::from_gguf(&g).unwrap().encode("aba ab", false).unwrap(), vec![7, 1, 6]);
    // Missing array, wrong shape, extra array, no config, not a zip, bad tokenizer.
    let (ok, err) = run(&good("blocks.0.ffn.W3", ""));
    assert!(!ok && err.contains("blocks.0.ffn.W3 is missing") && !out.exists(), "{err}");
    let (ok, err) = run(&good("", "blocks.0.attn.W_K"));
    assert!(!ok && err.contains("blocks.0.attn.W_K has shape [9, 4], expected [8, 4]"), "{err}");
    let mut extra = good("", "");
    extra.push(("blocks.1.attn.W_Q", npy("<f2", &[d, d], &f16s(d * d))));
    let (ok, err) = run(&extra);
    assert!(!ok && err.contains("array blocks.1.attn.W_Q is not part of"), "{err}");
    let (ok, err) = run(&good("", "")[1..]);
    assert!(!ok && err.contains("no __config__"), "{err}");
    let mut bad = good("", "");
    bad[1].1.truncate(200);
    let (ok, err) = run(&bad);
    assert!(!ok && err.contains("E.npy") && err.contains("data bytes"), "{err}");
    std::fs::write(&input, b"not a zip").unwrap();
    let (ok, err) = convert(&[input.as_os_str(), out.as_os_str()]);
    assert!(!ok && err.contains("not a .npz (zip) file"), "{err}");
    std::fs::write(&tok, r#"{"version": 1, "alphabet": ["a"], "merges": []}"#).unwrap();
    let (ok, err) = run(&good("", ""));
    assert!(!ok && err.contains("m.tokenizer.json") && err.contains("5 tokens, the model has 8"), "{err}");
}
