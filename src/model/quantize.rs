//! The one deterministic function from a model's logits to integer frequencies.
//!
//! Encoder and decoder must build bit-identical frequency tables from bit-identical logits,
//! on any machine. So this function uses only operations IEEE 754 defines exactly (one f32
//! subtraction and one f32 multiplication per logit, a comparison, a truncating conversion)
//! and integers from then on; `exp` is not called, because libm implementations differ.
//!
//! For each symbol: `q = ⌊(max − logit) · 256·log2(e)⌋` (saturated at 32·256 − 1), its weight is
//! `2^(−q/256)` in Q31 fixed point, read from a table that is itself computed by integer
//! arithmetic at compile time. Weights are scaled so that all frequencies sum to exactly
//! `2^bits` with every symbol ≥ 1; the rounding remainder goes to the first most likely
//! symbol. The 1/256-bit resolution of `q` costs under 10^-5 bit per token.

/// Q31 values of 2^(−i/256) for i in 0..256, computed at compile time by integer arithmetic
/// only (see `exp2_table`), so every build on every machine has the same table.
pub static EXP2_TABLE: [u32; 256] = exp2_table();

/// Largest quantized log-ratio: weights below 2^-32 of the maximum all get weight 0 (and then
/// frequency 1).
const Q_MAX: u32 = 32 * 256 - 1;
/// 256 · log2(e), rounded to f32.
const SCALE: f32 = 256.0 * std::f32::consts::LOG2_E;
const TWO_23: f32 = 8_388_608.0;

/// `EXP2_TABLE[q & 255] >> (q >> 8)` for every q ≤ Q_MAX: one load per symbol instead of a
/// load and a variable shift (32 KiB, it stays in L1).
static EXP2_Q: [u32; Q_MAX as usize + 1] = {
    let mut t = [0u32; Q_MAX as usize + 1];
    let mut q = 0;
    while q <= Q_MAX as usize {
        t[q] = EXP2_TABLE[q & 255] >> (q >> 8);
        q += 1;
    }
    t
};

/// `x^(1/256)` of one half, in Q62, by bisection on `y^256 ≤ 1/2` with 128-bit integers;
/// then `table[i] = round(r^i)` in Q31.
const fn exp2_table() -> [u32; 256] {
    const ONE: u128 = 1 << 62;
    // y^256 computed by 8 squarings in Q62.
    const fn pow256(y: u128) -> u128 {
        let mut v = y;
        let mut k = 0;
        while k < 8 {
            v = (v * v) >> 62;
            k += 1;
        }
        v
    }
    let (mut lo, mut hi) = (ONE / 2, ONE);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if pow256(mid) <= ONE / 2 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let r = lo;
    let mut table = [0u32; 256];
    let mut acc = ONE;
    let mut i = 0;
    while i < 256 {
        // Q62 → Q31 with rounding.
        table[i] = ((acc + (1 << 30)) >> 31) as u32;
        acc = (acc * r) >> 62;
        i += 1;
    }
    table
}

/// Turns `logits` into a cumulative frequency table `cum` (`logits.len() + 1` entries, total
/// `2^bits`, each frequency ≥ 1). `weights` is scratch space of `logits.len()` entries, kept
/// by the caller so no allocation happens per token.
///
/// `weights` and `cum` may be longer than `logits` (by `extra` symbols): the extra symbols
/// get weight 0, hence frequency 1. They are the raw-byte escapes of a tokenizer whose
/// vocabulary lacks some bytes.
pub fn logits_to_cum(logits: &[f32], bits: u32, weights: &mut [u32], cum: &mut [u32]) {
    assert!(cum.len() == weights.len() + 1);
    let (sum, best) = logits_to_weights(logits, bits, weights);
    scale_to_cum(weights, sum, best, bits, cum);
}

/// The interval of symbol `s` in the table [`logits_to_cum`] would make (`(cum[s],
/// cum[s + 1] − cum[s])`), without writing the table: all an encoder needs, which knows the
/// symbol before asking. The same arithmetic, so the same numbers (tested), for a fraction of
/// the memory traffic (a 49,409-entry table is 193 KiB).
pub fn logits_to_interval(logits: &[f32], bits: u32, weights: &mut [u32], s: usize) -> (u32, u32) {
    assert!(s < weights.len());
    let (sum, best) = logits_to_weights(logits, bits, weights);
    weights_interval(weights, sum, best, bits, s)
}

/// The interval of symbol `s` in the table [`scale_to_cum`] makes of `weights` (their sum
/// `sum`, first maximum `best`), without writing the table.
pub(crate) fn weights_interval(
    weights: &[u32],
    sum: u64,
    best: usize,
    bits: u32,
    s: usize,
) -> (u32, u32) {
    let k = scale_factor(weights.len(), sum, bits);
    let below = freq_sum(&weights[..s], k);
    let used = below.wrapping_add(freq_sum(&weights[s..], k));
    let left = ((1u64 << bits) - used as u64) as u32;
    let lo = below + if best < s { left } else { 0 };
    let freq = freq_of(weights[s], k) + if best == s { left } else { 0 };
    (lo, freq)
}

/// The symbol `s` whose interval `[cum[s], cum[s + 1])` in the table [`logits_to_cum`] would
/// make holds `c` (`c < 2^bits`), and that interval as `(s, cum[s], cum[s + 1] − cum[s])`,
/// without writing the table: all a decoder needs, which knows the point before asking.
/// The same arithmetic, so the same numbers (tested).
pub fn logits_find(logits: &[f32], bits: u32, weights: &mut [u32], c: u32) -> (usize, u32, u32) {
    assert!((c as u64) < 1u64 << bits);
    let (sum, best) = logits_to_weights(logits, bits, weights);
    weights_find(weights, sum, best, bits, c)
}

/// The symbol whose interval in the table [`scale_to_cum`] makes of `weights` (their sum
/// `sum`, first maximum `best`) holds `c`, with that interval, without writing the table.
pub(crate) fn weights_find(
    weights: &[u32],
    sum: u64,
    best: usize,
    bits: u32,
    c: u32,
) -> (usize, u32, u32) {
    let k = scale_factor(weights.len(), sum, bits);
    let left = ((1u64 << bits) - freq_sum(weights, k) as u64) as u32;
    // cum[i] ≤ 2^bits for every i, so no sum below wraps. Whole blocks of 64 symbols are
    // skipped on their (vectorised) sum; the block holding c is then walked one by one.
    const BLOCK: usize = 64;
    let mut acc = 0u32;
    let mut start = 0;
    for block in weights.chunks(BLOCK) {
        let extra = if (start..start + block.len()).contains(&best) {
            left
        } else {
            0
        };
        let total = freq_sum(block, k) + extra;
        if c - acc < total {
            break;
        }
        acc += total;
        start += block.len();
    }
    for (s, &w) in weights.iter().enumerate().skip(start) {
        let f = freq_of(w, k) + if s == best { left } else { 0 };
        if c - acc < f {
            return (s, acc, f);
        }
        acc += f;
    }
    unreachable!("the frequencies sum to 2^bits > c")
}

/// Quantized weights of `logits` into `weights` (the escapes past the logits get 0); returns
/// their sum and the first most likely symbol.
fn logits_to_weights(logits: &[f32], bits: u32, weights: &mut [u32]) -> (u64, usize) {
    let n = logits.len();
    logits_to_q(logits, bits, weights);
    let mut sum = 0u64;
    for w in weights[..n].iter_mut() {
        // q ≤ Q_MAX = 2^13 − 1 already; the mask only spares the bounds check.
        *w = EXP2_Q[(*w & Q_MAX) as usize];
        sum = sum.wrapping_add(*w as u64);
    }
    (sum, first_best(&weights[..n]))
}

/// [`logits_to_weights`] under an adaptive bias (FORMAT.md §12.9): `bias[i]`, in 2^-16 bit,
/// is taken off symbol `i`'s quantized log-ratio `q_i` (floored to 2^-8 bit), the results
/// are shifted so that the smallest is 0 and saturated at `Q_MAX`, then weighted as
/// unbiased ones are. A zero bias gives exactly [`logits_to_weights`]'s weights wherever the
/// largest logit is finite (where it is not, every `q` is `Q_MAX`: weight 0 there, 2^31 here).
pub(crate) fn logits_to_weights_biased(
    logits: &[f32],
    bias: &[i32],
    bits: u32,
    weights: &mut [u32],
) -> (u64, usize) {
    let n = logits.len();
    assert_eq!(bias.len(), n);
    logits_to_q(logits, bits, weights);
    let head = &mut weights[..n];
    // q ≤ 8191 and |bias >> 8| ≤ 2^16 (bias is clamped to ±2^24), so u fits an i32.
    let mut min = i32::MAX;
    for (&q, &b) in head.iter().zip(bias) {
        let u = q as i32 - (b >> 8);
        min = if u < min { u } else { min };
    }
    let mut sum = 0u64;
    for (w, &b) in head.iter_mut().zip(bias) {
        let u = (*w as i32 - (b >> 8) - min) as u32;
        *w = EXP2_Q[if u < Q_MAX { u } else { Q_MAX } as usize];
        sum = sum.wrapping_add(*w as u64);
    }
    (sum, first_best(head))
}

/// The first most likely symbol: weight 2^31 exactly when q = 0; when no symbol has it,
/// every weight is 0 (max infinite or NaN) and symbol 0 takes the remainder.
fn first_best(weights: &[u32]) -> usize {
    weights.iter().position(|&w| w == 1 << 31).unwrap_or(0)
}

/// The quantized log-ratios `q_i` of §12.3 into `weights[..n]` (0 ..= `Q_MAX`), and 0 into
/// the escapes past the logits.
fn logits_to_q(logits: &[f32], bits: u32, weights: &mut [u32]) {
    let n = logits.len();
    let total = weights.len();
    assert!(n >= 1 && total >= n && total < (1 << bits));
    // This runs once per coded token over the whole vocabulary (49,408 symbols for SmolLM2),
    // so it is written as straight passes the compiler vectorises: selects instead of
    // branches, no saturating float→int cast (it does not vectorise), no overflow checks on
    // sums that cannot overflow. `reference::logits_to_cum` in the tests is the plain
    // statement of the same function; a test holds the two equal bit for bit.
    let max = max_logit(logits);
    let (head, tail) = weights.split_at_mut(n);
    tail.fill(0);
    for (w, &l) in head.iter_mut().zip(logits) {
        let d = (max - l) * SCALE;
        // NaN fails the comparison, so a NaN logit (or an infinite max) is the least likely
        // value. Then 0 ≤ d ≤ Q_MAX (d = −0 at the maximum), and ⌊d⌋ is taken exactly:
        // adding 2^23 rounds d to the nearest integer in the low mantissa bits, and one is
        // taken off where that rounded up.
        let d = if d < Q_MAX as f32 { d } else { Q_MAX as f32 };
        let m = d + TWO_23;
        // (Never below zero: a d that rounds up is at least 1/2.)
        *w = (m.to_bits() & 0x7f_ffff).wrapping_sub(u32::from(m - TWO_23 > d));
    }
}

/// Every symbol's frequency in the table [`scale_to_cum`] makes of `weights` (sum `sum`,
/// first maximum `best`), passed to `each(symbol, frequency)` in symbol order, without
/// writing the table.
pub(crate) fn for_each_freq(
    weights: &[u32],
    sum: u64,
    best: usize,
    bits: u32,
    mut each: impl FnMut(usize, u32),
) {
    let k = scale_factor(weights.len(), sum, bits);
    let left = ((1u64 << bits) - freq_sum(weights, k) as u64) as u32;
    for (i, &w) in weights.iter().enumerate() {
        each(i, freq_of(w, k) + if i == best { left } else { 0 });
    }
}

/// The largest logit, NaN skipped (−∞ if all are NaN). Eight independent lanes so the loop
/// vectorises; the result does not depend on the lane split (the maximum of the non-NaN
/// values; of +0 and −0 either one, and both give the same frequencies).
fn max_logit(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &l) in lanes.iter_mut().zip(c) {
            *m = if l > *m { l } else { *m };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &l in lanes.iter().chain(rest) {
        if l > max {
            max = l;
        }
    }
    max
}

/// Scales non-negative integer weights to frequencies summing to exactly `2^bits`, every
/// frequency ≥ 1, and writes their prefix sums into `cum`. All weights zero gives the
/// uniform distribution. Shared by every model, so they all obey the same rules.
pub fn weights_to_cum(weights: &[u32], bits: u32, cum: &mut [u32]) {
    let mut sum = 0u64;
    let mut best = 0usize;
    for (i, &w) in weights.iter().enumerate() {
        sum += w as u64;
        if w > weights[best] {
            best = i;
        }
    }
    scale_to_cum(weights, sum, best, bits, cum);
}

/// [`weights_to_cum`] given the weights' sum and the index of their first maximum, which
/// gets the rounding remainder.
pub(crate) fn scale_to_cum(weights: &[u32], sum: u64, best: usize, bits: u32, cum: &mut [u32]) {
    assert!(cum.len() == weights.len() + 1);
    let total_out = 1u64 << bits;
    let k = scale_factor(weights.len(), sum, bits);
    // Frequencies first (independent, so vectorised; k < 2^32 whenever the largest weight is
    // 2^31, as from logits, and then one 32×32-bit product suffices), the remainder added to
    // the best symbol, then the prefix sums.
    let freqs = &mut cum[1..];
    match u32::try_from(k) {
        Ok(k) => {
            for (f, &w) in freqs.iter_mut().zip(weights) {
                *f = 1 + ((w as u64 * k as u64) >> 32) as u32;
            }
        }
        Err(_) => {
            for (f, &w) in freqs.iter_mut().zip(weights) {
                *f = 1 + ((w as u64 * k) >> 32) as u32;
            }
        }
    }
    let used = freqs.iter().fold(0u32, |a, &f| a.wrapping_add(f));
    freqs[best] += (total_out - used as u64) as u32;
    cum[0] = 0;
    let mut acc = 0u32;
    for c in &mut cum[1..] {
        acc = acc.wrapping_add(*c);
        *c = acc;
    }
}

/// f = 1 + ⌊w·k / 2^32⌋ with k = ⌊spare·2^32 / sum⌋, `spare` = 2^bits − n: one
/// multiplication per symbol instead of a division, and Σf ≤ 2^bits by construction (so sums
/// of frequencies cannot wrap a u32 for bits ≤ 31).
fn scale_factor(n: usize, sum: u64, bits: u32) -> u64 {
    let total_out = 1u64 << bits;
    assert!((n as u64) < total_out);
    let spare = total_out - n as u64;
    if sum == 0 {
        0
    } else {
        (((spare as u128) << 32) / sum as u128) as u64
    }
}

/// One symbol's frequency before the remainder (see [`scale_factor`]).
fn freq_of(w: u32, k: u64) -> u32 {
    1 + ((w as u64 * k) >> 32) as u32
}

/// Σ [`freq_of`] over `weights`, in the 32×32-bit form where k allows (it vectorises).
fn freq_sum(weights: &[u32], k: u64) -> u32 {
    match u32::try_from(k) {
        Ok(k) => weights.iter().fold(0u32, |a, &w| {
            a.wrapping_add(1 + ((w as u64 * k as u64) >> 32) as u32)
        }),
        Err(_) => weights
            .iter()
            .fold(0u32, |a, &w| a.wrapping_add(freq_of(w, k))),
    }
}

/// The plain statement of [`logits_to_cum`] and [`weights_to_cum`], as first written (and as
/// FORMAT.md states them): the optimised versions must give exactly their tables.
#[cfg(test)]
mod reference {
    use super::{EXP2_TABLE, Q_MAX, SCALE};

    pub fn logits_to_cum(logits: &[f32], bits: u32, weights: &mut [u32], cum: &mut [u32]) {
        let n = logits.len();
        let mut max = f32::NEG_INFINITY;
        for &l in logits {
            if l > max {
                max = l;
            }
        }
        weights[n..].fill(0);
        for (w, &l) in weights.iter_mut().zip(logits) {
            let d = (max - l) * SCALE;
            let q = if d < Q_MAX as f32 { d as u32 } else { Q_MAX };
            *w = EXP2_TABLE[(q & 255) as usize] >> (q >> 8);
        }
        weights_to_cum(weights, bits, cum);
    }

    pub fn weights_to_cum(weights: &[u32], bits: u32, cum: &mut [u32]) {
        let n = weights.len() as u64;
        let total_out = 1u64 << bits;
        let mut sum = 0u64;
        let mut best = 0usize;
        for (i, &w) in weights.iter().enumerate() {
            sum += w as u64;
            if w > weights[best] {
                best = i;
            }
        }
        let spare = total_out - n;
        let k: u64 = if sum == 0 {
            0
        } else {
            (((spare as u128) << 32) / sum as u128) as u64
        };
        let mut acc = 0u32;
        cum[0] = 0;
        for (i, &w) in weights.iter().enumerate() {
            acc += 1 + ((w as u64 * k) >> 32) as u32;
            cum[i + 1] = acc;
        }
        let left = (total_out - acc as u64) as u32;
        if left > 0 {
            for c in &mut cum[best + 1..] {
                *c += left;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic generator for the randomised comparisons.
    pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    fn table_is_exact_powers_of_two() {
        assert_eq!(EXP2_TABLE[0], 1 << 31);
        // 2^(-128/256) = 1/sqrt(2).
        let half = (2f64.powf(-0.5) * 2f64.powi(31)).round() as i64;
        assert!((EXP2_TABLE[128] as i64 - half).abs() <= 1);
        for w in EXP2_TABLE.windows(2) {
            assert!(w[0] > w[1]);
        }
        // A frozen checksum: if the table ever changes, every archive would decode wrongly.
        let sum: u64 = EXP2_TABLE.iter().map(|&x| x as u64).sum();
        assert_eq!(sum, 397_102_106_376);
    }

    #[test]
    fn frequencies_sum_and_floor() {
        let logits: Vec<f32> = (0..49_152)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.03 - 10.0)
            .collect();
        let mut w = vec![0; logits.len()];
        let mut cum = vec![0; logits.len() + 1];
        logits_to_cum(&logits, 24, &mut w, &mut cum);
        assert_eq!(cum[logits.len()], 1 << 24);
        assert!(cum.windows(2).all(|p| p[1] > p[0]));
    }

    #[test]
    fn close_to_softmax() {
        let logits: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 8.0).collect();
        let mut w = vec![0; 1000];
        let mut cum = vec![0; 1001];
        logits_to_cum(&logits, 24, &mut w, &mut cum);
        let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
        // Cross-entropy of the quantized table against the softmax: within 0.01 bit.
        let kl: f64 = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let p = (l as f64 - m).exp() / z;
                let q = (cum[i + 1] - cum[i]) as f64 / (1u64 << 24) as f64;
                p * (p / q).log2()
            })
            .sum();
        assert!(kl < 0.01, "KL {kl}");
    }

    #[test]
    fn nan_and_infinity_are_safe() {
        let logits = [f32::NAN, f32::INFINITY, 1.0, f32::NEG_INFINITY];
        let mut w = vec![0; 4];
        let mut cum = vec![0; 5];
        logits_to_cum(&logits, 24, &mut w, &mut cum);
        assert_eq!(cum[4], 1 << 24);
        assert!(cum.windows(2).all(|p| p[1] > p[0]));
    }

    /// The fast path gives the reference tables bit for bit: random logits, ties at the
    /// maximum, ±0, NaN, infinities, escapes, lengths around the 8-lane split.
    #[test]
    fn fast_path_matches_reference() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        for case in 0..400 {
            let n = 1 + (next() % 300) as usize + if case % 50 == 0 { 49_000 } else { 0 };
            let extra = (next() % 3) as usize * 7;
            let spread = [0.01f32, 1.0, 10.0, 100.0][case % 4];
            let mut logits: Vec<f32> = (0..n)
                .map(|_| ((next() % 20_001) as f32 / 10_000.0 - 1.0) * spread)
                .collect();
            match case % 7 {
                1 => logits
                    .iter_mut()
                    .for_each(|l| *l = (*l * 4.0).round() / 4.0),
                2 => logits[next() as usize % n] = f32::NAN,
                3 => logits[next() as usize % n] = f32::INFINITY,
                4 => logits[next() as usize % n] = f32::NEG_INFINITY,
                5 => {
                    logits.iter_mut().for_each(|l| *l = -0.0);
                    logits[next() as usize % n] = 0.0;
                }
                6 => logits.iter_mut().for_each(|l| *l = f32::NAN),
                _ => {}
            }
            let total = n + extra;
            let (mut w1, mut w2) = (vec![7; total], vec![9; total]);
            let (mut c1, mut c2) = (vec![1; total + 1], vec![2; total + 1]);
            logits_to_cum(&logits, 24, &mut w1, &mut c1);
            reference::logits_to_cum(&logits, 24, &mut w2, &mut c2);
            assert_eq!(c1, c2, "case {case}");
            // And the encoder's interval of a symbol is that symbol's in the table: the first
            // and last symbols, the most likely (it takes the rounding remainder), symbols
            // on either side of it, random ones, escapes.
            let freq = |s: usize| c2[s + 1] - c2[s];
            let best = (0..total).fold(0, |b, s| if freq(s) > freq(b) { s } else { b });
            let mut symbols = vec![
                0,
                total - 1,
                best,
                best.saturating_sub(1),
                (best + 1) % total,
            ];
            symbols.extend((0..3).map(|_| next() as usize % total));
            for s in symbols {
                let got = logits_to_interval(&logits, 24, &mut w1, s);
                assert_eq!(got, (c2[s], freq(s)), "case {case}, symbol {s}");
                // The decoder's search finds the symbol from any point of its interval.
                for c in [
                    c2[s],
                    c2[s + 1] - 1,
                    c2[s] + (next() % freq(s) as u64) as u32,
                ] {
                    let got = logits_find(&logits, 24, &mut w1, c);
                    assert_eq!(got, (s, c2[s], freq(s)), "case {case}, point {c}");
                }
            }
        }
    }

    /// `weights_to_cum` (the order-1 model's path, where the scale factor may need 64 bits)
    /// against the reference: small and large weights, ties, zeros.
    #[test]
    fn weights_path_matches_reference() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        for case in 0..300 {
            let n = 1 + (next() % 400) as usize;
            let top = [1u64, 3, 255, 65_535, 1 << 31, u32::MAX as u64][case % 6];
            let mut weights: Vec<u32> = (0..n).map(|_| (next() % (top + 1)) as u32).collect();
            if case % 5 == 0 {
                weights.iter_mut().for_each(|w| *w = 0);
            }
            let (mut c1, mut c2) = (vec![0; n + 1], vec![0; n + 1]);
            weights_to_cum(&weights, 24, &mut c1);
            reference::weights_to_cum(&weights, 24, &mut c2);
            assert_eq!(c1, c2, "case {case}");
        }
    }
}
