//! AVX-512 VNNI kernels of the integer gemm (prefill): the activation quantizer and the
//! 16-row × 12-token `vpdpbusd` tile kernel (see [`crate::gemm_q8`]).

use crate::gemm_q8::{ActsQ8, PackedTile, GEMM_Q8_ROWS, NT, QA};
use core::arch::x86_64::*;

/// [`super::quantize_acts_scalar`], 32 elements per step; the same operations in the same
/// order, so the same bits.
pub(crate) fn quantize_acts_avx512(x: &[f32], q: &mut [i8], d: &mut [f32], ds16: &mut [f32], ds32: &mut [f32]) {
    assert!(crate::KernelPath::Avx512.is_available(), "ActsQ8: AVX-512 is not available");
    assert!(x.len() == q.len() && d.len() * QA == x.len() && ds16.len() == 2 * d.len() && ds32.len() == d.len());
    // SAFETY: AVX-512 F/BW/VL is available (asserted above); lengths checked above.
    unsafe { quantize_acts_impl(x, q, d, ds16, ds32) }
}

/// # Safety
/// AVX-512 F/BW/VL; `x` and `q` of equal length, a multiple of 32; `d`, `ds32` one entry per
/// 32, `ds16` one per 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_acts_impl(x: &[f32], q: &mut [i8], d: &mut [f32], ds16: &mut [f32], ds32: &mut [f32]) {
    let lim = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    for b in 0..d.len() {
        // SAFETY: block b's 32 floats and 32 codes lie inside `x` and `q`.
        let v0 = _mm512_loadu_ps(x.as_ptr().add(b * QA));
        let v1 = _mm512_loadu_ps(x.as_ptr().add(b * QA + 16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let scale = amax / 127.0;
        let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        // Round half away from zero, as `roundf`: truncate, then step away from zero when
        // the (exact) fraction is at least 1/2.
        let round = |v| {
            let y = _mm512_mul_ps(v, inv);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let half = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(y, t)), _mm512_set1_ps(0.5));
            let step = _mm512_or_ps(_mm512_set1_ps(1.0), _mm512_and_ps(y, _mm512_set1_ps(-0.0)));
            _mm512_mask_add_ps(t, half, t, step)
        };
        let clamp = |v| _mm512_min_epi32(_mm512_max_epi32(_mm512_cvttps_epi32(round(v)), lim.0), lim.1);
        let (q0, q1) = (clamp(v0), clamp(v1));
        _mm_storeu_si128(q.as_mut_ptr().add(b * QA).cast(), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(q.as_mut_ptr().add(b * QA + 16).cast(), _mm512_cvtepi32_epi8(q1));
        let (s0, s1) = (_mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1));
        d[b] = scale;
        ds16[2 * b] = scale * s0 as f32;
        ds16[2 * b + 1] = scale * s1 as f32;
        ds32[b] = scale * (s0 + s1) as f32;
    }
}

/// Rows `0..nr` of `tile` against every token `t` of `acts`, into `out[t][r0..r0 + nr]`.
pub(crate) fn gemm_q8_16xn_avx512(tile: &PackedTile, acts: &ActsQ8, r0: usize, nr: usize, out: &mut [&mut [f32]]) {
    assert!(crate::KernelPath::Avx512.is_available(), "gemm_q8: AVX-512 VNNI is not available");
    let (k, g, n_tok) = (tile.k, tile.g, acts.n_tok);
    assert_eq!(acts.k, k, "gemm_q8: activation rows of {} vs weight rows of {k}", acts.k);
    assert_eq!(tile.u.len(), k * GEMM_Q8_ROWS, "gemm_q8: packed tile shape");
    assert_eq!(tile.s.len(), k / g * GEMM_Q8_ROWS, "gemm_q8: packed tile shape");
    assert!(out.len() == n_tok && nr <= GEMM_Q8_ROWS, "gemm_q8: output shape");
    let mut res = [[0.0f32; GEMM_Q8_ROWS]; NT];
    let mut t = 0;
    while t < n_tok {
        let nt = if n_tok - t >= NT {
            NT
        } else if n_tok - t >= 4 {
            4
        } else {
            1
        };
        // SAFETY: AVX-512 F/BW/VL/VNNI are available (asserted above); the shapes of
        // `tile` and `acts` were checked above and tokens t..t+nt exist.
        unsafe {
            match (nt, g) {
                (NT, 32) => gemm_q8_16x12::<NT, 32>(tile, acts, t, &mut res),
                (NT, _) => gemm_q8_16x12::<NT, 16>(tile, acts, t, &mut res),
                (4, 32) => gemm_q8_16x12::<4, 32>(tile, acts, t, &mut res),
                (4, _) => gemm_q8_16x12::<4, 16>(tile, acts, t, &mut res),
                (_, 32) => gemm_q8_16x12::<1, 32>(tile, acts, t, &mut res),
                (_, _) => gemm_q8_16x12::<1, 16>(tile, acts, t, &mut res),
            }
        }
        for (o, col) in out[t..t + nt].iter_mut().zip(&res) {
            match <&mut [f32; GEMM_Q8_ROWS]>::try_from(&mut o[r0..r0 + nr]) {
                // A whole tile: a fixed-size copy (inlined, not a `memmove` call).
                Ok(dst) => *dst = *col,
                Err(_) => o[r0..r0 + nr].copy_from_slice(&col[..nr]),
            }
        }
        t += nt;
    }
}

/// The hot loop: 16 rows × `N` tokens (tokens `t0..t0 + N`), scale groups of `G`
/// elements, results into `res[token][row]`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI; `tile` holds `k` columns in groups of
/// `G` and `acts` rows of `k`, with tokens `t0..t0 + N`; `N ≤ res.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_q8_16x12<const N: usize, const G: usize>(
    tile: &PackedTile,
    acts: &ActsQ8,
    t0: usize,
    res: &mut [[f32; GEMM_Q8_ROWS]; NT],
) {
    let k = tile.k;
    let (u, s, m) = (tile.u.as_ptr(), tile.s.as_ptr(), tile.m.as_ptr());
    let q = acts.q.as_ptr().add(t0 * k);
    let d = acts.d.as_ptr().add(t0 * (k / QA));
    let ds = acts.ds(G).as_ptr().add(t0 * (k / G));
    let mut facc = [_mm512_setzero_ps(); N];
    for j in 0..k / G {
        let mut iacc = [_mm512_setzero_si512(); N];
        for gi in 0..G / 4 {
            let c4 = j * (G / 4) + gi;
            // SAFETY: c4 < k / 4, so the 64 bytes at c4 * 64 lie in `tile.u`
            // (k * 16 bytes); token t0 + i < n_tok and c4 * 4 + 4 ≤ k keep the 4-byte
            // activation reads inside `acts.q`.
            let wv = _mm512_loadu_si512(u.add(c4 * 64).cast());
            for (i, a) in iacc.iter_mut().enumerate() {
                let x = q.add(i * k + c4 * 4).cast::<i32>().read_unaligned();
                *a = _mm512_dpbusd_epi32(*a, wv, _mm512_set1_epi32(x));
            }
        }
        // SAFETY: j < k / G: 16 scales and offsets at j * 16 lie in `tile.s` / `tile.m`;
        // activation block j·G/32 < k/32 and group j < k/G of tokens t0 + i.
        let sv = _mm512_loadu_ps(s.add(j * GEMM_Q8_ROWS));
        let mv = _mm512_loadu_ps(m.add(j * GEMM_Q8_ROWS));
        for (i, (f, a)) in facc.iter_mut().zip(&iacc).enumerate() {
            let dx = _mm512_set1_ps(*d.add(i * (k / QA) + j * G / QA));
            let dsx = _mm512_set1_ps(*ds.add(i * (k / G) + j));
            *f = _mm512_add_ps(
                *f,
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(*a), _mm512_mul_ps(sv, dx), _mm512_mul_ps(mv, dsx)),
            );
        }
    }
    for (r, f) in res.iter_mut().zip(&facc) {
        // SAFETY: `r` is 16 writable f32s.
        _mm512_storeu_ps(r.as_mut_ptr(), *f);
    }
}
