//! Compact entry records (FORMAT.md §6.1): header flag bit 2, with bit 1. The classic entry
//! record spends 62 fixed bytes (a 4-byte magic, u32 and u64 fields, reserved bytes) on
//! what is mostly small numbers: on a source tree of 2–3 KB files that is a third of a
//! model-coded archive. Here every number is a minimal varint (§2), the mtime's seconds
//! zigzag-coded, and the magic one tag byte: about 30 bytes plus the path.
//!
//! Each record stands alone (no field is coded against the previous entry), so a record is
//! read, checked and fuzzed by itself, exactly as a classic one, and a part writer can
//! write any entry without knowing the others (§21).
//!
//! The fields, their meaning and their rules are those of §6; only the encoding differs.
//! The tag `E` can never start another record of a compact archive: a compact block record
//! starts with its codec (0 ..= 2), every other record with `L`.

use byteorder::{ByteOrder, LittleEndian as LE};

use super::compact::{get_varint, get_varint64, put_varint, put_varint64, unzigzag, zigzag};
use super::{crc, Entry, EntryKind, FieldAt, MAX_LINK_LEN, MAX_PATH_LEN};
use crate::error::{Error, Result};

/// The first byte of every compact entry record.
pub const TAG: u8 = b'E';
/// Bytes [`peek_len`] needs: the tag and the longest `record_len` varint.
pub const PEEK_LEN: usize = 1 + super::compact::MAX_VARINT_LEN;
/// The shortest record: tag, eleven one-byte fields, a one-byte path, the CRC.
pub const MIN_RECORD_LEN: usize = 1 + 11 + 1 + 4;
/// The longest fields: tag, `record_len` and `kind`, five u32 varints (mode, uid, gid,
/// mtime_nsec and the two lengths but one), three u64 varints.
const MAX_FIELDS_LEN: usize = 1 + 5 + 1 + 6 * 5 + 3 * 10;
/// The longest record.
pub const MAX_RECORD_LEN: usize = MAX_FIELDS_LEN + MAX_PATH_LEN + MAX_LINK_LEN + 4;

/// The compact record of `e`.
pub fn encode(e: &Entry) -> Vec<u8> {
    let mut fields = Vec::with_capacity(MAX_FIELDS_LEN);
    fields.push(e.kind as u8);
    put_varint(&mut fields, e.mode);
    put_varint(&mut fields, e.uid);
    put_varint(&mut fields, e.gid);
    put_varint64(&mut fields, zigzag(e.mtime_sec));
    put_varint(&mut fields, e.mtime_nsec);
    put_varint64(&mut fields, e.size);
    put_varint64(&mut fields, e.data_start);
    put_varint(&mut fields, e.path.len() as u32);
    put_varint(&mut fields, e.link.len() as u32);
    // record_len counts its own varint: one more byte where the sum crosses 127 (or 16383).
    let rest = fields.len() + e.path.len() + e.link.len() + 4;
    let mut total = 1 + 1 + rest;
    while 1 + super::compact::varint_len(total as u32) + rest != total {
        total += 1;
    }
    let mut b = Vec::with_capacity(total);
    b.push(TAG);
    put_varint(&mut b, total as u32);
    b.extend_from_slice(&fields);
    b.extend_from_slice(&e.path);
    b.extend_from_slice(&e.link);
    let c = crc(&b);
    b.extend_from_slice(&c.to_le_bytes());
    debug_assert_eq!(b.len(), total);
    b
}

/// Length of the compact entry record `b` starts (at archive offset `offset`), from its
/// first [`PEEK_LEN`] bytes (fewer where `b` ends sooner), checked against its bounds: the
/// tag, then `record_len`.
pub fn peek_len(b: &[u8], offset: u64) -> Result<usize> {
    match b.first() {
        None => {
            return Err(Error::corrupt(
                offset,
                "archive truncated inside an entry record",
            ))
        }
        Some(&TAG) => {}
        Some(_) => return Err(Error::corrupt(offset, "bad compact entry tag")),
    }
    let (total, _) = get_varint(b, 1, offset, "entry record_len")?;
    let total = total as usize;
    if !(MIN_RECORD_LEN..=MAX_RECORD_LEN).contains(&total) {
        return Err(Error::corrupt(
            offset + 1,
            format!("entry record length {total} out of range"),
        ));
    }
    Ok(total)
}

/// Parses the compact entry record at archive offset `offset`: its length, its CRC, then
/// its fields in order and §6's rules.
pub fn decode(b: &[u8], offset: u64) -> Result<(Entry, usize)> {
    let total = peek_len(b, offset)?;
    if b.len() < total {
        return Err(Error::corrupt(
            offset,
            "archive truncated inside an entry record",
        ));
    }
    let b = &b[..total];
    let body = &b[..total - 4];
    if crc(body) != LE::read_u32(&b[total - 4..]) {
        return Err(Error::corrupt(offset, "entry record CRC32 mismatch"));
    }
    let (_, mut pos) = get_varint(body, 1, offset, "entry record_len")?;
    let kind_at = pos;
    let Some(&k) = body.get(pos) else {
        return Err(Error::corrupt(
            offset + pos as u64,
            "entry record ends inside its fields",
        ));
    };
    pos += 1;
    let kind = EntryKind::decode(k, offset + kind_at as u64)?;
    let u32_field = |what: &str, pos: &mut usize| -> Result<(u32, u64)> {
        let at = offset + *pos as u64;
        let (v, p) = get_varint(body, *pos, offset, what)?;
        *pos = p;
        Ok((v, at))
    };
    let (mode, mode_at) = u32_field("entry mode", &mut pos)?;
    let (uid, _) = u32_field("entry uid", &mut pos)?;
    let (gid, _) = u32_field("entry gid", &mut pos)?;
    let (mtime, p) = get_varint64(body, pos, offset, "entry mtime_sec")?;
    pos = p;
    let (mtime_nsec, nsec_at) = u32_field("entry mtime_nsec", &mut pos)?;
    let (size, p) = get_varint64(body, pos, offset, "entry size")?;
    let (data_start, p) = get_varint64(body, p, offset, "entry data_start")?;
    pos = p;
    let (path_len, len_at) = u32_field("entry path_len", &mut pos)?;
    let (link_len, _) = u32_field("entry link_len", &mut pos)?;
    let (path_len, link_len) = (path_len as usize, link_len as usize);
    if path_len > MAX_PATH_LEN || link_len > MAX_LINK_LEN || pos + path_len + link_len != body.len()
    {
        return Err(Error::corrupt(
            len_at,
            "entry path and link lengths disagree with its record length",
        ));
    }
    let e = Entry {
        kind,
        mode,
        uid,
        gid,
        mtime_sec: unzigzag(mtime),
        mtime_nsec,
        size,
        data_start,
        path: body[pos..pos + path_len].to_vec(),
        link: body[pos + path_len..].to_vec(),
    };
    e.validate_at(&FieldAt {
        kind: offset + kind_at as u64,
        mode: mode_at,
        mtime_nsec: nsec_at,
        path: offset + pos as u64,
        record: offset,
    })?;
    Ok((e, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind, path: &[u8], link: &[u8]) -> Entry {
        Entry {
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            mtime_sec: 1_733_300_000,
            mtime_nsec: 123_456_789,
            size: if kind == EntryKind::File { 8192 } else { 0 },
            data_start: if kind == EntryKind::File { 77_777 } else { 0 },
            path: path.to_vec(),
            link: link.to_vec(),
        }
    }

    #[test]
    fn records_round_trip_at_every_length_boundary() {
        // Paths around where record_len's varint grows (127/128, 16383/16384 can't occur).
        for n in 1..200 {
            let path = vec![b'a'; n];
            for e in [
                entry(EntryKind::File, &path, b""),
                entry(EntryKind::Dir, &path, b""),
                entry(EntryKind::Symlink, &path, b"../x"),
                entry(EntryKind::HardLink, &path, b"a/b"),
            ] {
                let b = encode(&e);
                assert_eq!(peek_len(&b[..PEEK_LEN.min(b.len())], 0).unwrap(), b.len());
                assert_eq!(decode(&b, 5).unwrap(), (e, b.len()));
            }
        }
        let mut e = entry(EntryKind::File, &[b'p'; MAX_PATH_LEN], b"");
        for (t, ns) in [(i64::MIN, 0), (i64::MAX, 999_999_999), (-1, 1), (0, 0)] {
            e.mtime_sec = t;
            e.mtime_nsec = ns;
            e.size = u64::MAX - 1;
            e.data_start = 1;
            e.mode = 0o7777;
            e.uid = u32::MAX;
            let b = encode(&e);
            assert_eq!(decode(&b, 0).unwrap().0, e);
        }
    }

    /// The saving the format exists for: a typical file entry is 33 bytes shorter.
    #[test]
    fn a_typical_file_entry_is_about_half_a_classic_one() {
        let e = entry(EntryKind::File, b"ref-cast-1.0.27/src/lib.rs", b"");
        let (classic, compact) = (e.encode().len(), encode(&e).len());
        assert!(classic - compact >= 30, "{classic} vs {compact}");
    }

    #[test]
    fn every_damaged_byte_and_every_truncation_is_an_error() {
        let e = entry(EntryKind::Symlink, b"dir/link", b"target");
        let b = encode(&e);
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                assert!(decode(&d, 0).is_err(), "byte {i} bit {bit}");
            }
        }
        for n in 0..b.len() {
            assert!(decode(&b[..n], 0).is_err(), "{n} bytes");
        }
    }

    /// Fields the CRC accepts are still checked: with the CRC fixed up, a bad kind is
    /// unsupported; a bad mode, a non-minimal varint or lengths that disagree are corrupt.
    #[test]
    fn fields_are_checked_under_a_valid_crc() {
        let e = entry(EntryKind::File, b"f", b"");
        let fix = |mut d: Vec<u8>| {
            let n = d.len();
            let c = crc(&d[..n - 4]);
            d[n - 4..].copy_from_slice(&c.to_le_bytes());
            d
        };
        let b = encode(&e);
        let mut d = b.clone();
        d[2] = 9; // kind
        assert!(matches!(decode(&fix(d), 0), Err(Error::Unsupported { .. })));
        let mut d = b.clone();
        assert_eq!(&d[3..5], &[0xA4, 0x03]); // 0o644
        d[4] = 0x7F; // now 0o37644, beyond 0o7777
        assert!(matches!(decode(&fix(d), 0), Err(Error::Corrupt { .. })));
        // A path_len one short: the lengths no longer fill the record.
        let mut d = b.clone();
        let plen_at = b.len() - 4 - 1 - 2;
        assert_eq!(d[plen_at], 1);
        d[plen_at] = 0;
        assert!(matches!(decode(&fix(d), 0), Err(Error::Corrupt { .. })));
        // record_len non-minimal (one more byte, so the record is re-laid).
        let mut d = vec![TAG, (b.len() as u8 + 1) | 0x80, 0x00];
        d.extend_from_slice(&b[2..b.len() - 4]);
        d.extend_from_slice(&[0; 4]);
        assert!(matches!(decode(&fix(d), 0), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0, 1, -1, 2, -2, i64::MAX, i64::MIN, 1_733_300_000] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn varint64_rejects_every_other_encoding() {
        for v in [0u64, 1, 127, 128, 1 << 35, u64::MAX] {
            let mut b = Vec::new();
            put_varint64(&mut b, v);
            assert_eq!(b.len(), super::super::compact::varint64_len(v));
            assert_eq!(get_varint64(&b, 0, 0, "v").unwrap(), (v, b.len()));
            assert!(get_varint64(&b[..b.len() - 1], 0, 0, "v").is_err());
        }
        // Non-minimal, and above 2^64 - 1.
        assert!(get_varint64(&[0x80, 0x00], 0, 0, "v").is_err());
        let mut big = vec![0xFF; 9];
        big.push(0x02);
        assert!(get_varint64(&big, 0, 0, "v").is_err());
        let mut long = vec![0x80; 10];
        long.push(0x01);
        assert!(get_varint64(&long, 0, 0, "v").is_err());
    }
}
