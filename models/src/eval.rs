//! Perplexity and KL divergence of models against a base model (`pith-compress eval`).
//!
//! Everything runs on the runtime: the base and every model are memory-mapped and loaded once
//! with [`Engine::load`], and the text is tokenized with the base's tokenizer. The protocol is
//! `pith perplexity`'s (llama-perplexity's): chunks of `n_ctx` tokens, each from an empty cache
//! with its first token replaced by BOS when the base adds one, scoring the second half — the
//! logits at positions `n_ctx/2 .. n_ctx-2` predict the tokens after them. Per chunk the base
//! runs once and its logits at the scored positions are kept; then each model runs the same
//! chunk and, token by token, is compared with the base:
//! - the NLL of the next token (PPL and its error, [`PerplexityStats`]), bit for bit what
//!   `pith perplexity` computes on the same tokens;
//! - KL(p_base ‖ p_model) = Σ p_base (log p_base − log p_model) over the whole vocabulary, in
//!   f64 from the f32 logits (identical logits give exactly 0);
//! - whether the top-1 (argmax) tokens agree.
//!
//! The statistics follow llama-perplexity's `--kl-divergence` report: mean KLD with its
//! standard error, median and percentiles of the sorted per-token KLDs (linear interpolation
//! at `fraction × (n − 1)`), "same top p" with `sqrt(p (1 − p) / (n − 1))`, and
//! ln(PPL/PPL_base) with its error.

use crate::error::{CompressError, Result};
use crate::output;
use crate::plot;
use pith::engine::Engine;
use pith::file::MappedFile;
use pith::gguf::Gguf;
use pith::perplexity::{LogSoftmaxRow, PerplexityStats};
use pith::{Logits, State};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Output format of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table, one row per model after the base's.
    Table,
    /// A JSON array of rows (the base first).
    Json,
}

/// `pith-compress eval` options.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A model to evaluate (repeat for several).
    #[arg(short = 'm', long = "model", value_name = "MODEL.gguf", required = true)]
    pub models: Vec<PathBuf>,
    /// The reference model: its tokenizer cuts the text, its distributions are the KLD's p.
    #[arg(long, value_name = "BASE.gguf")]
    pub base: PathBuf,
    /// The text to score (UTF-8), e.g. WikiText-2 raw test.
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    pub file: PathBuf,
    /// Tokens per chunk (the second half of each is scored).
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub ctx: usize,
    /// Chunks to evaluate (0 = every whole chunk of the text).
    #[arg(long, default_value_t = 0)]
    pub chunks: usize,
    /// Worker threads (0 = one per core).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Write an SVG scatter plot of file size against mean KL divergence.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Overwrite the plot file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Format of the comparison on stdout.
    #[arg(long = "format", value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Arithmetic of the evaluated models: `f32` (exactly dequantized weights, f32
    /// activations) or `q8` (activations quantized to 8 bits and integer dots, as
    /// llama.cpp's CPU backend computes; use it to compare with llama-perplexity).
    #[arg(long, value_parser = ["f32", "q8"], default_value = "f32")]
    pub precision: String,
}

// ---------------------------------------------------------------------------------------------
// Pure helpers

/// KL(p ‖ q) = Σ p (log p − log q) of two logit rows of the same length, in f64. Terms with
/// p = 0 contribute nothing; q = 0 where p > 0 gives +∞.
pub fn kld_normed(p_logits: &[f32], p: &LogSoftmaxRow, q_logits: &[f32], q: &LogSoftmaxRow) -> f64 {
    let mut s = 0.0f64;
    for (&a, &b) in p_logits.iter().zip(q_logits) {
        let lp = p.log_p(a);
        let w = lp.exp();
        if w > 0.0 {
            s += w * (lp - q.log_p(b));
        }
    }
    s
}

/// KL(p ‖ q) of two logit rows (softmax of each).
pub fn kld(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    kld_normed(p_logits, &LogSoftmaxRow::of(p_logits), q_logits, &LogSoftmaxRow::of(q_logits))
}

/// Whether two rows have the same top-1 token (first index of the maximum).
pub fn same_top1(a: &[f32], b: &[f32]) -> bool {
    LogSoftmaxRow::of(a).argmax == LogSoftmaxRow::of(b).argmax
}

/// llama-perplexity's percentile of sorted values: linear interpolation at `fraction × (n − 1)`
/// (the minimum at 0, the maximum at 1). 0 for no values.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[n - 1];
    }
    let p = fraction * (n - 1) as f64;
    let i = p as usize;
    let w = p - i as f64;
    (1.0 - w) * sorted[i] + w * sorted[(i + 1).min(n - 1)]
}

/// The median of sorted values: the middle one, or the mean of the middle two. 0 for none.
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n.is_multiple_of(2) => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
        _ => sorted[n / 2],
    }
}

/// llama-perplexity's mean and its standard error from Σx, Σx² and the count (the error is 0
/// for 10 values or fewer, as there).
pub fn mean_and_error(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count == 0 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let err = if var > 0.0 && count > 10 { (var / (n - 1.0)).sqrt() } else { 0.0 };
    (mean, err)
}

/// A fraction `k / n` and its binomial standard error `sqrt(p (1 − p) / (n − 1))`.
pub fn fraction_and_error(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let p = k as f64 / n as f64;
    let err = if n > 1 { (p * (1.0 - p) / (n - 1) as f64).sqrt() } else { 0.0 };
    (p, err)
}

// ---------------------------------------------------------------------------------------------
// The evaluation

/// One model's figures against the base, accumulated over chunks.
#[derive(Clone, Debug, Default)]
pub struct ModelEval {
    pub name: String,
    /// The model's NLL of the text's next tokens.
    pub ppl: PerplexityStats,
    /// KL(p_base ‖ p_model) of every scored token, in scoring order.
    pub kld: Vec<f64>,
    pub kld_sum: f64,
    pub kld_sum2: f64,
    /// Σ (nll_model − nll_base) and Σ of its squares: ln(PPL/PPL_base).
    pub nll_diff: f64,
    pub nll_diff2: f64,
    /// Scored tokens whose top-1 token is the base's.
    pub same_top: usize,
}

/// KLD order statistics (of the sorted per-token values).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KldQuantiles {
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl ModelEval {
    fn new(name: &str) -> Self {
        ModelEval { name: name.to_string(), ..Default::default() }
    }

    /// Tokens compared.
    pub fn count(&self) -> usize {
        self.kld.len()
    }

    /// Mean KLD and its standard error.
    pub fn mean_kld(&self) -> (f64, f64) {
        mean_and_error(self.kld_sum, self.kld_sum2, self.count())
    }

    /// ln(PPL/PPL_base) and its standard error.
    pub fn ln_ppl_ratio(&self) -> (f64, f64) {
        mean_and_error(self.nll_diff, self.nll_diff2, self.count())
    }

    /// The fraction of tokens with the base's top-1 token, and its standard error.
    pub fn same_top_fraction(&self) -> (f64, f64) {
        fraction_and_error(self.same_top, self.count())
    }

    /// Median, percentiles and extremes of the per-token KLDs.
    pub fn kld_quantiles(&self) -> KldQuantiles {
        let mut v = self.kld.clone();
        v.sort_by(f64::total_cmp);
        KldQuantiles {
            min: percentile(&v, 0.0),
            median: median(&v),
            p90: percentile(&v, 0.90),
            p95: percentile(&v, 0.95),
            p99: percentile(&v, 0.99),
            p999: percentile(&v, 0.999),
            max: percentile(&v, 1.0),
        }
    }
}

/// Figures of the base and every model, so far or final.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    pub n_ctx: usize,
    /// Chunks that will be evaluated (`base.chunks` are done).
    pub n_chunks: usize,
    /// The base's NLL of the text's next tokens.
    pub base: PerplexityStats,
    pub models: Vec<ModelEval>,
    /// Wall time in forward passes (base and models) and in comparing distributions.
    pub forward_seconds: f64,
    pub compare_seconds: f64,
}

/// Per-token comparison of one scored position.
#[derive(Clone, Copy, Debug, Default)]
struct TokenCmp {
    nll: f64,
    kld: f64,
    same_top: bool,
}

/// Checks that `n_ctx` leaves something to score.
pub fn check_ctx(n_ctx: usize) -> Result<()> {
    if n_ctx < 4 {
        return Err(CompressError::BadOption(format!(
            "-c {n_ctx}: the context must be at least 4 tokens (the second half of each chunk is scored)"
        )));
    }
    Ok(())
}

/// The number of chunks of `n_ctx` to evaluate among `n_tokens` (`max_chunks` 0 = all).
pub fn chunk_count(n_tokens: usize, n_ctx: usize, max_chunks: usize) -> Result<usize> {
    check_ctx(n_ctx)?;
    pith::perplexity::chunk_count(n_tokens, n_ctx, max_chunks).ok_or_else(|| {
        CompressError::BadOption(format!(
            "the text has {n_tokens} tokens, fewer than one chunk of {n_ctx} (-c); give a longer text or a smaller -c"
        ))
    })
}

/// Checks that every model has the base's vocabulary size.
pub fn check_vocab(base: &Engine<'_>, models: &[(&str, &Engine<'_>)]) -> Result<()> {
    let nv = base.model.config.n_vocab;
    for (name, m) in models {
        let mv = m.model.config.n_vocab;
        if mv != nv {
            return Err(CompressError::EvalModel {
                model: name.to_string(),
                why: format!("vocabulary of {mv} tokens, but the base has {nv}: only models of the same vocabulary can be compared"),
            });
        }
    }
    Ok(())
}

/// Evaluates up to `max_chunks` chunks (0 = all) of `tokens` (the base's tokenization) on the
/// base and every model, calling `on_chunk` after each chunk. `models` are (name, engine); the
/// name appears in errors and results.
pub fn evaluate(
    base: &Engine<'_>,
    models: &[(&str, &Engine<'_>)],
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: usize,
    on_chunk: impl FnMut(&Evaluation),
) -> Result<Evaluation> {
    evaluate_with(base, models, tokens, n_ctx, max_chunks, pith::Precision::F32, on_chunk)
}

/// [`evaluate`], running the models (not the base) with `precision`.
pub fn evaluate_with(
    base: &Engine<'_>,
    models: &[(&str, &Engine<'_>)],
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: usize,
    precision: pith::Precision,
    mut on_chunk: impl FnMut(&Evaluation),
) -> Result<Evaluation> {
    check_vocab(base, models)?;
    let n_chunks = chunk_count(tokens.len(), n_ctx, max_chunks)?;
    let nv = base.model.config.n_vocab;
    let bos = if base.tokenizer.add_bos() { base.tokenizer.bos() } else { None };
    let first = n_ctx / 2;
    let n_scored = n_ctx - 1 - first;
    let model_err =
        |name: &str, e: pith::Error| CompressError::EvalModel { model: name.to_string(), why: e.to_string() };

    let mut base_state = State::new(&base.model, n_ctx, n_ctx).map_err(|e| model_err("base", e))?;
    // The base is the reference: always exact f32 arithmetic, whatever `--precision` the models get.
    base_state.set_precision(pith::Precision::F32);
    let mut states = Vec::with_capacity(models.len());
    for (name, m) in models {
        let mut st = State::new(&m.model, n_ctx, n_ctx).map_err(|e| model_err(name, e))?;
        st.set_precision(precision);
        states.push(st);
    }
    let mut base_logits = vec![0f32; n_scored * nv];
    let mut base_norms = vec![LogSoftmaxRow::default(); n_scored];
    let mut cmp = vec![TokenCmp::default(); n_scored];
    let mut ev = Evaluation {
        n_ctx,
        n_chunks,
        base: PerplexityStats::default(),
        models: models.iter().map(|(n, _)| ModelEval::new(n)).collect(),
        ..Default::default()
    };
    for e in &mut ev.models {
        e.kld.reserve(n_chunks * n_scored);
    }
    let mut chunk = vec![0u32; n_ctx];
    let rows_per = |threads: usize| n_scored.div_ceil(threads.max(1)).max(1);

    for c in 0..n_chunks {
        let real = pith::perplexity::fill_chunk(&mut chunk, tokens, c, bos);
        let next = &real[first + 1..];

        base_state.reset();
        let t = Instant::now();
        let logits = base
            .model
            .forward(&mut base_state, &base.pool, &chunk, Logits::From(first))
            .map_err(|e| model_err("base", e))?;
        base_logits.copy_from_slice(&logits[..n_scored * nv]);
        ev.forward_seconds += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let bl = &base_logits;
        let per = rows_per(base.pool.threads());
        base.pool.for_each_chunk(&mut base_norms, per, &|i, out| {
            for (k, o) in out.iter_mut().enumerate() {
                let r = i * per + k;
                *o = LogSoftmaxRow::of(&bl[r * nv..(r + 1) * nv]);
            }
        });
        let mut base_nll = Vec::with_capacity(n_scored);
        for (r, norm) in base_norms.iter().enumerate() {
            let v = norm.nll(&base_logits[r * nv..(r + 1) * nv], next[r]);
            ev.base.nll += v;
            ev.base.nll2 += v * v;
            ev.base.count += 1;
            base_nll.push(v);
        }
        ev.base.chunks = c + 1;
        ev.compare_seconds += t.elapsed().as_secs_f64();

        for (((name, m), state), acc) in models.iter().zip(&mut states).zip(ev.models.iter_mut()) {
            state.reset();
            let t = Instant::now();
            let ml = m.model.forward(state, &m.pool, &chunk, Logits::From(first)).map_err(|e| model_err(name, e))?;
            let ml = &ml[..n_scored * nv];
            ev.forward_seconds += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let bn = &base_norms;
            let per = rows_per(m.pool.threads());
            m.pool.for_each_chunk(&mut cmp, per, &|i, out| {
                for (k, o) in out.iter_mut().enumerate() {
                    let r = i * per + k;
                    let (pb, qm) = (&bl[r * nv..(r + 1) * nv], &ml[r * nv..(r + 1) * nv]);
                    let qn = LogSoftmaxRow::of(qm);
                    *o = TokenCmp {
                        nll: qn.nll(qm, next[r]),
                        kld: kld_normed(pb, &bn[r], qm, &qn),
                        same_top: bn[r].argmax == qn.argmax,
                    };
                }
            });
            for (t, &b) in cmp.iter().zip(&base_nll) {
                acc.ppl.nll += t.nll;
                acc.ppl.nll2 += t.nll * t.nll;
                acc.ppl.count += 1;
                acc.kld.push(t.kld);
                acc.kld_sum += t.kld;
                acc.kld_sum2 += t.kld * t.kld;
                let d = t.nll - b;
                acc.nll_diff += d;
                acc.nll_diff2 += d * d;
                acc.same_top += t.same_top as usize;
            }
            acc.ppl.chunks = c + 1;
            ev.compare_seconds += t.elapsed().as_secs_f64();
        }
        on_chunk(&ev);
    }
    Ok(ev)
}

// ---------------------------------------------------------------------------------------------
// Files and the report

/// Size figures of a GGUF file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct FileInfo {
    /// The file's size in bytes.
    pub bytes: u64,
    /// Bytes of tensor data (every tensor of the file).
    pub tensor_bytes: u64,
    /// Elements of every tensor of the file.
    pub elements: u64,
}

impl FileInfo {
    pub fn of(file_bytes: u64, g: &Gguf<'_>) -> FileInfo {
        FileInfo {
            bytes: file_bytes,
            tensor_bytes: g.tensors.iter().map(|t| t.data.len() as u64).sum(),
            elements: g.tensors.iter().map(|t| t.n_elements()).sum(),
        }
    }

    pub fn mib(&self) -> f64 {
        self.bytes as f64 / 1048576.0
    }

    /// Tensor data bits per tensor element (what `pith inspect` reports).
    pub fn bits_per_weight(&self) -> f64 {
        self.tensor_bytes as f64 * 8.0 / self.elements.max(1) as f64
    }
}

/// One row of the comparison (the base's KLD fields are `None`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportRow {
    /// The file's stem.
    pub name: String,
    pub path: String,
    /// "base" or "model".
    pub role: &'static str,
    pub file_bytes: u64,
    pub file_mib: f64,
    pub bits_per_weight: f64,
    pub chunks: usize,
    pub tokens: usize,
    pub ppl: f64,
    pub ppl_error: f64,
    pub ln_ppl_ratio: Option<f64>,
    pub ln_ppl_ratio_error: Option<f64>,
    pub kld_mean: Option<f64>,
    pub kld_mean_error: Option<f64>,
    pub kld: Option<KldQuantiles>,
    /// Percentage of tokens with the base's top-1 token, and its standard error.
    pub same_top_percent: Option<f64>,
    pub same_top_percent_error: Option<f64>,
}

/// A file's stem, for labels.
pub fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// Each path's label: its stem, or where another path of the list has the same stem (two
/// sessions' `kd.q8_0.gguf`), its folder's name and the stem, or failing that the whole path.
pub fn labels(paths: &[&Path]) -> Vec<String> {
    let dir = |p: &Path| p.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned());
    paths
        .iter()
        .map(|&p| {
            let s = stem(p);
            let clash = |q: &Path| q != p && stem(q) == s;
            if !paths.iter().any(|&q| clash(q)) {
                return s;
            }
            match dir(p) {
                Some(d) if !paths.iter().any(|&q| clash(q) && dir(q).as_deref() == Some(d.as_str())) => {
                    format!("{d}/{s}")
                }
                _ => p.display().to_string(),
            }
        })
        .collect()
}

/// The rows of the report: the base's, then one per model (`models[i]` describes
/// `ev.models[i]`).
pub fn report(ev: &Evaluation, base: (&Path, FileInfo), models: &[(&Path, FileInfo)]) -> Vec<ReportRow> {
    let paths: Vec<&Path> = std::iter::once(base.0).chain(models.iter().map(|m| m.0)).collect();
    let names = labels(&paths);
    let row = |name: &str, path: &Path, info: FileInfo, ppl: &PerplexityStats| ReportRow {
        name: name.to_string(),
        path: path.display().to_string(),
        role: "base",
        file_bytes: info.bytes,
        file_mib: info.mib(),
        bits_per_weight: info.bits_per_weight(),
        chunks: ppl.chunks,
        tokens: ppl.count,
        ppl: ppl.ppl(),
        ppl_error: ppl.ppl_error(),
        ln_ppl_ratio: None,
        ln_ppl_ratio_error: None,
        kld_mean: None,
        kld_mean_error: None,
        kld: None,
        same_top_percent: None,
        same_top_percent_error: None,
    };
    let mut rows = vec![row(&names[0], base.0, base.1, &ev.base)];
    for ((m, &(path, info)), name) in ev.models.iter().zip(models).zip(&names[1..]) {
        let (r, re) = m.ln_ppl_ratio();
        let (k, ke) = m.mean_kld();
        let (t, te) = m.same_top_fraction();
        rows.push(ReportRow {
            role: "model",
            ln_ppl_ratio: Some(r),
            ln_ppl_ratio_error: Some(re),
            kld_mean: Some(k),
            kld_mean_error: Some(ke),
            kld: Some(m.kld_quantiles()),
            same_top_percent: Some(100.0 * t),
            same_top_percent_error: Some(100.0 * te),
            ..row(name, path, info, &m.ppl)
        });
    }
    rows
}

/// The comparison as a text table.
pub fn format_table(rows: &[ReportRow]) -> String {
    let label = |r: &ReportRow| if r.role == "base" { format!("{} (base)", r.name) } else { r.name.clone() };
    let w = rows.iter().map(|r| label(r).chars().count()).max().unwrap_or(5).max(5);
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<w$}  {:>9}  {:>6}  {:>19}  {:>19}  {:>21}  {:>10}  {:>10}  {:>16}",
        "model", "size MiB", "bpw", "PPL", "ln(PPL/PPL_base)", "mean KLD", "median KLD", "99% KLD", "same top %"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<w$}  {:>9.2}  {:>6.3}  {:>19}  {:>19}  {:>21}  {:>10}  {:>10}  {:>16}",
            label(r),
            r.file_mib,
            r.bits_per_weight,
            format!("{:.4} ± {:.4}", r.ppl, r.ppl_error),
            opt(r.ln_ppl_ratio.zip(r.ln_ppl_ratio_error).map(|(a, b)| format!("{a:.5} ± {b:.5}"))),
            opt(r.kld_mean.zip(r.kld_mean_error).map(|(a, b)| format!("{a:.6} ± {b:.6}"))),
            opt(r.kld.as_ref().map(|k| format!("{:.6}", k.median))),
            opt(r.kld.as_ref().map(|k| format!("{:.6}", k.p99))),
            opt(r.same_top_percent.zip(r.same_top_percent_error).map(|(a, b)| format!("{a:.3} ± {b:.3}"))),
        );
    }
    if let Some(b) = rows.first() {
        let _ = writeln!(s, "({} chunks, {} tokens scored per model; KLD against {})", b.chunks, b.tokens, b.name);
    }
    s
}

/// The comparison as a JSON array.
pub fn format_json(rows: &[ReportRow]) -> Result<String> {
    serde_json::to_string_pretty(rows).map_err(|e| CompressError::BadOption(format!("JSON output: {e}")))
}

/// The SVG of file size (MiB) against mean KLD (log scale), one labelled point per model.
pub fn plot_svg(rows: &[ReportRow]) -> String {
    let base = rows.iter().find(|r| r.role == "base");
    let points: Vec<plot::Point> = rows
        .iter()
        .filter(|r| r.role != "base")
        .map(|r| plot::Point { label: r.name.clone(), x: r.file_mib, y: r.kld_mean.unwrap_or(f64::NAN) })
        .collect();
    let subtitle = match base {
        Some(b) => format!(
            "KL divergence against {} ({:.2} MiB, PPL {:.4}); {} chunks, {} tokens",
            b.name, b.file_mib, b.ppl, b.chunks, b.tokens
        ),
        None => String::new(),
    };
    plot::scatter_svg(
        &plot::Scatter {
            title: "File size vs KL divergence".into(),
            subtitle,
            x_label: "file size (MiB)".into(),
            y_label: "mean KL divergence (nats / token, log scale)".into(),
            log_y: true,
        },
        &points,
    )
}

// ---------------------------------------------------------------------------------------------
// The command

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| CompressError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| CompressError::EvalText {
        path: path.to_path_buf(),
        why: format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })?;
    if text.is_empty() {
        return Err(CompressError::EvalText { path: path.to_path_buf(), why: "is empty".into() });
    }
    Ok(text)
}

/// Runs `pith-compress eval`.
pub fn run(a: &EvalArgs) -> Result<()> {
    check_ctx(a.ctx)?;
    if let Some(p) = &a.plot {
        let mut inputs: Vec<&Path> = a.models.iter().map(|m| m.as_path()).collect();
        inputs.push(&a.base);
        inputs.push(&a.file);
        output::check_output(p, a.force, &inputs)?;
    }
    let text = read_text(&a.file)?;
    let t0 = Instant::now();
    let base_file = MappedFile::open(&a.base)?;
    let files = a.models.iter().map(MappedFile::open).collect::<Result<Vec<_>, _>>()?;
    let base = Engine::load(&base_file, a.threads)?;
    let engines = files.iter().map(|f| Engine::load(f, a.threads)).collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = a.models.iter().map(|p| p.display().to_string()).collect();
    let models: Vec<(&str, &Engine<'_>)> = names.iter().map(|n| n.as_str()).zip(&engines).collect();
    check_vocab(&base, &models)?;

    let tokens = base.tokenizer.encode(&text, false).map_err(|e| base_file.context(e))?;
    if tokens.len() < a.ctx {
        return Err(CompressError::EvalText {
            path: a.file.clone(),
            why: format!(
                "{} tokens, fewer than one chunk of {} (-c); give a longer text or a smaller -c",
                tokens.len(),
                a.ctx
            ),
        });
    }
    let n_chunks = chunk_count(tokens.len(), a.ctx, a.chunks)?;
    crate::progress::note(&format!(
        "pith-compress: {} tokens, {} chunks of {} (scoring the second half of each), base + {} model{}, {} threads; loaded and tokenized in {:.1} s",
        tokens.len(),
        n_chunks,
        a.ctx,
        models.len(),
        if models.len() == 1 { "" } else { "s" },
        base.pool.threads(),
        t0.elapsed().as_secs_f64()
    ));

    let pb = crate::progress::bar(n_chunks as u64, "eval");
    let t1 = Instant::now();
    let precision = if a.precision == "q8" { pith::Precision::Q8 } else { pith::Precision::F32 };
    let shown =
        labels(&std::iter::once(a.base.as_path()).chain(a.models.iter().map(|m| m.as_path())).collect::<Vec<_>>());
    let ev = evaluate_with(&base, &models, &tokens, a.ctx, a.chunks, precision, |ev| {
        let mut line = format!("[{}/{}] base PPL {:.4}", ev.base.chunks, ev.n_chunks, ev.base.ppl());
        for (m, label) in ev.models.iter().zip(&shown[1..]) {
            let _ = write!(
                line,
                " | {}: PPL {:.4} KLD {:.6} top {:.2}%",
                label,
                m.ppl.ppl(),
                m.mean_kld().0,
                100.0 * m.same_top_fraction().0
            );
        }
        if pb.is_hidden() {
            crate::progress::note(&line);
        } else {
            pb.println(line);
        }
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let secs = t1.elapsed().as_secs_f64();
    let per = |x: f64| x / ev.base.chunks.max(1) as f64;
    crate::progress::note(&format!(
        "pith-compress: {} chunks in {:.1} s: {:.2} s per chunk ({:.2} s in {} forward passes, {:.2} s comparing)",
        ev.base.chunks,
        secs,
        per(secs),
        per(ev.forward_seconds),
        1 + models.len(),
        per(ev.compare_seconds)
    ));

    let base_info = FileInfo::of(base_file.bytes().len() as u64, &base.gguf);
    let infos: Vec<(&Path, FileInfo)> = a
        .models
        .iter()
        .zip(&files)
        .zip(&engines)
        .map(|((p, f), e)| (p.as_path(), FileInfo::of(f.bytes().len() as u64, &e.gguf)))
        .collect();
    let rows = report(&ev, (&a.base, base_info), &infos);
    let out = match a.format {
        OutputFormat::Table => format_table(&rows),
        OutputFormat::Json => format_json(&rows)? + "\n",
    };
    // The plot first: a closed or full stdout must not cost the file.
    if let Some(p) = &a.plot {
        let mut inputs: Vec<&Path> = a.models.iter().map(|m| m.as_path()).collect();
        inputs.push(&a.base);
        inputs.push(&a.file);
        output::write_file(p, a.force, &inputs, plot_svg(&rows).as_bytes())?;
        crate::progress::note(&format!("pith-compress: wrote {}", p.display()));
    }
    crate::progress::out(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax64(l: &[f64]) -> Vec<f64> {
        let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    }

    fn rows(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 16.0
            })
            .collect()
    }

    #[test]
    fn kld_of_identical_rows_is_exactly_zero() {
        for seed in 0..5 {
            let r = rows(seed, 1000);
            assert_eq!(kld(&r, &r), 0.0);
        }
        assert_eq!(kld(&[3.0; 7], &[3.0; 7]), 0.0);
    }

    #[test]
    fn kld_of_known_distributions() {
        // p = (1/4, 3/4), q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812035...
        let p = [0.0f32, 3f32.ln()];
        let q = [5.0f32, 5.0];
        let want = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
        assert!((kld(&p, &q) - want).abs() < 1e-7, "{} vs {want}", kld(&p, &q));
        assert!((want - 0.130_812_035).abs() < 1e-9);
        // And the other way round: KL(q‖p) = 1/2 ln(2) + 1/2 ln(2/3) = 0.143841036...
        let back = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kld(&q, &p) - back).abs() < 1e-7, "{} vs {back}", kld(&q, &p));
        // Three outcomes against an f64 reference from the definition.
        let (a, b) = ([1.0f32, 2.0, 3.0], [3.0f32, 2.0, 1.0]);
        let pa = softmax64(&a.map(|v| v as f64));
        let pb = softmax64(&b.map(|v| v as f64));
        let want: f64 = pa.iter().zip(&pb).map(|(x, y)| x * (x / y).ln()).sum();
        assert!((kld(&a, &b) - want).abs() < 1e-12, "{} vs {want}", kld(&a, &b));
        // log(p/q) is −2, 0, +2: KL = 2 (p₃ − p₁) = 2 (e³ − e) / (e + e² + e³) = 1.15042076...
        let e = std::f64::consts::E;
        let hand = 2.0 * (e.powi(3) - e) / (e + e * e + e.powi(3));
        assert!((want - hand).abs() < 1e-12 && (hand - 1.150_420_765).abs() < 1e-9, "{want} {hand}");
    }

    #[test]
    fn kld_is_shift_invariant_positive_and_handles_zero_probabilities() {
        let p = rows(1, 500);
        let q = rows(2, 500);
        let shifted: Vec<f32> = q.iter().map(|v| v + 4.0).collect();
        let k = kld(&p, &q);
        assert!(k > 0.0);
        assert!((kld(&p, &shifted) - k).abs() < 1e-4 * k, "{} vs {k}", kld(&p, &shifted));
        // p has an impossible token: its term vanishes instead of giving NaN.
        let p0 = [f32::NEG_INFINITY, 0.0, 0.0];
        let q0 = [0.0f32, 0.0, 0.0];
        let want = 2.0 * 0.5 * (0.5f64 / (1.0 / 3.0)).ln();
        assert!((kld(&p0, &q0) - want).abs() < 1e-9);
        // q has an impossible token where p does not: infinite divergence.
        assert_eq!(kld(&q0, &p0), f64::INFINITY);
    }

    #[test]
    fn top1_agreement_and_nll() {
        assert!(same_top1(&[0.0, 5.0, 1.0], &[-3.0, 0.5, 0.4]));
        assert!(!same_top1(&[0.0, 5.0, 1.0], &[0.0, 1.0, 5.0]));
        // Ties go to the first index.
        assert_eq!(LogSoftmaxRow::of(&[2.0, 7.0, 7.0]).argmax, 1);
        // NLL agrees with the runtime's exactly.
        let r = rows(3, 300);
        let n = LogSoftmaxRow::of(&r);
        for tok in [0u32, 17, 299] {
            assert_eq!(n.nll(&r, tok), pith::perplexity::nll(&r, tok));
        }
        let n2 = LogSoftmaxRow::of(&[0.0, 0.0]);
        assert!((n2.nll(&[0.0, 0.0], 1) - 2f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn percentiles_and_median_follow_llama_perplexity() {
        let v: Vec<f64> = (0..=100).map(|i| i as f64).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.0), 0.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[0.0, 10.0], 0.25), 2.5);
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 0.5) - 2.5).abs() < 1e-12);
        // 0.99 × 9 = 8.91: between the 9th and 10th values.
        let w: Vec<f64> = (1..=10).map(|i| i as f64 * 10.0).collect();
        assert!((percentile(&w, 0.99) - 99.1).abs() < 1e-9, "{}", percentile(&w, 0.99));
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn means_and_errors() {
        // Values 1..=20: mean 10.5, population variance 33.25, error sqrt(33.25/19).
        let (s, s2) = (1..=20).fold((0.0, 0.0), |(a, b), i| (a + i as f64, b + (i * i) as f64));
        let (m, e) = mean_and_error(s, s2, 20);
        assert!((m - 10.5).abs() < 1e-12 && (e - (33.25f64 / 19.0).sqrt()).abs() < 1e-12, "{m} {e}");
        assert_eq!(mean_and_error(3.0, 9.0, 1), (3.0, 0.0));
        assert_eq!(mean_and_error(0.0, 0.0, 0), (0.0, 0.0));
        let (p, e) = fraction_and_error(75, 100);
        assert!((p - 0.75).abs() < 1e-15 && (e - (0.75f64 * 0.25 / 99.0).sqrt()).abs() < 1e-15);
        assert_eq!(fraction_and_error(5, 5), (1.0, 0.0));
    }

    #[test]
    fn model_eval_statistics() {
        let mut m = ModelEval::new("x");
        for (i, k) in [0.5, 0.1, 0.0, 0.3, 0.2].into_iter().enumerate() {
            m.kld.push(k);
            m.kld_sum += k;
            m.kld_sum2 += k * k;
            m.same_top += (i % 2 == 0) as usize;
        }
        let q = m.kld_quantiles();
        assert_eq!((q.min, q.median, q.max), (0.0, 0.2, 0.5));
        assert!((q.p99 - (0.3 + 0.96 * 0.2)).abs() < 1e-12, "{}", q.p99);
        assert!((m.mean_kld().0 - 0.22).abs() < 1e-12);
        assert_eq!(m.same_top_fraction().0, 0.6);
    }

    #[test]
    fn chunk_and_ctx_checks() {
        assert!(check_ctx(3).unwrap_err().to_string().contains("-c 3"));
        assert_eq!(chunk_count(100, 10, 0).unwrap(), 10);
        assert_eq!(chunk_count(100, 10, 3).unwrap(), 3);
        assert_eq!(chunk_count(100, 10, 50).unwrap(), 10);
        let e = chunk_count(9, 10, 0).unwrap_err().to_string();
        assert!(e.contains("9 tokens") && e.contains("chunk of 10"), "{e}");
    }

    fn sample_rows() -> Vec<ReportRow> {
        let mut ev = Evaluation { n_ctx: 8, n_chunks: 1, ..Default::default() };
        ev.base = PerplexityStats { chunks: 1, count: 3, nll: 3.0, nll2: 3.5 };
        let mut m = ModelEval::new("dir/m-q4.gguf");
        m.ppl = PerplexityStats { chunks: 1, count: 3, nll: 3.3, nll2: 4.0 };
        m.kld = vec![0.01, 0.02, 0.03];
        m.kld_sum = 0.06;
        m.kld_sum2 = 0.0014;
        m.nll_diff = 0.3;
        m.nll_diff2 = 0.05;
        m.same_top = 2;
        ev.models.push(m);
        let fi = FileInfo { bytes: 2 << 20, tensor_bytes: 1000, elements: 2000 };
        report(&ev, (Path::new("/x/base-f32.gguf"), fi), &[(Path::new("dir/m-q4.gguf"), fi)])
    }

    #[test]
    fn labels_tell_same_named_files_apart() {
        let p = |s: &'static str| Path::new(s);
        let l = labels(&[
            p("/t/teacher-f32.gguf"),
            p("/t/teacher-f32.gguf"),
            p("/a/kd.q8_0.gguf"),
            p("/b/kd.q8_0.gguf"),
            p("/b/kd.q4_k_m.gguf"),
        ]);
        assert_eq!(l, ["teacher-f32", "teacher-f32", "a/kd.q8_0", "b/kd.q8_0", "kd.q4_k_m"]);
        let l = labels(&[p("/x/a/m.gguf"), p("/y/a/m.gguf"), p("m.gguf")]);
        assert_eq!(l, ["/x/a/m.gguf", "/y/a/m.gguf", "m.gguf"]);
    }

    #[test]
    fn report_table_json_and_plot() {
        let rows = sample_rows();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].role, rows[0].name.as_str()), ("base", "base-f32"));
        assert_eq!(rows[1].name, "m-q4");
        assert!((rows[1].ppl - 1.1f64.exp()).abs() < 1e-12);
        assert!((rows[1].kld_mean.unwrap() - 0.02).abs() < 1e-12);
        assert!((rows[1].same_top_percent.unwrap() - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!((rows[1].file_mib, rows[1].bits_per_weight), (2.0, 4.0));
        let t = format_table(&rows);
        assert!(t.contains("base-f32 (base)") && t.contains("m-q4") && t.contains("mean KLD"), "{t}");
        assert!(t.contains(&format!("{:.4}", 1.1f64.exp())), "{t}");
        let j: serde_json::Value = serde_json::from_str(&format_json(&rows).unwrap()).unwrap();
        assert_eq!(j[0]["role"], "base");
        assert!(j[0]["kld_mean"].is_null());
        assert_eq!(j[1]["name"], "m-q4");
        assert!((j[1]["kld"]["median"].as_f64().unwrap() - 0.02).abs() < 1e-12);
        let svg = plot_svg(&rows);
        assert!(svg.contains(">m-q4<") && svg.contains("base-f32") && svg.contains("<circle"), "{svg}");
    }
}
