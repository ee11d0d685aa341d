//! Perplexity with llama-perplexity's protocol.
//!
//! The text is tokenized whole and cut into chunks of `n_ctx` tokens; each chunk is evaluated
//! from an empty cache (its first token replaced by BOS when the model adds one), and only the
//! second half is scored: the logits at positions `n_ctx/2 .. n_ctx-2` predict the tokens after
//! them. PPL = exp(mean NLL over every scored token so far).

use crate::model::{CacheType, Logits, Model, State};
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

/// The log-softmax of one logit row, from one pass over it: `log p(v) = (l[v] − max) − log_sum`,
/// the maximum in f32 and Σ exp in f64. `pith perplexity`'s NLL ([`nll`]) and `pith-compress
/// eval`'s NLL and KL divergence all come from it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LogSoftmaxRow {
    pub max: f32,
    pub log_sum: f64,
    /// The first index of the largest logit (top-1 token).
    pub argmax: usize,
}

impl LogSoftmaxRow {
    pub fn of(logits: &[f32]) -> LogSoftmaxRow {
        let mut max = f32::NEG_INFINITY;
        let mut argmax = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > max {
                max = l;
                argmax = i;
            }
        }
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        LogSoftmaxRow { max, log_sum: sum.ln(), argmax }
    }

    /// log p of a logit of this row.
    #[inline]
    pub fn log_p(&self, logit: f32) -> f64 {
        (logit - self.max) as f64 - self.log_sum
    }

    /// −log p(tok), `logits` being the row this was computed from.
    #[inline]
    pub fn nll(&self, logits: &[f32], tok: u32) -> f64 {
        -self.log_p(logits[tok as usize])
    }
}

/// −log softmax(logits)[tok], accumulated in f64.
pub fn nll(logits: &[f32], tok: u32) -> f64 {
    LogSoftmaxRow::of(logits).nll(logits, tok)
}

/// Fills `chunk` with chunk `c` of `tokens` (chunks of `chunk.len()` tokens), its first token
/// replaced by `bos` when the model wants one (llama-perplexity's protocol), and returns the
/// chunk's real tokens.
pub fn fill_chunk<'t>(chunk: &mut [u32], tokens: &'t [u32], c: usize, bos: Option<u32>) -> &'t [u32] {
    let n = chunk.len();
    let real = &tokens[c * n..(c + 1) * n];
    chunk.copy_from_slice(real);
    if let (Some(b), Some(first)) = (bos, chunk.first_mut()) {
        *first = b;
    }
    real
}

/// The number of whole chunks of `n_ctx` tokens to evaluate among `n_tokens`: every one
/// (`max_chunks` 0) or at most `max_chunks`; `None` when not even one fits (or `n_ctx` is 0).
pub fn chunk_count(n_tokens: usize, n_ctx: usize, max_chunks: usize) -> Option<usize> {
    let available = n_tokens.checked_div(n_ctx).filter(|&n| n > 0)?;
    Some(if max_chunks == 0 { available } else { max_chunks.min(available) })
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
    on_chunk: impl FnMut(&PerplexityStats),
) -> Result<PerplexityStats> {
    perplexity_with_cache(model, pool, tokens, params, (CacheType::F16, CacheType::F16), on_chunk)
}

/// [`perplexity`] with the KV cache's keys and values stored as `(k, v)`.
pub fn perplexity_with_cache(
    model: &Model<'_>,
    pool: &Pool,
    tokens: &[u32],
    params: PerplexityParams,
    (k, v): (CacheType, CacheType),
    mut on_chunk: impl FnMut(&PerplexityStats),
) -> Result<PerplexityStats> {
    let PerplexityParams { n_ctx, max_chunks, bos, precision } = params;
    if n_ctx < 4 {
        return Err(Error::BadHyperParam { key: "ctx".into(), reason: format!("{n_ctx} is too small for perplexity") });
    }
    let n_chunks = chunk_count(tokens.len(), n_ctx, max_chunks).ok_or_else(|| Error::BadHyperParam {
        key: "ctx".into(),
        reason: format!("the text has {} tokens, fewer than one chunk of {n_ctx}", tokens.len()),
    })?;
    let n_vocab = model.config.n_vocab;
    let first = n_ctx / 2;
    let mut state = State::with_cache_types(model, n_ctx, n_ctx, k, v)?;
    state.set_precision(precision);
    let mut stats = PerplexityStats::default();
    let mut chunk = vec![0u32; n_ctx];
    for c in 0..n_chunks {
        let real = fill_chunk(&mut chunk, tokens, c, bos);
        state.reset();
        let logits = model.forward(&mut state, pool, &chunk, Logits::From(first))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_count_takes_whole_chunks() {
        assert_eq!(chunk_count(100, 10, 0), Some(10));
        assert_eq!(chunk_count(105, 10, 3), Some(3));
        assert_eq!(chunk_count(100, 10, 50), Some(10));
        assert_eq!(chunk_count(9, 10, 0), None);
        assert_eq!(chunk_count(9, 0, 0), None);
    }

    #[test]
    fn log_softmax_row_and_nll() {
        // p = (1/4, 3/4, 0).
        let l = [0.0f32, 3f32.ln(), f32::NEG_INFINITY];
        let n = LogSoftmaxRow::of(&l);
        assert_eq!(n.argmax, 1);
        assert!((n.nll(&l, 0) - 4f64.ln()).abs() < 1e-7, "{}", n.nll(&l, 0));
        assert!((n.log_p(l[1]) - 0.75f64.ln()).abs() < 1e-7);
        assert_eq!(n.nll(&l, 2), f64::INFINITY);
        for tok in 0..3 {
            assert_eq!(nll(&l, tok), n.nll(&l, tok));
        }
        // Ties go to the first index.
        assert_eq!(LogSoftmaxRow::of(&[2.0, 7.0, 7.0]).argmax, 1);
    }
}
