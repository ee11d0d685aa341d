//! AVX2 (+ FMA, F16C; no AVX-512, no VNNI) kernels for [`crate::gemm_q8`] (prefill) and
//! [`crate::gemv_q8`] (decode).
//!
//! Without `vpdpbusd`, a u8 × i8 dot takes two steps: `vpmaddubsw` (pairs of u8 × i8 products
//! summed into i16, SATURATING) then `vpmaddwd` against ones (pairs of i16 into i32). The
//! integer sums must stay exact, so every use below is bounded:
//!
//! * gemm, narrow codes (`u ≤ 128`; every type but Q8_0): one `vpmaddubsw` pair is at most
//!   `2 · umax · 127`, and `D` of them are summed in i16 (plain wrapping adds) before the
//!   `vpmaddwd`, with `D · 2 · umax · 127 ≤ 32767`: `D = 8` for codes ≤ 16 (4-bit types),
//!   4 for ≤ 32, 2 for ≤ 64 (Q6_K), 1 for ≤ 128. Fewer `vpmaddwd` is the main speed-up over
//!   the textbook one-`vpmaddwd`-per-`vpmaddubsw` loop.
//! * gemm, wide codes (`u > 128`: Q8_0 stored as `q + 128`): each code is split into nibbles,
//!   `u = 16 · hi + lo`, two `vpmaddubsw` against the same activations, each summed in i16
//!   over the whole group (8 · 2 · 15 · 127 ≤ 32767), then `vpmaddwd` against 16 and 1.
//! * gemv Q4_0 / Q4_1: codes ≤ 15, one `vpmaddubsw` + `vpmaddwd` per block.
//! * gemv Q8_0: ggml's sign trick, `|w| · (sign(w) · q)`, `|w| ≤ 128`, `|q| ≤ 127`.
//!
//! The largest code of a tile decides the scheme (a scan of the tile, cheap next to the
//! products: one pass over 16 · k bytes against 16 · k · n_tok products).

use core::arch::x86_64::*;

use crate::gemm_q8::{ActsQ8, PackedTile, VecQ8, GEMM_Q8_ROWS, QA};
use crate::{GgmlType, KernelPath};

/// How far ahead (bytes) the decode kernels prefetch weights.
const PREFETCH: usize = 4096;
/// Most tokens per step of any gemm hot loop (the size of the result scratch).
const NT_MAX: usize = 6;
/// Hot-loop shapes (row halves of 8 per step × tokens), measured with bench_gemm on an AVX-512
/// Xeon running the AVX2 path: one half × 6 tokens ≈ 1 × 4 > 2 × 3 > 2 × 2 (narrow), 1 × 3 >
/// 1 × 4 > 2 × 2 > 2 × 1 (wide). Codes summed a whole group deep in i16,
const FULL_H: usize = 1;
const FULL_N: usize = 6;
/// codes summed 2 or 4 quads deep (i16 and i32 accumulators),
const PART_H: usize = 1;
const PART_N: usize = 4;
/// codes ≤ 128 (a `vpmaddwd` per quad),
const ONE_H: usize = 1;
const ONE_N: usize = 6;
/// nibble-split codes.
const WIDE_H: usize = 1;
const WIDE_N: usize = 3;

/// Rows `0..nr` of `tile` against every token `t` of `acts`, into `out[t][r0..r0 + nr]`.
pub(crate) fn gemm_q8_16xn_avx2(tile: &PackedTile, acts: &ActsQ8, r0: usize, nr: usize, out: &mut [&mut [f32]]) {
    assert!(KernelPath::Avx2.is_available(), "gemm_q8: AVX2 + FMA + F16C are not available");
    let (k, g, n_tok) = (tile.k, tile.g, acts.n_tok);
    assert_eq!(acts.k, k, "gemm_q8: activation rows of {} vs weight rows of {k}", acts.k);
    assert!(g == 16 || g == 32, "gemm_q8: group of {g}");
    assert!(k.is_multiple_of(QA) && k.is_multiple_of(g), "gemm_q8: packed tile shape");
    assert_eq!(tile.u.len(), k * GEMM_Q8_ROWS, "gemm_q8: packed tile shape");
    assert_eq!(tile.s.len(), k / g * GEMM_Q8_ROWS, "gemm_q8: packed tile shape");
    assert_eq!(tile.m.len(), k / g * GEMM_Q8_ROWS, "gemm_q8: packed tile shape");
    assert_eq!(acts.q.len(), n_tok * k, "gemm_q8: activation shape");
    assert_eq!(acts.d.len(), n_tok * k / QA, "gemm_q8: activation shape");
    assert_eq!(acts.ds(g).len(), n_tok * k / g, "gemm_q8: activation shape");
    assert!(out.len() == n_tok && nr <= GEMM_Q8_ROWS, "gemm_q8: output shape");
    assert!(out.iter().all(|o| o.len() >= r0 + nr), "gemm_q8: output shape");
    // i16 accumulation depth D for the tile's largest code (see the module docs); 0: wide.
    let umax = tile.u.iter().fold(0u8, |a, &b| a.max(b));
    let depth = match umax {
        0..=16 => 8,
        17..=32 => 4,
        33..=64 => 2,
        65..=128 => 1,
        _ => 0,
    };
    let depth = depth.min(g / 4);
    match (g, depth) {
        (32, 8) => run::<FULL_H, FULL_N, 32, 8, false>(tile, acts, r0, nr, out),
        (32, 4) => run::<PART_H, PART_N, 32, 4, false>(tile, acts, r0, nr, out),
        (32, 2) => run::<PART_H, PART_N, 32, 2, false>(tile, acts, r0, nr, out),
        (32, 1) => run::<ONE_H, ONE_N, 32, 1, false>(tile, acts, r0, nr, out),
        (32, _) => run::<WIDE_H, WIDE_N, 32, 8, true>(tile, acts, r0, nr, out),
        (_, 4) => run::<FULL_H, FULL_N, 16, 4, false>(tile, acts, r0, nr, out),
        (_, 2) => run::<PART_H, PART_N, 16, 2, false>(tile, acts, r0, nr, out),
        (_, 1) => run::<ONE_H, ONE_N, 16, 1, false>(tile, acts, r0, nr, out),
        (_, _) => run::<WIDE_H, WIDE_N, 16, 4, true>(tile, acts, r0, nr, out),
    }
}

/// The token loop of [`gemm_q8_16xn_avx2`]: `N` tokens per hot-loop step, then single tokens;
/// each step runs the 8-row hot loop on both halves of the tile.
fn run<const H: usize, const N: usize, const G: usize, const D: usize, const WIDE: bool>(
    tile: &PackedTile,
    acts: &ActsQ8,
    r0: usize,
    nr: usize,
    out: &mut [&mut [f32]],
) {
    const { assert!((H == 1 || H == 2) && N <= NT_MAX && (G == 16 || G == 32) && D >= 1 && (G / 4).is_multiple_of(D)) };
    let n_tok = acts.n_tok;
    let mut res = [[0.0f32; GEMM_Q8_ROWS]; NT_MAX];
    let mut t = 0;
    while t < n_tok {
        let nt = if n_tok - t >= N { N } else { 1 };
        for h0 in (0..2).step_by(H) {
            // SAFETY: the caller (gemm_q8_16xn_avx2) asserted AVX2/FMA/F16C and the shapes of
            // `tile` (k columns in groups of G, 16 rows) and `acts` (n_tok rows of k, with
            // their scales); tokens t..t + nt exist; nt ≤ N ≤ NT_MAX = res.len(); half < 2.
            unsafe {
                if nt == N {
                    gemm_q8_8x6_avx2::<H, N, G, D, WIDE>(tile, acts, t, h0, &mut res);
                } else {
                    gemm_q8_8x6_avx2::<H, 1, G, D, WIDE>(tile, acts, t, h0, &mut res);
                }
            }
        }
        for (o, col) in out[t..t + nt].iter_mut().zip(&res) {
            o[r0..r0 + nr].copy_from_slice(&col[..nr]);
        }
        t += nt;
    }
}

/// The gemm hot loop: `8 · H` rows (rows `8 · h0 ..`, one ymm of i32/f32 lanes per 8) × `N`
/// tokens (`t0..t0 + N`), scale groups of `G` elements, `D` column quads summed in i16 per
/// `vpmaddwd`, nibble-split codes if `WIDE`; results into `res[token][8 · h0..][..8 · H]`.
///
/// Per column quad `c4` (4 columns): one 32-byte load holds the 4 codes of each of 8 rows
/// (the packed layout), 4 activation bytes of each token are broadcast to every lane, and one
/// `vpmaddubsw` + `vpaddw` per token (two if `WIDE`) adds 4 products to each row's pair of i16.
/// Registers at 8 rows × 6 tokens (narrow): 6 i16 + 6 f32 accumulators, weights, broadcast,
/// temporary.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `tile` holds 16 rows of `k` columns in groups of
/// `G` (`u`: `16 k` bytes, `s`, `m`: `16 k / G`), `acts` rows of `k` with tokens
/// `t0..t0 + N` (and their `d`, `ds(G)`); `h0 + H ≤ 2`; `N ≤ NT_MAX`; every code `u` satisfies
/// `D · 2 · u · 127 ≤ 32767` unless `WIDE` (`G / 4 ≥ D` quads of nibbles are always in range).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_q8_8x6_avx2<const H: usize, const N: usize, const G: usize, const D: usize, const WIDE: bool>(
    tile: &PackedTile,
    acts: &ActsQ8,
    t0: usize,
    h0: usize,
    res: &mut [[f32; GEMM_Q8_ROWS]; NT_MAX],
) {
    let k = tile.k;
    let u = tile.u.as_ptr().add(h0 * 32);
    let (s, m) = (tile.s.as_ptr().add(h0 * 8), tile.m.as_ptr().add(h0 * 8));
    let q = acts.q.as_ptr().add(t0 * k);
    let d = acts.d.as_ptr().add(t0 * (k / QA));
    let ds = acts.ds(G).as_ptr().add(t0 * (k / G));
    let ones = _mm256_set1_epi16(1);
    let sixteen = _mm256_set1_epi16(16);
    let m4 = _mm256_set1_epi8(0x0f);
    let zero = _mm256_setzero_si256();
    let mut facc = [[_mm256_setzero_ps(); H]; N];
    for j in 0..k / G {
        let mut dot = [[zero; H]; N];
        for sub in 0..G / 4 / D {
            // i16 pair sums of the low (or only) and high nibbles, D quads deep.
            let (mut lo, mut hi) = ([[zero; H]; N], [[zero; H]; N]);
            for step in 0..D {
                let c4 = j * (G / 4) + sub * D + step;
                let (mut wl, mut wh) = ([zero; H], [zero; H]);
                for h in 0..H {
                    // SAFETY: c4 < k / 4: the 32 bytes at c4 · 64 + (h0 + h) · 32 lie in `tile.u`.
                    let w = _mm256_loadu_si256(u.add(c4 * 64 + h * 32).cast());
                    if WIDE {
                        wl[h] = _mm256_and_si256(w, m4);
                        wh[h] = _mm256_and_si256(_mm256_srli_epi16::<4>(w), m4);
                    } else {
                        wl[h] = w;
                    }
                }
                for i in 0..N {
                    // SAFETY: token t0 + i exists and 4 c4 + 4 ≤ k: 4 bytes inside `acts.q`.
                    let x = _mm256_set1_epi32(q.add(i * k + c4 * 4).cast::<i32>().read_unaligned());
                    for h in 0..H {
                        lo[i][h] = _mm256_add_epi16(lo[i][h], _mm256_maddubs_epi16(wl[h], x));
                        if WIDE {
                            hi[i][h] = _mm256_add_epi16(hi[i][h], _mm256_maddubs_epi16(wh[h], x));
                        }
                    }
                }
            }
            for i in 0..N {
                for h in 0..H {
                    let mut p = _mm256_madd_epi16(lo[i][h], ones);
                    if WIDE {
                        p = _mm256_add_epi32(p, _mm256_madd_epi16(hi[i][h], sixteen));
                    }
                    dot[i][h] = _mm256_add_epi32(dot[i][h], p);
                }
            }
        }
        let (mut sv, mut mv) = ([_mm256_setzero_ps(); H], [_mm256_setzero_ps(); H]);
        for h in 0..H {
            // SAFETY: j < k / G: the 8 scales and offsets at j · 16 + (h0 + h) · 8 lie in
            // `tile.s` / `tile.m`.
            sv[h] = _mm256_loadu_ps(s.add(j * GEMM_Q8_ROWS + h * 8));
            mv[h] = _mm256_loadu_ps(m.add(j * GEMM_Q8_ROWS + h * 8));
        }
        for i in 0..N {
            // SAFETY: activation block j·G/32 < k/32 and group j < k/G of token t0 + i exist.
            let dx = _mm256_set1_ps(*d.add(i * (k / QA) + j * G / QA));
            let dsx = _mm256_set1_ps(*ds.add(i * (k / G) + j));
            for h in 0..H {
                let g =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[i][h]), _mm256_mul_ps(sv[h], dx), _mm256_mul_ps(mv[h], dsx));
                facc[i][h] = _mm256_add_ps(facc[i][h], g);
            }
        }
    }
    for (r, f) in res.iter_mut().zip(&facc) {
        for (h, v) in f.iter().enumerate() {
            // SAFETY: `r` is 16 writable f32s and (h0 + h) · 8 + 8 ≤ 16.
            _mm256_storeu_ps(r.as_mut_ptr().add((h0 + h) * 8), *v);
        }
    }
}

/// [`crate::gemm_q8::quantize_acts_scalar`] on AVX2, 32 elements per step: the same operations in the
/// same order (`d = amax / 127`, `q = round(x · (1/d))` half away from zero, clamped; sums in
/// i32, scaled once), so the same bits.
pub(crate) fn quantize_acts_avx2(x: &[f32], q: &mut [i8], d: &mut [f32], ds16: &mut [f32], ds32: &mut [f32]) {
    assert!(KernelPath::Avx2.is_available(), "ActsQ8: AVX2 + FMA + F16C are not available");
    assert!(x.len() == q.len() && d.len() * QA == x.len() && ds16.len() == 2 * d.len() && ds32.len() == d.len());
    // SAFETY: AVX2 is available (asserted above); lengths checked above.
    unsafe { quantize_acts_32_avx2(x, q, d, ds16, ds32) }
}

/// # Safety
/// AVX2; `x` and `q` of equal length, a multiple of 32; `d`, `ds32` one entry per 32, `ds16`
/// one per 16.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_acts_32_avx2(x: &[f32], q: &mut [i8], d: &mut [f32], ds16: &mut [f32], ds32: &mut [f32]) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let sign = _mm256_set1_ps(-0.0);
    let (one, half, lim) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5), _mm256_set1_ps(127.0));
    for b in 0..d.len() {
        let mut v = [_mm256_setzero_ps(); 4];
        for (i, v) in v.iter_mut().enumerate() {
            // SAFETY: block b's 32 floats lie inside `x`.
            *v = _mm256_loadu_ps(x.as_ptr().add(b * QA + 8 * i));
        }
        // `vmaxps a, b` returns b when either is NaN: with the running maximum second, NaNs are
        // skipped as by `f32::max` in the reference, and no lane is ever NaN.
        let mut m = _mm256_setzero_ps();
        for &v in &v {
            m = _mm256_max_ps(_mm256_and_ps(v, abs_mask), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let scale = amax / 127.0;
        let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let mut c = [_mm256_setzero_si256(); 4];
        for (c, &v) in c.iter_mut().zip(&v) {
            // Round half away from zero, as `roundf`: truncate, then step away from zero when
            // the (exact) fraction is at least 1/2; clamp, then convert (exact: integral).
            let y = _mm256_mul_ps(v, inv);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let frac = _mm256_and_ps(_mm256_sub_ps(y, t), abs_mask);
            let step =
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), _mm256_or_ps(one, _mm256_and_ps(y, sign)));
            let r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(t, step), _mm256_sub_ps(_mm256_setzero_ps(), lim)), lim);
            // NaN (from a NaN or infinite input) → 0, as the reference's `as i8`.
            *c = _mm256_cvttps_epi32(_mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y)));
        }
        // i32 → i8 in order: the packs interleave 128-bit lanes, the permute undoes it.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: block b's 32 codes lie inside `q`.
        _mm256_storeu_si256(q.as_mut_ptr().add(b * QA).cast(), p);
        let (s0, s1) = (hsum_epi32(_mm256_add_epi32(c[0], c[1])), hsum_epi32(_mm256_add_epi32(c[2], c[3])));
        d[b] = scale;
        ds16[2 * b] = scale * s0 as f32;
        ds16[2 * b + 1] = scale * s1 as f32;
        ds32[b] = scale * (s0 + s1) as f32;
    }
}

/// Horizontal sum of 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
}

/// [`crate::gemv_q8`] on AVX2: one block per 256-bit step, two accumulators per row.
pub(crate) fn gemv_q8_avx2(ty: GgmlType, w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(KernelPath::Avx2.is_available(), "gemv_q8: AVX2 + FMA + F16C are not available");
    assert!(
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0),
        "gemv_q8 (AVX2): no hand-written kernel for {ty}"
    );
    let nb = x.k() / QA;
    assert!(w.len() == out.len() * rb && rb == nb * ty.type_size(), "gemv_q8: shapes");
    assert!(
        x.acts.q.len() == x.k()
            && x.acts.d.len() == nb
            && x.neg8.len() == x.k() / 4
            && x.dsg.len() == nb.div_ceil(4) * 16,
        "gemv_q8: activation shapes"
    );
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        // SAFETY: AVX2/FMA/F16C are available (asserted above); `row` holds `nb` blocks of
        // `ty` and `x` the codes, scales and per-lane arrays of `nb` blocks (asserted above).
        *o = unsafe {
            match ty {
                GgmlType::Q4_0 => gemv_row_q4_avx2::<true>(row, nb, x),
                GgmlType::Q4_1 => gemv_row_q4_avx2::<false>(row, nb, x),
                _ => gemv_row_q8_0_avx2(row, nb, x),
            }
        };
    }
}

/// The f16 at `p` as f32 (F16C).
///
/// # Safety
/// F16C; two readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned())))
}

/// [`crate::decode_order::reduce16`] of the 16 lanes `lo` (0..8) and `hi` (8..16):
/// `h = lo + hi`, then `((h0 + h1) + (h2 + h3)) + ((h4 + h5) + (h6 + h7))`.
#[inline]
#[target_feature(enable = "avx2")]
fn reduce16(lo: __m256, hi: __m256) -> f32 {
    let h = _mm256_add_ps(lo, hi);
    // Per 128-bit half: [h0 + h1, h2 + h3, ..] then [(h0 + h1) + (h2 + h3), ..].
    let p = _mm256_hadd_ps(h, h);
    let q = _mm256_hadd_ps(p, p);
    _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(q), _mm256_extractf128_ps::<1>(q)))
}

/// The decode hot loop of a Q4_0 (`OFFSET8`) or Q4_1 row in the order of
/// [`crate::decode_order`]: per group of 4 blocks, lanes 0..8 (blocks 0, 1) in `acc[0]` and
/// 8..16 (blocks 2, 3) in `acc[1]`, 4 lanes per block of 8 elements each (a block's 8 lanes of
/// 4 products, `vpmaddubsw` + `vpmaddwd`, folded as lanes `m + (m + 4)`).
///
/// # Safety
/// AVX2, FMA, F16C; `row` holds `nb` blocks (18 or 20 bytes), `x` `nb` blocks of codes and
/// scales, `neg8` and the grouped `dsg`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_row_q4_avx2<const OFFSET8: bool>(row: &[u8], nb: usize, x: &VecQ8) -> f32 {
    let bs = if OFFSET8 { 18 } else { 20 };
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    // Block b's 4 lanes (exact i32) and its scale `d_w · d_x`, or zeros past the row's end.
    let block = |b: usize| -> (__m128i, f32, f32) {
        if b >= nb {
            return (_mm_setzero_si128(), 0.0, 0.0);
        }
        // SAFETY: b < nb: block b lies inside `row`; codes 32b..32b + 32, lanes 8b..8b + 8
        // and scale b inside `x`'s arrays.
        let a = row.as_ptr().add(b * bs);
        let qs = _mm_loadu_si128(a.add(bs - 16).cast());
        // Elements 0..16 (low nibbles) then 16..32 (high nibbles): the block in order.
        let w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs), m4);
        let xq = _mm256_loadu_si256(x.acts.q.as_ptr().add(QA * b).cast());
        // Codes ≤ 15: each i16 pair ≤ 2 · 15 · 127, no saturation.
        let mut dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq), ones);
        if OFFSET8 {
            dot = _mm256_add_epi32(dot, _mm256_loadu_si256(x.neg8.as_ptr().add(8 * b).cast()));
        }
        // Lane m: elements 4m..4m + 4 (lane m) and 16 + 4m.. (lane m + 4).
        let dot4 = _mm_add_epi32(_mm256_castsi256_si128(dot), _mm256_extracti128_si256::<1>(dot));
        let mw = if OFFSET8 { 0.0 } else { f16_at(a.add(2)) };
        (dot4, f16_at(a) * *x.acts.d.as_ptr().add(b), mw)
    };
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut acc_m = [_mm256_setzero_ps(); 2];
    for g in 0..nb.div_ceil(4) {
        // Weights stream from memory once: ask for them well ahead (past the row's end is the
        // next row; a prefetch never faults). Four blocks ≤ 80 bytes: two lines per group.
        let ahead = row.as_ptr().wrapping_add(4 * g * bs + PREFETCH);
        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
        for h in 0..2 {
            let b = 4 * g + 2 * h;
            if b >= nb {
                break;
            }
            let ((d0, s0, m0), (d1, s1, m1)) = (block(b), block(b + 1));
            let dot = _mm256_cvtepi32_ps(_mm256_set_m128i(d1, d0));
            let scale = _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0));
            acc[h] = _mm256_fmadd_ps(dot, scale, acc[h]);
            if !OFFSET8 {
                let mw = _mm256_set_m128(_mm_set1_ps(m1), _mm_set1_ps(m0));
                // SAFETY: lanes 16g + 8h.. of the grouped `dsg` (zero-padded past the last block).
                acc_m[h] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(x.dsg.as_ptr().add(16 * g + 8 * h)), acc_m[h]);
            }
        }
    }
    if !OFFSET8 {
        acc[0] = _mm256_add_ps(acc[0], acc_m[0]);
        acc[1] = _mm256_add_ps(acc[1], acc_m[1]);
    }
    reduce16(acc[0], acc[1])
}

/// The decode hot loop of a Q8_0 row, one block per step: `|w| · (sign(w) · q)` (ggml's sign
/// trick: `|w| ≤ 128` unsigned, `|q| ≤ 127`, so no i16 pair saturates). The order of
/// [`crate::decode_order`]: even blocks are lanes 0..8, odd ones 8..16, one lane per 4 products.
///
/// # Safety
/// As [`gemv_row_q4_avx2`], with 34-byte blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_row_q8_0_avx2(row: &[u8], nb: usize, x: &VecQ8) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let step = |b: usize, acc: __m256| {
        // SAFETY: b < nb: block b lies inside `row`, codes 32b..32b + 32 and scale b in `x`.
        let a = row.as_ptr().add(b * 34);
        let w = _mm256_loadu_si256(a.add(2).cast());
        let xq = _mm256_loadu_si256(x.acts.q.as_ptr().add(QA * b).cast());
        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w)), ones);
        let scale = _mm256_set1_ps(f16_at(a) * *x.acts.d.as_ptr().add(b));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc)
    };
    let (mut e, mut o) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for p in 0..nb / 2 {
        let a = row.as_ptr().wrapping_add(2 * p * 34 + PREFETCH);
        _mm_prefetch::<_MM_HINT_T0>(a.cast());
        _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(64).cast());
        e = step(2 * p, e);
        o = step(2 * p + 1, o);
    }
    if nb % 2 == 1 {
        e = step(nb - 1, e);
    }
    reduce16(e, o)
}

#[cfg(test)]
mod tests {
    use crate::gemm_q8::tests::rows_of;
    use crate::gemm_q8::{gemm_q8_on, gemv_q8_on, quantize_acts_scalar, ActsQ8, PackedTile, VecQ8};
    use crate::{GgmlType, KernelPath};
    use alloc::vec;
    use alloc::vec::Vec;

    /// The AVX2 activation quantizer against the reference, bit for bit: random values, ties
    /// (which round away from zero), zeros, tiny and huge values, infinities and NaN.
    #[test]
    fn activation_quantizer_matches_the_scalar_reference_bitwise() {
        if !KernelPath::Avx2.is_available() {
            return;
        }
        use rand::Rng;
        let mut rng = crate::test_util::rng(21);
        let mut x: Vec<f32> = (0..64 * 32).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        // Ties at d = 1: 127 sets the scale, the rest are k + 1/2.
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { i as f32 - 16.5 };
        }
        x[32..64].fill(0.0);
        x[64..96].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) * 1e-40);
        x[96..128].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) * 1e37);
        x[130] = f32::INFINITY;
        x[170] = f32::NAN;
        x[200] = -0.0;
        let n = x.len();
        let (mut q, mut d, mut ds16, mut ds32) =
            (vec![0i8; n], vec![0.0f32; n / 32], vec![0.0; n / 16], vec![0.0; n / 32]);
        let (mut q2, mut d2, mut ds16b, mut ds32b) = (q.clone(), d.clone(), ds16.clone(), ds32.clone());
        quantize_acts_scalar(&x, &mut q, &mut d, &mut ds16, &mut ds32);
        super::quantize_acts_avx2(&x, &mut q2, &mut d2, &mut ds16b, &mut ds32b);
        assert_eq!(q, q2);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&d), bits(&ds16), bits(&ds32)), (bits(&d2), bits(&ds16b), bits(&ds32b)));
        assert_eq!(&q[1..4], &[-16, -15, -14]);
    }

    /// The saturation-prone corner of the maddubs kernels (AVX2): Q8_0 codes at ±127 / -128
    /// (packed `u` up to 255) and 4-bit codes at 15, against activations of ±127 of one sign
    /// per token. Scales of 1 and integer activations make every path's result an exact
    /// integer below 2^24, so all paths must agree bit for bit with the exact sum.
    #[test]
    fn extreme_codes_give_exact_sums_on_every_path() {
        let k = 256;
        let (n_rows, n_tok) = (19, 13);
        let f16_one = [0x00, 0x3c];
        // Code of row r, column c: all near +127, all near -127, alternating extremes, a spread.
        let q8 = |r: usize, c: usize| -> i8 {
            match r % 4 {
                0 => 127 - (c % 3) as i8,
                1 => -127 - (c % 2) as i8,
                2 => [127, -128][c % 2],
                _ => 127 - ((r + c) % 8) as i8,
            }
        };
        // 4-bit codes: mostly 15 (the widest), a few zeros in odd rows.
        let q4 = |r: usize, c: usize| -> u8 {
            if r % 2 == 1 && c.is_multiple_of(7) {
                0
            } else {
                15
            }
        };
        let x: Vec<f32> = (0..n_tok * k)
            .map(|i| {
                let (t, c) = (i / k, i % k);
                let neg = if t == n_tok - 1 { c % 3 == 0 } else { t % 2 == 1 };
                if neg {
                    -127.0
                } else {
                    127.0
                }
            })
            .collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let mut w = Vec::new();
            // The weights as integers (every scale is 1, Q4_1's offset 0).
            let mut wi = vec![0i64; n_rows * k];
            for r in 0..n_rows {
                for b in 0..k / 32 {
                    w.extend_from_slice(&f16_one);
                    match ty {
                        GgmlType::Q8_0 => {
                            for c in b * 32..b * 32 + 32 {
                                w.push(q8(r, c) as u8);
                                wi[r * k + c] = q8(r, c) as i64;
                            }
                        }
                        _ => {
                            let off = if ty == GgmlType::Q4_0 { 8 } else { 0 };
                            if ty == GgmlType::Q4_1 {
                                w.extend_from_slice(&[0, 0]);
                            }
                            for j in 0..16 {
                                let (lo, hi) = (q4(r, b * 32 + j), q4(r, b * 32 + 16 + j));
                                w.push(lo | hi << 4);
                                wi[r * k + b * 32 + j] = lo as i64 - off;
                                wi[r * k + b * 32 + 16 + j] = hi as i64 - off;
                            }
                        }
                    }
                }
            }
            assert_eq!(w.len(), n_rows * ty.row_bytes(k).unwrap());
            let exact = |r: usize, t: usize| -> f32 {
                let s: i64 = (0..k).map(|c| wi[r * k + c] * x[t * k + c] as i64).sum();
                assert!(s.abs() < 1 << 24);
                s as f32
            };
            let mut a = ActsQ8::default();
            a.quantize(&x, k);
            assert!(a.q.iter().all(|&q| q == 127 || q == -127) && a.d.iter().all(|&d| d == 1.0));
            for path in crate::available_kernel_paths() {
                let mut got = vec![0.0f32; n_rows * n_tok];
                gemm_q8_on(path, ty, &w, n_rows, &a, &mut rows_of(&mut got, n_rows), &mut PackedTile::default());
                for r in 0..n_rows {
                    for t in 0..n_tok {
                        assert_eq!(got[t * n_rows + r], exact(r, t), "gemm {path} {ty} row {r} token {t}");
                    }
                }
                for t in 0..n_tok {
                    let mut v = VecQ8::default();
                    v.quantize_for_every_path(&x[t * k..(t + 1) * k]);
                    let mut got = vec![0.0f32; n_rows];
                    gemv_q8_on(path, ty, &w, n_rows, &v, &mut got);
                    for (r, &g) in got.iter().enumerate() {
                        assert_eq!(g, exact(r, t), "gemv {path} {ty} row {r} token {t}");
                    }
                }
            }
        }
    }

    /// Narrow-code tiles at the edge of each i16 accumulation depth of the AVX2 gemm (codes
    /// 16, 32, 64 and 128 sit at the limits of depths 8, 4, 2 and 1): Q5_0 and Q6_K rows at
    /// their extreme codes, every path against the scalar reference.
    #[test]
    fn widest_narrow_codes_match_the_scalar_reference() {
        let (n_rows, n_tok, k) = (17, 8, 512);
        for ty in [GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q5_K] {
            // One value per block at +1, the rest at -1: most codes at the bottom or top.
            let mut row = vec![0.0f32; k];
            let rb = ty.row_bytes(k).unwrap();
            let mut w = vec![0u8; n_rows * rb];
            for r in 0..n_rows {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = if (c + r) % 32 == 0 { 1.0 } else { -1.0 } * if r % 2 == 0 { 1.0 } else { -1.0 };
                }
                crate::quantize_row(ty, &row, &mut w[r * rb..(r + 1) * rb]);
            }
            let x: Vec<f32> = (0..n_tok * k).map(|i| if (i / k) % 2 == 0 { 127.0 } else { -127.0 }).collect();
            let mut a = ActsQ8::default();
            a.quantize(&x, k);
            let mut want = vec![0.0f32; n_rows * n_tok];
            let mut tile = PackedTile::default();
            gemm_q8_on(KernelPath::Scalar, ty, &w, n_rows, &a, &mut rows_of(&mut want, n_rows), &mut tile);
            let umax = tile.u.iter().copied().max().unwrap();
            assert!(umax >= 15, "{ty}: codes up to {umax}");
            let mut wr = vec![0.0f32; k];
            for path in crate::available_kernel_paths() {
                let mut got = vec![0.0f32; n_rows * n_tok];
                gemm_q8_on(path, ty, &w, n_rows, &a, &mut rows_of(&mut got, n_rows), &mut tile);
                for r in 0..n_rows {
                    crate::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut wr);
                    let mag: f32 = wr.iter().map(|p| (p * 127.0).abs()).sum();
                    for t in 0..n_tok {
                        let (g, e) = (got[t * n_rows + r], want[t * n_rows + r]);
                        assert!((g - e).abs() <= 1e-5 * mag + 1e-6, "{path} {ty} row {r} token {t}: {g} vs {e}");
                    }
                }
            }
        }
    }
}
