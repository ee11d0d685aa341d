//! IQ4_XS: super-blocks of 256 weights, 8 groups of 32 with 6-bit group scales under one f16
//! scale, each weight a 4-bit index into IQ4_NL's non-linear grid:
//! `x ≈ d * (ls - 32) * KVALUES_IQ4NL[q]`, `ls` in 0..=63. Dots against Q8_K activations.

use crate::f16::f16_to_f32;
use crate::f32::{reduce_lanes, LANES};
use crate::grid::f16_le;
use crate::iq4_nl::{kv, pack_nibbles32, quantize_iq4_impl, sanitize_importance, unpack_kvalues16, KVALUES_IQ4NL};
use crate::q8_k::BlockQ8K;
use crate::QK_K;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// ggml's `block_iq4_xs` (136 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4XS {
    /// Super-block scale: `-max_scale / 32` (`max_scale`: the group scale of largest
    /// magnitude, with its sign).
    pub d: f16,
    /// High 2 bits of the 6-bit group scales: group `g` in bits `2g..2g+2`.
    pub scales_h: u16,
    /// Low 4 bits of the group scales: group `g` in the low (`g` even) or high (`g` odd)
    /// nibble of `scales_l[g / 2]`.
    pub scales_l: [u8; QK_K / 64],
    /// Grid indices, per group of 32 sixteen bytes: element `j` low nibble of byte `j`,
    /// element `j + 16` high nibble.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(core::mem::size_of::<BlockIQ4XS>() == 136);
const _: () = assert!(LANES == 16);

/// The stored 6-bit scale of group `g` (0..=63; the multiplier is `ls - 32`).
#[inline(always)]
pub fn group_scale_iq4_xs(scales_h: u16, scales_l: &[u8; 4], g: usize) -> i32 {
    (((scales_l[g / 2] >> (4 * (g % 2))) & 0x0f) | ((((scales_h >> (2 * g)) & 3) as u8) << 4)) as i32
}

fn store(fit: crate::iq4_nl::Iq4Fit, l: &[u8; QK_K], y: &mut BlockIQ4XS) {
    y.d = fit.d;
    y.scales_h = fit.scales_h;
    y.scales_l = fit.scales_l;
    for g in 0..QK_K / 32 {
        pack_nibbles32(&l[g * 32..(g + 1) * 32], &mut y.qs[g * 16..(g + 1) * 16]);
    }
}

/// Reference quantizer, exactly ggml's `quantize_row_iq4_xs_ref` (= `quantize_iq4_xs` without
/// importance: `quantize_row_iq4_nl_impl` with weights `x²` and 15 trial scales per group,
/// then the 6-bit group scales under `d = -max_scale / 32`; see `quantize_iq4_impl`).
pub fn quantize_row_iq4_xs(src: &[f32], dst: &mut [BlockIQ4XS]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_iq4_xs: length mismatch");
    let mut l = [0u8; QK_K];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let fit = quantize_iq4_impl(x, None, 7, &mut l);
        store(fit, &l, y);
    }
}

/// Importance-weighted quantizer, exactly ggml's `quantize_iq4_xs(…, quant_weights =
/// importance)` (element weights `importance · sqrt(σ² + x²)`). Invalid entries count as 0
/// and a 32-element group without a positive entry is uniform (see `sanitize_importance`
/// in `iq4_nl.rs`). ggml's algorithm: not guaranteed to beat [`quantize_row_iq4_xs`] block
/// by block.
pub fn quantize_row_iq4_xs_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockIQ4XS]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_iq4_xs_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_iq4_xs_weighted: importance length mismatch");
    let (mut l, mut w) = ([0u8; QK_K], [0.0f32; QK_K]);
    for ((x, imp), y) in src.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(dst.iter_mut()) {
        sanitize_importance(imp, &mut w);
        let fit = quantize_iq4_impl(x, Some(&w), 7, &mut l);
        store(fit, &l, y);
    }
}

/// Expands one super-block (ggml's `dequantize_row_iq4_xs`): `x = (d * (ls - 32)) * kvalue`.
#[inline]
pub fn dequantize_block_iq4_xs(b: &BlockIQ4XS, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for g in 0..QK_K / 32 {
        let dl = d * (group_scale_iq4_xs(b.scales_h, &b.scales_l, g) - 32) as f32;
        let qs = &b.qs[g * 16..(g + 1) * 16];
        let y = &mut out[g * 32..(g + 1) * 32];
        for j in 0..16 {
            y[j] = dl * kv(qs[j]);
            y[j + 16] = dl * kv(qs[j] >> 4);
        }
    }
}

/// Dequantizes a row of super-blocks.
pub fn dequantize_row_iq4_xs(src: &[BlockIQ4XS], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK_K, "dequantize_row_iq4_xs: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        dequantize_block_iq4_xs(b, out.try_into().unwrap());
    }
}

/// IQ4_XS · Q8_K, as ggml's `ggml_vec_dot_iq4_xs_q8_K_generic`: per group of 32
/// `Σ KVALUES_IQ4NL[qw] * qx` in i32, scaled by `(dw * dx) * (ls - 32)`.
pub fn vec_dot_iq4_xs_q8_k(w: &[BlockIQ4XS], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_iq4_xs_q8_k: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let d4d8 = f16_to_f32(bw.d) * bx.d;
        for g in 0..QK_K / 32 {
            let dl = d4d8 * (group_scale_iq4_xs(bw.scales_h, &bw.scales_l, g) - 32) as f32;
            let (qs, q8) = (&bw.qs[g * 16..(g + 1) * 16], &bx.qs[g * 32..(g + 1) * 32]);
            let (mut s1, mut s2) = (0i32, 0i32);
            for j in 0..16 {
                s1 += q8[j] as i32 * KVALUES_IQ4NL[(qs[j] & 0x0f) as usize] as i32;
                s2 += q8[j + 16] as i32 * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as i32;
            }
            sumf += dl * (s1 + s2) as f32;
        }
    }
    sumf
}

/// IQ4_XS weights · f32 activations: per group of 32, `Σ kvalue x` in 16 lanes (elements `k`
/// and `k + 16` share lane `k`), scaled by the group's `d * (ls - 32)` into the running sums.
pub fn vec_dot_iq4_xs_f32(w: &[BlockIQ4XS], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK_K, x.len(), "vec_dot_iq4_xs_f32: {} blocks vs {} activations", w.len(), x.len());
    let mut acc = [0.0f32; LANES];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK_K)) {
        let d = f16_to_f32(b.d);
        for g in 0..QK_K / 32 {
            let dl = d * (group_scale_iq4_xs(b.scales_h, &b.scales_l, g) - 32) as f32;
            let qs = &b.qs[g * 16..(g + 1) * 16];
            let (xl, xh) = (&xs[g * 32..g * 32 + 16], &xs[g * 32 + 16..(g + 1) * 32]);
            for k in 0..16 {
                acc[k] += dl * (kv(qs[k]) * xl[k] + kv(qs[k] >> 4) * xh[k]);
            }
        }
    }
    reduce_lanes(&acc)
}

/// The integer kernels' view of a block (see [`crate::grid`]): codes
/// `u = KVALUES_IQ4NL[q] + 128` (1 ..= 241), per group of 32 `s = d * (ls - 32)` (the
/// dequantizer's `dl`) and `m = -128 s`. No block grid (not affine in the stored index).
impl crate::grid::Grid for BlockIQ4XS {
    const TY: crate::GgmlType = crate::GgmlType::IQ4_XS;
    const GROUP: usize = 32;
    /// Codes reach 241: above the 127 of the generic AVX2/NEON kernels (see `table.rs`).
    const MAX_CODE: u8 = 255;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let d = f16_le(blk, 0);
        let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
        let scales_l: &[u8; 4] = blk[4..8].try_into().unwrap();
        for g in 0..QK_K / 32 {
            let dl = d * (group_scale_iq4_xs(scales_h, scales_l, g) - 32) as f32;
            (s[g], m[g]) = (dl, -128.0 * dl);
            unpack_kvalues16(&blk[8 + g * 16..8 + (g + 1) * 16], &mut u[g * 32..(g + 1) * 32]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iq4_nl::tests::{check_iq4_weighted_edge_cases, iq4_weighted_ratio};
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockIQ4XS>();
    }

    #[test]
    fn scale_layout() {
        // Group g's scale 10 + g: low nibbles in scales_l, high bits (of 10 + g >= 16) in
        // scales_h.
        let mut b = BlockIQ4XS::zeroed();
        for g in 0..8 {
            let ls = (10 + 7 * g) as u8;
            b.scales_l[g / 2] |= (ls & 0xf) << (4 * (g % 2));
            b.scales_h |= ((ls >> 4) as u16) << (2 * g);
        }
        for g in 0..8 {
            assert_eq!(group_scale_iq4_xs(b.scales_h, &b.scales_l, g), 10 + 7 * g as i32);
        }
        b.d = f16::from_f32(0.5);
        b.qs = [0x8f; 128]; // low nibble 15 (113), high nibble 8 (1)
        let mut y = [0.0f32; QK_K];
        dequantize_block_iq4_xs(&b, &mut y);
        // group 1: ls = 17 -> dl = 0.5 * -15 = -7.5
        assert_eq!((y[32], y[48]), (-7.5 * 113.0, -7.5));
    }

    #[test]
    fn zero_super_block_is_zero() {
        let mut b = [BlockIQ4XS::zeroed()];
        quantize_row_iq4_xs(&[0.0; QK_K], &mut b);
        // ggml: d = -0 / 32 = -0 (f16 0x8000), every group scale 0 + 32, indices of 0.
        assert_eq!(b[0].d.to_bits(), 0x8000);
        assert_eq!((b[0].scales_h, b[0].scales_l), (0xaaaa, [0; 4]));
        assert_eq!(b[0].qs, [0x88; 128]);
    }

    #[test]
    fn roundtrip_gaussian() {
        // Per-32 scales of 6 bits over IQ4_NL's grid: measured 7.65 %.
        let e = gaussian_roundtrip_error(GgmlType::IQ4_XS, 64, 1024);
        assert!(e < 0.082, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::IQ4_XS, &[256, 1024], 0.01);
        check_vec_dot_f32(GgmlType::IQ4_XS, &[256, 1024]);
    }

    #[test]
    fn weighted_lowers_weighted_error() {
        // The reference already runs ggml's 15-scale search with weights x². Measured: uniform
        // importance 0.9706, log-normal 0.6867.
        let (uniform, weighted) = iq4_weighted_ratio(GgmlType::IQ4_XS);
        assert!(uniform < 1.0 && weighted < 0.73, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_iq4_weighted_edge_cases(GgmlType::IQ4_XS);
    }
}
