//! Q8_1: like Q8_0 plus `s = d * Σ q` (stored as f16), which lets the Q4_1/Q5_1 dot
//! products apply the weight block's offset `m` with one multiply: `Σ (dw qw + m) dx qx
//! = dw dx Σ qw qx + m s`. Activation format of Q4_1/Q5_1.

use crate::f16::f16_to_f32;
use crate::f32::dot_dequantized;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per Q8_1 block.
pub const QK8_1: usize = 32;

/// ggml's `block_q8_1` (36 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale: `amax / 127`.
    pub d: f16,
    /// `d * Σ qs` (rounded to f16).
    pub s: f16,
    /// Quants in `[-127, 127]`, element `j` in `qs[j]`.
    pub qs: [i8; QK8_1],
}
const _: () = assert!(core::mem::size_of::<BlockQ8_1>() == 36);

/// Round-to-nearest reference quantizer (ggml's `quantize_row_q8_1_ref`).
pub fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    assert_eq!(src.len(), dst.len() * QK8_1, "quantize_row_q8_1: length mismatch");
    for (x, y) in src.chunks_exact(QK8_1).zip(dst.iter_mut()) {
        let mut amax = 0.0f32;
        for &v in x {
            amax = amax.max(libm::fabsf(v));
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f16::from_f32(d);
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = libm::roundf(v * id) as i8;
            sum += *q as i32;
        }
        y.s = f16::from_f32(sum as f32 * d);
    }
}

/// Expands one block: `x[j] = q[j] * d` (`s` is redundant and unused here).
#[inline]
pub fn dequantize_block_q8_1(b: &BlockQ8_1, out: &mut [f32; QK8_1]) {
    let d = f16_to_f32(b.d);
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q8_1(src: &[BlockQ8_1], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK8_1, "dequantize_row_q8_1: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK8_1)) {
        dequantize_block_q8_1(b, out.try_into().unwrap());
    }
}

/// Q8_1 · Q8_1: per block `Σ qw * qx` in i32, scaled by `dw * dx`.
pub fn vec_dot_q8_1_q8_1(w: &[BlockQ8_1], x: &[BlockQ8_1]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q8_1_q8_1: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for (&a, &b) in bw.qs.iter().zip(&bx.qs) {
            sumi += a as i32 * b as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(bw.d) * f16_to_f32(bx.d));
    }
    sumf
}

/// Q8_1 weights · f32 activations.
pub fn vec_dot_q8_1_f32(w: &[BlockQ8_1], x: &[f32]) -> f32 {
    dot_dequantized(w, x, dequantize_block_q8_1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn stores_scaled_sum() {
        let x: [f32; 32] = core::array::from_fn(|i| i as f32 - 10.0);
        let mut b = [BlockQ8_1::zeroed()];
        quantize_row_q8_1(&x, &mut b);
        let d = 21.0f32 / 127.0;
        let sum: i32 = b[0].qs.iter().map(|&q| q as i32).sum();
        assert_eq!(b[0].d, f16::from_f32(d));
        assert_eq!(b[0].s, f16::from_f32(sum as f32 * d));
        assert_eq!(b[0].qs[31], 127);
    }

    #[test]
    fn roundtrip_gaussian() {
        // Same quants as Q8_0 (theory ≈ 0.54 %). Measured 0.538 %.
        let e = gaussian_roundtrip_error(GgmlType::Q8_1, 64, 1024);
        assert!(e < 0.0065, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q8_1, &[32, 96, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q8_1, &[32, 96, 1024]);
    }
}
