//! An adaptive order-1 byte model in pure Rust.
//!
//! Fast, deterministic on every platform, and without external files: it lets tests, the
//! fuzzers and the format vectors exercise the model-coded block path end to end in
//! milliseconds. Tokens are bytes (vocabulary 256, BOS = token 0 as the initial context).
//! After each token `t` seen in context `c` (the previous byte) the count `n[c][t]` grows by
//! 32; a context's counts are halved when one passes 65,000. The next distribution is
//! `1 + n[c][s]` scaled by [`super::quantize::weights_to_cum`].

use sha2::{Digest, Sha256};

use super::quantize::weights_to_cum;
use super::{Evaluator, Model, Token};
use crate::error::{Error, Result};
use crate::format::{Header, ModelKind, ModelPin, Tokenizer, FREQ_BITS};

const NAME: &str = "lmz-order1-v1";
const INC: u32 = 32;
const LIMIT: u32 = 65_000;

/// The built-in order-1 model. `max_block_tokens` is its only setting.
pub struct Order1 {
    pieces: Vec<[u8; 1]>,
    max_block_tokens: u32,
}

impl Order1 {
    pub fn new(max_block_tokens: u32) -> Order1 {
        Order1 {
            pieces: (0..=255u8).map(|b| [b]).collect(),
            max_block_tokens,
        }
    }
}

impl Default for Order1 {
    fn default() -> Self {
        Order1::new(1 << 20)
    }
}

impl Model for Order1 {
    fn pin(&self) -> ModelPin {
        let sha: [u8; 32] = Sha256::digest(NAME.as_bytes()).into();
        ModelPin {
            kind: ModelKind::Order1,
            sha256: sha,
            size: 0,
            vocab_size: 256,
            freq_bits: FREQ_BITS,
            tokenizer: Tokenizer::Bytes,
            context_policy: 1,
            bos: 0,
            max_block_tokens: self.max_block_tokens,
            schedule: 1,
            flash_attn: 0,
            kv_unified: 0,
            kv_type: 0,
        }
    }

    fn header(&self, block_size: u32) -> Header {
        Header {
            block_size,
            pin: self.pin(),
            model_name: NAME.into(),
            backend: "rust".into(),
            engine_version: concat!("lmz ", env!("CARGO_PKG_VERSION")).into(),
            cpu_features: String::new(),
            primer: None,
            bias_rate: 0,
            framing: crate::format::Framing::Classic,
        }
    }

    fn tokenize(&self, bytes: &[u8]) -> Option<Vec<Token>> {
        Some(bytes.iter().map(|&b| b as Token).collect())
    }

    fn piece(&self, t: Token) -> &[u8] {
        self.pieces.get(t as usize).map_or(&[], |p| &p[..])
    }

    fn evaluator(
        &self,
        width: usize,
        _tokens: usize,
        _chunk: usize,
    ) -> Result<Box<dyn Evaluator + '_>> {
        Ok(Box::new(Order1Eval {
            slots: (0..width).map(|_| Slot::new()).collect(),
            start: None,
        }))
    }
}

struct Slot {
    counts: Vec<u32>,
    prev: Option<u8>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            counts: vec![0; 256 * 256],
            prev: None,
        }
    }

    /// Feeds input token `t` (its low 8 bits): learns the transition that `t` ends.
    fn learn(&mut self, t: Token) -> usize {
        let t = (t & 0xFF) as usize;
        // The first token fed to a slot is BOS: context only, nothing to learn from.
        if let Some(p) = self.prev {
            let row = &mut self.counts[p as usize * 256..][..256];
            row[t] += INC;
            if row[t] > LIMIT {
                row.iter_mut().for_each(|c| *c /= 2);
            }
        }
        self.prev = Some(t as u8);
        t
    }
}

struct Order1Eval {
    slots: Vec<Slot>,
    /// The state every reset slot starts from: a primer's (FORMAT.md §12.8), else empty.
    start: Option<Slot>,
}

impl Evaluator for Order1Eval {
    fn width(&self) -> usize {
        self.slots.len()
    }

    fn capacity(&self) -> usize {
        usize::MAX
    }

    fn chunk(&self) -> usize {
        usize::MAX
    }

    fn reset(&mut self, slot: usize) -> Result<()> {
        let s = self
            .slots
            .get_mut(slot)
            .ok_or_else(|| Error::usage(format!("slot {slot} outside the batch")))?;
        match &self.start {
            Some(p) => {
                s.counts.copy_from_slice(&p.counts);
                s.prev = p.prev;
            }
            None => {
                s.counts.fill(0);
                s.prev = None;
            }
        }
        Ok(())
    }

    fn set_prefix(&mut self, inputs: &[Token], _next: Token) -> Result<()> {
        self.start = (!inputs.is_empty()).then(|| {
            let mut p = Slot::new();
            for &t in inputs {
                p.learn(t);
            }
            p
        });
        Ok(())
    }

    fn step(&mut self, feed: &[(usize, Token)], out: &mut [Vec<u32>]) -> Result<()> {
        let mut w = [0u32; 256];
        for (&(slot, tok), cum) in feed.iter().zip(out.iter_mut()) {
            let s = self
                .slots
                .get_mut(slot)
                .ok_or_else(|| Error::usage(format!("slot {slot} outside the batch")))?;
            let t = s.learn(tok);
            let row = &s.counts[t * 256..][..256];
            for (w, &c) in w.iter_mut().zip(row) {
                *w = 1 + c;
            }
            cum.resize(257, 0);
            weights_to_cum(&w, FREQ_BITS as u32, cum);
        }
        Ok(())
    }
}
