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
            // ±1 with y's sign, by integer bit operations (AVX-512 F: the `_ps` forms are DQ,
            // outside this function's features, and were calls, not instructions).
            let sign = _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32(i32::MIN));
            let step = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_set1_ps(1.0)), sign));
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

/// [`PackedTile::pack`] for Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0. Per block, the 16 rows' 16-byte code runs are
/// loaded four rows to a register and transposed by dword permutes into the tile's 64-byte
/// lines (4 columns × 16 rows each); the rows' f16 scales go through one `vcvtph2ps` (exact,
/// like the scalar conversion). Rows past `n_rows` are never read and come out zero, as the
/// scalar packer leaves them; Q4_0's offset `-8 d`, Q5_0's `-16 d` and Q8_0's `-128 d` are
/// exact products. Q5's fifth bits are ORed into the nibbles as bit 4.
///
/// # Safety
/// AVX-512 F/BW/VL and F16C; `rows` holds `n_rows ≤ 16` rows of `rb` bytes (`k / 32` blocks
/// of `ty`), `u` holds `16 k` bytes, `s` and `m` `k / 32 · 16` values.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub(crate) unsafe fn pack_tile_avx512(
    ty: crate::GgmlType,
    rows: &[u8],
    rb: usize,
    n_rows: usize,
    k: usize,
    u: &mut [u8],
    s: &mut [f32],
    m: &mut [f32],
) {
    use crate::GgmlType;
    let nb = k / QA;
    debug_assert!(n_rows <= GEMM_Q8_ROWS && rows.len() >= n_rows * rb && u.len() >= 16 * k);
    debug_assert!(s.len() >= nb * GEMM_Q8_ROWS && m.len() >= nb * GEMM_Q8_ROWS);
    // Block bytes, where the codes start, where Q5's fifth bits (`qh`) sit.
    let (bs, code_at, qh_at) = match ty {
        GgmlType::Q4_0 => (18, 2, None),
        GgmlType::Q4_1 => (20, 4, None),
        GgmlType::Q5_0 => (22, 6, Some(2)),
        GgmlType::Q5_1 => (24, 8, Some(4)),
        _ => (34, 2, None),
    };
    let q8 = bs == 34;
    let m4 = _mm512_set1_epi8(0x0f);
    let flip = _mm512_set1_epi8(-128);
    // Lanes 0..8: rows 0..8's dword j of the pair (a, b) of 4-row registers; lanes 8..16: dword j + 1.
    let idx = |j: i32| {
        _mm512_set_epi32(
            29 + j,
            25 + j,
            21 + j,
            17 + j,
            13 + j,
            9 + j,
            5 + j,
            1 + j,
            28 + j,
            24 + j,
            20 + j,
            16 + j,
            12 + j,
            8 + j,
            4 + j,
            j,
        )
    };
    let (idx0, idx2) = (idx(0), idx(2));
    let (base, up) = (rows.as_ptr(), u.as_mut_ptr());
    let row_mask = |r: usize| -> __mmask16 {
        if r < n_rows {
            0xffff
        } else {
            0
        }
    };
    // Four rows' 16 bytes at `at` in their block b, one row per 128-bit lane (zero past n_rows).
    let four = |r0: usize, at: usize| {
        let load = |r: usize| {
            // SAFETY: for r < n_rows, 16 bytes inside row r's block (the caller's `at`); a
            // masked-off row reads nothing.
            _mm_maskz_loadu_epi8(row_mask(r), base.wrapping_add(r * rb + at).cast())
        };
        let z = _mm512_castsi128_si512(load(r0));
        let z = _mm512_inserti32x4::<1>(z, load(r0 + 1));
        let z = _mm512_inserti32x4::<2>(z, load(r0 + 2));
        _mm512_inserti32x4::<3>(z, load(r0 + 3))
    };
    // The four lines (dwords 0..4 of the 16 rows) of the 16-byte runs at `at`.
    let lines = |at: usize| {
        let (a, b, c, d) = (four(0, at), four(4, at), four(8, at), four(12, at));
        let (p0, q0) = (_mm512_permutex2var_epi32(a, idx0, b), _mm512_permutex2var_epi32(c, idx0, d));
        let (p2, q2) = (_mm512_permutex2var_epi32(a, idx2, b), _mm512_permutex2var_epi32(c, idx2, d));
        [
            _mm512_shuffle_i64x2::<0x44>(p0, q0),
            _mm512_shuffle_i64x2::<0xEE>(p0, q0),
            _mm512_shuffle_i64x2::<0x44>(p2, q2),
            _mm512_shuffle_i64x2::<0xEE>(p2, q2),
        ]
    };
    for b in 0..nb {
        let blk = b * bs;
        let (mut dh, mut mh, mut qh) = ([0u16; 16], [0u16; 16], [0u32; 16]);
        for r in 0..n_rows {
            // SAFETY: row r's block b starts inside `rows` with its f16 scale (Q4_1's and Q5_1's
            // offset after it) and, for Q5, its 4 bytes of fifth bits at `qh_at`.
            let p = base.add(r * rb + blk);
            dh[r] = u16::from_le_bytes([*p, *p.add(1)]);
            if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                mh[r] = u16::from_le_bytes([*p.add(2), *p.add(3)]);
            }
            if let Some(at) = qh_at {
                qh[r] = u32::from_le_bytes([*p.add(at), *p.add(at + 1), *p.add(at + 2), *p.add(at + 3)]);
            }
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(dh.as_ptr().cast()));
        let off = match ty {
            GgmlType::Q4_1 | GgmlType::Q5_1 => _mm512_cvtph_ps(_mm256_loadu_si256(mh.as_ptr().cast())),
            GgmlType::Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
            GgmlType::Q5_0 => _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
            _ => _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
        };
        let qh = _mm512_loadu_si512(qh.as_ptr().cast());
        // Q5: the fifth bits of elements e..e + 4 as 0x10 in each row's four bytes (the four
        // bits spread one to a byte by a carry-free multiply: bit i lands at 8i).
        let fifth = |e: i32| {
            let x = _mm512_and_si512(_mm512_srlv_epi32(qh, _mm512_set1_epi32(e)), _mm512_set1_epi32(0xf));
            let spread =
                _mm512_and_si512(_mm512_mullo_epi32(x, _mm512_set1_epi32(0x0020_4081)), _mm512_set1_epi32(0x0101_0101));
            _mm512_slli_epi32::<4>(spread)
        };
        let keep = if n_rows >= 16 { 0xffff } else { (1u16 << n_rows) - 1 };
        // SAFETY: block b's 16 scales and offsets inside `s` and `m`.
        _mm512_storeu_ps(s.as_mut_ptr().add(b * GEMM_Q8_ROWS), d);
        _mm512_storeu_ps(m.as_mut_ptr().add(b * GEMM_Q8_ROWS), _mm512_maskz_mov_ps(keep, off));
        let line = |j: usize| up.add((b * 8 + j) * 64).cast::<__m512i>();
        if q8 {
            for (half, ls) in [lines(blk + code_at), lines(blk + code_at + 16)].into_iter().enumerate() {
                for (j, l) in ls.into_iter().enumerate() {
                    let v = _mm512_maskz_mov_epi32(keep, _mm512_xor_si512(l, flip));
                    // SAFETY: line b·8 + 4·half + j of `u`.
                    _mm512_storeu_si512(line(4 * half + j), v);
                }
            }
        } else {
            for (j, l) in lines(blk + code_at).into_iter().enumerate() {
                let (mut lo, mut hi) = (_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4));
                if qh_at.is_some() {
                    lo = _mm512_or_si512(lo, fifth(4 * j as i32));
                    hi = _mm512_or_si512(hi, fifth(16 + 4 * j as i32));
                }
                // SAFETY: lines b·8 + j and b·8 + 4 + j of `u`.
                _mm512_storeu_si512(line(j), lo);
                _mm512_storeu_si512(line(4 + j), hi);
            }
        }
    }
}
