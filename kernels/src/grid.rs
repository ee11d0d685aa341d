//! The unpacked view every integer matrix kernel works on: one block's weights as unsigned 8-bit
//! codes with a scale and an offset per group of [`Grid::GROUP`] elements,
//!
//! ```text
//! w[i] = s[g] · u[i] + m[g],   g = i / GROUP,   0 ≤ u[i] ≤ MAX_CODE
//! ```
//!
//! Each block type implements [`Grid`] in its own module (how its bits become codes, scales
//! and offsets); the per-architecture kernels (`arch/x86`, `arch/arm`) and the scalar oracle
//! here are written once over that view and instantiated per type. Against activations
//! quantized per 32 elements (`x ≈ dx · q`, `|q| ≤ 127`), a group `g` inside activation block
//! `b` contributes
//!
//! ```text
//! Σ_{i ∈ g} w_i x_i ≈ (s[g] · dx_b) · Σ u_i q_i  +  m[g] · (dx_b · Σ q_i)
//! ```
//!
//! an exact integer dot product, one scaling, and an offset term whose activation half
//! (`dx · Σq` per 16 or 32 elements) is computed once per token.

use crate::f16::f16_to_f32;
use crate::GgmlType;

/// A block type seen as codes, scales and offsets (see the module docs).
pub(crate) trait Grid: 'static {
    /// The type.
    const TY: GgmlType;
    /// Elements per scale group: 32, or 16 for Q2_K, Q3_K and Q6_K.
    const GROUP: usize;
    /// The largest code (what bounds the exactness of AVX2's 16-bit pair sums).
    #[cfg_attr(
        not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))),
        allow(dead_code)
    )]
    const MAX_CODE: u8;
    /// Unpacks the block `blk` (`TY.type_size()` bytes): its `TY.block_size()` codes into `u`,
    /// the scale and offset of each of its groups into `s` and `m`.
    fn unpack(blk: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]);
}

/// The little-endian f16 at `b[at..at + 2]`, widened.
#[inline(always)]
pub(crate) fn f16_le(b: &[u8], at: usize) -> f32 {
    f16_to_f32(half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])))
}

/// The 4-bit codes of a 32-element block (`qs`: element `j` low nibble of byte `j`, element
/// `j + 16` high nibble), optionally with a fifth bit from `qh` (bit `j` for element `j`).
#[inline(always)]
pub(crate) fn unpack_nibbles32(qs: &[u8; 16], qh: Option<u32>, u: &mut [u8; 32]) {
    for j in 0..16 {
        u[j] = qs[j] & 0x0f;
        u[j + 16] = qs[j] >> 4;
    }
    if let Some(qh) = qh {
        // Bit j of `qh` → bit 4 of byte j, eight bytes at a time.
        for (i, u8s) in u.chunks_exact_mut(8).enumerate() {
            let w = u64::from_le_bytes([u8s[0], u8s[1], u8s[2], u8s[3], u8s[4], u8s[5], u8s[6], u8s[7]]);
            u8s.copy_from_slice(&(w | spread_bits((qh >> (8 * i)) as u8) << 4).to_le_bytes());
        }
    }
}

/// Bit `k` of `b` → bit 0 of byte `k` (shifts and masks only, no per-bit loop).
#[inline(always)]
pub(crate) fn spread_bits(b: u8) -> u64 {
    let v = b as u64;
    let v = (v | v << 28) & 0x0000_000f_0000_000f;
    let v = (v | v << 14) & 0x0003_0003_0003_0003;
    (v | v << 7) & 0x0101_0101_0101_0101
}

/// The scalar oracle of the decode kernels: `Σ_c w[c] x[c]` for one row (`row`: the encoded
/// row, `x`: one token quantized per 32 — codes `q`, scales `d`, and `ds16` / `ds32`: `d · Σq`
/// per 16 / 32 elements). The integer sums are exact; the f32 sums run group by group.
pub(crate) fn dot_row_scalar<T: Grid>(row: &[u8], q: &[i8], d: &[f32], ds16: &[f32], ds32: &[f32]) -> f32 {
    let (bs, g) = (T::TY.block_size(), T::GROUP);
    let ds = if g == 16 { ds16 } else { ds32 };
    let (mut u, mut s, mut m) = ([0u8; 256], [0.0f32; 16], [0.0f32; 16]);
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(T::TY.type_size()).enumerate() {
        T::unpack(blk, &mut u[..bs], &mut s[..bs / g], &mut m[..bs / g]);
        for j in 0..bs / g {
            let e0 = b * bs + j * g;
            let dot: i32 = u[j * g..(j + 1) * g].iter().zip(&q[e0..e0 + g]).map(|(&u, &q)| u as i32 * q as i32).sum();
            acc += s[j] * d[e0 / 32] * dot as f32 + m[j] * ds[e0 / g];
        }
    }
    acc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn spread_bits_puts_bit_k_in_byte_k() {
        for b in 0..=255u8 {
            let want = (0..8).fold(0u64, |w, k| w | (((b >> k) & 1) as u64) << (8 * k));
            assert_eq!(spread_bits(b), want, "{b:#010b}");
        }
    }

    /// `T::unpack` against the type's dequantizer: `s·u + m` is each weight, up to the
    /// rounding of the two ways of computing it, and every code is within `MAX_CODE`.
    pub(crate) fn check_unpack<T: Grid>() {
        let ty = T::TY;
        let mut rng = crate::test_util::rng(ty.id() as u64);
        let k = 512;
        let x: alloc::vec::Vec<f32> = (0..k)
            .map(|i| {
                use rand::Rng;
                rng.gen_range(-1.0f32..1.0) * if i % 37 == 0 { 5.0 } else { 1.0 }
            })
            .collect();
        let rb = ty.row_bytes(k).unwrap();
        let mut w = vec![0u8; rb];
        crate::quantize_row(ty, &x, &mut w);
        let mut deq = vec![0.0f32; k];
        crate::dequantize_row(ty, &w, &mut deq);
        let (bs, g) = (ty.block_size(), T::GROUP);
        let (mut u, mut s, mut m) = ([0u8; 256], [0.0f32; 16], [0.0f32; 16]);
        for (b, blk) in w.chunks_exact(ty.type_size()).enumerate() {
            T::unpack(blk, &mut u[..bs], &mut s[..bs / g], &mut m[..bs / g]);
            for i in 0..bs {
                let (got, want) = (s[i / g] * u[i] as f32 + m[i / g], deq[b * bs + i]);
                assert!(u[i] <= T::MAX_CODE, "{ty}: code {} above {}", u[i], T::MAX_CODE);
                let bound = 4.0 * f32::EPSILON * (s[i / g].abs() * 255.0 + m[i / g].abs() + want.abs());
                assert!((got - want).abs() <= bound, "{ty} block {b} element {i}: {got} vs {want}");
            }
        }
    }
}
