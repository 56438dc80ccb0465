//! Hostile archives and failing environments, through the `lmz` binary: unsafe entries are
//! refused and nothing is written outside the destination; a full disk or a killed pack
//! leaves no archive under the final name; model problems are clear errors (exit 5).

mod common;

use std::path::Path;

use common::*;
use lmz::format::{Entry, EntryKind, Footer, Header, Index, ModelPin};

/// Assembles an archive without a model from raw entry records (no blocks): the writer
/// refuses to produce unsafe entries, so hostile archives are built by hand.
fn craft(entries: &[Entry]) -> Vec<u8> {
    let h = Header {
        block_size: 4096,
        pin: ModelPin::none(),
        model_name: String::new(),
        backend: String::new(),
        engine_version: "hostile".into(),
        cpu_features: String::new(),
        primer: None,
        bias_rate: 0,
        framing: lmz::format::Framing::Classic,
    };
    let mut out = h.encode();
    let mut index = Index::default();
    for e in entries {
        index.entries.push(out.len() as u64);
        out.extend(e.encode());
    }
    let ix = index.encode();
    let footer = Footer {
        index_offset: out.len() as u64,
        index_len: ix.len() as u64,
    };
    out.extend(ix);
    out.extend(footer.encode());
    out
}

fn entry(kind: EntryKind, path: &str, link: &str) -> Entry {
    Entry {
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        size: 0,
        data_start: 0,
        path: path.as_bytes().to_vec(),
        link: link.as_bytes().to_vec(),
    }
}

fn files_under(p: &Path) -> usize {
    walk_count(p)
}

fn walk_count(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    1 + if e.file_type().unwrap().is_dir() {
                        walk_count(&e.path())
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn entries_escaping_the_destination_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_s = outside.to_str().unwrap();
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "symlink-then-child",
            vec![
                entry(EntryKind::Symlink, "evil", outside_s),
                entry(EntryKind::Dir, "evil/x", ""),
            ],
        ),
        ("dotdot", vec![entry(EntryKind::Dir, "..", "")]),
        (
            "dotdot-inside",
            vec![
                entry(EntryKind::Dir, "a", ""),
                entry(EntryKind::Dir, "a/../../x", ""),
            ],
        ),
        (
            "absolute",
            vec![
                entry(EntryKind::Dir, outside_s.trim_start_matches('/'), ""),
                entry(EntryKind::Dir, "/abs", ""),
            ],
        ),
        (
            "duplicate",
            vec![
                entry(EntryKind::Dir, "a", ""),
                entry(EntryKind::Dir, "a", ""),
            ],
        ),
        (
            "hardlink-outside",
            vec![entry(EntryKind::HardLink, "h", "../outside/f")],
        ),
        (
            "parent-missing",
            vec![entry(EntryKind::Dir, "nodir/child", "")],
        ),
    ];
    for (name, entries) in cases {
        // Encoding may itself refuse nothing (it writes any bytes); readers must refuse.
        let a = t.path().join(format!("{name}.lmz"));
        std::fs::write(&a, craft(&entries)).unwrap();
        let dst = t.path().join(format!("dst-{name}"));
        let err = run_fail(lmz().arg("unpack").arg(&a).arg("-C").arg(&dst), 4);
        assert!(!err.is_empty());
        // The random-access reader validates everything before creating anything.
        assert_eq!(
            files_under(&dst),
            0,
            "{name}: nothing should be extracted from an invalid archive"
        );
        // Through a pipe: entries before the bad one may already exist (inside the
        // destination), but nothing escapes.
        let mut c = lmz();
        c.args(["unpack", "-", "-C"])
            .arg(&dst)
            .stdin(std::fs::File::open(&a).unwrap());
        run_fail(&mut c, 4);
        assert_eq!(
            files_under(&outside),
            0,
            "{name}: something was written outside"
        );
    }
}

#[test]
fn existing_symlink_in_destination_is_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/x"), b"payload").unwrap();
    let a = t.path().join("a.lmz");
    run(lmz()
        .args(["pack", "--engine", "none", "-q"])
        .arg(&src)
        .arg("-o")
        .arg(&a));
    // The destination already holds src/d as a symlink pointing outside.
    let dst = t.path().join("dst");
    std::fs::create_dir_all(dst.join("src")).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("src/d")).unwrap();
    run_fail(lmz().args(["unpack", "-q"]).arg(&a).arg("-C").arg(&dst), 2);
    assert_eq!(files_under(&outside), 0);
    // With --overwrite the symlink is replaced by a real directory; still nothing outside.
    run(lmz()
        .args(["unpack", "-q", "--overwrite"])
        .arg(&a)
        .arg("-C")
        .arg(&dst));
    assert_eq!(files_under(&outside), 0);
    assert!(std::fs::symlink_metadata(dst.join("src/d"))
        .unwrap()
        .is_dir());
    assert_eq!(std::fs::read(dst.join("src/d/x")).unwrap(), b"payload");
}

#[test]
fn full_disk_gives_an_io_error_and_no_archive() {
    let t = tempfile::tempdir().unwrap();
    let small = t.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let src = t.path().join("big");
    std::fs::write(&src, corpus("fireworks.jpeg", 120_000)).unwrap();
    let a = small.join("a.lmz");
    let err = run_fail(
        lmz()
            .args(["pack", "--engine", "none"])
            .arg(&src)
            .arg("-o")
            .arg(&a),
        3,
    );
    assert!(
        err.contains("No space left") || err.contains("space"),
        "{err}"
    );
    let left = std::fs::read_dir(&small).unwrap().count();
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert_eq!(left, 0, "the partial archive must be removed");
}

/// Waits until `lmz pack` has created its temporary archive in `dir` (it is then running
/// and its signal handler is installed).
fn wait_for_temp(dir: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let found = std::fs::read_dir(dir)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains("lmz-tmp"));
        if found {
            std::thread::sleep(std::time::Duration::from_millis(50));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("lmz pack never created its temporary archive");
}

#[test]
fn killed_pack_leaves_nothing_under_the_final_name() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("f{i}")), corpus("alice29.txt", 150_000)).unwrap();
    }
    let a = t.path().join("a.lmz");
    // A pack that is running, with its temporary archive created.
    let start_pack = || {
        let child = lmz()
            .args(["pack", "--engine", "order1", "-q"])
            .arg(&src)
            .arg("-o")
            .arg(&a)
            .spawn()
            .unwrap();
        wait_for_temp(t.path());
        child
    };
    let mut child = start_pack();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !a.exists(),
        "a killed pack must not leave an archive under the final name"
    );
    // SIGTERM (or Ctrl-C) is caught: the temporary file goes too.
    for f in std::fs::read_dir(t.path()).unwrap() {
        let p = f.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().contains("lmz-tmp") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut child = start_pack();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!a.exists());
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().contains("lmz-tmp")),
        "temporary file left: {left:?}"
    );
}

#[test]
fn model_problems_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f.txt");
    std::fs::write(&f, b"some text to pack").unwrap();
    let a = t.path().join("a.lmz");
    // Missing model file.
    let err = run_fail(
        lmz()
            .args(["pack", "--model", "/nonexistent/model.gguf"])
            .arg(&f)
            .arg("-o")
            .arg(&a),
        5,
    );
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    // A GGUF file that is not a model.
    let fake = t.path().join("fake.gguf");
    std::fs::write(&fake, b"GGUF\x03\0\0\0garbage").unwrap();
    let err = run_fail(
        lmz()
            .args(["pack", "--model"])
            .arg(&fake)
            .arg(&f)
            .arg("-o")
            .arg(&a),
        5,
    );
    assert!(err.contains("fake.gguf") && err.contains("GGUF"), "{err}");
    assert!(!a.exists());
    // An order-1 archive asks for no file; an archive pinning an unknown model names it.
    let mut bytes = {
        run(lmz()
            .args(["pack", "--engine", "order1", "-q"])
            .arg(&f)
            .arg("-o")
            .arg(&a));
        std::fs::read(&a).unwrap()
    };
    let (mut h, len) = Header::decode(&bytes).unwrap();
    h.pin.kind = lmz::format::ModelKind::Llama;
    h.pin.tokenizer = lmz::format::Tokenizer::LlamaPieces;
    h.pin.sha256 = [0xab; 32];
    h.model_name = "Mystery-1B".into();
    let nh = h.encode();
    assert_eq!(nh.len(), len - "lmz-order1-v1".len() + "Mystery-1B".len());
    bytes.splice(..len, nh);
    // (Offsets moved: the index no longer matches, but the model is checked first for a
    // pipe, and `list` shows the problem is the archive for a file.)
    let b = t.path().join("b.lmz");
    std::fs::write(&b, &bytes).unwrap();
    let mut c = lmz();
    c.args(["unpack", "-", "-C"])
        .arg(t.path().join("o"))
        .stdin(std::fs::File::open(&b).unwrap());
    let err = run_fail(&mut c, 5);
    assert!(
        err.contains("Mystery-1B") && err.contains(&"ab".repeat(32)),
        "{err}"
    );
    assert!(!t.path().join("o").exists());
}
