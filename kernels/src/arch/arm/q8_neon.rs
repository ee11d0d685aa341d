//! AArch64 kernels for [`gemm_q8`](crate::gemm_q8) (prefill) and [`gemv_q8`](crate::gemv_q8)
//! (decode): plain NEON, NEON + dotprod (`sdot`) and NEON + i8mm (`usmmla`).
//!
//! The gemm reads the x86 tile layout as it is: the 16 bytes at `(c / 4) * 64 + 16 v` of
//! [`PackedTile::u`] hold columns `c..c + 4` of rows `4v..4v + 4`, i.e. one i32 lane per row
//! of 4 consecutive codes, which is what a by-element `sdot` consumes.
//!
//! * `sdot` and `smull` are signed × signed, and the codes `u` are unsigned (0..=255): the
//!   kernels use `u - 128` (an `eor` with 0x80, exact in i8) and start each group's
//!   accumulator at `128 · Σ q`, so the integer sum stays exactly `Σ u q`.
//! * Plain NEON ([`gemm_q8_16x2_neon`]): `smull` + `smlal` of two 4-column chunks (each i16
//!   lane sums two products, `|2 · 128 · 127| < 2^15`), folded into i32 by `sadalp`.
//! * dotprod ([`gemm_q8_16x4_sdot`]): one `sdot Vd.4s, Vn.16b, Vm.4b[i]` per 4 rows × 4
//!   columns × 1 token, the token's 4 codes taken from a lane of a 16-code vector.
//! * i8mm ([`gemm_q8_16x4_i8mm`]): `usmmla` multiplies a 2×8 unsigned matrix (2 rows × 8
//!   columns) by an 8×2 signed one (8 columns × 2 tokens) into a 2×2 i32 block. The operand
//!   of rows `r, r + 1` is one `zip1`/`zip2` (32-bit lanes) of two adjacent 4-column chunks;
//!   no bias is needed.
//!
//! The decode gemv ([`gemv_q8`]) works per weight row on the blocks as stored (Q4_0, Q4_1,
//! Q8_0): nibbles split with `and`/`ushr`, Q4_0's `- 8` applied in i8, and the 32-code dot as
//! `smull`/`smlal2`/`sadalp` or two `sdot`s. The i8mm path uses the `sdot` one (a single
//! token has no second column for `usmmla`).
//!
//! `sdot`, `usmmla` and the f16 → f32 `fcvt` are emitted with `asm!`: their intrinsics are
//! unstable at the crate's MSRV (as in `simd/neon.rs`).

use core::arch::aarch64::*;
use core::arch::asm;

use crate::gemm_q8::{ActsQ8, PackedTile, VecQ8, GEMM_Q8_ROWS, QA};
use crate::{GgmlType, KernelPath};

/// Tokens per step of the widest gemm kernels (`sdot`, `usmmla`).
const NT: usize = 4;

// ----- gemm -------------------------------------------------------------------------------

/// Rows `0..nr` of `tile` against every token `t` of `acts`, into `out[t][r0..r0 + nr]`, with
/// the kernels of `path` (`Neon`, `NeonDotprod` or `NeonI8mm`).
pub(crate) fn gemm_q8_16xn(
    path: KernelPath,
    tile: &PackedTile,
    acts: &ActsQ8,
    r0: usize,
    nr: usize,
    out: &mut [&mut [f32]],
) {
    assert!(path.is_available(), "gemm_q8: kernel path {path} is not available here");
    assert!(
        matches!(path, KernelPath::Neon | KernelPath::NeonDotprod | KernelPath::NeonI8mm),
        "gemm_q8: {path} is not a NEON path"
    );
    let (k, g, n_tok) = (tile.k, tile.g, acts.n_tok);
    assert_eq!(acts.k, k, "gemm_q8: activation rows of {} vs weight rows of {k}", acts.k);
    assert!(k.is_multiple_of(QA) && (g == 16 || g == 32), "gemm_q8: packed tile shape");
    assert_eq!(tile.u.len(), k * GEMM_Q8_ROWS, "gemm_q8: packed tile shape");
    assert!(tile.s.len() == k / g * GEMM_Q8_ROWS && tile.m.len() == tile.s.len(), "gemm_q8: packed tile shape");
    assert!(
        acts.q.len() == n_tok * k && acts.d.len() == n_tok * (k / QA) && acts.ds(g).len() == n_tok * (k / g),
        "gemm_q8: activation shape"
    );
    assert!(out.len() == n_tok && nr <= GEMM_Q8_ROWS, "gemm_q8: output shape");
    let mut res = [[0.0f32; GEMM_Q8_ROWS]; NT];
    let mut t = 0;
    // Runs `$kernel::<$n, g>` on tokens `t..t + $n` (unsafe: see its `# Safety`), giving `$n`.
    macro_rules! by_group {
        ($kernel:ident::<$n:literal>) => {{
            if g == 32 {
                $kernel::<$n, 32>(tile, acts, t, &mut res)
            } else {
                $kernel::<$n, 16>(tile, acts, t, &mut res)
            }
            $n
        }};
    }
    while t < n_tok {
        let left = n_tok - t;
        // SAFETY: the path is available (asserted above), so the CPU has NEON, plus dotprod
        // for `NeonDotprod` and dotprod + i8mm for `NeonI8mm` (see `simd::available_mask`);
        // the shapes of `tile` and `acts` were checked above, and each kernel runs on tokens
        // `t..t + N` with `N ≤ left` and `N ≤ NT`.
        let nt = unsafe {
            match path {
                KernelPath::NeonI8mm if left >= 4 => by_group!(gemm_q8_16x4_i8mm::<4>),
                KernelPath::NeonI8mm if left >= 2 => by_group!(gemm_q8_16x4_i8mm::<2>),
                KernelPath::NeonDotprod if left >= 4 => by_group!(gemm_q8_16x4_sdot::<4>),
                KernelPath::NeonI8mm | KernelPath::NeonDotprod => by_group!(gemm_q8_16x4_sdot::<1>),
                _ if left >= 2 => by_group!(gemm_q8_16x2_neon::<2>),
                _ => by_group!(gemm_q8_16x2_neon::<1>),
            }
        };
        for (o, col) in out[t..t + nt].iter_mut().zip(&res) {
            o[r0..r0 + nr].copy_from_slice(&col[..nr]);
        }
        t += nt;
    }
}

/// `Σ` of the `G` codes at `p`.
///
/// # Safety
/// `G` (16 or 32) readable bytes at `p`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn code_sum<const G: usize>(p: *const i8) -> i32 {
    let mut sum = 0i32;
    for h in 0..G / 16 {
        // SAFETY: bytes 16h..16h + 16 < G lie at `p` (caller contract).
        sum += vaddlvq_s8(vld1q_s8(p.add(16 * h))) as i32;
    }
    sum
}

/// Four f32 from the start of `a` (panics if shorter).
#[inline]
#[target_feature(enable = "neon")]
fn ld4(a: &[f32]) -> float32x4_t {
    assert!(a.len() >= 4, "gemm_q8: scale vector out of range");
    // SAFETY: `a` holds at least 4 f32s (asserted above).
    unsafe { vld1q_f32(a.as_ptr()) }
}

/// The f32 scaling of group `j` for kernels with rows in lanes (vector `v`: rows `4v..4v + 4`):
/// `facc[i][v] += dot · (s · dx) + m · (dx Σq)` for tokens `t0 + i`.
#[inline]
#[target_feature(enable = "neon")]
fn scale_rows<const N: usize, const G: usize>(
    facc: &mut [[float32x4_t; 4]; N],
    iacc: &[[int32x4_t; 4]; N],
    tile: &PackedTile,
    acts: &ActsQ8,
    t0: usize,
    j: usize,
) {
    let k = tile.k;
    let ds = acts.ds(G);
    let at = j * GEMM_Q8_ROWS;
    let sv = [0, 1, 2, 3].map(|v| ld4(&tile.s[at + 4 * v..]));
    let mv = [0, 1, 2, 3].map(|v| ld4(&tile.m[at + 4 * v..]));
    for (i, (f, a)) in facc.iter_mut().zip(iacc).enumerate() {
        let dx = acts.d[(t0 + i) * (k / QA) + j * G / QA];
        let dsx = ds[(t0 + i) * (k / G) + j];
        for v in 0..4 {
            let g = vfmaq_f32(vmulq_n_f32(mv[v], dsx), vcvtq_f32_s32(a[v]), vmulq_n_f32(sv[v], dx));
            f[v] = vaddq_f32(f[v], g);
        }
    }
}

/// Stores `facc` (rows in lanes) into `res[i][..]`.
#[inline]
#[target_feature(enable = "neon")]
fn store_rows<const N: usize>(facc: &[[float32x4_t; 4]; N], res: &mut [[f32; GEMM_Q8_ROWS]; NT]) {
    for (r, f) in res.iter_mut().zip(facc) {
        for (v, &fv) in f.iter().enumerate() {
            let dst: &mut [f32] = &mut r[4 * v..4 * v + 4];
            // SAFETY: `dst` is 4 writable f32s.
            unsafe { vst1q_f32(dst.as_mut_ptr(), fv) }
        }
    }
}

/// Plain NEON: 16 rows × `N` (1 or 2) tokens `t0..t0 + N`, scale groups of `G` elements,
/// results into `res[token][row]`.
///
/// # Safety
/// The CPU must support NEON; `tile` holds `k` columns (a multiple of 32) in groups of `G`
/// (all of `tile.u`, `tile.s`, `tile.m` sized for that), `acts` rows of `k` with tokens
/// `t0..t0 + N`; `N ≤ NT`.
#[target_feature(enable = "neon")]
unsafe fn gemm_q8_16x2_neon<const N: usize, const G: usize>(
    tile: &PackedTile,
    acts: &ActsQ8,
    t0: usize,
    res: &mut [[f32; GEMM_Q8_ROWS]; NT],
) {
    let k = tile.k;
    let u = tile.u.as_ptr();
    // SAFETY: token t0 < n_tok starts at t0 * k inside `acts.q`.
    let q = acts.q.as_ptr().add(t0 * k);
    let flip = vdupq_n_u8(0x80);
    let mut facc = [[vdupq_n_f32(0.0); 4]; N];
    for j in 0..k / G {
        // Vector v of token i: `lo` rows 4v, 4v + 1 (two lanes each), `hi` rows 4v + 2, 4v + 3.
        let mut lo = [[vdupq_n_s32(0); 4]; N];
        let mut hi = [[vdupq_n_s32(0); 4]; N];
        // The hot loop: 16 columns (chunks of 4) per step, as two pairs of chunks.
        for h in 0..G / 16 {
            let c = j * G + 16 * h;
            // Each token's 4 codes of chunk l, repeated to 8 bytes (one copy per row).
            let mut xs = [[vdup_n_s8(0); 4]; N];
            for (i, x) in xs.iter_mut().enumerate() {
                // SAFETY: columns c..c + 16 ≤ k of token t0 + i lie inside `acts.q`.
                let v = vreinterpretq_s32_s8(vld1q_s8(q.add(i * k + c)));
                *x = [
                    vreinterpret_s8_s32(vdup_laneq_s32::<0>(v)),
                    vreinterpret_s8_s32(vdup_laneq_s32::<1>(v)),
                    vreinterpret_s8_s32(vdup_laneq_s32::<2>(v)),
                    vreinterpret_s8_s32(vdup_laneq_s32::<3>(v)),
                ];
            }
            // SAFETY: chunk c / 4 starts at c * 16 and chunks c / 4 .. c / 4 + 4 (256 bytes)
            // lie inside `tile.u` (k * 16 bytes), as c + 16 ≤ k.
            let w = u.add(c * 16);
            for v in 0..4 {
                for p in 0..2 {
                    // SAFETY: as above (chunks c / 4 + 2p and c / 4 + 2p + 1, vector v).
                    let w0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(w.add(128 * p + 16 * v)), flip));
                    let w1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(w.add(128 * p + 64 + 16 * v)), flip));
                    for (i, x) in xs.iter().enumerate() {
                        let (xa, xb) = (x[2 * p], x[2 * p + 1]);
                        let pl = vmlal_s8(vmull_s8(vget_low_s8(w0), xa), vget_low_s8(w1), xb);
                        let ph = vmlal_s8(vmull_s8(vget_high_s8(w0), xa), vget_high_s8(w1), xb);
                        lo[i][v] = vpadalq_s16(lo[i][v], pl);
                        hi[i][v] = vpadalq_s16(hi[i][v], ph);
                    }
                }
            }
        }
        // Pairwise: [row 4v, 4v + 1, 4v + 2, 4v + 3], plus the bias 128 Σq.
        let mut iacc = [[vdupq_n_s32(0); 4]; N];
        for (i, a) in iacc.iter_mut().enumerate() {
            // SAFETY: group j of token t0 + i (G codes) lies inside `acts.q`.
            let bias = vdupq_n_s32(128 * code_sum::<G>(q.add(i * k + j * G)));
            for v in 0..4 {
                a[v] = vaddq_s32(vpaddq_s32(lo[i][v], hi[i][v]), bias);
            }
        }
        scale_rows::<N, G>(&mut facc, &iacc, tile, acts, t0, j);
    }
    store_rows(&facc, res);
}

/// `acc[r] += Σ_{e<4} w[4r + e] · x[4L + e]` (SDOT Vd.4S, Vn.16B, Vm.4B[L]).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot_lane<const L: i32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SDOT is available (this function requires `dotprod`); the asm only reads and
    // writes the given vector registers.
    unsafe {
        asm!("sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{l}]", acc = inout(vreg) acc, w = in(vreg) w, x = in(vreg) x,
             l = const L, options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// One 4-column chunk (`w`: its 64 bytes, rows in lanes) against lane `L` of each token's
/// codes: 4 `sdot`s per token.
///
/// # Safety
/// NEON + dotprod; 64 readable bytes at `w`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot_chunk<const L: i32, const N: usize>(
    iacc: &mut [[int32x4_t; 4]; N],
    w: *const u8,
    x: &[int8x16_t; N],
    flip: uint8x16_t,
) {
    for v in 0..4 {
        // SAFETY: bytes 16v..16v + 16 < 64 at `w` (caller contract).
        let wv = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(w.add(16 * v)), flip));
        for (a, &xi) in iacc.iter_mut().zip(x) {
            a[v] = sdot_lane::<L>(a[v], wv, xi);
        }
    }
}

/// NEON + dotprod: 16 rows × `N` (1 or 4) tokens `t0..t0 + N`, scale groups of `G`
/// elements, results into `res[token][row]`.
///
/// # Safety
/// As [`gemm_q8_16x2_neon`], and the CPU must support dotprod.
#[target_feature(enable = "neon,dotprod")]
unsafe fn gemm_q8_16x4_sdot<const N: usize, const G: usize>(
    tile: &PackedTile,
    acts: &ActsQ8,
    t0: usize,
    res: &mut [[f32; GEMM_Q8_ROWS]; NT],
) {
    let k = tile.k;
    let u = tile.u.as_ptr();
    // SAFETY: token t0 < n_tok starts at t0 * k inside `acts.q`.
    let q = acts.q.as_ptr().add(t0 * k);
    let flip = vdupq_n_u8(0x80);
    let mut facc = [[vdupq_n_f32(0.0); 4]; N];
    for j in 0..k / G {
        // Σ u q = Σ (u - 128) q + 128 Σ q: the accumulators start at the second term.
        let mut iacc = [[vdupq_n_s32(0); 4]; N];
        for (i, a) in iacc.iter_mut().enumerate() {
            // SAFETY: group j of token t0 + i (G codes) lies inside `acts.q`.
            *a = [vdupq_n_s32(128 * code_sum::<G>(q.add(i * k + j * G))); 4];
        }
        // The hot loop: 16 columns (4 chunks, one lane of the token vectors each) per step.
        for h in 0..G / 16 {
            let c = j * G + 16 * h;
            let mut x = [vdupq_n_s8(0); N];
            for (i, xi) in x.iter_mut().enumerate() {
                // SAFETY: columns c..c + 16 ≤ k of token t0 + i lie inside `acts.q`.
                *xi = vld1q_s8(q.add(i * k + c));
            }
            // SAFETY: chunks c / 4 .. c / 4 + 4 (256 bytes from c * 16) lie inside `tile.u`
            // (k * 16 bytes), as c + 16 ≤ k.
            let w = u.add(c * 16);
            sdot_chunk::<0, N>(&mut iacc, w, &x, flip);
            sdot_chunk::<1, N>(&mut iacc, w.add(64), &x, flip);
            sdot_chunk::<2, N>(&mut iacc, w.add(128), &x, flip);
            sdot_chunk::<3, N>(&mut iacc, w.add(192), &x, flip);
        }
        scale_rows::<N, G>(&mut facc, &iacc, tile, acts, t0, j);
    }
    store_rows(&facc, res);
}

/// `acc += w · x` for the 2×8 unsigned matrix `w` (rows: bytes 0..8, 8..16) and the 8×2
/// signed matrix `x` (columns: bytes 0..8, 8..16): `acc = [w0·x0, w0·x1, w1·x0, w1·x1]`
/// (USMMLA Vd.4S, Vn.16B, Vm.16B).
#[inline]
#[target_feature(enable = "neon,i8mm")]
fn usmmla(acc: int32x4_t, w: uint8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: USMMLA is available (this function requires `i8mm`); the asm only reads and
    // writes the given vector registers.
    unsafe {
        asm!("usmmla {acc:v}.4s, {w:v}.16b, {x:v}.16b", acc = inout(vreg) acc, w = in(vreg) w, x = in(vreg) x,
             options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// NEON + i8mm: 16 rows × `N` (2 or 4) tokens `t0..t0 + N`, scale groups of `G` elements,
/// results into `res[token][row]`. Accumulator `[p][b]` is the 2×2 block of rows
/// `2b, 2b + 1` × tokens `t0 + 2p, t0 + 2p + 1`.
///
/// # Safety
/// As [`gemm_q8_16x2_neon`], with `N` even, and the CPU must support i8mm.
#[target_feature(enable = "neon,i8mm")]
unsafe fn gemm_q8_16x4_i8mm<const N: usize, const G: usize>(
    tile: &PackedTile,
    acts: &ActsQ8,
    t0: usize,
    res: &mut [[f32; GEMM_Q8_ROWS]; NT],
) {
    let (k, ds) = (tile.k, acts.ds(G));
    let u = tile.u.as_ptr();
    // SAFETY: token t0 < n_tok starts at t0 * k inside `acts.q`.
    let q = acts.q.as_ptr().add(t0 * k);
    let mut facc = [[vdupq_n_f32(0.0); 8]; NT / 2];
    for j in 0..k / G {
        let mut iacc = [[vdupq_n_s32(0); 8]; NT / 2];
        // The hot loop: 16 columns per step, as two 8-column halves e.
        for h in 0..G / 16 {
            let c = j * G + 16 * h;
            // Per token pair p and half e: [token 2p: 8 codes][token 2p + 1: 8 codes].
            let mut x = [[vdupq_n_s8(0); 2]; NT / 2];
            for (p, xp) in x.iter_mut().enumerate().take(N / 2) {
                // SAFETY: columns c..c + 16 ≤ k of tokens t0 + 2p, t0 + 2p + 1 lie inside `acts.q`.
                let a = vreinterpretq_s64_s8(vld1q_s8(q.add(2 * p * k + c)));
                let b = vreinterpretq_s64_s8(vld1q_s8(q.add((2 * p + 1) * k + c)));
                *xp = [vreinterpretq_s8_s64(vzip1q_s64(a, b)), vreinterpretq_s8_s64(vzip2q_s64(a, b))];
            }
            for e in 0..2 {
                // SAFETY: chunks (c + 8e) / 4 and the next one (128 bytes from (c + 8e) * 16)
                // lie inside `tile.u` (k * 16 bytes), as c + 16 ≤ k.
                let w = u.add((c + 8 * e) * 16);
                for v in 0..4 {
                    // SAFETY: as above, vector v of each chunk.
                    let wa = vreinterpretq_u32_u8(vld1q_u8(w.add(16 * v)));
                    let wb = vreinterpretq_u32_u8(vld1q_u8(w.add(64 + 16 * v)));
                    // [row 4v: 8 codes][row 4v + 1: 8 codes], and rows 4v + 2, 4v + 3.
                    let w01 = vreinterpretq_u8_u32(vzip1q_u32(wa, wb));
                    let w23 = vreinterpretq_u8_u32(vzip2q_u32(wa, wb));
                    for (a, xp) in iacc.iter_mut().zip(&x).take(N / 2) {
                        a[2 * v] = usmmla(a[2 * v], w01, xp[e]);
                        a[2 * v + 1] = usmmla(a[2 * v + 1], w23, xp[e]);
                    }
                }
            }
        }
        // Scales as 2×2 blocks: [s_r, s_r, s_r+1, s_r+1] × [dx_t, dx_t+1, dx_t, dx_t+1].
        let at = j * GEMM_Q8_ROWS;
        let (mut sv, mut mv) = ([vdupq_n_f32(0.0); 8], [vdupq_n_f32(0.0); 8]);
        for v in 0..4 {
            let (s, m) = (ld4(&tile.s[at + 4 * v..]), ld4(&tile.m[at + 4 * v..]));
            (sv[2 * v], sv[2 * v + 1]) = (vzip1q_f32(s, s), vzip2q_f32(s, s));
            (mv[2 * v], mv[2 * v + 1]) = (vzip1q_f32(m, m), vzip2q_f32(m, m));
        }
        for (p, (f, a)) in facc.iter_mut().zip(&iacc).enumerate().take(N / 2) {
            let (t, a_d) = (t0 + 2 * p, j * G / QA);
            let (d0, d1) = (acts.d[t * (k / QA) + a_d], acts.d[(t + 1) * (k / QA) + a_d]);
            let (s0, s1) = (ds[t * (k / G) + j], ds[(t + 1) * (k / G) + j]);
            let dx = ld4(&[d0, d1, d0, d1]);
            let dsx = ld4(&[s0, s1, s0, s1]);
            for b in 0..8 {
                let g = vfmaq_f32(vmulq_f32(mv[b], dsx), vcvtq_f32_s32(a[b]), vmulq_f32(sv[b], dx));
                f[b] = vaddq_f32(f[b], g);
            }
        }
    }
    for (p, f) in facc.iter().enumerate().take(N / 2) {
        for v in 0..4 {
            // Lanes 0, 2 of the blocks of rows 4v.. are token 2p's; lanes 1, 3 token 2p + 1's.
            let (even, odd) = (vuzp1q_f32(f[2 * v], f[2 * v + 1]), vuzp2q_f32(f[2 * v], f[2 * v + 1]));
            let d0: &mut [f32] = &mut res[2 * p][4 * v..4 * v + 4];
            // SAFETY: `d0` is 4 writable f32s.
            vst1q_f32(d0.as_mut_ptr(), even);
            let d1: &mut [f32] = &mut res[2 * p + 1][4 * v..4 * v + 4];
            // SAFETY: `d1` is 4 writable f32s.
            vst1q_f32(d1.as_mut_ptr(), odd);
        }
    }
}

// ----- gemv -------------------------------------------------------------------------------

/// [`crate::gemv_q8`] on `path`: `out[r] = Σ_c w[r][c] x[c]` for the rows of `w` (`rb` bytes
/// each, Q4_0, Q4_1 or Q8_0), with `sdot` on `NeonDotprod` and `NeonI8mm`.
pub(crate) fn gemv_q8(path: KernelPath, ty: GgmlType, w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(path.is_available(), "gemv_q8: kernel path {path} is not available here");
    let nb = x.k() / QA;
    assert!(w.len() == out.len() * rb && rb == nb * ty.type_size(), "gemv_q8: shapes");
    assert!(x.acts.q.len() == x.k() && x.acts.d.len() == nb, "gemv_q8: VecQ8 shape");
    assert!(ty != GgmlType::Q4_1 || x.dsg.len() == nb.div_ceil(4) * 16, "gemv_q8: VecQ8 lanes");
    let sdot = matches!(path, KernelPath::NeonDotprod | KernelPath::NeonI8mm);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        // SAFETY: the path is available (asserted above): NEON, and dotprod when `sdot`
        // (`NeonDotprod`, `NeonI8mm`); `row` holds `nb` blocks of `ty` and `x` the codes and
        // scales of `nb` blocks (asserted above).
        *o = unsafe {
            match (ty, sdot) {
                (GgmlType::Q4_0, false) => gemv_row_neon::<0>(row, nb, x),
                (GgmlType::Q4_1, false) => gemv_row_neon::<1>(row, nb, x),
                (_, false) => gemv_row_neon::<2>(row, nb, x),
                (GgmlType::Q4_0, true) => gemv_row_sdot::<0>(row, nb, x),
                (GgmlType::Q4_1, true) => gemv_row_sdot::<1>(row, nb, x),
                (_, true) => gemv_row_sdot::<2>(row, nb, x),
            }
        };
    }
}

/// One row of type `T` (0: Q4_0, 1: Q4_1, 2: Q8_0), plain NEON.
///
/// # Safety
/// NEON; as [`gemv_row`].
#[target_feature(enable = "neon")]
unsafe fn gemv_row_neon<const T: u8>(row: &[u8], nb: usize, x: &VecQ8) -> f32 {
    gemv_row::<T, false>(row, nb, x)
}

/// One row of type `T` (0: Q4_0, 1: Q4_1, 2: Q8_0), NEON + dotprod.
///
/// # Safety
/// NEON + dotprod; as [`gemv_row`].
#[target_feature(enable = "neon,dotprod")]
unsafe fn gemv_row_sdot<const T: u8>(row: &[u8], nb: usize, x: &VecQ8) -> f32 {
    gemv_row::<T, true>(row, nb, x)
}

/// The hot loop of a row of type `T` (0: Q4_0, 1: Q4_1, 2: Q8_0) in the order of
/// [`crate::decode_order`]: 16 f32 lanes in four vectors. Q4: block `b` is vector `b % 4`,
/// lane `m` its elements `4m..4m + 4` and `16 + 4m..` (one `sdot` pair, or `smull`/`smlal` and
/// pairwise adds, exact in i32), scaled by `d_w · d_x`, plus Q4_1's `m_w · dsg` in `acc_m`;
/// Q8_0: block `b` is vectors `2(b % 2)` (elements 0..16) and `2(b % 2) + 1` (16..32), a lane
/// per 4 elements. Then [`reduce16`].
///
/// # Safety
/// NEON, and dotprod if `SDOT`; `row` holds `nb` blocks of type `T`, `x.acts` the codes
/// and scales of `nb` blocks, and (Q4_1) `x.dsg` its grouped lanes.
#[inline(always)]
unsafe fn gemv_row<const T: u8, const SDOT: bool>(row: &[u8], nb: usize, x: &VecQ8) -> f32 {
    let bs = [18, 20, 34][T as usize];
    let (m4, c8) = (vdupq_n_u8(0x0f), vdupq_n_s8(8));
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut acc_m = [vdupq_n_f32(0.0); 4];
    for b in 0..nb {
        // SAFETY: block b (bs bytes) lies inside `row`, its codes 32b..32b + 32 and scale b
        // inside `x.acts`, lanes 4b..4b + 4 inside `x.dsg` (caller contract).
        let blk = row.as_ptr().add(b * bs);
        let xq = x.acts.q.as_ptr().add(b * QA);
        let xv = [vld1q_s8(xq), vld1q_s8(xq.add(16))];
        let scale = f16_at(blk) * *x.acts.d.as_ptr().add(b);
        if T == 2 {
            let wv = [vld1q_s8(blk.add(2).cast()), vld1q_s8(blk.add(18).cast())];
            // SAFETY (for `dot16_sdot`): dotprod is available when `SDOT` (caller contract).
            let (d0, d1) = if SDOT {
                (dot16_sdot(wv[0], xv[0]), dot16_sdot(wv[1], xv[1]))
            } else {
                (dot16_smull(wv[0], xv[0]), dot16_smull(wv[1], xv[1]))
            };
            let v = 2 * (b % 2);
            acc[v] = vfmaq_n_f32(acc[v], vcvtq_f32_s32(d0), scale);
            acc[v + 1] = vfmaq_n_f32(acc[v + 1], vcvtq_f32_s32(d1), scale);
        } else {
            // Elements j (low nibbles) and j + 16 (high) of byte j.
            let qs = vld1q_u8(blk.add(bs - 16));
            let (lo, hi) = (vreinterpretq_s8_u8(vandq_u8(qs, m4)), vreinterpretq_s8_u8(vshrq_n_u8(qs, 4)));
            let wv = if T == 0 { [vsubq_s8(lo, c8), vsubq_s8(hi, c8)] } else { [lo, hi] };
            // SAFETY (for `dot32_sdot`): dotprod is available when `SDOT` (caller contract).
            let dot = if SDOT { dot32_sdot(wv, xv) } else { dot32_lanes_smull(wv, xv) };
            let v = b % 4;
            acc[v] = vfmaq_n_f32(acc[v], vcvtq_f32_s32(dot), scale);
            if T == 1 {
                let dsg = vld1q_f32(x.dsg.as_ptr().add(4 * b));
                acc_m[v] = vfmaq_n_f32(acc_m[v], dsg, f16_at(blk.add(2)));
            }
        }
    }
    if T == 1 {
        for (a, am) in acc.iter_mut().zip(acc_m) {
            *a = vaddq_f32(*a, am);
        }
    }
    reduce16(acc)
}

/// [`crate::decode_order::reduce16`] of lanes 0..16 held as four vectors of 4.
#[inline]
#[target_feature(enable = "neon")]
fn reduce16(v: [float32x4_t; 4]) -> f32 {
    // h_i = v_i + v_{i+8}: lanes 0..4 and 4..8.
    let (hl, hh) = (vaddq_f32(v[0], v[2]), vaddq_f32(v[1], v[3]));
    // [h0 + h1, h2 + h3, h4 + h5, h6 + h7], then [(h0 + h1) + (h2 + h3), (h4 + h5) + (h6 + h7), ..].
    let p = vpaddq_f32(hl, hh);
    let q = vpaddq_f32(p, p);
    vgetq_lane_f32::<0>(q) + vgetq_lane_f32::<1>(q)
}

/// Four i32 sums of the 16 products `w · x`, lane `m` bytes `4m..4m + 4` (`smull`/`smull2`,
/// `|128 · 127| < 2^15`, then pairwise adds).
#[inline]
#[target_feature(enable = "neon")]
fn dot16_smull(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    let hi = vmull_high_s8(w, x);
    vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
}

/// Four i32 sums of the 32 products `w · x`, lane `m` bytes `4m..4m + 4` of both halves (the
/// lanes of [`dot32_sdot`]; `smull`/`smlal`: two products per i16 lane, `|2 · 15 · 127| <
/// 2^15` for the 4-bit codes this serves, then pairwise adds).
#[inline]
#[target_feature(enable = "neon")]
fn dot32_lanes_smull(w: [int8x16_t; 2], x: [int8x16_t; 2]) -> int32x4_t {
    let lo = vmlal_s8(vmull_s8(vget_low_s8(w[0]), vget_low_s8(x[0])), vget_low_s8(w[1]), vget_low_s8(x[1]));
    let hi = vmlal_high_s8(vmull_high_s8(w[0], x[0]), w[1], x[1]);
    vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
}

/// Four i32 sums of the 16 products `w · x`, lane `m` bytes `4m..4m + 4` (one SDOT).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn dot16_sdot(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = vdupq_n_s32(0);
    // SAFETY: SDOT is available (this function requires `dotprod`); the asm only reads and
    // writes the given vector registers.
    unsafe {
        asm!("sdot {acc:v}.4s, {w:v}.16b, {x:v}.16b",
             acc = inout(vreg) acc, w = in(vreg) w, x = in(vreg) x,
             options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// Four i32 partial sums of the 32 products `w · x` (`smull`/`smlal2`: two products per i16
/// lane, `|2 · 128 · 127| < 2^15`; then `saddlp`/`sadalp`).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn dot32_smull(w: [int8x16_t; 2], x: [int8x16_t; 2]) -> int32x4_t {
    let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w[0]), vget_low_s8(x[0])), w[0], x[0]);
    let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w[1]), vget_low_s8(x[1])), w[1], x[1]);
    vpadalq_s16(vpaddlq_s16(p0), p1)
}

/// Four i32 partial sums of the 32 products `w · x` (two SDOT Vd.4S, Vn.16B, Vm.16B).
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) fn dot32_sdot(w: [int8x16_t; 2], x: [int8x16_t; 2]) -> int32x4_t {
    let mut acc = vdupq_n_s32(0);
    // SAFETY: SDOT is available (this function requires `dotprod`); the asm only reads and
    // writes the given vector registers.
    unsafe {
        asm!("sdot {acc:v}.4s, {w0:v}.16b, {x0:v}.16b",
             "sdot {acc:v}.4s, {w1:v}.16b, {x1:v}.16b",
             acc = inout(vreg) acc, w0 = in(vreg) w[0], x0 = in(vreg) x[0], w1 = in(vreg) w[1], x1 = in(vreg) x[1],
             options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// The f16 at `p` (2 bytes, any alignment) as f32 (`fcvt s, h`, base AArch64 FP).
///
/// # Safety
/// Two readable bytes at `p`.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: two readable bytes at `p` (caller contract).
    let h = p.cast::<i16>().read_unaligned();
    let r: f32;
    // SAFETY: FCVT (half to single precision) is part of the base AArch64 FP ISA; the asm
    // only reads and writes the given registers.
    asm!("fcvt {r:s}, {h:h}", r = lateout(vreg) r, h = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    r
}

#[cfg(test)]
mod tests {
    //! Every NEON path (and every token-step size of each) against the scalar reference; the
    //! generic tests in `gemm_q8.rs` also loop over these paths, with fewer token counts.
    use super::*;
    use crate::gemm_q8::tests::{check_gemm, check_gemv};
    use crate::test_util::rng;
    use alloc::vec;
    use alloc::vec::Vec;
    use rand::rngs::StdRng;
    use rand::Rng;

    const NEON_PATHS: [KernelPath; 3] = [KernelPath::Neon, KernelPath::NeonDotprod, KernelPath::NeonI8mm];

    fn neon_paths() -> impl Iterator<Item = KernelPath> {
        NEON_PATHS.into_iter().filter(|p| p.is_available())
    }

    /// Rows of `ty` quantized from random values (scales vary per row).
    fn quantized_rows(ty: GgmlType, n_rows: usize, k: usize, rng: &mut StdRng) -> Vec<u8> {
        let rb = ty.row_bytes(k).unwrap();
        let mut w = vec![0u8; n_rows * rb];
        for r in 0..n_rows {
            let row: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0f32..1.0) * (1 + r % 5) as f32).collect();
            crate::quantize_row(ty, &row, &mut w[r * rb..(r + 1) * rb]);
        }
        w
    }

    /// Rows of Q4_0, Q4_1 or Q8_0 with random code bytes: every code value, including Q8_0's
    /// -128 (the extremes of `u - 128` and of the i16 products).
    fn raw_rows(ty: GgmlType, n_rows: usize, k: usize, rng: &mut StdRng) -> Vec<u8> {
        let bs = ty.type_size();
        let mut w: Vec<u8> = (0..n_rows * k / 32 * bs).map(|_| rng.gen()).collect();
        for blk in w.chunks_exact_mut(bs) {
            let d = half::f16::from_f32(rng.gen_range(0.01f32..0.1)).to_le_bytes();
            let m = half::f16::from_f32(rng.gen_range(-0.5f32..0.5)).to_le_bytes();
            blk[..2].copy_from_slice(&d);
            if ty == GgmlType::Q4_1 {
                blk[2..4].copy_from_slice(&m);
            }
        }
        w
    }

    /// Activations whose scale differs per token (so a token mix-up shows).
    fn acts(n_tok: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n_tok * k).map(|i| rng.gen_range(-1.0f32..1.0) * (1 + i / k) as f32).collect()
    }

    #[test]
    fn neon_paths_nest() {
        assert!(KernelPath::Neon.is_available());
        if KernelPath::NeonI8mm.is_available() {
            assert!(KernelPath::NeonDotprod.is_available(), "neon-i8mm falls back to neon-dotprod kernels");
        }
        std::eprintln!("NEON gemm/gemv paths here: {:?}", neon_paths().collect::<Vec<_>>());
    }

    /// Every token count up to 9 covers each kernel's token steps (i8mm: 4, 2, then sdot's 1;
    /// dotprod: 4, 1; NEON: 2, 1) and both group sizes (Q2_K/Q3_K/Q6_K: 16, others 32).
    #[test]
    fn gemm_matches_the_scalar_reference_for_every_token_step() {
        let mut rng = rng(21);
        for path in neon_paths() {
            for ty in crate::kernel_table().iter().map(|r| r.ty) {
                for n_tok in 1..=9 {
                    let n_rows = if n_tok % 2 == 0 { 16 } else { 21 };
                    let w = quantized_rows(ty, n_rows, 256, &mut rng);
                    check_gemm(path, ty, &w, n_rows, &acts(n_tok, 256, &mut rng), 256);
                }
            }
        }
    }

    #[test]
    fn gemm_takes_every_code_value() {
        let mut rng = rng(22);
        for path in neon_paths() {
            for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
                for (n_rows, n_tok, k) in [(16, 7, 64), (9, 4, 96), (3, 2, 32)] {
                    let w = raw_rows(ty, n_rows, k, &mut rng);
                    check_gemm(path, ty, &w, n_rows, &acts(n_tok, k, &mut rng), k);
                }
            }
            // The largest integer sums: all codes 255 or 0 against |q| = 127 of one sign.
            let mut w = vec![0u8; 16 * 34 * 4];
            for (b, blk) in w.chunks_exact_mut(34).enumerate() {
                blk[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
                blk[2..].fill(if b % 3 == 0 { 0x80 } else { 0x7f });
            }
            let x: Vec<f32> = (0..5 * 128).map(|i| if (i / 128) % 2 == 0 { 1.0 } else { -1.0 }).collect();
            check_gemm(path, GgmlType::Q8_0, &w, 16, &x, 128);
        }
    }

    #[test]
    fn gemv_matches_the_scalar_reference_for_every_code_value() {
        let mut rng = rng(23);
        for path in neon_paths() {
            for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
                for (n_rows, k) in [(5, 32), (3, 96), (4, 512)] {
                    for w in [raw_rows(ty, n_rows, k, &mut rng), quantized_rows(ty, n_rows, k, &mut rng)] {
                        check_gemv(path, ty, &w, n_rows, &acts(1, k, &mut rng));
                    }
                }
            }
        }
    }
}
