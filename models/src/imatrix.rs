//! Calibration statistics ("importance matrix"): the runtime runs over calibration text and,
//! at the input of every linear layer, this module accumulates
//! - `Σ x_j²` per input column `j` (the importance of column `j`: how much an error in that
//!   column of the weights moves the output, on average), and
//! - the second-moment matrix `H = Σ x xᵀ` (n_in × n_in), which error-compensating
//!   quantization ([`crate::gptq`]) needs.
//!
//! Weights that share an input (q/k/v, gate/up) share one set of statistics. The file is GGUF:
//! `<weight>.in_sum2` (F32, `[n_in]`) and `<weight>.counts` (F32, `[1]`) as in llama.cpp's
//! imatrix files, plus pith's `<site>.hessian` (F32, `[n_in, n_in]`, sums) per input site.

use crate::error::{CompressError, Result};
use crate::output::AtomicOutput;
use pith::engine::Engine;
use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::Gguf;
use pith::model::{Logits, Observer, Site, State};
use pith_kernels::GgmlType;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Statistics at one matmul input.
#[derive(Clone, Debug)]
pub struct SiteStats {
    /// Σ x_j² over every token seen. (n_in)
    pub sum2: Vec<f64>,
    /// Σ x xᵀ, row-major, when collected. (n_in, n_in)
    pub hessian: Option<Vec<f64>>,
    /// Tokens seen.
    pub count: u64,
}

impl SiteStats {
    fn new(n_in: usize, hessian: bool) -> Self {
        SiteStats { sum2: vec![0.0; n_in], hessian: hessian.then(|| vec![0.0; n_in * n_in]), count: 0 }
    }

    /// Width of the input.
    pub fn n_in(&self) -> usize {
        self.sum2.len()
    }

    /// Mean squared input per column, the per-column importance.
    pub fn importance(&self) -> Vec<f32> {
        let n = self.count.max(1) as f64;
        self.sum2.iter().map(|&s| (s / n) as f32).collect()
    }

    /// The mean second-moment matrix `H / count`, row-major.
    pub fn mean_hessian(&self) -> Option<Vec<f64>> {
        let n = self.count.max(1) as f64;
        self.hessian.as_ref().map(|h| h.iter().map(|&v| v / n).collect())
    }
}

/// The name of the statistics site of a weight tensor, or `None` for tensors that are not
/// the weight of a matmul (norms, the token embedding when the output is separate).
pub fn site_key(weight: &str, tied_output: bool) -> Option<String> {
    if weight == "output.weight" || (tied_output && weight == "token_embd.weight") {
        return Some("output".into());
    }
    let rest = weight.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let site =
        [Site::AttnIn, Site::AttnOut, Site::FfnIn, Site::FfnDown].into_iter().find(|s| s.weights().contains(&name))?;
    Some(site_name(Some(layer), site))
}

fn site_name(layer: Option<usize>, site: Site) -> String {
    let s = match site {
        Site::AttnIn => "attn_in",
        Site::AttnOut => "attn_out",
        Site::FfnIn => "ffn_in",
        Site::FfnDown => "ffn_down_in",
        Site::Output => "output",
    };
    match layer {
        Some(l) => format!("blk.{l}.{s}"),
        None => s.to_string(),
    }
}

/// The calibration statistics of a model.
#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    /// Per site (see [`site_key`]).
    pub sites: BTreeMap<String, SiteStats>,
    /// Weight tensor name → site, for every weight the statistics cover.
    pub weights: BTreeMap<String, String>,
    /// Calibration files used.
    pub datasets: Vec<String>,
    pub chunk_count: u64,
    pub chunk_size: u64,
}

impl Imatrix {
    /// The statistics of the weight tensor `weight`.
    pub fn for_weight(&self, weight: &str) -> Option<&SiteStats> {
        self.sites.get(self.weights.get(weight)?)
    }

    /// Whether every site carries a second-moment matrix.
    pub fn has_hessians(&self) -> bool {
        !self.sites.is_empty() && self.sites.values().all(|s| s.hessian.is_some())
    }
}

/// Collects [`SiteStats`] as the model runs (an [`Observer`]).
struct Collector {
    sites: BTreeMap<(Option<usize>, Site), SiteStats>,
    hessian: bool,
    /// Inputs transposed, (n_in, n_tok), for the second-moment product.
    xt: Vec<f32>,
    /// One chunk's `X Xᵀ` in f32 before it is added to the f64 sums.
    prod: Vec<f32>,
}

impl Observer for Collector {
    fn matmul_input(&mut self, layer: Option<usize>, site: Site, x: &[f32], n_tok: usize) {
        if n_tok == 0 {
            return;
        }
        let n_in = x.len() / n_tok;
        let st = self.sites.entry((layer, site)).or_insert_with(|| SiteStats::new(n_in, self.hessian));
        st.count += n_tok as u64;
        for row in x.chunks_exact(n_in) {
            for (s, &v) in st.sum2.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
        }
        let Some(h) = st.hessian.as_mut() else { return };
        // H += Σ_t x_t x_tᵀ as one gemm in dot form: rows of Xᵀ against rows of Xᵀ.
        self.xt.resize(n_in * n_tok, 0.0);
        for (t, row) in x.chunks_exact(n_in).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                self.xt[j * n_tok + t] = v;
            }
        }
        self.prod.resize(n_in * n_in, 0.0);
        let xt = &self.xt;
        let rows_per = 16;
        self.prod.par_chunks_mut(rows_per * n_in).zip(h.par_chunks_mut(rows_per * n_in)).enumerate().for_each(
            |(i, (p, hc))| {
                let r0 = i * rows_per;
                let nr = p.len() / n_in;
                pith_kernels::gemm::gemm_f32(&xt[r0 * n_tok..(r0 + nr) * n_tok], xt, n_tok, p);
                for (a, &b) in hc.iter_mut().zip(p.iter()) {
                    *a += b as f64;
                }
            },
        );
    }
}

/// Runs `engine` over `tokens` in chunks of `n_ctx` (each chunk's first token replaced by
/// BOS when the model adds one, as llama-imatrix does) and gathers the statistics of every
/// matmul input. `hessian` also gathers the second-moment matrices.
pub fn collect(
    engine: &Engine<'_>,
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: usize,
    hessian: bool,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<Imatrix> {
    if n_ctx < 2 {
        return Err(CompressError::BadOption(format!("-c {n_ctx}: a chunk needs at least 2 tokens")));
    }
    let n_chunks = pith::perplexity::chunk_count(tokens.len(), n_ctx, max_chunks).ok_or_else(|| {
        CompressError::BadOption(format!(
            "the calibration text has {} tokens, fewer than one chunk of {n_ctx} (use a smaller -c or more text)",
            tokens.len()
        ))
    })?;
    let model = &engine.model;
    let bos = if engine.tokenizer.add_bos() { engine.tokenizer.bos() } else { None };
    let mut state = State::new(model, n_ctx, n_ctx)?;
    let mut col = Collector { sites: BTreeMap::new(), hessian, xt: Vec::new(), prod: Vec::new() };
    let mut chunk = vec![0u32; n_ctx];
    for c in 0..n_chunks {
        pith::perplexity::fill_chunk(&mut chunk, tokens, c, bos);
        state.reset();
        model.forward_observed(&mut state, &engine.pool, &chunk, Logits::From(0), &mut col)?;
        on_chunk(c + 1, n_chunks);
    }
    let tied = engine.gguf.tensor("output.weight").is_none();
    let mut im = Imatrix { chunk_count: n_chunks as u64, chunk_size: n_ctx as u64, ..Default::default() };
    for ((layer, site), st) in col.sites {
        let key = site_name(layer, site);
        let names: Vec<String> = match (layer, site) {
            (None, _) => vec![if tied { "token_embd.weight".into() } else { "output.weight".into() }],
            (Some(l), s) => s.weights().iter().map(|w| format!("blk.{l}.{w}")).collect(),
        };
        for n in names {
            im.weights.insert(n, key.clone());
        }
        im.sites.insert(key, st);
    }
    Ok(im)
}

/// Reads calibration text: it must exist, be UTF-8 and not be empty.
pub fn read_calibration(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| CompressError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| CompressError::Calibration {
        path: path.to_path_buf(),
        why: format!("not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to()),
    })?;
    if text.trim().is_empty() {
        return Err(CompressError::Calibration { path: path.to_path_buf(), why: "the file is empty".into() });
    }
    Ok(text)
}

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `im` as a GGUF file (atomically).
pub fn save(im: &Imatrix, path: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    let mut b = GgufBuilder::new();
    b.kv("general.type", OwnedValue::String("imatrix".into()));
    b.kv("imatrix.datasets", OwnedValue::strings(im.datasets.iter().cloned()));
    b.kv("imatrix.chunk_count", OwnedValue::U32(im.chunk_count as u32));
    b.kv("imatrix.chunk_size", OwnedValue::U32(im.chunk_size as u32));
    for (w, key) in &im.weights {
        let st = &im.sites[key];
        b.tensor(
            &format!("{w}.in_sum2"),
            &[st.n_in() as u64],
            GgmlType::F32,
            f32_bytes(st.sum2.iter().map(|&v| v as f32)),
        );
        b.tensor(&format!("{w}.counts"), &[1], GgmlType::F32, f32_bytes([st.count as f32]));
    }
    for (key, st) in &im.sites {
        if let Some(h) = &st.hessian {
            let n = st.n_in() as u64;
            b.tensor(&format!("{key}.hessian"), &[n, n], GgmlType::F32, f32_bytes(h.iter().map(|&v| v as f32)));
        }
    }
    let mut out = AtomicOutput::create(path, force, inputs)?;
    b.write_with(|bytes| out.write(bytes))?;
    out.commit()
}

/// Reads an imatrix file written by [`save`] (or llama.cpp's GGUF imatrix: `in_sum2` and
/// `counts` only).
pub fn load(path: &Path) -> Result<Imatrix> {
    let bad = |why: String| CompressError::Imatrix { path: path.to_path_buf(), why };
    let file = pith::file::MappedFile::open(path)?;
    let g: Gguf<'_> = file.gguf()?;
    let f32s = |name: &str, n: usize| -> Result<Vec<f32>> {
        let t = g.tensor(name).ok_or_else(|| bad(format!("missing tensor {name}")))?;
        if t.ty != GgmlType::F32 || t.n_elements() != n as u64 {
            return Err(bad(format!("{name}: expected {n} F32 values, found {} of {}", t.n_elements(), t.ty)));
        }
        Ok(t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let mut im = Imatrix {
        datasets: match g.get_array("imatrix.datasets").map_err(pith::Error::from)? {
            Some(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            None => Vec::new(),
        },
        chunk_count: g.get_u64("imatrix.chunk_count").map_err(pith::Error::from)?.unwrap_or(0),
        chunk_size: g.get_u64("imatrix.chunk_size").map_err(pith::Error::from)?.unwrap_or(0),
        ..Default::default()
    };
    // One site per distinct statistics (weights sharing an input carry equal copies).
    for t in &g.tensors {
        let Some(w) = t.name.strip_suffix(".in_sum2") else { continue };
        let n_in = t.n_elements() as usize;
        let sum2 = f32s(t.name, n_in)?;
        let count = f32s(&format!("{w}.counts"), 1)?[0];
        if !(count.is_finite() && count >= 1.0) || sum2.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(bad(format!("{w}: counts or sums are not finite and non-negative")));
        }
        // An imatrix file holds no model tensors: statistics stored under `token_embd.weight`
        // can only come from the embedding used as the (tied) output matmul.
        let key = site_key(w, true).unwrap_or_else(|| w.to_string());
        im.weights.insert(w.to_string(), key.clone());
        if im.sites.contains_key(&key) {
            continue;
        }
        let hessian = match g.tensor(&format!("{key}.hessian")) {
            Some(_) => Some(f32s(&format!("{key}.hessian"), n_in * n_in)?.into_iter().map(f64::from).collect()),
            None => None,
        };
        im.sites
            .insert(key, SiteStats { sum2: sum2.into_iter().map(f64::from).collect(), hessian, count: count as u64 });
    }
    if im.sites.is_empty() {
        return Err(bad("no `<tensor>.in_sum2` entries: not an imatrix file".into()));
    }
    Ok(im)
}

/// `pith-compress imatrix` options.
#[derive(Debug, clap::Args)]
pub struct ImatrixArgs {
    /// The model (F32/F16 or quantized GGUF) to run.
    pub model: PathBuf,
    /// Calibration text (UTF-8), e.g. Wikipedia leads; not the evaluation text.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub ctx: usize,
    /// Chunks to run (0 = the whole text).
    #[arg(long, default_value_t = 64)]
    pub chunks: usize,
    /// Skip the second-moment matrices (then only importance-weighted rounding can use the file).
    #[arg(long)]
    pub no_hessian: bool,
    /// Threads (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// Runs `pith-compress imatrix`.
pub fn run(a: &ImatrixArgs) -> Result<()> {
    crate::output::check_output(&a.output, a.force, &[&a.model, &a.file])?;
    let text = read_calibration(&a.file)?;
    let file = pith::file::MappedFile::open(&a.model)?;
    let engine = Engine::load(&file, a.threads)?;
    let tokens = engine.tokenizer.encode(&text, false)?;
    let n = pith::perplexity::chunk_count(tokens.len(), a.ctx.max(1), a.chunks).unwrap_or(0);
    crate::progress::note(&format!(
        "imatrix: {} tokens of calibration text, {n} chunks of {}{}",
        tokens.len(),
        a.ctx,
        if a.no_hessian { "" } else { ", with second-moment matrices" }
    ));
    let pb = crate::progress::bar(n as u64, "imatrix");
    let t0 = std::time::Instant::now();
    let mut im = collect(&engine, &tokens, a.ctx, a.chunks, !a.no_hessian, |c, _| pb.set_position(c as u64))?;
    pb.finish_and_clear();
    im.datasets = vec![a.file.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()];
    save(&im, &a.output, a.force, &[&a.model, &a.file])?;
    crate::progress::note(&format!(
        "imatrix: {} sites, {} weights, {} chunks in {:.1} s → {}",
        im.sites.len(),
        im.weights.len(),
        im.chunk_count,
        t0.elapsed().as_secs_f64(),
        a.output.display()
    ));
    Ok(())
}
