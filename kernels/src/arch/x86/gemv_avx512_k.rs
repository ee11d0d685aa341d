//! Hand-written AVX-512 VNNI decode kernels for the types of llama.cpp's K-quant mixes: Q5_0,
//! Q5_1 (four 32-element blocks per step, in the Q4 kernels' nibble layout), Q4_K, Q5_K, Q6_K
//! (four steps of 64 codes per 256-element super-block) and IQ4_NL / IQ4_XS. Each step builds 64 unsigned codes in a register straight from
//! the block's bytes (no store to memory), multiplies them with the token's 64 codes in one
//! `vpdpbusd` (16 lanes of 4 products), and scales each lane by its group's `s · dx`.
//!
//! * Nibbles: one 16-bit shift by 4 of the vector's upper half (`mask_srli`), then `& 0x0f`,
//!   turns a copy of 32 packed bytes in both halves into 64 codes in element order.
//! * Q5_0/Q5_1's fifth bits are the block's 32-bit `qh`: four blocks' `qh` halves form the two
//!   64-bit masks of a masked `+ 16` (low and high nibbles), gathered with the four blocks'
//!   scales by one 16-bit permute of the group's bytes (scalar gathering took half the time).
//!   Q5_K's come from 32 bytes `qh`, shifted per step like the nibbles.
//! * Offsets that are a constant times the scale (Q5_0: −16, Q6_K: −32) are folded into the
//!   integer sum as `−c · Σq` per lane (`VecQ8::s4`); float offsets (Q5_1's `m`, Q4_K/Q5_K's
//!   mins) meet `dx · Σq` per block or sub-block (`ds32`).

use core::arch::x86_64::*;

use super::gemv_avx512::{by_four_rows, RowsKernel, PREFETCH_ROWS as FAR};
use crate::gemm_q8::VecQ8;

/// How far ahead the super-block kernels (K-quants) prefetch each row's weights, in rows; the
/// 32-element-block kernels (Q5_0/Q5_1, IQ4_NL, IQ4_XS) prefetch as far as the Q4 kernels
/// ([`FAR`]).
const PREFETCH_ROWS: usize = 4;

/// The f16 at `p` (2 bytes, any alignment), widened with F16C.
///
/// # Safety
/// F16C; two readable bytes at `p`.
#[inline(always)]
unsafe fn f16s(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<u16>().read_unaligned() as i32)))
}

fn check(w: &[u8], rb: usize, x: &VecQ8, out: &[f32], bs: usize, ts: usize) {
    assert!(crate::KernelPath::Avx512.is_available(), "gemv_q8: AVX-512 VNNI is not available");
    let k = x.k();
    assert!(k.is_multiple_of(bs) && rb == k / bs * ts, "gemv_q8: row shape");
    assert_eq!(w.len(), out.len() * rb, "gemv_q8: {} bytes for {} rows of {rb}", w.len(), out.len());
    let a = &x.acts;
    assert!(a.q.len() == k && a.d.len() == k / 32 && a.ds32.len() == k / 32, "gemv_q8: VecQ8 shape");
    assert!(x.s4.len() == k / 4 && x.dl.len() == k / 4, "gemv_q8: VecQ8 lanes");
}

/// Q5_0 (`Q51 = false`, 22-byte blocks) or Q5_1 (24-byte blocks), four rows at a time.
pub(crate) fn gemv_q5_avx512<const Q51: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    check(w, rb, x, out, 32, if Q51 { 24 } else { 22 });
    assert!(x.dsl.len() == x.k() / 4, "gemv_q8: VecQ8 lanes");
    let ng = (x.k() / 32).div_ceil(4);
    assert!(x.lo4.len() == ng * 64 && x.hi4.len() == ng * 64 && x.n8g.len() == ng * 16, "gemv_q8: VecQ8 groups");
    assert!(x.dg.len() == ng * 16 && x.dsg.len() == ng * 16, "gemv_q8: VecQ8 groups");
    let kernels: [RowsKernel; 4] =
        [gemv_q5x4_rows::<1, Q51>, gemv_q5x4_rows::<2, Q51>, gemv_q5x4_rows::<3, Q51>, gemv_q5x4_rows::<4, Q51>];
    // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) available and shapes checked above.
    unsafe { by_four_rows(w, rb, x, out, kernels) }
}

/// The word indices of [`gemv_q5x4_rows`]'s permutes of a full group's first 80 bytes (words
/// 0..40: `head` holds 0..32, `tail` 32..), for blocks of `bs` bytes with `qh` at `qh_at`. The
/// first: words 0..16 the lanes' `d` (lane i: block i / 4), 16..20 the four `qh` low halves,
/// 20..24 the high halves; the second (Q5_1): the lanes' `m` in words 0..16. Block b's `d` is
/// word b·bs/2, `m` the next word, `qh` the two words at (b·bs + qh_at)/2.
const fn q5_words(bs: usize, qh_at: usize) -> ([u16; 32], [u16; 32]) {
    const fn w(b: usize, bs: usize, at: usize) -> u16 {
        ((b * bs + at) / 2) as u16
    }
    let (mut words, mut mwords) = ([0u16; 32], [0u16; 32]);
    let mut i = 0;
    while i < 16 {
        words[i] = w(i / 4, bs, 0);
        mwords[i] = w(i / 4, bs, 2);
        i += 1;
    }
    let mut b = 0;
    while b < 4 {
        words[16 + b] = w(b, bs, qh_at);
        words[20 + b] = w(b, bs, qh_at + 2);
        b += 1;
    }
    (words, mwords)
}
const Q5_0_WORDS: ([u16; 32], [u16; 32]) = q5_words(22, 2);
const Q5_1_WORDS: ([u16; 32], [u16; 32]) = q5_words(24, 4);

/// `R` rows of Q5_0 / Q5_1 against the token, four blocks (128 codes) per step in the layout
/// of the Q4 kernels (`gemv_avx512`): the four blocks' 16 nibble bytes side by side in one
/// vector, low nibbles against the token's `lo4` codes (each block's elements 0..16), high
/// nibbles against `hi4` (16..32); the fifth bits become two 64-bit masks (bits 0..16 and
/// 16..32 of each block's `qh`) of a masked `+ 16`. Q5_0's −16 offset starts the integer sum
/// as `2 · n8g`; Q5_1's `m` meets `dsg`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, F16C; `rows` holds `R` rows of `x.k() / 32` blocks; `x`'s grouped
/// arrays hold `(x.k() / 32).div_ceil(4)` groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemv_q5x4_rows<const R: usize, const Q51: bool>(rows: &[u8], rb: usize, x: &VecQ8) -> [f32; 4] {
    let (bs, qs_at) = if Q51 { (24, 8) } else { (22, 6) };
    let nb = x.k() / 32;
    let (m4, c16) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(16));
    let (words, mwords) = if Q51 { &Q5_1_WORDS } else { &Q5_0_WORDS };
    let idx = _mm512_loadu_si512(words.as_ptr().cast());
    let midx = _mm512_loadu_si512(mwords.as_ptr().cast());
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_m = [_mm512_setzero_ps(); R];
    let base = rows.as_ptr();
    for g in 0..nb.div_ceil(4) {
        let nbk = (nb - 4 * g).min(4);
        // SAFETY: group g's 16 lanes / 64 codes lie inside the grouped arrays.
        let xlo = _mm512_loadu_si512(x.lo4.as_ptr().add(64 * g).cast());
        let xhi = _mm512_loadu_si512(x.hi4.as_ptr().add(64 * g).cast());
        let init = if Q51 {
            _mm512_setzero_si512()
        } else {
            _mm512_slli_epi32::<1>(_mm512_loadu_si512(x.n8g.as_ptr().add(16 * g).cast()))
        };
        let dx = _mm512_loadu_ps(x.dg.as_ptr().add(16 * g));
        let dsx = if Q51 { _mm512_loadu_ps(x.dsg.as_ptr().add(16 * g)) } else { _mm512_setzero_ps() };
        for (i, (acc, acc_m)) in acc.iter_mut().zip(acc_m.iter_mut()).enumerate() {
            // SAFETY: row i's blocks 4g .. 4g + nbk lie inside `rows`; nothing past them is read.
            let p = base.add(i * rb + 4 * g * bs);
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(FAR * rb).cast());
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(FAR * rb + 64).cast());
            // The group's bytes 0..64 and 64..80 (a full group has 88 or 96: inside the row; a
            // short one is read through byte masks, its missing blocks' words coming out 0).
            let (wq, head, tail) = if nbk == 4 {
                let w = _mm512_castsi128_si512(_mm_loadu_si128(p.add(qs_at).cast()));
                let w = _mm512_inserti32x4::<1>(w, _mm_loadu_si128(p.add(bs + qs_at).cast()));
                let w = _mm512_inserti32x4::<2>(w, _mm_loadu_si128(p.add(2 * bs + qs_at).cast()));
                let w = _mm512_inserti32x4::<3>(w, _mm_loadu_si128(p.add(3 * bs + qs_at).cast()));
                (w, _mm512_loadu_si512(p.cast()), _mm512_castsi128_si512(_mm_loadu_si128(p.add(64).cast())))
            } else {
                let n = nbk * bs;
                let head: u64 = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
                let tail: u16 = ((1u32 << n.saturating_sub(64).min(16)) - 1) as u16;
                let wq = match nbk {
                    1 => q5_short_nibbles::<Q51, 1>(p),
                    2 => q5_short_nibbles::<Q51, 2>(p),
                    _ => q5_short_nibbles::<Q51, 3>(p),
                };
                (
                    wq,
                    _mm512_maskz_loadu_epi8(head, p.cast()),
                    _mm512_castsi128_si512(_mm_maskz_loadu_epi8(tail, p.add(64).cast())),
                )
            };
            let pw = _mm512_permutex2var_epi16(head, idx, tail);
            let bits = _mm512_extracti64x4_epi64::<1>(pw);
            let mlo = _mm_cvtsi128_si64(_mm256_castsi256_si128(bits)) as u64;
            let mhi = _mm_extract_epi64::<1>(_mm256_castsi256_si128(bits)) as u64;
            let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(pw));
            let mw = if Q51 {
                _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(head, midx, tail)))
            } else {
                _mm512_setzero_ps()
            };
            let lo = _mm512_mask_add_epi8(_mm512_and_si512(wq, m4), mlo, _mm512_and_si512(wq, m4), c16);

            let hi4 = _mm512_and_si512(_mm512_srli_epi16::<4>(wq), m4);
            let hi = _mm512_mask_add_epi8(hi4, mhi, hi4, c16);
            let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, xlo), hi, xhi);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), *acc);
            if Q51 {
                *acc_m = _mm512_fmadd_ps(mw, dsx, *acc_m);
            }
        }
    }
    let mut res = [0.0f32; 4];
    for (r, (a, m)) in res.iter_mut().zip(acc.iter().zip(&acc_m)) {
        *r = _mm512_reduce_add_ps(_mm512_add_ps(*a, *m));
    }
    res
}

/// The nibble bytes of the last, short group (`NBK` < 4 blocks at `p`) of [`gemv_q5x4_rows`],
/// the missing blocks' lanes zero.
///
/// # Safety
/// AVX-512 F; `NBK` blocks of Q5_0 / Q5_1 readable at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q5_short_nibbles<const Q51: bool, const NBK: usize>(p: *const u8) -> __m512i {
    let (bs, qs_at) = if Q51 { (24, 8) } else { (22, 6) };
    let mut wq = _mm512_setzero_si512();
    for b in 0..NBK {
        // SAFETY: block b < NBK is readable (caller contract).
        let piece = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(b * bs + qs_at).cast()));
        wq = _mm512_mask_mov_epi32(wq, 0xf << (4 * b), piece);
    }
    wq
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K / Q5_K super-block (`sc`: its 12
/// scale bytes), as eight bytes each (see `get_scale_min_k4`).
#[inline(always)]
fn scales_mins_k4(sc: &[u8; 12]) -> (u64, u64) {
    let a = u32::from_le_bytes([sc[0], sc[1], sc[2], sc[3]]);
    let b = u32::from_le_bytes([sc[4], sc[5], sc[6], sc[7]]);
    let c = u32::from_le_bytes([sc[8], sc[9], sc[10], sc[11]]);
    let s_lo = a & 0x3f3f_3f3f;
    let m_lo = b & 0x3f3f_3f3f;
    let s_hi = (c & 0x0f0f_0f0f) | (((a >> 6) & 0x0303_0303) << 4);
    let m_hi = ((c >> 4) & 0x0f0f_0f0f) | (((b >> 6) & 0x0303_0303) << 4);
    (s_lo as u64 | (s_hi as u64) << 32, m_lo as u64 | (m_hi as u64) << 32)
}

/// Q4_K (`Q5 = false`, 144-byte super-blocks) or Q5_K (176 bytes).
pub(crate) fn gemv_q45k_avx512<const Q5: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    check(w, rb, x, out, 256, if Q5 { 176 } else { 144 });
    // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) available and shapes checked above.
    unsafe { gemv_q45k_impl::<Q5>(w, rb, x, out) }
}

/// # Safety
/// AVX-512 F/BW/VL/VNNI, F16C; shapes as [`check`] asserts.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemv_q45k_impl<const Q5: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let (bs, qs_at) = if Q5 { (176, 48) } else { (144, 16) };
    let nb = x.k() / 256;
    let (q, d, ds) = (x.acts.q.as_ptr(), x.acts.d.as_ptr(), x.acts.ds32.as_ptr());
    let (m4, one) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(1));
    // Step c covers sub-blocks 2c (lanes 0..8) and 2c + 1 (lanes 8..16).
    let idx0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let p = row.as_ptr();
        let mut acc = _mm512_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        for b in 0..nb {
            // SAFETY (this block): super-block b (bs bytes) lies inside the row, its 256 codes,
            // 8 scales and 8 sums inside `x`.
            let blk = p.add(b * bs);
            for l in 0..bs.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH_ROWS * rb + 64 * l).cast());
            }
            let (dw, dmin) = (f16s(blk), f16s(blk.add(2)));
            let (sc, mn) = scales_mins_k4(&*blk.add(4).cast::<[u8; 12]>());
            let scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64)));
            let mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64)));
            // Per sub-block: d · sc · dx, and the mins' term −dmin · mn · dx Σq.
            let f = _mm256_mul_ps(_mm256_mul_ps(scf, _mm256_set1_ps(dw)), _mm256_loadu_ps(d.add(8 * b)));
            acc_m = _mm256_fmadd_ps(_mm256_mul_ps(mnf, _mm256_set1_ps(-dmin)), _mm256_loadu_ps(ds.add(8 * b)), acc_m);
            let fz = _mm512_castps256_ps512(f);
            let hv = if Q5 {
                let h = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(16).cast()));
                _mm512_mask_srli_epi16(h, 0xffff_0000, h, 1)
            } else {
                _mm512_setzero_si512()
            };
            for c in 0..4 {
                let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(qs_at + 32 * c).cast()));
                let mut u = _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xffff_0000, v, 4), m4);
                if Q5 {
                    let h = _mm512_and_si512(_mm512_srl_epi16(hv, _mm_cvtsi32_si128(2 * c as i32)), one);
                    u = _mm512_or_si512(u, _mm512_slli_epi16::<4>(h));
                }
                let qv = _mm512_loadu_si512(q.add(256 * b + 64 * c).cast());
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, qv);
                let idx = _mm512_add_epi32(idx0, _mm512_set1_epi32(2 * c as i32));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(idx, fz), acc);
            }
        }
        let m = _mm_add_ps(_mm256_castps256_ps128(acc_m), _mm256_extractf128_ps::<1>(acc_m));
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        *o = _mm512_reduce_add_ps(acc) + _mm_cvtss_f32(m);
    }
}

/// Q6_K (210-byte super-blocks).
pub(crate) fn gemv_q6k_avx512(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    check(w, rb, x, out, 256, 210);
    // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) available and shapes checked above.
    unsafe { gemv_q6k_impl(w, rb, x, out) }
}

/// # Safety
/// AVX-512 F/BW/VL/VNNI, F16C; shapes as [`check`] asserts.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemv_q6k_impl(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let nb = x.k() / 256;
    let (q, dl, s4) = (x.acts.q.as_ptr(), x.dl.as_ptr(), x.s4.as_ptr());
    let (m4, m3) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x03));
    // Step v covers groups 4v .. 4v + 4 (four lanes each).
    let idx0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let p = row.as_ptr();
        let mut acc = _mm512_setzero_ps();
        for b in 0..nb {
            // SAFETY (this block): super-block b (210 bytes) lies inside the row, its 256
            // codes and 64 lanes inside `x`.
            let blk = p.add(b * 210);
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(blk.wrapping_add(PREFETCH_ROWS * rb + 64 * l).cast());
            }
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(blk.add(192).cast())));
            let sc = _mm512_mul_ps(sc, _mm512_set1_ps(f16s(blk.add(208))));
            for h in 0..2 {
                let ql = _mm512_loadu_si512(blk.add(64 * h).cast());
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * h).cast()));
                // Lower half: bits 0-1 (elements 128h + l), upper: bits 2-3 (128h + 32 + l).
                let qh = _mm512_mask_srli_epi16(qh, 0xffff_0000, qh, 2);
                let u0 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16::<4>(_mm512_and_si512(qh, m3)));
                let u1 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(qh), m3)),
                );
                for (i, u) in [u0, u1].into_iter().enumerate() {
                    let v = 2 * h + i;
                    let e = 256 * b + 64 * v;
                    let qv = _mm512_loadu_si512(q.add(e).cast());
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, qv);
                    // Codes are stored + 32: Σ (u − 32) q = Σ u q − 32 Σ q.
                    let dot = _mm512_sub_epi32(dot, _mm512_slli_epi32::<5>(_mm512_loadu_si512(s4.add(e / 4).cast())));
                    let idx = _mm512_add_epi32(idx0, _mm512_set1_epi32(4 * v as i32));
                    let sl = _mm512_mul_ps(_mm512_permutexvar_ps(idx, sc), _mm512_loadu_ps(dl.add(e / 4)));
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sl, acc);
                }
            }
        }
        *o = _mm512_reduce_add_ps(acc);
    }
}

/// Q2_K (`Q3 = false`, 84-byte super-blocks) or Q3_K (110 bytes): 2-bit codes (plus Q3_K's high
/// bit from `hmask`), groups of 16; four rows at a time (the token's codes, offsets and scales
/// loaded once for the four).
pub(crate) fn gemv_q23k_avx512<const Q3: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    check(w, rb, x, out, 256, if Q3 { 110 } else { 84 });
    assert_eq!(x.acts.ds16.len(), x.k() / 16, "gemv_q8: VecQ8 shape");
    let kernels: [RowsKernel; 4] =
        [gemv_q23k_rows::<1, Q3>, gemv_q23k_rows::<2, Q3>, gemv_q23k_rows::<3, Q3>, gemv_q23k_rows::<4, Q3>];
    // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) available and shapes checked above.
    unsafe { by_four_rows(w, rb, x, out, kernels) }
}

/// The sixteen 6-bit scales of a Q3_K super-block (`sc`: its 12 scale bytes, see `scale6` in
/// q3_k.rs), still `+ 32`, as four little-endian words of four bytes.
#[inline(always)]
fn scales_q3k(sc: &[u8; 12]) -> [u32; 4] {
    let a = u32::from_le_bytes([sc[0], sc[1], sc[2], sc[3]]);
    let b = u32::from_le_bytes([sc[4], sc[5], sc[6], sc[7]]);
    let c = u32::from_le_bytes([sc[8], sc[9], sc[10], sc[11]]);
    let (lo, hi) = (0x0f0f_0f0f, 0x0303_0303);
    [
        (a & lo) | (c & hi) << 4,
        (b & lo) | ((c >> 2) & hi) << 4,
        ((a >> 4) & lo) | ((c >> 4) & hi) << 4,
        ((b >> 4) & lo) | ((c >> 6) & hi) << 4,
    ]
}

/// `R` rows of Q2_K / Q3_K against the token. Element `128h + 32j + l` of a super-block is bits
/// `2j, 2j + 1` of `qs[32h + l]` (and, for Q3_K, bit `4h + j` of `hmask[l]`); a step takes the 64
/// elements `64v ..` (`v = 2h + t`: `j = 2t` in its lower half, `2t + 1` in its upper) from one
/// broadcast of the half's 32 `qs` bytes by a per-half word shift (`vpsrlvw`), and Q3_K's high
/// bits by one `vptestmb` against the half's bit (adding 4 where it is set: `u` = code + 4).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, F16C; `rows` holds `R` rows of `x.k() / 256` super-blocks; `x` holds
/// the lanes [`check`] asserts.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemv_q23k_rows<const R: usize, const Q3: bool>(rows: &[u8], rb: usize, x: &VecQ8) -> [f32; 4] {
    let (bs, qs_at) = if Q3 { (110, 32) } else { (84, 16) };
    let nb = x.k() / 256;
    let (q, dl, s4, ds16) = (x.acts.q.as_ptr(), x.dl.as_ptr(), x.s4.as_ptr(), x.acts.ds16.as_ptr());
    let (m3, four) = (_mm512_set1_epi8(0x03), _mm512_set1_epi8(0x04));
    let idx0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    // Step t of a half: words of the lower 32 bytes shift by 4t (j = 2t), the upper by 4t + 2.
    let cnt = |t: i16| {
        let (a, b) = (4 * t, 4 * t + 2);
        _mm512_set_epi16(b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a)
    };
    let cnts = [cnt(0), cnt(1)];
    // Q3_K's high bit of step v = 2h + t: bit 4h + 2t (lower 32 bytes), 4h + 2t + 1 (upper).
    let bit = |v: i32| {
        let (h, t) = (v / 2, v % 2);
        // The bit in every byte of a 64-bit word (bit 7 sets the word's sign: unsigned, then cast).
        let every = |n: i32| ((1u64 << n) * 0x0101_0101_0101_0101) as i64;
        let (a, b) = (every(4 * h + 2 * t), every(4 * h + 2 * t + 1));
        _mm512_set_epi64(b, b, b, b, a, a, a, a)
    };
    let bits = [bit(0), bit(1), bit(2), bit(3)];
    let base = rows.as_ptr();
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_m = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        // SAFETY (this block): super-block b of each of the R rows lies inside `rows`; its 256
        // codes, 64 lanes and 16 group sums inside `x`.
        let blk: [*const u8; R] = core::array::from_fn(|r| base.add(r * rb + b * bs));
        let mut sc = [_mm512_setzero_ps(); R];
        for r in 0..R {
            let p = blk[r];
            for l in 0..bs.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_ROWS * rb + 64 * l).cast());
            }
            sc[r] = if Q3 {
                let [w0, w1, w2, w3] = scales_q3k(&*p.add(96).cast::<[u8; 12]>());
                let s = _mm_sub_epi8(_mm_set_epi32(w3 as i32, w2 as i32, w1 as i32, w0 as i32), _mm_set1_epi8(32));
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s)), _mm512_set1_ps(f16s(p.add(108))))
            } else {
                let raw = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()));
                let (d, dmin) = (f16s(p.add(80)), f16s(p.add(82)));
                let mins = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(raw));
                let dsv = _mm512_loadu_ps(ds16.add(16 * b));
                acc_m[r] = _mm512_fmadd_ps(_mm512_mul_ps(mins, _mm512_set1_ps(-dmin)), dsv, acc_m[r]);
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(raw, _mm512_set1_epi32(0xf))), _mm512_set1_ps(d))
            };
        }
        let hm: [__m512i; R] = core::array::from_fn(|r| {
            if Q3 {
                _mm512_broadcast_i64x4(_mm256_loadu_si256(blk[r].cast()))
            } else {
                _mm512_setzero_si512()
            }
        });
        for h in 0..2 {
            let qs: [__m512i; R] =
                core::array::from_fn(|r| _mm512_broadcast_i64x4(_mm256_loadu_si256(blk[r].add(qs_at + 32 * h).cast())));
            for (t, cnt) in cnts.iter().enumerate() {
                let v = 2 * h + t;
                let e = 256 * b + 64 * v;
                let xq = _mm512_loadu_si512(q.add(e).cast());
                // Q3_K: u = code + 4, so each row's sum starts at −4 Σq.
                let init = if Q3 {
                    _mm512_sub_epi32(
                        _mm512_setzero_si512(),
                        _mm512_slli_epi32::<2>(_mm512_loadu_si512(s4.add(e / 4).cast())),
                    )
                } else {
                    _mm512_setzero_si512()
                };
                let dlv = _mm512_loadu_ps(dl.add(e / 4));
                let idx = _mm512_add_epi32(idx0, _mm512_set1_epi32(4 * v as i32));
                for r in 0..R {
                    let mut u = _mm512_and_si512(_mm512_srlv_epi16(qs[r], *cnt), m3);
                    if Q3 {
                        let k = _mm512_test_epi8_mask(hm[r], bits[v]);
                        u = _mm512_mask_add_epi8(u, k, u, four);
                    }
                    let dot = _mm512_dpbusd_epi32(init, u, xq);
                    let sl = _mm512_mul_ps(_mm512_permutexvar_ps(idx, sc[r]), dlv);
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sl, acc[r]);
                }
            }
        }
    }
    let mut res = [0.0f32; 4];
    for r in 0..R {
        res[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], acc_m[r]));
    }
    res
}

/// IQ4_NL (18-byte blocks: f16 `d`, 16 bytes of 4-bit indices into the 16-value grid), four rows
/// at a time: the indices become codes `grid + 128` by one in-register byte shuffle (`vpshufb`
/// of a 16-byte table), and the `+ 128` is folded into the integer sum as `−128 Σq`.
pub(crate) fn gemv_iq4nl_avx512(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    check(w, rb, x, out, 32, 18);
    assert!(x.neg128.len() == x.k() / 4, "gemv_q8: VecQ8 lanes");
    let ng = (x.k() / 32).div_ceil(4);
    assert!(x.lo4.len() == ng * 64 && x.hi4.len() == ng * 64 && x.n8g.len() == ng * 16, "gemv_q8: VecQ8 groups");
    assert!(x.dg.len() == ng * 16, "gemv_q8: VecQ8 groups");
    let kernels: [RowsKernel; 4] =
        [gemv_iq4nlx4_rows::<1>, gemv_iq4nlx4_rows::<2>, gemv_iq4nlx4_rows::<3>, gemv_iq4nlx4_rows::<4>];
    // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) available and shapes checked above.
    unsafe { by_four_rows(w, rb, x, out, kernels) }
}

/// `R` rows of IQ4_NL against the token, four blocks (128 codes) per step in the Q4 kernels'
/// nibble layout (an IQ4_NL block is a Q4_0 block with a non-linear grid): low and high nibbles
/// become `grid + 128` by one `vpshufb` each, against the token's `lo4` / `hi4` codes; the
/// `+ 128` starts the integer sum as `16 · n8g` (`n8g` = −8 Σq per lane).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, F16C; `rows` holds `R` rows of `x.k() / 32` blocks; `x`'s grouped
/// arrays hold `(x.k() / 32).div_ceil(4)` groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemv_iq4nlx4_rows<const R: usize>(rows: &[u8], rb: usize, x: &VecQ8) -> [f32; 4] {
    const BS: usize = 18;
    let nb = x.k() / 32;
    let lut = _mm512_broadcast_i32x4(_mm_loadu_si128(crate::iq4_nl::KVALUES_IQ4NL_U8.as_ptr().cast()));
    let m4 = _mm512_set1_epi8(0x0f);
    // Lane i takes block i / 4's scale: f16 word 9 · (i / 4) of the step's first 64 bytes.
    let idx = _mm512_set_epi16(
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 27, 27, 27, 27, 18, 18, 18, 18, 9, 9, 9, 9, 0, 0, 0, 0,
    );
    let mut acc = [_mm512_setzero_ps(); R];
    let base = rows.as_ptr();
    for g in 0..nb.div_ceil(4) {
        let nbk = (nb - 4 * g).min(4);
        // SAFETY: group g's 16 lanes / 64 codes lie inside the grouped arrays.
        let xlo = _mm512_loadu_si512(x.lo4.as_ptr().add(64 * g).cast());
        let xhi = _mm512_loadu_si512(x.hi4.as_ptr().add(64 * g).cast());
        let init = _mm512_slli_epi32::<4>(_mm512_loadu_si512(x.n8g.as_ptr().add(16 * g).cast()));
        let dx = _mm512_loadu_ps(x.dg.as_ptr().add(16 * g));
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row i's blocks 4g .. 4g + nbk lie inside `rows`; nothing past them is read.
            let p = base.add(i * rb + 4 * g * BS);
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(FAR * rb).cast());
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(FAR * rb + 64).cast());
            let (wq, win) = if nbk == 4 {
                let w = _mm512_castsi128_si512(_mm_loadu_si128(p.add(2).cast()));
                let w = _mm512_inserti32x4::<1>(w, _mm_loadu_si128(p.add(BS + 2).cast()));
                let w = _mm512_inserti32x4::<2>(w, _mm_loadu_si128(p.add(2 * BS + 2).cast()));
                let w = _mm512_inserti32x4::<3>(w, _mm_loadu_si128(p.add(3 * BS + 2).cast()));
                // 4 · 18 = 72 ≥ 64 bytes of this group: the load stays inside the row.
                (w, _mm512_loadu_si512(p.cast()))
            } else {
                let mut w = _mm512_setzero_si512();
                for b in 0..nbk {
                    // Block b's 16 bytes into lanes 4b..4b + 4 (the others stay zero: their
                    // activations are zero-padded).
                    let piece = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(b * BS + 2).cast()));
                    w = _mm512_mask_mov_epi32(w, 0xf << (4 * b), piece);
                }
                let bytes = nbk * BS;
                (w, _mm512_maskz_loadu_epi8((1u64 << bytes) - 1, p.cast()))
            };
            let lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(wq, m4));
            let hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(wq), m4));
            let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, xlo), hi, xhi);
            let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, win)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), *acc);
        }
    }
    let mut res = [0.0f32; 4];
    for (r, a) in res.iter_mut().zip(&acc) {
        *r = _mm512_reduce_add_ps(*a);
    }
    res
}

/// IQ4_XS (136-byte super-blocks: f16 `d`, 6-bit group scales, 8 groups of 16 bytes of 4-bit
/// indices), four rows at a time, in the Q4 kernels' layout as [`gemv_iq4nl_avx512`]: each half
/// super-block's four 32-element groups are one 64-byte load of indices, whose low and high
/// nibbles become `grid + 128` by one `vpshufb` each against the token's `lo4` / `hi4` codes
/// (the `+ 128` starts the sum as `16 · n8g`), and each lane takes its group's
/// `d · (ls − 32)` times its block's `dx`.
pub(crate) fn gemv_iq4xs_avx512(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    check(w, rb, x, out, 256, 136);
    let ng = x.k() / 128;
    assert!(x.lo4.len() == ng * 64 && x.hi4.len() == ng * 64 && x.n8g.len() == ng * 16, "gemv_q8: VecQ8 groups");
    assert!(x.dg.len() == ng * 16, "gemv_q8: VecQ8 groups");
    let kernels: [RowsKernel; 4] =
        [gemv_iq4xs_rows::<1>, gemv_iq4xs_rows::<2>, gemv_iq4xs_rows::<3>, gemv_iq4xs_rows::<4>];
    // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) available and shapes checked above.
    unsafe { by_four_rows(w, rb, x, out, kernels) }
}

/// # Safety
/// AVX-512 F/BW/VL/VNNI, F16C; `rows` holds `R` rows of `x.k() / 256` super-blocks; `x`'s
/// grouped arrays hold `x.k() / 128` groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemv_iq4xs_rows<const R: usize>(rows: &[u8], rb: usize, x: &VecQ8) -> [f32; 4] {
    let nsb = x.k() / 256;
    let lut = _mm512_broadcast_i32x4(_mm_loadu_si128(crate::iq4_nl::KVALUES_IQ4NL_U8.as_ptr().cast()));
    let m4 = _mm512_set1_epi8(0x0f);
    // Lane l of half h takes the scale of group 4h + l / 4.
    let pick = [
        _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
        _mm512_set_epi32(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4),
    ];
    let shift_l = _mm256_set_epi32(28, 24, 20, 16, 12, 8, 4, 0);
    let shift_h = _mm256_set_epi32(14, 12, 10, 8, 6, 4, 2, 0);
    let mut acc = [_mm512_setzero_ps(); R];
    let base = rows.as_ptr();
    for sb in 0..nsb {
        // The token's two groups of this super-block: codes, offsets (−128 Σq), scales.
        let tok = |h: usize| {
            let g = 2 * sb + h;
            // SAFETY: group g < x.k() / 128 of the grouped arrays (asserted by the caller).
            unsafe {
                (
                    _mm512_loadu_si512(x.lo4.as_ptr().add(64 * g).cast()),
                    _mm512_loadu_si512(x.hi4.as_ptr().add(64 * g).cast()),
                    _mm512_slli_epi32::<4>(_mm512_loadu_si512(x.n8g.as_ptr().add(16 * g).cast())),
                    _mm512_loadu_ps(x.dg.as_ptr().add(16 * g)),
                )
            }
        };
        let xs = [tok(0), tok(1)];
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: super-block sb of row i lies inside `rows`.
            let blk = base.add(i * rb + sb * 136);
            _mm_prefetch::<_MM_HINT_T1>(blk.wrapping_add(FAR * rb).cast());
            _mm_prefetch::<_MM_HINT_T1>(blk.wrapping_add(FAR * rb + 64).cast());
            _mm_prefetch::<_MM_HINT_T1>(blk.wrapping_add(FAR * rb + 128).cast());
            // The eight group scales d · (ls − 32) in one vector (`group_scale_iq4_xs` per lane):
            // ls_j = (scales_l >> 4j) & 15 | ((scales_h >> 2j) & 3) << 4.
            let d = _mm256_set1_ps(f16s(blk));
            let sh = _mm256_set1_epi32(blk.add(2).cast::<u16>().read_unaligned() as i32);
            let sl = _mm256_set1_epi32(blk.add(4).cast::<u32>().read_unaligned() as i32);
            let lo = _mm256_and_si256(_mm256_srlv_epi32(sl, shift_l), _mm256_set1_epi32(0x0f));
            let hi = _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srlv_epi32(sh, shift_h), _mm256_set1_epi32(3)));
            let ls = _mm256_sub_epi32(_mm256_or_si256(lo, hi), _mm256_set1_epi32(32));
            let scv = _mm512_castps256_ps512(_mm256_mul_ps(d, _mm256_cvtepi32_ps(ls)));
            for (h, &(xlo, xhi, init, dx)) in xs.iter().enumerate() {
                // SAFETY: the half's 64 index bytes lie inside the super-block.
                let v = _mm512_loadu_si512(blk.add(8 + 64 * h).cast());
                let lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
                let hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4));
                let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, xlo), hi, xhi);
                let s = _mm512_permutexvar_ps(pick[h], scv);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s, dx), *acc);
            }
        }
    }
    let mut res = [0.0f32; 4];
    for (r, a) in res.iter_mut().zip(&acc) {
        *r = _mm512_reduce_add_ps(*a);
    }
    res
}
