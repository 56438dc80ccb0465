//! Block codecs: stored, zstd, and model-coded (tokens range-coded under the model), and the
//! lockstep engine that codes many model blocks at once.
//!
//! The writer keeps, per block, the smallest of the three codings, so a JPEG costs what zstd
//! or storing would, and text gets the model's ratio. Model coding is one model step per
//! token, so it is only tried where it can win: the block must tokenize into at most the
//! pinned `max_block_tokens`, and zstd must compress it at all (already-compressed data is
//! not worth minutes of model time).
//!
//! Lockstep: `width` blocks are in flight, one evaluator slot each; every step feeds each
//! active slot its next input token in one batch, and a slot whose block is done is reset
//! and refilled with the next block. The schedule is the same per-slot token sequence
//! however the slots are combined, which is what the determinism tests pin down. The
//! encoder, knowing every token, feeds up to [`ENCODE_CHUNK`] per slot per step where the
//! model proves that exact, and asks only for the interval of each token it codes; the
//! decoder needs each whole table to find its token.
//!
//! A model block whose payload CRC holds but whose tokens do not give back its bytes was not
//! damaged in transit. Under llama.cpp (model kind 2) that is what a machine computing other
//! probabilities than the writer's looks like, and it is reported as such
//! ([`Error::ModelDiverged`], naming both machines); under models that compute the same on
//! every machine it can only be damage behind a forged checksum, and stays corruption.

mod zstd_block;

use crate::coder::{ideal_bits, Decoder, Encoder};
use crate::error::{Error, Machine, Result};
use crate::format::{BlockHeader, Codec, Header, ModelKind, Primer, FREQ_BITS};
use crate::model::{EvalProfile, Evaluator, Model, Token};

const BITS: u32 = FREQ_BITS as u32;

/// One coded block, ready to write.
#[derive(Clone, Debug)]
pub struct Coded {
    pub header: BlockHeader,
    pub payload: Vec<u8>,
    /// Σ −log2 p of the tokens under the integer frequencies (model blocks; else 0).
    pub ideal_bits: f64,
}

impl Coded {
    /// This block as input to [`decode_blocks`], numbered `number` (at no archive offset).
    pub fn as_block(&self, number: u64) -> BlockRefData<'_> {
        BlockRefData {
            number,
            offset: 0,
            header: self.header,
            payload: &self.payload,
        }
    }
}

/// Statistics about model coding of a set of blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelStats {
    pub blocks: u64,
    pub tokens: u64,
    pub plain_bytes: u64,
    pub coded_bytes: u64,
    pub ideal_bits: f64,
}

/// A block given to [`decode_blocks`]: its number and archive offset (for errors), header
/// and payload.
pub struct BlockRefData<'a> {
    pub number: u64,
    pub offset: u64,
    pub header: BlockHeader,
    pub payload: &'a [u8],
}

fn zstd_compress(plain: &[u8], level: i32) -> Option<Vec<u8>> {
    zstd_block::compress(plain, level)
}

/// Codes `plains` with the cheapest codec; model coding, when `model` is given, runs `width`
/// blocks in lockstep. Returns the blocks in order, and what model coding achieved on the
/// blocks it was tried on.
pub fn encode_blocks(
    model: Option<&dyn Model>,
    plains: &[&[u8]],
    width: usize,
    zstd_level: i32,
) -> Result<(Vec<Coded>, ModelStats)> {
    encode_with(&mut Lockstep::new(model, width), plains, zstd_level)
}

/// [`encode_blocks`] with a lockstep context kept by the caller across batches.
pub fn encode_with(
    ls: &mut Lockstep<'_>,
    plains: &[&[u8]],
    zstd_level: i32,
) -> Result<(Vec<Coded>, ModelStats)> {
    let model = ls.model();
    let mut out: Vec<Coded> = plains
        .iter()
        .map(|p| {
            let (codec, payload) = match zstd_compress(p, zstd_level) {
                Some(z) if z.len() < p.len() => (Codec::Zstd, z),
                _ => (Codec::Stored, p.to_vec()),
            };
            Coded {
                header: BlockHeader::of(codec, p, 0, &payload),
                payload,
                ideal_bits: 0.0,
            }
        })
        .collect();
    let mut stats = ModelStats::default();
    let Some(model) = model else {
        return Ok((out, stats));
    };
    let max_tokens = model.pin().max_block_tokens as usize;
    // Candidates: blocks zstd can shrink by ≥ 10% and the model can tokenize compactly.
    let mut jobs = Vec::new();
    for (i, p) in plains.iter().enumerate() {
        if out[i].header.codec == Codec::Stored || out[i].payload.len() * 10 > p.len() * 9 {
            continue;
        }
        if let Some(tokens) = model.tokenize(p) {
            // The format allows up to one token per byte; the model may decline blocks it
            // is unlikely to win (each token costs a model step).
            if !tokens.is_empty()
                && tokens.len() <= max_tokens
                && tokens.len() <= p.len()
                && model.worth_coding(p, &tokens)
            {
                jobs.push((i, tokens));
            }
        }
    }
    let coded = encode_model(ls, jobs.iter().map(|(_, t)| t.as_slice()).collect())?;
    for ((i, tokens), (payload, ideal)) in jobs.iter().zip(coded) {
        stats.blocks += 1;
        stats.tokens += tokens.len() as u64;
        stats.plain_bytes += plains[*i].len() as u64;
        stats.coded_bytes += payload.len() as u64;
        stats.ideal_bits += ideal;
        if payload.len() < out[*i].payload.len() {
            let o = &mut out[*i];
            o.header.codec = Codec::Model;
            o.header.coded_len = payload.len() as u32;
            o.header.tokens = tokens.len() as u32;
            o.header.coded_crc = crc32fast::hash(&payload);
            o.payload = payload;
            o.ideal_bits = ideal;
        }
    }
    Ok((out, stats))
}

/// Tokens fed to one slot per step when encoding with a model whose multi-token steps are
/// exact (measured on 2 cores: 8 × 16 tokens per step ran 360 tokens/s where one token per
/// step ran 270 at best).
pub const ENCODE_CHUNK: usize = 16;

/// Where the time of model coding went (`lmz bench`): the evaluator's share (model and
/// frequency tables) and the range coder's, for every token coded or decoded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Profile {
    pub eval: EvalProfile,
    /// Range coding, and for decoders appending the token's bytes.
    pub coder: std::time::Duration,
}

/// A lockstep evaluation context kept across batches of blocks: creating a model context
/// (with its KV cache) per batch would cost more than small batches take to code.
pub struct Lockstep<'m> {
    model: Option<&'m dyn Model>,
    width: usize,
    eval: Option<Box<dyn Evaluator + 'm>>,
    /// Profiles of evaluators already dropped, and coder time.
    profile: Profile,
    /// Whether the width was cut to 1 for a model that is not batch-invariant (said once).
    narrowed: bool,
    /// The machine the archive being decoded was written on, for divergence errors.
    writer: Machine,
    /// The archive primer every block starts after (context policy 2, FORMAT.md §12.8).
    primer: Option<PrimerState>,
    /// The adaptive bias's rate of every model-coded sequence, primer included (FORMAT.md
    /// §12.9); 0: none.
    bias_rate: u16,
}

/// An archive primer as a [`Lockstep`] holds it: as the header codes it, and once decoded
/// (lazily, before the first block: archives whose blocks are never read never pay for it).
struct PrimerState {
    coded: Option<(Primer, u64)>,
    tokens: Option<Vec<Token>>,
    /// Whether the current evaluator's slots start after it.
    installed: bool,
}

impl PrimerState {
    /// The evaluator's prefix: `bos` and every primer token but the last, which is each
    /// block's first input instead of `bos` (§12.8).
    fn prefix(&self, bos: Token) -> Vec<Token> {
        let t = self.tokens.as_deref().unwrap_or(&[]);
        std::iter::once(bos)
            .chain(t[..t.len().saturating_sub(1)].iter().copied())
            .collect()
    }

    /// The length of [`Self::prefix`], without building it.
    fn prefix_len(&self) -> usize {
        self.tokens.as_ref().map_or(0, Vec::len).max(1)
    }
}

impl<'m> Lockstep<'m> {
    /// Up to `width` blocks in flight, at most the model's [`Model::max_width`]; `model` may
    /// be `None` for archives without a model.
    pub fn new(model: Option<&'m dyn Model>, width: usize) -> Lockstep<'m> {
        let max = model.map_or(usize::MAX, |m| m.max_width().max(1));
        Lockstep {
            model,
            width: width.clamp(1, max),
            eval: None,
            profile: Profile::default(),
            narrowed: false,
            writer: Machine::default(),
            primer: None,
            bias_rate: 0,
        }
    }

    /// Blocks coded from now on start after `tokens`, the archive primer (a writer, which
    /// chose them; `None` or empty: context policy 1).
    pub fn set_primer_tokens(&mut self, tokens: Option<Vec<Token>>) {
        self.primer = tokens.filter(|t| !t.is_empty()).map(|t| PrimerState {
            coded: None,
            tokens: Some(t),
            installed: false,
        });
        if let Some(e) = self.eval.as_deref_mut() {
            // A failure here leaves the evaluator out of step: drop it.
            if e.set_prefix(&[], 0).is_err() {
                self.drop_eval();
            }
        }
    }

    /// Sequences coded from now on, the primer's included, are under an adaptive bias
    /// learning at `rate` (FORMAT.md §12.9; 0: none).
    pub fn set_bias_rate(&mut self, rate: u16) {
        self.bias_rate = rate;
    }

    /// The primer's tokens, once known (given, or decoded by a block decode).
    pub fn primer_tokens(&self) -> Option<&[Token]> {
        self.primer.as_ref().and_then(|p| p.tokens.as_deref())
    }

    /// Records that the blocks decoded next belong to the archive whose header is `h`: a
    /// block that diverges names the machine it says it was written on.
    pub fn set_writer(&mut self, h: &Header) {
        if self.bias_rate != h.bias_rate {
            // The primer is coded under the bias too: decoded again under the new one.
            self.set_primer_tokens(None);
            self.bias_rate = h.bias_rate;
        }
        let same = match (&self.primer, &h.primer) {
            (None, None) => true,
            (
                Some(PrimerState {
                    coded: Some((p, _)),
                    ..
                }),
                Some(q),
            ) => p == q,
            _ => false,
        };
        if !same {
            self.set_primer_tokens(None);
            self.primer = h.primer.clone().map(|p| PrimerState {
                coded: Some((p, h.primer_offset() as u64)),
                tokens: None,
                installed: false,
            });
        }
        if self.writer.backend != h.backend
            || self.writer.engine_version != h.engine_version
            || self.writer.cpu_features != h.cpu_features
        {
            self.writer = Machine::of(h);
        }
    }

    /// Time spent so far, over every evaluator this context has used.
    pub fn profile(&self) -> Profile {
        let mut p = self.profile;
        if let Some(e) = &self.eval {
            p.eval.add(&e.profile());
        }
        p
    }

    fn drop_eval(&mut self) {
        if let Some(e) = self.eval.take() {
            self.profile.eval.add(&e.profile());
        }
    }

    pub fn model(&self) -> Option<&'m dyn Model> {
        self.model
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Makes sure the evaluator suits `jobs` blocks of up to `tokens` tokens: wide enough
    /// (at most the lockstep width, 1 for a model that is not batch-invariant) and fed
    /// `ENCODE_CHUNK` tokens per step where `encoding` and the model's multi-token steps are
    /// exact, else 1. Returns the model and that chunk.
    fn prepare(
        &mut self,
        jobs: usize,
        tokens: usize,
        encoding: bool,
    ) -> Result<(&'m dyn Model, usize)> {
        let model = self
            .model
            .ok_or_else(|| Error::usage("model-coded blocks need the archive's model"))?;
        self.decode_primer(model)?;
        // The primer's inputs take room in every sequence.
        let tokens = tokens + self.primer.as_ref().map_or(0, PrimerState::prefix_len);
        let mut need = self.width.min(jobs).max(1);
        if need > 1 && !model.lockstep_exact(self.width) {
            // A model whose kernels are not batch-invariant: one block at a time, so the
            // distributions are those a lone decoder (a random read) sees.
            if !self.narrowed {
                log::warn!("this model's results change with the batch on this build: coding one block at a time instead of {need}");
                self.narrowed = true;
            }
            need = 1;
        }
        let tokens = tokens.max(1);
        // The multi-token probe runs at the widest shape this context steps (one slot when
        // narrowed); narrower steps, as blocks run out, are left to the block CRCs.
        let probe_width = if self.narrowed { 1 } else { self.width };
        let chunk = if encoding && model.chunks_exact(probe_width) {
            ENCODE_CHUNK
        } else {
            1
        };
        let fits = |e: &(dyn Evaluator + 'm)| {
            e.width() >= need && e.capacity() >= tokens && e.chunk() >= chunk
        };
        if !self.eval.as_deref().is_some_and(fits) {
            // Grow, never shrink: batches alternate between sizes.
            let (w, t, c) = self.eval.as_ref().map_or((need, tokens, chunk), |e| {
                (
                    e.width().max(need),
                    e.capacity().max(tokens),
                    e.chunk().max(chunk).min(ENCODE_CHUNK),
                )
            });
            self.drop_eval();
            self.eval = Some(model.evaluator(w, t, c)?);
            if let Some(p) = self.primer.as_mut() {
                p.installed = false;
            }
        }
        self.eval
            .as_deref_mut()
            .expect("prepared")
            .set_bias(self.bias_rate)?;
        let first = self.first_input(model);
        if let Some(p) = self.primer.as_mut().filter(|p| !p.installed) {
            let eval = self.eval.as_deref_mut().expect("prepared");
            eval.set_prefix(&p.prefix(model.pin().bos), first)?;
            p.installed = true;
        }
        Ok((model, chunk))
    }

    /// The first input of every block: `bos`, or the primer's last token (§12.8).
    fn first_input(&self, model: &dyn Model) -> Token {
        self.primer_tokens()
            .and_then(|t| t.last().copied())
            .unwrap_or(model.pin().bos)
    }

    /// Decodes the header's primer, if it has one not yet decoded: a model-coded stream of
    /// its `tokens` tokens from an empty context (§12.8), on this context's evaluator.
    fn decode_primer(&mut self, model: &'m dyn Model) -> Result<()> {
        let Some(PrimerState {
            coded: Some((p, offset)),
            tokens: None,
            ..
        }) = &self.primer
        else {
            return Ok(());
        };
        let (p, offset) = (p.clone(), *offset);
        let n = p.tokens as usize;
        let bad = |what: &str| Error::corrupt(offset, format!("the archive primer {what}"));
        let mut job = DecodeJob {
            model,
            dec: Decoder::new(&p.coded),
            tokens: Vec::with_capacity(n),
            n,
            plain: Vec::new(),
            limit: usize::MAX,
        };
        // Decoded like a block, from an empty context: no primer before the primer.
        let state = self.primer.take();
        let r = (|| {
            let (model, _) = self.prepare(1, n, false)?;
            let eval = self.eval.as_deref_mut().expect("prepared");
            eval.set_prefix(&[], 0)?;
            run_decode(
                model.pin().bos,
                eval,
                std::slice::from_mut(&mut job),
                &mut self.profile.coder,
            )
        })();
        self.primer = state;
        let failed = match r {
            Ok(f) => f,
            Err(e) => {
                self.drop_eval();
                return Err(e);
            }
        };
        match failed[0] {
            Some(Mismatch::Stream) => return Err(bad("is an invalid model-coded stream")),
            Some(_) => return Err(bad("could not be decoded")),
            None if job.dec.consumed() < p.coded.len() => {
                return Err(bad("has bytes after the end of its coded tokens"))
            }
            None => {}
        }
        let st = self.primer.as_mut().expect("primer state kept");
        st.tokens = Some(job.tokens);
        st.installed = false;
        Ok(())
    }

    /// Range-codes each job's tokens, `width` blocks at a time. Each step feeds every active
    /// slot up to `chunk` consecutive tokens and yields only the intervals of the tokens it
    /// codes; a slot whose block is done is reset and refilled with the next block.
    fn encode(&mut self, jobs: &mut [EncodeJob<'_>]) -> Result<()> {
        let tokens = jobs.iter().map(|j| j.tokens.len()).max().unwrap_or(0);
        let (model, chunk) = self.prepare(jobs.len(), tokens, true)?;
        let first = self.first_input(model);
        let eval = self.eval.as_deref_mut().expect("prepared");
        let r = run_encode(first, eval, jobs, chunk, &mut self.profile.coder);
        if r.is_err() {
            // The evaluator's state is unknown after a failed step.
            self.drop_eval();
        }
        r
    }

    /// Decodes each job's block, `width` blocks at a time, one token per slot per step. A
    /// job that fails is reported through its slot and its lane refilled; the others
    /// continue. A failure of the model itself ends the run.
    fn decode(&mut self, jobs: &mut [DecodeJob<'_, '_>]) -> Result<Vec<Option<Mismatch>>> {
        let tokens = jobs.iter().map(|j| j.n).max().unwrap_or(0);
        let (model, _) = self.prepare(jobs.len(), tokens, false)?;
        let first = self.first_input(model);
        let eval = self.eval.as_deref_mut().expect("prepared");
        let r = run_decode(first, eval, jobs, &mut self.profile.coder);
        if r.is_err() {
            self.drop_eval();
        }
        r
    }
}

/// [`Lockstep::encode`]'s schedule. It is the decoder's (same lanes, same refill order, each
/// slot's tokens in order), only with several tokens per slot per step, which the model's
/// probe has shown to give the same distributions; blocks decode in any grouping.
fn run_encode(
    first: Token,
    eval: &mut dyn Evaluator,
    jobs: &mut [EncodeJob<'_>],
    chunk: usize,
    coder: &mut std::time::Duration,
) -> Result<()> {
    let width = eval.width();
    // lane → (job index, tokens coded so far)
    let mut lanes: Vec<Option<(usize, usize)>> = vec![None; width];
    let mut next_job = 0;
    let mut inputs: Vec<Vec<Token>> = vec![Vec::with_capacity(chunk); width];
    let mut symbols = Vec::with_capacity(width * chunk);
    let mut out = vec![(0u32, 0u32); width * chunk];
    let mut who = Vec::with_capacity(width);
    loop {
        for (slot, lane) in lanes.iter_mut().enumerate() {
            // Blocks without tokens have nothing to code (the writer never makes them).
            while next_job < jobs.len() && jobs[next_job].tokens.is_empty() {
                next_job += 1;
            }
            if lane.is_none() && next_job < jobs.len() {
                eval.reset(slot)?;
                *lane = Some((next_job, 0));
                next_job += 1;
            }
        }
        who.clear();
        symbols.clear();
        for (slot, lane) in lanes.iter().enumerate() {
            if let Some((j, k)) = *lane {
                let toks = jobs[j].tokens;
                let n = chunk.min(toks.len() - k);
                // Token k is coded after input k: the first input (BOS, or the primer's last token),
                // then the block's tokens.
                inputs[slot].clear();
                inputs[slot].extend((k..k + n).map(|k| if k == 0 { first } else { toks[k - 1] }));
                symbols.extend_from_slice(&toks[k..k + n]);
                who.push(slot);
            }
        }
        if who.is_empty() {
            return Ok(());
        }
        let feed: Vec<(usize, &[Token])> = who.iter().map(|&s| (s, inputs[s].as_slice())).collect();
        eval.step_intervals(&feed, &symbols, &mut out[..symbols.len()])?;
        let coding = std::time::Instant::now();
        let mut row = 0;
        for &slot in &who {
            let (j, k) = lanes[slot].expect("active lane");
            let n = inputs[slot].len();
            for &(lo, freq) in &out[row..row + n] {
                jobs[j].code(lo, freq);
            }
            row += n;
            lanes[slot] = (k + n < jobs[j].tokens.len()).then_some((j, k + n));
        }
        *coder += coding.elapsed();
    }
}

/// [`Lockstep::decode`]'s schedule: the encoder's, one token per slot per step. Each step
/// finds every slot's token from the point its range decoder is at, without whole tables.
fn run_decode(
    first: Token,
    eval: &mut dyn Evaluator,
    jobs: &mut [DecodeJob<'_, '_>],
    coder: &mut std::time::Duration,
) -> Result<Vec<Option<Mismatch>>> {
    let mut failed: Vec<Option<Mismatch>> = jobs.iter().map(|_| None).collect();
    let width = eval.width();
    // lane → (job index, next step k)
    let mut lanes: Vec<Option<(usize, usize)>> = vec![None; width];
    let mut next_job = 0;
    let mut feed = Vec::with_capacity(width);
    let mut points = Vec::with_capacity(width);
    let mut who = Vec::with_capacity(width);
    let mut out = vec![(0, 0, 0); width];
    loop {
        for (slot, lane) in lanes.iter_mut().enumerate() {
            while next_job < jobs.len() && jobs[next_job].n == 0 {
                next_job += 1;
            }
            if lane.is_none() && next_job < jobs.len() {
                eval.reset(slot)?;
                *lane = Some((next_job, 0));
                next_job += 1;
            }
        }
        feed.clear();
        points.clear();
        who.clear();
        for (slot, lane) in lanes.iter_mut().enumerate() {
            if let Some((j, k)) = *lane {
                match jobs[j].point() {
                    Ok(c) => points.push(c),
                    Err(e) => {
                        // A stream no table could have produced: the block ends here.
                        failed[j] = Some(e);
                        *lane = None;
                        continue;
                    }
                }
                let tok = if k == 0 { first } else { jobs[j].tokens[k - 1] };
                feed.push((slot, tok));
                who.push(slot);
            }
        }
        if feed.is_empty() {
            if lanes.iter().all(Option::is_none) && next_job >= jobs.len() {
                return Ok(failed);
            }
            // Every block in flight failed before its step: refill and go on.
            continue;
        }
        eval.step_find(&feed, &points, &mut out[..feed.len()])?;
        let coding = std::time::Instant::now();
        for (&slot, &(s, lo, freq)) in who.iter().zip(&out) {
            let (j, k) = lanes[slot].expect("active lane");
            match jobs[j].take(s, lo, freq) {
                Ok(()) if k + 1 < jobs[j].n => lanes[slot] = Some((j, k + 1)),
                Ok(()) => lanes[slot] = None,
                Err(e) => {
                    failed[j] = Some(e);
                    lanes[slot] = None;
                }
            }
        }
        *coder += coding.elapsed();
    }
}

struct EncodeJob<'t> {
    tokens: &'t [Token],
    enc: Encoder,
    ideal: f64,
}

impl EncodeJob<'_> {
    /// Codes the next token, of interval `[lo, lo + freq)` out of `2^BITS`.
    fn code(&mut self, lo: u32, freq: u32) {
        self.enc.encode(lo, freq, BITS);
        self.ideal += ideal_bits(freq, BITS);
    }
}

/// Range-codes token sequences under `model`; returns (payload, ideal bits) per sequence.
pub fn encode_model(ls: &mut Lockstep<'_>, seqs: Vec<&[Token]>) -> Result<Vec<(Vec<u8>, f64)>> {
    let mut jobs: Vec<EncodeJob> = seqs
        .into_iter()
        .map(|t| EncodeJob {
            tokens: t,
            enc: Encoder::new(),
            ideal: 0.0,
        })
        .collect();
    ls.encode(&mut jobs)?;
    Ok(jobs
        .into_iter()
        .map(|j| (j.enc.finish(), j.ideal))
        .collect())
}

struct DecodeJob<'a, 'm> {
    model: &'m dyn Model,
    dec: Decoder<'a>,
    tokens: Vec<Token>,
    n: usize,
    plain: Vec<u8>,
    limit: usize,
}

/// How a model-coded block whose payload CRC held failed to give back its bytes.
#[derive(Clone, Copy, Debug)]
enum Mismatch {
    /// The coded stream points where no table can have put it.
    Stream,
    /// The tokens spell more bytes than the block holds.
    Overflow,
    /// The payload goes on after the last token.
    Trailing,
    /// The tokens spell this many bytes, fewer than the block holds.
    Length(usize),
    /// The bytes spelt have this CRC32, not the block's.
    Crc(u32),
}

impl Mismatch {
    /// What happened, as a clause after "block N (at byte M)".
    fn detail(self, h: &BlockHeader) -> String {
        match self {
            Mismatch::Stream => "is an invalid model-coded stream".into(),
            Mismatch::Overflow => "decoded to tokens that exceed its plain length".into(),
            Mismatch::Trailing => "has bytes after the end of the coded tokens".into(),
            Mismatch::Length(n) => format!("decoded to {n} bytes, expected {}", h.plain_len),
            Mismatch::Crc(actual) => format!(
                "decoded to bytes whose CRC32 is {actual:08x}, expected {:08x}",
                h.plain_crc
            ),
        }
    }

    /// The error for block `b`: divergence when `diverged` names the two machines, else
    /// damage (as [`check_plain`] reports it for the other codecs).
    fn error(self, b: &BlockRefData<'_>, diverged: Option<(&Machine, Machine)>) -> Error {
        match (diverged, self) {
            (Some((writer, here)), _) => Error::ModelDiverged {
                block: b.number,
                offset: b.offset,
                writer: Box::new(writer.clone()),
                here: Box::new(here),
                detail: self.detail(&b.header),
            },
            (None, Mismatch::Crc(actual)) => Error::BlockCrc {
                block: b.number,
                offset: b.offset,
                expected: b.header.plain_crc,
                actual,
            },
            (None, m) => Error::corrupt(
                b.offset,
                format!("block {} {}", b.number, m.detail(&b.header)),
            ),
        }
    }
}

impl DecodeJob<'_, '_> {
    /// Where in the next token's table the coded stream points.
    fn point(&self) -> Result<u32, Mismatch> {
        self.dec.point(BITS).ok_or(Mismatch::Stream)
    }

    /// Takes token `t`, found at [`Self::point`] with interval `[lo, lo + freq)`.
    fn take(&mut self, t: Token, lo: u32, freq: u32) -> Result<(), Mismatch> {
        self.dec.consume(lo, freq, BITS);
        let piece = self.model.piece(t);
        if self.plain.len() + piece.len() > self.limit {
            return Err(Mismatch::Overflow);
        }
        self.plain.extend_from_slice(piece);
        self.tokens.push(t);
        Ok(())
    }

    /// The block's bytes, once every token is taken: all of the payload read, and the
    /// length and CRC32 its header names.
    fn finish(self, b: &BlockRefData<'_>) -> Result<Vec<u8>, Mismatch> {
        // The decoder reads exactly as many bytes as the encoder wrote before trimming
        // trailing zeros, so a payload longer than that carries bytes no token used.
        if self.dec.consumed() < b.payload.len() {
            return Err(Mismatch::Trailing);
        }
        if self.plain.len() != b.header.plain_len as usize {
            return Err(Mismatch::Length(self.plain.len()));
        }
        let actual = crc32fast::hash(&self.plain);
        if actual != b.header.plain_crc {
            return Err(Mismatch::Crc(actual));
        }
        Ok(self.plain)
    }
}

/// Decompresses a zstd block into at most `limit + 1` bytes ([`zstd_block::decompress`]).
fn zstd_decompress(b: &BlockRefData<'_>, limit: usize) -> Result<Vec<u8>> {
    zstd_block::decompress(b.payload, limit, b.number, b.offset)
}

/// Checks a decoded block against its header.
fn check_plain(b: &BlockRefData<'_>, plain: Vec<u8>) -> Result<Vec<u8>> {
    if plain.len() != b.header.plain_len as usize {
        return Err(Error::corrupt(
            b.offset,
            format!(
                "block {} decoded to {} bytes, expected {}",
                b.number,
                plain.len(),
                b.header.plain_len
            ),
        ));
    }
    let actual = crc32fast::hash(&plain);
    if actual != b.header.plain_crc {
        return Err(Error::BlockCrc {
            block: b.number,
            offset: b.offset,
            expected: b.header.plain_crc,
            actual,
        });
    }
    Ok(plain)
}

/// Decodes blocks; model blocks run `width` at a time in lockstep. Each block gets its own
/// result: a damaged block does not stop the others. The outer error is for failures of the
/// model itself.
pub fn decode_blocks(
    model: Option<&dyn Model>,
    blocks: &[BlockRefData<'_>],
    width: usize,
) -> Result<Vec<Result<Vec<u8>>>> {
    decode_with(&mut Lockstep::new(model, width), blocks)
}

/// [`decode_blocks`] with a lockstep context kept by the caller across batches.
pub fn decode_with(
    ls: &mut Lockstep<'_>,
    blocks: &[BlockRefData<'_>],
) -> Result<Vec<Result<Vec<u8>>>> {
    let model = ls.model();
    let mut results: Vec<Option<Result<Vec<u8>>>> = blocks.iter().map(|_| None).collect();
    let mut model_jobs = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        if crc32fast::hash(b.payload) != b.header.coded_crc {
            results[i] = Some(Err(Error::corrupt(
                b.offset,
                format!("block {}: payload CRC32 mismatch", b.number),
            )));
            continue;
        }
        let plain_len = b.header.plain_len as usize;
        results[i] = match b.header.codec {
            Codec::Stored => Some(check_plain(b, b.payload.to_vec())),
            Codec::Zstd => Some(zstd_decompress(b, plain_len).and_then(|p| check_plain(b, p))),
            Codec::Model => match model {
                None => Some(Err(Error::usage(format!(
                    "block {} needs the archive's model",
                    b.number
                )))),
                Some(_) => {
                    model_jobs.push(i);
                    None
                }
            },
        };
    }
    if let (Some(model), false) = (model, model_jobs.is_empty()) {
        let mut jobs: Vec<DecodeJob> = model_jobs
            .iter()
            .map(|&i| {
                let b = &blocks[i];
                DecodeJob {
                    model,
                    dec: Decoder::new(b.payload),
                    // Capacities grow with what is decoded, not with what a header claims.
                    tokens: Vec::with_capacity((b.header.tokens as usize).min(4096)),
                    n: b.header.tokens as usize,
                    plain: Vec::with_capacity((b.header.plain_len as usize).min(1 << 16)),
                    limit: b.header.plain_len as usize,
                }
            })
            .collect();
        let failed = ls.decode(&mut jobs)?;
        // Every block here passed its payload CRC: under llama.cpp, whose probabilities
        // depend on the machine, a block that still fails diverged rather than broke.
        let here = (model.pin().kind == ModelKind::Llama).then(|| Machine::of(&model.header(0)));
        for ((job, err), &i) in jobs.into_iter().zip(failed).zip(&model_jobs) {
            let b = &blocks[i];
            let r = match err {
                Some(m) => Err(m),
                None => job.finish(b),
            };
            results[i] =
                Some(r.map_err(|m| m.error(b, here.as_ref().map(|h| (&ls.writer, h.clone())))));
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every block decided"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::order1::Order1;

    fn decode_all(model: &dyn Model, coded: &[Coded], width: usize) -> Vec<Result<Vec<u8>>> {
        let refs: Vec<BlockRefData> = coded
            .iter()
            .enumerate()
            .map(|(i, c)| c.as_block(i as u64))
            .collect();
        decode_blocks(Some(model), &refs, width).unwrap()
    }

    #[test]
    fn model_blocks_round_trip_across_widths() {
        let m = Order1::default();
        let texts: Vec<Vec<u8>> = (0..7)
            .map(|i| markov_text(i, 300 + 50 * i as usize))
            .collect();
        let plains: Vec<&[u8]> = texts.iter().map(|t| t.as_slice()).collect();
        let (coded, stats) = encode_blocks(Some(&m), &plains, 3, 19).unwrap();
        assert!(stats.blocks > 0);
        assert!(coded.iter().any(|c| c.header.codec == Codec::Model));
        for w in [1, 2, 7] {
            for (r, t) in decode_all(&m, &coded, w).into_iter().zip(&texts) {
                assert_eq!(&r.unwrap(), t);
            }
        }
    }

    /// Blocks coded after an archive primer (§12.8) decode after the primer decoded from a
    /// header, at any width, and give other bytes without it; the primer changes the coding
    /// at all, and coding with one is the same at every width.
    #[test]
    fn primed_blocks_round_trip_and_need_their_primer() {
        let m = Order1::default();
        let texts: Vec<Vec<u8>> = (0..5).map(|i| markov_text(10 + i, 400)).collect();
        let plains: Vec<&[u8]> = texts.iter().map(|t| t.as_slice()).collect();
        let primer: Vec<Token> = markov_text(99, 300).iter().map(|&b| b as Token).collect();
        let code = |width: usize, primer: Option<Vec<Token>>| {
            let mut ls = Lockstep::new(Some(&m), width);
            ls.set_primer_tokens(primer);
            encode_with(&mut ls, &plains, 19).unwrap().0
        };
        let primed = code(3, Some(primer.clone()));
        assert!(primed.iter().all(|c| c.header.codec == Codec::Model));
        for w in [1, 2] {
            let again = code(w, Some(primer.clone()));
            assert!(again
                .iter()
                .zip(&primed)
                .all(|(a, b)| a.payload == b.payload));
        }
        let fresh = code(3, None);
        assert!(fresh
            .iter()
            .zip(&primed)
            .any(|(a, b)| a.payload != b.payload));

        // The header carries the primer coded from an empty context.
        let mut ls = Lockstep::new(Some(&m), 1);
        let (coded_primer, _) = encode_model(&mut ls, vec![&primer]).unwrap().pop().unwrap();
        let mut header = m.header(1024);
        header.pin.context_policy = crate::format::POLICY_PRIMER;
        header.primer = Some(Primer {
            tokens: primer.len() as u16,
            coded: coded_primer,
        });
        let refs: Vec<BlockRefData> = primed
            .iter()
            .enumerate()
            .map(|(i, c)| c.as_block(i as u64))
            .collect();
        for w in [1, 4] {
            let mut ls = Lockstep::new(Some(&m), w);
            ls.set_writer(&header);
            let out = decode_with(&mut ls, &refs).unwrap();
            for (r, t) in out.into_iter().zip(&texts) {
                assert_eq!(&r.unwrap(), t);
            }
            assert_eq!(ls.primer_tokens(), Some(&primer[..]));
        }
        // Without the primer the blocks are other streams: never the bytes.
        for r in decode_all(&m, &primed, 2) {
            assert!(r.is_err());
        }
        // A damaged primer stream is reported as the primer's, not as the blocks'. Eight
        // bytes, not one: one byte in the place of the flush's trimmed zeros is read by the
        // decoder and may only change the primer's last tokens.
        let mut bad = header.clone();
        let p = bad.primer.as_mut().unwrap();
        p.coded.extend_from_slice(&[0x5A; 8]);
        let mut ls = Lockstep::new(Some(&m), 2);
        ls.set_writer(&bad);
        let e = decode_with(&mut ls, &refs).unwrap_err();
        assert!(e.to_string().contains("archive primer"), "{e}");
    }

    /// Blocks coded under the adaptive bias (§12.9), with and without a primer (coded
    /// under the bias too), decode at any width from a header that records the rate, and
    /// fail their CRC (never wrong bytes) where the header's rate is another.
    #[test]
    fn biased_blocks_round_trip_and_need_their_rate() {
        let m = crate::model::synthetic::load_committed(std::path::Path::new(env!(
            "CARGO_MANIFEST_DIR"
        )))
        .unwrap();
        let alice = crate::model::synthetic::TRAINING_TEXT.as_bytes();
        let texts: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                alice
                    .iter()
                    .cycle()
                    .skip(97 * i)
                    .take(500)
                    .copied()
                    .collect()
            })
            .collect();
        let plains: Vec<&[u8]> = texts.iter().map(|t| t.as_slice()).collect();
        let primer = m.tokenize(&alice[200..400]).unwrap();
        for with_primer in [false, true] {
            let code = |rate: u16| {
                let mut ls = Lockstep::new(Some(&m), 2);
                ls.set_bias_rate(rate);
                let mut header = m.header(1024);
                if with_primer {
                    let (coded, _) = encode_model(&mut ls, vec![&primer]).unwrap().pop().unwrap();
                    header.pin.context_policy = crate::format::POLICY_PRIMER;
                    header.primer = Some(Primer {
                        tokens: primer.len() as u16,
                        coded,
                    });
                    ls.set_primer_tokens(Some(primer.clone()));
                }
                header.bias_rate = rate;
                // Model blocks whatever their size (zstd beats random weights).
                let tokens: Vec<Vec<Token>> =
                    plains.iter().map(|p| m.tokenize(p).unwrap()).collect();
                let coded = encode_model(&mut ls, tokens.iter().map(|t| &t[..]).collect()).unwrap();
                let blocks: Vec<Coded> = coded
                    .into_iter()
                    .zip(&plains)
                    .zip(&tokens)
                    .map(|(((payload, ideal_bits), plain), t)| Coded {
                        header: BlockHeader::of(Codec::Model, plain, t.len() as u32, &payload),
                        payload,
                        ideal_bits,
                    })
                    .collect();
                (header, blocks)
            };
            let (header, biased) = code(24_576);
            let (_, plain) = code(0);
            assert!(biased
                .iter()
                .zip(&plain)
                .all(|(a, b)| a.payload != b.payload));
            let refs: Vec<BlockRefData> = biased
                .iter()
                .enumerate()
                .map(|(i, c)| c.as_block(i as u64))
                .collect();
            for w in [1, 3] {
                let mut ls = Lockstep::new(Some(&m), w);
                ls.set_writer(&header);
                for (r, t) in decode_with(&mut ls, &refs).unwrap().into_iter().zip(&texts) {
                    assert_eq!(&r.unwrap(), t, "primer {with_primer}, width {w}");
                }
            }
            // Another rate: other tables (and, with a primer, another primer): no block
            // decodes to wrong bytes.
            let mut other = header.clone();
            other.bias_rate = 1000;
            let mut ls = Lockstep::new(Some(&m), 2);
            ls.set_writer(&other);
            match decode_with(&mut ls, &refs) {
                Ok(out) => assert!(out.iter().all(|r| r.is_err())),
                Err(e) => assert!(e.to_string().contains("primer"), "{e}"),
            }
        }
    }

    /// Text with strong order-1 structure and no long repeats: the order-1 model beats zstd.
    pub(crate) fn markov_text(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut prev = 0u8;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                prev = (prev * 7 + (x & 1) as u8) % 16;
                b'a' + prev
            })
            .collect()
    }

    #[test]
    fn damaged_model_block_is_an_error_not_wrong_bytes() {
        let m = Order1::default();
        let text = markov_text(99, 400);
        let (mut coded, _) = encode_blocks(Some(&m), &[&text], 1, 19).unwrap();
        assert_eq!(coded[0].header.codec, Codec::Model);
        coded[0].payload[1] ^= 4;
        // Payload CRC catches it first...
        let e = decode_all(&m, &coded, 1).remove(0).unwrap_err();
        assert!(e.to_string().contains("payload CRC32 mismatch"), "{e}");
        // ...and with a matching payload CRC, the plain CRC or length catches it: still
        // damage, since the order-1 model computes the same on every machine.
        coded[0].header.coded_crc = crc32fast::hash(&coded[0].payload);
        let e = decode_all(&m, &coded, 1).remove(0).unwrap_err();
        assert_eq!(e.class(), crate::error::Class::Corrupt, "{e}");
        assert!(!matches!(e, Error::ModelDiverged { .. }), "{e}");
    }

    /// The order-1 model posing as model `kind`, on a machine whose header strings say
    /// `machine`; with `skew`, every table it gives is its own reversed (symbol `s` gets the
    /// frequency of `255 − s`): a machine computing other probabilities than the writer's.
    struct Skewed {
        inner: Order1,
        kind: crate::format::ModelKind,
        skew: bool,
        machine: &'static str,
    }

    impl Skewed {
        fn new(kind: crate::format::ModelKind, skew: bool, machine: &'static str) -> Skewed {
            Skewed {
                inner: Order1::new(1024),
                kind,
                skew,
                machine,
            }
        }
    }

    impl Model for Skewed {
        fn pin(&self) -> crate::format::ModelPin {
            let tokenizer = match self.kind {
                crate::format::ModelKind::Llama => crate::format::Tokenizer::LlamaPieces,
                _ => crate::format::Tokenizer::Bytes,
            };
            crate::format::ModelPin {
                kind: self.kind,
                tokenizer,
                ..self.inner.pin()
            }
        }
        fn header(&self, block_size: u32) -> Header {
            Header {
                pin: self.pin(),
                backend: format!("{} backend", self.machine),
                engine_version: format!("{} engine", self.machine),
                cpu_features: format!("{} cpu", self.machine),
                primer: None,
                bias_rate: 0,
                framing: crate::format::Framing::Classic,
                ..self.inner.header(block_size)
            }
        }
        fn tokenize(&self, bytes: &[u8]) -> Option<Vec<Token>> {
            self.inner.tokenize(bytes)
        }
        fn piece(&self, t: Token) -> &[u8] {
            self.inner.piece(t)
        }
        fn evaluator(
            &self,
            width: usize,
            tokens: usize,
            chunk: usize,
        ) -> Result<Box<dyn Evaluator + '_>> {
            Ok(Box::new(SkewedEval {
                inner: self.inner.evaluator(width, tokens, chunk)?,
                skew: self.skew,
            }))
        }
    }

    struct SkewedEval<'m> {
        inner: Box<dyn Evaluator + 'm>,
        skew: bool,
    }

    impl Evaluator for SkewedEval<'_> {
        fn width(&self) -> usize {
            self.inner.width()
        }
        fn capacity(&self) -> usize {
            self.inner.capacity()
        }
        fn reset(&mut self, slot: usize) -> Result<()> {
            self.inner.reset(slot)
        }
        fn step(&mut self, feed: &[(usize, Token)], out: &mut [Vec<u32>]) -> Result<()> {
            self.inner.step(feed, out)?;
            if self.skew {
                for cum in out.iter_mut().take(feed.len()) {
                    let freqs: Vec<u32> = cum.windows(2).map(|w| w[1] - w[0]).rev().collect();
                    let mut acc = 0;
                    for (c, f) in cum[1..].iter_mut().zip(freqs) {
                        acc += f;
                        *c = acc;
                    }
                }
            }
            Ok(())
        }
    }

    /// Blocks coded by the "writer's machine" and decoded under other probabilities, with
    /// every payload CRC intact: for a llama.cpp archive each block is reported as
    /// divergence naming both machines (a model problem, never wrong bytes); for an order-1
    /// archive, whose probabilities cannot differ, as damage.
    #[test]
    fn other_probabilities_under_an_intact_payload_are_divergence_for_llama_only() {
        use crate::error::Class;
        use crate::format::ModelKind;
        let texts: Vec<Vec<u8>> = (0..3).map(|i| markov_text(i + 120, 400)).collect();
        let plains: Vec<&[u8]> = texts.iter().map(|t| t.as_slice()).collect();
        for kind in [ModelKind::Llama, ModelKind::Order1] {
            let writer = Skewed::new(kind, false, "writer's");
            let reader = Skewed::new(kind, true, "reader's");
            let (coded, _) = encode_blocks(Some(&writer), &plains, 2, 19).unwrap();
            assert!(coded.iter().all(|c| c.header.codec == Codec::Model));
            // The writer's own machine decodes them.
            for (r, t) in decode_all(&writer, &coded, 2).into_iter().zip(&texts) {
                assert_eq!(&r.unwrap(), t);
            }
            let refs: Vec<BlockRefData> = coded
                .iter()
                .enumerate()
                .map(|(i, c)| c.as_block(i as u64))
                .collect();
            let mut ls = Lockstep::new(Some(&reader), 2);
            ls.set_writer(&writer.header(1024));
            for (i, r) in decode_with(&mut ls, &refs).unwrap().into_iter().enumerate() {
                let e = r.expect_err("other probabilities never give the block back");
                let msg = e.to_string();
                match (kind, &e) {
                    (
                        ModelKind::Llama,
                        Error::ModelDiverged {
                            block,
                            writer: w,
                            here,
                            ..
                        },
                    ) => {
                        assert_eq!(*block, i as u64);
                        assert_eq!(**w, Machine::of(&writer.header(0)));
                        assert_eq!(**here, Machine::of(&reader.header(0)));
                        assert_eq!(e.class(), Class::Model);
                        assert!(e.repeats());
                        for part in [
                            "not damaged",
                            "payload checksum holds",
                            "other probabilities",
                            "written on: backend writer's backend, engine writer's engine, \
                             CPU writer's cpu",
                            "decoding on: backend reader's backend, engine reader's engine, \
                             CPU reader's cpu",
                            "lmz pack --engine portable",
                        ] {
                            assert!(msg.contains(part), "{part:?} not in {msg}");
                        }
                    }
                    (ModelKind::Order1, _) => {
                        assert_eq!(e.class(), Class::Corrupt, "{msg}");
                        assert!(!msg.contains("not damaged"), "{msg}");
                    }
                    _ => panic!("block {i}: {msg}"),
                }
            }
            // A payload damaged in transit is damage under either kind.
            let mut bad = coded[0].clone();
            bad.payload[2] ^= 0x10;
            let e = decode_all(&reader, &[bad], 1).remove(0).unwrap_err();
            assert_eq!(e.class(), Class::Corrupt, "{e}");
            assert!(e.to_string().contains("payload CRC32 mismatch"), "{e}");
        }
    }

    /// Through both archive readers (random access, and a pipe), a diverging block names
    /// the machine the archive's header records, and the pipe extraction stops there.
    #[test]
    fn archive_readers_name_the_writer_recorded_in_the_header() {
        use crate::archive::extract::{ExtractOptions, Extractor};
        use crate::archive::{stream, Archive, Meta, Writer, WriterOptions};
        use crate::format::ModelKind;
        let writer = Skewed::new(ModelKind::Llama, false, "writer's");
        let reader = Skewed::new(ModelKind::Llama, true, "reader's");
        let text = markov_text(7, 3000);
        let opts = WriterOptions {
            block_size: 1024,
            width: 2,
            zstd_level: 19,
            ..WriterOptions::default()
        };
        let mut w = Writer::new(Vec::new(), Some(&writer), opts).unwrap();
        w.add_file(b"t", Meta::default(), text.len() as u64, &mut &text[..])
            .unwrap();
        let bytes = w.finish().unwrap().0;
        let a = Archive::from_bytes(bytes.clone()).unwrap();
        assert_eq!(a.header().backend, "writer's backend");
        let want = Machine::of(a.header());
        let results = a
            .decode_blocks(Some(&reader), 0..a.block_count(), 2)
            .unwrap();
        assert!(!results.is_empty());
        for r in results {
            match r {
                Err(Error::ModelDiverged { writer, .. }) => assert_eq!(*writer, want),
                other => panic!("{other:?}"),
            }
        }
        let t = tempfile::tempdir().unwrap();
        let e = stream::extract_stream(
            &bytes[..],
            |_| {
                let m: Box<dyn Model> = Box::new(Skewed::new(ModelKind::Llama, true, "reader's"));
                Ok((
                    Some(m),
                    Extractor::new(t.path(), ExtractOptions::default())?,
                ))
            },
            Some(2),
        )
        .unwrap_err();
        match e {
            Error::ModelDiverged { writer, .. } => assert_eq!(*writer, want),
            other => panic!("{other}"),
        }
        assert!(
            !t.path().join("t").exists(),
            "no file with wrong bytes is left"
        );
    }

    /// A stream no table can have produced (its code at the top of the range) fails its
    /// block before the block's first step, and the lanes go on with the other blocks: at
    /// width 1, where every lane in flight has failed, and at width 2.
    #[test]
    fn invalid_stream_fails_its_block_only() {
        let m = Order1::default();
        let texts: Vec<Vec<u8>> = (0..4).map(|i| markov_text(i + 80, 300)).collect();
        let plains: Vec<&[u8]> = texts.iter().map(|t| t.as_slice()).collect();
        let (mut coded, _) = encode_blocks(Some(&m), &plains, 2, 19).unwrap();
        assert!(coded.iter().all(|c| c.header.codec == Codec::Model));
        for bad in [0, 2] {
            coded[bad].payload = vec![0xFF; 4];
            coded[bad].header.coded_len = 4;
            coded[bad].header.coded_crc = crc32fast::hash(&coded[bad].payload);
        }
        for width in [1, 2] {
            let results = decode_all(&m, &coded, width);
            for (i, (r, t)) in results.into_iter().zip(&texts).enumerate() {
                match r {
                    Ok(p) => {
                        assert!(i % 2 == 1, "block {i} decoded");
                        assert_eq!(&p, t);
                    }
                    Err(e) => {
                        assert!(i % 2 == 0, "block {i}: {e}");
                        assert!(e.to_string().contains("invalid model-coded stream"), "{e}");
                    }
                }
            }
        }
    }

    /// The order-1 model with a width limit, or declaring itself not batch-invariant; it
    /// fails any request for an evaluator wider than it allows.
    struct Limited {
        inner: Order1,
        max: usize,
        invariant: bool,
    }

    impl Model for Limited {
        fn pin(&self) -> crate::format::ModelPin {
            self.inner.pin()
        }
        fn header(&self, block_size: u32) -> crate::format::Header {
            self.inner.header(block_size)
        }
        fn tokenize(&self, bytes: &[u8]) -> Option<Vec<Token>> {
            self.inner.tokenize(bytes)
        }
        fn piece(&self, t: Token) -> &[u8] {
            self.inner.piece(t)
        }
        fn max_width(&self) -> usize {
            self.max
        }
        fn evaluator(
            &self,
            width: usize,
            tokens: usize,
            chunk: usize,
        ) -> Result<Box<dyn Evaluator + '_>> {
            let allowed = if self.invariant { self.max } else { 1 };
            assert!(
                width <= allowed,
                "evaluator of width {width} asked for, at most {allowed} allowed"
            );
            self.inner.evaluator(width, tokens, chunk)
        }
        fn lockstep_exact(&self, _width: usize) -> bool {
            self.invariant
        }
    }

    /// Codes `texts` with `m` at width 4 and decodes them at width 3: the payloads are those
    /// of the unrestricted model in lockstep, and the round trip exact.
    fn same_as_unrestricted(m: &Limited, texts: &[Vec<u8>]) {
        let plains: Vec<&[u8]> = texts.iter().map(|t| t.as_slice()).collect();
        let (coded, _) = encode_blocks(Some(m), &plains, 4, 19).unwrap();
        assert!(coded.iter().all(|c| c.header.codec == Codec::Model));
        let (wide, _) = encode_blocks(Some(&Order1::default()), &plains, 4, 19).unwrap();
        for (a, b) in coded.iter().zip(&wide) {
            assert_eq!(a.payload, b.payload);
        }
        for (r, t) in decode_all(m, &coded, 3).into_iter().zip(texts) {
            assert_eq!(&r.unwrap(), t);
        }
    }

    /// A model that says it is not batch-invariant is only ever evaluated one block at a
    /// time, whatever width the caller asks for, and still codes every block.
    #[test]
    fn model_that_is_not_batch_invariant_runs_one_block_at_a_time() {
        let m = Limited {
            inner: Order1::default(),
            max: usize::MAX,
            invariant: false,
        };
        let texts: Vec<Vec<u8>> = (0..5).map(|i| markov_text(i + 40, 300)).collect();
        same_as_unrestricted(&m, &texts);
    }

    /// Asking for more blocks in flight than the model holds (llama.cpp: 256 sequences) runs
    /// as many as it holds, rather than failing to create the evaluator.
    #[test]
    fn width_is_cut_to_what_the_model_holds() {
        let m = Limited {
            inner: Order1::default(),
            max: 2,
            invariant: true,
        };
        assert_eq!(Lockstep::new(Some(&m), 5).width(), 2);
        assert_eq!(Lockstep::new(Some(&m), 0).width(), 1);
        let texts: Vec<Vec<u8>> = (0..5).map(|i| markov_text(i + 60, 300)).collect();
        same_as_unrestricted(&m, &texts);
    }
}
