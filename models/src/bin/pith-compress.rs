//! pith-compress: quantizes models ahead of time and measures what it cost.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pith-compress", version, about = "Compress GGUF models ahead of time and measure the cost")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Dequantize every weight matrix to f32 (exact), f16 or bf16.
    Dequantize(pith_models::quantize::DequantizeArgs),
    /// Quantize to a type or a mix, optionally with an importance matrix and error compensation.
    Quantize(pith_models::quantize::QuantizeArgs),
    /// Run a model over calibration text and save per-layer input statistics.
    Imatrix(pith_models::imatrix::ImatrixArgs),
    /// Perplexity and KL divergence of one or more models against a base model.
    Eval(pith_models::eval::EvalArgs),
    /// Remove attention heads, FFN neurons, embedding channels or layers by activation importance.
    Prune(pith_models::prune::PruneArgs),
    /// Low-rank factorization of the linear weights by activation-whitened SVD.
    Lowrank(pith_models::lowrank::LowrankArgs),
    /// Train a (pruned) student on a teacher's distributions (a build with the `train` feature).
    Distill(Box<pith_models::distill::DistillArgs>),
    /// Write a llama GGUF as a Hugging Face model folder (safetensors, config, tokenizer).
    Export(pith_models::export::ExportArgs),
    /// Write a Hugging Face llama model folder as a GGUF (the inverse of export).
    Convert(pith_models::convert::ConvertArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version go to stdout, checked; usage errors to stderr.
            use std::io::Write;
            let r = e.print().and_then(|()| std::io::stdout().flush());
            match (e.use_stderr(), r) {
                (false, Err(err)) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                    pith_models::progress::note(&format!("pith-compress: error: writing to stdout: {err}"));
                    std::process::exit(1)
                }
                _ => std::process::exit(e.exit_code()),
            }
        }
    };
    // Ctrl-C or SIGTERM: remove the output being written (pith_fetch::cleanup), exit 130.
    if let Err(e) = pith_models::cleanup::exit_on_interrupt() {
        pith_models::progress::note(&format!("pith-compress: warning: {e}"));
    }
    let r = match cli.cmd {
        Cmd::Dequantize(a) => pith_models::quantize::run_dequantize(&a),
        Cmd::Quantize(a) => pith_models::quantize::run_quantize(&a),
        Cmd::Imatrix(a) => pith_models::imatrix::run(&a),
        Cmd::Eval(a) => pith_models::eval::run(&a),
        Cmd::Prune(a) => pith_models::prune::run(&a),
        Cmd::Lowrank(a) => pith_models::lowrank::run(&a),
        Cmd::Distill(a) => pith_models::distill::run(&a),
        Cmd::Export(a) => pith_models::export::run_export(&a),
        Cmd::Convert(a) => pith_models::convert::run(&a),
    };
    match r {
        Ok(()) => {}
        // The reader of a pipe (`| head`) has what it wanted.
        Err(pith_models::CompressError::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            pith_models::progress::note(&format!("pith-compress: error: {e}"));
            std::process::exit(1);
        }
    }
}
