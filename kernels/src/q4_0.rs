//! Q4_0: blocks of 32 weights as 4-bit unsigned quants with one f16 scale,
//! `x ≈ d * (q - 8)`, q in 0..=15. Dots against Q8_0 activations.

use crate::f16::f16_to_f32;
use crate::f32::{reduce_lanes, LANES};
use crate::grid::{f16_le, unpack_nibbles32};
use crate::q8_0::BlockQ8_0;
use crate::weighted::{block_weights, check_codes, pick_block, quantize_sym, Search};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per Q4_0 block.
pub const QK4_0: usize = 32;

/// ggml's `block_q4_0` (18 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale: `max / -8`, where `max` is the element of largest magnitude (with its
    /// sign), so that element maps exactly to `q = 0`.
    pub d: f16,
    /// Quants, two per byte: element `j` in the low nibble of `qs[j]`, element `j + 16`
    /// in the high nibble.
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(LANES == QK4_0 / 2);

/// Round-to-nearest reference quantizer, exactly ggml's `quantize_row_q4_0_ref`:
/// `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_row_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    assert_eq!(src.len(), dst.len() * QK4_0, "quantize_row_q4_0: length mismatch");
    for (x, y) in src.chunks_exact(QK4_0).zip(dst.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < libm::fabsf(v) {
                amax = libm::fabsf(v);
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f16::from_f32(d);
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        for j in 0..QK4_0 / 2 {
            y.qs[j] = q(x[j]) | (q(x[j + QK4_0 / 2]) << 4);
        }
    }
}

/// Expands one block: `x[j] = (q[j] - 8) * d`.
#[inline]
pub fn dequantize_block_q4_0(b: &BlockQ4_0, out: &mut [f32; QK4_0]) {
    let d = f16_to_f32(b.d);
    let (lo, hi) = out.split_at_mut(QK4_0 / 2);
    for j in 0..QK4_0 / 2 {
        lo[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
        hi[j] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK4_0, "dequantize_row_q4_0: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
        dequantize_block_q4_0(b, out.try_into().unwrap());
    }
}

/// Search effort of the weighted quantizer (see `weighted.rs`).
const WEIGHTED: Search = Search { k: (5.0, 15.5), phases: &[0.0], keep: 1, refits: 1 };

/// Importance-weighted quantizer: per block, the f16 scale `d` (either sign) and codes
/// minimizing `Σ importance[i] (x[i] - x̂[i])²`. Every code vector `round(x / d)` over a
/// wide window of `d` is visited and refit by weighted least squares; the best fits are
/// rounded to f16 (trying the neighbours too), the codes re-rounded with the stored scale,
/// and the scale refit while that helps (see `weighted.rs`). A block keeps the
/// [`quantize_row_q4_0`] result when that is at least as good under its importance, so it
/// is never worse. Importance: one value `>= 0` per element; all-zero blocks are uniform.
pub fn quantize_row_q4_0_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockQ4_0]) {
    assert_eq!(src.len(), dst.len() * QK4_0, "quantize_row_q4_0_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_q4_0_weighted: importance length mismatch");
    for ((x, imp), y) in src.chunks_exact(QK4_0).zip(importance.chunks_exact(QK4_0)).zip(dst.iter_mut()) {
        let mut w = [0.0f32; QK4_0];
        block_weights(imp, &mut w);
        let mut s = [0i32; QK4_0];
        let d = quantize_sym(x, &w, -8, 7, &WEIGHTED, &mut s);
        let mut ours = BlockQ4_0 { d, qs: [0; QK4_0 / 2] };
        set_block_codes_q4_0(&mut ours, &s.map(|v| v + 8));
        let mut reference = BlockQ4_0::zeroed();
        quantize_row_q4_0(x, core::slice::from_mut(&mut reference));
        *y = pick_block(x, &w, ours, reference, dequantize_block_q4_0);
    }
}

/// The block's grid: element `i` can be `scale[i] * q + offset[i]` for `q` in the returned
/// `(0, 15)` (the stored nibble), with `scale = d` and `offset = -8 d`. For a stored `q`,
/// `scale * q + offset` equals [`dequantize_block_q4_0`]'s `(q - 8) * d` (both are exact
/// for finite `d`; a zero may differ in sign).
pub fn block_grid_q4_0(b: &BlockQ4_0, scale: &mut [f32; QK4_0], offset: &mut [f32; QK4_0]) -> (i32, i32) {
    let d = f16_to_f32(b.d);
    scale.fill(d);
    offset.fill(-8.0 * d);
    (0, 15)
}

/// The stored codes (nibbles, `0..=15`) in element order.
pub fn block_codes_q4_0(b: &BlockQ4_0, codes: &mut [i32; QK4_0]) {
    for j in 0..QK4_0 / 2 {
        codes[j] = (b.qs[j] & 0x0f) as i32;
        codes[j + QK4_0 / 2] = (b.qs[j] >> 4) as i32;
    }
}

/// Stores `codes` (element order, each in `0..=15`; panics otherwise), keeping `d`.
pub fn set_block_codes_q4_0(b: &mut BlockQ4_0, codes: &[i32; QK4_0]) {
    check_codes("set_block_codes_q4_0", codes, 0, 15);
    for j in 0..QK4_0 / 2 {
        b.qs[j] = codes[j] as u8 | ((codes[j + QK4_0 / 2] as u8) << 4);
    }
}

/// Q4_0 · Q8_0: per block `Σ (qw - 8) * qx` in i32, then scaled by `dw * dx`.
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q4_0_q8_0: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK4_0 / 2 {
            let v0 = (bw.qs[j] & 0x0f) as i32 - 8;
            let v1 = (bw.qs[j] >> 4) as i32 - 8;
            sumi += v0 * bx.qs[j] as i32 + v1 * bx.qs[j + QK4_0 / 2] as i32;
        }
        sumf += sumi as f32 * f16_to_f32(bw.d) * f16_to_f32(bx.d);
    }
    sumf
}

/// Q4_0 weights · f32 activations. As for Q8_0: per block, `Σ (q - 8) x` in 16 lanes
/// (elements `k` and `k + 16` share lane `k`), then scaled by `d` into the running sums.
pub fn vec_dot_q4_0_f32(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK4_0, x.len(), "vec_dot_q4_0_f32: {} blocks vs {} activations", w.len(), x.len());
    const H: usize = QK4_0 / 2;
    let mut acc = [0.0f32; LANES];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK4_0)) {
        let d = f16_to_f32(b.d);
        let (xl, xh) = (&xs[..H], &xs[H..]);
        let mut t = [0.0f32; LANES];
        for k in 0..H {
            let lo = ((b.qs[k] & 0x0f) as i32 - 8) as f32;
            let hi = ((b.qs[k] >> 4) as i32 - 8) as f32;
            t[k] = lo * xl[k] + hi * xh[k];
        }
        for k in 0..LANES {
            acc[k] += d * t[k];
        }
    }
    reduce_lanes(&acc)
}

/// The integer kernels' view of a block (see [`crate::grid`]).
impl crate::grid::Grid for BlockQ4_0 {
    const TY: crate::GgmlType = crate::GgmlType::Q4_0;
    const GROUP: usize = 32;
    const MAX_CODE: u8 = 15;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        let d = f16_le(blk, 0);
        unpack_nibbles32(blk[2..18].try_into().unwrap(), None, (&mut u[..32]).try_into().unwrap());
        (s[0], m[0]) = (d, -8.0 * d);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockQ4_0>();
    }
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn largest_magnitude_maps_to_zero_quant() {
        let mut x = [0.0f32; 32];
        x[3] = -4.0; // largest magnitude, negative: d = -4 / -8 = 0.5, q = 0
        x[20] = 3.5; // 3.5 / 0.5 + 8.5 = 15.5 -> 15
        x[5] = 0.26; // 0.26 / 0.5 + 8.5 = 9.02 -> 9
        let mut b = [BlockQ4_0::zeroed()];
        quantize_row_q4_0(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), 0.5);
        assert_eq!(b[0].qs[3] & 0x0f, 0);
        assert_eq!(b[0].qs[4] >> 4, 15);
        assert_eq!(b[0].qs[5] & 0x0f, 9);
        assert_eq!(b[0].qs[0], 0x88, "zeros map to q = 8");
        let mut y = [0.0f32; 32];
        dequantize_row_q4_0(&b, &mut y);
        assert_eq!((y[3], y[20], y[5], y[0]), (-4.0, 3.5, 0.5, 0.0));
    }

    #[test]
    fn positive_max_clamps_to_15() {
        // max = +8 -> d = -1, q(+8) = trunc(-8 + 8.5) = 0, q(-8) = trunc(16.5) -> 15.
        let mut x = [0.0f32; 32];
        x[0] = 8.0;
        x[1] = -8.0;
        let mut b = [BlockQ4_0::zeroed()];
        quantize_row_q4_0(&x, &mut b);
        assert_eq!(b[0].qs[0] & 0x0f, 0);
        assert_eq!(b[0].qs[1] & 0x0f, 15);
    }

    #[test]
    fn roundtrip_gaussian() {
        // 16 levels, d = amax/8 with E[amax] ≈ 2.36σ: step ≈ 0.295σ, error ≈ d/√12
        // ≈ 8.5 % of σ. Measured 8.53 %.
        let e = gaussian_roundtrip_error(GgmlType::Q4_0, 64, 1024);
        assert!(e < 0.10, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q4_0, &[32, 96, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q4_0, &[32, 96, 1024]);
    }

    #[test]
    fn weighted_beats_reference() {
        // Squared error relative to quantize_row_q4_0 on 64 x 1024 N(0, 1) values (block by
        // block never worse; checked inside). Measured: uniform importance 0.8851, log-normal
        // importance (exp(1.5 z)) 0.6203.
        let (uniform, weighted) = weighted_vs_reference(GgmlType::Q4_0, 64, 1024);
        assert!(uniform < 0.9 && weighted < 0.67, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_weighted_edge_cases(GgmlType::Q4_0);
    }

    #[test]
    fn block_grid_contract() {
        check_block_grid(GgmlType::Q4_0);
    }

    #[test]
    fn grid_data_is_reproduced() {
        check_grid_data_is_reproduced(GgmlType::Q4_0, 1.0);
    }
}
