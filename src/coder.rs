//! The range coder: turns symbols drawn from integer frequency tables into bytes and back.
//!
//! It depends on nothing but integers. A distribution is a cumulative table `cum` of
//! `n + 1` entries with `cum[0] = 0`, `cum[n] = 2^bits`, and `cum[s+1] > cum[s]` (every symbol
//! has frequency ≥ 1). Floats never reach this module, so encoder and decoder agree exactly
//! whenever they are handed the same tables.
//!
//! Design: a carry-propagating range coder with a 32-bit range (LZMA's byte-wise
//! normalisation, `range ≥ 2^24` after every symbol) and *exact* interval splitting: a
//! symbol's sub-interval is `[⌊range·cum[s] / 2^bits⌋, ⌊range·cum[s+1] / 2^bits⌋)`, computed in
//! 64-bit arithmetic. Compared with the classic `r = range / total` split this loses nothing to
//! truncation but a rounding of at most one unit per end, which keeps the coded length within
//! a few thousandths of a bit per symbol of the ideal `Σ −log2 p`. Flushing costs under two
//! bytes per stream: it writes the point of the final interval with the most trailing zeros.
//! `bits` may be at most 24 so every symbol's sub-interval is at least one unit wide.

/// Largest frequency precision the coder supports.
pub const MAX_BITS: u32 = 24;
const TOP: u32 = 1 << 24;

/// Range encoder writing into a `Vec<u8>`.
pub struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    out: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            out: Vec::new(),
        }
    }

    /// Encodes the symbol whose interval is `[start, start + freq)` out of `2^bits`.
    #[inline]
    pub fn encode(&mut self, start: u32, freq: u32, bits: u32) {
        debug_assert!(bits <= MAX_BITS && freq > 0 && (start as u64 + freq as u64) <= 1 << bits);
        let r = self.range as u64;
        let lo = (r * start as u64) >> bits;
        let hi = (r * (start as u64 + freq as u64)) >> bits;
        self.low += lo;
        self.range = (hi - lo) as u32;
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    fn shift_low(&mut self) {
        if self.low < 0xFF00_0000 || self.low >= 1 << 32 {
            let carry = (self.low >> 32) as u8;
            let mut c = self.cache;
            loop {
                self.out.push(c.wrapping_add(carry));
                c = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    /// Flushes the state and returns the coded bytes. The first byte LZMA's scheme emits is
    /// always zero and is dropped here (the decoder assumes it).
    ///
    /// Any point of the final interval `[low, low + range)` decodes to the same symbols, and
    /// the decoder reads zeros past the end, so the flush writes the point with the most
    /// trailing zero bits: the multiple of the largest power of two the interval holds. Its
    /// zero bytes are then trimmed, which saves two to three bytes per stream over flushing
    /// `low` itself (`range ≥ 2^24`, so at least 23 low bits are free).
    pub fn finish(mut self) -> Vec<u8> {
        let end = self.low + self.range as u64;
        for k in (0..=40u32).rev() {
            let mask = (1u64 << k) - 1;
            let v = (self.low + mask) & !mask;
            if v < end {
                self.low = v;
                break;
            }
        }
        self.flush_low()
    }

    /// Writes out `low` as it stands and trims the result.
    fn flush_low(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out.remove(0);
        // Trailing zero bytes need not be stored: the decoder reads zeros past the end.
        while self.out.last() == Some(&0) {
            self.out.pop();
        }
        self.out
    }
}

/// Range decoder over a byte slice. Reading past the end yields zero bytes; callers bound the
/// number of symbols, so a damaged stream produces wrong symbols (caught by the block CRC),
/// never a hang.
pub struct Decoder<'a> {
    code: u32,
    range: u32,
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(input: &'a [u8]) -> Decoder<'a> {
        let mut d = Decoder {
            code: 0,
            range: u32::MAX,
            input,
            pos: 0,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | d.next_byte() as u32;
        }
        d
    }

    #[inline]
    fn next_byte(&mut self) -> u8 {
        let b = self.input.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Decodes one symbol from the cumulative table `cum` (`cum.len() = n + 1`, total
    /// `2^bits`). Returns `None` when the input cannot be a valid stream for this table.
    #[inline]
    pub fn decode(&mut self, cum: &[u32], bits: u32) -> Option<usize> {
        let c = self.point(bits)?;
        let s = find(cum, c)?;
        self.consume(cum[s], cum[s + 1] - cum[s], bits);
        Some(s)
    }

    /// The point `c` in `[0, 2^bits)` that selects the next symbol: the one whose interval
    /// `[cum[s], cum[s + 1])` holds it. `None` when the input cannot be a valid stream. With
    /// [`Self::consume`], this is [`Self::decode`] for callers that find the symbol without a
    /// whole table.
    #[inline]
    pub fn point(&self, bits: u32) -> Option<u32> {
        let range = self.range as u64;
        let v = self.code as u64;
        if v >= range {
            return None;
        }
        // Largest c with ⌊range·c / 2^bits⌋ ≤ v; below 2^bits since v < range.
        Some(((((v + 1) << bits) - 1) / range) as u32)
    }

    /// Takes the symbol of interval `[start, start + freq)` out of `2^bits`, which must hold
    /// [`Self::point`].
    #[inline]
    pub fn consume(&mut self, start: u32, freq: u32, bits: u32) {
        let range = self.range as u64;
        let lo = (range * start as u64) >> bits;
        let hi = (range * (start as u64 + freq as u64)) >> bits;
        self.code = (self.code as u64 - lo) as u32;
        self.range = (hi - lo) as u32;
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | self.next_byte() as u32;
        }
    }

    /// Bytes read so far, counting the zeros read past the end of the input. After the last
    /// symbol this equals the encoder's output length before trailing zeros were trimmed.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

/// The symbol `s` with `cum[s] ≤ c < cum[s + 1]`, if any.
pub fn find(cum: &[u32], c: u32) -> Option<usize> {
    let s = cum.partition_point(|&x| x <= c).checked_sub(1)?;
    (s + 1 < cum.len()).then_some(s)
}

/// Ideal code length in bits of a symbol of frequency `freq` out of `2^bits`:
/// `−log2(freq / 2^bits)`.
pub fn ideal_bits(freq: u32, bits: u32) -> f64 {
    bits as f64 - (freq as f64).log2()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A deterministic xorshift generator: tests stay reproducible without a crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn table(weights: &[u64], bits: u32) -> Vec<u32> {
        let total: u64 = weights.iter().sum();
        let spare = (1u64 << bits) - weights.len() as u64;
        let mut f: Vec<u64> = weights.iter().map(|w| 1 + w * spare / total).collect();
        let left = (1u64 << bits) - f.iter().sum::<u64>();
        f[0] += left;
        let mut cum = vec![0u32];
        for x in f {
            cum.push(cum.last().unwrap() + x as u32);
        }
        cum
    }

    fn sample(cum: &[u32], rng: &mut Rng) -> usize {
        let x = (rng.next() % *cum.last().unwrap() as u64) as u32;
        cum.partition_point(|&c| c <= x) - 1
    }

    /// Overhead against Σ −log2 p on synthetic distributions, from near-uniform to very
    /// skewed: ≤ 0.01 bit per symbol plus ≤ 8 bytes per stream.
    #[test]
    fn overhead_is_small() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for (vocab, skew) in [
            (2usize, 1u32),
            (256, 1),
            (256, 8),
            (49_152, 4),
            (49_152, 16),
            (49_152, 30),
        ] {
            // Several tables per vocabulary, switched per symbol like a model's predictions.
            let tables: Vec<Vec<u32>> = (0..8)
                .map(|_| {
                    let w: Vec<u64> = (0..vocab)
                        .map(|_| 1 + (rng.next() >> (64 - skew)))
                        .collect();
                    // Skew: a few symbols get most of the mass.
                    let mut w = w;
                    for _ in 0..3 {
                        let i = (rng.next() % vocab as u64) as usize;
                        w[i] += 1u64 << (skew + 6).min(40);
                    }
                    table(&w, 24)
                })
                .collect();
            let n = 20_000;
            let mut enc = Encoder::new();
            let mut ideal = 0.0;
            let mut syms = Vec::with_capacity(n);
            for i in 0..n {
                let cum = &tables[i % tables.len()];
                let s = sample(cum, &mut rng);
                ideal += ideal_bits(cum[s + 1] - cum[s], 24);
                enc.encode(cum[s], cum[s + 1] - cum[s], 24);
                syms.push(s);
            }
            let bytes = enc.finish();
            let actual = bytes.len() as f64 * 8.0;
            let overhead = (actual - ideal - 64.0) / n as f64;
            assert!(
                overhead <= 0.01,
                "vocab {vocab} skew {skew}: {overhead} bits/symbol over ideal"
            );
            let mut dec = Decoder::new(&bytes);
            for (i, &s) in syms.iter().enumerate() {
                assert_eq!(dec.decode(&tables[i % tables.len()], 24), Some(s));
            }
            assert!(dec.consumed() >= bytes.len());
        }
    }

    /// The short flush never writes more than flushing `low`, saves at least two bytes a stream
    /// on average, and both decode to the same symbols (old archives stay valid).
    #[test]
    fn short_flush_saves_bytes_and_decodes_like_the_old_one() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let cum = table(&[1, 3, 40, 200, 7, 1000, 2, 90], 24);
        let (mut saved, streams) = (0usize, 400);
        for n in 0..streams {
            let syms: Vec<usize> = (0..n % 97).map(|_| sample(&cum, &mut rng)).collect();
            let encode = || {
                let mut e = Encoder::new();
                for &s in &syms {
                    e.encode(cum[s], cum[s + 1] - cum[s], 24);
                }
                e
            };
            // The flush as lmz wrote it before: `low` itself.
            let (short, old) = (encode().finish(), encode().flush_low());
            assert!(
                short.len() <= old.len(),
                "{n}: {} > {}",
                short.len(),
                old.len()
            );
            saved += old.len() - short.len();
            for bytes in [&short, &old] {
                let mut dec = Decoder::new(bytes);
                for &s in &syms {
                    assert_eq!(dec.decode(&cum, 24), Some(s));
                }
                assert!(dec.consumed() >= bytes.len());
            }
        }
        assert!(
            saved >= 2 * streams,
            "saved only {saved} bytes over {streams} streams"
        );
    }

    #[test]
    fn empty_and_single_symbol() {
        assert!(Encoder::new().finish().is_empty());
        let cum = [0u32, 1, 1 << 24];
        let mut e = Encoder::new();
        e.encode(0, 1, 24);
        let b = e.finish();
        assert_eq!(Decoder::new(&b).decode(&cum, 24), Some(0));
    }

    proptest! {
        #[test]
        fn round_trip(weights in proptest::collection::vec(0u64..1000, 2..300),
                      picks in proptest::collection::vec(any::<u16>(), 0..500),
                      bits in 12u32..=24) {
            prop_assume!(weights.len() < (1 << bits));
            let cum = table(&weights, bits);
            let syms: Vec<usize> = picks.iter().map(|&p| p as usize % weights.len()).collect();
            let mut e = Encoder::new();
            for &s in &syms {
                e.encode(cum[s], cum[s + 1] - cum[s], bits);
            }
            let b = e.finish();
            let mut d = Decoder::new(&b);
            for &s in &syms {
                prop_assert_eq!(d.decode(&cum, bits), Some(s));
            }
        }

        /// Arbitrary bytes decode to some symbols without panicking.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let cum = table(&[5, 1, 1, 100], 24);
            let mut d = Decoder::new(&bytes);
            for _ in 0..100 {
                if d.decode(&cum, 24).is_none() { break; }
            }
        }
    }
}
