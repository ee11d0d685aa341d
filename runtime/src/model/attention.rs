//! Causal attention for a batch of queries (prefill), as two small matrix products per
//! (head, block of queries) on the kernels' f32 gemm: scores `Q Kᵀ`, a masked softmax per
//! query, then `P V`. Decoding (one query) uses the per-head loop in the parent module.

use crate::parallel::Pool;
use alloc::vec;
use alloc::vec::Vec;
use pith_kernels::Mat;

/// Queries per block: each block reads the keys and values it needs once.
const QBLOCK: usize = 32;

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

/// `att[t][h]` (n, n_head · head_dim) = attention of query `t` (position `p0 + t`) in head `h`
/// over positions `0..=p0 + t` (the last `window` of them with a sliding window): `q` (n, n_head · head_dim), `kc` / `vc` (p0 + n, kv_dim).
/// `tmp` is scratch, reused across calls.
pub(super) fn attention_batch(
    pool: &Pool,
    sh: &Shape,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    att: &mut [f32],
    tmp: &mut Vec<f32>,
) {
    let (hd, n) = (sh.head_dim, sh.n);
    let (qd, kvd) = (sh.n_head * hd, sh.n_head_kv * hd);
    let group = sh.n_head / sh.n_head_kv;
    let n_qb = n.div_ceil(QBLOCK);
    assert_eq!(q.len(), n * qd, "attention: query shape");
    assert_eq!(att.len(), n * qd, "attention: output shape");
    assert!(kc.len() >= (sh.p0 + n) * kvd && vc.len() >= (sh.p0 + n) * kvd, "attention: cache shape");
    // Keys transposed once per KV head: kt (n_head_kv, hd, n_pos), so scores are a plain
    // matrix product; queries and values are read in place through strided views.
    let n_pos = sh.p0 + n;
    tmp.resize(sh.n_head * n_qb * QBLOCK * hd + sh.n_head_kv * hd * n_pos, 0.0);
    let (out_all, kt) = tmp.split_at_mut(sh.n_head * n_qb * QBLOCK * hd);
    for (pos, row) in kc.chunks_exact(kvd).take(n_pos).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            kt[c * n_pos + pos] = v;
        }
    }
    let kt = &*kt;
    // out_all: (n_head, n_qb, QBLOCK, hd); one chunk per (head, query block).
    pool.for_each_chunk(out_all, QBLOCK * hd, &|i, out: &mut [f32]| {
        let (h, qb) = (i / n_qb, i % n_qb);
        let (t0, kvh) = (qb * QBLOCK, h / group);
        let nq = QBLOCK.min(n - t0);
        // Keys 0..n_keys serve every query of the block; the last ones are masked per query.
        let n_keys = sh.p0 + t0 + nq;
        let q_rows = Mat { data: &q[t0 * qd + h * hd..], rows: nq, cols: hd, stride: qd };
        let k_t = Mat { data: &kt[kvh * hd * n_pos..], rows: hd, cols: n_keys, stride: n_pos };
        let mut p = vec![0.0f32; nq * n_keys]; // (nq, n_keys): scores, then weights
        pith_kernels::gemm_f32_nn(q_rows, k_t, &mut p, n_keys);
        for (r, pr) in p.chunks_exact_mut(n_keys).enumerate() {
            let len = sh.p0 + t0 + r + 1;
            let lo = sh.window.map_or(0, |w| len.saturating_sub(w));
            pith_kernels::softmax_scaled(&mut pr[lo..len], sh.scale);
            pr[..lo].fill(0.0);
            pr[len..].fill(0.0);
        }
        let p = Mat { data: &p, rows: nq, cols: n_keys, stride: n_keys };
        let v = Mat { data: &vc[kvh * hd..], rows: n_keys, cols: hd, stride: kvd };
        pith_kernels::gemm_f32_nn(p, v, &mut out[..nq * hd], hd);
    });
    for h in 0..sh.n_head {
        for t in 0..n {
            let src = ((h * n_qb) * QBLOCK + t) * hd;
            att[t * qd + h * hd..t * qd + (h + 1) * hd].copy_from_slice(&tmp[src..src + hd]);
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

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
            (4, 1, 16, 5, 70, Some(9)),
            (2, 2, 8, 40, 3, Some(16)),
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
                attention_batch(&pool, &sh, &q, &kc, &vc, &mut att, &mut Vec::new());
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
