//! Fused training ops for `distill`, each a candle custom op with a CPU forward, a CUDA forward
//! (our kernels, compiled by NVRTC on first use) and a closed-form backward.
//!
//! Why: candle builds attention's softmax from a dozen element-wise kernels (scale, mask add,
//! max, subtract, exp, sum, divide — and their backward), each a full pass over the (B, H, T, T)
//! scores: 150 MB per pass per layer at batch 16 × 512. One kernel reads the scores once and
//! writes the probabilities once; its backward reads the probabilities and their gradient once.
//!
//! - [`causal_softmax`]: `softmax(scale · s + causal mask)` over the last dimension of scores
//!   (.., T, P + T) whose query `i` (row `i mod T`) sees keys `0..=P + i`; masked entries are 0.
//!   Backward: `ds = scale · y ⊙ (dy − Σ_j dy_j y_j)`.
//!
//! - [`rope`]: rotary embedding of (B, T, H, hd) by (T, hd/2) cos/sin tables, pairs (2i, 2i+1)
//!   rotated; backward: the rotation by −θ.
//! - [`rms_norm`]: `x / sqrt(mean(x²) + eps) · g` per row; backward in closed form
//!   (`dx = r·dy⊙g − x·r³/n·Σ dy⊙g⊙x`, `dg = Σ_rows dy⊙x·r`).
//! - [`swiglu`]: `silu(a) ⊙ b` (the FFN's gate); backward `da = dy⊙b⊙σ(a)(1 + a(1 − σ(a)))`,
//!   `db = dy⊙silu(a)`.
//!
//! - [`kd_loss_grad`]: the distillation loss `α·CE + (1 − α)·T²·KL(p_T ‖ q_T)` of student and
//!   teacher logits (N, V) and its gradient in the student's logits, in closed form (no graph):
//!   two passes over each row (online max and sum of exponentials, then the gradient) where
//!   candle's composition makes about forty over (N, V) — 3.2 GB each at batch 32 × 512.
//!
//! Every kernel computes in f32 (bf16 in and out are widened and rounded to nearest even).
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `softmax(scale · s + causal mask)` over the last dimension of the scores `s` (.., T, P + T),
/// `p` = P cached positions before the T queries. Differentiable (closed-form backward).
pub fn causal_softmax(s: &Tensor, scale: f64, p: usize) -> Result<Tensor> {
    let t = match s.dims() {
        [.., t, _] => *t,
        d => candle_core::bail!("causal_softmax: scores of rank {} (need ≥ 2)", d.len()),
    };
    causal_softmax_grouped(s, scale, t, p)
}

/// [`causal_softmax`] of scores (.., G·T, P + T) whose row `r` of each matrix is query `r mod T`:
/// the G query heads that share a KV head, stacked (grouped-query attention with no reshape in
/// the graph, whose backward would cost two more passes over the scores).
pub fn causal_softmax_grouped(s: &Tensor, scale: f64, t: usize, p: usize) -> Result<Tensor> {
    let s = s.contiguous()?;
    let dims = s.dims();
    let (rows, n) = match dims {
        [.., r, n] => (*r, *n),
        _ => candle_core::bail!("causal_softmax: scores of rank {} (need ≥ 2)", dims.len()),
    };
    if t == 0 || n != p + t || !rows.is_multiple_of(t) {
        candle_core::bail!("causal_softmax: {n} keys for {rows} rows of {t} queries after {p} cached positions");
    }
    s.apply_op1(CausalSoftmax { scale: scale as f32, t, p })
}

struct CausalSoftmax {
    scale: f32,
    /// Queries per matrix (rows of one (T, P + T) block).
    t: usize,
    /// Cached positions before the first query.
    p: usize,
}

/// The gradient of [`CausalSoftmax`] in its input, from its output `y` and the output's
/// gradient `dy` (op2: y, dy).
struct CausalSoftmaxBwd {
    scale: f32,
}

/// The CPU ops compute in the tensors' own float type (f32, or f64 for the gradient tests).
trait Real:
    candle_core::WithDType + num_traits::Float + std::iter::Sum + std::ops::AddAssign + std::ops::MulAssign + Send + Sync
{
}
impl Real for f32 {}
impl Real for f64 {}

/// The contiguous slice of a CPU storage, or why not.
fn cpu<'a, T: Real>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op}: not contiguous")))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// Runs `f` on the CPU at the storage's float type (f32 or f64).
macro_rules! by_dtype {
    ($s:expr, $op:expr, $f:ident ( $($a:expr),* )) => {
        match $s.dtype() {
            candle_core::DType::F32 => $f::<f32>($($a),*),
            candle_core::DType::F64 => $f::<f64>($($a),*),
            other => candle_core::bail!("{} on the CPU: f32 or f64, got {other:?}", $op),
        }
    };
}

/// The float `v` in `T`.
fn re<T: Real>(v: f32) -> T {
    T::from_f64(v as f64)
}

/// One row of the causal softmax: `x`, `y` of n columns, the last visible column `lim`.
fn softmax_row<T: Real>(x: &[T], y: &mut [T], lim: usize, scale: T) {
    let m = x[..=lim].iter().fold(T::neg_infinity(), |m, &v| num_traits::Float::max(m, v * scale));
    let mut s = T::zero();
    for (o, &v) in y[..=lim].iter_mut().zip(&x[..=lim]) {
        *o = (v * scale - m).exp();
        s += *o;
    }
    let inv = T::one() / s;
    y[..=lim].iter_mut().for_each(|o| *o *= inv);
    y[lim + 1..].iter_mut().for_each(|o| *o = T::zero());
}

fn softmax_cpu<T: Real>(s: &CpuStorage, l: &Layout, op: &CausalSoftmax) -> Result<CpuStorage> {
    let x = cpu::<T>(s, l, "causal-softmax")?;
    let n = op.p + op.t;
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .enumerate()
        .for_each(|(r, (yr, xr))| softmax_row(xr, yr, (r % op.t + op.p).min(n - 1), re(op.scale)));
    Ok(T::to_cpu_storage_owned(y))
}

fn softmax_bwd_cpu<T: Real>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    scale: f32,
) -> Result<CpuStorage> {
    let (y, dy) = (cpu::<T>(s1, l1, "causal-softmax-bwd")?, cpu::<T>(s2, l2, "causal-softmax-bwd")?);
    let n = l1.shape().dims().last().copied().unwrap_or(1).max(1);
    let scale: T = re(scale);
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(n).zip(y.par_chunks(n).zip(dy.par_chunks(n))).for_each(|(o, (y, dy))| {
        let d: T = y.iter().zip(dy).map(|(&a, &b)| a * b).sum();
        for ((o, &y), &g) in o.iter_mut().zip(y).zip(dy) {
            *o = scale * y * (g - d);
        }
    });
    Ok(T::to_cpu_storage_owned(out))
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s, "causal-softmax", softmax_cpu(s, l, self))?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let n = self.p + self.t;
        let (el, rows) = (l.shape().elem_count(), l.shape().elem_count() / n);
        let out = cuda::launch(
            "causal_softmax",
            &[(s, l)],
            el,
            rows * 32,
            rows,
            n,
            &[self.t as i32, self.p as i32],
            self.scale,
        )?;
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&g, &CausalSoftmaxBwd { scale: self.scale })?))
    }
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "causal-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("causal-softmax-bwd: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        Ok((by_dtype!(s1, "causal-softmax-bwd", softmax_bwd_cpu(s1, l1, s2, l2, self.scale))?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("causal-softmax-bwd: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let n = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let (el, rows) = (l1.shape().elem_count(), l1.shape().elem_count() / n);
        let out = cuda::launch("causal_softmax_bwd", &[(s1, l1), (s2, l2)], el, rows * 32, rows, n, &[], self.scale)?;
        Ok((out, l1.shape().clone()))
    }
}

/// `x` (B, T, H, hd) rotated pair by pair ((2i, 2i+1) by the angle of its position and `i`):
/// `cos`, `sin` (T, hd/2) in `x`'s dtype. Differentiable in `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, t, h, hd) = x.dims4()?;
    if cos.dims() != [t, hd / 2] || sin.dims() != [t, hd / 2] || hd % 2 != 0 {
        candle_core::bail!("rope: x {:?} with tables {:?} / {:?}", x.dims(), cos.dims(), sin.dims());
    }
    let (x, cos, sin) = (x.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    x.apply_op3(&cos, &sin, Rope { sign: 1.0, t, h, heads_first: false })
}

#[derive(Clone, Copy)]
struct Rope {
    /// 1: rotate by θ; −1: by −θ (the backward).
    sign: f32,
    t: usize,
    h: usize,
    /// The input is (B, H, T, hd) and the output (B, T, H, hd): the transpose back from
    /// attention's layout in the same pass ([`grad::rope_t`]).
    heads_first: bool,
}

impl Rope {
    /// The output's shape for an input of `dims`.
    fn out_shape(&self, dims: &[usize]) -> Shape {
        match (self.heads_first, dims) {
            (true, &[b, h, t, hd]) => Shape::from((b, t, h, hd)),
            _ => Shape::from(dims),
        }
    }
}

fn rope_cpu<T: Real>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
    op: &Rope,
) -> Result<CpuStorage> {
    let (x, c, s) = (cpu::<T>(s1, l1, "rope")?, cpu::<T>(s2, l2, "rope")?, cpu::<T>(s3, l3, "rope")?);
    let half = c.len() / op.t;
    let sign: T = re(op.sign);
    let mut y = vec![T::zero(); x.len()];
    // One chunk per (b, t, head): hd values, hd/2 pairs.
    y.par_chunks_mut(2 * half).enumerate().for_each(|(k, y)| {
        let pos = (k / op.h) % op.t;
        // Chunk k is (b, pos, head); read from (b, head, pos) where the input is heads first.
        let src = if op.heads_first { (k / (op.h * op.t) * op.h + k % op.h) * op.t + pos } else { k };
        let x = &x[src * 2 * half..(src + 1) * 2 * half];
        for i in 0..half {
            let (cs, sn) = (c[pos * half + i], sign * s[pos * half + i]);
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            y[2 * i] = a * cs - b * sn;
            y[2 * i + 1] = a * sn + b * cs;
        }
    });
    Ok(T::to_cpu_storage_owned(y))
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s1, "rope", rope_cpu(s1, l1, s2, l2, s3, l3, self))?, self.out_shape(l1.dims())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let el = l1.shape().elem_count();
        let half = l2.shape().elem_count() / self.t;
        let out = cuda::launch(
            if self.heads_first { "rope_t" } else { "rope" },
            &[(s1, l1), (s2, l2), (s3, l3)],
            el,
            el / 2,
            el / 2,
            half,
            &[self.t as i32, self.h as i32],
            self.sign,
        )?;
        Ok((out, self.out_shape(l1.dims())))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.heads_first {
            candle_core::bail!("rope: the transposing form is a backward pass, not differentiable");
        }
        let back = Rope { sign: -self.sign, ..*self };
        Ok((Some(grad.contiguous()?.apply_op3_no_bwd(cos, sin, &back)?), None, None))
    }
}

/// RMS normalization of each row of `x` (.., n) scaled by `g` (n): `x / sqrt(mean(x²) + eps) · g`.
/// Differentiable in `x` and `g`.
pub fn rms_norm(x: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    let n = x.dims().last().copied().unwrap_or(0);
    if g.dims() != [n] {
        candle_core::bail!("rms_norm: x {:?} with a gain of {:?}", x.dims(), g.dims());
    }
    x.contiguous()?.apply_op2(&g.contiguous()?, RmsNorm { eps: eps as f32 })
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f32,
}

/// `dx` of [`RmsNorm`] (op3: x, g, dy).
struct RmsNormBwd {
    eps: f32,
}

/// Each row of n and its `r = 1 / sqrt(mean(x²) + eps)`.
fn rms_rows<T: Real>(x: &[T], n: usize, eps: f32) -> impl IndexedParallelIterator<Item = (&[T], T)> {
    let (nn, eps): (T, T) = (re(n as f32), re(eps));
    x.par_chunks(n).map(move |r| (r, T::one() / (r.iter().map(|&v| v * v).sum::<T>() / nn + eps).sqrt()))
}

fn rms_cpu<T: Real>(s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, eps: f32) -> Result<CpuStorage> {
    let (x, g) = (cpu::<T>(s1, l1, "rms-norm")?, cpu::<T>(s2, l2, "rms-norm")?);
    let n = g.len().max(1);
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(n).zip(rms_rows(x, n, eps)).for_each(|(y, (x, r))| {
        for ((o, &v), &g) in y.iter_mut().zip(x).zip(g) {
            *o = v * r * g;
        }
    });
    Ok(T::to_cpu_storage_owned(y))
}

fn rms_bwd_cpu<T: Real>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
    eps: f32,
) -> Result<CpuStorage> {
    let (x, g, dy) =
        (cpu::<T>(s1, l1, "rms-norm-bwd")?, cpu::<T>(s2, l2, "rms-norm-bwd")?, cpu::<T>(s3, l3, "rms-norm-bwd")?);
    let n = g.len().max(1);
    let nn: T = re(n as f32);
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(n).zip(rms_rows(x, n, eps).zip(dy.par_chunks(n))).for_each(|(o, ((x, r), dy))| {
        let d: T = x.iter().zip(dy).zip(g).map(|((&x, &dy), &g)| x * dy * g).sum();
        let k = r * r * r * d / nn;
        for (((o, &x), &dy), &g) in o.iter_mut().zip(x).zip(dy).zip(g) {
            *o = r * dy * g - x * k;
        }
    });
    Ok(T::to_cpu_storage_owned(dx))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s1, "rms-norm", rms_cpu(s1, l1, s2, l2, self.eps))?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (el, n) = (l1.shape().elem_count(), l2.shape().elem_count().max(1));
        let out = cuda::launch("rms_norm", &[(s1, l1), (s2, l2)], el, el / n * 32, el / n, n, &[], self.eps)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, g: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(g, &dy, &RmsNormBwd { eps: self.eps })?;
        // dg = Σ_rows dy ⊙ x̂, x̂ = the normalized rows (the forward with a unit gain).
        // One pass over x and dy writes sums over parts of 32 rows (in f32 at least: a bf16 sum
        // of thousands of rows drifts); the parts' sum is one more small pass.
        let n = g.elem_count().max(1);
        let parts = x
            .contiguous()?
            .reshape(((), n))?
            .apply_op2_no_bwd(&dy.reshape(((), n))?, &RmsDgPart { eps: self.eps, per: 32 })?;
        let dg = column_sum(&parts)?.to_dtype(g.dtype())?;
        Ok((Some(dx), Some(dg)))
    }
}

/// `dg` of [`RmsNorm`] in parts (op2: x, dy, both (rows, n)): row `b` of the (⌈rows / per⌉, n)
/// output sums `dy ⊙ x·r` over rows `b·per ..`, where `r = 1 / sqrt(mean(x²) + eps)` of each row
/// (i.e. `dy ⊙ x̂`); f32 for bf16 inputs. Replaces x̂'s forward pass, two widenings and a
/// product — five passes over (rows, n) — by one.
struct RmsDgPart {
    eps: f32,
    /// Rows a part (≤ 64: the CUDA kernel's shared array).
    per: usize,
}

fn rms_dg_cpu<T: Real>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    op: &RmsDgPart,
) -> Result<CpuStorage> {
    let (x, dy) = (cpu::<T>(s1, l1, "rms-dg")?, cpu::<T>(s2, l2, "rms-dg")?);
    let n = l1.dims().last().copied().unwrap_or(1).max(1);
    let rows = x.len() / n;
    let mut out = vec![T::zero(); rows.div_ceil(op.per) * n];
    let r: Vec<T> = rms_rows(x, n, op.eps).map(|(_, r)| r).collect();
    out.par_chunks_mut(n).enumerate().for_each(|(b, o)| {
        for i in b * op.per..((b + 1) * op.per).min(rows) {
            let (xr, gr) = (&x[i * n..(i + 1) * n], &dy[i * n..(i + 1) * n]);
            for ((o, &x), &g) in o.iter_mut().zip(xr).zip(gr) {
                *o += g * x * r[i];
            }
        }
    });
    Ok(T::to_cpu_storage_owned(out))
}

impl CustomOp2 for RmsDgPart {
    fn name(&self) -> &'static str {
        "rms-dg"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() || l1.dims().len() != 2 || self.per == 0 {
            candle_core::bail!("rms-dg: x {:?}, dy {:?}, {} rows a part", l1.dims(), l2.dims(), self.per);
        }
        let (rows, n) = (l1.dims()[0], l1.dims()[1]);
        Ok((by_dtype!(s1, "rms-dg", rms_dg_cpu(s1, l1, s2, l2, self))?, Shape::from((rows.div_ceil(self.per), n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape() != l2.shape() || l1.dims().len() != 2 {
            candle_core::bail!("rms-dg: x {:?}, dy {:?}", l1.dims(), l2.dims());
        }
        let (rows, n) = (l1.dims()[0], l1.dims()[1]);
        let out = cuda::rms_dg((s1, l1), (s2, l2), rows, n, self.per, self.eps)?;
        Ok((out, Shape::from((rows.div_ceil(self.per), n))))
    }
}

/// The gradient of an embedding lookup `w[ids]` (w: (vocab, d)) in `w`, from the lookup's
/// gradient `g` (N, d): row `v` sums the rows of `g` whose id is `v`, in f32 (f64 for f64),
/// in a fixed order (the same result on every run); rows of ids absent from `ids` are 0.
/// candle's own backward (`index_add`) runs one GPU thread per column over all N ids serially
/// and sums in the gradient's dtype (bf16 in a bf16 run, where a frequent token's thousands of
/// rows lose most of their bits); here one block per distinct id reads its rows.
pub fn embedding_grad(g: &Tensor, ids: &[u32], vocab: usize) -> Result<Tensor> {
    let (rows, d) = g.dims2()?;
    if ids.len() != rows {
        candle_core::bail!("embedding_grad: {} ids for {rows} rows", ids.len());
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        candle_core::bail!("embedding_grad: id {bad} outside the vocabulary of {vocab}");
    }
    // Positions grouped by id, in position order within an id (a stable sort): offsets (U + 1),
    // the distinct ids (U), the positions (N), as one u32 tensor.
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_by_key(|&i| ids[i as usize]);
    let (mut offs, mut uniq) = (Vec::new(), Vec::new());
    for (k, &p) in order.iter().enumerate() {
        let id = ids[p as usize];
        if uniq.last() != Some(&id) {
            uniq.push(id);
            offs.push(k as u32);
        }
    }
    offs.push(rows as u32);
    let distinct = uniq.len();
    let mut csr = offs;
    csr.extend(uniq);
    csr.extend(order);
    let csr = Tensor::from_vec(csr, 2 * distinct + 1 + rows, g.device())?;
    let g = match (g.device().is_cpu(), g.dtype()) {
        (true, candle_core::DType::BF16 | candle_core::DType::F16) => g.to_dtype(candle_core::DType::F32)?,
        _ => g.contiguous()?,
    };
    g.apply_op2_no_bwd(&csr, &EmbeddingGrad { vocab, d, rows, distinct })
}

/// [`embedding_grad`]'s op (op2: g, csr).
struct EmbeddingGrad {
    vocab: usize,
    d: usize,
    rows: usize,
    /// Distinct ids (U).
    distinct: usize,
}

fn emb_grad_cpu<T: Real>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    op: &EmbeddingGrad,
) -> Result<CpuStorage> {
    let g = cpu::<T>(s1, l1, "embedding-grad")?;
    let (a, b) =
        l2.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("embedding-grad: csr not contiguous".into()))?;
    let csr = &s2.as_slice::<u32>()?[a..b];
    let (nu, d) = (op.distinct, op.d);
    if g.len() != op.rows * d || csr.len() != 2 * nu + 1 + op.rows {
        candle_core::bail!("embedding-grad: {} gradient values, {} csr entries", g.len(), csr.len());
    }
    let (offs, rest) = csr.split_at(nu + 1);
    let (uniq, order) = rest.split_at(nu);
    let sums: Vec<Vec<T>> = (0..nu)
        .into_par_iter()
        .map(|u| {
            let mut s = vec![T::zero(); d];
            for &p in &order[offs[u] as usize..offs[u + 1] as usize] {
                for (s, &v) in s.iter_mut().zip(&g[p as usize * d..(p as usize + 1) * d]) {
                    *s += v;
                }
            }
            s
        })
        .collect();
    let mut out = vec![T::zero(); op.vocab * d];
    for (&id, s) in uniq.iter().zip(sums) {
        out[id as usize * d..(id as usize + 1) * d].copy_from_slice(&s);
    }
    Ok(T::to_cpu_storage_owned(out))
}

impl CustomOp2 for EmbeddingGrad {
    fn name(&self) -> &'static str {
        "embedding-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s1, "embedding-grad", emb_grad_cpu(s1, l1, s2, l2, self))?, Shape::from((self.vocab, self.d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::emb_grad((s1, l1), (s2, l2), self)?, Shape::from((self.vocab, self.d))))
    }
}

/// The largest difference between [`grad::rope_t`] (RoPE's backward with the transpose from
/// heads first) and the transpose followed by [`grad::rope`], on `dev`, in f32 and bf16 —
/// checked apart, so that a failure turns off the transposing form alone.
pub fn check_rope_t(dev: &candle_core::Device) -> Result<f32> {
    let (b, h, t, hd) = (2, 3, 7, 8);
    let th = Tensor::randn(0f32, 2.0, (t, hd / 2), dev)?;
    let (cos, sin) = (th.cos()?, th.sin()?);
    let d = Tensor::randn(0f32, 1.0, (b, h, t, hd), dev)?;
    let mut worst = 0f32;
    let mut types = vec![candle_core::DType::F32];
    if dev.is_cuda() {
        types.push(candle_core::DType::BF16);
    }
    for ty in types {
        let (d, cos, sin) = (d.to_dtype(ty)?, cos.to_dtype(ty)?, sin.to_dtype(ty)?);
        let fused = grad::rope_t(&d, &cos, &sin)?;
        let plain = grad::rope(&d.transpose(1, 2)?.contiguous()?, &cos, &sin)?;
        if fused.dims() != plain.dims() {
            candle_core::bail!("rope_t: {:?} against {:?}", fused.dims(), plain.dims());
        }
        let f = candle_core::DType::F32;
        worst = worst.max(diff(&fused.to_dtype(f)?, &plain.to_dtype(f)?)?);
    }
    Ok(worst)
}

/// The largest difference between [`embedding_grad`] and candle's backward of `index_select`
/// on `dev`, relative to the gradient's size — checked apart, so that a failure turns off the
/// fused embedding gradient alone. Ids repeat (a frequent token's many rows) and some of the
/// vocabulary is absent.
pub fn check_embedding(dev: &candle_core::Device) -> Result<f32> {
    let (vocab, d, rows) = (301, 72, 517);
    let ids: Vec<u32> = (0..rows as u32).map(|i| if i % 3 == 0 { 7 } else { (i * 37 + i / 5) % 250 }).collect();
    let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (vocab, d), dev)?)?;
    let idt = Tensor::from_vec(ids.clone(), rows, dev)?;
    let g = Tensor::randn(0f32, 1.0, (rows, d), dev)?;
    let mut worst = 0f32;
    // An f32 gradient and a bf16 one (a bf16 run's): the sums of its exactly widened values, in f32.
    let f32t = candle_core::DType::F32;
    for g in [g.clone(), g.to_dtype(candle_core::DType::BF16)?] {
        let plain = (w.as_tensor().index_select(&idt, 0)? * g.to_dtype(f32t)?)?.sum_all()?.backward()?;
        let plain = plain.get(w.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?.clone();
        let fused = embedding_grad(&g, &ids, vocab)?;
        if fused.dtype() != f32t {
            candle_core::bail!(
                "embedding_grad: a {:?} gradient from {:?} rows (f32 expected)",
                fused.dtype(),
                g.dtype()
            );
        }
        worst = worst.max(diff(&fused, &plain)? / max_abs(&plain)?.max(1e-30) as f32);
    }
    Ok(worst)
}

/// The sums of the columns of `p` (rows, n), an f32 matrix: `sum(0)` on the CPU; on a GPU
/// `ones(1, rows) · p` by cuBLAS in full f32 (TF32 off for the call) — candle's `sum(0)` there
/// runs one block per column over 32,768 strided elements, each read its own memory sector.
fn column_sum(p: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if p.device().is_cuda() {
        let (rows, n) = p.dims2()?;
        let ones = Tensor::ones((1, rows), p.dtype(), p.device())?;
        let tf32 = candle_core::cuda::gemm_reduced_precision_f32();
        candle_core::cuda::set_gemm_reduced_precision_f32(false);
        let s = ones.matmul(p);
        candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
        return s?.reshape(n);
    }
    p.sum(0)
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s1, "rms-norm-bwd", rms_bwd_cpu(s1, l1, s2, l2, s3, l3, self.eps))?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (el, n) = (l1.shape().elem_count(), l2.shape().elem_count().max(1));
        let out =
            cuda::launch("rms_norm_bwd", &[(s1, l1), (s2, l2), (s3, l3)], el, el / n * 32, el / n, n, &[], self.eps)?;
        Ok((out, l1.shape().clone()))
    }
}

/// `silu(a) ⊙ b`, element-wise, `a` and `b` of one shape. Differentiable in both.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!("swiglu: {:?} vs {:?}", a.dims(), b.dims());
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, SwiGlu { part: 0 })
}

/// `part` 0: `silu(a)·b`; 1: `d/da` times `dy`; 2: `d/db` times `dy` (ops 2 and 3 of the
/// backward take `dy` as a third input).
#[derive(Clone, Copy)]
struct SwiGlu {
    part: i32,
}

/// silu(a)·b (part 0), or dy·∂/∂a (1) or dy·∂/∂b (2) of it.
fn swiglu_el<T: Real>(part: i32, a: T, b: T, dy: T) -> T {
    let sig = T::one() / (T::one() + (-a).exp());
    match part {
        0 => a * sig * b,
        1 => dy * b * sig * (T::one() + a * (T::one() - sig)),
        _ => dy * a * sig,
    }
}

fn swiglu_cpu<T: Real>(part: i32, ins: &[(&CpuStorage, &Layout)]) -> Result<CpuStorage> {
    let v = ins.iter().map(|(s, l)| cpu::<T>(s, l, "swiglu")).collect::<Result<Vec<_>>>()?;
    let (a, b) = (v[0], v[1]);
    let dy = v.get(2).copied();
    let mut y = vec![T::zero(); a.len()];
    y.par_iter_mut().enumerate().for_each(|(i, o)| *o = swiglu_el(part, a[i], b[i], dy.map_or(T::zero(), |d| d[i])));
    Ok(T::to_cpu_storage_owned(y))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s1, "swiglu", swiglu_cpu(self.part, &[(s1, l1), (s2, l2)]))?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let el = l1.shape().elem_count();
        let out = cuda::launch("swiglu", &[(s1, l1), (s2, l2)], el, el, el, 0, &[], 0.0)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = grad.contiguous()?;
        let da = a.apply_op3_no_bwd(b, &dy, &SwiGlu { part: 1 })?;
        let db = a.apply_op3_no_bwd(b, &dy, &SwiGlu { part: 2 })?;
        Ok((Some(da), Some(db)))
    }
}

impl CustomOp3 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s1, "swiglu-bwd", swiglu_cpu(self.part, &[(s1, l1), (s2, l2), (s3, l3)]))?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let el = l1.shape().elem_count();
        let out = cuda::launch("swiglu_bwd", &[(s1, l1), (s2, l2), (s3, l3)], el, el, el, 0, &[self.part], 0.0)?;
        Ok((out, l1.shape().clone()))
    }
}

/// The distillation loss averaged over the N positions of `student` and `teacher` logits (N, V)
/// (one float type), `labels` (N, u32) the next token of each position:
/// `α·CE(labels) + (1 − α)·T²·KL(softmax(t/T) ‖ softmax(s/T))`, and its gradient in `student`
/// (N, V): `α/N·(softmax(s) − onehot) + (1 − α)·T/N·(softmax(s/T) − softmax(t/T))` per row, in
/// f32 on a GPU (bf16 logits too) and in the logits' type on the CPU (f32, or f64 for the tests'
/// finite differences, computed in f64). Not differentiable itself: the gradient is the output.
pub fn kd_loss_grad(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    alpha: f64,
    temp: f64,
) -> Result<(f64, Tensor)> {
    kd_loss_grad_as(student, teacher, labels, alpha, temp, false)
}

/// [`kd_loss_grad`] with `half`: for bf16 logits on a GPU the gradient comes back in bf16 —
/// the f32 kernel's values rounded to nearest even, what converting its f32 output would give —
/// so the step's largest tensor (N × V: 6.4 GB in f32 at 32,768 × 49,152) is written at half the
/// size and not converted afterwards. Elsewhere (f32 logits, the CPU) it is [`kd_loss_grad`].
pub fn kd_loss_grad_as(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    alpha: f64,
    temp: f64,
    half: bool,
) -> Result<(f64, Tensor)> {
    let (n, v) = student.dims2()?;
    if teacher.dims() != [n, v] || labels.dims() != [n] || student.dtype() != teacher.dtype() {
        candle_core::bail!(
            "kd-loss: student {:?} {:?}, teacher {:?} {:?}, labels {:?}",
            student.dims(),
            student.dtype(),
            teacher.dims(),
            teacher.dtype(),
            labels.dims()
        );
    }
    if !(0.0..=1.0).contains(&alpha) || temp.is_nan() || temp <= 0.0 || n == 0 || v == 0 {
        candle_core::bail!("kd-loss: alpha {alpha} (0 to 1), temperature {temp} (> 0) over {n} × {v} logits");
    }
    let (s, t, l) =
        (student.contiguous()?, teacher.contiguous()?, labels.to_dtype(candle_core::DType::U32)?.contiguous()?);
    if l.max(0)?.to_scalar::<u32>()? as usize >= v {
        candle_core::bail!("kd-loss: a label is not below the vocabulary size {v}");
    }
    let out = s.apply_op3_no_bwd(&t, &l, &KdLoss { alpha, temp, rows: n, n: v, half })?;
    if out.dtype() == candle_core::DType::BF16 {
        // Each row's f32 loss as two bf16 elements (low half first), after the gradient. The
        // transpose copies just those 2n elements into their own buffer on the device (bits
        // moved, not converted): `to_vec*` of a view brings its whole storage to the host, and
        // here that is the N × V gradient (3.2 GB a step at 32,768 × 49,152).
        let halves =
            out.narrow(0, half_tail(n, v), 2 * n)?.reshape((n, 2))?.t()?.contiguous()?.to_vec2::<half::bf16>()?;
        let sum: f64 = halves[0]
            .iter()
            .zip(&halves[1])
            .map(|(lo, hi)| f32::from_bits(u32::from(lo.to_bits()) | u32::from(hi.to_bits()) << 16) as f64)
            .sum();
        return Ok((sum / n as f64, out.narrow(0, 0, n * v)?.reshape((n, v))?));
    }
    let value = out.narrow(0, n * v, n)?.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()? / n as f64;
    Ok((value, out.narrow(0, 0, n * v)?.reshape((n, v))?))
}

/// The bf16-gradient loss against the f32-gradient one on `dev` (bf16 logits of 5 × 49,153: an
/// odd element count, so the losses' offset is rounded up): the gradient must be the f32 one
/// rounded and the loss the same number. 0 where no bf16 gradient is made (the CPU).
pub fn check_kd_half(dev: &candle_core::Device) -> Result<f32> {
    if dev.is_cpu() {
        return Ok(0.0);
    }
    let bf = candle_core::DType::BF16;
    let (n, v) = (5, 49153);
    let (s, t) =
        (Tensor::randn(0f32, 3.0, (n, v), dev)?.to_dtype(bf)?, Tensor::randn(0f32, 3.0, (n, v), dev)?.to_dtype(bf)?);
    let labels = Tensor::from_vec(vec![0u32, 7, 30000, 49151, 49152], n, dev)?;
    let (vh, gh) = kd_loss_grad_as(&s, &t, &labels, 0.2, 1.0, true)?;
    if gh.dtype() != bf {
        return Ok(0.0);
    }
    let (vf, gf) = kd_loss_grad_as(&s, &t, &labels, 0.2, 1.0, false)?;
    let f32t = candle_core::DType::F32;
    let d = diff(&gh.to_dtype(f32t)?, &gf.to_dtype(bf)?.to_dtype(f32t)?)?;
    Ok(d.max((vh - vf).abs() as f32))
}

/// [`kd_loss_grad`]'s kernel: its output is the gradient (rows × n) followed by each row's loss
/// (not yet averaged), in one buffer.
struct KdLoss {
    alpha: f64,
    temp: f64,
    rows: usize,
    n: usize,
    /// bf16 logits on a GPU: the gradient in bf16 (then the losses as f32 bits, see
    /// [`kd_loss_grad_as`]) instead of f32 — half the bytes written, and no conversion after.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    half: bool,
}

/// Where the rows' losses start in [`KdLoss`]'s bf16 output (an even element: f32-aligned).
fn half_tail(rows: usize, n: usize) -> usize {
    (rows * n).next_multiple_of(2)
}

/// log Σ exp over a row, in f64.
fn lse<T: Real>(x: &[T], scale: f64) -> f64 {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(candle_core::WithDType::to_f64(v) * scale));
    m + x.iter().map(|&v| (candle_core::WithDType::to_f64(v) * scale - m).exp()).sum::<f64>().ln()
}

fn kd_cpu<T: Real>(op: &KdLoss, s: &[T], t: &[T], labels: &[u32]) -> CpuStorage {
    let (n, rows) = (op.n, op.rows);
    let (alpha, temp) = (op.alpha, op.temp);
    let (ckd, cce) = ((1.0 - alpha) * temp / rows as f64, alpha / rows as f64);
    let f = |v: T| candle_core::WithDType::to_f64(v);
    let mut out = vec![T::zero(); rows * n + rows];
    let (grad, losses) = out.split_at_mut(rows * n);
    grad.par_chunks_mut(n).zip(losses.par_iter_mut()).enumerate().for_each(|(r, (g, loss))| {
        let (sr, tr, lab) = (&s[r * n..(r + 1) * n], &t[r * n..(r + 1) * n], labels[r] as usize);
        let mut l = 0.0;
        let mut acc = vec![0f64; n];
        if alpha < 1.0 {
            let (la, lb) = (lse(sr, 1.0 / temp), lse(tr, 1.0 / temp));
            let mut kl = 0.0;
            for ((o, &x), &y) in acc.iter_mut().zip(sr).zip(tr) {
                let (a, b) = (f(x) / temp, f(y) / temp);
                let pb = (b - lb).exp();
                kl += pb * (b - a);
                *o += ckd * ((a - la).exp() - pb);
            }
            l += (1.0 - alpha) * temp * temp * (kl - lb + la);
        }
        if alpha > 0.0 {
            let lc = lse(sr, 1.0);
            for (j, (o, &x)) in acc.iter_mut().zip(sr).enumerate() {
                let hot = if j == lab { 1.0 } else { 0.0 };
                *o += cce * ((f(x) - lc).exp() - hot);
            }
            l += alpha * (lc - f(sr[lab]));
        }
        g.iter_mut().zip(&acc).for_each(|(o, &v)| *o = T::from_f64(v));
        *loss = T::from_f64(l);
    });
    T::to_cpu_storage_owned(out)
}

impl CustomOp3 for KdLoss {
    fn name(&self) -> &'static str {
        "kd-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let labels = {
            let (a, b) = l3.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("kd-loss: labels".into()))?;
            &s3.as_slice::<u32>()?[a..b]
        };
        let out = match s1.dtype() {
            candle_core::DType::F32 => {
                kd_cpu(self, cpu::<f32>(s1, l1, "kd-loss")?, cpu::<f32>(s2, l2, "kd-loss")?, labels)
            }
            candle_core::DType::F64 => {
                kd_cpu(self, cpu::<f64>(s1, l1, "kd-loss")?, cpu::<f64>(s2, l2, "kd-loss")?, labels)
            }
            other => candle_core::bail!("kd-loss on the CPU: f32 or f64, got {other:?}"),
        };
        Ok((out, Shape::from(self.rows * self.n + self.rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (a, t) = (self.alpha as f32, self.temp as f32);
        let out = cuda::kd_loss(self.rows, self.n, a, t, (s1, l1), (s2, l2), (s3, l3), self.half)?;
        let el = match out.dtype() {
            candle_core::DType::BF16 => half_tail(self.rows, self.n) + 2 * self.rows,
            _ => self.rows * self.n + self.rows,
        };
        Ok((out, Shape::from(el)))
    }
}

/// The backward passes of the ops above as plain functions, for a backward pass written out by
/// hand (`distill`'s layers), which keeps candle's autograd — a zero-filled buffer and an addition
/// for every gradient it accumulates — out of the hot loop.
pub mod grad {
    use super::*;

    /// `dx` and `dg` of [`rms_norm`] at `x`, `g` for the output's gradient `dy`.
    pub fn rms_norm(x: &Tensor, g: &Tensor, dy: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let (x, g) = (x.contiguous()?, g.contiguous()?);
        let (dx, dg) = RmsNorm { eps: eps as f32 }.bwd(&x, &g, dy, dy)?;
        match (dx, dg) {
            (Some(dx), Some(dg)) => Ok((dx, dg)),
            _ => candle_core::bail!("rms_norm: no gradient"),
        }
    }

    /// `dx` of [`rope`] (the rotation by −θ of `dy` (B, T, H, hd)).
    pub fn rope(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (_, t, h, _) = dy.dims4()?;
        dy.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &Rope { sign: -1.0, t, h, heads_first: false },
        )
    }

    /// [`rope`] of `dy` given heads first, (B, H, T, hd), as attention's backward leaves it: the
    /// result is (B, T, H, hd) — the transpose and the rotation in one pass, where a transpose
    /// (a strided copy) and then the rotation took two.
    pub fn rope_t(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (_, h, t, hd) = dy.dims4()?;
        if cos.dims() != [t, hd / 2] || sin.dims() != [t, hd / 2] || hd % 2 != 0 {
            candle_core::bail!("rope_t: dy {:?} with tables {:?} / {:?}", dy.dims(), cos.dims(), sin.dims());
        }
        dy.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &Rope { sign: -1.0, t, h, heads_first: true },
        )
    }

    /// `da` and `db` of [`swiglu`].
    pub fn swiglu(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (a, b, dy) = (a.contiguous()?, b.contiguous()?, dy.contiguous()?);
        Ok((a.apply_op3_no_bwd(&b, &dy, &SwiGlu { part: 1 })?, a.apply_op3_no_bwd(&b, &dy, &SwiGlu { part: 2 })?))
    }

    /// `ds` of [`causal_softmax`] / [`causal_softmax_grouped`] from its output `y` and `dy`.
    pub fn causal_softmax(y: &Tensor, dy: &Tensor, scale: f64) -> Result<Tensor> {
        y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &CausalSoftmaxBwd { scale: scale as f32 })
    }
}

/// The same five ops composed of candle's own element-wise kernels: what `distill` runs with
/// `PITH_DISTILL_UNFUSED=1`, and the reference [`check`] holds the fused ops to.
pub mod plain {
    use candle_core::{DType, Result, Tensor, D};

    /// `softmax(scale · s + mask)` over the last dimension (the maximum subtracted as a
    /// constant); `mask` (T, P + T) is 0 where a query sees a key and −∞ elsewhere.
    pub fn causal_softmax(s: &Tensor, scale: f64, mask: &Tensor) -> Result<Tensor> {
        let z = s.affine(scale, 0.0)?.broadcast_add(mask)?;
        let e = z.broadcast_sub(&z.max_keepdim(D::Minus1)?.detach())?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }

    /// [`super::rope`]: `x` (B, T, H, hd), `cos`, `sin` (T, hd/2).
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, t, h, hd) = x.dims4()?;
        let x = x.reshape((b, t, h, hd / 2, 2))?;
        let (a, bb) = (x.narrow(4, 0, 1)?, x.narrow(4, 1, 1)?);
        let (c, s) = (cos.reshape((t, 1, hd / 2, 1))?, sin.reshape((t, 1, hd / 2, 1))?);
        let r0 = a.broadcast_mul(&c)?.broadcast_sub(&bb.broadcast_mul(&s)?)?;
        let r1 = a.broadcast_mul(&s)?.broadcast_add(&bb.broadcast_mul(&c)?)?;
        Tensor::cat(&[r0, r1], 4)?.reshape((b, t, h, hd))
    }

    /// [`super::rms_norm`].
    pub fn rms_norm(x: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
        let r = x.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&r)?.broadcast_mul(g)
    }

    /// [`super::swiglu`].
    pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.silu()? * b
    }

    /// log-softmax over the last dimension (the maximum subtracted as a constant).
    /// AdamW's update as candle's ops (the optimizer's path without the fused kernels): the new
    /// weight and moments.
    pub fn adamw(
        w: &Tensor,
        m: &Tensor,
        v: &Tensor,
        g: &Tensor,
        h: super::AdamStep,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (f, f2) = (|x: f32| x as f64, |a: f32, b: f32| (a as f64, b as f64));
        let (b1, c1) = f2(h.b1, h.one_minus_b1);
        let (b2, c2) = f2(h.b2, h.one_minus_b2);
        let m = (m.affine(b1, 0.0)? + g.affine(c1, 0.0)?)?;
        let v = (v.affine(b2, 0.0)? + g.sqr()?.affine(c2, 0.0)?)?;
        let upd = m.affine(f(h.inv_c1), 0.0)?.div(&v.affine(f(h.inv_c2), 0.0)?.sqrt()?.affine(1.0, f(h.eps))?)?;
        let w = (w.affine(f(h.decay), 0.0)? - upd.affine(f(h.lr), 0.0)?)?;
        Ok((w, m, v))
    }

    pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
        let z = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
        let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
        z.broadcast_sub(&lse)
    }

    /// The sum of every element of `x`, rows first: candle's CUDA `sum_all` reduces in a
    /// single thread block, which over a (B·T, V) tensor of logits takes longer than the
    /// step's matmuls (it halved the training speed on an H200).
    pub fn total(x: &Tensor) -> Result<Tensor> {
        x.sum_keepdim(D::Minus1)?.sum_all()
    }

    /// [`super::kd_loss_grad`] composed of candle's ops (about forty passes over (N, V)), in
    /// f32 for half-precision logits.
    pub fn kd_loss_grad(
        student: &Tensor,
        teacher: &Tensor,
        labels: &Tensor,
        alpha: f64,
        temp: f64,
    ) -> Result<(f64, Tensor)> {
        let wide = |x: &Tensor| -> Result<Tensor> {
            match x.dtype() {
                DType::BF16 | DType::F16 => x.detach().to_dtype(DType::F32),
                _ => Ok(x.detach()),
            }
        };
        let (s, t) = (wide(student)?, wide(teacher)?);
        let (n, _) = s.dims2()?;
        let scalar = |x: Tensor| x.to_dtype(DType::F64)?.to_scalar::<f64>();
        let mut value = 0.0;
        let mut grad = s.zeros_like()?;
        if alpha > 0.0 {
            let ids = labels.reshape((n, 1))?;
            let ls = log_softmax(&s)?;
            value -= alpha * scalar(ls.gather(&ids, 1)?.mean_all()?)?;
            let ones = Tensor::ones((n, 1), s.dtype(), s.device())?;
            let onehot = s.zeros_like()?.scatter_add(&ids, &ones, 1)?;
            grad = (grad + (ls.exp()? - onehot)?.affine(alpha / n as f64, 0.0)?)?;
        }
        if alpha < 1.0 {
            let ls = log_softmax(&s.affine(1.0 / temp, 0.0)?)?;
            let lt = log_softmax(&t.affine(1.0 / temp, 0.0)?)?;
            let pt = lt.exp()?;
            let kl = total(&(&pt * (lt - &ls)?)?)?;
            value += (1.0 - alpha) * temp * temp * scalar(kl)? / n as f64;
            grad = (grad + (ls.exp()? - pt)?.affine((1.0 - alpha) * temp / n as f64, 0.0)?)?;
        }
        Ok((value, grad))
    }
}

/// The largest |x| over every element of `x` (any float type), as f64.
/// One AdamW update's constants, as the f32s every path multiplies by (worked out in f64 from
/// the step's β's, bias corrections, rate and decay).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub b1: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// 1 / (1 − β1^t), 1 / (1 − β2^t).
    pub inv_c1: f32,
    pub inv_c2: f32,
    pub eps: f32,
    /// 1 − lr · weight decay.
    pub decay: f32,
    pub lr: f32,
}

impl AdamStep {
    pub fn new(beta1: f64, beta2: f64, step: usize, eps: f64, lr: f64, weight_decay: f64) -> Self {
        let (c1, c2) = (1.0 - beta1.powi(step as i32), 1.0 - beta2.powi(step as i32));
        AdamStep {
            b1: beta1 as f32,
            one_minus_b1: (1.0 - beta1) as f32,
            b2: beta2 as f32,
            one_minus_b2: (1.0 - beta2) as f32,
            inv_c1: (1.0 / c1) as f32,
            inv_c2: (1.0 / c2) as f32,
            eps: eps as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            lr: lr as f32,
        }
    }
}

/// One AdamW update of an f32 weight `w` by its gradient `g`, written in place with its moments:
/// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`, `w ← w·(1 − lr·wd) − lr·(m/c1) / (√(v/c2) + ε)`
/// — three element-wise passes where candle's ops take ~17 (each a launch on a GPU, for each of
/// a student's ~270 tensors every step). All four contiguous f32 of one size.
pub fn adamw(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, h: AdamStep) -> Result<()> {
    let n = w.elem_count();
    for (x, what) in [(w, "weight"), (m, "first moment"), (v, "second moment"), (g, "gradient")] {
        if x.dtype() != candle_core::DType::F32 || x.elem_count() != n || !x.is_contiguous() {
            candle_core::bail!("adamw: the {what} is not a contiguous f32 tensor of {n} elements");
        }
    }
    m.inplace_op2(g, &AdamMoment { beta: h.b1, one_minus: h.one_minus_b1, square: false })?;
    v.inplace_op2(g, &AdamMoment { beta: h.b2, one_minus: h.one_minus_b2, square: true })?;
    w.inplace_op3(m, v, &AdamUpdate(h))
}

/// `x ← β·x + (1−β)·g` (`g²` with `square`).
struct AdamMoment {
    beta: f32,
    one_minus: f32,
    square: bool,
}

/// `w ← w·decay − lr·(m·inv_c1) / (√(v·inv_c2) + ε)`.
struct AdamUpdate(AdamStep);

/// An in-place op's f32 slice (contiguous, as `adamw` checked).
fn f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("adamw: not contiguous".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("adamw: f32 only"),
    }
}

impl candle_core::InplaceOp2 for AdamMoment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (x, g) = (f32_mut(s1, l1)?, cpu::<f32>(s2, l2, "adamw")?);
        let (beta, c, sq) = (self.beta, self.one_minus, self.square);
        x.par_iter_mut().zip(g.par_iter()).for_each(|(x, &g)| {
            let g = if sq { g * g } else { g };
            *x = *x * beta + g * c;
        });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        cuda::adam_moment(s1, l1, s2, l2, self.beta, self.one_minus, self.square)
    }
}

impl candle_core::InplaceOp3 for AdamUpdate {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (w, m, v) = (f32_mut(s1, l1)?, cpu::<f32>(s2, l2, "adamw")?, cpu::<f32>(s3, l3, "adamw")?);
        let h = self.0;
        w.par_iter_mut().zip(m.par_iter().zip(v.par_iter())).for_each(|(w, (&m, &v))| {
            *w = *w * h.decay - (m * h.inv_c1) / ((v * h.inv_c2).sqrt() + h.eps) * h.lr;
        });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        cuda::adam_update(s1, l1, (s2, l2), (s3, l3), self.0)
    }
}

/// The largest difference between [`adamw`] and [`plain::adamw`] (candle's ops) over three
/// steps of one random tensor on `dev`, relative to the weights' size — checked apart, so that a
/// failure turns off the fused optimizer alone.
pub fn check_adamw(dev: &candle_core::Device) -> Result<f32> {
    let shape = (37, 41);
    let w0 = Tensor::randn(0f32, 1.0, shape, dev)?;
    let (wf, mf, vf) = (w0.copy()?, w0.zeros_like()?, w0.zeros_like()?);
    let (mut wp, mut mp, mut vp) = (w0.copy()?, w0.zeros_like()?, w0.zeros_like()?);
    let mut worst = 0f32;
    for step in 1..=3 {
        let g = Tensor::randn(0f32, 0.5, shape, dev)?;
        let h = AdamStep::new(0.9, 0.95, step, 1e-8, 1e-2, 0.1);
        adamw(&wf, &mf, &vf, &g, h)?;
        (wp, mp, vp) = plain::adamw(&wp, &mp, &vp, &g, h)?;
        worst = worst.max(diff(&wf, &wp)?).max(diff(&mf, &mp)?).max(diff(&vf, &vp)?);
    }
    Ok(worst / max_abs(&wp)?.max(1e-30) as f32)
}

pub fn max_abs(x: &Tensor) -> Result<f64> {
    x.to_dtype(candle_core::DType::F64)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// The largest |a − b| over every element (tensors of one shape and type).
fn diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok(max_abs(&(a - b)?)? as f32)
}

/// The largest difference (relative where values pass 1) between each fused op and candle's own composition of it, forward
/// and backward (every input's gradient), on random inputs on `dev`: a self-check of the CUDA
/// kernels before a run, and the CPU ops' test.
pub fn check(dev: &candle_core::Device) -> Result<f32> {
    use candle_core::Var;
    // Output and gradients of `f` at `inputs` (gradient of Σ f ⊙ dy), fused vs plain.
    let compare = |inputs: &[Tensor],
                   fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
                   plain: &dyn Fn(&[Tensor]) -> Result<Tensor>|
     -> Result<f32> {
        let vars = inputs.iter().map(Var::from_tensor).collect::<Result<Vec<_>>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yp) = (fused(&ts)?, plain(&ts)?);
        let dy = Tensor::randn(0f32, 1.0, yf.shape(), dev)?;
        let gf = (&yf * &dy)?.sum_all()?.backward()?;
        let gp = (&yp * &dy)?.sum_all()?.backward()?;
        // |Δ| of values past 1 relative to their size (a gain's gradient sums many rows).
        let apart = |a: &Tensor, b: &Tensor| -> Result<f32> { Ok(diff(a, b)? / max_abs(b)?.max(1.0) as f32) };
        let mut worst = apart(&yf, &yp)?;
        for v in &vars {
            match (gf.get(v.as_tensor()), gp.get(v.as_tensor())) {
                (Some(a), Some(b)) => worst = worst.max(apart(a, b)?),
                _ => candle_core::bail!("a gradient is missing"),
            }
        }
        Ok(worst)
    };
    // Causal softmax of scores (2, 3, 37, 5 + 37).
    let (t, p, scale) = (37, 5, 0.125);
    let mask: Vec<f32> =
        (0..t * (p + t)).map(|i| if i % (p + t) > p + i / (p + t) { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (t, p + t), dev)?;
    let soft =
        compare(&[Tensor::randn(0f32, 3.0, (2, 3, t, p + t), dev)?], &|x| causal_softmax(&x[0], scale, p), &|x| {
            plain::causal_softmax(&x[0], scale, &mask)
        })?;
    // RoPE of (2, 7, 3, 8) by random angles.
    let (t, h, hd) = (7, 3, 8);
    let th = Tensor::randn(0f32, 2.0, (t, hd / 2), dev)?;
    let (cos, sin) = (th.cos()?, th.sin()?);
    let rot = compare(&[Tensor::randn(0f32, 1.0, (2, t, h, hd), dev)?], &|x| rope(&x[0], &cos, &sin), &|x| {
        plain::rope(&x[0], &cos, &sin)
    })?;
    // RMSNorm of (13, 40) with a random gain.
    let eps = 1e-5;
    let norm = compare(
        &[Tensor::randn(0f32, 2.0, (13, 40), dev)?, Tensor::randn(1f32, 0.3, 40, dev)?],
        &|x| rms_norm(&x[0], &x[1], eps),
        &|x| plain::rms_norm(&x[0], &x[1], eps),
    )?;
    // RMSNorm of (133, 72): three parts of the gain's gradient, the last one short.
    let norm2 = compare(
        &[Tensor::randn(0f32, 2.0, (133, 72), dev)?, Tensor::randn(1f32, 0.3, 72, dev)?],
        &|x| rms_norm(&x[0], &x[1], eps),
        &|x| plain::rms_norm(&x[0], &x[1], eps),
    )?;
    // SwiGLU of (5, 24).
    let glu = compare(
        &[Tensor::randn(0f32, 2.0, (5, 24), dev)?, Tensor::randn(0f32, 1.0, (5, 24), dev)?],
        &|x| swiglu(&x[0], &x[1]),
        &|x| plain::swiglu(&x[0], &x[1]),
    )?;
    Ok(soft.max(rot).max(norm).max(norm2).max(glu))
}

/// The largest difference between [`kd_loss_grad`] and its composition of candle's ops
/// ([`plain::kd_loss_grad`]): gradients, and the loss relative to its size, on random logits on
/// `dev` — checked apart from [`check`], so that a failure turns off the fused loss alone.
pub fn check_kd(dev: &candle_core::Device) -> Result<f32> {
    // (23, 301) logits, three (α, T), and (3, 49,152): a vocabulary's row over many threads.
    let (n, v) = (23, 301);
    let (s, t) = (Tensor::randn(0f32, 3.0, (n, v), dev)?, Tensor::randn(0f32, 3.0, (n, v), dev)?);
    let labels = Tensor::from_vec((0..n as u32).map(|i| i * 13 % v as u32).collect::<Vec<_>>(), n, dev)?;
    let mut kd = 0f32;
    for (alpha, temp) in [(0.0, 1.0), (0.4, 2.0), (1.0, 1.0)] {
        let (vf, gf) = kd_loss_grad(&s, &t, &labels, alpha, temp)?;
        let (vp, gp) = plain::kd_loss_grad(&s, &t, &labels, alpha, temp)?;
        kd = kd.max(diff(&gf, &gp)?).max(((vf - vp).abs() / vp.abs().max(1.0)) as f32);
    }
    let (s, t) = (Tensor::randn(0f32, 3.0, (3, 49152), dev)?, Tensor::randn(0f32, 3.0, (3, 49152), dev)?);
    let labels = Tensor::from_vec(vec![0u32, 30000, 49151], 3, dev)?;
    let (vf, gf) = kd_loss_grad(&s, &t, &labels, 0.2, 1.0)?;
    // The reference in f64: the f32 composition's sums over 49,152 columns drift by ~1e-4.
    let wide = |x: &Tensor| x.to_dtype(candle_core::DType::F64);
    let (vp, gp) = plain::kd_loss_grad(&wide(&s)?, &wide(&t)?, &labels, 0.2, 1.0)?;
    kd = kd.max(diff(&gf, &gp.to_dtype(candle_core::DType::F32)?)?).max(((vf - vp).abs() / vp.abs().max(1.0)) as f32);
    Ok(kd)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda::{CudaDType, CudaStorage, WrapErr};
    use candle_core::{DType, Layout, Result};
    use std::sync::OnceLock;

    /// The kernels: one warp per row (rows are at most a few thousand columns), f32 inside.
    /// bf16 travels as its bits (no header needed by NVRTC).
    const SRC: &str = r#"
__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(unsigned short* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = 0x7fc0; return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (unsigned short)(u >> 16);
}
__device__ __forceinline__ float wmax(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float wsum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// y = softmax(scale * x + causal mask) per row of n; row r is query r % t, which sees
// columns 0 ..= r % t + p.
template <typename T>
__device__ void softmax_fwd(const T* x, T* y, long long rows, int n, int t, int p, float scale) {
    long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    int lim = (int)(row % t) + p;
    if (lim > n - 1) lim = n - 1;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    float m = __int_as_float(0xff800000);
    for (int j = lane; j <= lim; j += 32) m = fmaxf(m, ld(xr, j) * scale);
    m = wmax(m);
    float s = 0.f;
    for (int j = lane; j <= lim; j += 32) s += expf(ld(xr, j) * scale - m);
    s = wsum(s);
    float inv = 1.f / s;
    for (int j = lane; j < n; j += 32) st(yr, j, j <= lim ? expf(ld(xr, j) * scale - m) * inv : 0.f);
}

// dx = scale * y * (dy - sum_j dy_j y_j) per row of n.
template <typename T>
__device__ void softmax_bwd(const T* y, const T* dy, T* dx, long long rows, int n, float scale) {
    long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* yr = y + row * n;
    const T* gr = dy + row * n;
    T* o = dx + row * n;
    float d = 0.f;
    for (int j = lane; j < n; j += 32) d += ld(yr, j) * ld(gr, j);
    d = wsum(d);
    for (int j = lane; j < n; j += 32) st(o, j, scale * ld(yr, j) * (ld(gr, j) - d));
}

// Rotates pair `src` of x into pair `k` of y by position `pos`'s angle for pair index i (of n).
template <typename T>
__device__ void rotate_pair(const T* x, long long src, const T* c, const T* s, T* y, long long k, long long pos, int n, int i, float sign) {
    float a = ld(x, 2 * src), b = ld(x, 2 * src + 1);
    float cs = ld(c, pos * n + i), sn = sign * ld(s, pos * n + i);
    st(y, 2 * k, a * cs - b * sn);
    st(y, 2 * k + 1, a * sn + b * cs);
}

// Rotary embedding of x (pairs along the last dim) by cos/sin (t, n): pair k is pair k % n of
// head (k / n) % h at position (k / (n h)) % t; sign -1 rotates back (the backward).
template <typename T>
__device__ void rope_pairs(const T* x, const T* c, const T* s, T* y, long long pairs, int n, int t, int h, float sign) {
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= pairs) return;
    rotate_pair(x, k, c, s, y, k, (k / ((long long)n * h)) % t, n, (int)(k % n), sign);
}

// The same rotation of x given heads first, (B, h, t, 2n), written as (B, t, h, 2n): output
// pair k is pair k % n of head (k / n) % h at position (k / (n h)) % t of sequence k / (n h t).
template <typename T>
__device__ void rope_t_pairs(const T* x, const T* c, const T* s, T* y, long long pairs, int n, int t, int h, float sign) {
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= pairs) return;
    int i = (int)(k % n);
    long long r = k / n;
    long long hh = r % h;
    long long pos = (r / h) % t;
    long long seq = r / ((long long)h * t);
    rotate_pair(x, ((seq * h + hh) * t + pos) * n + i, c, s, y, k, pos, n, i, sign);
}

// y = x * r * g per row of n, r = 1 / sqrt(mean(x^2) + eps).
template <typename T>
__device__ float rms_r(const T* xr, int n, float eps, int lane) {
    float ss = 0.f;
    for (int j = lane; j < n; j += 32) { float v = ld(xr, j); ss += v * v; }
    return rsqrtf(wsum(ss) / n + eps);
}
template <typename T>
__device__ void rms_fwd(const T* x, const T* g, T* y, long long rows, int n, float eps) {
    long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* xr = x + row * n;
    float r = rms_r(xr, n, eps, lane);
    for (int j = lane; j < n; j += 32) st(y + row * n, j, ld(xr, j) * r * ld(g, j));
}
// dx = r dy g - x r^3 / n * sum(dy g x) per row.
template <typename T>
__device__ void rms_bwd(const T* x, const T* g, const T* dy, T* dx, long long rows, int n, float eps) {
    long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* xr = x + row * n;
    const T* gr = dy + row * n;
    float r = rms_r(xr, n, eps, lane);
    float d = 0.f;
    for (int j = lane; j < n; j += 32) d += ld(xr, j) * ld(gr, j) * ld(g, j);
    float k = r * r * r * wsum(d) / n;
    for (int j = lane; j < n; j += 32) st(dx + row * n, j, r * ld(gr, j) * ld(g, j) - ld(xr, j) * k);
}

// silu(a) * b per element (rows = elements).
template <typename T>
__device__ void glu_fwd(const T* a, const T* b, T* y, long long el) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= el) return;
    float x = ld(a, i), sig = 1.f / (1.f + expf(-x));
    st(y, i, x * sig * ld(b, i));
}
// part 1: dy * d/da, part 2: dy * d/db of silu(a) * b.
template <typename T>
__device__ void glu_bwd(const T* a, const T* b, const T* dy, T* o, long long el, int part) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= el) return;
    float x = ld(a, i), sig = 1.f / (1.f + expf(-x)), g = ld(dy, i);
    st(o, i, part == 1 ? g * ld(b, i) * sig * (1.f + x * (1.f - sig)) : g * x * sig);
}

// The distillation loss of one row per block of 256 threads (see kd_loss_grad): pass 1 keeps an
// online maximum and sum of exponentials of s/T, t/T and (for CE) s; pass 2 writes the gradient
// and sums KL's terms. out: the gradient (rows x n), then each row's loss.
__device__ __forceinline__ void online(float& m, float& s, float x) {
    if (x > m) { s = s * expf(m - x) + 1.f; m = x; } else { s += expf(x - m); }
}
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    if (m2 > m) { s = s * expf(m - m2) + s2; m = m2; } else if (s2 > 0.f) { s += s2 * expf(m2 - m); }
}
// The log-sum-exp of the block's (m, s) pairs, in every thread.
__device__ float block_lse(float m, float s, float* sm, float* ss) {
    for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) { sm[w] = m; ss[w] = s; }
    __syncthreads();
    m = __int_as_float(0xff800000); s = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) merge(m, s, sm[i], ss[i]);
    return m + logf(s);
}
__device__ float block_sum(float v, float* sm) {
    v = wsum(v);
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) sm[w] = v;
    __syncthreads();
    v = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) v += sm[i];
    return v;
}
template <typename T, typename G>
__device__ void kd_rows(const T* s, const T* t, const unsigned int* labels, G* grad, float* loss, long long rows, int n, float temp, float alpha) {
    __shared__ float sm[32], ss[32];
    long long row = blockIdx.x;
    if (row >= rows) return;
    const T* sr = s + row * n;
    const T* tr = t + row * n;
    G* g = grad + row * n;
    float it = 1.f / temp, ninf = __int_as_float(0xff800000);
    bool kd = alpha < 1.f, ce = alpha > 0.f;
    float ma = ninf, sa = 0.f, mb = ninf, sb = 0.f, mc = ninf, sc = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float x = ld(sr, j);
        if (kd) { online(ma, sa, x * it); online(mb, sb, ld(tr, j) * it); }
        if (ce) online(mc, sc, x);
    }
    float la = 0.f, lb = 0.f, lc = 0.f;
    if (kd) { la = block_lse(ma, sa, sm, ss); lb = block_lse(mb, sb, sm, ss); }
    if (ce) lc = block_lse(mc, sc, sm, ss);
    float ckd = (1.f - alpha) * temp / (float)rows, cce = alpha / (float)rows, kl = 0.f;
    unsigned int lab = labels[row];
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float x = ld(sr, j), v = 0.f;
        if (kd) {
            float a = x * it, b = ld(tr, j) * it, pb = expf(b - lb);
            kl += pb * (b - a);
            v = ckd * (expf(a - la) - pb);
        }
        if (ce) v += cce * (expf(x - lc) - ((unsigned int)j == lab ? 1.f : 0.f));
        st(g, j, v);
    }
    kl = block_sum(kl, sm);
    if (threadIdx.x == 0) {
        float l = 0.f;
        if (kd) l += (1.f - alpha) * temp * temp * (kl - lb + la);
        if (ce) l += alpha * (lc - ld(sr, lab));
        loss[row] = l;
    }
}
extern "C" __global__ void kd_loss_f32(const float* s, const float* t, const unsigned int* l, float* out, long long rows, int n, float temp, float alpha) { kd_rows(s, t, l, out, out + rows * n, rows, n, temp, alpha); }
extern "C" __global__ void kd_loss_bf16(const unsigned short* s, const unsigned short* t, const unsigned int* l, float* out, long long rows, int n, float temp, float alpha) { kd_rows(s, t, l, out, out + rows * n, rows, n, temp, alpha); }
// bf16 logits, a bf16 gradient (rounded to nearest even, as a conversion after the f32 kernel
// would) and the rows' losses in f32 at `loss` (the caller's buffer after the gradient).
extern "C" __global__ void kd_loss_bf16g(const unsigned short* s, const unsigned short* t, const unsigned int* l, unsigned short* grad, float* loss, long long rows, int n, float temp, float alpha) { kd_rows(s, t, l, grad, loss, rows, n, temp, alpha); }

// The gain's gradient of an RMSNorm, in parts: part b (one block of 256 threads) sums
// dy * x * r over rows b*per .. b*per + per (r = 1 / sqrt(mean(x^2) + eps) of each row, per <= 64)
// into row b of out (parts x n, f32); the parts are summed afterwards.
template <typename T>
__device__ void rms_dg(const T* x, const T* dy, float* out, long long rows, int n, int per, float eps) {
    __shared__ float rs[64];
    long long first = (long long)blockIdx.x * per;
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    long long left = rows - first;
    int cnt = left < per ? (int)left : per;
    for (int i = w; i < cnt; i += warps) {
        float r = rms_r(x + (first + i) * n, n, eps, lane);
        if (lane == 0) rs[i] = r;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        float s = 0.f;
        for (int i = 0; i < cnt; i++) {
            long long k = (first + i) * n + c;
            s += ld(dy, k) * ld(x, k) * rs[i];
        }
        out[(long long)blockIdx.x * n + c] = s;
    }
}
extern "C" __global__ void rms_dg_f32(const float* x, const float* dy, float* out, long long rows, int n, int per, float eps) { rms_dg(x, dy, out, rows, n, per, eps); }
extern "C" __global__ void rms_dg_bf16(const unsigned short* x, const unsigned short* dy, float* out, long long rows, int n, int per, float eps) { rms_dg(x, dy, out, rows, n, per, eps); }

// The gradient of an embedding lookup: block u sums the rows order[offs[u] .. offs[u + 1]) of
// g (N x d) into row uniq[u] of out (V x d, f32, zeroed before), in f32 and in a fixed order
// (four running sums over every fourth row: the same result on every run). csr: offs (U + 1),
// uniq (U), order (N).
template <typename T>
__device__ void emb_grad(const T* g, const unsigned int* csr, float* out, int nu, int d) {
    int u = blockIdx.x;
    if (u >= nu) return;
    const unsigned int* uniq = csr + nu + 1;
    const unsigned int* order = uniq + nu;
    unsigned int a = csr[u], b = csr[u + 1];
    float* o = out + (long long)uniq[u] * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        unsigned int k = a;
        for (; k + 3 < b; k += 4) {
            s0 += ld(g, (long long)order[k] * d + c);
            s1 += ld(g, (long long)order[k + 1] * d + c);
            s2 += ld(g, (long long)order[k + 2] * d + c);
            s3 += ld(g, (long long)order[k + 3] * d + c);
        }
        for (; k < b; k++) s0 += ld(g, (long long)order[k] * d + c);
        o[c] = (s0 + s1) + (s2 + s3);
    }
}
extern "C" __global__ void emb_grad_f32(const float* g, const unsigned int* csr, float* out, int nu, int d) { emb_grad(g, csr, out, nu, d); }
extern "C" __global__ void emb_grad_bf16(const unsigned short* g, const unsigned int* csr, float* out, int nu, int d) { emb_grad(g, csr, out, nu, d); }

#define F32 float
#define BF16 unsigned short
// AdamW, in place (f32): x = beta x + (1 - beta) g (g^2 with sq); w = w decay - lr (m ic1) / (sqrt(v ic2) + eps).
// Products and sums rounded one at a time, as candle's element-wise ops do (no contraction).
extern "C" __global__ void adam_moment(float* x, const float* g, long long n, float beta, float one_minus, int sq) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    if (sq) gi = __fmul_rn(gi, gi);
    x[i] = __fadd_rn(__fmul_rn(x[i], beta), __fmul_rn(gi, one_minus));
}
extern "C" __global__ void adam_update(float* w, const float* m, const float* v, long long n, float ic1, float ic2, float eps, float decay, float lr) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float u = __fdiv_rn(__fmul_rn(m[i], ic1), __fadd_rn(__fsqrt_rn(__fmul_rn(v[i], ic2)), eps));
    w[i] = __fsub_rn(__fmul_rn(w[i], decay), __fmul_rn(u, lr));
}

#define KERNELS(T, S) \
extern "C" __global__ void causal_softmax_##S(const T* x, T* y, long long rows, int n, int t, int p, float scale) { softmax_fwd(x, y, rows, n, t, p, scale); } \
extern "C" __global__ void causal_softmax_bwd_##S(const T* y, const T* dy, T* dx, long long rows, int n, float scale) { softmax_bwd(y, dy, dx, rows, n, scale); } \
extern "C" __global__ void rope_##S(const T* x, const T* c, const T* s, T* y, long long pairs, int n, int t, int h, float sign) { rope_pairs(x, c, s, y, pairs, n, t, h, sign); } \
extern "C" __global__ void rope_t_##S(const T* x, const T* c, const T* s, T* y, long long pairs, int n, int t, int h, float sign) { rope_t_pairs(x, c, s, y, pairs, n, t, h, sign); } \
extern "C" __global__ void rms_norm_##S(const T* x, const T* g, T* y, long long rows, int n, float eps) { rms_fwd(x, g, y, rows, n, eps); } \
extern "C" __global__ void rms_norm_bwd_##S(const T* x, const T* g, const T* dy, T* dx, long long rows, int n, float eps) { rms_bwd(x, g, dy, dx, rows, n, eps); } \
extern "C" __global__ void swiglu_##S(const T* a, const T* b, T* y, long long el, int n, float unused) { glu_fwd(a, b, y, el); } \
extern "C" __global__ void swiglu_bwd_##S(const T* a, const T* b, const T* dy, T* o, long long el, int n, int part, float unused) { glu_bwd(a, b, dy, o, el, part); }
KERNELS(F32, f32)
KERNELS(BF16, bf16)
"#;

    /// The kernels' PTX, compiled once per process by NVRTC.
    pub fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        PTX.get_or_init(|| {
            candle_core::cuda::cudarc::nvrtc::compile_ptx(SRC).map(|p| p.to_src()).map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("fused kernels: NVRTC: {e}")))
    }

    /// Runs `{name}_{f32|bf16}` on `threads` threads (256 a block): its arguments are the
    /// inputs (contiguous, one dtype), a fresh output of `el` elements, `rows` (i64), `n` (i32),
    /// `ints` (i32 each), `scale` (f32).
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        name: &str,
        inputs: &[(&CudaStorage, &Layout)],
        el: usize,
        threads: usize,
        rows: usize,
        n: usize,
        ints: &[i32],
        scale: f32,
    ) -> Result<CudaStorage> {
        let Some(&(first, _)) = inputs.first() else { candle_core::bail!("{name}: no input") };
        let dev = first.device.clone();
        if inputs.iter().any(|(s, _)| s.dtype() != first.dtype()) {
            candle_core::bail!("{name}: inputs of different dtypes");
        }
        let args = Args { el, threads, rows, n, ints, scale };
        match first.dtype() {
            DType::F32 => go::<f32>(name, "f32", inputs, &dev, &args),
            DType::BF16 => go::<half::bf16>(name, "bf16", inputs, &dev, &args),
            other => candle_core::bail!("{name}: f32 or bf16, got {other:?}"),
        }
    }

    /// [`super::KdLoss`] on the GPU: one block of 256 threads a row. The output is the gradient
    /// (rows × n) and then each row's loss, all f32 — or, with `half` and bf16 logits, the
    /// gradient in bf16 and, from element `half_tail`, each row's f32 loss as two elements.
    #[allow(clippy::too_many_arguments)]
    pub fn kd_loss(
        rows: usize,
        n: usize,
        alpha: f32,
        temp: f32,
        s: (&CudaStorage, &Layout),
        t: (&CudaStorage, &Layout),
        l: (&CudaStorage, &Layout),
        half: bool,
    ) -> Result<CudaStorage> {
        let dev = s.0.device.clone();
        let labels = slice::<u32>(l.0, l.1, rows, "kd-loss: the labels")?;
        let (r, nn) = (rows as i64, n as i32);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        if half && s.0.dtype() == DType::BF16 && t.0.dtype() == DType::BF16 {
            let ss = slice::<half::bf16>(s.0, s.1, rows * n, "kd-loss: the logits")?;
            let ts = slice::<half::bf16>(t.0, t.1, rows * n, "kd-loss: the logits")?;
            let at = super::half_tail(rows, n);
            // SAFETY: the kernel writes every gradient element and every row's loss; the element
            // between them (odd rows × n) is never read.
            let out = unsafe { dev.alloc::<half::bf16>(at + 2 * rows)? };
            let (grad, loss) = (out.slice(0..rows * n), out.slice(at..at + 2 * rows));
            let func = dev.get_or_load_custom_func("kd_loss_bf16g", "pith_fused", ptx()?)?;
            let mut b = func.builder();
            b.arg(&ss).arg(&ts).arg(&labels).arg(&grad).arg(&loss).arg(&r).arg(&nn).arg(&temp).arg(&alpha);
            // SAFETY: one block a row over rows × n bf16 inputs (checked), `rows` labels below n
            // (checked by the caller); the gradient's rows × n bf16 and the losses' `rows` f32 at
            // an even (4-byte aligned) element lie in `out`.
            unsafe { b.launch(cfg) }.w()?;
            return Ok(CudaStorage::wrap_cuda_slice(out, dev));
        }
        // SAFETY: the kernel writes every element (each row's gradient and its loss).
        let out = unsafe { dev.alloc::<f32>(rows * n + rows)? };
        macro_rules! go {
            ($ty:ty, $name:expr) => {{
                let func = dev.get_or_load_custom_func($name, "pith_fused", ptx()?)?;
                let ss = slice::<$ty>(s.0, s.1, rows * n, "kd-loss: the logits")?;
                let ts = slice::<$ty>(t.0, t.1, rows * n, "kd-loss: the logits")?;
                let mut b = func.builder();
                b.arg(&ss).arg(&ts).arg(&labels).arg(&out).arg(&r).arg(&nn).arg(&temp).arg(&alpha);
                // SAFETY: one block a row over rows × n inputs of the checked sizes, `rows` labels
                // below n (checked by the caller), and an output of rows × n + rows floats.
                unsafe { b.launch(cfg) }.w()?;
            }};
        }
        match (s.0.dtype(), t.0.dtype()) {
            (DType::F32, DType::F32) => go!(f32, "kd_loss_f32"),
            (DType::BF16, DType::BF16) => go!(half::bf16, "kd_loss_bf16"),
            (a, b) => candle_core::bail!("kd-loss: f32 or bf16 logits, got {a:?} / {b:?}"),
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    /// The element range of a contiguous operand of `n` elements (`what` names it in the error).
    fn range(l: &Layout, n: usize, what: &str) -> Result<(usize, usize)> {
        match l.contiguous_offsets() {
            Some((a, b)) if b - a == n => Ok((a, b)),
            _ => candle_core::bail!("{what} is not a contiguous run of {n} elements"),
        }
    }

    fn grid(n: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }

    /// [`super::AdamMoment`]: `x` in place from `g`.
    pub fn adam_moment(
        x: &mut CudaStorage,
        lx: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        beta: f32,
        one_minus: f32,
        square: bool,
    ) -> Result<()> {
        let n = lx.shape().elem_count();
        let ((xa, xb), (ga, gb)) = (range(lx, n, "adamw: the moment")?, range(lg, n, "adamw: the gradient")?);
        let dev = x.device.clone();
        let func = dev.get_or_load_custom_func("adam_moment", "pith_fused", ptx()?)?;
        let gs = g.as_cuda_slice::<f32>()?.slice(ga..gb);
        let mut xs = x.as_cuda_slice_mut::<f32>()?.slice_mut(xa..xb);
        let (nn, sq) = (n as i64, square as i32);
        let mut b = func.builder();
        b.arg(&mut xs).arg(&gs).arg(&nn).arg(&beta).arg(&one_minus).arg(&sq);
        // SAFETY: one thread an element over two f32 runs of n elements (checked above).
        unsafe { b.launch(grid(n)) }.w()?;
        Ok(())
    }

    /// [`super::AdamUpdate`]: `w` in place from the moments.
    pub fn adam_update(
        w: &mut CudaStorage,
        lw: &Layout,
        m: (&CudaStorage, &Layout),
        v: (&CudaStorage, &Layout),
        h: super::AdamStep,
    ) -> Result<()> {
        let n = lw.shape().elem_count();
        let ((wa, wb), (ma, mb), (va, vb)) = (
            range(lw, n, "adamw: the weight")?,
            range(m.1, n, "adamw: the first moment")?,
            range(v.1, n, "adamw: the second moment")?,
        );
        let dev = w.device.clone();
        let func = dev.get_or_load_custom_func("adam_update", "pith_fused", ptx()?)?;
        let ms = m.0.as_cuda_slice::<f32>()?.slice(ma..mb);
        let vs = v.0.as_cuda_slice::<f32>()?.slice(va..vb);
        let mut ws = w.as_cuda_slice_mut::<f32>()?.slice_mut(wa..wb);
        let nn = n as i64;
        let mut b = func.builder();
        b.arg(&mut ws).arg(&ms).arg(&vs).arg(&nn).arg(&h.inv_c1).arg(&h.inv_c2).arg(&h.eps).arg(&h.decay).arg(&h.lr);
        // SAFETY: one thread an element over three f32 runs of n elements (checked above).
        unsafe { b.launch(grid(n)) }.w()?;
        Ok(())
    }

    /// The contiguous slice of an operand of `el` elements of `T`.
    fn slice<'a, T: CudaDType>(
        s: &'a CudaStorage,
        l: &Layout,
        el: usize,
        what: &str,
    ) -> Result<candle_core::cuda::cudarc::driver::CudaView<'a, T>> {
        let (a, b) = range(l, el, what)?;
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    /// [`super::RmsDgPart`]: `parts` blocks of 256 threads, each summing `per` rows of
    /// `dy ⊙ x·r` into its row of an f32 (parts × n) output.
    pub fn rms_dg(
        x: (&CudaStorage, &Layout),
        dy: (&CudaStorage, &Layout),
        rows: usize,
        n: usize,
        per: usize,
        eps: f32,
    ) -> Result<CudaStorage> {
        let dev = x.0.device.clone();
        if !(1..=64).contains(&per) || x.0.dtype() != dy.0.dtype() {
            candle_core::bail!("rms-dg: {per} rows a part (1..=64), {:?} / {:?}", x.0.dtype(), dy.0.dtype());
        }
        let parts = rows.div_ceil(per);
        // SAFETY: the kernel writes every element (each part's row of n sums).
        let out = unsafe { dev.alloc::<f32>(parts * n)? };
        let (r, nn, pp) = (rows as i64, n as i32, per as i32);
        let cfg = LaunchConfig { grid_dim: (parts.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        macro_rules! go {
            ($ty:ty, $name:expr) => {{
                let func = dev.get_or_load_custom_func($name, "pith_fused", ptx()?)?;
                let (xs, gs) = (
                    slice::<$ty>(x.0, x.1, rows * n, "rms-dg: an operand")?,
                    slice::<$ty>(dy.0, dy.1, rows * n, "rms-dg: an operand")?,
                );
                let mut b = func.builder();
                b.arg(&xs).arg(&gs).arg(&out).arg(&r).arg(&nn).arg(&pp).arg(&eps);
                // SAFETY: rows × n inputs (checked), ceil(rows / per) blocks each reading its
                // ≤ per ≤ 64 rows (the shared array's size) and writing its row of the output.
                unsafe { b.launch(cfg) }.w()?;
            }};
        }
        match x.0.dtype() {
            DType::F32 => go!(f32, "rms_dg_f32"),
            DType::BF16 => go!(half::bf16, "rms_dg_bf16"),
            other => candle_core::bail!("rms-dg: f32 or bf16, got {other:?}"),
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    /// [`super::EmbeddingGrad`]: one block of 128 threads per distinct id, writing its row of a
    /// zeroed f32 (vocab × d) output.
    pub fn emb_grad(
        g: (&CudaStorage, &Layout),
        csr: (&CudaStorage, &Layout),
        op: &super::EmbeddingGrad,
    ) -> Result<CudaStorage> {
        let dev = g.0.device.clone();
        let (nu, rows, d) = (op.distinct, op.rows, op.d);
        let out = dev.alloc_zeros::<f32>(op.vocab * d)?;
        let cs = slice::<u32>(csr.0, csr.1, 2 * nu + 1 + rows, "embedding-grad: an operand")?;
        let (u, dd) = (nu as i32, d as i32);
        let cfg = LaunchConfig { grid_dim: (nu.max(1) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        macro_rules! go {
            ($ty:ty, $name:expr) => {{
                let func = dev.get_or_load_custom_func($name, "pith_fused", ptx()?)?;
                let gs = slice::<$ty>(g.0, g.1, rows * d, "embedding-grad: an operand")?;
                let mut b = func.builder();
                b.arg(&gs).arg(&cs).arg(&out).arg(&u).arg(&dd);
                // SAFETY: `csr` holds U + 1 offsets into `order` (0 ..= N), U ids below vocab and
                // N positions below N (built and checked by `embedding_grad`); g is N × d and out
                // vocab × d; one block per distinct id writes that id's row alone.
                unsafe { b.launch(cfg) }.w()?;
            }};
        }
        match g.0.dtype() {
            DType::F32 => go!(f32, "emb_grad_f32"),
            DType::BF16 => go!(half::bf16, "emb_grad_bf16"),
            other => candle_core::bail!("embedding-grad: f32 or bf16, got {other:?}"),
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    struct Args<'a> {
        el: usize,
        threads: usize,
        rows: usize,
        n: usize,
        ints: &'a [i32],
        scale: f32,
    }

    fn go<T: CudaDType + candle_core::cuda::cudarc::driver::DeviceRepr>(
        name: &str,
        suffix: &str,
        inputs: &[(&CudaStorage, &Layout)],
        dev: &candle_core::CudaDevice,
        a: &Args<'_>,
    ) -> Result<CudaStorage> {
        let mut slices = Vec::with_capacity(inputs.len());
        for (s, l) in inputs {
            let (lo, hi) =
                l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{name}: not contiguous")))?;
            slices.push(s.as_cuda_slice::<T>()?.slice(lo..hi));
        }
        let func = dev.get_or_load_custom_func(&format!("{name}_{suffix}"), "pith_fused", ptx()?)?;
        // SAFETY: the kernel writes every element before anything reads it.
        let out = unsafe { dev.alloc::<T>(a.el)? };
        let (rows, n) = (a.rows as i64, a.n as i32);
        let mut b = func.builder();
        for s in &slices {
            b.arg(s);
        }
        b.arg(&out);
        b.arg(&rows);
        b.arg(&n);
        for i in a.ints {
            b.arg(i);
        }
        b.arg(&a.scale);
        let block = 256u32;
        let grid = a.threads.div_ceil(block as usize) as u32;
        let cfg = LaunchConfig { grid_dim: (grid.max(1), 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the callers size `out` and the thread count to the kernel's indexing (rows of
        // n, or pairs), inputs are contiguous slices of the shapes the op checked, and the
        // scalars follow the kernel's signature.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn each_fused_op_matches_candles_composition_forward_and_backward() {
        let d = check(&Device::Cpu).unwrap();
        assert!(d < 1e-5, "fused vs plain: {d}");
        let d = check_kd(&Device::Cpu).unwrap();
        assert!(d < 1e-5, "fused vs plain loss: {d}");
    }

    /// The embedding gradient is candle's `index_select` backward (repeated and absent ids),
    /// and a bad id or a length mismatch is an error.
    #[test]
    fn embedding_grad_is_index_selects_backward() {
        let d = check_embedding(&Device::Cpu).unwrap();
        assert!(d < 1e-6, "fused vs plain embedding gradient: {d}");
        let g = Tensor::ones((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = embedding_grad(&g, &[1, 1, 4], 5).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(e, [vec![0.0; 4], vec![2.0; 4], vec![0.0; 4], vec![0.0; 4], vec![1.0; 4]]);
        assert!(embedding_grad(&g, &[1, 1, 5], 5).is_err(), "an id past the vocabulary");
        assert!(embedding_grad(&g, &[1, 1], 5).is_err(), "fewer ids than rows");
    }

    /// The gain's gradient in parts of `per` rows sums to Σ_rows dy ⊙ x̂, for a last part short
    /// or full and one part or many.
    #[test]
    fn rms_dg_parts_sum_to_the_gains_gradient() {
        for (rows, per) in [(1, 64), (64, 64), (130, 64), (77, 5)] {
            let x = Tensor::randn(0f64, 1.5, (rows, 9), &Device::Cpu).unwrap();
            let dy = Tensor::randn(0f64, 1.0, (rows, 9), &Device::Cpu).unwrap();
            let parts = x.apply_op2_no_bwd(&dy, &RmsDgPart { eps: 1e-5, per }).unwrap();
            assert_eq!(parts.dims(), [rows.div_ceil(per), 9]);
            let r =
                x.sqr().unwrap().mean_keepdim(1).unwrap().affine(1.0, 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
            let want = (dy * x.broadcast_mul(&r).unwrap()).unwrap().sum(0).unwrap();
            let d = (parts.sum(0).unwrap() - want).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-9, "{rows} rows by {per}: {d}");
        }
    }

    /// The in-place optimizer is candle's composition of AdamW, step after step (the bias
    /// corrections change with the step), and refuses what it cannot update in place.
    #[test]
    fn fused_adamw_is_candles_adamw() {
        let d = check_adamw(&Device::Cpu).unwrap();
        assert!(d < 1e-6, "fused vs plain AdamW: {d}");
        let w = Tensor::randn(0f32, 1.0, (4, 6), &Device::Cpu).unwrap();
        let (m, v) = (w.zeros_like().unwrap(), w.zeros_like().unwrap());
        let h = AdamStep::new(0.9, 0.95, 1, 1e-8, 1e-3, 0.0);
        let g = Tensor::randn(0f32, 1.0, (6, 4), &Device::Cpu).unwrap().t().unwrap();
        assert!(adamw(&w, &m, &v, &g, h).is_err(), "a transposed gradient must be refused");
        let g16 = g.t().unwrap().to_dtype(candle_core::DType::BF16).unwrap();
        assert!(adamw(&w, &m, &v, &g16, h).is_err(), "a bf16 gradient must be refused");
        // One step moves every weight by about the rate (|m̂ / √v̂| = 1 at step 1).
        let g = Tensor::randn(0f32, 1.0, (4, 6), &Device::Cpu).unwrap();
        let before = w.copy().unwrap();
        adamw(&w, &m, &v, &g, h).unwrap();
        let moved = (w - before).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(moved.iter().all(|&x| (x - 1e-3).abs() < 1e-5), "{moved:?}");
    }

    #[test]
    fn causal_softmax_masks_the_future_and_rows_sum_to_one() {
        let (t, p) = (6, 2);
        let s = Tensor::randn(0f32, 4.0, (3, t, p + t), &Device::Cpu).unwrap();
        let y = causal_softmax(&s, 0.5, p).unwrap().to_vec3::<f32>().unwrap();
        for m in &y {
            for (i, row) in m.iter().enumerate() {
                assert!(row[p + i + 1..].iter().all(|&v| v == 0.0), "row {i}: {row:?}");
                assert!(row[..=p + i].iter().all(|&v| v > 0.0));
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
        assert!(causal_softmax(&s, 0.5, 3).is_err(), "keys ≠ P + T must be refused");
    }

    #[test]
    fn grouped_rows_are_the_softmax_of_each_group() {
        // (2, 3 groups × 6 queries, 2 + 6): each group of 6 rows is one (6, 8) causal softmax.
        let (g, t, p) = (3, 6, 2);
        let s = Tensor::randn(0f32, 4.0, (2, g * t, p + t), &Device::Cpu).unwrap();
        let got = causal_softmax_grouped(&s, 0.5, t, p).unwrap();
        let want = causal_softmax(&s.reshape((2, g, t, p + t)).unwrap(), 0.5, p).unwrap();
        let d = (got.reshape((2, g, t, p + t)).unwrap() - want).unwrap().abs().unwrap();
        assert_eq!(d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert!(causal_softmax_grouped(&s, 0.5, 5, 3).is_err(), "rows not a multiple of T");
    }

    /// RoPE's backward from heads first is the transpose then the backward, and refuses tables
    /// of another shape.
    #[test]
    fn the_transposing_rope_backward_is_transpose_then_rope() {
        assert_eq!(check_rope_t(&Device::Cpu).unwrap(), 0.0);
        let d = Tensor::randn(0f32, 1.0, (1, 2, 5, 6), &Device::Cpu).unwrap();
        let c = Tensor::ones((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(grad::rope_t(&d, &c, &c).is_err(), "tables of 4 positions for 5");
    }

    /// Asking for a bf16 gradient changes nothing where none is made (f32 logits, the CPU), and
    /// the self-check reports 0 there.
    #[test]
    fn the_half_gradient_request_is_ignored_off_the_gpu() {
        let dev = Device::Cpu;
        let (s, t) =
            (Tensor::randn(0f32, 3.0, (4, 33), &dev).unwrap(), Tensor::randn(0f32, 3.0, (4, 33), &dev).unwrap());
        let labels = Tensor::from_vec(vec![0u32, 5, 17, 32], 4, &dev).unwrap();
        let (va, ga) = kd_loss_grad_as(&s, &t, &labels, 0.3, 2.0, true).unwrap();
        let (vb, gb) = kd_loss_grad(&s, &t, &labels, 0.3, 2.0).unwrap();
        assert_eq!(va, vb);
        assert_eq!(ga.dtype(), candle_core::DType::F32);
        assert_eq!(diff(&ga, &gb).unwrap(), 0.0);
        assert_eq!(check_kd_half(&dev).unwrap(), 0.0);
    }

    /// NVRTC (no GPU needed) accepts the kernels: run with the CUDA libraries on the path.
    #[cfg(feature = "cuda")]
    #[test]
    fn nvrtc_compiles_the_kernels() {
        let ptx = super::cuda::ptx().unwrap();
        assert_eq!(ptx.matches(".entry").count(), 25, "{ptx}");
    }
}
