//! Decode kernels (matrix × one quantized token) for any [`Grid`] block type, on AVX-512 VNNI and
//! AVX2: each block is unpacked to codes, scales and offsets by the type's own `unpack` (inlined
//! here, so it is compiled — and vectorized — for the path's instruction set), then multiplied
//! with the token's codes as exact integer dot products, one `i32` lane per 4 elements.
//!
//! A lane's scale is its group's `s` times its activation block's `dx` (`VecQ8::dl`, one per
//! 4 codes); the offsets meet `dx · Σq` per group (`ds16` / `ds32`) in a second accumulator.

use core::arch::x86_64::*;

use crate::gemm_q8::VecQ8;
use crate::grid::Grid;

/// How far ahead each row's weights are prefetched, in rows.
const PREFETCH_ROWS: usize = 4;

/// `out[r] = row r · x` for the rows of `w` (`rb` bytes each) on AVX-512 VNNI.
pub(crate) fn gemv_grid_avx512<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::Avx512.is_available(), "gemv_q8: AVX-512 VNNI is not available");
    check_shapes::<T>(w, rb, x, out);
    // SAFETY: AVX-512 F/BW/VL/VNNI are available (asserted above); shapes checked above.
    unsafe { gemv_grid_avx512_impl::<T>(w, rb, x, out) }
}

/// `out[r] = row r · x` on AVX2 (`maddubs`: exact while `2 · MAX_CODE · 127` fits in `i16`).
pub(crate) fn gemv_grid_avx2<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::Avx2.is_available(), "gemv_q8: AVX2 is not available");
    assert!(T::MAX_CODE <= 127, "gemv_q8: {} codes overflow maddubs' 16-bit pair sums", T::TY);
    check_shapes::<T>(w, rb, x, out);
    // SAFETY: AVX2/FMA/F16C are available (asserted above); shapes checked above.
    unsafe { gemv_grid_avx2_impl::<T>(w, rb, x, out) }
}

fn check_shapes<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &[f32]) {
    let k = x.k();
    assert!(k.is_multiple_of(T::TY.block_size()), "gemv_q8: {} rows of {k}", T::TY);
    assert_eq!(rb, T::TY.row_bytes(k).unwrap_or(0), "gemv_q8: row bytes");
    assert_eq!(w.len(), out.len() * rb, "gemv_q8: {} bytes for {} rows of {rb}", w.len(), out.len());
    let a = &x.acts;
    assert!(a.q.len() == k && a.d.len() == k / 32 && a.ds16.len() == k / 16 && a.ds32.len() == k / 32);
    assert_eq!(x.dl.len(), k / 4, "gemv_q8: VecQ8 lane scales");
}

/// # Safety
/// AVX-512 F/BW/VL/VNNI; shapes as [`check_shapes`] asserts.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemv_grid_avx512_impl<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let (bs, g, ts) = (T::TY.block_size(), T::GROUP, T::TY.type_size());
    let nb = x.k() / bs;
    let (q, dl) = (x.acts.q.as_ptr(), x.dl.as_ptr());
    let ds = if g == 16 { x.acts.ds16.as_ptr() } else { x.acts.ds32.as_ptr() };
    // Lane → group within one 64-element step: 8 lanes per group of 32, 4 per group of 16.
    let gidx = if g == 32 {
        _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    } else {
        _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0)
    };
    let (mut u, mut s, mut m) = ([0u8; 256], [0.0f32; 16], [0.0f32; 16]);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let base = row.as_ptr();
        let mut acc = _mm512_setzero_ps();
        let mut acc_m = _mm512_setzero_ps();
        let mut off = 0.0f32;
        if bs == 256 {
            let ng = 256 / g;
            let gmask: __mmask16 = if ng == 16 { 0xffff } else { 0x00ff };
            for b in 0..nb {
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_ROWS * rb + b * ts).cast());
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_ROWS * rb + b * ts + 64).cast());
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_ROWS * rb + b * ts + 128).cast());
                T::unpack(&row[b * ts..(b + 1) * ts], &mut u, &mut s, &mut m);
                let sv = _mm512_loadu_ps(s.as_ptr());
                let e0 = b * 256;
                for v in 0..4 {
                    // SAFETY: elements e0 + 64v .. +64 lie inside the token (k = nb · 256).
                    let uv = _mm512_loadu_si512(u.as_ptr().add(64 * v).cast());
                    let qv = _mm512_loadu_si512(q.add(e0 + 64 * v).cast());
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), uv, qv);
                    let idx = _mm512_add_epi32(gidx, _mm512_set1_epi32((64 * v / g) as i32));
                    let sl = _mm512_mul_ps(_mm512_permutexvar_ps(idx, sv), _mm512_loadu_ps(dl.add((e0 + 64 * v) / 4)));
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sl, acc);
                }
                // SAFETY: this block's ng groups lie inside `ds` (k / g entries).
                let dsv = _mm512_maskz_loadu_ps(gmask, ds.add(e0 / g));
                acc_m = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(gmask, m.as_ptr()), dsv, acc_m);
            }
        } else {
            // 32-element blocks, two per step (the last step may hold one).
            let mut b = 0;
            while b < nb {
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_ROWS * rb + b * ts).cast());
                let two = nb - b >= 2;
                T::unpack(&row[b * ts..(b + 1) * ts], &mut u[..32], &mut s[..1], &mut m[..1]);
                let (mut s1, mut m1, mut ds1) = (0.0, 0.0, 0.0);
                if two {
                    T::unpack(&row[(b + 1) * ts..(b + 2) * ts], &mut u[32..64], &mut s[1..2], &mut m[1..2]);
                    (s1, m1, ds1) = (s[1], m[1], *ds.add(b + 1));
                }
                let (bmask, lmask): (__mmask64, __mmask16) = if two { (!0, 0xffff) } else { (0xffff_ffff, 0x00ff) };
                let e0 = b * 32;
                // SAFETY: the masks keep every read inside block b (and b + 1 when it exists).
                let uv = _mm512_maskz_loadu_epi8(bmask, u.as_ptr().cast());
                let qv = _mm512_maskz_loadu_epi8(bmask, q.add(e0));
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), uv, qv);
                let sv = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(s[0]), _mm512_set1_ps(s1));
                let sl = _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(lmask, dl.add(e0 / 4)));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sl, acc);
                off += m[0] * *ds.add(b) + m1 * ds1;
                b += 2;
            }
        }
        *o = _mm512_reduce_add_ps(acc) + _mm512_reduce_add_ps(acc_m) + off;
    }
}

/// # Safety
/// AVX2/FMA/F16C; `T::MAX_CODE ≤ 127`; shapes as [`check_shapes`] asserts.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_grid_avx2_impl<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let (bs, g, ts) = (T::TY.block_size(), T::GROUP, T::TY.type_size());
    let nb = x.k() / bs;
    let (q, dl) = (x.acts.q.as_ptr(), x.dl.as_ptr());
    let ds = if g == 16 { x.acts.ds16.as_ptr() } else { x.acts.ds32.as_ptr() };
    let ones = _mm256_set1_epi16(1);
    let (mut u, mut s, mut m) = ([0u8; 256], [0.0f32; 16], [0.0f32; 16]);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let base = row.as_ptr();
        let mut acc = _mm256_setzero_ps();
        let mut off = 0.0f32;
        for b in 0..nb {
            _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_ROWS * rb + b * ts).cast());
            T::unpack(&row[b * ts..(b + 1) * ts], &mut u[..bs], &mut s[..bs / g], &mut m[..bs / g]);
            let e0 = b * bs;
            for v in 0..bs / 32 {
                // SAFETY: elements e0 + 32v .. +32 lie inside the token.
                let uv = _mm256_loadu_si256(u.as_ptr().add(32 * v).cast());
                let qv = _mm256_loadu_si256(q.add(e0 + 32 * v).cast());
                // Exact: |u · q| pairs ≤ 2 · 127 · 127 < 2^15.
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(uv, qv), ones);
                let sv = if g == 32 {
                    _mm256_set1_ps(s[v])
                } else {
                    _mm256_set_m128(_mm_set1_ps(s[2 * v + 1]), _mm_set1_ps(s[2 * v]))
                };
                let sl = _mm256_mul_ps(sv, _mm256_loadu_ps(dl.add((e0 + 32 * v) / 4)));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sl, acc);
            }
            for (j, &mj) in m[..bs / g].iter().enumerate() {
                off += mj * *ds.add(e0 / g + j);
            }
        }
        let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        *o = _mm_cvtss_f32(h) + off;
    }
}

/// Q5_0 (`Q51 = false`) or Q5_1 on AVX2, the nibbles and fifth bits unpacked in registers (the
/// generic kernel's round trip through memory stalls store forwarding on every block).
pub(crate) fn gemv_q5_avx2<const Q51: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::Avx2.is_available(), "gemv_q8: AVX2 is not available");
    if Q51 {
        check_shapes::<crate::q5_1::BlockQ5_1>(w, rb, x, out);
    } else {
        check_shapes::<crate::q5_0::BlockQ5_0>(w, rb, x, out);
    }
    assert_eq!(x.neg8.len(), x.k() / 4, "gemv_q8: VecQ8 lanes");
    // SAFETY: AVX2/FMA/F16C are available (asserted above); shapes checked above.
    unsafe { gemv_q5_avx2_impl::<Q51>(w, rb, x, out) }
}

/// # Safety
/// AVX2/FMA/F16C; shapes as [`check_shapes`] asserts, `x.neg8` of `k / 4` lanes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q5_avx2_impl<const Q51: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let (bs, qh_at, qs_at) = if Q51 { (24, 4, 8) } else { (22, 2, 6) };
    let nb = x.k() / 32;
    let (q, d, ds, neg8) = (x.acts.q.as_ptr(), x.acts.d.as_ptr(), x.acts.ds32.as_ptr(), x.neg8.as_ptr());
    let (m4, c16, ones) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(16), _mm256_set1_epi16(1));
    // Byte j of the vector takes byte j / 8 of `qh` and tests bit j % 8.
    let spread = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let p = row.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut off = 0.0f32;
        for b in 0..nb {
            // SAFETY: block b lies inside the row; codes 32b.. and lanes 8b.. inside `x`.
            let blk = p.add(b * bs);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH_ROWS * rb).cast());
            let qs = _mm_loadu_si128(blk.add(qs_at).cast());
            let u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs), m4);
            let qh = blk.add(qh_at).cast::<i32>().read_unaligned();
            let hb = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(qh), spread), bit);
            let u = _mm256_or_si256(u, _mm256_and_si256(_mm256_cmpeq_epi8(hb, bit), c16));
            let qv = _mm256_loadu_si256(q.add(32 * b).cast());
            // Exact: codes ≤ 31, so |pair sums| ≤ 2 · 31 · 127 < 2^15.
            let mut dot = _mm256_madd_epi16(_mm256_maddubs_epi16(u, qv), ones);
            if !Q51 {
                // Stored + 16: Σ (u − 16) q = Σ u q + 2 · (−8 Σ q).
                dot = _mm256_add_epi32(dot, _mm256_slli_epi32::<1>(_mm256_loadu_si256(neg8.add(8 * b).cast())));
            }
            let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<u16>().read_unaligned() as i32)));
            acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw * *d.add(b)), acc[b & 1]);
            if Q51 {
                let m =
                    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(blk.add(2).cast::<u16>().read_unaligned() as i32)));
                off += m * *ds.add(b);
            }
        }
        let a = _mm256_add_ps(acc[0], acc[1]);
        let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        *o = _mm_cvtss_f32(h) + off;
    }
}

/// IQ4_NL (`XS = false`: 18-byte blocks of 32) or IQ4_XS (136-byte super-blocks of 8 groups of
/// 32 under 6-bit group scales) on AVX2: each group's 16 bytes of indices become the grid's
/// signed values (−127 … 113) by one in-register byte shuffle of the 16-value table, then
/// ggml's sign trick `|w| · (sign(w) · q)` keeps `maddubs` exact (`|w|, |q| ≤ 127`).
pub(crate) fn gemv_iq4_avx2<const XS: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::Avx2.is_available(), "gemv_q8: AVX2 is not available");
    if XS {
        check_shapes::<crate::iq4_xs::BlockIQ4XS>(w, rb, x, out);
    } else {
        check_shapes::<crate::iq4_nl::BlockIQ4NL>(w, rb, x, out);
    }
    // SAFETY: AVX2/FMA/F16C are available (asserted above); shapes checked above.
    unsafe { gemv_iq4_avx2_impl::<XS>(w, rb, x, out) }
}

/// # Safety
/// AVX2/FMA/F16C; shapes as [`check_shapes`] asserts for the type.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_iq4_avx2_impl<const XS: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    // Bytes per block, groups of 32 per block, where the indices start.
    let (bs, gpb, qs_at) = if XS { (136, 8, 8) } else { (18, 1, 2) };
    let nb = x.k() / (32 * gpb);
    let (q, d) = (x.acts.q.as_ptr(), x.acts.d.as_ptr());
    let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(crate::iq4_nl::KVALUES_IQ4NL.as_ptr().cast()));
    let (m4, ones) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi16(1));
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let p = row.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 2];
        for b in 0..nb {
            // SAFETY: block b lies inside the row; its groups' codes and scales inside `x`.
            let blk = p.add(b * bs);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH_ROWS * rb).cast());
            if XS {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH_ROWS * rb + 64).cast());
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH_ROWS * rb + 128).cast());
            }
            let db = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<u16>().read_unaligned() as i32)));
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
                let qs = _mm_loadu_si128(blk.add(qs_at + 16 * j).cast());
                // Elements 0..16 (low nibbles) then 16..32 (high nibbles): the group in order.
                let idx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs), m4);
                let wv = _mm256_shuffle_epi8(lut, idx);
                let qv = _mm256_loadu_si256(q.add(32 * g).cast());
                let dot =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qv, wv)), ones);
                acc[g & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(s * *d.add(g)), acc[g & 1]);
            }
        }
        let a = _mm256_add_ps(acc[0], acc[1]);
        let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        *o = _mm_cvtss_f32(h);
    }
}
