//! Helpers shared by the K-quant reference quantizers, following ggml's
//! `nearest_int`, `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants` and
//! `get_scale_min_k4` step for step.
//!
//! Bit-compatibility notes: every floating-point expression below is evaluated in the
//! same order and with the same `f32` rounding as ggml's C (which is compiled without
//! `-ffast-math`; Rust never contracts `a * b + c` into an FMA, and neither does a C
//! build for a target without FMA or with `-ffp-contract=off`). `sqrtf` and `fabsf`
//! come from `libm` (both exact/correctly rounded, like the C library's).

/// Rounds to the nearest integer, ties to even, exactly like ggml's `nearest_int`:
/// adding 1.5 * 2^23 makes the FPU round (in its round-to-nearest-even mode) away all
/// fractional bits, and the integer is read back from the mantissa.
///
/// Valid for `|x| <= 4194303` (2^22 - 1), which all callers guarantee.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    debug_assert!(libm::fabsf(x) <= 4_194_303.0 || x.is_nan());
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Values below this are treated as an all-zero group (ggml's `GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL)`: symmetric
/// quantization of `x` to integers in `[-nmax, nmax - 1]` (stored in `l` offset by
/// `+nmax`), choosing the scale among 19 candidates `-(nmax + 0.1 * is) / max` that
/// maximizes the weighted fit with weights `x^2`. Returns the scale.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), l.len());
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = libm::fabsf(v);
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);

    let mut iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (&v, li) in x.iter().zip(l.iter_mut()) {
        let q = quant(iscale, v);
        *li = (q + nmax) as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let q = quant(iscale, v);
            let w = v * v;
            sumlx += w * v * q as f32;
            suml2 += w * q as f32 * q as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (&v, li) in x.iter().zip(l.iter_mut()) {
                *li = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants(n, nmax, x, L, do_rmse = true)`: symmetric quantization to
/// `[-nmax, nmax - 1]` (stored offset by `+nmax`), then up to 5 rounds of coordinate
/// descent on each quant, keeping a change when it improves the weighted (`x^2`) fit.
/// Returns the least-squares scale.
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), l.len());
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = libm::fabsf(v);
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (&v, li) in x.iter().zip(l.iter_mut()) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *li = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (&v, li) in x.iter().zip(l.iter_mut()) {
            let w = v * v;
            let old = *li as f32;
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for li in l.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Search parameters of [`make_qkx2_quants`] (ggml's `rmin, rdelta, nstep, use_mad`).
pub(crate) struct Qkx2Params {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Minimize the weighted absolute error instead of the weighted squared error.
    pub use_mad: bool,
}

/// ggml's `make_qkx2_quants`: asymmetric quantization `x ≈ scale * l - the_min` with
/// `l` in `[0, nmax]` and `the_min >= 0`, minimizing the weighted error over
/// `nstep + 1` candidate scales; each candidate's scale and min are refit by weighted
/// least squares. Returns `(scale, the_min)`.
pub(crate) fn make_qkx2_quants(nmax: i32, x: &[f32], weights: &[f32], l: &mut [u8], p: &Qkx2Params) -> (f32, f32) {
    let n = x.len();
    debug_assert!(weights.len() == n && l.len() == n && n <= 32);
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];

    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let err = |diff: f32| {
        if p.use_mad {
            libm::fabsf(diff)
        } else {
            diff * diff
        }
    };

    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((&v, &w), li) in x.iter().zip(weights).zip(l.iter_mut()) {
        *li = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
        let diff = scale * *li as f32 + min - v;
        best_error += w * err(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for ((&v, &w), la) in x.iter().zip(weights).zip(laux.iter_mut()) {
            let q = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *la = q as u8;
            let qf = q as f32;
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&v, &w), &la) in x.iter().zip(weights).zip(laux.iter()) {
                let diff = this_scale * la as f32 + this_min - v;
                cur_error += w * err(diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) from the 12-byte `scales`
/// field of Q4_K/Q5_K (ggml's `get_scale_min_k4`):
///
/// ```text
/// bytes 0..4 : scale[j]   (low 6 bits) | scale[j+4] bits 4..5 (top 2 bits)
/// bytes 4..8 : min[j]     (low 6 bits) | min[j+4]   bits 4..5 (top 2 bits)
/// bytes 8..12: scale[j+4] bits 0..3 (low nibble) | min[j+4] bits 0..3 (high nibble)
/// ```
#[inline]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Inverse of [`get_scale_min_k4`]: packs eight 6-bit scales and mins.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (s, m) = (ls[j], lm[j]);
        if j < 4 {
            q[j] = s;
            q[j + 4] = m;
        } else {
            q[j + 4] = (s & 0xf) | ((m & 0xf) << 4);
            q[j - 4] |= (s >> 4) << 6;
            q[j] |= (m >> 4) << 6;
        }
    }
    q
}

/// Integer dot product of a run of weight quants with Q8_K activation quants.
#[inline(always)]
pub(crate) fn dot_i32<T: Copy + Into<i32>>(q: &[T], x: &[i8]) -> i32 {
    q.iter().zip(x).map(|(&a, &b)| a.into() * b as i32).sum()
}

/// `Σ x[i]²`, summed in order (as ggml does before taking its RMS).
#[inline]
pub(crate) fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4999), -2);
        assert_eq!(nearest_int(3.7), 4);
        assert_eq!(nearest_int(-3.7), -4);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn scale_min_k4_roundtrips_all_values() {
        let ls: [u8; 8] = [0, 1, 17, 63, 32, 48, 5, 63];
        let lm: [u8; 8] = [63, 0, 31, 16, 15, 1, 62, 33];
        let packed = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &packed), (ls[j], lm[j]), "sub-block {j}");
        }
    }

    #[test]
    fn qkx2_fits_an_exact_grid() {
        // x = 0.25 * l - 1.0 exactly: the fit must reproduce the grid.
        let l_true: [u8; 16] = [0, 3, 15, 7, 1, 2, 9, 15, 0, 4, 4, 11, 13, 6, 5, 8];
        let x: [f32; 16] = core::array::from_fn(|i| 0.25 * l_true[i] as f32 - 1.0);
        let w = [1.0f32; 16];
        let mut l = [0u8; 16];
        let p = Qkx2Params { rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false };
        let (scale, min) = make_qkx2_quants(15, &x, &w, &mut l, &p);
        assert!((scale - 0.25).abs() < 1e-6, "scale {scale}");
        assert!((min - 1.0).abs() < 1e-6, "min {min}");
        assert_eq!(l, l_true);
    }
}
