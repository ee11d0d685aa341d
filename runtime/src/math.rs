//! Scalar math that works with and without `std` (std's versions are faster where available).

#[cfg(feature = "std")]
mod imp {
    #[inline]
    pub fn expf(x: f32) -> f32 {
        x.exp()
    }
    #[inline]
    pub fn sqrtf(x: f32) -> f32 {
        x.sqrt()
    }
    #[inline]
    pub fn powf(x: f32, y: f32) -> f32 {
        x.powf(y)
    }
    #[inline]
    pub fn sin_cos(x: f32) -> (f32, f32) {
        x.sin_cos()
    }
    #[inline]
    pub fn lnf(x: f64) -> f64 {
        x.ln()
    }
    #[inline]
    pub fn logf(x: f32) -> f32 {
        x.ln()
    }
}

#[cfg(not(feature = "std"))]
mod imp {
    #[inline]
    pub fn expf(x: f32) -> f32 {
        libm::expf(x)
    }
    #[inline]
    pub fn sqrtf(x: f32) -> f32 {
        libm::sqrtf(x)
    }
    #[inline]
    pub fn powf(x: f32, y: f32) -> f32 {
        libm::powf(x, y)
    }
    #[inline]
    pub fn sin_cos(x: f32) -> (f32, f32) {
        libm::sincosf(x)
    }
    #[inline]
    pub fn lnf(x: f64) -> f64 {
        libm::log(x)
    }
    #[inline]
    pub fn logf(x: f32) -> f32 {
        libm::logf(x)
    }
}

pub use imp::*;

/// `1 / √(mean(x²) + eps)`: RMSNorm's factor (sum of squares in f64, as ggml does).
pub fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let ss = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64;
    1.0 / sqrtf(ss as f32 + eps)
}

/// RMSNorm of `x` into `out`, scaled by `w`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// RMSNorm of `x` in place, scaled by `w` (per-head query/key norms).
pub fn rmsnorm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (xi, &wi) in x.iter_mut().zip(w) {
        *xi = *xi * scale * wi;
    }
}
