//! Decode kernels (matrix × one quantized token) for any [`Grid`] block type on NEON and NEON
//! dotprod: each block is unpacked by the type's own `unpack` (inlined here, so vectorized for
//! NEON), then each group of 16 or 32 codes meets the token's codes in an exact integer dot
//! product (`smull`/`sadalp`, or `sdot`), scaled by `s · dx`; offsets meet `dx · Σq` per group.
//! Codes must fit in `i8` (`MAX_CODE ≤ 127`): the products are signed × signed.

use core::arch::aarch64::*;

use super::q8_neon::{dot32_sdot, dot32_smull, f16_at};
use crate::gemm_q8::VecQ8;
use crate::grid::Grid;

/// `out[r] = row r · x` on plain NEON.
pub(crate) fn gemv_grid_neon<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::Neon.is_available(), "gemv_q8: NEON is not available");
    check_shapes::<T>(w, rb, x, out);
    // SAFETY: NEON is available (asserted above); shapes checked above.
    unsafe { gemv_grid_neon_impl::<T>(w, rb, x, out) }
}

/// `out[r] = row r · x` on NEON + dotprod.
pub(crate) fn gemv_grid_sdot<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::NeonDotprod.is_available(), "gemv_q8: NEON dotprod is not available");
    check_shapes::<T>(w, rb, x, out);
    // SAFETY: NEON + dotprod are available (asserted above); shapes checked above.
    unsafe { gemv_grid_sdot_impl::<T>(w, rb, x, out) }
}

fn check_shapes<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &[f32]) {
    let k = x.k();
    assert!(T::MAX_CODE <= 127, "gemv_q8: {} codes do not fit in i8", T::TY);
    assert!(k.is_multiple_of(T::TY.block_size()), "gemv_q8: {} rows of {k}", T::TY);
    assert_eq!(rb, T::TY.row_bytes(k).unwrap_or(0), "gemv_q8: row bytes");
    assert_eq!(w.len(), out.len() * rb, "gemv_q8: {} bytes for {} rows of {rb}", w.len(), out.len());
    let a = &x.acts;
    assert!(a.q.len() == k && a.d.len() == k / 32 && a.ds16.len() == k / 16 && a.ds32.len() == k / 32);
}

/// # Safety
/// NEON; shapes as [`check_shapes`] asserts.
#[target_feature(enable = "neon")]
unsafe fn gemv_grid_neon_impl<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    gemv_grid_rows::<T, false>(w, rb, x, out)
}

/// # Safety
/// NEON + dotprod; shapes as [`check_shapes`] asserts.
#[target_feature(enable = "neon,dotprod")]
unsafe fn gemv_grid_sdot_impl<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    gemv_grid_rows::<T, true>(w, rb, x, out)
}

/// The rows, one group per step: `acc += (s · dx) · Σ u q` (4 lanes), `off += m · dx Σq`.
///
/// # Safety
/// NEON, and dotprod if `SDOT`; shapes as [`check_shapes`] asserts.
#[inline(always)]
unsafe fn gemv_grid_rows<T: Grid, const SDOT: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let (bs, g, ts) = (T::TY.block_size(), T::GROUP, T::TY.type_size());
    let nb = x.k() / bs;
    let (q, d) = (x.acts.q.as_ptr(), x.acts.d.as_ptr());
    let ds = if g == 16 { x.acts.ds16.as_ptr() } else { x.acts.ds32.as_ptr() };
    let zero = vdupq_n_s8(0);
    let (mut u, mut s, mut m) = ([0u8; 256], [0.0f32; 16], [0.0f32; 16]);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let mut acc = [vdupq_n_f32(0.0); 2];
        let mut off = 0.0f32;
        for b in 0..nb {
            T::unpack(&row[b * ts..(b + 1) * ts], &mut u[..bs], &mut s[..bs / g], &mut m[..bs / g]);
            for j in 0..bs / g {
                let e = b * bs + j * g;
                // SAFETY: codes e..e + g lie inside the token and inside `u` (j · g + g ≤ bs);
                // codes ≤ 127 read as i8 keep their value.
                let up = u.as_ptr().add(j * g).cast::<i8>();
                let (wv, xv) = if g == 32 {
                    ([vld1q_s8(up), vld1q_s8(up.add(16))], [vld1q_s8(q.add(e)), vld1q_s8(q.add(e + 16))])
                } else {
                    ([vld1q_s8(up), zero], [vld1q_s8(q.add(e)), zero])
                };
                let dot = if SDOT { dot32_sdot(wv, xv) } else { dot32_smull(wv, xv) };
                acc[j & 1] = vfmaq_n_f32(acc[j & 1], vcvtq_f32_s32(dot), s[j] * *d.add(e / 32));
                off += m[j] * *ds.add(e / g);
            }
        }
        *o = vaddvq_f32(vaddq_f32(acc[0], acc[1])) + off;
    }
}

/// IQ4_NL (`XS = false`: 18-byte blocks of 32) or IQ4_XS (136-byte super-blocks of 8 groups of
/// 32 under 6-bit group scales) on plain NEON: each group's 16 bytes of indices become the
/// grid's signed values (−127 … 113) by two table lookups (`tbl`), then a signed integer dot.
pub(crate) fn gemv_iq4_neon<const XS: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::Neon.is_available(), "gemv_q8: NEON is not available");
    check_iq4::<XS>(w, rb, x, out);
    // SAFETY: NEON is available (asserted above); shapes checked above.
    unsafe { gemv_iq4_neon_impl::<XS>(w, rb, x, out) }
}

/// [`gemv_iq4_neon`] with `sdot`.
pub(crate) fn gemv_iq4_sdot<const XS: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::NeonDotprod.is_available(), "gemv_q8: NEON dotprod is not available");
    check_iq4::<XS>(w, rb, x, out);
    // SAFETY: NEON + dotprod are available (asserted above); shapes checked above.
    unsafe { gemv_iq4_sdot_impl::<XS>(w, rb, x, out) }
}

fn check_iq4<const XS: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &[f32]) {
    let ty = if XS { crate::GgmlType::IQ4_XS } else { crate::GgmlType::IQ4_NL };
    let k = x.k();
    assert!(k.is_multiple_of(ty.block_size()), "gemv_q8: {ty} rows of {k}");
    assert_eq!(rb, ty.row_bytes(k).unwrap_or(0), "gemv_q8: row bytes");
    assert_eq!(w.len(), out.len() * rb, "gemv_q8: {} bytes for {} rows of {rb}", w.len(), out.len());
    assert!(x.acts.q.len() == k && x.acts.d.len() == k / 32, "gemv_q8: VecQ8 shape");
}

/// # Safety
/// NEON; shapes as [`check_iq4`] asserts.
#[target_feature(enable = "neon")]
unsafe fn gemv_iq4_neon_impl<const XS: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    gemv_iq4_rows::<XS, false>(w, rb, x, out)
}

/// # Safety
/// NEON + dotprod; shapes as [`check_iq4`] asserts.
#[target_feature(enable = "neon,dotprod")]
unsafe fn gemv_iq4_sdot_impl<const XS: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    gemv_iq4_rows::<XS, true>(w, rb, x, out)
}

/// The rows, one group of 32 per step into two alternating accumulators:
/// `acc += (s · dx) · Σ w q` with `w` the grid values (signed, `|w| ≤ 127`).
///
/// # Safety
/// NEON, and dotprod if `SDOT`; shapes as [`check_iq4`] asserts.
#[inline(always)]
unsafe fn gemv_iq4_rows<const XS: bool, const SDOT: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    // Bytes per block, groups of 32 per block, where the indices start.
    let (bs, gpb, qs_at) = if XS { (136, 8, 8) } else { (18, 1, 2) };
    let nb = x.k() / (32 * gpb);
    let (q, d) = (x.acts.q.as_ptr(), x.acts.d.as_ptr());
    let lut = vld1q_s8(crate::iq4_nl::KVALUES_IQ4NL.as_ptr());
    let m4 = vdupq_n_u8(0x0f);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let p = row.as_ptr();
        let mut acc = [vdupq_n_f32(0.0); 2];
        for b in 0..nb {
            // SAFETY: block b lies inside the row; its groups' codes and scales inside `x`.
            let blk = p.add(b * bs);
            let db = f16_at(blk);
            let (sh, sl) = if XS {
                (blk.add(2).cast::<u16>().read_unaligned(), blk.add(4).cast::<[u8; 4]>().read_unaligned())
            } else {
                (0, [0; 4])
            };
            for j in 0..gpb {
                let g = b * gpb + j;
                let s = if XS {
                    let ls = crate::iq4_xs::group_scale_iq4_xs(sh, &sl, j);
                    db * (ls - 32) as f32
                } else {
                    db
                };
                // Elements j (low nibbles) and j + 16 (high) of byte j, as grid values.
                let qs = vld1q_u8(blk.add(qs_at + 16 * j));
                let wv = [vqtbl1q_s8(lut, vandq_u8(qs, m4)), vqtbl1q_s8(lut, vshrq_n_u8(qs, 4))];
                let xq = q.add(32 * g);
                let xv = [vld1q_s8(xq), vld1q_s8(xq.add(16))];
                // SAFETY (for `dot32_sdot`): dotprod is available when `SDOT` (caller contract).
                let dot = if SDOT { dot32_sdot(wv, xv) } else { dot32_smull(wv, xv) };
                acc[g & 1] = vfmaq_n_f32(acc[g & 1], vcvtq_f32_s32(dot), s * *d.add(g));
            }
        }
        *o = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
    }
}
