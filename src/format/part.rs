//! Part files (FORMAT.md §21): one shard's records of an archive, as `lmz pack --shard K/N`
//! writes them and `lmz merge` joins them. A part is not an archive: its own header magic
//! keeps every archive reader from taking it for one.
//!
//! Layout: part header (fixed 32 bytes, the archive header the merged archive starts with, a
//! CRC), the part's body (entry and block records exactly as they lie in the archive), a part
//! index (an archive index, §8, whose offsets count from the start of the part's body) and
//! a fixed part footer. Every byte of a part is covered by a CRC: the part header's, each
//! record's own, the index's and the footer's.

use byteorder::{ByteOrder, LittleEndian as LE};

use super::{crc, Header, HEADER_MAX_LEN};
use crate::error::{Error, Result};

pub const PART_MAGIC: [u8; 8] = *b"\x89LMZPART";
pub const PART_FOOTER_MAGIC: [u8; 8] = *b"LMZPEND\n";
pub const PART_VERSION: u16 = 1;
/// Fixed part of the part header, before the embedded archive header.
pub const PART_HEADER_FIXED_LEN: usize = 32;
pub const PART_FOOTER_LEN: usize = 104;
/// Most shards of one archive: far more machines than any job needs, and small enough that
/// a merge can hold one row per part.
pub const MAX_SHARDS: u32 = 1 << 16;

/// What every part of one archive must agree on, and which shard this one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartHeader {
    pub shard: u32,
    pub shard_count: u32,
    /// The zstd level the blocks were coded with (it changes blocks, so it is in the plan).
    pub zstd_level: i32,
    /// The archive header this part's writer would have written (the merged archive starts
    /// with part 0's).
    pub header: Header,
    /// Its bytes, exactly as encoded.
    pub header_bytes: Vec<u8>,
}

impl PartHeader {
    pub fn new(shard: u32, shard_count: u32, zstd_level: i32, header: Header) -> PartHeader {
        let header_bytes = header.encode();
        PartHeader {
            shard,
            shard_count,
            zstd_level,
            header,
            header_bytes,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PART_HEADER_FIXED_LEN];
        b[..8].copy_from_slice(&PART_MAGIC);
        LE::write_u16(&mut b[8..], PART_VERSION);
        LE::write_u32(
            &mut b[12..],
            (PART_HEADER_FIXED_LEN + self.header_bytes.len() + 4) as u32,
        );
        LE::write_u32(&mut b[16..], self.shard);
        LE::write_u32(&mut b[20..], self.shard_count);
        LE::write_i32(&mut b[24..], self.zstd_level);
        b.extend_from_slice(&self.header_bytes);
        let c = crc(&b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    /// Length of the part header that starts `b` (needs 16 bytes): magic and version first.
    pub fn peek_len(b: &[u8]) -> Result<usize> {
        if b.len() < 16 {
            return Err(Error::corrupt(
                b.len() as u64,
                "part shorter than its header",
            ));
        }
        if b[..8] != PART_MAGIC {
            return Err(Error::corrupt(
                0,
                "not an lmz part (bad part magic; merge joins the output of `lmz pack --shard`)",
            ));
        }
        let v = LE::read_u16(&b[8..]);
        if v != PART_VERSION {
            return Err(Error::Unsupported {
                offset: 8,
                detail: format!("part version {v}; this build reads version {PART_VERSION}"),
            });
        }
        let len = LE::read_u32(&b[12..]) as usize;
        if !(PART_HEADER_FIXED_LEN + 92 + 4..=PART_HEADER_FIXED_LEN + HEADER_MAX_LEN + 4)
            .contains(&len)
        {
            return Err(Error::corrupt(
                12,
                format!("part header length {len} out of range"),
            ));
        }
        Ok(len)
    }

    /// Parses the part header at the start of `b`; returns it and its length.
    pub fn decode(b: &[u8]) -> Result<(PartHeader, usize)> {
        let len = PartHeader::peek_len(b)?;
        if b.len() < len {
            return Err(Error::corrupt(
                b.len() as u64,
                "part truncated inside its header",
            ));
        }
        let b = &b[..len];
        if crc(&b[..len - 4]) != LE::read_u32(&b[len - 4..]) {
            return Err(Error::corrupt(len as u64 - 4, "part header CRC32 mismatch"));
        }
        if LE::read_u16(&b[10..]) != 0 || LE::read_u32(&b[28..]) != 0 {
            return Err(Error::Unsupported {
                offset: 10,
                detail: "part header flags or reserved bytes set".into(),
            });
        }
        let shard = LE::read_u32(&b[16..]);
        let shard_count = LE::read_u32(&b[20..]);
        if shard_count == 0 || shard_count > MAX_SHARDS || shard >= shard_count {
            return Err(Error::corrupt(
                16,
                format!("shard {shard} of {shard_count} out of range"),
            ));
        }
        let zstd_level = LE::read_i32(&b[24..]);
        let inner = &b[PART_HEADER_FIXED_LEN..len - 4];
        let (header, hlen) = Header::decode(inner).map_err(|e| shift(e, PART_HEADER_FIXED_LEN))?;
        if hlen != inner.len() {
            return Err(Error::corrupt(
                PART_HEADER_FIXED_LEN as u64 + 12,
                "the archive header does not fill the part header",
            ));
        }
        Ok((
            PartHeader {
                shard,
                shard_count,
                zstd_level,
                header,
                header_bytes: inner.to_vec(),
            },
            len,
        ))
    }
}

/// An error at an offset of the embedded archive header, moved to the part's offsets.
fn shift(e: Error, by: usize) -> Error {
    match e {
        Error::Corrupt { offset, detail } => Error::Corrupt {
            offset: offset + by as u64,
            detail,
        },
        Error::Unsupported { offset, detail } => Error::Unsupported {
            offset: offset + by as u64,
            detail,
        },
        e => e,
    }
}

/// The fixed footer that ends every part: where its index lies, the plan it belongs to and
/// where its records lie in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartFooter {
    /// Part-file offset of the part index.
    pub index_offset: u64,
    pub index_len: u64,
    /// SHA-256 of the plan (FORMAT.md §21.3): the same in every part of one archive.
    pub plan: [u8; 32],
    /// Entry records and block records of the archive before this part's first record.
    pub first_entry: u64,
    pub first_block: u64,
    /// Entry records and block records of the whole archive.
    pub entry_total: u64,
    pub block_total: u64,
}

impl PartFooter {
    pub fn encode(&self) -> [u8; PART_FOOTER_LEN] {
        let mut b = [0u8; PART_FOOTER_LEN];
        LE::write_u64(&mut b[0..], self.index_offset);
        LE::write_u64(&mut b[8..], self.index_len);
        b[16..48].copy_from_slice(&self.plan);
        LE::write_u64(&mut b[48..], self.first_entry);
        LE::write_u64(&mut b[56..], self.first_block);
        LE::write_u64(&mut b[64..], self.entry_total);
        LE::write_u64(&mut b[72..], self.block_total);
        let c = crc(&b[..92]);
        LE::write_u32(&mut b[92..], c);
        b[96..].copy_from_slice(&PART_FOOTER_MAGIC);
        b
    }

    /// Parses the footer of a part `file_len` bytes long, `b` being its last bytes, whose
    /// header is `header_len` bytes long.
    pub fn decode(b: &[u8], file_len: u64, header_len: u64) -> Result<PartFooter> {
        let at = file_len.saturating_sub(PART_FOOTER_LEN as u64);
        if b.len() != PART_FOOTER_LEN || file_len < header_len + PART_FOOTER_LEN as u64 {
            return Err(Error::corrupt(at, "part too short for a footer"));
        }
        if b[96..] != PART_FOOTER_MAGIC {
            return Err(Error::corrupt(
                at + 96,
                "no part footer magic at the end: the part is truncated or has trailing bytes",
            ));
        }
        if crc(&b[..92]) != LE::read_u32(&b[92..]) {
            return Err(Error::corrupt(at, "part footer CRC32 mismatch"));
        }
        if LE::read_u32(&b[88..]) != 0 {
            return Err(Error::Unsupported {
                offset: at + 88,
                detail: "part footer reserved bytes set".into(),
            });
        }
        let mut plan = [0u8; 32];
        plan.copy_from_slice(&b[16..48]);
        let f = PartFooter {
            index_offset: LE::read_u64(&b[0..]),
            index_len: LE::read_u64(&b[8..]),
            plan,
            first_entry: LE::read_u64(&b[48..]),
            first_block: LE::read_u64(&b[56..]),
            entry_total: LE::read_u64(&b[64..]),
            block_total: LE::read_u64(&b[72..]),
        };
        if f.index_offset.checked_add(f.index_len) != Some(at) {
            return Err(Error::corrupt(
                at,
                "part index does not end where the footer begins",
            ));
        }
        if f.index_offset < header_len {
            return Err(Error::corrupt(
                at,
                "part index before the end of the part header",
            ));
        }
        if f.first_entry > f.entry_total || f.first_block > f.block_total {
            return Err(Error::corrupt(
                at + 48,
                "part's first record beyond the archive's record counts",
            ));
        }
        Ok(f)
    }
}

/// Which shard codes a block starting at data-stream offset `start` of a data stream
/// `data_len` bytes long (FORMAT.md §21.2): shards take contiguous runs of blocks, balanced
/// by the plain bytes they code. A record that is not a block belongs to the shard of the
/// first block after it (`start` is that block's start), or to the last shard if none
/// follows (`start = data_len`).
pub fn shard_of(start: u64, data_len: u64, shard_count: u32) -> u32 {
    if start >= data_len {
        return shard_count - 1;
    }
    ((start as u128 * shard_count as u128) / data_len as u128) as u32
}

/// The plan hash (FORMAT.md §21.3), fed record by record in archive order.
#[derive(Clone)]
pub struct PlanHasher(sha2::Sha256);

impl PlanHasher {
    /// Starts the hash of a plan for archives with header `header` whose blocks are coded
    /// at `zstd_level`: its `block_size`, its pin, its flags, its primer and its adaptive
    /// bias's rate, not its diagnostic strings.
    pub fn new(header: &Header, zstd_level: i32) -> PlanHasher {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"lmz plan v1\0");
        h.update(&header.encode()[16..80]);
        h.update(zstd_level.to_le_bytes());
        // The framing changes every block record, so it is part of the plan; archives
        // without flags hash as before they existed (the part vectors are unchanged).
        let flags = header.encode()[10..12].to_vec();
        let flags = u16::from_le_bytes([flags[0], flags[1]]);
        if flags != 0 {
            h.update(b"F");
            h.update(flags.to_le_bytes());
        }
        if let Some(p) = &header.primer {
            h.update(b"P");
            h.update(p.tokens.to_le_bytes());
            h.update((p.coded.len() as u32).to_le_bytes());
            h.update(&p.coded);
        }
        if header.bias_rate != 0 {
            h.update(b"R");
            h.update(header.bias_rate.to_le_bytes());
        }
        PlanHasher(h)
    }

    /// An entry record, as encoded.
    pub fn entry(&mut self, record: &[u8]) {
        use sha2::Digest;
        self.0.update(b"E");
        self.0.update(record);
    }

    /// A block record holding `plain_len` bytes.
    pub fn block(&mut self, plain_len: u32) {
        use sha2::Digest;
        self.0.update(b"B");
        self.0.update(plain_len.to_le_bytes());
    }

    pub fn finish(self) -> [u8; 32] {
        use sha2::Digest;
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ModelPin;

    fn header() -> PartHeader {
        PartHeader::new(
            1,
            3,
            19,
            Header {
                block_size: 512,
                pin: ModelPin::none(),
                model_name: String::new(),
                backend: String::new(),
                engine_version: "lmz test".into(),
                cpu_features: String::new(),
                primer: None,
                bias_rate: 0,
                framing: crate::format::Framing::Classic,
            },
        )
    }

    #[test]
    fn header_round_trip_and_every_flip_rejected() {
        let h = header();
        let b = h.encode();
        assert_eq!(PartHeader::decode(&b).unwrap(), (h, b.len()));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(PartHeader::decode(&c).is_err(), "flip at {i} accepted");
        }
        for n in 0..b.len() {
            assert!(PartHeader::decode(&b[..n]).is_err());
        }
    }

    #[test]
    fn footer_round_trip_and_every_flip_rejected() {
        let f = PartFooter {
            index_offset: 200,
            index_len: 28,
            plan: [7; 32],
            first_entry: 2,
            first_block: 1,
            entry_total: 5,
            block_total: 4,
        };
        let b = f.encode();
        let len = 200 + 28 + PART_FOOTER_LEN as u64;
        assert_eq!(PartFooter::decode(&b, len, 150).unwrap(), f);
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 0x80;
            assert!(
                PartFooter::decode(&c, len, 150).is_err(),
                "flip at {i} accepted"
            );
        }
        assert!(PartFooter::decode(&b, len + 1, 150).is_err());
        assert!(PartFooter::decode(&b, len, 201).is_err());
    }

    /// The plan covers what changes the blocks: the flags and the adaptive bias's rate
    /// (parts coded under other rates never merge), not the diagnostic strings.
    #[test]
    fn the_plan_covers_the_bias_rate() {
        use sha2::Digest;
        let plan = |h: &Header| PlanHasher::new(h, 19).0.finalize().to_vec();
        let h = header().header;
        let mut other = h.clone();
        other.engine_version = "another writer".into();
        assert_eq!(plan(&h), plan(&other));
        let mut biased = h.clone();
        biased.bias_rate = 24_576;
        let mut faster = h.clone();
        faster.bias_rate = 24_577;
        assert_ne!(plan(&h), plan(&biased));
        assert_ne!(plan(&biased), plan(&faster));
    }

    #[test]
    fn shards_are_contiguous_and_balanced() {
        assert_eq!(shard_of(0, 0, 4), 3);
        assert_eq!(shard_of(10, 10, 4), 3);
        let t = 1000;
        let mut last = 0;
        let mut count = [0u32; 4];
        for s in (0..t).step_by(10) {
            let k = shard_of(s, t, 4);
            assert!(k >= last);
            last = k;
            count[k as usize] += 1;
        }
        assert_eq!(count, [25, 25, 25, 25]);
    }
}
