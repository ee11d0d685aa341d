//! pith-compress on the real default model: every file it writes loads in pith and in the
//! Python `gguf` package's reader (llama.cpp's gguf-py) with the same tensors and values.

use pith::engine::Engine;
use pith::file::MappedFile;
use pith::gguf::Gguf;
use pith_models::imatrix;
use pith_models::quantize::{self, Method, Options, Scheme};
use std::path::{Path, PathBuf};
use std::process::Command;

fn model_path() -> PathBuf {
    pith_fetch::ensure_default_model().expect("the default model ($PITH_MODEL or the cache)")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// The interpreter of the environment made by scripts/setup-python.sh.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PITH_TEST_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("PITH_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
            .join("pith")
    });
    let p = cache.join("python-gguf-0.19.0/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup-python.sh (scripts/test.sh does)", p.display());
    p
}

fn quantize_to(g: &Gguf<'_>, scheme: &str, method: Method, im: Option<&imatrix::Imatrix>, out: &Path) {
    let opts = Options {
        scheme: Scheme::parse(scheme).unwrap(),
        overrides: &[],
        pure: false,
        imatrix: im,
        method,
        damp: 0.01,
        allow_requantize: true,
    };
    let (b, _) = quantize::quantize(g, &opts, false).unwrap();
    quantize::write_gguf(&b, out, false, &[]).unwrap();
}

/// Per tensor: (sum, sum of |x|) of pith's dequantization, in f64.
fn pith_checksums(g: &Gguf<'_>) -> Vec<(String, String, Vec<u64>, f64, f64)> {
    g.tensors
        .iter()
        .map(|t| {
            let n = t.n_cols();
            let rb = t.data.len() / t.n_rows().max(1);
            let mut row = vec![0f32; n];
            let (mut s, mut a) = (0f64, 0f64);
            for r in 0..t.n_rows() {
                pith_kernels::dequantize_row(t.ty, &t.data[r * rb..(r + 1) * rb], &mut row);
                for &v in &row {
                    s += v as f64;
                    a += (v as f64).abs();
                }
            }
            (t.name.to_string(), t.ty.name().to_ascii_uppercase(), t.dims.clone(), s, a)
        })
        .collect()
}

#[test]
fn every_written_file_loads_in_pith_and_in_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    let src = MappedFile::open(model_path()).unwrap();
    let g = src.gguf().unwrap();
    let mut files = Vec::new();
    for ty in ["f32", "f16", "bf16"] {
        let p = dir.path().join(format!("{ty}.gguf"));
        let (b, rep) = quantize::dequantize(&g, quantize::parse_type(ty).unwrap()).unwrap();
        if ty == "f32" {
            assert_eq!(rep.inexact, 0, "F32 dequantization must be exact");
        }
        quantize::write_gguf(&b, &p, false, &[]).unwrap();
        files.push(p);
    }
    let f16 = MappedFile::open(&files[1]).unwrap();
    let g16 = f16.gguf().unwrap();
    // IQ4_XS: the 576-wide tensors fall back to IQ4_NL, ffn_down (1536 wide) stays IQ4_XS.
    for scheme in
        ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "Q4_K_M"]
    {
        let p = dir.path().join(format!("{scheme}.gguf"));
        quantize_to(&g16, scheme, Method::Rtn, None, &p);
        files.push(p);
    }
    // Calibration statistics, then the importance-weighted and compensated methods.
    let eng = Engine::load(&f16, 2).unwrap();
    let text = std::fs::read_to_string(fixture("calibration_wiki_leads.txt")).unwrap();
    let tokens = eng.tokenizer.encode(&text, false).unwrap();
    let mut im = imatrix::collect(&eng, &tokens, 128, 4, true, |_, _| {}).unwrap();
    im.datasets = vec!["calibration_wiki_leads.txt".into()];
    let imp = dir.path().join("imatrix.gguf");
    imatrix::save(&im, &imp, false, &[]).unwrap();
    let im2 = imatrix::load(&imp).unwrap();
    assert_eq!(im2.sites.len(), im.sites.len());
    assert!(im2.has_hessians());
    files.push(imp);
    for (scheme, method) in [("Q4_0", Method::Imatrix), ("Q4_0", Method::Gptq), ("IQ4_XS", Method::Imatrix)] {
        let p = dir.path().join(format!("{scheme}-{}.gguf", method.name()));
        quantize_to(&g16, scheme, method, Some(&im2), &p);
        files.push(p);
    }

    let out = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/check_gguf.py"))
        .args(&files)
        .output()
        .expect("run the gguf reader");
    assert!(out.status.success(), "gguf-py failed: {}", String::from_utf8_lossy(&out.stderr));
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in &files {
        let f = MappedFile::open(p).unwrap();
        let g = f.gguf().unwrap();
        let desc = &py[p.to_str().unwrap()];
        let keys: Vec<&str> = desc["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        for (k, _) in &g.metadata {
            assert!(keys.contains(k), "{}: gguf-py does not see key {k}", p.display());
        }
        for (name, ty, dims, sum, abssum) in pith_checksums(&g) {
            let t = &desc["tensors"][&name];
            assert_eq!(t["type"].as_str().unwrap(), ty, "{}: {name} type", p.display());
            // gguf-py's `shape` is in ggml order, as in the file.
            let shape: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            assert_eq!(shape, dims, "{}: {name} shape", p.display());
            assert_eq!(t["nonfinite"].as_u64(), Some(0), "{}: {name} has non-finite values", p.display());
            let tol = 1e-9 * abssum.max(1.0);
            assert!((t["sum"].as_f64().unwrap() - sum).abs() <= tol, "{}: {name} sum differs", p.display());
            assert!((t["abssum"].as_f64().unwrap() - abssum).abs() <= tol, "{}: {name} |sum| differs", p.display());
        }
        if g.get("general.type").and_then(|v| v.as_str()) == Some("imatrix") {
            continue;
        }
        // And pith runs it: a few tokens through the model give finite logits.
        let eng = Engine::load(&f, 2).unwrap();
        let mut state = pith::State::new(&eng.model, 64, 64).unwrap();
        let ids = eng.tokenize_prompt("The capital of France is").unwrap();
        let logits = eng.model.forward(&mut state, &eng.pool, &ids, pith::Logits::Last).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "{}: non-finite logits", p.display());
    }
}
