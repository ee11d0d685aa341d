//! Greedy decoding with the margin of every step: for each generated token, its id, its text and
//! the gap between the two largest logits. Where pith's and llama.cpp's greedy continuations
//! part, a small gap at that step (≤ 0.1) says the two runs met a near-tie that arithmetic
//! order decides, not a defect (`scripts/greedy-vs-llama.sh` uses this).
//!
//! ```text
//! cargo run --release -p pith --example greedy_gaps -- MODEL.gguf PROMPT_FILE N [CTX [q8|f32]]
//! ```
//! The prompt file is read as llama.cpp's `-f` reads it: one trailing newline is dropped.
//! `PITH_KERNELS` picks the kernel path as in the CLI (`scalar`, `avx2`, `neon-dotprod`, …);
//! the path that ran and the CPU's others go to stderr (`kernels: avx512 (here: scalar avx2 avx512)`).
//! Prints one JSON object per line: `{"step": i, "id": t, "text": "...", "gap": g}`.

use pith::engine::Engine;
use pith::file::MappedFile;
use pith::{Logits, State};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model, prompt_file, n) = match args.as_slice() {
        [_, m, p, n] | [_, m, p, n, _] | [_, m, p, n, _, _] => (m, p, n.parse::<usize>()?),
        _ => return Err("usage: greedy_gaps MODEL.gguf PROMPT_FILE N [CTX [q8|f32]]".into()),
    };
    if let Ok(v) = std::env::var("PITH_KERNELS") {
        let path: pith_kernels::KernelPath = v.parse().map_err(|e| format!("PITH_KERNELS={v}: {e}"))?;
        pith_kernels::set_kernel_path(path).map_err(|e| format!("PITH_KERNELS={v}: {e}"))?;
    }
    let here: Vec<&str> = pith_kernels::available_kernel_paths().map(|p| p.name()).collect();
    eprintln!("kernels: {} (here: {})", pith_kernels::kernel_path(), here.join(" "));
    let ctx = args.get(4).map(|c| c.parse::<usize>()).transpose()?.unwrap_or(512);
    let mut prompt = std::fs::read_to_string(prompt_file)?;
    if prompt.ends_with('\n') {
        prompt.pop();
    }
    let file = MappedFile::open(model)?;
    let eng = Engine::load(&file, std::thread::available_parallelism().map_or(1, |n| n.get()))?;
    let mut state = State::new(&eng.model, ctx, 512)?;
    match args.get(5).map(String::as_str) {
        None | Some("q8") => {}
        Some("f32") => state.set_precision(pith::Precision::F32),
        Some(other) => return Err(format!("precision '{other}': q8 or f32").into()),
    }
    let ids = eng.tokenize_prompt(&prompt)?;
    let mut logits = eng.model.forward(&mut state, &eng.pool, &ids, Logits::Last)?.to_vec();
    for step in 0..n {
        let (mut best, mut second) = ((0usize, f32::NEG_INFINITY), f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            if l > best.1 {
                second = best.1;
                best = (i, l);
            } else if l > second {
                second = l;
            }
        }
        let id = best.0 as u32;
        let text = serde_json::to_string(&eng.tokenizer.decode(&[id], false))?;
        println!("{{\"step\": {step}, \"id\": {id}, \"text\": {text}, \"gap\": {:.4}}}", best.1 - second);
        if eng.tokenizer.is_eog(id) {
            break;
        }
        logits = eng.model.forward(&mut state, &eng.pool, &[id], Logits::Last)?.to_vec();
    }
    Ok(())
}
