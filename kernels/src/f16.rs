//! F16: IEEE 754 binary16, one element per "block" (`half::f16`, little-endian).

use crate::f32::dot_converted;
use half::f16;

/// Exact f16 → f32 widening, used for every f16 scale and F16 element in this crate.
///
/// When the target has a hardware conversion (x86 F16C, AArch64 FP16) this is
/// `half`'s `to_f32`, which uses it. Otherwise it is the branch-free bit trick of ggml's
/// `ggml_compute_fp16_to_fp32`: shifting the f16 bits into an f32's exponent/mantissa
/// position and multiplying by 2^-112 rebiases normals (and keeps inf/NaN), while
/// subnormals are built as `magic - 0.5`. `half`'s portable fallback branches on the
/// exponent and made F16 rows ~4x slower on plain x86-64.
/// Bit-identical to `f16::to_f32` for every non-NaN input (tested exhaustively).
#[inline(always)]
pub fn f16_to_f32(h: f16) -> f32 {
    if cfg!(any(target_feature = "f16c", target_feature = "fp16")) {
        h.to_f32()
    } else {
        f16_to_f32_soft(h)
    }
}

/// The portable half of [`f16_to_f32`].
#[inline(always)]
fn f16_to_f32_soft(h: f16) -> f32 {
    let w = (h.to_bits() as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w); // drops the sign
    let exp_offset: u32 = 0xe0 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
    let magic_mask: u32 = 126 << 23;
    let denormalized = f32::from_bits((two_w >> 17) | magic_mask) - 0.5;
    let denorm_cutoff: u32 = 1 << 27;
    let bits = if two_w < denorm_cutoff { denormalized.to_bits() } else { normalized.to_bits() };
    f32::from_bits(sign | bits)
}

/// Converts to f16 with round-to-nearest-even, as ggml's `GGML_FP32_TO_FP16`
/// (and numpy's `astype(float16)`).
pub fn quantize_row_f16(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "quantize_row_f16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}

/// Widens to f32 (exact).
pub fn dequantize_row_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "dequantize_row_f16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(s);
    }
}

/// F16 · F16 (the activation type of F16 weights is F16): both widened to f32, products
/// accumulated in f32 lanes.
pub fn vec_dot_f16_f16(w: &[f16], x: &[f16]) -> f32 {
    crate::f32::dot_both_converted(w, x, f16_to_f32)
}

/// F16 weights · f32 activations.
pub fn vec_dot_f16_f32(w: &[f16], x: &[f32]) -> f32 {
    dot_converted(w, x, f16_to_f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn widening_matches_half_for_every_value() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (want, got) = (h.to_f32(), f16_to_f32_soft(h));
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn conversion_rounds_to_nearest_even() {
        // 1 + 2^-11 is exactly halfway between 1 and the next f16 (1 + 2^-10): ties to even.
        let mut out = [f16::ZERO; 3];
        quantize_row_f16(&[1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 65520.0], &mut out);
        assert_eq!(out[0].to_bits(), 0x3c00);
        assert_eq!(out[1].to_bits(), 0x3c02);
        assert!(out[2].is_infinite(), "65520 rounds up to +inf in f16");
    }

    #[test]
    fn roundtrip_gaussian() {
        // f16 keeps 11 significant bits: rounding error ulp/√12 with ulp = 2^-10 |x|
        // (to within a factor 2), i.e. ≈ 2^-10 / √28 ≈ 1.9e-4 of the RMS once averaged
        // over the mantissa. Measured 2.07e-4.
        let e = gaussian_roundtrip_error(GgmlType::F16, 16, 1024);
        assert!(e < 2.5e-4, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::F16, &[1, 17, 1024], 1.0e-3);
        check_vec_dot_f32(GgmlType::F16, &[1, 17, 1024]);
    }
}
