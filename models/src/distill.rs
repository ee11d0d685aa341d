//! `pith-compress distill`: knowledge distillation of a teacher's next-token distributions into
//! a (pruned) student, on candle (feature `train`; `cuda` on top for NVIDIA GPUs).
//!
//! Why candle: the student is a plain llama whose forward pass is a few dozen tensor ops, and
//! candle's CPU backend, reverse-mode autograd (`Var`, `backward`) and CUDA backend cover them
//! with one small dependency tree (burn would bring its module system and CubeCL's compiler).
//! The optimizer (AdamW), the schedule and the checkpoints are written here, so their state is
//! ours to save and resume.
//!
//! The teacher's logits are computed on the fly: on the CPU by pith's own forward pass (f32
//! arithmetic), on a GPU by the same candle forward as the student's, frozen, so that nothing
//! leaves the device. Sequences are batched (`--batch`), the forward pass runs in f32 (TF32
//! matmuls on a GPU) or bf16 over f32 master weights. Loss per predicted token, averaged: `α·CE(labels) + (1 − α)·T²·KL(p_T ‖ q_T)` with
//! `p_T = softmax(teacher/T)`, `q_T = softmax(student/T)`. AdamW (decay on matrices only),
//! linear warm-up then cosine decay to 10 % of the peak rate, gradients accumulated over
//! `--accum` sequences per step.

use std::path::PathBuf;

/// `--recompute`: see [`DistillArgs::recompute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Recompute {
    Auto,
    Yes,
    No,
}

/// `pith-compress distill` options.
#[derive(Debug, clap::Args)]
pub struct DistillArgs {
    /// The teacher model (llama GGUF, any weight type).
    #[arg(long)]
    pub teacher: PathBuf,
    /// The student model to train (llama GGUF with the teacher's vocabulary), e.g. from `prune`.
    #[arg(long)]
    pub student: PathBuf,
    /// Training text (UTF-8; repeatable), never the evaluation text.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// The trained student (F32 GGUF).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Tokens to train on (sequences × their length; the text is cycled).
    #[arg(long, default_value_t = 65536)]
    pub tokens: usize,
    /// Tokens per sequence.
    #[arg(short = 'c', long = "ctx", default_value_t = 256)]
    pub ctx: usize,
    /// Forward passes per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 4)]
    pub accum: usize,
    /// Sequences per forward pass (a step trains on batch × accum sequences).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// The forward pass's dtype: f32, or bf16 (mixed precision: f32 master weights and
    /// optimizer state, the loss in f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Quantization-aware distillation: each layer matrix passes through the exact grid that
    /// `quantize` with this type or mix (Q4_0, Q4_K_M, …) gives it, with a straight-through
    /// gradient; the output is written on that grid.
    #[arg(long)]
    pub qat: Option<String>,
    /// Stop after this many seconds: write a checkpoint and say how to resume.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Train for this many seconds of wall time instead of to `--tokens` (which then only caps
    /// the run): the learning-rate schedule follows the time spent, so the run ends with the
    /// rate decayed and writes its output. The time spent is kept in checkpoints, so a
    /// `--resume`d run continues the same schedule.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Weight of the hard-label cross-entropy (1 − alpha goes to the KL divergence).
    #[arg(long, default_value_t = 0.0)]
    pub alpha: f64,
    /// Softmax temperature of the KL term.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Held-out sequences (the end of the text) for the validation loss.
    #[arg(long, default_value_t = 4)]
    pub val_seqs: usize,
    /// Validation loss every this many steps.
    #[arg(long, default_value_t = 25)]
    pub val_every: usize,
    /// Write a checkpoint (weights + optimizer state) every this many steps (0 = never).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Checkpoint file (default: OUTPUT.ckpt).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Resume from this checkpoint (same student shape).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Device: cpu, or cuda (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also train on N tokens of text sampled from the teacher itself (sequences of `--ctx`,
    /// each started from the first `--synthetic-prompt` tokens of a training sequence, at
    /// `--synthetic-temp`), mixed with the files' sequences. Held-out sequences stay the files'.
    #[arg(long, default_value_t = 0)]
    pub synthetic: usize,
    /// Sampling temperature of `--synthetic` (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub synthetic_temp: f64,
    /// Tokens of a training sequence that start each `--synthetic` sequence (its prompt; the
    /// teacher writes the rest): 1 to `--ctx`. Longer prompts keep the sample nearer the files'
    /// kind of text.
    #[arg(long, default_value_t = 8)]
    pub synthetic_prompt: usize,
    /// Sequences sampled at once for `--synthetic` (default: 256 on a GPU, 8 on the CPU).
    #[arg(long)]
    pub synthetic_batch: Option<usize>,
    /// Also write `--synthetic`'s text here (one sequence per paragraph), to read what the
    /// student is trained on.
    #[arg(long)]
    pub synthetic_out: Option<PathBuf>,
    /// Seed of `--synthetic`'s sampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Only sample: write `--synthetic` N tokens of the teacher's text to `-o` (one sequence
    /// per paragraph) and stop, without training. With `--budget S`, sampling stops before a
    /// batch that would end past S seconds. Runs that share one sample read it with
    /// `--train-only`.
    #[arg(long)]
    pub sample_only: bool,
    /// Training text that never goes into the held-out sequences (repeatable), such as an
    /// earlier `--sample-only` run's: the validation loss stays on the `-f` files' text.
    #[arg(long = "train-only")]
    pub train_only: Vec<PathBuf>,
    /// Train on the `-f` files' text N times, each copy cut into sequences at another offset
    /// (copy k starts k/N of a sequence in), so that real text weighs more beside a large
    /// `--train-only` or `--synthetic` sample; cuts that would overlap a held-out sequence are
    /// left out.
    #[arg(long, default_value_t = 1)]
    pub file_repeat: usize,
    /// Whether each layer's forward pass is recomputed during the backward pass (`yes`: less
    /// memory) or kept from the step's forward pass (`no`: the kept activations of SmolLM2's
    /// pruned student at batch 64 × 512 in bf16 are about 23 GB; recomputation was 14 % of a
    /// GPU step). `auto`: kept on a GPU, recomputed on the CPU (where keeping them measured no
    /// faster: their fresh pages cost what the recomputation saves).
    #[arg(long, value_enum, default_value_t = Recompute::Auto)]
    pub recompute: Recompute,
    /// Threads for the teacher (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// Runs `pith-compress distill`.
#[cfg(not(feature = "train"))]
pub fn run(_: &DistillArgs) -> crate::Result<()> {
    Err(crate::CompressError::BadOption(
        "this pith-compress was built without training: rebuild with `--features train` (or `cuda`)".into(),
    ))
}

#[cfg(feature = "train")]
pub use train::*;

#[cfg(feature = "train")]
mod train {
    use super::DistillArgs;
    use crate::error::{CompressError, Result};
    use crate::fused::plain::total;
    use crate::quantize::{carry_metadata, to_f32, write_gguf};
    use candle_core::{DType, Device, Tensor, Var, D};
    use pith::gguf::writer::OwnedValue;
    use pith::gguf::Gguf;
    use pith::model::{Config, Logits, Model, State};
    use pith::{Pool, Precision};
    use pith_kernels::GgmlType;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    fn ce(e: candle_core::Error) -> CompressError {
        CompressError::BadOption(format!("training: {e}"))
    }

    fn ce_msg(e: &str) -> CompressError {
        CompressError::BadOption(format!("training: {e}"))
    }

    /// Where a training step's time goes, by phase (`PITH_DISTILL_PROFILE=1`): each mark waits
    /// for the device to finish its queued work, so the phases are wall times of the device's
    /// work. Only a window of steps is timed ([`prof::set_step`]); its sums are printed after it.
    mod prof {
        use candle_core::Device;
        use std::cell::RefCell;
        use std::sync::OnceLock;
        use std::time::Instant;

        struct Phases {
            last: Option<Instant>,
            sums: Vec<(&'static str, f64)>,
        }

        thread_local! {
            static PHASES: RefCell<Phases> = const { RefCell::new(Phases { last: None, sums: Vec::new() }) };
        }

        /// `PITH_DISTILL_PROFILE`: unset or 0 off, 1 the step's phases, 2 also the parts of a
        /// layer's forward and backward pass ([`fine`]).
        fn level() -> u8 {
            static LEVEL: OnceLock<u8> = OnceLock::new();
            *LEVEL.get_or_init(|| {
                std::env::var("PITH_DISTILL_PROFILE").map_or(0, |v| match v.trim() {
                    "" | "0" => 0,
                    "2" => 2,
                    _ => 1,
                })
            })
        }

        static NOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        static FINE_NOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

        /// Whether this step is timed: every wait for the device drains its queue (and used to
        /// hand the memory pool's free blocks back), so only a window of steps is — steps 11 to
        /// 20 (the first ten warm the allocator and the kernels' caches), or every step of a
        /// run shorter than 20.
        pub fn on() -> bool {
            NOW.load(std::sync::atomic::Ordering::Relaxed)
        }

        fn window(steps: usize) -> std::ops::RangeInclusive<usize> {
            if steps < 20 {
                1..=steps
            } else {
                11..=20
            }
        }

        /// Opens or closes the window for `step` (1-based) of a run of `steps`; at level 2 the
        /// layers are timed part by part inside it too.
        pub fn set_step(step: usize, steps: usize) {
            let inside = level() > 0 && window(steps).contains(&step);
            NOW.store(inside, std::sync::atomic::Ordering::Relaxed);
            FINE_NOW.store(inside && level() > 1, std::sync::atomic::Ordering::Relaxed);
        }

        /// The window, as text ("11-20").
        pub fn span(steps: usize) -> String {
            let w = window(steps);
            format!("{}-{}", w.start(), w.end())
        }

        /// Whether `step` closes the window (its profile is printed then).
        pub fn report_after(step: usize, steps: usize) -> bool {
            level() > 0 && *window(steps).end() == step
        }

        /// A part of a layer's pass ([`mark`] inside the window at level 2; nothing otherwise). The
        /// layer's own phase then counts only what follows its last part.
        pub fn fine(dev: &Device, phase: &'static str) {
            if FINE_NOW.load(std::sync::atomic::Ordering::Relaxed) {
                mark(dev, phase);
            }
        }

        /// Starts timing from now (after the device's queued work).
        pub fn start(dev: &Device) {
            if on() {
                let _ = dev.synchronize();
                PHASES.with(|p| p.borrow_mut().last = Some(Instant::now()));
            }
        }

        /// Adds the time since the last mark to `phase`.
        pub fn mark(dev: &Device, phase: &'static str) {
            if !on() {
                return;
            }
            let _ = dev.synchronize();
            let now = Instant::now();
            PHASES.with(|p| {
                let mut p = p.borrow_mut();
                let dt = p.last.map_or(0.0, |l| (now - l).as_secs_f64());
                p.last = Some(now);
                match p.sums.iter_mut().find(|(n, _)| *n == phase) {
                    Some((_, s)) => *s += dt,
                    None => p.sums.push((phase, dt)),
                }
            });
        }

        /// The phases' totals so far ("name 1.23 s, …"), and starts them again.
        pub fn take() -> String {
            PHASES.with(|p| {
                let mut p = p.borrow_mut();
                let all: f64 = p.sums.iter().map(|(_, s)| s).sum();
                let out = p
                    .sums
                    .iter()
                    .map(|(n, s)| format!("{n} {s:.2} s ({:.0} %)", 100.0 * s / all.max(1e-12)))
                    .collect::<Vec<_>>()
                    .join(", ");
                p.sums.clear();
                out
            })
        }
    }

    /// One layer's forward pass as its backward pass needs it ([`Student::layer_kept`]): (B·T, ·)
    /// activations, the attention's (B, kv, G·T, ·) blocks, and the layer's output `y`.
    struct Kept {
        b: usize,
        x: Tensor,         // (B·T, d) the layer's input
        xb1: Tensor,       // (B·T, d) attention RMSNorm
        qg: Tensor,        // (B, kv, G·T, hd) queries by KV group, rotated
        k: Tensor,         // (B, kv, T, hd) rotated
        v: Tensor,         // (B, kv, T, hd)
        att: Tensor,       // (B, kv, G·T, T) softmax
        o: Tensor,         // (B·T, H·hd) attention output before attn_output
        x2: Tensor,        // (B·T, d) after the attention's residual
        xb2: Tensor,       // (B·T, d) FFN RMSNorm
        gate: Tensor,      // (B·T, ff)
        up: Tensor,        // (B·T, ff)
        act: Tensor,       // (B·T, ff) SwiGLU
        y: Option<Tensor>, // (B·T, d) the layer's output, when asked for
        /// The layer's weights as the forward pass used them (compute dtype, under `--qat`
        /// fake-quantized): attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
        /// ffn_up, ffn_down.
        w: [Tensor; 9],
        rope: (Tensor, Tensor), // (T, hd/2) cos, sin
    }

    /// A llama model as candle tensors, by GGUF tensor name: a student (its weights are
    /// variables, trained) or a frozen teacher (plain tensors, no autograd graph).
    pub struct Student {
        pub cfg: Config,
        pub tied: bool,
        /// The trained weights (empty for a frozen model).
        pub vars: BTreeMap<String, Var>,
        /// Every weight in the storage dtype (the variables' own tensors for a student).
        weights: BTreeMap<String, Tensor>,
        /// Storage dtype of the weights and the optimizer state.
        pub dtype: DType,
        /// Dtype of the forward pass's matmuls and activations (bf16 = mixed precision over f32
        /// master weights; the loss is always computed in f32 or wider).
        pub compute: DType,
        /// Fake quantization (`--qat`): each linear weight named here passes through that type's
        /// exact grid — the quantizer's own round trip — with a straight-through gradient.
        pub qat: BTreeMap<String, GgmlType>,
        /// The fake-quantized weights of the current optimizer step (the grid is computed once
        /// a step, not at every use: weights change only at the step).
        qcache: std::cell::RefCell<BTreeMap<String, Tensor>>,
        pub device: Device,
        cos: Tensor, // (n_ctx, 1, head_dim/2, 1), compute dtype
        sin: Tensor, // (n_ctx, 1, head_dim/2, 1)
        /// The same tables in f64, what [`Student::set_compute`] converts from (a table once
        /// rounded to bf16 stays rounded).
        rope64: (Tensor, Tensor),
        /// Layers whose backward pass is written out recompute their forward pass in it
        /// (`--recompute`) instead of keeping it from the step's forward pass.
        pub recompute: bool,
    }

    /// A layer's tensors, `blk.{l}.` before each (the order `layer_kept` unpacks them in).
    const LAYER_WEIGHTS: [&str; 9] = [
        "attn_norm.weight",
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "ffn_norm.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];

    /// The names of a llama model's tensors.
    fn names(cfg: &Config, tied: bool) -> Vec<String> {
        let mut v = vec!["token_embd.weight".to_string()];
        for l in 0..cfg.n_layer {
            for w in LAYER_WEIGHTS {
                v.push(format!("blk.{l}.{w}"));
            }
        }
        v.push("output_norm.weight".into());
        if !tied {
            v.push("output.weight".into());
        }
        v
    }

    impl Student {
        /// Binds the student's weights (dequantized) as variables.
        pub fn from_gguf(g: &Gguf<'_>, dtype: DType, device: &Device, n_ctx: usize) -> Result<Self> {
            Self::bind(g, dtype, dtype, device, n_ctx, true, "student")
        }

        /// Binds a frozen model (the teacher) whose forward pass runs in `compute`.
        pub fn frozen(g: &Gguf<'_>, compute: DType, device: &Device, n_ctx: usize) -> Result<Self> {
            Self::bind(g, compute, compute, device, n_ctx, false, "teacher")
        }

        fn bind(
            g: &Gguf<'_>,
            dtype: DType,
            compute: DType,
            device: &Device,
            n_ctx: usize,
            train: bool,
            role: &str,
        ) -> Result<Self> {
            let cfg = crate::prune::check_llama(g, role)?;
            if cfg.rope_dim != cfg.head_dim || g.tensor("rope_freqs.weight").is_some() {
                return Err(CompressError::BadOption(format!(
                    "distill: partial RoPE and llama 3.1's rope_freqs are not supported for the {role}"
                )));
            }
            let tied = g.tensor("output.weight").is_none();
            let (mut vars, mut weights) = (BTreeMap::new(), BTreeMap::new());
            for name in names(&cfg, tied) {
                // A linear weight `W` of a low-rank file (`lowrank` without --merge) is two
                // factors, `W_a` (out × r) and `W_b` (r × in): both are trained, as factors, so
                // that the healed model keeps the factorization's size.
                let (fa, fb) = (format!("{name}_a"), format!("{name}_b"));
                let parts = if g.tensor(&name).is_none() && g.tensor(&fa).is_some() && g.tensor(&fb).is_some() {
                    vec![fa, fb]
                } else {
                    vec![name]
                };
                for n in parts {
                    let t = g
                        .tensor(&n)
                        .ok_or_else(|| CompressError::Tensor { tensor: n.clone(), why: "missing".into() })?;
                    let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
                    let v = Tensor::from_vec(to_f32(t), shape, device).and_then(|x| x.to_dtype(dtype)).map_err(ce)?;
                    if train {
                        let var = Var::from_tensor(&v).map_err(ce)?;
                        weights.insert(n.clone(), var.as_tensor().clone());
                        vars.insert(n, var);
                    } else {
                        weights.insert(n, v);
                    }
                }
            }
            // RoPE angles as pith computes them: pos·scale·base^(−2i/rope_dim), adjacent pairs.
            let half = cfg.head_dim / 2;
            let mut c = Vec::with_capacity(n_ctx * half);
            let mut s = Vec::with_capacity(n_ctx * half);
            for p in 0..n_ctx {
                for i in 0..half {
                    let th = (p as f32 * cfg.rope_freq_scale) as f64
                        * (cfg.rope_theta as f64).powf(-2.0 * i as f64 / cfg.rope_dim as f64);
                    c.push(th.cos());
                    s.push(th.sin());
                }
            }
            let mk = |v: Vec<f64>| Tensor::from_vec(v, (n_ctx, 1, half, 1), device).map_err(ce);
            let rope64 = (mk(c)?, mk(s)?);
            Ok(Student {
                cos: rope64.0.to_dtype(compute).map_err(ce)?,
                sin: rope64.1.to_dtype(compute).map_err(ce)?,
                rope64,
                cfg,
                tied,
                vars,
                weights,
                dtype,
                compute,
                qat: BTreeMap::new(),
                qcache: Default::default(),
                device: device.clone(),
                recompute: false,
            })
        }

        /// Runs the forward pass in `compute` (bf16: mixed precision) from now on.
        pub fn set_compute(&mut self, compute: DType) -> Result<()> {
            self.compute = compute;
            self.cos = self.rope64.0.to_dtype(compute).map_err(ce)?;
            self.sin = self.rope64.1.to_dtype(compute).map_err(ce)?;
            Ok(())
        }

        /// The weight `n` as the forward pass uses it: in the compute dtype, and for a linear
        /// weight under `--qat` through fake quantization (straight-through gradient).
        fn w(&self, n: &str) -> Result<Tensor> {
            let w =
                self.weights.get(n).ok_or_else(|| CompressError::Tensor { tensor: n.into(), why: "missing".into() })?;
            let w = match self.qat.get(n) {
                Some(&ty) => {
                    let q = self.fake(n, w, ty)?;
                    // w + (q − w) with the difference cut from the graph: forward q, gradient 1.
                    (w + (q - w.detach()).map_err(ce)?).map_err(ce)?
                }
                None => w.clone(),
            };
            if w.dtype() == self.compute {
                Ok(w)
            } else {
                w.to_dtype(self.compute).map_err(ce)
            }
        }

        /// The fake-quantized `w` (named `n`) of this optimizer step.
        fn fake(&self, n: &str, w: &Tensor, ty: GgmlType) -> Result<Tensor> {
            if let Some(q) = self.qcache.borrow().get(n) {
                return Ok(q.clone());
            }
            let q = fake_quant(&w.detach(), ty)?;
            self.qcache.borrow_mut().insert(n.to_string(), q.clone());
            Ok(q)
        }

        /// Forgets the fake-quantized weights (the optimizer changed the weights).
        pub fn weights_changed(&self) {
            self.qcache.borrow_mut().clear();
        }

        /// Sets `--qat`: every `blk.*` weight matrix trains through the exact grid that
        /// `quantize SCHEME` gives it (mixes, and fallbacks for rows that no K block fits,
        /// included), so the quantized file holds what the training saw.
        pub fn set_qat(&mut self, g: &Gguf<'_>, scheme: &str) -> Result<()> {
            let scheme = crate::quantize::Scheme::parse(scheme)?;
            let plan = crate::quantize::plan(g, scheme, &[], false)?;
            self.qat = plan
                .into_iter()
                .filter(|p| p.name.starts_with("blk.") && p.to.is_quantized() && self.vars.contains_key(&p.name))
                .map(|p| (p.name, p.to))
                .collect();
            self.weights_changed();
            Ok(())
        }

        fn rmsnorm(&self, x: &Tensor, g: &str) -> Result<Tensor> {
            let (eps, g) = (self.cfg.rms_eps as f64, self.w(g)?);
            if unfused() {
                crate::fused::plain::rms_norm(x, &g, eps).map_err(ce)
            } else {
                crate::fused::rms_norm(x, &g, eps).map_err(ce)
            }
        }

        /// x (N, in) · Wᵀ, W (out, in); for a factored W = A·B, (x · Bᵀ) · Aᵀ.
        fn linear(&self, x: &Tensor, w: &str) -> Result<Tensor> {
            // A name absent from the weights is factored (`bind` holds each linear or its factors).
            if !self.weights.contains_key(w) {
                let (a, b) = (self.w(&format!("{w}_a"))?, self.w(&format!("{w}_b"))?);
                return x.matmul(&b.t().map_err(ce)?).and_then(|y| y.matmul(&a.t()?)).map_err(ce);
            }
            x.matmul(&self.w(w)?.t().map_err(ce)?).map_err(ce)
        }

        /// Whether some linear weight is held as low-rank factors.
        pub fn factored(&self) -> bool {
            self.weights.keys().any(|n| n.ends_with(".weight_a"))
        }

        /// (B, T, H, hd) at positions `p..p + T` rotated by their angles, pairs (2i, 2i+1).
        fn rope(&self, x: &Tensor, p: usize) -> Result<Tensor> {
            let (c, s) = self.rope_tables(x.dim(1).map_err(ce)?, p)?;
            if unfused() {
                crate::fused::plain::rope(x, &c, &s).map_err(ce)
            } else {
                crate::fused::rope(x, &c, &s).map_err(ce)
            }
        }

        /// Logits (T, n_vocab) of a sequence from position 0.
        pub fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
            self.forward_batch(tokens, 1)
        }

        /// Logits (B·T, n_vocab) of `b` sequences of equal length laid end to end in `tokens`,
        /// each from position 0, in the compute dtype.
        pub fn forward_batch(&self, tokens: &[u32], b: usize) -> Result<Tensor> {
            let (ids, t) = self.ids(tokens, b)?;
            let mask = self.mask(t)?;
            let mut x = self.embed(&ids)?;
            for l in 0..self.cfg.n_layer {
                x = self.layer(l, &x, b, &mask, None)?;
            }
            self.head(&x)
        }

        /// The token ids of `b` sequences laid end to end, as a tensor, and their length.
        fn ids(&self, tokens: &[u32], b: usize) -> Result<(Tensor, usize)> {
            if b == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(b) {
                return Err(CompressError::BadOption(format!(
                    "{} tokens do not split into {b} sequences",
                    tokens.len()
                )));
            }
            let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), &self.device).map_err(ce)?;
            Ok((ids, tokens.len() / b))
        }

        /// The causal mask (T, T): 0 on and below the diagonal, −∞ above.
        fn mask(&self, t: usize) -> Result<Tensor> {
            self.mask_after(t, 0)
        }

        /// The causal mask (T, P + T) of T new positions after P cached ones.
        fn mask_after(&self, t: usize, p: usize) -> Result<Tensor> {
            let n = p + t;
            let mask: Vec<f32> = (0..t * n).map(|i| if i % n > p + i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
            Tensor::from_vec(mask, (t, n), &self.device).and_then(|m| m.to_dtype(self.compute)).map_err(ce)
        }

        /// The token embeddings (B·T, d) of `ids` (B·T).
        fn embed(&self, ids: &Tensor) -> Result<Tensor> {
            self.w("token_embd.weight")?.index_select(ids, 0).map_err(ce)
        }

        /// Layer `l` on the residual stream `x` (B·T, d) of `b` sequences: attention, then FFN.
        /// With a cache, the T positions follow the cached ones (their keys and values are
        /// appended to it); `mask` is then (T, P + T).
        fn layer(&self, l: usize, x: &Tensor, b: usize, mask: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
            let c = &self.cfg;
            let (h, kv, hd) = (c.n_head, c.n_head_kv, c.head_dim);
            let t = x.dim(0).map_err(ce)? / b;
            let p = cache.as_ref().map_or(0, |c| c.len);
            let scale = 1.0 / (hd as f64).sqrt();
            let n = |s: &str| format!("blk.{l}.{s}");
            let xb = self.rmsnorm(x, &n("attn_norm.weight"))?;
            let q = self.linear(&xb, &n("attn_q.weight"))?.reshape((b, t, h, hd)).map_err(ce)?;
            let k = self.linear(&xb, &n("attn_k.weight"))?.reshape((b, t, kv, hd)).map_err(ce)?;
            let v = self.linear(&xb, &n("attn_v.weight"))?.reshape((b, t, kv, hd)).map_err(ce)?;
            let q = self.rope(&q, p)?.transpose(1, 2).and_then(|q| q.contiguous()).map_err(ce)?; // (B, H, T, hd)
            let k = self.rope(&k, p)?.transpose(1, 2).map_err(ce)?; // (B, kv, T, hd)
            let v = v.transpose(1, 2).map_err(ce)?;
            let n_kv = p + t;
            let g = h / kv;
            // (B, kv, P + T, hd): the cached positions, then these. The cache is allocated once
            // at its capacity and written in place: the keys and values are never copied again.
            let (k, v) = match cache {
                // (B, kv, T, hd) in one piece: the matmuls below take no transposed view.
                None => (k.contiguous().map_err(ce)?, v.contiguous().map_err(ce)?),
                Some(c) => {
                    if c.k.is_none() {
                        let z = |m: &Tensor| Tensor::zeros((b, kv, c.cap, hd), m.dtype(), m.device()).map_err(ce);
                        c.k = Some(z(&k)?);
                        c.v = Some(z(&v)?);
                    }
                    let (ck, cv) =
                        c.k.as_ref()
                            .zip(c.v.as_ref())
                            .ok_or_else(|| CompressError::BadOption("sampling: the cache lost a tensor".into()))?;
                    if n_kv > c.cap {
                        return Err(CompressError::BadOption(format!(
                            "sampling: the cache holds {} positions, not {n_kv}",
                            c.cap
                        )));
                    }
                    let k = k.contiguous().map_err(ce)?;
                    let v = v.contiguous().map_err(ce)?;
                    ck.slice_set(&k, 2, p).map_err(ce)?;
                    cv.slice_set(&v, 2, p).map_err(ce)?;
                    c.len = n_kv;
                    (ck.narrow(2, 0, n_kv).map_err(ce)?, cv.narrow(2, 0, n_kv).map_err(ce)?)
                }
            };
            // GQA without widening: each KV head's G query heads are (B, H, T, hd) rows
            // kv·G … kv·G + G − 1, i.e. the (G·T, hd) rows of one (B, kv, G·T, hd) block, which
            // multiply that head's keys and then its values as one matrix. Nothing is copied to
            // the query heads' count, and the backward pass sums nothing over G. With a cache,
            // its first P + T positions are multiplied in place (no copy).
            let qg = q.reshape((b, kv, g * t, hd)).map_err(ce)?;
            let scores = qg.matmul(&k.t().map_err(ce)?).map_err(ce)?; // (B, kv, G·T, P + T)
            let att = if unfused() {
                scores
                    .reshape((b, h, t, n_kv))
                    .and_then(|s| crate::fused::plain::causal_softmax(&s, scale, mask))
                    .and_then(|a| a.reshape((b, kv, g * t, n_kv)))
                    .map_err(ce)?
            } else {
                crate::fused::causal_softmax_grouped(&scores, scale, t, p).map_err(ce)?
            };
            let o = att.matmul(&v).and_then(|o| o.reshape((b, h, t, hd))).map_err(ce)?;
            let o =
                o.transpose(1, 2).and_then(|o| o.contiguous()).and_then(|o| o.reshape((b * t, h * hd))).map_err(ce)?;
            let x = (x + self.linear(&o, &n("attn_output.weight"))?).map_err(ce)?;
            let xb = self.rmsnorm(&x, &n("ffn_norm.weight"))?;
            let g = self.linear(&xb, &n("ffn_gate.weight"))?;
            let u = self.linear(&xb, &n("ffn_up.weight"))?;
            let a = if unfused() { crate::fused::plain::swiglu(&g, &u) } else { crate::fused::swiglu(&g, &u) }
                .map_err(ce)?;
            (x + self.linear(&a, &n("ffn_down.weight"))?).map_err(ce)
        }

        /// Whether layer `l`'s backward pass can be written out by hand: fused ops, and no
        /// low-rank factors (those go through autograd).
        fn manual_backward(&self, l: usize) -> bool {
            !unfused()
                && ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
                    .iter()
                    .all(|m| self.weights.contains_key(&format!("blk.{l}.{m}.weight")))
        }

        /// Layer `l`'s forward pass on its input `x` (B·T, d) of `b` sequences with no graph,
        /// keeping what [`Student::layer_backward_kept`] needs, and its output (the function of
        /// [`Student::layer`]). The backward pass either runs on these right after the forward
        /// (`distill` keeps every layer's: no recomputation) or recomputes them layer by layer
        /// from the kept inputs ([`Student::layer_backward`], `--recompute`: less memory).
        fn layer_kept(&self, l: usize, x: &Tensor, b: usize, output: bool) -> Result<Kept> {
            let c = &self.cfg;
            let (h, kv, hd) = (c.n_head, c.n_head_kv, c.head_dim);
            let g = h / kv;
            let nt = x.dim(0).map_err(ce)?;
            let t = nt / b;
            let scale = 1.0 / (hd as f64).sqrt();
            let eps = c.rms_eps as f64;
            let n = |s: &str| format!("blk.{l}.{s}");
            let w = |s: &str| self.w(&n(s)).map(|w| w.detach());
            let mm = |a: &Tensor, b: &Tensor| a.matmul(b).map_err(ce);
            let (c_tab, s_tab) = self.rope_tables(t, 0)?;
            let x = x.detach();
            let [g1, wq, wk, wv, wo, g2, wg, wu, wd] = LAYER_WEIGHTS.map(w);
            let (g1, wq, wk, wv, wo, g2, wg, wu, wd) = (g1?, wq?, wk?, wv?, wo?, g2?, wg?, wu?, wd?);
            let xb1 = crate::fused::rms_norm(&x, &g1, eps).map_err(ce)?;
            let heads = |wm: &Tensor, nh: usize, rot: bool| -> Result<Tensor> {
                let y = mm(&xb1, &wm.t().map_err(ce)?)?.reshape((b, t, nh, hd)).map_err(ce)?;
                let y = if rot { crate::fused::rope(&y, &c_tab, &s_tab).map_err(ce)? } else { y };
                y.transpose(1, 2).and_then(|y| y.contiguous()).map_err(ce) // (B, nh, T, hd)
            };
            let (q, k, v) = (heads(&wq, h, true)?, heads(&wk, kv, true)?, heads(&wv, kv, false)?);
            prof::fine(&self.device, "fwd qkv");
            let qg = q.reshape((b, kv, g * t, hd)).map_err(ce)?;
            drop(q);
            let scores = mm(&qg, &k.t().map_err(ce)?)?;
            let att = crate::fused::causal_softmax_grouped(&scores, scale, t, 0).map_err(ce)?;
            drop(scores);
            let o = mm(&att, &v)?
                .reshape((b, h, t, hd))
                .and_then(|o| o.transpose(1, 2))
                .and_then(|o| o.contiguous())
                .and_then(|o| o.reshape((nt, h * hd)))
                .map_err(ce)?;
            prof::fine(&self.device, "fwd attention");
            let x2 = (&x + mm(&o, &wo.t().map_err(ce)?)?).map_err(ce)?;
            let xb2 = crate::fused::rms_norm(&x2, &g2, eps).map_err(ce)?;
            prof::fine(&self.device, "fwd attn output");
            let gate = mm(&xb2, &wg.t().map_err(ce)?)?;
            let up = mm(&xb2, &wu.t().map_err(ce)?)?;
            let act = crate::fused::swiglu(&gate, &up).map_err(ce)?;
            // The output (not needed when recomputing: the next layer's input is kept).
            let y = if output { Some((&x2 + mm(&act, &wd.t().map_err(ce)?)?).map_err(ce)?) } else { None };
            prof::fine(&self.device, "fwd ffn");
            let w = [g1, wq, wk, wv, wo, g2, wg, wu, wd];
            Ok(Kept { b, x, xb1, qg, k, v, att, o, x2, xb2, gate, up, act, y, w, rope: (c_tab, s_tab) })
        }

        /// Layer `l`'s backward pass written out: recomputes the layer on its input `x` (B·T, d)
        /// of `b` sequences with no graph ([`Student::layer_kept`]), then
        /// [`Student::layer_backward_kept`].
        fn layer_backward(
            &self,
            l: usize,
            x: &Tensor,
            gy: &Tensor,
            b: usize,
            add: &mut dyn FnMut(&str, Tensor) -> Result<()>,
        ) -> Result<Tensor> {
            let kept = self.layer_kept(l, x, b, false)?;
            prof::mark(&self.device, "layer recompute");
            self.layer_backward_kept(l, kept, gy, add)
        }

        /// Back-propagates `gy` (the gradient of layer `l`'s output) by hand through the layer's
        /// kept forward pass: each linear's weight gradient `gᵀ·x` and input gradient `g·W`, the
        /// fused ops' closed-form backwards, the attention's four batched products. Adds every
        /// weight's gradient to `out` through `add` (in the weight's own dtype; under `--qat` the
        /// gradient of the fake-quantized weight passes straight through) and returns the
        /// gradient of the layer's input. The same function as autograd through
        /// [`Student::layer`] (the tests compare them), without its zero-filled buffer and
        /// addition per accumulated gradient.
        fn layer_backward_kept(
            &self,
            l: usize,
            kept: Kept,
            gy: &Tensor,
            add: &mut dyn FnMut(&str, Tensor) -> Result<()>,
        ) -> Result<Tensor> {
            let c = &self.cfg;
            let (h, kv, hd) = (c.n_head, c.n_head_kv, c.head_dim);
            let g = h / kv;
            let Kept { b, x, xb1, qg, k, v, att, o, x2, xb2, gate, up, act, w, rope: (c_tab, s_tab), .. } = kept;
            let [g1, wq, wk, wv, wo, g2, wg, wu, wd] = w;
            let nt = x.dim(0).map_err(ce)?;
            let t = nt / b;
            let scale = 1.0 / (hd as f64).sqrt();
            let eps = c.rms_eps as f64;
            let n = |s: &str| format!("blk.{l}.{s}");
            let mm = |a: &Tensor, b: &Tensor| a.matmul(b).map_err(ce);
            // gᵀ·x (out, in) for y = x·Wᵀ, in the weight's dtype.
            let wgrad = |add: &mut dyn FnMut(&str, Tensor) -> Result<()>,
                         name: &str,
                         gout: &Tensor,
                         input: &Tensor|
             -> Result<()> {
                let key = n(name);
                let gw = mm(&gout.t().map_err(ce)?, input)?.to_dtype(self.var_dtype(&key)?).map_err(ce)?;
                add(&key, gw)
            };
            // Backward: the FFN.
            let gy = gy.to_dtype(x.dtype()).map_err(ce)?;
            wgrad(add, "ffn_down.weight", &gy, &act)?;
            drop(act);
            let dact = mm(&gy, &wd)?;
            prof::fine(&self.device, "bwd ffn down");
            let (dgate, dup) = crate::fused::grad::swiglu(&gate, &up, &dact).map_err(ce)?;
            drop((gate, up, dact));
            wgrad(add, "ffn_gate.weight", &dgate, &xb2)?;
            wgrad(add, "ffn_up.weight", &dup, &xb2)?;
            let dxb2 = (mm(&dgate, &wg)? + mm(&dup, &wu)?).map_err(ce)?;
            drop((dgate, dup, xb2));
            prof::fine(&self.device, "bwd ffn gate/up");
            let (dx2, dg2) = crate::fused::grad::rms_norm(&x2, &g2, &dxb2, eps).map_err(ce)?;
            add(&n("ffn_norm.weight"), dg2.to_dtype(self.var_dtype(&n("ffn_norm.weight"))?).map_err(ce)?)?;
            let dx2 = (dx2 + &gy).map_err(ce)?;
            drop((x2, dxb2, gy));
            prof::fine(&self.device, "bwd ffn norm");
            // The attention.
            wgrad(add, "attn_output.weight", &dx2, &o)?;
            drop(o);
            let d_o = mm(&dx2, &wo)?
                .reshape((b, t, h, hd))
                .and_then(|d| d.transpose(1, 2))
                .and_then(|d| d.contiguous())
                .and_then(|d| d.reshape((b, kv, g * t, hd)))
                .map_err(ce)?;
            prof::fine(&self.device, "bwd attn output");
            let datt = mm(&d_o, &v.t().map_err(ce)?)?;
            let dv = mm(&att.t().map_err(ce)?, &d_o)?; // (B, kv, T, hd)
            drop(d_o);
            let ds = crate::fused::grad::causal_softmax(&att, &datt, scale).map_err(ce)?;
            drop((att, datt));
            let dq = mm(&ds, &k)?.reshape((b, h, t, hd)).map_err(ce)?;
            let dk = mm(&ds.t().map_err(ce)?, &qg)?; // (B, kv, T, hd)
            drop((ds, qg, k, v));
            prof::fine(&self.device, "bwd attention");
            // Back to (B·T, heads·hd), rotated back where RoPE turned them.
            let flat = |d: Tensor, nh: usize, rot: bool| -> Result<Tensor> {
                if rot && ROPE_T.load(std::sync::atomic::Ordering::Relaxed) {
                    // The transpose and the rotation back in one pass.
                    let d = crate::fused::grad::rope_t(&d, &c_tab, &s_tab).map_err(ce)?;
                    return d.reshape((nt, nh * hd)).map_err(ce);
                }
                let d = d.transpose(1, 2).and_then(|d| d.contiguous()).map_err(ce)?; // (B, T, nh, hd)
                let d = if rot { crate::fused::grad::rope(&d, &c_tab, &s_tab).map_err(ce)? } else { d };
                d.reshape((nt, nh * hd)).map_err(ce)
            };
            let (dq, dk, dv) = (flat(dq, h, true)?, flat(dk, kv, true)?, flat(dv, kv, false)?);
            prof::fine(&self.device, "bwd heads");
            wgrad(add, "attn_q.weight", &dq, &xb1)?;
            wgrad(add, "attn_k.weight", &dk, &xb1)?;
            wgrad(add, "attn_v.weight", &dv, &xb1)?;
            let (pq, pk, pv) = (mm(&dq, &wq)?, mm(&dk, &wk)?, mm(&dv, &wv)?);
            let dxb1 = (pq + pk).and_then(|d| d + pv).map_err(ce)?;
            drop((dq, dk, dv, xb1));
            prof::fine(&self.device, "bwd qkv");
            let (dx1, dg1) = crate::fused::grad::rms_norm(&x, &g1, &dxb1, eps).map_err(ce)?;
            add(&n("attn_norm.weight"), dg1.to_dtype(self.var_dtype(&n("attn_norm.weight"))?).map_err(ce)?)?;
            let dx = (dx1 + dx2).map_err(ce)?;
            prof::mark(&self.device, "layer backward");
            Ok(dx)
        }

        /// The dtype of the variable `name` (its gradient's).
        fn var_dtype(&self, name: &str) -> Result<DType> {
            self.vars
                .get(name)
                .map(|v| v.dtype())
                .ok_or_else(|| CompressError::Tensor { tensor: name.into(), why: "not trained".into() })
        }

        /// RoPE's (T, hd/2) cos and sin tables at positions `p..p + T`.
        fn rope_tables(&self, t: usize, p: usize) -> Result<(Tensor, Tensor)> {
            let hd = self.cfg.head_dim;
            let table = |m: &Tensor| m.narrow(0, p, t).and_then(|m| m.reshape((t, hd / 2))).map_err(ce);
            Ok((table(&self.cos)?, table(&self.sin)?))
        }

        /// The logits (B·T, n_vocab) of the last layer's output `x` (B·T, d).
        fn head(&self, x: &Tensor) -> Result<Tensor> {
            let xb = self.rmsnorm(x, "output_norm.weight")?;
            self.linear(&xb, if self.tied { "token_embd.weight" } else { "output.weight" })
        }

        /// Continues each of `prompts` (of one length) to `len` tokens, sampling at temperature
        /// `temp` (0: greedy) with the Gumbel-max trick: argmax(logits/temp − ln(−ln u)) is a
        /// sample of softmax(logits/temp), so only the chosen ids leave the device. Keys and
        /// values are cached, one step per new token for the whole batch. `noise` fills
        /// uniform (0, 1) draws.
        pub fn sample(&self, prompts: &[Vec<u32>], len: usize, temp: f64, noise: &mut Noise) -> Result<Vec<Vec<u32>>> {
            let b = prompts.len();
            let p = prompts.first().map_or(0, Vec::len);
            if b == 0 || p == 0 || prompts.iter().any(|q| q.len() != p) || len > self.cos.dim(0).map_err(ce)? + 1 {
                return Err(CompressError::BadOption(format!(
                    "sampling: {b} prompts of one length ≥ 1 continued to at most {} tokens",
                    self.cos.dim(0).unwrap_or(0) + 1
                )));
            }
            let mut out: Vec<Vec<u32>> = prompts.to_vec();
            let mut cache: Vec<KvCache> =
                (0..self.cfg.n_layer).map(|_| KvCache { cap: len, ..Default::default() }).collect();
            let mut step: Vec<u32> = prompts.concat();
            let mut pos = 0;
            while out[0].len() < len {
                let t = step.len() / b;
                let (ids, _) = self.ids(&step, b)?;
                let mask = self.mask_after(t, pos)?;
                let mut x = self.embed(&ids)?;
                for (l, c) in cache.iter_mut().enumerate() {
                    x = self.layer(l, &x, b, &mask, Some(c))?;
                }
                let d = x.dim(1).map_err(ce)?;
                let last = x
                    .reshape((b, t, d))
                    .and_then(|x| x.narrow(1, t - 1, 1))
                    .and_then(|x| x.reshape((b, d)))
                    .map_err(ce)?;
                let logits = self.head(&last)?.to_dtype(DType::F32).map_err(ce)?;
                let pick = if temp > 0.0 {
                    let u = noise.uniform(logits.dims2().map_err(ce)?, &self.device)?;
                    let gumbel =
                        u.log().and_then(|l| l.neg()).and_then(|l| l.log()).and_then(|l| l.neg()).map_err(ce)?;
                    logits.affine(1.0 / temp, 0.0).and_then(|l| l + gumbel).map_err(ce)?
                } else {
                    logits
                };
                step = pick
                    .argmax_keepdim(1)
                    .and_then(|i| i.flatten_all())
                    .and_then(|i| i.to_vec1::<u32>())
                    .map_err(ce)?;
                for (o, &tok) in out.iter_mut().zip(&step) {
                    o.push(tok);
                }
                pos += t;
            }
            Ok(out)
        }
    }

    /// One layer's cached keys and values, (B, kv heads, capacity, head dim), written in place.
    #[derive(Default)]
    struct KvCache {
        k: Option<Tensor>, // (B, kv, cap, hd), allocated at the first step
        v: Option<Tensor>, // (B, kv, cap, hd)
        cap: usize,        // positions it holds
        len: usize,        // positions written
    }

    /// Uniform (0, 1) draws for sampling: from a seeded SplitMix64 on the CPU (reproducible),
    /// from the GPU's own generator (seeded once) on a GPU, where a (B, V) draw per token would
    /// otherwise cross the bus.
    pub struct Noise {
        state: u64,
        seeded: bool,
    }

    impl Noise {
        pub fn new(seed: u64) -> Self {
            Noise { state: seed, seeded: false }
        }

        fn next(&mut self) -> f32 {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // 24 random bits, centred in their interval: never 0 or 1.
            ((z >> 40) as f32 + 0.5) / (1u64 << 24) as f32
        }

        fn uniform(&mut self, shape: (usize, usize), dev: &Device) -> Result<Tensor> {
            if dev.is_cpu() {
                let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| self.next()).collect();
                return Tensor::from_vec(v, shape, dev).map_err(ce);
            }
            if !self.seeded {
                dev.set_seed(self.state).map_err(ce)?;
                self.seeded = true;
            }
            // Kept away from 0, where −ln(−ln u) has no value.
            Tensor::rand(1e-7f32, 1.0f32, shape, dev).map_err(ce)
        }
    }

    /// The weight `w` (.., cols) on the grid of `ty`, exactly: each row quantized and
    /// dequantized by the quantizer's own code, so it is what the quantized file will hold
    /// (the quantizer maps a row already on its grid to itself, importance weights or not:
    /// tested). Computed on the host, once an optimizer step (`Student::fake`).
    pub fn fake_quant(w: &Tensor, ty: GgmlType) -> Result<Tensor> {
        use rayon::prelude::*;
        let dims = w.dims().to_vec();
        let cols = dims.last().copied().unwrap_or(0);
        let bytes = ty.row_bytes(cols).filter(|_| cols > 0 && ty.is_quantized()).ok_or_else(|| {
            CompressError::BadOption(format!("--qat: rows of {cols} are not a whole number of {ty} blocks"))
        })?;
        // On the host: the quantizer's own code (the same as `quantize`'s, rows in parallel).
        let v: Vec<f32> = w.to_dtype(DType::F32).and_then(|x| x.flatten_all()).and_then(|x| x.to_vec1()).map_err(ce)?;
        let mut out = vec![0f32; v.len()];
        out.par_chunks_mut(cols).zip(v.par_chunks(cols)).for_each(|(o, row)| {
            let mut q = vec![0u8; bytes];
            pith_kernels::quantize_row(ty, row, &mut q);
            pith_kernels::dequantize_row(ty, &q, o);
        });
        Tensor::from_vec(out, dims, w.device()).and_then(|q| q.to_dtype(w.dtype())).map_err(ce)
    }

    /// `PITH_DISTILL_UNFUSED=1`: attention's softmax, RoPE, RMSNorm and SwiGLU as candle's own
    /// element-wise ops instead of [`crate::fused`]'s kernels (to measure the difference, or to
    /// rule the kernels out).
    fn unfused() -> bool {
        unfused_flag().load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the loss runs as one fused op (off when the GPU self-check finds it disagreeing).
    static FUSED_LOSS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    /// Whether the embedding lookup's gradient is [`crate::fused::embedding_grad`] (off with
    /// `PITH_DISTILL_UNFUSED=1`, or when the GPU self-check finds it disagreeing with candle's).
    static FUSED_EMBED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    /// Whether RoPE's backward in the hand-written layer backward also transposes from
    /// attention's heads-first layout ([`crate::fused::grad::rope_t`]; off when the GPU
    /// self-check finds it differing from the transpose then [`crate::fused::grad::rope`]).
    static ROPE_T: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    /// Whether the fused loss of bf16 logits writes its gradient in bf16
    /// ([`crate::fused::kd_loss_grad_as`]; off when the GPU self-check finds it differing from
    /// the f32 gradient rounded).
    static HALF_LOSS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    /// Whether AdamW runs as [`crate::fused::adamw`] (off with `PITH_DISTILL_UNFUSED=1`, or when
    /// the GPU self-check finds it disagreeing with candle's ops).
    static FUSED_ADAM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    /// Whether the layers' backward passes are written out by hand (default; off with
    /// `PITH_DISTILL_AUTOGRAD=1`, or when the GPU self-check finds them disagreeing with autograd).
    fn manual_on() -> bool {
        manual_flag().load(std::sync::atomic::Ordering::Relaxed)
    }

    fn manual_flag() -> &'static std::sync::atomic::AtomicBool {
        static ON: std::sync::OnceLock<std::sync::atomic::AtomicBool> = std::sync::OnceLock::new();
        ON.get_or_init(|| {
            std::sync::atomic::AtomicBool::new(std::env::var_os("PITH_DISTILL_AUTOGRAD").is_none_or(|v| v == "0"))
        })
    }

    fn unfused_flag() -> &'static std::sync::atomic::AtomicBool {
        static ON: std::sync::OnceLock<std::sync::atomic::AtomicBool> = std::sync::OnceLock::new();
        ON.get_or_init(|| {
            std::sync::atomic::AtomicBool::new(std::env::var_os("PITH_DISTILL_UNFUSED").is_some_and(|v| v != "0"))
        })
    }

    /// log-softmax over the last dimension.
    fn log_softmax(x: &Tensor) -> Result<Tensor> {
        crate::fused::plain::log_softmax(x).map_err(ce)
    }

    /// The distillation loss, averaged over positions: `alpha·CE + (1 − alpha)·T²·KL(p_T ‖ q_T)`.
    /// `student`, `teacher`: (T, V) logits; `labels`: the next token of each position.
    pub fn loss(student: &Tensor, teacher: &Tensor, labels: &[u32], alpha: f64, temp: f64) -> Result<Tensor> {
        // Half-precision logits (a bf16 forward pass) are widened: the softmaxes run in f32.
        let wide = |x: &Tensor| -> Result<Tensor> {
            match x.dtype() {
                DType::BF16 | DType::F16 => x.to_dtype(DType::F32).map_err(ce),
                _ => Ok(x.clone()),
            }
        };
        let (student, teacher) = (&wide(student)?, &wide(teacher)?);
        let (t, _) = student.dims2().map_err(ce)?;
        let dev = student.device();
        let mut total = Tensor::zeros((), student.dtype(), dev).map_err(ce)?;
        if alpha > 0.0 {
            let ids = Tensor::from_vec(labels.to_vec(), (t, 1), dev).map_err(ce)?;
            let lp = log_softmax(student)?.gather(&ids, 1).map_err(ce)?;
            let ce_loss = lp.mean_all().and_then(|m| m.affine(-alpha, 0.0)).map_err(ce)?;
            total = (total + ce_loss).map_err(ce)?;
        }
        if alpha < 1.0 {
            let ls = log_softmax(&student.affine(1.0 / temp, 0.0).map_err(ce)?)?;
            let lt = log_softmax(&teacher.affine(1.0 / temp, 0.0).map_err(ce)?)?.detach();
            let pt = lt.exp().map_err(ce)?;
            let kl = (pt * (lt - ls).map_err(ce)?)
                .and_then(|k| k.sum_keepdim(D::Minus1))
                .and_then(|k| k.mean_all())
                .and_then(|k| k.affine((1.0 - alpha) * temp * temp, 0.0))
                .map_err(ce)?;
            total = (total + kl).map_err(ce)?;
        }
        Ok(total)
    }

    /// The loss of [`loss`] and its gradient with respect to the student's logits (T, V),
    /// computed in closed form with no autograd graph:
    /// `α/T_n·(softmax(s) − onehot(label)) + (1 − α)·T/T_n·(softmax(s/T) − softmax(t/T))` per row,
    /// `T_n` positions, by one fused op ([`crate::fused::kd_loss_grad`]: two passes over each
    /// row) — or, with `PITH_DISTILL_UNFUSED=1`, by candle's ops. The graph of the loss would keep
    /// a dozen (T, V) intermediates alive until the backward pass; this keeps one.
    pub fn loss_grad(
        student: &Tensor,
        teacher: &Tensor,
        labels: &[u32],
        alpha: f64,
        temp: f64,
    ) -> Result<(f64, Tensor)> {
        let (n, _) = student.dims2().map_err(ce)?;
        if labels.len() != n {
            return Err(CompressError::BadOption(format!("{} labels for {n} positions", labels.len())));
        }
        let ids = Tensor::from_vec(labels.to_vec(), n, student.device()).map_err(ce)?;
        let (s, t) = (student.detach(), teacher.detach());
        if unfused() || !FUSED_LOSS.load(std::sync::atomic::Ordering::Relaxed) {
            return crate::fused::plain::kd_loss_grad(&s, &t, &ids, alpha, temp).map_err(ce);
        }
        // One float type for both (a bf16 student against f32 teacher logits is widened).
        let (s, t) = if s.dtype() == t.dtype() {
            (s, t)
        } else {
            (s.to_dtype(DType::F32).map_err(ce)?, t.to_dtype(DType::F32).map_err(ce)?)
        };
        let half = HALF_LOSS.load(std::sync::atomic::Ordering::Relaxed);
        crate::fused::kd_loss_grad_as(&s, &t, &ids, alpha, temp, half).map_err(ce)
    }

    /// AdamW state per variable. The moments are written in place (`Var::set`), like the
    /// weights: nothing that lives from one step to the next is allocated anew each step. On a
    /// GPU such buffers, re-allocated between a step's transient ones, pin the stream-ordered
    /// pool's blocks, and its footprint grows step after step until an allocation fails.
    pub struct AdamW {
        pub m: BTreeMap<String, Var>,
        pub v: BTreeMap<String, Var>,
        pub step: usize,
        pub beta1: f64,
        pub beta2: f64,
        pub eps: f64,
        pub weight_decay: f64,
    }

    impl AdamW {
        pub fn new(s: &Student, weight_decay: f64) -> Result<Self> {
            let mut m = BTreeMap::new();
            let mut v = BTreeMap::new();
            for (n, var) in &s.vars {
                m.insert(n.clone(), zeros_var(var)?);
                v.insert(n.clone(), zeros_var(var)?);
            }
            Ok(AdamW { m, v, step: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay })
        }

        /// One update with the (already averaged) gradients.
        pub fn step(&mut self, s: &Student, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<()> {
            self.step += 1;
            let fused = !unfused() && FUSED_ADAM.load(std::sync::atomic::Ordering::Relaxed);
            let mut in_place = 0;
            for (n, var) in &s.vars {
                let Some(g) = grads.get(n) else { continue };
                let (mv, vv) = match (self.m.get(n), self.v.get(n)) {
                    (Some(m), Some(v)) => (m, v),
                    _ => continue,
                };
                let w = var.as_tensor();
                // Decay on matrices only (not norms).
                let wd = if w.rank() >= 2 { self.weight_decay } else { 0.0 };
                let h = crate::fused::AdamStep::new(self.beta1, self.beta2, self.step, self.eps, lr, wd);
                let f32_run = |t: &Tensor| t.dtype() == DType::F32 && t.is_contiguous();
                if fused && [w, mv.as_tensor(), vv.as_tensor(), g].into_iter().all(f32_run) {
                    // In place: three passes (launches, on a GPU) where candle's ops take ~17.
                    crate::fused::adamw(w, mv.as_tensor(), vv.as_tensor(), g, h).map_err(ce)?;
                    in_place += 1;
                } else {
                    let (new, m, v) =
                        crate::fused::plain::adamw(&w.detach(), mv.as_tensor(), vv.as_tensor(), g, h).map_err(ce)?;
                    var.set(&new.detach()).map_err(ce)?;
                    mv.set(&m.detach()).map_err(ce)?;
                    vv.set(&v.detach()).map_err(ce)?;
                }
            }
            if fused && self.step == 1 {
                // A gradient that is not a contiguous f32 run (a transposed view) takes candle's ops.
                crate::progress::note(&format!("distill: AdamW in place for {in_place} of {} tensors", s.vars.len()));
            }
            s.weights_changed();
            Ok(())
        }
    }

    /// A zero `Var` shaped like `like`, on its device.
    fn zeros_var(like: &Var) -> Result<Var> {
        Var::zeros(like.shape(), like.dtype(), like.device()).map_err(ce)
    }

    /// Gradients summed over a step's micro-batches into buffers allocated once (see `AdamW`).
    pub struct GradSum {
        sum: BTreeMap<String, Var>,
        have: std::collections::BTreeSet<String>,
    }

    impl GradSum {
        pub fn new(s: &Student) -> Result<Self> {
            let sum = s.vars.iter().map(|(n, v)| Ok((n.clone(), zeros_var(v)?))).collect::<Result<_>>()?;
            Ok(GradSum { sum, have: Default::default() })
        }

        /// Adds one micro-batch's gradients.
        pub fn add(&mut self, grads: BTreeMap<String, Tensor>) -> Result<()> {
            for (n, g) in grads {
                let Some(acc) = self.sum.get(&n) else { continue };
                if self.have.insert(n) {
                    acc.set(&g).map_err(ce)?;
                } else {
                    acc.set(&(acc.as_tensor() + g).map_err(ce)?).map_err(ce)?;
                }
            }
            Ok(())
        }

        /// The mean over `n` micro-batches of every gradient added since the last call (the
        /// means are transient; the sums start again from zero).
        pub fn take_mean(&mut self, n: usize) -> Result<BTreeMap<String, Tensor>> {
            let mut out = BTreeMap::new();
            for name in std::mem::take(&mut self.have) {
                if let Some(acc) = self.sum.get(&name) {
                    out.insert(name, acc.as_tensor().affine(1.0 / n as f64, 0.0).map_err(ce)?);
                }
            }
            Ok(out)
        }
    }

    /// Warm-up then cosine decay to 10 % of `peak`.
    pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        lr_cosine((step - warmup) as f64 / span, peak)
    }

    /// The cosine part of the schedule at progress `p` (0 → `peak`, 1 and beyond → 10 %).
    pub fn lr_cosine(p: f64, peak: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        let min = 0.1 * peak;
        min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * p).cos())
    }

    /// Gradients of every variable for one sequence, and the loss.
    pub fn grads(
        s: &Student,
        tokens: &[u32],
        teacher_logits: &Tensor,
        alpha: f64,
        temp: f64,
    ) -> Result<(f64, BTreeMap<String, Tensor>)> {
        grads_batch(s, &[tokens], teacher_logits, alpha, temp)
    }

    /// Gradients of every variable for a batch of sequences of equal length (their inputs are
    /// all but the last token, their labels all but the first), and the loss averaged over
    /// every predicted token. `teacher_logits`: (B·(len − 1), V).
    ///
    /// Activation checkpointing: the forward pass keeps only each layer's input (B·T, d), with
    /// no graph; the backward pass then runs layer by layer from the top, recomputing one layer
    /// with its graph and back-propagating the gradient of its output (`sum(y·g)` has gradient
    /// `g` in `y`) into its weights and its input. Memory is one layer's graph and the logits,
    /// not the whole model's graph (30 layers of (B, H, T, T) attention scores), for one more
    /// forward pass. The loss's gradient in the logits comes from [`loss_grad`].
    pub fn grads_batch(
        s: &Student,
        seqs: &[&[u32]],
        teacher_logits: &Tensor,
        alpha: f64,
        temp: f64,
    ) -> Result<(f64, BTreeMap<String, Tensor>)> {
        grads_batch_with(s, seqs, teacher_logits, alpha, temp, manual_on())
    }

    /// How far the hand-written layer backward's gradients are from the reference, on one batch.
    /// Where the forward pass runs in the weights' own dtype, the reference is autograd in it;
    /// under mixed precision (bf16 over f32 weights) it is autograd in the weights' dtype, and
    /// autograd in the narrow dtype is measured against it too: two bf16 computations of the
    /// same gradients differ by their roundings (on an H100, 5.8 % of the largest entry).
    #[derive(Debug, Clone, Copy)]
    pub struct ManualCheck {
        pub compute: DType,
        /// The weights' dtype (the reference's under mixed precision).
        pub wide: DType,
        /// max over the loss and every variable of max|g − g_ref| / max|g_ref|.
        pub by_hand: f64,
        /// The same for autograd in `compute`, where the reference is wider.
        pub autograd: Option<f64>,
    }

    impl ManualCheck {
        /// Within 2 % of autograd; under mixed precision no further from the wide reference
        /// than 1.5× narrow autograd's distance (or 2 %).
        pub fn passes(&self) -> bool {
            match self.autograd {
                None => self.by_hand < 0.02,
                Some(a) => self.by_hand <= (1.5 * a).max(0.02),
            }
        }
    }

    impl std::fmt::Display for ManualCheck {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let verdict = if self.passes() { "agrees with" } else { "disagrees with" };
            match self.autograd {
                None => write!(f, "{verdict} autograd here (max relative |Δ| {:.1e})", self.by_hand),
                Some(a) => write!(
                    f,
                    "in {:?} {verdict} autograd in {:?} here (max relative |Δ| {:.1e}; autograd in {:?}: {a:.1e})",
                    self.compute, self.wide, self.by_hand, self.compute
                ),
            }
        }
    }

    /// Holds the hand-written layer backward to autograd on `seqs` ([`ManualCheck`]); the
    /// student's compute dtype is the same afterwards.
    pub fn check_manual_backward(
        s: &mut Student,
        seqs: &[&[u32]],
        teacher_logits: &Tensor,
        alpha: f64,
        temp: f64,
    ) -> Result<ManualCheck> {
        let (compute, wide) = (s.compute, s.dtype);
        let reference = if compute == wide {
            None
        } else {
            s.set_compute(wide)?;
            let r = grads_batch_with(s, seqs, teacher_logits, alpha, temp, false);
            s.set_compute(compute)?;
            Some(r?)
        };
        let autograd = grads_batch_with(s, seqs, teacher_logits, alpha, temp, false)?;
        let by_hand = grads_batch_with(s, seqs, teacher_logits, alpha, temp, true)?;
        Ok(match reference {
            None => ManualCheck { compute, wide, by_hand: grads_apart(&autograd, &by_hand)?, autograd: None },
            Some(r) => ManualCheck {
                compute,
                wide,
                by_hand: grads_apart(&r, &by_hand)?,
                autograd: Some(grads_apart(&r, &autograd)?),
            },
        })
    }

    /// max over the loss and every gradient of max|b − a| / max|a|.
    fn grads_apart(a: &(f64, BTreeMap<String, Tensor>), b: &(f64, BTreeMap<String, Tensor>)) -> Result<f64> {
        let top = |t: &Tensor| crate::fused::max_abs(t).map_err(ce);
        let mut worst = (a.0 - b.0).abs() / a.0.abs().max(1e-6);
        for (n, g) in &a.1 {
            let h = b.1.get(n).ok_or_else(|| ce_msg(&format!("the gradient of {n} is missing")))?;
            let h = h.to_dtype(g.dtype()).map_err(ce)?;
            worst = worst.max(top(&(g - h).map_err(ce)?)? / top(g)?.max(1e-12));
        }
        Ok(worst)
    }

    /// [`grads_batch`], its layers' backward passes by hand (`manual`, where a layer allows it)
    /// or all through autograd: the same gradients (the tests hold them to each other).
    pub fn grads_batch_with(
        s: &Student,
        seqs: &[&[u32]],
        teacher_logits: &Tensor,
        alpha: f64,
        temp: f64,
        manual: bool,
    ) -> Result<(f64, BTreeMap<String, Tensor>)> {
        let (inputs, labels) = split_batch(seqs)?;
        let b = seqs.len();
        let (ids, t) = s.ids(&inputs, b)?;
        let mask = s.mask(t)?;
        let n_layer = s.cfg.n_layer;
        let dev = &s.device;
        prof::start(dev);
        // Forward: each layer's input, detached (no graph survives a layer); a layer whose
        // backward pass is written out keeps its activations for it unless `s.recompute`.
        let mut xs = Vec::with_capacity(n_layer + 1);
        let mut kept: Vec<Option<Kept>> = Vec::with_capacity(n_layer);
        xs.push(s.embed(&ids)?.detach());
        for l in 0..n_layer {
            if manual && !s.recompute && s.manual_backward(l) {
                let mut k = s.layer_kept(l, &xs[l], b, true)?;
                xs.push(k.y.take().ok_or_else(|| ce_msg("no layer output"))?);
                kept.push(Some(k));
            } else {
                let y = s.layer(l, &xs[l], b, &mask, None)?.detach();
                xs.push(y);
                kept.push(None);
            }
        }
        prof::mark(dev, "student forward");
        let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
        let loss_value;
        // Adds the gradients of every variable found in `gs` to `out` (the tied embedding gets
        // one from the head and one from the input).
        let add = |out: &mut BTreeMap<String, Tensor>, name: &str, g: Tensor| -> Result<()> {
            let sum = match out.remove(name) {
                Some(prev) => (prev + g).map_err(ce)?,
                None => g,
            };
            out.insert(name.to_string(), sum);
            Ok(())
        };
        let collect = |out: &mut BTreeMap<String, Tensor>, gs: &candle_core::backprop::GradStore| -> Result<()> {
            for (name, var) in &s.vars {
                if let Some(g) = gs.get(var.as_tensor()) {
                    // Detached, so that no gradient can hold its step's graph alive (the test
                    // checks that neither they nor the AdamW moments track an op).
                    add(out, name, g.detach())?;
                }
            }
            Ok(())
        };
        // The head and the loss. The output matrix's products are written out by hand: its
        // gradient is gᵀ·x̂ (V, d) and the normed input's g·W (N, d), so autograd only sees the
        // final RMSNorm — not the product Σ logits ⊙ g over (N, V) and its backward, four more
        // passes over the step's largest tensor.
        let top = Var::from_tensor(&xs[n_layer]).map_err(ce)?;
        let head_w = if s.tied { "token_embd.weight" } else { "output.weight" };
        let mut gx = if s.weights.contains_key(head_w) {
            let xb = s.rmsnorm(top.as_tensor(), "output_norm.weight")?;
            let w = s.w(head_w)?.detach(); // (V, d), compute dtype
            let xd = xb.detach();
            let logits = xd.matmul(&w.t().map_err(ce)?).map_err(ce)?;
            prof::mark(dev, "head forward");
            let (value, g) = loss_grad(&logits, teacher_logits, &labels, alpha, temp)?;
            let g = g.to_dtype(logits.dtype()).map_err(ce)?;
            drop(logits);
            prof::mark(dev, "loss");
            let dw = g.t().and_then(|gt| gt.matmul(&xd)).map_err(ce)?; // (V, d)
            let dxb = g.matmul(&w).map_err(ce)?; // (N, d)
            drop(g);
            add(&mut out, head_w, dw.to_dtype(s.var_dtype(head_w)?).map_err(ce)?)?;
            let gs = (xb * dxb).and_then(|p| total(&p)).and_then(|p| p.backward()).map_err(ce)?;
            collect(&mut out, &gs)?;
            loss_value = value;
            gs.get(top.as_tensor()).map(|g| g.detach()).ok_or_else(|| ce_msg("no gradient for the head"))?
        } else {
            // A factored head (low-rank): through autograd.
            let logits = s.head(top.as_tensor())?;
            prof::mark(dev, "head forward");
            let (value, g) = loss_grad(&logits, teacher_logits, &labels, alpha, temp)?;
            let g = g.to_dtype(logits.dtype()).map_err(ce)?;
            prof::mark(dev, "loss");
            let gs = (logits * g).and_then(|p| total(&p)).and_then(|p| p.backward()).map_err(ce)?;
            collect(&mut out, &gs)?;
            loss_value = value;
            gs.get(top.as_tensor()).map(|g| g.detach()).ok_or_else(|| ce_msg("no gradient for the head"))?
        };
        prof::mark(dev, "head backward");
        // The layers, from the top: recompute one and back-propagate `gx` through it — by hand
        // where it can ([`Student::layer_backward`]), else with its graph through autograd.
        for l in (0..n_layer).rev() {
            if manual && s.manual_backward(l) {
                xs.truncate(l + 1);
                let x = xs.pop().ok_or_else(|| ce_msg("no layer input"))?;
                let mut to = |name: &str, g: Tensor| add(&mut out, name, g);
                gx = match kept.get_mut(l).and_then(Option::take) {
                    Some(k) => s.layer_backward_kept(l, k, &gx, &mut to)?,
                    None => s.layer_backward(l, &x, &gx, b, &mut to)?,
                };
                prof::mark(dev, "collect");
                continue;
            }
            let input = Var::from_tensor(&xs[l]).map_err(ce)?;
            xs.truncate(l);
            let y = s.layer(l, input.as_tensor(), b, &mask, None)?;
            prof::mark(dev, "layer recompute");
            let gs = (y * &gx).and_then(|p| total(&p)).and_then(|p| p.backward()).map_err(ce)?;
            prof::mark(dev, "layer backward");
            collect(&mut out, &gs)?;
            gx = gs.get(input.as_tensor()).map(|g| g.detach()).ok_or_else(|| ce_msg("no gradient for a layer"))?;
            prof::mark(dev, "collect");
        }
        // The embedding lookup: its gradient is a sum of `gx`'s rows per id (the lookup goes
        // through `to_dtype` and, under QAT, a straight-through grid: both pass it unchanged).
        match s.vars.get("token_embd.weight") {
            Some(w) if !unfused() && FUSED_EMBED.load(std::sync::atomic::Ordering::Relaxed) => {
                let (vocab, _) = w.as_tensor().dims2().map_err(ce)?;
                let g = crate::fused::embedding_grad(&gx, &inputs, vocab)
                    .and_then(|g| g.to_dtype(w.as_tensor().dtype()))
                    .map_err(ce)?;
                add(&mut out, "token_embd.weight", g)?;
            }
            _ => {
                let x0 = s.embed(&ids)?;
                let gs = (x0 * &gx).and_then(|p| total(&p)).and_then(|p| p.backward()).map_err(ce)?;
                collect(&mut out, &gs)?;
            }
        }
        prof::mark(dev, "embedding backward");
        Ok((loss_value, out))
    }

    /// The inputs (every sequence without its last token) and labels (without its first) of a
    /// batch, laid end to end.
    fn split_batch(seqs: &[&[u32]]) -> Result<(Vec<u32>, Vec<u32>)> {
        let len = seqs.first().map_or(0, |s| s.len());
        if len < 2 || seqs.iter().any(|s| s.len() != len) {
            return Err(CompressError::BadOption("a batch needs sequences of one length ≥ 2".into()));
        }
        let inputs = seqs.iter().flat_map(|s| s[..len - 1].iter().copied()).collect();
        let labels = seqs.iter().flat_map(|s| s[1..].iter().copied()).collect();
        Ok((inputs, labels))
    }

    /// The teacher's logits for `tokens` (all positions), as a (T, V) tensor.
    pub fn teacher_logits(
        model: &Model<'_>,
        state: &mut State,
        pool: &Pool,
        tokens: &[u32],
        s: &Student,
    ) -> Result<Tensor> {
        state.reset();
        let l = model.forward(state, pool, tokens, Logits::From(0))?;
        Tensor::from_vec(l.to_vec(), (tokens.len(), model.config.n_vocab), &s.device)
            .and_then(|t| t.to_dtype(s.dtype))
            .map_err(ce)
    }

    /// Where the teacher runs: pith's own forward pass on the CPU (the fastest CPU path), or
    /// candle on the student's GPU, so that its logits never leave the device.
    enum Teacher<'a> {
        Pith { model: &'a Model<'a>, state: Box<State>, pool: &'a Pool },
        Device(Box<Student>),
    }

    impl Teacher<'_> {
        /// Logits (B·T, V) of the inputs of a batch (each sequence without its last token).
        fn logits(&mut self, seqs: &[&[u32]], s: &Student) -> Result<Tensor> {
            match self {
                Teacher::Pith { model, state, pool } => {
                    let parts = seqs
                        .iter()
                        .map(|q| teacher_logits(model, state, pool, &q[..q.len() - 1], s))
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&parts, 0).map_err(ce)
                }
                Teacher::Device(t) => {
                    let (inputs, _) = split_batch(seqs)?;
                    Ok(t.forward_batch(&inputs, seqs.len())?.detach())
                }
            }
        }
    }

    /// The student's weights (and optimizer state, for a checkpoint) as GGUF over `base`'s
    /// metadata and any tensors the student does not train.
    fn save(s: &Student, base: &Gguf<'_>, opt: Option<(&AdamW, f64)>, path: &Path, inputs: &[&Path]) -> Result<()> {
        let mut b = carry_metadata(base);
        b.kv("general.file_type", OwnedValue::U32(0));
        let vals = |t: &Tensor| -> Result<Vec<u8>> {
            let v: Vec<f32> =
                t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).map_err(ce)?;
            Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        let trained: Vec<&str> = s.vars.keys().map(String::as_str).collect();
        for t in &base.tensors {
            match s.vars.get(t.name) {
                // The output of a --qat run holds the grid the training saw (quantizing it
                // again gives it back); a checkpoint keeps the latent weights.
                Some(v) if opt.is_none() && s.qat.contains_key(t.name) => {
                    let q = s.fake(t.name, v.as_tensor(), s.qat[t.name])?;
                    b.tensor(t.name, &t.dims, GgmlType::F32, vals(&q)?);
                }
                Some(v) => {
                    b.tensor(t.name, &t.dims, GgmlType::F32, vals(v.as_tensor())?);
                }
                None => {
                    b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
                }
            }
        }
        if let Some((o, spent)) = opt {
            b.kv("pith.distill.step", OwnedValue::U32(o.step as u32));
            b.kv("pith.distill.seconds", OwnedValue::F32(spent as f32));
            for n in trained {
                let dims = base.tensor(n).map(|t| t.dims.clone()).unwrap_or_default();
                if let (Some(m), Some(v)) = (o.m.get(n), o.v.get(n)) {
                    b.tensor(&format!("{n}.adam_m"), &dims, GgmlType::F32, vals(m)?);
                    b.tensor(&format!("{n}.adam_v"), &dims, GgmlType::F32, vals(v)?);
                }
            }
        }
        write_gguf(&b, path, true, inputs)
    }

    /// Loads a checkpoint's weights and optimizer state into `s` / `opt`, refusing one made
    /// for another shape; returns the training seconds it had spent.
    fn resume(s: &Student, opt: &mut AdamW, path: &Path) -> Result<f64> {
        let bad = |why: String| CompressError::BadOption(format!("checkpoint {}: {why}", path.display()));
        let file = pith::file::MappedFile::open(path)?;
        let g = file.gguf()?;
        let load = |name: &str, like: &Tensor| -> Result<Tensor> {
            let t = g.tensor(name).ok_or_else(|| bad(format!("no tensor {name}")))?;
            let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
            if shape != like.dims() || t.ty != GgmlType::F32 {
                return Err(bad(format!(
                    "{name} is {shape:?} {}, the student's is {:?}: a checkpoint of another shape",
                    t.ty,
                    like.dims()
                )));
            }
            Tensor::from_vec(to_f32(t), shape, like.device()).and_then(|x| x.to_dtype(like.dtype())).map_err(ce)
        };
        let step =
            g.get_u64("pith.distill.step").map_err(pith::Error::from)?.ok_or_else(|| bad("not a checkpoint".into()))?;
        for (n, var) in &s.vars {
            let w = load(n, var.as_tensor())?;
            let m = load(&format!("{n}.adam_m"), var.as_tensor())?;
            let v = load(&format!("{n}.adam_v"), var.as_tensor())?;
            var.set(&w).map_err(ce)?;
            if let (Some(om), Some(ov)) = (opt.m.get(n), opt.v.get(n)) {
                om.set(&m).map_err(ce)?;
                ov.set(&v).map_err(ce)?;
            }
        }
        opt.step = step as usize;
        Ok(g.get_f32("pith.distill.seconds").map_err(pith::Error::from)?.unwrap_or(0.0) as f64)
    }

    /// `--synthetic`: sequences of `seq` tokens sampled from the teacher (a frozen candle copy
    /// on `dev`), each from the first `--synthetic-prompt` tokens of a training sequence picked
    /// at random.
    fn synthesize(
        a: &DistillArgs,
        g: &Gguf<'_>,
        dev: &Device,
        compute: DType,
        train: &[&[u32]],
        seq: usize,
    ) -> Result<Vec<Vec<u32>>> {
        if a.synthetic == 0 || train.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = a.synthetic_batch.unwrap_or(if dev.is_cpu() { 8 } else { 256 }).max(1);
        let n = a.synthetic.div_ceil(seq);
        let t0 = std::time::Instant::now();
        // `--sample-only --budget S`: no batch starts that would end past S seconds (at the
        // last batch's pace).
        let limit = if a.sample_only { a.budget } else { None };
        let mut last_batch = 0.0f64;
        let model = Student::frozen(g, compute, dev, seq)?;
        // Checked in `run`: 1 ≤ prompt ≤ ctx = seq − 1, so each sequence samples a token at least.
        let prompt = a.synthetic_prompt;
        let mut noise = Noise::new(a.seed);
        let mut pick = a.seed ^ 0x5EED;
        let mut out = Vec::with_capacity(n);
        let pb = crate::progress::bar(n as u64, "sample");
        while out.len() < n {
            let now = t0.elapsed().as_secs_f64();
            if limit.is_some_and(|l| now + last_batch > l) {
                break;
            }
            let prompts: Vec<Vec<u32>> = (0..batch.min(n - out.len()))
                .map(|_| {
                    pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    train[(pick >> 33) as usize % train.len()][..prompt].to_vec()
                })
                .collect();
            match model.sample(&prompts, seq, a.synthetic_temp, &mut noise) {
                Ok(s) => out.extend(s),
                // A batch too large for the device (its keys and values grow with it: 24 GB at
                // 2,048 × 512 in bf16): half as many at once, keeping what is sampled so far.
                Err(e) if batch > 1 && out_of_device_memory(&e) => {
                    batch /= 2;
                    trim_pool(dev);
                    crate::progress::note(&format!(
                        "distill: sampling ran out of device memory; {batch} sequences at once from here"
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            }
            last_batch = t0.elapsed().as_secs_f64() - now;
            pb.set_position(out.len() as u64);
        }
        pb.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        let n = out.len();
        crate::progress::note(&format!(
            "distill: sampled {} sequences of {seq} tokens from the teacher (temperature {}, {prompt}-token prompts) in {secs:.1} s ({:.0} tokens/s)",
            n,
            a.synthetic_temp,
            (n * seq) as f64 / secs.max(1e-9)
        ));
        Ok(out)
    }

    /// Mean loss over `seqs` (no gradients kept): the distillation loss and the plain CE.
    fn eval_loss(s: &Student, teacher: &mut Teacher<'_>, seqs: &[&[u32]], a: &DistillArgs) -> Result<(f64, f64)> {
        let (mut kd, mut ce_sum, mut n) = (0.0, 0.0, 0usize);
        for batch in seqs.chunks(a.batch.max(1)) {
            let tl = teacher.logits(batch, s)?;
            let (inputs, labels) = split_batch(batch)?;
            let sl = s.forward_batch(&inputs, batch.len())?.detach();
            let l = loss(&sl, &tl, &labels, a.alpha, a.temperature)?;
            let c = loss(&sl, &tl, &labels, 1.0, 1.0)?;
            let f = |t: Tensor| t.to_dtype(DType::F64).and_then(|v| v.to_scalar::<f64>()).map_err(ce);
            kd += f(l)? * batch.len() as f64;
            ce_sum += f(c)? * batch.len() as f64;
            n += batch.len();
        }
        let n = n.max(1) as f64;
        Ok((kd / n, ce_sum / n))
    }

    /// On a GPU: bytes (in use, total), after handing the stream-ordered allocator's cached
    /// free blocks back to the driver when fewer than a quarter of the bytes are free. Blocks
    /// freed during one backward pass stay in the pool, fragmented, until a trim; without it a
    /// long run can fail to allocate with most of its "used" memory idle. `None` on the CPU.
    #[cfg(feature = "cuda")]
    fn gpu_memory(dev: &Device) -> Option<(usize, usize)> {
        let Device::Cuda(d) = dev else { return None };
        let stream = d.cuda_stream();
        let ctx = stream.context();
        let (free, total) = ctx.mem_get_info().ok()?;
        if free < total / 4 {
            if !trim_pool(dev) {
                return None;
            }
            let (free, total) = ctx.mem_get_info().ok()?;
            return Some((total - free, total));
        }
        Some((total - free, total))
    }

    /// cudarc creates two CUDA events for every allocation and records them at every launch,
    /// to order work across streams; candle runs everything here on one stream (cuBLAS too),
    /// so that is host time per op (thousands of ops per micro-batch) for nothing.
    #[cfg(feature = "cuda")]
    fn no_event_tracking(dev: &Device) {
        if let Device::Cuda(d) = dev {
            // SAFETY: every tensor of this process is made and used on the device's one stream
            // (candle's default stream, which cuBLAS shares), so no allocation, read or write
            // crosses streams and the events order nothing.
            unsafe { d.disable_event_tracking() }
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn no_event_tracking(_: &Device) {}

    /// Keeps freed device memory in the stream-ordered allocator's pool across synchronizations.
    /// The default pool's release threshold is 0: every synchronization (the loss read each
    /// step, the profile's waits) hands its free blocks back to the driver, and the next
    /// step maps its tens of GiB of activations and logits afresh. [`gpu_memory`] still trims
    /// the pool when it runs short. `PITH_DISTILL_POOL_RELEASE=1` keeps the driver's default
    /// (for an A/B).
    #[cfg(feature = "cuda")]
    fn keep_pool(dev: &Device) {
        use candle_core::cuda::cudarc::driver::{result, sys};
        if std::env::var("PITH_DISTILL_POOL_RELEASE").is_ok_and(|v| v.trim() == "1") {
            return;
        }
        let Device::Cuda(d) = dev else { return };
        let ctx = d.cuda_stream().context().clone();
        let mut keep: u64 = u64::MAX;
        // SAFETY: the device handle comes from the live context and its default pool lives as
        // long as the device; the release threshold's value is a cuuint64_t, which `keep` is.
        let r = unsafe {
            result::device::get_default_mem_pool(ctx.cu_device()).and_then(|pool| {
                result::mem_pool::set_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut keep as *mut u64).cast(),
                )
            })
        };
        if let Err(e) = r {
            crate::progress::note(&format!("distill: the GPU memory pool keeps its default release threshold ({e})"));
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn keep_pool(_: &Device) {}

    /// Whether `e` is a device allocation failure (candle passes the driver's error on as text).
    fn out_of_device_memory(e: &CompressError) -> bool {
        let m = e.to_string();
        m.contains("CUDA_ERROR_OUT_OF_MEMORY") || m.contains("cudaErrorMemoryAllocation")
    }

    /// Waits for the device and hands every free block of its memory pool back to the driver;
    /// false on the CPU (nothing to trim) or when the driver refuses.
    #[cfg(feature = "cuda")]
    fn trim_pool(dev: &Device) -> bool {
        use candle_core::cuda::cudarc::driver::result;
        let Device::Cuda(d) = dev else { return false };
        let stream = d.cuda_stream();
        let ctx = stream.context();
        if stream.synchronize().is_err() {
            return false;
        }
        // SAFETY: the device handle comes from the live context, and its default pool lives as
        // long as the device; trimming only releases blocks no allocation holds.
        unsafe {
            result::device::get_default_mem_pool(ctx.cu_device())
                .and_then(|pool| result::mem_pool::trim_to(pool, 0))
                .is_ok()
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn trim_pool(_: &Device) -> bool {
        false
    }

    #[cfg(not(feature = "cuda"))]
    fn gpu_memory(_: &Device) -> Option<(usize, usize)> {
        None
    }

    fn device(name: &str) -> Result<Device> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "cuda" => {
                let d = Device::new_cuda(0).map_err(|e| {
                    CompressError::BadOption(format!(
                        "--device cuda: {e} (a build with the `cuda` feature runs on GPUs)"
                    ))
                })?;
                no_event_tracking(&d);
                keep_pool(&d);
                Ok(d)
            }
            other => Err(CompressError::BadOption(format!("--device {other}: cpu or cuda"))),
        }
    }

    /// Runs `pith-compress distill`.
    pub fn run(a: &DistillArgs) -> Result<()> {
        if a.ctx < 2 || a.accum == 0 || a.tokens == 0 || a.batch == 0 {
            return Err(CompressError::BadOption("--ctx ≥ 2, --accum ≥ 1, --batch ≥ 1 and --tokens ≥ 1".into()));
        }
        if a.budget.is_some_and(|b| b.is_nan() || b <= 0.0) {
            return Err(CompressError::BadOption("--budget: seconds > 0".into()));
        }
        if a.file_repeat == 0 || a.file_repeat > a.ctx {
            return Err(CompressError::BadOption(format!("--file-repeat: 1 to --ctx ({})", a.ctx)));
        }
        if a.synthetic_temp.is_nan() || a.synthetic_temp < 0.0 {
            return Err(CompressError::BadOption("--synthetic-temp: ≥ 0".into()));
        }
        if a.synthetic_prompt == 0 || a.synthetic_prompt > a.ctx {
            return Err(CompressError::BadOption(format!("--synthetic-prompt: 1 to --ctx ({})", a.ctx)));
        }
        if a.sample_only && (a.synthetic == 0 || a.synthetic_out.is_some() || a.resume.is_some()) {
            return Err(CompressError::BadOption(
                "--sample-only writes --synthetic N tokens (N ≥ 1) to -o: no --synthetic-out, no --resume".into(),
            ));
        }
        if !(0.0..=1.0).contains(&a.alpha) || a.temperature <= 0.0 {
            return Err(CompressError::BadOption("--alpha in [0, 1], --temperature > 0".into()));
        }
        let compute = match a.dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            other => return Err(CompressError::BadOption(format!("--dtype {other}: f32 or bf16"))),
        };
        if let Some(q) = &a.qat {
            // A bad name fails before anything loads.
            crate::quantize::Scheme::parse(q).map_err(|e| CompressError::BadOption(format!("--qat: {e}")))?;
        }
        let ckpt = a.checkpoint.clone().unwrap_or_else(|| {
            let mut p = a.output.clone().into_os_string();
            p.push(".ckpt");
            p.into()
        });
        let mut inputs: Vec<&Path> = vec![&a.teacher, &a.student];
        inputs.extend(a.files.iter().map(PathBuf::as_path));
        inputs.extend(a.train_only.iter().map(PathBuf::as_path));
        crate::output::check_output(&a.output, a.force, &inputs)?;
        if let Some(t) = &a.synthetic_out {
            crate::output::check_output(t, a.force, &inputs)?;
        }
        let dev = device(&a.device)?;
        if compute == DType::BF16 && dev.is_cpu() {
            return Err(CompressError::BadOption(
                "--dtype bf16 needs --device cuda (candle's CPU backend has no bf16 matmul)".into(),
            ));
        }
        if dev.is_cuda() {
            // f32 matmuls on the tensor cores (TF32 inputs, f32 accumulation).
            candle_core::cuda::set_gemm_reduced_precision_f32(true);
            // The fused kernels are checked against candle's own ops on this device before
            // they train anything; on a mismatch the run goes on without them.
            if !unfused() {
                use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
                type Check = fn(&candle_core::Device) -> candle_core::Result<f32>;
                // Each self-check: its bound, what it covers, what that is held to, how the run
                // goes on without it, and the switch a failure sets (the first turns them all off).
                let checks: [(Check, f32, &str, &str, &str, &AtomicBool, bool); 6] = [
                    (
                        crate::fused::check,
                        1e-3,
                        "fused kernels",
                        "candle's ops",
                        "training without them",
                        unfused_flag(),
                        true,
                    ),
                    (
                        crate::fused::check_kd,
                        1e-4,
                        "the fused loss",
                        "candle's ops",
                        "computing it with them",
                        &FUSED_LOSS,
                        false,
                    ),
                    (
                        crate::fused::check_kd_half,
                        1e-9,
                        "the fused loss's bf16 gradient",
                        "its f32 one rounded",
                        "writing it in f32",
                        &HALF_LOSS,
                        false,
                    ),
                    (
                        crate::fused::check_rope_t,
                        1e-6,
                        "RoPE's transposing backward",
                        "the transpose and RoPE",
                        "two passes",
                        &ROPE_T,
                        false,
                    ),
                    (
                        crate::fused::check_embedding,
                        1e-5,
                        "the fused embedding gradient",
                        "candle's ops",
                        "computing it with them",
                        &FUSED_EMBED,
                        false,
                    ),
                    (
                        crate::fused::check_adamw,
                        1e-5,
                        "the fused optimizer",
                        "candle's ops",
                        "stepping with them",
                        &FUSED_ADAM,
                        false,
                    ),
                ];
                for (check, bound, what, against, without, flag, set) in checks {
                    match check(&dev) {
                        Ok(d) if d < bound => eprintln!("distill: {what} agrees with {against} here (|Δ| {d:.1e})"),
                        r => {
                            eprintln!("distill: {what} disagrees with {against} here ({r:?}): {without}");
                            flag.store(set, Relaxed);
                        }
                    }
                }
            }
        }
        let tfile = pith::file::MappedFile::open(&a.teacher)?;
        let teacher_engine = pith::engine::Engine::load(&tfile, a.threads)?;
        crate::prune::check_llama(&teacher_engine.gguf, "teacher")?;
        let sfile = pith::file::MappedFile::open(&a.student)?;
        let sg = sfile.gguf()?;
        let mut student = Student::from_gguf(&sg, DType::F32, &dev, a.ctx)?;
        student.set_compute(compute)?;
        if a.qat.is_some() && student.factored() {
            return Err(CompressError::BadOption(
                "--qat: the student is factored (a low-rank file); quantization-aware training needs dense weights (lowrank --merge)".into(),
            ));
        }
        if let Some(q) = &a.qat {
            student.set_qat(&sg, q)?;
        }
        student.recompute = match a.recompute {
            super::Recompute::Yes => true,
            super::Recompute::No => false,
            super::Recompute::Auto => dev.is_cpu(),
        };
        check_vocab(&teacher_engine.gguf, &sg, teacher_engine.model.config.n_vocab, student.cfg.n_vocab)?;
        // Text → tokens (the teacher's tokenizer, which the student shares).
        let mut tokens = Vec::new();
        for f in &a.files {
            let text = crate::imatrix::read_calibration(f)?;
            tokens.extend(teacher_engine.tokenizer.encode(&text, false)?);
        }
        let seq = a.ctx + 1;
        let n_seq = tokens.len() / seq;
        if n_seq < a.val_seqs + 1 {
            return Err(CompressError::Calibration {
                path: a.files[0].clone(),
                why: format!("{} tokens: fewer than {} sequences of {seq}", tokens.len(), a.val_seqs + 1),
            });
        }
        let bos = if teacher_engine.tokenizer.add_bos() { teacher_engine.tokenizer.bos() } else { None };
        let (file_train, file_val) = split_files(&tokens, seq, a.val_seqs, a.file_repeat, bos);
        let mut train: Vec<&[u32]> = file_train.iter().map(Vec::as_slice).collect();
        let val: Vec<&[u32]> = file_val.iter().map(Vec::as_slice).collect();
        let syn = synthesize(a, &teacher_engine.gguf, &dev, compute, &train, seq)?;
        // The sample as text, one sequence per paragraph (`--sample-only`, `--synthetic-out`).
        let syn_text = || {
            let text: Vec<String> = syn.iter().map(|q| teacher_engine.tokenizer.decode(q, false)).collect();
            text.join("\n\n")
        };
        if a.sample_only {
            crate::output::write_file(&a.output, a.force, &inputs, syn_text().as_bytes())?;
            crate::progress::note(&format!("distill: wrote {} ({} sequences)", a.output.display(), syn.len()));
            return Ok(());
        }
        // Training-only text (a shared `--sample-only` sample): its own sequences, never held out.
        let mut extra = Vec::new();
        for f in &a.train_only {
            let text = crate::imatrix::read_calibration(f)?;
            let t = teacher_engine.tokenizer.encode(&text, false)?;
            if t.len() < seq {
                return Err(CompressError::Calibration {
                    path: f.clone(),
                    why: format!("{} tokens: not one sequence of {seq}", t.len()),
                });
            }
            // Every cut of the text, none held out, once.
            extra.extend(split_files(&t, seq, 0, 1, bos).0);
        }
        train.extend(extra.iter().map(Vec::as_slice));
        if let Some(path) = &a.synthetic_out {
            std::fs::write(path, syn_text()).map_err(|e| CompressError::Io { path: path.clone(), source: e })?;
        }
        train.extend(syn.iter().map(Vec::as_slice));
        let per_step = a.batch * a.accum;
        let steps = a.tokens.div_ceil(a.ctx * per_step);
        let mut opt = AdamW::new(&student, a.weight_decay)?;
        // Training seconds spent before this process (a resumed run's), for --budget.
        let mut spent0 = 0.0;
        if let Some(r) = &a.resume {
            spent0 = resume(&student, &mut opt, r)?;
            student.weights_changed();
            crate::progress::note(&format!(
                "distill: resumed from {} at step {} ({spent0:.0} s trained)",
                r.display(),
                opt.step
            ));
        }
        let mut teacher = if dev.is_cpu() {
            let mut state = State::new(&teacher_engine.model, a.ctx, a.ctx)?;
            state.set_precision(Precision::F32);
            Teacher::Pith { model: &teacher_engine.model, state: Box::new(state), pool: &teacher_engine.pool }
        } else {
            Teacher::Device(Box::new(Student::frozen(&teacher_engine.gguf, compute, &dev, a.ctx)?))
        };
        let plan = match a.budget {
            Some(b) => format!("{b:.0} s of training in steps of {} × {} sequences", a.accum, a.batch),
            None => format!(
                "{steps} steps of {} × {} sequences ({} tokens, {:.1} epochs)",
                a.accum,
                a.batch,
                steps * per_step * a.ctx,
                (steps * per_step) as f64 / train.len() as f64
            ),
        };
        crate::progress::note(&format!(
            "distill: {} train / {} held-out sequences of {} ({} tokens of text); {plan}; α {} T {}; {} {}{}",
            train.len(),
            val.len(),
            a.ctx,
            tokens.len(),
            a.alpha,
            a.temperature,
            a.device,
            a.dtype,
            a.qat
                .as_ref()
                .map(|q| format!("; fake quantization {q} ({} matrices)", student.qat.len()))
                .unwrap_or_default()
        ));
        // On a GPU the hand-written layer backward is held to autograd's on two held-out
        // sequences before the run; a mismatch or an error turns it off (as the fused ops).
        if !dev.is_cpu() && !unfused() && manual_on() {
            let probe = &val[..val.len().min(2)];
            let check = teacher
                .logits(probe, &student)
                .and_then(|tl| check_manual_backward(&mut student, probe, &tl, a.alpha, a.temperature));
            match check {
                Ok(c) if c.passes() => crate::progress::note(&format!("distill: the hand-written layer backward {c}")),
                r => {
                    let why = match r {
                        Ok(c) => c.to_string(),
                        Err(e) => format!("failed its check ({e})"),
                    };
                    crate::progress::note(&format!(
                        "distill: the hand-written layer backward {why}: training through autograd"
                    ));
                    manual_flag().store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let (v0, c0) = eval_loss(&student, &mut teacher, &val, a)?;
        crate::progress::note(&format!(
            "distill: step {} validation loss {v0:.4} (CE {c0:.4}, PPL {:.2})",
            opt.step,
            c0.exp()
        ));
        // The bar counts steps, or under --budget the seconds of the budget.
        let pb = match a.budget {
            Some(b) => crate::progress::bar(b.ceil() as u64, "distill"),
            None => crate::progress::bar(steps as u64, "distill"),
        };
        let position = |step: usize, spent: f64| if a.budget.is_some() { spent as u64 } else { step as u64 };
        let of_steps = if a.budget.is_some() { String::new() } else { format!("/{steps}") };
        pb.set_position(position(opt.step, spent0));
        let t0 = std::time::Instant::now();
        let mut trained_tokens = 0usize;
        let mut perm_cache: (usize, Vec<usize>) = (usize::MAX, Vec::new());
        let mut next = opt.step * per_step;
        let mut gpu: Option<(usize, usize)> = None;
        let mut sum = GradSum::new(&student)?;
        while opt.step < steps {
            prof::set_step(opt.step + 1, steps);
            let mut lsum = 0.0;
            for _ in 0..a.accum {
                let mut batch = Vec::with_capacity(a.batch);
                for _ in 0..a.batch {
                    let e = next / train.len();
                    if perm_cache.0 != e {
                        perm_cache = (e, shuffled(train.len(), e as u64 + 1));
                    }
                    batch.push(train[perm_cache.1[next % train.len()]]);
                    next += 1;
                }
                prof::start(&dev);
                // A GPU allocation that fails (the pool's cached blocks, fragmented, cannot
                // serve it and the device has no room to grow it) is retried once after the
                // pool hands its free blocks back; nothing of the step is kept from the try.
                let mut tries = 0;
                let (l, g) = loop {
                    let r = teacher.logits(&batch, &student).and_then(|tl| {
                        prof::mark(&dev, "teacher");
                        grads_batch(&student, &batch, &tl, a.alpha, a.temperature)
                    });
                    match r {
                        Err(e) if tries == 0 && out_of_device_memory(&e) && trim_pool(&dev) => {
                            crate::progress::note(&format!(
                                "distill: step {}: GPU out of memory ({e}); the memory pool was trimmed and the micro-batch runs again",
                                opt.step + 1
                            ));
                            tries += 1;
                        }
                        r => break r?,
                    }
                };
                lsum += l;
                sum.add(g)?;
                prof::mark(&dev, "gradient sum");
                trained_tokens += a.ctx * a.batch;
                gpu = gpu_memory(&dev).or(gpu);
            }
            let mean = sum.take_mean(a.accum)?;
            // Under --budget the schedule's progress is the larger of the steps' and the time's.
            let lr = match a.budget {
                Some(b) if opt.step >= a.warmup => {
                    let by_steps = (opt.step - a.warmup) as f64 / steps.saturating_sub(a.warmup).max(1) as f64;
                    lr_cosine(by_steps.max((spent0 + t0.elapsed().as_secs_f64()) / b), a.lr)
                }
                _ => lr_at(opt.step, steps, a.warmup, a.lr),
            };
            prof::start(&dev);
            opt.step(&student, &mean, lr)?;
            drop(mean);
            prof::mark(&dev, "optimizer");
            let el = t0.elapsed().as_secs_f64();
            let budget_spent = a.budget.is_some_and(|b| spent0 + el >= b);
            pb.set_position(position(opt.step, spent0 + el));
            let msg = format!(
                "loss {:.4} lr {lr:.2e} {:.0} tok/s{}",
                lsum / a.accum as f64,
                trained_tokens as f64 / el.max(1e-9),
                gpu.map(|(u, t)| format!(" GPU {:.1}/{:.0} GiB", u as f64 / 1073741824.0, t as f64 / 1073741824.0))
                    .unwrap_or_default()
            );
            pb.set_message(msg.clone());
            let val_now = a.val_every > 0 && opt.step % a.val_every == 0;
            if pb.is_hidden() && (val_now || opt.step == 1 || opt.step % 10 == 0) {
                crate::progress::note(&format!("distill: step {}{of_steps}: {msg}", opt.step));
            }
            if prof::report_after(opt.step, steps) {
                crate::progress::note(&format!("distill: profile of steps {}: {}", prof::span(steps), prof::take()));
            }
            if val_now {
                let (v, c) = eval_loss(&student, &mut teacher, &val, a)?;
                let line = format!("step {}: validation loss {v:.4} (CE {c:.4}, PPL {:.2})", opt.step, c.exp());
                // A hidden bar (stderr not a terminal) swallows println: print the line itself.
                if pb.is_hidden() {
                    crate::progress::note(&format!("distill: {line}"));
                } else {
                    pb.println(line);
                }
            }
            let out_of_time = a.time_limit.is_some_and(|lim| el >= lim);
            if budget_spent {
                break;
            }
            if opt.step < steps && ((a.checkpoint_every > 0 && opt.step % a.checkpoint_every == 0) || out_of_time) {
                save(&student, &sg, Some((&opt, spent0 + el)), &ckpt, &inputs)?;
            }
            if out_of_time && opt.step < steps {
                pb.finish_and_clear();
                crate::progress::note(&format!(
                    "distill: --time-limit reached at step {}{of_steps} ({trained_tokens} tokens, {:.0} tok/s); checkpoint {}: continue with the same command and --resume {}",
                    opt.step,
                    trained_tokens as f64 / el.max(1e-9),
                    ckpt.display(),
                    ckpt.display()
                ));
                return Ok(());
            }
        }
        pb.finish_and_clear();
        let (v, c) = eval_loss(&student, &mut teacher, &val, a)?;
        let el = t0.elapsed().as_secs_f64();
        crate::progress::note(&format!(
            "distill: {trained_tokens} tokens in {el:.0} s ({:.0} tok/s); validation loss {v0:.4} → {v:.4} (CE {c:.4}, PPL {:.2})",
            trained_tokens as f64 / el.max(1e-9),
            c.exp()
        ));
        // Passes over the training sequences: a small corpus repeated many times stops teaching
        // (12-07: 1.41M tokens of text × 4 offsets trained 6.7 times over on a GPU kept its
        // held-out loss at 0.386 for the last fifth of the run while the training loss fell).
        let epochs = (opt.step * per_step) as f64 / train.len().max(1) as f64;
        crate::progress::note(&format!(
            "distill: trained {} steps, {} tokens in all ({epochs:.1} passes over the {} training sequences)",
            opt.step,
            opt.step * per_step * a.ctx,
            train.len()
        ));
        if epochs > 3.0 {
            crate::progress::note(&format!(
                "distill: warning: {epochs:.1} passes over the same text; more text (--synthetic N, more -f files) \
                 teaches more per step than repeating it"
            ));
        }
        // Under --qat the written weights are on the grid the training saw.
        save(&student, &sg, None, &a.output, &inputs)?;
        crate::progress::note(&format!("distill: → {}", a.output.display()));
        Ok(())
    }

    /// A fixed pseudo-random permutation of `0..n` for epoch `seed` (SplitMix64, Fisher–Yates).
    fn shuffled(n: usize, seed: u64) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for i in (1..n).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }

    /// The `-f` files' tokens as training and held-out sequences of `seq`: the held-out ones
    /// every k-th cut of the text (so the validation loss covers every file), and the training
    /// ones the other cuts, `repeat` times, copy k cut from offset k·seq/repeat and without any
    /// sequence that overlaps a held-out one. Each sequence's first token becomes `bos` where the
    /// tokenizer adds one.
    pub(crate) fn split_files(
        tokens: &[u32],
        seq: usize,
        val_seqs: usize,
        repeat: usize,
        bos: Option<u32>,
    ) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let n_seq = tokens.len() / seq;
        let stride = (n_seq / val_seqs.max(1)).max(1);
        let held = |i: usize| val_seqs > 0 && i % stride == stride - 1 && i / stride < val_seqs;
        let take = |start: usize| {
            let mut s = tokens[start..start + seq].to_vec();
            if let Some(b) = bos {
                s[0] = b;
            }
            s
        };
        let val: Vec<Vec<u32>> = (0..n_seq).filter(|&i| held(i)).map(|i| take(i * seq)).collect();
        let mut train = Vec::new();
        for k in 0..repeat.max(1) {
            let offset = k * seq / repeat.max(1);
            let mut start = offset;
            while start + seq <= tokens.len() {
                // Held-out cuts [i·seq, (i+1)·seq) that this one [start, start+seq) touches.
                let (first, last) = (start / seq, (start + seq).div_ceil(seq) - 1);
                if !(first..=last).any(held) {
                    train.push(take(start));
                }
                start += seq;
            }
        }
        (train, val)
    }

    /// The student must predict over the teacher's vocabulary.
    pub fn check_vocab(t: &Gguf<'_>, s: &Gguf<'_>, nt: usize, ns: usize) -> Result<()> {
        let toks = |g: &Gguf<'_>| -> Option<Vec<String>> {
            g.get_array("tokenizer.ggml.tokens").ok().flatten()?.strings().map(|i| i.map(String::from).collect())
        };
        if nt != ns || toks(t) != toks(s) {
            return Err(CompressError::BadOption(format!(
                "the student's vocabulary ({ns} tokens) differs from the teacher's ({nt}): distillation compares their distributions token by token"
            )));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::split_files;

        #[test]
        fn file_repeat_cuts_the_text_at_other_offsets_and_never_into_held_out_text() {
            let tokens: Vec<u32> = (0..10_000).collect();
            let (seq, val_seqs) = (100, 4);
            let (once, val) = split_files(&tokens, seq, val_seqs, 1, None);
            // repeat 1 is the plain split: every cut of the text, held-out or training.
            assert_eq!(val.len(), val_seqs);
            assert_eq!(once.len() + val.len(), tokens.len() / seq);
            let held: Vec<(u32, u32)> = val.iter().map(|v| (v[0], v[seq - 1])).collect();
            // No held-out text (the `--train-only` files): every cut, in order.
            let (all, none) = split_files(&tokens, seq, 0, 1, Some(7));
            assert!(none.is_empty());
            let cuts: Vec<Vec<u32>> = tokens.chunks_exact(seq).map(|c| [&[7], &c[1..]].concat()).collect();
            assert_eq!(all, cuts);
            let (four, val4) = split_files(&tokens, seq, val_seqs, 4, Some(7));
            assert_eq!(val4.len(), val_seqs);
            assert!(val4.iter().all(|v| v[0] == 7 && v.len() == seq));
            // Copies at offsets 0, 25, 50, 75: a shifted copy has 99 cuts, less the two that
            // straddle each held-out sequence (24, 49, 74) and the one that overlaps the last (99).
            assert_eq!(four.len(), once.len() + 3 * (99 - 7));
            let mut starts: Vec<u32> = Vec::new();
            for s in &four {
                assert_eq!(s.len(), seq);
                assert_eq!(s[0], 7);
                let (a, b) = (s[1] - 1, s[seq - 1]);
                assert_eq!(b - a, seq as u32 - 1, "a sequence is contiguous text");
                assert!(held.iter().all(|&(h0, h1)| b < h0 || a > h1), "[{a}, {b}] overlaps held-out text");
                starts.push(a % seq as u32);
            }
            for off in [0, 25, 50, 75] {
                assert!(starts.contains(&off), "no copy at offset {off}");
            }
        }
    }
}
