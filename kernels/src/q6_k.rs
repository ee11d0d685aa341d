//! Q6_K: super-blocks of 256 weights in 16 sub-blocks of 16, `x ≈ (d * sc) * q` with
//! signed 6-bit quants (`[-32, 31]`, stored `+32` as 4 low + 2 high bits) and signed
//! 8-bit sub-block scales against the f16 `d`. 6.5625 bits/weight.

use crate::f16::f16_to_f32;
use crate::f32::dot_dequantized;
use crate::grid::f16_le;
use crate::kquant::{dot_i32, make_qx_quants, nearest_int, GROUP_MAX_EPS};
use crate::q8_k::BlockQ8K;
use crate::weighted::{block_weights, check_codes, pick_block, quantize_k, KSpec};
use crate::QK_K;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// ggml's `block_q6_K` (210 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits. Each half (128 weights) uses 64 bytes: weight `128 h + l` in the
    /// low nibble of `ql[64 h + l]`, `128 h + 32 + l` in the low nibble of
    /// `ql[64 h + 32 + l]`, `128 h + 64 + l` and `128 h + 96 + l` in the high nibbles of
    /// the same two bytes (l = 0..32).
    pub ql: [u8; QK_K / 2],
    /// High 2 bits: weight `128 h + 32 k + l` in bits `2k..2k+2` of `qh[32 h + l]`.
    pub qh: [u8; QK_K / 4],
    /// Signed 8-bit scale per sub-block of 16.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(core::mem::size_of::<BlockQ6K>() == 210);

/// Reference quantizer, following ggml's `quantize_row_q6_K_ref`: sub-block scales from
/// `make_qx_quants` (best of 19 candidate scales, weights `x^2`), quantized to 8 bits
/// against the one of largest magnitude, then the weights requantized with the rounded
/// scales.
pub fn quantize_row_q6_k(src: &[f32], dst: &mut [BlockQ6K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q6_k: length mismatch");
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for (ib, s) in scales.iter_mut().enumerate() {
            *s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            let abs_scale = libm::fabsf(*s);
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = *s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *y = BlockQ6K::zeroed();
            continue;
        }

        let iscale = -128.0 / max_scale;
        y.d = f16::from_f32(1.0 / iscale);
        for (ys, &s) in y.scales.iter_mut().zip(&scales) {
            *ys = nearest_int(iscale * s).min(127) as i8;
        }

        for j in 0..QK_K / 16 {
            let d = f16_to_f32(y.d) * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }

        for h in 0..2 {
            for i in 0..32 {
                let b = 128 * h + i;
                let q = [l[b] as u8, l[b + 32] as u8, l[b + 64] as u8, l[b + 96] as u8];
                y.ql[64 * h + i] = (q[0] & 0xf) | ((q[2] & 0xf) << 4);
                y.ql[64 * h + 32 + i] = (q[1] & 0xf) | ((q[3] & 0xf) << 4);
                y.qh[32 * h + i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
    }
}

/// The 256 signed 6-bit quants (`[-32, 31]`) of a block, in element order.
#[inline]
fn quants(b: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        for i in 0..32 {
            let (ql0, ql1, qh) = (b.ql[64 * h + i], b.ql[64 * h + 32 + i], b.qh[32 * h + i]);
            let base = 128 * h + i;
            q[base] = ((ql0 & 0xf) | ((qh & 3) << 4)) as i8 - 32;
            q[base + 32] = ((ql1 & 0xf) | (((qh >> 2) & 3) << 4)) as i8 - 32;
            q[base + 64] = ((ql0 >> 4) | (((qh >> 4) & 3) << 4)) as i8 - 32;
            q[base + 96] = ((ql1 >> 4) | (((qh >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

/// Expands one block: `x = (d * sc) * q` per sub-block of 16.
#[inline]
pub fn dequantize_block_q6_k(b: &BlockQ6K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let q = quants(b);
    for (j, (o, qs)) in out.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
        let dl = d * b.scales[j] as f32;
        for (o, &q) in o.iter_mut().zip(qs) {
            *o = dl * q as f32;
        }
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q6_k(src: &[BlockQ6K], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK_K, "dequantize_row_q6_k: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        dequantize_block_q6_k(b, out.try_into().unwrap());
    }
}

/// Shape and search windows of the weighted quantizer.
const WEIGHTED: KSpec = KSpec {
    sub: 16,
    q: (-32, 31),
    sc: (-128, 127),
    m_max: 0,
    sub_k: (17.0, 38.0),
    phases: &[0.0],
    sc_k: (0.6, 1.2),
    refine: 2,
};

/// Importance-weighted quantizer: per super-block the f16 `d`, the signed 8-bit sub-block
/// scales and the codes minimizing `Σ importance[i] (x[i] - x̂[i])²`. Each sub-block of 16
/// is fit by a least-squares search over every code vector in a window of scales (both
/// signs); `d` comes from the same search over the sub-block scales (weighted by `Σ w q²`);
/// every sub-block then takes the integer scale whose re-rounded codes give the lowest
/// error, alternating with least-squares refits of `d` (see `weighted.rs`). Never worse
/// than [`quantize_row_q6_k`] on a block.
pub fn quantize_row_q6_k_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockQ6K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q6_k_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_q6_k_weighted: importance length mismatch");
    for ((x, imp), y) in src.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(dst.iter_mut()) {
        let mut w = [0.0f32; QK_K];
        block_weights(imp, &mut w);
        let k = quantize_k(&WEIGHTED, x, &w);
        let mut ours = BlockQ6K::zeroed();
        ours.d = k.d;
        for (s, &sc) in ours.scales.iter_mut().zip(&k.sc) {
            *s = sc as i8;
        }
        set_block_codes_q6_k(&mut ours, &k.q);
        let mut reference = BlockQ6K::zeroed();
        quantize_row_q6_k(x, core::slice::from_mut(&mut reference));
        *y = pick_block(x, &w, ours, reference, dequantize_block_q6_k);
    }
}

/// The block's grid: in sub-block `j` (16 elements), `scale = d * sc_j`, `offset = 0`,
/// `q` in `(-32, 31)`. `scale * q + offset` equals [`dequantize_block_q6_k`]'s
/// `(d * sc) * q` (a zero may differ in sign).
pub fn block_grid_q6_k(b: &BlockQ6K, scale: &mut [f32; QK_K], offset: &mut [f32; QK_K]) -> (i32, i32) {
    let d = f16_to_f32(b.d);
    for (s, &sc) in scale.chunks_exact_mut(16).zip(&b.scales) {
        s.fill(d * sc as f32);
    }
    offset.fill(0.0);
    (-32, 31)
}

/// The stored codes (`-32..=31`) in element order.
pub fn block_codes_q6_k(b: &BlockQ6K, codes: &mut [i32; QK_K]) {
    for (c, q) in codes.iter_mut().zip(quants(b)) {
        *c = q as i32;
    }
}

/// Stores `codes` (element order, each in `-32..=31`; panics otherwise), keeping the
/// scales.
pub fn set_block_codes_q6_k(b: &mut BlockQ6K, codes: &[i32; QK_K]) {
    check_codes("set_block_codes_q6_k", codes, -32, 31);
    for h in 0..2 {
        for i in 0..32 {
            let e = 128 * h + i;
            let q = [codes[e], codes[e + 32], codes[e + 64], codes[e + 96]].map(|c| (c + 32) as u8);
            b.ql[64 * h + i] = (q[0] & 0xf) | ((q[2] & 0xf) << 4);
            b.ql[64 * h + 32 + i] = (q[1] & 0xf) | ((q[3] & 0xf) << 4);
            b.qh[32 * h + i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
}

/// Q6_K · Q8_K: per block `isum = Σ_j sc_j Σ_{i in j} q_i qx_i` in i32, then
/// `d dx isum`.
pub fn vec_dot_q6_k_q8_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q6_k_q8_k: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let q = quants(bw);
        let mut isum = 0i32;
        for (j, &sc) in bw.scales.iter().enumerate() {
            isum += sc as i32 * dot_i32(&q[16 * j..16 * j + 16], &bx.qs[16 * j..16 * j + 16]);
        }
        sumf += (f16_to_f32(bw.d) * bx.d) * isum as f32;
    }
    sumf
}

/// Q6_K weights · f32 activations.
pub fn vec_dot_q6_k_f32(w: &[BlockQ6K], x: &[f32]) -> f32 {
    dot_dequantized(w, x, dequantize_block_q6_k)
}

/// The integer kernels' view of a block (see [`crate::grid`]).
impl crate::grid::Grid for BlockQ6K {
    const TY: crate::GgmlType = crate::GgmlType::Q6_K;
    const GROUP: usize = 16;
    const MAX_CODE: u8 = 63;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let blk: &[u8; 210] = blk.try_into().unwrap();
        let d = f16_le(blk, 208);
        let u: &mut [u8; QK_K] = u.try_into().unwrap();
        for h in 0..2 {
            for l in 0..32 {
                let (ql0, ql1, qh) = (blk[64 * h + l], blk[64 * h + 32 + l], blk[128 + 32 * h + l]);
                let base = 128 * h + l;
                u[base] = (ql0 & 0xf) | ((qh & 3) << 4);
                u[base + 32] = (ql1 & 0xf) | (((qh >> 2) & 3) << 4);
                u[base + 64] = (ql0 >> 4) | (((qh >> 4) & 3) << 4);
                u[base + 96] = (ql1 >> 4) | (((qh >> 6) & 3) << 4);
            }
        }
        for j in 0..16 {
            s[j] = d * blk[192 + j] as i8 as f32;
            m[j] = -32.0 * s[j];
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockQ6K>();
    }
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn quant_layout() {
        // All stored quants 32 (value 0) except weight 128 + 64 + 7 = 199, whose low
        // nibble is the high nibble of ql[64 + 7] and high bits are bits 4..6 of qh[39].
        let mut b = BlockQ6K::zeroed();
        b.qh = [0b1010_1010; 64]; // high bits = 2 -> stored 32 when low nibble is 0
        b.ql[71] = 0x30; // weight 199: low nibble 3
        b.qh[39] = 0b1011_1010; // weight 199: high bits 3 -> stored 51 -> q = 19
        b.scales = [1; 16];
        b.d = f16::ONE;
        let mut out = [0.0f32; QK_K];
        dequantize_block_q6_k(&b, &mut out);
        let nonzero: std::vec::Vec<usize> = (0..QK_K).filter(|&i| out[i] != 0.0).collect();
        assert_eq!(nonzero, [199]);
        assert_eq!(out[199], 19.0);
    }

    #[test]
    fn zero_block() {
        let mut b = [BlockQ6K::zeroed()];
        quantize_row_q6_k(&[0.0; QK_K], &mut b);
        assert_eq!(b[0], BlockQ6K::zeroed());
    }

    #[test]
    fn roundtrip_gaussian() {
        // 64 levels per 16 weights (8-bit scales): step ≈ amax16/32 ≈ 0.055σ, error
        // ≈ step/√12 ≈ 1.6 % of σ. Measured 1.78 %.
        let e = gaussian_roundtrip_error(GgmlType::Q6_K, 64, 1024);
        assert!(e < 0.021, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q6_K, &[256, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q6_K, &[256, 1024]);
    }

    #[test]
    fn weighted_beats_reference() {
        // Squared error relative to quantize_row_q6_k on 32 x 1024 N(0, 1) values (block by
        // block never worse; checked inside). Measured: uniform importance 0.8467, log-normal
        // importance (exp(1.5 z)) 0.5151.
        let (uniform, weighted) = weighted_vs_reference(GgmlType::Q6_K, 32, 1024);
        assert!(uniform < 0.86 && weighted < 0.56, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_weighted_edge_cases(GgmlType::Q6_K);
    }

    #[test]
    fn block_grid_contract() {
        check_block_grid(GgmlType::Q6_K);
    }

    #[test]
    fn grid_data_is_reproduced() {
        check_grid_data_is_reproduced(GgmlType::Q6_K, 1.0);
    }
}
