//! Q4_K: super-blocks of 256 weights in 8 sub-blocks of 32,
//! `x ≈ (d * sc) * q - (dmin * m)` with 4-bit quants and 6-bit sub-block scales `sc`
//! and mins `m` quantized against the f16 `d` and `dmin`. 4.5 bits/weight.

use crate::f16::f16_to_f32;
use crate::f32::dot_dequantized;
use crate::grid::f16_le;
use crate::kquant::{dot_i32, get_scale_min_k4, make_qkx2_quants, nearest_int, pack_scale_min_k4, sum_sq, Qkx2Params};
use crate::q8_k::BlockQ8K;
use crate::weighted::{block_weights, check_codes, pick_block, quantize_k, KSpec};
use crate::QK_K;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// ggml's `block_q4_K` (144 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale for the quantized scales.
    pub d: f16,
    /// Super-block scale for the quantized mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins (see `get_scale_min_k4` in
    /// `kquant.rs` for the packing).
    pub scales: [u8; 12],
    /// 4-bit quants: each 64 weights use 32 bytes; weight `64 c + l` in the low nibble
    /// of `qs[32 c + l]`, weight `64 c + 32 + l` in the high nibble (l = 0..32).
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(core::mem::size_of::<BlockQ4K>() == 144);

/// Reference quantizer, following ggml's `quantize_row_q4_K_ref`: each sub-block of 32
/// is fit by `make_qkx2_quants` (weights `rms(x) + |x|`), scales and mins are quantized
/// to 6 bits against their maxima, then the weights requantized with the rounded values.
pub fn quantize_row_q4_k(src: &[f32], dst: &mut [BlockQ4K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q4_k: length mismatch");
    let params = Qkx2Params { rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false };
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut l = [0u8; QK_K];
        let (scales, mins) = fit_subblocks(x, 15, &params, &mut l);
        quantize_scales(&scales, &mins, &mut y.scales, &mut y.d, &mut y.dmin);
        requantize(x, &y.scales, y.d, y.dmin, 15, &mut l);
        for c in 0..QK_K / 64 {
            for i in 0..32 {
                y.qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// Fits each sub-block of 32 with `make_qkx2_quants` (shared with Q5_K).
pub(crate) fn fit_subblocks(x: &[f32], nmax: i32, params: &Qkx2Params, l: &mut [u8; QK_K]) -> ([f32; 8], [f32; 8]) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let av_x = libm::sqrtf(sum_sq(xs) / 32.0);
        let mut weights = [0.0f32; 32];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + libm::fabsf(v);
        }
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..32 * j + 32], params);
    }
    (scales, mins)
}

/// Quantizes the sub-block scales and mins to 6 bits against their maxima (shared
/// with Q5_K).
pub(crate) fn quantize_scales(scales: &[f32; 8], mins: &[f32; 8], packed: &mut [u8; 12], d: &mut f16, dmin: &mut f16) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (&s, &m) in scales.iter().zip(mins) {
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml stores nearest_int(...) into a uint8_t (wrapping) and then takes min(63, .).
    let ls: [u8; 8] = core::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = core::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    *packed = pack_scale_min_k4(&ls, &lm);
    *d = f16::from_f32(max_scale / 63.0);
    *dmin = f16::from_f32(max_min / 63.0);
}

/// Requantizes every weight with the final (rounded) sub-block scale and min: `l =
/// clamp(nearest_int((x + dmin m) / (d sc)), 0, nmax)`. Sub-blocks whose scale rounded
/// to zero keep the quants of the fit (shared with Q5_K).
pub(crate) fn requantize(x: &[f32], packed: &[u8; 12], d: f16, dmin: f16, nmax: i32, l: &mut [u8; QK_K]) {
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, packed);
        let dl = f16_to_f32(d) * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin) * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
}

/// The 256 unsigned 4-bit quants of a block, in element order.
#[inline]
fn quants(b: &BlockQ4K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for c in 0..QK_K / 64 {
        for i in 0..32 {
            q[64 * c + i] = b.qs[32 * c + i] & 0xf;
            q[64 * c + 32 + i] = b.qs[32 * c + i] >> 4;
        }
    }
    q
}

/// Expands one block: `x = (d * sc) * q - (dmin * m)` per sub-block of 32.
#[inline]
pub fn dequantize_block_q4_k(b: &BlockQ4K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    let q = quants(b);
    for (j, (o, qs)) in out.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
        let (sc, m) = get_scale_min_k4(j, &b.scales);
        let dl = d * sc as f32;
        let ml = dmin * m as f32;
        for (o, &q) in o.iter_mut().zip(qs) {
            *o = dl * q as f32 - ml;
        }
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q4_k(src: &[BlockQ4K], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK_K, "dequantize_row_q4_k: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        dequantize_block_q4_k(b, out.try_into().unwrap());
    }
}

/// Shape and search windows of the weighted quantizer.
const WEIGHTED: KSpec = KSpec {
    sub: 32,
    q: (0, 15),
    sc: (0, 63),
    m_max: 63,
    sub_k: (9.5, 21.5),
    phases: &[0.0],
    sc_k: (0.5, 1.3),
    refine: 2,
};

/// The sub-block scales and mins of a weighted fit, packed (shared with Q5_K).
pub(crate) fn pack_weighted_scales(sc: &[i32; 16], m: &[i32; 16]) -> [u8; 12] {
    pack_scale_min_k4(&core::array::from_fn(|j| sc[j] as u8), &core::array::from_fn(|j| m[j] as u8))
}

/// Importance-weighted quantizer: per super-block the f16 `d`, `dmin`, the 6-bit sub-block
/// scales and mins, and the codes minimizing `Σ importance[i] (x[i] - x̂[i])²`. Each
/// sub-block of 32 is fit by a least-squares search over every code vector in a window of
/// scales; `d` and `dmin` come from the same search over the sub-block scales and mins
/// (weighted by their sensitivity, as ggml's `make_qp_quants`); every sub-block then takes
/// the integer scale and min whose re-rounded codes give the lowest error, alternating with
/// least-squares refits of `d`, `dmin` (see `weighted.rs`). Never worse than
/// [`quantize_row_q4_k`] on a block.
pub fn quantize_row_q4_k_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockQ4K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q4_k_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_q4_k_weighted: importance length mismatch");
    for ((x, imp), y) in src.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(dst.iter_mut()) {
        let mut w = [0.0f32; QK_K];
        block_weights(imp, &mut w);
        let k = quantize_k(&WEIGHTED, x, &w);
        let mut ours = BlockQ4K::zeroed();
        ours.d = k.d;
        ours.dmin = k.dmin;
        ours.scales = pack_weighted_scales(&k.sc, &k.m);
        set_block_codes_q4_k(&mut ours, &k.q);
        let mut reference = BlockQ4K::zeroed();
        quantize_row_q4_k(x, core::slice::from_mut(&mut reference));
        *y = pick_block(x, &w, ours, reference, dequantize_block_q4_k);
    }
}

/// Per-element grid of the Q4_K/Q5_K layout: sub-block `j` (32 elements) has
/// `scale = d * sc_j`, `offset = -(dmin * m_j)`.
pub(crate) fn grid_k4(d: f16, dmin: f16, packed: &[u8; 12], scale: &mut [f32; QK_K], offset: &mut [f32; QK_K]) {
    let d = f16_to_f32(d);
    let dmin = f16_to_f32(dmin);
    for (j, (s, o)) in scale.chunks_exact_mut(32).zip(offset.chunks_exact_mut(32)).enumerate() {
        let (sc, m) = get_scale_min_k4(j, packed);
        s.fill(d * sc as f32);
        o.fill(-(dmin * m as f32));
    }
}

/// The block's grid: in sub-block `j` (32 elements), `scale = d * sc_j` and
/// `offset = -(dmin * m_j)`, `q` in `(0, 15)`. `scale * q + offset` is exactly
/// [`dequantize_block_q4_k`]'s `(d * sc) * q - (dmin * m)`.
pub fn block_grid_q4_k(b: &BlockQ4K, scale: &mut [f32; QK_K], offset: &mut [f32; QK_K]) -> (i32, i32) {
    grid_k4(b.d, b.dmin, &b.scales, scale, offset);
    (0, 15)
}

/// The stored codes (`0..=15`) in element order.
pub fn block_codes_q4_k(b: &BlockQ4K, codes: &mut [i32; QK_K]) {
    for (c, q) in codes.iter_mut().zip(quants(b)) {
        *c = q as i32;
    }
}

/// Stores `codes` (element order, each in `0..=15`; panics otherwise), keeping the scales.
pub fn set_block_codes_q4_k(b: &mut BlockQ4K, codes: &[i32; QK_K]) {
    check_codes("set_block_codes_q4_k", codes, 0, 15);
    for c in 0..QK_K / 64 {
        for i in 0..32 {
            b.qs[32 * c + i] = codes[64 * c + i] as u8 | ((codes[64 * c + 32 + i] as u8) << 4);
        }
    }
}

/// Integer part of the Q4_K/Q5_K dots: `(Σ_j sc_j Σ_{i in j} q_i qx_i, Σ_g m_{g/2} bsums_g)`.
#[inline]
pub(crate) fn dot_scaled_subblocks(q: &[u8; QK_K], packed: &[u8; 12], x: &BlockQ8K) -> (i32, i32) {
    let mut isum = 0i32;
    let mut summs = 0i32;
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, packed);
        isum += sc as i32 * dot_i32(&q[32 * j..32 * j + 32], &x.qs[32 * j..32 * j + 32]);
        summs += m as i32 * (x.bsums[2 * j] as i32 + x.bsums[2 * j + 1] as i32);
    }
    (isum, summs)
}

/// Q4_K · Q8_K: per block, in integers, `isum = Σ_j sc_j Σ q qx` and the min term
/// `summs = Σ_j m_j (bsums_2j + bsums_2j+1)`; then `dx (d isum - dmin summs)`.
pub fn vec_dot_q4_k_q8_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q4_k_q8_k: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let (isum, summs) = dot_scaled_subblocks(&quants(bw), &bw.scales, bx);
        let d = f16_to_f32(bw.d) * bx.d;
        let dmin = f16_to_f32(bw.dmin) * bx.d;
        sumf += d * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q4_K weights · f32 activations.
pub fn vec_dot_q4_k_f32(w: &[BlockQ4K], x: &[f32]) -> f32 {
    dot_dequantized(w, x, dequantize_block_q4_k)
}

/// The integer kernels' view of a block (see [`crate::grid`]).
impl crate::grid::Grid for BlockQ4K {
    const TY: crate::GgmlType = crate::GgmlType::Q4_K;
    const GROUP: usize = 32;
    const MAX_CODE: u8 = 15;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let blk: &[u8; 144] = blk.try_into().unwrap();
        let (d, dmin) = (f16_le(blk, 0), f16_le(blk, 2));
        let u: &mut [u8; QK_K] = u.try_into().unwrap();
        for c in 0..QK_K / 64 {
            for l in 0..32 {
                let q = blk[16 + 32 * c + l];
                u[64 * c + l] = q & 0xf;
                u[64 * c + 32 + l] = q >> 4;
            }
        }
        let sc: &[u8; 12] = blk[4..16].try_into().unwrap();
        for j in 0..8 {
            let (scale, min) = get_scale_min_k4(j, sc);
            s[j] = d * scale as f32;
            m[j] = -(dmin * min as f32);
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockQ4K>();
    }
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn quant_layout() {
        // Only the high nibble of qs[32 + 3] set: weight 64 + 32 + 3 = 99 (sub-block 3).
        let mut b = BlockQ4K::zeroed();
        b.qs[35] = 0x50;
        b.scales = pack_scale_min_k4(&[1; 8], &[0; 8]);
        b.d = f16::ONE;
        let mut out = [0.0f32; QK_K];
        dequantize_block_q4_k(&b, &mut out);
        let nonzero: std::vec::Vec<usize> = (0..QK_K).filter(|&i| out[i] != 0.0).collect();
        assert_eq!(nonzero, [99]);
        assert_eq!(out[99], 5.0);
    }

    #[test]
    fn zero_block() {
        let mut b = [BlockQ4K::zeroed()];
        quantize_row_q4_k(&[0.0; QK_K], &mut b);
        assert_eq!(b[0], BlockQ4K::zeroed());
    }

    #[test]
    fn roundtrip_gaussian() {
        // 16 levels per 32 weights with 6-bit scales/mins: Q4_1's ≈ 7.9 %, a bit better
        // from the error-minimizing fit. Measured 7.14 %.
        let e = gaussian_roundtrip_error(GgmlType::Q4_K, 64, 1024);
        assert!(e < 0.085, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q4_K, &[256, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q4_K, &[256, 1024]);
    }

    #[test]
    fn weighted_beats_reference() {
        // Squared error relative to quantize_row_q4_k on 32 x 1024 N(0, 1) values (block by
        // block never worse; checked inside). Measured: uniform importance 0.9431, log-normal
        // importance (exp(1.5 z)) 0.5921.
        let (uniform, weighted) = weighted_vs_reference(GgmlType::Q4_K, 32, 1024);
        assert!(uniform < 0.96 && weighted < 0.64, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_weighted_edge_cases(GgmlType::Q4_K);
    }

    #[test]
    fn block_grid_contract() {
        check_block_grid(GgmlType::Q4_K);
    }

    #[test]
    fn grid_data_is_reproduced() {
        check_grid_data_is_reproduced(GgmlType::Q4_K, 1.0);
    }
}
