//! The portable engine (model kind 3) through the CLI, on the real default model: archives
//! written under one kernel set, thread count and batch width decode under every other —
//! the scalar reference, one thread and one block at a time included — and the model-coded
//! payloads written under different kernel sets are byte-identical.
//!
//! Model processes take a lock (two at once would oversubscribe the two cores), and only a
//! few KB go through the model: the scalar reference is slow by design.

mod common;

use std::path::Path;
use std::sync::Mutex;

use common::*;

static MODEL_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    MODEL_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kernel sets this CPU runs, as `LMZ_KERNELS` names them (scalar first).
fn kernel_sets() -> Vec<&'static str> {
    let mut v = vec!["scalar"];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            v.push("avx512");
        }
    }
    v
}

/// The archive's records (entries and blocks, between the header and the index): all that
/// the kernels could change. The header's diagnostic strings name the kernels, so the header
/// and the offsets in the index differ.
fn records(archive: &Path) -> Vec<u8> {
    let b = std::fs::read(archive).unwrap();
    let header_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let footer = &b[b.len() - 32..];
    let index_offset = u64::from_le_bytes(footer[..8].try_into().unwrap()) as usize;
    b[header_len..index_offset].to_vec()
}

fn model_blocks(stderr: &[u8]) -> u64 {
    let s = String::from_utf8_lossy(stderr);
    let tail = s
        .split("blocks: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no block summary in {s}"));
    tail.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn archives_decode_under_every_kernel_set_thread_count_and_width() {
    let _g = lock();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_tree(
        &src,
        &[
            ("alice.txt", corpus("alice29.txt", 2000)),
            ("page.html", corpus("html", 1200)),
            ("urls", corpus("urls.10K", 900)),
            ("fireworks.jpeg", corpus("fireworks.jpeg", 2000)),
        ],
    );
    let sets = kernel_sets();
    let best = *sets.last().unwrap();
    // Pack under the fastest kernels, 2 threads, 4 blocks in lockstep (the encoder feeds 16
    // tokens per block per step), blocks of 1 KiB.
    let a = t.path().join("a.lmz");
    let out = run(lmz()
        .env("LMZ_KERNELS", best)
        .args([
            "pack",
            "--engine",
            "portable",
            "--block-size",
            "1024",
            "--threads",
            "2",
            "--batch",
            "4",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&a));
    assert!(
        model_blocks(&out.stderr) >= 4,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = run(lmz().args(["list", "--json"]).arg(&a));
    let j: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(j["model"]["kind"], "Portable");
    assert_eq!(j["model"]["class"], "portable");

    // Every other SIMD kernel set writes the same records with the same options (the record
    // order depends on the batch width, FORMAT.md §10.4, so that stays).
    for &ks in &sets[1..sets.len() - 1] {
        let b = t.path().join(format!("{ks}.lmz"));
        run(lmz()
            .env("LMZ_KERNELS", ks)
            .args([
                "pack",
                "-q",
                "--engine",
                "portable",
                "--block-size",
                "1024",
                "--threads",
                "1",
                "--batch",
                "4",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&b));
        assert!(
            records(&a) == records(&b),
            "{ks} wrote other blocks than {best}"
        );
    }

    // Unpack under every SIMD kernel set, 1 thread and one block at a time, then 2 threads
    // and 16 blocks at a time.
    for &ks in &sets[1..] {
        for (threads, batch) in [("1", "1"), ("2", "16")] {
            let dst = t.path().join(format!("out-{ks}-{threads}"));
            run(lmz()
                .env("LMZ_KERNELS", ks)
                .args(["unpack", "-q", "--threads", threads, "--batch", batch])
                .arg(&a)
                .arg("-C")
                .arg(&dst));
            assert_same_tree(&src, &dst.join("src"));
        }
    }
    // The scalar reference, one thread: one block by random access (it is slow by design).
    let data = corpus("alice29.txt", 2000);
    let out = run(lmz()
        .env("LMZ_KERNELS", "scalar")
        .args([
            "cat",
            "--stats",
            "--threads",
            "1",
            "--offset",
            "1024",
            "--length",
            "200",
        ])
        .arg(&a)
        .arg("src/alice.txt"));
    assert_eq!(out.stdout, &data[1024..1224]);
}

#[test]
fn kernel_set_the_cpu_lacks_or_unknown_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("x.txt");
    std::fs::write(&f, b"hello").unwrap();
    let err = run_fail(
        lmz()
            .env("LMZ_KERNELS", "sse9")
            .args(["pack", "--engine", "portable", "-o"])
            .arg(t.path().join("x.lmz"))
            .arg(&f),
        2,
    );
    assert!(err.contains("LMZ_KERNELS"), "{err}");
    assert!(!t.path().join("x.lmz").exists());
}

/// With no `--engine`, pack uses the portable engine for the default model (`auto`), so the
/// archive is kind 3 and decodes anywhere; the model it pins is the default one.
#[test]
fn the_default_engine_is_portable_for_the_default_model() {
    let _g = lock();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("alice.txt");
    let data = corpus("alice29.txt", 700);
    std::fs::write(&f, &data).unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "-q", "--threads", "2", "-o"])
        .arg(&a)
        .arg(&f));
    let list = run(lmz().args(["list", "--json"]).arg(&a));
    let j: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(j["model"]["kind"], "Portable", "{j}");
    assert_eq!(j["model"]["class"], "portable", "{j}");
    let out = run(lmz()
        .args(["cat", "--threads", "1"])
        .arg(&a)
        .arg("alice.txt"));
    assert_eq!(out.stdout, data);
}
