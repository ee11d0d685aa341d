//! `dequantize` and `quantize`: GGUF in, GGUF out, metadata carried over.
//!
//! Which type each tensor gets is decided up front ([`plan`]): the scheme (a plain type, or a
//! mix such as Q4_K_M that gives more bits to attn_v, ffn_down and the output), then
//! `--tensor-type` overrides, then a fallback when a tensor's row length is not a whole number
//! of the type's blocks. Then every tensor is converted, rows in parallel, by one of three
//! methods: round-to-nearest (the reference quantizers), importance-weighted rounding
//! (`--imatrix`), or error compensation (`--imatrix` with `--gptq`).

use crate::error::{CompressError, Result};
use crate::imatrix::{self, Imatrix};
use crate::output::{check_output, AtomicOutput};
use pith::file::MappedFile;
use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::{Gguf, TensorInfo};
use pith_kernels::GgmlType;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Types `quantize --type` accepts as plain types.
pub const QUANT_TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// Mixes in the spirit of llama.cpp's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Q3KM,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
}

const MIXES: [(&str, Mix); 5] =
    [("Q3_K_M", Mix::Q3KM), ("Q4_K_S", Mix::Q4KS), ("Q4_K_M", Mix::Q4KM), ("Q5_K_S", Mix::Q5KS), ("Q5_K_M", Mix::Q5KM)];

/// What `--type` names: one type for every weight, or a mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Plain(GgmlType),
    Mix(Mix),
}

impl Scheme {
    /// Parses a type or mix name, case-insensitively.
    pub fn parse(s: &str) -> Result<Self> {
        let up = s.to_ascii_uppercase();
        if let Some((_, m)) = MIXES.iter().find(|(n, _)| *n == up) {
            return Ok(Scheme::Mix(*m));
        }
        parse_type(s).map(Scheme::Plain)
    }

    /// The name, as accepted by [`Scheme::parse`].
    pub fn name(self) -> String {
        match self {
            Scheme::Plain(t) => t.name().to_string(),
            Scheme::Mix(m) => MIXES.iter().find(|(_, x)| *x == m).map(|(n, _)| n.to_string()).unwrap_or_default(),
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) for this scheme.
    pub fn file_type(self) -> u32 {
        use GgmlType::*;
        match self {
            Scheme::Plain(t) => match t {
                F32 => 0,
                F16 => 1,
                Q4_0 => 2,
                Q4_1 => 3,
                Q8_0 => 7,
                Q5_0 => 8,
                Q5_1 => 9,
                Q2_K => 10,
                Q3_K => 12,
                Q4_K => 15,
                Q5_K => 17,
                Q6_K => 18,
                IQ4_NL => 25,
                IQ4_XS => 30,
                BF16 => 32,
                Q8_1 | Q8_K => 0,
            },
            Scheme::Mix(Mix::Q3KM) => 12,
            Scheme::Mix(Mix::Q4KS) => 14,
            Scheme::Mix(Mix::Q4KM) => 15,
            Scheme::Mix(Mix::Q5KS) => 16,
            Scheme::Mix(Mix::Q5KM) => 17,
        }
    }
}

/// Parses a tensor type name (`q4_0`, `Q4_K`, `f16`, ...), case-insensitively.
pub fn parse_type(s: &str) -> Result<GgmlType> {
    QUANT_TYPES.iter().copied().find(|t| t.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
        let mut known: Vec<String> = QUANT_TYPES.iter().map(|t| t.name().to_string()).collect();
        known.extend(MIXES.iter().map(|(n, _)| n.to_string()));
        CompressError::UnknownType(s.to_string(), known.join(", "))
    })
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// layer in between, get the larger type in the mixes.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// A `--tensor-type PATTERN=TYPE` override. `PATTERN` matches a tensor name as a glob when it
/// holds `*`, otherwise as a substring.
#[derive(Clone, Debug)]
pub struct Override {
    pub pattern: String,
    pub ty: GgmlType,
}

impl Override {
    pub fn parse(s: &str) -> Result<Self> {
        let (p, t) = s
            .split_once('=')
            .ok_or_else(|| CompressError::BadOption(format!("--tensor-type {s}: expected PATTERN=TYPE")))?;
        if p.is_empty() {
            return Err(CompressError::BadOption(format!("--tensor-type {s}: empty pattern")));
        }
        Ok(Override { pattern: p.to_string(), ty: parse_type(t)? })
    }

    pub fn matches(&self, name: &str) -> bool {
        if self.pattern.contains('*') {
            glob(self.pattern.as_bytes(), name.as_bytes())
        } else {
            name.contains(&self.pattern)
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| glob(rest, &s[k..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// What happens to one tensor.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    pub from: GgmlType,
    pub to: GgmlType,
    /// Why the type differs from the scheme's choice (an override or a fallback), if it does.
    pub note: Option<String>,
}

/// Whether a tensor is a weight matrix that gets quantized (2-D or more, named `*.weight`,
/// not a norm).
fn is_quantizable(t: &TensorInfo<'_>) -> bool {
    t.dims.len() >= 2 && t.name.ends_with(".weight") && !t.name.contains("norm")
}

/// The type a scheme gives a tensor, before overrides and fallbacks.
fn scheme_type(scheme: Scheme, name: &str, tied_output: bool, n_layer: usize, pure: bool) -> GgmlType {
    use GgmlType::*;
    let is_output = name == "output.weight" || (tied_output && name == "token_embd.weight");
    let layer = name.strip_prefix("blk.").and_then(|r| r.split_once('.')).and_then(|(l, _)| l.parse::<usize>().ok());
    let base = match scheme {
        Scheme::Plain(t) => t,
        Scheme::Mix(Mix::Q3KM) => Q3_K,
        Scheme::Mix(Mix::Q4KS) | Scheme::Mix(Mix::Q4KM) => Q4_K,
        Scheme::Mix(Mix::Q5KS) | Scheme::Mix(Mix::Q5KM) => Q5_K,
    };
    if pure || !base.is_quantized() {
        return base;
    }
    if is_output {
        return if base == Q8_0 { Q8_0 } else { Q6_K };
    }
    let (Scheme::Mix(mix), Some(i)) = (scheme, layer) else { return base };
    let attn_v = name.ends_with("attn_v.weight");
    let ffn_down = name.ends_with("ffn_down.weight");
    match mix {
        Mix::Q4KM | Mix::Q5KM if (attn_v || ffn_down) && use_more_bits(i, n_layer) => Q6_K,
        Mix::Q4KS if attn_v && i < 4 => Q5_K,
        Mix::Q4KS if ffn_down && i < n_layer / 8 => Q5_K,
        Mix::Q3KM if attn_v => {
            if i < 2 {
                Q5_K
            } else {
                Q4_K
            }
        }
        Mix::Q3KM if ffn_down && (i < n_layer / 16 || use_more_bits(i, n_layer)) => {
            if i < n_layer / 16 {
                Q5_K
            } else {
                Q4_K
            }
        }
        _ => base,
    }
}

/// A type whose blocks fit rows of `n_cols`, in llama.cpp's fallback order (K-quants, whose
/// blocks hold 256, fall back to 32-element types of about as many bits), or `None` when no
/// quantized type fits. Float types always fit.
fn fallback(ty: GgmlType, n_cols: usize) -> Option<GgmlType> {
    use GgmlType::*;
    let fits = |t: GgmlType| n_cols.is_multiple_of(t.block_size());
    if fits(ty) {
        return Some(ty);
    }
    let next = match ty {
        IQ4_XS => IQ4_NL,
        Q2_K | Q3_K => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        _ => return None,
    };
    fits(next).then_some(next)
}

/// Decides every tensor's type.
pub fn plan(g: &Gguf<'_>, scheme: Scheme, overrides: &[Override], pure: bool) -> Result<Vec<TensorPlan>> {
    let tied = g.tensor("output.weight").is_none();
    let n_layer = g
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_prefix("blk.")?.split_once('.')?.0.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let mut out = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        if !is_quantizable(t) {
            out.push(TensorPlan { name: t.name.into(), from: t.ty, to: t.ty, note: None });
            continue;
        }
        let mut to = scheme_type(scheme, t.name, tied, n_layer, pure);
        let mut note = None;
        if let Some(o) = overrides.iter().find(|o| o.matches(t.name)) {
            to = o.ty;
            note = Some(format!("--tensor-type {}={}", o.pattern, o.ty));
        }
        let Some(fb) = fallback(to, t.n_cols()) else {
            return Err(CompressError::Tensor {
                tensor: t.name.into(),
                why: format!(
                    "rows of {} elements fit no quantized type (their blocks hold 32 or 256); \
                     keep it in a float type with --tensor-type {}=f16",
                    t.n_cols(),
                    t.name
                ),
            });
        };
        if fb != to {
            note = Some(format!(
                "rows of {} are not a whole number of {to} blocks ({}); using {fb}",
                t.n_cols(),
                to.block_size()
            ));
            to = fb;
        }
        out.push(TensorPlan { name: t.name.into(), from: t.ty, to, note });
    }
    Ok(out)
}

/// How rounding is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The reference quantizers (round to nearest).
    Rtn,
    /// Importance-weighted rounding with the imatrix's per-column mean squared input.
    Imatrix,
    /// Error compensation with the imatrix's second-moment matrices.
    Gptq,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Imatrix => "imatrix",
            Method::Gptq => "gptq",
        }
    }
}

/// Options of one quantization.
pub struct Options<'a> {
    pub scheme: Scheme,
    pub overrides: &'a [Override],
    pub pure: bool,
    pub imatrix: Option<&'a Imatrix>,
    pub method: Method,
    pub damp: f64,
    pub allow_requantize: bool,
}

/// Dequantizes a whole tensor to f32 rows.
pub(crate) fn to_f32(t: &TensorInfo<'_>) -> Vec<f32> {
    let n = t.n_cols();
    let rb = t.data.len() / t.n_rows().max(1);
    let mut out = vec![0.0f32; t.n_elements() as usize];
    out.par_chunks_mut(n).zip(t.data.par_chunks(rb)).for_each(|(o, src)| pith_kernels::dequantize_row(t.ty, src, o));
    out
}

/// Converts one tensor to `to` by `method`, returning its bytes and the method used (which is
/// round-to-nearest when the imatrix has nothing for this tensor).
fn convert(
    t: &TensorInfo<'_>,
    to: GgmlType,
    opts: &Options<'_>,
    tied: bool,
    on_rows: &(dyn Fn(usize) + Sync),
) -> Result<(Vec<u8>, Method)> {
    let n = t.n_cols();
    let rows = to_f32(t);
    let rb = to.row_bytes(n).ok_or_else(|| CompressError::Tensor {
        tensor: t.name.into(),
        why: format!("rows of {n} are not a whole number of {to} blocks"),
    })?;
    let stats = match (opts.method, opts.imatrix) {
        (Method::Rtn, _) | (_, None) => None,
        (_, Some(im)) => {
            im.for_weight(t.name).filter(|_| to.is_quantized() && imatrix::site_key(t.name, tied).is_some())
        }
    };
    let Some(stats) = stats else {
        let mut out = vec![0u8; t.n_rows() * rb];
        out.par_chunks_mut(rb).zip(rows.par_chunks(n)).for_each(|(d, s)| {
            pith_kernels::quantize_row(to, s, d);
            on_rows(1);
        });
        return Ok((out, Method::Rtn));
    };
    if stats.n_in() != n {
        return Err(CompressError::Tensor {
            tensor: t.name.into(),
            why: format!("the imatrix has {} columns for it, the tensor {n}", stats.n_in()),
        });
    }
    let importance = stats.importance();
    if opts.method == Method::Gptq {
        if !pith_kernels::has_block_grid(to) {
            return Err(CompressError::Tensor {
                tensor: t.name.into(),
                why: format!(
                    "--method gptq needs a type with an affine block grid, and {to} has a non-linear one; \
                     use --method imatrix for it (or --tensor-type {}=TYPE)",
                    t.name
                ),
            });
        }
        if let Some(h) = stats.mean_hessian() {
            let u = crate::gptq::factor(&h, n, opts.damp, t.name)?;
            return Ok((crate::gptq::quantize_rows(to, &rows, n, &u, &importance, on_rows), Method::Gptq));
        }
        return Err(CompressError::Tensor {
            tensor: t.name.into(),
            why: "--gptq needs second-moment matrices; the imatrix was made with --no-hessian".into(),
        });
    }
    let mut out = vec![0u8; t.n_rows() * rb];
    out.par_chunks_mut(rb).zip(rows.par_chunks(n)).for_each(|(d, s)| {
        pith_kernels::quantize_row_weighted(to, s, &importance, d);
        on_rows(1);
    });
    Ok((out, Method::Imatrix))
}

/// Metadata of `g`, as owned values, for a new file.
pub(crate) fn carry_metadata(g: &Gguf<'_>) -> GgufBuilder {
    let mut b = GgufBuilder::new();
    for (k, v) in &g.metadata {
        b.kv(k, OwnedValue::from_value(v));
    }
    b
}

/// What a quantization did, tensor by tensor.
pub struct Report {
    pub plan: Vec<TensorPlan>,
    pub methods: Vec<Option<Method>>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub n_weights: u64,
}

/// Quantizes the parsed file `g` into a builder.
pub fn quantize(g: &Gguf<'_>, opts: &Options<'_>, show_progress: bool) -> Result<(GgufBuilder, Report)> {
    let plan = plan(g, opts.scheme, opts.overrides, opts.pure)?;
    let tied = g.tensor("output.weight").is_none();
    for (p, t) in plan.iter().zip(&g.tensors) {
        if p.from != p.to && p.from.is_quantized() && !opts.allow_requantize {
            return Err(CompressError::Tensor {
                tensor: t.name.into(),
                why: format!(
                    "is already quantized ({}); pass --allow-requantize to dequantize it and quantize again to {}",
                    p.from, p.to
                ),
            });
        }
    }
    if opts.method != Method::Rtn && opts.imatrix.is_none() {
        return Err(CompressError::BadOption(format!("--method {} needs --imatrix FILE", opts.method.name())));
    }
    let mut b = carry_metadata(g);
    let total_rows: u64 =
        plan.iter().zip(&g.tensors).filter(|(p, _)| p.from != p.to).map(|(_, t)| t.n_rows() as u64).sum();
    let pb = crate::progress::bar(total_rows.max(1), "quantize");
    if !show_progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let done = AtomicU64::new(0);
    let mut methods = Vec::with_capacity(plan.len());
    for (p, t) in plan.iter().zip(&g.tensors) {
        let keep = p.from == p.to && (opts.method == Method::Rtn || !p.to.is_quantized() || p.from.is_quantized());
        if keep {
            b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
            methods.push(None);
            continue;
        }
        pb.set_message(t.name.to_string());
        let tick = |k: usize| {
            let d = done.fetch_add(k as u64, Ordering::Relaxed) + k as u64;
            pb.set_position(d);
        };
        let (data, m) = convert(t, p.to, opts, tied, &tick)?;
        b.tensor(t.name, &t.dims, p.to, data);
        methods.push(Some(m));
    }
    pb.finish_and_clear();
    b.kv("general.file_type", OwnedValue::U32(opts.scheme.file_type()));
    b.kv("general.quantization_version", OwnedValue::U32(2));
    b.kv("pith.quantization.scheme", OwnedValue::String(opts.scheme.name()));
    b.kv("pith.quantization.method", OwnedValue::String(opts.method.name().into()));
    b.kv("pith.quantization.tool", OwnedValue::String(format!("pith-compress {}", env!("CARGO_PKG_VERSION"))));
    if !opts.overrides.is_empty() {
        b.kv(
            "pith.quantization.overrides",
            OwnedValue::strings(opts.overrides.iter().map(|o| format!("{}={}", o.pattern, o.ty))),
        );
    }
    if let Some(im) = opts.imatrix {
        b.kv("pith.quantization.imatrix.datasets", OwnedValue::strings(im.datasets.iter().cloned()));
        b.kv("pith.quantization.imatrix.chunks", OwnedValue::U32(im.chunk_count as u32));
        b.kv("pith.quantization.imatrix.chunk_size", OwnedValue::U32(im.chunk_size as u32));
    }
    if opts.method == Method::Gptq {
        b.kv("pith.quantization.gptq.damp", OwnedValue::F32(opts.damp as f32));
    }
    let n_weights = g.tensors.iter().map(|t| t.n_elements()).sum();
    let bytes_in = g.tensors.iter().map(|t| t.data.len() as u64).sum();
    let bytes_out = b.tensors.iter().map(|t| t.data.len() as u64).sum();
    Ok((b, Report { plan, methods, bytes_in, bytes_out, n_weights }))
}

/// `pith-compress quantize` options.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Input GGUF (F32/F16/BF16; quantized inputs need --allow-requantize).
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, F16, BF16, F32,
    /// or a mix:
    /// Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M.
    #[arg(long = "type")]
    pub ty: String,
    /// PATTERN=TYPE: tensors whose name matches PATTERN (a glob with `*`, else a substring)
    /// get TYPE. Repeatable; the first match wins.
    #[arg(long = "tensor-type")]
    pub tensor_type: Vec<String>,
    /// Every weight gets exactly --type (no larger output type).
    #[arg(long)]
    pub pure: bool,
    /// Calibration statistics from `pith-compress imatrix`: importance-weighted rounding.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// With --imatrix: error compensation (GPTQ-style) instead of importance-weighted rounding alone.
    #[arg(long)]
    pub gptq: bool,
    /// GPTQ damping, a fraction of the mean diagonal of the second-moment matrix.
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// Dequantize quantized input tensors and quantize them again.
    #[arg(long)]
    pub allow_requantize: bool,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Threads (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Name every tensor whose type differs from the scheme's (by default one line per kind).
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// What to say about the tensors whose type differs from the scheme's choice (overrides and
/// fallbacks): one line per kind of change, naming the tensor when it is the only one, or one
/// line per tensor with `verbose`.
pub fn note_lines(plan: &[TensorPlan], verbose: bool) -> Vec<String> {
    let mut kinds: Vec<(&str, Vec<&str>)> = Vec::new();
    for p in plan {
        let Some(note) = p.note.as_deref() else { continue };
        if verbose {
            kinds.push((note, vec![&p.name]));
            continue;
        }
        match kinds.iter_mut().find(|(n, _)| *n == note) {
            Some((_, names)) => names.push(&p.name),
            None => kinds.push((note, vec![&p.name])),
        }
    }
    kinds
        .into_iter()
        .map(|(note, names)| match names.as_slice() {
            [one] => format!("{one}: {note}"),
            _ => format!("{} tensors ({}, …; -v names each): {note}", names.len(), names[0]),
        })
        .collect()
}

fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if threads > 0 {
        b = b.num_threads(threads);
    }
    b.build().map_err(|e| CompressError::BadOption(format!("threads: {e}")))
}

/// Streams a builder into `path` atomically.
pub fn write_gguf(b: &GgufBuilder, path: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    let mut out = AtomicOutput::create(path, force, inputs)?;
    b.write_with(|bytes| out.write(bytes))?;
    out.commit()
}

/// Runs `pith-compress quantize`.
pub fn run_quantize(a: &QuantizeArgs) -> Result<()> {
    let scheme = Scheme::parse(&a.ty)?;
    let overrides = a.tensor_type.iter().map(|s| Override::parse(s)).collect::<Result<Vec<_>>>()?;
    if a.gptq && a.imatrix.is_none() {
        return Err(CompressError::BadOption("--gptq needs --imatrix FILE (made by `pith-compress imatrix`)".into()));
    }
    if !(0.0..=1.0).contains(&a.damp) {
        return Err(CompressError::BadOption(format!("--damp {}: use a value in 0..=1", a.damp)));
    }
    let mut inputs: Vec<&Path> = vec![&a.input];
    if let Some(p) = &a.imatrix {
        inputs.push(p);
    }
    check_output(&a.output, a.force, &inputs)?;
    let file = MappedFile::open(&a.input)?;
    let g = file.gguf()?;
    let im = a.imatrix.as_deref().map(imatrix::load).transpose()?;
    let method = match (&im, a.gptq) {
        (None, _) => Method::Rtn,
        (Some(_), false) => Method::Imatrix,
        (Some(_), true) => Method::Gptq,
    };
    let opts = Options {
        scheme,
        overrides: &overrides,
        pure: a.pure,
        imatrix: im.as_ref(),
        method,
        damp: a.damp,
        allow_requantize: a.allow_requantize,
    };
    let t0 = std::time::Instant::now();
    let pool = thread_pool(a.threads)?;
    let (b, report) = pool.install(|| quantize(&g, &opts, true))?;
    for line in note_lines(&report.plan, a.verbose) {
        crate::progress::note(&format!("quantize: {line}"));
    }
    write_gguf(&b, &a.output, a.force, &inputs)?;
    let mut by_type: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &report.plan {
        *by_type.entry(p.to.name().to_string()).or_default() += 1;
    }
    let mix: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
    // The sizes of the files themselves (metadata and the tokenizer included), as `ls` shows them.
    let size_in = file.bytes().len() as f64;
    let size_out = std::fs::metadata(&a.output).map(|m| m.len() as f64).map_err(|e| CompressError::io(&a.output, e))?;
    crate::progress::note(&format!(
        "quantize: {} ({}, {}): {:.2} MiB → {:.2} MiB (file sizes; tensor data {:.2} MiB, {:.3} bits per weight); tensors: {} ({:.1} s)",
        a.output.display(),
        scheme.name(),
        method.name(),
        size_in / 1048576.0,
        size_out / 1048576.0,
        report.bytes_out as f64 / 1048576.0,
        report.bytes_out as f64 * 8.0 / report.n_weights.max(1) as f64,
        mix.join(", "),
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `pith-compress dequantize` options.
#[derive(Debug, clap::Args)]
pub struct DequantizeArgs {
    /// Input GGUF.
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// f32 (exact), f16 or bf16.
    #[arg(long = "type", default_value = "f16")]
    pub ty: String,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// How a dequantization went: values that the target type could not hold exactly.
#[derive(Debug, Default)]
pub struct DequantReport {
    pub values: u64,
    pub inexact: u64,
    pub max_abs_err: f32,
}

/// Dequantizes every weight matrix of `g` to `to` (F32, F16 or BF16).
pub fn dequantize(g: &Gguf<'_>, to: GgmlType) -> Result<(GgufBuilder, DequantReport)> {
    if !matches!(to, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(CompressError::BadOption(format!("--type {to}: dequantize writes f32, f16 or bf16")));
    }
    let mut b = carry_metadata(g);
    let mut rep = DequantReport::default();
    for t in &g.tensors {
        if !is_quantizable(t) || t.ty == to {
            b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
            continue;
        }
        let rows = to_f32(t);
        let n = t.n_cols();
        let rb = to.row_bytes(n).unwrap_or(0);
        let mut out = vec![0u8; t.n_rows() * rb];
        out.par_chunks_mut(rb).zip(rows.par_chunks(n)).for_each(|(d, s)| pith_kernels::quantize_row(to, s, d));
        // Exactness check: read back and compare.
        let mut back = vec![0.0f32; n];
        for (r, s) in rows.chunks_exact(n).enumerate() {
            pith_kernels::dequantize_row(to, &out[r * rb..(r + 1) * rb], &mut back);
            for (a, b) in s.iter().zip(&back) {
                if a.to_bits() != b.to_bits() {
                    rep.inexact += 1;
                    rep.max_abs_err = rep.max_abs_err.max((a - b).abs());
                }
            }
        }
        rep.values += rows.len() as u64;
        b.tensor(t.name, &t.dims, to, out);
    }
    let ft = match to {
        GgmlType::F32 => 0,
        GgmlType::BF16 => 32,
        _ => 1,
    };
    b.kv("general.file_type", OwnedValue::U32(ft));
    b.kv("pith.quantization.method", OwnedValue::String(format!("dequantize:{}", to.name())));
    b.kv("pith.quantization.tool", OwnedValue::String(format!("pith-compress {}", env!("CARGO_PKG_VERSION"))));
    Ok((b, rep))
}

/// Runs `pith-compress dequantize`.
pub fn run_dequantize(a: &DequantizeArgs) -> Result<()> {
    let to = parse_type(&a.ty)?;
    check_output(&a.output, a.force, &[&a.input])?;
    let file = MappedFile::open(&a.input)?;
    let g = file.gguf()?;
    let (b, rep) = dequantize(&g, to)?;
    write_gguf(&b, &a.output, a.force, &[&a.input])?;
    if rep.inexact == 0 {
        crate::progress::note(&format!(
            "dequantize: {} values written exactly as {} → {}",
            rep.values,
            to,
            a.output.display()
        ));
    } else {
        crate::progress::note(&format!(
            "dequantize: {} of {} values are not exactly representable in {} (largest error {:.3e}) → {}",
            rep.inexact,
            rep.values,
            to,
            rep.max_abs_err,
            a.output.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_matches_llama_cpp_for_30_layers() {
        let v: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(v, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn overrides_glob_and_substring() {
        let o = Override::parse("blk.*.ffn_down*=q8_0").unwrap();
        assert_eq!(o.ty, GgmlType::Q8_0);
        assert!(o.matches("blk.3.ffn_down.weight"));
        assert!(!o.matches("blk.3.ffn_up.weight"));
        let s = Override::parse("attn_v=Q6_K").unwrap();
        assert!(s.matches("blk.12.attn_v.weight"));
        assert!(matches!(Override::parse("attn_v"), Err(CompressError::BadOption(_))));
        assert!(matches!(Override::parse("attn_v=q9_9"), Err(CompressError::UnknownType(..))));
    }

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!(Scheme::parse("q4_k_m").unwrap(), Scheme::Mix(Mix::Q4KM));
        assert_eq!(Scheme::parse("Q4_0").unwrap(), Scheme::Plain(GgmlType::Q4_0));
        let e = Scheme::parse("q4_2").unwrap_err().to_string();
        assert!(e.contains("unknown type 'q4_2'") && e.contains("Q4_K_M"), "{e}");
    }

    #[test]
    fn fallbacks_follow_llama_cpp() {
        use GgmlType::*;
        assert_eq!(fallback(Q4_K, 576), Some(Q5_0));
        assert_eq!(fallback(Q5_K, 576), Some(Q5_1));
        assert_eq!(fallback(Q6_K, 576), Some(Q8_0));
        assert_eq!(fallback(IQ4_XS, 576), Some(IQ4_NL));
        assert_eq!(fallback(IQ4_XS, 512), Some(IQ4_XS));
        assert_eq!(fallback(IQ4_NL, 48), None);
        assert_eq!(fallback(Q3_K, 576), Some(Q4_0));
        assert_eq!(fallback(Q4_K, 1536), Some(Q4_K));
        assert_eq!(fallback(Q4_0, 48), None);
        assert_eq!(fallback(Q4_K, 48), None);
        assert_eq!(fallback(F16, 48), Some(F16));
    }

    #[test]
    fn q4_k_m_gives_more_bits_where_llama_cpp_does() {
        use GgmlType::*;
        let m = Scheme::Mix(Mix::Q4KM);
        assert_eq!(scheme_type(m, "blk.0.attn_v.weight", true, 30, false), Q6_K);
        assert_eq!(scheme_type(m, "blk.3.attn_v.weight", true, 30, false), Q4_K);
        assert_eq!(scheme_type(m, "blk.5.ffn_down.weight", true, 30, false), Q6_K);
        assert_eq!(scheme_type(m, "blk.5.ffn_up.weight", true, 30, false), Q4_K);
        assert_eq!(scheme_type(m, "token_embd.weight", true, 30, false), Q6_K);
        assert_eq!(scheme_type(m, "token_embd.weight", false, 30, false), Q4_K);
        assert_eq!(scheme_type(Scheme::Plain(Q4_0), "output.weight", false, 30, false), Q6_K);
        assert_eq!(scheme_type(Scheme::Plain(Q4_0), "output.weight", false, 30, true), Q4_0);
        assert_eq!(scheme_type(Scheme::Plain(Q8_0), "output.weight", false, 30, false), Q8_0);
    }
}
