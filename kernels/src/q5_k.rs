//! Q5_K: like Q4_K (super-blocks of 256, 8 sub-blocks of 32 with 6-bit scales and
//! mins) but with 5-bit quants, the fifth bits stored in `qh`. 5.5 bits/weight.

use crate::f16::f16_to_f32;
use crate::f32::dot_dequantized;
use crate::grid::f16_le;
use crate::kquant::{get_scale_min_k4, Qkx2Params};
use crate::q4_k::{dot_scaled_subblocks, fit_subblocks, grid_k4, pack_weighted_scales, quantize_scales, requantize};
use crate::q8_k::BlockQ8K;
use crate::weighted::{block_weights, check_codes, pick_block, quantize_k, KSpec};
use crate::QK_K;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// ggml's `block_q5_K` (176 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale for the quantized scales.
    pub d: f16,
    /// Super-block scale for the quantized mins.
    pub dmin: f16,
    /// Eight 6-bit scales and mins, packed as in Q4_K.
    pub scales: [u8; 12],
    /// Fifth bits: bit `k` of `qh[l]` belongs to weight `32 k + l`.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits, packed as Q4_K's quants.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(core::mem::size_of::<BlockQ5K>() == 176);

/// Reference quantizer, following ggml's `quantize_row_q5_K_ref` (as Q4_K with
/// `nmax = 31` and a narrower scale search).
pub fn quantize_row_q5_k(src: &[f32], dst: &mut [BlockQ5K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q5_k: length mismatch");
    let params = Qkx2Params { rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false };
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut l = [0u8; QK_K];
        let (scales, mins) = fit_subblocks(x, 31, &params, &mut l);
        quantize_scales(&scales, &mins, &mut y.scales, &mut y.d, &mut y.dmin);
        requantize(x, &y.scales, y.d, y.dmin, 31, &mut l);
        y.qh = [0; QK_K / 8];
        for c in 0..QK_K / 64 {
            for i in 0..32 {
                let (l1, l2) = (l[64 * c + i], l[64 * c + 32 + i]);
                y.qh[i] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
                y.qs[32 * c + i] = (l1 & 0xf) | ((l2 & 0xf) << 4);
            }
        }
    }
}

/// The 256 unsigned 5-bit quants of a block, in element order.
#[inline]
fn quants(b: &BlockQ5K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for c in 0..QK_K / 64 {
        for i in 0..32 {
            let h1 = ((b.qh[i] >> (2 * c)) & 1) << 4;
            let h2 = ((b.qh[i] >> (2 * c + 1)) & 1) << 4;
            q[64 * c + i] = (b.qs[32 * c + i] & 0xf) | h1;
            q[64 * c + 32 + i] = (b.qs[32 * c + i] >> 4) | h2;
        }
    }
    q
}

/// Expands one block: `x = (d * sc) * q - (dmin * m)` per sub-block of 32.
#[inline]
pub fn dequantize_block_q5_k(b: &BlockQ5K, out: &mut [f32; QK_K]) {
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
pub fn dequantize_row_q5_k(src: &[BlockQ5K], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK_K, "dequantize_row_q5_k: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        dequantize_block_q5_k(b, out.try_into().unwrap());
    }
}

/// Shape and search windows of the weighted quantizer.
const WEIGHTED: KSpec = KSpec {
    sub: 32,
    q: (0, 31),
    sc: (0, 63),
    m_max: 63,
    sub_k: (19.0, 38.0),
    phases: &[0.0],
    sc_k: (0.5, 1.3),
    refine: 2,
};

/// Importance-weighted quantizer: as [`crate::q4_k::quantize_row_q4_k_weighted`] with
/// 5-bit codes — per super-block the f16 `d`, `dmin`, 6-bit sub-block scales and mins and
/// the codes minimizing `Σ importance[i] (x[i] - x̂[i])²`. Never worse than
/// [`quantize_row_q5_k`] on a block.
pub fn quantize_row_q5_k_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockQ5K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q5_k_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_q5_k_weighted: importance length mismatch");
    for ((x, imp), y) in src.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(dst.iter_mut()) {
        let mut w = [0.0f32; QK_K];
        block_weights(imp, &mut w);
        let k = quantize_k(&WEIGHTED, x, &w);
        let mut ours = BlockQ5K::zeroed();
        ours.d = k.d;
        ours.dmin = k.dmin;
        ours.scales = pack_weighted_scales(&k.sc, &k.m);
        set_block_codes_q5_k(&mut ours, &k.q);
        let mut reference = BlockQ5K::zeroed();
        quantize_row_q5_k(x, core::slice::from_mut(&mut reference));
        *y = pick_block(x, &w, ours, reference, dequantize_block_q5_k);
    }
}

/// The block's grid: in sub-block `j` (32 elements), `scale = d * sc_j` and
/// `offset = -(dmin * m_j)`, `q` in `(0, 31)`. `scale * q + offset` is exactly
/// [`dequantize_block_q5_k`]'s `(d * sc) * q - (dmin * m)`.
pub fn block_grid_q5_k(b: &BlockQ5K, scale: &mut [f32; QK_K], offset: &mut [f32; QK_K]) -> (i32, i32) {
    grid_k4(b.d, b.dmin, &b.scales, scale, offset);
    (0, 31)
}

/// The stored codes (`0..=31`) in element order.
pub fn block_codes_q5_k(b: &BlockQ5K, codes: &mut [i32; QK_K]) {
    for (c, q) in codes.iter_mut().zip(quants(b)) {
        *c = q as i32;
    }
}

/// Stores `codes` (element order, each in `0..=31`; panics otherwise), keeping the scales.
pub fn set_block_codes_q5_k(b: &mut BlockQ5K, codes: &[i32; QK_K]) {
    check_codes("set_block_codes_q5_k", codes, 0, 31);
    b.qh = [0; QK_K / 8];
    for c in 0..QK_K / 64 {
        for i in 0..32 {
            let (l1, l2) = (codes[64 * c + i] as u8, codes[64 * c + 32 + i] as u8);
            b.qh[i] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
            b.qs[32 * c + i] = (l1 & 0xf) | ((l2 & 0xf) << 4);
        }
    }
}

/// Q5_K · Q8_K: as Q4_K, `dx (d Σ_j sc_j Σ q qx - dmin Σ_j m_j bsums_j)` with the
/// integer sums computed first.
pub fn vec_dot_q5_k_q8_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q5_k_q8_k: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let (isum, summs) = dot_scaled_subblocks(&quants(bw), &bw.scales, bx);
        let d = f16_to_f32(bw.d) * bx.d;
        let dmin = f16_to_f32(bw.dmin) * bx.d;
        sumf += d * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q5_K weights · f32 activations.
pub fn vec_dot_q5_k_f32(w: &[BlockQ5K], x: &[f32]) -> f32 {
    dot_dequantized(w, x, dequantize_block_q5_k)
}

/// The integer kernels' view of a block (see [`crate::grid`]).
impl crate::grid::Grid for BlockQ5K {
    const TY: crate::GgmlType = crate::GgmlType::Q5_K;
    const GROUP: usize = 32;
    const MAX_CODE: u8 = 31;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let blk: &[u8; 176] = blk.try_into().unwrap();
        let (d, dmin) = (f16_le(blk, 0), f16_le(blk, 2));
        let u: &mut [u8; QK_K] = u.try_into().unwrap();
        for c in 0..QK_K / 64 {
            for l in 0..32 {
                let (q, h) = (blk[48 + 32 * c + l], blk[16 + l] >> (2 * c));
                u[64 * c + l] = (q & 0xf) | ((h & 1) << 4);
                u[64 * c + 32 + l] = (q >> 4) | ((h & 2) << 3);
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
        crate::grid::tests::check_unpack::<BlockQ5K>();
    }
    use super::*;
    use crate::kquant::pack_scale_min_k4;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn high_bit_layout() {
        // Only bit 5 of qh[9] set: weight 32 * 5 + 9 = 169 = 64 * 2 + 32 + 9 gets q = 16.
        let mut b = BlockQ5K::zeroed();
        b.qh[9] = 1 << 5;
        b.scales = pack_scale_min_k4(&[1; 8], &[0; 8]);
        b.d = f16::ONE;
        let mut out = [0.0f32; QK_K];
        dequantize_block_q5_k(&b, &mut out);
        let nonzero: std::vec::Vec<usize> = (0..QK_K).filter(|&i| out[i] != 0.0).collect();
        assert_eq!(nonzero, [169]);
        assert_eq!(out[169], 16.0);
    }

    #[test]
    fn roundtrip_gaussian() {
        // 32 levels per 32 weights with 6-bit scales/mins: Q5_1's ≈ 3.8 %, a bit
        // better from the fit. Measured 3.62 %.
        let e = gaussian_roundtrip_error(GgmlType::Q5_K, 64, 1024);
        assert!(e < 0.043, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q5_K, &[256, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q5_K, &[256, 1024]);
    }

    #[test]
    fn weighted_beats_reference() {
        // Squared error relative to quantize_row_q5_k on 32 x 1024 N(0, 1) values (block by
        // block never worse; checked inside). Measured: uniform importance 0.8727, log-normal
        // importance (exp(1.5 z)) 0.5514.
        let (uniform, weighted) = weighted_vs_reference(GgmlType::Q5_K, 32, 1024);
        assert!(uniform < 0.89 && weighted < 0.6, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_weighted_edge_cases(GgmlType::Q5_K);
    }

    #[test]
    fn block_grid_contract() {
        check_block_grid(GgmlType::Q5_K);
    }

    #[test]
    fn grid_data_is_reproduced() {
        // Measured: 63 of 64 blocks.
        check_grid_data_is_reproduced(GgmlType::Q5_K, 0.95);
    }
}
