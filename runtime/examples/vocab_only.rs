//! Writes the tokenizer of a GGUF model as a small vocabulary-only GGUF, gzipped: the
//! `general.architecture` key and every `tokenizer.*` key, no tensors (llama.cpp's own
//! `ggml-vocab-*.gguf` test files have the same shape). Used to make the tokenizer fixtures of
//! `runtime/tests/tokenizer_families.rs` from the real gemma3 and qwen2 files.
//!
//! ```text
//! cargo run -p pith --example vocab_only -- MODEL.gguf OUT.vocab.gguf.gz
//! ```

use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::Gguf;
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        return Err("usage: vocab_only MODEL.gguf OUT.vocab.gguf.gz".into());
    };
    let bytes = std::fs::read(input)?;
    let g = Gguf::parse(&bytes)?;
    let mut b = GgufBuilder::new();
    for (k, v) in &g.metadata {
        if *k == "general.architecture" || k.starts_with("tokenizer.") {
            b.kv(k, OwnedValue::from_value(v));
        }
    }
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(output)?, flate2::Compression::best());
    gz.write_all(&b.to_bytes())?;
    gz.finish()?;
    Ok(())
}
