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
    /// Perplexity and KL divergence of one or more models against a base model.
    Eval(pith_models::eval::EvalArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Eval(a) => pith_models::eval::run(&a),
    };
    if let Err(e) = r {
        eprintln!("pith-compress: error: {e}");
        std::process::exit(1);
    }
}
