//! Progress bars for long work (hidden when stderr is not a terminal or `PITH_NO_PROGRESS` is set).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar of `len` steps labelled `what`, with elapsed time and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !std::io::stderr().is_terminal() || std::env::var_os("PITH_NO_PROGRESS").is_some() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{msg:>12} [{bar:40}] {pos}/{len} {elapsed_precise} ETA {eta_precise} {wide_msg:.dim}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

/// A line on stderr; a failing stderr is ignored (never a panic, as `eprintln!` would).
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Writes `text` to stdout and flushes it, every error checked.
pub fn out(text: &str) -> crate::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).and_then(|()| o.flush()).map_err(crate::CompressError::Stdout)
}
