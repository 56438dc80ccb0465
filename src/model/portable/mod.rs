//! The portable engine: "lmz transformer v1" (model kind 3), a Llama-architecture forward
//! pass whose arithmetic FORMAT.md §20 specifies operation by operation, so that an archive
//! decodes bit for bit on every machine, with any kernel set, thread count or batch shape —
//! and can be decoded by an implementation written from the spec alone.
//!
//! The recipe: matrix products are exact integer sums (activations quantized to 8 bits per
//! block of 32, [`kernels`]), combined per block in a fixed order; every other operation is
//! an IEEE binary32 operation in a stated order, with `exp`, `sin`, `cos`, `ln` given as
//! algorithms ([`arith`]) instead of borrowed from libm. SIMD kernels are chosen at run time
//! and must equal the scalar reference bit for bit (tested); `LMZ_KERNELS` forces one.
//!
//! Pure Rust: the GGUF file is parsed ([`super::gguf`]) and tokenized ([`super::bpe`])
//! without llama.cpp, so a build without C or C++ code reads and writes kind-3 archives.

pub mod arith;
pub mod attention;
pub mod forward;
pub mod kernels;
#[cfg(test)]
mod vectors;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use forward::{Cache, Config, Layer, Row, Scratch, StepTimes, Weights};
use kernels::{KernelSet, Matrix, WeightType};

use super::bias::AdaptiveBias;
use super::bpe::Bpe;
use super::fetch::ModelFile;
use super::gguf::Gguf;
use super::tables::Tables;
use super::{check_rows, EvalProfile, Evaluator, Model, Token};
use crate::error::{Error, Result};
use crate::format::{Header, ModelKind, ModelPin, Tokenizer, FREQ_BITS, MAX_PRIMER_TOKENS};

/// The arithmetic's version, pinned in header byte 37 (FORMAT.md §20.9).
pub const ARITH_VERSION: u8 = 1;

/// The header's diagnostic `engine_version` string: the writer's version only, since the
/// arithmetic's is pinned in byte 37 and every byte of a header costs each archive.
pub const ENGINE_VERSION: &str = concat!("lmz ", env!("CARGO_PKG_VERSION"));

/// Settings of a portable evaluation that do not change probabilities.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortableOptions {
    /// Threads for the model (rows, heads and output columns are split, never a sum); 0 =
    /// every core. Clamped to the machine's cores.
    pub threads: usize,
    /// Threads turning logits into frequencies; `None` = the model's threads (they are idle
    /// while the tables are made, unlike llama.cpp's).
    pub table_threads: Option<usize>,
    /// `None`: [`KernelSet::from_env`] (`LMZ_KERNELS`, else the best this CPU runs).
    pub kernels: Option<KernelSet>,
}

/// Whether the portable engine runs a model at all ([`PortableLm::supports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Not a model kind 3 covers (FORMAT.md §20.2): the reason, for the user.
    No(String),
}

/// The weight types kind 3 defines (FORMAT.md §20.4): F32, F16, Q4_0, Q4_1, Q8_0.
/// Most rows a matrix may have: a vocabulary plus its 256 escapes must fit the header's
/// `vocab_size` bound of 2^22 (FORMAT.md §4.1), and no other matrix comes near it.
const MAX_ROWS: u64 = (1 << 22) - 256;

const KIND3_TYPES: [u32; 5] = {
    use super::gguf::ggml_type::*;
    [F32, F16, Q4_0, Q4_1, Q8_0]
};

pub struct PortableLm {
    w: Weights,
    pin: ModelPin,
    name: String,
    bpe: Bpe,
    /// Every symbol's bytes: the vocabulary's pieces, then the 256 raw-byte escapes.
    pieces: Vec<Vec<u8>>,
    /// The lowest token whose piece is exactly byte `b`.
    byte_token: [Option<Token>; 256],
    n_model: usize,
    escape_input: Token,
    kernels: KernelSet,
    table_threads: usize,
    pool: Option<rayon::ThreadPool>,
    /// The last archive primer's state: computed once per process (per mount), shared by
    /// every evaluator that starts blocks from it.
    prefix: Mutex<Option<SharedPrefix>>,
}

/// An archive primer's state (FORMAT.md §12.8, §12.9): what it was computed from, its KV
/// state, and its adaptive bias after learning from every primer token (for `rate` ≠ 0).
struct SharedPrefix {
    inputs: Vec<Token>,
    next: Token,
    rate: u16,
    cache: Arc<Cache>,
    bias: Option<Arc<AdaptiveBias>>,
}

fn bad(file: &ModelFile, detail: impl std::fmt::Display) -> Error {
    Error::ModelUnavailable {
        detail: format!("{}: {detail}", file.path.display()),
    }
}

/// Whether kind 3 covers a parsed model: architecture, tokenizer, RoPE and weight types
/// (FORMAT.md §20.2). The one place these are decided, for [`PortableLm::supports`] and
/// [`PortableLm::load`] alike.
fn support(g: &Gguf) -> Result<Support> {
    let arch = g.get_str("general.architecture")?.unwrap_or("");
    if arch != "llama" {
        return Ok(Support::No(format!(
            "architecture {arch:?} (the portable engine runs \"llama\")"
        )));
    }
    let tok = g.get_str("tokenizer.ggml.model")?.unwrap_or("");
    if tok != "gpt2" {
        return Ok(Support::No(format!(
            "tokenizer {tok:?} (the portable engine runs byte-level BPE, \"gpt2\")"
        )));
    }
    if let Some(t) = g.get_str("llama.rope.scaling.type")? {
        if t != "none" {
            return Ok(Support::No(format!("RoPE scaling {t:?}")));
        }
    }
    if let Some(t) = g
        .tensors
        .iter()
        .find(|t| !KIND3_TYPES.contains(&t.ggml_type))
    {
        return Ok(Support::No(format!(
            "tensor {} is {} (the portable engine runs F32, F16, Q4_0, Q4_1 and Q8_0)",
            t.name,
            crate::model::gguf::type_name(t.ggml_type)
        )));
    }
    Ok(Support::Yes)
}

impl PortableLm {
    /// Whether kind 3 covers this model, without loading it. A file that is not a readable
    /// GGUF is an error, not a "no"; a model this says yes to may still be refused by
    /// [`PortableLm::load`] for inconsistent shapes, which no engine would run.
    pub fn supports(file: &ModelFile) -> Result<Support> {
        support(&Gguf::open(&file.path)?)
    }

    /// Loads a verified GGUF model file (its hash already computed: the pin names it). A
    /// model kind 3 does not cover is [`Error::ModelUnavailable`], saying why.
    pub fn load(file: &ModelFile, max_block_tokens: u32, opts: PortableOptions) -> Result<Self> {
        Self::load_if_supported(file, max_block_tokens, opts)?
            .map_err(|why| bad(file, format!("{why}; use --engine llama for such models")))
    }

    /// [`PortableLm::load`], except that a model kind 3 does not cover gives `Ok(Err(why))`:
    /// `--engine auto` then falls back to llama.cpp, having opened the file once.
    pub fn load_if_supported(
        file: &ModelFile,
        max_block_tokens: u32,
        opts: PortableOptions,
    ) -> Result<std::result::Result<Self, String>> {
        let kernels = match opts.kernels {
            Some(k) => k,
            None => KernelSet::from_env()?,
        };
        let g = Gguf::open(&file.path)?;
        if let Support::No(why) = support(&g)? {
            return Ok(Err(why));
        }
        let w = load_weights(&g, file)?;
        let bpe = Bpe::from_gguf(&g)?;
        let n = w.cfg.n_vocab;
        if bpe.len() != n {
            return Err(bad(
                file,
                format!(
                    "{} tokens in the vocabulary, {n} rows in token_embd.weight",
                    bpe.len()
                ),
            ));
        }
        let mut pieces: Vec<Vec<u8>> = (0..n as u32).map(|t| bpe.piece(t).to_vec()).collect();
        pieces.extend((0..=255u8).map(|b| vec![b]));
        let mut byte_token = [None; 256];
        for (t, p) in pieces.iter().enumerate().rev() {
            if p.len() == 1 {
                byte_token[p[0] as usize] = Some(t as Token);
            }
        }
        let escape_input = byte_token[b'?' as usize]
            .filter(|&t| (t as usize) < n)
            .unwrap_or(0);
        let bos = g
            .get_u32("tokenizer.ggml.bos_token_id")?
            .filter(|&b| (b as usize) < n)
            .unwrap_or(0);
        let pin = ModelPin {
            kind: ModelKind::Portable,
            sha256: file.sha256,
            size: file.size,
            vocab_size: n as u32 + 256,
            freq_bits: FREQ_BITS,
            tokenizer: Tokenizer::GgufPieces,
            context_policy: 1,
            bos,
            max_block_tokens,
            schedule: 1,
            flash_attn: ARITH_VERSION,
            kv_unified: 0,
            kv_type: 1,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if opts.threads == 0 {
            cores
        } else {
            opts.threads.min(cores)
        };
        let table_threads = opts.table_threads.unwrap_or(threads).clamp(1, cores);
        let pool = if threads > 1 {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("lmz-model-{i}"))
                .build()
                .map_err(|e| log::warn!("model on one thread: {e}"))
                .ok()
        } else {
            None
        };
        log::debug!(
            "portable engine: {} kernels, {threads} threads, weights {:.1} MB",
            kernels.name(),
            w.heap_bytes() as f64 / 1e6
        );
        Ok(Ok(PortableLm {
            w,
            pin,
            name: file.name.clone(),
            bpe,
            pieces,
            byte_token,
            n_model: n,
            escape_input,
            kernels,
            table_threads,
            pool,
            prefix: Mutex::new(None),
        }))
    }

    pub fn kernels(&self) -> KernelSet {
        self.kernels
    }

    pub fn config(&self) -> &Config {
        &self.w.cfg
    }

    fn bytes_as_tokens(&self, bytes: &[u8], out: &mut Vec<Token>) -> Option<()> {
        for &b in bytes {
            out.push(self.byte_token[b as usize]?);
        }
        Some(())
    }

    /// Valid UTF-8 through the BPE tokenizer; a line whose tokens do not give back its exact
    /// bytes (never seen, but the pieces are the contract) is coded as byte tokens.
    fn tokenize_text(&self, text: &[u8], out: &mut Vec<Token>) -> Option<()> {
        if text.is_empty() {
            return Some(());
        }
        if let Some(t) = self
            .bpe
            .tokenize(text)
            .filter(|t| self.pieces_match(t, text))
        {
            out.extend(t);
            return Some(());
        }
        for line in text.split_inclusive(|&b| b == b'\n') {
            match self
                .bpe
                .tokenize(line)
                .filter(|t| self.pieces_match(t, line))
            {
                Some(t) => out.extend(t),
                None => self.bytes_as_tokens(line, out)?,
            }
        }
        Some(())
    }

    fn pieces_match(&self, tokens: &[Token], text: &[u8]) -> bool {
        let mut pos = 0;
        for &t in tokens {
            let p = self.piece(t);
            if text.len() < pos + p.len() || &text[pos..pos + p.len()] != p {
                return false;
            }
            pos += p.len();
        }
        pos == text.len()
    }

    fn new_eval(&self, width: usize, tokens: usize, chunk: usize) -> PortableEval<'_> {
        let width = width.max(1);
        PortableEval {
            m: self,
            caches: (0..width).map(|_| Cache::default()).collect(),
            // A block's tokens after an archive primer's (FORMAT.md §12.8).
            capacity: tokens.clamp(
                1,
                self.pin.max_block_tokens as usize + MAX_PRIMER_TOKENS as usize,
            ),
            prefix: None,
            prefix_bias: None,
            prefix_inputs: None,
            chunk: chunk.max(1),
            rows: Vec::new(),
            scratch: Scratch::default(),
            tables: Tables::new(self.table_threads),
            bias: None,
            profile: EvalProfile::default(),
            times: StepTimes::default(),
        }
    }
}

/// The hyperparameters and tensors (FORMAT.md §20.2), checked for consistency: every shape
/// the forward pass relies on is verified here, so evaluation cannot index out of bounds.
fn load_weights(g: &Gguf, file: &ModelFile) -> Result<Weights> {
    let key = |k: &str| -> Result<u32> {
        g.get_u32(&format!("llama.{k}"))?.ok_or_else(|| {
            bad(
                file,
                format!("metadata llama.{k} missing or not an integer"),
            )
        })
    };
    let n_embd = key("embedding_length")? as usize;
    let n_layer = key("block_count")? as usize;
    let n_head = key("attention.head_count")? as usize;
    let n_head_kv = g
        .get_u32("llama.attention.head_count_kv")?
        .unwrap_or(n_head as u32) as usize;
    let n_ff = key("feed_forward_length")? as usize;
    let eps = g
        .get_f32("llama.attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| {
            bad(
                file,
                "metadata llama.attention.layer_norm_rms_epsilon missing",
            )
        })?;
    let rope_base = g.get_f32("llama.rope.freq_base")?.unwrap_or(10_000.0);
    if n_embd == 0 || n_head == 0 || n_head_kv == 0 || n_layer == 0 || n_ff == 0 {
        return Err(bad(file, "zero model dimension"));
    }
    if !n_embd.is_multiple_of(n_head)
        || !n_head.is_multiple_of(n_head_kv)
        || !(n_embd / n_head).is_multiple_of(2)
    {
        return Err(bad(
            file,
            format!("inconsistent heads: width {n_embd}, {n_head} heads, {n_head_kv} KV heads"),
        ));
    }
    let head_dim = n_embd / n_head;
    if let Some(r) = g.get_u32("llama.rope.dimension_count")? {
        if r as usize != head_dim {
            return Err(bad(
                file,
                format!("partial RoPE ({r} of {head_dim} dimensions) is not supported"),
            ));
        }
    }
    if n_layer > 4096 || n_embd > 1 << 16 || n_ff > 1 << 18 {
        return Err(bad(file, "model dimensions beyond what lmz accepts"));
    }
    if !(eps.is_finite() && eps >= 0.0 && rope_base.is_finite() && rope_base > 1.0) {
        return Err(bad(file, "RMS epsilon or RoPE base out of range"));
    }
    let matrix = |name: &str, cols: usize, rows: Option<usize>| -> Result<Matrix> {
        let t = g
            .tensor(name)
            .ok_or_else(|| bad(file, format!("tensor {name} missing")))?;
        let dims = &t.dims;
        let ok_rows = dims.len() == 2 && rows.is_none_or(|r| dims[1] == r as u64);
        if !ok_rows || dims[0] != cols as u64 || dims[1] == 0 || dims[1] > MAX_ROWS {
            return Err(bad(
                file,
                format!("tensor {name} has shape {dims:?}, expected [{cols}, {rows:?}]"),
            ));
        }
        let ty = WeightType::from_ggml(t.ggml_type).ok_or_else(|| {
            bad(
                file,
                format!(
                    "tensor {name} has ggml type {}: the portable engine takes F32, F16, Q4_0, \
                     Q4_1 and Q8_0 (use --engine llama for others)",
                    t.ggml_type
                ),
            )
        })?;
        Matrix::from_gguf(ty, g.tensor_data(t), cols, dims[1] as usize)
            .map_err(|e| bad(file, format!("tensor {name}: {e}")))
    };
    let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
        let m = matrix_vec(g, file, name, len)?;
        Ok(m)
    };
    let token_embd = matrix("token_embd.weight", n_embd, None)?;
    let n_vocab = token_embd.rows();
    let kvd = n_head_kv * head_dim;
    let mut layers = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        layers.push(Layer {
            attn_norm: vector(&p("attn_norm"), n_embd)?,
            wq: matrix(&p("attn_q"), n_embd, Some(n_embd))?,
            wk: matrix(&p("attn_k"), n_embd, Some(kvd))?,
            wv: matrix(&p("attn_v"), n_embd, Some(kvd))?,
            wo: matrix(&p("attn_output"), n_embd, Some(n_embd))?,
            ffn_norm: vector(&p("ffn_norm"), n_embd)?,
            gate: matrix(&p("ffn_gate"), n_embd, Some(n_ff))?,
            up: matrix(&p("ffn_up"), n_embd, Some(n_ff))?,
            down: matrix(&p("ffn_down"), n_ff, Some(n_embd))?,
        });
    }
    let output_norm = vector("output_norm.weight", n_embd)?;
    let output = match g.tensor("output.weight") {
        Some(_) => Some(matrix("output.weight", n_embd, Some(n_vocab))?),
        None => None,
    };
    let cfg = Config {
        n_embd,
        n_layer,
        n_head,
        n_head_kv,
        head_dim,
        n_ff,
        n_vocab,
        eps,
        rope_base,
    };
    Ok(Weights {
        freqs: arith::rope_freqs(rope_base, head_dim),
        cfg,
        token_embd,
        layers,
        output_norm,
        output,
    })
}

/// A one-dimensional F32 or F16 tensor of `len` values (the norms' weights).
fn matrix_vec(g: &Gguf, file: &ModelFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = g
        .tensor(name)
        .ok_or_else(|| bad(file, format!("tensor {name} missing")))?;
    if t.dims.len() != 1 || t.dims[0] != len as u64 {
        return Err(bad(
            file,
            format!("tensor {name} has shape {:?}, expected [{len}]", t.dims),
        ));
    }
    let ty = WeightType::from_ggml(t.ggml_type)
        .ok_or_else(|| bad(file, format!("tensor {name}: ggml type {}", t.ggml_type)))?;
    let m = Matrix::from_gguf(ty, g.tensor_data(t), len, 1)
        .map_err(|e| bad(file, format!("tensor {name}: {e}")))?;
    let mut out = vec![0.0f32; len];
    m.row_f32(0, &mut out);
    Ok(out)
}

impl Model for PortableLm {
    fn pin(&self) -> ModelPin {
        self.pin.clone()
    }

    fn header(&self, block_size: u32) -> Header {
        Header {
            block_size,
            pin: self.pin(),
            model_name: self.name.clone(),
            backend: format!("rust {}", self.kernels.name()),
            engine_version: ENGINE_VERSION.into(),
            // Kind 3 computes the same on every CPU: the writer's CPU explains nothing a
            // reader could act on (the kernel set used is in `backend`), so none is recorded.
            cpu_features: String::new(),
            primer: None,
            bias_rate: 0,
            framing: crate::format::Framing::Classic,
        }
    }

    fn backend(&self) -> String {
        format!("rust {}", self.kernels.name())
    }

    fn default_width(&self) -> usize {
        16
    }

    fn tokenize(&self, bytes: &[u8]) -> Option<Vec<Token>> {
        let mut out = Vec::with_capacity(bytes.len() / 3 + 1);
        let mut rest = bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(_) => {
                    self.tokenize_text(rest, &mut out)?;
                    return Some(out);
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    self.tokenize_text(valid, &mut out)?;
                    let bad = e.error_len().unwrap_or(after.len());
                    self.bytes_as_tokens(&after[..bad], &mut out)?;
                    rest = &after[bad..];
                }
            }
        }
    }

    fn worth_coding(&self, plain: &[u8], tokens: &[Token]) -> bool {
        // As for the llama engine: below 1.5 bytes per token the block is binary-like.
        tokens.len() * 3 <= plain.len() * 2
    }

    fn piece(&self, t: Token) -> &[u8] {
        self.pieces.get(t as usize).map_or(&[], |p| p.as_slice())
    }

    fn evaluator(
        &self,
        width: usize,
        tokens: usize,
        chunk: usize,
    ) -> Result<Box<dyn Evaluator + '_>> {
        Ok(Box::new(self.new_eval(width, tokens, chunk)))
    }

    /// Exact by construction (module doc of `forward`).
    fn chunks_exact(&self, _width: usize) -> bool {
        true
    }

    fn raw_tokens_per_second(&self, lengths: &[usize], chunk: usize) -> Result<Option<f64>> {
        let chunk = chunk.max(1);
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let mut e = self.new_eval(lengths.len(), longest, chunk);
        let longest = longest.min(e.capacity + 1);
        let start = Instant::now();
        let mut fed = 0;
        for k in (0..longest).step_by(chunk) {
            e.rows.clear();
            for (slot, &len) in lengths.iter().enumerate() {
                for p in k..(k + chunk).min(len.min(longest)) {
                    let tok = if p == 0 {
                        self.pin.bos
                    } else {
                        ((p * 7919 + slot * 104_729) % self.n_model) as u32
                    };
                    e.rows.push(Row { slot, token: tok });
                }
            }
            e.evaluate()?;
            fed += e.rows.len();
        }
        Ok(Some(fed as f64 / start.elapsed().as_secs_f64()))
    }
}

struct PortableEval<'m> {
    m: &'m PortableLm,
    caches: Vec<Cache>,
    /// What a reset slot starts from ([`Evaluator::set_prefix`]); `None`: empty.
    prefix: Option<Arc<Cache>>,
    /// The adaptive bias a reset slot starts from, after the prefix; `None`: zero.
    prefix_bias: Option<Arc<AdaptiveBias>>,
    /// What [`Evaluator::set_prefix`] was last given (to recompute the prefix's bias when
    /// the rate changes).
    prefix_inputs: Option<(Vec<Token>, Token)>,
    /// Most tokens per sequence, BOS excluded.
    capacity: usize,
    chunk: usize,
    /// The step being built.
    rows: Vec<Row>,
    scratch: Scratch,
    tables: Tables,
    /// The adaptive bias of every slot (FORMAT.md §12.9), where it is on.
    bias: Option<Biases>,
    profile: EvalProfile,
    times: StepTimes,
}

/// Per-slot state of the adaptive bias. Each slot's rows are done in feed order, on the
/// caller's thread: a row's table depends on every earlier row of its sequence.
struct Biases {
    rate: u16,
    slots: Vec<AdaptiveBias>,
    /// The table [`Evaluator::step`] last gave a slot: its update waits for the token coded
    /// with it, which is that slot's next input.
    pending: Vec<Option<Vec<u32>>>,
    /// The symbols fed this step, in row order (rows hold escapes as the escape input).
    fed: Vec<Token>,
    weights: Vec<u32>,
}

/// What a step asks of each row under the bias.
enum Query<'a> {
    Tables(&'a mut [Vec<u32>]),
    Intervals(&'a [Token], &'a mut [(u32, u32)]),
    Find(&'a [u32], &'a mut [(Token, u32, u32)]),
}

impl PortableEval<'_> {
    /// Appends `tok` for `slot`; an escape symbol is fed as the escape input token.
    fn add(&mut self, slot: usize, tok: Token) -> Result<()> {
        if slot >= self.caches.len() {
            return Err(Error::usage(format!("slot {slot} outside the batch")));
        }
        let queued = self.rows.iter().filter(|r| r.slot == slot).count();
        if self.caches[slot].len + queued > self.capacity {
            return Err(Error::ModelEval {
                detail: format!("sequence {slot} exceeds its context"),
            });
        }
        let token = if tok as usize >= self.m.n_model {
            self.m.escape_input
        } else {
            tok
        };
        self.rows.push(Row { slot, token });
        if let Some(b) = self.bias.as_mut() {
            b.fed.push(tok);
        }
        Ok(())
    }

    /// Clears the step being built.
    fn begin(&mut self) {
        self.rows.clear();
        if let Some(b) = self.bias.as_mut() {
            b.fed.clear();
        }
    }

    /// Evaluates the step and answers `q` for each row under its slot's adaptive bias, in
    /// row order (FORMAT.md §12.9).
    fn biased(&mut self, mut q: Query<'_>) -> Result<()> {
        let done = self.evaluate()?;
        let nv = self.m.n_model;
        let symbols = self.m.pieces.len();
        let bits = FREQ_BITS as u32;
        let b = self.bias.as_mut().expect("bias on");
        b.weights.resize(symbols, 0);
        for (r, (row, logits)) in self
            .rows
            .iter()
            .zip(self.scratch.logits.chunks_exact(nv))
            .enumerate()
        {
            let s = row.slot;
            let bias = &mut b.slots[s];
            if let Some(cum) = b.pending[s].take() {
                bias.learn_from_cum(&cum, bits, b.fed[r] as usize);
            }
            match &mut q {
                Query::Tables(out) => {
                    out[r].resize(symbols + 1, 0);
                    bias.cum(logits, bits, &mut b.weights, &mut out[r]);
                    b.pending[s] = Some(out[r].clone());
                }
                Query::Intervals(targets, out) => {
                    out[r] = bias.interval(logits, bits, &mut b.weights, targets[r] as usize);
                }
                Query::Find(points, out) => {
                    let (t, lo, f) = bias.find(logits, bits, &mut b.weights, points[r]);
                    out[r] = (t as Token, lo, f);
                }
            }
        }
        self.profile.freqs += done.elapsed();
        Ok(())
    }

    /// Runs the model on `self.rows`; the logits are in `self.scratch.logits`.
    fn evaluate(&mut self) -> Result<Instant> {
        let start = Instant::now();
        let m = self.m;
        m.w.forward(
            m.kernels,
            m.pool.as_ref(),
            &self.rows,
            &mut self.caches,
            &mut self.scratch,
            &mut self.times,
        );
        let done = Instant::now();
        self.profile.steps += 1;
        self.profile.rows += self.rows.len() as u64;
        self.profile.model += done - start;
        Ok(done)
    }

    fn integers(&mut self, f: impl FnOnce(&mut Tables, &[&[f32]], usize)) -> Result<()> {
        let done = self.evaluate()?;
        let nv = self.m.n_model;
        let rows: Vec<&[f32]> = self.scratch.logits.chunks_exact(nv).collect();
        f(&mut self.tables, &rows, self.m.pieces.len());
        self.profile.freqs += done.elapsed();
        Ok(())
    }
}

impl Evaluator for PortableEval<'_> {
    fn profile(&self) -> EvalProfile {
        EvalProfile {
            matmul: self.times.matmul,
            attention: self.times.attention,
            ..self.profile
        }
    }

    fn width(&self) -> usize {
        self.caches.len()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn chunk(&self) -> usize {
        self.chunk
    }

    fn reset(&mut self, slot: usize) -> Result<()> {
        let c = self
            .caches
            .get_mut(slot)
            .ok_or_else(|| Error::usage(format!("slot {slot} outside the batch")))?;
        match &self.prefix {
            Some(p) => c.copy_from(&self.m.w.cfg, p),
            None => c.clear(),
        }
        if let Some(b) = self.bias.as_mut() {
            match &self.prefix_bias {
                Some(p) => b.slots[slot].copy_from(p),
                None => b.slots[slot].clear(),
            }
            b.pending[slot] = None;
        }
        Ok(())
    }

    fn set_bias(&mut self, rate: u16) -> Result<()> {
        if self.bias.as_ref().map_or(0, |b| b.rate) == rate {
            return Ok(());
        }
        let width = self.caches.len();
        self.bias = (rate != 0).then(|| Biases {
            rate,
            slots: vec![AdaptiveBias::new(rate, self.m.n_model); width],
            pending: vec![None; width],
            fed: Vec::new(),
            weights: Vec::new(),
        });
        // The prefix's bias depends on the rate.
        match self.prefix_inputs.take() {
            Some((inputs, next)) => self.set_prefix(&inputs, next),
            None => Ok(()),
        }
    }

    fn set_prefix(&mut self, inputs: &[Token], next: Token) -> Result<()> {
        self.prefix_inputs = None;
        if inputs.is_empty() {
            self.prefix = None;
            self.prefix_bias = None;
            return Ok(());
        }
        if inputs.len() > self.capacity {
            return Err(Error::ModelEval {
                detail: format!("a primer of {} inputs exceeds the context", inputs.len()),
            });
        }
        if let Some(t) = inputs
            .iter()
            .chain([&next])
            .find(|&&t| t as usize >= self.m.pieces.len())
        {
            return Err(Error::usage(format!(
                "primer token {t} outside the model's vocabulary"
            )));
        }
        let rate = self.bias.as_ref().map_or(0, |b| b.rate);
        let mut shared = self.m.prefix.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = shared.as_ref() {
            if p.inputs == inputs && p.next == next && p.rate == rate {
                self.prefix = Some(p.cache.clone());
                self.prefix_bias = p.bias.clone();
                self.prefix_inputs = Some((inputs.to_vec(), next));
                return Ok(());
            }
        }
        // Evaluated like any sequence (the same operations whatever the step holds,
        // §20.8), 16 inputs per step. Under the adaptive bias each row's table is made and
        // learned from, in order, as a decoder of the whole sequence would (§12.9): the
        // row of input k predicts input k + 1, the last row `next`.
        let mut one = vec![Cache::default()];
        let mut rows = Vec::with_capacity(16);
        let mut bias = (rate != 0).then(|| AdaptiveBias::new(rate, self.m.n_model));
        let mut weights = vec![0u32; if rate != 0 { self.m.pieces.len() } else { 0 }];
        let nv = self.m.n_model;
        for (k, c) in inputs.chunks(16).enumerate() {
            rows.clear();
            rows.extend(c.iter().map(|&t| Row {
                slot: 0,
                token: if t as usize >= self.m.n_model {
                    self.m.escape_input
                } else {
                    t
                },
            }));
            self.m.w.forward(
                self.m.kernels,
                self.m.pool.as_ref(),
                &rows,
                &mut one,
                &mut self.scratch,
                &mut self.times,
            );
            if let Some(b) = bias.as_mut() {
                for (j, logits) in self
                    .scratch
                    .logits
                    .chunks_exact(nv)
                    .take(c.len())
                    .enumerate()
                {
                    let target = inputs.get(k * 16 + j + 1).copied().unwrap_or(next);
                    b.interval(logits, FREQ_BITS as u32, &mut weights, target as usize);
                }
            }
        }
        let cache = Arc::new(one.pop().expect("one cache"));
        let bias = bias.map(Arc::new);
        *shared = Some(SharedPrefix {
            inputs: inputs.to_vec(),
            next,
            rate,
            cache: cache.clone(),
            bias: bias.clone(),
        });
        self.prefix = Some(cache);
        self.prefix_bias = bias;
        self.prefix_inputs = Some((inputs.to_vec(), next));
        Ok(())
    }

    fn step(&mut self, feed: &[(usize, Token)], out: &mut [Vec<u32>]) -> Result<()> {
        if out.len() < feed.len() {
            return Err(Error::usage("room for fewer tables than tokens fed"));
        }
        self.begin();
        for &(slot, tok) in feed {
            self.add(slot, tok)?;
        }
        if self.bias.is_some() {
            return self.biased(Query::Tables(out));
        }
        self.integers(|tables, logits, symbols| tables.fill(logits, symbols, FREQ_BITS as u32, out))
    }

    fn step_find(
        &mut self,
        feed: &[(usize, Token)],
        points: &[u32],
        out: &mut [(Token, u32, u32)],
    ) -> Result<()> {
        check_rows(feed.len(), points.len(), out.len(), "points")?;
        if let Some(c) = points.iter().find(|&&c| c >= 1 << FREQ_BITS) {
            return Err(Error::usage(format!("point {c} outside the table")));
        }
        self.begin();
        for &(slot, tok) in feed {
            self.add(slot, tok)?;
        }
        if self.bias.is_some() {
            return self.biased(Query::Find(points, out));
        }
        self.integers(|tables, logits, symbols| {
            tables.find(logits, symbols, FREQ_BITS as u32, points, out)
        })
    }

    fn step_intervals(
        &mut self,
        feed: &[(usize, &[Token])],
        symbols: &[Token],
        out: &mut [(u32, u32)],
    ) -> Result<()> {
        let rows = feed.iter().map(|(_, t)| t.len()).sum();
        check_rows(rows, symbols.len(), out.len(), "symbols")?;
        if let Some(s) = symbols.iter().find(|&&s| s as usize >= self.m.pieces.len()) {
            return Err(Error::usage(format!(
                "symbol {s} outside the model's vocabulary"
            )));
        }
        self.begin();
        for &(slot, toks) in feed {
            if toks.len() > self.chunk {
                return Err(Error::usage(format!(
                    "{} tokens for one sequence in one step",
                    toks.len()
                )));
            }
            for &t in toks {
                self.add(slot, t)?;
            }
        }
        if self.bias.is_some() {
            return self.biased(Query::Intervals(symbols, out));
        }
        self.integers(|tables, logits, n| {
            tables.intervals(logits, n, FREQ_BITS as u32, symbols, out)
        })
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::model::fetch;

    pub fn default_model() -> Option<ModelFile> {
        let dir = fetch::cache_dir()?;
        let path = dir.join(fetch::DEFAULT_MODEL.file_name);
        if !path.exists() {
            // CI fetches the model before the tests: there a missing model is a failure.
            assert!(
                std::env::var_os("CI").is_none(),
                "default model not cached under CI"
            );
            eprintln!("default model not cached: skipped");
            return None;
        }
        let (sha256, size) = fetch::hash_file(&path).ok()?;
        Some(ModelFile {
            path,
            sha256,
            size,
            name: fetch::DEFAULT_MODEL.name.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::default_model;
    use super::*;

    /// The default model's golden tables (FORMAT.md §20.10) under every kernel set, thread
    /// count and schedule: three short English sequences, about 250 tokens in all.
    #[test]
    fn default_model_reproduces_its_vectors() {
        let Some(file) = default_model() else { return };
        let texts: [&[u8]; 3] = [
            b"The quick brown fox jumps over the lazy dog. Portable archives decode the same on every machine, \
              because every operation of the model is written down and exact.",
            b"fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{v:?}\");\n}\n",
            b"<html><head><title>lmz</title></head><body><p>Language modeling is compression: 1.2 bits per byte.</p></body></html>",
        ];
        vectors::check(
            &file,
            "smollm2-135m-q4_1.txt",
            &texts,
            "lmz transformer v1 golden tables: SmolLM2-135M-Instruct Q4_1 (the default model).\n\
             Per line: SHA-256 of the frequency tables after bos, t0 .. t(n-2), then t0 .. t(n-1).",
        );
    }

    /// `--engine auto` asks this: yes for the models kind 3 defines, a reason for others,
    /// an error for a file that is not a GGUF.
    #[test]
    fn supports_says_which_models_kind_3_covers() {
        use crate::model::gguf_write::{string, GgufWriter};
        let dir = std::env::temp_dir().join(format!("lmz-supports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(crate::model::synthetic::COMMITTED_PATH);
        let file = |path: &std::path::Path| vectors::model_file(path, "test");
        assert_eq!(PortableLm::supports(&file(&tiny)).unwrap(), Support::Yes);
        let write = |name: &str, arch: &str, tok: &str, ty: u32, len: usize| {
            let mut w = GgufWriter::new();
            w.kv("general.architecture", string(arch))
                .kv("tokenizer.ggml.model", string(tok))
                .tensor("token_embd.weight", &[256, 2], ty, vec![0; len]);
            let p = dir.join(name);
            std::fs::write(&p, w.finish()).unwrap();
            file(&p)
        };
        let no = |f: &ModelFile| match PortableLm::supports(f).unwrap() {
            Support::No(why) => why,
            Support::Yes => panic!("{} supported", f.path.display()),
        };
        // Q8_0: 34 bytes per 32 weights; Q4_K (ggml type 12): 144 bytes per 256.
        let q8 = 2 * 8 * 34;
        assert!(no(&write("gemma.gguf", "gemma3", "gpt2", 8, q8)).contains("gemma3"));
        assert!(no(&write("spm.gguf", "llama", "llama", 8, q8)).contains("\"llama\""));
        assert!(no(&write("q4k.gguf", "llama", "gpt2", 12, 2 * 144)).contains("Q4_K"));
        let junk = dir.join("junk.gguf");
        std::fs::write(&junk, b"not a gguf at all").unwrap();
        assert!(PortableLm::supports(&file(&junk)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The tiny committed model's golden tables (FORMAT.md §20.10): every weight type, a
    /// separate output matrix, grouped-query attention, a vocabulary that is no multiple of
    /// 16; sequences long enough (up to 300 tokens) that attention spans many key groups.
    #[test]
    fn tiny_model_reproduces_its_vectors() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(crate::model::synthetic::COMMITTED_PATH);
        let file = vectors::model_file(&path, "tiny-llama");
        let long: Vec<u8> =
            b"Alice was beginning to get very tired of sitting by her sister on the bank. "
                .repeat(12);
        let texts: [&[u8]; 4] = [
            b"The quick brown fox jumps over the lazy dog.",
            b"fn main() {\n    println!(\"{}\", 6 * 7);\n}\n<tiny> 2024-12-02",
            &long,
            b"\x00\x01\xff\xfe bytes, then \xc3\xa9t\xc3\xa9 and \xe2\x82\xac.",
        ];
        vectors::check(
            &file,
            "tiny-llama.txt",
            &texts,
            "lmz transformer v1 golden tables: format-spec/vectors/model/tiny-llama.gguf.\n\
             Per line: SHA-256 of the frequency tables after bos, t0 .. t(n-2), then t0 .. t(n-1).",
        );
    }

    /// Under the adaptive bias (FORMAT.md §12.9) the three ways of reading a step agree, as
    /// they must for a decoder to follow an encoder: full tables one token per step (the
    /// update waiting for the next input), an encoder's intervals in 16-token steps, a
    /// decoder's search in lockstep with another sequence; a reset starts from zero; and
    /// the bias changes the tables at all.
    #[test]
    fn adaptive_bias_paths_agree() {
        let m = crate::model::synthetic::load_committed(std::path::Path::new(env!(
            "CARGO_MANIFEST_DIR"
        )))
        .unwrap();
        let text = crate::model::synthetic::TRAINING_TEXT.as_bytes();
        let toks = m.tokenize(&text[..600]).unwrap();
        let n = toks.len();
        let input: Vec<Token> = std::iter::once(m.pin.bos)
            .chain(toks[..n - 1].iter().copied())
            .collect();
        let rate = 24_576;
        // Full tables, one token per step.
        let mut e = m.evaluator(1, n, 1).unwrap();
        e.set_bias(rate).unwrap();
        let mut want = Vec::with_capacity(n);
        let mut table = vec![Vec::new()];
        for (j, &t) in input.iter().enumerate() {
            e.step(&[(0, t)], &mut table).unwrap();
            let s = toks[j] as usize;
            want.push((table[0][s], table[0][s + 1] - table[0][s]));
        }
        // The unbiased tables differ.
        let mut plain = m.evaluator(1, n, 1).unwrap();
        let mut differ = 0;
        for (j, &t) in input.iter().enumerate() {
            plain.step(&[(0, t)], &mut table).unwrap();
            let s = toks[j] as usize;
            differ += usize::from((table[0][s], table[0][s + 1] - table[0][s]) != want[j]);
        }
        assert!(differ > n / 2, "{differ} of {n}");
        // Intervals in 16-token steps, twice (a reset clears the bias).
        let mut e = m.evaluator(2, n, 16).unwrap();
        e.set_bias(rate).unwrap();
        for _ in 0..2 {
            e.reset(1).unwrap();
            let mut got = vec![(0, 0); n];
            for (k, c) in input.chunks(16).enumerate() {
                let at = k * 16;
                e.step_intervals(
                    &[(1, c)],
                    &toks[at..at + c.len()],
                    &mut got[at..at + c.len()],
                )
                .unwrap();
            }
            assert_eq!(got, want);
        }
        // A decoder's search, slot 1 of 2, beside another sequence that starts later.
        let mut e = m.evaluator(2, n, 1).unwrap();
        e.set_bias(rate).unwrap();
        let mut out = vec![(0, 0, 0); 2];
        for (j, &t) in input.iter().enumerate() {
            let (lo, f) = want[j];
            let mut feed = vec![(1, t)];
            let mut points = vec![lo + f / 2];
            if j >= 5 {
                feed.push((0, input[j - 5]));
                points.push(want[j - 5].0);
            }
            e.step_find(&feed, &points, &mut out).unwrap();
            assert_eq!(out[0], (toks[j], lo, f), "token {j}");
            if j >= 5 {
                assert_eq!(out[1], (toks[j - 5], want[j - 5].0, want[j - 5].1));
            }
        }
    }

    /// An archive primer's state, computed once and copied into each slot (FORMAT.md §12.8),
    /// gives exactly the distributions of one sequence fed `bos`, the primer and the block
    /// one token per step (the reference evaluation), whichever slot, width or chunking; and
    /// evaluators made later reuse the cached state (same results).
    #[test]
    fn primer_prefix_equals_one_long_sequence() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(crate::model::synthetic::COMMITTED_PATH);
        let file = vectors::model_file(&path, "tiny-llama");
        let m = PortableLm::load(&file, 512, PortableOptions::default()).unwrap();
        let primer = m
            .tokenize(
                b"Alice was beginning to get very tired of sitting by her sister. "
                    .repeat(3)
                    .as_slice(),
            )
            .unwrap();
        let block = m
            .tokenize(b"So she was considering in her own mind, as well as she could.")
            .unwrap();
        let p = primer.len();
        // Without and with the adaptive bias (§12.9), which continues from the primer too.
        for rate in [0, 24_576] {
            // Reference: one sequence, one input per step.
            let inputs: Vec<Token> = std::iter::once(m.pin.bos)
                .chain(primer.iter().copied())
                .chain(block[..block.len() - 1].iter().copied())
                .collect();
            let mut e = m.evaluator(1, inputs.len(), 1).unwrap();
            e.set_bias(rate).unwrap();
            let mut want = Vec::new();
            for (k, &t) in inputs.iter().enumerate() {
                let mut one = [(0, 0)];
                let sym = if k < p { primer[k] } else { block[k - p] };
                e.step_intervals(&[(0, &[t][..])], &[sym], &mut one)
                    .unwrap();
                if k >= p {
                    want.push(one[0]);
                }
            }
            let prefix: Vec<Token> = std::iter::once(m.pin.bos)
                .chain(primer[..p - 1].iter().copied())
                .collect();
            let first = primer[p - 1];
            let block_inputs: Vec<Token> = std::iter::once(first)
                .chain(block[..block.len() - 1].iter().copied())
                .collect();
            for (width, chunk) in [(1, 1), (3, 16), (2, 5)] {
                let mut e = m
                    .evaluator(width, prefix.len() + block.len(), chunk)
                    .unwrap();
                // The rate set before the prefix, or after it (the prefix's bias is redone).
                if width == 2 {
                    e.set_prefix(&prefix, first).unwrap();
                    e.set_bias(rate).unwrap();
                } else {
                    e.set_bias(rate).unwrap();
                    e.set_prefix(&prefix, first).unwrap();
                }
                let slot = width - 1;
                // A slot used for something else first, then reset: the copy replaces it.
                e.step_intervals(&[(slot, &[5][..])], &[7], &mut [(0, 0)])
                    .unwrap();
                e.reset(slot).unwrap();
                let mut got = vec![(0, 0); block.len()];
                for (i, c) in block_inputs.chunks(chunk).enumerate() {
                    let at = i * chunk;
                    e.step_intervals(
                        &[(slot, c)],
                        &block[at..at + c.len()],
                        &mut got[at..at + c.len()],
                    )
                    .unwrap();
                }
                assert_eq!(got, want, "rate {rate}, width {width}, chunk {chunk}");
            }
        }
    }

    /// Bits per byte of the default model on the start of alice29.txt, one token per step and
    /// in 16-token chunks: a smoke test of the whole forward pass (a wrong operation shows as
    /// many bits per byte) and of chunk exactness. `cargo test --release -p lmz portable::tests::alice -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn alice_bits_per_byte() {
        let Some(file) = default_model() else { return };
        let m = PortableLm::load(&file, 8192, PortableOptions::default()).unwrap();
        let text = std::fs::read("/work/shared/corpus/alice29.txt").unwrap();
        let text = &text[..1500];
        let toks = m.tokenize(text).unwrap();
        let n = toks.len();
        let mut e = m.evaluator(1, n, 16).unwrap();
        let input: Vec<Token> = std::iter::once(m.pin.bos)
            .chain(toks[..n - 1].iter().copied())
            .collect();
        let start = Instant::now();
        let mut out = vec![(0u32, 0u32); n];
        for (k, c) in input.chunks(16).enumerate() {
            e.step_intervals(
                &[(0, c)],
                &toks[k * 16..k * 16 + c.len()],
                &mut out[k * 16..k * 16 + c.len()],
            )
            .unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let bits: f64 = out.iter().map(|&(_, f)| 24.0 - (f as f64).log2()).sum();
        let p = e.profile();
        eprintln!(
            "{n} tokens, {:.3} bits/byte, {:.1} tokens/s (chunked); model {:?} (matmul {:?}, attention {:?}), tables {:?}",
            bits / text.len() as f64,
            n as f64 / secs,
            p.model, p.matmul, p.attention, p.freqs
        );
        let mut e1 = m.evaluator(1, n, 1).unwrap();
        let start = Instant::now();
        let mut one = vec![(0u32, 0u32); 1];
        for (j, &t) in input.iter().enumerate().take(64) {
            e1.step_intervals(&[(0, &[t][..])], &toks[j..j + 1], &mut one)
                .unwrap();
            assert_eq!(one[0], out[j], "token {j}: chunked vs one at a time");
        }
        eprintln!(
            "one token per step: {:.1} tokens/s",
            64.0 / start.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod debug_logits {
    use super::*;

    #[test]
    #[ignore]
    fn print_logits() {
        let Some(file) = super::tests_support::default_model() else {
            return;
        };
        let m = PortableLm::load(&file, 8192, PortableOptions::default()).unwrap();
        let mut e = m.new_eval(1, 16, 1);
        for t in [1u32, 504, 2823] {
            e.rows.clear();
            e.rows.push(Row { slot: 0, token: t });
            e.evaluate().unwrap();
            let lg = &e.scratch.logits[..m.n_model];
            let mut idx: Vec<usize> = (0..lg.len()).collect();
            idx.sort_by(|&a, &b| lg[b].total_cmp(&lg[a]));
            eprintln!("{t} top {:?} first {:?}", &idx[..5], &lg[..4]);
        }
    }
}
