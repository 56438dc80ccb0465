//! The adaptive bias (FORMAT.md §12.9): a per-sequence correction of the model's log
//! probabilities, learned online from the tokens coded so far, in integers.
//!
//! Why: a block is one document's text, and a small model's predictions are systematically
//! off for it in ways its context does not fix: it keeps underrating the names, words and
//! markup this document repeats, and overrating what it never uses. Nacrith's "bias head"
//! (arXiv 2602.19626) corrects that by online gradient descent on a log-space bias vector;
//! measured here with SmolLM2-135M on 8 KiB blocks, in floating point first, it saves 1.8% on
//! alice29 and 2.5% on html, where an in-block match model or a recalibrated temperature
//! save under 0.1% (the transformer already copies what its context holds, and is close to
//! calibrated on average).
//!
//! The rule is the gradient step of the log loss, `b ← b + rate · (onehot(t) − p)`, with `p`
//! the coded distribution itself (its integer frequencies), in fixed point: `b` in 2^-16 bit,
//! subtracted (floored to the 2^-8 bit of §12.3's `q`) from each symbol's quantized
//! log-ratio before the exponential table. So every decoder computes exactly the encoder's
//! tables, and a zero bias is exactly the unbiased function (for any finite largest logit).
//! A sequence starts from zero; a
//! block after an archive primer from the state the primer taught it, the same for every
//! block (computed once, with the primer's KV state), so blocks stay independent.
//!
//! Each sequence's bias depends on every token before it, so rows of one sequence are done
//! in order; rows of different sequences are independent.

use super::quantize::{
    for_each_freq, logits_to_weights_biased, scale_to_cum, weights_find, weights_interval,
};

/// Largest `|b_i|`, in 2^-16 bit (256 bits): far past where a weight saturates, and it keeps
/// every intermediate in an `i32`.
pub const BIAS_LIMIT: i32 = 1 << 24;

/// One sequence's adaptive bias: `rate` (2^-16 bit per unit of probability, 1 ..= 65,535)
/// and one value per model symbol.
#[derive(Clone, Debug)]
pub struct AdaptiveBias {
    rate: u32,
    b: Vec<i32>,
}

impl AdaptiveBias {
    /// A zero bias over `symbols` model symbols, learning at `rate`.
    pub fn new(rate: u16, symbols: usize) -> AdaptiveBias {
        AdaptiveBias {
            rate: rate as u32,
            b: vec![0; symbols],
        }
    }

    /// Back to zero: the start of a sequence.
    pub fn clear(&mut self) {
        self.b.fill(0);
    }

    /// The state of `other` (same rate and length): a block's start after the primer.
    pub fn copy_from(&mut self, other: &AdaptiveBias) {
        self.rate = other.rate;
        self.b.clone_from(&other.b);
    }

    pub fn values(&self) -> &[i32] {
        &self.b
    }

    /// The cumulative table of `logits` under this bias (as `logits_to_cum`), then learns
    /// from it once the token is known: see [`Self::learn_from_cum`].
    pub fn cum(&self, logits: &[f32], bits: u32, weights: &mut [u32], cum: &mut [u32]) {
        assert!(cum.len() == weights.len() + 1);
        let (sum, best) = logits_to_weights_biased(logits, &self.b, bits, weights);
        scale_to_cum(weights, sum, best, bits, cum);
    }

    /// The interval of symbol `s` under this bias, then learns from `s`.
    pub fn interval(
        &mut self,
        logits: &[f32],
        bits: u32,
        weights: &mut [u32],
        s: usize,
    ) -> (u32, u32) {
        assert!(s < weights.len());
        let (sum, best) = logits_to_weights_biased(logits, &self.b, bits, weights);
        let r = weights_interval(weights, sum, best, bits, s);
        self.learn(weights, sum, best, bits, s);
        r
    }

    /// The symbol at point `c` under this bias, with its interval, then learns from it.
    pub fn find(
        &mut self,
        logits: &[f32],
        bits: u32,
        weights: &mut [u32],
        c: u32,
    ) -> (usize, u32, u32) {
        assert!((c as u64) < 1u64 << bits);
        let (sum, best) = logits_to_weights_biased(logits, &self.b, bits, weights);
        let r = weights_find(weights, sum, best, bits, c);
        self.learn(weights, sum, best, bits, r.0);
        r
    }

    /// The update after token `t` was coded with the table `cum` ([`Self::cum`]'s).
    pub fn learn_from_cum(&mut self, cum: &[u32], bits: u32, t: usize) {
        let rate = self.rate as u64;
        for (i, b) in self.b.iter_mut().enumerate() {
            let f = (cum[i + 1] - cum[i]) as u64;
            *b = step(*b, (rate * f) >> bits, i == t, self.rate);
        }
    }

    /// `b_i ← clamp(b_i − ⌊rate · f_i / 2^bits⌋ + [i = t] · rate)` for every model symbol,
    /// `f_i` the frequencies of the table just coded with (§12.9).
    fn learn(&mut self, weights: &[u32], sum: u64, best: usize, bits: u32, t: usize) {
        let rate = self.rate as u64;
        let n = self.b.len();
        let b = &mut self.b;
        for_each_freq(weights, sum, best, bits, |i, f| {
            if i < n {
                b[i] = step(b[i], (rate * f as u64) >> bits, i == t, rate as u32);
            }
        });
    }
}

/// One symbol's update: the decrement, the increment where it is the coded token, one clamp.
fn step(b: i32, dec: u64, coded: bool, rate: u32) -> i32 {
    // dec ≤ rate < 2^16 and |b| ≤ 2^24: no overflow.
    let v = b as i64 - dec as i64 + if coded { rate as i64 } else { 0 };
    v.clamp(-(BIAS_LIMIT as i64), BIAS_LIMIT as i64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quantize::tests::xorshift;
    use crate::model::quantize::{logits_find, logits_to_cum, logits_to_interval};

    /// The plain statement of §12.9 (a table, then the update from it), which the fused
    /// paths must equal bit for bit.
    fn reference_cum(logits: &[f32], b: &[i32], total: usize) -> Vec<u32> {
        // 256 · log2(e) as binary32 (§12.3).
        let scale = f32::from_bits(0x43B8_AA3B);
        let n = logits.len();
        let mut max = f32::NEG_INFINITY;
        for &l in logits {
            if l > max {
                max = l;
            }
        }
        let q: Vec<i64> = logits
            .iter()
            .map(|&l| {
                let d = (max - l) * scale;
                if d < 8191.0 {
                    d as i64
                } else {
                    8191
                }
            })
            .collect();
        let u: Vec<i64> = q
            .iter()
            .zip(b)
            .map(|(&q, &b)| q - (b as i64).div_euclid(256))
            .collect();
        let m = *u.iter().min().unwrap();
        let mut w = vec![0u32; total];
        for i in 0..n {
            let q = (u[i] - m).min(8191) as usize;
            w[i] = crate::model::quantize::EXP2_TABLE[q % 256] >> (q / 256);
        }
        let mut cum = vec![0u32; total + 1];
        crate::model::quantize::weights_to_cum(&w, 24, &mut cum);
        cum
    }

    fn reference_learn(b: &mut [i32], cum: &[u32], t: usize, rate: i64) {
        for (i, v) in b.iter_mut().enumerate() {
            let f = (cum[i + 1] - cum[i]) as i64;
            let x = *v as i64 - (rate * f) / (1 << 24) + if i == t { rate } else { 0 };
            *v = x.clamp(-(1 << 24), 1 << 24) as i32;
        }
    }

    #[test]
    fn zero_bias_is_the_unbiased_function() {
        let mut next = xorshift(7);
        for case in 0..50 {
            let n = 2 + (next() % 500) as usize;
            let total = n + (case % 3) * 5;
            let logits: Vec<f32> = (0..n)
                .map(|_| (next() % 20_001) as f32 / 1000.0 - 10.0)
                .collect();
            let a = AdaptiveBias::new(1000, n);
            let (mut w, mut c1, mut c2) = (vec![0; total], vec![0; total + 1], vec![0; total + 1]);
            a.cum(&logits, 24, &mut w, &mut c1);
            logits_to_cum(&logits, 24, &mut w, &mut c2);
            assert_eq!(c1, c2, "case {case}");
        }
    }

    /// Sequences of steps through the three paths (table, encoder's interval, decoder's
    /// search) give the reference's tables, intervals and biases, step after step: random
    /// logits, escapes, saturated biases.
    #[test]
    fn fused_paths_match_the_reference() {
        let mut next = xorshift(0x5eed);
        for case in 0..24 {
            let n = 2 + (next() % 700) as usize;
            let total = n + [0, 3, 256][case % 3];
            let rate = [1u16, 24_576, 65_535][case % 3];
            let mut ref_b = vec![0i32; n];
            let (mut enc, mut dec, mut tab) = (
                AdaptiveBias::new(rate, n),
                AdaptiveBias::new(rate, n),
                AdaptiveBias::new(rate, n),
            );
            let mut w = vec![0u32; total];
            let mut cum = vec![0u32; total + 1];
            for step in 0..60 {
                let spread = [0.5f32, 5.0, 50.0][step % 3];
                let mut logits: Vec<f32> = (0..n)
                    .map(|_| ((next() % 20_001) as f32 / 10_000.0 - 1.0) * spread)
                    .collect();
                if step % 17 == 5 {
                    logits[next() as usize % n] = f32::NAN;
                }
                // Degenerate steps: every q is 8191 (all NaN, or an infinite maximum).
                if step % 19 == 7 {
                    logits.iter_mut().for_each(|l| *l = f32::NAN);
                }
                if step % 23 == 11 {
                    logits[next() as usize % n] = f32::INFINITY;
                }
                let want = reference_cum(&logits, &ref_b, total);
                // A symbol the bias has seen often, now and then an escape.
                let t = if step % 13 == 12 {
                    total - 1
                } else if step % 2 == 0 {
                    (next() % 3) as usize
                } else {
                    next() as usize % n
                };
                tab.cum(&logits, 24, &mut w, &mut cum);
                assert_eq!(cum, want, "case {case} step {step}: table");
                let (lo, f) = enc.interval(&logits, 24, &mut w, t);
                assert_eq!(
                    (lo, f),
                    (want[t], want[t + 1] - want[t]),
                    "case {case} step {step}"
                );
                let c = lo + (next() % f as u64) as u32;
                assert_eq!(dec.find(&logits, 24, &mut w, c), (t, lo, f));
                tab.learn_from_cum(&want, 24, t);
                reference_learn(&mut ref_b, &want, t, rate as i64);
                assert_eq!(enc.values(), &ref_b[..], "case {case} step {step}: bias");
                assert_eq!(dec.values(), &ref_b[..]);
                assert_eq!(tab.values(), &ref_b[..]);
            }
            assert!(ref_b.iter().any(|&b| b != 0));
        }
    }

    /// The clamp: the gradient step is self-limiting (a symbol near probability 1 gains
    /// about nothing), but the rule bounds `b` whatever the input.
    #[test]
    fn the_bias_is_clamped() {
        assert_eq!(step(BIAS_LIMIT - 5, 0, true, 65_535), BIAS_LIMIT);
        assert_eq!(step(-BIAS_LIMIT + 5, 65_535, false, 65_535), -BIAS_LIMIT);
        assert_eq!(step(7, 3, true, 10), 14);
    }

    /// Learning helps where a symbol recurs: its cost falls step after step, unlike the
    /// unbiased table's.
    #[test]
    fn a_recurring_symbol_gets_cheaper() {
        let n = 1000;
        let logits: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 20.0).collect();
        let mut a = AdaptiveBias::new(24_576, n);
        let mut w = vec![0u32; n];
        let (_, f0) = logits_to_interval(&logits, 24, &mut w, 500);
        let mut last = f0;
        for _ in 0..20 {
            let (_, f) = a.interval(&logits, 24, &mut w, 500);
            assert!(f >= last);
            last = f;
        }
        assert!(last > f0 * 8, "{f0} → {last}");
        let (s, _, _) = logits_find(&logits, 24, &mut w, 0);
        assert!(s < n);
    }
}
