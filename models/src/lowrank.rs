//! `pith-compress lowrank`: activation-aware low-rank factorization (SVD-LLM's whitening).
//!
//! Each linear weight `W` (n_out × n_in) is approximated by `A·B` (n_out × r, r × n_in) chosen
//! to minimise the error on the calibration activations, `‖(W − A·B) X‖_F`. With the input's
//! second moment `H = E[x xᵀ]` (what `imatrix` collects, damped by 1 % of its mean diagonal)
//! and its Cholesky factor `H = S Sᵀ`, that error is `‖(W − A·B) S‖_F`, so the best rank-`r`
//! answer is the truncated SVD of `W S = U Σ Vᵀ`: `A = U_r Σ_r`, `B = V_rᵀ S⁻¹`. `--plain`
//! factors `W` itself (`S = I`), the unwhitened baseline; both report the whitened error.
//!
//! Ranks: one for every matrix (`--rank`), the smallest keeping a fraction of each matrix's
//! whitened spectral energy (`--energy`), or allotted across all matrices for a parameter
//! budget (`--target-params`: singular values taken greedily by the share of their matrix's
//! energy they carry per parameter they cost). A matrix whose rank would not save parameters
//! stays dense.
//!
//! Output: each factored matrix `NAME` becomes two tensors, `NAME_a` (n_out × r) and `NAME_b`
//! (r × n_in), which pith's runtime runs as two matmuls (`model::Linear`): a smaller file and
//! fewer bytes per token, in a pith extension llama.cpp does not load. `--merge` writes the
//! product `A·B` back as an ordinary dense matrix instead: a file every runtime loads, which
//! shows the accuracy of the factorization, not its size.

use crate::error::{CompressError, Result};
use crate::imatrix::{self, Imatrix};
use crate::output::check_output;
use crate::prune::{check_llama, encode, human, parse_count};
use crate::quantize::{carry_metadata, to_f32, write_gguf};
use nalgebra::DMatrix;
use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith_kernels::GgmlType;
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

/// The linear weights of a llama block that are factorized.
pub const LINEAR: [&str; 7] = [
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
];

/// One matrix's decomposition.
pub struct Factored {
    pub name: String,
    pub n_out: usize,
    pub n_in: usize,
    /// Singular values of `W S` (or `W` with `--plain`), descending.
    pub sigma: Vec<f64>,
    /// `U Σ`, (n_out × k) with k = min(n_out, n_in).
    us: DMatrix<f64>,
    /// `Vᵀ S⁻¹`, (k × n_in).
    vts: DMatrix<f64>,
    /// `S` (n_in × n_in, lower), to measure the whitened error; `None`: identity.
    s: Option<Arc<DMatrix<f64>>>,
    w: DMatrix<f64>,
}

impl Factored {
    /// The largest rank that still saves parameters over the dense matrix.
    pub fn useful_rank(&self) -> usize {
        (self.n_out * self.n_in).div_ceil(self.n_out + self.n_in).saturating_sub(1).min(self.sigma.len())
    }

    /// Parameters at rank `r` (dense when factorizing would not save any).
    pub fn params_at(&self, r: usize) -> u64 {
        if r > self.useful_rank() {
            (self.n_out * self.n_in) as u64
        } else {
            (r * (self.n_out + self.n_in)) as u64
        }
    }

    /// The factors `A` (n_out × r) and `B` (r × n_in) at rank `r`, or `None` when factoring
    /// would not save parameters (the matrix stays dense).
    pub fn factors(&self, r: usize) -> Option<(DMatrix<f64>, DMatrix<f64>)> {
        (r <= self.useful_rank()).then(|| (self.us.columns(0, r).into_owned(), self.vts.rows(0, r).into_owned()))
    }

    /// `A·B` at rank `r` (the matrix itself when `r` does not save parameters).
    pub fn merged(&self, r: usize) -> DMatrix<f64> {
        if r > self.useful_rank() {
            return self.w.clone();
        }
        self.us.columns(0, r) * self.vts.rows(0, r)
    }

    /// `‖(W − W_r) S‖_F / ‖W S‖_F` with this matrix's whitening `s` (the activation-weighted
    /// relative error).
    pub fn whitened_error(&self, r: usize, s: Option<&DMatrix<f64>>) -> f64 {
        let d = &self.w - self.merged(r);
        match s {
            Some(s) => (d * s).norm() / (&self.w * s).norm().max(1e-300),
            None => d.norm() / self.w.norm().max(1e-300),
        }
    }
}

/// `H + damp·mean(diag)·I`, its Cholesky factor (lower), with more damping if needed.
pub fn whitening(h: &[f64], n: usize) -> Result<DMatrix<f64>> {
    let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let mut damp = 0.01;
    for _ in 0..8 {
        let mut m = DMatrix::from_row_slice(n, n, h);
        for i in 0..n {
            m[(i, i)] += damp * mean_diag.max(1e-12);
        }
        if let Some(c) = m.cholesky() {
            return Ok(c.l());
        }
        damp *= 10.0;
    }
    Err(CompressError::BadOption("the calibration second moment is not positive definite even when damped".into()))
}

/// Decomposes `w` (row-major n_out × n_in), whitened by `s` when given.
pub fn factor(name: &str, w: &[f32], n_out: usize, n_in: usize, s: Option<&DMatrix<f64>>) -> Result<Factored> {
    let wm = DMatrix::from_iterator(n_in, n_out, w.iter().map(|&v| v as f64)).transpose();
    let m = match s {
        Some(s) => &wm * s,
        None => wm.clone(),
    };
    let svd = m.svd(true, true);
    let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
        return Err(CompressError::Tensor { tensor: name.into(), why: "SVD did not converge".into() });
    };
    let k = svd.singular_values.len();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
    let sigma: Vec<f64> = order.iter().map(|&i| svd.singular_values[i]).collect();
    let mut us = DMatrix::zeros(n_out, k);
    let mut vts = DMatrix::zeros(k, n_in);
    for (j, &i) in order.iter().enumerate() {
        us.set_column(j, &(u.column(i) * sigma[j]));
        vts.set_row(j, &vt.row(i));
    }
    // Vᵀ S⁻¹ = (S⁻ᵀ V)ᵀ: solve Sᵀ Y = V.
    if let Some(s) = s {
        let y = s.transpose().solve_upper_triangular(&vts.transpose()).ok_or_else(|| CompressError::Tensor {
            tensor: name.into(),
            why: "the whitening matrix is singular".into(),
        })?;
        vts = y.transpose();
    }
    Ok(Factored { name: name.into(), n_out, n_in, sigma, us, vts, s: None, w: wm })
}

/// How ranks are chosen.
#[derive(Clone, Copy, Debug)]
pub enum RankRule {
    Rank(usize),
    Energy(f64),
    /// Parameters left for the factorized matrices.
    Budget(u64),
}

/// The rank of every matrix under `rule`.
pub fn allot(fs: &[Factored], rule: RankRule) -> Vec<usize> {
    match rule {
        RankRule::Rank(r) => fs.iter().map(|f| r.min(f.sigma.len())).collect(),
        RankRule::Energy(e) => fs
            .iter()
            .map(|f| {
                let total: f64 = f.sigma.iter().map(|s| s * s).sum();
                let mut acc = 0.0;
                for (i, s) in f.sigma.iter().enumerate() {
                    if acc >= e * total {
                        return i;
                    }
                    acc += s * s;
                }
                f.sigma.len()
            })
            .collect(),
        RankRule::Budget(p) => {
            // Every singular value up to each matrix's useful rank, by energy share per parameter.
            let mut cand: Vec<(f64, usize)> = Vec::new();
            for (m, f) in fs.iter().enumerate() {
                let total: f64 = f.sigma.iter().map(|s| s * s).sum::<f64>().max(1e-300);
                let cost = (f.n_out + f.n_in) as f64;
                for s in &f.sigma[..f.useful_rank()] {
                    cand.push((s * s / total / cost, m));
                }
            }
            cand.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut ranks = vec![0usize; fs.len()];
            let mut used = 0u64;
            for (_, m) in cand {
                let c = (fs[m].n_out + fs[m].n_in) as u64;
                if used + c > p {
                    break;
                }
                used += c;
                ranks[m] += 1;
            }
            ranks
        }
    }
}

/// `pith-compress lowrank` options.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("rule").required(true).args(["rank", "energy", "target_params"])))]
#[command(group(clap::ArgGroup::new("stats").required(true).args(["file", "imatrix"])))]
pub struct LowrankArgs {
    /// The model (llama; any weight type).
    pub input: PathBuf,
    /// The output model.
    pub output: PathBuf,
    /// Calibration text for the second moments (or --imatrix).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// An imatrix file with second-moment matrices (from `pith-compress imatrix`).
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// One rank for every linear weight.
    #[arg(long)]
    pub rank: Option<usize>,
    /// Keep this fraction (0–1) of each matrix's (whitened) spectral energy.
    #[arg(long)]
    pub energy: Option<f64>,
    /// A parameter budget for the whole model (e.g. 110M), ranks allotted globally.
    #[arg(long)]
    pub target_params: Option<String>,
    /// Factor the weights themselves, without activation whitening (the baseline).
    #[arg(long)]
    pub plain: bool,
    /// Write the product of the factors as ordinary dense matrices (a file llama.cpp loads too);
    /// without it each factored matrix is stored as its two factors, which pith runs as two
    /// matmuls.
    #[arg(long)]
    pub merge: bool,
    /// Tokens per calibration chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub ctx: usize,
    /// Calibration chunks.
    #[arg(long, default_value_t = 32)]
    pub chunks: usize,
    /// Type of the written matrices (merged, or the factors): f32 or f16.
    #[arg(long = "type", default_value = "f32")]
    pub ty: String,
    /// Threads (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// Runs `pith-compress lowrank`.
pub fn run(a: &LowrankArgs) -> Result<()> {
    let ty = match a.ty.to_ascii_lowercase().as_str() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        other => return Err(CompressError::BadOption(format!("--type {other}: lowrank writes f32 or f16"))),
    };
    if let Some(e) = a.energy {
        if !(e > 0.0 && e <= 1.0) {
            return Err(CompressError::BadOption(format!("--energy {e}: a fraction in (0, 1]")));
        }
    }
    if a.rank == Some(0) {
        return Err(CompressError::BadOption("--rank 0: at least 1".into()));
    }
    let budget = a.target_params.as_deref().map(parse_count).transpose()?;
    let mut inputs: Vec<&std::path::Path> = vec![&a.input];
    inputs.extend(a.file.as_deref());
    inputs.extend(a.imatrix.as_deref());
    check_output(&a.output, a.force, &inputs)?;
    let file = pith::file::MappedFile::open(&a.input)?;
    let g = file.gguf()?;
    let cfg = check_llama(&g, &a.input.display().to_string())?;
    let im: Imatrix = match (&a.imatrix, &a.file) {
        (Some(p), _) => imatrix::load(p)?,
        (None, Some(f)) => {
            let text = imatrix::read_calibration(f)?;
            let engine = pith::engine::Engine::load(&file, a.threads)?;
            let tokens = engine.tokenizer.encode(&text, false)?;
            let n = pith::perplexity::chunk_count(tokens.len(), a.ctx.max(2), a.chunks).unwrap_or(0);
            crate::progress::note(&format!("lowrank: second moments over {n} chunks of {}", a.ctx));
            let pb = crate::progress::bar(n as u64, "moments");
            let im = imatrix::collect(&engine, &tokens, a.ctx, a.chunks, true, |c, _| pb.set_position(c as u64))?;
            pb.finish_and_clear();
            im
        }
        (None, None) => return Err(CompressError::BadOption("give -f CALIB.txt or --imatrix FILE".into())),
    };
    let names: Vec<String> =
        (0..cfg.n_layer).flat_map(|l| LINEAR.iter().map(move |w| format!("blk.{l}.{w}"))).collect();
    // Whitening per input site (shared by q/k/v and gate/up).
    let mut sites: Vec<String> = names.iter().filter_map(|n| im.weights.get(n).cloned()).collect();
    sites.sort();
    sites.dedup();
    let whiten: std::collections::BTreeMap<String, Arc<DMatrix<f64>>> = sites
        .par_iter()
        .map(|key| {
            let st = &im.sites[key];
            let h = st.mean_hessian().ok_or_else(|| {
                CompressError::BadOption(format!(
                    "the imatrix has no second-moment matrix for {key} (made with --no-hessian?)"
                ))
            })?;
            Ok((key.clone(), Arc::new(whitening(&h, st.n_in())?)))
        })
        .collect::<Result<_>>()?;
    let pb = crate::progress::bar(names.len() as u64, "svd");
    let done = std::sync::atomic::AtomicU64::new(0);
    let t0 = std::time::Instant::now();
    let fs: Vec<Factored> = names
        .par_iter()
        .map(|name| {
            let t =
                g.tensor(name).ok_or_else(|| CompressError::Tensor { tensor: name.clone(), why: "missing".into() })?;
            let key = im.weights.get(name).ok_or_else(|| CompressError::Tensor {
                tensor: name.clone(),
                why: "no calibration statistics for this weight".into(),
            })?;
            let s = whiten.get(key).cloned();
            if let Some(s) = &s {
                if s.nrows() != t.n_cols() {
                    return Err(CompressError::Tensor {
                        tensor: name.clone(),
                        why: format!("the imatrix's input is {} wide, the weight's {}", s.nrows(), t.n_cols()),
                    });
                }
            }
            let w = to_f32(t);
            let mut f = factor(name, &w, t.n_rows(), t.n_cols(), if a.plain { None } else { s.as_deref() })?;
            f.s = s;
            pb.set_position(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            Ok(f)
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let linear_dense: u64 = fs.iter().map(|f| (f.n_out * f.n_in) as u64).sum();
    let total_dense = crate::prune::Shape::of(&cfg, g.tensor("output.weight").is_none()).params();
    let other = total_dense - linear_dense;
    let rule = match (a.rank, a.energy, budget) {
        (Some(r), _, _) => RankRule::Rank(r),
        (_, Some(e), _) => RankRule::Energy(e),
        (_, _, Some(p)) => {
            if p <= other {
                return Err(CompressError::BadOption(format!(
                    "--target-params {}: the model's other parameters alone are {}",
                    human(p),
                    human(other)
                )));
            }
            RankRule::Budget(p - other)
        }
        _ => return Err(CompressError::BadOption("give --rank, --energy or --target-params".into())),
    };
    let ranks = allot(&fs, rule);
    let linear: u64 = fs.iter().zip(&ranks).map(|(f, &r)| f.params_at(r)).sum();
    // Report: per kind of weight, mean rank and the mean whitened relative error.
    let errs: Vec<f64> = fs.par_iter().zip(&ranks).map(|(f, &r)| f.whitened_error(r, f.s.as_deref())).collect();
    let mut report = format!(
        "lowrank ({}): SVD of {} matrices in {:.1} s\n{:<20} {:>9} {:>11}\n",
        if a.plain { "plain SVD" } else { "activation-whitened SVD" },
        fs.len(),
        t0.elapsed().as_secs_f64(),
        "weight",
        "mean rank",
        "whit. err"
    );
    for w in LINEAR {
        let sel: Vec<usize> = (0..fs.len()).filter(|&i| fs[i].name.ends_with(w)).collect();
        let n = sel.len().max(1) as f64;
        report.push_str(&format!(
            "{:<20} {:>9.1} {:>11.4}\n",
            w.trim_end_matches(".weight"),
            sel.iter().map(|&i| ranks[i] as f64).sum::<f64>() / n,
            sel.iter().map(|&i| errs[i]).sum::<f64>() / n
        ));
    }
    report.push_str(&format!(
        "linear-layer parameters {} → {} as factors ({:.1} % fewer); whole model {} → {}\n",
        human(linear_dense),
        human(linear),
        100.0 * (1.0 - linear as f64 / linear_dense as f64),
        human(total_dense),
        human(other + linear)
    ));
    crate::progress::out(&report)?;
    // The output: merged matrices, or each factored one as its two factors.
    let mut b: GgufBuilder = carry_metadata(&g);
    let index: std::collections::HashMap<&str, usize> =
        fs.iter().enumerate().map(|(i, f)| (f.name.as_str(), i)).collect();
    let rows = |m: &DMatrix<f64>| -> Vec<f32> { m.transpose().iter().map(|&v| v as f32).collect() };
    let mut n_factored = 0;
    for t in &g.tensors {
        match index.get(t.name) {
            Some(&i) if !a.merge => match fs[i].factors(ranks[i]) {
                Some((fa, fb)) => {
                    let r = ranks[i] as u64;
                    b.tensor(&format!("{}_a", t.name), &[r, fs[i].n_out as u64], ty, encode(&rows(&fa), ty));
                    b.tensor(&format!("{}_b", t.name), &[fs[i].n_in as u64, r], ty, encode(&rows(&fb), ty));
                    n_factored += 1;
                }
                None => {
                    b.tensor(t.name, &t.dims, ty, encode(&rows(&fs[i].merged(ranks[i])), ty));
                }
            },
            Some(&i) => {
                b.tensor(t.name, &t.dims, ty, encode(&rows(&fs[i].merged(ranks[i])), ty));
            }
            None => {
                b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
            }
        }
    }
    b.kv(
        "pith.lowrank",
        OwnedValue::String(format!(
            "{} SVD, {}; linear parameters as factors {} of {}",
            if a.plain { "plain" } else { "whitened" },
            if a.merge { "merged" } else { "factored (NAME_a · NAME_b)" },
            linear,
            linear_dense
        )),
    );
    if !a.merge {
        crate::progress::note(&format!(
            "lowrank: {n_factored} matrices stored as two factors (pith runs them as two matmuls; llama.cpp cannot load this file: --merge writes one it can)"
        ));
    }
    write_gguf(&b, &a.output, a.force, &inputs)?;
    crate::progress::note(&format!("lowrank: → {}", a.output.display()));
    Ok(())
}
