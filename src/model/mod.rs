//! The model layer: next-token distributions for one or many block contexts at once.
//!
//! A [`Model`] owns a tokenizer (bytes ↔ tokens, lossless by construction: every token has a
//! fixed byte string, its *piece*) and creates [`Evaluator`]s. An evaluator holds `width`
//! independent sequences ("slots"), one per block in flight, and advances any subset of them
//! by one token per [`Evaluator::step`]; each step yields, for every slot fed, the integer
//! cumulative frequency table of the next token. The coders ask for only what they need of
//! it: encoders, which know the next token, for its interval
//! ([`Evaluator::step_intervals`], possibly several tokens per slot per step); decoders, which
//! know the point their range decoder is at, for the token there ([`Evaluator::step_find`]).
//! The coder only ever sees those integers.
//!
//! Two implementations: [`order1::Order1`], a small deterministic pure-Rust model for tests,
//! fuzzing and builds without llama.cpp; and `llama::LlamaLm` (feature `llama`), the only
//! code that touches llama.cpp.

pub mod bias;
pub mod binary16;
pub mod bpe;
pub mod fetch;
pub mod gguf;
pub mod gguf_write;
#[cfg(feature = "llama")]
pub mod llama;
pub mod order1;
pub mod portable;
pub mod quantize;
pub mod synthetic;
pub mod tables;

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{Header, ModelPin};

/// A token id.
pub type Token = u32;

pub trait Model: Send + Sync {
    /// Everything about this model that changes probabilities, as recorded in the header.
    fn pin(&self) -> ModelPin;

    /// The header for an archive coded with this model (pin plus diagnostics).
    fn header(&self, block_size: u32) -> Header;

    /// Where this model is evaluated (`cpu`, `cuda: <device>`, …), as the header's diagnostic
    /// `backend` string records it. Models whose results do not depend on it say `rust`.
    fn backend(&self) -> String {
        "rust".into()
    }

    /// Blocks to evaluate together when the user does not say (`--batch`): enough to fill the
    /// backend, few enough for its memory (every sequence holds a KV cache for its block).
    fn default_width(&self) -> usize {
        8
    }

    /// Most sequences one evaluator can hold: wider lockstep requests are cut to this.
    fn max_width(&self) -> usize {
        usize::MAX
    }

    /// Splits `bytes` into tokens whose pieces concatenate to exactly `bytes`; `None` when
    /// this model cannot represent them (the block then uses another codec).
    fn tokenize(&self, bytes: &[u8]) -> Option<Vec<Token>>;

    /// Whether model coding of `plain` (tokenized as `tokens`) is worth its cost: a writer
    /// heuristic, not a format rule.
    fn worth_coding(&self, _plain: &[u8], _tokens: &[Token]) -> bool {
        true
    }

    /// The bytes token `t` stands for (empty for tokens that are never emitted).
    fn piece(&self, t: Token) -> &[u8];

    /// An evaluator with `width` independent sequences of up to `tokens` tokens each (plus
    /// the BOS). Context sizes do not change probabilities (tested), so evaluators are sized
    /// to the blocks at hand, not to the largest block the format allows.
    ///
    /// `chunk` is the most tokens one slot may be fed in one [`Evaluator::step_intervals`]
    /// call (1 for decoders, which learn each token from the previous step).
    fn evaluator(
        &self,
        width: usize,
        tokens: usize,
        chunk: usize,
    ) -> Result<Box<dyn Evaluator + '_>>;

    /// Whether feeding slots several tokens each in one step, `width` slots at once, gives
    /// exactly the distributions of feeding one slot one token per step. Encoders know every
    /// token in advance and use it when true; decoders never can. Default: false.
    fn chunks_exact(&self, _width: usize) -> bool {
        false
    }

    /// Whether a sequence's distributions are the same whatever other sequences share its
    /// steps, in lockstep batches of up to `width` sequences, so that blocks coded many at a
    /// time decode one at a time and vice versa. When false, coders run one block at a time:
    /// a block must decode alone, for random access, exactly as it was encoded.
    /// Default: true (pure-Rust models evaluate each sequence on its own).
    fn lockstep_exact(&self, _width: usize) -> bool {
        true
    }

    /// Tokens per second of the bare model evaluating one sequence per entry of `lengths`,
    /// in lockstep, each fed its own number of tokens (the BOS first), `chunk` of them per
    /// step; sequences drop out of the batch as they end, as blocks do when coded together.
    /// Logits are computed but not turned into frequencies, nothing is coded: the ceiling
    /// coding can reach for that batch shape (`lmz bench --widths`). `None` for models
    /// without a separable evaluation cost.
    fn raw_tokens_per_second(&self, _lengths: &[usize], _chunk: usize) -> Result<Option<f64>> {
        Ok(None)
    }
}

/// Where an evaluator's time went: the model's own evaluation, and turning its output into
/// integer frequency tables. For `lmz bench`'s per-token profile.
#[derive(Clone, Copy, Debug, Default)]
pub struct EvalProfile {
    /// Model evaluations (`llama_decode` calls).
    pub steps: u64,
    /// Frequency tables produced (one per token fed).
    pub rows: u64,
    /// In the model proper, results ready to read.
    pub model: Duration,
    /// Logits → frequency tables.
    pub freqs: Duration,
    /// Of `model`: matrix products and attention, where the engine can tell (the portable
    /// engine; zero for llama.cpp).
    pub matmul: Duration,
    pub attention: Duration,
}

impl EvalProfile {
    pub fn add(&mut self, o: &EvalProfile) {
        self.steps += o.steps;
        self.rows += o.rows;
        self.model += o.model;
        self.freqs += o.freqs;
        self.matmul += o.matmul;
        self.attention += o.attention;
    }
}

/// Several sequences evaluated in lockstep. Every slot starts empty.
pub trait Evaluator {
    /// Time spent so far, where the evaluator can separate it (all zero otherwise).
    fn profile(&self) -> EvalProfile {
        EvalProfile::default()
    }

    fn width(&self) -> usize;

    /// Most tokens a sequence may hold, BOS excluded.
    fn capacity(&self) -> usize;

    /// Empties `slot` so that the next token fed to it is the first of a new block: the slot
    /// then holds nothing, or the prefix of [`Self::set_prefix`].
    fn reset(&mut self, slot: usize) -> Result<()>;

    /// From now on, [`Self::reset`] puts a slot in the state of having been fed `inputs`
    /// (their distributions unread): the archive primer of context policy 2 (FORMAT.md
    /// §12.8), evaluated once and copied into each block's sequence instead of evaluated per
    /// block. `next` is the input that follows them (each block's first), whose probability
    /// the prefix's last step gives: under an adaptive bias (§12.9), set before, the
    /// prefix's bias has learned from it too. Empty `inputs` restore empty slots. The prefix
    /// counts against [`Self::capacity`]. Models whose state cannot be copied refuse any
    /// prefix.
    fn set_prefix(&mut self, inputs: &[Token], next: Token) -> Result<()> {
        let _ = next;
        if inputs.is_empty() {
            return Ok(());
        }
        Err(Error::usage(
            "this model cannot start blocks from an archive primer",
        ))
    }

    /// From now on every sequence's tables are under an adaptive bias learning at `rate`
    /// (FORMAT.md §12.9), zero at each [`Self::reset`]; `rate` 0 turns it off. Models that
    /// do not implement it refuse any other rate.
    fn set_bias(&mut self, rate: u16) -> Result<()> {
        if rate == 0 {
            return Ok(());
        }
        Err(Error::usage(
            "this model has no adaptive bias (kind 3 only)",
        ))
    }

    /// Appends one token to each listed slot (`feed[i] = (slot, token)`, slots distinct) and
    /// writes the cumulative frequency table of each slot's next token into `out[i]`
    /// (`vocab + 1` entries, total `2^24`).
    fn step(&mut self, feed: &[(usize, Token)], out: &mut [Vec<u32>]) -> Result<()>;

    /// Most tokens a slot may be fed in one [`Self::step_intervals`] call.
    fn chunk(&self) -> usize {
        1
    }

    /// For decoders, which know where in the next table their symbol lies before knowing the
    /// symbol: appends one token to each listed slot, as [`Self::step`] does, and writes for
    /// each the symbol `s` whose interval in the next token's table holds `points[i]` (each
    /// below `2^24`), with that interval: `(s, cum[s], cum[s + 1] − cum[s])`. A model may find
    /// it without writing the whole table. The default reads it off the tables (allocating
    /// them: for models with small vocabularies).
    fn step_find(
        &mut self,
        feed: &[(usize, Token)],
        points: &[u32],
        out: &mut [(Token, u32, u32)],
    ) -> Result<()> {
        check_rows(feed.len(), points.len(), out.len(), "points")?;
        let mut tables: Vec<Vec<u32>> = vec![Vec::new(); feed.len()];
        self.step(feed, &mut tables)?;
        for ((cum, &c), o) in tables.iter().zip(points).zip(out.iter_mut()) {
            let s = crate::coder::find(cum, c)
                .ok_or_else(|| Error::usage(format!("point {c} outside the table")))?;
            *o = (s as Token, cum[s], cum[s + 1] - cum[s]);
        }
        Ok(())
    }

    /// For encoders, which know every symbol before coding it: appends several tokens to
    /// each listed slot (`feed[i] = (slot, tokens)`, at most [`Self::chunk`] each) and writes,
    /// for every token fed, in order (all of `feed[0]`'s, then `feed[1]`'s, …), the interval
    /// `(cum[s], cum[s + 1] − cum[s])` of the next symbol `s = symbols[row]` in the table
    /// [`Self::step`] would give. The same numbers as the tables, but a model may compute
    /// them without writing whole tables. The default feeds one token per step and reads the
    /// intervals off the tables (allocating them: for models with small vocabularies).
    fn step_intervals(
        &mut self,
        feed: &[(usize, &[Token])],
        symbols: &[Token],
        out: &mut [(u32, u32)],
    ) -> Result<()> {
        let mut starts = Vec::with_capacity(feed.len());
        let mut row = 0;
        for (_, toks) in feed {
            starts.push(row);
            row += toks.len();
        }
        check_rows(row, symbols.len(), out.len(), "symbols")?;
        let longest = feed.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        let mut single = Vec::with_capacity(feed.len());
        let mut rows = Vec::with_capacity(feed.len());
        let mut tables: Vec<Vec<u32>> = vec![Vec::new(); feed.len()];
        for j in 0..longest {
            single.clear();
            rows.clear();
            for (i, (slot, toks)) in feed.iter().enumerate() {
                if let Some(&t) = toks.get(j) {
                    single.push((*slot, t));
                    rows.push(starts[i] + j);
                }
            }
            self.step(&single, &mut tables[..single.len()])?;
            for (cum, &r) in tables.iter().zip(&rows) {
                let s = symbols[r] as usize;
                if s + 1 >= cum.len() {
                    return Err(Error::usage(format!(
                        "symbol {s} outside the model's vocabulary"
                    )));
                }
                out[r] = (cum[s], cum[s + 1] - cum[s]);
            }
        }
        Ok(())
    }
}

/// Checks a step's arguments: one `what` given per token fed (`given` of them for `rows`
/// tokens) and room for `room` results. An error here is the caller's.
pub(crate) fn check_rows(rows: usize, given: usize, room: usize, what: &str) -> Result<()> {
    if given != rows || room < rows {
        return Err(Error::usage(format!(
            "{rows} tokens fed with {given} {what}, and room for {room} results"
        )));
    }
    Ok(())
}
