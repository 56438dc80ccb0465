//! Compact block framing (FORMAT.md §7.1, §8.1): header flag bit 1. A block record is a
//! codec byte, LEB128 lengths, the plain CRC and one CRC over the record's header and
//! payload (about 15 bytes instead of 32); the index keeps no block offsets, only each
//! record's length and plain length, since the body's tiling (§3) already places every
//! block once the entry records are skipped. So the framing costs ~19 bytes per block
//! instead of 48.
//!
//! Every varint is minimal (no trailing `0x80 … 0x00`) and fits a u32 (at most 5 bytes):
//! one value, one encoding, so a compact archive is still a function of its inputs and a
//! flipped continuation bit cannot pass unnoticed as a different-but-equal encoding. The
//! 64-bit and zigzag varints here serve the compact entry records (§6.1, header flag bit
//! 2, `compact_entry`); [`Framing`] names the three layouts the two flag bits select.

use byteorder::{ByteOrder, LittleEndian as LE};

use super::{crc, BlockHeader, BlockRef, Codec, Header, Index, ModelKind};
use super::{INDEX_FIXED_LEN, INDEX_MAGIC};
use crate::error::{Error, Result};

/// Header flag bit 1: every block record and the index use the compact framing. Bit 0 is
/// not used: lmz 0.1's must-reject vector `header-flags-set` sets it, and must stay
/// unsupported.
pub const FLAG_COMPACT_BLOCKS: u16 = 0x0002;
/// Most bytes of a varint: a u32 needs at most 5 groups of 7 bits.
pub const MAX_VARINT_LEN: usize = 5;
/// The shortest compact block header: codec, two one-byte varints, two CRCs.
pub const MIN_HEADER_LEN: usize = 1 + 1 + 1 + 8;
/// The longest: codec, three five-byte varints, two CRCs.
pub const MAX_HEADER_LEN: usize = 1 + 3 * MAX_VARINT_LEN + 8;

/// Header flag bit 2: every entry record is a compact entry record (FORMAT.md §6.1). Only
/// with bit 1: compact entries come with compact blocks.
pub const FLAG_COMPACT_ENTRIES: u16 = 0x0004;

/// Header `flags` bit 3: model-coded sequences are coded under an adaptive bias (FORMAT.md
/// §12.9), whose rate follows the primer in the header. Kind 3 only. Not a framing bit: it
/// changes probabilities, not layout, and lives here beside the other flag bits.
pub const FLAG_ADAPTIVE_BIAS: u16 = 0x0008;

/// How the archive's records are laid out (header `flags` bits 1 and 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Framing {
    /// 32-byte block headers with magic `LMZB`, 16-byte index rows with offsets, 62-byte
    /// fixed entry records (§6, §7, §8).
    Classic,
    /// Compact block records and index rows (§7.1, §8.1), classic entry records: what
    /// lmz 0.4 wrote, and the newest layout it reads.
    CompactBlocks,
    /// Compact block records, index rows and entry records (§6.1, §7.1, §8.1).
    #[default]
    Compact,
}

impl Framing {
    pub fn name(self) -> &'static str {
        match self {
            Framing::Classic => "classic",
            Framing::CompactBlocks => "compact-blocks",
            Framing::Compact => "compact",
        }
    }

    /// The header flags that select this framing.
    pub fn flags(self) -> u16 {
        match self {
            Framing::Classic => 0,
            Framing::CompactBlocks => FLAG_COMPACT_BLOCKS,
            Framing::Compact => FLAG_COMPACT_BLOCKS | FLAG_COMPACT_ENTRIES,
        }
    }

    /// The framing header flags `flags` select; `None` for flags version 1 does not define
    /// (any bit but 1 and 2, or bit 2 without bit 1): unsupported.
    pub fn from_flags(flags: u16) -> Option<Framing> {
        match flags {
            0 => Some(Framing::Classic),
            FLAG_COMPACT_BLOCKS => Some(Framing::CompactBlocks),
            f if f == FLAG_COMPACT_BLOCKS | FLAG_COMPACT_ENTRIES => Some(Framing::Compact),
            _ => None,
        }
    }

    /// Whether block records and the index rows are compact (§7.1, §8.1).
    pub fn compact_blocks(self) -> bool {
        self != Framing::Classic
    }

    /// Whether entry records are compact (§6.1).
    pub fn compact_entries(self) -> bool {
        self == Framing::Compact
    }
}

/// Bytes of `v` as a minimal LEB128 varint.
pub fn varint_len(v: u32) -> usize {
    varint64_len(v as u64)
}

pub fn put_varint(out: &mut Vec<u8>, v: u32) {
    put_varint64(out, v as u64)
}

/// The varint at `b[at..]`: its value and the position after it. `base` is `b`'s archive
/// offset (for errors). Truncated, non-minimal, longer than 5 bytes or above u32: corrupt.
pub fn get_varint(b: &[u8], at: usize, base: u64, what: &str) -> Result<(u32, usize)> {
    get_bounded(b, at, base, what, MAX_VARINT_LEN, 32).map(|(v, p)| (v as u32, p))
}

/// Most bytes of a 64-bit varint: 10 groups of 7 bits (the last holds one bit).
pub const MAX_VARINT64_LEN: usize = 10;

/// Bytes of `v` as a minimal LEB128 varint.
pub fn varint64_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub fn put_varint64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The 64-bit varint at `b[at..]` (§2), as [`get_varint`] reads a 32-bit one: truncated,
/// non-minimal, longer than 10 bytes or above 2^64 − 1 is corrupt.
pub fn get_varint64(b: &[u8], at: usize, base: u64, what: &str) -> Result<(u64, usize)> {
    get_bounded(b, at, base, what, MAX_VARINT64_LEN, 64)
}

/// A minimal varint of at most `max_len` bytes and `bits` bits (§2).
fn get_bounded(
    b: &[u8],
    at: usize,
    base: u64,
    what: &str,
    max_len: usize,
    bits: u32,
) -> Result<(u64, usize)> {
    // 10 groups of 7 bits are 70: u128 holds them, so "too large" is one comparison.
    let mut v = 0u128;
    for i in 0..max_len {
        let Some(&c) = b.get(at + i) else {
            return Err(Error::corrupt(
                base + (at + i) as u64,
                format!("{what}: truncated varint"),
            ));
        };
        v |= ((c & 0x7F) as u128) << (7 * i);
        if c & 0x80 == 0 {
            if i > 0 && c == 0 {
                return Err(Error::corrupt(
                    base + at as u64,
                    format!("{what}: non-minimal varint"),
                ));
            }
            if v >> bits != 0 {
                return Err(Error::corrupt(
                    base + at as u64,
                    format!("{what}: varint above 2^{bits} - 1"),
                ));
            }
            return Ok((v as u64, at + i + 1));
        }
    }
    Err(Error::corrupt(
        base + at as u64,
        format!("{what}: varint longer than {max_len} bytes"),
    ))
}

/// A signed value as the unsigned one a varint holds (zigzag: 0, −1, 1, −2, … → 0, 1, 2,
/// 3, …), so times near 1970, before and after, stay short.
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(u: u64) -> i64 {
    (u >> 1) as i64 ^ -((u & 1) as i64)
}

/// Length of the compact block header that `b` starts, once `b` holds enough of it:
/// `Ok(None)` asks for one more byte. So a stream reader reads a header without reading
/// past it. The codec byte is decoded first (it decides whether `tokens` is present): an
/// unknown codec is unsupported.
pub fn header_len(b: &[u8], offset: u64) -> Result<Option<usize>> {
    let Some(&c) = b.first() else {
        return Ok(None);
    };
    let codec = codec_of(c, offset)?;
    let fields = if codec == Codec::Model { 3 } else { 2 };
    let mut pos = 1;
    for _ in 0..fields {
        let start = pos;
        loop {
            let Some(&c) = b.get(pos) else {
                return Ok(None);
            };
            pos += 1;
            if c & 0x80 == 0 || pos - start == MAX_VARINT_LEN {
                break;
            }
        }
    }
    Ok(Some(pos + 8))
}

fn codec_of(c: u8, offset: u64) -> Result<Codec> {
    // Every record magic starts with 'L': never a codec, so a classic block record (or any
    // other record) where a compact block record lies is damage, not a later version's codec.
    if c == b'L' {
        return Err(Error::corrupt(
            offset,
            "a record magic where a compact block record lies (a classic block record?)",
        ));
    }
    Codec::from_u8(c).ok_or_else(|| Error::Unsupported {
        offset,
        detail: format!("block codec {c}"),
    })
}

impl BlockHeader {
    /// The compact header of this block (its `coded_crc` being the payload's CRC32): the
    /// record CRC over header and payload follows from it without the payload.
    pub fn encode_compact(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_HEADER_LEN);
        b.push(self.codec as u8);
        put_varint(&mut b, self.plain_len);
        put_varint(&mut b, self.coded_len);
        if self.codec == Codec::Model {
            put_varint(&mut b, self.tokens);
        }
        b.extend_from_slice(&self.plain_crc.to_le_bytes());
        let c = record_crc(&b, self.coded_crc, self.coded_len);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    /// Parses and checks the compact block header at the start of `b`, found at archive
    /// offset `offset`, in the order of FORMAT.md §7.1: codec, varints, field rules. Returns
    /// the header (its `coded_crc` not yet known: 0), the header's length and the stored
    /// record CRC, which [`check_record_crc`] checks once the payload is at hand.
    pub fn decode_compact(
        b: &[u8],
        offset: u64,
        header: &Header,
    ) -> Result<(BlockHeader, usize, u32)> {
        let Some(&c) = b.first() else {
            return Err(Error::corrupt(
                offset,
                "archive truncated inside a block header",
            ));
        };
        let codec = codec_of(c, offset)?;
        let (plain_len, pos) = get_varint(b, 1, offset, "block plain_len")?;
        let (coded_len, mut pos) = get_varint(b, pos, offset, "block coded_len")?;
        let mut tokens = 0;
        if codec == Codec::Model {
            (tokens, pos) = get_varint(b, pos, offset, "block tokens")?;
        }
        if b.len() < pos + 8 {
            return Err(Error::corrupt(
                offset + pos as u64,
                "archive truncated inside a block header",
            ));
        }
        let h = BlockHeader {
            codec,
            plain_len,
            coded_len,
            tokens,
            plain_crc: LE::read_u32(&b[pos..]),
            coded_crc: 0,
        };
        // Where each field lies, for errors: codec, plain_len, coded_len, tokens.
        let at = [
            offset,
            offset + 1,
            offset + 1 + varint_len(plain_len) as u64,
            offset + 1 + (varint_len(plain_len) + varint_len(coded_len)) as u64,
        ];
        h.check_fields(at, header)?;
        Ok((h, pos + 8, LE::read_u32(&b[pos + 4..])))
    }

    /// The rules on a block header's fields, for both framings (§7): lengths, the stored
    /// rule, tokens only on model blocks and within their bounds. `at` holds the archive
    /// offsets of the fields codec, plain_len, coded_len and tokens (for errors).
    pub(super) fn check_fields(&self, at: [u64; 4], header: &Header) -> Result<()> {
        let h = self;
        if h.plain_len == 0 || h.plain_len > header.block_size {
            return Err(Error::corrupt(
                at[1],
                format!("block plain length {} out of range", h.plain_len),
            ));
        }
        // A writer keeps the smallest coding, never one larger than the plain bytes; this
        // bound also caps what a reader allocates for a payload.
        if h.coded_len > h.plain_len {
            return Err(Error::corrupt(
                at[2],
                "block coded length exceeds its plain length",
            ));
        }
        match h.codec {
            Codec::Stored if h.coded_len != h.plain_len => Err(Error::corrupt(
                at[2],
                "stored block with coded length != plain length",
            )),
            Codec::Model => {
                if header.pin.kind == ModelKind::None {
                    return Err(Error::corrupt(
                        at[0],
                        "model-coded block in an archive without a model",
                    ));
                }
                if h.tokens == 0 || h.tokens > header.pin.max_block_tokens || h.tokens > h.plain_len
                {
                    return Err(Error::corrupt(
                        at[3],
                        format!("token count {} out of range", h.tokens),
                    ));
                }
                Ok(())
            }
            _ if h.tokens != 0 => Err(Error::corrupt(
                at[3],
                "token count set on a block without a model",
            )),
            _ => Ok(()),
        }
    }
}

/// CRC32 of `head` followed by a payload of `payload_len` bytes whose CRC32 is
/// `payload_crc`, without the payload (crc32fast's combine).
pub fn record_crc(head: &[u8], payload_crc: u32, payload_len: u32) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.combine(&crc32fast::Hasher::new_with_initial_len(
        payload_crc,
        payload_len as u64,
    ));
    h.finalize()
}

/// Checks a compact record's CRC: `head` is its header up to the CRC field, `payload_crc`
/// the CRC32 of its payload.
pub fn check_record_crc(
    head: &[u8],
    payload_crc: u32,
    payload_len: u32,
    stored: u32,
    offset: u64,
    number: u64,
) -> Result<()> {
    if record_crc(head, payload_crc, payload_len) != stored {
        return Err(Error::corrupt(
            offset,
            format!("block {number}: record CRC32 mismatch"),
        ));
    }
    Ok(())
}

/// Length of a compact index row: the record's length and its plain length.
pub fn row_len(r: &BlockRef) -> usize {
    varint_len(r.record_len) + varint_len(r.plain_len)
}

/// A compact index row's bytes.
pub fn put_row(out: &mut Vec<u8>, r: &BlockRef) {
    put_varint(out, r.record_len);
    put_varint(out, r.plain_len);
}

/// The compact index's length for `entries` entry records and these rows.
pub fn index_len(entries: usize, rows: &[BlockRef]) -> usize {
    INDEX_FIXED_LEN + 8 * entries + rows.iter().map(row_len).sum::<usize>() + 4
}

/// Bounds on the compact index's length for the counts at its offsets 8 and 16, computed
/// without overflow: each row takes 2 ..= 10 bytes.
pub fn index_len_fits(entries: u64, blocks: u64, len: u64) -> bool {
    let fixed = (INDEX_FIXED_LEN + 4) as u128 + entries as u128 * 8;
    let len = len as u128;
    len >= fixed + 2 * blocks as u128 && len <= fixed + 2 * MAX_VARINT_LEN as u128 * blocks as u128
}

impl Index {
    /// The compact index (§8.1): no block offsets, rows of varints.
    pub fn encode_compact(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(index_len(self.entries.len(), &self.blocks));
        b.extend_from_slice(&INDEX_MAGIC);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for e in &self.entries {
            b.extend_from_slice(&e.to_le_bytes());
        }
        for r in &self.blocks {
            put_row(&mut b, r);
        }
        let c = crc(&b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    /// Parses the compact index occupying exactly `b`, at archive offset `offset`. Block
    /// rows come without offsets (0 here): [`place_blocks`] derives them.
    pub fn decode_compact(b: &[u8], offset: u64) -> Result<Index> {
        let (ne, nb) = super::index_prelude(b, offset)?;
        if !index_len_fits(ne, nb, b.len() as u64) {
            return Err(Error::corrupt(
                offset + 8,
                "index counts disagree with its length",
            ));
        }
        let entries: Vec<u64> = super::entry_offsets(b, ne);
        let mut pos = INDEX_FIXED_LEN + 8 * entries.len();
        let rows = &b[..b.len() - 4];
        let mut blocks = Vec::with_capacity(nb as usize);
        for _ in 0..nb {
            let (record_len, p) = get_varint(rows, pos, offset, "index row record_len")?;
            let (plain_len, p) = get_varint(rows, p, offset, "index row plain_len")?;
            pos = p;
            blocks.push(BlockRef {
                offset: 0,
                plain_len,
                record_len,
            });
        }
        if pos != rows.len() {
            return Err(Error::corrupt(
                offset + pos as u64,
                "bytes after the index's last block row",
            ));
        }
        Ok(Index { entries, blocks })
    }
}

/// Places the blocks of a compact index (§8.1): the body, from `body.start`, is the listed
/// entry records (at their offsets, `entry_lens` long) and the block records in row order,
/// back to back, so each block lies where the record before it ends, skipping an entry
/// record that starts there. This is also the tiling check (§3) and record-order rule 5
/// (§10.4): `entry_data` gives, per entry, the data-stream start of a non-empty file.
pub fn place_blocks(
    index: &mut Index,
    entry_lens: &[u64],
    entry_data: &[Option<u64>],
    body: std::ops::Range<u64>,
    block_size: u32,
) -> Result<()> {
    let mut at = body.start;
    let (mut ei, mut bi) = (0, 0);
    let mut data_seen = 0u64;
    let ne = index.entries.len();
    while ei < ne || bi < index.blocks.len() {
        if ei < ne && index.entries[ei] == at {
            if entry_data[ei].is_some_and(|s| s < data_seen) {
                return Err(Error::corrupt(
                    at,
                    "entry record comes after a block holding its data",
                ));
            }
            at += entry_lens[ei];
            ei += 1;
        } else if ei < ne && index.entries[ei] < at {
            return Err(Error::corrupt(
                index.entries[ei],
                "records do not tile the archive body (an entry record overlaps a block)",
            ));
        } else if let Some(r) = index.blocks.get_mut(bi) {
            if r.plain_len == 0 || r.plain_len > block_size {
                return Err(Error::corrupt(
                    at,
                    format!("block {bi}: plain length out of range in the index"),
                ));
            }
            if (r.record_len as usize) < MIN_HEADER_LEN
                || r.record_len as u64 > r.plain_len as u64 + MAX_HEADER_LEN as u64
            {
                return Err(Error::corrupt(
                    at,
                    format!("block {bi}: record length out of range in the index"),
                ));
            }
            r.offset = at;
            at += r.record_len as u64;
            data_seen += r.plain_len as u64;
            bi += 1;
            if at > body.end {
                return Err(Error::corrupt(
                    r.offset,
                    format!("block {bi} extends past the body"),
                ));
            }
        } else {
            return Err(Error::corrupt(
                at,
                "records do not tile the archive body (gap before an entry record)",
            ));
        }
    }
    if at != body.end {
        return Err(Error::corrupt(at, "records do not reach the index"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_every_other_encoding() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            1 << 21,
            1 << 28,
            u32::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(get_varint(&b, 0, 0, "t").unwrap(), (v, b.len()));
            for n in 0..b.len() {
                assert!(get_varint(&b[..n], 0, 0, "t").is_err());
            }
        }
        for bad in [
            &[0x80, 0x00][..],
            &[0xFF, 0x80, 0x00],
            &[0x80, 0x80, 0x80, 0x80, 0x00],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0x10],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0x8F, 0x01],
        ] {
            assert!(get_varint(bad, 0, 0, "t").is_err(), "{bad:02x?}");
        }
        // Exhaustive over two bytes: exactly the minimal encodings decode.
        for a in 0..=255u8 {
            for c in 0..=255u8 {
                let b = [a, c];
                let ok = get_varint(&b, 0, 0, "t");
                let mut want = Vec::new();
                if let Ok((v, n)) = ok {
                    put_varint(&mut want, v);
                    assert_eq!(&b[..n], &want[..]);
                }
            }
        }
    }

    #[test]
    fn header_len_reads_no_byte_past_the_header() {
        let h = BlockHeader {
            codec: Codec::Model,
            plain_len: 8192,
            coded_len: 1000,
            tokens: 2000,
            plain_crc: 1,
            coded_crc: 2,
        };
        let b = h.encode_compact();
        assert_eq!(b.len(), 1 + 2 + 2 + 2 + 8);
        for n in 0..b.len() {
            let got = header_len(&b[..n], 0).unwrap();
            assert!(got.is_none() || got == Some(b.len()), "{n}: {got:?}");
        }
        assert_eq!(header_len(&b, 0).unwrap(), Some(b.len()));
        assert!(matches!(
            header_len(&[3], 0),
            Err(Error::Unsupported { .. })
        ));
    }
}
