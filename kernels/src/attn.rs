//! Decode attention of one query head over a KV cache, read in place (no widened copy of
//! the cache per token): scores `q·k_p`, the scaled softmax, then `Σ_p w_p v_p`. The cache is
//! f16 ([`attend_f16`]) or, for keys and values independently, Q8_0 / Q4_0 blocks
//! ([`attend`] over [`KvRows`]).

use half::f16;

use crate::KernelPath;

/// `out = Σ_p softmax(scale · q·k_p)_p · v_p` over the positions `p < scores.len()`: row `p`
/// of `k` / `v` starts at `p · stride`, and this head's `q.len()` values sit at `off` in it.
/// `scores` is scratch (it ends up holding the weights).
#[allow(clippy::too_many_arguments)]
pub fn attend_f16(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_f16_on(crate::kernel_path(), q, k, v, stride, off, scale, scores, out)
}

/// [`attend_f16`] on an explicit kernel path (a path without a kernel here uses the reference).
#[allow(clippy::too_many_arguments)]
pub fn attend_f16_on(
    path: KernelPath,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (hd, n) = (q.len(), scores.len());
    assert_eq!(out.len(), hd, "attend_f16: output of {} for a head of {hd}", out.len());
    assert!(off + hd <= stride, "attend_f16: head at {off}..{} past the row of {stride}", off + hd);
    if n == 0 {
        out.fill(0.0);
        return;
    }
    let need = (n - 1) * stride + off + hd;
    assert!(k.len() >= need && v.len() >= need, "attend_f16: {n} positions need {need} cached values");
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx512 && path.is_available() && hd.is_multiple_of(16) && hd <= 256 {
        return x86::attend_f16_avx512(q, k, v, stride, off, scale, scores, out);
    }
    let _ = path;
    attend_f16_scalar(q, k, v, stride, off, scale, scores, out)
}

/// The reference for [`attend_f16`].
#[allow(clippy::too_many_arguments)]
pub fn attend_f16_scalar(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot_f16(q, &k[p * stride + off..p * stride + off + hd]);
    }
    crate::vmath::softmax_scaled_on(KernelPath::Scalar, scores, scale);
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        for (o, &b) in out.iter_mut().zip(&v[p * stride + off..p * stride + off + hd]) {
            *o = crate::f32::fma(w, crate::f16::f16_to_f32(b), *o);
        }
    }
}

/// `q · k` in the order every path computes it (decode gives the same bits on every path): for
/// heads of a multiple of 16, 16 lanes (`lane i += q[16c + i] · k[16c + i]`, fused) reduced by
/// [`crate::decode_order::reduce16`]; other heads, one running sum.
fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
    if !q.len().is_multiple_of(16) {
        return q.iter().zip(k).map(|(&a, &b)| a * crate::f16::f16_to_f32(b)).sum();
    }
    let mut acc = [0.0f32; 16];
    for (qc, kc) in q.chunks_exact(16).zip(k.chunks_exact(16)) {
        for i in 0..16 {
            acc[i] = crate::f32::fma(qc[i], crate::f16::f16_to_f32(kc[i]), acc[i]);
        }
    }
    crate::decode_order::reduce16(&acc)
}

/// Bytes of one Q8_0 block (f16 scale + 32 × i8).
const Q8_0_BYTES: usize = 34;
/// Bytes of one Q4_0 block (f16 scale + 32 × 4 bits).
const Q4_0_BYTES: usize = 18;

/// One layer's cached rows as decode attention reads them: row `p` holds `stride` values (a
/// multiple of 32 for the block types, whose rows are whole GGUF blocks: `stride / 32` blocks of
/// ggml's `block_q8_0` / `block_q4_0` bytes).
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F16(&'a [f16]),
    Q8_0(&'a [u8]),
    Q4_0(&'a [u8]),
}

impl KvRows<'_> {
    /// Storage units (halves or bytes) that `n` values take; `None` when `n` is not a whole
    /// number of blocks.
    fn units(&self, n: usize) -> Option<usize> {
        match self {
            KvRows::F16(_) => Some(n),
            KvRows::Q8_0(_) => n.is_multiple_of(32).then_some(n / 32 * Q8_0_BYTES),
            KvRows::Q4_0(_) => n.is_multiple_of(32).then_some(n / 32 * Q4_0_BYTES),
        }
    }
    fn len(&self) -> usize {
        match self {
            KvRows::F16(s) => s.len(),
            KvRows::Q8_0(b) | KvRows::Q4_0(b) => b.len(),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            KvRows::F16(_) => "f16",
            KvRows::Q8_0(_) => "q8_0",
            KvRows::Q4_0(_) => "q4_0",
        }
    }
}

/// [`attend_f16`] over keys and values each in any [`KvRows`] type: `stride` and `off` count
/// values (for a block type both are multiples of 32, and so is `q.len()`).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_on(crate::kernel_path(), q, k, v, stride, off, scale, scores, out)
}

/// [`attend`] on an explicit kernel path (a path without a kernel here uses the reference).
#[allow(clippy::too_many_arguments)]
pub fn attend_on(
    path: KernelPath,
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    if let (KvRows::F16(k), KvRows::F16(v)) = (k, v) {
        return attend_f16_on(path, q, k, v, stride, off, scale, scores, out);
    }
    let (hd, n) = (q.len(), scores.len());
    assert_eq!(out.len(), hd, "attend: output of {} for a head of {hd}", out.len());
    assert!(off + hd <= stride, "attend: head at {off}..{} past the row of {stride}", off + hd);
    for r in [k, v] {
        let ok = [stride, off, hd].iter().all(|&x| r.units(x).is_some());
        assert!(ok, "attend: a {} cache needs rows, heads and offsets of whole 32-value blocks", r.name());
        if n > 0 {
            let need = r.units((n - 1) * stride + off + hd).unwrap_or(usize::MAX);
            assert!(r.len() >= need, "attend: {n} positions need {need} cached units of {}", r.name());
        }
    }
    if n == 0 {
        out.fill(0.0);
        return;
    }
    let simd = cfg!(target_arch = "x86_64") && path == KernelPath::Avx512 && path.is_available() && hd <= 256;
    scores_any(simd && hd.is_multiple_of(16), q, k, stride, off, scores);
    crate::vmath::softmax_scaled_on(if simd { path } else { KernelPath::Scalar }, scores, scale);
    accumulate_any(simd && hd.is_multiple_of(16), v, stride, off, scores, out);
}

/// [`attend`] for the `g` query heads that share one KV head (grouped-query attention): `q`
/// holds their `g · hd` values end to end, `scores` `g · n` (head j's `n` weights at `j · n`),
/// `out` their `g · hd` outputs. Each head's result has the bits of [`attend`] on that head
/// alone; an f16 cache on AVX-512 reads each cached row once for all `g` heads (and keeps the
/// sums in registers), the other caches and paths run [`attend`] head by head.
#[allow(clippy::too_many_arguments)]
pub fn attend_group(
    g: usize,
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_group_on(crate::kernel_path(), g, q, k, v, stride, off, scale, scores, out)
}

/// [`attend_group`] on an explicit kernel path.
#[allow(clippy::too_many_arguments)]
pub fn attend_group_on(
    path: KernelPath,
    g: usize,
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    assert!(g > 0 && q.len().is_multiple_of(g) && scores.len().is_multiple_of(g), "attend_group: {g} heads");
    assert_eq!(q.len(), out.len(), "attend_group: {} query values, {} outputs", q.len(), out.len());
    let (hd, n) = (q.len() / g, scores.len() / g);
    #[cfg(target_arch = "x86_64")]
    if let (KvRows::F16(kf), KvRows::F16(vf)) = (k, v) {
        let fits = n > 0 && off + hd <= stride && {
            let need = (n - 1) * stride + off + hd;
            kf.len() >= need && vf.len() >= need
        };
        if fits && path == KernelPath::Avx512 && path.is_available() && hd.is_multiple_of(16) && hd <= 256 {
            // SAFETY: AVX-512 is available; every row read (`p · stride + off .. + hd`, p < n)
            // lies inside `k` and `v` (checked above); `q`, `out` hold `g · hd`, `scores` `g · n`.
            unsafe { x86::attend_group_f16(g, hd, q, kf, vf, stride, off, scale, scores, out) };
            return;
        }
    }
    for j in 0..g {
        let (qh, oh) = (&q[j * hd..(j + 1) * hd], &mut out[j * hd..(j + 1) * hd]);
        attend_on(path, qh, k, v, stride, off, scale, &mut scores[j * n..(j + 1) * n], oh);
    }
}

/// The reference for [`attend`]: scalar code throughout.
#[allow(clippy::too_many_arguments)]
pub fn attend_scalar(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    stride: usize,
    off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_on(KernelPath::Scalar, q, k, v, stride, off, scale, scores, out)
}

/// `scores[p] = q · k_p` (shapes checked by [`attend_on`]).
fn scores_any(simd: bool, q: &[f32], k: KvRows<'_>, stride: usize, off: usize, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` holds only where AVX-512 is available and `hd` is a multiple of 16 up
        // to 256; `attend_on` checked that every row's head lies inside `k`.
        unsafe {
            match k {
                KvRows::F16(k) => x86::scores_impl(q, k, stride, off, scores),
                KvRows::Q8_0(b) => x86::scores_q8_0(q, b, stride / 32 * Q8_0_BYTES, off / 32 * Q8_0_BYTES, scores),
                KvRows::Q4_0(b) => x86::scores_q4_0(q, b, stride / 32 * Q4_0_BYTES, off / 32 * Q4_0_BYTES, scores),
            }
        }
        return;
    }
    let _ = simd;
    let hd = q.len();
    match k {
        KvRows::F16(k) => {
            for (p, s) in scores.iter_mut().enumerate() {
                *s = dot_f16(q, &k[p * stride + off..p * stride + off + hd]);
            }
        }
        KvRows::Q8_0(b) | KvRows::Q4_0(b) => {
            // The AVX-512 kernels' order: per block, lane i takes elements i and 16 + i,
            // `t = fma(q_hi, k_hi, q_lo · k_lo)`, then `lane = fma(d, t, lane)`.
            let bs = if matches!(k, KvRows::Q8_0(_)) { Q8_0_BYTES } else { Q4_0_BYTES };
            let mut vals = [0.0f32; 32];
            for (p, s) in scores.iter_mut().enumerate() {
                let at = (p * stride + off) / 32 * bs;
                let mut acc = [0.0f32; 16];
                for (qb, blk) in q.chunks_exact(32).zip(b[at..at + hd / 32 * bs].chunks_exact(bs)) {
                    let d = block_codes(blk, &mut vals);
                    for i in 0..16 {
                        let t = crate::f32::fma(qb[16 + i], vals[16 + i], qb[i] * vals[i]);
                        acc[i] = crate::f32::fma(d, t, acc[i]);
                    }
                }
                *s = crate::decode_order::reduce16(&acc);
            }
        }
    }
}

/// `out = Σ_p w_p v_p` (shapes checked by [`attend_on`]).
fn accumulate_any(simd: bool, v: KvRows<'_>, stride: usize, off: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `scores_any`, for `v` and `out`.
        unsafe {
            match v {
                KvRows::F16(v) => x86::weighted_sum_impl(v, stride, off, w, out),
                KvRows::Q8_0(b) => x86::sum_q8_0(b, stride / 32 * Q8_0_BYTES, off / 32 * Q8_0_BYTES, w, out),
                KvRows::Q4_0(b) => x86::sum_q4_0(b, stride / 32 * Q4_0_BYTES, off / 32 * Q4_0_BYTES, w, out),
            }
        }
        return;
    }
    let _ = simd;
    let hd = out.len();
    out.fill(0.0);
    match v {
        KvRows::F16(v) => {
            for (p, &wp) in w.iter().enumerate() {
                for (o, &b) in out.iter_mut().zip(&v[p * stride + off..p * stride + off + hd]) {
                    *o = crate::f32::fma(wp, crate::f16::f16_to_f32(b), *o);
                }
            }
        }
        KvRows::Q8_0(b) | KvRows::Q4_0(b) => {
            let bs = if matches!(v, KvRows::Q8_0(_)) { Q8_0_BYTES } else { Q4_0_BYTES };
            let mut vals = [0.0f32; 32];
            for (p, &wp) in w.iter().enumerate() {
                let at = (p * stride + off) / 32 * bs;
                for (ob, blk) in out.chunks_exact_mut(32).zip(b[at..at + hd / 32 * bs].chunks_exact(bs)) {
                    let wd = wp * block_codes(blk, &mut vals);
                    for (o, &c) in ob.iter_mut().zip(&vals) {
                        *o = crate::f32::fma(wd, c, *o);
                    }
                }
            }
        }
    }
}

/// A Q8_0 (34 bytes) or Q4_0 (18 bytes) block's integer codes as f32 (Q4_0's minus 8); returns
/// its scale.
fn block_codes(blk: &[u8], vals: &mut [f32; 32]) -> f32 {
    let d = crate::f16::f16_to_f32(f16::from_le_bytes([blk[0], blk[1]]));
    if blk.len() == Q8_0_BYTES {
        for (o, &c) in vals.iter_mut().zip(&blk[2..]) {
            *o = c as i8 as f32;
        }
    } else {
        for (j, &c) in blk[2..].iter().enumerate() {
            vals[j] = (c & 0x0F) as f32 - 8.0;
            vals[j + 16] = (c >> 4) as f32 - 8.0;
        }
    }
    d
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;
    use half::f16;

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend_f16_avx512(
        q: &[f32],
        k: &[f16],
        v: &[f16],
        stride: usize,
        off: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        assert!(crate::KernelPath::Avx512.is_available(), "attend_f16: AVX-512 is not available");
        let hd = q.len();
        assert!(hd.is_multiple_of(16) && hd <= 256 && out.len() == hd);
        let n = scores.len();
        assert!(n > 0 && k.len() >= (n - 1) * stride + off + hd && v.len() >= (n - 1) * stride + off + hd);
        // SAFETY: AVX-512 F is available (asserted above); every row read, `p · stride + off ..
        // + hd` for `p < n`, lies inside `k` and `v` (asserted above), `q` and `out` hold `hd`.
        unsafe {
            scores_impl(q, k, stride, off, scores);
            crate::vmath::softmax_scaled_on(crate::KernelPath::Avx512, scores, scale);
            weighted_sum_impl(v, stride, off, scores, out);
        }
    }

    /// Calls `$f::<NC, 1>` (one head) for `$nc` = NC in 1..=16.
    macro_rules! one_head {
        ($nc:expr, $f:ident($($arg:expr),*)) => {
            match $nc {
                1 => $f::<1, 1>($($arg),*),
                2 => $f::<2, 1>($($arg),*),
                3 => $f::<3, 1>($($arg),*),
                4 => $f::<4, 1>($($arg),*),
                5 => $f::<5, 1>($($arg),*),
                6 => $f::<6, 1>($($arg),*),
                7 => $f::<7, 1>($($arg),*),
                8 => $f::<8, 1>($($arg),*),
                9 => $f::<9, 1>($($arg),*),
                10 => $f::<10, 1>($($arg),*),
                11 => $f::<11, 1>($($arg),*),
                12 => $f::<12, 1>($($arg),*),
                13 => $f::<13, 1>($($arg),*),
                14 => $f::<14, 1>($($arg),*),
                15 => $f::<15, 1>($($arg),*),
                _ => $f::<16, 1>($($arg),*),
            }
        };
    }

    /// `scores[p] = q · k_p` for one head ([`scores_heads`] with its query in registers).
    ///
    /// # Safety
    /// AVX-512 F; `q.len()` a multiple of 16 up to 256; every row's head inside `k`.
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn scores_impl(q: &[f32], k: &[f16], stride: usize, off: usize, scores: &mut [f32]) {
        let kp = k.as_ptr().add(off).cast::<u8>();
        one_head!(q.len() / 16, scores_heads(q.as_ptr(), q.len(), kp, 2 * stride, scores.len(), scores.as_mut_ptr()))
    }

    /// `out = Σ_p w_p v_p` for one head ([`sums_heads`] with its sums in registers).
    ///
    /// # Safety
    /// AVX-512 F; `out.len()` a multiple of 16 up to 256; every row's head inside `v`.
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn weighted_sum_impl(v: &[f16], stride: usize, off: usize, w: &[f32], out: &mut [f32]) {
        let vp = v.as_ptr().add(off).cast::<u8>();
        one_head!(out.len() / 16, sums_heads(vp, 2 * stride, w.len(), w.as_ptr(), out.as_mut_ptr(), out.len()))
    }

    /// How many of a group's heads one pass takes for heads of `nc` vectors (their queries or
    /// sums in registers).
    pub(super) fn groups(nc: usize, g: usize) -> usize {
        let most = match nc {
            2 | 4 => 4,
            8 => 3,
            _ => 1,
        };
        most.min(g)
    }

    /// [`super::attend_group_on`] for an f16 cache: heads taken [`groups`] at a time, each pass
    /// reading a cached row once for all of them.
    ///
    /// # Safety
    /// AVX-512 F; `hd` a multiple of 16 up to 256; `q`, `out` hold `g · hd`,
    /// `scores` `g · n` with n ≥ 1, and rows `p · stride + off .. + hd` for p < n lie inside `k`
    /// and `v`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend_group_f16(
        g: usize,
        hd: usize,
        q: &[f32],
        k: &[f16],
        v: &[f16],
        stride: usize,
        off: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (nc, n) = (hd / 16, scores.len() / g);
        let kp = k.as_ptr().add(off).cast::<u8>();
        let vp = v.as_ptr().add(off).cast::<u8>();
        let mut j = 0;
        while j < g {
            let h = groups(nc, g - j);
            let (qj, sj) = (q.as_ptr().add(j * hd), scores.as_mut_ptr().add(j * n));
            match (nc, h) {
                (2, 2) => scores_heads::<2, 2>(qj, hd, kp, 2 * stride, n, sj),
                (2, 3) => scores_heads::<2, 3>(qj, hd, kp, 2 * stride, n, sj),
                (2, 4) => scores_heads::<2, 4>(qj, hd, kp, 2 * stride, n, sj),
                (4, 2) => scores_heads::<4, 2>(qj, hd, kp, 2 * stride, n, sj),
                (4, 3) => scores_heads::<4, 3>(qj, hd, kp, 2 * stride, n, sj),
                (4, 4) => scores_heads::<4, 4>(qj, hd, kp, 2 * stride, n, sj),
                (8, 2) => scores_heads::<8, 2>(qj, hd, kp, 2 * stride, n, sj),
                (8, 3) => scores_heads::<8, 3>(qj, hd, kp, 2 * stride, n, sj),
                _ => one_head!(nc, scores_heads(qj, hd, kp, 2 * stride, n, sj)),
            }
            j += h;
        }
        for sh in scores.chunks_exact_mut(n) {
            crate::vmath::softmax_scaled_on(crate::KernelPath::Avx512, sh, scale);
        }
        let mut j = 0;
        while j < g {
            let h = groups(nc, g - j);
            let (wj, oj) = (scores.as_ptr().add(j * n), out.as_mut_ptr().add(j * hd));
            match (nc, h) {
                (2, 2) => sums_heads::<2, 2>(vp, 2 * stride, n, wj, oj, hd),
                (2, 3) => sums_heads::<2, 3>(vp, 2 * stride, n, wj, oj, hd),
                (2, 4) => sums_heads::<2, 4>(vp, 2 * stride, n, wj, oj, hd),
                (4, 2) => sums_heads::<4, 2>(vp, 2 * stride, n, wj, oj, hd),
                (4, 3) => sums_heads::<4, 3>(vp, 2 * stride, n, wj, oj, hd),
                (4, 4) => sums_heads::<4, 4>(vp, 2 * stride, n, wj, oj, hd),
                (8, 2) => sums_heads::<8, 2>(vp, 2 * stride, n, wj, oj, hd),
                (8, 3) => sums_heads::<8, 3>(vp, 2 * stride, n, wj, oj, hd),
                _ => one_head!(nc, sums_heads(vp, 2 * stride, n, wj, oj, hd)),
            }
            j += h;
        }
    }

    /// `scores[j][p] = q_j · k_p` for `H` heads of `NC` vectors (queries `hd` apart at `q`,
    /// scores `n` apart at `s`; rows `row_bytes` apart at `kp`): each row's halves widened once
    /// for all heads; the steps for each head are the same whatever `H`, so the same bits.
    ///
    /// # Safety
    /// As [`attend_group_f16`], for these heads.
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn scores_heads<const NC: usize, const H: usize>(
        q: *const f32,
        hd: usize,
        kp: *const u8,
        row_bytes: usize,
        n: usize,
        s: *mut f32,
    ) {
        let mut qv = [[_mm512_setzero_ps(); NC]; H];
        for (j, qj) in qv.iter_mut().enumerate() {
            for (c, qc) in qj.iter_mut().enumerate() {
                // SAFETY: head j's 16 floats at 16c inside `q`.
                *qc = _mm512_loadu_ps(q.add(j * hd + 16 * c));
            }
        }
        for p in 0..n {
            let row = kp.add(p * row_bytes);
            let mut acc = [_mm512_setzero_ps(); H];
            for c in 0..NC {
                // SAFETY: 16 halves at 16c inside this head's part of row p.
                let kc = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32 * c).cast()));
                for (a, qj) in acc.iter_mut().zip(&qv) {
                    *a = _mm512_fmadd_ps(qj[c], kc, *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                // SAFETY: head j's score p inside `s`.
                *s.add(j * n + p) = reduce16(*a);
            }
        }
    }

    /// `out_j = Σ_p w_j[p] v_p` for `H` heads of `NC` vectors (weights `n` apart at `w`, outputs
    /// `hd` apart at `out`): each row's halves widened once for all heads; per head the steps
    /// the same steps for each head whatever `H`.
    ///
    /// # Safety
    /// As [`attend_group_f16`], for these heads.
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn sums_heads<const NC: usize, const H: usize>(
        vp: *const u8,
        row_bytes: usize,
        n: usize,
        w: *const f32,
        out: *mut f32,
        hd: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NC]; H];
        for p in 0..n {
            let row = vp.add(p * row_bytes);
            let mut wv = [_mm512_setzero_ps(); H];
            for (j, x) in wv.iter_mut().enumerate() {
                // SAFETY: head j's weight p inside `w`.
                *x = _mm512_set1_ps(*w.add(j * n + p));
            }
            for c in 0..NC {
                // SAFETY: 16 halves at 16c inside this head's part of row p.
                let vc = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32 * c).cast()));
                for (aj, x) in acc.iter_mut().zip(&wv) {
                    aj[c] = _mm512_fmadd_ps(*x, vc, aj[c]);
                }
            }
        }
        for (j, aj) in acc.iter().enumerate() {
            for (c, a) in aj.iter().enumerate() {
                // SAFETY: head j's 16 floats at 16c inside `out`.
                _mm512_storeu_ps(out.add(j * hd + 16 * c), *a);
            }
        }
    }

    /// Q8_0 codes 16 at a time as f32: bytes `at..at + 16`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn q8_16(at: *const u8) -> __m512 {
        // SAFETY: the caller reads 16 bytes inside one block.
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(at.cast())))
    }

    /// Q4_0 codes of a block as f32, elements 0..16 and 16..32 (the 16 bytes at `at`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn q4_32(at: *const u8) -> (__m512, __m512) {
        // SAFETY: the caller reads the block's 16 bytes of nibbles.
        let b = _mm_loadu_si128(at.cast());
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm512_cvtepu8_epi32(_mm_and_si128(b, m));
        let hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), m));
        let eight = _mm512_set1_epi32(8);
        (_mm512_cvtepi32_ps(_mm512_sub_epi32(lo, eight)), _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, eight)))
    }

    /// [`crate::decode_order::reduce16`] of one vector's lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn reduce16(v: __m512) -> f32 {
        let h = _mm256_add_ps(
            _mm512_castps512_ps256(v),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
        );
        let p = _mm256_hadd_ps(h, h);
        let q = _mm256_hadd_ps(p, p);
        _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(q), _mm256_extractf128_ps::<1>(q)))
    }

    #[inline]
    unsafe fn scale_at(at: *const u8) -> f32 {
        // SAFETY: the caller points at a block's two scale bytes.
        f16::from_le_bytes([*at, *at.add(1)]).to_f32()
    }

    /// `scores[p] = q · k_p` over Q8_0 rows (`stride` / `off` in bytes).
    ///
    /// # Safety
    /// AVX-512 F; `q.len()` a multiple of 32 up to 256; every row's head inside `k`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores_q8_0(q: &[f32], k: &[u8], stride: usize, off: usize, scores: &mut [f32]) {
        let nc = q.len() / 16;
        let mut qv = [_mm512_setzero_ps(); 16];
        for (c, qc) in qv.iter_mut().enumerate().take(nc) {
            // SAFETY: 16 floats at 16c inside `q`.
            *qc = _mm512_loadu_ps(q.as_ptr().add(16 * c));
        }
        let kp = k.as_ptr().add(off);
        for (p, s) in scores.iter_mut().enumerate() {
            let row = kp.add(p * stride);
            let mut acc = _mm512_setzero_ps();
            for b in 0..nc / 2 {
                // SAFETY: block b of this head's part of row p.
                let blk = row.add(b * 34);
                let t = _mm512_fmadd_ps(qv[2 * b + 1], q8_16(blk.add(18)), _mm512_mul_ps(qv[2 * b], q8_16(blk.add(2))));
                acc = _mm512_fmadd_ps(_mm512_set1_ps(scale_at(blk)), t, acc);
            }
            *s = reduce16(acc);
        }
    }

    /// `scores[p] = q · k_p` over Q4_0 rows (`stride` / `off` in bytes).
    ///
    /// # Safety
    /// As [`scores_q8_0`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores_q4_0(q: &[f32], k: &[u8], stride: usize, off: usize, scores: &mut [f32]) {
        let nc = q.len() / 16;
        let mut qv = [_mm512_setzero_ps(); 16];
        for (c, qc) in qv.iter_mut().enumerate().take(nc) {
            // SAFETY: 16 floats at 16c inside `q`.
            *qc = _mm512_loadu_ps(q.as_ptr().add(16 * c));
        }
        let kp = k.as_ptr().add(off);
        for (p, s) in scores.iter_mut().enumerate() {
            let row = kp.add(p * stride);
            let mut acc = _mm512_setzero_ps();
            for b in 0..nc / 2 {
                // SAFETY: block b of this head's part of row p.
                let blk = row.add(b * 18);
                let (lo, hi) = q4_32(blk.add(2));
                let t = _mm512_fmadd_ps(qv[2 * b + 1], hi, _mm512_mul_ps(qv[2 * b], lo));
                acc = _mm512_fmadd_ps(_mm512_set1_ps(scale_at(blk)), t, acc);
            }
            *s = reduce16(acc);
        }
    }

    /// `out = Σ_p w_p v_p` over Q8_0 rows (`stride` / `off` in bytes).
    ///
    /// # Safety
    /// AVX-512 F; `out.len()` a multiple of 32 up to 256; every row's head inside `v`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_q8_0(v: &[u8], stride: usize, off: usize, w: &[f32], out: &mut [f32]) {
        sum_blocks::<false>(v, stride, off, w, out)
    }

    /// `out = Σ_p w_p v_p` over Q4_0 rows (`stride` / `off` in bytes).
    ///
    /// # Safety
    /// As [`sum_q8_0`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_q4_0(v: &[u8], stride: usize, off: usize, w: &[f32], out: &mut [f32]) {
        sum_blocks::<true>(v, stride, off, w, out)
    }

    /// [`sum_q8_0`] (`Q4` false) or [`sum_q4_0`] (true) by head width.
    ///
    /// # Safety
    /// As [`sum_q8_0`].
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_blocks<const Q4: bool>(v: &[u8], stride: usize, off: usize, w: &[f32], out: &mut [f32]) {
        match out.len() / 16 {
            2 => sum_blocks_n::<2, Q4>(v, stride, off, w, out),
            4 => sum_blocks_n::<4, Q4>(v, stride, off, w, out),
            6 => sum_blocks_n::<6, Q4>(v, stride, off, w, out),
            8 => sum_blocks_n::<8, Q4>(v, stride, off, w, out),
            10 => sum_blocks_n::<10, Q4>(v, stride, off, w, out),
            12 => sum_blocks_n::<12, Q4>(v, stride, off, w, out),
            14 => sum_blocks_n::<14, Q4>(v, stride, off, w, out),
            _ => sum_blocks_n::<16, Q4>(v, stride, off, w, out),
        }
    }

    /// [`sum_blocks`] for heads of `NC` vectors: the sums in registers (a run-time length kept
    /// them in memory, a store-forward per position); per block `d · w_p` once, then one FMA
    /// per 16 codes.
    ///
    /// # Safety
    /// As [`sum_q8_0`], with `out.len() == 16 NC`.
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_blocks_n<const NC: usize, const Q4: bool>(
        v: &[u8],
        stride: usize,
        off: usize,
        w: &[f32],
        out: &mut [f32],
    ) {
        let bs = if Q4 { 18 } else { 34 };
        let mut acc = [_mm512_setzero_ps(); NC];
        let vp = v.as_ptr().add(off);
        for (p, &wp) in w.iter().enumerate() {
            let row = vp.add(p * stride);
            for b in 0..NC / 2 {
                // SAFETY: block b of this head's part of row p.
                let blk = row.add(b * bs);
                let wd = _mm512_set1_ps(wp * scale_at(blk));
                let (lo, hi) = if Q4 { q4_32(blk.add(2)) } else { (q8_16(blk.add(2)), q8_16(blk.add(18))) };
                acc[2 * b] = _mm512_fmadd_ps(wd, lo, acc[2 * b]);
                acc[2 * b + 1] = _mm512_fmadd_ps(wd, hi, acc[2 * b + 1]);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            // SAFETY: 16 floats at 16c inside `out`.
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use rand::Rng;

    /// `n` values in ±2.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::test_util::rng(seed);
        (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
    }

    /// A group of heads sharing one KV head: each head's output and weights have the bits of
    /// `attend` on that head alone, on every path and cache type, for every grouped kernel shape
    /// (heads of 32, 64, 128, 256 values; groups of 1 to 7; one position and many).
    #[test]
    fn attend_group_equals_attend_head_by_head() {
        let paths = [KernelPath::Scalar, crate::kernel_path()];
        for (hd, g, n) in [
            (64, 3, 1),
            (64, 3, 77),
            (64, 7, 40),
            (64, 4, 9),
            (128, 2, 33),
            (128, 5, 12),
            (32, 6, 50),
            (256, 2, 20),
            (96, 2, 10),
        ] {
            let n_kv = 2;
            let stride = n_kv * hd;
            let off = hd;
            let kf: Vec<f16> = data(n * stride, 1).into_iter().map(f16::from_f32).collect();
            let vf: Vec<f16> = data(n * stride, 2).into_iter().map(f16::from_f32).collect();
            let q = data(g * hd, 3);
            let scale = 1.0 / (hd as f32).sqrt();
            for path in paths {
                let (mut s1, mut o1) = (vec![0.0f32; g * n], vec![0.0f32; g * hd]);
                attend_group_on(path, g, &q, KvRows::F16(&kf), KvRows::F16(&vf), stride, off, scale, &mut s1, &mut o1);
                for j in 0..g {
                    let (mut s0, mut o0) = (vec![0.0f32; n], vec![0.0f32; hd]);
                    let qh = &q[j * hd..(j + 1) * hd];
                    attend_on(path, qh, KvRows::F16(&kf), KvRows::F16(&vf), stride, off, scale, &mut s0, &mut o0);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&o0), bits(&o1[j * hd..(j + 1) * hd]), "hd {hd} g {g} n {n} head {j} {path:?}");
                    assert_eq!(bits(&s0), bits(&s1[j * n..(j + 1) * n]), "hd {hd} g {g} n {n} head {j} {path:?}");
                }
            }
        }
    }

    /// Every path against an f64 evaluation on the same f16 values: f32 rounding only (the
    /// weights sum to 1 and |v| ≤ 2, so 1e-5 absolute).
    #[test]
    fn attend_f16_matches_f64_on_every_path() {
        for (hd, stride, off, n) in
            [(64, 192, 64, 1), (64, 192, 128, 37), (16, 48, 0, 5), (128, 256, 128, 300), (8, 8, 0, 9)]
        {
            let k: Vec<f16> = data(n * stride, 1).into_iter().map(f16::from_f32).collect();
            let v: Vec<f16> = data(n * stride, 2).into_iter().map(f16::from_f32).collect();
            let q = data(hd, 3);
            let scale = 1.0 / (hd as f32).sqrt();
            let s: Vec<f64> = (0..n)
                .map(|p| {
                    let r = &k[p * stride + off..p * stride + off + hd];
                    scale as f64 * q.iter().zip(r).map(|(&a, &b)| a as f64 * b.to_f64()).sum::<f64>()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let want: Vec<f64> =
                (0..hd).map(|d| (0..n).map(|p| e[p] / z * v[p * stride + off + d].to_f64()).sum()).collect();
            let (mut s0, mut reference) = (alloc::vec![0.0f32; n], alloc::vec![0.0f32; hd]);
            attend_f16_scalar(&q, &k, &v, stride, off, scale, &mut s0, &mut reference);
            for path in crate::available_kernel_paths() {
                let (mut scores, mut out) = (alloc::vec![0.0f32; n], alloc::vec![0.0f32; hd]);
                attend_f16_on(path, &q, &k, &v, stride, off, scale, &mut scores, &mut out);
                for (d, (&g, &w)) in out.iter().zip(&want).enumerate() {
                    assert!((g as f64 - w).abs() <= 1e-5, "{path} ({hd},{stride},{off},{n}) d {d}: {g} vs {w}");
                    // Decode computes the same bits on every path.
                    assert_eq!(g.to_bits(), reference[d].to_bits(), "{path} ({hd},{stride},{off},{n}) d {d}");
                }
            }
        }
    }

    /// Quantized caches (and a mix with f16) on every path against the oracle: the rows
    /// dequantized to f32 by the crate's `dequantize_row`, then attention in f64. Only the
    /// order of f32 operations differs (the block scale applied after the block's dot product):
    /// |v| ≤ 2 after quantization and the weights sum to 1, so 2e-5 absolute (measured ≤ 4.1e-7).
    #[test]
    fn attend_quantized_matches_dequantize_then_f64_on_every_path() {
        use crate::GgmlType;
        for (hd, stride, off, n) in [(64, 192, 64, 1), (64, 192, 128, 37), (32, 64, 0, 5), (128, 256, 128, 300)] {
            let (kf, vf) = (data(n * stride, 4), data(n * stride, 5));
            let q = data(hd, 6);
            let scale = 1.0 / (hd as f32).sqrt();
            let enc = |ty: GgmlType, x: &[f32]| {
                let mut b = alloc::vec![0u8; ty.row_bytes(x.len()).unwrap()];
                crate::quantize_row(ty, x, &mut b);
                let mut back = alloc::vec![0.0f32; x.len()];
                crate::dequantize_row(ty, &b, &mut back);
                (b, back)
            };
            let halves = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
            for (kt, vt) in [
                (GgmlType::Q8_0, GgmlType::Q8_0),
                (GgmlType::Q4_0, GgmlType::Q4_0),
                (GgmlType::Q8_0, GgmlType::F16),
                (GgmlType::F16, GgmlType::Q4_0),
            ] {
                let (kb, kd) = enc(kt, &kf);
                let (vb, vd) = enc(vt, &vf);
                let (kh, vh) = (halves(&kf), halves(&vf));
                fn view<'a>(ty: GgmlType, b: &'a [u8], h: &'a [f16]) -> KvRows<'a> {
                    match ty {
                        GgmlType::Q8_0 => KvRows::Q8_0(b),
                        GgmlType::Q4_0 => KvRows::Q4_0(b),
                        _ => KvRows::F16(h),
                    }
                }
                let (kv, vv) = (view(kt, &kb, &kh), view(vt, &vb, &vh));
                // The oracle sees exactly the values the kernel reads.
                let kd: Vec<f64> = if kt == GgmlType::F16 {
                    kh.iter().map(|h| h.to_f64()).collect()
                } else {
                    kd.iter().map(|&x| x as f64).collect()
                };
                let vd: Vec<f64> = if vt == GgmlType::F16 {
                    vh.iter().map(|h| h.to_f64()).collect()
                } else {
                    vd.iter().map(|&x| x as f64).collect()
                };
                let s: Vec<f64> = (0..n)
                    .map(|p| scale as f64 * (0..hd).map(|d| q[d] as f64 * kd[p * stride + off + d]).sum::<f64>())
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let want: Vec<f64> =
                    (0..hd).map(|d| (0..n).map(|p| e[p] / z * vd[p * stride + off + d]).sum()).collect();
                let (mut s0, mut reference) = (alloc::vec![0.0f32; n], alloc::vec![0.0f32; hd]);
                attend_scalar(&q, kv, vv, stride, off, scale, &mut s0, &mut reference);
                for path in crate::available_kernel_paths() {
                    let (mut scores, mut out) = (alloc::vec![0.0f32; n], alloc::vec![0.0f32; hd]);
                    attend_on(path, &q, kv, vv, stride, off, scale, &mut scores, &mut out);
                    let same = out.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{path} {kt:?}/{vt:?} ({hd},{stride},{off},{n}): not the scalar reference's bits");
                    let worst = out.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
                    std::println!("{path} {kt:?}/{vt:?} ({hd},{stride},{off},{n}): max |err| {worst:.2e}");
                    for (d, (&g, &w)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - w).abs() <= 2e-5,
                            "{path} {kt:?}/{vt:?} ({hd},{stride},{off},{n}) d {d}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quantized_rows_need_whole_blocks() {
        let k = [0u8; 34 * 8];
        let r = std::panic::catch_unwind(|| {
            let (mut s, mut o) = ([0.0f32; 2], [0.0f32; 16]);
            attend(&[0.0; 16], KvRows::Q8_0(&k), KvRows::Q8_0(&k), 64, 0, 1.0, &mut s, &mut o);
        });
        assert!(r.is_err());
    }

    #[test]
    fn short_caches_are_refused() {
        let k = [f16::ZERO; 100];
        let r = std::panic::catch_unwind(|| {
            let (mut s, mut o) = ([0.0f32; 2], [0.0f32; 64]);
            attend_f16(&[0.0; 64], &k, &k, 64, 0, 1.0, &mut s, &mut o);
        });
        assert!(r.is_err());
    }
}
