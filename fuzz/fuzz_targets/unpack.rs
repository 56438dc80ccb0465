//! A full unpack of arbitrary bytes from a stream into a temporary directory.
//! Asserts: no panic; nothing is created outside the destination; when the stream unpack
//! succeeds, the random-access reader accepts the same bytes and every extracted file holds
//! exactly what it reads (the two readers agree).
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lmz::archive::extract::{ExtractOptions, Extractor};
use lmz::archive::stream::extract_stream;
use lmz::archive::Archive;
use lmz::format::{EntryKind, ModelKind};
use lmz::model::{order1::Order1, Model};

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    let r = extract_stream(
        data,
        |h| {
            let m: Option<Box<dyn Model>> = (h.pin.kind == ModelKind::Order1)
                .then(|| Box::new(Order1::new(h.pin.max_block_tokens)) as Box<dyn Model>);
            Ok((m, Extractor::new(&dest, ExtractOptions::default())?))
        },
        Some(2),
    );
    // Only `dest` was ever created beside it.
    assert!(count(root.path()) <= 1);
    if r.is_err() {
        return;
    }
    let a = Archive::from_bytes(data.to_vec()).expect("stream-valid archive must open");
    let order1 = Order1::new(a.header().pin.max_block_tokens);
    let model: Option<&dyn Model> =
        (a.header().pin.kind == ModelKind::Order1).then_some(&order1 as &dyn Model);
    for (idx, e) in a.entries().iter().enumerate() {
        let p = dest.join(std::str::from_utf8(&e.path).unwrap_or("\u{0}invalid"));
        let md = match std::fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(_) => continue, // non-UTF-8 names are not looked up here
        };
        match e.kind {
            EntryKind::File | EntryKind::HardLink => {
                let want = a
                    .read(model, idx, 0, u64::MAX, 2)
                    .expect("stream decoded it");
                assert_eq!(std::fs::read(&p).unwrap(), want);
                if e.kind == EntryKind::File {
                    assert_eq!(md.mode() & 0o7777, e.mode);
                }
            }
            EntryKind::Dir => assert!(md.is_dir()),
            EntryKind::Symlink => assert!(md.file_type().is_symlink()),
        }
    }
});
