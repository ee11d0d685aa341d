//! The `pith-compress` binary on bad input: each case gives an error naming the problem, exit
//! status 1, and no output file (complete or partial) left behind.

use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith_kernels::GgmlType;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A llama-shaped GGUF with F32 weights (no tokenizer: quantize does not need one). Rows of
/// `n_embd` elements.
fn model(n_embd: usize, n_vocab: usize) -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", OwnedValue::String("llama".into()))
        .kv("llama.embedding_length", OwnedValue::U32(n_embd as u32))
        .kv("llama.block_count", OwnedValue::U32(1));
    let mut seed = 1u32;
    let mut mat = |b: &mut GgufBuilder, name: &str, dims: &[u64]| {
        let n: u64 = dims.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5).to_le_bytes()
            })
            .collect();
        b.tensor(name, dims, GgmlType::F32, data);
    };
    let d = n_embd as u64;
    mat(&mut b, "token_embd.weight", &[d, n_vocab as u64]);
    mat(&mut b, "blk.0.attn_norm.weight", &[d]);
    mat(&mut b, "blk.0.attn_q.weight", &[d, d]);
    mat(&mut b, "blk.0.ffn_down.weight", &[d, d]);
    mat(&mut b, "output.weight", &[d, n_vocab as u64]);
    b.to_bytes()
}

/// Arguments of any string-like types, as owned OS strings.
macro_rules! args {
    ($($a:expr),* $(,)?) => { [$(std::ffi::OsString::from($a.clone())),*] };
}

fn run(args: &[std::ffi::OsString]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pith-compress"))
        .args(args)
        .env("PITH_NO_PROGRESS", "1")
        .output()
        .expect("run pith-compress");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

struct Dir(tempfile::TempDir);
impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

#[test]
fn quantize_writes_a_file_with_its_record_and_says_which_tensors_fell_back() {
    let d = Dir::new();
    let input = d.put("in.gguf", &model(288, 40));
    let (ok, err) = run(&args!["quantize", input, d.p("out.gguf"), "--type", "q4_k"]);
    assert!(ok, "{err}");
    // One line per kind of fallback (three tensors of 288 columns for q4_K, the output's q6_K),
    // not one per tensor.
    assert!(
        err.contains(
            "quantize: 3 tensors (token_embd.weight, …; -v names each): rows of 288 are not a whole number of \
             q4_K blocks (256); using q5_0"
        ),
        "{err}"
    );
    assert!(err.contains("quantize: output.weight: rows of 288 are not a whole number of q6_K blocks"), "{err}");
    assert_eq!(err.matches("are not a whole number").count(), 2, "{err}");
    // The reported output size is the file's.
    let size = std::fs::metadata(d.p("out.gguf")).unwrap().len();
    assert!(err.contains(&format!("→ {:.2} MiB (file sizes", size as f64 / 1048576.0)), "{size}: {err}");
    let bytes = std::fs::read(d.p("out.gguf")).unwrap();
    let g = pith::gguf::Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get_u64("general.file_type").unwrap(), Some(15));
    assert_eq!(g.get_str("pith.quantization.method").unwrap(), Some("rtn"));
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q5_0);
    assert_eq!(g.tensor("blk.0.attn_norm.weight").unwrap().ty, GgmlType::F32);
    // output.weight gets the larger type, which falls back too (Q6_K -> Q8_0).
    assert_eq!(g.tensor("output.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(files_in(d.0.path()), ["in.gguf", "out.gguf"]);
    // The existing output is kept without --force, replaced with it.
    let (ok, err) = run(&args!["quantize", input, d.p("out.gguf"), "--type", "q8_0"]);
    assert!(!ok && err.contains("exists; pass --force"), "{err}");
    let (ok, err) = run(&args!["quantize", input, d.p("out.gguf"), "--type", "q4_k", "--force", "-v"]);
    assert!(ok, "{err}");
    // -v names every tensor.
    for t in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight", "output.weight"] {
        assert!(err.contains(&format!("quantize: {t}: rows of 288")), "{t}: {err}");
    }
    // The input is never the output.
    let (ok, err) = run(&args!["quantize", input, input, "--type", "q8_0", "--force"]);
    assert!(!ok && err.contains("is the input file"), "{err}");
    assert_eq!(std::fs::read(&input).unwrap(), model(288, 40));
}

#[test]
fn bad_inputs_are_named_and_leave_nothing_behind() {
    let d = Dir::new();
    let good = d.put("good.gguf", &model(64, 40));
    let not_gguf = d.put("notes.gguf", b"this is not a model\n");
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (args!["quantize", not_gguf, d.p("o1.gguf"), "--type", "q4_0"].to_vec(), "notes.gguf"),
        (args!["quantize", good, d.p("o2.gguf"), "--type", "q4_2"].to_vec(), "unknown type 'q4_2'"),
        (args!["quantize", good, d.p("o3.gguf"), "--type", "q4_0", "--tensor-type", "attn_q"].to_vec(), "PATTERN=TYPE"),
        (args!["quantize", good, d.p("o4.gguf"), "--type", "q4_0", "--gptq"].to_vec(), "--gptq needs --imatrix"),
        (args!["dequantize", good, d.p("o5.gguf"), "--type", "q4_0"].to_vec(), "f32, f16 or bf16"),
        (args!["quantize", d.p("missing.gguf"), d.p("o6.gguf"), "--type", "q4_0"].to_vec(), "missing.gguf"),
    ];
    for (args, want) in cases {
        let (ok, err) = run(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "expected {want:?} in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(files_in(d.0.path()), ["good.gguf", "notes.gguf"]);
}

#[test]
fn a_tensor_no_type_fits_is_an_error() {
    let d = Dir::new();
    let input = d.put("odd.gguf", &model(40, 8));
    let (ok, err) = run(&args!["quantize", input, d.p("out.gguf"), "--type", "q4_0"]);
    assert!(!ok, "{err}");
    assert!(err.contains("token_embd.weight") && err.contains("rows of 40 elements fit no quantized type"), "{err}");
    assert_eq!(files_in(d.0.path()), ["odd.gguf"]);
}

#[test]
fn bad_calibration_text_is_named() {
    let d = Dir::new();
    let input = d.put("good.gguf", &model(64, 40));
    let empty = d.put("empty.txt", b"  \n\n");
    let latin1 = d.put("latin1.txt", b"caf\xe9 au lait\n");
    for (text, want) in [(&empty, "the file is empty"), (&latin1, "not UTF-8 (invalid byte at offset 3)")] {
        let (ok, err) = run(&args!["imatrix", input, "-f", text, "-o", d.p("im.gguf")]);
        assert!(!ok && err.contains(want), "{err}");
        assert!(err.contains(text.file_name().unwrap().to_str().unwrap()), "{err}");
    }
    assert!(!d.p("im.gguf").exists());
}

/// A full disk: a 64 KiB tmpfs (needs root, as CI has; set PITH_TEST_NO_MOUNT=1 to skip
/// where mounting is impossible).
#[test]
fn a_full_disk_is_an_error_and_leaves_no_partial_file() {
    if std::env::var_os("PITH_TEST_NO_MOUNT").is_some() {
        eprintln!("skipped: PITH_TEST_NO_MOUNT is set");
        return;
    }
    let d = Dir::new();
    let input = d.put("in.gguf", &model(256, 64));
    let mnt = d.p("tiny");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&mnt).status();
    assert!(
        matches!(st, Ok(s) if s.success()),
        "could not mount a tmpfs at {} (run as root, or set PITH_TEST_NO_MOUNT=1)",
        mnt.display()
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let out = mnt.join("out.gguf");
    let (ok, err) = run(&args!["dequantize", input, out, "--type", "f32"]);
    assert!(!ok, "writing {} bytes into 64 KiB succeeded?", std::fs::metadata(&input).unwrap().len());
    assert!(err.contains("out.gguf") && err.contains("No space left on device"), "{err}");
    assert!(files_in(&mnt).is_empty(), "left behind: {:?}", files_in(&mnt));
}

// ---------------------------------------------------------------------------------------------
// Hardening (issue 12): special files, interrupted jobs, errors that name the user's path.

fn run_out(args: &[std::ffi::OsString]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pith-compress"))
        .args(args)
        .env("PITH_NO_PROGRESS", "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run pith-compress")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn outputs_that_are_not_regular_files_are_refused_even_with_force() {
    let d = Dir::new();
    let input = d.put("in.gguf", &model(64, 40));
    let fifo = d.p("fifo.gguf");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let dir = d.p("a-folder.gguf");
    std::fs::create_dir(&dir).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.p("socket.gguf")).unwrap();
    let mut targets = vec![fifo, dir, d.p("socket.gguf")];
    if is_root() {
        // A /dev/null-like device of our own (char 1,3), and the real /dev/full.
        let null = d.p("null.gguf");
        assert!(Command::new("mknod").arg(&null).args(["c", "1", "3"]).status().unwrap().success());
        targets.push(null);
        targets.push(PathBuf::from("/dev/full"));
    } else {
        eprintln!("not root: device nodes not tested");
    }
    let kinds_before: Vec<_> = targets.iter().map(|t| std::fs::metadata(t).unwrap().file_type()).collect();
    for t in &targets {
        for cmd in ["quantize", "dequantize"] {
            for force in [false, true] {
                let mut a = args![cmd, input, t].to_vec();
                if cmd == "quantize" {
                    a.extend(args!["--type", "q8_0"]);
                }
                if force {
                    a.push("--force".into());
                }
                let o = run_out(&a);
                let err = String::from_utf8_lossy(&o.stderr);
                assert_eq!(o.status.code(), Some(1), "{a:?}: {err}");
                assert!(err.contains("not a regular file") && err.contains(t.to_str().unwrap()), "{a:?}: {err}");
                assert!(!err.contains("panicked"), "{err}");
            }
        }
    }
    let kinds_after: Vec<_> = targets.iter().map(|t| std::fs::metadata(t).unwrap().file_type()).collect();
    assert_eq!(kinds_before, kinds_after, "a special file was replaced");
    // Nothing else appeared (no temporary files).
    let mut want = vec!["a-folder.gguf", "fifo.gguf", "in.gguf", "socket.gguf"];
    if is_root() {
        want.push("null.gguf");
    }
    want.sort();
    assert_eq!(files_in(d.0.path()), want);
    // --force still replaces a regular file.
    let regular = d.put("old.gguf", b"old");
    let (ok, err) = run(&args!["quantize", input, regular, "--type", "q8_0", "--force"]);
    assert!(ok, "{err}");
    assert!(std::fs::read(&regular).unwrap().starts_with(b"GGUF"));
}

#[test]
fn a_missing_output_folder_is_named_by_the_users_path() {
    let d = Dir::new();
    let input = d.put("in.gguf", &model(64, 40));
    let out = d.p("no-such-folder/x.gguf");
    let (ok, err) = run(&args!["quantize", input, out, "--type", "q8_0"]);
    assert!(!ok);
    assert!(err.contains("no-such-folder/x.gguf") && err.contains("does not exist"), "{err}");
    assert!(!err.contains("pith-tmp"), "the temporary name leaked: {err}");
}

/// Starts `pith-compress ARGS`, waits until its temporary output appears in `dir` (the job is
/// writing), sends `signal`, and returns its exit status.
fn interrupt_while_writing(args: &[std::ffi::OsString], dir: &Path, signal: &str) -> std::process::ExitStatus {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pith-compress"))
        .args(args)
        .env("PITH_NO_PROGRESS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        if files_in(dir).iter().any(|f| f.ends_with(".pith-tmp")) {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("pith-compress ended ({st}) before it was interrupted");
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(600), "no temporary file appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
    child.wait().unwrap()
}

#[test]
fn sigint_and_sigterm_leave_no_file_behind() {
    // A job long enough to catch while it writes: a 96 MiB f32 model, copied and synced.
    let d = Dir::new();
    let input = d.put("in.gguf", &model(2048, 4096));
    for signal in ["-INT", "-TERM"] {
        let st =
            interrupt_while_writing(&args!["dequantize", input, d.p("out.gguf"), "--type", "f32"], d.0.path(), signal);
        assert_eq!(st.code(), Some(130), "{signal}: {st}");
        assert_eq!(files_in(d.0.path()), ["in.gguf"], "{signal}: left behind");
    }
}

#[test]
fn help_on_a_full_disk_is_an_error() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o =
        Command::new(env!("CARGO_BIN_EXE_pith-compress")).args(["quantize", "--help"]).stdout(full).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error: writing to stdout: No space left on device") && !err.contains("panicked"), "{err}");
}
