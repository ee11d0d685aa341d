//! Perplexity with llama-perplexity's protocol.
//!
//! The text is tokenized whole and cut into chunks of `n_ctx` tokens; each chunk is evaluated
//! from an empty cache (its first token replaced by BOS when the model adds one), and only the
//! second half is scored: the logits at positions `n_ctx/2 .. n_ctx-2` predict the tokens after
//! them. PPL = exp(mean NLL over every scored token so far).

use crate::model::{Logits, Model, State};
use crate::parallel::Pool;
use crate::{Error, Precision, Result};

/// Running and final figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerplexityStats {
    pub chunks: usize,
    /// Tokens scored.
    pub count: usize,
    /// Σ −log p.
    pub nll: f64,
    /// Σ (−log p)².
    pub nll2: f64,
}

impl PerplexityStats {
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }

    /// The standard error of the PPL estimate, as llama-perplexity computes it.
    pub fn ppl_error(&self) -> f64 {
        let n = self.count as f64;
        if self.count < 2 {
            return 0.0;
        }
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        if var > 0.0 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// −log softmax(logits)[tok], accumulated in f64.
pub fn nll(logits: &[f32], tok: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    -((logits[tok as usize] - max) as f64 - sum.ln())
}

/// How [`perplexity`] cuts and evaluates the text.
#[derive(Clone, Copy, Debug)]
pub struct PerplexityParams {
    /// Chunk (context) size.
    pub n_ctx: usize,
    /// Chunks to evaluate (0 = all).
    pub max_chunks: usize,
    /// Replaces each chunk's first token when the model wants a BOS.
    pub bos: Option<u32>,
    /// Matmul arithmetic.
    pub precision: Precision,
}

/// Evaluates up to `max_chunks` chunks (0 = all) of `tokens`, calling `on_chunk` after each.
pub fn perplexity(
    model: &Model<'_>,
    pool: &Pool,
    tokens: &[u32],
    params: PerplexityParams,
    mut on_chunk: impl FnMut(&PerplexityStats),
) -> Result<PerplexityStats> {
    let PerplexityParams { n_ctx, max_chunks, bos, precision } = params;
    if n_ctx < 4 {
        return Err(Error::BadHyperParam { key: "ctx".into(), reason: format!("{n_ctx} is too small for perplexity") });
    }
    let available = tokens.len() / n_ctx;
    if available == 0 {
        return Err(Error::BadHyperParam {
            key: "ctx".into(),
            reason: format!("the text has {} tokens, fewer than one chunk of {n_ctx}", tokens.len()),
        });
    }
    let n_chunks = if max_chunks == 0 { available } else { max_chunks.min(available) };
    let n_vocab = model.config.n_vocab;
    let first = n_ctx / 2;
    let mut state = State::new(model, n_ctx, n_ctx)?;
    state.set_precision(precision);
    let mut stats = PerplexityStats::default();
    let mut chunk = vec![0u32; n_ctx];
    for c in 0..n_chunks {
        chunk.copy_from_slice(&tokens[c * n_ctx..(c + 1) * n_ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        state.reset();
        let logits = model.forward(&mut state, pool, &chunk, Logits::From(first))?;
        let real = &tokens[c * n_ctx..(c + 1) * n_ctx];
        for j in first..n_ctx - 1 {
            let row = &logits[(j - first) * n_vocab..(j - first + 1) * n_vocab];
            let v = nll(row, real[j + 1]);
            stats.nll += v;
            stats.nll2 += v * v;
            stats.count += 1;
        }
        stats.chunks = c + 1;
        on_chunk(&stats);
    }
    Ok(stats)
}
