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
//! Every kernel computes in f32 (bf16 in and out are widened and rounded to nearest even).
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `softmax(scale · s + causal mask)` over the last dimension of the scores `s` (.., T, P + T),
/// `p` = P cached positions before the T queries. Differentiable (closed-form backward).
pub fn causal_softmax(s: &Tensor, scale: f64, p: usize) -> Result<Tensor> {
    let s = s.contiguous()?;
    let dims = s.dims();
    let (t, n) = match dims {
        [.., t, n] => (*t, *n),
        _ => candle_core::bail!("causal_softmax: scores of rank {} (need ≥ 2)", dims.len()),
    };
    if n != p + t {
        candle_core::bail!("causal_softmax: {n} keys for {t} queries after {p} cached positions");
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
    x.apply_op3(&cos, &sin, Rope { sign: 1.0, t, h })
}

struct Rope {
    /// 1: rotate by θ; −1: by −θ (the backward).
    sign: f32,
    t: usize,
    h: usize,
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
    y.par_chunks_mut(2 * half).zip(x.par_chunks(2 * half)).enumerate().for_each(|(k, (y, x))| {
        let pos = (k / op.h) % op.t;
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
        Ok((by_dtype!(s1, "rope", rope_cpu(s1, l1, s2, l2, s3, l3, self))?, l1.shape().clone()))
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
            "rope",
            &[(s1, l1), (s2, l2), (s3, l3)],
            el,
            el / 2,
            el / 2,
            half,
            &[self.t as i32, self.h as i32],
            self.sign,
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
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
        let hat = x.apply_op2_no_bwd(&g.ones_like()?, self)?;
        let n = g.elem_count();
        // Summed over every row: in f32 at least (a bf16 sum of thousands of rows drifts).
        let wide = |t: &Tensor| match t.dtype() {
            candle_core::DType::BF16 | candle_core::DType::F16 => t.to_dtype(candle_core::DType::F32),
            _ => Ok(t.clone()),
        };
        let dg = (wide(&dy)? * wide(&hat)?)?.reshape(((), n))?.sum(0)?.to_dtype(g.dtype())?;
        Ok((Some(dx), Some(dg)))
    }
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

/// The same four ops composed of candle's own element-wise kernels: what `distill` runs with
/// `PITH_DISTILL_UNFUSED=1`, and the reference [`check`] holds the fused ops to.
pub mod plain {
    use candle_core::{Result, Tensor, D};

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
}

/// The largest difference between each fused op and candle's own composition of it, forward
/// and backward (every input's gradient), on random inputs on `dev`: a self-check of the CUDA
/// kernels before a run, and the CPU ops' test.
pub fn check(dev: &candle_core::Device) -> Result<f32> {
    use candle_core::Var;
    let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>() };
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
        let mut worst = diff(&yf, &yp)?;
        for v in &vars {
            match (gf.get(v.as_tensor()), gp.get(v.as_tensor())) {
                (Some(a), Some(b)) => worst = worst.max(diff(a, b)?),
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
    // SwiGLU of (5, 24).
    let glu = compare(
        &[Tensor::randn(0f32, 2.0, (5, 24), dev)?, Tensor::randn(0f32, 1.0, (5, 24), dev)?],
        &|x| swiglu(&x[0], &x[1]),
        &|x| plain::swiglu(&x[0], &x[1]),
    )?;
    Ok(soft.max(rot).max(norm).max(glu))
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

// Rotary embedding of x (pairs along the last dim) by cos/sin (t, n): pair k is pair k % n of
// head (k / n) % h at position (k / (n h)) % t; sign -1 rotates back (the backward).
template <typename T>
__device__ void rope_pairs(const T* x, const T* c, const T* s, T* y, long long pairs, int n, int t, int h, float sign) {
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= pairs) return;
    int i = (int)(k % n);
    long long pos = (k / ((long long)n * h)) % t;
    float a = ld(x, 2 * k), b = ld(x, 2 * k + 1);
    float cs = ld(c, pos * n + i), sn = sign * ld(s, pos * n + i);
    st(y, 2 * k, a * cs - b * sn);
    st(y, 2 * k + 1, a * sn + b * cs);
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

#define F32 float
#define BF16 unsigned short
#define KERNELS(T, S) \
extern "C" __global__ void causal_softmax_##S(const T* x, T* y, long long rows, int n, int t, int p, float scale) { softmax_fwd(x, y, rows, n, t, p, scale); } \
extern "C" __global__ void causal_softmax_bwd_##S(const T* y, const T* dy, T* dx, long long rows, int n, float scale) { softmax_bwd(y, dy, dx, rows, n, scale); } \
extern "C" __global__ void rope_##S(const T* x, const T* c, const T* s, T* y, long long pairs, int n, int t, int h, float sign) { rope_pairs(x, c, s, y, pairs, n, t, h, sign); } \
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

    /// NVRTC (no GPU needed) accepts the kernels: run with the CUDA libraries on the path.
    #[cfg(feature = "cuda")]
    #[test]
    fn nvrtc_compiles_the_kernels() {
        let ptx = super::cuda::ptx().unwrap();
        assert_eq!(ptx.matches(".entry").count(), 14, "{ptx}");
    }
}
