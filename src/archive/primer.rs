//! Choosing an archive primer (context policy 2, FORMAT.md §12.8): which tokens, and whether
//! they pay, decided by measuring on the input itself.
//!
//! Every block starts from an empty context, so its first tokens are its most expensive
//! (SmolLM2 on alice29: about 6.2 bits per token over a block's first 64, 4.2 over the rest).
//! A primer is context every block is evaluated after. Its tokens are taken from the start of
//! the input, so they cost the archive almost nothing: block 0 begins with the same text, and
//! a model reading a copy of what its context holds codes it for a fraction of a bit per
//! token. What a primer costs is (a) that copy, `c0` bits, and (b) time: a reader decodes the
//! primer once per process before its first block (one model step per token) and every block
//! token attends over the primer's positions too. What it gains is `g` bits on every other
//! block, measured here on a second sample of the input.
//!
//! The decision: a primer if `g · (blocks − 1) > c0 + its header fields`, where `blocks` is
//! the number of model blocks the input will make. Each measurement codes a few hundred
//! tokens (seconds on a CPU), so it is made only where there are blocks to win.

use crate::codec::{encode_model, Lockstep};
use crate::error::Result;
use crate::format::ModelKind;
use crate::model::{Model, Token};

/// The primer lmz tries by default: long enough to hold a page of the input's vocabulary and
/// style, short enough that decoding it before the first block costs a random read little
/// (256 decode steps against a default 8 KiB block's ~2,000).
pub const DEFAULT_PRIMER_TOKENS: usize = 256;

/// Tokens of the second sample the gain is measured on.
const MEASURE_TOKENS: usize = 256;

/// What [`choose`] found, for `lmz pack -v` and `lmz bench`.
#[derive(Clone, Debug)]
pub struct Choice {
    /// The primer to write, `None` where it does not pay.
    pub tokens: Option<Vec<Token>>,
    /// Bits the candidate saved on the second sample's first tokens (per block estimate).
    pub gain_bits: f64,
    /// Bits block 0 pays for the copy of the primer it starts with.
    pub copy_bits: f64,
    /// Why, in words.
    pub reason: String,
}

impl Choice {
    fn none(reason: impl Into<String>) -> Choice {
        Choice {
            tokens: None,
            gain_bits: 0.0,
            copy_bits: 0.0,
            reason: reason.into(),
        }
    }
}

/// Chooses a primer of up to `max_tokens` tokens for an input whose text starts with `first`
/// and which will make about `blocks` model blocks; `second` is text from elsewhere in the
/// input (the start of its second block, or of another file) to measure the gain on.
/// `width` is the lockstep width the measurement may use; `bias_rate` the adaptive bias the
/// archive will code under (FORMAT.md §12.9; ignored by models without one), so that the
/// measurement codes as the archive will.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    model: &dyn Model,
    first: &[u8],
    second: Option<&[u8]>,
    blocks: u64,
    max_tokens: usize,
    width: usize,
    bias_rate: u16,
) -> Result<Choice> {
    if max_tokens == 0 {
        return Ok(Choice::none("primer turned off"));
    }
    if blocks < 2 {
        return Ok(Choice::none("one model block: nothing for a primer to win"));
    }
    let Some(second) = second else {
        return Ok(Choice::none("no second sample of text to measure on"));
    };
    let (Some(first), Some(second)) = (text_tokens(model, first), text_tokens(model, second))
    else {
        return Ok(Choice::none("the input does not start with text"));
    };
    if first.len() < 16 || second.len() < 16 {
        return Ok(Choice::none("too little text to measure"));
    }
    let candidate = first[..first.len().min(max_tokens)].to_vec();
    let sample = &second[..second.len().min(MEASURE_TOKENS)];
    let mut ls = Lockstep::new(Some(model), width);
    if model.pin().kind == ModelKind::Portable {
        ls.set_bias_rate(bias_rate);
    }
    let without = encode_model(&mut ls, vec![sample])?[0].1;
    ls.set_primer_tokens(Some(candidate.clone()));
    let coded = encode_model(&mut ls, vec![sample, &candidate])?;
    let (with, copy) = (coded[0].1, coded[1].1);
    let gain = without - with;
    // The header's primer fields (4 bytes) and the coder's flush of the primer's stream.
    let fixed = 8.0 * 8.0;
    let pays = gain * (blocks - 1) as f64 > copy + fixed;
    Ok(Choice {
        reason: format!(
            "{} tokens: {gain:.0} bits saved per block (measured on {} tokens) × {} blocks vs {copy:.0} + {fixed:.0} bits",
            candidate.len(),
            sample.len(),
            blocks - 1
        ),
        tokens: pays.then_some(candidate),
        gain_bits: gain,
        copy_bits: copy,
    })
}

/// The two samples [`choose`] needs, from one buffer about to be packed as a file: its
/// start, and the start of its second block (if it has one long enough to measure on).
pub fn samples(data: &[u8], block_size: u32) -> (&[u8], Option<&[u8]>) {
    const SAMPLE: usize = 4096;
    let bs = block_size as usize;
    let first = &data[..data.len().min(SAMPLE)];
    let second = (data.len() > bs + SAMPLE / 2).then(|| &data[bs..data.len().min(bs + SAMPLE)]);
    (first, second)
}

/// `bytes` as the model tokenizes text, cut to a line end where one is near the end (a
/// sample cut mid-word ends on a token the rest of the word would have merged into).
fn text_tokens(model: &dyn Model, bytes: &[u8]) -> Option<Vec<Token>> {
    let end = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) if i + 1 >= bytes.len() / 2 => i + 1,
        _ => bytes.len(),
    };
    let toks = model.tokenize(&bytes[..end])?;
    model.worth_coding(&bytes[..end], &toks).then_some(toks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::order1::Order1;

    fn prose(seed: u64, n: usize) -> Vec<u8> {
        let words = [
            "the ", "model ", "codes ", "every ", "block ", "from ", "its ", "context ", "and ",
            "a ", "primer ", "helps ", "first ", "tokens ", "of ", "text ",
        ];
        let mut x = seed | 1;
        let mut out = Vec::new();
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        }
        out.truncate(n);
        out
    }

    #[test]
    fn a_primer_from_similar_text_pays_over_many_blocks() {
        let m = Order1::default();
        let c = choose(&m, &prose(1, 4000), Some(&prose(2, 4000)), 50, 256, 2, 0).unwrap();
        assert!(c.gain_bits > 0.0, "{c:?}");
        assert_eq!(c.tokens.as_ref().map(Vec::len), Some(256), "{c:?}");
    }

    #[test]
    fn no_primer_where_it_cannot_pay() {
        let m = Order1::default();
        let one = choose(&m, &prose(1, 4000), Some(&prose(2, 4000)), 1, 256, 2, 0).unwrap();
        assert!(one.tokens.is_none());
        let off = choose(&m, &prose(1, 4000), Some(&prose(2, 4000)), 50, 0, 2, 0).unwrap();
        assert!(off.tokens.is_none());
        // Unrelated bytes: the primer's statistics mislead, or at best do not help.
        let noise: Vec<u8> = (0..4000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let c = choose(&m, &prose(1, 4000), Some(&noise), 2, 256, 2, 0).unwrap();
        assert!(c.tokens.is_none(), "{c:?}");
    }
}
