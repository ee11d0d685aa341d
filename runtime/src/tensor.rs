//! Weights borrowed from the file, and the matrix multiply the forward pass is built on.

use crate::parallel::Pool;
use alloc::vec::Vec;
use pith_kernels::GgmlType;

/// A 2-D weight matrix, borrowed from the model file (zero copy).
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    pub ty: GgmlType,
    /// Rows (output features).
    pub n_rows: usize,
    /// Columns (input features): the contiguous dimension, `dims[0]` in GGUF.
    pub n_cols: usize,
    /// `n_rows` rows of `ty.row_bytes(n_cols)` bytes each.
    pub data: &'a [u8],
}

impl<'a> Weight<'a> {
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.n_rows.max(1)
    }

    /// The encoded bytes of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `out` (`n_cols` floats).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        pith_kernels::dequantize_row(self.ty, self.row(r), out);
    }
}

/// Rows handled per inner tile: each is dequantized once and reused for every token.
const TILE_ROWS: usize = 12;

/// How activations meet the weights in a matmul.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 activations against exactly dequantized weights (the most faithful; the reference
    /// for `Q8`).
    F32,
    /// The fast path, and the default: activations quantized to 8 bits once per matmul, and
    /// integer dot products, as llama.cpp's CPU backend does: per-32 scales, then the kernel
    /// table's decode kernel (`gemv_q8`, one token) or the integer gemm (`gemm_q8`, a batch). On SmolLM2 Q4_1 it adds 0.08 to WikiText-2 perplexity
    /// at 40 chunks (22.389 vs 22.305; llama.cpp's own 8-bit path: 22.396).
    #[default]
    Q8,
}

/// Scratch space reused across calls (no allocation in steady state).
#[derive(Default)]
pub struct MatmulScratch {
    pub precision: Precision,
    /// (n_rows, n_tok): the result before transposition, for batches.
    out_t: Vec<f32>,
    /// Batches with `Precision::Q8`: activations quantized for the integer gemm.
    acts: pith_kernels::ActsQ8,
    /// One token with `Precision::Q8`: activations quantized for the decode kernels.
    vq: pith_kernels::VecQ8,
    /// Small batches with `Precision::Q8`: each token quantized as `vq` is.
    vqs: Vec<pith_kernels::VecQ8>,
}

/// Batches of 2 to this many tokens under `Precision::Q8` run the decode kernels once per token
/// ([`matmul_small_batch`]): each token's results are bit-identical to its own one-token matmul
/// whatever else is in the batch, and packing 16-row tiles for the gemm costs more than it
/// saves at this size.
pub const SMALL_BATCH: usize = 8;

/// Rows of one step of a small batch: every token runs the decode kernel over them while they
/// are in L1 (16 rows of a 1536-column Q4_1 matrix: 15 KiB), so the weights come from memory once.
const SMALL_BATCH_ROWS: usize = 16;

/// Whether a batch of `n_tok` tokens takes [`matmul_small_batch`].
fn takes_small_batch(precision: Precision, n_tok: usize) -> bool {
    precision == Precision::Q8 && (2..=SMALL_BATCH).contains(&n_tok)
}

/// Whether a batch of `n_tok` tokens against `w` takes the integer gemm.
fn takes_gemm_q8(precision: Precision, w: &Weight<'_>, n_tok: usize) -> bool {
    n_tok > 1 && precision == Precision::Q8 && pith_kernels::gemm_q8_supported(w.ty, w.n_cols)
}

/// Quantizes a batch's activations `x` (n_tok, k) for the integer gemm, the tokens shared out
/// over the pool (the same bits as one `ActsQ8::quantize`).
fn quantize_batch(pool: &Pool, acts: &mut pith_kernels::ActsQ8, x: &[f32], k: usize) {
    assert!(k > 0 && x.len().is_multiple_of(k), "matmul: {} activations are not whole rows of {k}", x.len());
    let n_tok = x.len() / k;
    let per = n_tok.div_ceil(pool.threads() * 2).max(1);
    acts.reset(n_tok, k);
    let mut parts = acts.parts_mut(per);
    pool.for_each_chunk(&mut parts, 1, &|i, part: &mut [pith_kernels::ActsQ8Part<'_>]| {
        let t0 = i * per;
        let n = part[0].n_tok();
        part[0].quantize(&x[t0 * k..(t0 + n) * k]);
    });
}

/// A batch through the integer gemm: `acts` (n_tok, n_cols) quantized, `out` (n_tok, n_rows).
/// Rows are split across threads in multiples of the 16-row tile; each thread packs its tiles
/// and writes its rows of every token's output in place.
fn matmul_gemm_q8(pool: &Pool, acts: &pith_kernels::ActsQ8, w: &Weight<'_>, out: &mut [f32]) {
    let (n_rows, n_tok) = (w.n_rows, acts.n_tok());
    assert_eq!(out.len(), n_tok * n_rows, "matmul: output shape");
    let rb = w.row_bytes();
    let chunk_rows = n_rows.div_ceil(pool.threads() * 4).next_multiple_of(GEMM_ROWS).max(GEMM_ROWS);
    // parts[c][t]: chunk c's rows of token t's output.
    let mut parts: Vec<Vec<&mut [f32]>> = (0..n_rows.div_ceil(chunk_rows)).map(|_| Vec::with_capacity(n_tok)).collect();
    for mut rest in out.chunks_exact_mut(n_rows) {
        for part in parts.iter_mut() {
            let (mine, tail) = rest.split_at_mut(chunk_rows.min(rest.len()));
            part.push(mine);
            rest = tail;
        }
    }
    pool.for_each_chunk(&mut parts, 1, &|ci, part: &mut [Vec<&mut [f32]>]| {
        let r0 = ci * chunk_rows;
        let rows = part[0][0].len();
        let mut tile = pith_kernels::PackedTile::default();
        pith_kernels::gemm_q8(w.ty, &w.data[r0 * rb..(r0 + rows) * rb], rows, acts, &mut part[0], &mut tile);
    });
}

/// `out[t * n_rows + r] = out_t[r * n_tok + t]`.
fn transpose_into(out_t: &[f32], n_tok: usize, out: &mut [f32]) {
    let n_rows = out_t.len() / n_tok;
    for (r, col) in out_t.chunks_exact(n_tok).enumerate() {
        for (t, &v) in col.iter().enumerate() {
            out[t * n_rows + r] = v;
        }
    }
}

const GEMM_ROWS: usize = pith_kernels::GEMM_Q8_ROWS;

/// `out[t][r] = Σ_c w[r][c] · x[t][c]` — `x`: (n_tok, n_cols), `out`: (n_tok, n_rows).
///
/// Rows are split across the pool's threads. One token: see [`matmul_many`]. A batch under
/// `Precision::Q8` runs the integer gemm, which writes in place; otherwise each thread fills a
/// (rows, n_tok) tile which is transposed at the end. Either way the weights are streamed once
/// per batch, not once per token.
pub fn matmul(pool: &Pool, scratch: &mut MatmulScratch, w: &Weight<'_>, x: &[f32], n_tok: usize, out: &mut [f32]) {
    let (n_rows, n_cols) = (w.n_rows, w.n_cols);
    assert_eq!(x.len(), n_tok * n_cols, "matmul: activation shape");
    assert_eq!(out.len(), n_tok * n_rows, "matmul: output shape");
    if takes_small_batch(scratch.precision, n_tok) {
        matmul_small_batch(pool, scratch, &[w], x, n_tok, &mut [out]);
        return;
    }
    if takes_gemm_q8(scratch.precision, w, n_tok) {
        quantize_batch(pool, &mut scratch.acts, x, n_cols);
        matmul_gemm_q8(pool, &scratch.acts, w, out);
        return;
    }
    if n_tok == 1 {
        matmul_one_token(pool, scratch, &[w], x, &mut [out]);
        return;
    }
    // A batch: enough chunks to balance threads, each a multiple of the tile, filling a
    // (n_rows, n_tok) buffer transposed at the end.
    let chunk_rows = (n_rows.div_ceil(pool.threads() * 8)).next_multiple_of(TILE_ROWS).max(TILE_ROWS);
    scratch.out_t.resize(n_rows * n_tok, 0.0);
    let target = &mut scratch.out_t;
    pool.for_each_chunk(target, chunk_rows * n_tok, &|ci, chunk: &mut [f32]| {
        let r0 = ci * chunk_rows;
        let rows = chunk.len() / n_tok;
        matmul_rows_hot_loop(w, x, n_tok, r0, rows, chunk);
    });
    transpose_into(&scratch.out_t, n_tok, out);
}

/// Several matmuls on the same input: `outs[i] = x · ws[i]ᵀ`.
///
/// For one token, all rows of all weights are shared out in a single parallel region
/// (per-token work is small, so the number of hand-offs to the threads is what limits
/// decoding), with the input quantized once per activation type under `Precision::Q8`. A
/// batch quantizes the input once for the integer gemm; otherwise each weight is its own
/// [`matmul`].
pub fn matmul_many(
    pool: &Pool,
    scratch: &mut MatmulScratch,
    ws: &[&Weight<'_>],
    x: &[f32],
    n_tok: usize,
    outs: &mut [&mut [f32]],
) {
    assert_eq!(ws.len(), outs.len(), "matmul_many: one output per weight");
    if takes_small_batch(scratch.precision, n_tok) {
        matmul_small_batch(pool, scratch, ws, x, n_tok, outs);
        return;
    }
    if ws.iter().all(|w| takes_gemm_q8(scratch.precision, w, n_tok) && w.n_cols == ws[0].n_cols) {
        // One quantization of the shared input for every weight.
        quantize_batch(pool, &mut scratch.acts, x, ws[0].n_cols);
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul_gemm_q8(pool, &scratch.acts, w, out);
        }
        return;
    }
    if n_tok != 1 {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul(pool, scratch, w, x, n_tok, out);
        }
        return;
    }
    matmul_one_token(pool, scratch, ws, x, outs);
}

/// One token against several weights in one parallel region: the weights' rows are laid end
/// to end and cut into one chunk per thread. Under `Precision::Q8` the input is quantized once
/// ([`pith_kernels::VecQ8`]) and every weight type of the kernel table runs its decode kernel
/// (`gemv_q8`); other types (f32, f16, bf16) and `Precision::F32` use `vec_dot_f32`.
fn matmul_one_token(pool: &Pool, scratch: &mut MatmulScratch, ws: &[&Weight<'_>], x: &[f32], outs: &mut [&mut [f32]]) {
    let total: usize = ws.iter().map(|w| w.n_rows).sum();
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(w.n_cols, x.len(), "matmul: activation shape");
        assert_eq!(out.len(), w.n_rows, "matmul: output shape");
    }
    let q8 = scratch.precision == Precision::Q8;
    let gemv = |w: &Weight<'_>| q8 && pith_kernels::gemv_q8_supported(w.ty, w.n_cols);
    if ws.iter().any(|w| gemv(w)) {
        scratch.vq.quantize(x);
    }
    let vq = &scratch.vq;
    let single = ws.len() == 1;
    let chunk_rows = total.div_ceil(pool.threads());
    let run = |ci: usize, chunk: &mut [f32]| {
        // Global row g → (weight, local row), one contiguous run of rows per weight.
        let (mut wi, mut base, mut done) = (0, 0, 0);
        while done < chunk.len() {
            let g = ci * chunk_rows + done;
            while g >= base + ws[wi].n_rows {
                base += ws[wi].n_rows;
                wi += 1;
            }
            let (w, r0) = (ws[wi], g - base);
            let n = (w.n_rows - r0).min(chunk.len() - done);
            let o = &mut chunk[done..done + n];
            if gemv(w) {
                let rb = w.row_bytes();
                pith_kernels::gemv_q8(w.ty, &w.data[r0 * rb..(r0 + n) * rb], n, vq, o);
            } else {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = pith_kernels::vec_dot_f32(w.ty, w.row(r0 + i), x);
                }
            }
            done += n;
        }
    };
    if single {
        // One weight: its output is the chunked buffer itself.
        pool.for_each_chunk(outs[0], chunk_rows, &run);
        return;
    }
    scratch.out_t.resize(total, 0.0);
    pool.for_each_chunk(&mut scratch.out_t, chunk_rows, &run);
    let mut at = 0;
    for out in outs.iter_mut() {
        out.copy_from_slice(&scratch.out_t[at..at + out.len()]);
        at += out.len();
    }
}

/// A small batch (2 ..= [`SMALL_BATCH`] tokens) against several weights in one parallel
/// region: each token is quantized as [`matmul_one_token`] quantizes it, the weights' rows are
/// laid end to end and cut into one range per thread as there, and each thread walks its range
/// [`SMALL_BATCH_ROWS`] rows at a time, running the decode kernel for every token on those rows
/// before moving on (`gemv_q8_many`: Q4_0 / Q4_1 / Q8_0 on AVX-512 decode each weight group once for up
/// to 4 tokens, other types run the one-token kernel per token). Each output is the one-token
/// computation of the same row and token (the decode kernels compute every row on its own), so
/// a token's results do not depend on the batch, and the weights are read from memory once per
/// call.
fn matmul_small_batch(
    pool: &Pool,
    scratch: &mut MatmulScratch,
    ws: &[&Weight<'_>],
    x: &[f32],
    n_tok: usize,
    outs: &mut [&mut [f32]],
) {
    let k = ws.first().map_or(0, |w| w.n_cols);
    assert_eq!(x.len(), n_tok * k, "matmul: activation shape");
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(w.n_cols, k, "matmul: activation shape");
        assert_eq!(out.len(), n_tok * w.n_rows, "matmul: output shape");
    }
    let total: usize = ws.iter().map(|w| w.n_rows).sum();
    if total == 0 {
        return;
    }
    let q8 = scratch.precision == Precision::Q8;
    let gemv = |w: &Weight<'_>| q8 && pith_kernels::gemv_q8_supported(w.ty, w.n_cols);
    if scratch.vqs.len() < n_tok {
        scratch.vqs.resize_with(n_tok, Default::default);
    }
    if ws.iter().any(|w| gemv(w)) {
        // The tokens' activations quantized side by side (serial, they were 5 % of a 4-sequence
        // decode step with the other thread waiting).
        let per = n_tok.div_ceil(pool.threads());
        pool.for_each_chunk(&mut scratch.vqs[..n_tok], per, &|ci, vqs| {
            for (j, vq) in vqs.iter_mut().enumerate() {
                let t = ci * per + j;
                vq.quantize(&x[t * k..(t + 1) * k]);
            }
        });
    }
    let mut vq_refs: [&pith_kernels::VecQ8; SMALL_BATCH] = [&scratch.vqs[0]; SMALL_BATCH];
    for (r, vq) in vq_refs.iter_mut().zip(&scratch.vqs[..n_tok]) {
        *r = vq;
    }
    let vq_refs = &vq_refs[..n_tok];
    let chunk_rows = total.div_ceil(pool.threads());
    // Chunk c (rows c·chunk_rows.., `rows` of them) is held at c·chunk_rows·n_tok as (n_tok, rows).
    scratch.out_t.resize(total * n_tok, 0.0);
    let run = |ci: usize, chunk: &mut [f32]| {
        let rows = chunk.len() / n_tok;
        let (mut wi, mut base, mut done) = (0, 0, 0);
        while done < rows {
            // Global row g → (weight, local row).
            let g = ci * chunk_rows + done;
            while g >= base + ws[wi].n_rows {
                base += ws[wi].n_rows;
                wi += 1;
            }
            let (w, r0) = (ws[wi], g - base);
            let n = (w.n_rows - r0).min(rows - done).min(SMALL_BATCH_ROWS);
            let rb = w.row_bytes();
            // Token t's outputs for these rows.
            let mut o: [&mut [f32]; SMALL_BATCH] = Default::default();
            for (o, per_tok) in o.iter_mut().zip(chunk.chunks_mut(rows)) {
                *o = &mut per_tok[done..done + n];
            }
            if gemv(w) {
                pith_kernels::gemv_q8_many(w.ty, &w.data[r0 * rb..(r0 + n) * rb], n, vq_refs, &mut o[..n_tok]);
            } else {
                for (o, xt) in o.iter_mut().zip(x.chunks_exact(k)) {
                    for (i, o) in o.iter_mut().enumerate() {
                        *o = pith_kernels::vec_dot_f32(w.ty, w.row(r0 + i), xt);
                    }
                }
            }
            done += n;
        }
    };
    pool.for_each_chunk(&mut scratch.out_t, chunk_rows * n_tok, &run);
    // Back to (n_tok, n_rows) per weight.
    let buf = &scratch.out_t;
    let mut base = 0;
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        let mut r = 0;
        while r < w.n_rows {
            let g = base + r;
            let c0 = g / chunk_rows * chunk_rows;
            let rows = chunk_rows.min(total - c0);
            let n = (c0 + rows - g).min(w.n_rows - r);
            for t in 0..n_tok {
                let from = c0 * n_tok + t * rows + (g - c0);
                out[t * w.n_rows + r..t * w.n_rows + r + n].copy_from_slice(&buf[from..from + n]);
            }
            r += n;
        }
        base += w.n_rows;
    }
}

/// The hot loop: rows `r0..r0+rows` of `w` against all tokens, into `chunk` laid out (rows, n_tok).
fn matmul_rows_hot_loop(w: &Weight<'_>, x: &[f32], n_tok: usize, r0: usize, rows: usize, chunk: &mut [f32]) {
    let n_cols = w.n_cols;
    // Dequantize TILE_ROWS rows once, then multiply them with every token of the batch.
    let mut tile = alloc::vec![0.0f32; TILE_ROWS * n_cols];
    let mut i = 0;
    while i < rows {
        let nr = TILE_ROWS.min(rows - i);
        for j in 0..nr {
            w.dequantize_row(r0 + i + j, &mut tile[j * n_cols..(j + 1) * n_cols]);
        }
        pith_kernels::gemm_f32(&tile[..nr * n_cols], x, n_cols, &mut chunk[i * n_tok..(i + nr) * n_tok]);
        i += nr;
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    /// A pseudo-random `n_rows × n_cols` weight of type `ty`, encoded.
    fn weight_bytes(ty: GgmlType, n_rows: usize, n_cols: usize, seed: u32) -> Vec<u8> {
        let rb = ty.row_bytes(n_cols).unwrap();
        let mut data = vec![0u8; n_rows * rb];
        let mut s = seed;
        let mut row = vec![0.0f32; n_cols];
        for r in 0..n_rows {
            for v in row.iter_mut() {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *v = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            }
            pith_kernels::quantize_row(ty, &row, &mut data[r * rb..(r + 1) * rb]);
        }
        data
    }

    /// Every thread count gives bit-identical results: each row is computed the same way
    /// whichever thread takes it.
    #[test]
    fn matmuls_are_identical_for_every_thread_count() {
        let n_cols = 64;
        let ty = GgmlType::Q4_1;
        let shapes = [37usize, 8, 100];
        let bytes: Vec<Vec<u8>> =
            shapes.iter().enumerate().map(|(i, &n)| weight_bytes(ty, n, n_cols, i as u32)).collect();
        let ws: Vec<Weight<'_>> =
            shapes.iter().zip(&bytes).map(|(&n_rows, data)| Weight { ty, n_rows, n_cols, data }).collect();
        let pools = [Pool::single(), Pool::new(2).unwrap(), Pool::new(3).unwrap()];
        for precision in [Precision::F32, Precision::Q8] {
            for n_tok in [1, 5, 30] {
                let x: Vec<f32> = (0..n_tok * n_cols).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
                let results: Vec<Vec<Vec<f32>>> = pools
                    .iter()
                    .map(|pool| {
                        let mut scratch = MatmulScratch { precision, ..Default::default() };
                        let mut one = vec![0.0f32; n_tok * ws[2].n_rows];
                        matmul(pool, &mut scratch, &ws[2], &x, n_tok, &mut one);
                        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0f32; n_tok * w.n_rows]).collect();
                        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                        matmul_many(pool, &mut scratch, &ws.iter().collect::<Vec<_>>(), &x, n_tok, &mut refs);
                        outs.push(one);
                        outs
                    })
                    .collect();
                for (pool, r) in pools.iter().zip(&results).skip(1) {
                    for (a, b) in r.iter().zip(&results[0]) {
                        let (a, b): (Vec<u32>, Vec<u32>) =
                            (a.iter().map(|v| v.to_bits()).collect(), b.iter().map(|v| v.to_bits()).collect());
                        assert_eq!(a, b, "{precision:?}, {n_tok} tokens, {} threads", pool.threads());
                    }
                }
                // matmul_many agrees with a separate matmul of the same weight.
                assert_eq!(results[0][2], results[0][3], "{precision:?}, {n_tok} tokens: matmul_many vs matmul");
            }
        }
    }
}
