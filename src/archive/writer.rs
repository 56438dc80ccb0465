//! Writing an archive in one pass, to any `Write` (a file or a pipe).
//!
//! Records go out in stream order: each entry record is written when the entry is added,
//! before any block that holds its data, so a reader of a pipe can extract as it goes.
//!
//! Block layout ("packing" in FORMAT.md): file data forms one data stream cut into blocks of
//! at most `block_size` bytes. A file that fits in the open block's free space joins it
//! (small files share blocks: the first tokens of a block cost the most); one that fits in a
//! block but not in the free space starts a new block; a larger one starts a new block and
//! fills whole blocks, its tail opening the next. So a small file always lies in one block
//! and reading it decodes nothing else.
//!
//! Full blocks wait until `width` are sealed, then are coded together (lockstep model
//! evaluation) and written in order.

use std::io::{Read, Write};

use crate::codec::{encode_model, encode_with, Lockstep, ModelStats};
use crate::error::{Error, Result};
use crate::format::{
    check_path, BlockRef, Codec, Entry, EntryKind, Footer, Header, Index, ModelKind, ModelPin,
    Primer, BLOCK_HEADER_LEN, MAX_BLOCK_SIZE, MAX_LINK_LEN, MAX_PRIMER_TOKENS, POLICY_PRIMER,
};
use crate::model::{Model, Token};

use super::Catalog;

#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    pub block_size: u32,
    /// Model blocks coded together in lockstep.
    pub width: usize,
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            block_size: 8192,
            width: 8,
            zstd_level: 19,
        }
    }
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

pub struct Writer<'m, W: Write> {
    out: W,
    pos: u64,
    lockstep: Lockstep<'m>,
    opts: WriterOptions,
    index: Index,
    catalog: Catalog,
    open: Vec<u8>,
    sealed: Vec<Vec<u8>>,
    /// Length of the data stream so far (sealed, coded and open blocks).
    data_len: u64,
    stats: PackStats,
    progress: Option<Box<dyn FnMut(u64) + 'm>>,
}

fn write_err(e: std::io::Error) -> Error {
    Error::io("archive output", e)
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
        mut out: W,
        model: Option<&'m dyn Model>,
        opts: WriterOptions,
        primer: Option<&[Token]>,
    ) -> Result<Self> {
        if opts.block_size == 0 || opts.block_size > MAX_BLOCK_SIZE {
            return Err(Error::usage(format!(
                "block size must be between 1 and {MAX_BLOCK_SIZE} bytes"
            )));
        }
        let header = match model {
            Some(m) => m.header(opts.block_size),
            None => Header {
                block_size: opts.block_size,
                pin: ModelPin::none(),
                model_name: String::new(),
                backend: String::new(),
                engine_version: concat!("lmz ", env!("CARGO_PKG_VERSION")).into(),
                cpu_features: String::new(),
                primer: None,
            },
        };
        let mut header = header;
        let mut lockstep = Lockstep::new(model, opts.width);
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
        let h = header.encode();
        // Never write a header readers would reject (a model whose `max_block_tokens` exceeds
        // the block size, a name too long, …): the same decoder the readers use checks it.
        Header::decode(&h)
            .map_err(|e| Error::usage(format!("the archive's header would be invalid: {e}")))?;
        out.write_all(&h).map_err(write_err)?;
        Ok(Writer {
            out,
            pos: h.len() as u64,
            lockstep,
            opts,
            index: Index::default(),
            catalog: Catalog::default(),
            open: Vec::new(),
            sealed: Vec::new(),
            data_len: 0,
            stats: PackStats::default(),
            progress: None,
        })
    }

    /// Calls `f` with the number of plain bytes coded so far, after each batch of blocks.
    pub fn on_progress(&mut self, f: impl FnMut(u64) + 'm) {
        self.progress = Some(Box::new(f));
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
        let b = e.encode();
        // The catalog applies the readers' rules, so the writer cannot produce an archive
        // they would reject.
        self.catalog
            .push(e, self.pos)
            .map_err(|err| Error::usage(format!("cannot add entry: {err}")))?;
        self.out.write_all(&b).map_err(write_err)?;
        self.index.entries.push(self.pos);
        self.pos += b.len() as u64;
        self.stats.entries += 1;
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
        let bs = self.opts.block_size as u64;
        let free = bs - self.open.len() as u64;
        if size > free && !self.open.is_empty() {
            self.seal()?;
        }
        let e = self.entry(EntryKind::File, path, meta, size, b"")?;
        let name = String::from_utf8_lossy(path).into_owned();
        self.write_entry(e)?;
        let mut left = size;
        while left > 0 {
            let room = bs - self.open.len() as u64;
            let take = left.min(room) as usize;
            let start = self.open.len();
            self.open.resize(start + take, 0);
            read_full(data, &mut self.open[start..]).map_err(|e| Error::io(&name, e))?;
            left -= take as u64;
            self.data_len += take as u64;
            if self.open.len() as u64 == bs {
                self.seal()?;
            }
        }
        self.stats.plain_bytes += size;
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if !self.open.is_empty() {
            self.sealed.push(std::mem::take(&mut self.open));
        }
        if self.sealed.len() >= self.opts.width.max(1) {
            self.flush_sealed()?;
        }
        Ok(())
    }

    fn flush_sealed(&mut self) -> Result<()> {
        if self.sealed.is_empty() {
            return Ok(());
        }
        let plains: Vec<&[u8]> = self.sealed.iter().map(|b| b.as_slice()).collect();
        let (coded, mstats) = encode_with(&mut self.lockstep, &plains, self.opts.zstd_level)?;
        let m = &mut self.stats.model;
        m.blocks += mstats.blocks;
        m.tokens += mstats.tokens;
        m.plain_bytes += mstats.plain_bytes;
        m.coded_bytes += mstats.coded_bytes;
        m.ideal_bits += mstats.ideal_bits;
        for c in coded {
            let h = c.header.encode();
            self.out.write_all(&h).map_err(write_err)?;
            self.out.write_all(&c.payload).map_err(write_err)?;
            self.index.blocks.push(BlockRef {
                offset: self.pos,
                plain_len: c.header.plain_len,
                coded_len: c.header.coded_len,
            });
            self.pos += (BLOCK_HEADER_LEN + c.payload.len()) as u64;
            let k = c.header.codec as usize;
            self.stats.blocks[k] += 1;
            self.stats.coded[k] += c.payload.len() as u64;
            self.stats.plain[k] += c.header.plain_len as u64;
            if c.header.codec == Codec::Model {
                self.stats.kept_tokens += c.header.tokens as u64;
                self.stats.kept_ideal_bits += c.ideal_bits;
            }
        }
        self.sealed.clear();
        let done: u64 = self.stats.plain.iter().sum();
        if let Some(p) = self.progress.as_mut() {
            p(done);
        }
        Ok(())
    }

    /// Writes the remaining blocks, the index and the footer; returns the output.
    pub fn finish(mut self) -> Result<(W, PackStats)> {
        if !self.open.is_empty() {
            self.sealed.push(std::mem::take(&mut self.open));
        }
        self.flush_sealed()?;
        let idx = self.index.encode();
        let footer = Footer {
            index_offset: self.pos,
            index_len: idx.len() as u64,
        };
        self.out.write_all(&idx).map_err(write_err)?;
        self.out.write_all(&footer.encode()).map_err(write_err)?;
        self.out.flush().map_err(write_err)?;
        self.stats.archive_bytes = self.pos + idx.len() as u64 + footer.encode().len() as u64;
        Ok((self.out, self.stats))
    }
}

/// Fills `buf` completely; a source that ends early is an error (the file shrank).
fn read_full(r: &mut dyn Read, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match r.read(buf) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file ended before its recorded size (did it change while being packed?)",
                ))
            }
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
