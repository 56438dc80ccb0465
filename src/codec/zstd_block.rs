//! zstd blocks (FORMAT.md §11): one zstd frame per block, nothing before or after it.
//!
//! Two implementations, one contract. With the `libzstd` feature (the default) the reference
//! C library compresses (at `--zstd-level`) and decodes. Without it, as in the build with no C
//! or C++ code (`--no-default-features`), the pure-Rust `ruzstd` does both: it decodes every
//! frame the format allows, and compresses only at its one implemented level (about zstd's
//! level 1). That changes which blocks are stored, zstd or model-coded, never whether an
//! archive is valid: the writer's choice of codec is not part of the format. CI runs the
//! format vectors through both decoders, so they accept and reject the same payloads.

use crate::error::{Error, Result};

/// Compresses `plain` as one zstd frame; `None` if the compressor fails.
pub fn compress(plain: &[u8], level: i32) -> Option<Vec<u8>> {
    #[cfg(feature = "libzstd")]
    {
        zstd::bulk::compress(plain, level).ok()
    }
    #[cfg(not(feature = "libzstd"))]
    {
        let _ = level;
        Some(ruzstd::encoding::compress_to_vec(
            plain,
            ruzstd::encoding::CompressionLevel::Fastest,
        ))
    }
}

/// Decompresses block `number`'s payload (at archive `offset`), which must be exactly one
/// zstd frame, into at most `limit + 1` bytes: one byte more than allowed reveals a frame that
/// is too long, which the caller reports with the lengths. Memory grows with the output
/// actually produced, so a frame claiming a large size costs nothing by itself.
pub fn decompress(payload: &[u8], limit: usize, number: u64, offset: u64) -> Result<Vec<u8>> {
    let not_one_frame = || {
        Error::corrupt(
            offset,
            format!("block {number}: payload is not exactly one zstd frame"),
        )
    };
    let err =
        |e: &dyn std::fmt::Display| Error::corrupt(offset, format!("block {number}: zstd: {e}"));
    // A skippable frame (magic 0x184D2A50 ..= 0x184D2A5F) is a frame, but not the one
    // frame a block holds; libzstd would decode it to nothing.
    if payload.len() >= 4
        && u32::from_le_bytes(payload[..4].try_into().unwrap()) >> 4 == 0x0184_D2A5
    {
        return Err(not_one_frame());
    }
    #[cfg(feature = "libzstd")]
    return libzstd_decode(payload, limit, &not_one_frame, &err);
    #[cfg(not(feature = "libzstd"))]
    return ruzstd_decode(payload, limit, &not_one_frame, &err);
}

#[cfg(feature = "libzstd")]
fn libzstd_decode(
    payload: &[u8],
    limit: usize,
    not_one_frame: &dyn Fn() -> Error,
    err: &dyn Fn(&dyn std::fmt::Display) -> Error,
) -> Result<Vec<u8>> {
    use std::io::Read;
    // Exactly one frame: no skippable or concatenated frames, no trailing bytes.
    if zstd::zstd_safe::find_frame_compressed_size(payload) != Ok(payload.len()) {
        return Err(not_one_frame());
    }
    let dec = zstd::stream::read::Decoder::with_buffer(payload)
        .map_err(|e| err(&e))?
        .single_frame();
    let mut out = Vec::with_capacity(limit.min(1 << 16));
    dec.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| err(&e))?;
    Ok(out)
}

/// Compiled in every build, so that the default build's tests hold it to libzstd.
#[cfg_attr(feature = "libzstd", allow(dead_code))]
fn ruzstd_decode(
    payload: &[u8],
    limit: usize,
    not_one_frame: &dyn Fn() -> Error,
    err: &dyn Fn(&dyn std::fmt::Display) -> Error,
) -> Result<Vec<u8>> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use ruzstd::decoding::{FrameDecoder, StreamingDecoder};
    use std::io::Read;
    // libzstd's default limit on the window a frame may ask for (windowLogMax 27).
    const MAX_WINDOW: u64 = 1 << 27;
    let mut rest = payload;
    let dec = StreamingDecoder::new_with_max_window_size(&mut rest, MAX_WINDOW);
    let mut dec = match dec {
        Ok(d) => d,
        // A skippable frame where the frame should be.
        Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
            ..
        })) => return Err(not_one_frame()),
        Err(e) => return Err(err(&e)),
    };
    let mut out = Vec::with_capacity(limit.min(1 << 16));
    (&mut dec)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| err(&e))?;
    if out.len() > limit {
        return Ok(out);
    }
    let frame: FrameDecoder = dec.into_frame_decoder();
    if !frame.is_finished() {
        return Err(err(&"the frame ends early"));
    }
    // ruzstd computes the content checksum but leaves comparing it to its caller.
    if let Some(want) = frame.get_checksum_from_data() {
        if frame.get_calculated_checksum() != Some(want) {
            return Err(err(&"content checksum mismatch"));
        }
    }
    if !rest.is_empty() {
        return Err(not_one_frame());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..2000u32 {
            v.extend_from_slice(format!("line {} of a log, value {}\n", i, i * 7 % 13).as_bytes());
        }
        v
    }

    #[test]
    fn round_trip_and_exact_frame() {
        let plain = sample();
        let z = compress(&plain, 19).unwrap();
        assert!(z.len() < plain.len() / 4, "{} bytes", z.len());
        assert_eq!(decompress(&z, plain.len(), 0, 0).unwrap(), plain);
        // One byte over the limit shows a frame that is too long.
        let short = decompress(&z, plain.len() - 10, 0, 0).unwrap();
        assert_eq!(short.len(), plain.len() - 9);
        // Trailing bytes, a second frame, a truncated frame: corrupt, never a panic.
        let mut two = z.clone();
        two.extend_from_slice(&z);
        let e = decompress(&two, 2 * plain.len(), 0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not exactly one zstd frame"), "{e}");
        let mut skip = z.clone();
        skip.extend_from_slice(&[0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
        let e = decompress(&skip, plain.len(), 0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not exactly one zstd frame"), "{e}");
        let e = decompress(&[0x5F, 0x2A, 0x4D, 0x18, 0, 0, 0, 0], 10, 0, 0).unwrap_err();
        assert!(e.to_string().contains("not exactly one zstd frame"), "{e}");
        for cut in [1, 3, z.len() / 2] {
            assert!(decompress(&z[..z.len() - cut], plain.len(), 0, 0).is_err());
        }
        for i in 0..z.len().min(64) {
            let mut bad = z.clone();
            bad[i] ^= 0x40;
            // Any outcome but a panic: the caller's CRC catches bytes that decode.
            let _ = decompress(&bad, plain.len(), 0, 0);
        }
    }

    /// The two decoders agree, payload by payload: the same bytes, or both an error (the
    /// no-C build must accept and reject what the default build does).
    #[cfg(feature = "libzstd")]
    #[test]
    fn ruzstd_decodes_as_libzstd_does() {
        let nof = || Error::corrupt(0, "not one frame");
        let err = |e: &dyn std::fmt::Display| Error::corrupt(0, e.to_string());
        let both = |p: &[u8], limit: usize| {
            let c = libzstd_decode(p, limit, &nof, &err).ok();
            let r = ruzstd_decode(p, limit, &nof, &err).ok();
            assert_eq!(c, r, "payload {:02x?}", &p[..p.len().min(16)]);
        };
        let plain = sample();
        let mut payloads = Vec::new();
        for level in [1, 3, 19] {
            payloads.push(zstd::bulk::compress(&plain, level).unwrap());
            payloads.push(zstd::bulk::compress(&plain[..100], level).unwrap());
        }
        payloads.push(zstd::bulk::compress(b"", 3).unwrap());
        let mut e = zstd::bulk::Compressor::new(19).unwrap();
        e.include_checksum(true).unwrap();
        e.include_contentsize(false).unwrap();
        payloads.push(e.compress(&plain).unwrap());
        payloads.push(ruzstd::encoding::compress_to_vec(
            &plain[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for z in &payloads {
            for limit in [plain.len(), 100, 99, 0] {
                both(z, limit);
            }
            let mut two = z.clone();
            two.extend_from_slice(z);
            both(&two, 2 * plain.len());
            for cut in 1..z.len().min(12) {
                both(&z[..z.len() - cut], plain.len());
            }
            // Damaged frames: a byte flipped at random places, checksum frames included.
            for _ in 0..300 {
                let mut bad = z.clone();
                let i = (next() % bad.len() as u64) as usize;
                bad[i] ^= 1 << (next() % 8);
                let c = libzstd_decode(&bad, plain.len(), &nof, &err).ok();
                let r = ruzstd_decode(&bad, plain.len(), &nof, &err).ok();
                // Where both decode, they decode alike; a frame one rejects and the other
                // decodes to other bytes is caught by the block CRC.
                if let (Some(c), Some(r)) = (&c, &r) {
                    assert_eq!(c, r);
                }
            }
        }
    }
}
