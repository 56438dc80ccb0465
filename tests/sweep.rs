//! Corruption sweep: every single-byte flip and every truncation of a reference archive is
//! either rejected with an error or decodes to exactly the original bytes — through the
//! random-access reader and through the stream extractor. Prints the counts.

use std::time::{Duration, Instant};

use lmz::archive::extract::{ExtractOptions, Extractor};
use lmz::archive::merge::merge;
use lmz::archive::stream::extract_stream;
use lmz::archive::{Archive, Meta, Shard, Writer, WriterOptions};
use lmz::format::{Framing, ModelKind};
use lmz::model::order1::Order1;
use lmz::model::portable::PortableLm;
use lmz::model::Model;

/// (path, contents) of every regular file in the reference archive.
type Files = Vec<(Vec<u8>, Vec<u8>)>;

/// A small archive with several blocks (model-coded, zstd and stored) and entries; with
/// `primer`, under context policy 2 (the first 200 bytes of its text as the archive primer,
/// FORMAT.md §12.8), so flips in the primer's bytes are swept too.
fn reference(primer: bool, framing: Framing) -> (Vec<u8>, Files) {
    reference_as(primer, framing, None)
}

/// [`reference`], or shard `shard`'s part of it (of 3).
fn reference_as(primer: bool, framing: Framing, shard: Option<u32>) -> (Vec<u8>, Files) {
    let m = Order1::new(512);
    let opts = WriterOptions {
        block_size: 512,
        width: 2,
        zstd_level: 3,
        framing,
        bias_rate: 0,
    };
    let meta = Meta {
        mode: 0o644,
        ..Meta::default()
    };
    let mut text = Vec::new();
    let mut x = 12345u32;
    for _ in 0..900 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        text.push(b"etaoin shrdlu "[(x >> 16) as usize % 14]);
    }
    let tokens: Vec<u32> = text[..200].iter().map(|&b| b as u32).collect();
    let primer = primer.then_some(&tokens[..]);
    let mut w = match shard {
        None => Writer::with_primer(Vec::new(), Some(&m as &dyn Model), opts, primer),
        Some(index) => {
            let shard = Shard {
                index,
                count: 3,
                data_len: 900 + 300 + 400 + 9,
            };
            Writer::part_with_primer(Vec::new(), Some(&m as &dyn Model), opts, primer, shard)
        }
    }
    .unwrap();
    let noise: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let zeros = vec![0u8; 400];
    let files = vec![
        (b"d/text".to_vec(), text),
        (b"d/noise".to_vec(), noise),
        (b"zeros".to_vec(), zeros),
        (b"small".to_vec(), b"tiny file".to_vec()),
    ];
    w.add_dir(
        b"d",
        Meta {
            mode: 0o755,
            ..Meta::default()
        },
    )
    .unwrap();
    for (p, d) in &files {
        w.add_file(p, meta, d.len() as u64, &mut d.as_slice())
            .unwrap();
    }
    w.add_symlink(b"d/link", b"../small", meta).unwrap();
    w.add_hardlink(b"hard", b"small", meta).unwrap();
    let (bytes, stats) = w.finish().unwrap();
    assert!(
        shard.is_some() || stats.blocks.iter().filter(|&&n| n > 0).count() >= 2,
        "several codecs in use: {stats:?}"
    );
    (bytes, files)
}

#[derive(Default, Debug)]
struct Counts {
    cases: u64,
    rejected: u64,
    exact: u64,
    wrong: u64,
    slowest: Duration,
}

/// The tiny committed kind-3 model (FORMAT.md §20.10), loaded once, one thread.
fn tiny() -> &'static PortableLm {
    static TINY: std::sync::OnceLock<PortableLm> = std::sync::OnceLock::new();
    TINY.get_or_init(load_tiny)
}

/// The tiny committed kind-3 model, one thread (a stream reader owns its model: a fresh
/// load, about a millisecond).
fn load_tiny() -> PortableLm {
    lmz::model::synthetic::load_committed(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
        .expect("the tiny model loads")
}

/// Opens and reads every file of `bytes`; `Ok(true)` when all equal the originals,
/// `Ok(false)` on any wrong byte, `Err` when rejected.
fn random_access(bytes: &[u8], files: &[(Vec<u8>, Vec<u8>)]) -> Result<bool, lmz::Error> {
    let a = Archive::from_bytes(bytes.to_vec())?;
    let m = Order1::new(a.header().pin.max_block_tokens);
    let model: Option<&dyn Model> = match a.header().pin.kind {
        ModelKind::Order1 => Some(&m),
        ModelKind::Portable => Some(tiny()),
        _ => None,
    };
    a.check_model(model)?;
    let mut all = true;
    for (p, d) in files {
        let idx = a
            .find(p)
            .ok_or_else(|| lmz::Error::corrupt(0, "entry missing"))?;
        let got = a.read(model, idx, 0, u64::MAX, 2)?;
        all &= &got == d;
    }
    Ok(all)
}

fn stream(bytes: &[u8], files: &[(Vec<u8>, Vec<u8>)]) -> Result<bool, lmz::Error> {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    extract_stream(
        bytes,
        |h| {
            let m: Option<Box<dyn Model>> = match h.pin.kind {
                ModelKind::Order1 => Some(Box::new(Order1::new(h.pin.max_block_tokens))),
                ModelKind::Portable => Some(Box::new(load_tiny())),
                _ => None,
            };
            Ok((m, Extractor::new(&dest, ExtractOptions::default())?))
        },
        Some(2),
    )?;
    let mut all = true;
    for (p, d) in files {
        let got = std::fs::read(dest.join(std::str::from_utf8(p).unwrap())).unwrap_or_default();
        all &= &got == d;
    }
    Ok(all)
}

fn tally(c: &mut Counts, r: Result<bool, lmz::Error>, t: Duration, what: &str) {
    c.cases += 1;
    c.slowest = c.slowest.max(t);
    match r {
        Err(_) => c.rejected += 1,
        Ok(true) => c.exact += 1,
        Ok(false) => {
            c.wrong += 1;
            eprintln!("WRONG BYTES: {what}");
        }
    }
}

#[test]
fn every_flip_and_truncation_is_rejected_or_exact() {
    sweep(false, Framing::Classic);
}

#[test]
fn every_flip_and_truncation_of_a_primed_archive_is_rejected_or_exact() {
    sweep(true, Framing::Classic);
}

/// The compact framing (FORMAT.md §6.1, §7.1, §8.1): varint headers, one CRC over each
/// block record, index rows without offsets, compact entry records.
#[test]
fn every_flip_and_truncation_of_a_compact_archive_is_rejected_or_exact() {
    sweep(false, Framing::Compact);
}

/// Compact blocks with classic entry records (header flag bit 1 only: lmz 0.4's layout),
/// primed.
#[test]
fn every_flip_and_truncation_of_a_compact_blocks_archive_is_rejected_or_exact() {
    sweep(true, Framing::CompactBlocks);
}

/// Model kind 3 with the archive primer and the adaptive bias (FORMAT.md §12.8, §12.9): the
/// committed vector `portable-tiny-bias` (three model-coded blocks of the tiny model, a
/// primer coded under the bias), one bit flipped per byte (alternately the lowest and the
/// highest: each case decodes the primer and up to three blocks).
#[test]
fn every_flip_and_truncation_of_a_biased_kind3_archive_is_rejected_or_exact() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("format-spec/vectors/valid/portable-tiny-bias.lmz");
    let orig = std::fs::read(path).unwrap();
    let a = Archive::from_bytes(orig.clone()).unwrap();
    assert!(a.header().bias_rate != 0 && a.header().primer.is_some());
    let files: Files = (0..a.entries().len())
        .filter(|&i| a.file_entry(i).is_ok())
        .map(|i| {
            let data = a.read(Some(tiny()), i, 0, u64::MAX, 2).unwrap();
            (a.entries()[i].path.clone(), data)
        })
        .collect();
    assert_eq!(files.len(), 4);
    // Every byte of the header (the pin, the coded primer, the bias rate), every fifth
    // elsewhere: each case decodes the primer and up to three blocks.
    let header_len = a.header().encode().len();
    let every = |i: usize| i < header_len || i.is_multiple_of(5);
    sweep_bytes(
        orig,
        files,
        "kind 3, primer, adaptive bias",
        &[0x01, 0x80],
        true,
        every,
    );
}

fn sweep(primer: bool, framing: Framing) {
    let (orig, files) = reference(primer, framing);
    assert_eq!(
        Archive::from_bytes(orig.clone()).unwrap().framing(),
        framing
    );
    assert_eq!(
        Archive::from_bytes(orig.clone())
            .unwrap()
            .header()
            .primer
            .is_some(),
        primer
    );
    let what = format!("primer: {primer}, {framing:?}");
    sweep_bytes(orig, files, &what, &[0x01, 0x80], false, |_| true);
}

/// Flips (with each of `bits`, or with them in turn where `alternate`) of the bytes at the
/// offsets `at` selects, and truncations to those lengths, of `orig`, whose files are
/// `files`, through both readers.
fn sweep_bytes(
    orig: Vec<u8>,
    files: Files,
    what: &str,
    bits: &[u8],
    alternate: bool,
    at: impl Fn(usize) -> bool,
) {
    assert!(random_access(&orig, &files).unwrap());
    assert!(stream(&orig, &files).unwrap());
    let mut ra = Counts::default();
    let mut st = Counts::default();
    for i in (0..orig.len()).filter(|&i| at(i)) {
        let these = if alternate {
            &bits[i % bits.len()..i % bits.len() + 1]
        } else {
            bits
        };
        for &bit in these {
            let mut b = orig.clone();
            b[i] ^= bit;
            let t = Instant::now();
            let r = random_access(&b, &files);
            tally(
                &mut ra,
                r,
                t.elapsed(),
                &format!("flip {bit:#x} at {i} (random access)"),
            );
            let t = Instant::now();
            let r = stream(&b, &files);
            tally(
                &mut st,
                r,
                t.elapsed(),
                &format!("flip {bit:#x} at {i} (stream)"),
            );
        }
    }
    for n in (0..orig.len()).filter(|&n| at(n)) {
        let t = Instant::now();
        let r = random_access(&orig[..n], &files);
        tally(
            &mut ra,
            r,
            t.elapsed(),
            &format!("truncate at {n} (random access)"),
        );
        let t = Instant::now();
        let r = stream(&orig[..n], &files);
        tally(
            &mut st,
            r,
            t.elapsed(),
            &format!("truncate at {n} (stream)"),
        );
    }
    // Trailing garbage is rejected too.
    let mut b = orig.clone();
    b.extend_from_slice(b"garbage");
    assert!(random_access(&b, &files).is_err());
    assert!(stream(&b, &files).is_err());
    println!(
        "corruption sweep over {} bytes ({what}): random access {:?}; stream {:?}; panics = 0",
        orig.len(),
        ra,
        st
    );
    assert_eq!(ra.wrong + st.wrong, 0);
    // A flip or cut can only ever be harmless where no byte is checked; here every byte is.
    assert_eq!(
        ra.exact, 0,
        "every byte of the archive is covered by a check"
    );
    // Hang guard (not a speed test): a case is a few milliseconds; minutes mean a loop.
    assert!(ra.slowest.max(st.slowest) < Duration::from_secs(30));
}

/// Merges `parts`; `Ok(true)` when the result is exactly `want`.
fn merged(parts: &[Vec<u8>], want: &[u8]) -> Result<bool, lmz::Error> {
    let mut out = Vec::new();
    let ps = parts
        .iter()
        .enumerate()
        .map(|(k, p)| (format!("part {k}"), std::io::Cursor::new(p.as_slice())))
        .collect();
    merge(ps, &mut out)?;
    Ok(out == want)
}

/// Every single-byte flip and every truncation of every part of a 3-shard set (of the primed
/// reference archive, so the primer in each part's header is swept too) is refused by the
/// merge: none merges into wrong bytes, and none is harmless (every byte of a part is under
/// a CRC or checked against the others).
#[test]
fn every_flip_and_truncation_of_a_part_is_refused() {
    part_sweep(Framing::Classic);
}

/// Parts of a compact archive: their records and index rows are compact too.
#[test]
fn every_flip_and_truncation_of_a_compact_part_is_refused() {
    part_sweep(Framing::Compact);
}

fn part_sweep(framing: Framing) {
    let (single, _) = reference(true, framing);
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|k| reference_as(true, framing, Some(k)).0)
        .collect();
    assert!(merged(&parts, &single).unwrap());
    let mut c = Counts::default();
    let mut bytes = 0;
    for k in 0..parts.len() {
        let orig = &parts[k];
        bytes += orig.len();
        let mut set = parts.clone();
        for i in 0..orig.len() {
            for bit in [0x01u8, 0x80] {
                set[k] = orig.clone();
                set[k][i] ^= bit;
                let t = Instant::now();
                let r = merged(&set, &single);
                tally(
                    &mut c,
                    r,
                    t.elapsed(),
                    &format!("part {k}: flip {bit:#x} at {i}"),
                );
            }
        }
        for n in 0..orig.len() {
            set[k] = orig[..n].to_vec();
            let t = Instant::now();
            let r = merged(&set, &single);
            tally(
                &mut c,
                r,
                t.elapsed(),
                &format!("part {k}: truncate at {n}"),
            );
        }
        set[k] = orig.clone();
        set[k].push(0);
        assert!(merged(&set, &single).is_err());
    }
    println!("part sweep over {bytes} bytes of 3 parts ({framing:?}): {c:?}; panics = 0");
    assert_eq!(c.wrong, 0);
    assert_eq!(c.exact, 0, "every byte of a part is covered by a check");
    assert_eq!(c.rejected, c.cases);
    assert!(c.slowest < Duration::from_secs(30));
}
