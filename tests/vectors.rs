//! Golden vectors of the lmz archive format, version 1 (`format-spec/vectors/`).
//!
//! `regenerate_vectors` (ignored) writes every file of `format-spec/vectors/`:
//!
//!     cargo test --release --test vectors -- --ignored regenerate_vectors
//!
//! The other tests check the committed files: every valid vector opens, decodes and extracts
//! (through the random-access reader and through the stream reader) to exactly what its
//! manifest lists; every invalid vector is rejected by both readers, with an error, never a
//! panic, for the reason listed in `invalid_vectors()`; and regenerating in memory reproduces
//! every committed file byte for byte (the writer is deterministic).
//!
//! Valid vectors use only the pure-Rust engines (no model, the order-1 model, or the portable
//! transformer with the tiny committed model `format-spec/vectors/model/tiny-llama.gguf`): no
//! llama.cpp.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use lmz::archive::extract::{ExtractOptions, Extractor};
use lmz::archive::stream::{extract_stream, StreamStats};
use lmz::archive::{Archive, Meta, Writer, WriterOptions};
use lmz::format::{
    BlockHeader, Codec, Entry, EntryKind, Footer, Framing, Header, Index, ModelKind, FOOTER_LEN,
};
use lmz::model::order1::Order1;
use lmz::model::portable::PortableLm;
use lmz::model::Model;
use lmz::{Class, Error};
use sha2::{Digest, Sha256};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("format-spec/vectors")
}

// ---------------------------------------------------------------------------------------
// Deterministic inputs
// ---------------------------------------------------------------------------------------

/// xorshift64: reproducible data without a crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Text with strong order-1 structure and no long repeats: the order-1 model beats zstd.
fn markov(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut prev = 0u8;
    (0..n)
        .map(|_| {
            prev = (prev * 7 + (r.next() & 1) as u8) % 16;
            b'a' + prev
        })
        .collect()
}

/// Words drawn from a small list: zstd compresses it.
fn prose(seed: u64, n: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "archive", "block", "model", "token", "stream", "index", "footer", "header",
        "entry", "data", "byte", "range", "coder", "every", "reader", "writer", "must", "check",
        "its", "CRC", "and", "a", "of", "to", "in",
    ];
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(WORDS[(r.next() % WORDS.len() as u64) as usize].as_bytes());
        out.push(if r.next().is_multiple_of(9) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(n);
    out
}

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| (r.next() >> 56) as u8).collect()
}

fn meta(mode: u32, mtime_sec: i64, mtime_nsec: u32) -> Meta {
    Meta {
        mode,
        uid: 1000,
        gid: 100,
        mtime_sec,
        mtime_nsec,
    }
}

#[derive(Clone)]
enum Item {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    HardLink(&'static str),
}

#[derive(Clone)]
struct Input {
    path: &'static str,
    item: Item,
    meta: Meta,
}

fn input(path: &'static str, item: Item, meta: Meta) -> Input {
    Input { path, item, meta }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    None,
    Order1,
}

/// A valid vector produced by `lmz::archive::Writer`.
#[derive(Clone)]
struct WriterVector {
    name: &'static str,
    engine: Engine,
    block_size: u32,
    width: usize,
    inputs: Vec<Input>,
    /// The archive primer's tokens (context policy 2), if any.
    primer: Option<Vec<u32>>,
    framing: Framing,
}

/// `basic`: no model; a directory tree with every entry kind, zstd and stored blocks, small
/// files sharing a block and a file spanning blocks.
fn basic() -> WriterVector {
    WriterVector {
        name: "basic",
        engine: Engine::None,
        block_size: 512,
        width: 1,
        primer: None,
        framing: Framing::Classic,
        inputs: vec![
            input("docs", Item::Dir, meta(0o755, 1_700_000_000, 0)),
            input(
                "docs/readme.txt",
                Item::File(prose(1, 300)),
                meta(0o644, 1_700_000_001, 123_456_789),
            ),
            input(
                "empty",
                Item::File(Vec::new()),
                meta(0o600, 1_700_000_002, 999_999_999),
            ),
            input("docs/sub", Item::Dir, meta(0o750, 1_700_000_003, 1)),
            input(
                "docs/sub/notes.txt",
                Item::File(prose(2, 100)),
                meta(0o640, 1_700_000_004, 0),
            ),
            input(
                "docs/link",
                Item::Symlink("readme.txt"),
                meta(0o777, 1_700_000_005, 5),
            ),
            input(
                "hard",
                Item::HardLink("docs/readme.txt"),
                meta(0o644, 1_700_000_001, 123_456_789),
            ),
            input(
                "noise.bin",
                Item::File(noise(3, 400)),
                meta(0o755, 1_700_000_006, 0),
            ),
            input(
                "docs/long.txt",
                Item::File(prose(4, 700)),
                meta(0o644, 1_700_000_007, 0),
            ),
        ],
    }
}

/// `order1`: the order-1 model; model-coded blocks shared by small files and spanned by a
/// large one, plus a zstd block and a stored block.
fn order1() -> WriterVector {
    let phrase = markov(5, 64);
    WriterVector {
        name: "order1",
        engine: Engine::Order1,
        block_size: 1024,
        width: 2,
        primer: None,
        framing: Framing::Classic,
        inputs: vec![
            input(
                "a.txt",
                Item::File(markov(1, 300)),
                meta(0o644, -86_399, 500),
            ),
            input("b.txt", Item::File(markov(2, 200)), meta(0o644, 0, 0)),
            input("dir", Item::Dir, meta(0o755, 1_600_000_000, 0)),
            input(
                "dir/big.txt",
                Item::File(markov(3, 2500)),
                meta(0o644, 1_600_000_001, 0),
            ),
            input(
                "dir/c.txt",
                Item::File(markov(4, 100)),
                meta(0o600, 1_600_000_002, 0),
            ),
            input(
                "rep.txt",
                Item::File(phrase.repeat(10)),
                meta(0o644, 1_600_000_003, 0),
            ),
            input(
                "noise.bin",
                Item::File(noise(6, 500)),
                meta(0o644, 1_600_000_004, 0),
            ),
            input(
                "link",
                Item::Symlink("dir/big.txt"),
                meta(0o777, 1_600_000_005, 0),
            ),
        ],
    }
}

/// `empty`: no entries, no blocks.
fn empty() -> WriterVector {
    WriterVector {
        name: "empty",
        engine: Engine::None,
        block_size: 8192,
        width: 1,
        primer: None,
        framing: Framing::Classic,
        inputs: Vec::new(),
    }
}

/// `order1-primer`: `order1`'s inputs under context policy 2, with the first 200 bytes of
/// `a.txt` as the archive primer (FORMAT.md §12.8).
fn order1_primer() -> WriterVector {
    let mut v = order1();
    v.name = "order1-primer";
    v.primer = Some(markov(1, 200).iter().map(|&b| b as u32).collect());
    v
}

/// `basic-compact`: `basic`'s inputs in the compact framing (FORMAT.md §7.1, §8.1).
fn basic_compact() -> WriterVector {
    WriterVector {
        name: "basic-compact",
        framing: Framing::CompactBlocks,
        ..basic()
    }
}

/// `basic-compact-entries`: `basic`'s inputs with compact blocks and compact entry records
/// (FORMAT.md §6.1): what lmz writes by default.
fn basic_compact_entries() -> WriterVector {
    WriterVector {
        name: "basic-compact-entries",
        framing: Framing::Compact,
        ..basic()
    }
}

/// `order1-compact`: `order1`'s inputs in the compact framing, in the canonical order.
fn order1_compact() -> WriterVector {
    WriterVector {
        name: "order1-compact",
        framing: Framing::CompactBlocks,
        width: 1,
        ..order1()
    }
}

/// `order1-primer-compact`: `order1-primer` in the compact framing.
fn order1_primer_compact() -> WriterVector {
    WriterVector {
        name: "order1-primer-compact",
        framing: Framing::CompactBlocks,
        width: 1,
        ..order1_primer()
    }
}

fn write_archive(v: &WriterVector) -> Vec<u8> {
    let model: Option<Box<dyn Model>> = match v.engine {
        Engine::None => None,
        Engine::Order1 => Some(Box::new(Order1::new(v.block_size))),
    };
    let opts = WriterOptions {
        block_size: v.block_size,
        width: v.width,
        zstd_level: 19,
        framing: v.framing,
        bias_rate: 0,
    };
    let mut w = Writer::with_primer(Vec::new(), model.as_deref(), opts, v.primer.as_deref())
        .expect("writer");
    for i in &v.inputs {
        let p = i.path.as_bytes();
        match &i.item {
            Item::Dir => w.add_dir(p, i.meta),
            Item::File(d) => w.add_file(p, i.meta, d.len() as u64, &mut d.as_slice()),
            Item::Symlink(t) => w.add_symlink(p, t.as_bytes(), i.meta),
            Item::HardLink(t) => w.add_hardlink(p, t.as_bytes(), i.meta),
        }
        .expect("add entry");
    }
    w.finish().expect("finish").0
}

/// The committed bytes of a writer vector. The writer places every record where its entry
/// is added or its block sealed, whatever the width (FORMAT.md §14); a vector written with
/// `width` > 1 keeps the layout of lmz 0.1.0, whose writer wrote entry records at once and
/// block records `width` at a time (an order readers must accept as well, §10.4).
fn committed(v: &WriterVector) -> Vec<u8> {
    let b = write_archive(v);
    if v.width > 1 {
        batched(Raw::parse(&b), v.width).assemble()
    } else {
        b
    }
}

/// `raw`'s records as a writer that holds sealed blocks until `width` are sealed, and
/// writes entry records at once, places them.
fn batched(raw: Raw, width: usize) -> Raw {
    let mut recs = Vec::new();
    let mut pending = Vec::new();
    for r in raw.recs {
        match r {
            Rec::Block(_) => {
                pending.push(r);
                if pending.len() == width {
                    recs.append(&mut pending);
                }
            }
            r => recs.push(r),
        }
    }
    recs.append(&mut pending);
    Raw {
        header: raw.header,
        recs,
    }
}

/// A model-coded block record holding `plain`, one token per byte, coded by `model` alone
/// (not by the writer, which would pick the smallest coding).
fn order1_block(model: &Order1, plain: &[u8]) -> Vec<u8> {
    let tokens: Vec<u32> = plain.iter().map(|&b| b as u32).collect();
    let (payload, _) = lmz::codec::encode_model(
        &mut lmz::codec::Lockstep::new(Some(model), 1),
        vec![&tokens],
    )
    .expect("encode")
    .remove(0);
    assert!(payload.len() <= plain.len());
    let h = BlockHeader::of(Codec::Model, plain, tokens.len() as u32, &payload);
    let mut b = h.encode().to_vec();
    b.extend_from_slice(&payload);
    b
}

/// The entry record of file input `i` whose data starts at data-stream offset `data_start`.
fn file_record(i: &Input, data_start: u64) -> Vec<u8> {
    let Item::File(d) = &i.item else {
        unreachable!()
    };
    Entry {
        kind: EntryKind::File,
        mode: i.meta.mode,
        uid: i.meta.uid,
        gid: i.meta.gid,
        mtime_sec: i.meta.mtime_sec,
        mtime_nsec: i.meta.mtime_nsec,
        size: d.len() as u64,
        data_start,
        path: i.path.as_bytes().to_vec(),
        link: Vec::new(),
    }
    .encode()
}

/// `order1-edge`: assembled record by record (not by the writer), to pin down cases the
/// writer never produces: a model-coded block whose payload is empty (every byte of the
/// range coder's output was a trailing zero), one small file per block, a zero-length file
/// after the last block, and an mtime past 2^32 seconds.
fn order1_edge() -> (Vec<u8>, Vec<Input>) {
    let bs = 64;
    let model = Order1::new(bs);
    let zero = vec![0u8];
    let ab = b"abababababababababababababababab".to_vec();
    let inputs = vec![
        input(
            "zero",
            Item::File(zero.clone()),
            Meta {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
            },
        ),
        input(
            "ab.txt",
            Item::File(ab.clone()),
            Meta {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_sec: 1,
                mtime_nsec: 0,
            },
        ),
        input(
            "tail-empty",
            Item::File(Vec::new()),
            Meta {
                mode: 0o400,
                uid: 65_534,
                gid: 65_534,
                mtime_sec: 4_102_444_800,
                mtime_nsec: 999_999_999,
            },
        ),
    ];
    let b0 = order1_block(&model, &zero);
    assert_eq!(b0.len(), 32, "a lone zero byte codes to an empty payload");
    let raw = Raw {
        header: model.header(bs).encode(),
        recs: vec![
            Rec::Entry(file_record(&inputs[0], 0)),
            Rec::Block(b0),
            Rec::Entry(file_record(&inputs[1], 1)),
            Rec::Block(order1_block(&model, &ab)),
            Rec::Entry(file_record(&inputs[2], 1 + ab.len() as u64)),
        ],
    };
    (raw.assemble(), inputs)
}

/// What feeding a block's inputs `bos = 0, t_0, …, t_{N−2}` does to the order-1 model's
/// counts, re-implemented from FORMAT.md §12.5 (not taken from `lmz::model::order1`), so
/// that a vector can show it reaches the halving branch.
struct Order1Trace {
    /// `(k, row)`: feeding token `t_k` made `counts[row][t_k]` pass 65,000, and row `row`
    /// was halved.
    halvings: Vec<(usize, u8)>,
    /// The frequency (weight `1 + count`) each token `t_k` was coded with: `w[k]`.
    weights: Vec<u32>,
}

fn order1_trace(plain: &[u8]) -> Order1Trace {
    let mut counts = vec![[0u32; 256]; 256];
    let mut prev: Option<u8> = None;
    let mut trace = Order1Trace {
        halvings: Vec::new(),
        weights: Vec::new(),
    };
    // Input k is bos for k = 0, else t_{k−1}; it predicts t_k.
    for (k, &t) in plain.iter().enumerate() {
        let x = if k == 0 { 0 } else { plain[k - 1] };
        if let Some(p) = prev {
            let row = &mut counts[p as usize];
            row[x as usize] += 32;
            if row[x as usize] > 65_000 {
                row.iter_mut().for_each(|c| *c /= 2);
                trace.halvings.push((k - 1, p));
            }
        }
        prev = Some(x);
        trace.weights.push(1 + counts[x as usize][t as usize]);
    }
    trace
}

/// `order1-halving`: order-1 blocks long enough that counts pass 65,000 and their row is
/// halved (FORMAT.md §12.5), assembled record by record so that both blocks are
/// model-coded whatever zstd would achieve.
fn order1_halving() -> (Vec<u8>, Vec<Input>) {
    let bs = 8192;
    let model = Order1::new(bs);
    // Rows `a` and `b` are each halved once, while the model goes on in the other row.
    let alternating = b"ab".repeat(2100);
    // Row `a` is halved six times while it predicts the next token: `a → c` (32) becomes
    // 16, 8, 4, 2, 1 and finally 0 (1 div 2), and the last `c` is coded with weight 1.
    let mut run = b"ac".to_vec();
    run.extend(std::iter::repeat_n(b'a', 7120));
    run.push(b'c');
    let t = order1_trace(&alternating);
    // The 2,032nd `a → b` is counted when `t_4063` is fed, the 2,032nd `b → a` next.
    assert_eq!(t.halvings, [(4063, b'a'), (4064, b'b')]);
    let t = order1_trace(&run);
    let rows: Vec<u8> = t.halvings.iter().map(|h| h.1).collect();
    assert_eq!(rows, [b'a'; 6], "row a is halved six times");
    // The first `a → a` is counted when `t_3` is fed; the 2,032nd one passes 65,000.
    assert_eq!(t.halvings[0].0, 3 + 2031);
    let c_weights: Vec<u32> = run
        .iter()
        .zip(&t.weights)
        .skip(2)
        .filter(|(&b, _)| b == b'c')
        .map(|(_, &w)| w)
        .collect();
    assert_eq!(c_weights, [1], "the last c: its count 1 was halved to 0");
    let meta = Meta {
        mode: 0o644,
        uid: 1000,
        gid: 100,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
    };
    let inputs = vec![
        input("alternating.txt", Item::File(alternating.clone()), meta),
        input("run.txt", Item::File(run.clone()), meta),
    ];
    let raw = Raw {
        header: model.header(bs).encode(),
        recs: vec![
            Rec::Entry(file_record(&inputs[0], 0)),
            Rec::Block(order1_block(&model, &alternating)),
            Rec::Entry(file_record(&inputs[1], alternating.len() as u64)),
            Rec::Block(order1_block(&model, &run)),
        ],
    };
    (raw.assemble(), inputs)
}

/// The tiny committed GGUF model (FORMAT.md §20.10) under the portable engine, one thread,
/// the kernels `LMZ_KERNELS` names (else the best this CPU has: all give the same bits).
fn tiny_model() -> PortableLm {
    lmz::model::synthetic::load_committed(Path::new(env!("CARGO_MANIFEST_DIR")))
        .expect("tiny model loads")
}

/// The tiny model's header for `block_size`, with the diagnostic strings (§4.2) fixed, so
/// that the vector does not depend on the generating machine's CPU features or kernels, nor
/// on the writer's version (these are the strings the vectors were first written with).
/// With `bias_rate` (0: none) and a coded primer (context policy 2) where given.
fn tiny_header_with(
    m: &PortableLm,
    block_size: u32,
    bias_rate: u16,
    primer: Option<lmz::format::Primer>,
) -> Vec<u8> {
    let mut h = m.header(block_size);
    h.backend = "rust".into();
    h.engine_version = "lmz transformer v1 (lmz 0.1.0)".into();
    h.cpu_features = "any".into();
    h.bias_rate = bias_rate;
    if primer.is_some() {
        h.pin.context_policy = lmz::format::POLICY_PRIMER;
    }
    h.primer = primer;
    h.encode()
}

/// `portable-tiny`: model kind 3 (FORMAT.md §20) with the tiny committed model, assembled
/// record by record (the writer would pick zstd over a model with random weights). Block 0
/// holds two files (prose, then code); block 1 a file of bytes that are not UTF-8 (byte
/// tokens) and the start of a longer file, whose rest is block 2. The three blocks are coded
/// in one lockstep batch of width 2, so the batch changes while it runs.
fn portable_tiny() -> (Vec<u8>, Vec<Input>) {
    portable_tiny_with(0, false)
}

/// `portable-tiny-bias`: `portable-tiny`'s entries under the adaptive bias (FORMAT.md §12.9,
/// rate 24,576, what lmz writes) and an archive primer (§12.8) of the tiny vocabulary's
/// training text, itself coded under the bias, whose learned bias every block starts from.
fn portable_tiny_bias() -> (Vec<u8>, Vec<Input>) {
    portable_tiny_with(lmz::archive::DEFAULT_BIAS_RATE, true)
}

fn portable_tiny_with(bias_rate: u16, primer: bool) -> (Vec<u8>, Vec<Input>) {
    let bs = 1024;
    let m = tiny_model();
    let code = b"fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{v:?} <tiny>\");\n}\n".to_vec();
    let mut bytes = vec![0x00, 0x01, 0x7F, 0xFF, 0xFE, 0xC3, 0x28];
    bytes.extend_from_slice("caf\u{e9} \u{20ac}5 \u{1F600}\n".as_bytes());
    bytes.extend_from_slice(&noise(12, 40));
    // The prose is the text the tiny vocabulary's merges were learned from: its tokens
    // average more than a byte, so even random weights code it in fewer bytes than it has
    // (a model block must not be longer than its plain bytes, FORMAT.md §8).
    let alice = lmz::model::synthetic::TRAINING_TEXT.as_bytes();
    let prose = |from: usize, n: usize| -> Vec<u8> {
        alice.iter().cycle().skip(from).take(n).copied().collect()
    };
    let prose_a = prose(0, 900);
    let prose_b = prose(900, 1500);
    let meta = Meta {
        mode: 0o644,
        uid: 1000,
        gid: 100,
        mtime_sec: 1_733_097_600,
        mtime_nsec: 0,
    };
    let inputs = vec![
        input("prose.txt", Item::File(prose_a.clone()), meta),
        input("main.rs", Item::File(code.clone()), meta),
        input("bytes.bin", Item::File(bytes.clone()), meta),
        input("more.txt", Item::File(prose_b.clone()), meta),
    ];
    let data: Vec<u8> = [&prose_a[..], &code, &bytes, &prose_b].concat();
    let plains: Vec<&[u8]> = data.chunks(bs as usize).collect();
    assert_eq!(plains.len(), 3);
    let tokens: Vec<Vec<u32>> = plains
        .iter()
        .map(|p| m.tokenize(p).expect("tokenizes"))
        .collect();
    let mut ls = lmz::codec::Lockstep::new(Some(&m), 2);
    ls.set_bias_rate(bias_rate);
    let primer = primer.then(|| {
        let t = m
            .tokenize(&lmz::model::synthetic::TRAINING_TEXT.as_bytes()[300..700])
            .expect("tokenizes");
        let (coded, _) = lmz::codec::encode_model(&mut ls, vec![&t])
            .expect("encode the primer")
            .pop()
            .expect("one");
        ls.set_primer_tokens(Some(t.clone()));
        lmz::format::Primer {
            tokens: t.len() as u16,
            coded,
        }
    });
    let coded =
        lmz::codec::encode_model(&mut ls, tokens.iter().map(|t| &t[..]).collect()).expect("encode");
    let blocks: Vec<Vec<u8>> = plains
        .iter()
        .zip(&tokens)
        .zip(coded)
        .map(|((plain, toks), (payload, _))| {
            let h = BlockHeader::of(Codec::Model, plain, toks.len() as u32, &payload);
            let mut b = h.encode().to_vec();
            b.extend_from_slice(&payload);
            b
        })
        .collect();
    let mut at = 0u64;
    let mut starts = Vec::new();
    for i in &inputs {
        starts.push(at);
        if let Item::File(d) = &i.item {
            at += d.len() as u64;
        }
    }
    let mut blocks = blocks.into_iter();
    let mut block = || Rec::Block(blocks.next().unwrap());
    let raw = Raw {
        header: tiny_header_with(&m, bs, bias_rate, primer),
        recs: vec![
            Rec::Entry(file_record(&inputs[0], starts[0])),
            Rec::Entry(file_record(&inputs[1], starts[1])),
            Rec::Entry(file_record(&inputs[2], starts[2])),
            block(),
            Rec::Entry(file_record(&inputs[3], starts[3])),
            block(),
            block(),
        ],
    };
    (raw.assemble(), inputs)
}

// ---------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------

/// One entry as a manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MEntry {
    path: Vec<u8>,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_sec: i64,
    mtime_nsec: u32,
    size: u64,
    /// Files only.
    data_start: Option<u64>,
    /// Symlinks and hard links.
    link: Option<Vec<u8>>,
    /// Files, and hard links (the contents of their target).
    sha256: Option<[u8; 32]>,
}

struct Manifest {
    framing: Framing,
    model: ModelKind,
    block_size: u32,
    max_block_tokens: u32,
    data_len: u64,
    blocks: Vec<BlockHeader>,
    entries: Vec<MEntry>,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn json_str(b: &[u8]) -> String {
    let s = std::str::from_utf8(b).expect("vector paths and links are UTF-8");
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::HardLink => "hardlink",
    }
}

fn model_name(k: ModelKind) -> &'static str {
    match k {
        ModelKind::None => "none",
        ModelKind::Order1 => "order1",
        ModelKind::Llama => "llama",
        ModelKind::Portable => "portable",
    }
}

impl Manifest {
    /// Deterministic JSON, one block or entry per line.
    fn to_json(&self) -> String {
        let mut s = String::new();
        s.push_str("{\n  \"format_version\": 1,\n");
        // Listed only for compact archives, so the manifests of classic vectors are as
        // they were before the compact framing existed.
        if self.framing != Framing::Classic {
            let _ = writeln!(s, "  \"framing\": \"{}\",", self.framing.name());
        }
        let _ = writeln!(s, "  \"model\": \"{}\",", model_name(self.model));
        let _ = writeln!(s, "  \"block_size\": {},", self.block_size);
        let _ = writeln!(s, "  \"max_block_tokens\": {},", self.max_block_tokens);
        let _ = writeln!(s, "  \"data_len\": {},", self.data_len);
        s.push_str("  \"blocks\": [");
        for (i, b) in self.blocks.iter().enumerate() {
            let _ = write!(
                s,
                "{}\n    {{\"codec\": \"{}\", \"plain_len\": {}, \"coded_len\": {}, \"tokens\": {}}}",
                if i == 0 { "" } else { "," },
                b.codec.name(),
                b.plain_len,
                b.coded_len,
                b.tokens
            );
        }
        s.push_str(if self.blocks.is_empty() {
            "],\n"
        } else {
            "\n  ],\n"
        });
        s.push_str("  \"entries\": [");
        for (i, e) in self.entries.iter().enumerate() {
            let _ = write!(
                s,
                "{}\n    {{\"path\": {}, \"kind\": \"{}\", \"mode\": \"{:04o}\", \"uid\": {}, \"gid\": {}, \
                 \"mtime_sec\": {}, \"mtime_nsec\": {}, \"size\": {}, \"data_start\": {}, \"link\": {}, \"sha256\": {}}}",
                if i == 0 { "" } else { "," },
                json_str(&e.path),
                kind_name(e.kind),
                e.mode,
                e.uid,
                e.gid,
                e.mtime_sec,
                e.mtime_nsec,
                e.size,
                e.data_start.map_or("null".into(), |d| d.to_string()),
                e.link.as_deref().map_or("null".into(), json_str),
                e.sha256.map_or("null".into(), |h| format!("\"{}\"", hex(&h))),
            );
        }
        s.push_str(if self.entries.is_empty() {
            "]\n}\n"
        } else {
            "\n  ]\n}\n"
        });
        s
    }
}

/// The manifest of a freshly generated vector, from what was put in (paths, metadata,
/// contents) plus the layout the writer chose (data offsets, blocks).
fn manifest_from_inputs(bytes: &[u8], inputs: &[Input]) -> Manifest {
    let a = Archive::from_bytes(bytes.to_vec()).expect("generated vector opens");
    assert_eq!(a.entries().len(), inputs.len());
    let content = |path: &str| -> Vec<u8> {
        match &inputs
            .iter()
            .find(|i| i.path == path)
            .expect("hard-link target")
            .item
        {
            Item::File(d) => d.clone(),
            _ => panic!("hard link to a non-file"),
        }
    };
    let entries = inputs
        .iter()
        .zip(a.entries())
        .map(|(i, e)| {
            assert_eq!(e.path, i.path.as_bytes());
            let (kind, size, link, sha) = match &i.item {
                Item::Dir => (EntryKind::Dir, 0, None, None),
                Item::File(d) => (EntryKind::File, d.len() as u64, None, Some(sha256(d))),
                Item::Symlink(t) => (EntryKind::Symlink, 0, Some(t.as_bytes().to_vec()), None),
                Item::HardLink(t) => (
                    EntryKind::HardLink,
                    0,
                    Some(t.as_bytes().to_vec()),
                    Some(sha256(&content(t))),
                ),
            };
            MEntry {
                path: i.path.as_bytes().to_vec(),
                kind,
                mode: i.meta.mode,
                uid: i.meta.uid,
                gid: i.meta.gid,
                mtime_sec: i.meta.mtime_sec,
                mtime_nsec: i.meta.mtime_nsec,
                size,
                data_start: (kind == EntryKind::File).then_some(e.data_start),
                link,
                sha256: sha,
            }
        })
        .collect();
    let h = a.header();
    Manifest {
        framing: h.framing,
        model: h.pin.kind,
        block_size: h.block_size,
        max_block_tokens: h.pin.max_block_tokens,
        data_len: a.data_len(),
        blocks: (0..a.block_count())
            .map(|i| a.block(i).expect("block").header)
            .collect(),
        entries,
    }
}

fn model_for(h: &Header) -> Option<Box<dyn Model>> {
    match h.pin.kind {
        ModelKind::Order1 => Some(Box::new(Order1::new(h.pin.max_block_tokens))),
        ModelKind::Portable => Some(Box::new(tiny_model())),
        _ => None,
    }
}

/// The manifest of a committed vector, from what the random-access reader decodes.
fn manifest_from_archive(path: &Path) -> Manifest {
    let a = Archive::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let model = model_for(a.header());
    let model = model.as_deref();
    a.check_model(model).expect("model matches the pin");
    // Decode everything once (checks every block), then read each file through the
    // random-access path.
    for (i, r) in a
        .decode_blocks(model, 0..a.block_count(), 2)
        .expect("decode")
        .into_iter()
        .enumerate()
    {
        r.unwrap_or_else(|e| panic!("{}: block {i}: {e}", path.display()));
    }
    let entries = a
        .entries()
        .iter()
        .enumerate()
        .map(|(idx, e)| {
            let sha = match e.kind {
                EntryKind::File | EntryKind::HardLink => {
                    let size = a.file_entry(idx).expect("file").size;
                    let bytes = a.read(model, idx, 0, size, 2).expect("read");
                    assert_eq!(bytes.len() as u64, size);
                    Some(sha256(&bytes))
                }
                _ => None,
            };
            MEntry {
                path: e.path.clone(),
                kind: e.kind,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime_sec: e.mtime_sec,
                mtime_nsec: e.mtime_nsec,
                size: e.size,
                data_start: (e.kind == EntryKind::File).then_some(e.data_start),
                link: matches!(e.kind, EntryKind::Symlink | EntryKind::HardLink)
                    .then(|| e.link.clone()),
                sha256: sha,
            }
        })
        .collect();
    let h = a.header();
    Manifest {
        framing: h.framing,
        model: h.pin.kind,
        block_size: h.block_size,
        max_block_tokens: h.pin.max_block_tokens,
        data_len: a.data_len(),
        blocks: (0..a.block_count())
            .map(|i| a.block(i).expect("block").header)
            .collect(),
        entries,
    }
}

// ---------------------------------------------------------------------------------------
// Raw archives: records as bytes, reassembled with a fresh index and footer
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
enum Rec {
    Entry(Vec<u8>),
    Block(Vec<u8>),
    /// Bytes listed by no index row.
    Junk(Vec<u8>),
}

impl Rec {
    fn bytes(&self) -> &Vec<u8> {
        match self {
            Rec::Entry(b) | Rec::Block(b) | Rec::Junk(b) => b,
        }
    }
    fn bytes_mut(&mut self) -> &mut Vec<u8> {
        match self {
            Rec::Entry(b) | Rec::Block(b) | Rec::Junk(b) => b,
        }
    }
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Minimal LEB128 of `v` (FORMAT.md §7.1).
fn leb(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// A LEB128 varint at `b[at..]`, read leniently (any length, non-minimal accepted): its
/// value and the position after it. For taking apart records a vector damages.
fn lenient_varint(b: &[u8], at: usize) -> (u64, usize) {
    let (mut v, mut i) = (0u64, at);
    loop {
        let c = b[i];
        if i - at < 9 {
            v |= ((c & 0x7F) as u64) << (7 * (i - at));
        }
        i += 1;
        if c & 0x80 == 0 {
            return (v, i);
        }
    }
}

/// A compact block record taken apart (FORMAT.md §7.1), each varint as its bytes, so that
/// a vector can change one and [`CompactRec::encode`] recomputes the record CRC.
#[derive(Clone)]
struct CompactRec {
    codec: u8,
    /// `plain_len`, `coded_len` and (model blocks) `tokens`, as encoded.
    fields: Vec<Vec<u8>>,
    plain_crc: u32,
    payload: Vec<u8>,
    /// Bytes after the payload (none in a valid record).
    extra: Vec<u8>,
}

impl CompactRec {
    fn parse(b: &[u8]) -> CompactRec {
        let n = if b[0] == 2 { 3 } else { 2 };
        let mut pos = 1;
        let mut fields = Vec::new();
        for _ in 0..n {
            let (_, end) = lenient_varint(b, pos);
            fields.push(b[pos..end].to_vec());
            pos = end;
        }
        let coded = lenient_varint(&fields[1], 0).0 as usize;
        let start = pos + 8;
        let end = (start + coded).min(b.len());
        CompactRec {
            codec: b[0],
            fields,
            plain_crc: get32(b, pos),
            payload: b[start..end].to_vec(),
            extra: b[end..].to_vec(),
        }
    }

    fn plain_len(&self) -> u32 {
        lenient_varint(&self.fields[0], 0).0 as u32
    }

    fn set(&mut self, field: usize, v: u64) {
        self.fields[field] = leb(v);
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = vec![self.codec];
        for f in &self.fields {
            b.extend_from_slice(f);
        }
        b.extend_from_slice(&self.plain_crc.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&b);
        h.update(&self.payload);
        b.extend_from_slice(&h.finalize().to_le_bytes());
        b.extend_from_slice(&self.payload);
        b.extend_from_slice(&self.extra);
        b
    }
}

/// Where each compact index row (its two varints) lies in index `ix`.
fn compact_rows(ix: &[u8]) -> Vec<(usize, usize)> {
    let (ne, nb) = (get64(ix, 8) as usize, get64(ix, 16) as usize);
    let mut pos = 24 + 8 * ne;
    (0..nb)
        .map(|_| {
            let start = pos;
            pos = lenient_varint(ix, lenient_varint(ix, pos).1).1;
            (start, pos)
        })
        .collect()
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Rewrites the CRC32 in the last 4 bytes over everything before it (header, entry record,
/// index).
fn fix_tail_crc(b: &mut [u8]) {
    let n = b.len();
    let c = crc32fast::hash(&b[..n - 4]);
    put32(b, n - 4, c);
}

/// Rewrites a block header's CRC32 (bytes 28..32, over bytes 0..28).
fn fix_block_crc(b: &mut [u8]) {
    let c = crc32fast::hash(&b[..28]);
    put32(b, 28, c);
}

/// Replaces a block record's payload, with a matching coded length and payload CRC.
fn set_payload(b: &mut Vec<u8>, payload: &[u8]) {
    b.truncate(32);
    b.extend_from_slice(payload);
    put32(b, 12, payload.len() as u32);
    put32(b, 24, crc32fast::hash(payload));
}

fn entry_path(b: &[u8]) -> Vec<u8> {
    if b[0] == lmz::format::compact_entry::TAG {
        return lmz::format::compact_entry::decode(b, 0)
            .expect("entry")
            .0
            .path;
    }
    let n = u16::from_le_bytes([b[52], b[53]]) as usize;
    b[58..58 + n].to_vec()
}

#[derive(Clone)]
struct Raw {
    header: Vec<u8>,
    recs: Vec<Rec>,
}

impl Raw {
    fn parse(b: &[u8]) -> Raw {
        let (h, hlen) = Header::decode(b).expect("valid base");
        let n = b.len();
        let f = Footer::decode(&b[n - FOOTER_LEN..], n as u64).expect("footer");
        let io = f.index_offset as usize;
        let mut ix =
            Index::decode_framed(&b[io..n - FOOTER_LEN], f.index_offset, h.framing).expect("index");
        let mut spans: Vec<(usize, Rec)> = Vec::new();
        let mut lens = Vec::new();
        for &o in &ix.entries {
            let o = o as usize;
            let len = Entry::peek_len_framed(&b[o..], o as u64, h.framing).expect("entry");
            lens.push(len as u64);
            spans.push((o, Rec::Entry(b[o..o + len].to_vec())));
        }
        if h.framing.compact_blocks() {
            let none = vec![None; lens.len()];
            lmz::format::compact::place_blocks(
                &mut ix,
                &lens,
                &none,
                hlen as u64..f.index_offset,
                h.block_size,
            )
            .expect("tiling");
        }
        for r in &ix.blocks {
            let o = r.offset as usize;
            spans.push((o, Rec::Block(b[o..o + r.record_len as usize].to_vec())));
        }
        spans.sort_by_key(|s| s.0);
        let mut pos = hlen;
        for (o, r) in &spans {
            assert_eq!(*o, pos, "records are contiguous");
            pos += r.bytes().len();
        }
        assert_eq!(pos, io);
        Raw {
            header: b[..hlen].to_vec(),
            recs: spans.into_iter().map(|s| s.1).collect(),
        }
    }

    /// The framing the header's flags name (bits 1 and 2), so that edited headers keep
    /// theirs (undefined flags: as their bit 1 says).
    fn framing(&self) -> Framing {
        let flags = if self.header.len() >= 12 {
            get16(&self.header, 10)
        } else {
            0
        };
        Framing::from_flags(flags).unwrap_or(if flags & 2 != 0 {
            Framing::CompactBlocks
        } else {
            Framing::Classic
        })
    }

    /// Header, records, then an index listing every entry and block record, and the footer.
    fn assemble(&self) -> Vec<u8> {
        let framing = self.framing();
        let mut out = self.header.clone();
        let mut index = Index::default();
        for r in &self.recs {
            match r {
                Rec::Entry(_) => index.entries.push(out.len() as u64),
                Rec::Block(b) => index.blocks.push(lmz::format::BlockRef {
                    offset: out.len() as u64,
                    plain_len: match framing {
                        Framing::Classic => get32(b, 8),
                        _ => CompactRec::parse(b).plain_len(),
                    },
                    record_len: b.len() as u32,
                }),
                Rec::Junk(_) => {}
            }
            out.extend_from_slice(r.bytes());
        }
        let ib = index.encode_framed(framing);
        let f = Footer {
            index_offset: out.len() as u64,
            index_len: ib.len() as u64,
        };
        out.extend_from_slice(&ib);
        out.extend_from_slice(&f.encode());
        out
    }

    fn entry_pos(&self, path: &str) -> usize {
        self.recs
            .iter()
            .position(|r| matches!(r, Rec::Entry(b) if entry_path(b) == path.as_bytes()))
            .unwrap_or_else(|| panic!("no entry {path}"))
    }

    /// Archive offset of record `i` once assembled.
    fn offset_of(&self, i: usize) -> u64 {
        (self.header.len()
            + self.recs[..i]
                .iter()
                .map(|r| r.bytes().len())
                .sum::<usize>()) as u64
    }

    fn block_pos(&self, n: usize) -> usize {
        self.recs
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Rec::Block(_)))
            .nth(n)
            .expect("block")
            .0
    }

    /// Decodes entry `path`, changes it, re-encodes it (with a valid CRC).
    fn edit_entry(mut self, path: &str, f: impl FnOnce(&mut Entry)) -> Raw {
        let i = self.entry_pos(path);
        let framing = self.framing();
        let (mut e, _) = Entry::decode_framed(self.recs[i].bytes(), 0, framing).expect("entry");
        f(&mut e);
        self.recs[i] = Rec::Entry(e.encode_framed(framing));
        self
    }

    /// Flips the low bit of entry record `path`'s CRC: the one defect left in it.
    fn flip_entry_crc(mut self, path: &str) -> Raw {
        let i = self.entry_pos(path);
        let e = self.recs[i].bytes_mut();
        let n = e.len();
        e[n - 1] ^= 0x01;
        self
    }

    /// Patches the bytes of entry record `path`, then fixes its CRC.
    fn patch_entry(mut self, path: &str, f: impl FnOnce(&mut [u8])) -> Raw {
        let i = self.entry_pos(path);
        let b = self.recs[i].bytes_mut();
        f(b);
        fix_tail_crc(b);
        self
    }

    /// Patches block record `n` (header and payload), then fixes its header CRC.
    fn patch_block(mut self, n: usize, f: impl FnOnce(&mut Vec<u8>)) -> Raw {
        let i = self.block_pos(n);
        let b = self.recs[i].bytes_mut();
        f(b);
        fix_block_crc(b);
        self
    }

    /// Changes compact block record `n` (its record CRC recomputed).
    fn edit_compact(mut self, n: usize, f: impl FnOnce(&mut CompactRec)) -> Raw {
        let i = self.block_pos(n);
        let mut c = CompactRec::parse(self.recs[i].bytes());
        f(&mut c);
        self.recs[i] = Rec::Block(c.encode());
        self
    }

    /// Patches the header, then fixes its CRC.
    fn patch_header(mut self, f: impl FnOnce(&mut Vec<u8>)) -> Raw {
        f(&mut self.header);
        fix_tail_crc(&mut self.header);
        self
    }

    fn block_plain(&self, n: usize) -> Vec<u8> {
        let b = self.recs[self.block_pos(n)].bytes();
        let plain_len = get32(b, 8) as usize;
        match b[4] {
            0 => b[32..].to_vec(),
            1 => zstd::bulk::decompress(&b[32..], plain_len).expect("zstd"),
            c => panic!("block {n} has codec {c}"),
        }
    }
}

/// Offsets of the four header strings' length fields.
fn header_strings(h: &[u8]) -> Vec<usize> {
    let mut pos = 80;
    let mut out = Vec::new();
    for _ in 0..4 {
        out.push(pos);
        pos += 2 + u16::from_le_bytes([h[pos], h[pos + 1]]) as usize;
    }
    out
}

/// Offset of `primer_tokens` in a header with a primer: right after the fourth string.
fn primer_at(h: &[u8]) -> usize {
    let at = header_strings(h)[3];
    at + 2 + u16::from_le_bytes([h[at], h[at + 1]]) as usize
}

fn index_span(b: &[u8]) -> (usize, usize) {
    let n = b.len();
    (get64(b, n - 32) as usize, get64(b, n - 24) as usize)
}

/// Patches the index of an assembled archive (its length may change), then fixes the
/// index CRC and rewrites the footer to match.
fn patch_index(mut b: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let (io, il) = index_span(&b);
    let mut ix = b[io..io + il].to_vec();
    f(&mut ix);
    fix_tail_crc(&mut ix);
    b.truncate(io);
    b.extend_from_slice(&ix);
    b.extend_from_slice(
        &Footer {
            index_offset: io as u64,
            index_len: ix.len() as u64,
        }
        .encode(),
    );
    b
}

/// Patches the footer of an assembled archive, then fixes the footer CRC.
fn patch_footer(mut b: Vec<u8>, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let n = b.len();
    let ft = &mut b[n - 32..];
    f(ft);
    let c = crc32fast::hash(&ft[..20]);
    put32(ft, 20, c);
    b
}

/// Byte offset of index row `k` of the entry table.
fn ix_entry(k: usize) -> usize {
    24 + 8 * k
}

/// Byte offset of index row `k` of the block table.
fn ix_block(ix: &[u8], k: usize) -> usize {
    24 + 8 * get64(ix, 8) as usize + 16 * k
}

// ---------------------------------------------------------------------------------------
// Invalid vectors
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// `Error::Corrupt`: breaks a version-1 rule.
    Corrupt,
    /// `Error::Unsupported`: a version, flag, reserved field or enum value version 1 does
    /// not define.
    Unsupported,
    /// `Error::BlockCrc`: a block decodes, but not to the bytes its CRC names.
    BlockCrc,
    /// `Error::ModelMismatch`: valid, but for a model whose pin differs from ours.
    ModelMismatch,
}

impl Why {
    fn of(e: &Error) -> Option<Why> {
        Some(match e {
            Error::Corrupt { .. } => Why::Corrupt,
            Error::Unsupported { .. } => Why::Unsupported,
            Error::BlockCrc { .. } => Why::BlockCrc,
            Error::ModelMismatch { .. } => Why::ModelMismatch,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Why::Corrupt => "corrupt",
            Why::Unsupported => "unsupported",
            Why::BlockCrc => "block-crc",
            Why::ModelMismatch => "model-mismatch",
        }
    }
    fn class(self) -> Class {
        match self {
            Why::ModelMismatch => Class::Model,
            _ => Class::Corrupt,
        }
    }
}

/// Where the random-access reader rejects a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// `Archive::open`.
    Open,
    /// `Archive::check_model`.
    CheckModel,
    /// Decoding the blocks.
    Decode,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Open => "open",
            Stage::CheckModel => "model check",
            Stage::Decode => "decode",
        }
    }
}

struct Bases {
    basic: Raw,
    order1: Raw,
    portable: Raw,
    primer: Raw,
    basic_compact: Raw,
    order1_compact: Raw,
    basic_entries: Raw,
    portable_bias: Raw,
}

/// Which valid vector an invalid one is derived from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    Basic,
    Order1,
    /// `portable-tiny`.
    Portable,
    /// `order1-primer`.
    Primer,
    /// `basic-compact`.
    BasicCompact,
    /// `order1-compact`.
    Order1Compact,
    /// `basic-compact-entries`.
    BasicEntries,
    /// `portable-tiny-bias`.
    PortableBias,
    Nothing,
}

struct Invalid {
    name: &'static str,
    base: Base,
    defect: &'static str,
    why: Why,
    stage: Stage,
    /// Substring of the random-access reader's error message.
    ra: &'static str,
    /// Substring of the stream reader's error message.
    stream: &'static str,
    /// Builds the vector from (a copy of) its base.
    make: fn(Raw) -> Vec<u8>,
}

/// One row of the invalid-vector table:
/// `name, base, defect, error @ random-access stage, random-access message, stream message, make`.
macro_rules! bad {
    ($name:literal, $base:ident, $defect:literal, $why:ident @ $stage:ident, $ra:literal, $stream:literal,
     $make:expr $(,)?) => {
        Invalid {
            name: $name,
            base: Base::$base,
            defect: $defect,
            why: Why::$why,
            stage: Stage::$stage,
            ra: $ra,
            stream: $stream,
            make: $make,
        }
    };
}

/// Every invalid vector: derived from `basic` or `order1` by one change, with every CRC
/// that the defect does not name recomputed, so exactly the named defect remains.
#[rustfmt::skip]
fn invalid_vectors() -> Vec<Invalid> {
    vec![
        // --- Header ---------------------------------------------------------------------
        bad! { "bad-header-magic", Basic, "header magic byte 1 is 'X' (header CRC fixed)",
            Corrupt @ Open, "bad header magic", "bad header magic",
            |r| r.patch_header(|h| h[1] = b'X').assemble() },
        bad! { "header-crc", Basic, "header CRC32 wrong",
            Corrupt @ Open, "header CRC32 mismatch", "header CRC32 mismatch",
            |mut r| {
                let n = r.header.len();
                r.header[n - 1] ^= 0x01;
                r.assemble()
            } },
        bad! { "unknown-version", Basic, "format version 2",
            Unsupported @ Open, "format version 2", "format version 2",
            |r| r.patch_header(|h| put16(h, 8, 2)).assemble() },
        bad! { "header-flags-set", Basic, "header flags = 0x0001",
            Unsupported @ Open, "header flags", "header flags",
            |r| r.patch_header(|h| put16(h, 10, 1)).assemble() },
        bad! { "header-length-out-of-range", Basic, "header_len = 91 (the least possible is 92)",
            Corrupt @ Open, "header length 91 out of range", "header length 91 out of range",
            |mut r| {
                put32(&mut r.header, 12, 91);
                r.assemble()
            } },
        bad! { "header-extra-bytes", Basic,
            "a zero byte between the last header string and the CRC (header_len counts it)",
            Corrupt @ Open, "unexpected bytes after the header strings", "unexpected bytes after the header strings",
            |r| r.patch_header(|h| {
                let n = h.len();
                h.insert(n - 4, 0);
                let n = h.len() as u32;
                put32(h, 12, n);
            }).assemble() },
        bad! { "header-string-overrun", Basic, "the last header string's length is one more than the bytes left",
            Corrupt @ Open, "overruns the header", "overruns the header",
            |r| r.patch_header(|h| {
                let at = header_strings(h)[3];
                let n = u16::from_le_bytes([h[at], h[at + 1]]);
                put16(h, at, n + 1);
            }).assemble() },
        bad! { "header-string-not-utf8", Basic, "the engine version string starts with byte 0xFF",
            Corrupt @ Open, "not UTF-8", "not UTF-8",
            |r| r.patch_header(|h| {
                let at = header_strings(h)[2];
                h[at + 2] = 0xFF;
            }).assemble() },
        bad! { "header-block-size-zero", Basic, "block_size = 0",
            Corrupt @ Open, "block size 0 out of range", "block size 0 out of range",
            |r| r.patch_header(|h| put32(h, 16, 0)).assemble() },
        bad! { "header-block-size-too-large", Basic, "block_size = 64 MiB + 1",
            Corrupt @ Open, "block size 67108865 out of range", "block size 67108865 out of range",
            |r| r.patch_header(|h| put32(h, 16, (64 << 20) + 1)).assemble() },
        bad! { "unknown-model-kind", Basic, "model kind 255",
            Unsupported @ Open, "model kind 255", "model kind 255",
            |r| r.patch_header(|h| h[20] = 255).assemble() },
        bad! { "modelless-header-with-model-fields", Basic, "model kind 0 (none) with vocab_size = 256",
            Corrupt @ Open, "model fields set in an archive without a model",
            "model fields set in an archive without a model",
            |r| r.patch_header(|h| put32(h, 24, 256)).assemble() },
        bad! { "modelless-header-unknown-schedule", Basic,
            "model kind 0 with schedule = 2 (a value kinds 1 and 2 would report as unsupported)",
            Corrupt @ Open, "model fields set in an archive without a model",
            "model fields set in an archive without a model",
            |r| r.patch_header(|h| h[36] = 2).assemble() },
        bad! { "modelless-header-unknown-tokenizer", Basic,
            "model kind 0 with tokenizer 255 (undefined enumerations are decoded before the kind's rules)",
            Unsupported @ Open, "tokenizer 255", "tokenizer 255",
            |r| r.patch_header(|h| h[22] = 255).assemble() },
        bad! { "unknown-tokenizer", Order1, "tokenizer 255",
            Unsupported @ Open, "tokenizer 255", "tokenizer 255",
            |r| r.patch_header(|h| h[22] = 255).assemble() },
        bad! { "freq-bits-not-24", Order1, "freq_bits = 16",
            Unsupported @ Open, "frequency precision 16", "frequency precision 16",
            |r| r.patch_header(|h| h[21] = 16).assemble() },
        bad! { "unknown-context-policy", Order1, "context_policy = 3",
            Unsupported @ Open, "context policy or evaluation schedule", "context policy or evaluation schedule",
            |r| r.patch_header(|h| h[23] = 3).assemble() },
        bad! { "primer-missing", Order1, "context_policy = 2, but nothing between the header strings and the CRC",
            Corrupt @ Open, "primer overruns the header", "primer overruns the header",
            |r| r.patch_header(|h| h[23] = 2).assemble() },
        bad! { "primer-tokens-zero", Primer, "primer_tokens = 0",
            Corrupt @ Open, "primer of 0 tokens", "primer of 0 tokens",
            |r| r.patch_header(|h| { let at = primer_at(h); put16(h, at, 0) }).assemble() },
        bad! { "primer-too-many-tokens", Primer, "primer_tokens = 1025",
            Corrupt @ Open, "primer of 1025 tokens", "primer of 1025 tokens",
            |r| r.patch_header(|h| { let at = primer_at(h); put16(h, at, 1025) }).assemble() },
        bad! { "primer-overrun", Primer, "primer_coded_len is one more than the bytes before the CRC",
            Corrupt @ Open, "primer overruns the header", "primer overruns the header",
            |r| r.patch_header(|h| {
                let at = primer_at(h) + 2;
                let n = u16::from_le_bytes([h[at], h[at + 1]]);
                put16(h, at, n + 1);
            }).assemble() },
        bad! { "primer-trailing-bytes", Primer,
            "eight bytes 0x5A appended to the coded primer (primer_coded_len and header_len count them): more than the decoder reads, whose last bytes read may be the flush's trimmed zeros",
            Corrupt @ Decode, "the archive primer has bytes after the end", "the archive primer has bytes after the end",
            |r| r.patch_header(|h| {
                // Not one byte: the flush leaves the final interval's low bits free, so a
                // byte in the place of a trimmed zero may still decode the same tokens.
                let at = primer_at(h) + 2;
                let n = u16::from_le_bytes([h[at], h[at + 1]]);
                put16(h, at, n + 8);
                let end = h.len() - 4;
                h.splice(end..end, [0x5A; 8]);
                let len = h.len() as u32;
                put32(h, 12, len);
            }).assemble() },
        bad! { "unknown-schedule", Order1, "schedule = 2",
            Unsupported @ Open, "context policy or evaluation schedule", "context policy or evaluation schedule",
            |r| r.patch_header(|h| h[36] = 2).assemble() },
        bad! { "tokenizer-wrong-for-model", Order1, "order-1 model with tokenizer 2 (llama pieces)",
            Corrupt @ Open, "tokenizer does not belong to the model kind",
            "tokenizer does not belong to the model kind",
            |r| r.patch_header(|h| h[22] = 2).assemble() },
        bad! { "order1-vocab-not-256", Order1, "order-1 model with vocab_size = 512",
            Corrupt @ Open, "vocabulary of 256", "vocabulary of 256",
            |r| r.patch_header(|h| put32(h, 24, 512)).assemble() },
        bad! { "bos-outside-vocab", Order1, "bos = 256 with vocab_size = 256",
            Corrupt @ Open, "BOS token outside the vocabulary", "BOS token outside the vocabulary",
            |r| r.patch_header(|h| put32(h, 28, 256)).assemble() },
        bad! { "max-block-tokens-zero", Order1, "max_block_tokens = 0",
            Corrupt @ Open, "max_block_tokens out of range", "max_block_tokens out of range",
            |r| r.patch_header(|h| put32(h, 32, 0)).assemble() },
        bad! { "max-block-tokens-above-block-size", Order1, "max_block_tokens = 1025 with block_size 1024",
            Corrupt @ Open, "max_block_tokens exceeds the block size", "max_block_tokens exceeds the block size",
            |r| r.patch_header(|h| put32(h, 32, 1025)).assemble() },
        bad! { "model-pin-sha256-mismatch", Order1,
            "model SHA-256 differs from the order-1 model's (a valid archive for another model)",
            ModelMismatch @ CheckModel, "wrong model", "wrong model",
            |r| r.patch_header(|h| h[48] ^= 0x01).assemble() },
        bad! { "model-pin-kv-type-mismatch", Order1, "kv_type = 1 (the order-1 model's pin has 0)",
            ModelMismatch @ CheckModel, "wrong model", "wrong model",
            |r| r.patch_header(|h| h[39] = 1).assemble() },
        bad! { "model-pin-bos-mismatch", Order1, "bos = 1 (below vocab_size, but the order-1 model's pin has 0)",
            ModelMismatch @ CheckModel, "wrong model", "wrong model",
            |r| r.patch_header(|h| put32(h, 28, 1)).assemble() },
        // --- Model kind 3 (the portable transformer, FORMAT.md §20) ----------------------
        bad! { "portable-tokenizer-llama-pieces", Portable, "model kind 3 with tokenizer 2 (llama pieces)",
            Corrupt @ Open, "tokenizer does not belong to the model kind", "tokenizer does not belong to the model kind",
            |r| r.patch_header(|h| h[22] = 2).assemble() },
        bad! { "portable-arith-version-2", Portable, "arith_version (byte 37) = 2, an arithmetic this reader does not implement",
            ModelMismatch @ CheckModel, "wrong model", "wrong model",
            |r| r.patch_header(|h| h[37] = 2).assemble() },
        bad! { "portable-kv-type-f32", Portable, "kv_type = 2 (the tiny model's pin has 1: f16 keys and values)",
            ModelMismatch @ CheckModel, "wrong model", "wrong model",
            |r| r.patch_header(|h| h[39] = 2).assemble() },
        bad! { "portable-model-size-mismatch", Portable, "model_size one byte larger than the tiny model's",
            ModelMismatch @ CheckModel, "wrong model", "wrong model",
            |r| r.patch_header(|h| { let size = get64(h, 40); put64(h, 40, size + 1) }).assemble() },
        bad! { "max-block-tokens-below-block", Order1, "max_block_tokens = 100, but block 0 holds 500 tokens",
            Corrupt @ Decode, "token count 500 out of range", "token count 500 out of range",
            |r| r.patch_header(|h| put32(h, 32, 100)).assemble() },
        // --- Truncation, footer -----------------------------------------------------------
        bad! { "zero-length", Nothing, "an empty file",
            Corrupt @ Open, "empty file", "stream ended inside the header",
            |_| Vec::new() },
        bad! { "truncated-header", Basic, "only the first 50 bytes",
            Corrupt @ Open, "truncated inside its header", "stream ended inside the header",
            |r| r.assemble()[..50].to_vec() },
        bad! { "truncated-after-header", Basic, "the header alone",
            Corrupt @ Open, "no room for a footer", "no index was found",
            |r| r.header },
        bad! { "truncated-half", Basic, "the first half of the archive",
            Corrupt @ Open, "no footer magic", "truncated",
            |r| {
                let a = r.assemble();
                a[..a.len() / 2].to_vec()
            } },
        bad! { "truncated-footer", Basic, "the last byte removed",
            Corrupt @ Open, "no footer magic", "stream ended inside the footer",
            |r| {
                let mut a = r.assemble();
                a.pop();
                a
            } },
        bad! { "trailing-garbage", Basic, "one byte (0x0A) after the footer",
            Corrupt @ Open, "no footer magic", "trailing bytes after the footer",
            |r| {
                let mut a = r.assemble();
                a.push(b'\n');
                a
            } },
        bad! { "footer-crc", Basic, "footer CRC32 wrong",
            Corrupt @ Open, "footer CRC32 mismatch", "footer CRC32 mismatch",
            |r| {
                let mut a = r.assemble();
                let n = a.len();
                a[n - 12] ^= 0x01;
                a
            } },
        bad! { "footer-reserved-set", Basic, "footer reserved bytes = 1",
            Unsupported @ Open, "footer reserved", "footer reserved",
            |r| patch_footer(r.assemble(), |f| put32(f, 16, 1)) },
        bad! { "footer-index-offset", Basic, "index_offset one less, index_len one more (their sum still right)",
            Corrupt @ Open, "bad index magic", "footer does not point at the index",
            |r| patch_footer(r.assemble(), |f| {
                let (o, l) = (get64(f, 0), get64(f, 8));
                put64(f, 0, o - 1);
                put64(f, 8, l + 1);
            }) },
        bad! { "footer-index-len", Basic, "index_len one more",
            Corrupt @ Open, "index does not end where the footer begins",
            "index does not end where the footer begins",
            |r| patch_footer(r.assemble(), |f| {
                let l = get64(f, 8);
                put64(f, 8, l + 1);
            }) },
        // --- Index ------------------------------------------------------------------------
        bad! { "index-crc", Basic, "index CRC32 wrong",
            Corrupt @ Open, "index CRC32 mismatch", "index CRC32 mismatch",
            |r| {
                let mut a = r.assemble();
                let n = a.len();
                a[n - 33] ^= 0x01;
                a
            } },
        bad! { "index-reserved-set", Basic, "index reserved bytes = 1",
            Unsupported @ Open, "index reserved", "index reserved",
            |r| patch_index(r.assemble(), |ix| put32(ix, 4, 1)) },
        bad! { "index-count-mismatch", Basic, "entry count one more than the rows",
            Corrupt @ Open, "index counts disagree with its length", "index counts disagree with its length",
            |r| patch_index(r.assemble(), |ix| {
                let n = get64(ix, 8);
                put64(ix, 8, n + 1);
            }) },
        bad! { "index-entry-offset", Basic, "entry row 1 points one byte into its record",
            Corrupt @ Open, "bad entry magic", "the index does not describe the records",
            |r| patch_index(r.assemble(), |ix| {
                let o = get64(ix, ix_entry(1));
                put64(ix, ix_entry(1), o + 1);
            }) },
        bad! { "index-entry-past-body", Basic, "the last entry row points at the index",
            Corrupt @ Open, "outside the body", "the index does not describe the records",
            |r| {
                let a = r.assemble();
                let (io, _) = index_span(&a);
                patch_index(a, |ix| {
                    let last = get64(ix, 8) as usize - 1;
                    put64(ix, ix_entry(last), io as u64);
                })
            } },
        bad! { "index-block-coded-len", Basic, "block row 0's coded_len one less than its block header's",
            Corrupt @ Open, "records do not tile", "the index does not describe the records",
            |r| patch_index(r.assemble(), |ix| {
                let at = ix_block(ix, 0) + 12;
                let c = get32(ix, at);
                put32(ix, at, c - 1);
            }) },
        bad! { "index-blocks-swapped", Basic, "block rows 0 and 1 swapped",
            Corrupt @ Open, "block 1 lies out of order", "the index does not describe the records",
            |r| patch_index(r.assemble(), |ix| {
                let (r0, r1) = (ix_block(ix, 0), ix_block(ix, 1));
                let row0 = ix[r0..r0 + 16].to_vec();
                ix.copy_within(r1..r1 + 16, r0);
                ix[r1..r1 + 16].copy_from_slice(&row0);
            }) },
        bad! { "index-records-overlap", Basic, "block row 0 points at the entry record before the block",
            Corrupt @ Open, "records do not tile", "the index does not describe the records",
            |r| {
                let hard = r.offset_of(r.entry_pos("hard"));
                patch_index(r.assemble(), |ix| {
                    let at = ix_block(ix, 0);
                    put64(ix, at, hard);
                })
            } },
        bad! { "index-missing-entry", Basic,
            "the index omits the entry record of `empty` (counts, CRC and footer fixed)",
            Corrupt @ Open, "records do not tile", "index CRC32 mismatch",
            |r| patch_index(r.assemble(), |ix| {
                // `empty` is the third entry record.
                ix.drain(ix_entry(2)..ix_entry(3));
                let n = get64(ix, 8);
                put64(ix, 8, n - 1);
            }) },
        // --- Entry records ----------------------------------------------------------------
        bad! { "entry-crc", Basic, "entry record `empty`: CRC32 wrong",
            Corrupt @ Open, "entry record CRC32 mismatch", "entry record CRC32 mismatch",
            |r| r.flip_entry_crc("empty").assemble() },
        bad! { "entry-bad-magic", Basic, "entry record `empty` starts with \"LMZX\" (CRC fixed)",
            Corrupt @ Open, "bad entry magic", "unknown record magic",
            |r| r.patch_entry("empty", |e| e[3] = b'X').assemble() },
        bad! { "entry-length-out-of-range", Basic, "entry record `empty`: length field = 10",
            Corrupt @ Open, "entry record length 10 out of range", "entry record length 10 out of range",
            |mut r| {
                let i = r.entry_pos("empty");
                put32(r.recs[i].bytes_mut(), 4, 10);
                r.assemble()
            } },
        bad! { "entry-lengths-disagree", Basic, "entry `empty`: path_len one more than the record holds",
            Corrupt @ Open, "disagree with its record length", "disagree with its record length",
            |r| r.patch_entry("empty", |e| put16(e, 52, 6)).assemble() },
        bad! { "entry-unknown-kind", Basic, "entry `empty`: kind 5",
            Unsupported @ Open, "entry kind 5", "entry kind 5",
            |r| r.patch_entry("empty", |e| e[8] = 5).assemble() },
        bad! { "entry-reserved-set", Basic, "entry `empty`: reserved byte 9 = 1",
            Unsupported @ Open, "entry flags or reserved bytes set", "entry flags or reserved bytes set",
            |r| r.patch_entry("empty", |e| e[9] = 1).assemble() },
        bad! { "entry-mode-high-bits", Basic, "entry `empty`: mode 0o10600",
            Corrupt @ Open, "bits beyond 0o7777", "bits beyond 0o7777",
            |r| r.edit_entry("empty", |e| e.mode = 0o10600).assemble() },
        bad! { "entry-mtime-nsec-out-of-range", Basic, "entry `empty`: mtime_nsec = 1,000,000,000",
            Corrupt @ Open, "nanoseconds out of range", "nanoseconds out of range",
            |r| r.edit_entry("empty", |e| e.mtime_nsec = 1_000_000_000).assemble() },
        bad! { "entry-empty-path", Basic, "symlink `docs/link` renamed to the empty path",
            Corrupt @ Open, "path empty or too long", "path empty or too long",
            |r| r.edit_entry("docs/link", |e| e.path.clear()).assemble() },
        bad! { "entry-path-too-long", Basic, "entry `empty` renamed to 4,097 bytes",
            Corrupt @ Open, "path empty or too long", "path empty or too long",
            |r| r.edit_entry("empty", |e| e.path = vec![b'a'; 4097]).assemble() },
        bad! { "entry-absolute-path", Basic, "entry `empty` renamed `/empty`",
            Corrupt @ Open, "absolute path", "absolute path",
            |r| r.edit_entry("empty", |e| e.path = b"/empty".to_vec()).assemble() },
        bad! { "entry-dotdot-path", Basic, "entry `empty` renamed `../empty`",
            Corrupt @ Open, "'..' component", "'..' component",
            |r| r.edit_entry("empty", |e| e.path = b"../empty".to_vec()).assemble() },
        bad! { "entry-dot-path", Basic, "entry `empty` renamed `./empty`",
            Corrupt @ Open, "'..' component", "'..' component",
            |r| r.edit_entry("empty", |e| e.path = b"./empty".to_vec()).assemble() },
        bad! { "entry-empty-component", Basic, "entry `empty` renamed `docs//empty`",
            Corrupt @ Open, "empty component", "empty component",
            |r| r.edit_entry("empty", |e| e.path = b"docs//empty".to_vec()).assemble() },
        bad! { "entry-trailing-slash", Basic, "directory `docs/sub` renamed `docs/sub/`",
            Corrupt @ Open, "empty component", "empty component",
            |r| r.edit_entry("docs/sub", |e| e.path = b"docs/sub/".to_vec()).assemble() },
        bad! { "entry-nul-in-path", Basic, "entry `empty` renamed `em\\0pty`",
            Corrupt @ Open, "NUL byte", "NUL byte",
            |r| r.edit_entry("empty", |e| e.path = b"em\0pty".to_vec()).assemble() },
        bad! { "symlink-empty-target", Basic, "symlink `docs/link` with an empty target",
            Corrupt @ Open, "do not fit its kind", "do not fit its kind",
            |r| r.edit_entry("docs/link", |e| e.link.clear()).assemble() },
        bad! { "symlink-target-nul", Basic, "symlink `docs/link` → `read\\0me.txt`",
            Corrupt @ Open, "NUL byte", "NUL byte",
            |r| r.edit_entry("docs/link", |e| e.link = b"read\0me.txt".to_vec()).assemble() },
        bad! { "symlink-target-too-long", Basic, "symlink `docs/link` with a target of 4,097 bytes",
            Corrupt @ Open, "link target longer than 4096 bytes", "link target longer than 4096 bytes",
            |r| r.edit_entry("docs/link", |e| e.link = vec![b'a'; 4097]).assemble() },
        bad! { "dir-with-size", Basic, "directory `docs/sub` with size 1",
            Corrupt @ Open, "do not fit its kind", "do not fit its kind",
            |r| r.edit_entry("docs/sub", |e| e.size = 1).assemble() },
        bad! { "file-with-link", Basic, "file `empty` with link `x`",
            Corrupt @ Open, "do not fit its kind", "do not fit its kind",
            |r| r.edit_entry("empty", |e| e.link = b"x".to_vec()).assemble() },
        bad! { "hardlink-with-size", Basic, "hard link `hard` with size 5",
            Corrupt @ Open, "do not fit its kind", "do not fit its kind",
            |r| r.edit_entry("hard", |e| e.size = 5).assemble() },
        bad! { "hardlink-dotdot-target", Basic, "hard link `hard` → `../docs/readme.txt`",
            Corrupt @ Open, "do not fit its kind", "do not fit its kind",
            |r| r.edit_entry("hard", |e| e.link = b"../docs/readme.txt".to_vec()).assemble() },
        bad! { "entry-duplicate-path", Basic, "hard link `hard` renamed `empty`, an earlier file's path",
            Corrupt @ Open, "duplicate entry", "duplicate entry",
            |r| r.edit_entry("hard", |e| e.path = b"empty".to_vec()).assemble() },
        bad! { "entry-parent-missing", Basic, "symlink `docs/link` renamed `nope/link`",
            Corrupt @ Open, "before its parent directory", "before its parent directory",
            |r| r.edit_entry("docs/link", |e| e.path = b"nope/link".to_vec()).assemble() },
        bad! { "entry-parent-not-directory", Basic, "symlink `docs/link` renamed `empty/link` (`empty` is a file)",
            Corrupt @ Open, "before its parent directory", "before its parent directory",
            |r| r.edit_entry("docs/link", |e| e.path = b"empty/link".to_vec()).assemble() },
        bad! { "entry-child-before-parent", Basic, "the records of `docs/sub` and `docs/sub/notes.txt` swapped",
            Corrupt @ Open, "before its parent directory", "before its parent directory",
            |mut r| {
                let (d, f) = (r.entry_pos("docs/sub"), r.entry_pos("docs/sub/notes.txt"));
                r.recs.swap(d, f);
                r.assemble()
            } },
        bad! { "hardlink-to-missing", Basic, "hard link `hard` → `docs/missing.txt`",
            Corrupt @ Open, "hard link to something other than an earlier file",
            "hard link to something other than an earlier file",
            |r| r.edit_entry("hard", |e| e.link = b"docs/missing.txt".to_vec()).assemble() },
        bad! { "hardlink-to-directory", Basic, "hard link `hard` → `docs`",
            Corrupt @ Open, "hard link to something other than an earlier file",
            "hard link to something other than an earlier file",
            |r| r.edit_entry("hard", |e| e.link = b"docs".to_vec()).assemble() },
        bad! { "hardlink-to-symlink", Basic, "hard link `hard` → `docs/link`",
            Corrupt @ Open, "hard link to something other than an earlier file",
            "hard link to something other than an earlier file",
            |r| r.edit_entry("hard", |e| e.link = b"docs/link".to_vec()).assemble() },
        bad! { "hardlink-to-later-file", Basic, "hard link `hard` → `noise.bin`, a file declared after it",
            Corrupt @ Open, "hard link to something other than an earlier file",
            "hard link to something other than an earlier file",
            |r| r.edit_entry("hard", |e| e.link = b"noise.bin".to_vec()).assemble() },
        bad! { "file-data-overlap", Basic, "`docs/sub/notes.txt` starts one byte before `docs/readme.txt` ends",
            Corrupt @ Open, "out of stream order or overlapping", "out of stream order or overlapping",
            |r| r.edit_entry("docs/sub/notes.txt", |e| e.data_start -= 1).assemble() },
        bad! { "empty-file-out-of-order", Basic,
            "zero-length `empty` has data_start 0, before the end of `docs/readme.txt`",
            Corrupt @ Open, "out of stream order or overlapping", "out of stream order or overlapping",
            |r| r.edit_entry("empty", |e| e.data_start = 0).assemble() },
        bad! { "file-data-past-end", Basic, "`docs/long.txt` one byte longer than the data stream holds",
            Corrupt @ Open, "file data extends past the last block", "file data extends past the last block",
            |r| r.edit_entry("docs/long.txt", |e| e.size += 1).assemble() },
        bad! { "entry-after-its-block", Basic, "the record of `noise.bin` moved after the block holding its data",
            Corrupt @ Open, "entry record comes after a block holding its data", "entry record comes after a block holding its data",
            |mut r| {
                let i = r.entry_pos("noise.bin");
                let rec = r.recs.remove(i);
                r.recs.insert(i + 1, rec);
                r.assemble()
            } },
        bad! { "gap-between-records", Basic, "8 zero bytes, listed nowhere, before the record of `noise.bin`",
            Corrupt @ Open, "records do not tile", "unknown record magic",
            |mut r| {
                let i = r.entry_pos("noise.bin");
                r.recs.insert(i, Rec::Junk(vec![0; 8]));
                r.assemble()
            } },
        // --- Block records ----------------------------------------------------------------
        bad! { "block-header-crc", Basic, "block 0: header CRC32 wrong",
            Corrupt @ Decode, "block header CRC32 mismatch", "block header CRC32 mismatch",
            |mut r| {
                let i = r.block_pos(0);
                r.recs[i].bytes_mut()[31] ^= 0x01;
                r.assemble()
            } },
        bad! { "block-bad-magic", Basic, "block 0 starts with \"LMZX\" (header CRC fixed)",
            Corrupt @ Decode, "bad block magic", "unknown record magic",
            |r| r.patch_block(0, |k| k[3] = b'X').assemble() },
        bad! { "block-payload-crc", Basic, "block 0: a payload byte changed, coded_crc not",
            Corrupt @ Decode, "payload CRC32 mismatch", "payload CRC32 mismatch",
            |mut r| {
                let i = r.block_pos(0);
                r.recs[i].bytes_mut()[40] ^= 0x01;
                r.assemble()
            } },
        bad! { "block-plain-crc", Basic, "block 0: plain_crc wrong (the structure is valid; found when decoding)",
            BlockCrc @ Decode, "decoded to bytes whose CRC32", "decoded to bytes whose CRC32",
            |r| r.patch_block(0, |k| {
                let c = get32(k, 20);
                put32(k, 20, c ^ 1);
            }).assemble() },
        bad! { "block-coded-longer-than-plain", Basic,
            "block 1 (400 random bytes) recoded as a zstd frame longer than 400 bytes",
            Corrupt @ Open, "lengths out of range in the index", "coded length exceeds its plain length",
            |r| {
                let plain = r.block_plain(1);
                let z = zstd::bulk::compress(&plain, 1).expect("zstd");
                assert!(z.len() > plain.len());
                r.patch_block(1, |k| {
                    k[4] = Codec::Zstd as u8;
                    set_payload(k, &z);
                }).assemble()
            } },
        bad! { "stored-length-mismatch", Basic, "stored block 1: coded_len = plain_len − 1 (payload one byte short)",
            Corrupt @ Decode, "stored block with coded length != plain length",
            "stored block with coded length != plain length",
            |r| {
                let plain = r.block_plain(1);
                r.patch_block(1, |k| set_payload(k, &plain[..plain.len() - 1])).assemble()
            } },
        bad! { "unknown-codec", Basic, "block 0: codec 3",
            Unsupported @ Decode, "block codec 3", "block codec 3",
            |r| r.patch_block(0, |k| k[4] = 3).assemble() },
        bad! { "block-reserved-set", Basic, "block 0: reserved byte 6 = 1",
            Unsupported @ Decode, "block flags or reserved", "block flags or reserved",
            |r| r.patch_block(0, |k| k[6] = 1).assemble() },
        bad! { "tokens-on-stored-block", Basic, "stored block 1 with tokens = 1",
            Corrupt @ Decode, "token count set on a block without a model",
            "token count set on a block without a model",
            |r| r.patch_block(1, |k| put32(k, 16, 1)).assemble() },
        bad! { "model-block-in-modelless-archive", Basic, "block 0: codec 2 (model), tokens 400, in a model-less archive",
            Corrupt @ Decode, "model-coded block in an archive without a model",
            "model-coded block in an archive without a model",
            |r| r.patch_block(0, |k| {
                k[4] = Codec::Model as u8;
                put32(k, 16, 400);
            }).assemble() },
        bad! { "block-empty", Basic, "an extra stored block with plain_len = coded_len = 0 at the end",
            Corrupt @ Open, "lengths out of range in the index", "block plain length 0 out of range",
            |mut r| {
                r.recs.push(Rec::Block(stored_block(&[])));
                r.assemble()
            } },
        bad! { "block-larger-than-block-size", Basic, "an extra stored block of 513 bytes (block_size 512) at the end",
            Corrupt @ Open, "lengths out of range in the index", "block plain length 513 out of range",
            |mut r| {
                r.recs.push(Rec::Block(stored_block(&[b'x'; 513])));
                r.assemble()
            } },
        bad! { "zstd-bad-frame", Basic, "zstd block 0: first payload byte changed (coded_crc fixed)",
            Corrupt @ Decode, "zstd", "zstd",
            |r| r.patch_block(0, |k| {
                let mut p = k[32..].to_vec();
                p[0] ^= 0xFF;
                set_payload(k, &p);
            }).assemble() },
        bad! { "zstd-truncated-frame", Basic, "zstd block 0: the last 3 bytes of its frame removed (coded_crc fixed)",
            Corrupt @ Decode, "zstd", "zstd",
            |r| r.patch_block(0, |k| {
                let p = k[32..].to_vec();
                set_payload(k, &p[..p.len() - 3]);
            }).assemble() },
        bad! { "zstd-trailing-garbage", Basic, "zstd block 0: 4 bytes \"junk\" after its frame (coded_crc fixed)",
            Corrupt @ Decode, "zstd", "zstd",
            |r| r.patch_block(0, |k| {
                let mut p = k[32..].to_vec();
                p.extend_from_slice(b"junk");
                set_payload(k, &p);
            }).assemble() },
        bad! { "zstd-skippable-frame", Basic,
            "zstd block 0: a skippable frame (4 bytes of data) after its frame (coded_crc fixed)",
            Corrupt @ Decode, "not exactly one zstd frame", "not exactly one zstd frame",
            |r| r.patch_block(0, |k| {
                let mut p = k[32..].to_vec();
                p.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
                p.extend_from_slice(&4u32.to_le_bytes());
                p.extend_from_slice(b"skip");
                set_payload(k, &p);
            }).assemble() },
        bad! { "zstd-two-frames", Basic,
            "zstd block 0: two frames, of its first 200 and its last 200 bytes (coded_crc fixed)",
            Corrupt @ Decode, "not exactly one zstd frame", "not exactly one zstd frame",
            |r| {
                let plain = r.block_plain(0);
                let mut p = zstd::bulk::compress(&plain[..200], 19).expect("zstd");
                p.extend(zstd::bulk::compress(&plain[200..], 19).expect("zstd"));
                assert!(p.len() <= plain.len());
                r.patch_block(0, |k| set_payload(k, &p)).assemble()
            } },
        bad! { "zstd-decompressed-too-short", Basic, "zstd block 0: a frame of its 400 bytes but the last",
            Corrupt @ Decode, "decoded to 399 bytes, expected 400", "decoded to 399 bytes, expected 400",
            |r| {
                let plain = r.block_plain(0);
                let z = zstd::bulk::compress(&plain[..plain.len() - 1], 19).expect("zstd");
                r.patch_block(0, |k| set_payload(k, &z)).assemble()
            } },
        bad! { "zstd-decompressed-too-long", Basic, "zstd block 0: a frame of its 400 bytes plus one",
            Corrupt @ Decode, "decoded to 401 bytes, expected 400", "decoded to 401 bytes, expected 400",
            |r| {
                let mut plain = r.block_plain(0);
                plain.push(b'!');
                let z = zstd::bulk::compress(&plain, 19).expect("zstd");
                r.patch_block(0, |k| set_payload(k, &z)).assemble()
            } },
        // --- Model-coded blocks -----------------------------------------------------------
        bad! { "model-block-zero-tokens", Order1, "model block 0: tokens = 0",
            Corrupt @ Decode, "token count 0 out of range", "token count 0 out of range",
            |r| r.patch_block(0, |k| put32(k, 16, 0)).assemble() },
        bad! { "model-block-too-many-tokens", Order1, "model block 0: tokens = 1025 (max_block_tokens 1024)",
            Corrupt @ Decode, "token count 1025 out of range", "token count 1025 out of range",
            |r| r.patch_block(0, |k| put32(k, 16, 1025)).assemble() },
        bad! { "model-block-tokens-long", Order1,
            "model block 0: tokens = plain_len + 1 (a block holds at most one token per byte, FORMAT.md §7, even though a token may have an empty piece)",
            Corrupt @ Decode, "token count 501 out of range", "token count 501 out of range",
            |r| r.patch_block(0, |k| put32(k, 16, 501)).assemble() },
        bad! { "model-block-tokens-short", Order1, "model block 0: tokens one less than coded",
            Corrupt @ Decode, "decoded to 499 bytes, expected 500", "decoded to 499 bytes, expected 500",
            |r| r.patch_block(0, |k| put32(k, 16, 499)).assemble() },
        bad! { "model-block-damaged", Order1, "model block 0: a payload byte in the middle changed (coded_crc fixed)",
            BlockCrc @ Decode, "decoded to bytes whose CRC32", "decoded to bytes whose CRC32",
            |r| r.patch_block(0, |k| {
                let mut p = k[32..].to_vec();
                let mid = p.len() / 2;
                p[mid] ^= 0x55;
                set_payload(k, &p);
            }).assemble() },
        // --- The adaptive bias (header flag bit 3, FORMAT.md §12.9) ------------------------
        bad! { "bias-rate-zero", PortableBias, "flag bit 3 set, bias_rate = 0",
            Corrupt @ Open, "bias rate 0", "bias rate 0",
            |r| r.patch_header(|h| { let at = h.len() - 6; put16(h, at, 0) }).assemble() },
        bad! { "bias-rate-missing", PortableBias, "flag bit 3 set, but the two bias_rate bytes removed (header_len counts without them)",
            Corrupt @ Open, "bias rate overruns the header", "bias rate overruns the header",
            |r| r.patch_header(|h| {
                let at = h.len() - 6;
                h.drain(at..at + 2);
                let len = h.len() as u32;
                put32(h, 12, len);
            }).assemble() },
        bad! { "bias-under-order1", Order1, "flag bit 3 and a bias_rate under model kind 1 (the adaptive bias is kind 3's)",
            Unsupported @ Open, "adaptive bias (header flag bit 3) under model kind 1", "adaptive bias (header flag bit 3) under model kind 1",
            |r| r.patch_header(|h| {
                let f = get16(h, 10) | 0x0008;
                put16(h, 10, f);
                let end = h.len() - 4;
                h.splice(end..end, 24_576u16.to_le_bytes());
                let len = h.len() as u32;
                put32(h, 12, len);
            }).assemble() },
        bad! { "bias-flag-cleared", PortableBias, "flag bit 3 cleared and bias_rate removed: a well-formed header whose primer and blocks were coded under a bias its reader does not apply",
            Corrupt @ Decode, "archive primer", "archive primer",
            |r| r.patch_header(|h| {
                let f = get16(h, 10) & !0x0008;
                put16(h, 10, f);
                let at = h.len() - 6;
                h.drain(at..at + 2);
                let len = h.len() as u32;
                put32(h, 12, len);
            }).assemble() },
        bad! { "bias-rate-other", PortableBias, "bias_rate = 24,577 instead of 24,576: every table after the first token differs",
            Corrupt @ Decode, "archive primer", "archive primer",
            |r| r.patch_header(|h| { let at = h.len() - 6; put16(h, at, 24_577) }).assemble() },
        bad! { "portable-block-damaged", Portable, "model block 1: a payload byte in the middle changed (coded_crc fixed); kind 3 computes the same everywhere, so this is damage (here the token count runs out before the payload does), never divergence",
            Corrupt @ Decode, "bytes after the end of the coded tokens", "bytes after the end of the coded tokens",
            |r| r.patch_block(1, |k| {
                let mut p = k[32..].to_vec();
                let mid = p.len() / 2;
                p[mid] ^= 0x55;
                set_payload(k, &p);
            }).assemble() },
        bad! { "model-block-code-out-of-range", Order1,
            "model block 0: payload FF FF FF FF, so the decoder's initial code equals its range",
            Corrupt @ Decode, "invalid model-coded stream", "invalid model-coded stream",
            |r| r.patch_block(0, |k| set_payload(k, &[0xFF; 4])).assemble() },
        bad! { "model-block-trailing-zeros", Order1,
            "model block 0: 16 zero bytes appended to its payload (coded_crc fixed); the decoder reads zeros past the end anyway, so the tokens are unchanged",
            Corrupt @ Decode, "bytes after the end of the coded tokens", "bytes after the end of the coded tokens",
            |r| r.patch_block(0, |k| {
                let mut p = k[32..].to_vec();
                p.extend_from_slice(&[0; 16]);
                set_payload(k, &p);
            }).assemble() },
        bad! { "model-block-truncated", Order1,
            "model block 0: payload cut to its first half (coded_len, coded_crc fixed)",
            BlockCrc @ Decode, "decoded to bytes whose CRC32", "decoded to bytes whose CRC32",
            |r| r.patch_block(0, |k| {
                let p = k[32..].to_vec();
                set_payload(k, &p[..p.len() / 2]);
            }).assemble() },
        // --- Compact framing (FORMAT.md §7.1, §8.1) --------------------------------------
        bad! { "compact-unknown-flag", BasicCompact, "header flags = 0x0003 (bit 0 is not defined)",
            Unsupported @ Open, "header flags", "header flags",
            |r| r.patch_header(|h| put16(h, 10, 3)).assemble() },
        bad! { "compact-non-minimal-varint", BasicCompact,
            "block 0: plain_len 400 written in three bytes (90 83 00) instead of two (record CRC fixed, the index row counts the byte)",
            Corrupt @ Decode, "non-minimal varint", "non-minimal varint",
            |r| r.edit_compact(0, |c| c.fields[0] = vec![0x90, 0x83, 0x00]).assemble() },
        bad! { "compact-varint-overflow", BasicCompact,
            "block 0: coded_len is the 5-byte varint FF FF FF FF 1F, above 2^32 − 1 (record CRC fixed)",
            Corrupt @ Decode, "varint above 2^32 - 1", "varint above 2^32 - 1",
            |r| r.edit_compact(0, |c| c.fields[1] = vec![0xFF, 0xFF, 0xFF, 0xFF, 0x1F]).assemble() },
        bad! { "compact-varint-too-long", BasicCompact,
            "block 0: coded_len is a 6-byte varint (80 80 80 80 80 00; record CRC fixed)",
            Corrupt @ Decode, "varint longer than 5 bytes", "varint longer than 5 bytes",
            |r| r.edit_compact(0, |c| c.fields[1] = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x00]).assemble() },
        bad! { "compact-row-record-len", BasicCompact,
            "block 0: a byte 0x00 after its payload, counted by its index row's record_len but not by its coded_len (record CRC over header and payload holds)",
            Corrupt @ Decode, "header disagrees with the index", "block coded length exceeds its plain length",
            |r| r.edit_compact(0, |c| c.extra = vec![0]).assemble() },
        bad! { "compact-row-plain-len", BasicCompact,
            "index row of the last block (3): plain_len one more than its block header's (188 → 189)",
            Corrupt @ Decode, "header disagrees with the index", "the index does not describe",
            |r| patch_index(r.assemble(), |ix| {
                let (start, end) = compact_rows(ix)[3];
                let (len, at) = lenient_varint(ix, start);
                let (plain, _) = lenient_varint(ix, at);
                let mut row = leb(len);
                row.extend(leb(plain + 1));
                ix.splice(start..end, row);
            }) },
        bad! { "compact-index-rows-short", BasicCompact,
            "index block_count one more than its rows (the rows run out before the CRC)",
            Corrupt @ Open, "truncated varint", "truncated varint",
            |r| patch_index(r.assemble(), |ix| {
                let nb = get64(ix, 16);
                put64(ix, 16, nb + 1);
            }) },
        bad! { "compact-index-trailing-bytes", BasicCompact,
            "a byte 0x00 after the index's last block row (index_len and the footer count it)",
            Corrupt @ Open, "bytes after the index's last block row", "index CRC32 mismatch",
            |r| patch_index(r.assemble(), |ix| {
                let n = ix.len();
                ix.insert(n - 4, 0);
            }) },
        bad! { "compact-record-crc", BasicCompact, "block 0: record CRC32 wrong",
            Corrupt @ Decode, "record CRC32 mismatch", "record CRC32 mismatch",
            |mut r| {
                let i = r.block_pos(0);
                let b = r.recs[i].bytes_mut();
                let at = CompactRec::parse(b).fields.iter().map(Vec::len).sum::<usize>() + 1 + 4;
                b[at] ^= 0x01;
                r.assemble()
            } },
        bad! { "compact-payload-damaged", BasicCompact,
            "block 0: a payload byte changed, record CRC not (the record CRC covers the payload)",
            Corrupt @ Decode, "record CRC32 mismatch", "record CRC32 mismatch",
            |mut r| {
                let i = r.block_pos(0);
                let b = r.recs[i].bytes_mut();
                let n = b.len();
                b[n - 10] ^= 0x01;
                r.assemble()
            } },
        bad! { "compact-plain-crc", BasicCompact,
            "block 0: plain_crc wrong (record CRC fixed: the structure is valid; found when decoding)",
            BlockCrc @ Decode, "decoded to bytes whose CRC32", "decoded to bytes whose CRC32",
            |r| r.edit_compact(0, |c| c.plain_crc ^= 1).assemble() },
        bad! { "compact-unknown-codec", BasicCompact, "block 0: codec 3 (record CRC fixed)",
            Unsupported @ Decode, "block codec 3", "block codec 3",
            |r| r.edit_compact(0, |c| c.codec = 3).assemble() },
        bad! { "compact-tokens-long", Order1Compact,
            "model block 0: tokens = plain_len + 1 (record CRC fixed)",
            Corrupt @ Decode, "token count", "token count",
            |r| r.edit_compact(0, |c| {
                let p = c.plain_len() as u64;
                c.set(2, p + 1);
            }).assemble() },
        bad! { "compact-tokens-zero", Order1Compact,
            "model block 0: tokens = 0 (record CRC fixed)",
            Corrupt @ Decode, "token count 0", "token count 0",
            |r| r.edit_compact(0, |c| c.set(2, 0)).assemble() },
        bad! { "compact-tokens-on-stored-block", BasicCompact,
            "stored block 1 written with a tokens varint (1) as if it were a model block: the reader takes it as plain_crc's first byte",
            Corrupt @ Decode, "header disagrees with the index", "record CRC32 mismatch",
            |r| r.edit_compact(1, |c| c.fields.push(vec![1])).assemble() },
        bad! { "compact-classic-block", BasicCompact,
            "zstd block 0 written as a classic record (`LMZB`, 32-byte header, both CRCs right) in a compact archive; its index row counts it",
            Corrupt @ Decode, "classic block record", "unknown record magic",
            |mut r| {
                let i = r.block_pos(0);
                let c = CompactRec::parse(r.recs[i].bytes());
                let h = BlockHeader {
                    codec: Codec::Zstd,
                    plain_len: c.plain_len(),
                    coded_len: c.payload.len() as u32,
                    tokens: 0,
                    plain_crc: c.plain_crc,
                    coded_crc: crc32fast::hash(&c.payload),
                };
                let mut rec = h.encode().to_vec();
                rec.extend_from_slice(&c.payload);
                let len = rec.len() as u64;
                r.recs[i] = Rec::Block(rec);
                patch_index(r.assemble(), |ix| {
                    let (start, end) = compact_rows(ix)[0];
                    let mut row = leb(len);
                    row.extend(leb(h.plain_len as u64));
                    ix.splice(start..end, row);
                })
            } },
        // --- Compact entry records (§6.1) ----------------------------------------------
        bad! { "compact-entries-without-compact-blocks", BasicEntries,
            "header flags 0x0004: bit 2 (compact entries) without bit 1 (header CRC fixed)",
            Unsupported @ Open, "header flags", "header flags",
            |r| r.patch_header(|h| put16(h, 10, 0x0004)).assemble() },
        bad! { "compact-entry-crc", BasicEntries, "compact entry record `empty`: CRC32 wrong",
            Corrupt @ Open, "entry record CRC32 mismatch", "entry record CRC32 mismatch",
            |r| r.flip_entry_crc("empty").assemble() },
        bad! { "compact-entry-unknown-kind", BasicEntries,
            "compact entry record `empty`: kind 9 (CRC fixed)",
            Unsupported @ Open, "entry kind 9", "entry kind 9",
            |r| r.patch_entry("empty", |e| e[2] = 9).assemble() },
        bad! { "compact-entry-non-minimal", BasicEntries,
            "compact entry record `empty`: uid 1000 as a three-byte varint (`E8 87 00`; record_len and CRC fixed)",
            Corrupt @ Open, "entry uid: non-minimal varint", "entry uid: non-minimal varint",
            |mut r| {
                let i = r.entry_pos("empty");
                let e = r.recs[i].bytes();
                // tag, record_len, kind, mode (0o600: two bytes), then uid 1000 = E8 07.
                assert_eq!(&e[5..7], &[0xE8, 0x07]);
                let mut d = e[..5].to_vec();
                d.extend_from_slice(&[0xE8, 0x87, 0x00]);
                d.extend_from_slice(&e[7..]);
                d[1] += 1;
                fix_tail_crc(&mut d);
                r.recs[i] = Rec::Entry(d);
                r.assemble()
            } },
        bad! { "compact-entry-lengths", BasicEntries,
            "compact entry record `empty`: path_len one less than its path (the lengths no longer fill the record; CRC fixed)",
            Corrupt @ Open, "lengths disagree with its record length", "lengths disagree with its record length",
            |r| r.patch_entry("empty", |e| {
                // The path `empty` ends 4 bytes before the end; before it link_len, path_len.
                let n = e.len();
                assert_eq!((e[n - 11], e[n - 10]), (5, 0));
                e[n - 11] = 4;
            }).assemble() },
        bad! { "compact-entry-bad-mode", BasicEntries,
            "compact entry record `empty`: mode 0o10600, beyond 0o7777 (CRC fixed)",
            Corrupt @ Open, "has bits beyond 0o7777", "has bits beyond 0o7777",
            |r| r.patch_entry("empty", |e| {
                assert_eq!(&e[3..5], &[0x80, 0x03]); // 0o600
                e[4] = 0x23; // 0o10600
            }).assemble() },
        bad! { "compact-entry-classic", BasicEntries,
            "entry record `empty` written as a classic record (`LMZE`, its CRC right) in an archive with compact entries",
            Corrupt @ Open, "bad compact entry tag", "unknown record magic",
            |mut r| {
                let i = r.entry_pos("empty");
                let (e, _) = lmz::format::compact_entry::decode(r.recs[i].bytes(), 0).expect("entry");
                r.recs[i] = Rec::Entry(e.encode());
                r.assemble()
            } },
    ]
}

/// A stored block record holding `plain`.
fn stored_block(plain: &[u8]) -> Vec<u8> {
    let h = BlockHeader {
        codec: Codec::Stored,
        plain_len: plain.len() as u32,
        coded_len: plain.len() as u32,
        tokens: 0,
        plain_crc: crc32fast::hash(plain),
        coded_crc: crc32fast::hash(plain),
    };
    let mut b = h.encode().to_vec();
    b.extend_from_slice(plain);
    b
}

// ---------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------

struct ValidOut {
    name: &'static str,
    about: &'static str,
    bytes: Vec<u8>,
    manifest: String,
}

fn valid_vectors() -> Vec<ValidOut> {
    let mut out = Vec::new();
    let about = [
        ("basic", "No model. Directories, files, an empty file, a symlink and a hard link; two small files share zstd block 0, a random file is stored block 1, a 700-byte file spans zstd blocks 2–3 (block_size 512). Written with width 1, so block records interleave with entry records."),
        ("order1", "Order-1 model. Model-coded blocks 0–3 (two small files share block 0; `dir/big.txt` spans blocks 1–3, whose tail `dir/c.txt` shares), zstd block 4 (a repeated phrase), stored block 5 (random bytes); a negative mtime. Its records lie as lmz 0.1.0 wrote them with width 2 (entry records at once, block records two at a time, so `b.txt`, `dir` and `dir/big.txt` precede block 0); lmz now places each block where it is sealed whatever the width (FORMAT.md §14), as in `basic`. Readers accept both (§10.4)."),
        ("empty", "No model, no entries, no blocks: header, an index with no rows, footer."),
        ("basic-compact", "`basic`'s entries and blocks in the compact framing (header flag bit 1, FORMAT.md §7.1, §8.1): each block record is a codec byte, varint lengths and two CRCs (zstd blocks 0, 2, 3 and stored block 1, interleaved with entry records), and the index rows hold no offsets, only each record's length and plain length: the blocks are placed by the tiling."),
        ("order1-compact", "`order1`'s entries and blocks in the compact framing, in the canonical record order (width 1): model-coded blocks 0–3 carry a `tokens` varint, zstd block 4 and stored block 5 do not."),
        ("order1-primer-compact", "`order1-primer` (context policy 2, a 200-token primer) in the compact framing, in the canonical record order."),
        ("basic-compact-entries", "`basic`'s entries and blocks with header flags bits 1 and 2 (FORMAT.md §6.1): `basic-compact`'s blocks and index, and every entry record compact (tag `E`, varint fields, the mtime's seconds zigzag-coded; 26–44 bytes here instead of 66–81). What lmz writes by default."),
        ("order1-primer", "`order1`'s entries and blocks under context policy 2 (FORMAT.md §12.8): the header carries a 200-token primer (the first 200 bytes of `a.txt`, coded from an empty context) and every model-coded block starts after it, its first input the primer's last token. A decoder that ignores the primer, or feeds it differently, decodes other bytes."),
    ];
    for v in [
        basic(),
        order1(),
        empty(),
        order1_primer(),
        basic_compact(),
        order1_compact(),
        order1_primer_compact(),
        basic_compact_entries(),
    ] {
        let bytes = committed(&v);
        let manifest = manifest_from_inputs(&bytes, &v.inputs).to_json();
        let about = about.iter().find(|a| a.0 == v.name).expect("described").1;
        out.push(ValidOut {
            name: v.name,
            about,
            bytes,
            manifest,
        });
    }
    // Vectors assembled record by record: the generator returns the bytes and the inputs.
    type Assemble = fn() -> (Vec<u8>, Vec<Input>);
    let assembled: [(&str, &str, Assemble); 4] = [
        (
            "order1-edge",
            "Order-1 model, assembled record by record: block 0 is one model-coded token whose payload is empty (coded_len 0: the range coder's output was all trailing zeros), block 1 a second model block; one file per block; a zero-length file after the last block; uid/gid 0 and 65534; an mtime past 2^32 s.",
            order1_edge,
        ),
        (
            "portable-tiny",
            "Model kind 3, lmz transformer v1 (FORMAT.md §20), with the tiny committed model `model/tiny-llama.gguf` (random weights of every type: Q4_0, Q4_1, Q8_0, F16, F32), assembled record by record: block 0 holds English prose, a few lines of code with the user-defined token `<tiny>` and the start of `bytes.bin` (bytes that are not UTF-8: byte tokens), block 1 the rest of it and the start of more prose (whose entry record lies between blocks 0 and 1), whose rest is block 2. Coded in one lockstep batch of width 2. A decoder that computes any logit differently from §20 decodes other bytes.",
            portable_tiny,
        ),
        (
            "portable-tiny-bias",
            "`portable-tiny`'s entries and blocks under the adaptive bias (header flag bit 3, FORMAT.md §12.9, rate 24,576: what lmz writes by default) and an archive primer (§12.8) of 258 tokens, coded under the bias itself; each block's bias starts from the state the primer's 258 tokens taught it. A decoder that ignores the bias, updates it otherwise (another rounding, another order), or starts blocks from a zero bias, decodes other bytes.",
            portable_tiny_bias,
        ),
        (
            "order1-halving",
            "Order-1 model, assembled record by record: two model-coded blocks (block_size 8192) whose counts pass 65,000, so the model halves a context's row (FORMAT.md §12.5). Block 0 (`alternating.txt`, `ab` × 2100): rows `a` and `b` are halved once each, when `t_4063` and `t_4064` are fed. Block 1 (`run.txt`, `ac`, 7,120 × `a`, `c`): row `a` is halved six times (the first when `t_2034` is fed, then every 1,016 `a → a`), so its `a → c` count goes 32, 16, 8, 4, 2, 1, 0 (1 div 2 = 0: floor) and the last `c` is coded with weight 1. A decoder that halves at another threshold, only the incremented count, or rounds up decodes other bytes.",
            order1_halving,
        ),
    ];
    for (name, about, make) in assembled {
        let (bytes, inputs) = make();
        let manifest = manifest_from_inputs(&bytes, &inputs).to_json();
        out.push(ValidOut {
            name,
            about,
            bytes,
            manifest,
        });
    }
    out
}

fn bases() -> Bases {
    Bases {
        basic: Raw::parse(&write_archive(&basic())),
        order1: Raw::parse(&committed(&order1())),
        portable: Raw::parse(&portable_tiny().0),
        primer: Raw::parse(&committed(&order1_primer())),
        basic_compact: Raw::parse(&committed(&basic_compact())),
        order1_compact: Raw::parse(&committed(&order1_compact())),
        basic_entries: Raw::parse(&committed(&basic_compact_entries())),
        portable_bias: Raw::parse(&portable_tiny_bias().0),
    }
}

/// Every file of `format-spec/vectors/`, by path relative to it.
fn generate() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let valid = valid_vectors();
    for v in &valid {
        assert!(
            v.bytes.len() < 8192,
            "{} is {} bytes",
            v.name,
            v.bytes.len()
        );
        files.insert(format!("valid/{}.lmz", v.name), v.bytes.clone());
        files.insert(
            format!("valid/{}.lmz.json", v.name),
            v.manifest.clone().into_bytes(),
        );
    }
    let b = bases();
    let invalid = invalid_vectors();
    for v in &invalid {
        let base = match v.base {
            Base::Basic => b.basic.clone(),
            Base::Order1 => b.order1.clone(),
            Base::Portable => b.portable.clone(),
            Base::Primer => b.primer.clone(),
            Base::BasicCompact => b.basic_compact.clone(),
            Base::Order1Compact => b.order1_compact.clone(),
            Base::BasicEntries => b.basic_entries.clone(),
            Base::PortableBias => b.portable_bias.clone(),
            Base::Nothing => Raw {
                header: Vec::new(),
                recs: Vec::new(),
            },
        };
        let bytes = (v.make)(base);
        assert!(
            files
                .insert(format!("invalid/{}.lmz", v.name), bytes)
                .is_none(),
            "duplicate invalid vector {}",
            v.name
        );
    }
    files.insert(
        "README.md".into(),
        readme(&valid, &invalid, &files).into_bytes(),
    );
    files
}

fn readme(valid: &[ValidOut], invalid: &[Invalid], files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut s = String::new();
    s.push_str(README_HEAD);
    s.push_str("\n## Valid vectors (`valid/`)\n\n| File | Bytes | Contents |\n|---|---:|---|\n");
    for v in valid {
        let _ = writeln!(s, "| `{}.lmz` | {} | {} |", v.name, v.bytes.len(), v.about);
    }
    s.push_str(README_VALID);
    s.push_str("\n## Invalid vectors (`invalid/`)\n\n");
    s.push_str(README_INVALID);
    s.push_str("\n| File | Base | Defect | Error | Random-access reader rejects at | Bytes |\n|---|---|---|---|---|---:|\n");
    for v in invalid {
        let base = match v.base {
            Base::Basic => "basic",
            Base::Order1 => "order1",
            Base::Portable => "portable-tiny",
            Base::Primer => "order1-primer",
            Base::BasicCompact => "basic-compact",
            Base::Order1Compact => "order1-compact",
            Base::BasicEntries => "basic-compact-entries",
            Base::PortableBias => "portable-tiny-bias",
            Base::Nothing => "—",
        };
        let len = files[&format!("invalid/{}.lmz", v.name)].len();
        let _ = writeln!(
            s,
            "| `{}.lmz` | {} | {} | {} | {} | {} |",
            v.name,
            base,
            v.defect.replace('|', "\\|"),
            v.why.name(),
            v.stage.name(),
            len
        );
    }
    s.push_str(README_TAIL);
    s
}

const README_HEAD: &str = "# lmz format version 1: test vectors

Generated by `tests/vectors.rs` (do not edit by hand; this README is generated too):

    cargo test --release --test vectors -- --ignored regenerate_vectors

and checked by the same file's other tests (`cargo test --release --test vectors`):
every valid vector must open, decode and extract to exactly what its manifest lists, through
the random-access reader and through the stream reader; every invalid vector must be rejected
by both readers (with an error, never a panic, for the reason listed below); and regenerating in
memory must reproduce every file here byte for byte. The header of every vector holds the
writer's version in its `engine_version` diagnostic string (`lmz 0.1.0`): a version bump changes
those bytes, and the vectors must then be regenerated (readers ignore the string).
Part files (FORMAT.md §21, `lmz pack --shard`, `lmz merge`) have vectors of their own in
[`parts/`](parts/README.md), generated and checked by `tests/part_vectors.rs`.

The format is specified in [`../FORMAT.md`](../FORMAT.md). No vector needs llama.cpp: model-coded
blocks use the built-in order-1 model (FORMAT.md §12.5), which a decoder can implement in a few
dozen lines on top of the range decoder (§12.7) and `weights_to_cum` (§12.4), or model kind 3,
the lmz transformer (§20), with the tiny model in `model/`.

- `model/tiny-llama.gguf` (96,608 bytes): a Llama-architecture GGUF with random weights of
  every type kind 3 allows (Q4_0, Q4_1, Q8_0, F16 matrices, F32 norms), 2 layers, width 64,
  4 heads and 2 KV heads, a separate output matrix and a 300-token byte-level BPE vocabulary
  (merges learned from a paragraph of *Alice*, a user-defined token `<tiny>`). It is a pure
  function of a seed, regenerated and compared by `lmz::model::synthetic`'s tests
  (`LMZ_REGENERATE=1 cargo test --release -p lmz synthetic` rewrites it).
- `portable/NAME.txt`: kind-3 conformance tables (FORMAT.md §20.10). The line `model SHA` names
  the GGUF file; every other line is `DIGEST TOKENS`: the SHA-256 of the frequency tables
  (`cum`, `vocab_size + 1` little-endian u32 each, §12.1) the model yields for inputs
  `bos, t_0, …, t_{n−2}` at positions 0, 1, …, with `TOKENS = t_0, …, t_{n−1}`. An
  implementation conforms when it reproduces every digest; lmz checks them under every kernel
  set the machine runs, with one and two threads, token by token, in lockstep with staggered
  starts and in 16-token prefill steps (`src/model/portable/vectors.rs`; `LMZ_REGEN_VECTORS=1`
  rewrites them, which only a new `arith_version` may need). `tiny-llama.txt` is for the tiny
  model; `smollm2-135m-q4_1.txt` for the default model (SmolLM2-135M-Instruct Q4_1, 98,362,432
  bytes, not committed: it is fetched on first use).
";

const README_VALID: &str = "
Each `NAME.lmz` has a manifest `NAME.lmz.json`, written from the generator's *inputs* (paths,
metadata, contents) and the writer's layout (data offsets, blocks). A decoder passes when what it
reads equals the manifest:

- top level: `format_version`, `framing` (only in compact archives, header flag bit 1:
  `compact`; FORMAT.md §7.1, §8.1), `model` (`none` / `order1` / `portable`), `block_size`,
  `max_block_tokens` (header pin), `data_len` (sum of all blocks' `plain_len`);
- `blocks`: in order, each block header's `codec` (`stored` / `zstd` / `model`), `plain_len`,
  `coded_len` and `tokens`;
- `entries`: in order, `path`, `kind` (`file` / `dir` / `symlink` / `hardlink`), `mode` (octal
  string of the permission bits), `uid`, `gid`, `mtime_sec`, `mtime_nsec`, `size` (the entry's
  size field: 0 except for files), `data_start` (files only, else null), `link` (symlink target
  or hard-link target path, else null) and `sha256` (hex SHA-256 of the file's contents; for a
  hard link, of its target's contents; null for directories and symlinks).

Extracting a valid vector must create exactly these entries: directories and files with these
permission bits and mtimes, symlinks with these targets (and mtimes), hard links sharing their
target's inode.
";

const README_INVALID: &str = "Each file has exactly one defect: it is derived from a valid vector
(`basic`, `order1`, `portable-tiny`, `order1-primer`, `basic-compact` or `order1-compact`, as generated in memory) by the change described, and every CRC that the
defect does not name is recomputed, so a reader that checks CRCs first still reaches the named
defect. A conforming reader must reject every one of them before returning bytes from
the damaged structure.

- **Error** is lmz's error variant: `corrupt` (breaks a version-1 rule; `Error::Corrupt`),
  `unsupported` (a version, flag, reserved field or enumerated value version 1 does not define:
  `Error::Unsupported`; a later version might define it), `block-crc` (a block decodes, but not to
  the bytes its `plain_crc` names: `Error::BlockCrc`), `model-mismatch` (a well-formed archive
  for a model whose pin differs from the one at hand: `Error::ModelMismatch`, refused before any
  block is decoded). `lmz::Error::class()` maps the first three to `Class::Corrupt` and the last
  to `Class::Model`.
- **Random-access reader rejects at**: `open` (`Archive::open`, FORMAT.md §13.1 steps 1–7:
  header, footer, index, every entry record and the entry rules, the index's block rows, the
  tiling of the body and record order), `model check` (`Archive::check_model`, step 8: the pin
  check, run for every archive whose model kind is not 0 before any block is decoded),
  `decode` (a block record is read and checked only when decoded, FORMAT.md §11). The stream
  reader (`lmz::archive::stream::extract_stream`) rejects every vector, each when it reaches
  the defect (the pin check right after the header). Every conforming reader, random-access
  or sequential, must reject every vector, with the error listed; where it does so is up to
  it, within FORMAT.md's rules.
";

const README_TAIL: &str = "
The expected error messages, per reader, are in `invalid_vectors()` in `tests/vectors.rs`.
The rules an earlier draft of lmz's reader missed (FORMAT.md §16) all have vectors here: the
tiling of the body and record order (`index-missing-entry`, `gap-between-records`,
`index-records-overlap`, `entry-after-its-block`), one zstd frame per payload
(`zstd-trailing-garbage`, `zstd-skippable-frame`, `zstd-two-frames`), no bytes after a
model-coded stream (`model-block-trailing-zeros`) and symlink targets of at most 4096 bytes
(`symlink-target-too-long`).
";

#[test]
#[ignore = "writes format-spec/vectors; run on purpose"]
fn regenerate_vectors() {
    let dir = vectors_dir();
    for sub in ["valid", "invalid"] {
        let d = dir.join(sub);
        if d.exists() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    std::fs::remove_file(&p).unwrap();
                }
            }
        }
        std::fs::create_dir_all(&d).unwrap();
    }
    let files = generate();
    for (rel, bytes) in &files {
        std::fs::write(dir.join(rel), bytes).unwrap();
    }
    eprintln!("wrote {} files under {}", files.len(), dir.display());
}

// ---------------------------------------------------------------------------------------
// Checks of the committed vectors
// ---------------------------------------------------------------------------------------

fn listed(sub: &str, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(vectors_dir().join(sub))
        .unwrap_or_else(|e| panic!("format-spec/vectors/{sub}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(ext).map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[test]
fn valid_vectors_match_their_manifests() {
    let names = listed("valid", ".lmz");
    let mut expected: Vec<String> = valid_vectors().iter().map(|v| v.name.to_owned()).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "valid/ holds exactly the generated vectors"
    );
    for name in &names {
        let path = vectors_dir().join(format!("valid/{name}.lmz"));
        let want =
            std::fs::read_to_string(vectors_dir().join(format!("valid/{name}.lmz.json"))).unwrap();
        let got = manifest_from_archive(&path).to_json();
        assert_eq!(
            got, want,
            "{name}: decoded archive differs from its manifest"
        );
    }
}

/// Walks an extracted tree: path → metadata.
fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, std::fs::Metadata>) {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let md = std::fs::symlink_metadata(root.join(&rel)).unwrap();
        let is_dir = md.is_dir();
        out.insert(rel.clone(), md);
        if is_dir {
            walk(root, &rel, out);
        }
    }
}

fn stream_extract(path: &Path, dest: &Path) -> Result<StreamStats, Error> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let dest = dest.to_owned();
    extract_stream(
        std::io::BufReader::new(f),
        move |h| {
            Ok((
                model_for(h),
                Extractor::new(&dest, ExtractOptions::default())?,
            ))
        },
        Some(2),
    )
}

#[test]
fn valid_vectors_extract_from_a_stream() {
    for name in listed("valid", ".lmz") {
        let path = vectors_dir().join(format!("valid/{name}.lmz"));
        let want = manifest_from_archive(&path);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let stats = stream_extract(&path, &dest).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stats.entries, want.entries.len() as u64, "{name}");
        assert_eq!(stats.blocks, want.blocks.len() as u64, "{name}");
        let mut tree = BTreeMap::new();
        walk(&dest, "", &mut tree);
        let paths: Vec<String> = want
            .entries
            .iter()
            .map(|e| String::from_utf8(e.path.clone()).unwrap())
            .collect();
        assert_eq!(
            tree.keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            paths.iter().cloned().collect(),
            "{name}"
        );
        for e in &want.entries {
            let rel = std::str::from_utf8(&e.path).unwrap();
            let md = &tree[rel];
            let p = dest.join(rel);
            let ctx = format!("{name}: {rel}");
            match e.kind {
                EntryKind::Dir => assert!(md.is_dir(), "{ctx}"),
                EntryKind::File | EntryKind::HardLink => {
                    assert!(md.is_file(), "{ctx}");
                    assert_eq!(Some(sha256(&std::fs::read(&p).unwrap())), e.sha256, "{ctx}");
                }
                EntryKind::Symlink => {
                    assert!(md.file_type().is_symlink(), "{ctx}");
                    let t = std::fs::read_link(&p).unwrap();
                    assert_eq!(
                        t.as_os_str().as_encoded_bytes(),
                        &e.link.clone().unwrap()[..],
                        "{ctx}"
                    );
                }
            }
            if e.kind == EntryKind::HardLink {
                let target = &tree[std::str::from_utf8(e.link.as_ref().unwrap()).unwrap()];
                assert_eq!(
                    (md.dev(), md.ino()),
                    (target.dev(), target.ino()),
                    "{ctx}: not the target's inode"
                );
                continue;
            }
            if e.kind != EntryKind::Symlink {
                assert_eq!(md.mode() & 0o7777, e.mode, "{ctx}: mode");
            }
            assert_eq!(
                (md.mtime(), md.mtime_nsec() as u32),
                (e.mtime_sec, e.mtime_nsec),
                "{ctx}: mtime"
            );
        }
    }
}

/// Opens, checks the model and decodes every block and every file with the random-access
/// reader; the stage that failed and its error.
fn random_access(path: &Path) -> Result<(), (Stage, Error)> {
    let a = Archive::open(path).map_err(|e| (Stage::Open, e))?;
    let model = model_for(a.header());
    let model = model.as_deref();
    a.check_model(model).map_err(|e| (Stage::CheckModel, e))?;
    for r in a
        .decode_blocks(model, 0..a.block_count(), 2)
        .map_err(|e| (Stage::Decode, e))?
    {
        r.map_err(|e| (Stage::Decode, e))?;
    }
    for idx in 0..a.entries().len() {
        if let Ok(e) = a.file_entry(idx) {
            let size = e.size;
            a.read(model, idx, 0, size, 2)
                .map_err(|e| (Stage::Decode, e))?;
        }
    }
    Ok(())
}

fn check_error(what: &str, e: &Error, v: &Invalid, msg: &str, failures: &mut Vec<String>) {
    let text = e.to_string();
    if Why::of(e) != Some(v.why) {
        failures.push(format!(
            "{}: {what} rejected it as {:?}, expected {:?}: {text}",
            v.name,
            Why::of(e),
            v.why
        ));
    } else if e.class() != v.why.class() {
        failures.push(format!(
            "{}: {what}: class {:?}, expected {:?}",
            v.name,
            e.class(),
            v.why.class()
        ));
    }
    if !text.contains(msg) {
        failures.push(format!(
            "{}: {what}: message {text:?} lacks {msg:?}",
            v.name
        ));
    }
}

#[test]
fn invalid_vectors_are_rejected() {
    let list = invalid_vectors();
    let mut expected: Vec<String> = list.iter().map(|v| v.name.to_owned()).collect();
    expected.sort();
    assert_eq!(
        listed("invalid", ".lmz"),
        expected,
        "invalid/ holds exactly the listed vectors"
    );
    let mut failures = Vec::new();
    for v in &list {
        let path = vectors_dir().join(format!("invalid/{}.lmz", v.name));
        match catch_unwind(AssertUnwindSafe(|| random_access(&path))) {
            Err(_) => failures.push(format!("{}: the random-access reader panicked", v.name)),
            Ok(Ok(())) => {
                failures.push(format!("{}: the random-access reader accepted it", v.name))
            }
            Ok(Err((stage, e))) => {
                if stage != v.stage {
                    failures.push(format!(
                        "{}: random-access reader rejected it at {stage:?}, expected {:?}: {e}",
                        v.name, v.stage
                    ));
                }
                check_error("random-access reader", &e, v, v.ra, &mut failures);
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        match catch_unwind(AssertUnwindSafe(|| {
            stream_extract(&path, &tmp.path().join("out"))
        })) {
            Err(_) => failures.push(format!("{}: the stream reader panicked", v.name)),
            Ok(Ok(_)) => failures.push(format!("{}: the stream reader accepted it", v.name)),
            Ok(Err(e)) => check_error("stream reader", &e, v, v.stream, &mut failures),
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn regenerating_reproduces_every_committed_file() {
    let files = generate();
    let dir = vectors_dir();
    let mut on_disk = Vec::new();
    for sub in ["valid", "invalid"] {
        for n in std::fs::read_dir(dir.join(sub)).unwrap() {
            on_disk.push(format!(
                "{sub}/{}",
                n.unwrap().file_name().into_string().unwrap()
            ));
        }
    }
    on_disk.push("README.md".into());
    on_disk.sort();
    assert_eq!(
        on_disk,
        files.keys().cloned().collect::<Vec<_>>(),
        "files under format-spec/vectors"
    );
    for (rel, bytes) in &files {
        let disk = std::fs::read(dir.join(rel)).unwrap();
        assert!(
            &disk == bytes,
            "format-spec/vectors/{rel} differs from what the generator writes now (if the crate version \
             changed, the header's engine_version string did: rerun regenerate_vectors)"
        );
    }
}

/// The writer's layout is a function of its inputs: every width writes the same bytes (the
/// records in the order of `width` 1), and `order1.lmz` is that layout with its blocks held
/// back two at a time.
#[test]
fn the_layout_does_not_depend_on_the_width() {
    for v in [basic(), order1()] {
        let one = write_archive(&WriterVector {
            width: 1,
            ..v.clone()
        });
        for width in [2, 3, 8, 64] {
            assert!(
                write_archive(&WriterVector { width, ..v.clone() }) == one,
                "{} at width {width}",
                v.name
            );
        }
    }
    let disk = std::fs::read(vectors_dir().join("valid/order1.lmz")).unwrap();
    let canonical = Raw::parse(&write_archive(&order1()));
    assert!(canonical.assemble() != disk);
    assert!(batched(canonical, 2).assemble() == disk);
}

/// The invalid vectors really are derived from the valid ones: the in-memory bases equal
/// the committed `basic` and `order1` vectors.
#[test]
fn bases_are_the_committed_vectors() {
    let b = bases();
    for (name, raw) in [
        ("basic", &b.basic),
        ("order1", &b.order1),
        ("basic-compact", &b.basic_compact),
        ("order1-compact", &b.order1_compact),
        ("basic-compact-entries", &b.basic_entries),
    ] {
        let disk = std::fs::read(vectors_dir().join(format!("valid/{name}.lmz"))).unwrap();
        assert!(raw.assemble() == disk, "{name}");
    }
}
