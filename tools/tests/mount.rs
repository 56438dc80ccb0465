//! `lmz mount` end to end: real FUSE mounts of archives made by the real binary.
//!
//! Needs /dev/fuse and the right to mount (root, or fusermount3); each test says so and
//! returns early when /dev/fuse is absent. Archives use the order-1 model or no model, so
//! no language model is needed.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use filetime::FileTime;

const LMZ: &str = env!("CARGO_BIN_EXE_lmz");
const BLOCK: u64 = 4096;

fn fuse_available(test: &str) -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("SKIPPED {test}: /dev/fuse is absent, so nothing can be mounted here");
    false
}

/// Corpus files, or stand-ins when the corpus is absent (see `common::corpus`).
fn sample(name: &str, len: usize) -> Vec<u8> {
    common::corpus(name, len)
}

/// Random ACGT: the order-1 model beats zstd on it, so the archive has model-coded blocks.
fn genome(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x853c_49e6_748f_ea9b;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"ACGT"[(x >> 33) as usize % 4]
        })
        .collect()
}

fn set_mtime(p: &Path, sec: i64, nsec: u32) {
    filetime::set_symlink_file_times(
        p,
        FileTime::from_unix_time(sec, nsec),
        FileTime::from_unix_time(sec, nsec),
    )
    .unwrap();
}

/// A tree with nested directories, text and binary files, an empty file, a symlink, a hard
/// link, various modes and nanosecond mtimes.
fn make_tree(root: &Path) -> PathBuf {
    let t = root.join("tree");
    fs::create_dir_all(t.join("sub/deeper")).unwrap();
    fs::create_dir_all(t.join("empty-dir")).unwrap();
    fs::write(t.join("alice29.txt"), sample("alice29.txt", 150_000)).unwrap();
    fs::write(t.join("fireworks.jpeg"), sample("fireworks.jpeg", 120_000)).unwrap();
    fs::write(t.join("sub/html"), sample("html", 100_000)).unwrap();
    fs::write(t.join("sub/genome.txt"), genome(80_000)).unwrap();
    fs::write(t.join("sub/deeper/small.txt"), b"hello, mount\n").unwrap();
    fs::write(t.join("sub/deeper/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::write(t.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("../alice29.txt", t.join("sub/link")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", t.join("dangling")).unwrap();
    fs::hard_link(t.join("alice29.txt"), t.join("sub/hard")).unwrap();
    let modes: &[(&str, u32)] = &[
        ("sub/html", 0o600),
        ("sub/deeper/run.sh", 0o755),
        ("fireworks.jpeg", 0o444),
        ("empty", 0o640),
        ("sub", 0o750),
        ("empty-dir", 0o700),
    ];
    for (p, m) in modes {
        fs::set_permissions(t.join(p), fs::Permissions::from_mode(*m)).unwrap();
    }
    let times: &[(&str, i64, u32)] = &[
        ("alice29.txt", 1_000_000_000, 123_456_789),
        ("fireworks.jpeg", 1_500_000_000, 1),
        ("sub/html", 981_173_106, 999_999_999),
        ("sub/deeper/small.txt", 1_234_567_890, 0),
        ("sub/deeper/run.sh", 1_600_000_000, 500),
        ("empty", 1_700_000_000, 42),
        ("sub/link", 1_111_111_111, 111),
        ("dangling", 1_222_222_222, 222),
        // Directories last: adding entries changed their mtimes.
        ("sub/deeper", 1_300_000_000, 7),
        ("sub", 1_400_000_000, 8),
        ("empty-dir", 1_450_000_000, 9),
        ("", 1_500_000_001, 10),
    ];
    for (p, s, n) in times {
        set_mtime(&t.join(p), *s, *n);
    }
    t
}

fn pack(tree: &Path, out: &Path, engine: &str) {
    let st = Command::new(LMZ)
        .args([
            "-q",
            "pack",
            "--engine",
            engine,
            "--block-size",
            &BLOCK.to_string(),
            // A weak zstd lets the order-1 model win some blocks.
            "--zstd-level",
            "1",
            "-o",
        ])
        .arg(out)
        .arg(tree)
        .status()
        .unwrap();
    assert!(st.success(), "lmz pack failed: {st}");
}

fn mounts_at(mp: &Path) -> usize {
    lmz_fuse::daemon::fuse_mounts_at(mp).unwrap()
}

fn unmount(mp: &Path) -> bool {
    let quiet = |c: &mut Command| c.stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    quiet(Command::new("fusermount3").arg("-u").arg(mp)) || quiet(Command::new("umount").arg(mp))
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A foreground `lmz mount -f` child, unmounted and reaped on drop.
struct Mounted {
    child: Child,
    mp: PathBuf,
    stats: PathBuf,
    log: PathBuf,
}

impl Mounted {
    fn start(archive: &Path, dir: &Path, name: &str, extra: &[&str]) -> Mounted {
        let mp = dir.join(name);
        fs::create_dir_all(&mp).unwrap();
        let mp = fs::canonicalize(&mp).unwrap();
        let stats = dir.join(format!("{name}.stats"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(LMZ)
            .arg("mount")
            .arg("-f")
            .arg(archive)
            .arg(&mp)
            .arg("--stats-file")
            .arg(&stats)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mounted {
            child,
            mp,
            stats,
            log,
        };
        let t = Instant::now();
        while mounts_at(&m.mp) == 0 {
            if let Some(s) = m.child.try_wait().unwrap() {
                panic!(
                    "lmz mount exited with {s}: {}",
                    fs::read_to_string(&m.log).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "mount did not appear"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    /// Stats-file counters and per-block decode counts, once no decode is in flight and
    /// the file has caught up.
    fn stats(&self) -> (BTreeMap<String, String>, BTreeMap<usize, u32>) {
        let mut last = String::new();
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(50));
            let text = fs::read_to_string(&self.stats).unwrap_or_default();
            if text == last && text.contains("\nin_flight 0\n") {
                break;
            }
            last = text;
        }
        let mut kv = BTreeMap::new();
        let mut per_block = BTreeMap::new();
        for line in last.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            if k == "block_decodes" {
                for pair in v.split_whitespace() {
                    let (b, n) = pair.split_once(':').unwrap();
                    per_block.insert(b.parse().unwrap(), n.parse().unwrap());
                }
            } else {
                kv.insert(k.to_string(), v.to_string());
            }
        }
        (kv, per_block)
    }

    fn finish(mut self) -> ExitStatus {
        assert!(unmount(&self.mp), "unmounting {} failed", self.mp.display());
        let st = wait_exit(&mut self.child, Duration::from_secs(10))
            .expect("lmz mount did not exit after unmount");
        assert_eq!(mounts_at(&self.mp), 0);
        st
    }
}

impl Drop for Mounted {
    /// After a failed test: unmount, and never leave a mount or a process behind, even
    /// if the mount is busy (a file still open in the failing test).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            unmount(&self.mp);
            if wait_exit(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if mounts_at(&self.mp) > 0 && !unmount(&self.mp) {
            lmz_fuse::daemon::lazy_unmount(&self.mp);
        }
    }
}

fn compare_trees(orig: &Path, mounted: &Path) {
    let names = |p: &Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let (a, b) = (names(orig), names(mounted));
    assert_eq!(a, b, "listing of {}", orig.display());
    for n in a {
        let (o, m) = (orig.join(&n), mounted.join(&n));
        let (mo, mm) = (
            fs::symlink_metadata(&o).unwrap(),
            fs::symlink_metadata(&m).unwrap(),
        );
        let what = o.display();
        assert_eq!(mo.file_type(), mm.file_type(), "{what}: type");
        assert_eq!(mo.mode() & 0o7777, mm.mode() & 0o7777, "{what}: mode");
        assert_eq!(
            mo.mode() & libc::S_IFMT,
            mm.mode() & libc::S_IFMT,
            "{what}: file type bits"
        );
        assert_eq!(
            (mo.mtime(), mo.mtime_nsec()),
            (mm.mtime(), mm.mtime_nsec()),
            "{what}: mtime"
        );
        assert_eq!((mo.uid(), mo.gid()), (mm.uid(), mm.gid()), "{what}: owner");
        if mo.is_dir() {
            let subdirs = fs::read_dir(&o)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count();
            assert_eq!(mm.nlink(), 2 + subdirs as u64, "{what}: directory nlink");
            compare_trees(&o, &m);
        } else if mo.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&o).unwrap(),
                fs::read_link(&m).unwrap(),
                "{what}: target"
            );
            assert_eq!(mo.len(), mm.len(), "{what}: symlink size");
        } else {
            assert_eq!(mo.len(), mm.len(), "{what}: size");
            assert_eq!(mo.nlink(), mm.nlink(), "{what}: nlink");
            assert_eq!(mm.blocks(), mm.len().div_ceil(512), "{what}: blocks");
            assert!(
                fs::read(&o).unwrap() == fs::read(&m).unwrap(),
                "{what}: content"
            );
        }
    }
}

#[test]
fn mounted_tree_equals_the_original() {
    if !fuse_available("mounted_tree_equals_the_original") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let archive = dir.path().join("t.lmz");
    pack(&tree, &archive, "order1");
    let m = Mounted::start(&archive, dir.path(), "mnt", &[]);
    let mt = m.mp.join("tree");
    compare_trees(&tree, &mt);
    // The top directory too.
    let (a, b) = (fs::metadata(&tree).unwrap(), fs::metadata(&mt).unwrap());
    assert_eq!(
        (a.mode(), a.mtime(), a.mtime_nsec()),
        (b.mode(), b.mtime(), b.mtime_nsec())
    );
    // Hard links share the inode; distinct files do not.
    let ino = |p: &str| fs::metadata(mt.join(p)).unwrap().ino();
    assert_eq!(ino("alice29.txt"), ino("sub/hard"));
    assert_eq!(fs::metadata(mt.join("sub/hard")).unwrap().nlink(), 2);
    assert_ne!(ino("alice29.txt"), ino("fireworks.jpeg"));
    // The root: a 0755 directory with the archive's owner.
    let root = fs::metadata(&m.mp).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.mode() & 0o7777, 0o755);
    assert_eq!(root.nlink(), 3);
    // --no-dereference: compare symlinks as links (one of them dangles).
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&tree)
        .arg(&mt)
        .output();
    match out {
        Ok(o) => assert!(
            o.status.success(),
            "diff -r: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("diff not run: {e}"),
    }
    // Read-only: writing fails, creating fails.
    assert!(fs::OpenOptions::new()
        .write(true)
        .open(mt.join("empty"))
        .is_err());
    assert!(fs::write(mt.join("new-file"), b"x").is_err());
    assert!(
        fs::metadata(mt.join("no-such-file")).unwrap_err().kind() == std::io::ErrorKind::NotFound
    );
    assert_eq!(m.finish().code(), Some(0));
}

#[test]
fn random_reads_match_the_original() {
    if !fuse_available("random_reads_match_the_original") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let archive = dir.path().join("t.lmz");
    pack(&tree, &archive, "order1");
    // Through the page cache (the kernel's page-sized requests) and with direct_io (every
    // read reaches the mount at its own offset and length).
    for opts in [&[][..], &["-o", "direct_io"][..]] {
        let m = Mounted::start(&archive, dir.path(), "mnt", opts);
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        for name in [
            "alice29.txt",
            "fireworks.jpeg",
            "sub/html",
            "sub/genome.txt",
            "sub/deeper/small.txt",
            "empty",
        ] {
            let want = fs::read(tree.join(name)).unwrap();
            let f = fs::File::open(m.mp.join("tree").join(name)).unwrap();
            let len = want.len() as u64;
            let mut offsets: Vec<(u64, usize)> = Vec::new();
            for _ in 0..150 {
                offsets.push((rnd(len + 10), 1 + rnd(3 * BLOCK) as usize));
            }
            // Straddling block boundaries of the data stream, and the end of the file.
            for k in 1..8u64 {
                offsets.push(((k * BLOCK).saturating_sub(3), 10));
                offsets.push((k * BLOCK + 1, BLOCK as usize * 2));
            }
            offsets.extend([
                (len.saturating_sub(5), 100),
                (len, 10),
                (len + 1, 10),
                (len + 10_000, 4096),
                (0, want.len() + 5000),
            ]);
            for (off, n) in offsets {
                let mut buf = vec![0u8; n];
                let mut got = 0;
                while got < n {
                    let r = f.read_at(&mut buf[got..], off + got as u64).unwrap();
                    if r == 0 {
                        break;
                    }
                    got += r;
                }
                let lo = (off as usize).min(want.len());
                let hi = (off as usize + n).min(want.len());
                assert_eq!(&buf[..got], &want[lo..hi], "{name}: {n} bytes at {off}");
            }
        }
        assert_eq!(m.finish().code(), Some(0));
    }
}

#[test]
fn concurrent_readers_decode_each_block_once() {
    if !fuse_available("concurrent_readers_decode_each_block_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let archive = dir.path().join("t.lmz");
    pack(&tree, &archive, "order1");
    let a = lmz::archive::Archive::open(&archive).unwrap();
    let blocks = a.block_count();
    assert!(blocks > 50, "{blocks} blocks");
    let model_blocks = (0..blocks)
        .filter(|&i| a.block(i).unwrap().header.codec == lmz::format::Codec::Model)
        .count();
    assert!(model_blocks > 5, "only {model_blocks} model-coded blocks");
    // direct_io: the page cache does not absorb repeated reads, so every read reaches the
    // mount and concurrent readers of one block race for real.
    let m = Mounted::start(
        &archive,
        dir.path(),
        "mnt",
        &["-o", "direct_io", "--workers", "2", "--readahead", "2"],
    );
    let names = [
        "alice29.txt",
        "fireworks.jpeg",
        "sub/html",
        "sub/hard",
        "sub/genome.txt",
        "sub/deeper/small.txt",
    ];
    let want: Arc<Vec<Vec<u8>>> = Arc::new(
        names
            .iter()
            .map(|n| fs::read(tree.join(n)).unwrap())
            .collect(),
    );
    let mp = m.mp.join("tree");
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let want = want.clone();
            let mp = &mp;
            s.spawn(move || {
                let files: Vec<fs::File> = names
                    .iter()
                    .map(|n| fs::File::open(mp.join(n)).unwrap())
                    .collect();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ ((t + 1) * 0x1000_0000_01b3);
                for _ in 0..300 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = (x % names.len() as u64) as usize;
                    let w = &want[k];
                    let off = (x >> 8) % (w.len() as u64 + 1);
                    let n = 1 + ((x >> 40) % 20_000) as usize;
                    let mut buf = vec![0u8; n];
                    let got = files[k].read_at(&mut buf, off).unwrap();
                    let hi = (off as usize + n).min(w.len());
                    assert_eq!(
                        &buf[..got],
                        &w[off as usize..hi],
                        "thread {t}: {} {n} bytes at {off}",
                        names[k]
                    );
                }
            });
        }
    });
    // Everything once more, sequentially: all from the cache.
    for (k, n) in names.iter().enumerate() {
        let mut got = Vec::new();
        fs::File::open(mp.join(n))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == want[k], "{n}");
    }
    let (kv, per_block) = m.stats();
    eprintln!("stats after the concurrent reads: {kv:?}");
    assert!(!per_block.is_empty(), "no decode counted: {kv:?}");
    for (b, n) in &per_block {
        assert_eq!(
            *n, 1,
            "block {b} was decoded {n} times while cached ({kv:?})"
        );
    }
    assert_eq!(kv["decode_errors"], "0");
    let decodes: u64 = kv["decodes"].parse().unwrap();
    assert_eq!(decodes, per_block.values().map(|&n| n as u64).sum::<u64>());
    assert!(kv["hits"].parse::<u64>().unwrap() > 0);
    assert_eq!(m.finish().code(), Some(0));
}

#[test]
fn corrupt_block_gives_eio_and_the_rest_still_works() {
    if !fuse_available("corrupt_block_gives_eio_and_the_rest_still_works") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let archive = dir.path().join("t.lmz");
    pack(&tree, &archive, "order1");
    // Flip a byte in the payload of a block in the middle of alice29.txt.
    let (bad, bad_start, bad_end) = {
        let a = lmz::archive::Archive::open(&archive).unwrap();
        let i = a.find(b"tree/alice29.txt").unwrap();
        let e = a.file_entry(i).unwrap().clone();
        let r = a.blocks_covering(e.data_start + e.size / 2, e.data_start + e.size / 2 + 1);
        let b = r.start;
        let r = a.blocks()[b];
        let mut bytes = fs::read(&archive).unwrap();
        let coded = a.block(b).unwrap().header.coded_len as u64;
        let at = (r.end() - coded.div_ceil(2)) as usize;
        bytes[at] ^= 0x55;
        fs::write(&archive, bytes).unwrap();
        let (s, t) = (a.block_start(b), a.block_start(b + 1));
        (b, s - e.data_start, t - e.data_start)
    };
    for opts in [&[][..], &["-o", "direct_io"][..]] {
        let m = Mounted::start(&archive, dir.path(), "mnt", opts);
        let mt = m.mp.join("tree");
        let want = fs::read(tree.join("alice29.txt")).unwrap();
        let f = fs::File::open(mt.join("alice29.txt")).unwrap();
        // Reads touching the block fail with EIO, again and again.
        for (off, n) in [
            (bad_start, 10usize),
            (bad_start.saturating_sub(5), 10),
            (bad_end - 1, 1),
            (0, want.len()),
        ] {
            let mut buf = vec![0u8; n];
            let mut got = 0;
            let err = loop {
                match f.read_at(&mut buf[got..], off + got as u64) {
                    Ok(0) => break None,
                    Ok(r) => got += r,
                    Err(e) => break Some(e),
                }
                if got == n {
                    break None;
                }
            };
            let err = err.unwrap_or_else(|| {
                panic!("read of {n} bytes at {off} touching block {bad} succeeded")
            });
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        }
        // Bytes of the same file outside the block, and the other files, still read.
        let mut buf = vec![0u8; 4096];
        let n = f.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], &want[..n]);
        let tail = want.len() as u64 - 3000;
        let n = f.read_at(&mut buf, tail).unwrap();
        assert_eq!(&buf[..n], &want[tail as usize..tail as usize + n]);
        for name in [
            "fireworks.jpeg",
            "sub/html",
            "sub/genome.txt",
            "sub/deeper/small.txt",
        ] {
            assert!(
                fs::read(mt.join(name)).unwrap() == fs::read(tree.join(name)).unwrap(),
                "{name}"
            );
        }
        // The mount is still up and the block was reported.
        assert_eq!(mounts_at(&m.mp), 1);
        assert!(fs::metadata(mt.join("sub")).unwrap().is_dir());
        drop(f);
        let (kv, _) = m.stats();
        assert_eq!(kv["failed"], "1", "{kv:?}");
        let log = m.log.clone();
        assert_eq!(m.finish().code(), Some(0));
        let log = fs::read_to_string(log).unwrap();
        assert!(
            log.contains(&format!("block {bad}")),
            "the log does not name block {bad}:\n{log}"
        );
    }
}

fn daemon_pids(mp: &Path) -> Vec<u32> {
    let needle = mp.as_os_str().as_encoded_bytes().to_vec();
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            if cmd.windows(needle.len()).any(|w| w == needle)
                && cmd.windows(5).any(|w| w == b"mount")
            {
                pids.push(pid);
            }
        }
    }
    pids
}

fn wait_gone(mp: &Path) {
    let t = Instant::now();
    while !daemon_pids(mp).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "mount process still running after unmount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn detached_mount_unmounts_cleanly_and_signals_unmount() {
    if !fuse_available("detached_mount_unmounts_cleanly_and_signals_unmount") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let archive = dir.path().join("t.lmz");
    pack(&tree, &archive, "none");
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let mp = fs::canonicalize(&mp).unwrap();

    // Detached: returns once mounted; the daemon ends when unmounted from outside.
    let st = Command::new(LMZ)
        .arg("mount")
        .arg(&archive)
        .arg(&mp)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(mounts_at(&mp), 1);
    assert_eq!(daemon_pids(&mp).len(), 1);
    assert_eq!(
        fs::read(mp.join("tree/sub/deeper/small.txt")).unwrap(),
        b"hello, mount\n"
    );
    assert!(unmount(&mp));
    wait_gone(&mp);
    assert_eq!(mounts_at(&mp), 0);

    // Foreground: SIGTERM and SIGINT unmount and exit 0.
    for sig in ["TERM", "INT"] {
        let mut child = Command::new(LMZ)
            .args(["-q", "mount", "-f"])
            .arg(&archive)
            .arg(&mp)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while mounts_at(&mp) == 0 {
            assert!(t.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(fs::metadata(mp.join("tree/alice29.txt")).is_ok());
        let k = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(k.success());
        let st = wait_exit(&mut child, Duration::from_secs(10)).expect("no exit after the signal");
        assert_eq!(st.code(), Some(0), "SIG{sig}");
        assert_eq!(mounts_at(&mp), 0, "still mounted after SIG{sig}");
    }

    // A damaged archive is refused at mount time with the corrupt-archive exit status,
    // detached or not, and nothing is left mounted or running.
    let bad = dir.path().join("bad.lmz");
    fs::write(&bad, b"this is not an archive at all").unwrap();
    for fg in [false, true] {
        let mut c = Command::new(LMZ);
        c.arg("mount");
        if fg {
            c.arg("-f");
        }
        let out = c.arg(&bad).arg(&mp).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
        assert_eq!(mounts_at(&mp), 0);
    }
    wait_gone(&mp);
    // A read-write mount is refused.
    let out = Command::new(LMZ)
        .args(["mount", "-o", "rw"])
        .arg(&archive)
        .arg(&mp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(mounts_at(&mp), 0);
}

#[test]
fn wrong_model_is_refused_at_mount_time() {
    if !fuse_available("wrong_model_is_refused_at_mount_time") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let archive = dir.path().join("t.lmz");
    pack(&tree, &archive, "order1");
    // Re-pin the archive to a language model nobody has, keeping every offset: a model
    // name of the same length as the order-1 model's.
    let mut bytes = fs::read(&archive).unwrap();
    let (mut h, len) = lmz::format::Header::decode(&bytes).unwrap();
    h.pin.kind = lmz::format::ModelKind::Llama;
    h.pin.tokenizer = lmz::format::Tokenizer::LlamaPieces;
    h.pin.sha256 = [0xab; 32];
    h.model_name = "X".repeat(h.model_name.len());
    let nh = h.encode();
    assert_eq!(nh.len(), len);
    bytes.splice(..len, nh);
    fs::write(&archive, &bytes).unwrap();
    let fake = dir.path().join("fake.gguf");
    fs::write(&fake, b"GGUF\x03\0\0\0not a model").unwrap();
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let mp = fs::canonicalize(&mp).unwrap();
    for fg in [true, false] {
        let mut c = Command::new(LMZ);
        c.arg("mount");
        if fg {
            c.arg("-f");
        }
        let out = c
            .arg(&archive)
            .arg(&mp)
            .arg("--model")
            .arg(&fake)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{err}");
        assert!(err.contains(&"ab".repeat(32)), "{err}");
        assert_eq!(mounts_at(&mp), 0);
    }
    wait_gone(&mp);
}
