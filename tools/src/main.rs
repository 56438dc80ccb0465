//! `lmz`: the archiver. A thin command line over the `lmz` library: argument parsing,
//! walking directories, progress and exit codes live here; everything about the format,
//! the models and the coding lives in the library.
#![deny(unsafe_code)]

mod bench;
mod engine;
mod merge;
mod mount;
mod output;
mod pack;
mod paper;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use lmz::archive::extract::{ExtractOptions, Extractor};
use lmz::archive::Archive;
use lmz::format::{hex, EntryKind};

use engine::Engine;

const EXIT_HELP: &str = "Exit status: 0 success, 1 other failure, 2 usage error (bad arguments, \
unsafe or existing paths), 3 I/O error, 4 corrupt or truncated archive (or a block that fails \
its CRC), 5 model problem (missing, unusable, or not the model the archive was written with).";

#[derive(Parser)]
#[command(name = "lmz", version, about = "Lossless compression with a language model, in random-access archives", after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// More messages on stderr (repeat for debug output).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
}

/// Model and evaluation settings shared by every command.
#[derive(Args, Clone, Debug)]
struct ModelArgs {
    /// GGUF model file, or the name of a model lmz fetches itself: smollm2-135m (the
    /// default) or gemma3-270m. Default: $LMZ_MODEL, then the default model, fetched and
    /// cached on first use.
    #[arg(long, value_name = "PATH|NAME")]
    model: Option<PathBuf>,
    /// Inference threads (at most the number of cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Blocks evaluated together, one model sequence each (default: 8 on a CPU, 64 on a GPU).
    #[arg(long, value_name = "W")]
    batch: Option<usize>,
    /// Threads turning the model's output into frequency tables (at most the number of
    /// cores; default: 1 on a CPU, where inference already uses every core, all on a GPU).
    /// Never changes the archive.
    #[arg(long, value_name = "N")]
    table_threads: Option<usize>,
}

impl ModelArgs {
    /// Lockstep width: `--batch`, else what the model's backend suits; at most what the model
    /// can hold.
    fn width(&self, model: Option<&dyn lmz::model::Model>) -> usize {
        let max = model.map_or(usize::MAX, |m| m.max_width());
        let w = self
            .batch
            .unwrap_or_else(|| model.map_or(1, |m| m.default_width()))
            .max(1);
        if w > max {
            log::warn!(
                "--batch {w}: this model evaluates at most {max} sequences at once; using {max}"
            );
        }
        w.min(max)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Pack files and directories (or `-` for stdin) into an archive.
    Pack {
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
        /// Archive to write (`-` for stdout).
        #[arg(short, long, value_name = "ARCHIVE")]
        output: PathBuf,
        /// Largest block of plain bytes; smaller blocks mean faster random reads, larger ones a
        /// better ratio.
        #[arg(long, value_name = "BYTES", default_value_t = 8192)]
        block_size: u32,
        /// Probability model: auto (portable if it runs the model, else llama), portable (the
        /// language model in lmz's specified arithmetic: the archive decodes on every
        /// machine), llama (the language model through llama.cpp: decodes only on machines of
        /// the writer's class), order1 (built-in, fast, weak) or none (zstd only).
        #[arg(long, value_enum, default_value_t = Engine::DEFAULT)]
        engine: Engine,
        /// zstd level for blocks the model does not win.
        #[arg(long, default_value_t = 19)]
        zstd_level: i32,
        /// Entry name for data read from stdin.
        #[arg(long, default_value = "stdin")]
        stdin_name: String,
        /// Most tokens of the archive primer: text from the start of the input that every
        /// block is coded after, so no block starts from an empty context (order1 and the
        /// portable engine). lmz measures whether it pays and leaves it out where it does
        /// not; 0 turns it off.
        #[arg(long, value_name = "TOKENS", default_value_t = lmz::archive::primer::DEFAULT_PRIMER_TOKENS as u16,
              value_parser = clap::value_parser!(u16).range(0..=lmz::format::MAX_PRIMER_TOKENS as i64))]
        primer: u16,
        /// The adaptive bias's rate (portable engine, FORMAT.md §12.9): every block learns a
        /// correction of the model's log probabilities from its own tokens as it goes, in
        /// 2^-16 bit per unit of probability; 0 turns it off. Other engines ignore it.
        #[arg(long, value_name = "RATE", default_value_t = lmz::archive::DEFAULT_BIAS_RATE)]
        bias_rate: u16,
        /// Write only shard K of N (K counts from 0): a part of the archive the same command
        /// without --shard writes, for `lmz merge`. Every shard walks the same inputs and
        /// codes its share of the blocks; the shards may run anywhere, at any time, with the
        /// same inputs, options and model.
        #[arg(long, value_name = "K/N", value_parser = parse_shard)]
        shard: Option<(u32, u32)>,
        /// Code the archive as N shards at once, each with its own model instance (for
        /// several evaluators sharing a GPU; give each --threads cores/N), then merge them:
        /// the same archive as with one worker, byte for byte.
        #[arg(long, value_name = "N", default_value_t = 1)]
        workers: usize,
        /// Record framing: compact (the default: about 19 bytes per block for header and
        /// index row, about 30 per entry plus its path), compact-blocks (compact blocks,
        /// 62-byte entries plus the path: what lmz 0.4 reads) or classic (48 bytes per
        /// block; what lmz 0.3 and earlier read).
        #[arg(long, value_enum, default_value_t = FramingArg::Compact)]
        framing: FramingArg,
        #[command(flatten)]
        m: ModelArgs,
    },
    /// Join the parts of `lmz pack --shard K/N` into the archive a single `lmz pack` writes,
    /// byte for byte, without decoding anything. Refuses (writing nothing) a missing or
    /// repeated shard, parts of other inputs, options or models, and damaged parts.
    Merge {
        #[arg(required = true, value_name = "PART")]
        parts: Vec<PathBuf>,
        /// Archive to write.
        #[arg(short, long, value_name = "ARCHIVE")]
        output: PathBuf,
    },
    /// Extract an archive (`-` reads it from stdin) into a directory.
    Unpack {
        archive: PathBuf,
        /// Destination directory (created if missing).
        #[arg(
            short = 'C',
            long = "directory",
            value_name = "DIR",
            default_value = "."
        )]
        dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        m: ModelArgs,
    },
    /// List the entries of an archive.
    List {
        archive: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Long format: kind, mode, owner, size, mtime.
        #[arg(short, long)]
        long: bool,
    },
    /// Write (a byte range of) one file to stdout, decoding only the blocks that cover it.
    Cat {
        archive: PathBuf,
        path: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long)]
        length: Option<u64>,
        /// Report on stderr how many blocks were decoded.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        m: ModelArgs,
    },
    /// Decode every block and check every CRC.
    Verify {
        archive: PathBuf,
        #[command(flatten)]
        m: ModelArgs,
    },
    /// Compare lmz with xz -9 and zstd -19 on files: ratio, coder overhead, throughput;
    /// `--suite paper`: the experiments of "Language Modeling Is Compression" on real data.
    Bench(bench::BenchArgs),
    /// Mount an archive as a read-only file system (FUSE); blocks are decoded on demand.
    Mount(mount::MountArgs),
    /// Measure the FUSE mount: mount time, sequential and random read speed, prefetch.
    BenchMount(mount::bench::BenchMountArgs),
}

/// `K/N` with K < N, 1 ≤ N ≤ 65536.
fn parse_shard(s: &str) -> std::result::Result<(u32, u32), String> {
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected K/N, e.g. 0/4"))?;
    let k: u32 = k
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: K is not a number"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: N is not a number"))?;
    let max = lmz::format::part::MAX_SHARDS;
    if n == 0 || n > max || k >= n {
        return Err(format!(
            "{s:?}: need 0 ≤ K < N ≤ {max} (shards count from 0)"
        ));
    }
    Ok((k, n))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.quiet {
        log::LevelFilter::Error
    } else {
        match cli.verbose {
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    };
    env_logger::Builder::new()
        .filter_level(level)
        // fuser announces every mount and unmount at info level.
        .filter_module("fuser", log::LevelFilter::Warn)
        .format(|buf, record| writeln!(buf, "lmz: {}", record.args()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lmz: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(le) = cause.downcast_ref::<lmz::Error>() {
            return match le.class() {
                lmz::Class::Usage => 2,
                lmz::Class::Io => 3,
                lmz::Class::Corrupt => 4,
                lmz::Class::Model => 5,
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return 3;
        }
    }
    1
}

fn open_archive(path: &Path) -> Result<Archive> {
    Ok(Archive::open(path)?)
}

/// `lmz pack --framing` (FORMAT.md §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FramingArg {
    Compact,
    CompactBlocks,
    Classic,
}

impl From<FramingArg> for lmz::format::Framing {
    fn from(f: FramingArg) -> Self {
        match f {
            FramingArg::Compact => lmz::format::Framing::Compact,
            FramingArg::CompactBlocks => lmz::format::Framing::CompactBlocks,
            FramingArg::Classic => lmz::format::Framing::Classic,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let show_progress = !cli.quiet;
    match cli.cmd {
        Cmd::Pack {
            inputs,
            output,
            block_size,
            engine,
            zstd_level,
            stdin_name,
            primer,
            bias_rate,
            shard,
            workers,
            framing,
            m,
        } => pack::run(pack::PackArgs {
            inputs,
            output,
            block_size,
            engine,
            zstd_level,
            stdin_name,
            m,
            show_progress,
            primer_tokens: primer as usize,
            bias_rate,
            shard,
            workers,
            framing: framing.into(),
        }),
        Cmd::Merge { parts, output } => merge::run(&parts, &output),
        Cmd::Unpack {
            archive,
            dir,
            overwrite,
            m,
        } => unpack(&archive, &dir, overwrite, &m),
        Cmd::List {
            archive,
            json,
            long,
        } => list(&archive, json, long),
        Cmd::Cat {
            archive,
            path,
            offset,
            length,
            stats,
            m,
        } => cat(&archive, &path, offset, length, stats, &m),
        Cmd::Verify { archive, m } => verify(&archive, &m),
        Cmd::Bench(args) => bench::run(args, show_progress),
        Cmd::Mount(args) => mount::run(args),
        Cmd::BenchMount(args) => mount::bench::run(args),
    }
}

fn extract_options(overwrite: bool) -> ExtractOptions {
    ExtractOptions {
        overwrite,
        owners: true,
    }
}

fn unpack(archive: &Path, dir: &Path, overwrite: bool, m: &ModelArgs) -> Result<()> {
    if archive.as_os_str() == "-" {
        let stdin = std::io::stdin().lock();
        let input = std::io::BufReader::with_capacity(1 << 20, stdin);
        let stats = lmz::archive::stream::extract_stream(
            input,
            |h| {
                let model = engine::load_for_archive(h, m)?;
                Ok((model, Extractor::new(dir, extract_options(overwrite))?))
            },
            m.batch,
        );
        let s = stats.context("unpacking from stdin")?;
        log::info!(
            "extracted {} entries, {} bytes, from {} blocks",
            s.entries,
            s.bytes,
            s.blocks
        );
        return Ok(());
    }
    let a = open_archive(archive).with_context(|| format!("reading {}", archive.display()))?;
    let model = engine::load_for_archive(a.header(), m)?;
    let model = model.as_deref();
    a.check_model(model)?;
    let mut ex = Extractor::new(dir, extract_options(overwrite))?;
    let mut ls = lmz::codec::Lockstep::new(model, m.width(model));
    for e in a.entries() {
        ex.begin(e)
            .with_context(|| format!("extracting {}", String::from_utf8_lossy(&e.path)))?;
    }
    each_block(&a, &mut ls, |i, r| {
        let plain = r.with_context(|| format!("{}: block {i}", archive.display()))?;
        ex.data(a.block_start(i), &plain)?;
        Ok(plain.len())
    })?;
    let (files, bytes) = ex.finish()?;
    log::info!(
        "extracted {} entries ({files} files, {bytes} bytes) into {}",
        a.entries().len(),
        dir.display()
    );
    Ok(())
}

pub fn progress(total: u64, hidden: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if hidden || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_bar}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn list(archive: &Path, json: bool, long: bool) -> Result<()> {
    let a = open_archive(archive).with_context(|| format!("reading {}", archive.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        let h = a.header();
        let entries: Vec<serde_json::Value> = a
            .entries()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "path": String::from_utf8_lossy(&e.path),
                    "kind": kind_name(e.kind),
                    "mode": e.mode,
                    "uid": e.uid,
                    "gid": e.gid,
                    "mtime_sec": e.mtime_sec,
                    "mtime_nsec": e.mtime_nsec,
                    "size": e.size,
                    "link": if e.link.is_empty() { None } else { Some(String::from_utf8_lossy(&e.link)) },
                })
            })
            .collect();
        let v = serde_json::json!({
            "format_version": lmz::format::VERSION,
            "framing": h.framing.name(),
            "block_size": h.block_size,
            "model": {
                "kind": format!("{:?}", h.pin.kind),
                "name": h.model_name,
                "sha256": hex(&h.pin.sha256),
                "size": h.pin.size,
                "vocab_size": h.pin.vocab_size,
                "max_block_tokens": h.pin.max_block_tokens,
                "class": class_name(h.pin.kind),
                "portability": portability(h),
            },
            "primer": h.primer.as_ref().map(|p| serde_json::json!({
                "tokens": p.tokens,
                "coded_bytes": p.coded.len(),
            })),
            "adaptive_bias_rate": (h.bias_rate != 0).then_some(h.bias_rate),
            "written_with": { "backend": h.backend, "engine": h.engine_version, "cpu": h.cpu_features },
            "blocks": a.block_count(),
            "data_bytes": a.data_len(),
            "archive_bytes": a.archive_len(),
            "entries": entries,
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    if long {
        let h = a.header();
        writeln!(
            out,
            "# framing: {} ({} blocks of at most {} bytes)",
            h.framing.name(),
            a.block_count(),
            h.block_size
        )?;
        if h.pin.kind != lmz::format::ModelKind::None {
            writeln!(out, "# model: {} ({})", h.model_name, portability(h))?;
            match &h.primer {
                Some(p) => writeln!(
                    out,
                    "# primer: {} tokens in {} bytes, before every block",
                    p.tokens,
                    p.coded.len()
                )?,
                None => writeln!(out, "# primer: none")?,
            }
            match h.bias_rate {
                0 => writeln!(out, "# adaptive bias: none")?,
                r => writeln!(
                    out,
                    "# adaptive bias: rate {r} (2^-16 bit per unit of probability), learned in every block"
                )?,
            }
        }
    }
    for e in a.entries() {
        let path = String::from_utf8_lossy(&e.path);
        if long {
            let link = match e.kind {
                EntryKind::Symlink => format!(" -> {}", String::from_utf8_lossy(&e.link)),
                EntryKind::HardLink => format!(" link to {}", String::from_utf8_lossy(&e.link)),
                _ => String::new(),
            };
            writeln!(
                out,
                "{} {:04o} {:>5}/{:<5} {:>12} {}.{:09} {path}{link}",
                kind_name(e.kind),
                e.mode,
                e.uid,
                e.gid,
                e.size,
                e.mtime_sec,
                e.mtime_nsec
            )?;
        } else {
            writeln!(out, "{path}")?;
        }
    }
    Ok(())
}

/// Where an archive's model-coded blocks decode: "portable" (anywhere: the probabilities are
/// specified, FORMAT.md §20 and §12.5) or "machine" (only on the writer's class of machine:
/// llama.cpp's kernels decide them).
fn class_name(k: lmz::format::ModelKind) -> &'static str {
    use lmz::format::ModelKind;
    match k {
        ModelKind::None => "none",
        ModelKind::Order1 | ModelKind::Portable => "portable",
        ModelKind::Llama => "machine",
    }
}

/// [`class_name`] in words, naming the writer's machine where it matters.
fn portability(h: &lmz::format::Header) -> String {
    use lmz::format::ModelKind;
    match h.pin.kind {
        ModelKind::None => "no model-coded blocks: decodes anywhere".into(),
        ModelKind::Order1 => "order-1 model: decodes on every machine".into(),
        ModelKind::Portable => "lmz transformer v1: decodes bit for bit on every machine".into(),
        ModelKind::Llama => format!(
            "llama.cpp: decodes only on machines of the writer's class (backend {}, engine {}, \
             CPU {})",
            h.backend, h.engine_version, h.cpu_features
        ),
    }
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::HardLink => "hardlink",
    }
}

fn cat(
    archive: &Path,
    path: &str,
    offset: u64,
    length: Option<u64>,
    stats: bool,
    m: &ModelArgs,
) -> Result<()> {
    let a = open_archive(archive).with_context(|| format!("reading {}", archive.display()))?;
    let idx = a
        .find(
            path.trim_start_matches("./")
                .trim_end_matches('/')
                .as_bytes(),
        )
        .ok_or_else(|| {
            lmz::Error::usage(format!("{path}: no such entry in {}", archive.display()))
        })?;
    a.file_entry(idx)?;
    let model = engine::load_for_archive(a.header(), m)?;
    a.check_model(model.as_deref())?;
    let bytes = a.read(
        model.as_deref(),
        idx,
        offset,
        length.unwrap_or(u64::MAX),
        m.width(model.as_deref()),
    )?;
    std::io::stdout().lock().write_all(&bytes)?;
    if stats {
        eprintln!(
            "lmz: decoded {} of {} blocks",
            a.blocks_decoded(),
            a.block_count()
        );
    }
    Ok(())
}

/// Decodes every block in order, a few lockstep batches at a time (bounded memory), handing
/// each result to `f`, which returns the bytes done for the progress bar.
fn each_block(
    a: &Archive,
    ls: &mut lmz::codec::Lockstep<'_>,
    mut f: impl FnMut(usize, lmz::Result<Vec<u8>>) -> Result<usize>,
) -> Result<()> {
    let chunk = ls.width().max(16);
    let bar = progress(a.data_len(), !log::log_enabled!(log::Level::Info));
    let mut i = 0;
    while i < a.block_count() {
        let end = (i + chunk).min(a.block_count());
        for (k, r) in a.decode_blocks_with(ls, i..end)?.into_iter().enumerate() {
            bar.inc(f(i + k, r)? as u64);
        }
        i = end;
    }
    bar.finish_and_clear();
    Ok(())
}

fn verify(archive: &Path, m: &ModelArgs) -> Result<()> {
    let a = open_archive(archive).with_context(|| format!("reading {}", archive.display()))?;
    let model = engine::load_for_archive(a.header(), m)?;
    a.check_model(model.as_deref())?;
    let mut ls = lmz::codec::Lockstep::new(model.as_deref(), m.width(model.as_deref()));
    let mut bad = 0usize;
    let mut first: Option<lmz::Error> = None;
    each_block(&a, &mut ls, |i, r| match r {
        Ok(p) => Ok(p.len()),
        Err(e) => {
            log::error!("block {i}: {e}");
            bad += 1;
            first.get_or_insert(e);
            Ok(0)
        }
    })?;
    match first {
        None => {
            log::info!(
                "{}: OK ({} entries, {} blocks, {} bytes)",
                archive.display(),
                a.entries().len(),
                a.block_count(),
                a.data_len()
            );
            Ok(())
        }
        Some(e) => Err(anyhow::Error::new(e).context(format!(
            "{}: {bad} of {} blocks failed",
            archive.display(),
            a.block_count()
        ))),
    }
}
