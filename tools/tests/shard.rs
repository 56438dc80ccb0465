//! `lmz pack --shard K/N` and `lmz merge` through the CLI: the merged parts are the single
//! pack's archive byte for byte (order-1 engine, several MB, many shards, each with another
//! batch width; the language model, a few KB, 2 shards), they unpack exactly, and every set
//! of parts that is not one archive is refused with nothing written.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Several MB: the corpus (or stand-ins) twice over, the tree of every entry kind, empty
/// files and directories after the last data.
fn big_tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    let names = [
        "alice29.txt",
        "asyoulik.txt",
        "html",
        "lcet10.txt",
        "plrabn12.txt",
        "urls.10K",
        "fireworks.jpeg",
        "paper-100k.pdf",
        "kppkn.gtb",
        "geo.protodata",
    ];
    let files: Vec<(String, Vec<u8>)> = names
        .iter()
        .flat_map(|n| {
            let b = corpus(n, 1 << 20);
            [(format!("a/{n}"), b.clone()), (format!("b/{n}.copy"), b)]
        })
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    make_tree(&src, &refs);
    std::fs::create_dir_all(src.join("zz/empty-dir")).unwrap();
    std::fs::write(src.join("zz/empty-file"), b"").unwrap();
    src
}

fn dir_bytes(p: &Path) -> u64 {
    let md = std::fs::symlink_metadata(p).unwrap();
    if md.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| dir_bytes(&e.unwrap().path()))
            .sum()
    } else {
        md.len()
    }
}

fn pack_shards(src: &Path, out: &Path, n: u32, extra: &[&str]) -> Vec<PathBuf> {
    (0..n)
        .map(|k| {
            let p = out.join(format!("part-{k}"));
            run(lmz()
                .args(["pack", "-q", "-o"])
                .arg(&p)
                .arg(src)
                .args(["--shard", &format!("{k}/{n}")])
                .args(["--batch", &(1 + k % 5).to_string()])
                .args(extra));
            p
        })
        .collect()
}

/// No file but `keep` in `dir` (no output, no temporary file left behind).
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn order1_shards_merge_into_the_single_archive() {
    let t = tempfile::tempdir().unwrap();
    let src = big_tree(t.path());
    assert!(dir_bytes(&src) > 4 << 20, "several MB");
    let opts = [
        "--engine",
        "order1",
        "--block-size",
        "16384",
        "--zstd-level",
        "3",
    ];
    let single = t.path().join("single.lmz");
    run(lmz()
        .args(["pack", "-q", "-o"])
        .arg(&single)
        .arg(&src)
        .args(opts));
    let parts_dir = t.path().join("parts");
    std::fs::create_dir(&parts_dir).unwrap();
    let n = 11;
    let mut parts = pack_shards(&src, &parts_dir, n, &opts);
    // Balanced by bytes: no part holds more than twice its share.
    let total: u64 = parts.iter().map(|p| p.metadata().unwrap().len()).sum();
    for p in &parts {
        assert!(p.metadata().unwrap().len() < 2 * total / n as u64, "{p:?}");
    }
    parts.reverse();
    let merged = t.path().join("merged.lmz");
    run(lmz().args(["merge", "-q", "-o"]).arg(&merged).args(&parts));
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&single).unwrap());
    let out = t.path().join("out");
    run(lmz()
        .args(["unpack", "-q"])
        .arg(&merged)
        .arg("-C")
        .arg(&out));
    assert_eq!(snapshot(&src), snapshot(&out.join("src")));

    // --workers: the shards coded at once in one process, merged: the same bytes.
    let w = t.path().join("workers.lmz");
    run(lmz()
        .args(["pack", "-q", "--workers", "3", "--threads", "1", "-o"])
        .arg(&w)
        .arg(&src)
        .args(opts));
    assert!(std::fs::read(&w).unwrap() == std::fs::read(&single).unwrap());
    // No temporary part or archive left behind.
    only(
        t.path(),
        &[
            "merged.lmz",
            "out",
            "parts",
            "single.lmz",
            "src",
            "workers.lmz",
        ],
    );

    // One shard of one: the part merges alone.
    let one = t.path().join("one");
    std::fs::create_dir(&one).unwrap();
    let p = pack_shards(&src, &one, 1, &opts);
    let m1 = t.path().join("m1.lmz");
    run(lmz().args(["merge", "-q", "-o"]).arg(&m1).args(&p));
    assert!(std::fs::read(&m1).unwrap() == std::fs::read(&single).unwrap());
}

#[test]
fn sets_that_are_not_one_archive_are_refused_with_nothing_written() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_tree(&src, &[("alice.txt", corpus("alice29.txt", 60_000))]);
    let opts = ["--engine", "order1", "--block-size", "4096"];
    let d = t.path().join("p");
    std::fs::create_dir(&d).unwrap();
    let parts = pack_shards(&src, &d, 3, &opts);
    let out = d.join("merged.lmz");
    let names = ["part-0", "part-1", "part-2"];
    let refuse = |parts: &[PathBuf], code: i32, what: &str| {
        let e = run_fail(lmz().args(["merge", "-o"]).arg(&out).args(parts), code);
        assert!(e.contains(what), "{what:?} not in {e}");
        only(&d, &names);
    };
    refuse(&parts[..2], 2, "missing shard 2 of 3");
    refuse(
        &[
            parts[0].clone(),
            parts[1].clone(),
            parts[1].clone(),
            parts[2].clone(),
        ],
        2,
        "given twice",
    );
    // Other options: another block size.
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let o = pack_shards(
        &src,
        &other,
        3,
        &["--engine", "order1", "--block-size", "2048"],
    );
    refuse(
        &[parts[0].clone(), o[1].clone(), parts[2].clone()],
        2,
        "--block-size 2048",
    );
    // Another engine: another model pinned.
    let z = pack_shards(
        &src,
        &other,
        3,
        &["--engine", "none", "--block-size", "4096"],
    );
    refuse(
        &[parts[0].clone(), z[1].clone(), parts[2].clone()],
        2,
        "same model",
    );
    // Damaged: one byte of a block payload flipped.
    let bad = other.join("damaged");
    let mut b = std::fs::read(&parts[1]).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x20;
    std::fs::write(&bad, &b).unwrap();
    refuse(
        &[parts[0].clone(), bad.clone(), parts[2].clone()],
        4,
        "part ",
    );
    // Truncated.
    std::fs::write(&bad, &b[..b.len() - 7]).unwrap();
    refuse(&[parts[0].clone(), bad, parts[2].clone()], 4, "part ");
    // Stale: a file's mtime changed before shard 1 ran.
    let f = src.join("alice.txt");
    let tm = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    filetime::set_file_mtime(&f, tm).unwrap();
    let stale = pack_shards(&src, &other, 3, &opts);
    refuse(
        &[parts[0].clone(), stale[1].clone(), parts[2].clone()],
        2,
        "different inputs",
    );
    // Not a part.
    let single = other.join("single.lmz");
    run(lmz()
        .args(["pack", "-q", "-o"])
        .arg(&single)
        .arg(&src)
        .args(opts));
    refuse(std::slice::from_ref(&single), 4, "not an lmz part");
    // And the real set still merges.
    let all = pack_shards(&src, &d, 3, &opts);
    run(lmz().args(["merge", "-q", "-o"]).arg(&out).args(&all));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&single).unwrap());
}

#[test]
fn shard_arguments_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let o = t.path().join("x");
    for bad in ["2/2", "0/0", "1", "a/b", "0/70000"] {
        run_fail(
            lmz()
                .args(["pack", "--engine", "none", "-o"])
                .arg(&o)
                .arg(".")
                .args(["--shard", bad]),
            2,
        );
    }
    let e = run_fail(
        lmz()
            .args(["pack", "--engine", "none", "-o"])
            .arg(&o)
            .args(["-", "--shard", "0/2"]),
        2,
    );
    assert!(e.contains("not stdin"), "{e}");
    run_fail(lmz().args(["merge", "-o", "-"]).arg(&o), 2);
    only(t.path(), &[]);
}

/// The language model (the default engine, portable), a few KB, 2 shards of one thread.
#[test]
fn language_model_shards_merge_into_the_single_archive() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_tree(
        &src,
        &[
            ("alice.txt", corpus("alice29.txt", 2500)),
            ("page.html", corpus("html", 1200)),
            ("fireworks.jpeg", corpus("fireworks.jpeg", 700)),
        ],
    );
    let opts = ["--block-size", "1024", "--threads", "1"];
    let single = t.path().join("single.lmz");
    let out = run(lmz().args(["pack", "-o"]).arg(&single).arg(&src).args(opts));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("blocks: 0 model"), "{log}");
    let d = t.path().join("parts");
    std::fs::create_dir(&d).unwrap();
    let parts = pack_shards(&src, &d, 2, &opts);
    let merged = t.path().join("merged.lmz");
    run(lmz().args(["merge", "-q", "-o"]).arg(&merged).args(&parts));
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&single).unwrap());
    let x = t.path().join("x");
    run(lmz()
        .args(["unpack", "-q", "--threads", "1"])
        .arg(&merged)
        .arg("-C")
        .arg(&x));
    assert_eq!(snapshot(&src), snapshot(&x.join("src")));
}

/// deploy/local/pack-sharded (xargs -P) writes the single pack's archive.
#[test]
fn the_local_script_writes_the_single_archive() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_tree(&src, &[("alice.txt", corpus("alice29.txt", 80_000))]);
    let opts = ["--engine", "order1", "--block-size", "4096"];
    let single = t.path().join("single.lmz");
    run(lmz()
        .args(["pack", "-q", "-o"])
        .arg(&single)
        .arg(&src)
        .args(opts));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/pack-sharded");
    let archive = t.path().join("sharded.lmz");
    let out = std::process::Command::new(script)
        .env("LMZ", env!("CARGO_BIN_EXE_lmz"))
        .args(["5", "2"])
        .arg(&archive)
        .args(opts)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&archive).unwrap() == std::fs::read(&single).unwrap());
    only(t.path(), &["sharded.lmz", "single.lmz", "src"]);
}
