//! End-to-end tests of the `lmz` binary with the built-in order-1 model and with zstd only:
//! fast, and they exercise every path of the archiver except llama.cpp itself (which
//! `llama.rs` covers).

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;

fn tree(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("src");
    make_tree(
        &src,
        &[
            ("alice.txt", corpus("alice29.txt", 20_000)),
            ("fireworks.jpeg", corpus("fireworks.jpeg", 10_000)),
            ("paper.pdf", corpus("paper-100k.pdf", 6_000)),
        ],
    );
    src
}

#[test]
fn tree_round_trip_with_every_engine() {
    let t = tempfile::tempdir().unwrap();
    let src = tree(t.path());
    for engine in ["order1", "none"] {
        let a = t.path().join(format!("{engine}.lmz"));
        run(lmz()
            .args(["pack", "--engine", engine, "--block-size", "4096", "-q"])
            .arg(&src)
            .arg("-o")
            .arg(&a));
        let out = t.path().join(format!("out-{engine}"));
        run(lmz().args(["unpack", "-q"]).arg(&a).arg("-C").arg(&out));
        assert_same_tree(&src, &out.join("src"));
        run(lmz().args(["verify", "-q"]).arg(&a));
    }
}

#[test]
fn pipe_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let src = tree(t.path());
    let out = t.path().join("out");
    let mut pack = lmz()
        .args([
            "pack",
            "--engine",
            "order1",
            "--block-size",
            "2048",
            "-q",
            "-o",
            "-",
        ])
        .arg(&src)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut unpack = lmz()
        .args(["unpack", "-q", "-", "-C"])
        .arg(&out)
        .stdin(pack.stdout.take().unwrap())
        .spawn()
        .unwrap();
    assert!(pack.wait().unwrap().success());
    assert!(unpack.wait().unwrap().success());
    assert_same_tree(&src, &out.join("src"));
}

#[test]
fn stdin_stream_is_packed_as_one_file() {
    let t = tempfile::tempdir().unwrap();
    let data = corpus("html", 30_000);
    let a = t.path().join("s.lmz");
    let mut p = lmz()
        .args([
            "pack",
            "--engine",
            "order1",
            "-q",
            "-",
            "--stdin-name",
            "page.html",
            "-o",
        ])
        .arg(&a)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(p.wait().unwrap().success());
    let out = run(lmz().args(["cat", "-q"]).arg(&a).arg("page.html"));
    assert_eq!(out.stdout, data);
}

#[test]
fn cat_decodes_only_the_covering_blocks() {
    let t = tempfile::tempdir().unwrap();
    let data = corpus("alice29.txt", 16 * 1024);
    std::fs::write(t.path().join("alice"), &data).unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "order1", "--block-size", "1024", "-q"])
        .arg(t.path().join("alice"))
        .arg("-o")
        .arg(&a));
    for (off, len, blocks) in [
        (0u64, 10u64, 1),
        (1000, 100, 2),
        (5000, 3000, 4),
        (16_000, 10_000, 1),
    ] {
        let out = run(lmz().args(["cat", "--stats"]).arg(&a).arg("alice").args([
            "--offset",
            &off.to_string(),
            "--length",
            &len.to_string(),
        ]));
        let end = (off + len).min(data.len() as u64) as usize;
        assert_eq!(out.stdout, &data[off as usize..end]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("decoded {blocks} of 16 blocks")),
            "{off}+{len}: {err}"
        );
    }
    // Past the end: nothing, and nothing decoded.
    let out = run(lmz()
        .args(["cat", "--stats", "--offset", "99999"])
        .arg(&a)
        .arg("alice"));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("decoded 0 of 16"));
}

#[test]
fn list_shows_entries_and_json() {
    let t = tempfile::tempdir().unwrap();
    let src = tree(t.path());
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "none", "-q"])
        .arg(&src)
        .arg("-o")
        .arg(&a));
    let out = run(lmz().args(["list"]).arg(&a));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l == "src/nested/deeper/hardlink.txt"));
    let out = run(lmz().args(["list", "--json"]).arg(&a));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    // The walk is sorted, so the link inside nested/deeper is met first and holds the data.
    let hl = entries
        .iter()
        .find(|e| e["path"] == "src/nested/unicode.txt")
        .unwrap();
    assert_eq!(hl["kind"], "hardlink");
    assert_eq!(hl["link"], "src/nested/deeper/hardlink.txt");
}

#[test]
fn corrupt_archive_fails_with_exit_4_and_names_the_block() {
    for framing in ["compact", "classic"] {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, corpus("alice29.txt", 8000)).unwrap();
        let a = t.path().join("a.lmz");
        run(lmz()
            .args(["pack", "--engine", "order1", "--block-size", "2048", "-q"])
            .args(["--framing", framing])
            .arg(&f)
            .arg("-o")
            .arg(&a));
        // Damage the middle of the second block's payload.
        let at = {
            let ar = lmz::archive::Archive::open(&a).unwrap();
            assert_eq!(ar.framing().name(), framing);
            let r = ar.blocks()[1];
            let coded = ar.block(1).unwrap().header.coded_len as u64;
            (r.end() - coded.div_ceil(2)) as usize
        };
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[at] ^= 0x20;
        std::fs::write(&a, &bytes).unwrap();
        let err = run_fail(lmz().args(["verify"]).arg(&a), 4);
        assert!(err.contains("block 1"), "{framing}: {err}");
        let err = run_fail(
            lmz()
                .args(["unpack"])
                .arg(&a)
                .arg("-C")
                .arg(t.path().join("o")),
            4,
        );
        assert!(err.contains("block 1"), "{framing}: {err}");
        // The damaged file is not left behind with partial content.
        assert!(!t.path().join("o/f").exists());
        // A truncated archive.
        std::fs::write(&a, &bytes[..bytes.len() - 10]).unwrap();
        run_fail(lmz().args(["list"]).arg(&a), 4);
    }
}

#[test]
fn usage_and_io_errors_have_their_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    run_fail(
        lmz()
            .args(["pack", "--engine", "none", "/nonexistent/input", "-o"])
            .arg(t.path().join("x.lmz")),
        3,
    );
    assert!(!t.path().join("x.lmz").exists());
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        0,
        "no temporary file left behind"
    );
    run_fail(lmz().args(["list", "/nonexistent.lmz"]), 3);
    run_fail(lmz().args(["frobnicate"]), 2);
    let f = t.path().join("f");
    std::fs::write(&f, b"hello").unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "none", "-q"])
        .arg(&f)
        .arg("-o")
        .arg(&a));
    run_fail(lmz().args(["cat"]).arg(&a).arg("nope"), 2);
    // Existing files are not overwritten unless asked.
    let out = t.path().join("out");
    run(lmz().args(["unpack", "-q"]).arg(&a).arg("-C").arg(&out));
    run_fail(lmz().args(["unpack", "-q"]).arg(&a).arg("-C").arg(&out), 2);
    run(lmz()
        .args(["unpack", "-q", "--overwrite"])
        .arg(&a)
        .arg("-C")
        .arg(&out));
    // Not an archive at all.
    run_fail(lmz().args(["list"]).arg(&f), 4);
}

/// An archive whose header says it was written on another backend (as one written on a GPU
/// would) still decodes when its tables match, but the user is told first why blocks may
/// fail; the string is a diagnostic and changes nothing else (FORMAT.md §4.2).
#[test]
fn other_backend_in_header_of_a_specified_model_is_no_concern() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("notes.txt");
    let text = b"a plain note, coded by the built-in order-1 model\n".repeat(40);
    std::fs::write(&src, &text).unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "order1", "-o"])
        .arg(&a)
        .arg(&src));
    let mut bytes = std::fs::read(&a).unwrap();
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    // The second string, `backend`: "rust" for the order-1 model; same length, so nothing
    // else moves. Then the header CRC is made right again.
    let at = bytes[80..header_len]
        .windows(6)
        .position(|w| w == b"\x04\x00rust")
        .expect("backend string")
        + 82;
    bytes[at..at + 4].copy_from_slice(b"cuda");
    let crc = crc32fast::hash(&bytes[..header_len - 4]);
    bytes[header_len - 4..header_len].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&a, &bytes).unwrap();
    let out = run(lmz().args(["cat"]).arg(&a).arg("notes.txt"));
    assert_eq!(out.stdout, text);
    // The order-1 model (like kind 3) computes the same probabilities on every backend by
    // specification: no warning that blocks may fail (that is for llama.cpp archives).
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("written on cuda"), "{said}");
}

/// Special mode bits survive extraction: the owner is applied before the mode (chown clears
/// set-uid and set-gid, even for root), by the random-access and the stream extractor alike.
#[test]
fn set_uid_set_gid_and_sticky_bits_survive_unpack() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("shared")).unwrap();
    let modes = [("suid", 0o4755), ("sgid", 0o2755), ("both", 0o6711)];
    for (name, mode) in modes {
        let f = src.join(name);
        std::fs::write(&f, name).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(src.join("shared"), std::fs::Permissions::from_mode(0o3777)).unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "none", "-q", "-o"])
        .arg(&a)
        .arg(&src));
    let mode =
        |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let check = |out: &std::path::Path| {
        for (name, m) in modes {
            assert_eq!(mode(&out.join("src").join(name)), m, "{name}");
        }
        assert_eq!(mode(&out.join("src/shared")), 0o3777);
    };
    let out = t.path().join("out");
    run(lmz().args(["unpack", "-q"]).arg(&a).arg("-C").arg(&out));
    check(&out);
    let piped = t.path().join("piped");
    run(lmz()
        .args(["unpack", "-q", "-", "-C"])
        .arg(&piped)
        .stdin(std::fs::File::open(&a).unwrap()));
    check(&piped);
}

/// `bench --json` prints one JSON document: one engine's rows as they are, several engines'
/// under `engines`, in the order asked.
#[test]
fn bench_json_is_one_document_for_any_number_of_engines() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("alice.txt");
    std::fs::write(&f, corpus("alice29.txt", 6000)).unwrap();
    let json = |engines: &str| -> serde_json::Value {
        let out = run(lmz()
            .args(["bench", "--json", "--no-baselines", "--block-size", "2048"])
            .args(["--engine", engines])
            .arg(&f));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let one = json("order1");
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");
    let two = json("order1,none");
    let e = two["engines"].as_array().expect("engines");
    assert_eq!(e.len(), 2);
    assert_eq!(e[0]["engine"], "order1");
    assert_eq!(e[1]["engine"], "none");
    // The same archive as the run with order1 alone (timings aside).
    for k in ["archive_bytes", "lmz_bpb", "blocks"] {
        assert_eq!(e[0]["results"][0][k], one[0][k], "{k}");
    }
}
