//! BF16: bfloat16 (the top 16 bits of an f32), one element per "block".

use crate::f32::dot_converted;
use half::bf16;

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even on the upper 16 bits; NaNs
/// are kept NaN (quieted) rather than rounded into infinity.
#[inline]
pub fn f32_to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    bf16::from_bits(((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16)
}

/// Converts each element with [`f32_to_bf16`].
pub fn quantize_row_bf16(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "quantize_row_bf16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32_to_bf16(s);
    }
}

/// Widens to f32 (exact: a 16-bit shift).
pub fn dequantize_row_bf16(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "dequantize_row_bf16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_to_f32(s);
    }
}

#[inline(always)]
fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

/// BF16 · BF16: both widened to f32, products accumulated in f32 lanes.
pub fn vec_dot_bf16_bf16(w: &[bf16], x: &[bf16]) -> f32 {
    crate::f32::dot_both_converted(w, x, bf16_to_f32)
}

/// BF16 weights · f32 activations.
pub fn vec_dot_bf16_f32(w: &[bf16], x: &[f32]) -> f32 {
    dot_converted(w, x, bf16_to_f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::GgmlType;

    #[test]
    fn rounding_matches_ggml() {
        // Halfway cases round to even; NaN stays NaN; values near f32::MAX go to inf.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)).to_bits(), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::MAX).to_bits(), 0x7f80);
        assert_eq!(f32_to_bf16(-2.0).to_bits(), 0xc000);
    }

    #[test]
    fn roundtrip_gaussian() {
        // bf16 keeps 8 significant bits: as f16 with ulp = 2^-7 |x|, ≈ 2^-7 / √28
        // ≈ 1.5e-3 of the RMS. Measured 1.66e-3.
        let e = gaussian_roundtrip_error(GgmlType::BF16, 16, 1024);
        assert!(e < 2.0e-3, "rel rmse {e}");
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(GgmlType::BF16, &[1, 17, 1024], 1.0e-2);
        check_vec_dot_f32(GgmlType::BF16, &[1, 17, 1024]);
    }
}
