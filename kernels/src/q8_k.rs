//! Q8_K: super-blocks of 256 values as signed 8-bit quants with an f32 scale and the
//! sums of each group of 16 quants (`bsums`). The activation format of all K-quant dot
//! products; `bsums` lets the Q2_K/Q4_K/Q5_K dots apply their per-sub-block mins
//! without touching the quants again.

use crate::f32::dot_dequantized;
use crate::kquant::nearest_int;
use crate::QK_K;
use bytemuck::{Pod, Zeroable};

/// ggml's `block_q8_K` (292 bytes; 4-byte aligned because of the f32 scale).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale: `max / -127` where `max` is the element of largest magnitude (so
    /// `x ≈ d * q`).
    pub d: f32,
    /// Quants in `[-127, 127]`, element `j` in `qs[j]`.
    pub qs: [i8; QK_K],
    /// `bsums[g] = Σ qs[16 g .. 16 g + 16]`.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(core::mem::size_of::<BlockQ8K>() == 292);

/// Reference quantizer (ggml's `quantize_row_q8_K_ref`): `iscale = -127 / max`,
/// `q = min(127, nearest_int(iscale * x))` (ties to even), `d = 1 / iscale`.
/// An all-zero block gets `d = 0` and zero quants (and, unlike ggml, which leaves them
/// uninitialized, zero `bsums`).
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "quantize_row_q8_k: length mismatch");
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = libm::fabsf(v);
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            *y = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, g) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        y.d = 1.0 / iscale;
    }
}

/// Expands one block: `x[j] = d * q[j]`.
#[inline]
pub fn dequantize_block_q8_k(b: &BlockQ8K, out: &mut [f32; QK_K]) {
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = b.d * q as f32;
    }
}

/// Dequantizes a row of blocks.
pub fn dequantize_row_q8_k(src: &[BlockQ8K], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK_K, "dequantize_row_q8_k: length mismatch");
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        dequantize_block_q8_k(b, out.try_into().unwrap());
    }
}

/// Q8_K · Q8_K: per block `Σ qw * qx` in i32, scaled by `dw * dx`.
pub fn vec_dot_q8_k_q8_k(w: &[BlockQ8K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_q8_k_q8_k: block count mismatch");
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for (&a, &b) in bw.qs.iter().zip(&bx.qs) {
            sumi += a as i32 * b as i32;
        }
        sumf += (bw.d * bx.d) * sumi as f32;
    }
    sumf
}

/// Q8_K weights · f32 activations.
pub fn vec_dot_q8_k_f32(w: &[BlockQ8K], x: &[f32]) -> f32 {
    dot_dequantized(w, x, dequantize_block_q8_k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn bsums_and_scale() {
        let x: [f32; QK_K] = core::array::from_fn(|i| (i as f32 - 100.0) / 10.0);
        let mut b = [BlockQ8K::zeroed()];
        quantize_row_q8_k(&x, &mut b);
        // max = 15.5 (i = 255): iscale = -127/15.5 < 0, so d < 0 and q[255] = -127.
        assert_eq!(b[0].qs[255], -127);
        assert!((b[0].d - 15.5 / -127.0).abs() < 1e-7);
        for g in 0..16 {
            let s: i16 = b[0].qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
            assert_eq!(b[0].bsums[g], s);
        }
    }

    #[test]
    fn roundtrip_gaussian() {
        // One scale per 256 values: E[amax] ≈ 2.9σ, step ≈ 0.023σ, error ≈ step/√12
        // ≈ 0.66 % of σ. Measured 0.694 %.
        let e = gaussian_roundtrip_error(GgmlType::Q8_K, 64, 1024);
        assert!(e < 0.0085, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::Q8_K, &[256, 1024], 0.01);
        check_vec_dot_f32(GgmlType::Q8_K, &[256, 1024]);
    }
}
