//! Causal attention for a batch of queries (prefill, or a new turn after a cached history), as
//! small matrix products per (head, block of queries) on the kernels' f32 gemm: scores `Q Kᵀ`,
//! a masked softmax per query, then `P V`. Decoding (one query) uses the per-head loop in the
//! parent module.
//!
//! The cache is read once per call, in parallel, in panels of [`PANEL`] positions: each panel's
//! keys transposed (kv_dim, PANEL) so that a block of queries times the panel is a plain
//! product — widened to f32 together with its values (PANEL, kv_dim), or, for an f16 cache read
//! by few query blocks, kept f16 with the values read in place (the gemm widens as it reads).
//! Every (KV head, query block) piece then walks the panels it sees: scores panel by panel into
//! its rows, and `P V` summed over the panels.

use crate::parallel::Pool;
use alloc::vec;
use alloc::vec::Vec;
use half::f16;
use pith_kernels::{Elem, Mat};

/// Largest block of queries: each block reads the keys and values it needs once.
const QBLOCK: usize = 32;

/// Cached positions per panel.
const PANEL: usize = 64;

/// The shapes of one batch's attention.
pub(super) struct Shape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Position of the batch's first query.
    pub p0: usize,
    /// Queries in the batch.
    pub n: usize,
    /// Score scale (`1 / √head_dim` for most architectures).
    pub scale: f32,
    /// Sliding window: query `p` sees keys `p - window + 1 ..= p` only.
    pub window: Option<usize>,
}

/// One sequence's cached keys and values for one layer, as batch attention reads them.
pub(super) trait KvSource: Sync {
    /// Keys of positions `lo..lo + dst.len() / kv_dim`, widened to f32 into `dst` (rows, kv_dim).
    fn widen_k(&self, lo: usize, dst: &mut [f32]);
    /// Values, as [`KvSource::widen_k`].
    fn widen_v(&self, lo: usize, dst: &mut [f32]);
    /// Keys and values of positions `0..` as f16 rows (kv_dim each), read in place, when both
    /// are stored so.
    fn f16(&self) -> Option<(&[f16], &[f16])> {
        None
    }
}

/// `att[t][h]` (n, n_head · head_dim) = attention of query `t` (position `p0 + t`) in head `h`
/// over positions `0..=p0 + t` (the last `window` of them with a sliding window): `q` (n,
/// n_head · head_dim); `kv` holds positions `0..p0 + n` (the batch's own already written).
/// `tmp` is scratch, reused across calls.
pub(super) fn attention_batch(
    pool: &Pool,
    sh: &Shape,
    q: &[f32],
    kv: &dyn KvSource,
    att: &mut [f32],
    tmp: &mut Vec<f32>,
) {
    let (hd, n) = (sh.head_dim, sh.n);
    let (qd, kvd) = (sh.n_head * hd, sh.n_head_kv * hd);
    let group = sh.n_head / sh.n_head_kv;
    assert_eq!(q.len(), n * qd, "attention: query shape");
    assert_eq!(att.len(), n * qd, "attention: output shape");
    // Pieces of work: (KV head, query block), the group's query heads together, so that each
    // piece reads its KV head's panels once for all of them (the panels outgrow the per-core
    // caches on a long history). Query blocks of at most QBLOCK, and enough pieces for every
    // thread to get a fair share (a short new turn over a long history: few queries, much work
    // each) but no more: each piece reads its panels again.
    let want_pieces = 2 * pool.threads();
    let n_qb = n.div_ceil(QBLOCK).max(want_pieces.div_ceil(sh.n_head_kv)).min(n);
    let qblock = n.div_ceil(n_qb);
    let n_qb = n.div_ceil(qblock);
    let n_pos = sh.p0 + n;
    // Panel width: PANEL positions, or all of them when fewer (a short prompt's scratch stays
    // small: this runs on microcontrollers too).
    let pw = PANEL.min(n_pos);
    let n_pan = n_pos.div_ceil(pw);
    let piece = group * qblock * hd;
    let out_len = sh.n_head_kv * n_qb * piece;
    let piece_of = |i: usize| {
        let (kvh, qb) = (i / n_qb, i % n_qb);
        (kvh, qb * qblock, qblock.min(n - qb * qblock))
    };
    // An f16 cache read by few query blocks (a new turn, a short prompt): panels of keys
    // transposed but still f16, values read in place, both widened in the gemm as they are
    // read — a quarter of the memory traffic of f32 panels, which pay off only when many query
    // blocks reuse them (a long prompt; measured: pp2048 4 % faster with f32 panels, a 22-token
    // turn after 2,208 cached 15 % faster with f16).
    let half = if n_qb <= 4 { kv.f16() } else { None };
    if let Some((kh, vh)) = half {
        let pan_len = kvd * pw;
        tmp.resize(out_len + (n_pan * pan_len).div_ceil(2), 0.0);
        let (out_all, panels) = tmp.split_at_mut(out_len);
        let panels: &mut [f16] = bytemuck::cast_slice_mut(panels);
        pool.for_each_chunk(&mut panels[..n_pan * pan_len], pan_len, &|b, kt: &mut [f16]| {
            let lo = b * pw;
            transpose(&kh[lo * kvd..(lo + pw.min(n_pos - lo)) * kvd], kvd, pw, kt);
        });
        let panels = &*panels;
        pool.for_each_chunk(out_all, piece, &|i, out: &mut [f32]| {
            let (kvh, t0, nq) = piece_of(i);
            let k_t = |b: usize, cols| Mat { data: &panels[b * pan_len + kvh * hd * pw..], rows: hd, cols, stride: pw };
            let v = |b: usize, cols| Mat { data: &vh[b * pw * kvd + kvh * hd..], rows: cols, cols: hd, stride: kvd };
            attend_piece(sh, q, (kvh, t0, nq, qblock, pw), out, &k_t, &v);
        });
    } else {
        // A panel: [keys transposed (kv_dim, pw) | values (pw, kv_dim)], widened to f32.
        let pan_len = 2 * kvd * pw;
        tmp.resize(out_len + n_pan * pan_len, 0.0);
        let (out_all, panels) = tmp.split_at_mut(out_len);
        pool.for_each_chunk(&mut panels[..n_pan * pan_len], pan_len, &|b, pan: &mut [f32]| {
            let lo = b * pw;
            let rows = pw.min(n_pos - lo);
            let (kt, vr) = pan.split_at_mut(kvd * pw);
            let vr = &mut vr[..rows * kvd];
            // The keys land in the values' place first, then move transposed.
            kv.widen_k(lo, vr);
            transpose(vr, kvd, pw, kt);
            kv.widen_v(lo, vr);
        });
        let panels = &*panels;
        pool.for_each_chunk(out_all, piece, &|i, out: &mut [f32]| {
            let (kvh, t0, nq) = piece_of(i);
            let k_t = |b: usize, cols| Mat { data: &panels[b * pan_len + kvh * hd * pw..], rows: hd, cols, stride: pw };
            let v = |b: usize, cols| Mat {
                data: &panels[b * pan_len + kvd * pw + kvh * hd..],
                rows: cols,
                cols: hd,
                stride: kvd,
            };
            attend_piece(sh, q, (kvh, t0, nq, qblock, pw), out, &k_t, &v);
        });
    }
    for h in 0..sh.n_head {
        let (kvh, j) = (h / group, h % group);
        for t in 0..n {
            let (qb, r) = (t / qblock, t % qblock);
            let src = (((kvh * n_qb + qb) * group + j) * qblock + r) * hd;
            att[t * qd + h * hd..t * qd + (h + 1) * hd].copy_from_slice(&tmp[src..src + hd]);
        }
    }
}

/// `rows` (n, kv_dim) into `kt` transposed: `kt[c * pw + r] = rows[r][c]` (a panel of `pw`
/// positions, n ≤ pw).
fn transpose<T: Copy>(rows: &[T], kvd: usize, pw: usize, kt: &mut [T]) {
    for (r, row) in rows.chunks_exact(kvd).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            kt[c * pw + r] = x;
        }
    }
}

/// One piece of [`attention_batch`]: queries `t0..t0 + nq` of every head of KV head `kvh`'s group,
/// into `out` (group, qblock, hd), over panels of `pw` positions. `k_t(b, cols)`: panel `b`'s
/// keys transposed (hd, cols); `v(b, cols)`: its values (cols, hd).
fn attend_piece<'p, K: Elem + 'p, V: Elem + 'p>(
    sh: &Shape,
    q: &[f32],
    (kvh, t0, nq, qblock, pw): (usize, usize, usize, usize, usize),
    out: &mut [f32],
    k_t: &dyn Fn(usize, usize) -> Mat<'p, K>,
    v: &dyn Fn(usize, usize) -> Mat<'p, V>,
) {
    let hd = sh.head_dim;
    let qd = sh.n_head * hd;
    let group = sh.n_head / sh.n_head_kv;
    // Keys 0..n_keys serve every query of the block; the last ones are masked per query.
    let n_keys = sh.p0 + t0 + nq;
    // The window of the block's first query starts at `first`: panels before it are skipped.
    let first = sh.window.map_or(0, |w| (sh.p0 + t0 + 1).saturating_sub(w));
    let (b_first, b_end) = (first / pw, n_keys.div_ceil(pw));
    let span = |b: usize| (b * pw, pw.min(n_keys - b * pw));
    // (group, nq, n_keys): each head's scores, then its weights.
    let mut p = vec![0.0f32; group * nq * n_keys];
    for b in b_first..b_end {
        let (lo, cols) = span(b);
        let kb = k_t(b, cols);
        for (j, pj) in p.chunks_exact_mut(nq * n_keys).enumerate() {
            let h = kvh * group + j;
            let q_rows = Mat { data: &q[t0 * qd + h * hd..], rows: nq, cols: hd, stride: qd };
            pith_kernels::gemm_f32_nn(q_rows, kb, &mut pj[lo..], n_keys);
        }
    }
    for (r, pr) in p.chunks_exact_mut(n_keys).enumerate() {
        let len = sh.p0 + t0 + r % nq + 1;
        let lo = sh.window.map_or(0, |w| len.saturating_sub(w));
        pith_kernels::softmax_scaled(&mut pr[lo..len], sh.scale);
        pr[..lo].fill(0.0);
        pr[len..].fill(0.0);
    }
    for b in b_first..b_end {
        let (lo, cols) = span(b);
        let vb = v(b, cols);
        for (pj, oj) in p.chunks_exact(nq * n_keys).zip(out.chunks_exact_mut(qblock * hd)) {
            let pm = Mat { data: &pj[lo..], rows: nq, cols, stride: n_keys };
            if b == b_first {
                pith_kernels::gemm_f32_nn(pm, vb, &mut oj[..nq * hd], hd);
            } else {
                pith_kernels::gemm_f32_nn_acc(pm, vb, &mut oj[..nq * hd], hd);
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    /// Keys and values held as f32 rows (kv_dim each), and the same as f16 rows when `half` is
    /// given (then read in place, the cache's f16 path).
    struct Rows<'a> {
        k: &'a [f32],
        v: &'a [f32],
        kvd: usize,
        half: Option<(&'a [f16], &'a [f16])>,
    }

    impl KvSource for Rows<'_> {
        fn widen_k(&self, lo: usize, dst: &mut [f32]) {
            dst.copy_from_slice(&self.k[lo * self.kvd..lo * self.kvd + dst.len()]);
        }
        fn widen_v(&self, lo: usize, dst: &mut [f32]) {
            dst.copy_from_slice(&self.v[lo * self.kvd..lo * self.kvd + dst.len()]);
        }
        fn f16(&self) -> Option<(&[f16], &[f16])> {
            self.half
        }
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// The batch path against the decode path's per-(query, head) kernel, for grouped and plain
    /// heads, a batch starting after cached positions, ragged query blocks and a single query.
    #[test]
    fn batch_attention_matches_the_per_query_loop() {
        for (n_head, n_head_kv, hd, p0, n, window) in [
            (4, 2, 16, 0, 37, None),
            (3, 3, 8, 5, 70, None),
            (2, 1, 64, 3, 1, None),
            (9, 3, 64, 0, 33, None),
            // Many query blocks: f32 panels even for an f16 cache.
            (4, 2, 16, 10, 150, None),
            (4, 1, 16, 5, 70, Some(9)),
            (2, 2, 8, 40, 3, Some(16)),
            // A new turn after a long history: many panels, a ragged last one, few queries.
            (9, 3, 64, 700, 22, None),
            (4, 2, 16, 130, 75, Some(100)),
            (2, 1, 32, 200, 9, Some(70)),
        ] {
            let (qd, kvd) = (n_head * hd, n_head_kv * hd);
            let q = data(n * qd, 1);
            // Cached values are f16: the batch path reads them widened, the one-token path in place.
            let half = |x: Vec<f32>| x.into_iter().map(half::f16::from_f32).collect::<Vec<_>>();
            let (kh, vh) = (half(data((p0 + n) * kvd, 2)), half(data((p0 + n) * kvd, 3)));
            let kc: Vec<f32> = kh.iter().map(|h| h.to_f32()).collect();
            let vc: Vec<f32> = vh.iter().map(|h| h.to_f32()).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            let sh = Shape { n_head, n_head_kv, head_dim: hd, p0, n, scale, window };
            for pool in [Pool::single(), Pool::new(2).unwrap()] {
                let mut att = vec![0.0f32; n * qd];
                let kv = Rows { k: &kc, v: &vc, kvd, half: None };
                attention_batch(&pool, &sh, &q, &kv, &mut att, &mut Vec::new());
                // Read as f16 in place: the same values, so the same results.
                let mut att_h = vec![0.0f32; n * qd];
                let kv = Rows { k: &kc, v: &vc, kvd, half: Some((&kh, &vh)) };
                attention_batch(&pool, &sh, &q, &kv, &mut att_h, &mut Vec::new());
                assert_eq!(att, att_h, "({n_head},{n_head_kv},{hd},{p0},{n},{window:?}): f16 in place");
                let mut want = vec![0.0f32; hd];
                for t in 0..n {
                    for h in 0..n_head {
                        let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                        let kvo = (h / (n_head / n_head_kv)) * hd;
                        // The window's positions only, as the decode path reads them.
                        let lo = window.map_or(0, |w: usize| (p0 + t + 1).saturating_sub(w));
                        let mut scores = vec![0.0f32; p0 + t + 1 - lo];
                        let (kw, vw) = (&kh[lo * kvd..], &vh[lo * kvd..]);
                        pith_kernels::attend_f16(qh, kw, vw, kvd, kvo, scale, &mut scores, &mut want);
                        for (d, (&g, &w)) in att[t * qd + h * hd..].iter().zip(&want).enumerate() {
                            // Values are within ±2 and the weights sum to 1: f32 rounding only.
                            assert!(
                                (g - w).abs() <= 1e-5,
                                "({n_head},{n_head_kv},{hd},{p0},{n},{window:?}) t {t} h {h} d {d}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
