//! The search behind the importance-weighted quantizers (`quantize_row_<t>_weighted`).
//!
//! Every quantizer here minimizes `Σ w_i (x_i - x̂_i)²` over one block, where `x̂` is what
//! the block *as stored* dequantizes to: candidate scales are rounded to f16 (and K-quant
//! sub-block scales to their integer fields), the codes are re-rounded on the grid those
//! stored values allow, and the error is measured with the dequantizer's own arithmetic.
//!
//! The core is a path search over the code vectors `q_i = clamp(round(t v_i + φ))` as the
//! inverse scale `t` grows (`v = x` for symmetric grids, `v = x - anchor` for grids with an
//! offset). A code changes only where `t v_i + φ` crosses a half-integer, so a sweep of a
//! window of `t` visits every distinct code vector in order, one code change at a time
//! (an event queue over the ≤ 32 elements). For each code vector the scale (and offset)
//! are refit by weighted least squares in O(1) from running sums, and the best few fits
//! are kept. For a symmetric grid `x ≈ d q` the optimal `(d, q)` has `q = round(x / d)`,
//! which lies on the path at `t = 1 / d`, so a sweep covering that `t` finds the optimum
//! over real `d` exactly; what is left is the f16 rounding of `d`, handled by [`polish`]ing
//! each kept fit: the f16 value and its neighbours are tried with re-rounded codes, then the
//! scale is refit to those codes and rounded again while that helps. Grids with an offset
//! get a few paths (phases `φ`) and a joint `(d, m)` refit.
//!
//! The K-quants add a second level: sub-block scales (and mins) are integers times an f16
//! super-block scale. [`quantize_k`] fits every sub-block as above, picks super-block
//! scale candidates with the same sweep run on the sub-block scales (each weighted by how
//! much its sub-block's error grows per unit of scale error: `Σ w q²` for scales, `Σ w` for
//! mins — ggml's `make_qp_quants` idea, solved by the sweep), then chooses each sub-block's
//! integer scale and min among the neighbours of their targets by the exact sub-block error
//! with re-rounded codes, and alternates a least-squares refit of the super-block scales
//! with that integer search while the error drops.
//!
//! Every `quantize_row_<t>_weighted` finally compares its block with the reference
//! quantizer's under the block's weights and keeps the better one, so it is never worse.
//!
//! Weights: the importance is normalized per block (see [`block_weights`]). The sweeps'
//! running sums and the final comparison are `f64`; candidate errors are summed in f32
//! lanes ([`grid_err`]). Everything is deterministic (ties are broken by element index
//! and candidate order; no FMA contraction, as everywhere in this crate).

use crate::f16::f16_to_f32;
use crate::kquant::nearest_int;
use crate::QK_K;
use half::f16;

/// Largest group one sweep handles: a 32-element block or sub-block, or the (at most 16)
/// sub-block scales of a K-quant super-block.
const MAX_GROUP: usize = 32;

/// Added to every normalized weight (mean 1), so that elements of zero importance still
/// break ties towards a faithful value and no (sub-)block fit degenerates.
const WEIGHT_FLOOR: f32 = 1e-6;

/// Per-block weights from `importance`: entries that are negative, NaN or infinite count
/// as 0; an all-zero block becomes uniform (all 1); otherwise the weights are scaled to
/// mean 1 (dividing by the maximum first, so nothing overflows) plus a floor of 1e-6.
/// Scaling does not change which quantization is best.
pub(crate) fn block_weights(importance: &[f32], w: &mut [f32]) {
    debug_assert_eq!(importance.len(), w.len());
    let valid = |v: f32| v > 0.0 && v.is_finite();
    let max = importance.iter().fold(0.0f32, |m, &v| if valid(v) && v > m { v } else { m });
    if max <= 0.0 {
        w.fill(1.0);
        return;
    }
    let mut sum = 0.0f32;
    for (wi, &v) in w.iter_mut().zip(importance) {
        *wi = if valid(v) { v / max } else { 0.0 };
        sum += *wi;
    }
    // sum >= 1 (the maximum contributes 1), so this is finite.
    let inv_mean = w.len() as f32 / sum;
    for wi in w.iter_mut() {
        *wi = *wi * inv_mean + WEIGHT_FLOOR;
    }
}

/// `clamp(round(v), lo, hi)` (ties to even); NaN gives some value in range, never a panic.
#[inline]
pub(crate) fn round_clamp(v: f32, lo: i32, hi: i32) -> i32 {
    nearest_int(v.clamp(lo as f32, hi as f32)).clamp(lo, hi)
}

/// Puts every element of `x` on its nearest point of the grid `q * d + m`, `q` in
/// `lo..=hi` (all `q` give `m` when `d == 0`: then the code nearest 0 is used), writes the
/// codes to `q` and returns `Σ w (x - x̂)²` (summed in f32 lanes: this ranks candidates;
/// the final choice against the reference block is made in f64). `x̂ = q * d + m` is
/// evaluated exactly as the dequantizers do it (`m = -ml` for the K-quants'
/// `dl * q - ml`: the same bits). The code is `round((x - m) * (1 / d))` (ties to even),
/// which can differ from the nearest point only at a near-tie, where either is as good;
/// NaN gives `hi`. Lengths must be multiples of 8 (groups are 16 or 32 elements).
#[inline]
pub(crate) fn grid_err(x: &[f32], w: &[f32], d: f32, m: f32, lo: i32, hi: i32, q: &mut [i32]) -> f64 {
    const L: usize = 8;
    // Adding 1.5 * 2^23 rounds away the fraction (ties to even) of |t| < 2^22.
    const MAGIC: f32 = 12_582_912.0;
    debug_assert!(x.len().is_multiple_of(L) && w.len() == x.len() && q.len() == x.len());
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (lof, hif) = (lo as f32, hi as f32);
    let mut acc = [0.0f32; L];
    for ((xc, wc), qc) in x.chunks_exact(L).zip(w.chunks_exact(L)).zip(q.chunks_exact_mut(L)) {
        for k in 0..L {
            // min/max ignore NaN: a NaN t becomes `hi`.
            let t = ((xc[k] - m) * id).min(hif).max(lof);
            let r = t + MAGIC;
            let c = r - MAGIC;
            // The integer, read from the mantissa (as `nearest_int` does).
            qc[k] = r.to_bits() as i32 - MAGIC.to_bits() as i32;
            let diff = xc[k] - (c * d + m);
            acc[k] += wc[k] * diff * diff;
        }
    }
    (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) as f64
}

/// `Σ w (x - y)²` of a dequantized block `y` against the data `x`.
pub(crate) fn weighted_err(x: &[f32], w: &[f32], y: &[f32]) -> f64 {
    x.iter()
        .zip(w)
        .zip(y)
        .map(|((&a, &wi), &b)| {
            let diff = (a - b) as f64;
            wi as f64 * diff * diff
        })
        .sum()
}

/// Keeps the weighted quantizer's block unless the reference (round-to-nearest) block has
/// a lower or equal error, or the candidate is not finite: the result is never worse
/// than `quantize_row_<t>` under the block's weights.
pub(crate) fn pick_block<B, const N: usize>(
    x: &[f32],
    w: &[f32],
    ours: B,
    reference: B,
    dequantize: impl Fn(&B, &mut [f32; N]),
) -> B {
    let mut y = [0.0f32; N];
    dequantize(&ours, &mut y);
    let e_ours = weighted_err(x, w, &y);
    dequantize(&reference, &mut y);
    let e_ref = weighted_err(x, w, &y);
    if e_ours < e_ref || (e_ref.is_nan() && !e_ours.is_nan()) {
        ours
    } else {
        reference
    }
}

/// Panics unless every code is in `lo..=hi` (the precondition of `set_block_codes_<t>`).
pub(crate) fn check_codes(what: &str, codes: &[i32], lo: i32, hi: i32) {
    if let Some((i, &c)) = codes.iter().enumerate().find(|&(_, &c)| c < lo || c > hi) {
        panic!("{what}: code {c} of element {i} is outside {lo}..={hi}");
    }
}

/// The f16 next to `h` towards +inf (`up`) or -inf; may be infinite (callers check).
fn f16_next(h: f16, up: bool) -> f16 {
    let b = h.to_bits();
    if b & 0x7fff == 0 {
        return f16::from_bits(if up { 0x0001 } else { 0x8001 });
    }
    let negative = b & 0x8000 != 0;
    f16::from_bits(if negative != up { b + 1 } else { b - 1 })
}

/// `h` and its two f16 neighbours.
fn f16_around(v: f32) -> [f16; 3] {
    let h = f16::from_f32(v);
    [h, f16_next(h, true), f16_next(h, false)]
}

/// How the offset of a fit `y ≈ d q + m` is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offset {
    /// `m = 0` (symmetric grids).
    Zero,
    /// `m` free (Q4_1, Q5_1).
    Free,
    /// `m <= 0` (the K-quants' `- dmin * m` with non-negative mins).
    NonPositive,
}

/// A least-squares fit found by a sweep: `x ≈ d q + m`, reducing the weighted squared
/// error by `score` from `Σ w x²`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fit {
    pub score: f64,
    pub d: f32,
    pub m: f32,
}

/// The `K` best fits offered so far (highest score first; ties keep the earlier one).
pub(crate) struct Best<const K: usize> {
    fits: [Fit; K],
    len: usize,
}

impl<const K: usize> Best<K> {
    pub(crate) fn new() -> Self {
        Best { fits: [Fit { score: f64::NEG_INFINITY, d: 0.0, m: 0.0 }; K], len: 0 }
    }

    pub(crate) fn offer(&mut self, f: Fit) {
        if !(f.score.is_finite() && f.d.is_finite() && f.m.is_finite()) {
            return;
        }
        let mut pos = self.len;
        while pos > 0 && self.fits[pos - 1].score < f.score {
            pos -= 1;
        }
        if pos >= K {
            return;
        }
        let end = if self.len < K { self.len } else { K - 1 };
        let mut i = end;
        while i > pos {
            self.fits[i] = self.fits[i - 1];
            i -= 1;
        }
        self.fits[pos] = f;
        self.len = (self.len + 1).min(K);
    }

    pub(crate) fn fits(&self) -> &[Fit] {
        &self.fits[..self.len]
    }

    /// The score a fit must beat to be kept.
    #[inline]
    pub(crate) fn threshold(&self) -> f64 {
        if self.len < K {
            f64::NEG_INFINITY
        } else {
            self.fits[K - 1].score
        }
    }
}

/// One path of code vectors: `q_i = clamp(round(t (sign x_i - anchor) + phase), lo, hi)`
/// for `t` in `t_lo..=t_hi` (`0 < t_lo`), each refit as `sign x ≈ d q + m`.
pub(crate) struct Path {
    pub sign: f32,
    pub anchor: f32,
    pub phase: f32,
    pub lo: i32,
    pub hi: i32,
    pub t_lo: f32,
    pub t_hi: f32,
    pub offset: Offset,
}

/// The pending events of a sweep, one per element at most: a tournament tree over 16 or 32
/// leaves (leaf `i` holds element `i`'s next event key, `u64::MAX` when it has none; every
/// inner node the smaller of its children). Updating a leaf is four or five branch-free
/// `min`s.
struct Events {
    tree: [u64; 2 * MAX_GROUP],
    leaves: usize,
}

impl Events {
    const NONE: u64 = u64::MAX;

    /// `t` must be positive and finite: then its bits order like its value.
    #[inline]
    fn key(t: f32, i: usize) -> u64 {
        ((t.to_bits() as u64) << 32) | i as u64
    }

    /// A tree holding `keys` (`keys[i]` for element `i`; at most 32).
    fn new(keys: &[u64]) -> Self {
        let leaves = if keys.len() <= MAX_GROUP / 2 { MAX_GROUP / 2 } else { MAX_GROUP };
        let mut tree = [Self::NONE; 2 * MAX_GROUP];
        tree[leaves..leaves + keys.len()].copy_from_slice(keys);
        for j in (1..leaves).rev() {
            tree[j] = tree[2 * j].min(tree[2 * j + 1]);
        }
        Events { tree, leaves }
    }

    /// The earliest pending key (`NONE` if there is none).
    #[inline]
    fn first(&self) -> u64 {
        self.tree[1]
    }

    /// Sets element `i`'s pending key.
    #[inline]
    fn set(&mut self, i: usize, key: u64) {
        let mut j = self.leaves + i;
        self.tree[j] = key;
        while j > 1 {
            j /= 2;
            self.tree[j] = self.tree[2 * j].min(self.tree[2 * j + 1]);
        }
    }
}

/// Running weighted sums over the group: `Σw, Σw y, Σw q, Σw q², Σw y q` with `y = sign x`.
#[derive(Clone, Copy, Default)]
struct Sums {
    w: f64,
    y: f64,
    q: f64,
    qq: f64,
    yq: f64,
}

impl Sums {
    /// False only if the least-squares fit of the current codes cannot score above `thr`
    /// (a cheap filter before [`Sums::fit`]: the unconstrained score, compared without
    /// dividing, bounds every constrained one).
    #[inline]
    fn may_beat(&self, offset: Offset, thr: f64) -> bool {
        let s = self;
        if thr == f64::NEG_INFINITY {
            return true;
        }
        if offset == Offset::Zero {
            return s.yq > 0.0 && s.yq * s.yq > thr * s.qq;
        }
        let det = s.w * s.qq - s.q * s.q;
        if det > 1e-9 * s.w * s.qq {
            s.w * s.yq * s.yq - 2.0 * s.q * s.y * s.yq + s.qq * s.y * s.y > thr * det
        } else {
            true // degenerate: let `fit` decide
        }
    }

    /// The least-squares `(score, d, m)` for the current codes, if it is a usable fit
    /// (`d > 0`, offset rule respected).
    #[inline]
    fn fit(&self, offset: Offset) -> Option<(f64, f64, f64)> {
        let s = self;
        if offset != Offset::Zero {
            let det = s.w * s.qq - s.q * s.q;
            if det > 1e-9 * s.w * s.qq {
                let d = (s.w * s.yq - s.y * s.q) / det;
                let m = (s.qq * s.y - s.q * s.yq) / det;
                if d > 0.0 && (offset == Offset::Free || m <= 0.0) {
                    return Some((d * s.yq + m * s.y, d, m));
                }
            }
            if offset == Offset::Free {
                return None;
            }
        }
        if s.qq > 0.0 && s.yq > 0.0 {
            let d = s.yq / s.qq;
            return Some((d * s.yq, d, 0.0));
        }
        None
    }
}

/// Sweeps `p` over the group `(x, w)` (`x.len() <= 32`), offering the least-squares fit of
/// every code vector on the path to `best` (as `x ≈ d q + m`, i.e. with `sign` applied).
pub(crate) fn sweep<const K: usize>(x: &[f32], w: &[f32], p: &Path, best: &mut Best<K>) {
    let n = x.len();
    debug_assert!(n <= MAX_GROUP && w.len() == n && p.lo <= p.hi);
    if !(p.t_lo > 0.0 && p.t_lo <= p.t_hi && p.t_hi.is_finite()) {
        return;
    }
    // Per element, in the direction its code moves as t grows (`dir`): the code's
    // magnitude `u = dir * c` (increasing), its bound `ulim`, and the event times
    // `t = (u + a) * r` (`r = 1 / |v|`), plus the f64 weight and weighted value.
    let mut u = [0i32; MAX_GROUP];
    let mut ulim = [0i32; MAX_GROUP];
    let mut a = [0.0f32; MAX_GROUP];
    let mut r = [0.0f32; MAX_GROUP];
    let mut wf = [0.0f64; MAX_GROUP];
    let mut wy = [0.0f64; MAX_GROUP];
    let mut s = Sums::default();
    for i in 0..n {
        let y = p.sign * x[i];
        let v = y - p.anchor;
        let c = round_clamp(p.t_lo * v + p.phase, p.lo, p.hi);
        let (wi, yi, qi) = (w[i] as f64, y as f64, c as f64);
        s.w += wi;
        s.y += wi * yi;
        s.q += wi * qi;
        s.qq += wi * qi * qi;
        s.yq += wi * yi * qi;
        let dir = if v < 0.0 { -1 } else { 1 };
        u[i] = dir * c;
        // No events for v == 0 (or NaN): bound reached.
        ulim[i] = if v > 0.0 {
            p.hi
        } else if v < 0.0 {
            -p.lo
        } else {
            i32::MIN
        };
        a[i] = 0.5 - dir as f32 * p.phase;
        r[i] = 1.0 / libm::fabsf(v);
        wf[i] = dir as f64 * wi;
        wy[i] = dir as f64 * wi * yi;
    }
    // The next event key of an element: the t at which its code moves one step further
    // from 0, if that is within the window.
    let next = |i: usize, u: i32| -> u64 {
        if u >= ulim[i] {
            return Events::NONE;
        }
        let t = (u as f32 + a[i]) * r[i];
        if t <= p.t_hi {
            Events::key(t.max(p.t_lo), i)
        } else {
            Events::NONE
        }
    };
    let mut thr = best.threshold();
    if s.may_beat(p.offset, thr) {
        offer_fit(&s, p, best);
        thr = best.threshold();
    }
    let mut keys = [Events::NONE; MAX_GROUP];
    for (i, k) in keys[..n].iter_mut().enumerate() {
        *k = next(i, u[i]);
    }
    let mut ev = Events::new(&keys[..n]);
    loop {
        let key = ev.first();
        if key == Events::NONE {
            break;
        }
        let i = (key & 0xff) as usize;
        // c -> c + dir: Σ w q += dir w, Σ w q² += w (2 dir c + 1) = w (2 u + 1),
        // Σ w y q += dir w y.
        let ui = u[i];
        s.q += wf[i];
        s.qq += wf[i].abs() * (2 * ui + 1) as f64;
        s.yq += wy[i];
        u[i] = ui + 1;
        if s.may_beat(p.offset, thr) {
            offer_fit(&s, p, best);
            thr = best.threshold();
        }
        ev.set(i, next(i, ui + 1));
    }
}

/// Offers the least-squares fit of the current codes (with the path's sign applied).
#[inline]
fn offer_fit<const K: usize>(s: &Sums, p: &Path, best: &mut Best<K>) {
    if let Some((score, d, m)) = s.fit(p.offset) {
        best.offer(Fit { score, d: p.sign * d as f32, m: p.sign * m as f32 });
    }
}

/// A stored candidate for a 32-element block: f16 scale and offset, codes, error.
#[derive(Clone, Copy)]
struct Stored {
    err: f64,
    d: f16,
    m: f16,
    q: [i32; MAX_GROUP],
}

impl Stored {
    fn none() -> Self {
        Stored { err: f64::INFINITY, d: f16::ZERO, m: f16::ZERO, q: [0; MAX_GROUP] }
    }

    /// Evaluates the stored pair `(d, m)` and keeps it if it beats the current one.
    fn try_pair(&mut self, x: &[f32], w: &[f32], d: f16, m: f16, lo: i32, hi: i32) -> bool {
        let (df, mf) = (f16_to_f32(d), f16_to_f32(m));
        if !(df.is_finite() && mf.is_finite()) {
            return false;
        }
        let mut q = [0i32; MAX_GROUP];
        let err = grid_err(x, w, df, mf, lo, hi, &mut q[..x.len()]);
        if err < self.err {
            *self = Stored { err, d, m, q };
            true
        } else {
            false
        }
    }
}

/// Weighted least squares for `x ≈ d q` (`affine == false`) or `x ≈ d q + m` given codes.
/// A degenerate system (all codes equal) gives the constant fit `d = 0, m = mean`.
fn refit(x: &[f32], w: &[f32], q: &[i32], affine: bool) -> (f32, f32) {
    let mut s = Sums::default();
    for ((&v, &wi), &qi) in x.iter().zip(w).zip(q) {
        let (wi, y, qf) = (wi as f64, v as f64, qi as f64);
        s.w += wi;
        s.y += wi * y;
        s.q += wi * qf;
        s.qq += wi * qf * qf;
        s.yq += wi * y * qf;
    }
    if !affine {
        return if s.qq > 0.0 { ((s.yq / s.qq) as f32, 0.0) } else { (0.0, 0.0) };
    }
    let det = s.w * s.qq - s.q * s.q;
    if det > 1e-9 * s.w * s.qq {
        (((s.w * s.yq - s.y * s.q) / det) as f32, ((s.qq * s.y - s.q * s.yq) / det) as f32)
    } else if s.w > 0.0 {
        (0.0, (s.y / s.w) as f32)
    } else {
        (0.0, 0.0)
    }
}

/// Search effort of the 32-element block quantizers.
pub(crate) struct Search {
    /// Sweep window, in units of the code of the largest `|v|` (`t = k / max |v|`).
    pub k: (f32, f32),
    /// Phases of the paths (the affine types; the symmetric ones use 0).
    pub phases: &'static [f32],
    /// Fits polished (the best ones of each sign / of all phases), at most 4.
    pub keep: usize,
    /// Least-squares refit rounds of the polish.
    pub refits: usize,
}

/// Turns a real-valued fit into the best stored block near it: the f16 neighbours of `d`
/// (and of `m` if `affine`) with re-rounded codes, then least-squares refits of the stored
/// codes, rounded and tried the same way, while they improve. Merges into `best`.
fn polish(x: &[f32], w: &[f32], (lo, hi): (i32, i32), fit: Fit, affine: bool, refits: usize, best: &mut Stored) {
    let mut local = Stored::none();
    let m0 = if affine { f16::from_f32(fit.m) } else { f16::ZERO };
    for d in f16_around(fit.d) {
        local.try_pair(x, w, d, m0, lo, hi);
    }
    if affine {
        let d0 = local.d;
        for m in f16_around(fit.m) {
            local.try_pair(x, w, d0, m, lo, hi);
        }
    }
    for _ in 0..refits {
        if local.err == f64::INFINITY {
            break;
        }
        let (d, m) = refit(x, w, &local.q[..x.len()], affine);
        let (dh, mh) = (f16::from_f32(d), if affine { f16::from_f32(m) } else { f16::ZERO });
        if dh == local.d && mh == local.m {
            break;
        }
        let mut improved = false;
        for dd in f16_around(d) {
            improved |= local.try_pair(x, w, dd, mh, lo, hi);
        }
        if affine {
            let d0 = local.d;
            for mm in f16_around(m) {
                improved |= local.try_pair(x, w, d0, mm, lo, hi);
            }
        }
        if !improved {
            break;
        }
    }
    if local.err < best.err {
        *best = local;
    }
}

/// Symmetric 32-element blocks (Q4_0, Q5_0, Q8_0): the stored f16 scale `d` and codes `q`
/// (`x̂ = q * d`, `q` in `lo..=hi`) minimizing the weighted error. Both signs of `d` are
/// searched when the code range is lopsided. All-zero or non-finite input gives `d = 0`.
pub(crate) fn quantize_sym(x: &[f32], w: &[f32], lo: i32, hi: i32, search: &Search, q: &mut [i32]) -> f16 {
    let n = x.len();
    let amax = x.iter().fold(0.0f32, |a, &v| a.max(libm::fabsf(v)));
    let mut best = Stored::none();
    if amax > 0.0 && amax.is_finite() {
        let signs: &[f32] = if lo == -hi { &[1.0] } else { &[1.0, -1.0] };
        for &sign in signs {
            let mut fits = Best::<4>::new();
            let p = Path {
                sign,
                anchor: 0.0,
                phase: 0.0,
                lo,
                hi,
                t_lo: search.k.0 / amax,
                t_hi: search.k.1 / amax,
                offset: Offset::Zero,
            };
            sweep(x, w, &p, &mut fits);
            for &f in fits.fits().iter().take(search.keep) {
                polish(x, w, (lo, hi), f, false, search.refits, &mut best);
            }
        }
    }
    if best.err == f64::INFINITY {
        best.try_pair(x, w, f16::ZERO, f16::ZERO, lo, hi);
        if best.err.is_nan() || best.err == f64::INFINITY {
            best = Stored { q: [0.clamp(lo, hi); MAX_GROUP], ..Stored::none() };
        }
    }
    q.copy_from_slice(&best.q[..n]);
    best.d
}

/// Affine 32-element blocks (Q4_1, Q5_1): stored f16 `(d, m)` and codes `q` in `0..=nmax`
/// (`x̂ = q * d + m`) minimizing the weighted error. One sweep per phase, anchored at the
/// block minimum.
pub(crate) fn quantize_affine(x: &[f32], w: &[f32], nmax: i32, search: &Search, q: &mut [i32]) -> (f16, f16) {
    let n = x.len();
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let mut best = Stored::none();
    // The constant fit (all codes 0, m = weighted mean).
    let (_, mean) = refit(x, w, &[0; MAX_GROUP][..n], true);
    best.try_pair(x, w, f16::ZERO, f16::from_f32(mean), 0, nmax);
    let range = max - min;
    if range > 0.0 && range.is_finite() {
        let mut fits = Best::<4>::new();
        for &phase in search.phases {
            let p = Path {
                sign: 1.0,
                anchor: min,
                phase,
                lo: 0,
                hi: nmax,
                t_lo: search.k.0 / range,
                t_hi: search.k.1 / range,
                offset: Offset::Free,
            };
            sweep(x, w, &p, &mut fits);
        }
        for &f in fits.fits().iter().take(search.keep) {
            polish(x, w, (0, nmax), f, true, search.refits, &mut best);
        }
    }
    if best.err == f64::INFINITY || best.err.is_nan() {
        best = Stored::none();
        best.q = [0; MAX_GROUP];
    }
    q.copy_from_slice(&best.q[..n]);
    (best.d, best.m)
}

/// Shape of a K-quant for [`quantize_k`]: `x̂ = (d * sc_j) * q - (dmin * m_j)` per sub-block
/// `j` (no min term when `m_max == 0`).
pub(crate) struct KSpec {
    /// Elements per sub-block (16 or 32).
    pub sub: usize,
    /// Code range.
    pub q: (i32, i32),
    /// Sub-block scale range (signed for Q3_K and Q6_K).
    pub sc: (i32, i32),
    /// Sub-block mins are `0..=m_max`; 0 for the symmetric types.
    pub m_max: i32,
    /// Sweep window of the sub-block fits, in units of the code of the largest `|v|`.
    pub sub_k: (f32, f32),
    /// Phases of the sub-block paths (affine types).
    pub phases: &'static [f32],
    /// Sweep window of the super-block scale search, in units of the largest sub-block
    /// scale's integer value.
    pub sc_k: (f32, f32),
    /// Rounds of least-squares refits of the super-block scales.
    pub refine: usize,
}

/// A K-quant block in integers: f16 super-block scales, per-sub-block scales and mins
/// (`sc` signed for the symmetric types), codes in element order, and its error.
#[derive(Clone)]
pub(crate) struct KQuant {
    pub err: f64,
    pub d: f16,
    pub dmin: f16,
    pub sc: [i32; 16],
    pub m: [i32; 16],
    pub q: [i32; QK_K],
}

impl KQuant {
    fn none() -> Self {
        KQuant { err: f64::INFINITY, d: f16::ZERO, dmin: f16::ZERO, sc: [0; 16], m: [0; 16], q: [0; QK_K] }
    }
}

/// Targets of one sub-block from its real-valued fits.
#[derive(Clone, Copy, Default)]
struct SubFit {
    /// Candidate scales, best first (the symmetric types keep the best of each sign).
    s: [f32; 2],
    ns: usize,
    /// The min (`>= 0`) of the affine fit.
    mn: f32,
    /// Sensitivities: `Σ w q²` at the fit's codes (scale), `Σ w` (min).
    ws: f32,
    wm: f32,
}

/// A tiny ordered set of candidate integers.
struct IntSet {
    v: [i32; 16],
    len: usize,
}

impl IntSet {
    fn new() -> Self {
        IntSet { v: [0; 16], len: 0 }
    }

    fn add(&mut self, x: i32) {
        if self.len < self.v.len() && !self.v[..self.len].contains(&x) {
            self.v[self.len] = x;
            self.len += 1;
        }
    }

    /// Adds `c - radius ..= c + radius`, clamped to `lo..=hi`.
    fn add_around(&mut self, c: i32, radius: i32, lo: i32, hi: i32) {
        for k in -radius..=radius {
            self.add((c + k).clamp(lo, hi));
        }
    }

    fn as_slice(&self) -> &[i32] {
        &self.v[..self.len]
    }
}

/// The real-valued fit of one sub-block: for the affine types the best `(scale, -min)`
/// over the paths anchored at `min(0, min x)` (offset `<= 0`), for the symmetric types the
/// best scale of each sign; plus the sensitivities the super-block search weights it by.
fn fit_subblock(spec: &KSpec, x: &[f32], w: &[f32]) -> SubFit {
    let mut f = SubFit::default();
    let mut q = [0i32; MAX_GROUP];
    let n = x.len();
    if spec.m_max > 0 {
        let (mut min, mut max) = (0.0f32, f32::NEG_INFINITY);
        for &v in x {
            min = min.min(v);
            max = max.max(v);
        }
        let range = max - min;
        let mut fits = Best::<1>::new();
        if range > 0.0 && range.is_finite() {
            for &phase in spec.phases {
                let p = Path {
                    sign: 1.0,
                    anchor: min,
                    phase,
                    lo: spec.q.0,
                    hi: spec.q.1,
                    t_lo: spec.sub_k.0 / range,
                    t_hi: spec.sub_k.1 / range,
                    offset: Offset::NonPositive,
                };
                sweep(x, w, &p, &mut fits);
            }
        }
        if let Some(b) = fits.fits().first() {
            f.s[0] = b.d;
            f.ns = 1;
            f.mn = -b.m;
        }
    } else {
        let amax = x.iter().fold(0.0f32, |a, &v| a.max(libm::fabsf(v)));
        if amax > 0.0 && amax.is_finite() {
            let mut per_sign = [Fit { score: f64::NEG_INFINITY, d: 0.0, m: 0.0 }; 2];
            for (k, sign) in [1.0f32, -1.0].into_iter().enumerate() {
                let mut fits = Best::<1>::new();
                let p = Path {
                    sign,
                    anchor: 0.0,
                    phase: 0.0,
                    lo: spec.q.0,
                    hi: spec.q.1,
                    t_lo: spec.sub_k.0 / amax,
                    t_hi: spec.sub_k.1 / amax,
                    offset: Offset::Zero,
                };
                sweep(x, w, &p, &mut fits);
                if let Some(&b) = fits.fits().first() {
                    per_sign[k] = b;
                }
            }
            if per_sign[1].score > per_sign[0].score {
                per_sign.swap(0, 1);
            }
            for b in per_sign {
                if b.score > f64::NEG_INFINITY {
                    f.s[f.ns] = b.d;
                    f.ns += 1;
                }
            }
        }
    }
    let s0 = if f.ns > 0 { f.s[0] } else { 0.0 };
    grid_err(x, w, s0, -f.mn, spec.q.0, spec.q.1, &mut q[..n]);
    for (&wi, &qi) in w.iter().zip(&q[..n]) {
        f.ws += wi * (qi * qi) as f32;
        f.wm += wi;
    }
    f
}

/// Candidate super-block scales for values `vals` (weights `wts`) on integer multiples in
/// `lo..=hi`: the best fits of a sweep (both signs if `lo < 0`) plus the plain
/// "largest value to the extreme code" scales, then zero. Deduplicated after f16 rounding.
fn super_candidates(vals: &[f32], wts: &[f32], lo: i32, hi: i32, k: (f32, f32), out: &mut [f16; 8]) -> usize {
    let mut len = 0;
    let mut add = |h: f16| {
        if f16_to_f32(h).is_finite() && len < out.len() && !out[..len].contains(&h) {
            out[len] = h;
            len += 1;
        }
    };
    let (mut amax, mut vmax) = (0.0f32, 0.0f32);
    for &v in vals {
        if libm::fabsf(v) > amax {
            amax = libm::fabsf(v);
            vmax = v;
        }
    }
    if amax > 0.0 && amax.is_finite() {
        let ext = hi.max(-lo) as f32;
        let signs: &[f32] = if lo < 0 { &[1.0, -1.0] } else { &[1.0] };
        for &sign in signs {
            let mut fits = Best::<2>::new();
            let p = Path {
                sign,
                anchor: 0.0,
                phase: 0.0,
                lo,
                hi,
                t_lo: k.0 * ext / amax,
                t_hi: k.1 * ext / amax,
                offset: Offset::Zero,
            };
            sweep(vals, wts, &p, &mut fits);
            for f in fits.fits() {
                add(f16::from_f32(f.d));
            }
        }
        if hi > 0 {
            add(f16::from_f32(vmax / hi as f32));
        }
        if lo < 0 {
            add(f16::from_f32(vmax / lo as f32));
        }
    }
    // Nothing usable (all zero, or every candidate overflowed f16): zero.
    add(f16::ZERO);
    len
}

/// Chooses every sub-block's integer scale (and min) for the stored super-block scales
/// `(d, dmin)` by the exact sub-block error with re-rounded codes, and writes the result
/// to `out`. Without `cur`, the candidates are the integers within 2 of the fits' targets
/// (the rounded scale shifts the best min and vice versa); with `cur`, the neighbours
/// (±1) of the current choice.
fn assign(
    spec: &KSpec,
    x: &[f32],
    w: &[f32],
    (d, dmin): (f16, f16),
    fits: &[SubFit],
    cur: Option<&KQuant>,
    out: &mut KQuant,
) {
    let (df, dmf) = (f16_to_f32(d), f16_to_f32(dmin));
    out.d = d;
    out.dmin = dmin;
    out.err = f64::INFINITY;
    if !(df.is_finite() && dmf.is_finite()) {
        return;
    }
    let sub = spec.sub;
    let mut total = 0.0f64;
    let mut q = [0i32; MAX_GROUP];
    for (j, f) in fits.iter().enumerate() {
        let (xs, ws) = (&x[sub * j..sub * (j + 1)], &w[sub * j..sub * (j + 1)]);
        let mut scs = IntSet::new();
        let mut ms = IntSet::new();
        if let Some(c) = cur {
            scs.add_around(c.sc[j], 1, spec.sc.0, spec.sc.1);
            if spec.m_max > 0 && dmf != 0.0 {
                ms.add_around(c.m[j], 1, 0, spec.m_max);
            }
        } else {
            if df != 0.0 {
                for &s in &f.s[..f.ns] {
                    scs.add_around(round_clamp(s / df, spec.sc.0, spec.sc.1), 2, spec.sc.0, spec.sc.1);
                }
            }
            if spec.m_max > 0 && dmf != 0.0 {
                ms.add_around(round_clamp(f.mn / dmf, 0, spec.m_max), 2, 0, spec.m_max);
            }
        }
        if scs.len == 0 {
            scs.add(0.clamp(spec.sc.0, spec.sc.1));
        }
        if ms.len == 0 {
            ms.add(0);
        }
        let mut be = f64::INFINITY;
        for &sc in scs.as_slice() {
            let dl = df * sc as f32;
            for &m in ms.as_slice() {
                let ml = dmf * m as f32;
                let e = grid_err(xs, ws, dl, -ml, spec.q.0, spec.q.1, &mut q[..sub]);
                if e < be {
                    be = e;
                    out.sc[j] = sc;
                    out.m[j] = m;
                    out.q[sub * j..sub * (j + 1)].copy_from_slice(&q[..sub]);
                }
            }
        }
        total += be;
    }
    out.err = total;
}

/// Least-squares super-block scales `(d, dmin)` for fixed integer sub-block scales, mins
/// and codes: `x ≈ d (sc_j q_i) - dmin m_j`.
fn refit_super(spec: &KSpec, x: &[f32], w: &[f32], k: &KQuant) -> (f32, f32) {
    let (mut saa, mut sab, mut sbb, mut sxa, mut sxb) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, ((&v, &wi), &qi)) in x.iter().zip(w).zip(&k.q).enumerate() {
        let j = i / spec.sub;
        let a = (k.sc[j] * qi) as f64;
        let b = -(k.m[j] as f64);
        let (wi, v) = (wi as f64, v as f64);
        saa += wi * a * a;
        sab += wi * a * b;
        sbb += wi * b * b;
        sxa += wi * v * a;
        sxb += wi * v * b;
    }
    let dmin_now = f16_to_f32(k.dmin) as f64;
    if spec.m_max > 0 {
        let det = saa * sbb - sab * sab;
        if det > 1e-9 * saa * sbb {
            return (((sbb * sxa - sab * sxb) / det) as f32, ((saa * sxb - sab * sxa) / det) as f32);
        }
    }
    // Scale only (symmetric types, or no usable min term): d for the current dmin.
    let d = if saa > 0.0 { (sxa - dmin_now * sab) / saa } else { 0.0 };
    (d as f32, dmin_now as f32)
}

/// Importance-weighted K-quant super-block (see the module docs). `x`, `w`: 256 values and
/// their weights. The result always has a finite error unless `x` is not finite.
pub(crate) fn quantize_k(spec: &KSpec, x: &[f32], w: &[f32]) -> KQuant {
    debug_assert!(x.len() == QK_K && w.len() == QK_K && QK_K / spec.sub <= 16);
    let nsub = QK_K / spec.sub;
    let mut fits = [SubFit::default(); 16];
    for (j, f) in fits[..nsub].iter_mut().enumerate() {
        *f = fit_subblock(spec, &x[spec.sub * j..spec.sub * (j + 1)], &w[spec.sub * j..spec.sub * (j + 1)]);
    }
    let fits = &fits[..nsub];

    let mut vals = [0.0f32; 16];
    let mut wts = [0.0f32; 16];
    for (j, f) in fits.iter().enumerate() {
        vals[j] = if f.ns > 0 { f.s[0] } else { 0.0 };
        wts[j] = f.ws;
    }
    let mut ds = [f16::ZERO; 8];
    let nd = super_candidates(&vals[..nsub], &wts[..nsub], spec.sc.0, spec.sc.1, spec.sc_k, &mut ds);
    let mut dms = [f16::ZERO; 8];
    let ndm = if spec.m_max > 0 {
        for (j, f) in fits.iter().enumerate() {
            vals[j] = f.mn;
            wts[j] = f.wm;
        }
        super_candidates(&vals[..nsub], &wts[..nsub], 0, spec.m_max, spec.sc_k, &mut dms)
    } else {
        1
    };

    let mut best = KQuant::none();
    let mut cand = KQuant::none();
    // Scale candidates with the first min candidate, then min candidates with the best scale.
    for &d in &ds[..nd] {
        assign(spec, x, w, (d, dms[0]), fits, None, &mut cand);
        if cand.err < best.err {
            best.clone_from(&cand);
        }
    }
    for &dmin in &dms[1..ndm] {
        assign(spec, x, w, (best.d, dmin), fits, None, &mut cand);
        if cand.err < best.err {
            best.clone_from(&cand);
        }
    }
    if best.err == f64::INFINITY {
        // Nothing finite (non-finite input): all-zero parameters.
        assign(spec, x, w, (f16::ZERO, f16::ZERO), fits, None, &mut best);
        return best;
    }

    // Alternate: least-squares super-block scales for the current integers, then the
    // integers (neighbours of the current ones) for the rounded scales and their f16
    // neighbours.
    for _ in 0..spec.refine {
        let (d, dmin) = refit_super(spec, x, w, &best);
        let (dh, dmh) = (f16::from_f32(d), if spec.m_max > 0 { f16::from_f32(dmin) } else { best.dmin });
        let mut tries = [(dh, dmh); 5];
        let [_, up, down] = f16_around(d);
        tries[1].0 = up;
        tries[2].0 = down;
        let nt = if spec.m_max > 0 {
            let [_, up, down] = f16_around(dmin);
            tries[3].1 = up;
            tries[4].1 = down;
            5
        } else {
            3
        };
        let prev = best.clone();
        let mut improved = false;
        for &(dd, dm) in &tries[..nt] {
            if dd == prev.d && dm == prev.dmin {
                continue;
            }
            assign(spec, x, w, (dd, dm), fits, Some(&prev), &mut cand);
            if cand.err < best.err {
                best.clone_from(&cand);
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_normalized_and_sanitized() {
        let mut w = [0.0f32; 4];
        block_weights(&[0.0, 0.0, 0.0, 0.0], &mut w);
        assert_eq!(w, [1.0; 4]);
        block_weights(&[f32::NAN, -1.0, f32::INFINITY, 0.0], &mut w);
        assert_eq!(w, [1.0; 4], "no valid importance: uniform");
        block_weights(&[2.0, 0.0, 6.0, f32::NAN], &mut w);
        // Normalized to mean 1 over the block: 2 and 6 → 1 and 3, zeros get the floor.
        assert!((w[0] - 1.0).abs() < 1e-5 && (w[2] - 3.0).abs() < 1e-5, "{w:?}");
        assert!(w[1] > 0.0 && w[1] < 1e-5 && w[3] == w[1], "{w:?}");
        block_weights(&[3e38, 3e38, 3e38, 3e38], &mut w);
        assert!(w.iter().all(|&v| (v - 1.0).abs() < 1e-5), "no overflow: {w:?}");
    }

    #[test]
    fn f16_neighbours() {
        let one = f16::ONE;
        assert_eq!(f16_next(one, true).to_f32(), 1.0 + 1.0 / 1024.0);
        assert_eq!(f16_next(one, false).to_f32(), 1.0 - 1.0 / 2048.0);
        assert_eq!(f16_next(-one, true).to_f32(), -(1.0 - 1.0 / 2048.0));
        assert_eq!(f16_next(-one, false).to_f32(), -(1.0 + 1.0 / 1024.0));
        assert!(f16_next(f16::ZERO, true).to_f32() > 0.0);
        assert!(f16_next(f16::NEG_ZERO, false).to_f32() < 0.0);
    }

    #[test]
    fn best_keeps_the_top_scores_in_order() {
        let mut b = Best::<3>::new();
        for (i, s) in [1.0, 5.0, 3.0, 4.0, 0.5, 5.0].into_iter().enumerate() {
            b.offer(Fit { score: s, d: i as f32, m: 0.0 });
        }
        b.offer(Fit { score: f64::NAN, d: 9.0, m: 0.0 });
        let got: std::vec::Vec<(f64, f32)> = b.fits().iter().map(|f| (f.score, f.d)).collect();
        assert_eq!(got, [(5.0, 1.0), (5.0, 5.0), (4.0, 3.0)]);
    }

    /// Brute force over a fine grid of real `d`: the sweep's best least-squares fit is at
    /// least as good as any `(d, round(x / d))`.
    #[test]
    fn symmetric_sweep_finds_the_continuous_optimum() {
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for _ in 0..50 {
            let x: [f32; 32] = core::array::from_fn(|_| rnd());
            let w: [f32; 32] = core::array::from_fn(|_| libm::expf(2.0 * rnd()));
            let amax = x.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            let mut fits = Best::<1>::new();
            for sign in [1.0, -1.0] {
                let p = Path {
                    sign,
                    anchor: 0.0,
                    phase: 0.0,
                    lo: -8,
                    hi: 7,
                    t_lo: 0.5 / amax,
                    t_hi: 64.0 / amax,
                    offset: Offset::Zero,
                };
                sweep(&x, &w, &p, &mut fits);
            }
            let f = fits.fits()[0];
            let mut q = [0i32; 32];
            let e_sweep = grid_err(&x, &w, f.d, 0.0, -8, 7, &mut q);
            for k in 1..4000 {
                let d = amax / (0.5 + k as f32 * 0.004);
                for d in [d, -d] {
                    let e = grid_err(&x, &w, d, 0.0, -8, 7, &mut q);
                    assert!(e_sweep <= e * (1.0 + 1e-5), "d={d}: {e} < sweep {e_sweep}");
                }
            }
        }
    }
}
