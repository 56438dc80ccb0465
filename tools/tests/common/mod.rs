//! Helpers shared by the CLI tests: running the `lmz` binary, building trees with every
//! entry type, and comparing trees byte for byte and metadata for metadata.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn lmz() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lmz"));
    c.stdin(Stdio::null());
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run lmz");
    if !out.status.success() {
        panic!(
            "{:?} failed ({:?}):\n{}",
            cmd,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs and expects failure with exit code `code`; returns stderr.
pub fn run_fail(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().expect("run lmz");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    err
}

/// Where the shared corpus is: `$LMZ_CORPUS`, else `../shared/corpus` beside the
/// repository, else `/work/shared/corpus`.
pub fn corpus_dir() -> Option<PathBuf> {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    std::env::var_os("LMZ_CORPUS")
        .map(PathBuf::from)
        .into_iter()
        .chain([beside, PathBuf::from("/work/shared/corpus")])
        .find(|d| d.join("alice29.txt").is_file())
}

/// The first `n` bytes of a corpus file. Without the corpus (a checkout elsewhere), a
/// stand-in of the same nature — English-like text, or incompressible bytes for the JPEG and
/// PDF — so the tests still run; a warning says so.
pub fn corpus(name: &str, n: usize) -> Vec<u8> {
    if let Some(d) = corpus_dir() {
        let mut b =
            std::fs::read(d.join(name)).unwrap_or_else(|e| panic!("corpus file {name}: {e}"));
        b.truncate(n);
        return b;
    }
    eprintln!(
        "WARNING: shared corpus not found (set LMZ_CORPUS); using a generated stand-in for {name}"
    );
    let mut x = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    });
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    if name.ends_with(".jpeg") || name.ends_with(".pdf") || name.ends_with(".protodata") {
        return (0..n).map(|_| next() as u8).collect();
    }
    let words = [
        "the ", "rabbit ", "said ", "Alice, ", "and ", "went ", "on ", "to ", "a ", "queen.\n",
        "<p>", "http://",
    ];
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
    }
    out.truncate(n);
    out
}

pub fn write(p: &Path, bytes: &[u8], mode: u32, mtime: (i64, u32)) {
    std::fs::write(p, bytes).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    let t = filetime::FileTime::from_unix_time(mtime.0, mtime.1);
    filetime::set_file_times(p, t, t).unwrap();
}

/// A tree with nested folders, a symlink, a hard link, an empty file, odd bytes, modes and
/// nanosecond mtimes. `files` adds named contents at the top.
pub fn make_tree(root: &Path, files: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
    for (i, (name, bytes)) in files.iter().enumerate() {
        write(
            &root.join(name),
            bytes,
            0o644,
            (1_600_000_000 + i as i64, 123_456_789),
        );
    }
    write(&root.join("empty"), b"", 0o600, (1_500_000_000, 1));
    let mut odd =
        b"valid text, then invalid UTF-8: \xff\xfe\xc3\x28 and NULs \0\0\0 and \xe2\x82 truncated"
            .to_vec();
    odd.extend((0..=255u8).collect::<Vec<_>>());
    write(
        &root.join("nested/binary-ish.dat"),
        &odd,
        0o640,
        (1_234_567_890, 999_999_999),
    );
    write(
        &root.join("nested/unicode.txt"),
        "Grüße, 世界! Ελληνικά — emoji 🦀🚀 and combining é\n"
            .repeat(3)
            .as_bytes(),
        0o444,
        (1_700_000_000, 5),
    );
    let mut ws = b"before".to_vec();
    ws.extend(std::iter::repeat_n(b' ', 700));
    ws.extend(b"\t\t\t\n\n\n\n\r\n");
    ws.extend(std::iter::repeat_n(b'\n', 100));
    ws.extend(b"after");
    write(
        &root.join("nested/deeper/whitespace.txt"),
        &ws,
        0o755,
        (1_650_000_000, 42),
    );
    write(
        &root.join("nested/deeper/deepest/small"),
        b"x",
        0o600,
        (0, 0),
    );
    std::os::unix::fs::symlink("../empty", root.join("nested/link-to-empty")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute target", root.join("dangling")).unwrap();
    std::fs::hard_link(
        root.join("nested/unicode.txt"),
        root.join("nested/deeper/hardlink.txt"),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("nested/deeper"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    for d in ["nested/deeper/deepest", "nested/deeper", "nested"] {
        let t = filetime::FileTime::from_unix_time(1_400_000_000, 777);
        filetime::set_file_times(root.join(d), t, t).unwrap();
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
    /// Index of the first path with the same inode (hard links).
    link_group: Option<String>,
}

/// Walks `root` into a map from relative path to what must survive a round trip.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    p: &Path,
    out: &mut BTreeMap<PathBuf, Node>,
    inodes: &mut BTreeMap<u64, String>,
) {
    let mut kids: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    kids.sort();
    for k in kids {
        let md = std::fs::symlink_metadata(&k).unwrap();
        let rel = k.strip_prefix(root).unwrap().to_path_buf();
        let (kind, content) = if md.is_dir() {
            ("dir", Vec::new())
        } else if md.file_type().is_symlink() {
            (
                "symlink",
                std::fs::read_link(&k)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            ("file", std::fs::read(&k).unwrap())
        };
        let link_group = (kind == "file" && md.nlink() > 1).then(|| {
            inodes
                .entry(md.ino())
                .or_insert_with(|| rel.display().to_string())
                .clone()
        });
        let mode = if kind == "symlink" {
            0
        } else {
            md.mode() & 0o7777
        };
        out.insert(
            rel,
            Node {
                kind,
                mode,
                mtime: (md.mtime(), md.mtime_nsec()),
                content,
                link_group,
            },
        );
        if md.is_dir() {
            walk(root, &k, out, inodes);
        }
    }
}

pub fn assert_same_tree(a: &Path, b: &Path) {
    let (x, y) = (snapshot(a), snapshot(b));
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        y.keys().collect::<Vec<_>>(),
        "different entries"
    );
    for (k, v) in &x {
        assert_eq!(v, &y[k], "{} differs", k.display());
    }
}
