//! Perplexity and KL divergence of models against a base model (filled in by the eval work).

/// `pith-compress eval` options.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {}

/// Runs `pith-compress eval`.
pub fn run(_a: &EvalArgs) -> crate::Result<()> {
    Err(crate::CompressError::BadOption("eval: not built yet".into()))
}
