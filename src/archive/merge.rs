//! Joining the parts of `lmz pack --shard K/N` into the archive one `lmz pack` writes
//! (FORMAT.md §21.4), without decoding or re-coding anything.
//!
//! Every check that needs only the parts' headers and footers runs before a byte is
//! written: the set of shards (none missing, none twice), one plan, one model, one block
//! size, one zstd level. Then the archive streams out: part 0's archive header, every part's
//! body in shard order (each record's CRCs checked as it passes: entry records, block
//! headers, payloads; the readers' entry rules applied; the plan hash recomputed from the
//! records themselves), and an index made of the parts' indexes with their offsets moved.
//! Memory stays constant in the size of the parts: one buffer, and a few numbers per part
//! (plus, as for any writer, the entry list the entry rules are checked on).
//!
//! A failure at any point is an error; what was written by then is no archive, and the
//! caller discards it (the CLI writes to a temporary file and renames it only on success).

use std::io::{BufRead, Read, Seek, SeekFrom, Write};

use sha2::Digest;

use crate::error::{Error, Result};
use crate::format::part::{PartFooter, PartHeader, PlanHasher, PART_FOOTER_LEN};
use crate::format::{compact, compact_entry};
use crate::format::{
    BlockHeader, BlockRef, Entry, EntryKind, Footer, Framing, ModelKind, BLOCK_HEADER_LEN,
    BLOCK_MAGIC, ENTRY_MAGIC, INDEX_FIXED_LEN, INDEX_MAGIC,
};

use super::Catalog;

/// What a merge wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    pub parts: usize,
    pub entries: u64,
    pub blocks: u64,
    pub archive_bytes: u64,
}

/// A part as found by its header, footer and index counts.
struct Opened<R> {
    name: String,
    r: R,
    head: PartHeader,
    head_len: u64,
    foot: PartFooter,
    entries: u64,
    blocks: u64,
}

impl<R> Opened<R> {
    fn err(&self, e: Error) -> Error {
        in_part(&self.name, e)
    }

    fn body_len(&self) -> u64 {
        self.foot.index_offset - self.head_len
    }
}

fn in_part(name: &str, e: Error) -> Error {
    Error::InPart {
        part: name.into(),
        source: Box::new(e),
    }
}

fn io(name: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return in_part(name, Error::corrupt(0, "part truncated"));
    }
    Error::io(name, e)
}

fn open<R: Read + Seek>(name: String, mut r: R) -> Result<Opened<R>> {
    let io = |e| io(&name, e);
    let len = r.seek(SeekFrom::End(0)).map_err(io)?;
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut fixed = [0u8; 16];
    let got = read_up_to(&mut r, &mut fixed).map_err(io)?;
    let hl = PartHeader::peek_len(&fixed[..got]).map_err(|e| in_part(&name, e))?;
    let mut hb = fixed[..got].to_vec();
    hb.resize(hl.min(len as usize).max(got), 0);
    r.read_exact(&mut hb[got..]).map_err(io)?;
    let (head, head_len) = PartHeader::decode(&hb).map_err(|e| in_part(&name, e))?;
    let head_len = head_len as u64;
    if len < head_len + PART_FOOTER_LEN as u64 {
        return Err(in_part(
            &name,
            Error::corrupt(len, "part too short for a footer"),
        ));
    }
    let mut fb = [0u8; PART_FOOTER_LEN];
    r.seek(SeekFrom::Start(len - PART_FOOTER_LEN as u64))
        .map_err(io)?;
    r.read_exact(&mut fb).map_err(io)?;
    let foot = PartFooter::decode(&fb, len, head_len).map_err(|e| in_part(&name, e))?;
    // The index's counts, bounded by its length before anything relies on them.
    let at = foot.index_offset;
    if foot.index_len < (INDEX_FIXED_LEN + 4) as u64 {
        return Err(in_part(&name, Error::corrupt(at, "part index too short")));
    }
    let mut ib = [0u8; INDEX_FIXED_LEN];
    r.seek(SeekFrom::Start(at)).map_err(io)?;
    r.read_exact(&mut ib).map_err(io)?;
    if ib[..4] != INDEX_MAGIC {
        return Err(in_part(&name, Error::corrupt(at, "bad part index magic")));
    }
    if ib[4..8] != [0; 4] {
        return Err(in_part(
            &name,
            Error::Unsupported {
                offset: at + 4,
                detail: "part index reserved bytes set".into(),
            },
        ));
    }
    let entries = u64::from_le_bytes(ib[8..16].try_into().expect("8 bytes"));
    let blocks = u64::from_le_bytes(ib[16..24].try_into().expect("8 bytes"));
    let fits = match head.header.framing {
        Framing::Classic => {
            entries as u128 * 8 + blocks as u128 * 16 + (INDEX_FIXED_LEN + 4) as u128
                == foot.index_len as u128
        }
        Framing::CompactBlocks | Framing::Compact => {
            compact::index_len_fits(entries, blocks, foot.index_len)
        }
    };
    if !fits {
        return Err(in_part(
            &name,
            Error::corrupt(at + 8, "part index counts disagree with its length"),
        ));
    }
    Ok(Opened {
        name,
        r,
        head,
        head_len,
        foot,
        entries,
        blocks,
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn disagree(detail: String) -> Error {
    Error::PartsDisagree { detail }
}

/// Puts the parts in shard order, after checking they are one complete set of one plan.
fn check_set<R>(mut parts: Vec<Opened<R>>) -> Result<Vec<Opened<R>>> {
    if parts.is_empty() {
        return Err(disagree("no parts given".into()));
    }
    let n = parts[0].head.shard_count;
    for p in &parts {
        if p.head.shard_count != n {
            return Err(disagree(format!(
                "{} is shard {} of {}, but {} is shard {} of {}",
                parts[0].name, parts[0].head.shard, n, p.name, p.head.shard, p.head.shard_count
            )));
        }
    }
    parts.sort_by_key(|p| p.head.shard);
    for w in parts.windows(2) {
        if w[0].head.shard == w[1].head.shard {
            return Err(disagree(format!(
                "shard {} of {n} given twice: {} and {}",
                w[0].head.shard, w[0].name, w[1].name
            )));
        }
    }
    if parts.len() != n as usize {
        let have: Vec<u32> = parts.iter().map(|p| p.head.shard).collect();
        let missing: Vec<String> = (0..n)
            .filter(|k| !have.contains(k))
            .take(20)
            .map(|k| k.to_string())
            .collect();
        return Err(disagree(format!(
            "missing shard{} {} of {n} (shards count from 0)",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        )));
    }
    let first = &parts[0];
    let h0 = &first.head.header;
    for p in &parts[1..] {
        let h = &p.head.header;
        if h.block_size != h0.block_size || p.head.zstd_level != first.head.zstd_level {
            return Err(disagree(format!(
                "{} was packed with --block-size {} --zstd-level {}, {} with --block-size {} \
                 --zstd-level {}",
                first.name,
                h0.block_size,
                first.head.zstd_level,
                p.name,
                h.block_size,
                p.head.zstd_level
            )));
        }
        if h.framing != h0.framing {
            return Err(disagree(format!(
                "{} was packed with --framing {}, {} with --framing {}",
                first.name,
                h0.framing.name(),
                p.name,
                h.framing.name()
            )));
        }
        if !h.pin.matches(&h0.pin) {
            return Err(disagree(format!(
                "{} pins model {} (kind {}), {} pins {} (kind {}): every shard must run the \
                 same model and engine",
                first.name,
                h0.pin.sha256_hex(),
                h0.pin.kind as u8,
                p.name,
                h.pin.sha256_hex(),
                h.pin.kind as u8
            )));
        }
        if h.primer != h0.primer {
            return Err(disagree(format!(
                "{} and {} were coded after different archive primers (--primer chose them \
                 from different input data)",
                first.name, p.name
            )));
        }
        if h.bias_rate != h0.bias_rate {
            return Err(disagree(format!(
                "{} was coded under adaptive bias rate {}, {} under {} (--bias-rate differs)",
                first.name, h0.bias_rate, p.name, h.bias_rate
            )));
        }
        // llama.cpp's results depend on the machine: its blocks decode only where they were
        // written, so all of one archive's must come from one class of machine.
        if h0.pin.kind == ModelKind::Llama
            && (h.backend != h0.backend
                || h.engine_version != h0.engine_version
                || h.cpu_features != h0.cpu_features)
        {
            return Err(disagree(format!(
                "{} was coded by llama.cpp on {} ({}, {}), {} on {} ({}, {}): such blocks \
                 decode only on the writer's class of machine, so all shards must run on one \
                 class (or use --engine portable)",
                first.name,
                h0.backend,
                h0.engine_version,
                h0.cpu_features,
                p.name,
                h.backend,
                h.engine_version,
                h.cpu_features
            )));
        }
        if p.foot.plan != first.foot.plan {
            return Err(disagree(format!(
                "{} and {} were planned from different inputs (plans {} and {}): the files \
                 packed, their sizes or mtimes, or the options differ between the shards. \
                 Did the input change while the shards ran? Pack every shard again",
                first.name,
                p.name,
                &crate::format::hex(&first.foot.plan)[..16],
                &crate::format::hex(&p.foot.plan)[..16]
            )));
        }
    }
    // Where each part's records lie in the archive: right after the previous part's.
    let (mut e, mut b) = (0u64, 0u64);
    for p in &parts {
        if p.foot.first_entry != e
            || p.foot.first_block != b
            || p.foot.entry_total != first.foot.entry_total
            || p.foot.block_total != first.foot.block_total
        {
            return Err(p.err(Error::corrupt(
                p.foot.index_offset + p.foot.index_len + 48,
                "its records do not follow the previous shard's",
            )));
        }
        e += p.entries;
        b += p.blocks;
    }
    if e != first.foot.entry_total || b != first.foot.block_total {
        return Err(disagree(format!(
            "the parts hold {e} entry and {b} block records, the plan {} and {}",
            first.foot.entry_total, first.foot.block_total
        )));
    }
    Ok(parts)
}

/// Digest of a sequence of record positions (entry offsets, block rows), to compare the
/// records a body holds with the rows its index lists without keeping either.
#[derive(Default)]
struct Rows {
    entries: sha2::Sha256,
    blocks: sha2::Sha256,
    /// Bytes of the block rows (compact rows vary in length).
    block_bytes: u64,
}

/// A part's progress through the merge.
struct Passed {
    rows: Rows,
    /// Archive offset of the part's body.
    at: u64,
}

/// Merges `parts` (name, reader) into `out`; see the module documentation. Parts may come in
/// any order.
pub fn merge<R: Read + Seek, W: Write>(parts: Vec<(String, R)>, mut out: W) -> Result<MergeStats> {
    let opened = parts
        .into_iter()
        .map(|(name, r)| open(name, r))
        .collect::<Result<Vec<_>>>()?;
    let mut parts = check_set(opened)?;
    let header = parts[0].head.header.clone();
    let framing = header.framing;
    let compact = framing.compact_blocks();
    let header_bytes = parts[0].head.header_bytes.clone();
    let wr = |e| Error::io("merged archive", e);
    out.write_all(&header_bytes).map_err(wr)?;
    let mut pos = header_bytes.len() as u64;
    let mut plan = PlanHasher::new(&header, parts[0].head.zstd_level);
    let mut catalog = Catalog::default();
    let mut data_len = 0u64;
    // One entry record at most (8254 bytes, §6; 8263 compact, §6.1).
    let mut buf = vec![0u8; 1 << 14];
    let mut passed = Vec::with_capacity(parts.len());
    for p in &mut parts {
        let at = pos;
        let base = p.head_len;
        let end = p.foot.index_offset;
        p.r.seek(SeekFrom::Start(base))
            .map_err(|e| io(&p.name, e))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, &mut p.r);
        let name = p.name.clone();
        let err = |e| in_part(&name, e);
        let ioe = |e| io(&name, e);
        let mut rows = Rows::default();
        let (mut ne, mut nb) = (0u64, 0u64);
        let mut off = base;
        while off < end {
            let rel = off - base;
            let mut m = [0u8; 8];
            // A compact block record starts with its codec byte, every other with 'L'.
            // A compact entry record (FORMAT.md §6.1) starts with its tag 'E'.
            r.read_exact(&mut m[..1]).map_err(ioe)?;
            let compact_entry = framing.compact_entries() && m[0] == compact_entry::TAG;
            let compact_block = compact && !compact_entry && m[0] != b'L';
            if !compact_block && !compact_entry {
                r.read_exact(&mut m[1..4]).map_err(ioe)?;
            }
            let classic_entry = !framing.compact_entries() && m[..4] == ENTRY_MAGIC;
            if compact_entry || !compact_block && classic_entry {
                let (have, peek) = (
                    if compact_entry { 1 } else { 4 },
                    Entry::peek_bytes(framing),
                );
                r.read_exact(&mut m[have..peek]).map_err(ioe)?;
                let len = Entry::peek_len_framed(&m[..peek], off, framing).map_err(err)?;
                if off + len as u64 > end {
                    return Err(err(Error::corrupt(off, "entry record overruns the body")));
                }
                let rec = &mut buf[..len];
                rec[..peek].copy_from_slice(&m[..peek]);
                r.read_exact(&mut rec[peek..]).map_err(ioe)?;
                let (e, _) = Entry::decode_framed(rec, off, framing).map_err(err)?;
                // Entry before data (FORMAT.md §10.4 rule 5), and the readers' entry rules.
                if e.kind == EntryKind::File && e.size > 0 && e.data_start < data_len {
                    return Err(err(Error::corrupt(
                        off,
                        "entry record after its data's block",
                    )));
                }
                catalog.push(e, off).map_err(err)?;
                plan.entry(rec);
                rows.entries.update(rel.to_le_bytes());
                out.write_all(rec).map_err(wr)?;
                ne += 1;
                off += len as u64;
            } else if compact_block || m[..4] == BLOCK_MAGIC && !compact {
                let (bh, hb, stored) = if compact_block {
                    let mut hb = vec![m[0]];
                    let hlen = loop {
                        match compact::header_len(&hb, off).map_err(err)? {
                            Some(n) => break n,
                            None => {
                                let mut c = [0u8; 1];
                                r.read_exact(&mut c).map_err(ioe)?;
                                hb.push(c[0]);
                            }
                        }
                    };
                    let have = hb.len();
                    hb.resize(hlen, 0);
                    r.read_exact(&mut hb[have..]).map_err(ioe)?;
                    let (bh, _, stored) =
                        BlockHeader::decode_compact(&hb, off, &header).map_err(err)?;
                    (bh, hb, stored)
                } else {
                    let mut hb = vec![0u8; BLOCK_HEADER_LEN];
                    hb[..4].copy_from_slice(&m[..4]);
                    r.read_exact(&mut hb[4..]).map_err(ioe)?;
                    let bh = BlockHeader::decode(&hb, off, &header).map_err(err)?;
                    let stored = bh.coded_crc;
                    (bh, hb, stored)
                };
                let head_len = hb.len() as u64;
                let total = head_len + bh.coded_len as u64;
                if off + total > end {
                    return Err(err(Error::corrupt(off, "block record overruns the body")));
                }
                out.write_all(&hb).map_err(wr)?;
                // Straight from the reader's buffer: the payload is copied once, into the
                // output's.
                let mut crc = crc32fast::Hasher::new();
                let mut left = bh.coded_len as usize;
                while left > 0 {
                    let avail = r.fill_buf().map_err(ioe)?;
                    if avail.is_empty() {
                        return Err(err(Error::corrupt(
                            off,
                            "part truncated in a block payload",
                        )));
                    }
                    let n = left.min(avail.len());
                    crc.update(&avail[..n]);
                    out.write_all(&avail[..n]).map_err(wr)?;
                    r.consume(n);
                    left -= n;
                }
                let payload_crc = crc.finalize();
                if compact_block {
                    compact::check_record_crc(
                        &hb[..hb.len() - 4],
                        payload_crc,
                        bh.coded_len,
                        stored,
                        off,
                        nb,
                    )
                    .map_err(err)?;
                } else if payload_crc != bh.coded_crc {
                    return Err(err(Error::corrupt(
                        off + BLOCK_HEADER_LEN as u64,
                        format!("block payload CRC32 mismatch (the part's block {nb})"),
                    )));
                }
                plan.block(bh.plain_len);
                if compact {
                    let mut row = Vec::with_capacity(10);
                    compact::put_row(
                        &mut row,
                        &BlockRef {
                            offset: 0,
                            plain_len: bh.plain_len,
                            record_len: total as u32,
                        },
                    );
                    rows.block_bytes += row.len() as u64;
                    rows.blocks.update(row);
                } else {
                    let mut row = [0u8; 16];
                    row[..8].copy_from_slice(&rel.to_le_bytes());
                    row[8..12].copy_from_slice(&bh.plain_len.to_le_bytes());
                    row[12..].copy_from_slice(&bh.coded_len.to_le_bytes());
                    rows.blocks.update(row);
                }
                data_len += bh.plain_len as u64;
                nb += 1;
                off += total;
            } else {
                return Err(err(Error::corrupt(
                    off,
                    "unknown record magic in the part's body",
                )));
            }
        }
        if ne != p.entries || nb != p.blocks {
            return Err(err(Error::corrupt(
                p.foot.index_offset,
                format!(
                    "the body holds {ne} entry and {nb} block records, its index lists {} and {}",
                    p.entries, p.blocks
                ),
            )));
        }
        pos += p.body_len();
        passed.push(Passed { rows, at });
    }
    if plan.finish() != parts[0].foot.plan {
        return Err(disagree(
            "the records of the parts do not make the plan they name (parts of different \
             packs, or damaged)"
                .into(),
        ));
    }
    if data_len < catalog.data_end() {
        return Err(disagree("file data extends past the last block".into()));
    }
    // The index: every part's entry offsets, then every part's block rows, moved to where
    // the part's body now lies; each part's index checked against its body and its CRC.
    let index_offset = pos;
    let (te, tb) = (parts[0].foot.entry_total, parts[0].foot.block_total);
    let mut ix = crc32fast::Hasher::new();
    let put = |b: &[u8], out: &mut W, ix: &mut crc32fast::Hasher| -> Result<()> {
        ix.update(b);
        out.write_all(b).map_err(wr)
    };
    let mut head = Vec::with_capacity(INDEX_FIXED_LEN);
    head.extend_from_slice(&INDEX_MAGIC);
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(&te.to_le_bytes());
    head.extend_from_slice(&tb.to_le_bytes());
    put(&head, &mut out, &mut ix)?;
    let mut own: Vec<crc32fast::Hasher> = Vec::with_capacity(parts.len());
    for (p, done) in parts.iter_mut().zip(&passed) {
        let mut c = crc32fast::Hasher::new();
        let mut fixed = [0u8; INDEX_FIXED_LEN];
        p.r.seek(SeekFrom::Start(p.foot.index_offset))
            .map_err(|e| io(&p.name, e))?;
        let mut r = std::io::BufReader::with_capacity(1 << 16, &mut p.r);
        r.read_exact(&mut fixed).map_err(|e| io(&p.name, e))?;
        c.update(&fixed);
        let mut seen = sha2::Sha256::new();
        for _ in 0..p.entries {
            let mut v = [0u8; 8];
            r.read_exact(&mut v).map_err(|e| io(&p.name, e))?;
            c.update(&v);
            seen.update(v);
            put(
                &(u64::from_le_bytes(v) + done.at).to_le_bytes(),
                &mut out,
                &mut ix,
            )?;
        }
        if seen.finalize() != done.rows.entries.clone().finalize() {
            return Err(p.err(Error::corrupt(
                p.foot.index_offset,
                "part index's entry offsets are not where its entry records lie",
            )));
        }
        own.push(c);
    }
    for ((p, done), mut c) in parts.iter_mut().zip(&passed).zip(own) {
        p.r.seek(SeekFrom::Start(
            p.foot.index_offset + INDEX_FIXED_LEN as u64 + 8 * p.entries,
        ))
        .map_err(|e| io(&p.name, e))?;
        let mut r = std::io::BufReader::with_capacity(1 << 16, &mut p.r);
        let mut seen = sha2::Sha256::new();
        if compact {
            // Compact rows hold no offsets: they are copied as they are, and must be the
            // rows of the body's records, byte for byte (so they parse as the reader will).
            let mut left = p.foot.index_len - INDEX_FIXED_LEN as u64 - 8 * p.entries - 4;
            if left != done.rows.block_bytes {
                return Err(p.err(Error::corrupt(
                    p.foot.index_offset,
                    "part index's block rows are not the block records of its body",
                )));
            }
            let mut chunk = [0u8; 4096];
            while left > 0 {
                let n = (left as usize).min(chunk.len());
                r.read_exact(&mut chunk[..n]).map_err(|e| io(&p.name, e))?;
                c.update(&chunk[..n]);
                seen.update(&chunk[..n]);
                put(&chunk[..n], &mut out, &mut ix)?;
                left -= n as u64;
            }
        } else {
            for _ in 0..p.blocks {
                let mut row = [0u8; 16];
                r.read_exact(&mut row).map_err(|e| io(&p.name, e))?;
                c.update(&row);
                seen.update(row);
                let o = u64::from_le_bytes(row[..8].try_into().expect("8 bytes")) + done.at;
                row[..8].copy_from_slice(&o.to_le_bytes());
                put(&row, &mut out, &mut ix)?;
            }
        }
        let mut stored = [0u8; 4];
        r.read_exact(&mut stored).map_err(|e| io(&p.name, e))?;
        if c.finalize() != u32::from_le_bytes(stored) {
            return Err(p.err(Error::corrupt(
                p.foot.index_offset,
                "part index CRC32 mismatch",
            )));
        }
        if seen.finalize() != done.rows.blocks.clone().finalize() {
            return Err(p.err(Error::corrupt(
                p.foot.index_offset,
                "part index's block rows are not the block records of its body",
            )));
        }
    }
    let index_len = if compact {
        INDEX_FIXED_LEN as u64 + 8 * te + passed.iter().map(|d| d.rows.block_bytes).sum::<u64>() + 4
    } else {
        INDEX_FIXED_LEN as u64 + 8 * te + 16 * tb + 4
    };
    out.write_all(&ix.finalize().to_le_bytes()).map_err(wr)?;
    out.write_all(
        &Footer {
            index_offset,
            index_len,
        }
        .encode(),
    )
    .map_err(wr)?;
    out.flush().map_err(wr)?;
    Ok(MergeStats {
        parts: parts.len(),
        entries: te,
        blocks: tb,
        archive_bytes: index_offset + index_len + crate::format::FOOTER_LEN as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{Archive, Meta, Shard, Writer, WriterOptions};
    use crate::model::{order1::Order1, Model};
    use std::io::Cursor;

    enum It {
        Dir(&'static str),
        File(&'static str, Vec<u8>),
        Link(&'static str, &'static str),
        Hard(&'static str, &'static str),
    }

    fn text(seed: u32, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"etaoin shrdlu cmfwyp "[(x >> 16) as usize % 21]
            })
            .collect()
    }

    fn items() -> Vec<It> {
        vec![
            It::Dir("d"),
            It::File("d/a", text(1, 300)),
            It::File("d/empty", Vec::new()),
            It::Dir("d/e"),
            It::File("d/e/big", text(2, 5000)),
            It::File("d/e/c", text(3, 100)),
            It::File("zeros", vec![0; 700]),
            It::Link("d/l", "../zeros"),
            It::Hard("h", "d/a"),
            It::File("tail", text(4, 1100)),
            It::Dir("z"),
            It::File("z/empty", Vec::new()),
        ]
    }

    fn data_len(items: &[It]) -> u64 {
        items
            .iter()
            .map(|i| match i {
                It::File(_, d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    fn write<W: Write>(mut w: Writer<'_, W>, items: &[It]) -> W {
        let m = Meta {
            mode: 0o644,
            mtime_sec: 1_700_000_000,
            ..Meta::default()
        };
        for i in items {
            match i {
                It::Dir(p) => w.add_dir(p.as_bytes(), m),
                It::File(p, d) => w.add_file(p.as_bytes(), m, d.len() as u64, &mut d.as_slice()),
                It::Link(p, t) => w.add_symlink(p.as_bytes(), t.as_bytes(), m),
                It::Hard(p, t) => w.add_hardlink(p.as_bytes(), t.as_bytes(), m),
            }
            .unwrap();
        }
        w.finish().unwrap().0
    }

    fn opts(width: usize) -> WriterOptions {
        WriterOptions {
            block_size: 512,
            width,
            zstd_level: 3,
            framing: Framing::Compact,
            bias_rate: 0,
        }
    }

    fn parts(model: &dyn Model, items: &[It], n: u32) -> Vec<Vec<u8>> {
        parts_framed(model, items, n, Framing::Compact)
    }

    fn parts_framed(model: &dyn Model, items: &[It], n: u32, framing: Framing) -> Vec<Vec<u8>> {
        (0..n)
            .map(|k| {
                let shard = Shard {
                    index: k,
                    count: n,
                    data_len: data_len(items),
                };
                // Every shard with another width: the bytes must not care.
                let o = WriterOptions {
                    framing,
                    ..opts(1 + k as usize % 4)
                };
                let w = Writer::new_part(Vec::new(), Some(model), o, shard).unwrap();
                write(w, items)
            })
            .collect()
    }

    fn run(parts: &[(&str, &[u8])]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let ps = parts
            .iter()
            .map(|(n, b)| (n.to_string(), Cursor::new(*b)))
            .collect();
        merge(ps, &mut out)?;
        Ok(out)
    }

    fn named(parts: &[Vec<u8>]) -> Vec<(String, &[u8])> {
        parts
            .iter()
            .enumerate()
            .map(|(k, p)| (format!("p{k}"), p.as_slice()))
            .collect()
    }

    fn merged(parts: &[Vec<u8>]) -> Result<Vec<u8>> {
        let n = named(parts);
        let v: Vec<(&str, &[u8])> = n.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        run(&v)
    }

    #[test]
    fn merged_parts_are_the_single_archive() {
        let m = Order1::new(512);
        let items = items();
        for framing in [Framing::Compact, Framing::CompactBlocks, Framing::Classic] {
            let o = WriterOptions { framing, ..opts(3) };
            let single = write(
                Writer::new(Vec::new(), Some(&m as &dyn Model), o).unwrap(),
                &items,
            );
            let a = Archive::from_bytes(single.clone()).unwrap();
            assert_eq!(a.framing(), framing);
            assert!(a.blocks().len() >= 12, "{} blocks", a.blocks().len());
            for n in [1, 2, 3, 5, 13, 40] {
                let mut ps = parts_framed(&m, &items, n, framing);
                assert_eq!(merged(&ps).unwrap(), single, "{n} shards, {framing:?}");
                // In any order.
                ps.reverse();
                assert_eq!(
                    merged(&ps).unwrap(),
                    single,
                    "{n} shards reversed, {framing:?}"
                );
            }
        }
        // Parts of one framing and another are not one archive (and plan differently).
        let mut ps = parts_framed(&m, &items, 2, Framing::Compact);
        ps[1] = parts_framed(&m, &items, 2, Framing::Classic).remove(1);
        let e = merged(&ps).unwrap_err();
        assert!(e.to_string().contains("--framing"), "{e}");
    }

    #[test]
    fn refuses_sets_that_are_not_one_archive() {
        let m = Order1::new(512);
        let items = items();
        let ps = parts(&m, &items, 3);
        let msg = |r: Result<Vec<u8>>| r.expect_err("refused").to_string();
        assert!(msg(merged(&ps[..2])).contains("missing shard 2 of 3"));
        let dup = vec![ps[0].clone(), ps[1].clone(), ps[1].clone()];
        assert!(msg(merged(&dup)).contains("shard 1 of 3 given twice"));
        let other_n = parts(&m, &items, 4);
        let mixed = vec![ps[0].clone(), ps[1].clone(), other_n[2].clone()];
        assert!(msg(merged(&mixed)).contains("shard 2 of 4"));
        // A file changed between shards: its entry (size, mtime) and so the plan differ.
        let mut changed = items;
        changed[5] = It::File("d/e/c", text(3, 101));
        let stale = parts(&m, &changed, 3);
        let mixed = vec![ps[0].clone(), stale[1].clone(), ps[2].clone()];
        assert!(msg(merged(&mixed)).contains("different inputs"));
        // Another model (here: none).
        let shard = Shard {
            index: 1,
            count: 3,
            data_len: data_len(&self::tests::items()),
        };
        let none = write(
            Writer::new_part(Vec::new(), None, opts(1), shard).unwrap(),
            &self::tests::items(),
        );
        let mixed = vec![ps[0].clone(), none, ps[2].clone()];
        assert!(msg(merged(&mixed)).contains("same model"));
        // Another zstd level.
        let mut o = opts(1);
        o.zstd_level = 5;
        let lvl = write(
            Writer::new_part(Vec::new(), Some(&m as &dyn Model), o, shard).unwrap(),
            &self::tests::items(),
        );
        let mixed = vec![ps[0].clone(), lvl, ps[2].clone()];
        assert!(msg(merged(&mixed)).contains("--zstd-level 5"));
        // Not a part.
        let single = write(
            Writer::new(Vec::new(), Some(&m as &dyn Model), opts(1)).unwrap(),
            &self::tests::items(),
        );
        let e = msg(merged(&[single]));
        assert!(e.contains("not an lmz part"), "{e}");
        assert!(msg(merged(&[])).contains("no parts"));
    }

    /// A part writer whose inputs do not hold the data it was planned for refuses to finish.
    #[test]
    fn part_writer_refuses_a_wrong_plan() {
        let m = Order1::new(512);
        let items = vec![It::File("a", text(1, 2000)), It::File("b", text(2, 30))];
        let shard = Shard {
            index: 0,
            count: 2,
            data_len: data_len(&items) + 1,
        };
        let w = Writer::new_part(Vec::new(), Some(&m as &dyn Model), opts(2), shard).unwrap();
        let mut w = Some(w);
        for i in &items {
            if let It::File(p, d) = i {
                let w = w.as_mut().unwrap();
                w.add_file(
                    p.as_bytes(),
                    Meta::default(),
                    d.len() as u64,
                    &mut d.as_slice(),
                )
                .unwrap();
            }
        }
        let w = w.unwrap();
        assert!(w
            .finish()
            .err()
            .unwrap()
            .to_string()
            .contains("planned for"));
    }
}
