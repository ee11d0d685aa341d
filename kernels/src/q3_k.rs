//! Q3_K: super-blocks of 256 weights in 16 sub-blocks of 16, `x ≈ d * (sc - 32) * q`
//! with signed 3-bit quants `q` in `[-4, 3]` (2 low bits + 1 high bit stored apart) and
//! 6-bit sub-block scales quantized against the f16 `d`. 3.4375 bits/weight.

use crate::f16::f16_to_f32;
use crate::f32::dot_dequantized;
use crate::grid::f16_le;
use crate::kquant::{dot_i32, make_q3_quants, nearest_int};
use crate::q8_k::BlockQ8K;
use crate::weighted::{block_weights, check_codes, pick_block, quantize_k, KSpec};
use crate::QK_K;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// ggml's `block_q3_K` (110 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    /// High bits: bit `k` of `hmask[l]` is the high bit of weight `32 k + l`
    /// (k = 0..8, l = 0..32). A *set* bit means the quant is `low` (0..=3), a clear bit
    /// `low - 4`.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits, packed like Q2_K: weight `128 h + 32 k + l` in bits `2k..2k+2` of
    /// `qs[32 h + l]`.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales (stored `+32`): low nibbles of scales 0..8 in bytes 0..8
    /// (low half), of scales 8..16 in bytes 0..8 (high half); the top 2 bits of scale
    /// `j` in bits `2 (j / 4)..` of byte `8 + j % 4`.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(core::mem::size_of::<BlockQ3K>() == 110);

/// Reads the 6-bit scale `j` (still offset by +32).
#[inline]
fn scale6(scales: &[u8; 12], j: usize) -> u8 {
    let low = if j < 8 { scales[j] & 0xf } else { scales[j - 8] >> 4 };
    low | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)
}

/// The sixteen signed sub-block scales `sc - 32`.
#[inline]
fn scales(b: &BlockQ3K) -> [i32; 16] {
    core::array::from_fn(|j| scale6(&b.scales, j) as i32 - 32)
}

/// Reference quantizer, following ggml's `quantize_row_q3_K_ref`: sub-block scales from
/// `make_q3_quants` (iteratively refined, weights `x^2`), quantized to 6 bits against
/// the one of largest magnitude, then the weights requantized with the rounded scales.
pub fn quantize_row_q3_k(src: &[f32], dst: &mut [BlockQ3K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q3_k: length mismatch");
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            let scale = libm::fabsf(scales[j]);
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        y.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                let ls = (nearest_int(iscale * s) as i8).clamp(-32, 31) + 32;
                if j < 8 {
                    y.scales[j] = (ls & 0xf) as u8;
                } else {
                    y.scales[j - 8] |= ((ls & 0xf) << 4) as u8;
                }
                y.scales[j % 4 + 8] |= ((ls >> 4) << (2 * (j / 4))) as u8;
            }
            y.d = f16::from_f32(1.0 / iscale);
        } else {
            y.d = f16::ZERO;
        }

        for j in 0..QK_K / 16 {
            let sc = scale6(&y.scales, j) as i8 - 32;
            let d = f16_to_f32(y.d) * sc as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / d).clamp(-4, 3) + 4) as i8;
            }
        }

        y.hmask = [0; QK_K / 8];
        for (j, lj) in l.iter_mut().enumerate() {
            if *lj > 3 {
                y.hmask[j % 32] |= 1 << (j / 32);
                *lj -= 4;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let b = 128 * h + i;
                y.qs[32 * h + i] = (l[b] | (l[b + 32] << 2) | (l[b + 64] << 4) | (l[b + 96] << 6)) as u8;
            }
        }
    }
}

/// The 256 signed 3-bit quants (`[-4, 3]`) of a block, in element order.
#[inline]
fn quants(b: &BlockQ3K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                let i = 128 * h + 32 * k + l;
                let low = ((b.qs[32 * h + l] >> (2 * k)) & 3) as i8;
                let high_set = b.hmask[l] & (1 << (4 * h + k)) != 0;
                q[i] = if high_set { low } else { low - 4 };
            }
        }
    }
    q
}

/// Expands one block: `x = (d * (sc - 32)) * q` per sub-block of 16.
#[inline]
pub fn dequantize_block_q3_k(b: &BlockQ3K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let sc = scales(b);
    let q = quants(b);
    for (j, (o, qs)) in out.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
        let dl = d * sc[j] as f32;
        for (o, &q) in o.iter_mut().zip(qs) {
            *o = dl * q as f32;
        }
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q3_k(src: &[BlockQ3K], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK_K, "dequantize_row_q3_k: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        dequantize_block_q3_k(b, out.try_into().unwrap());
    }
}

/// Packs sixteen 6-bit scales (stored values, `sc + 32`) as [`scale6`] reads them.
fn pack_scales(ls: &[u8; 16]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            packed[j] |= l & 0xf;
        } else {
            packed[j - 8] |= (l & 0xf) << 4;
        }
        packed[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    packed
}

/// Shape and search windows of the weighted quantizer.
const WEIGHTED: KSpec = KSpec {
    sub: 16,
    q: (-4, 3),
    sc: (-32, 31),
    m_max: 0,
    sub_k: (2.0, 10.0),
    phases: &[0.0],
    sc_k: (0.5, 1.3),
    refine: 2,
};

/// Importance-weighted quantizer: per super-block the f16 `d`, the signed 6-bit sub-block
/// scales and the codes minimizing `Σ importance[i] (x[i] - x̂[i])²`. Each sub-block of 16
/// is fit by a least-squares search over every code vector in a window of scales (both
/// signs of its scale); `d` comes from the same search over the sub-block scales (weighted
/// by `Σ w q²`); every sub-block then takes the integer scale whose re-rounded codes give
/// the lowest error, alternating with least-squares refits of `d` (see `weighted.rs`).
/// Never worse than [`quantize_row_q3_k`] on a block.
pub fn quantize_row_q3_k_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockQ3K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q3_k_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_q3_k_weighted: importance length mismatch");
    for ((x, imp), y) in src.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(dst.iter_mut()) {
        let mut w = [0.0f32; QK_K];
        block_weights(imp, &mut w);
        let k = quantize_k(&WEIGHTED, x, &w);
        let mut ours = BlockQ3K::zeroed();
        ours.d = k.d;
        ours.scales = pack_scales(&core::array::from_fn(|j| (k.sc[j] + 32) as u8));
        set_block_codes_q3_k(&mut ours, &k.q);
        let mut reference = BlockQ3K::zeroed();
        quantize_row_q3_k(x, core::slice::from_mut(&mut reference));
        *y = pick_block(x, &w, ours, reference, dequantize_block_q3_k);
    }
}

/// The block's grid: in sub-block `j` (16 elements), `scale = d * (sc_j - 32)`, `offset = 0`,
/// `q` in `(-4, 3)`. `scale * q + offset` equals [`dequantize_block_q3_k`]'s
/// `(d * (sc - 32)) * q` (a zero may differ in sign).
pub fn block_grid_q3_k(b: &BlockQ3K, scale: &mut [f32; QK_K], offset: &mut [f32; QK_K]) -> (i32, i32) {
    let d = f16_to_f32(b.d);
    for (s, sc) in scale.chunks_exact_mut(16).zip(scales(b)) {
        s.fill(d * sc as f32);
    }
    offset.fill(0.0);
    (-4, 3)
}

/// The stored codes (`-4..=3`) in element order.
pub fn block_codes_q3_k(b: &BlockQ3K, codes: &mut [i32; QK_K]) {
    for (c, q) in codes.iter_mut().zip(quants(b)) {
        *c = q as i32;
    }
}

/// Stores `codes` (element order, each in `-4..=3`; panics otherwise), keeping the scales.
pub fn set_block_codes_q3_k(b: &mut BlockQ3K, codes: &[i32; QK_K]) {
    check_codes("set_block_codes_q3_k", codes, -4, 3);
    b.hmask = [0; QK_K / 8];
    let mut low = [0u8; QK_K];
    for (e, &c) in codes.iter().enumerate() {
        // High bit set: the quant is the low bits (0..=3); clear: low bits - 4.
        if c >= 0 {
            b.hmask[e % 32] |= 1 << (e / 32);
            low[e] = c as u8;
        } else {
            low[e] = (c + 4) as u8;
        }
    }
    for h in 0..2 {
        for i in 0..32 {
            let e = 128 * h + i;
            b.qs[32 * h + i] = low[e] | (low[e + 32] << 2) | (low[e + 64] << 4) | (low[e + 96] << 6);
        }
    }
}

/// Q3_K · Q8_K: per block `isum = Σ_j (sc_j - 32) Σ_{i in j} q_i qx_i` in i32, then
/// `d dx isum`.
pub fn vec_dot_q3_k_q8_k(w: &[BlockQ3K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q3_k_q8_k: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let q = quants(bw);
        let sc = scales(bw);
        let mut isum = 0i32;
        for (j, &s) in sc.iter().enumerate() {
            isum += s * dot_i32(&q[16 * j..16 * j + 16], &bx.qs[16 * j..16 * j + 16]);
        }
        sumf += (f16_to_f32(bw.d) * bx.d) * isum as f32;
    }
    sumf
}

/// Q3_K weights · f32 activations.
pub fn vec_dot_q3_k_f32(w: &[BlockQ3K], x: &[f32]) -> f32 {
    dot_dequantized(w, x, dequantize_block_q3_k)
}

/// The integer kernels' view of a block (see [`crate::grid`]).
impl crate::grid::Grid for BlockQ3K {
    const TY: crate::GgmlType = crate::GgmlType::Q3_K;
    const GROUP: usize = 16;
    const MAX_CODE: u8 = 7;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let blk: &[u8; 110] = blk.try_into().unwrap();
        let d = f16_le(blk, 108);
        let u: &mut [u8; QK_K] = u.try_into().unwrap();
        // The stored code is `low - 4` when the high bit is clear: `u = low + 4 · bit`.
        for h in 0..2 {
            for k in 0..4 {
                for l in 0..32 {
                    let low = (blk[32 + 32 * h + l] >> (2 * k)) & 3;
                    let bit = (blk[l] >> (4 * h + k)) & 1;
                    u[128 * h + 32 * k + l] = low | (bit << 2);
                }
            }
        }
        let sc: &[u8; 12] = blk[96..108].try_into().unwrap();
        for j in 0..16 {
            s[j] = d * (scale6(sc, j) as i32 - 32) as f32;
            m[j] = -4.0 * s[j];
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockQ3K>();
    }
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn scale_packing_roundtrips() {
        let want: [u8; 16] = core::array::from_fn(|j| ((j * 37 + 5) % 64) as u8);
        let mut packed = [0u8; 12];
        for (j, &ls) in want.iter().enumerate() {
            if j < 8 {
                packed[j] = ls & 0xf;
            } else {
                packed[j - 8] |= (ls & 0xf) << 4;
            }
            packed[j % 4 + 8] |= (ls >> 4) << (2 * (j / 4));
        }
        for (j, &ls) in want.iter().enumerate() {
            assert_eq!(scale6(&packed, j), ls, "scale {j}");
        }
        // The weighted quantizer's packer agrees with the reference's.
        assert_eq!(pack_scales(&want), packed);
        assert_eq!(pack_scales(&[63; 16]), [0xff; 12]);
    }

    #[test]
    fn hmask_layout() {
        // hmask all set, qs zero: every quant is 0. Clearing bit 5 of hmask[7] makes
        // weight 32 * 5 + 7 = 167 (in the second half: h = 1, k = 1) equal to -4.
        let mut b = BlockQ3K::zeroed();
        b.hmask = [0xff; 32];
        b.hmask[7] &= !(1 << 5);
        b.scales = [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0xaa, 0xaa, 0xaa, 0xaa];
        b.d = f16::ONE;
        let mut out = [0.0f32; QK_K];
        dequantize_block_q3_k(&b, &mut out);
        // scale = 0b10_0001 - 32 = 1
        let nonzero: std::vec::Vec<usize> = (0..QK_K).filter(|&i| out[i] != 0.0).collect();
        assert_eq!(nonzero, [167]);
        assert_eq!(out[167], -4.0);
    }

    #[test]
    fn zero_block() {
        let mut b = [BlockQ3K::zeroed()];
        quantize_row_q3_k(&[0.0; QK_K], &mut b);
        let mut y = [1.0f32; QK_K];
        dequantize_row_q3_k(&b, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn roundtrip_gaussian() {
        // 8 levels per 16 weights: the optimal 3-bit quantizer of a Gaussian has an
        // RMS error of 18.6 % of σ; per-16 scales (6-bit) and the refined fit bring it
        // lower. Measured 15.1 %.
        let e = gaussian_roundtrip_error(GgmlType::Q3_K, 64, 1024);
        assert!(e < 0.18, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q3_K, &[256, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q3_K, &[256, 1024]);
    }

    #[test]
    fn weighted_beats_reference() {
        // Squared error relative to quantize_row_q3_k on 32 x 1024 N(0, 1) values (block by
        // block never worse; checked inside). Measured: uniform importance 0.9022, log-normal
        // importance (exp(1.5 z)) 0.5771.
        let (uniform, weighted) = weighted_vs_reference(GgmlType::Q3_K, 32, 1024);
        assert!(uniform < 0.92 && weighted < 0.63, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_weighted_edge_cases(GgmlType::Q3_K);
    }

    #[test]
    fn block_grid_contract() {
        check_block_grid(GgmlType::Q3_K);
    }

    #[test]
    fn grid_data_is_reproduced() {
        check_grid_data_is_reproduced(GgmlType::Q3_K, 1.0);
    }
}
