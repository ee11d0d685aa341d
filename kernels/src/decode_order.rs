//! The canonical order of the decode kernels of Q4_0, Q4_1 and Q8_0: every path (scalar,
//! AVX2, AVX-512 VNNI, NEON, NEON dotprod) computes a row against one quantized token with
//! the same f32 operations in the same order, so decode gives the same bits everywhere (as
//! prefill's gemm does). The integer sums are exact, so only how they are cut into lanes and
//! how the lanes' floats are combined has to agree. The order is the AVX-512 kernels' own
//! (`arch/x86/gemv_avx512.rs`); the others reproduce it, and this module is its scalar form
//! (the table's scalar kernel for these types, and the oracle the SIMD kernels are tested
//! against bit for bit).
//!
//! **16 f32 lanes** per row, all starting at +0.
//!
//! * **Q4_0 / Q4_1**: blocks in groups of 4 (the last group may be short); lane `4i + m` of a
//!   group takes block `i`'s elements `4m..4m + 4` and `16 + 4m..16 + 4m + 4` (byte `4m..4m + 4`
//!   of its nibbles, low and high). Per block and lane: the exact integer `dot = Σ (w - 8) x`
//!   (Q4_0) or `Σ w x` (Q4_1, `w` the 4-bit code) over those 8 elements, then
//!   `acc = fma(dot, d_w · d_x, acc)`; Q4_1 also keeps `acc_m = fma(m_w, d_x · Σx, acc_m)`
//!   (`Σx` the 8 activation codes' sum, as an f32, times the activation scale: [`VecQ8`]'s
//!   `dsg`), and the row's lanes are `acc + acc_m`.
//! * **Q8_0**: blocks in pairs (the last may be alone); lane `8i + m` of a pair takes block
//!   `i`'s elements `4m..4m + 4`: `acc = fma(Σ w x, d_w · d_x, acc)`.
//!
//! A block that a short group or pair lacks leaves its lanes as they are. The 16 lanes are
//! then reduced by [`reduce16`]: `h_i = v_i + v_{i+8}`, then `((h0 + h1) + (h2 + h3)) + ((h4 +
//! h5) + (h6 + h7))`.

use crate::gemm_q8::{VecQ8, QA};

/// The 16 lanes' sum in the canonical tree (what AVX-512's `reduce4` computes).
#[inline]
pub fn reduce16(v: &[f32; 16]) -> f32 {
    let h: [f32; 8] = core::array::from_fn(|i| v[i] + v[i + 8]);
    ((h[0] + h[1]) + (h[2] + h[3])) + ((h[4] + h[5]) + (h[6] + h[7]))
}

/// The f16 at `b[0..2]` as f32.
#[inline]
fn f16_at(b: &[u8]) -> f32 {
    crate::f16::f16_to_f32(half::f16::from_le_bytes([b[0], b[1]]))
}

/// Q4_0 (`Q41 = false`, 18-byte blocks) or Q4_1 (20-byte blocks) rows against one token, in
/// the canonical order (module docs).
pub(crate) fn gemv_q4_canon<const Q41: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let bs = if Q41 { 20 } else { 18 };
    let nb = x.k() / QA;
    assert!(rb == nb * bs && w.len() == out.len() * rb, "gemv_q8: shapes");
    let (q, d) = (&x.acts.q, &x.acts.d);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let (mut acc, mut acc_m) = ([0.0f32; 16], [0.0f32; 16]);
        for (b, blk) in row.chunks_exact(bs).enumerate() {
            let qs = &blk[bs - 16..];
            let xb = &q[b * QA..(b + 1) * QA];
            let scale = f16_at(blk) * d[b];
            let m_w = if Q41 { f16_at(&blk[2..]) } else { 0.0 };
            for m in 0..4 {
                let (mut dot, mut sx) = (0i32, 0i32);
                for j in 4 * m..4 * m + 4 {
                    let (lo, hi) = ((qs[j] & 0x0f) as i32, (qs[j] >> 4) as i32);
                    let (lo, hi) = if Q41 { (lo, hi) } else { (lo - 8, hi - 8) };
                    dot += lo * xb[j] as i32 + hi * xb[j + 16] as i32;
                    sx += xb[j] as i32 + xb[j + 16] as i32;
                }
                let lane = 4 * (b % 4) + m;
                acc[lane] = crate::f32::fma(dot as f32, scale, acc[lane]);
                if Q41 {
                    acc_m[lane] = crate::f32::fma(m_w, d[b] * sx as f32, acc_m[lane]);
                }
            }
        }
        if Q41 {
            for (a, am) in acc.iter_mut().zip(&acc_m) {
                *a += *am;
            }
        }
        *o = reduce16(&acc);
    }
}

/// Q8_0 rows (34-byte blocks) against one token, in the canonical order (module docs).
pub(crate) fn gemv_q8_0_canon(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let nb = x.k() / QA;
    assert!(rb == nb * 34 && w.len() == out.len() * rb, "gemv_q8: shapes");
    let (q, d) = (&x.acts.q, &x.acts.d);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let mut acc = [0.0f32; 16];
        for (b, blk) in row.chunks_exact(34).enumerate() {
            let scale = f16_at(blk) * d[b];
            for m in 0..8 {
                let dot: i32 = (4 * m..4 * m + 4).map(|j| blk[2 + j] as i8 as i32 * q[b * QA + j] as i32).sum();
                let lane = 8 * (b % 2) + m;
                acc[lane] = crate::f32::fma(dot as f32, scale, acc[lane]);
            }
        }
        *o = reduce16(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::rng;
    use crate::GgmlType;
    use alloc::vec;
    use alloc::vec::Vec;
    use rand::Rng;

    /// The canonical order is a summation order, not another function: against the f64 dot
    /// product of the dequantized row and the dequantized token, within f32 rounding.
    #[test]
    fn canonical_kernels_compute_the_dot_product() {
        let mut rng = rng(41);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            for &(n_rows, k) in &[(3usize, 32usize), (4, 96), (2, 576), (5, 160)] {
                let rb = ty.row_bytes(k).unwrap();
                let mut w = vec![0u8; n_rows * rb];
                for r in 0..n_rows {
                    let row: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0f32..1.0) + 0.3).collect();
                    crate::quantize_row(ty, &row, &mut w[r * rb..(r + 1) * rb]);
                }
                let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                let mut v = VecQ8::default();
                v.quantize_for(crate::KernelPath::Scalar, &x);
                let mut got = vec![0.0f32; n_rows];
                match ty {
                    GgmlType::Q4_0 => gemv_q4_canon::<false>(&w, rb, &v, &mut got),
                    GgmlType::Q4_1 => gemv_q4_canon::<true>(&w, rb, &v, &mut got),
                    _ => gemv_q8_0_canon(&w, rb, &v, &mut got),
                }
                let xd: Vec<f64> = (0..k).map(|i| v.acts.q[i] as f64 * v.acts.d[i / QA] as f64).collect();
                let mut wr = vec![0.0f32; k];
                for r in 0..n_rows {
                    crate::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut wr);
                    let want: f64 = wr.iter().zip(&xd).map(|(&a, &b)| a as f64 * b).sum();
                    let mag: f64 = wr.iter().zip(&xd).map(|(&a, &b)| (a as f64 * b).abs()).sum();
                    assert!(
                        (got[r] as f64 - want).abs() <= 1e-5 * mag + 1e-6,
                        "{ty} {k} row {r}: {} vs {want}",
                        got[r]
                    );
                }
            }
        }
    }
}
