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
/// only (see [`exp2_table`]), so every build on every machine has the same table.
pub static EXP2_TABLE: [u32; 256] = exp2_table();

/// Largest quantized log-ratio: weights below 2^-32 of the maximum all get weight 0 (and then
/// frequency 1).
const Q_MAX: u32 = 32 * 256 - 1;
/// 256 · log2(e), rounded to f32.
const SCALE: f32 = 256.0 * std::f32::consts::LOG2_E;

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
    let n = logits.len();
    let total = weights.len();
    assert!(n >= 1 && total >= n && cum.len() == total + 1 && total < (1 << bits));
    // NaN compares false both ways and is skipped, so it cannot become the maximum.
    let mut max = f32::NEG_INFINITY;
    for &l in logits {
        if l > max {
            max = l;
        }
    }
    weights[n..].fill(0);
    for (w, &l) in weights.iter_mut().zip(logits) {
        let d = (max - l) * SCALE;
        // `as u32` saturates and maps NaN to 0; a NaN logit (or an infinite max) is treated
        // as the least likely value instead.
        let q = if d < Q_MAX as f32 { d as u32 } else { Q_MAX };
        *w = EXP2_TABLE[(q & 255) as usize] >> (q >> 8);
    }
    weights_to_cum(weights, bits, cum);
}

/// Scales non-negative integer weights to frequencies summing to exactly `2^bits`, every
/// frequency ≥ 1, and writes their prefix sums into `cum`. All weights zero gives the
/// uniform distribution. Shared by every model, so they all obey the same rules.
pub fn weights_to_cum(weights: &[u32], bits: u32, cum: &mut [u32]) {
    let n = weights.len() as u64;
    let total_out = 1u64 << bits;
    assert!(n < total_out && cum.len() == weights.len() + 1);
    let mut sum = 0u64;
    let mut best = 0usize;
    for (i, &w) in weights.iter().enumerate() {
        sum += w as u64;
        if w > weights[best] {
            best = i;
        }
    }
    let spare = total_out - n;
    // f = 1 + ⌊w·k / 2^32⌋ with k = ⌊spare·2^32 / sum⌋: one multiplication per symbol instead
    // of a division, and Σf ≤ 2^bits by construction.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
