//! Reading an archive front to back from a pipe, without seeking.
//!
//! Records are read in stream order and checked as they come; model blocks are collected
//! `width` at a time and decoded in lockstep; decoded bytes go to the [`Extractor`]. At the
//! end the index must describe exactly what was read, the footer must close it, and nothing
//! may follow: a truncated stream is an error, never a silent success.

use std::io::Read;

use crate::codec::{decode_with, BlockRefData, Lockstep};
use crate::error::{Error, Result};
use crate::format::{compact, compact_entry};
use crate::format::{
    BlockHeader, BlockRef, Codec, Entry, Footer, Framing, Header, Index, BLOCK_HEADER_LEN,
    BLOCK_MAGIC, ENTRY_MAGIC, FOOTER_LEN, INDEX_MAGIC,
};
use crate::model::Model;

use super::extract::Extractor;
use super::Catalog;

struct Input<R> {
    r: R,
    pos: u64,
}

impl<R: Read> Input<R> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.r.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(Error::corrupt(
                        self.pos + done as u64,
                        format!("stream ended inside {what}: the archive is truncated"),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("archive input", e)),
            }
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn at_eof(&mut self) -> Result<bool> {
        let mut b = [0u8; 1];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return Ok(true),
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("archive input", e)),
            }
        }
    }
}

struct Queued {
    number: u64,
    offset: u64,
    header: BlockHeader,
    payload: Vec<u8>,
}

/// What a stream extraction did.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamStats {
    pub entries: u64,
    pub blocks: u64,
    pub files: u64,
    pub bytes: u64,
}

/// The model to decode with and where to extract, chosen once the header is known.
pub type Setup<'m> = (Option<Box<dyn Model + 'm>>, Extractor);

/// Extracts the archive read from `r`. `setup` is called once with the header: it loads and
/// checks the model and only then creates the extractor, so a wrong model writes nothing.
/// `width` blocks are decoded in lockstep (`None`: the model's default).
pub fn extract_stream<'m, R: Read>(
    r: R,
    setup: impl FnOnce(&Header) -> Result<Setup<'m>>,
    width: Option<usize>,
) -> Result<StreamStats> {
    let mut inp = Input { r, pos: 0 };
    let mut head = vec![0u8; 16];
    inp.exact(&mut head, "the header")?;
    let len = Header::peek_len(&head)?;
    head.resize(len, 0);
    inp.exact(&mut head[16..], "the header")?;
    let (header, _) = Header::decode(&head)?;
    let (model, mut ex) = setup(&header)?;
    let model = model.as_deref();
    if let Some(m) = model {
        if !m.pin().matches(&header.pin) {
            return Err(Error::ModelMismatch {
                expected: format!("{} (sha256 {})", header.model_name, header.pin.sha256_hex()),
                found: format!("the model loaded has sha256 {}", m.pin().sha256_hex()),
            });
        }
    }

    let mut catalog = Catalog::default();
    let mut entry_offsets = Vec::new();
    let mut blocks: Vec<BlockRef> = Vec::new();
    let mut queue: Vec<Queued> = Vec::new();
    let mut model_queued = 0usize;
    // Data-stream offset where the next block read will start, and where the next block
    // handed to the extractor starts.
    let mut seen = 0u64;
    let mut routed = 0u64;
    let mut stats = StreamStats::default();

    let width = width.unwrap_or_else(|| model.map_or(1, |m| m.default_width()));
    let mut ls = Lockstep::new(model, width);
    ls.set_writer(&header);
    let mut flush = |queue: &mut Vec<Queued>, routed: &mut u64, ex: &mut Extractor| -> Result<()> {
        if queue.is_empty() {
            return Ok(());
        }
        let refs: Vec<BlockRefData> = queue
            .iter()
            .map(|q| BlockRefData {
                number: q.number,
                offset: q.offset,
                header: q.header,
                payload: &q.payload,
            })
            .collect();
        for res in decode_with(&mut ls, &refs)? {
            let plain = res?;
            ex.data(*routed, &plain)?;
            *routed += plain.len() as u64;
        }
        queue.clear();
        Ok(())
    };

    let compact = header.framing.compact_blocks();
    let compact_entries = header.framing.compact_entries();
    loop {
        let at = inp.pos;
        let mut magic = [0u8; 4];
        // Compact block records start with their codec byte, every other record with 'L'
        // (FORMAT.md §7.1): one byte tells them apart.
        inp.exact(&mut magic[..1], "the record stream (no index was found)")?;
        // A compact entry record starts with its tag 'E' (§6.1).
        let entry_tag = compact_entries && magic[0] == compact_entry::TAG;
        let block = if entry_tag {
            None
        } else if compact && magic[0] != b'L' {
            Some(read_compact_block(
                &mut inp,
                magic[0],
                at,
                &header,
                blocks.len() as u64,
            )?)
        } else {
            inp.exact(&mut magic[1..], "the record stream (no index was found)")?;
            if magic == BLOCK_MAGIC && !compact {
                let mut hb = [0u8; BLOCK_HEADER_LEN];
                hb[..4].copy_from_slice(&magic);
                inp.exact(&mut hb[4..], "a block header")?;
                let h = BlockHeader::decode(&hb, at, &header)?;
                let mut payload = vec![0u8; h.coded_len as usize];
                inp.exact(&mut payload, "a block payload")?;
                Some((h, payload))
            } else {
                None
            }
        };
        if let Some((h, payload)) = block {
            blocks.push(BlockRef {
                offset: if compact { 0 } else { at },
                plain_len: h.plain_len,
                record_len: (inp.pos - at) as u32,
            });
            seen += h.plain_len as u64;
            if h.codec == Codec::Model {
                model_queued += 1;
            }
            queue.push(Queued {
                number: blocks.len() as u64 - 1,
                offset: at,
                header: h,
                payload,
            });
            stats.blocks += 1;
            if model_queued >= width.max(1) || (model_queued == 0 && queue.len() >= 64) {
                flush(&mut queue, &mut routed, &mut ex)?;
                model_queued = 0;
            }
        } else if entry_tag || magic == ENTRY_MAGIC && !compact_entries {
            let (have, peek) = (
                if entry_tag { 1 } else { 4 },
                Entry::peek_bytes(header.framing),
            );
            let mut rec = magic[..have].to_vec();
            rec.resize(peek, 0);
            inp.exact(&mut rec[have..], "an entry record")?;
            let n = Entry::peek_len_framed(&rec, at, header.framing)?;
            rec.resize(n, 0);
            inp.exact(&mut rec[peek..], "an entry record")?;
            let (e, _) = Entry::decode_framed(&rec, at, header.framing)?;
            if e.kind == crate::format::EntryKind::File && e.size > 0 && e.data_start < seen {
                return Err(Error::corrupt(
                    at,
                    "entry record comes after a block holding its data",
                ));
            }
            catalog.push(e.clone(), at)?;
            ex.begin(&e)?;
            entry_offsets.push(at);
            stats.entries += 1;
        } else if magic == INDEX_MAGIC {
            flush(&mut queue, &mut routed, &mut ex)?;
            // The index must list exactly the records read, so its length is known.
            let expect = Index {
                entries: entry_offsets.clone(),
                blocks: blocks.clone(),
            };
            let expect_len = match header.framing {
                Framing::Classic => expect.encode().len(),
                Framing::CompactBlocks | Framing::Compact => {
                    compact::index_len(expect.entries.len(), &expect.blocks)
                }
            };
            let mut ib = magic.to_vec();
            ib.resize(expect_len, 0);
            inp.exact(&mut ib[4..], "the index")?;
            let index = Index::decode_framed(&ib, at, header.framing)?;
            if index.entries != entry_offsets || index.blocks != blocks {
                return Err(Error::corrupt(
                    at,
                    "the index does not describe the records that precede it",
                ));
            }
            let mut fb = [0u8; FOOTER_LEN];
            inp.exact(&mut fb, "the footer")?;
            let footer = Footer::decode(&fb, inp.pos)?;
            if footer.index_offset != at {
                return Err(Error::corrupt(
                    inp.pos - FOOTER_LEN as u64,
                    "footer does not point at the index",
                ));
            }
            if !inp.at_eof()? {
                return Err(Error::corrupt(inp.pos, "trailing bytes after the footer"));
            }
            if catalog.data_end() > seen {
                return Err(Error::corrupt(at, "file data extends past the last block"));
            }
            let (files, bytes) = ex.finish()?;
            stats.files = files;
            stats.bytes = bytes;
            return Ok(stats);
        } else {
            return Err(Error::corrupt(
                at,
                format!("unknown record magic {magic:02x?}"),
            ));
        }
    }
}

/// Reads the rest of a compact block record whose codec byte `first` was read at `at`:
/// the header, a byte at a time until [`compact::header_len`] knows its length (so nothing
/// past it is read), then the payload, bounded by the checked header; then the record CRC.
fn read_compact_block<R: Read>(
    inp: &mut Input<R>,
    first: u8,
    at: u64,
    header: &Header,
    number: u64,
) -> Result<(BlockHeader, Vec<u8>)> {
    let mut hb = vec![first];
    let hlen = loop {
        match compact::header_len(&hb, at)? {
            Some(n) => break n,
            None => {
                let mut c = [0u8; 1];
                inp.exact(&mut c, "a block header")?;
                hb.push(c[0]);
            }
        }
    };
    let have = hb.len();
    hb.resize(hlen, 0);
    inp.exact(&mut hb[have..], "a block header")?;
    let (mut h, _, stored) = BlockHeader::decode_compact(&hb, at, header)?;
    let mut payload = vec![0u8; h.coded_len as usize];
    inp.exact(&mut payload, "a block payload")?;
    h.coded_crc = crc32fast::hash(&payload);
    compact::check_record_crc(
        &hb[..hlen - 4],
        h.coded_crc,
        h.coded_len,
        stored,
        at,
        number,
    )?;
    Ok((h, payload))
}
