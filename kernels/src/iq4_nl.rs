//! IQ4_NL: blocks of 32 weights as 4-bit indices into a fixed non-linear grid of 16 values
//! ([`KVALUES_IQ4NL`], -127 … 113) with one f16 scale, `x ≈ d * KVALUES_IQ4NL[q]`. Dots
//! against Q8_0 activations.
//!
//! Also holds what IQ4_XS (`iq4_xs.rs`) shares with it: the grid, ggml's `best_index_int8`
//! and the block search of ggml's `quantize_row_iq4_nl_impl`.

use crate::f16::f16_to_f32;
use crate::f32::{reduce_lanes, LANES};
use crate::grid::f16_le;
use crate::kquant::{nearest_int, GROUP_MAX_EPS};
use crate::q8_0::BlockQ8_0;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per IQ4_NL block (ggml's `QK4_NL`).
pub const QK4_NL: usize = 32;

/// ggml's `kvalues_iq4nl`: the 16 grid points of IQ4_NL and IQ4_XS.
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// [`KVALUES_IQ4NL`] + 128, as unsigned bytes: the codes the integer kernels multiply (an
/// unsigned operand of `vpdpbusd`), looked up by the AVX-512 decode kernels and by
/// [`unpack_kvalues16`]. A constant, so that no kernel call rebuilds it.
pub const KVALUES_IQ4NL_U8: [u8; 16] = {
    let mut g = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        g[i] = (KVALUES_IQ4NL[i] as i16 + 128) as u8;
        i += 1;
    }
    g
};

/// ggml's `block_iq4_nl` (18 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4NL {
    /// Scale: the weighted least-squares fit `Σ w q x / Σ w q²` (see [`quantize_row_iq4_nl`]).
    pub d: f16,
    /// Grid indices, two per byte: element `j` in the low nibble of `qs[j]`, element `j + 16`
    /// in the high nibble.
    pub qs: [u8; QK4_NL / 2],
}
const _: () = assert!(core::mem::size_of::<BlockIQ4NL>() == 18);
const _: () = assert!(LANES == QK4_NL / 2);

/// The grid value of index `q` (a nibble), as f32.
#[inline(always)]
pub(crate) fn kv(q: u8) -> f32 {
    KVALUES_IQ4NL[(q & 0x0f) as usize] as f32
}

/// ggml's `best_index_int8(16, kvalues_iq4nl, x)`: the index of the grid value nearest `x`
/// (binary search; a tie goes to the upper value; NaN gives 15).
#[inline]
pub(crate) fn best_index(x: f32) -> u8 {
    let v = &KVALUES_IQ4NL;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (v[mu - 1] as f32) < v[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// What ggml's `quantize_row_iq4_nl_impl` produces for one (super-)block: the f16 scale, the
/// 6-bit sub-block scales (IQ4_XS only; `scales_h`, `scales_l` in its layout), the indices
/// in `l` (element order).
pub(crate) struct Iq4Fit {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; 4],
}

/// ggml's `quantize_row_iq4_nl_impl(x.len(), 32, x, …, values = kvalues_iq4nl, quant_weights,
/// ntry)`, operation for operation (same f32 operations in the same order, so the same bits):
///
/// * per 32-element group: element weights `qw · sqrt(σ² + x²)` (σ² = 2 · mean x² over the
///   whole block) with importance `qw`, else `x²`; a first scale `±max / -127` (`max`: the
///   element of largest magnitude; `+` when `ntry > 0`), indices by nearest grid value,
///   the least-squares scale `Σ w q x / Σ w q²`, then `2 ntry + 1` more trial scales
///   `(itry - 127) / max` kept when their fit is better (the indices keep the first pass's);
/// * one group (IQ4_NL): the scale is stored as it is; with `ntry > 0` the indices are
///   recomputed against it;
/// * 8 groups (IQ4_XS): the super-block scale `d = -max_scale / 32` (`max_scale`: the group
///   scale of largest magnitude), group scales `clamp(round(scale / d), -32, 31)` stored
///   `+ 32`, indices recomputed against each `d · l`.
///
/// A group whose largest magnitude is below 1e-15 gets scale 0. In ggml's IQ4_NL reference
/// (`ntry = -1`) the indices of such a block are not written (the buffer holds whatever the
/// previous block left, or uninitialized memory for the first); here they are those of
/// value 0 (index 8), which is what ggml writes for them with `ntry > 0`. Either way the block
/// dequantizes to zeros.
pub(crate) fn quantize_iq4_impl(x: &[f32], quant_weights: Option<&[f32]>, ntry: i32, l: &mut [u8]) -> Iq4Fit {
    let sb = x.len();
    debug_assert!(sb == 32 || sb == 256);
    debug_assert_eq!(l.len(), sb);
    let values = &KVALUES_IQ4NL;
    let v0 = values[0] as f32;

    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / sb as f32;

    let zero_index = best_index(0.0);
    let mut scales = [0.0f32; 8];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    let mut weight = [0.0f32; 32];
    for ib in 0..sb / 32 {
        let xb = &x[ib * 32..(ib + 1) * 32];
        let lb = &mut l[ib * 32..(ib + 1) * 32];
        match quant_weights {
            Some(qw) => {
                let qw = &qw[ib * 32..(ib + 1) * 32];
                for j in 0..32 {
                    weight[j] = qw[j] * libm::sqrtf(sigma2 + xb[j] * xb[j]);
                }
            }
            None => {
                for j in 0..32 {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            let ax = libm::fabsf(v);
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            lb.fill(zero_index);
            continue;
        }
        let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..32 {
            let li = best_index(id * xb[j]);
            lb[j] = li;
            let q = values[li as usize] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry + values[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..32 {
                let q = values[best_index(id * xb[j]) as usize] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        let abs_d = libm::fabsf(d);
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    if sb > 32 {
        let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
        let d = -max_scale / 32.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..sb / 32 {
            let li = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * li as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for (lj, &xj) in l[ib * 32..(ib + 1) * 32].iter_mut().zip(&x[ib * 32..(ib + 1) * 32]) {
                *lj = best_index(idl * xj);
            }
            let ls = (li + 32) as u8;
            scales_l[ib / 2] |= (ls & 0x0f) << (4 * (ib % 2));
            scales_h |= ((ls >> 4) as u16) << (2 * ib);
        }
        Iq4Fit { d: f16::from_f32(d), scales_h, scales_l }
    } else {
        if ntry > 0 {
            let id = if scales[0] != 0.0 { 1.0 / scales[0] } else { 0.0 };
            for (lj, &xj) in l.iter_mut().zip(x) {
                *lj = best_index(id * xj);
            }
        }
        Iq4Fit { d: f16::from_f32(scales[0]), scales_h: 0, scales_l: [0; 4] }
    }
}

/// Packs 32 indices (element order) into 16 bytes: element `j` low nibble of byte `j`,
/// element `j + 16` high nibble.
#[inline]
pub(crate) fn pack_nibbles32(l: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = l[j] | (l[j + 16] << 4);
    }
}

/// Per-group importance as ggml's search consumes it: entries that are negative, NaN or
/// infinite count as 0, and a 32-element group with no positive entry becomes uniform (all
/// 1; ggml would give such a group scale 0). Valid importance passes through unchanged, so
/// the result matches ggml's `quantize_iq4_*(…, quant_weights)` bit for bit.
pub(crate) fn sanitize_importance(importance: &[f32], w: &mut [f32]) {
    let valid = |v: f32| v > 0.0 && v.is_finite();
    for (ic, wc) in importance.chunks_exact(32).zip(w.chunks_exact_mut(32)) {
        if ic.iter().any(|&v| valid(v)) {
            for (wi, &v) in wc.iter_mut().zip(ic) {
                *wi = if valid(v) { v } else { 0.0 };
            }
        } else {
            wc.fill(1.0);
        }
    }
}

/// Reference quantizer, exactly ggml's `quantize_row_iq4_nl_ref` (`quantize_row_iq4_nl_impl`
/// with weights `x²` and `ntry = -1`: the scale is the least-squares fit of the indices
/// nearest `x · -127 / max`; see `quantize_iq4_impl` for the one difference, the indices
/// of an all-zero block).
pub fn quantize_row_iq4_nl(src: &[f32], dst: &mut [BlockIQ4NL]) {
    assert_eq!(src.len(), dst.len() * QK4_NL, "quantize_row_iq4_nl: length mismatch");
    let mut l = [0u8; QK4_NL];
    for (x, y) in src.chunks_exact(QK4_NL).zip(dst.iter_mut()) {
        let fit = quantize_iq4_impl(x, None, -1, &mut l);
        y.d = fit.d;
        pack_nibbles32(&l, &mut y.qs);
    }
}

/// Importance-weighted quantizer, exactly ggml's `quantize_iq4_nl(…, quant_weights =
/// importance)` (element weights `importance · sqrt(σ² + x²)`, 15 trial scales, indices
/// recomputed against the chosen scale). Importance: one value per element; invalid
/// entries count as 0 and a block without a positive entry is uniform (see
/// `sanitize_importance`). Unlike the search of the other types, this is ggml's algorithm
/// and is not guaranteed to beat [`quantize_row_iq4_nl`] block by block.
pub fn quantize_row_iq4_nl_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockIQ4NL]) {
    assert_eq!(src.len(), dst.len() * QK4_NL, "quantize_row_iq4_nl_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_iq4_nl_weighted: importance length mismatch");
    let (mut l, mut w) = ([0u8; QK4_NL], [0.0f32; QK4_NL]);
    for ((x, imp), y) in src.chunks_exact(QK4_NL).zip(importance.chunks_exact(QK4_NL)).zip(dst.iter_mut()) {
        sanitize_importance(imp, &mut w);
        let fit = quantize_iq4_impl(x, Some(&w), 7, &mut l);
        y.d = fit.d;
        pack_nibbles32(&l, &mut y.qs);
    }
}

/// Expands one block: `x[j] = d * KVALUES_IQ4NL[q[j]]`.
#[inline]
pub fn dequantize_block_iq4_nl(b: &BlockIQ4NL, out: &mut [f32; QK4_NL]) {
    let d = f16_to_f32(b.d);
    let (lo, hi) = out.split_at_mut(QK4_NL / 2);
    for j in 0..QK4_NL / 2 {
        lo[j] = d * kv(b.qs[j]);
        hi[j] = d * kv(b.qs[j] >> 4);
    }
}

/// Dequantizes a row of blocks (ggml's `dequantize_row_iq4_nl`).
pub fn dequantize_row_iq4_nl(src: &[BlockIQ4NL], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK4_NL, "dequantize_row_iq4_nl: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK4_NL)) {
        dequantize_block_iq4_nl(b, out.try_into().unwrap());
    }
}

/// IQ4_NL · Q8_0, as ggml's `ggml_vec_dot_iq4_nl_q8_0_generic`: per block
/// `Σ KVALUES_IQ4NL[qw] * qx` in i32, then scaled by `dx * dw`.
pub fn vec_dot_iq4_nl_q8_0(w: &[BlockIQ4NL], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_iq4_nl_q8_0: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let d = f16_to_f32(bx.d) * f16_to_f32(bw.d);
        let (mut s1, mut s2) = (0i32, 0i32);
        for j in 0..QK4_NL / 2 {
            s1 += bx.qs[j] as i32 * KVALUES_IQ4NL[(bw.qs[j] & 0x0f) as usize] as i32;
            s2 += bx.qs[j + QK4_NL / 2] as i32 * KVALUES_IQ4NL[(bw.qs[j] >> 4) as usize] as i32;
        }
        sumf += d * (s1 + s2) as f32;
    }
    sumf
}

/// IQ4_NL weights · f32 activations: per block, `Σ KVALUES_IQ4NL[q] x` in 16 lanes (elements
/// `k` and `k + 16` share lane `k`), then scaled by `d` into the running sums.
pub fn vec_dot_iq4_nl_f32(w: &[BlockIQ4NL], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK4_NL, x.len(), "vec_dot_iq4_nl_f32: {} blocks vs {} activations", w.len(), x.len());
    const H: usize = QK4_NL / 2;
    let mut acc = [0.0f32; LANES];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK4_NL)) {
        let d = f16_to_f32(b.d);
        let (xl, xh) = (&xs[..H], &xs[H..]);
        for k in 0..H {
            acc[k] += d * (kv(b.qs[k]) * xl[k] + kv(b.qs[k] >> 4) * xh[k]);
        }
    }
    reduce_lanes(&acc)
}

/// The integer kernels' view of a block (see [`crate::grid`]): codes
/// `u = KVALUES_IQ4NL[q] + 128` (1 ..= 241), `s = d`, `m = -128 d`. Not an affine grid in the
/// stored index, so IQ4_NL has no block grid (`has_block_grid` is false), only this view.
impl crate::grid::Grid for BlockIQ4NL {
    const TY: crate::GgmlType = crate::GgmlType::IQ4_NL;
    const GROUP: usize = 32;
    /// Codes reach 241: above the 127 of the generic AVX2/NEON kernels (see `table.rs`).
    const MAX_CODE: u8 = 255;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let d = f16_le(blk, 0);
        unpack_kvalues16(&blk[2..18], &mut u[..32]);
        (s[0], m[0]) = (d, -128.0 * d);
    }
}

/// 16 bytes of packed indices (element `j` low nibble of byte `j`, `j + 16` high nibble) as
/// 32 codes `KVALUES_IQ4NL[q] + 128`.
#[inline(always)]
pub(crate) fn unpack_kvalues16(qs: &[u8], u: &mut [u8]) {
    for j in 0..16 {
        u[j] = KVALUES_IQ4NL_U8[(qs[j] & 0x0f) as usize];
        u[j + 16] = KVALUES_IQ4NL_U8[(qs[j] >> 4) as usize];
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;
    use std::vec;

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockIQ4NL>();
    }

    #[test]
    fn best_index_is_the_nearest_grid_value() {
        for i in -1400..=1400 {
            let x = i as f32 * 0.1;
            let got = best_index(x);
            let dist = |q: usize| libm::fabsf(x - KVALUES_IQ4NL[q] as f32);
            let best = (0..16).map(dist).fold(f32::INFINITY, f32::min);
            assert_eq!(dist(got as usize), best, "x = {x}: index {got}");
        }
        // Ties go up (ggml: `x - v[mu-1] < v[mu] - x ? mu-1 : mu`): midway between 1 and 13.
        assert_eq!(best_index(7.0), 9);
        assert_eq!(best_index(0.0), 8);
        assert_eq!(best_index(f32::NAN), 15);
    }

    #[test]
    fn largest_magnitude_fits_the_end_of_the_grid() {
        // One large negative element maps to index 0 (-127); the least-squares scale is then
        // exactly max / -127 for a one-hot block.
        let mut x = [0.0f32; 32];
        x[3] = -2.54;
        let mut b = [BlockIQ4NL::zeroed()];
        quantize_row_iq4_nl(&x, &mut b);
        assert_eq!(b[0].qs[3] & 0x0f, 0);
        let mut y = [0.0f32; 32];
        dequantize_row_iq4_nl(&b, &mut y);
        assert!((y[3] + 2.54).abs() < 2e-3, "{}", y[3]);
        // Zeros: the grid value nearest 0 is 1 (index 8), times d = 0.02: small but not 0.
        assert_eq!(b[0].qs[0] & 0x0f, 8);
    }

    #[test]
    fn zero_block_is_zero() {
        let mut b = [BlockIQ4NL::zeroed()];
        quantize_row_iq4_nl(&[0.0; 32], &mut b);
        assert_eq!(b[0].d.to_bits(), 0);
        assert_eq!(b[0].qs, [0x88; 16]);
        quantize_row_iq4_nl_weighted(&[0.0; 32], &[1.0; 32], &mut b);
        assert_eq!((b[0].d.to_bits(), b[0].qs), (0, [0x88; 16]));
    }

    #[test]
    fn roundtrip_gaussian() {
        // 16 non-linear levels: measured 7.89 % (Q4_0: 8.53 %).
        let e = gaussian_roundtrip_error(GgmlType::IQ4_NL, 64, 1024);
        assert!(e < 0.085, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::IQ4_NL, &[32, 96, 1024], 0.01);
        check_vec_dot_f32(GgmlType::IQ4_NL, &[32, 96, 1024]);
    }

    #[test]
    fn weighted_lowers_weighted_error() {
        // ggml's weighted search (15 trial scales, importance · sqrt(σ² + x²)) against the
        // reference (one scale, weights x²). Measured: uniform importance 0.9025, log-normal
        // 0.6549 (aggregate; not block by block, see quantize_row_iq4_nl_weighted).
        let (uniform, weighted) = iq4_weighted_ratio(GgmlType::IQ4_NL);
        assert!(uniform < 0.95 && weighted < 0.7, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_iq4_weighted_edge_cases(GgmlType::IQ4_NL);
    }

    /// (uniform, log-normal) ratios of `Σ imp (x - x̂)²`, weighted over reference quantizer,
    /// on 32 rows of 1024 N(0, 1) values.
    pub(crate) fn iq4_weighted_ratio(ty: GgmlType) -> (f64, f64) {
        let mut rng = rng(0x1a7 ^ ty.id() as u64);
        let n = 1024;
        let mut tot = [[0.0f64; 2]; 2];
        for _ in 0..32 {
            let x = gaussian(&mut rng, n, 1.0);
            let imp_l = lognormal(&mut rng, n, 1.5);
            let ones = vec![1.0f32; n];
            let yr = dequantize(ty, &quantize(ty, &x), n);
            for (k, imp) in [&ones, &imp_l].into_iter().enumerate() {
                let yw = dequantize(ty, &quantize_weighted(ty, &x, imp), n);
                let e = |y: &[f32]| -> f64 {
                    x.iter().zip(y).zip(imp.iter()).map(|((&a, &b), &w)| w as f64 * (a as f64 - b as f64).powi(2)).sum()
                };
                tot[k][0] += e(&yw);
                tot[k][1] += e(&yr);
            }
        }
        let r = (tot[0][0] / tot[0][1], tot[1][0] / tot[1][1]);
        std::eprintln!("{ty}: weighted/reference error ratio: uniform {:.4}, log-normal {:.4}", r.0, r.1);
        r
    }

    /// Degenerate inputs and importance: no panic, deterministic, finite, zeros stay zeros.
    pub(crate) fn check_iq4_weighted_edge_cases(ty: GgmlType) {
        let bs = ty.block_size();
        let n = 2 * bs;
        let mut rng = rng(0xed9e ^ ty.id() as u64);
        let g = gaussian(&mut rng, n, 1.0);
        let xs: [(&str, std::vec::Vec<f32>); 5] = [
            ("zeros", vec![0.0; n]),
            ("constant", vec![0.75; n]),
            ("one-hot", (0..n).map(|i| if i % bs == 5 { 2.5 } else { 0.0 }).collect()),
            ("tiny", g.iter().map(|v| v * 1e-7).collect()),
            ("outlier", g.iter().enumerate().map(|(i, v)| if i % bs == 3 { 300.0 } else { *v }).collect()),
        ];
        let imps: [(&str, std::vec::Vec<f32>); 4] = [
            ("zero", vec![0.0; n]),
            ("uniform", vec![1.0; n]),
            ("sparse", (0..n).map(|i| if i % 5 == 0 { (i % 7) as f32 + 0.5 } else { 0.0 }).collect()),
            ("invalid", (0..n).map(|i| [f32::NAN, -1.0, f32::INFINITY, 2.0][i % 4]).collect()),
        ];
        for (xn, x) in &xs {
            for (iname, imp) in &imps {
                let q = quantize_weighted(ty, x, imp);
                assert_eq!(q, quantize_weighted(ty, x, imp), "{ty} {xn}/{iname}: not deterministic");
                let y = dequantize(ty, &q, n);
                assert!(y.iter().all(|v| v.is_finite()), "{ty} {xn}/{iname}: non-finite output");
                if *xn == "zeros" {
                    assert!(y.iter().all(|&v| v == 0.0), "{ty} {xn}/{iname}: zeros must stay zeros");
                }
                // All-zero importance is uniform importance.
                if *iname == "zero" {
                    assert_eq!(q, quantize_weighted(ty, x, &vec![1.0; n]), "{ty} {xn}: zero importance");
                }
            }
        }
    }
}
