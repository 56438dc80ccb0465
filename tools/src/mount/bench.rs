//! `lmz bench-mount`: what the FUSE mount costs and gains, measured through the real
//! `lmz mount` process and the kernel.
//!
//! 1. Mount time of an archive of many small entries (engine none), and the time to walk
//!    the mounted tree (readdir + stat of every entry).
//! 2. Sequential read of a large file (engine order1), cold, without and with prefetch.
//! 3. The same read again with the decoded blocks cached (warm cache).
//! 4. Cold random 4 KiB reads: latency percentiles.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use lmz::archive::{Meta, Writer, WriterOptions};
use lmz::format::Codec;

use crate::engine::{self, Engine};
use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchMountArgs {
    /// Entries in the many-small-files archive (engine none).
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    /// Size of the large file (engine order1) read sequentially and at random.
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = super::parse_size)]
    size: u64,
    /// Files whose bytes (repeated) make the large file; default: generated text.
    #[arg(long, value_name = "PATH")]
    input: Vec<PathBuf>,
    #[arg(long, default_value_t = 8192)]
    block_size: u32,
    /// Blocks prefetched ahead of a sequential reader in the prefetch run.
    #[arg(long, default_value_t = 8)]
    readahead: usize,
    /// Decoder threads of the mounts (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// zstd level for the large file's blocks: the lower, the more blocks the order-1 model
    /// wins (and the more decoding costs, as it would with the language model).
    #[arg(long, default_value_t = 1)]
    zstd_level: i32,
    /// Random 4 KiB reads in the latency run.
    #[arg(long, default_value_t = 200)]
    random_reads: usize,
    /// Work directory for archives and mount points (default: a new temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// A running `lmz mount -f`.
struct Mounted {
    child: Option<Child>,
    mp: PathBuf,
    stats: PathBuf,
}

impl Mounted {
    /// Starts `lmz mount -f archive mp extra...` and waits for the mount; returns it with the
    /// time from starting the process to the mount being usable.
    fn start(archive: &Path, mp: &Path, extra: &[String]) -> Result<(Mounted, Duration)> {
        std::fs::create_dir_all(mp)?;
        let mp = std::fs::canonicalize(mp)?;
        let stats = mp.with_extension("stats");
        let before = lmz_fuse::daemon::fuse_mounts_at(&mp)?;
        let exe = std::env::current_exe()?;
        let t = Instant::now();
        let mut child = Command::new(exe)
            .arg("-q")
            .arg("mount")
            .arg("-f")
            .arg(archive)
            .arg(&mp)
            .arg("--stats-file")
            .arg(&stats)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting lmz mount")?;
        loop {
            if lmz_fuse::daemon::fuse_mounts_at(&mp)? > before {
                break;
            }
            if let Some(s) = child.try_wait()? {
                bail!("lmz mount exited with {s} before mounting");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = t.elapsed();
        Ok((
            Mounted {
                child: Some(child),
                mp,
                stats,
            },
            took,
        ))
    }

    /// A counter from the stats file, once no decode is in flight and the file has stopped
    /// changing (the mount rewrites it within milliseconds of any activity).
    fn stat(&self, key: &str) -> u64 {
        let mut last = String::new();
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(50));
            let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
            if text == last && text.contains("\nin_flight 0\n") {
                break;
            }
            last = text;
        }
        last.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    fn stop(mut self) -> Result<()> {
        self.unmount()
    }

    fn unmount(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let ok = Command::new("umount")
            .arg(&self.mp)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            || Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mp)
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            let _ = child.kill();
        }
        let status = child.wait()?;
        let _ = std::fs::remove_file(&self.stats);
        ensure!(status.success(), "lmz mount ended with {status}");
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// Deterministic English-like text: words from a small vocabulary, Zipf-ish.
fn generated_text(n: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "a",
        "in",
        "that",
        "is",
        "was",
        "he",
        "for",
        "it",
        "with",
        "as",
        "his",
        "on",
        "be",
        "at",
        "by",
        "had",
        "not",
        "are",
        "but",
        "from",
        "or",
        "have",
        "an",
        "they",
        "which",
        "one",
        "you",
        "were",
        "her",
        "all",
        "she",
        "there",
        "would",
        "their",
        "we",
        "him",
        "been",
        "has",
        "when",
        "who",
        "will",
        "more",
        "no",
        "if",
        "out",
        "so",
        "said",
        "what",
        "up",
        "its",
        "about",
        "into",
        "than",
        "them",
        "can",
        "only",
        "other",
        "new",
        "some",
        "could",
        "time",
        "these",
        "two",
        "may",
        "then",
        "do",
        "first",
        "any",
        "my",
        "now",
        "such",
        "like",
        "our",
        "over",
        "man",
        "me",
        "even",
        "most",
        "made",
        "after",
        "also",
        "did",
        "many",
        "before",
        "must",
        "through",
        "back",
        "years",
        "where",
        "much",
        "your",
        "way",
        "well",
        "down",
        "should",
        "because",
        "each",
        "just",
        "those",
        "people",
        "how",
        "too",
        "little",
        "state",
        "good",
        "very",
        "make",
        "world",
        "still",
        "own",
        "see",
        "men",
        "work",
        "long",
        "get",
        "here",
        "between",
        "both",
        "life",
        "being",
        "under",
        "never",
        "day",
        "same",
        "another",
        "know",
        "while",
        "last",
        "might",
        "us",
        "great",
        "old",
        "year",
        "off",
        "come",
        "since",
        "against",
        "go",
        "came",
        "right",
        "used",
        "take",
        "three",
        "archive",
        "model",
        "block",
        "random",
        "access",
        "compression",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 16);
    let mut col = 0;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Squaring a uniform number favours the early (frequent) words.
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        // The 64 most frequent words: text the order-1 model codes better than zstd.
        let vocab = &WORDS[..64];
        let w = vocab[((u * u) * vocab.len() as f64) as usize % vocab.len()];
        out.extend_from_slice(w.as_bytes());
        col += w.len() + 1;
        if x.is_multiple_of(17) {
            out.extend_from_slice(b".\n");
            col = 0;
        } else if col > 72 {
            out.push(b'\n');
            col = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(n);
    out
}

fn big_data(args: &BenchMountArgs) -> Result<Vec<u8>> {
    let n = args.size as usize;
    if args.input.is_empty() {
        return Ok(generated_text(n));
    }
    let mut src = Vec::new();
    for p in &args.input {
        src.extend(std::fs::read(p).with_context(|| format!("{}", p.display()))?);
    }
    ensure!(!src.is_empty(), "the --input files are empty");
    Ok(src.iter().copied().cycle().take(n).collect())
}

fn read_all(path: &Path, chunk: usize) -> Result<(u64, Duration)> {
    let t = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; chunk];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((total, t.elapsed()))
}

fn walk(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let md = std::fs::symlink_metadata(e.path())?;
        n += 1;
        if md.is_dir() {
            n += walk(&e.path())?;
        }
    }
    Ok(n)
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

pub fn run(args: BenchMountArgs) -> Result<()> {
    let (dir, _cleanup) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let d = std::env::temp_dir().join(format!("lmz-bench-mount-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            (d.clone(), Some(RemoveDir(d)))
        }
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let common = vec![
        "--workers".to_string(),
        workers.to_string(),
        "--cache-size".into(),
        "4G".into(),
    ];
    println!(
        "lmz bench-mount: block size {} B, {workers} decoder threads",
        args.block_size
    );
    println!();
    println!("| measurement | result |");
    println!("|---|---:|");

    // 1. Mount time of many small entries.
    let small = dir.join("small.lmz");
    let t = Instant::now();
    {
        let opts = WriterOptions {
            block_size: args.block_size,
            width: 1,
            zstd_level: 3,
            ..WriterOptions::default()
        };
        let mut w = Writer::new(
            std::io::BufWriter::new(std::fs::File::create(&small)?),
            None,
            opts,
        )?;
        let meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
        };
        let dmeta = Meta {
            mode: 0o755,
            ..meta
        };
        let per_dir = 1000;
        w.add_dir(b"tree", dmeta)?;
        for i in 0..args.entries {
            if i % per_dir == 0 {
                w.add_dir(format!("tree/d{:04}", i / per_dir).as_bytes(), dmeta)?;
            }
            let body = format!(
                "file {i}: {}\n",
                "lorem ipsum dolor sit amet ".repeat(1 + i % 5)
            );
            let name = format!("tree/d{:04}/f{i:06}.txt", i / per_dir);
            w.add_file(
                name.as_bytes(),
                meta,
                body.len() as u64,
                &mut body.as_bytes(),
            )?;
        }
        let (out, _) = w.finish()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    let archive_len = std::fs::metadata(&small)?.len();
    let build = t.elapsed();
    let (m, mount_time) = Mounted::start(&small, &dir.join("mnt-small"), &common)?;
    let t = Instant::now();
    let n = walk(&m.mp)?;
    let walk_time = t.elapsed();
    ensure!(
        n as usize >= args.entries,
        "walk saw {n} entries, expected at least {}",
        args.entries
    );
    m.stop()?;
    println!(
        "| mount time, {} entries ({:.1} MiB archive, engine none; built in {:.1} s) | {:.1} ms |",
        args.entries,
        archive_len as f64 / (1 << 20) as f64,
        build.as_secs_f64(),
        mount_time.as_secs_f64() * 1e3
    );
    println!(
        "| walk of the mounted tree (readdir + lstat of {n} entries) | {:.2} s ({:.0} entries/s) |",
        walk_time.as_secs_f64(),
        n as f64 / walk_time.as_secs_f64()
    );

    // 2–4. A large file, engine order1.
    let data = big_data(&args)?;
    let big = dir.join("big.lmz");
    let t = Instant::now();
    let big_stats = {
        let m = ModelArgs {
            model: None,
            threads: None,
            batch: Some(8),
            table_threads: None,
        };
        let model = engine::load_for_pack(Engine::Order1, args.block_size, &m)?;
        let opts = WriterOptions {
            block_size: args.block_size,
            width: 8,
            zstd_level: args.zstd_level,
            ..WriterOptions::default()
        };
        let mut w = Writer::new(
            std::io::BufWriter::new(std::fs::File::create(&big)?),
            model.as_deref(),
            opts,
        )?;
        w.add_file(
            b"big.txt",
            Meta {
                mode: 0o644,
                ..Meta::default()
            },
            data.len() as u64,
            &mut data.as_slice(),
        )?;
        let (out, st) = w.finish()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        st
    };
    let big_len = std::fs::metadata(&big)?.len();
    println!(
        "| large file: {:.1} MiB of {} → {:.2} MiB archive (order1, zstd -{}; {} model, {} zstd, {} stored blocks; packed in {:.1} s) | |",
        data.len() as f64 / (1 << 20) as f64,
        if args.input.is_empty() {
            "generated text"
        } else {
            "--input bytes"
        },
        big_len as f64 / (1 << 20) as f64,
        args.zstd_level,
        big_stats.blocks[Codec::Model as usize],
        big_stats.blocks[Codec::Zstd as usize],
        big_stats.blocks[Codec::Stored as usize],
        t.elapsed().as_secs_f64()
    );

    // Cold sequential reads without and with prefetch: through the page cache (1 MiB
    // reads; the kernel's own readahead already asks for 128 KiB at a time), and with
    // direct_io and 8 KiB reads (every request reaches the mount as the program made it).
    let modes: [(&str, &[&str], usize); 2] = [
        ("page cache, 1 MiB reads", &[], 1 << 20),
        ("direct_io, 8 KiB reads", &["-o", "direct_io"], 8 << 10),
    ];
    for (label, opts, chunk) in modes {
        let mut seq = Vec::new();
        for ra in [0, args.readahead] {
            let mut extra = common.clone();
            extra.extend(["--readahead".to_string(), ra.to_string()]);
            extra.extend(opts.iter().map(|s| s.to_string()));
            let (m, _) = Mounted::start(&big, &dir.join("mnt-big"), &extra)?;
            let file = m.mp.join("big.txt");
            let (bytes, cold) = read_all(&file, chunk)?;
            ensure!(
                bytes == data.len() as u64,
                "read {bytes} bytes of {}",
                data.len()
            );
            let decodes = m.stat("decodes");
            println!(
                "| cold sequential read ({label}), readahead {ra} blocks | {:.2} MiB/s ({:.2} s, {decodes} blocks decoded) |",
                mib_s(bytes, cold),
                cold.as_secs_f64()
            );
            seq.push(cold);
            if ra == args.readahead && opts.is_empty() {
                // Reopening drops the kernel's page cache (no kernel_cache): every byte
                // comes from the decoded-block cache.
                let (bytes, warm) = read_all(&file, chunk)?;
                ensure!(
                    m.stat("decodes") == decodes,
                    "the warm read decoded blocks again"
                );
                println!(
                    "| warm-cache sequential read (decoded blocks cached, {label}) | {:.0} MiB/s ({:.3} s) |",
                    mib_s(bytes, warm),
                    warm.as_secs_f64()
                );
            }
            m.stop()?;
        }
        if let [off, on] = seq[..] {
            println!(
                "| prefetch speedup, cold sequential read ({label}; readahead {} vs 0) | {:.2}× |",
                args.readahead,
                off.as_secs_f64() / on.as_secs_f64().max(1e-9)
            );
        }
    }

    // Cold random 4 KiB reads: distinct blocks, never read before.
    let (m, _) = Mounted::start(
        &big,
        &dir.join("mnt-big"),
        &[common.clone(), vec!["--readahead".into(), "0".into()]].concat(),
    )?;
    let f = std::fs::File::open(m.mp.join("big.txt"))?;
    let bs = args.block_size as u64;
    let nblocks = (data.len() as u64).div_ceil(bs).max(1);
    let mut order: Vec<u64> = (0..nblocks).collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut lat = Vec::new();
    let mut buf = vec![0u8; 4096];
    for &b in order.iter().take(args.random_reads) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (b * bs + x % bs).min((data.len() as u64).saturating_sub(4096)) & !4095;
        let t = Instant::now();
        let n = f.read_at(&mut buf, off)?;
        lat.push(t.elapsed());
        ensure!(
            buf[..n] == data[off as usize..off as usize + n],
            "random read at {off} differs"
        );
    }
    drop(f);
    let decodes = m.stat("decodes");
    m.stop()?;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    if !lat.is_empty() {
        let mean = lat.iter().map(Duration::as_secs_f64).sum::<f64>() / lat.len() as f64 * 1e3;
        println!(
            "| cold random 4 KiB read latency ({} reads, {decodes} blocks decoded) | median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, mean {:.2} ms |",
            lat.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            mean
        );
    }
    Ok(())
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
