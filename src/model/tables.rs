//! One model step's frequency work, many rows at once, over a pool of worker threads.
//!
//! A step yields a row of logits for every token fed: W rows when W blocks decode in
//! lockstep, up to 16·W when encoding. Each row is turned into integers by `quantize` alone —
//! a whole table ([`logits_to_cum`]), the interval of a known symbol (encoders,
//! [`logits_to_interval`]) or the symbol at a point (decoders, [`logits_find`]) —
//! independently of every other row, so spreading rows over threads cannot change a bit and
//! the thread count is not part of the archive's pin.
//!
//! Whether it pays depends on where the model runs. On a CPU the model's own threads use every
//! core and this work is 1–2% of a step (README, profile table); one thread is best there,
//! since extra workers only contend with llama.cpp's. On a GPU the CPU waits idle during the
//! step and this work becomes the bound: for SmolLM2's 49,408 symbols it takes 40–60 µs per
//! row on one core, capping one thread near 20,000 tokens/s whatever the GPU does.
//!
//! The pool is persistent (rayon): spawning threads for every step would cost tens of µs per
//! thread against a step's few hundred µs of tables. Rows are cut into one contiguous run per
//! worker, and each worker keeps its own `weights` scratch across steps, so nothing is
//! allocated per token.

use rayon::prelude::*;

use super::quantize::{logits_find, logits_to_cum, logits_to_interval};
use super::Token;

/// Turns rows of logits into cumulative frequency tables on `threads` threads.
pub struct Tables {
    /// `None` for one thread: the rows are done on the caller's thread.
    pool: Option<rayon::ThreadPool>,
    /// One scratch `weights` buffer per worker.
    scratch: Vec<Vec<u32>>,
}

impl Tables {
    /// A pool of `threads` workers (at least 1). Where the system refuses threads, the tables
    /// are made on the caller's thread, which gives the same tables.
    pub fn new(threads: usize) -> Tables {
        let threads = threads.max(1);
        let pool = if threads > 1 {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("lmz-tables-{i}"))
                .build()
                .map_err(|e| log::warn!("frequency tables on one thread: {e}"))
                .ok()
        } else {
            None
        };
        let workers = pool.as_ref().map_or(1, |p| p.current_num_threads());
        Tables {
            pool,
            scratch: vec![Vec::new(); workers],
        }
    }

    /// Worker threads the tables are spread over.
    pub fn threads(&self) -> usize {
        self.scratch.len()
    }

    /// Writes the table of `rows[i]` into `out[i]`, resized to `symbols + 1` entries, total
    /// `2^bits`. Rows may be shorter than `symbols` (symbols past a row's logits are escapes:
    /// see [`logits_to_cum`]). `out` must have at least `rows.len()` entries.
    pub fn fill(&mut self, rows: &[&[f32]], symbols: usize, bits: u32, out: &mut [Vec<u32>]) {
        self.spread(symbols, &mut out[..rows.len()], |i, weights, cum| {
            cum.resize(symbols + 1, 0);
            logits_to_cum(rows[i], bits, weights, cum);
        });
    }

    /// Writes, for each row `i`, the interval `(cum[s], cum[s + 1] − cum[s])` of symbol
    /// `s = targets[i]` in the table [`Self::fill`] would make, without making it (see
    /// [`logits_to_interval`]). Every target must be below `symbols`; `out` must have at
    /// least `rows.len()` entries.
    pub fn intervals(
        &mut self,
        rows: &[&[f32]],
        symbols: usize,
        bits: u32,
        targets: &[Token],
        out: &mut [(u32, u32)],
    ) {
        assert_eq!(rows.len(), targets.len());
        self.spread(symbols, &mut out[..rows.len()], |i, weights, o| {
            *o = logits_to_interval(rows[i], bits, weights, targets[i] as usize);
        });
    }

    /// Writes, for each row `i`, the symbol `s` whose interval in the table [`Self::fill`]
    /// would make holds point `points[i]`, with that interval: `(s, cum[s], cum[s + 1] −
    /// cum[s])`, without making the table (see [`logits_find`]). Every point must be below
    /// `2^bits`; `out` must have at least `rows.len()` entries.
    pub fn find(
        &mut self,
        rows: &[&[f32]],
        symbols: usize,
        bits: u32,
        points: &[u32],
        out: &mut [(Token, u32, u32)],
    ) {
        assert_eq!(rows.len(), points.len());
        self.spread(symbols, &mut out[..rows.len()], |i, weights, o| {
            let (s, lo, freq) = logits_find(rows[i], bits, weights, points[i]);
            *o = (s as Token, lo, freq);
        });
    }

    /// Calls `each(i, weights, &mut out[i])` for every `i`, on the pool where there is one:
    /// contiguous runs of rows, one per worker, each with its own `weights` scratch of
    /// `symbols` entries.
    fn spread<T: Send>(
        &mut self,
        symbols: usize,
        out: &mut [T],
        each: impl Fn(usize, &mut Vec<u32>, &mut T) + Sync,
    ) {
        for w in &mut self.scratch {
            w.resize(symbols, 0);
        }
        let run = |first: usize, weights: &mut Vec<u32>, out: &mut [T]| {
            for (j, o) in out.iter_mut().enumerate() {
                each(first + j, weights, o);
            }
        };
        match self.pool.as_ref().filter(|_| out.len() > 1) {
            None => run(0, &mut self.scratch[0], out),
            Some(pool) => {
                let per = out.len().div_ceil(self.scratch.len());
                let scratch = &mut self.scratch;
                pool.install(|| {
                    out.par_chunks_mut(per)
                        .zip(scratch.par_iter_mut())
                        .enumerate()
                        .for_each(|(c, (out, weights))| run(c * per, weights, out));
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quantize::tests::xorshift;

    /// Every thread count gives each row exactly the table [`logits_to_cum`] gives it alone,
    /// the interval of its target symbol in that table, and the symbol at its point, in the
    /// row's own place, for row counts below, at and above the worker count.
    #[test]
    fn any_thread_count_gives_each_row_its_own_table() {
        let symbols = 700;
        let mut next = xorshift(17);
        let logits: Vec<Vec<f32>> = (0..23)
            .map(|r| {
                // Rows of different lengths: the shorter ones have escape symbols.
                let n = symbols - (r % 3) * 5;
                (0..n)
                    .map(|_| (next() % 4000) as f32 / 100.0 - 20.0)
                    .collect()
            })
            .collect();
        let alone: Vec<Vec<u32>> = logits
            .iter()
            .map(|l| {
                let mut w = vec![0; symbols];
                let mut cum = vec![0; symbols + 1];
                logits_to_cum(l, 24, &mut w, &mut cum);
                cum
            })
            .collect();
        for threads in [1, 2, 3, 8] {
            let mut t = Tables::new(threads);
            for rows in [0, 1, 2, 5, 23] {
                let refs: Vec<&[f32]> = logits[..rows].iter().map(|l| l.as_slice()).collect();
                // Stale, wrongly sized tables from an earlier step must not leak through.
                let mut out = vec![vec![7u32; 3]; 24];
                t.fill(&refs, symbols, 24, &mut out);
                assert_eq!(
                    &out[..rows],
                    &alone[..rows],
                    "{threads} threads, {rows} rows"
                );
                assert!(out[rows..].iter().all(|o| o == &[7, 7, 7]));
                let targets: Vec<Token> = (0..rows).map(|r| (r * 97 % symbols) as Token).collect();
                let mut got = vec![(1, 1); 24];
                t.intervals(&refs, symbols, 24, &targets, &mut got);
                for (r, &s) in targets.iter().enumerate() {
                    let (cum, s) = (&alone[r], s as usize);
                    assert_eq!(
                        got[r],
                        (cum[s], cum[s + 1] - cum[s]),
                        "{threads} threads, row {r}"
                    );
                }
                assert!(got[rows..].iter().all(|&o| o == (1, 1)));
                let points: Vec<u32> = (0..rows)
                    .map(|r| (r as u32 * 7_919_993) % (1 << 24))
                    .collect();
                let mut found = vec![(0, 0, 0); 24];
                t.find(&refs, symbols, 24, &points, &mut found);
                for (r, &c) in points.iter().enumerate() {
                    let s = crate::coder::find(&alone[r], c).unwrap();
                    let cum = &alone[r];
                    assert_eq!(
                        found[r],
                        (s as Token, cum[s], cum[s + 1] - cum[s]),
                        "{threads} threads, row {r}"
                    );
                }
            }
        }
    }
}
