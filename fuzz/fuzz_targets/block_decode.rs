//! Decoding one block from arbitrary header fields and payload with the order-1 model, and
//! round-tripping arbitrary bytes through every codec.
//! Asserts: no panic; a block that decodes matches its length and CRC32; encode→decode is
//! the identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmz::codec::{decode_blocks, encode_blocks, BlockRefData};
use lmz::format::{BlockHeader, Codec};
use lmz::model::order1::Order1;

fuzz_target!(|data: &[u8]| {
    let m = Order1::new(1 << 16);
    if data.len() >= 9 {
        let codec = match data[0] % 3 {
            0 => Codec::Stored,
            1 => Codec::Zstd,
            _ => Codec::Model,
        };
        let plain_len = u16::from_le_bytes([data[1], data[2]]) as u32 % 4096;
        let tokens = u16::from_le_bytes([data[3], data[4]]) as u32;
        let plain_crc = u32::from_le_bytes([data[5], data[6], data[7], data[8]]);
        let payload = &data[9..];
        let header = BlockHeader {
            codec,
            plain_len,
            coded_len: payload.len() as u32,
            tokens,
            plain_crc,
            coded_crc: crc32fast::hash(payload),
        };
        let b = [BlockRefData {
            number: 0,
            offset: 0,
            header,
            payload,
        }];
        if let Ok(r) = decode_blocks(Some(&m), &b, 1) {
            if let Ok(plain) = &r[0] {
                assert_eq!(plain.len() as u32, plain_len);
                assert_eq!(crc32fast::hash(plain), plain_crc);
            }
        }
    }
    // Round trip of the input itself, split into three blocks.
    let parts: Vec<&[u8]> = data.chunks(data.len().div_ceil(3).max(1)).collect();
    let (coded, _) = encode_blocks(Some(&m), &parts, 2, 3).expect("encoding never fails");
    let refs: Vec<BlockRefData> = coded
        .iter()
        .enumerate()
        .map(|(i, c)| c.as_block(i as u64))
        .collect();
    for (r, p) in decode_blocks(Some(&m), &refs, 3)
        .unwrap()
        .into_iter()
        .zip(&parts)
    {
        assert_eq!(&r.unwrap(), p);
    }
});
