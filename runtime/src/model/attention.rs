//! Causal attention for a batch of queries (prefill), as two small matrix products per
//! (head, block of queries) on the kernels' f32 gemm: scores `Q Kᵀ`, a masked softmax per
//! query, then `P V`. Decoding (one query) uses the per-head loop in the parent module.

use crate::math;
use crate::parallel::Pool;
use alloc::vec;
use alloc::vec::Vec;

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
    /// Score scale, `1 / √head_dim`.
    pub scale: f32,
}

/// `att[t][h]` (n, n_head · head_dim) = attention of query `t` (position `p0 + t`) in head `h`
/// over positions `0..=p0 + t`: `q` (n, n_head · head_dim), `kc` / `vc` (p0 + n, kv_dim).
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
    // tmp: (n_head, n_qb, QBLOCK, hd); one chunk per (head, query block).
    tmp.resize(sh.n_head * n_qb * QBLOCK * hd, 0.0);
    pool.for_each_chunk(tmp, QBLOCK * hd, &|i, out: &mut [f32]| {
        let (h, qb) = (i / n_qb, i % n_qb);
        let (t0, kvo) = (qb * QBLOCK, (h / group) * hd);
        let nq = QBLOCK.min(n - t0);
        // Keys 0..n_keys serve every query of the block; the last ones are masked per query.
        let n_keys = sh.p0 + t0 + nq;
        let nk8 = n_keys.next_multiple_of(8);
        let mut qb_rows = vec![0.0f32; nq * hd]; // (nq, hd)
        for (r, dst) in qb_rows.chunks_exact_mut(hd).enumerate() {
            let at = (t0 + r) * qd + h * hd;
            dst.copy_from_slice(&q[at..at + hd]);
        }
        let mut k_rows = vec![0.0f32; n_keys * hd]; // (n_keys, hd)
        for (p, dst) in k_rows.chunks_exact_mut(hd).enumerate() {
            dst.copy_from_slice(&kc[p * kvd + kvo..p * kvd + kvo + hd]);
        }
        let mut scores = vec![0.0f32; nq * n_keys]; // (nq, n_keys)
        pith_kernels::gemm_f32(&qb_rows, &k_rows, hd, &mut scores);
        // Masked softmax into p (nq, nk8), zero beyond each query's own position.
        let mut p = vec![0.0f32; nq * nk8];
        for (r, (s, pr)) in scores.chunks_exact(n_keys).zip(p.chunks_exact_mut(nk8)).enumerate() {
            let len = sh.p0 + t0 + r + 1;
            for (d, &v) in pr[..len].iter_mut().zip(&s[..len]) {
                *d = v * sh.scale;
            }
            math::softmax(&mut pr[..len]);
        }
        let mut v_t = vec![0.0f32; hd * nk8]; // (hd, nk8): values transposed, zero-padded
        for pos in 0..n_keys {
            for (d, &v) in vc[pos * kvd + kvo..pos * kvd + kvo + hd].iter().enumerate() {
                v_t[d * nk8 + pos] = v;
            }
        }
        pith_kernels::gemm_f32(&p, &v_t, nk8, &mut out[..nq * hd]);
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

    /// The batch path against the decode path's per-(query, head) loop, for grouped and plain
    /// heads, a batch starting after cached positions, ragged query blocks and a single query.
    #[test]
    fn batch_attention_matches_the_per_query_loop() {
        for (n_head, n_head_kv, hd, p0, n) in [(4, 2, 16, 0, 37), (3, 3, 8, 5, 70), (2, 1, 64, 3, 1), (9, 3, 64, 0, 33)]
        {
            let (qd, kvd) = (n_head * hd, n_head_kv * hd);
            let q = data(n * qd, 1);
            let kc = data((p0 + n) * kvd, 2);
            let vc = data((p0 + n) * kvd, 3);
            let scale = 1.0 / (hd as f32).sqrt();
            let sh = Shape { n_head, n_head_kv, head_dim: hd, p0, n, scale };
            for pool in [Pool::single(), Pool::new(2).unwrap()] {
                let mut att = vec![0.0f32; n * qd];
                attention_batch(&pool, &sh, &q, &kc, &vc, &mut att, &mut Vec::new());
                let mut want = vec![0.0f32; hd];
                for t in 0..n {
                    for h in 0..n_head {
                        let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                        let kvo = (h / (n_head / n_head_kv)) * hd;
                        super::super::attention_head(qh, &kc, &vc, kvd, kvo, p0 + t + 1, scale, &mut want);
                        for (d, (&g, &w)) in att[t * qd + h * hd..].iter().zip(&want).enumerate() {
                            // Values are within ±2 and the weights sum to 1: f32 rounding only.
                            assert!(
                                (g - w).abs() <= 1e-5,
                                "({n_head},{n_head_kv},{hd},{p0},{n}) t {t} h {h} d {d}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
