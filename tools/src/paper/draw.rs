//! Seeded drawing of the measured bytes, so that a rerun measures the same bytes.
//!
//! Every modality is measured on *units* of [`UNIT`] bytes: for text and audio, windows of
//! 8,192 contiguous bytes at 8,192-aligned offsets inside one segment (one text, one
//! recording); for images, four patches. The units are drawn without replacement by a
//! Fisher–Yates shuffle driven by SplitMix64 from `--seed`. Chunks of 2,048 bytes (the
//! paper's) are the quarters of the units, in order, so every compressor at every chunk size
//! sees the same bytes, and lmz at its default block size (8 KiB) codes exactly the units.

use anyhow::{ensure, Result};

use super::modality::Pool;

/// The paper's chunk length.
pub const CHUNK: usize = 2048;
/// Bytes drawn together; a multiple of every chunk size measured.
pub const UNIT: usize = 8192;

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, and fully specified by its seed.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by the multiply-shift map (bias below 2^-40 here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// The first `k` of `0..n` in the order a seeded Fisher–Yates shuffle puts them.
pub fn sample(n: usize, k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(k.min(n));
    idx
}

/// `limit / UNIT` units drawn from `pool` with `seed`; an error if the pool holds fewer.
pub fn draw(pool: &Pool, limit: usize, seed: u64) -> Result<Vec<Vec<u8>>> {
    let n = limit / UNIT;
    ensure!(n > 0, "--limit {limit}: at least {UNIT} bytes per modality");
    let mut rng = SplitMix64::new(seed);
    match pool {
        Pool::Segments(segs) => {
            let windows: Vec<(usize, usize)> = segs
                .iter()
                .enumerate()
                .flat_map(|(s, b)| (0..b.len() / UNIT).map(move |w| (s, w * UNIT)))
                .collect();
            ensure!(
                windows.len() >= n,
                "--limit {limit}: the data holds only {} windows of {UNIT} bytes ({} bytes)",
                windows.len(),
                windows.len() * UNIT
            );
            Ok(sample(windows.len(), n, &mut rng)
                .into_iter()
                .map(|i| {
                    let (s, o) = windows[i];
                    segs[s][o..o + UNIT].to_vec()
                })
                .collect())
        }
        Pool::Patches(patches) => {
            let per = UNIT / CHUNK;
            ensure!(
                patches.len() >= n * per,
                "--limit {limit}: the images hold only {} patches ({} bytes)",
                patches.len(),
                patches.len() * CHUNK
            );
            let picked = sample(patches.len(), n * per, &mut rng);
            Ok(picked
                .chunks(per)
                .map(|g| g.iter().flat_map(|&i| patches[i].iter().copied()).collect())
                .collect())
        }
    }
}

/// The units cut into chunks of `size` bytes (a divisor of [`UNIT`]), in order.
pub fn chunks(units: &[Vec<u8>], size: usize) -> Vec<&[u8]> {
    debug_assert!(UNIT.is_multiple_of(size));
    units.iter().flat_map(|u| u.chunks(size)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_its_reference_output() {
        // Reference values of SplitMix64 seeded with 0 (as in Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn the_same_seed_draws_the_same_bytes_and_another_seed_others() {
        let text: Vec<u8> = (0..100 * UNIT).map(|i| (i * 7 % 253) as u8).collect();
        let pool = Pool::Segments(vec![text.clone(), text[..3 * UNIT + 5].to_vec()]);
        let a = draw(&pool, 5 * UNIT + 100, 1).unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a, draw(&pool, 5 * UNIT, 1).unwrap());
        assert_ne!(a, draw(&pool, 5 * UNIT, 2).unwrap());
        // Windows are aligned and inside one segment.
        for u in &a {
            assert!(text.chunks(UNIT).any(|w| w == u.as_slice()));
        }
    }

    #[test]
    fn draws_are_without_replacement() {
        let mut r = SplitMix64::new(7);
        let mut s = sample(50, 50, &mut r);
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn too_small_a_pool_or_limit_is_an_error() {
        let pool = Pool::Segments(vec![vec![0; 2 * UNIT]]);
        assert!(draw(&pool, 3 * UNIT, 0).is_err());
        assert!(draw(&pool, UNIT - 1, 0).is_err());
        let patches = Pool::Patches(vec![vec![1; CHUNK]; 7]);
        assert_eq!(draw(&patches, UNIT, 0).unwrap()[0].len(), UNIT);
        assert!(draw(&patches, 2 * UNIT, 0).is_err());
    }

    #[test]
    fn chunks_are_quarters_of_units_in_order() {
        let units = vec![(0..UNIT).map(|i| (i / CHUNK) as u8).collect::<Vec<u8>>()];
        let c = chunks(&units, CHUNK);
        assert_eq!(c.len(), 4);
        for (i, ch) in c.iter().enumerate() {
            assert!(ch.iter().all(|&b| b == i as u8));
        }
    }
}
