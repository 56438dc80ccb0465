//! A GGUF model evaluated by llama.cpp (through `llama-cpp-2`). The only module that imports
//! llama.cpp.
//!
//! Determinism: archives must decode on another run, another thread count and another batch
//! width exactly as they were encoded. Measured (../shared/llama-facts.md and our tests) this
//! holds with llama.cpp built with `GGML_LLAMAFILE=OFF` (pinned in `.cargo/config.toml`),
//! flash attention off and a non-unified KV cache, for Q4_0/Q4_1/Q8_0 weights. Those settings
//! are forced here and recorded in the header's model pin. The evaluation schedule is one
//! token per sequence per `llama_decode` for decoders, and up to 16 for encoders where a probe
//! at load shows that exact; all sequences of a step go in one batch, and the step's rows of
//! logits become integers on [`Tables`]' worker pool.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::fetch::ModelFile;
use super::tables::Tables;
use super::{check_rows, EvalProfile, Evaluator, Model, Token};
use crate::error::{Error, Result};
use crate::format::{Header, ModelKind, ModelPin, Tokenizer, FREQ_BITS};

/// The vendored llama.cpp, by the version of the crate that builds it (kept true by a test
/// against Cargo.lock).
pub const ENGINE_VERSION: &str = "llama-cpp-sys-2 0.1.161";

/// Where the model is evaluated, for the header's diagnostic `backend` string: `cpu`, or the
/// GPU backend and device llama.cpp offloads to. Decided at run time: a `cuda` build on a
/// machine without a GPU (or without its driver) evaluates on the CPU, and its archives are
/// CPU archives.
fn backend_in_use() -> String {
    use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};
    if !cfg!(any(feature = "cuda", feature = "metal")) {
        return "cpu".into();
    }
    list_llama_ggml_backend_devices()
        .into_iter()
        .find(|d| {
            matches!(
                d.device_type,
                LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu
            )
        })
        .map_or_else(
            || "cpu".into(),
            |d| format!("{}: {}", d.backend.to_lowercase(), d.description),
        )
}

/// Most sequences one llama.cpp context holds (`LLAMA_MAX_SEQ`, llama-cparams.h): a context
/// asked for more is not created.
const MAX_SEQS: usize = 256;

/// Sequences in the lockstep probe: batches of 1 to this many rows are checked.
const PROBE_SEQS: usize = 10;

/// What the determinism probes evaluate: ordinary English, so the distributions are those of
/// real use.
const PROBE_TEXT: &[u8] =
    b"It was the best of times, it was the worst of times, it was the age of \
    wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of \
    incredulity, it was the season of Light, it was the season of Darkness.\n";

/// A checksum of a frequency table, for comparing tables without keeping them.
fn table_sum(cum: &[u32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for c in cum {
        h.update(&c.to_le_bytes());
    }
    h.finalize()
}

/// `probe`'s verdict for `width`, run once per width and remembered in `cache`; `no` is what
/// a "not exact" verdict means, logged. A probe that cannot run counts as not exact, which
/// only costs speed.
fn probed(
    cache: &std::sync::Mutex<Vec<(usize, bool)>>,
    width: usize,
    probe: impl FnOnce() -> Result<bool>,
    no: &str,
) -> bool {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, exact)) = cache.iter().find(|&&(w, _)| w == width) {
        return exact;
    }
    let exact = match probe() {
        Ok(true) => true,
        Ok(false) => {
            log::info!("{no}");
            false
        }
        Err(e) => {
            log::warn!("could not run a determinism probe ({e}): {no}");
            false
        }
    };
    cache.push((width, exact));
    exact
}

/// llama.cpp's backend may be initialised once per process.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("LMZ_LLAMA_LOG").is_none() {
                b.void_logs();
            }
            Ok(b)
        })
        .as_ref()
        .map_err(|e| Error::ModelUnavailable {
            detail: format!("llama.cpp backend: {e}"),
        })
}

/// Settings of a llama evaluation that do not change probabilities.
#[derive(Clone, Copy, Debug)]
pub struct LlamaOptions {
    /// Inference threads; clamped to the machine's cores (oversubscription is ruinous).
    pub threads: usize,
    /// Threads turning a step's logits into frequency tables (clamped likewise). `None`: one
    /// where the model runs on the CPU (its own threads hold every core), every core where it
    /// runs on a GPU (the tables are then the bound). See [`Tables`].
    pub table_threads: Option<usize>,
}

impl Default for LlamaOptions {
    fn default() -> Self {
        LlamaOptions {
            threads: available_cores(),
            table_threads: None,
        }
    }
}

pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub struct LlamaLm {
    model: LlamaModel,
    pin: ModelPin,
    name: String,
    pieces: Vec<Vec<u8>>,
    /// The token whose piece is exactly byte `b`, for bytes the tokenizer cannot take as text.
    byte_token: [Option<Token>; 256],
    /// Tokens of the model proper; symbols above are escapes.
    n_model: usize,
    escape_input: Token,
    threads: usize,
    /// Threads per evaluator for frequency tables ([`LlamaOptions::table_threads`]).
    table_threads: usize,
    /// [`backend_in_use`], as recorded in headers.
    backend: String,
    /// Results of [`LlamaLm::probe_chunks`] by width.
    chunks_exact: std::sync::Mutex<Vec<(usize, bool)>>,
    /// Result of [`LlamaLm::probe_lockstep`], run on first need.
    lockstep_exact: OnceLock<bool>,
    /// Results of [`LlamaLm::probe_wide`] by width.
    wide_exact: std::sync::Mutex<Vec<(usize, bool)>>,
    /// Checksums of the frequency tables of [`PROBE_TEXT`] evaluated alone, one token per
    /// step: the reference both probes compare against.
    reference: OnceLock<Result<Vec<u32>>>,
}

impl LlamaLm {
    /// Loads a verified model file. `max_block_tokens` bounds a model-coded block.
    pub fn load(file: &ModelFile, max_block_tokens: u32, opts: LlamaOptions) -> Result<LlamaLm> {
        let backend = backend()?;
        let params = LlamaModelParams::default();
        #[cfg(any(feature = "cuda", feature = "metal"))]
        let params = params.with_n_gpu_layers(999);
        let model = LlamaModel::load_from_file(backend, &file.path, &params).map_err(|e| {
            Error::ModelUnavailable {
                detail: format!(
                    "{}: llama.cpp cannot load it as a GGUF model: {e}",
                    file.path.display()
                ),
            }
        })?;
        let vocab = model.vocab();
        let n = vocab.n_tokens();
        if n < 2 {
            return Err(Error::ModelUnavailable {
                detail: format!("{}: empty vocabulary", file.path.display()),
            });
        }
        let mut pieces: Vec<Vec<u8>> = (0..n)
            .map(|t| vocab.token_to_piece(LlamaToken(t), false, None))
            .collect();
        // Symbols n..n+256 are raw-byte escapes (FORMAT.md, "Tokenizers"): some vocabularies
        // (SmolLM2's among them) have no token for some bytes.
        pieces.extend((0..=255u8).map(|b| vec![b]));
        let mut byte_token = [None; 256];
        // Lowest id wins, so the table does not depend on iteration order; escapes last.
        for (t, p) in pieces.iter().enumerate().rev() {
            if p.len() == 1 {
                byte_token[p[0] as usize] = Some(t as Token);
            }
        }
        // What the model is fed in place of an escape: the token for '?'.
        let escape_input = byte_token[b'?' as usize]
            .filter(|&t| (t as i32) < n)
            .unwrap_or(0);
        let bos = vocab.bos().0;
        let bos = if bos >= 0 && bos < n { bos as u32 } else { 0 };
        let pin = ModelPin {
            kind: ModelKind::Llama,
            sha256: file.sha256,
            size: file.size,
            vocab_size: n as u32 + 256,
            freq_bits: FREQ_BITS,
            tokenizer: Tokenizer::LlamaPieces,
            context_policy: 1,
            bos,
            max_block_tokens,
            schedule: 1,
            flash_attn: 0,
            kv_unified: 0,
            kv_type: 1,
        };
        let threads = opts.threads.clamp(1, available_cores());
        let backend = backend_in_use();
        let table_threads = opts
            .table_threads
            .unwrap_or(if backend == "cpu" {
                1
            } else {
                available_cores()
            })
            .clamp(1, available_cores());
        Ok(LlamaLm {
            model,
            pin,
            name: file.name.clone(),
            pieces,
            byte_token,
            n_model: n as usize,
            escape_input,
            threads,
            table_threads,
            backend,
            chunks_exact: std::sync::Mutex::new(Vec::new()),
            lockstep_exact: OnceLock::new(),
            wide_exact: std::sync::Mutex::new(Vec::new()),
            reference: OnceLock::new(),
        })
    }

    fn pieces_match(&self, tokens: &[LlamaToken], text: &[u8]) -> bool {
        let mut pos = 0;
        for t in tokens {
            let p = self.piece(t.0 as Token);
            if text.len() < pos + p.len() || &text[pos..pos + p.len()] != p {
                return false;
            }
            pos += p.len();
        }
        pos == text.len()
    }

    fn bytes_as_tokens(&self, bytes: &[u8], out: &mut Vec<Token>) -> Option<()> {
        for &b in bytes {
            out.push(self.byte_token[b as usize]?);
        }
        Some(())
    }

    /// Tokenizes valid UTF-8 text; where llama.cpp's tokens do not give back the exact bytes,
    /// retries line by line, and codes lines that still differ as byte tokens.
    fn tokenize_text(&self, text: &[u8], out: &mut Vec<Token>) -> Option<()> {
        if text.is_empty() {
            return Some(());
        }
        let vocab = self.model.vocab();
        let toks = vocab.tokenize(text, false, false);
        if self.pieces_match(&toks, text) {
            out.extend(toks.iter().map(|t| t.0 as Token));
            return Some(());
        }
        for line in text.split_inclusive(|&b| b == b'\n') {
            let toks = vocab.tokenize(line, false, false);
            if self.pieces_match(&toks, line) {
                out.extend(toks.iter().map(|t| t.0 as Token));
            } else {
                self.bytes_as_tokens(line, out)?;
            }
        }
        Some(())
    }
}

fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = vec!["x86_64"];
        macro_rules! feat {
            ($($name:tt),*) => {$( if std::arch::is_x86_feature_detected!($name) { f.push($name); } )*};
        }
        feat!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vnni"
        );
        f.join(" ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

impl Model for LlamaLm {
    fn pin(&self) -> ModelPin {
        self.pin.clone()
    }

    fn backend(&self) -> String {
        self.backend.clone()
    }

    fn default_width(&self) -> usize {
        // On two CPU cores lockstep gains flatten out past 8 sequences (README, batch-width
        // table) while KV memory grows with each; a GPU only starts to fill at dozens.
        if self.backend == "cpu" {
            8
        } else {
            64
        }
    }

    fn max_width(&self) -> usize {
        MAX_SEQS
    }

    fn header(&self, block_size: u32) -> Header {
        Header {
            block_size,
            pin: self.pin(),
            model_name: self.name.clone(),
            backend: self.backend.clone(),
            engine_version: ENGINE_VERSION.into(),
            cpu_features: cpu_features(),
            primer: None,
            bias_rate: 0,
            framing: crate::format::Framing::Classic,
        }
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
        // Text runs 2–5 bytes per token; below 1.5 the block is binary-like: the model rarely
        // beats zstd there, and every token costs a model step.
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
        Ok(Box::new(self.new_eval(width, tokens, chunk)?))
    }

    fn lockstep_exact(&self, width: usize) -> bool {
        let width = width.min(MAX_SEQS);
        if width <= 1 {
            return true;
        }
        let small = *self
            .lockstep_exact
            .get_or_init(|| match self.probe_lockstep() {
                Ok(exact) => {
                    if !exact {
                        log::info!("lockstep batches change this model's logits on this build");
                    }
                    exact
                }
                Err(e) => {
                    log::warn!(
                        "could not probe lockstep batches ({e}); coding one block at a time"
                    );
                    false
                }
            });
        if !small || width <= PROBE_SEQS {
            return small;
        }
        // Kernels are chosen by batch size, so one width proves nothing about another.
        let no = format!("batches of {width} sequences change this model's logits on this build; coding one block at a time");
        probed(&self.wide_exact, width, || self.probe_wide(width), &no)
    }

    fn chunks_exact(&self, width: usize) -> bool {
        let width = width.clamp(1, MAX_SEQS);
        let no = format!("multi-token steps ({width} × 16 tokens) are not bit-exact with this model and build; encoding one token per step");
        probed(&self.chunks_exact, width, || self.probe_chunks(width), &no)
    }

    fn raw_tokens_per_second(&self, lengths: &[usize], chunk: usize) -> Result<Option<f64>> {
        let chunk = chunk.max(1);
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let mut e = self.new_eval(lengths.len(), longest, chunk)?;
        let longest = longest.min(e.capacity);
        let start = std::time::Instant::now();
        let mut fed = 0;
        for k in (0..longest).step_by(chunk) {
            e.batch.clear();
            for (slot, &len) in lengths.iter().enumerate() {
                for p in k..(k + chunk).min(len.min(longest)) {
                    // Any valid tokens will do: the cost of a step does not depend on them.
                    let tok = if p == 0 {
                        self.pin.bos
                    } else {
                        ((p * 7919 + slot * 104_729) % self.n_model) as u32
                    };
                    e.batch
                        .add(LlamaToken(tok as i32), p as i32, &[slot as i32], true)
                        .map_err(|err| Error::ModelEval {
                            detail: err.to_string(),
                        })?;
                }
            }
            e.ctx.decode(&mut e.batch).map_err(|err| Error::ModelEval {
                detail: err.to_string(),
            })?;
            // Reading one logit per row waits for the results, as coding would.
            for i in 0..e.batch.n_tokens() {
                std::hint::black_box(e.ctx.get_logits_ith(i)[0]);
            }
            fed += e.batch.n_tokens() as usize;
        }
        Ok(Some(fed as f64 / start.elapsed().as_secs_f64()))
    }
}

impl LlamaLm {
    /// The probe's input: BOS and the first 48 tokens of [`PROBE_TEXT`].
    fn probe_tokens(&self) -> Vec<Token> {
        let mut toks = vec![self.pin.bos];
        toks.extend(self.tokenize(PROBE_TEXT).unwrap_or_default());
        toks.truncate(48);
        toks
    }

    /// See [`LlamaLm::reference`].
    fn reference(&self) -> Result<&[u32]> {
        let r = self.reference.get_or_init(|| {
            let toks = self.probe_tokens();
            let mut e = self.new_eval(1, toks.len(), 1)?;
            let mut row = vec![Vec::new()];
            let mut sums = Vec::with_capacity(toks.len());
            for &t in &toks {
                e.step(&[(0, t)], &mut row)?;
                sums.push(table_sum(&row[0]));
            }
            Ok(sums)
        });
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(Error::ModelEval {
                detail: e.to_string(),
            }),
        }
    }

    /// Whether sequences evaluated in lockstep batches see exactly the distributions of one
    /// sequence alone: ten sequences of 16 tokens, started one step apart (so at different
    /// positions, in batches of every size from 1 to 10 rows), against the reference.
    /// Kernels tile rows in fours and eights (ggml's repacked Q4_K kernels take batches of
    /// four or more rows another way: measured, a Q4_K_M model passes with three rows and
    /// fails with eight), so the sizes must reach past both. Measured true for
    /// Q4_0/Q4_1/Q8_0 weights on CPU (../shared/llama-facts.md).
    fn probe_lockstep(&self) -> Result<bool> {
        const SEQS: usize = PROBE_SEQS;
        const LEN: usize = 16;
        let reference = self.reference()?;
        let toks = self.probe_tokens();
        let n = LEN.min(toks.len());
        let mut e = self.new_eval(SEQS, n, 1)?;
        let mut rows = vec![Vec::new(); SEQS];
        let mut feed = Vec::with_capacity(SEQS);
        for step in 0..SEQS - 1 + n {
            feed.clear();
            for slot in 0..SEQS {
                if (slot..slot + n).contains(&step) {
                    feed.push((slot, toks[step - slot]));
                }
            }
            e.step(&feed, &mut rows[..feed.len()])?;
            for (i, &(slot, _)) in feed.iter().enumerate() {
                if table_sum(&rows[i]) != reference[step - slot] {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// For widths past [`probe_lockstep`](Self::probe_lockstep)'s ten rows: `width`
    /// sequences of four tokens, all in every step, against the reference. GPU backends in
    /// particular choose kernels by batch size (vector kernels for a few rows, tiled ones
    /// above), so the widths in use are checked, not just the small ones. Batch sizes in
    /// between are left to the block CRCs.
    fn probe_wide(&self, width: usize) -> Result<bool> {
        let reference = self.reference()?;
        let toks = self.probe_tokens();
        let n = 4.min(toks.len());
        let mut e = self.new_eval(width, n, 1)?;
        let mut rows = vec![Vec::new(); width];
        let mut feed = Vec::with_capacity(width);
        for (k, &t) in toks[..n].iter().enumerate() {
            feed.clear();
            feed.extend((0..width).map(|slot| (slot, t)));
            e.step(&feed, &mut rows)?;
            if rows.iter().any(|r| table_sum(r) != reference[k]) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether feeding 16 tokens per step (the encoder's chunk), `width` sequences at once,
    /// gives exactly the frequency tables of one token per step, for this model file, build
    /// and machine: the encoder's own step shape, since a backend may choose its kernels (and
    /// their order of summation) by the number of rows. The encoder relies on it only after
    /// this check; the block CRC catches anything it could miss.
    fn probe_chunks(&self, width: usize) -> Result<bool> {
        let reference = self.reference()?;
        let toks = self.probe_tokens();
        let chunk = 16;
        let mut e = self.new_eval(width, toks.len(), chunk)?;
        let mut k = 0;
        for piece in toks.chunks(chunk) {
            let feed: Vec<(usize, &[Token])> = (0..width).map(|slot| (slot, piece)).collect();
            let sums = e.step_chunk_sums(&feed)?;
            if sums
                .iter()
                .enumerate()
                .any(|(j, &sum)| sum != reference[k + j % piece.len()])
            {
                return Ok(false);
            }
            k += piece.len();
        }
        Ok(true)
    }

    fn new_eval(&self, width: usize, tokens: usize, chunk: usize) -> Result<LlamaEval<'_>> {
        let width = width.max(1);
        let chunk = chunk.max(1);
        // Each sequence gets its own cells (non-unified KV), enough for `tokens` plus the BOS,
        // rounded up to llama.cpp's padding.
        let tokens = tokens.clamp(1, self.pin.max_block_tokens as usize) as u32;
        let per_seq = (tokens + 1).div_ceil(256) * 256;
        let n_ctx = per_seq
            .checked_mul(width as u32)
            .ok_or_else(|| Error::usage("batch width × block tokens too large"))?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch((width * chunk) as u32)
            .with_n_ubatch((width * chunk) as u32)
            .with_n_seq_max(width as u32)
            .with_n_threads(self.threads as i32)
            .with_n_threads_batch(self.threads as i32)
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
            .with_kv_unified(false)
            .with_type_k(KvCacheType::F16)
            .with_type_v(KvCacheType::F16)
            .with_no_perf(true);
        let ctx = self
            .model
            .new_context(backend()?, params)
            .map_err(|e| Error::ModelEval {
                detail: format!("creating a llama.cpp context: {e}"),
            })?;
        Ok(LlamaEval {
            ctx,
            batch: LlamaBatch::new(width * chunk, width as i32),
            chunk,
            pos: vec![0; width],
            limit: per_seq as i32,
            capacity: tokens as usize,
            tables: Tables::new(self.table_threads),
            symbols: self.pieces.len(),
            n_model: self.n_model as Token,
            escape_input: self.escape_input,
            profile: EvalProfile::default(),
        })
    }
}

struct LlamaEval<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    pos: Vec<i32>,
    limit: i32,
    capacity: usize,
    chunk: usize,
    /// Turns each step's logits into frequency tables.
    tables: Tables,
    /// Symbols per frequency table (model tokens and raw-byte escapes).
    symbols: usize,
    n_model: Token,
    escape_input: Token,
    profile: EvalProfile,
}

impl LlamaEval<'_> {
    /// Appends `tok` at the next position of `slot` to the batch, logits requested. An escape
    /// symbol is fed as the escape input token (FORMAT.md §12.6).
    fn add(&mut self, slot: usize, tok: Token) -> Result<()> {
        let tok = if tok >= self.n_model {
            self.escape_input
        } else {
            tok
        };
        if self.pos[slot] >= self.limit {
            return Err(Error::ModelEval {
                detail: format!("sequence {slot} exceeds its context"),
            });
        }
        self.batch
            .add(LlamaToken(tok as i32), self.pos[slot], &[slot as i32], true)
            .map_err(|e| Error::ModelEval {
                detail: e.to_string(),
            })?;
        self.pos[slot] += 1;
        Ok(())
    }

    /// Appends one token to each listed slot (`feed[i] = (slot, token)`) to a fresh batch.
    fn batch_tokens(&mut self, feed: &[(usize, Token)]) -> Result<()> {
        self.batch.clear();
        for &(slot, tok) in feed {
            self.add(slot, tok)?;
        }
        Ok(())
    }

    /// Appends each slot's tokens (`feed[i] = (slot, tokens)`, at most `chunk` each) to a
    /// fresh batch.
    fn batch_chunks(&mut self, feed: &[(usize, &[Token])]) -> Result<()> {
        self.batch.clear();
        for &(slot, toks) in feed {
            if toks.len() > self.chunk {
                return Err(Error::ModelEval {
                    detail: format!("{} tokens for one sequence in one step", toks.len()),
                });
            }
            for &tok in toks {
                self.add(slot, tok)?;
            }
        }
        Ok(())
    }

    /// Evaluates the batch; returns when its logits were ready.
    fn decode(&mut self) -> Result<std::time::Instant> {
        let start = std::time::Instant::now();
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| Error::ModelEval {
                detail: e.to_string(),
            })?;
        let rows = self.batch.n_tokens() as usize;
        // Reading a row waits for an asynchronous backend (a GPU) to finish the step, so the
        // model's time ends here.
        if rows > 0 {
            std::hint::black_box(self.ctx.get_logits_ith(0).first());
        }
        let evaluated = std::time::Instant::now();
        self.profile.steps += 1;
        self.profile.rows += rows as u64;
        self.profile.model += evaluated - start;
        Ok(evaluated)
    }

    /// Evaluates the batch and turns each of its rows of logits, in batch order, into a
    /// cumulative frequency table in `out`.
    fn decode_tables(&mut self, out: &mut [Vec<u32>]) -> Result<()> {
        let rows = self.batch.n_tokens() as usize;
        if out.len() < rows {
            return Err(Error::ModelEval {
                detail: format!("{rows} rows evaluated, room for {} tables", out.len()),
            });
        }
        self.evaluate(|tables, logits, symbols| tables.fill(logits, symbols, FREQ_BITS as u32, out))
    }

    /// Evaluates the batch and hands its rows of logits, in batch order, to `integers`
    /// (with the table pool and the symbol count), counting that time as frequency work.
    fn evaluate(&mut self, integers: impl FnOnce(&mut Tables, &[&[f32]], usize)) -> Result<()> {
        let rows = self.batch.n_tokens() as usize;
        let evaluated = self.decode()?;
        let logits = logits_of(&self.ctx, rows);
        integers(&mut self.tables, &logits, self.symbols);
        self.profile.freqs += evaluated.elapsed();
        Ok(())
    }

    /// Feeds several tokens to each listed slot in one step and returns the checksum of the
    /// table after each of them, in order: all rows of `feed[0]`, then of `feed[1]`, … (the
    /// chunk probe: one table at a time, where a step of `width` × 16 rows would hold
    /// hundreds of megabytes of tables).
    fn step_chunk_sums(&mut self, feed: &[(usize, &[Token])]) -> Result<Vec<u32>> {
        self.batch_chunks(feed)?;
        let mut sums = Vec::new();
        self.evaluate(|tables, logits, symbols| {
            let mut table = [Vec::new()];
            sums = logits
                .iter()
                .map(|row| {
                    tables.fill(
                        std::slice::from_ref(row),
                        symbols,
                        FREQ_BITS as u32,
                        &mut table,
                    );
                    table_sum(&table[0])
                })
                .collect();
        })?;
        Ok(sums)
    }
}

/// The first `rows` rows of logits of the last step, in batch order.
fn logits_of<'c>(ctx: &'c LlamaContext<'_>, rows: usize) -> Vec<&'c [f32]> {
    (0..rows).map(|i| ctx.get_logits_ith(i as i32)).collect()
}

impl Evaluator for LlamaEval<'_> {
    fn profile(&self) -> EvalProfile {
        self.profile
    }

    fn width(&self) -> usize {
        self.pos.len()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn chunk(&self) -> usize {
        self.chunk
    }

    fn reset(&mut self, slot: usize) -> Result<()> {
        self.ctx
            .clear_kv_cache_seq(Some(slot as u32), None, None)
            .map_err(|e| Error::ModelEval {
                detail: format!("clearing sequence {slot}: {e}"),
            })?;
        self.pos[slot] = 0;
        Ok(())
    }

    fn step(&mut self, feed: &[(usize, Token)], out: &mut [Vec<u32>]) -> Result<()> {
        self.batch_tokens(feed)?;
        self.decode_tables(out)
    }

    fn step_find(
        &mut self,
        feed: &[(usize, Token)],
        points: &[u32],
        out: &mut [(Token, u32, u32)],
    ) -> Result<()> {
        let rows = feed.len();
        check_rows(rows, points.len(), out.len(), "points")?;
        if let Some(c) = points.iter().find(|&&c| c >= 1 << FREQ_BITS) {
            return Err(Error::usage(format!("point {c} outside the table")));
        }
        self.batch_tokens(feed)?;
        self.evaluate(|tables, logits, symbols| {
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
        if let Some(s) = symbols.iter().find(|&&s| s as usize >= self.symbols) {
            return Err(Error::usage(format!(
                "symbol {s} outside the model's vocabulary"
            )));
        }
        self.batch_chunks(feed)?;
        self.evaluate(|tables, logits, n| {
            tables.intervals(logits, n, FREQ_BITS as u32, symbols, out)
        })
    }
}

pub fn load(file: &ModelFile, max_block_tokens: u32, threads: usize) -> Result<LlamaLm> {
    LlamaLm::load(
        file,
        max_block_tokens,
        LlamaOptions {
            threads,
            table_threads: None,
        },
    )
}

/// Whether `path` looks like a GGUF file (its magic), before handing it to llama.cpp.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut m = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && &m == b"GGUF"
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_version_matches_lockfile() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
        let v = super::ENGINE_VERSION
            .strip_prefix("llama-cpp-sys-2 ")
            .unwrap();
        assert!(lock.contains(&format!("name = \"llama-cpp-sys-2\"\nversion = \"{v}\"")));
    }
}

#[cfg(test)]
mod prefill_probe {
    //! Measures whether a multi-token batch ("prefill", what an encoder could use) is faster
    //! than lockstep single-token steps on this build, and whether its logits are identical.
    //! Ignored by default: `cargo test --release -p lmz prefill_probe -- --ignored --nocapture`.
    use super::*;

    #[test]
    #[ignore]
    fn prefill_vs_token_by_token() {
        let file = crate::model::fetch::resolve(None, crate::model::fetch::Want::Default).unwrap();
        let m = load(&file, 4096, available_cores()).unwrap();
        let text = std::fs::read("/work/shared/corpus/alice29.txt").unwrap();
        let toks = m.tokenize(&text[..6000]).unwrap();
        let n = 512.min(toks.len());
        let input: Vec<Token> = std::iter::once(m.pin.bos)
            .chain(toks[..n - 1].iter().copied())
            .collect();
        for &(seqs, chunk) in &[(1usize, 512usize), (8, 64), (8, 16)] {
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new((seqs * 1024) as u32))
                .with_n_batch((seqs * chunk) as u32)
                .with_n_ubatch((seqs * chunk) as u32)
                .with_n_seq_max(seqs as u32)
                .with_n_threads(available_cores() as i32)
                .with_n_threads_batch(available_cores() as i32)
                .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
                .with_kv_unified(false);
            let mut ctx = m.model.new_context(backend().unwrap(), params).unwrap();
            let mut batch = LlamaBatch::new(seqs * chunk, seqs as i32);
            let per_seq = n / seqs * seqs / seqs;
            let mut rows: Vec<Vec<f32>> = Vec::new();
            let start = std::time::Instant::now();
            let mut pos = 0;
            while pos < per_seq {
                batch.clear();
                let k = chunk.min(per_seq - pos);
                for s in 0..seqs {
                    for j in 0..k {
                        batch
                            .add(
                                LlamaToken(input[pos + j] as i32),
                                (pos + j) as i32,
                                &[s as i32],
                                true,
                            )
                            .unwrap();
                    }
                }
                ctx.decode(&mut batch).unwrap();
                for j in 0..k {
                    rows.push(ctx.get_logits_ith(j as i32).to_vec());
                }
                pos += k;
            }
            let secs = start.elapsed().as_secs_f64();
            // Token-by-token reference for sequence 0.
            let mut ev = m.new_eval(1, 1024, 1).unwrap();
            let mut same = 0;
            let mut cum = vec![Vec::new()];
            for (j, row) in rows.iter().enumerate().take(per_seq.min(128)) {
                ev.step(&[(0, input[j])], &mut cum).unwrap();
                let r = ev.ctx.get_logits_ith(0);
                if r.iter().zip(row).all(|(a, b)| a.to_bits() == b.to_bits()) {
                    same += 1;
                }
            }
            eprintln!(
                "{seqs} seq × {chunk} tokens per decode: {:.1} tok/s; bit-identical to token-by-token on {same}/{} positions",
                (seqs * per_seq) as f64 / secs,
                per_seq.min(128)
            );
        }
    }
}
