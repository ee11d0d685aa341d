//! Token sampling: greedy, temperature, top-k, top-p, min-p and repetition penalty, seeded.
//!
//! The order follows llama.cpp's default chain: penalties → top-k → top-p → min-p → temperature
//! → draw. A temperature of 0 (or less) is greedy decoding. `no_std` + `alloc`: the Cortex-M
//! firmware samples with this same code.

use crate::math::{expf, logf};
use alloc::collections::{BinaryHeap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = all).
    pub top_p: f32,
    /// Drop tokens whose probability is below min_p × the top probability (0 = off).
    pub min_p: f32,
    /// Divide positive / multiply negative logits of recent tokens by this (1.0 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Checks ranges; the message names the offending option.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() {
            return Err(format!("temperature must be finite, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!("repeat penalty must be positive, got {}", self.repeat_penalty));
        }
        Ok(())
    }
}

/// A sampler with its RNG and the recent-token window for the penalty.
pub struct Sampler {
    pub config: SamplerConfig,
    // ChaCha12, which is what rand's `StdRng` is (same draws for a seed), named so that its
    // position can be saved and restored with a session.
    rng: rand_chacha::ChaCha12Rng,
    recent: VecDeque<u32>,
    /// Candidates of one step (the k best, or all when the filters need them).
    cand: Vec<(u32, f32)>,
    /// (id, penalized logit) of the recent tokens, sorted by id.
    pen: Vec<(u32, f32)>,
    heap: BinaryHeap<Reverse<Ranked>>,
}

/// A sampler's RNG position and recent tokens ([`Sampler::snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplerSnapshot {
    pub rng_seed: [u8; 32],
    pub rng_stream: u64,
    pub rng_word_pos: u128,
    pub recent: Vec<u32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let rng = rand_chacha::ChaCha12Rng::seed_from_u64(config.seed);
        Sampler { config, rng, recent: VecDeque::new(), cand: Vec::new(), pen: Vec::new(), heap: BinaryHeap::new() }
    }

    /// What a later [`Sampler::restore`] needs to draw exactly what this sampler would draw
    /// next: the RNG's seed and position and the recent-token window.
    pub fn snapshot(&self) -> SamplerSnapshot {
        SamplerSnapshot {
            rng_seed: self.rng.get_seed(),
            rng_stream: self.rng.get_stream(),
            rng_word_pos: self.rng.get_word_pos(),
            recent: self.recent.iter().copied().collect(),
        }
    }

    /// A sampler with `config` in the state [`Sampler::snapshot`] saw.
    pub fn restore(config: SamplerConfig, s: &SamplerSnapshot) -> Self {
        let mut rng = rand_chacha::ChaCha12Rng::from_seed(s.rng_seed);
        rng.set_stream(s.rng_stream);
        rng.set_word_pos(s.rng_word_pos);
        let mut recent: VecDeque<u32> = s.recent.iter().copied().collect();
        while recent.len() > config.repeat_last_n {
            recent.pop_front();
        }
        Sampler { config, rng, recent, cand: Vec::new(), pen: Vec::new(), heap: BinaryHeap::new() }
    }

    /// Records a token (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, id: u32) {
        if self.config.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.config.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }

    /// Forgets the recent-token window.
    pub fn reset(&mut self) {
        self.recent.clear();
    }

    /// Picks the next token from `logits` (n_vocab floats).
    ///
    /// The logits are read in place: with top-k (the default) or greedy decoding only the k
    /// best candidates are copied (one pass, a heap of k + penalized entries), so a 262144-token
    /// vocabulary costs no second dense copy per step. Only `top_k = 0` with top-p < 1 (whose
    /// cut needs the whole sorted distribution) copies every candidate.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = &self.config;
        // Penalized values of the recent tokens, sorted by id (at most repeat_last_n entries).
        self.pen.clear();
        if c.repeat_penalty != 1.0 {
            self.pen.extend(self.recent.iter().copied().filter(|&id| (id as usize) < logits.len()).map(|id| {
                let l = logits[id as usize];
                (id, if l > 0.0 { l / c.repeat_penalty } else { l * c.repeat_penalty })
            }));
            self.pen.sort_unstable_by_key(|e| e.0);
            self.pen.dedup_by_key(|e| e.0);
        }
        let greedy = c.temperature <= 0.0;
        let k = if greedy { 1 } else { c.top_k };
        self.cand.clear();
        if k > 0 && k < logits.len() {
            top_candidates(logits, k, &self.pen, &mut self.heap, &mut self.cand);
        } else if c.top_p >= 1.0 && c.min_p > 0.0 {
            // min-p alone keeps what is within ln(min_p) of the best logit (its probability
            // ratio to the best at temperature 1), whatever the normalization.
            let best = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| penalized(&self.pen, i as u32, l))
                .fold(f32::NEG_INFINITY, f32::max);
            let floor = best + logf(c.min_p);
            self.cand.extend(
                logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, penalized(&self.pen, i as u32, l)))
                    .filter(|e| e.1 >= floor),
            );
        } else {
            self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
            for &(id, v) in &self.pen {
                self.cand[id as usize].1 = v;
            }
        }
        if greedy {
            return argmax(&self.cand);
        }
        // Sort descending (ties by id, for determinism); truncate by top-k.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if c.top_k == 0 { self.cand.len() } else { c.top_k.min(self.cand.len()) };
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit);
        // Probabilities at temperature 1 for the top-p / min-p filters (as llama.cpp).
        let probs = softmax_of(&self.cand, 1.0);
        let mut keep = self.cand.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = probs[0] * c.min_p;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        self.cand.truncate(keep.max(1));
        let probs = softmax_of(&self.cand, c.temperature);
        let r: f64 = self.rng.gen::<f64>();
        let mut cum = 0.0f64;
        for (i, p) in probs.iter().enumerate() {
            cum += *p as f64;
            if r < cum {
                return self.cand[i].0;
            }
        }
        self.cand[self.cand.len() - 1].0
    }
}

/// Logit `l` of token `id` after the repetition penalty (`pen` sorted by id).
fn penalized(pen: &[(u32, f32)], id: u32, l: f32) -> f32 {
    if pen.is_empty() {
        return l;
    }
    match pen.binary_search_by_key(&id, |e| e.0) {
        Ok(i) => pen[i].1,
        Err(_) => l,
    }
}

/// A candidate ordered by logit, then by lower id (the sampler's tie order): `Ord` makes the
/// better candidate greater.
#[derive(Clone, Copy, PartialEq)]
struct Ranked(f32, u32);
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked {
    fn cmp(&self, o: &Self) -> core::cmp::Ordering {
        self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
    }
}

/// The `k` best (id, logit) after penalties into `out`, in one pass over `logits`.
///
/// A penalty can move at most `pen.len()` tokens, so the k best penalized tokens are among the
/// `k + pen.len()` best raw ones plus the penalized ones themselves.
fn top_candidates(
    logits: &[f32],
    k: usize,
    pen: &[(u32, f32)],
    heap: &mut BinaryHeap<Reverse<Ranked>>,
    out: &mut Vec<(u32, f32)>,
) {
    let keep = k + pen.len();
    heap.clear();
    for (i, &l) in logits.iter().enumerate() {
        let r = Ranked(l, i as u32);
        if heap.len() < keep {
            heap.push(Reverse(r));
        } else if heap.peek().is_some_and(|m| r > m.0) {
            heap.pop();
            heap.push(Reverse(r));
        }
    }
    out.extend(heap.drain().map(|Reverse(Ranked(l, i))| (i, penalized(pen, i, l))));
    for &(id, v) in pen {
        if !out.iter().any(|e| e.0 == id) {
            out.push((id, v));
        }
    }
    out.sort_unstable_by_key(|a| Reverse(Ranked(a.1, a.0)));
    out.truncate(k);
}

fn argmax(c: &[(u32, f32)]) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for &(i, l) in c {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0
}

fn softmax_of(c: &[(u32, f32)], temp: f32) -> Vec<f32> {
    let max = c.iter().map(|e| e.1).fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = c.iter().map(|e| expf((e.1 - max) / temp)).collect();
    let sum: f32 = p.iter().sum();
    for v in &mut p {
        *v /= sum;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() });
        let l = logits();
        let best = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32);
        assert_eq!(Some(s.sample(&l)), best);
    }

    #[test]
    fn same_seed_same_output() {
        let cfg = SamplerConfig { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 42, ..Default::default() };
        let l = logits();
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..50).map(|_| s.sample(&l)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..50).map(|_| s.sample(&l)).collect()
        };
        assert_eq!(a, b);
        let c: Vec<u32> = {
            let mut s = Sampler::new(SamplerConfig { seed: 43, ..cfg });
            (0..50).map(|_| s.sample(&l)).collect()
        };
        assert_ne!(a, c, "a different seed should give a different draw");
        // High temperature over 100 tokens: more than a handful of distinct picks.
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert!(d.len() > 5, "sampling looks degenerate: {d:?}");
    }

    #[test]
    fn top_k_restricts_choice() {
        let l = logits();
        let mut top3: Vec<(usize, f32)> = l.iter().copied().enumerate().collect();
        top3.sort_by(|a, b| b.1.total_cmp(&a.1));
        let allowed: Vec<u32> = top3[..3].iter().map(|e| e.0 as u32).collect();
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            seed: 1,
            ..Default::default()
        });
        for _ in 0..200 {
            assert!(allowed.contains(&s.sample(&l)));
        }
    }

    #[test]
    fn top_p_and_min_p_restrict_choice() {
        // One dominant token: top-p 0.5 must always pick it.
        let mut l = vec![0.0f32; 50];
        l[7] = 10.0;
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            seed: 3,
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&l), 7);
        }
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.01,
            seed: 3,
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&l), 7);
        }
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let mut l = vec![0.0f32; 10];
        l[2] = 2.0;
        l[5] = 1.5;
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, repeat_penalty: 1.5, ..Default::default() });
        assert_eq!(s.sample(&l), 2);
        s.accept(2);
        assert_eq!(s.sample(&l), 5, "2.0/1.5 < 1.5, so token 5 wins");
    }

    /// The one-pass top-k (with penalties moving tokens in and out of it) equals a full sort,
    /// ties broken by the lower id; and whole draws equal those of the dense path.
    #[test]
    fn top_candidates_equal_a_full_sort() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for trial in 0..200 {
            let n = 1 + trial % 300;
            // Coarse values: many ties.
            let l: Vec<f32> = (0..n).map(|_| (rng.gen::<f32>() * 20.0).round() - 10.0).collect();
            let mut pen: Vec<(u32, f32)> =
                (0..trial % 7).map(|_| rng.gen_range(0..n as u32)).map(|id| (id, l[id as usize] * 0.5 - 3.0)).collect();
            pen.sort_unstable_by_key(|e| e.0);
            pen.dedup_by_key(|e| e.0);
            let k = 1 + trial % 45;
            let mut got = Vec::new();
            top_candidates(&l, k, &pen, &mut BinaryHeap::new(), &mut got);
            let mut want: Vec<(u32, f32)> =
                l.iter().enumerate().map(|(i, &v)| (i as u32, penalized(&pen, i as u32, v))).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(k);
            assert_eq!(got, want, "trial {trial}");
        }
    }

    #[test]
    fn validate_rejects_bad_values() {
        assert!(SamplerConfig { top_p: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig { min_p: 2.0, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig { repeat_penalty: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig::default().validate().is_ok());
    }
}
