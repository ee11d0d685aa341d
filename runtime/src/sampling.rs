//! Token sampling: greedy, temperature, top-k, top-p, min-p and repetition penalty, seeded.
//!
//! The order follows llama.cpp's default chain: penalties → top-k → top-p → min-p → temperature
//! → draw. A temperature of 0 (or less) is greedy decoding.

use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

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
    cand: Vec<(u32, f32)>,
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
        Sampler { config, rng, recent: VecDeque::new(), cand: Vec::new() }
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
        Sampler { config, rng, recent, cand: Vec::new() }
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
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = &self.config;
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if c.repeat_penalty != 1.0 {
            let mut seen: Vec<u32> = self.recent.iter().copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(e) = self.cand.get_mut(id as usize) {
                    e.1 = if e.1 > 0.0 { e.1 / c.repeat_penalty } else { e.1 * c.repeat_penalty };
                }
            }
        }
        if c.temperature <= 0.0 {
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
    let mut p: Vec<f32> = c.iter().map(|e| ((e.1 - max) / temp).exp()).collect();
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

    #[test]
    fn validate_rejects_bad_values() {
        assert!(SamplerConfig { top_p: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig { min_p: 2.0, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig { repeat_penalty: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig::default().validate().is_ok());
    }
}
