//! Q4_1: blocks of 32 weights as 4-bit unsigned quants with an f16 scale and an f16
//! offset, `x ≈ d * q + m`, q in 0..=15. Dots against Q8_1 activations.

use crate::f16::f16_to_f32;
use crate::f32::{reduce_lanes, LANES};
use crate::grid::{f16_le, unpack_nibbles32};
use crate::q8_1::BlockQ8_1;
use crate::weighted::{block_weights, check_codes, pick_block, quantize_affine, Search};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per Q4_1 block.
pub const QK4_1: usize = 32;

/// ggml's `block_q4_1` (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale: `(max - min) / 15`.
    pub d: f16,
    /// Offset: the block minimum.
    pub m: f16,
    /// Quants, two per byte: element `j` in the low nibble of `qs[j]`, element `j + 16`
    /// in the high nibble.
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(core::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(LANES == QK4_1 / 2);

/// Round-to-nearest reference quantizer, exactly ggml's `quantize_row_q4_1_ref`:
/// `q = min(15, trunc((x - min) / d + 0.5))`.
pub fn quantize_row_q4_1(src: &[f32], dst: &mut [BlockQ4_1]) {
    assert_eq!(src.len(), dst.len() * QK4_1, "quantize_row_q4_1: length mismatch");
    for (x, y) in src.chunks_exact(QK4_1).zip(dst.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f16::from_f32(d);
        y.m = f16::from_f32(min);
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        for j in 0..QK4_1 / 2 {
            y.qs[j] = q(x[j]) | (q(x[j + QK4_1 / 2]) << 4);
        }
    }
}

/// Expands one block: `x[j] = q[j] * d + m`.
#[inline]
pub fn dequantize_block_q4_1(b: &BlockQ4_1, out: &mut [f32; QK4_1]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    let (lo, hi) = out.split_at_mut(QK4_1 / 2);
    for j in 0..QK4_1 / 2 {
        lo[j] = (b.qs[j] & 0x0f) as f32 * d + m;
        hi[j] = (b.qs[j] >> 4) as f32 * d + m;
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q4_1(src: &[BlockQ4_1], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK4_1, "dequantize_row_q4_1: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK4_1)) {
        dequantize_block_q4_1(b, out.try_into().unwrap());
    }
}

/// Search effort of the weighted quantizer (see `weighted.rs`).
const WEIGHTED: Search = Search { k: (9.0, 21.0), phases: &[0.0, 0.5], keep: 2, refits: 2 };

/// Importance-weighted quantizer: per block the f16 scale `d`, f16 offset `m` and codes
/// minimizing `Σ importance[i] (x[i] - x̂[i])²`. Code vectors `round((x - min) / d + φ)`
/// over a window of `d` (two phases `φ`) are each refit by weighted least squares for
/// `(d, m)`; the best fits are rounded to f16 (with neighbours), the codes re-rounded with
/// the stored values, and `(d, m)` refit while that helps (see `weighted.rs`). Never worse
/// than [`quantize_row_q4_1`] on a block.
pub fn quantize_row_q4_1_weighted(src: &[f32], importance: &[f32], dst: &mut [BlockQ4_1]) {
    assert_eq!(src.len(), dst.len() * QK4_1, "quantize_row_q4_1_weighted: length mismatch");
    assert_eq!(importance.len(), src.len(), "quantize_row_q4_1_weighted: importance length mismatch");
    for ((x, imp), y) in src.chunks_exact(QK4_1).zip(importance.chunks_exact(QK4_1)).zip(dst.iter_mut()) {
        let mut w = [0.0f32; QK4_1];
        block_weights(imp, &mut w);
        let mut q = [0i32; QK4_1];
        let (d, m) = quantize_affine(x, &w, 15, &WEIGHTED, &mut q);
        let mut ours = BlockQ4_1 { d, m, qs: [0; QK4_1 / 2] };
        set_block_codes_q4_1(&mut ours, &q);
        let mut reference = BlockQ4_1::zeroed();
        quantize_row_q4_1(x, core::slice::from_mut(&mut reference));
        *y = pick_block(x, &w, ours, reference, dequantize_block_q4_1);
    }
}

/// The block's grid: `scale = d`, `offset = m`, `q` in `(0, 15)`. `scale * q + offset` is
/// exactly [`dequantize_block_q4_1`]'s `q * d + m`.
pub fn block_grid_q4_1(b: &BlockQ4_1, scale: &mut [f32; QK4_1], offset: &mut [f32; QK4_1]) -> (i32, i32) {
    scale.fill(f16_to_f32(b.d));
    offset.fill(f16_to_f32(b.m));
    (0, 15)
}

/// The stored codes (`0..=15`) in element order.
pub fn block_codes_q4_1(b: &BlockQ4_1, codes: &mut [i32; QK4_1]) {
    for j in 0..QK4_1 / 2 {
        codes[j] = (b.qs[j] & 0x0f) as i32;
        codes[j + QK4_1 / 2] = (b.qs[j] >> 4) as i32;
    }
}

/// Stores `codes` (element order, each in `0..=15`; panics otherwise), keeping `d`, `m`.
pub fn set_block_codes_q4_1(b: &mut BlockQ4_1, codes: &[i32; QK4_1]) {
    check_codes("set_block_codes_q4_1", codes, 0, 15);
    for j in 0..QK4_1 / 2 {
        b.qs[j] = codes[j] as u8 | ((codes[j + QK4_1 / 2] as u8) << 4);
    }
}

/// Q4_1 · Q8_1: per block `Σ qw * qx` in i32, then `dw dx Σ + m s`
/// (`s = dx Σ qx` comes precomputed with the activations).
pub fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q4_1_q8_1: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK4_1 / 2 {
            let v0 = (bw.qs[j] & 0x0f) as i32;
            let v1 = (bw.qs[j] >> 4) as i32;
            sumi += v0 * bx.qs[j] as i32 + v1 * bx.qs[j + QK4_1 / 2] as i32;
        }
        sumf += (f16_to_f32(bw.d) * f16_to_f32(bx.d)) * sumi as f32 + f16_to_f32(bw.m) * f16_to_f32(bx.s);
    }
    sumf
}

/// Q4_1 weights · f32 activations (a hot path of the runtime's forward pass). Each
/// block is dequantized in registers, `q * d + m`, and multiplied into 16 independent
/// lane accumulators — the low nibbles pair with `x[0..16]`, the high nibbles with
/// `x[16..32]`, so both halves map onto the same 16 lanes and LLVM vectorizes the loop
/// (measured ≈ 2.5x faster than expanding into a `[f32; 32]` buffer first).
pub fn vec_dot_q4_1_f32(w: &[BlockQ4_1], x: &[f32]) -> f32 {
    assert_eq!(w.len() * QK4_1, x.len(), "vec_dot_q4_1_f32: {} blocks vs {} activations", w.len(), x.len());
    const H: usize = QK4_1 / 2;
    let mut acc = [0.0f32; LANES];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK4_1)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        let (xl, xh) = (&xs[..H], &xs[H..]);
        for k in 0..H {
            let lo = (b.qs[k] & 0x0f) as f32 * d + m;
            let hi = (b.qs[k] >> 4) as f32 * d + m;
            acc[k] += lo * xl[k];
            acc[k] += hi * xh[k];
        }
    }
    reduce_lanes(&acc)
}

/// The integer kernels' view of a block (see [`crate::grid`]).
impl crate::grid::Grid for BlockQ4_1 {
    const TY: crate::GgmlType = crate::GgmlType::Q4_1;
    const GROUP: usize = 32;
    const MAX_CODE: u8 = 15;
    #[inline(always)]
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
        unpack_nibbles32(blk[4..20].try_into().unwrap(), None, (&mut u[..32]).try_into().unwrap());
        (s[0], m[0]) = (f16_le(blk, 0), f16_le(blk, 2));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn grid_unpack_matches_the_dequantizer() {
        crate::grid::tests::check_unpack::<BlockQ4_1>();
    }
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn exact_grid_is_reproduced() {
        // x = -1 + 0.25 q for q = 0..=15 (twice): representable exactly in Q4_1.
        let x: [f32; 32] = core::array::from_fn(|i| -1.0 + 0.25 * (i % 16) as f32);
        let mut b = [BlockQ4_1::zeroed()];
        quantize_row_q4_1(&x, &mut b);
        assert_eq!((b[0].d.to_f32(), b[0].m.to_f32()), (0.25, -1.0));
        let mut y = [0.0f32; 32];
        dequantize_row_q4_1(&b, &mut y);
        assert_eq!(y, x);
    }

    #[test]
    fn constant_block() {
        let mut b = [BlockQ4_1::zeroed()];
        quantize_row_q4_1(&[3.0; 32], &mut b);
        assert_eq!((b[0].d.to_f32(), b[0].m.to_f32(), b[0].qs), (0.0, 3.0, [0; 16]));
    }

    #[test]
    fn roundtrip_gaussian() {
        // 16 levels over [min, max] (E[range] ≈ 4.1σ for 32 samples): step ≈ 0.275σ,
        // error ≈ step/√12 ≈ 7.9 % of σ. Measured 7.83 %.
        let e = gaussian_roundtrip_error(GgmlType::Q4_1, 64, 1024);
        assert!(e < 0.095, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q4_1, &[32, 96, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q4_1, &[32, 96, 1024]);
    }

    #[test]
    fn weighted_beats_reference() {
        // Squared error relative to quantize_row_q4_1 on 64 x 1024 N(0, 1) values (block by
        // block never worse; checked inside). Measured: uniform importance 0.7767, log-normal
        // importance (exp(1.5 z)) 0.4797.
        let (uniform, weighted) = weighted_vs_reference(GgmlType::Q4_1, 64, 1024);
        assert!(uniform < 0.79 && weighted < 0.53, "uniform {uniform}, weighted {weighted}");
    }

    #[test]
    fn weighted_edge_cases() {
        check_weighted_edge_cases(GgmlType::Q4_1);
    }

    #[test]
    fn block_grid_contract() {
        check_block_grid(GgmlType::Q4_1);
    }

    #[test]
    fn grid_data_is_reproduced() {
        check_grid_data_is_reproduced(GgmlType::Q4_1, 1.0);
    }
}
