//! Decode kernels (matrix × one quantized token) on AVX-512 VNNI, four rows at a time: the rows
//! share every activation load and are reduced together at the end.
//!
//! Q4_0 / Q4_1: four blocks (128 weights) per step.
//! A Q4 block stores element `j` in the low nibble of byte `j` and element `j + 16` in the high
//! nibble. The four blocks' 64 nibble bytes go into one vector as they are (one 16-byte piece
//! per block), so lane `i` holds bytes `4(i % 4)..` of block `i / 4`: masking gives the low
//! nibbles, a shift the high ones, and the activations are laid out to match once per token
//! ([`VecQ8`]'s `lo4` / `hi4`: each block's codes 0..16 and 16..32). Two `vpdpbusd` per
//! step, no byte shuffles; the block scales come from one 16-bit permute of the step's first
//! 64 bytes. The Q4_0 offset (−8) starts the integer accumulator (`n8g`); the Q4_1 offset `m`
//! meets `dx · Σq` (`dsg`) in a second float accumulator.
//!
//! Q8_0: two blocks (64 weights) per step, codes flipped to `q + 128` (an xor) for the unsigned
//! operand and `-128 · Σq` (`neg128`) starting the accumulator; both scales from one 16-bit
//! permute of the step's first 64 bytes (a 68-byte pair, so never past the row).

use crate::gemm_q8::{VecQ8, QA};
use core::arch::x86_64::*;

/// How far ahead each row's weights are prefetched: the same place `PREFETCH_ROWS` rows on (the
/// rows of the fourth call on; four rows are read side by side, so a distance within the
/// row would fall into rows already being read).
///
/// The prefetches go to L2 (`_MM_HINT_T1`), not L1: four rows read side by side hide the
/// stream from the hardware prefetchers, and L1-bound prefetches are capped by L1's few miss
/// buffers (on Zen 4, Q8_0 rows of 640 read at 9 GB/s from memory with `T0`, 30 GB/s with
/// `T1`; `bench_gemm --gemv --shape 262144x640 q8_0`). The row-at-a-time kernels of
/// `gemv_avx512_k` use `T1` where it measured faster (Q5_0/Q5_1, Q6_K, IQ4_NL), `T0` elsewhere.
///
/// 32 rows (10 KiB of 576-wide Q4_0 rows) ahead, not 16: one-thread decode (`pith bench -p 0
/// -n 128 -t 1 -r 3`, three alternating rounds, 7 Dec) Q4_0-pure 345 → 424 t/s, IQ4_NL-pure
/// 354 → 416, Q5_0 273 → 293, Q4_K_M 267 → 288; 24 rows gained less, 48 the same, 64 less.
pub(crate) const PREFETCH_ROWS: usize = 32;

/// A kernel over `R` consecutive rows (`rb` bytes apart) against one token, for `R` = 1 … 4: the
/// results of its `R` rows in the first `R` entries.
pub(crate) type RowsKernel = unsafe fn(rows: &[u8], rb: usize, x: &VecQ8) -> [f32; 4];

/// `out[r] = row r · x`, four rows per call of `kernels[3]` (the last call takes the `n ≤ 4`
/// rows left with `kernels[n - 1]`), so the rows of a call share every activation load.
///
/// # Safety
/// Every kernel's CPU features are available, and each accepts its `R` rows of `rb` bytes of `w`
/// with `x` (`w` holds `out.len()` rows).
pub(crate) unsafe fn by_four_rows(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32], kernels: [RowsKernel; 4]) {
    for (o, rows) in out.chunks_mut(4).zip(w.chunks(4 * rb)) {
        let n = o.len();
        // SAFETY: `rows` holds the `n` rows of this call (caller contract for the rest).
        let v = kernels[n - 1](rows, rb, x);
        // A fixed-length copy in the common case: `copy_from_slice` of a run-time length
        // called memmove for every 16 bytes (3.5 % of a 576-wide model's decode time).
        match <&mut [f32; 4]>::try_from(&mut *o) {
            Ok(o4) => *o4 = v,
            Err(_) => {
                for (d, s) in o.iter_mut().zip(v) {
                    *d = s;
                }
            }
        }
    }
}

/// `out[r] = row r · x` for Q4_0 (`Q41 = false`, 18-byte blocks) or Q4_1 (20-byte blocks).
pub(crate) fn gemv_q4_avx512<const Q41: bool>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::Avx512.is_available(), "gemv_q8: AVX-512 VNNI is not available");
    let bs = if Q41 { 20 } else { 18 };
    let nb = x.k() / QA;
    let ng = nb.div_ceil(4);
    assert!(rb == nb * bs && w.len() == out.len() * rb, "gemv_q8: shapes");
    assert!(x.lo4.len() == ng * 64 && x.hi4.len() == ng * 64 && x.n8g.len() == ng * 16, "gemv_q8: activations");
    assert!(x.dg.len() == ng * 16 && x.dsg.len() == ng * 16, "gemv_q8: activations");
    let kernels: [RowsKernel; 4] =
        [gemv_q4_rows::<1, Q41>, gemv_q4_rows::<2, Q41>, gemv_q4_rows::<3, Q41>, gemv_q4_rows::<4, Q41>];
    // SAFETY: AVX-512 F/BW/VL/VNNI are available (asserted above); every row holds `nb` blocks,
    // `x` the grouped activations of `ng` groups (asserted above).
    unsafe { by_four_rows(w, rb, x, out, kernels) }
}

/// The hot loop: `R` consecutive rows (`rb` bytes apart) against every group of 4 blocks; the
/// last group may hold fewer blocks (masked loads, zero-padded activations).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `rows` holds `R` rows of `nb` blocks; `x`'s grouped arrays hold
/// `nb.div_ceil(4)` groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c,fma")]
unsafe fn gemv_q4_rows<const R: usize, const Q41: bool>(rows: &[u8], rb: usize, x: &VecQ8) -> [f32; 4] {
    let nb = x.k() / QA;
    let bs = if Q41 { 20 } else { 18 };
    let qs_at = if Q41 { 4 } else { 2 };
    let m4 = _mm512_set1_epi8(0x0f);
    // f16 words of the step's first 64 bytes → per-lane scale (low 256 bits) and, for Q4_1,
    // offset (high 256 bits): block b's d is word b·bs/2, its m the next word.
    let h = (bs / 2) as i16;
    let idx = _mm512_set_epi16(
        3 * h + 1,
        3 * h + 1,
        3 * h + 1,
        3 * h + 1,
        2 * h + 1,
        2 * h + 1,
        2 * h + 1,
        2 * h + 1,
        h + 1,
        h + 1,
        h + 1,
        h + 1,
        1,
        1,
        1,
        1,
        3 * h,
        3 * h,
        3 * h,
        3 * h,
        2 * h,
        2 * h,
        2 * h,
        2 * h,
        h,
        h,
        h,
        h,
        0,
        0,
        0,
        0,
    );
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_m = [_mm512_setzero_ps(); R];
    let base = rows.as_ptr();
    for g in 0..nb.div_ceil(4) {
        let nbk = (nb - 4 * g).min(4);
        // SAFETY: group g's 16 lanes / 64 codes lie inside the grouped arrays.
        let xlo = _mm512_loadu_si512(x.lo4.as_ptr().add(64 * g).cast());
        let xhi = _mm512_loadu_si512(x.hi4.as_ptr().add(64 * g).cast());
        let init = if Q41 { _mm512_setzero_si512() } else { _mm512_loadu_si512(x.n8g.as_ptr().add(16 * g).cast()) };
        let dx = _mm512_loadu_ps(x.dg.as_ptr().add(16 * g));
        for (i, (acc, acc_m)) in acc.iter_mut().zip(acc_m.iter_mut()).enumerate() {
            // SAFETY: row i's group g starts inside `rows`; a full group's 4·bs ≥ 64 bytes are all
            // inside the row, a short group is read only through byte masks of its own blocks.
            let p = base.add(i * rb + 4 * g * bs);
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * rb).cast());
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * rb + 64).cast());
            let (wq, win) = if nbk == 4 {
                let w = _mm512_castsi128_si512(_mm_loadu_si128(p.add(qs_at).cast()));
                let w = _mm512_inserti32x4::<1>(w, _mm_loadu_si128(p.add(bs + qs_at).cast()));
                let w = _mm512_inserti32x4::<2>(w, _mm_loadu_si128(p.add(2 * bs + qs_at).cast()));
                let w = _mm512_inserti32x4::<3>(w, _mm_loadu_si128(p.add(3 * bs + qs_at).cast()));
                (w, _mm512_loadu_si512(p.cast()))
            } else {
                let mut w = _mm512_setzero_si512();
                for b in 0..nbk {
                    // Block b's 16 bytes into lanes 4b..4b + 4.
                    let piece = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(b * bs + qs_at).cast()));
                    w = _mm512_mask_mov_epi32(w, 0xf << (4 * b), piece);
                }
                let bytes = nbk * bs;
                let mask: u64 = if bytes >= 64 { u64::MAX } else { (1u64 << bytes) - 1 };
                (w, _mm512_maskz_loadu_epi8(mask, p.cast()))
            };
            let lo = _mm512_and_si512(wq, m4);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(wq), m4);
            let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, xlo), hi, xhi);
            let dm = _mm512_permutexvar_epi16(idx, win);
            let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(dm));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), *acc);
            if Q41 {
                let mw = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(dm));
                *acc_m = _mm512_fmadd_ps(mw, _mm512_loadu_ps(x.dsg.as_ptr().add(16 * g)), *acc_m);
            }
        }
    }
    let mut sums = [_mm512_setzero_ps(); 4];
    for (s, (&a, &am)) in sums.iter_mut().zip(acc.iter().zip(&acc_m)) {
        *s = if Q41 { _mm512_add_ps(a, am) } else { a };
    }
    reduce4(sums)
}

/// `out[r] = row r · x` for Q8_0 rows (34-byte blocks).
pub(crate) fn gemv_q8_0_avx512(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(crate::KernelPath::Avx512.is_available(), "gemv_q8: AVX-512 VNNI is not available");
    let nb = x.k() / QA;
    assert!(rb == nb * 34 && w.len() == out.len() * rb, "gemv_q8: shapes");
    let k = x.k();
    assert!(x.acts.q.len() == k && x.neg128.len() == k / 4 && x.dl.len() == k / 4, "gemv_q8: activations");
    let kernels: [RowsKernel; 4] = [gemv_q8_0_rows::<1>, gemv_q8_0_rows::<2>, gemv_q8_0_rows::<3>, gemv_q8_0_rows::<4>];
    // SAFETY: AVX-512 F/BW/VL/VNNI are available (asserted above); every row holds `nb` blocks,
    // `x` the per-lane arrays of `nb` blocks (asserted above).
    unsafe { by_four_rows(w, rb, x, out, kernels) }
}

/// The hot loop of Q8_0: `R` consecutive rows against every pair of blocks; an odd last block
/// goes through lane masks.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `rows` holds `R` rows of `nb` 34-byte blocks; `x`'s codes and per-lane
/// arrays hold `nb` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c,fma")]
unsafe fn gemv_q8_0_rows<const R: usize>(rows: &[u8], rb: usize, x: &VecQ8) -> [f32; 4] {
    let nb = x.k() / QA;
    let flip = _mm512_set1_epi8(-128);
    // Word 0: block a's d; word 17 (byte 34): block b's d.
    let idx = _mm512_set_epi16(
        17, 17, 17, 17, 17, 17, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0, 17, 17, 17, 17, 17, 17, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0,
    );
    let mut acc = [_mm512_setzero_ps(); R];
    let base = rows.as_ptr();
    for pr in 0..nb.div_ceil(2) {
        let pair = pr * 2 + 1 < nb;
        let lanes: __mmask16 = if pair { 0xffff } else { 0x00ff };
        // SAFETY: lanes 16pr.. of the per-lane arrays and codes 64pr.. belong to blocks 2pr and,
        // when `pair`, 2pr + 1: the masks keep an odd last block's reads inside the arrays.
        let xq = _mm512_maskz_loadu_epi32(lanes, x.acts.q.as_ptr().add(64 * pr).cast());
        let init = _mm512_maskz_loadu_epi32(lanes, x.neg128.as_ptr().add(16 * pr));
        let dx = _mm512_maskz_loadu_ps(lanes, x.dl.as_ptr().add(16 * pr));
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row i's blocks 2pr (and 2pr + 1 when `pair`) lie inside `rows`; a pair's
            // first 64 bytes are inside it, a lone block is read through byte masks.
            let p = base.add(i * rb + 2 * pr * 34);
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * rb).cast());
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * rb + 64).cast());
            let (wa, wb, win) = if pair {
                (
                    _mm256_loadu_si256(p.add(2).cast()),
                    _mm256_loadu_si256(p.add(36).cast()),
                    _mm512_loadu_si512(p.cast()),
                )
            } else {
                (
                    _mm256_loadu_si256(p.add(2).cast()),
                    _mm256_setzero_si256(),
                    _mm512_maskz_loadu_epi8((1u64 << 34) - 1, p.cast()),
                )
            };
            let u = _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(wa), wb), flip);
            let dot = _mm512_dpbusd_epi32(init, u, xq);
            let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, win)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), *acc);
        }
    }
    let mut sums = [_mm512_setzero_ps(); 4];
    sums[..R].copy_from_slice(&acc);
    reduce4(sums)
}

/// The horizontal sums of four vectors.
///
/// # Safety
/// AVX-512 F, AVX.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn reduce4(v: [__m512; 4]) -> [f32; 4] {
    let half = |a: __m512| {
        let lo = _mm512_castps512_ps256(a);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
        _mm256_add_ps(lo, hi)
    };
    let (h0, h1, h2, h3) = (half(v[0]), half(v[1]), half(v[2]), half(v[3]));
    let s = _mm256_hadd_ps(_mm256_hadd_ps(h0, h1), _mm256_hadd_ps(h2, h3));
    let r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let mut out = [0.0f32; 4];
    // SAFETY: `out` is 4 writable floats.
    _mm_storeu_ps(out.as_mut_ptr(), r);
    out
}

/// Most tokens per pass of the several-token kernels: each weight group is decoded once for
/// them (two rows at a time for up to 4 tokens, one row for 5 to 8: at most 16 accumulators).
const MANY_T: usize = 8;

/// `outs[t][r] = row r · xs[t]` for Q4_0 / Q4_1 rows and several tokens: each row's weights are
/// decoded once per [`MANY_T`] tokens instead of once per token. Every (row, token) goes through
/// exactly the operations of [`gemv_q4_avx512`] in the same order, so each `outs[t]` has the bits
/// of a `gemv_q4_avx512` of `xs[t]` alone.
pub(crate) fn gemv_many_q4_avx512<const Q41: bool>(w: &[u8], rb: usize, xs: &[&VecQ8], outs: &mut [&mut [f32]]) {
    assert!(crate::KernelPath::Avx512.is_available(), "gemv_q8: AVX-512 VNNI is not available");
    let bs = if Q41 { 20 } else { 18 };
    let nb = xs.first().map_or(0, |x| x.k()) / QA;
    let ng = nb.div_ceil(4);
    let n_rows = w.len().checked_div(rb).unwrap_or(0);
    assert!(rb == nb * bs && w.len() == n_rows * rb && xs.len() == outs.len(), "gemv_q8: shapes");
    for (x, o) in xs.iter().zip(outs.iter()) {
        assert!(x.k() == nb * QA && o.len() == n_rows, "gemv_q8: shapes");
        assert!(x.lo4.len() == ng * 64 && x.hi4.len() == ng * 64 && x.n8g.len() == ng * 16, "gemv_q8: activations");
        assert!(x.dg.len() == ng * 16 && x.dsg.len() == ng * 16, "gemv_q8: activations");
    }
    let mut r = 0;
    while r < n_rows {
        let nr = (n_rows - r).min(if xs.len() > 4 { 1 } else { 2 });
        let rows = &w[r * rb..(r + nr) * rb];
        let mut t = 0;
        while t < xs.len() {
            let nt = (xs.len() - t).min(MANY_T);
            let x = &xs[t..t + nt];
            // Two rows only with at most 4 tokens (`nr` above).
            debug_assert!(nr == 1 || nt <= 4);
            // SAFETY: AVX-512 F/BW/VL/VNNI are available (asserted above); `rows` holds `nr` rows
            // of `nb` blocks, each token the grouped activations of `ng` groups (asserted above).
            let res = unsafe {
                match (nr, nt) {
                    (1, 1) => gemv_q4_rows_many::<1, 1, Q41>(rows, rb, x),
                    (1, 2) => gemv_q4_rows_many::<1, 2, Q41>(rows, rb, x),
                    (1, 3) => gemv_q4_rows_many::<1, 3, Q41>(rows, rb, x),
                    (1, 4) => gemv_q4_rows_many::<1, 4, Q41>(rows, rb, x),
                    (1, 5) => gemv_q4_rows_many::<1, 5, Q41>(rows, rb, x),
                    (1, 6) => gemv_q4_rows_many::<1, 6, Q41>(rows, rb, x),
                    (1, 7) => gemv_q4_rows_many::<1, 7, Q41>(rows, rb, x),
                    (1, 8) => gemv_q4_rows_many::<1, 8, Q41>(rows, rb, x),
                    (1, _) => unreachable!("at most MANY_T tokens per pass"),
                    (_, 1) => gemv_q4_rows_many::<2, 1, Q41>(rows, rb, x),
                    (_, 2) => gemv_q4_rows_many::<2, 2, Q41>(rows, rb, x),
                    (_, 3) => gemv_q4_rows_many::<2, 3, Q41>(rows, rb, x),
                    (_, _) => gemv_q4_rows_many::<2, 4, Q41>(rows, rb, x),
                }
            };
            for (o, v) in outs[t..t + nt].iter_mut().zip(&res) {
                // One or two floats, stored one by one: a copy of a run-time length (a slice
                // copy, or a loop LLVM turns into one) calls memmove (3.5 % of 4-sequence decode).
                o[r] = v[0];
                if nr == 2 {
                    o[r + 1] = v[1];
                }
            }
            t += nt;
        }
        r += nr;
    }
}

/// [`gemv_q4_rows`] for `R` rows against `T` tokens (`xs[..T]`) at once: the weights of each
/// row and group are loaded and unpacked once, then each token's accumulators take exactly the
/// steps `gemv_q4_rows` gives them. Result `[t][i]`: row `i` against token `t`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `rows` holds `R` rows of `nb` blocks; `xs` holds `T` tokens, each with
/// grouped arrays of `nb.div_ceil(4)` groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c,fma")]
unsafe fn gemv_q4_rows_many<const R: usize, const T: usize, const Q41: bool>(
    rows: &[u8],
    rb: usize,
    xs: &[&VecQ8],
) -> [[f32; 4]; MANY_T] {
    let nb = xs[0].k() / QA;
    let bs = if Q41 { 20 } else { 18 };
    let qs_at = if Q41 { 4 } else { 2 };
    let m4 = _mm512_set1_epi8(0x0f);
    let h = (bs / 2) as i16;
    // The permutation of `gemv_q4_rows`: per-lane scale words (low half), offsets (high half).
    let idx = _mm512_set_epi16(
        3 * h + 1,
        3 * h + 1,
        3 * h + 1,
        3 * h + 1,
        2 * h + 1,
        2 * h + 1,
        2 * h + 1,
        2 * h + 1,
        h + 1,
        h + 1,
        h + 1,
        h + 1,
        1,
        1,
        1,
        1,
        3 * h,
        3 * h,
        3 * h,
        3 * h,
        2 * h,
        2 * h,
        2 * h,
        2 * h,
        h,
        h,
        h,
        h,
        0,
        0,
        0,
        0,
    );
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut acc_m = [[_mm512_setzero_ps(); T]; R];
    let base = rows.as_ptr();
    // Each token's arrays, read once here: inside the loop every `x.lo4.as_ptr()` is a load
    // through `xs[t]` that LLVM does not hoist (a third of the loop's loads at 4 tokens).
    let lo4: [*const i8; T] = core::array::from_fn(|t| xs[t].lo4.as_ptr());
    let hi4: [*const i8; T] = core::array::from_fn(|t| xs[t].hi4.as_ptr());
    let n8g: [*const i32; T] = core::array::from_fn(|t| xs[t].n8g.as_ptr());
    let dg: [*const f32; T] = core::array::from_fn(|t| xs[t].dg.as_ptr());
    let dsg: [*const f32; T] = core::array::from_fn(|t| xs[t].dsg.as_ptr());
    for g in 0..nb.div_ceil(4) {
        let nbk = (nb - 4 * g).min(4);
        for i in 0..R {
            // SAFETY: as in `gemv_q4_rows`: row i's group g starts inside `rows`; a full group's
            // 4·bs ≥ 64 bytes are inside the row, a short group is read through byte masks.
            let p = base.add(i * rb + 4 * g * bs);
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * rb).cast());
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * rb + 64).cast());
            let (wq, win) = if nbk == 4 {
                let w = _mm512_castsi128_si512(_mm_loadu_si128(p.add(qs_at).cast()));
                let w = _mm512_inserti32x4::<1>(w, _mm_loadu_si128(p.add(bs + qs_at).cast()));
                let w = _mm512_inserti32x4::<2>(w, _mm_loadu_si128(p.add(2 * bs + qs_at).cast()));
                let w = _mm512_inserti32x4::<3>(w, _mm_loadu_si128(p.add(3 * bs + qs_at).cast()));
                (w, _mm512_loadu_si512(p.cast()))
            } else {
                let mut w = _mm512_setzero_si512();
                for b in 0..nbk {
                    let piece = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(b * bs + qs_at).cast()));
                    w = _mm512_mask_mov_epi32(w, 0xf << (4 * b), piece);
                }
                let bytes = nbk * bs;
                let mask: u64 = if bytes >= 64 { u64::MAX } else { (1u64 << bytes) - 1 };
                (w, _mm512_maskz_loadu_epi8(mask, p.cast()))
            };
            let lo = _mm512_and_si512(wq, m4);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(wq), m4);
            let dm = _mm512_permutexvar_epi16(idx, win);
            let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(dm));
            let mw = if Q41 { _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(dm)) } else { _mm512_setzero_ps() };
            for t in 0..T {
                // SAFETY: group g's 16 lanes / 64 codes lie inside each token's grouped arrays.
                let xlo = _mm512_loadu_si512(lo4[t].add(64 * g).cast());
                let xhi = _mm512_loadu_si512(hi4[t].add(64 * g).cast());
                let init = if Q41 { _mm512_setzero_si512() } else { _mm512_loadu_si512(n8g[t].add(16 * g).cast()) };
                let dx = _mm512_loadu_ps(dg[t].add(16 * g));
                let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, xlo), hi, xhi);
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), acc[i][t]);
                if Q41 {
                    acc_m[i][t] = _mm512_fmadd_ps(mw, _mm512_loadu_ps(dsg[t].add(16 * g)), acc_m[i][t]);
                }
            }
        }
    }
    let mut out = [[0.0f32; 4]; MANY_T];
    for (t, o) in out.iter_mut().enumerate().take(T) {
        let mut sums = [_mm512_setzero_ps(); 4];
        for (i, s) in sums.iter_mut().enumerate().take(R) {
            *s = if Q41 { _mm512_add_ps(acc[i][t], acc_m[i][t]) } else { acc[i][t] };
        }
        *o = reduce4(sums);
    }
    out
}

/// `outs[t][r] = row r · xs[t]` for Q8_0 rows and several tokens, each row's weights loaded and
/// flipped once per [`MANY_T`] tokens; every (row, token) takes exactly the steps of
/// [`gemv_q8_0_avx512`], so each `outs[t]` has the bits of that kernel on `xs[t]` alone.
pub(crate) fn gemv_many_q8_0_avx512(w: &[u8], rb: usize, xs: &[&VecQ8], outs: &mut [&mut [f32]]) {
    assert!(crate::KernelPath::Avx512.is_available(), "gemv_q8: AVX-512 VNNI is not available");
    let k = xs.first().map_or(0, |x| x.k());
    let nb = k / QA;
    let n_rows = w.len().checked_div(rb).unwrap_or(0);
    assert!(rb == nb * 34 && w.len() == n_rows * rb && xs.len() == outs.len(), "gemv_q8: shapes");
    for (x, o) in xs.iter().zip(outs.iter()) {
        assert!(x.k() == k && o.len() == n_rows, "gemv_q8: shapes");
        assert!(x.acts.q.len() == k && x.neg128.len() == k / 4 && x.dl.len() == k / 4, "gemv_q8: activations");
    }
    let mut r = 0;
    while r < n_rows {
        let nr = (n_rows - r).min(if xs.len() > 4 { 1 } else { 2 });
        let rows = &w[r * rb..(r + nr) * rb];
        let mut t = 0;
        while t < xs.len() {
            let nt = (xs.len() - t).min(MANY_T);
            let x = &xs[t..t + nt];
            // Two rows only with at most 4 tokens (`nr` above).
            debug_assert!(nr == 1 || nt <= 4);
            // SAFETY: AVX-512 F/BW/VL/VNNI are available (asserted above); `rows` holds `nr` rows
            // of `nb` blocks, each token the per-lane arrays of `nb` blocks (asserted above).
            let res = unsafe {
                match (nr, nt) {
                    (1, 1) => gemv_q8_0_rows_many::<1, 1>(rows, rb, x),
                    (1, 2) => gemv_q8_0_rows_many::<1, 2>(rows, rb, x),
                    (1, 3) => gemv_q8_0_rows_many::<1, 3>(rows, rb, x),
                    (1, 4) => gemv_q8_0_rows_many::<1, 4>(rows, rb, x),
                    (1, 5) => gemv_q8_0_rows_many::<1, 5>(rows, rb, x),
                    (1, 6) => gemv_q8_0_rows_many::<1, 6>(rows, rb, x),
                    (1, 7) => gemv_q8_0_rows_many::<1, 7>(rows, rb, x),
                    (1, 8) => gemv_q8_0_rows_many::<1, 8>(rows, rb, x),
                    (1, _) => unreachable!("at most MANY_T tokens per pass"),
                    (_, 1) => gemv_q8_0_rows_many::<2, 1>(rows, rb, x),
                    (_, 2) => gemv_q8_0_rows_many::<2, 2>(rows, rb, x),
                    (_, 3) => gemv_q8_0_rows_many::<2, 3>(rows, rb, x),
                    (_, _) => gemv_q8_0_rows_many::<2, 4>(rows, rb, x),
                }
            };
            for (o, v) in outs[t..t + nt].iter_mut().zip(&res) {
                // One or two floats, stored one by one: a copy of a run-time length (a slice
                // copy, or a loop LLVM turns into one) calls memmove (3.5 % of 4-sequence decode).
                o[r] = v[0];
                if nr == 2 {
                    o[r + 1] = v[1];
                }
            }
            t += nt;
        }
        r += nr;
    }
}

/// [`gemv_q8_0_rows`] for `R` rows against `T` tokens (`xs[..T]`): each row's pair of blocks is
/// loaded, flipped and its scales converted once, then each token's accumulator takes exactly
/// the steps `gemv_q8_0_rows` gives it. Result `[t][i]`: row `i` against token `t`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `rows` holds `R` rows of `nb` 34-byte blocks; `xs` holds `T` tokens,
/// each with codes and per-lane arrays of `nb` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c,fma")]
unsafe fn gemv_q8_0_rows_many<const R: usize, const T: usize>(
    rows: &[u8],
    rb: usize,
    xs: &[&VecQ8],
) -> [[f32; 4]; MANY_T] {
    let nb = xs[0].k() / QA;
    let flip = _mm512_set1_epi8(-128);
    let idx = _mm512_set_epi16(
        17, 17, 17, 17, 17, 17, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0, 17, 17, 17, 17, 17, 17, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0,
    );
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let base = rows.as_ptr();
    // Each token's arrays, read once (as in `gemv_q4_rows_many`).
    let q: [*const i8; T] = core::array::from_fn(|t| xs[t].acts.q.as_ptr());
    let neg128: [*const i32; T] = core::array::from_fn(|t| xs[t].neg128.as_ptr());
    let dl: [*const f32; T] = core::array::from_fn(|t| xs[t].dl.as_ptr());
    for pr in 0..nb.div_ceil(2) {
        let pair = pr * 2 + 1 < nb;
        let lanes: __mmask16 = if pair { 0xffff } else { 0x00ff };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as in `gemv_q8_0_rows`: row i's blocks 2pr (and 2pr + 1 when `pair`) lie
            // inside `rows`; a pair's first 64 bytes are inside it, a lone block is read masked.
            let p = base.add(i * rb + 2 * pr * 34);
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * rb).cast());
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * rb + 64).cast());
            let (wa, wb, win) = if pair {
                (
                    _mm256_loadu_si256(p.add(2).cast()),
                    _mm256_loadu_si256(p.add(36).cast()),
                    _mm512_loadu_si512(p.cast()),
                )
            } else {
                (
                    _mm256_loadu_si256(p.add(2).cast()),
                    _mm256_setzero_si256(),
                    _mm512_maskz_loadu_epi8((1u64 << 34) - 1, p.cast()),
                )
            };
            let u = _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(wa), wb), flip);
            let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, win)));
            for t in 0..T {
                // SAFETY: lanes 16pr.. and codes 64pr.. of each token belong to blocks 2pr (and
                // 2pr + 1 when `pair`); the masks keep an odd last block's reads inside.
                let xq = _mm512_maskz_loadu_epi32(lanes, q[t].add(64 * pr).cast());
                let init = _mm512_maskz_loadu_epi32(lanes, neg128[t].add(16 * pr));
                let dx = _mm512_maskz_loadu_ps(lanes, dl[t].add(16 * pr));
                let dot = _mm512_dpbusd_epi32(init, u, xq);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), acc[t]);
            }
        }
    }
    let mut out = [[0.0f32; 4]; MANY_T];
    for (t, o) in out.iter_mut().enumerate().take(T) {
        let mut sums = [_mm512_setzero_ps(); 4];
        for (i, s) in sums.iter_mut().enumerate().take(R) {
            *s = acc[i][t];
        }
        *o = reduce4(sums);
    }
    out
}
