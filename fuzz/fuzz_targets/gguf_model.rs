//! Builds a structurally valid tiny llama GGUF whose hyper-parameters, shapes, tensor types and
//! some bytes come from the input (see `pith_fuzz::ModelCase`), binds it with
//! `Model::from_gguf` and, when that succeeds, runs a short forward pass with an 8-token
//! context. Errors are fine; panics, aborts and sanitizer reports are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pith::gguf::Gguf;
use pith::tensor::Precision;
use pith::{Logits, Model, Pool, State};
use pith_fuzz::{aligned_copy, ModelCase, N_CTX};

fuzz_target!(|data: &[u8]| {
    let case = ModelCase::from_bytes(data);
    let (storage, off) = aligned_copy(&case.file);
    let file = &storage[off..off + case.file.len()];
    // The generator only writes valid files: a parse error here is a writer/reader disagreement.
    let g = match Gguf::parse(file) {
        Ok(g) => g,
        Err(e) => panic!("pith rejects a file written by GgufBuilder: {e}"),
    };
    let Ok(model) = Model::from_gguf(&g) else { return };
    let _ = model.weight_bytes();
    let Ok(mut state) = State::new(&model, N_CTX, case.n_batch) else { return };
    if case.q8 {
        state.set_precision(Precision::Q8);
    }
    let pool = Pool::single();
    let n_vocab = model.config.n_vocab;
    match model.forward(&mut state, &pool, &case.tokens, Logits::Last) {
        Ok(logits) => {
            if !case.tokens.is_empty() {
                assert_eq!(logits.len(), n_vocab, "Logits::Last must give one row of n_vocab");
            }
        }
        Err(_) => return,
    }
    // One more token on top of the cache (exercises a non-zero start position).
    if state.pos < N_CTX {
        let _ = model.forward(&mut state, &pool, &[case.tokens.first().copied().unwrap_or(0)], Logits::Last);
    }
});
