//! Random access through the tail index.
//!
//! Opening maps the file (memmap2), reads the footer, the index and the header, and
//! validates every entry record and every block reference against each other; nothing is
//! decoded. Reads then decode only the blocks that cover the requested range, and count
//! them ([`Archive::blocks_decoded`]) so tests can observe it.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::{decode_with, BlockRefData, Lockstep};
use crate::error::{Error, Result};
use crate::format::compact::{self, place_blocks};
use crate::format::{
    BlockHeader, BlockRef, Entry, EntryKind, Footer, Framing, Header, Index, ModelKind,
    BLOCK_HEADER_LEN, FOOTER_LEN,
};
use crate::model::Model;

use super::Catalog;

enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

pub struct Archive {
    bytes: Bytes,
    header: Header,
    catalog: Catalog,
    blocks: Vec<BlockRef>,
    /// Data-stream offset where each block starts; one more entry for the end.
    starts: Vec<u64>,
    decoded: AtomicU64,
}

impl Archive {
    /// Opens an archive file by memory-mapping it.
    pub fn open(path: &Path) -> Result<Archive> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(Error::corrupt(0, "empty file"));
        }
        // SAFETY: the map is read-only. An archive is never modified in place by lmz; if
        // another process truncates it while mapped, reads can fault (SIGBUS), as with every
        // mmap-based reader (squashfs images, DwarFS). Every byte read is CRC-checked.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        Archive::parse(Bytes::Map(map))
    }

    /// Opens an archive held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Archive> {
        Archive::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Archive> {
        let b = bytes.as_slice();
        let len = b.len() as u64;
        let (header, header_len) = Header::decode(b)?;
        if b.len() < header_len + FOOTER_LEN {
            return Err(Error::corrupt(
                len,
                "archive truncated: no room for a footer",
            ));
        }
        let footer = Footer::decode(&b[b.len() - FOOTER_LEN..], len)?;
        if footer.index_offset < header_len as u64 {
            return Err(Error::corrupt(
                len - FOOTER_LEN as u64,
                "index overlaps the header",
            ));
        }
        let ix =
            &b[footer.index_offset as usize..(footer.index_offset + footer.index_len) as usize];
        let mut index = Index::decode_framed(ix, footer.index_offset, header.framing)?;
        let body = header_len as u64..footer.index_offset;
        let mut catalog = Catalog::default();
        let mut prev_end = header_len as u64;
        let mut entry_lens = Vec::with_capacity(index.entries.len());
        for &off in &index.entries {
            if off < prev_end || off >= body.end {
                return Err(Error::corrupt(
                    off,
                    "entry record offset out of order or outside the body",
                ));
            }
            let (e, n) =
                Entry::decode_framed(&b[off as usize..body.end as usize], off, header.framing)?;
            catalog.push(e, off)?;
            prev_end = off + n as u64;
            entry_lens.push(n as u64);
        }
        let mut starts = Vec::with_capacity(index.blocks.len() + 1);
        let mut data = 0u64;
        match header.framing {
            Framing::Classic => {
                let mut prev_end = header_len as u64;
                for (i, r) in index.blocks.iter().enumerate() {
                    let end = r.offset.checked_add(r.record_len as u64);
                    if r.offset < prev_end || end.is_none_or(|e| e > body.end) {
                        return Err(Error::corrupt(
                            r.offset,
                            format!("block {i} lies out of order or outside the body"),
                        ));
                    }
                    if r.plain_len == 0
                        || r.plain_len > header.block_size
                        || r.record_len - BLOCK_HEADER_LEN as u32 > r.plain_len
                    {
                        return Err(Error::corrupt(
                            r.offset,
                            format!("block {i}: lengths out of range in the index"),
                        ));
                    }
                    prev_end = end.unwrap_or(body.end);
                }
                check_tiling(b, &index, &catalog, body.clone())?;
            }
            Framing::CompactBlocks | Framing::Compact => {
                // The rows hold no offsets: the tiling places the blocks, and checks
                // itself and record order on the way (FORMAT.md §8.1).
                let data_of: Vec<Option<u64>> = catalog
                    .entries()
                    .iter()
                    .map(|e| (e.kind == EntryKind::File && e.size > 0).then_some(e.data_start))
                    .collect();
                place_blocks(
                    &mut index,
                    &entry_lens,
                    &data_of,
                    body.clone(),
                    header.block_size,
                )?;
            }
        }
        for r in &index.blocks {
            starts.push(data);
            data += r.plain_len as u64;
        }
        starts.push(data);
        if catalog.data_end() > data {
            return Err(Error::corrupt(
                footer.index_offset,
                "file data extends past the last block",
            ));
        }
        Ok(Archive {
            bytes,
            header,
            catalog,
            blocks: index.blocks,
            starts,
            decoded: AtomicU64::new(0),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn entries(&self) -> &[Entry] {
        self.catalog.entries()
    }

    pub fn find(&self, path: &[u8]) -> Option<usize> {
        self.catalog.find(path)
    }

    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    pub fn blocks(&self) -> &[BlockRef] {
        &self.blocks
    }

    pub fn archive_len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// Length of the data stream (all blocks).
    pub fn data_len(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    /// Data-stream offset where block `i` starts.
    pub fn block_start(&self, i: usize) -> u64 {
        self.starts[i]
    }

    /// Number of blocks decoded through this handle so far.
    pub fn blocks_decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// Whether decoding needs a model, and whether `model` is the one pinned.
    pub fn check_model(&self, model: Option<&dyn Model>) -> Result<()> {
        if self.header.pin.kind == ModelKind::None {
            return Ok(());
        }
        let expected = || {
            format!(
                "{} (sha256 {}, {} bytes)",
                self.header.model_name,
                self.header.pin.sha256_hex(),
                self.header.pin.size
            )
        };
        match model {
            None => Err(Error::ModelMismatch {
                expected: expected(),
                found: "no model was loaded".into(),
            }),
            Some(m) if !m.pin().matches(&self.header.pin) => {
                let p = m.pin();
                Err(Error::ModelMismatch {
                    expected: expected(),
                    found: format!(
                        "the model loaded differs (sha256 {}, settings {:?})",
                        p.sha256_hex(),
                        p
                    ),
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// How this archive's block records are framed.
    pub fn framing(&self) -> Framing {
        self.header.framing
    }

    /// Bytes the framing of this archive's records takes in `framing`: every block header
    /// and index row, and every entry record (FORMAT.md §6, §6.1, §7, §7.1, §8, §8.1).
    /// Everything else (header, payloads, the index's fixed part and entry offsets, footer)
    /// is the same in every framing, so the difference of two calls is exactly what
    /// re-framing the archive would change.
    pub fn framing_bytes(&self, framing: Framing) -> Result<u64> {
        let mut n: u64 = (self.catalog.entries().iter())
            .map(|e| e.encode_framed(framing).len() as u64)
            .sum();
        for i in 0..self.blocks.len() {
            let h = self.block(i)?.header;
            let record = h.record_len(framing) as u64;
            let row = match framing {
                Framing::Classic => crate::format::INDEX_BLOCK_ROW,
                Framing::CompactBlocks | Framing::Compact => compact::row_len(&BlockRef {
                    offset: 0,
                    plain_len: h.plain_len,
                    record_len: record as u32,
                }),
            };
            n += record - h.coded_len as u64 + row as u64;
        }
        Ok(n)
    }

    /// Header and payload of block `i`, checked against the index (and, compact, against
    /// the record CRC, FORMAT.md §7.1).
    pub fn block(&self, i: usize) -> Result<BlockRefData<'_>> {
        let r = self.blocks[i];
        let b = self.bytes.as_slice();
        let disagree = || {
            Error::corrupt(
                r.offset,
                format!("block {i}: header disagrees with the index"),
            )
        };
        match self.header.framing {
            Framing::Classic => {
                let h = BlockHeader::decode(&b[r.offset as usize..], r.offset, &self.header)?;
                if h.plain_len != r.plain_len || h.record_len(Framing::Classic) != r.record_len {
                    return Err(disagree());
                }
                let start = r.offset as usize + BLOCK_HEADER_LEN;
                Ok(BlockRefData {
                    number: i as u64,
                    offset: r.offset,
                    header: h,
                    payload: &b[start..start + h.coded_len as usize],
                })
            }
            Framing::CompactBlocks | Framing::Compact => {
                // The record lies within the body (the index placed it there).
                let rec = &b[r.offset as usize..r.end() as usize];
                let (mut h, hlen, stored) =
                    BlockHeader::decode_compact(rec, r.offset, &self.header)?;
                if h.plain_len != r.plain_len
                    || hlen as u64 + h.coded_len as u64 != rec.len() as u64
                {
                    return Err(disagree());
                }
                let payload = &rec[hlen..];
                h.coded_crc = crc32fast::hash(payload);
                compact::check_record_crc(
                    &rec[..hlen - 4],
                    h.coded_crc,
                    h.coded_len,
                    stored,
                    r.offset,
                    i as u64,
                )?;
                Ok(BlockRefData {
                    number: i as u64,
                    offset: r.offset,
                    header: h,
                    payload,
                })
            }
        }
    }

    /// Decodes blocks `range` (`width` model blocks in lockstep); one result per block.
    pub fn decode_blocks(
        &self,
        model: Option<&dyn Model>,
        range: Range<usize>,
        width: usize,
    ) -> Result<Vec<Result<Vec<u8>>>> {
        self.decode_blocks_with(&mut Lockstep::new(model, width), range)
    }

    /// [`Self::decode_blocks`] with a lockstep context kept by the caller across calls.
    pub fn decode_blocks_with(
        &self,
        ls: &mut Lockstep<'_>,
        range: Range<usize>,
    ) -> Result<Vec<Result<Vec<u8>>>> {
        // A block that diverges names the machine this archive says it was written on.
        ls.set_writer(&self.header);
        let mut refs = Vec::with_capacity(range.len());
        let mut early: Vec<Option<Error>> = Vec::with_capacity(range.len());
        for i in range.clone() {
            match self.block(i) {
                Ok(r) => {
                    refs.push(r);
                    early.push(None);
                }
                Err(e) => early.push(Some(e)),
            }
        }
        self.decoded.fetch_add(refs.len() as u64, Ordering::Relaxed);
        let mut decoded = decode_with(ls, &refs)?.into_iter();
        Ok(early
            .into_iter()
            .map(|e| match e {
                Some(e) => Err(e),
                None => decoded.next().expect("one result per block"),
            })
            .collect())
    }

    /// Blocks that hold data-stream bytes `[start, end)`.
    pub fn blocks_covering(&self, start: u64, end: u64) -> Range<usize> {
        if start >= end {
            return 0..0;
        }
        let first = self
            .starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let last = self
            .starts
            .partition_point(|&s| s < end)
            .min(self.blocks.len());
        first..last
    }

    /// Reads `len` bytes at `offset` of file entry `idx` (clamped to the file), decoding only
    /// the blocks that cover them.
    pub fn read(
        &self,
        model: Option<&dyn Model>,
        idx: usize,
        offset: u64,
        len: u64,
        width: usize,
    ) -> Result<Vec<u8>> {
        let e = self.file_entry(idx)?;
        let start = e.data_start + offset.min(e.size);
        let end = e.data_start + offset.saturating_add(len).min(e.size);
        let range = self.blocks_covering(start, end);
        let mut out = Vec::with_capacity((end - start) as usize);
        let first = range.start;
        for (k, r) in self
            .decode_blocks(model, range, width)?
            .into_iter()
            .enumerate()
        {
            let plain = r?;
            let bstart = self.starts[first + k];
            let lo = start.max(bstart) - bstart;
            let hi = end.min(bstart + plain.len() as u64) - bstart;
            out.extend_from_slice(&plain[lo as usize..hi as usize]);
        }
        Ok(out)
    }

    /// The file entry `idx`, following a hard link to its target.
    pub fn file_entry(&self, idx: usize) -> Result<&Entry> {
        let e = &self.entries()[idx];
        match e.kind {
            EntryKind::File => Ok(e),
            EntryKind::HardLink => {
                let t = self
                    .find(&e.link)
                    .expect("catalog checked hard-link targets");
                Ok(&self.entries()[t])
            }
            _ => Err(Error::usage(format!(
                "{:?} is not a regular file",
                String::from_utf8_lossy(&e.path)
            ))),
        }
    }
}

/// The records listed by the index must tile the body exactly, in stream order: no gaps, no
/// overlaps, nothing unlisted. And, as for a stream reader, a file's entry record must come
/// before every block holding its data.
fn check_tiling(b: &[u8], index: &Index, catalog: &Catalog, body: Range<u64>) -> Result<()> {
    // (start, end, Some(entry number) | None for a block, plain_len)
    let mut spans: Vec<(u64, u64, Option<usize>, u64)> =
        Vec::with_capacity(index.entries.len() + index.blocks.len());
    for (i, &off) in index.entries.iter().enumerate() {
        let n = Entry::peek_len(&b[off as usize..body.end as usize], off)? as u64;
        spans.push((off, off + n, Some(i), 0));
    }
    for r in &index.blocks {
        spans.push((r.offset, r.end(), None, r.plain_len as u64));
    }
    spans.sort_unstable_by_key(|s| s.0);
    let mut at = body.start;
    let mut data_seen = 0u64;
    for (start, end, entry, plain) in spans {
        if start != at {
            return Err(Error::corrupt(
                at,
                "records do not tile the archive body (gap, overlap or unlisted record)",
            ));
        }
        at = end;
        match entry {
            Some(i) => {
                let e = &catalog.entries()[i];
                if e.kind == EntryKind::File && e.size > 0 && e.data_start < data_seen {
                    return Err(Error::corrupt(
                        start,
                        "entry record comes after a block holding its data",
                    ));
                }
            }
            None => data_seen += plain,
        }
    }
    if at != body.end {
        return Err(Error::corrupt(at, "records do not reach the index"));
    }
    Ok(())
}
