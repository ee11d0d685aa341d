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
    if let Ok(tok) = pith::tokenizer::Tokenizer::from_gguf(&g) {
        // A short text touching words, digits, punctuation, whitespace runs, non-ASCII and a
        // special-token-looking piece.
        for parse_special in [false, true] {
            if let Ok(ids) = tok.encode(" Hello, world!  123\n\tÿ日本 <s><|im_start|>", parse_special) {
                let _ = tok.decode(&ids, parse_special);
            }
        }
    }
});
