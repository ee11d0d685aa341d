//! Feeds arbitrary bytes to the GGUF reader, then to everything that consumes a parsed file:
//! metadata rendering, model binding and the tokenizer. None of it may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pith::gguf::{display_value, Gguf};

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    for (_, v) in &g.metadata {
        let _ = display_value(v, 16);
    }
    for t in &g.tensors {
        assert!(t.data.len() as u64 <= data.len() as u64);
    }
    if let Ok(model) = pith::Model::from_gguf(&g) {
        let _ = model.weight_bytes();
    }
    let _ = pith::tokenizer::Tokenizer::from_gguf(&g);
});
