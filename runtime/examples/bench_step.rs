//! The matmuls of one decode step for `n` sequences at once (a continuous-batching server's
//! step: one token of each): every layer's Q/K/V and gate/up (`matmul_many`), output and down
//! projections (`matmul`), and the logits of every token. Attention, norms and the rest are
//! per sequence and not included. Prints ms per step (median of `reps`) and tokens/s.
//!
//! ```sh
//! cargo run --release -p pith --example bench_step -- MODEL.gguf [N=1] [REPS=50] [THREADS=2]
//! perf stat -e instructions,cycles target/release/examples/bench_step MODEL.gguf 4 50 1
//! ```

use pith::file::MappedFile;
use pith::gguf::Gguf;
use pith::tensor::{matmul, matmul_many, MatmulScratch};
use pith::{Model, Pool};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: bench_step MODEL.gguf [N] [REPS] [THREADS]")?;
    let n: usize = args.get(1).map_or(Ok(1), |s| s.parse())?;
    let reps: usize = args.get(2).map_or(Ok(50), |s| s.parse())?;
    let threads: usize = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let file = MappedFile::open(path)?;
    let gguf = Gguf::parse(file.bytes())?;
    let model = Model::from_gguf(&gguf)?;
    let pool = Pool::new(threads)?;
    let c = &model.config;
    let (d, ff) = (c.n_embd, model.layers[0].w_gate.w.n_rows);
    let x: Vec<f32> = (0..n * ff.max(d) * 2).map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0).collect();
    let mut scratch = MatmulScratch::default();
    let buf = |len: usize| vec![0.0f32; n * len];
    let (mut q, mut k, mut v, mut o) = (buf(c.n_embd * 4), buf(c.n_embd * 4), buf(c.n_embd * 4), buf(d));
    let (mut g, mut u, mut logits) = (buf(ff), buf(ff), buf(model.output.n_rows));
    let mut step = || {
        for l in &model.layers {
            let (nq, nk, nv) = (l.wq.w.n_rows, l.wk.w.n_rows, l.wv.w.n_rows);
            matmul_many(
                &pool,
                &mut scratch,
                &[&l.wq.w, &l.wk.w, &l.wv.w],
                &x[..n * d],
                n,
                &mut [&mut q[..n * nq], &mut k[..n * nk], &mut v[..n * nv]],
            );
            matmul(&pool, &mut scratch, &l.wo.w, &x[..n * l.wo.w.n_cols], n, &mut o);
            matmul_many(&pool, &mut scratch, &[&l.w_gate.w, &l.w_up.w], &x[..n * d], n, &mut [&mut g, &mut u]);
            matmul(&pool, &mut scratch, &l.w_down.w, &x[..n * ff], n, &mut o);
        }
        matmul(&pool, &mut scratch, &model.output, &x[..n * d], n, &mut logits);
    };
    step();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            step();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let med = times[reps / 2];
    println!(
        "{n} token(s) per step, {threads} thread(s): median {med:.2} ms/step (min {:.2}), {:.1} tokens/s",
        times[0],
        n as f64 * 1e3 / med
    );
    Ok(())
}
