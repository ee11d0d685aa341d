//! Times `Tokenizer::from_gguf` on a model file (the start-up step built on a second thread).
//!
//! ```sh
//! cargo run --release -p pith --example tok_build -- MODEL.gguf [REPS=20]
//! ```

use pith::file::MappedFile;
use pith::gguf::Gguf;
use pith::tokenizer::Tokenizer;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: tok_build MODEL.gguf [REPS]")?;
    let reps: usize = args.get(1).map_or(Ok(20), |s| s.parse())?;
    let file = MappedFile::open(path)?;
    let gguf = Gguf::parse(file.bytes())?;
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            let tok = Tokenizer::from_gguf(&gguf);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(tok);
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "Tokenizer::from_gguf: median {:.2} ms (min {:.2}, {} runs)",
        times[times.len() / 2],
        times[0],
        times.len()
    );
    Ok(())
}
