//! Writing an archive in one pass, to any `Write` (a file or a pipe), or one shard's part of
//! it (FORMAT.md §21).
//!
//! Block layout ("packing" in FORMAT.md §14): file data forms one data stream cut into blocks
//! of at most `block_size` bytes. A file that fits in the open block's free space joins it
//! (small files share blocks: the first tokens of a block cost the most); one that fits in a
//! block but not in the free space starts a new block; a larger one starts a new block and
//! fills whole blocks, its tail opening the next. So a small file always lies in one block
//! and reading it decodes nothing else.
//!
//! Record order (FORMAT.md §14): each block record goes out where its block is sealed, each
//! entry record where its entry is added, so the layout is a function of the inputs alone.
//! Sealed blocks wait until `width` are sealed, then are coded together (lockstep model
//! evaluation); the entry records added meanwhile wait with them, in a queue, and go out in
//! order once the blocks before them are coded. So the archive never depends on the width,
//! and the records a shard writes are exactly those of the single archive.

use std::io::{Read, Write};

use crate::codec::{encode_model, encode_with, Lockstep, ModelStats};
use crate::error::{Error, Result};
use crate::format::part::{shard_of, PartFooter, PartHeader, PlanHasher};
use crate::format::{
    check_path, BlockRef, Codec, Entry, EntryKind, Footer, Framing, Header, Index, ModelKind,
    ModelPin, Primer, MAX_BLOCK_SIZE, MAX_LINK_LEN, MAX_PRIMER_TOKENS, POLICY_PRIMER,
};
use crate::model::{Model, Token};

use super::Catalog;

#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    pub block_size: u32,
    /// Model blocks coded together in lockstep.
    pub width: usize,
    pub zstd_level: i32,
    /// Record framing (FORMAT.md §6.1, §7.1): compact blocks and entries by default;
    /// compact blocks only for lmz 0.4 readers; classic for lmz 0.3 and earlier, and for
    /// the ablation.
    pub framing: Framing,
    /// The adaptive bias's rate (FORMAT.md §12.9), for models that have one (kind 3; the
    /// others ignore it); 0: none.
    pub bias_rate: u16,
}

/// The adaptive bias's rate lmz writes by default: 0.375 bit per unit of probability (about
/// 0.26 in natural log units), near the best measured on the shared corpus's prose and html
/// (FORMAT.md §12.9).
pub const DEFAULT_BIAS_RATE: u16 = 24_576;

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            block_size: 8192,
            width: 8,
            zstd_level: 19,
            framing: Framing::Compact,
            bias_rate: DEFAULT_BIAS_RATE,
        }
    }
}

/// Which shard of an archive a writer writes the part of (FORMAT.md §21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
    /// Length of the whole archive's data stream (the sum of its files' sizes): every shard
    /// needs it to know which blocks are its own before it has seen them all.
    pub data_len: u64,
}

/// Metadata of an entry being added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

/// What a pack achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct PackStats {
    pub entries: u64,
    pub plain_bytes: u64,
    pub archive_bytes: u64,
    /// Blocks and their coded bytes per codec (indexed by `Codec as usize`).
    pub blocks: [u64; 3],
    pub coded: [u64; 3],
    pub plain: [u64; 3],
    /// Model coding over every block it was tried on (won or not).
    pub model: ModelStats,
    /// Tokens and ideal bits of the blocks that kept model coding.
    pub kept_tokens: u64,
    pub kept_ideal_bits: f64,
}

/// The bytes of a file being added, in order. A shard's writer skips the bytes of blocks
/// other shards code: a file can seek past them instead of reading them.
pub trait FileData {
    /// Fills `buf` completely; a source that ends early is an error (the file shrank).
    fn read_into(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
    /// Passes over the next `n` bytes.
    fn skip(&mut self, n: u64) -> std::io::Result<()>;
}

/// Any reader, skipping by reading.
struct Sequential<'a>(&'a mut dyn Read);

impl FileData for Sequential<'_> {
    fn read_into(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        read_full(self.0, buf)
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let got = std::io::copy(&mut self.0.take(n), &mut std::io::sink())?;
        if got < n {
            return Err(shrank());
        }
        Ok(())
    }
}

/// A record waiting for the blocks before it to be coded.
enum Queued {
    Entry(Vec<u8>),
    /// A sealed block's plain bytes.
    Block(Vec<u8>),
}

/// Entry records a writer holds at most while it waits for a batch of blocks (many empty
/// files or directories between two blocks): past this, it codes the blocks it has sealed
/// so far. Only memory changes; the archive does not.
const QUEUED_ENTRY_BYTES: usize = 1 << 20;

/// A part writer's state: which records are its own, and the plan they belong to.
struct PartState {
    header: PartHeader,
    data_len: u64,
    plan: PlanHasher,
    entries_before: u64,
    blocks_before: u64,
    entries_seen: u64,
    blocks_seen: u64,
}

pub struct Writer<'m, W: Write> {
    out: W,
    /// Bytes written so far.
    pos: u64,
    /// Where offsets in the index count from: 0 in an archive, the body's start in a part.
    index_base: u64,
    lockstep: Lockstep<'m>,
    opts: WriterOptions,
    index: Index,
    catalog: Catalog,
    /// Bytes in the open block, and the bytes themselves when this writer codes it.
    fill: u64,
    open: Vec<u8>,
    /// Length of the data stream so far (sealed and open blocks).
    data_len: u64,
    queue: Vec<Queued>,
    queued_blocks: usize,
    queued_entry_bytes: usize,
    stats: PackStats,
    progress: Option<Box<dyn FnMut(u64) + 'm>>,
    part: Option<PartState>,
}

fn write_err(e: std::io::Error) -> Error {
    Error::io("archive output", e)
}

fn shrank() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "file ended before its recorded size (did it change while being packed?)",
    )
}

/// The archive header a writer with `model`, `opts` and `primer` writes, and the evaluator
/// primed for it, checked by the readers' decoder: never write a header readers would reject
/// (a model whose `max_block_tokens` exceeds the block size, a name too long, …).
fn archive_header<'m>(
    model: Option<&'m dyn Model>,
    opts: &WriterOptions,
    primer: Option<&[Token]>,
) -> Result<(Header, Lockstep<'m>)> {
    if opts.block_size == 0 || opts.block_size > MAX_BLOCK_SIZE {
        return Err(Error::usage(format!(
            "block size must be between 1 and {MAX_BLOCK_SIZE} bytes"
        )));
    }
    let mut header = match model {
        Some(m) => m.header(opts.block_size),
        None => Header {
            block_size: opts.block_size,
            pin: ModelPin::none(),
            model_name: String::new(),
            backend: String::new(),
            engine_version: concat!("lmz ", env!("CARGO_PKG_VERSION")).into(),
            cpu_features: String::new(),
            primer: None,
            bias_rate: 0,
            framing: Framing::Classic,
        },
    };
    header.framing = opts.framing;
    let mut lockstep = Lockstep::new(model, opts.width);
    if model.is_some_and(|m| m.pin().kind == ModelKind::Portable) {
        // Before the primer, which is coded under it too (§12.9).
        header.bias_rate = opts.bias_rate;
        lockstep.set_bias_rate(opts.bias_rate);
    }
    if let (Some(m), Some(p)) = (model, primer) {
        if p.is_empty() || p.len() > MAX_PRIMER_TOKENS as usize {
            return Err(Error::usage(format!(
                "a primer holds 1 to {MAX_PRIMER_TOKENS} tokens, not {}",
                p.len()
            )));
        }
        if m.pin().kind == ModelKind::Llama {
            return Err(Error::usage(
                "archives of the llama engine cannot have a primer (use the portable engine)",
            ));
        }
        if let Some(&t) = p.iter().find(|&&t| t >= m.pin().vocab_size) {
            return Err(Error::usage(format!(
                "primer token {t} outside the vocabulary"
            )));
        }
        // The primer is coded like a block, from an empty context (§12.8).
        let (coded, _) = encode_model(&mut lockstep, vec![p])?
            .pop()
            .expect("one sequence");
        header.pin.context_policy = POLICY_PRIMER;
        header.primer = Some(Primer {
            tokens: p.len() as u16,
            coded,
        });
        lockstep.set_primer_tokens(Some(p.to_vec()));
    }
    Header::decode(&header.encode())
        .map_err(|e| Error::usage(format!("the archive's header would be invalid: {e}")))?;
    Ok((header, lockstep))
}

impl<'m, W: Write> Writer<'m, W> {
    /// Starts an archive: writes the header. Without a model only stored and zstd blocks are
    /// used.
    pub fn new(out: W, model: Option<&'m dyn Model>, opts: WriterOptions) -> Result<Self> {
        Self::with_primer(out, model, opts, None)
    }

    /// [`Self::new`] for an archive whose blocks all start after `primer` (context policy 2,
    /// FORMAT.md §12.8): 1 ..= 1024 tokens of the model's, coded into the header. Which
    /// tokens, and whether they pay, is the caller's choice (`lmz pack` measures it).
    pub fn with_primer(
        out: W,
        model: Option<&'m dyn Model>,
        opts: WriterOptions,
        primer: Option<&[Token]>,
    ) -> Result<Self> {
        let (header, lockstep) = archive_header(model, &opts, primer)?;
        Writer::start(out, lockstep, opts, header.encode(), None)
    }

    /// Starts shard `shard.index`'s part of the archive [`Writer::new`] would write with the
    /// same model and options, given the same entries: writes the part header. It codes only
    /// its own blocks, and skips the bytes of the others; the entries must all be added, in
    /// the same order as for the archive.
    pub fn new_part(
        out: W,
        model: Option<&'m dyn Model>,
        opts: WriterOptions,
        shard: Shard,
    ) -> Result<Self> {
        Self::part_with_primer(out, model, opts, None, shard)
    }

    /// [`Self::new_part`] of the archive [`Self::with_primer`] writes.
    pub fn part_with_primer(
        out: W,
        model: Option<&'m dyn Model>,
        opts: WriterOptions,
        primer: Option<&[Token]>,
        shard: Shard,
    ) -> Result<Self> {
        if shard.count == 0
            || shard.count > crate::format::part::MAX_SHARDS
            || shard.index >= shard.count
        {
            return Err(Error::usage(format!(
                "shard {}/{}: K must be below N, and N between 1 and {}",
                shard.index,
                shard.count,
                crate::format::part::MAX_SHARDS
            )));
        }
        let (header, lockstep) = archive_header(model, &opts, primer)?;
        let ph = PartHeader::new(shard.index, shard.count, opts.zstd_level, header);
        let bytes = ph.encode();
        let part = PartState {
            plan: PlanHasher::new(&ph.header, opts.zstd_level),
            header: ph,
            data_len: shard.data_len,
            entries_before: 0,
            blocks_before: 0,
            entries_seen: 0,
            blocks_seen: 0,
        };
        Writer::start(out, lockstep, opts, bytes, Some(part))
    }

    fn start(
        mut out: W,
        lockstep: Lockstep<'m>,
        opts: WriterOptions,
        head: Vec<u8>,
        part: Option<PartState>,
    ) -> Result<Self> {
        out.write_all(&head).map_err(write_err)?;
        let pos = head.len() as u64;
        Ok(Writer {
            out,
            pos,
            index_base: if part.is_some() { pos } else { 0 },
            lockstep,
            opts,
            index: Index::default(),
            catalog: Catalog::default(),
            fill: 0,
            open: Vec::new(),
            data_len: 0,
            queue: Vec::new(),
            queued_blocks: 0,
            queued_entry_bytes: 0,
            stats: PackStats::default(),
            progress: None,
            part,
        })
    }

    /// Calls `f` with the number of plain bytes coded so far, after each batch of blocks.
    pub fn on_progress(&mut self, f: impl FnMut(u64) + 'm) {
        self.progress = Some(Box::new(f));
    }

    /// Whether this writer writes the record that precedes the block starting at data-stream
    /// offset `start` (the block itself, or a record before it): always for an archive.
    fn keeps(&self, start: u64) -> bool {
        match &self.part {
            None => true,
            Some(p) => shard_of(start, p.data_len, p.header.shard_count) == p.header.shard,
        }
    }

    fn entry(
        &mut self,
        kind: EntryKind,
        path: &[u8],
        meta: Meta,
        size: u64,
        link: &[u8],
    ) -> Result<Entry> {
        check_path(path).map_err(|why| Error::UnsafePath {
            path: String::from_utf8_lossy(path).into(),
            detail: why.into(),
        })?;
        if link.len() > MAX_LINK_LEN {
            return Err(Error::usage(format!(
                "link target of {:?} is too long",
                String::from_utf8_lossy(path)
            )));
        }
        Ok(Entry {
            kind,
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            mtime_sec: meta.mtime_sec,
            mtime_nsec: meta.mtime_nsec.min(999_999_999),
            size,
            data_start: if kind == EntryKind::File {
                self.data_len
            } else {
                0
            },
            path: path.to_vec(),
            link: link.to_vec(),
        })
    }

    fn write_entry(&mut self, e: Entry) -> Result<()> {
        let b = e.encode_framed(self.opts.framing);
        // The catalog applies the readers' rules, so the writer cannot produce an archive
        // they would reject.
        self.catalog
            .push(e, self.pos)
            .map_err(|err| Error::usage(format!("cannot add entry: {err}")))?;
        // The first block after this record starts where the open block does.
        let next_block = self.data_len - self.fill;
        let keep = self.keeps(next_block);
        if let Some(p) = self.part.as_mut() {
            p.plan.entry(&b);
            p.entries_seen += 1;
            if shard_of(next_block, p.data_len, p.header.shard_count) < p.header.shard {
                p.entries_before += 1;
            }
        }
        if !keep {
            return Ok(());
        }
        self.stats.entries += 1;
        if self.queue.is_empty() {
            self.put_entry(&b)
        } else {
            self.queued_entry_bytes += b.len();
            self.queue.push(Queued::Entry(b));
            if self.queued_entry_bytes > QUEUED_ENTRY_BYTES {
                self.flush_queue()?;
            }
            Ok(())
        }
    }

    fn put_entry(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(write_err)?;
        self.index.entries.push(self.pos - self.index_base);
        self.pos += b.len() as u64;
        Ok(())
    }

    pub fn add_dir(&mut self, path: &[u8], meta: Meta) -> Result<()> {
        let e = self.entry(EntryKind::Dir, path, meta, 0, b"")?;
        self.write_entry(e)
    }

    pub fn add_symlink(&mut self, path: &[u8], target: &[u8], meta: Meta) -> Result<()> {
        if target.is_empty() || target.contains(&0) {
            return Err(Error::usage("symlink target empty or containing NUL"));
        }
        let e = self.entry(EntryKind::Symlink, path, meta, 0, target)?;
        self.write_entry(e)
    }

    /// A hard link to the earlier file entry `target`.
    pub fn add_hardlink(&mut self, path: &[u8], target: &[u8], meta: Meta) -> Result<()> {
        let e = self.entry(EntryKind::HardLink, path, meta, 0, target)?;
        self.write_entry(e)
    }

    /// A regular file of exactly `size` bytes read from `data`.
    pub fn add_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<()> {
        self.add_file_from(path, meta, size, &mut Sequential(data))
    }

    /// A regular file of exactly `size` bytes from `data`, which a part's writer reads only
    /// where its own blocks hold them.
    pub fn add_file_from(
        &mut self,
        path: &[u8],
        meta: Meta,
        size: u64,
        data: &mut dyn FileData,
    ) -> Result<()> {
        let bs = self.opts.block_size as u64;
        if size > bs - self.fill && self.fill > 0 {
            self.seal()?;
        }
        let e = self.entry(EntryKind::File, path, meta, size, b"")?;
        let name = String::from_utf8_lossy(path).into_owned();
        self.write_entry(e)?;
        let mut left = size;
        while left > 0 {
            let take = left.min(bs - self.fill);
            if self.keeps(self.data_len - self.fill) {
                let start = self.open.len();
                self.open.resize(start + take as usize, 0);
                data.read_into(&mut self.open[start..])
            } else {
                data.skip(take)
            }
            .map_err(|e| Error::io(&name, e))?;
            left -= take;
            self.fill += take;
            self.data_len += take;
            if self.fill == bs {
                self.seal()?;
            }
        }
        self.stats.plain_bytes += size;
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if self.fill == 0 {
            return Ok(());
        }
        let start = self.data_len - self.fill;
        let keep = self.keeps(start);
        if let Some(p) = self.part.as_mut() {
            p.plan.block(self.fill as u32);
            p.blocks_seen += 1;
            if shard_of(start, p.data_len, p.header.shard_count) < p.header.shard {
                p.blocks_before += 1;
            }
        }
        self.fill = 0;
        if keep {
            self.queue
                .push(Queued::Block(std::mem::take(&mut self.open)));
            self.queued_blocks += 1;
            if self.queued_blocks >= self.opts.width.max(1) {
                self.flush_queue()?;
            }
        }
        Ok(())
    }

    fn put_block(&mut self, c: &crate::codec::Coded) -> Result<()> {
        let head = c.header.encode_framed(self.opts.framing);
        self.out.write_all(&head).map_err(write_err)?;
        self.out.write_all(&c.payload).map_err(write_err)?;
        let record_len = (head.len() + c.payload.len()) as u32;
        self.index.blocks.push(BlockRef {
            offset: self.pos - self.index_base,
            plain_len: c.header.plain_len,
            record_len,
        });
        self.pos += record_len as u64;
        let k = c.header.codec as usize;
        self.stats.blocks[k] += 1;
        self.stats.coded[k] += c.payload.len() as u64;
        self.stats.plain[k] += c.header.plain_len as u64;
        if c.header.codec == Codec::Model {
            self.stats.kept_tokens += c.header.tokens as u64;
            self.stats.kept_ideal_bits += c.ideal_bits;
        }
        Ok(())
    }

    /// Codes the queued blocks together and writes the queue in order.
    fn flush_queue(&mut self) -> Result<()> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let queue = std::mem::take(&mut self.queue);
        let plains: Vec<&[u8]> = queue
            .iter()
            .filter_map(|q| match q {
                Queued::Block(b) => Some(b.as_slice()),
                Queued::Entry(_) => None,
            })
            .collect();
        let (coded, mstats) = encode_with(&mut self.lockstep, &plains, self.opts.zstd_level)?;
        let m = &mut self.stats.model;
        m.blocks += mstats.blocks;
        m.tokens += mstats.tokens;
        m.plain_bytes += mstats.plain_bytes;
        m.coded_bytes += mstats.coded_bytes;
        m.ideal_bits += mstats.ideal_bits;
        let mut coded = coded.into_iter();
        for q in &queue {
            match q {
                Queued::Entry(b) => self.put_entry(b)?,
                Queued::Block(_) => {
                    let c = coded.next().expect("one coded block per queued block");
                    self.put_block(&c)?;
                }
            }
        }
        self.queued_blocks = 0;
        self.queued_entry_bytes = 0;
        let done: u64 = self.stats.plain.iter().sum();
        if let Some(p) = self.progress.as_mut() {
            p(done);
        }
        Ok(())
    }

    /// Writes the remaining blocks, the index and the footer (a part's index and footer);
    /// returns the output.
    pub fn finish(mut self) -> Result<(W, PackStats)> {
        self.seal()?;
        self.flush_queue()?;
        let idx = self.index.encode_framed(self.opts.framing);
        let tail: Vec<u8> = match &self.part {
            None => Footer {
                index_offset: self.pos,
                index_len: idx.len() as u64,
            }
            .encode()
            .to_vec(),
            Some(p) => {
                if p.data_len != self.data_len {
                    return Err(Error::usage(format!(
                        "the inputs hold {} bytes of file data, not the {} this shard was \
                         planned for: did they change while being packed?",
                        self.data_len, p.data_len
                    )));
                }
                PartFooter {
                    index_offset: self.pos,
                    index_len: idx.len() as u64,
                    plan: p.plan.clone().finish(),
                    first_entry: p.entries_before,
                    first_block: p.blocks_before,
                    entry_total: p.entries_seen,
                    block_total: p.blocks_seen,
                }
                .encode()
                .to_vec()
            }
        };
        self.out.write_all(&idx).map_err(write_err)?;
        self.out.write_all(&tail).map_err(write_err)?;
        self.out.flush().map_err(write_err)?;
        self.stats.archive_bytes = self.pos + idx.len() as u64 + tail.len() as u64;
        Ok((self.out, self.stats))
    }
}

/// Fills `buf` completely; a source that ends early is an error (the file shrank).
fn read_full(r: &mut dyn Read, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match r.read(buf) {
            Ok(0) => return Err(shrank()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::order1::Order1;

    /// A model whose pin does not fit the block size would make a header every reader
    /// rejects: the writer refuses before writing a byte.
    #[test]
    fn refuses_a_header_readers_would_reject() {
        let m = Order1::new(1 << 20);
        let opts = WriterOptions {
            block_size: 4096,
            ..WriterOptions::default()
        };
        let mut out = Vec::new();
        let e = Writer::new(&mut out, Some(&m as &dyn Model), opts)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("header would be invalid"), "{e}");
        assert!(out.is_empty());
        let ok = Order1::new(4096);
        assert!(Writer::new(Vec::new(), Some(&ok as &dyn Model), opts).is_ok());
    }
}
