//! Q2_K: super-blocks of 256 weights in 16 sub-blocks of 16, `x ≈ d * sc * q - dmin * m`
//! with 2-bit quants `q`, and 4-bit sub-block scales `sc` and mins `m` that are
//! themselves quantized against the super-block's f16 `d` and `dmin`. 2.625 bits/weight.

use crate::f16::f16_to_f32;
use crate::f32::dot_dequantized;
use crate::grid::f16_le;
use crate::kquant::{dot_i32, make_qkx2_quants, nearest_int, Qkx2Params};
use crate::q8_k::BlockQ8K;
use crate::weighted::{block_weights, check_codes, pick_block, quantize_k, KSpec};
use crate::QK_K;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// ggml's `block_q2_K` (84 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Per sub-block of 16: scale in the low nibble, min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants. Each half (128 weights) uses 32 bytes; weight `128 h + 32 k + l`
    /// sits in bits `2k..2k+2` of `qs[32 h + l]` (k = 0..4, l = 0..32).
    pub qs: [u8; QK_K / 4],
    /// Super-block scale for the quantized scales.
    pub d: f16,
    /// Super-block scale for the quantized mins.
    pub dmin: f16,
}
const _: () = assert!(core::mem::size_of::<BlockQ2K>() == 84);

/// Reference quantizer, following ggml's `quantize_row_q2_K_ref`: each sub-block is fit
/// by `make_qkx2_quants` (weights `|x|`, minimizing absolute error), scales and mins are
/// quantized to 4 bits against their maxima, and the weights are requantized with the
/// final (rounded) scales.
pub fn quantize_row_q2_k(src: &[f32], dst: &mut [BlockQ2K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q2_k: length mismatch");
    const Q4SCALE: f32 = 15.0;
    let params = Qkx2Params { rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut l = [0u8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let mut mins = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            let mut weights = [0.0f32; 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = libm::fabsf(v);
            }
            let (scale, min) = make_qkx2_quants(3, xs, &weights, &mut l[16 * j..16 * j + 16], &params);
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }

        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &sc) in y.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * sc) as u8;
            }
            y.d = f16::from_f32(max_scale / Q4SCALE);
        } else {
            y.scales = [0; QK_K / 16];
            y.d = f16::ZERO;
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &m) in y.scales.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * m) << 4) as u8;
            }
            y.dmin = f16::from_f32(max_min / Q4SCALE);
        } else {
            y.dmin = f16::ZERO;
        }

        for j in 0..QK_K / 16 {
            let d = f16_to_f32(y.d) * (y.scales[j] & 0xf) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = f16_to_f32(y.dmin) * (y.scales[j] >> 4) as f32;
            for i in 16 * j..16 * j + 16 {
                l[i] = nearest_int((x[i] + dm) / d).clamp(0, 3) as u8;
            }
        }

        for h in 0..2 {
            for i in 0..32 {
                let b = 128 * h + i;
                y.qs[32 * h + i] = l[b] | (l[b + 32] << 2) | (l[b + 64] << 4) | (l[b + 96] << 6);
            }
        }
    }
}

/// The 256 unsigned 2-bit quants of a block, in element order.
#[inline]
fn quants(b: &BlockQ2K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for h in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                q[128 * h + 32 * k + l] = (b.qs[32 * h + l] >> (2 * k)) & 3;
            }
        }
    }
    q
}

/// Expands one block: `x = (d * sc) * q - (dmin * m)` per sub-block of 16.
#[inline]
pub fn dequantize_block_q2_k(b: &BlockQ2K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    let q = quants(b);
    for (j, (o, qs)) in out.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
        let dl = d * (b.scales[j] & 0xf) as f32;
        let ml = dmin * (b.scales[j] >> 4) as f32;
        for (o, &q) in o.iter_mut().zip(qs) {
            *o = dl * q as f32 - ml;
        }
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q2_k(src: &[BlockQ2K], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK_K, "dequantize_row_q2_k: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        dequantize_block_q2_k(b, out.try_into().unwrap());
    }
}

/// Shape and search windows of the weighted quantizer.
const WEIGHTED: KSpec = KSpec {
    sub: 16,
    q: (0, 3),
    sc: (0, 15),
    m_max: 15,
    sub_k: (2.0, 6.5),
    phases: &[0.0],
    sc_k: (0.5, 1.3),
    refine: 2,
};

/// Importance-weighted quantizer: per super-block the f16 `d`, `dmin`, the 4-bit sub-block
/// scales and mins, and the codes minimizing `Σ importance[i] (x[i] - x̂[i])²`. Each
/// sub-block of 16 is fit by a least-squares search over every code vector in a window of
/// scales; `d` and `dmin` come from the same search over the sub-block scales and mins
/// (weighted by their sensitivity); every sub-block then takes the integer scale and min
/// whose re-rounded codes give the lowest error, alternating with least-squares refits of
/// `d`, `dmin` (see `weighted.rs`). Never worse than [`quantize_row_q2_k`] on a block.
pub fn quantize_row_q2_k_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockQ2K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q2_k_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_q2_k_weighted: importance length mismatch");
    for ((x, imp), y) in src.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(dst.iter_mut()) {
        let mut w = [0.0f32; QK_K];
        block_weights(imp, &mut w);
        let k = quantize_k(&WEIGHTED, x, &w);
        let mut ours = BlockQ2K::zeroed();
        ours.d = k.d;
        ours.dmin = k.dmin;
        for (s, (&sc, &m)) in ours.scales.iter_mut().zip(k.sc.iter().zip(&k.m)) {
            *s = sc as u8 | ((m as u8) << 4);
        }
        set_block_codes_q2_k(&mut ours, &k.q);
        let mut reference = BlockQ2K::zeroed();
        quantize_row_q2_k(x, core::slice::from_mut(&mut reference));
        *y = pick_block(x, &w, ours, reference, dequantize_block_q2_k);
    }
}

/// The block's grid: in sub-block `j` (16 elements), `scale = d * sc_j` and
/// `offset = -(dmin * m_j)`, `q` in `(0, 3)`. `scale * q + offset` is exactly
/// [`dequantize_block_q2_k`]'s `(d * sc) * q - (dmin * m)`.
pub fn block_grid_q2_k(b: &BlockQ2K, scale: &mut [f32; QK_K], offset: &mut [f32; QK_K]) -> (i32, i32) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for (j, (s, o)) in scale.chunks_exact_mut(16).zip(offset.chunks_exact_mut(16)).enumerate() {
        s.fill(d * (b.scales[j] & 0xf) as f32);
        o.fill(-(dmin * (b.scales[j] >> 4) as f32));
    }
    (0, 3)
}

/// The stored codes (`0..=3`) in element order.
pub fn block_codes_q2_k(b: &BlockQ2K, codes: &mut [i32; QK_K]) {
    for (c, q) in codes.iter_mut().zip(quants(b)) {
        *c = q as i32;
    }
}

/// Stores `codes` (element order, each in `0..=3`; panics otherwise), keeping the scales.
pub fn set_block_codes_q2_k(b: &mut BlockQ2K, codes: &[i32; QK_K]) {
    check_codes("set_block_codes_q2_k", codes, 0, 3);
    for h in 0..2 {
        for i in 0..32 {
            let e = 128 * h + i;
            b.qs[32 * h + i] = (codes[e] | (codes[e + 32] << 2) | (codes[e + 64] << 4) | (codes[e + 96] << 6)) as u8;
        }
    }
}

/// Q2_K · Q8_K. Per block, in integers: `isum = Σ_j sc_j Σ_{i in j} q_i qx_i` and the
/// min term `summs = Σ_j m_j bsums_j` (Q8_K's `bsums` are exactly the per-16 sums the
/// mins multiply); then `dx (d isum - dmin summs)`.
pub fn vec_dot_q2_k_q8_k(w: &[BlockQ2K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q2_k_q8_k: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let q = quants(bw);
        let mut summs = 0i32;
        let mut isum = 0i32;
        for j in 0..QK_K / 16 {
            summs += bx.bsums[j] as i32 * (bw.scales[j] >> 4) as i32;
            let isuml = dot_i32(&q[16 * j..16 * j + 16], &bx.qs[16 * j..16 * j + 16]);
            isum += (bw.scales[j] & 0xf) as i32 * isuml;
        }
        let dall = bx.d * f16_to_f32(bw.d);
        let dmin = bx.d * f16_to_f32(bw.dmin);
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q2_K weights · f32 activations.
pub fn vec_dot_q2_k_f32(w: &[BlockQ2K], x: &[f32]) -> f32 {
    dot_dequantized(w, x, dequantize_block_q2_k)
}

/// The integer kernels' view of a block (see [`crate::grid`]).
impl crate::grid::Grid for BlockQ2K {
    const TY: crate::GgmlType = crate::GgmlType::Q2_K;
    const GROUP: usize = 16;
    const MAX_CODE: u8 = 3;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let blk: &[u8; 84] = blk.try_into().unwrap();
        let (d, dmin) = (f16_le(blk, 80), f16_le(blk, 82));
        let u: &mut [u8; QK_K] = u.try_into().unwrap();
        for h in 0..2 {
            for k in 0..4 {
                for l in 0..32 {
                    u[128 * h + 32 * k + l] = (blk[16 + 32 * h + l] >> (2 * k)) & 3;
                }
            }
        }
        for j in 0..16 {
            s[j] = d * (blk[j] & 0xf) as f32;
            m[j] = -(dmin * (blk[j] >> 4) as f32);
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockQ2K>();
    }
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn zero_block() {
        let mut b = [BlockQ2K::zeroed()];
        quantize_row_q2_k(&[0.0; QK_K], &mut b);
        assert_eq!(b[0], BlockQ2K::zeroed());
    }

    #[test]
    fn quant_layout() {
        // A block with only q set: element 128 + 32 * 3 + 5 must come from bits 6..8
        // of qs[32 + 5].
        let mut b = BlockQ2K::zeroed();
        b.qs[37] = 0b1100_0000;
        b.scales = [0x01; 16];
        b.d = f16::ONE;
        let mut out = [0.0f32; QK_K];
        dequantize_block_q2_k(&b, &mut out);
        let nonzero: std::vec::Vec<usize> = (0..QK_K).filter(|&i| out[i] != 0.0).collect();
        assert_eq!(nonzero, [128 + 96 + 5]);
        assert_eq!(out[229], 3.0);
    }

    #[test]
    fn roundtrip_gaussian() {
        // 4 levels per 16 weights: even the optimal (Lloyd–Max) 2-bit quantizer of a
        // Gaussian has an RMS error of 34 % of σ; per-16 scales and mins (4-bit) bring
        // it a little lower. Measured 29.7 %.
        let e = gaussian_roundtrip_error(GgmlType::Q2_K, 64, 1024);
        assert!(e < 0.36, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q2_K, &[256, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q2_K, &[256, 1024]);
    }

    #[test]
    fn weighted_beats_reference() {
        // Squared error relative to quantize_row_q2_k on 32 x 1024 N(0, 1) values (block by
        // block never worse; checked inside). Measured: uniform importance 0.7753, log-normal
        // importance (exp(1.5 z)) 0.4268.
        let (uniform, weighted) = weighted_vs_reference(GgmlType::Q2_K, 32, 1024);
        assert!(uniform < 0.79 && weighted < 0.48, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_weighted_edge_cases(GgmlType::Q2_K);
    }

    #[test]
    fn block_grid_contract() {
        check_block_grid(GgmlType::Q2_K);
    }

    #[test]
    fn grid_data_is_reproduced() {
        check_grid_data_is_reproduced(GgmlType::Q2_K, 1.0);
    }
}
