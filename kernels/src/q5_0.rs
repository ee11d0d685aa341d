//! Q5_0: blocks of 32 weights as 5-bit unsigned quants with one f16 scale,
//! `x ≈ d * (q - 16)`, q in 0..=31. The low 4 bits are packed like Q4_0, the fifth
//! bits in a separate 32-bit mask. Dots against Q8_0 activations.

use crate::f16::f16_to_f32;
use crate::f32::dot_dequantized;
use crate::grid::{f16_le, unpack_nibbles32};
use crate::q8_0::BlockQ8_0;
use crate::weighted::{block_weights, check_codes, pick_block, quantize_sym, Search};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per Q5_0 block.
pub const QK5_0: usize = 32;

/// ggml's `block_q5_0` (22 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale: `max / -16`, where `max` is the element of largest magnitude.
    pub d: f16,
    /// Fifth bits, as a little-endian `u32`: bit `j` belongs to element `j`.
    pub qh: [u8; 4],
    /// Low 4 bits, two per byte: element `j` in the low nibble of `qs[j]`, element
    /// `j + 16` in the high nibble.
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(core::mem::size_of::<BlockQ5_0>() == 22);

/// Round-to-nearest reference quantizer, exactly ggml's `quantize_row_q5_0_ref`:
/// `q = min(31, trunc(x / d + 16.5))`.
pub fn quantize_row_q5_0(src: &[f32], dst: &mut [BlockQ5_0]) {
    assert_eq!(src.len(), dst.len() * QK5_0, "quantize_row_q5_0: length mismatch");
    for (x, y) in src.chunks_exact(QK5_0).zip(dst.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < libm::fabsf(v) {
                amax = libm::fabsf(v);
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f16::from_f32(d);
        let q = |v: f32| ((v * id + 16.5) as i8).min(31) as u32;
        let mut qh = 0u32;
        for j in 0..QK5_0 / 2 {
            let (q0, q1) = (q(x[j]), q(x[j + QK5_0 / 2]));
            y.qs[j] = ((q0 & 0x0f) | ((q1 & 0x0f) << 4)) as u8;
            qh |= ((q0 & 0x10) >> 4) << j;
            qh |= ((q1 & 0x10) >> 4) << (j + QK5_0 / 2);
        }
        y.qh = qh.to_le_bytes();
    }
}

/// The 32 signed quants `q - 16` of a block, in element order.
#[inline]
fn quants(b: &BlockQ5_0) -> [i32; QK5_0] {
    let qh = u32::from_le_bytes(b.qh);
    let mut q = [0i32; QK5_0];
    for j in 0..QK5_0 / 2 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + QK5_0 / 2)) & 1) << 4;
        q[j] = ((b.qs[j] & 0x0f) as u32 | h0) as i32 - 16;
        q[j + QK5_0 / 2] = ((b.qs[j] >> 4) as u32 | h1) as i32 - 16;
    }
    q
}

/// Expands one block: `x[j] = (q[j] - 16) * d`.
#[inline]
pub fn dequantize_block_q5_0(b: &BlockQ5_0, out: &mut [f32; QK5_0]) {
    let d = f16_to_f32(b.d);
    for (o, q) in out.iter_mut().zip(quants(b)) {
        *o = q as f32 * d;
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q5_0(src: &[BlockQ5_0], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK5_0, "dequantize_row_q5_0: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK5_0)) {
        dequantize_block_q5_0(b, out.try_into().unwrap());
    }
}

/// Search effort of the weighted quantizer (see `weighted.rs`).
const WEIGHTED: Search = Search { k: (9.5, 25.0), phases: &[0.0], keep: 1, refits: 1 };

/// Importance-weighted quantizer: as [`crate::q4_0::quantize_row_q4_0_weighted`] with 32
/// levels — per block the f16 scale (either sign) and codes minimizing
/// `Σ importance[i] (x[i] - x̂[i])²`, never worse than [`quantize_row_q5_0`] on a block.
pub fn quantize_row_q5_0_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockQ5_0]) {
    assert_eq!(src.len(), dst.len() * QK5_0, "quantize_row_q5_0_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_q5_0_weighted: importance length mismatch");
    for ((x, imp), y) in src.chunks_exact(QK5_0).zip(importance.chunks_exact(QK5_0)).zip(dst.iter_mut()) {
        let mut w = [0.0f32; QK5_0];
        block_weights(imp, &mut w);
        let mut s = [0i32; QK5_0];
        let d = quantize_sym(x, &w, -16, 15, &WEIGHTED, &mut s);
        let mut ours = BlockQ5_0 { d, qh: [0; 4], qs: [0; QK5_0 / 2] };
        set_block_codes_q5_0(&mut ours, &s.map(|v| v + 16));
        let mut reference = BlockQ5_0::zeroed();
        quantize_row_q5_0(x, core::slice::from_mut(&mut reference));
        *y = pick_block(x, &w, ours, reference, dequantize_block_q5_0);
    }
}

/// The block's grid: `scale = d`, `offset = -16 d`, `q` in `(0, 31)` (the stored 5-bit
/// value). `scale * q + offset` equals [`dequantize_block_q5_0`]'s `(q - 16) * d` (both
/// exact for finite `d`; a zero may differ in sign).
pub fn block_grid_q5_0(b: &BlockQ5_0, scale: &mut [f32; QK5_0], offset: &mut [f32; QK5_0]) -> (i32, i32) {
    let d = f16_to_f32(b.d);
    scale.fill(d);
    offset.fill(-16.0 * d);
    (0, 31)
}

/// The stored codes (`0..=31`) in element order.
pub fn block_codes_q5_0(b: &BlockQ5_0, codes: &mut [i32; QK5_0]) {
    for (c, q) in codes.iter_mut().zip(quants(b)) {
        *c = q + 16;
    }
}

/// Stores `codes` (element order, each in `0..=31`; panics otherwise), keeping `d`.
pub fn set_block_codes_q5_0(b: &mut BlockQ5_0, codes: &[i32; QK5_0]) {
    check_codes("set_block_codes_q5_0", codes, 0, 31);
    let mut qh = 0u32;
    for j in 0..QK5_0 / 2 {
        let (q0, q1) = (codes[j] as u32, codes[j + QK5_0 / 2] as u32);
        b.qs[j] = ((q0 & 0x0f) | ((q1 & 0x0f) << 4)) as u8;
        qh |= ((q0 >> 4) << j) | ((q1 >> 4) << (j + QK5_0 / 2));
    }
    b.qh = qh.to_le_bytes();
}

/// Q5_0 · Q8_0: per block `Σ (qw - 16) * qx` in i32, then scaled by `dw * dx`.
pub fn vec_dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q5_0_q8_0: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for (q, &qx) in quants(bw).iter().zip(&bx.qs) {
            sumi += q * qx as i32;
        }
        sumf += (f16_to_f32(bw.d) * f16_to_f32(bx.d)) * sumi as f32;
    }
    sumf
}

/// Q5_0 weights · f32 activations, dequantizing one block at a time.
pub fn vec_dot_q5_0_f32(w: &[BlockQ5_0], x: &[f32]) -> f32 {
    dot_dequantized(w, x, dequantize_block_q5_0)
}

/// The integer kernels' view of a block (see [`crate::grid`]).
impl crate::grid::Grid for BlockQ5_0 {
    const TY: crate::GgmlType = crate::GgmlType::Q5_0;
    const GROUP: usize = 32;
    const MAX_CODE: u8 = 31;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let d = f16_le(blk, 0);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        unpack_nibbles32(blk[6..22].try_into().unwrap(), Some(qh), (&mut u[..32]).try_into().unwrap());
        (s[0], m[0]) = (d, -16.0 * d);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockQ5_0>();
    }
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn fifth_bits_land_in_qh() {
        // max = -16 -> d = 1; q = x + 16 (rounded): element 0 -> 0, element 17 -> 31,
        // element 2 -> 16 (0b10000: only the fifth bit set).
        let mut x = [0.0f32; 32];
        x[0] = -16.0;
        x[17] = 15.0;
        x[2] = 0.2;
        let mut b = [BlockQ5_0::zeroed()];
        quantize_row_q5_0(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), 1.0);
        let qh = u32::from_le_bytes(b[0].qh);
        assert_eq!(qh & 1, 0);
        assert_eq!((qh >> 17) & 1, 1);
        assert_eq!((qh >> 2) & 1, 1);
        assert_eq!(b[0].qs[1] >> 4, 15);
        assert_eq!(b[0].qs[2] & 0x0f, 0);
        let mut y = [0.0f32; 32];
        dequantize_row_q5_0(&b, &mut y);
        assert_eq!((y[0], y[17], y[2]), (-16.0, 15.0, 0.0));
    }

    #[test]
    fn roundtrip_gaussian() {
        // 32 levels, d = amax/16 ≈ 0.148σ: error ≈ d/√12 ≈ 4.3 % of σ.
        // Measured 4.28 %.
        let e = gaussian_roundtrip_error(GgmlType::Q5_0, 64, 1024);
        assert!(e < 0.052, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q5_0, &[32, 96, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q5_0, &[32, 96, 1024]);
    }

    #[test]
    fn weighted_beats_reference() {
        // Squared error relative to quantize_row_q5_0 on 64 x 1024 N(0, 1) values (block by
        // block never worse; checked inside). Measured: uniform importance 0.8768, log-normal
        // importance (exp(1.5 z)) 0.6069.
        let (uniform, weighted) = weighted_vs_reference(GgmlType::Q5_0, 64, 1024);
        assert!(uniform < 0.89 && weighted < 0.66, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_weighted_edge_cases(GgmlType::Q5_0);
    }

    #[test]
    fn block_grid_contract() {
        check_block_grid(GgmlType::Q5_0);
    }

    #[test]
    fn grid_data_is_reproduced() {
        check_grid_data_is_reproduced(GgmlType::Q5_0, 1.0);
    }
}
