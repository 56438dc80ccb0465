//! Opening an archive from arbitrary bytes and decoding every block: with the order-1 model,
//! or for model kind 3 with the tiny committed model (the `portable-tiny*` vectors' seeds
//! reach the transformer, the archive primer and the adaptive bias).
//! Asserts: no panic; whatever decodes has exactly the length and CRC32 its block header and
//! the index promise; reads of every file agree with the decoded blocks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmz::archive::Archive;
use lmz::format::ModelKind;
use lmz::model::portable::PortableLm;
use lmz::model::{order1::Order1, Model};

/// The tiny committed kind-3 model, loaded once.
fn tiny() -> &'static PortableLm {
    static TINY: std::sync::OnceLock<PortableLm> = std::sync::OnceLock::new();
    TINY.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        lmz::model::synthetic::load_committed(&root).expect("the tiny model loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(a) = Archive::from_bytes(data.to_vec()) else {
        return;
    };
    let order1 = Order1::new(a.header().pin.max_block_tokens);
    let model: Option<&dyn Model> = match a.header().pin.kind {
        ModelKind::Order1 => Some(&order1),
        ModelKind::Portable => Some(tiny()),
        _ => None,
    };
    let Ok(results) = a.decode_blocks(model, 0..a.block_count(), 3) else {
        return;
    };
    let mut good = vec![None; a.block_count()];
    for (i, r) in results.into_iter().enumerate() {
        if let Ok(plain) = r {
            let b = a.block(i).expect("a block that decoded has a valid header");
            assert_eq!(plain.len() as u32, b.header.plain_len);
            assert_eq!(crc32fast::hash(&plain), b.header.plain_crc);
            assert_eq!(plain.len() as u32, a.blocks()[i].plain_len);
            good[i] = Some(plain);
        }
    }
    // Every file whose blocks all decoded reads back as those bytes.
    for idx in 0..a.entries().len() {
        let Ok(e) = a.file_entry(idx) else { continue };
        let range = a.blocks_covering(e.data_start, e.data_start + e.size);
        if range.clone().any(|i| good[i].is_none()) {
            assert!(a.read(model, idx, 0, u64::MAX, 2).is_err());
            continue;
        }
        let got = a
            .read(model, idx, 0, u64::MAX, 2)
            .expect("blocks decoded before");
        let mut want = Vec::new();
        for i in range {
            let s = a.block_start(i);
            let p = good[i].as_ref().unwrap();
            let lo = e.data_start.max(s) - s;
            let hi = (e.data_start + e.size).min(s + p.len() as u64) - s;
            want.extend_from_slice(&p[lo as usize..hi as usize]);
        }
        assert_eq!(got, want);
        assert_eq!(got.len() as u64, e.size);
    }
});
