//! The on-disk layout of format version 1, byte for byte: header, entry records, block
//! records, index and footer. Pure functions over byte slices: no I/O and no model here, so
//! the layout can be read, tested and fuzzed on its own. `format-spec/FORMAT.md` is the
//! normative description; every constant and check below is named after it.
//!
//! All integers are little-endian. Every structure carries a CRC32 (crc32fast, the IEEE
//! polynomial) so damage is found where it happens, and every length is checked against a
//! bound before anything is allocated, so a hostile length costs nothing.

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::error::{Error, Result};

pub mod compact;
pub mod compact_entry;
pub mod part;

pub use compact::{Framing, FLAG_ADAPTIVE_BIAS, FLAG_COMPACT_BLOCKS, FLAG_COMPACT_ENTRIES};

pub const VERSION: u16 = 1;
pub const HEADER_MAGIC: [u8; 8] = *b"\x89LMZ\r\n\x1a\n";
pub const ENTRY_MAGIC: [u8; 4] = *b"LMZE";
pub const BLOCK_MAGIC: [u8; 4] = *b"LMZB";
pub const INDEX_MAGIC: [u8; 4] = *b"LMZI";
pub const FOOTER_MAGIC: [u8; 8] = *b"LMZTAIL\n";

/// Fixed part of the header, before the four strings.
pub const HEADER_FIXED_LEN: usize = 80;
pub const HEADER_MAX_LEN: usize = 4096;
pub const BLOCK_HEADER_LEN: usize = 32;
pub const ENTRY_FIXED_LEN: usize = 58;
pub const INDEX_FIXED_LEN: usize = 24;
pub const INDEX_BLOCK_ROW: usize = 16;
pub const FOOTER_LEN: usize = 32;
/// Largest `block_size` a version-1 archive may declare (64 MiB): bounds every allocation.
pub const MAX_BLOCK_SIZE: u32 = 64 << 20;
pub const MAX_PATH_LEN: usize = 4096;
pub const MAX_LINK_LEN: usize = 4096;
/// The only frequency precision of version 1: every coding distribution totals 2^24.
pub const FREQ_BITS: u8 = 24;
/// Context policy 1: every block starts from an empty context.
pub const POLICY_FRESH: u8 = 1;
/// Context policy 2: every block starts from the archive primer's context (FORMAT.md §12.8).
pub const POLICY_PRIMER: u8 = 2;
/// Most tokens an archive primer may hold: it is decoded one model step per token before
/// the first block of a process, so it bounds what a random read pays up front.
pub const MAX_PRIMER_TOKENS: u16 = 1024;

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// What kind of model produced the probabilities of the archive's model-coded blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// No model: the archive holds only stored and zstd blocks.
    None = 0,
    /// The built-in adaptive order-1 byte model (tests, fuzzing, machines without llama.cpp).
    Order1 = 1,
    /// A GGUF model evaluated by llama.cpp: probabilities are whatever the pinned llama.cpp
    /// build computes on the writer's class of machine.
    Llama = 2,
    /// A GGUF Llama-architecture model evaluated by "lmz transformer v1", the arithmetic
    /// FORMAT.md §20 specifies: the same probabilities on every machine.
    Portable = 3,
}

impl ModelKind {
    fn from_u8(v: u8) -> Option<ModelKind> {
        Some(match v {
            0 => ModelKind::None,
            1 => ModelKind::Order1,
            2 => ModelKind::Llama,
            3 => ModelKind::Portable,
            _ => return None,
        })
    }
}

/// How plain bytes become tokens (see FORMAT.md, "Tokenizers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    None = 0,
    /// Token = byte value; vocabulary 256.
    Bytes = 1,
    /// llama.cpp's tokenizer, each token's bytes being `llama_token_to_piece(special = false)`.
    LlamaPieces = 2,
    /// The GGUF vocabulary's own byte strings (FORMAT.md §20.1): byte-level BPE text decoded
    /// to bytes, no llama.cpp involved.
    GgufPieces = 3,
}

impl Tokenizer {
    fn from_u8(v: u8) -> Option<Tokenizer> {
        Some(match v {
            0 => Tokenizer::None,
            1 => Tokenizer::Bytes,
            2 => Tokenizer::LlamaPieces,
            3 => Tokenizer::GgufPieces,
            _ => return None,
        })
    }
}

/// Everything that changes the probabilities a model-coded block was written with. Two pins
/// that compare equal decode each other's blocks; the archive's pin is checked against the
/// model at hand before any block is decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPin {
    pub kind: ModelKind,
    pub sha256: [u8; 32],
    pub size: u64,
    pub vocab_size: u32,
    pub freq_bits: u8,
    pub tokenizer: Tokenizer,
    /// Context policy 1: every block starts a fresh context whose first input is `bos`;
    /// 2: from the context of the archive primer ([`Primer`]). A property of the archive,
    /// not of the model: the pin check leaves it to the header's own rules.
    pub context_policy: u8,
    pub bos: u32,
    /// Most tokens a model-coded block may hold (bounds the context and the decoder's work).
    pub max_block_tokens: u32,
    /// Evaluation schedule 1: one token per sequence per model step (sequences may share a
    /// step), logits of every step read back in full.
    pub schedule: u8,
    /// Kind 2: llama.cpp flash attention (0 = off). Kind 3: the version of the specified
    /// arithmetic ("lmz transformer v1" = 1), the same header byte (37).
    pub flash_attn: u8,
    pub kv_unified: u8,
    /// KV cache element type: 1 = f16.
    pub kv_type: u8,
}

impl ModelPin {
    /// The pin check of FORMAT.md §5: every field that changes probabilities is equal.
    /// `max_block_tokens` is not one of them: it bounds a decoder's work, it is not a
    /// property of the model.
    pub fn matches(&self, other: &ModelPin) -> bool {
        ModelPin {
            max_block_tokens: other.max_block_tokens,
            context_policy: other.context_policy,
            ..*self
        } == *other
    }

    /// The pin of an archive that uses no model.
    pub fn none() -> ModelPin {
        ModelPin {
            kind: ModelKind::None,
            sha256: [0; 32],
            size: 0,
            vocab_size: 0,
            freq_bits: 0,
            tokenizer: Tokenizer::None,
            context_policy: 0,
            bos: 0,
            max_block_tokens: 0,
            schedule: 0,
            flash_attn: 0,
            kv_unified: 0,
            kv_type: 0,
        }
    }

    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The archive header: the model pin plus diagnostics that do not change probabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub block_size: u32,
    pub pin: ModelPin,
    /// Display name of the model (diagnostic).
    pub model_name: String,
    /// Determinism class the archive was written under (diagnostic): backend, llama.cpp
    /// version, CPU features.
    pub backend: String,
    pub engine_version: String,
    pub cpu_features: String,
    /// The archive primer: present exactly when `pin.context_policy` is 2.
    pub primer: Option<Primer>,
    /// How block records and the index's rows are laid out (`flags` bit 1, FORMAT.md §7.1).
    pub framing: Framing,
    /// The adaptive bias's rate (`flags` bit 3, FORMAT.md §12.9), kind 3 only; 0: none.
    pub bias_rate: u16,
}

/// How much of a header string is written: strings are diagnostics, so they are cut rather
/// than fail, at most 255 bytes, at a char boundary.
fn cut_len(s: &str) -> usize {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The archive primer (context policy 2, FORMAT.md §12.8): a token sequence every
/// model-coded block is evaluated after, so that no block starts from an empty context. It
/// is range-coded under the model like a block (from an empty context, `bos` first), so it
/// costs the archive what its text would cost in a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Primer {
    /// Number of tokens, 1 ..= [`MAX_PRIMER_TOKENS`].
    pub tokens: u16,
    /// The range-coded tokens.
    pub coded: Vec<u8>,
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_FIXED_LEN];
        out[..8].copy_from_slice(&HEADER_MAGIC);
        LE::write_u16(&mut out[8..], VERSION);
        let bias = if self.bias_rate != 0 {
            FLAG_ADAPTIVE_BIAS
        } else {
            0
        };
        LE::write_u16(&mut out[10..], self.framing.flags() | bias);
        // header_len at 12 is written last.
        LE::write_u32(&mut out[16..], self.block_size);
        let p = &self.pin;
        out[20] = p.kind as u8;
        out[21] = p.freq_bits;
        out[22] = p.tokenizer as u8;
        out[23] = p.context_policy;
        LE::write_u32(&mut out[24..], p.vocab_size);
        LE::write_u32(&mut out[28..], p.bos);
        LE::write_u32(&mut out[32..], p.max_block_tokens);
        out[36] = p.schedule;
        out[37] = p.flash_attn;
        out[38] = p.kv_unified;
        out[39] = p.kv_type;
        LE::write_u64(&mut out[40..], p.size);
        out[48..80].copy_from_slice(&p.sha256);
        for s in [
            &self.model_name,
            &self.backend,
            &self.engine_version,
            &self.cpu_features,
        ] {
            let end = cut_len(s);
            let mut len = [0u8; 2];
            LE::write_u16(&mut len, end as u16);
            out.extend_from_slice(&len);
            out.extend_from_slice(&s.as_bytes()[..end]);
        }
        if let Some(p) = &self.primer {
            let mut f = [0u8; 4];
            LE::write_u16(&mut f[..], p.tokens);
            LE::write_u16(&mut f[2..], p.coded.len().min(u16::MAX as usize) as u16);
            out.extend_from_slice(&f);
            out.extend_from_slice(&p.coded);
        }
        if self.bias_rate != 0 {
            out.extend_from_slice(&self.bias_rate.to_le_bytes());
        }
        let total = out.len() + 4;
        LE::write_u32(&mut out[12..], total as u32);
        let c = crc(&out);
        out.extend_from_slice(&c.to_le_bytes());
        out
    }

    /// Offset of the primer's coded tokens in the encoded header (meaningful with a primer).
    pub fn primer_offset(&self) -> usize {
        let strings: usize = [
            &self.model_name,
            &self.backend,
            &self.engine_version,
            &self.cpu_features,
        ]
        .iter()
        .map(|s| 2 + cut_len(s))
        .sum();
        HEADER_FIXED_LEN + strings + 4
    }

    /// Length of the header that starts `bytes`, from its fixed part (needs 16 bytes), so a
    /// stream reader knows how much more to read. Checks the magic and version first.
    pub fn peek_len(bytes: &[u8]) -> Result<usize> {
        if bytes.len() < 16 {
            return Err(Error::corrupt(
                bytes.len() as u64,
                "archive shorter than its header",
            ));
        }
        if bytes[..8] != HEADER_MAGIC {
            return Err(Error::corrupt(0, "not an lmz archive (bad header magic)"));
        }
        let version = LE::read_u16(&bytes[8..]);
        if version != VERSION {
            return Err(Error::Unsupported {
                offset: 8,
                detail: format!("format version {version}; this build reads version {VERSION}"),
            });
        }
        let len = LE::read_u32(&bytes[12..]) as usize;
        if !(HEADER_FIXED_LEN + 8 + 4..=HEADER_MAX_LEN).contains(&len) {
            return Err(Error::corrupt(
                12,
                format!("header length {len} out of range"),
            ));
        }
        Ok(len)
    }

    /// Parses the header at the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(Header, usize)> {
        let len = Header::peek_len(bytes)?;
        if bytes.len() < len {
            return Err(Error::corrupt(
                bytes.len() as u64,
                "archive truncated inside its header",
            ));
        }
        let b = &bytes[..len];
        let stored = LE::read_u32(&b[len - 4..]);
        if crc(&b[..len - 4]) != stored {
            return Err(Error::corrupt(len as u64 - 4, "header CRC32 mismatch"));
        }
        let flags = LE::read_u16(&b[10..]);
        let has_bias = flags & FLAG_ADAPTIVE_BIAS != 0;
        let framing =
            Framing::from_flags(flags & !FLAG_ADAPTIVE_BIAS).ok_or_else(|| Error::Unsupported {
                offset: 10,
                detail: format!(
                    "header flags {flags:#06x} (version 1 defines bit 1, compact blocks, bit 2, \
                 compact entries, with bit 1, and bit 3, adaptive bias)"
                ),
            })?;
        let block_size = LE::read_u32(&b[16..]);
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(Error::corrupt(
                16,
                format!("block size {block_size} out of range"),
            ));
        }
        let kind = ModelKind::from_u8(b[20]).ok_or_else(|| Error::Unsupported {
            offset: 20,
            detail: format!("model kind {}", b[20]),
        })?;
        let tokenizer = Tokenizer::from_u8(b[22]).ok_or_else(|| Error::Unsupported {
            offset: 22,
            detail: format!("tokenizer {}", b[22]),
        })?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&b[48..80]);
        let pin = ModelPin {
            kind,
            sha256,
            size: LE::read_u64(&b[40..]),
            vocab_size: LE::read_u32(&b[24..]),
            freq_bits: b[21],
            tokenizer,
            context_policy: b[23],
            bos: LE::read_u32(&b[28..]),
            max_block_tokens: LE::read_u32(&b[32..]),
            schedule: b[36],
            flash_attn: b[37],
            kv_unified: b[38],
            kv_type: b[39],
        };
        validate_pin(&pin)?;
        if has_bias && pin.kind != ModelKind::Portable {
            return Err(Error::Unsupported {
                offset: 10,
                detail: format!(
                    "an adaptive bias (header flag bit 3) under model kind {}",
                    b[20]
                ),
            });
        }
        if pin.kind != ModelKind::None && pin.max_block_tokens > block_size {
            return Err(Error::corrupt(
                32,
                "max_block_tokens exceeds the block size",
            ));
        }
        let mut pos = HEADER_FIXED_LEN;
        let mut strings = Vec::with_capacity(4);
        for _ in 0..4 {
            if pos + 2 > len - 4 {
                return Err(Error::corrupt(
                    pos as u64,
                    "header strings overrun the header",
                ));
            }
            let n = LE::read_u16(&b[pos..]) as usize;
            pos += 2;
            if pos + n > len - 4 {
                return Err(Error::corrupt(
                    pos as u64,
                    "header string overruns the header",
                ));
            }
            let s = std::str::from_utf8(&b[pos..pos + n])
                .map_err(|_| Error::corrupt(pos as u64, "header string is not UTF-8"))?;
            strings.push(s.to_owned());
            pos += n;
        }
        let primer = if pin.context_policy == POLICY_PRIMER {
            if pos + 4 > len - 4 {
                return Err(Error::corrupt(pos as u64, "primer overruns the header"));
            }
            let tokens = LE::read_u16(&b[pos..]);
            let coded_len = LE::read_u16(&b[pos + 2..]) as usize;
            if tokens == 0 || tokens > MAX_PRIMER_TOKENS {
                return Err(Error::corrupt(
                    pos as u64,
                    format!("primer of {tokens} tokens (1 ..= {MAX_PRIMER_TOKENS})"),
                ));
            }
            pos += 4;
            if pos + coded_len > len - 4 {
                return Err(Error::corrupt(pos as u64, "primer overruns the header"));
            }
            let coded = b[pos..pos + coded_len].to_vec();
            pos += coded_len;
            Some(Primer { tokens, coded })
        } else {
            None
        };
        let bias_rate = if has_bias {
            if pos + 2 > len - 4 {
                return Err(Error::corrupt(pos as u64, "bias rate overruns the header"));
            }
            let r = LE::read_u16(&b[pos..]);
            if r == 0 {
                return Err(Error::corrupt(pos as u64, "bias rate 0 (1 ..= 65535)"));
            }
            pos += 2;
            r
        } else {
            0
        };
        if pos != len - 4 {
            return Err(Error::corrupt(
                pos as u64,
                "unexpected bytes after the header strings",
            ));
        }
        let mut it = strings.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let header = Header {
            block_size,
            pin,
            model_name: next(),
            backend: next(),
            engine_version: next(),
            cpu_features: next(),
            primer,
            framing,
            bias_rate,
        };
        Ok((header, len))
    }
}

fn validate_pin(p: &ModelPin) -> Result<()> {
    let bad = |offset: u64, what: &str| Err(Error::corrupt(offset, what.to_owned()));
    match p.kind {
        ModelKind::None => {
            if *p != ModelPin::none() {
                return bad(20, "model fields set in an archive without a model");
            }
        }
        ModelKind::Order1 | ModelKind::Llama | ModelKind::Portable => {
            if p.freq_bits != FREQ_BITS {
                return Err(Error::Unsupported {
                    offset: 21,
                    detail: format!("frequency precision {} bits (version 1: 24)", p.freq_bits),
                });
            }
            if p.vocab_size < 2 || p.vocab_size > 1 << 22 {
                return bad(24, "vocabulary size out of range");
            }
            if p.bos >= p.vocab_size {
                return bad(28, "BOS token outside the vocabulary");
            }
            if p.max_block_tokens == 0 || p.max_block_tokens > MAX_BLOCK_SIZE {
                return bad(32, "max_block_tokens out of range");
            }
            // The primer needs a model whose state can be copied into every sequence: the
            // order-1 model and kind 3; llama.cpp archives (kind 2) keep policy 1.
            let policy_ok = p.context_policy == POLICY_FRESH
                || (p.context_policy == POLICY_PRIMER && p.kind != ModelKind::Llama);
            if !policy_ok || p.schedule != 1 {
                return Err(Error::Unsupported {
                    offset: 23,
                    detail: "context policy or evaluation schedule unknown".into(),
                });
            }
            let want_tok = match p.kind {
                ModelKind::Order1 => Tokenizer::Bytes,
                ModelKind::Portable => Tokenizer::GgufPieces,
                _ => Tokenizer::LlamaPieces,
            };
            if p.tokenizer != want_tok {
                return bad(22, "tokenizer does not belong to the model kind");
            }
            if p.kind == ModelKind::Order1 && p.vocab_size != 256 {
                return bad(24, "order-1 model must have a vocabulary of 256");
            }
        }
    }
    Ok(())
}

/// How a block's payload is coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Stored = 0,
    Zstd = 1,
    /// Range-coded tokens under the model pinned by the header.
    Model = 2,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Codec> {
        Some(match v {
            0 => Codec::Stored,
            1 => Codec::Zstd,
            2 => Codec::Model,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Stored => "stored",
            Codec::Zstd => "zstd",
            Codec::Model => "model",
        }
    }
}

/// The 32-byte header of a block record; `coded_len` payload bytes follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub codec: Codec,
    pub plain_len: u32,
    pub coded_len: u32,
    /// Number of tokens (model blocks only; 0 otherwise).
    pub tokens: u32,
    pub plain_crc: u32,
    pub coded_crc: u32,
}

impl BlockHeader {
    /// The header of a block of `plain` bytes coded by `codec` as `payload` (of `tokens`
    /// tokens for a model block, else 0): lengths and both CRCs.
    pub fn of(codec: Codec, plain: &[u8], tokens: u32, payload: &[u8]) -> BlockHeader {
        BlockHeader {
            codec,
            plain_len: plain.len() as u32,
            coded_len: payload.len() as u32,
            tokens,
            plain_crc: crc(plain),
            coded_crc: crc(payload),
        }
    }

    pub fn encode(&self) -> [u8; BLOCK_HEADER_LEN] {
        let mut b = [0u8; BLOCK_HEADER_LEN];
        b[..4].copy_from_slice(&BLOCK_MAGIC);
        b[4] = self.codec as u8;
        LE::write_u32(&mut b[8..], self.plain_len);
        LE::write_u32(&mut b[12..], self.coded_len);
        LE::write_u32(&mut b[16..], self.tokens);
        LE::write_u32(&mut b[20..], self.plain_crc);
        LE::write_u32(&mut b[24..], self.coded_crc);
        let c = crc(&b[..28]);
        LE::write_u32(&mut b[28..], c);
        b
    }

    /// Parses and checks a block header found at archive offset `offset` in an archive whose
    /// header is `header`.
    pub fn decode(b: &[u8], offset: u64, header: &Header) -> Result<BlockHeader> {
        if b.len() < BLOCK_HEADER_LEN {
            return Err(Error::corrupt(
                offset,
                "archive truncated inside a block header",
            ));
        }
        if b[..4] != BLOCK_MAGIC {
            return Err(Error::corrupt(offset, "bad block magic"));
        }
        if crc(&b[..28]) != LE::read_u32(&b[28..]) {
            return Err(Error::corrupt(offset + 28, "block header CRC32 mismatch"));
        }
        let codec = Codec::from_u8(b[4]).ok_or_else(|| Error::Unsupported {
            offset: offset + 4,
            detail: format!("block codec {}", b[4]),
        })?;
        if b[5] != 0 || b[6] != 0 || b[7] != 0 {
            return Err(Error::Unsupported {
                offset: offset + 5,
                detail: "block flags or reserved bytes set".into(),
            });
        }
        let h = BlockHeader {
            codec,
            plain_len: LE::read_u32(&b[8..]),
            coded_len: LE::read_u32(&b[12..]),
            tokens: LE::read_u32(&b[16..]),
            plain_crc: LE::read_u32(&b[20..]),
            coded_crc: LE::read_u32(&b[24..]),
        };
        h.check_fields([offset + 4, offset + 8, offset + 12, offset + 16], header)?;
        Ok(h)
    }

    /// Length of this block's record in `framing`: its header and its payload.
    pub fn record_len(&self, framing: Framing) -> u32 {
        let head = match framing {
            Framing::Classic => BLOCK_HEADER_LEN,
            Framing::CompactBlocks | Framing::Compact => {
                1 + compact::varint_len(self.plain_len)
                    + compact::varint_len(self.coded_len)
                    + if self.codec == Codec::Model {
                        compact::varint_len(self.tokens)
                    } else {
                        0
                    }
                    + 8
            }
        };
        head as u32 + self.coded_len
    }

    /// The block record's header bytes in `framing`.
    pub fn encode_framed(&self, framing: Framing) -> Vec<u8> {
        match framing {
            Framing::Classic => self.encode().to_vec(),
            Framing::CompactBlocks | Framing::Compact => self.encode_compact(),
        }
    }
}

/// Where an entry record's fields lie (archive offsets), for errors: the classic record's
/// fields are at fixed places, the compact record's where its varints put them.
pub(crate) struct FieldAt {
    pub kind: u64,
    pub mode: u64,
    pub mtime_nsec: u64,
    pub path: u64,
    pub record: u64,
}

/// Entry types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    /// A hard link to an earlier regular-file entry, named by `link`.
    HardLink = 4,
}

impl EntryKind {
    /// The kind byte `k` at archive offset `offset` (§6, §6.1): other values are unsupported.
    pub(crate) fn decode(k: u8, offset: u64) -> Result<EntryKind> {
        match k {
            1 => Ok(EntryKind::File),
            2 => Ok(EntryKind::Dir),
            3 => Ok(EntryKind::Symlink),
            4 => Ok(EntryKind::HardLink),
            k => Err(Error::Unsupported {
                offset,
                detail: format!("entry kind {k}"),
            }),
        }
    }
}

/// One entry record (see FORMAT.md, "Entry record").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// File: bytes of data. Symlink, directory, hard link: 0.
    pub size: u64,
    /// File: offset of its first byte in the archive's data stream; otherwise 0.
    pub data_start: u64,
    /// Relative path, `/`-separated, raw bytes.
    pub path: Vec<u8>,
    /// Symlink target, or the path of the hard link's target entry; empty otherwise.
    pub link: Vec<u8>,
}

impl Entry {
    pub fn encoded_len(&self) -> usize {
        ENTRY_FIXED_LEN + self.path.len() + self.link.len() + 4
    }

    pub fn encode(&self) -> Vec<u8> {
        let total = self.encoded_len();
        let mut b = vec![0u8; ENTRY_FIXED_LEN];
        b[..4].copy_from_slice(&ENTRY_MAGIC);
        LE::write_u32(&mut b[4..], total as u32);
        b[8] = self.kind as u8;
        LE::write_u32(&mut b[12..], self.mode);
        LE::write_u32(&mut b[16..], self.uid);
        LE::write_u32(&mut b[20..], self.gid);
        LE::write_i64(&mut b[24..], self.mtime_sec);
        LE::write_u32(&mut b[32..], self.mtime_nsec);
        LE::write_u64(&mut b[36..], self.size);
        LE::write_u64(&mut b[44..], self.data_start);
        LE::write_u16(&mut b[52..], self.path.len() as u16);
        LE::write_u32(&mut b[54..], self.link.len() as u32);
        b.extend_from_slice(&self.path);
        b.extend_from_slice(&self.link);
        let c = crc(&b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    /// The entry's record in `framing`'s entry encoding (§6, §6.1).
    pub fn encode_framed(&self, framing: Framing) -> Vec<u8> {
        if framing.compact_entries() {
            compact_entry::encode(self)
        } else {
            self.encode()
        }
    }

    /// Bytes [`Entry::peek_len_framed`] needs of a record (fewer where the archive ends
    /// sooner): enough for its magic or tag and its length.
    pub fn peek_bytes(framing: Framing) -> usize {
        if framing.compact_entries() {
            compact_entry::PEEK_LEN
        } else {
            8
        }
    }

    /// [`Entry::peek_len`] for `framing`'s entry encoding.
    pub fn peek_len_framed(b: &[u8], offset: u64, framing: Framing) -> Result<usize> {
        if framing.compact_entries() {
            compact_entry::peek_len(b, offset)
        } else {
            Entry::peek_len(b, offset)
        }
    }

    /// [`Entry::decode`] for `framing`'s entry encoding.
    pub fn decode_framed(b: &[u8], offset: u64, framing: Framing) -> Result<(Entry, usize)> {
        if framing.compact_entries() {
            compact_entry::decode(b, offset)
        } else {
            Entry::decode(b, offset)
        }
    }

    /// Length of the entry record starting `b` (needs 8 bytes), checked against its bounds.
    pub fn peek_len(b: &[u8], offset: u64) -> Result<usize> {
        if b.len() < 8 {
            return Err(Error::corrupt(
                offset,
                "archive truncated inside an entry record",
            ));
        }
        if b[..4] != ENTRY_MAGIC {
            return Err(Error::corrupt(offset, "bad entry magic"));
        }
        let total = LE::read_u32(&b[4..]) as usize;
        if !(ENTRY_FIXED_LEN + 1 + 4..=ENTRY_FIXED_LEN + MAX_PATH_LEN + MAX_LINK_LEN + 4)
            .contains(&total)
        {
            return Err(Error::corrupt(
                offset + 4,
                format!("entry record length {total} out of range"),
            ));
        }
        Ok(total)
    }

    /// Parses one entry record at archive offset `offset`; checks its CRC and its fields.
    pub fn decode(b: &[u8], offset: u64) -> Result<(Entry, usize)> {
        let total = Entry::peek_len(b, offset)?;
        if b.len() < total {
            return Err(Error::corrupt(
                offset,
                "archive truncated inside an entry record",
            ));
        }
        let b = &b[..total];
        if crc(&b[..total - 4]) != LE::read_u32(&b[total - 4..]) {
            return Err(Error::corrupt(offset, "entry record CRC32 mismatch"));
        }
        let kind = EntryKind::decode(b[8], offset + 8)?;
        if b[9] != 0 || b[10] != 0 || b[11] != 0 {
            return Err(Error::Unsupported {
                offset: offset + 9,
                detail: "entry flags or reserved bytes set".into(),
            });
        }
        let path_len = LE::read_u16(&b[52..]) as usize;
        let link_len = LE::read_u32(&b[54..]) as usize;
        if ENTRY_FIXED_LEN + path_len + link_len + 4 != total {
            return Err(Error::corrupt(
                offset + 52,
                "entry path and link lengths disagree with its record length",
            ));
        }
        let e = Entry {
            kind,
            mode: LE::read_u32(&b[12..]),
            uid: LE::read_u32(&b[16..]),
            gid: LE::read_u32(&b[20..]),
            mtime_sec: LE::read_i64(&b[24..]),
            mtime_nsec: LE::read_u32(&b[32..]),
            size: LE::read_u64(&b[36..]),
            data_start: LE::read_u64(&b[44..]),
            path: b[ENTRY_FIXED_LEN..ENTRY_FIXED_LEN + path_len].to_vec(),
            link: b[ENTRY_FIXED_LEN + path_len..ENTRY_FIXED_LEN + path_len + link_len].to_vec(),
        };
        e.validate(offset)?;
        Ok((e, total))
    }

    fn validate(&self, offset: u64) -> Result<()> {
        self.validate_at(&FieldAt {
            kind: offset + 8,
            mode: offset + 12,
            mtime_nsec: offset + 32,
            path: offset + ENTRY_FIXED_LEN as u64,
            record: offset,
        })
    }

    /// The entry rules of §6 and §10.1 that both encodings share; `at` says where each field
    /// lies, for the error.
    pub(crate) fn validate_at(&self, at: &FieldAt) -> Result<()> {
        if self.mode & !0o7777 != 0 {
            return Err(Error::corrupt(
                at.mode,
                format!("mode {:#o} has bits beyond 0o7777", self.mode),
            ));
        }
        if self.mtime_nsec >= 1_000_000_000 {
            return Err(Error::corrupt(
                at.mtime_nsec,
                "mtime nanoseconds out of range",
            ));
        }
        check_path(&self.path).map_err(|why| Error::corrupt(at.path, why))?;
        let ok = match self.kind {
            EntryKind::File => self.link.is_empty(),
            EntryKind::Dir => self.link.is_empty() && self.size == 0 && self.data_start == 0,
            EntryKind::Symlink => !self.link.is_empty() && self.size == 0 && self.data_start == 0,
            EntryKind::HardLink => {
                self.size == 0 && self.data_start == 0 && check_path(&self.link).is_ok()
            }
        };
        if !ok {
            return Err(Error::corrupt(at.kind, "entry fields do not fit its kind"));
        }
        if self.link.len() > MAX_LINK_LEN {
            return Err(Error::corrupt(
                at.record,
                "link target longer than 4096 bytes",
            ));
        }
        if self.link.contains(&0) {
            return Err(Error::corrupt(at.record, "link target contains a NUL byte"));
        }
        Ok(())
    }

    pub fn data_end(&self) -> Option<u64> {
        self.data_start.checked_add(self.size)
    }
}

/// A path is safe when it is relative, `/`-separated, and has no empty, `.` or `..`
/// component and no NUL byte. Returns why it is not.
pub fn check_path(p: &[u8]) -> std::result::Result<(), &'static str> {
    if p.is_empty() || p.len() > MAX_PATH_LEN {
        return Err("path empty or too long");
    }
    if p.contains(&0) {
        return Err("path contains a NUL byte");
    }
    if p[0] == b'/' {
        return Err("absolute path");
    }
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" => return Err("path has an empty component"),
            b"." | b".." => return Err("path has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// One row of the index's block table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// Archive offset of the block record (classic: from the row; compact: derived from
    /// the tiling, [`compact::place_blocks`]).
    pub offset: u64,
    pub plain_len: u32,
    /// Length of the whole block record, header and payload (classic: 32 + the row's
    /// `coded_len`, saturating, so an absurd row stays absurd).
    pub record_len: u32,
}

impl BlockRef {
    /// Archive offset where the block record ends.
    pub fn end(&self) -> u64 {
        self.offset + self.record_len as u64
    }
}

/// The tail index: where every entry record and every block record lies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub entries: Vec<u64>,
    pub blocks: Vec<BlockRef>,
}

impl Index {
    /// The index as `framing` lays it out.
    pub fn encode_framed(&self, framing: Framing) -> Vec<u8> {
        match framing {
            Framing::Classic => self.encode(),
            Framing::CompactBlocks | Framing::Compact => self.encode_compact(),
        }
    }

    /// [`Self::decode`] or [`Self::decode_compact`], as `framing` says.
    pub fn decode_framed(b: &[u8], offset: u64, framing: Framing) -> Result<Index> {
        match framing {
            Framing::Classic => Index::decode(b, offset),
            Framing::CompactBlocks | Framing::Compact => Index::decode_compact(b, offset),
        }
    }

    /// The classic index (§8).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            INDEX_FIXED_LEN + self.entries.len() * 8 + self.blocks.len() * 16 + 4,
        );
        b.extend_from_slice(&INDEX_MAGIC);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for e in &self.entries {
            b.extend_from_slice(&e.to_le_bytes());
        }
        for r in &self.blocks {
            b.extend_from_slice(&r.offset.to_le_bytes());
            b.extend_from_slice(&r.plain_len.to_le_bytes());
            b.extend_from_slice(&(r.record_len - BLOCK_HEADER_LEN as u32).to_le_bytes());
        }
        let c = crc(&b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    /// Parses the classic index occupying exactly `b`, found at archive offset `offset`.
    pub fn decode(b: &[u8], offset: u64) -> Result<Index> {
        let (ne, nb) = index_prelude(b, offset)?;
        let n = b.len();
        // Both counts are bounded by the index length before anything is allocated.
        let expect = (ne as u128) * 8
            + (nb as u128) * INDEX_BLOCK_ROW as u128
            + (INDEX_FIXED_LEN + 4) as u128;
        if expect != n as u128 {
            return Err(Error::corrupt(
                offset + 8,
                "index counts disagree with its length",
            ));
        }
        let entries = entry_offsets(b, ne);
        let mut pos = INDEX_FIXED_LEN + 8 * entries.len();
        let blocks = (0..nb)
            .map(|_| {
                let r = BlockRef {
                    offset: LE::read_u64(&b[pos..]),
                    plain_len: LE::read_u32(&b[pos + 8..]),
                    record_len: LE::read_u32(&b[pos + 12..])
                        .saturating_add(BLOCK_HEADER_LEN as u32),
                };
                pos += INDEX_BLOCK_ROW;
                r
            })
            .collect();
        Ok(Index { entries, blocks })
    }
}

/// The entry offsets both index layouts hold after the fixed part: `ne` u64s, which the
/// caller has bounded by the index length.
fn entry_offsets(b: &[u8], ne: u64) -> Vec<u64> {
    b[INDEX_FIXED_LEN..INDEX_FIXED_LEN + 8 * ne as usize]
        .chunks_exact(8)
        .map(LE::read_u64)
        .collect()
}

/// What both index layouts begin with: length at least 28, magic, CRC, reserved bytes;
/// returns the entry and block counts, not yet checked against the length.
fn index_prelude(b: &[u8], offset: u64) -> Result<(u64, u64)> {
    if b.len() < INDEX_FIXED_LEN + 4 {
        return Err(Error::corrupt(offset, "index too short"));
    }
    if b[..4] != INDEX_MAGIC {
        return Err(Error::corrupt(offset, "bad index magic"));
    }
    let n = b.len();
    if crc(&b[..n - 4]) != LE::read_u32(&b[n - 4..]) {
        return Err(Error::corrupt(offset, "index CRC32 mismatch"));
    }
    if LE::read_u32(&b[4..]) != 0 {
        return Err(Error::Unsupported {
            offset: offset + 4,
            detail: "index reserved bytes set".into(),
        });
    }
    Ok((LE::read_u64(&b[8..]), LE::read_u64(&b[16..])))
}

/// The fixed 32-byte footer that ends every archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub index_offset: u64,
    pub index_len: u64,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        LE::write_u64(&mut b[0..], self.index_offset);
        LE::write_u64(&mut b[8..], self.index_len);
        let c = crc(&b[..20]);
        LE::write_u32(&mut b[20..], c);
        b[24..].copy_from_slice(&FOOTER_MAGIC);
        b
    }

    /// Parses the footer of an archive `file_len` bytes long, `b` being its last 32 bytes.
    pub fn decode(b: &[u8], file_len: u64) -> Result<Footer> {
        let at = file_len.saturating_sub(FOOTER_LEN as u64);
        if b.len() != FOOTER_LEN {
            return Err(Error::corrupt(at, "archive too short for a footer"));
        }
        if b[24..] != FOOTER_MAGIC {
            return Err(Error::corrupt(
                at + 24,
                "no footer magic at the end: the archive is truncated or has trailing bytes",
            ));
        }
        if crc(&b[..20]) != LE::read_u32(&b[20..]) {
            return Err(Error::corrupt(at, "footer CRC32 mismatch"));
        }
        if LE::read_u32(&b[16..]) != 0 {
            return Err(Error::Unsupported {
                offset: at + 16,
                detail: "footer reserved bytes set".into(),
            });
        }
        let f = Footer {
            index_offset: LE::read_u64(&b[0..]),
            index_len: LE::read_u64(&b[8..]),
        };
        if f.index_offset.checked_add(f.index_len) != Some(at) {
            return Err(Error::corrupt(
                at,
                "index does not end where the footer begins",
            ));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            block_size: 4096,
            pin: ModelPin {
                kind: ModelKind::Order1,
                sha256: [7; 32],
                size: 1,
                vocab_size: 256,
                freq_bits: 24,
                tokenizer: Tokenizer::Bytes,
                context_policy: 1,
                bos: 0,
                max_block_tokens: 4096,
                schedule: 1,
                flash_attn: 0,
                kv_unified: 0,
                kv_type: 0,
            },
            model_name: "order1".into(),
            backend: "cpu".into(),
            engine_version: "x".into(),
            cpu_features: "avx2".into(),
            primer: None,
            bias_rate: 0,
            framing: Framing::Classic,
        }
    }

    /// The pin check compares every field but `max_block_tokens` and `context_policy`
    /// (FORMAT.md §5).
    #[test]
    fn pin_matches_ignores_only_max_block_tokens_and_context_policy() {
        let p = header().pin;
        let mut q = p.clone();
        q.max_block_tokens = 17;
        q.context_policy = POLICY_PRIMER;
        assert!(p.matches(&q) && q.matches(&p));
        let changes: [fn(&mut ModelPin); 10] = [
            |q| q.sha256[31] ^= 1,
            |q| q.size += 1,
            |q| q.vocab_size += 1,
            |q| q.freq_bits += 1,
            |q| q.tokenizer = Tokenizer::LlamaPieces,
            |q| q.bos += 1,
            |q| q.schedule += 1,
            |q| q.flash_attn += 1,
            |q| q.kv_unified += 1,
            |q| q.kv_type += 1,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut q = p.clone();
            change(&mut q);
            assert!(!p.matches(&q), "field {i}");
        }
        let mut q = p.clone();
        q.kind = ModelKind::Llama;
        assert!(!p.matches(&q));
    }

    #[test]
    fn header_round_trip_and_every_flip_rejected() {
        let h = header();
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), (h, b.len()));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(Header::decode(&c).is_err(), "flip at {i} accepted");
        }
        for n in 0..b.len() {
            assert!(Header::decode(&b[..n]).is_err());
        }
    }

    /// A header with a primer (context policy 2) round-trips; the primer's fields are
    /// checked (the invalid vectors `primer-*` cover each rule through both readers).
    #[test]
    fn primer_header_round_trip() {
        let mut h = header();
        h.pin.context_policy = POLICY_PRIMER;
        h.primer = Some(Primer {
            tokens: 300,
            coded: vec![1, 2, 3, 4, 5],
        });
        let b = h.encode();
        assert_eq!(b.len(), h.primer_offset() + 5 + 4);
        assert_eq!(Header::decode(&b).unwrap(), (h.clone(), b.len()));
        // A primer under kind 2 is not defined.
        let mut k2 = h.clone();
        k2.pin.kind = ModelKind::Llama;
        k2.pin.tokenizer = Tokenizer::LlamaPieces;
        assert!(matches!(
            Header::decode(&k2.encode()),
            Err(Error::Unsupported { .. })
        ));
        // Policy 1 with primer bytes: they are bytes after the strings.
        let mut p1 = h;
        p1.pin.context_policy = POLICY_FRESH;
        assert!(matches!(
            Header::decode(&p1.encode()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn entry_round_trip() {
        let e = Entry {
            kind: EntryKind::Symlink,
            mode: 0o777,
            uid: 1,
            gid: 2,
            mtime_sec: -5,
            mtime_nsec: 999_999_999,
            size: 0,
            data_start: 0,
            path: b"a/b".to_vec(),
            link: b"../x".to_vec(),
        };
        let b = e.encode();
        assert_eq!(b.len(), e.encoded_len());
        assert_eq!(Entry::decode(&b, 0).unwrap(), (e, b.len()));
    }

    #[test]
    fn unsafe_paths_rejected() {
        for p in [
            &b""[..],
            b"/etc",
            b"a/../b",
            b"..",
            b"a//b",
            b"a/",
            b"./a",
            b"a\0b",
        ] {
            assert!(check_path(p).is_err(), "{p:?}");
        }
        assert!(check_path(b"a/b.c/..d").is_ok());
    }

    #[test]
    fn index_and_footer_round_trip() {
        let i = Index {
            entries: vec![10, 20],
            blocks: vec![BlockRef {
                offset: 100,
                plain_len: 5,
                record_len: 35,
            }],
        };
        let b = i.encode();
        assert_eq!(Index::decode(&b, 0).unwrap(), i);
        let c = i.encode_compact();
        assert_eq!(c.len(), 28 + 16 + 2);
        let back = Index::decode_compact(&c, 0).unwrap();
        assert_eq!(back.blocks[0].offset, 0);
        assert_eq!(
            (back.blocks[0].plain_len, back.blocks[0].record_len),
            (5, 35)
        );
        let f = Footer {
            index_offset: 100,
            index_len: 68,
        };
        assert_eq!(Footer::decode(&f.encode(), 200).unwrap(), f);
        assert!(Footer::decode(&f.encode(), 201).is_err());
    }

    #[test]
    fn block_header_bounds() {
        let h = header();
        let bh = BlockHeader {
            codec: Codec::Zstd,
            plain_len: 10,
            coded_len: 11,
            tokens: 0,
            plain_crc: 0,
            coded_crc: 0,
        };
        assert!(BlockHeader::decode(&bh.encode(), 0, &h).is_err());
        let ok = BlockHeader { coded_len: 9, ..bh };
        assert_eq!(BlockHeader::decode(&ok.encode(), 0, &h).unwrap(), ok);
    }
}
