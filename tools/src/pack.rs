//! `lmz pack`: walking inputs into archive entries, and writing the archive atomically.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use lmz::archive::{FileData, Meta, Shard, Writer, WriterOptions};
use lmz::model::Model;

use crate::engine::{self, Engine};
use crate::output::Atomic;
use crate::ModelArgs;

pub struct PackArgs {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub block_size: u32,
    pub engine: Engine,
    pub zstd_level: i32,
    pub stdin_name: String,
    pub m: ModelArgs,
    pub show_progress: bool,
    /// Most primer tokens (0: none); `lmz pack` measures whether they pay.
    pub primer_tokens: usize,
    /// `--bias-rate`: the adaptive bias's rate (0: none; kind 3 only).
    pub bias_rate: u16,
    /// `--shard K/N`: write shard K's part of N.
    pub shard: Option<(u32, u32)>,
    /// `--workers N`: code N shards at once in this process and merge them.
    pub workers: usize,
    /// `--framing`: how block records and the index are laid out (FORMAT.md §7.1).
    pub framing: lmz::format::Framing,
}

fn meta(md: &std::fs::Metadata) -> Meta {
    Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

/// What the walk found for one entry, before anything is written: the archive's entries in
/// order, as every shard of a sharded pack computes them alike.
struct Item {
    name: Vec<u8>,
    meta: Meta,
    what: What,
}

enum What {
    Dir,
    Symlink(Vec<u8>),
    /// A hard link to the earlier entry of this name.
    HardLink(Vec<u8>),
    File {
        path: PathBuf,
        size: u64,
        /// Modification time as walked, to notice a file that changes before it is read.
        mtime: (i64, i64),
    },
}

/// Walks the inputs into items. Hard links are recorded once per inode; the archive being
/// written and its workers' parts (`skip`) are never packed into themselves.
struct Walker {
    items: Vec<Item>,
    links: HashMap<(u64, u64), Vec<u8>>,
    skip: Vec<(u64, u64)>,
}

impl Walker {
    fn add(&mut self, fs_path: &Path, name: &[u8]) -> Result<()> {
        let md =
            std::fs::symlink_metadata(fs_path).with_context(|| format!("{}", fs_path.display()))?;
        let id = (md.dev(), md.ino());
        if self.skip.contains(&id) {
            return Ok(());
        }
        let ft = md.file_type();
        let what = if ft.is_dir() {
            What::Dir
        } else if ft.is_symlink() {
            let t =
                std::fs::read_link(fs_path).with_context(|| format!("{}", fs_path.display()))?;
            What::Symlink(t.as_os_str().as_bytes().to_vec())
        } else if ft.is_file() {
            match self.links.get(&id) {
                Some(first) if md.nlink() > 1 => What::HardLink(first.clone()),
                _ => {
                    if md.nlink() > 1 {
                        self.links.insert(id, name.to_vec());
                    }
                    What::File {
                        path: fs_path.to_path_buf(),
                        size: md.len(),
                        mtime: (md.mtime(), md.mtime_nsec()),
                    }
                }
            }
        } else {
            log::warn!(
                "{}: skipping (not a regular file, directory or symlink)",
                fs_path.display()
            );
            return Ok(());
        };
        let dir = matches!(what, What::Dir);
        self.items.push(Item {
            name: name.to_vec(),
            meta: meta(&md),
            what,
        });
        if dir {
            let mut kids: Vec<_> = std::fs::read_dir(fs_path)
                .with_context(|| format!("{}", fs_path.display()))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("{}", fs_path.display()))?;
            kids.sort();
            for k in kids {
                let mut child = name.to_vec();
                child.push(b'/');
                child.extend_from_slice(k.as_bytes());
                self.add(&fs_path.join(&k), &child)?;
            }
        }
        Ok(())
    }
}

/// A file's bytes, opened when first needed: a shard never opens the files that lie wholly
/// in other shards' blocks, and seeks past the bytes it does not code.
struct LazyFile<'a> {
    path: &'a Path,
    size: u64,
    mtime: (i64, i64),
    pos: u64,
    file: Option<File>,
}

impl LazyFile<'_> {
    fn file(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let f = File::open(self.path)?;
            let md = f.metadata()?;
            if md.len() != self.size || (md.mtime(), md.mtime_nsec()) != self.mtime {
                return Err(std::io::Error::other(
                    "changed since the inputs were walked (size or mtime): pack it again",
                ));
            }
            self.file = Some(f);
        }
        let (f, pos) = (self.file.as_mut().expect("opened"), self.pos);
        f.seek(std::io::SeekFrom::Start(pos))?;
        Ok(f)
    }
}

impl FileData for LazyFile<'_> {
    fn read_into(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.file()?.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(
                    e.kind(),
                    "file ended before its recorded size (did it change while being packed?)",
                )
            } else {
                e
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        self.pos += n;
        Ok(())
    }
}

fn add_items<W: Write>(w: &mut Writer<'_, W>, items: &[Item]) -> Result<()> {
    for it in items {
        match &it.what {
            What::Dir => w.add_dir(&it.name, it.meta)?,
            What::Symlink(t) => w.add_symlink(&it.name, t, it.meta)?,
            What::HardLink(t) => w.add_hardlink(&it.name, t, it.meta)?,
            What::File { path, size, mtime } => {
                let mut data = LazyFile {
                    path,
                    size: *size,
                    mtime: *mtime,
                    pos: 0,
                    file: None,
                };
                w.add_file_from(&it.name, it.meta, *size, &mut data)
                    .with_context(|| format!("{}", path.display()))?
            }
        }
    }
    Ok(())
}

/// The archive name of an input: its last component (like `zip -r` from its parent).
fn input_name(p: &Path) -> Result<Vec<u8>> {
    let abs;
    let p = match p.file_name() {
        Some(_) => p,
        None => {
            abs = std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?;
            abs.as_path()
        }
    };
    match p.file_name() {
        Some(n) => Ok(n.as_bytes().to_vec()),
        None => bail!(lmz::Error::usage(format!(
            "{}: cannot name this input in the archive",
            p.display()
        ))),
    }
}

/// Whether the input is stdin (`-` alone).
fn is_stdin(args: &PackArgs) -> Result<bool> {
    if args.inputs.len() > 1 && args.inputs.iter().any(|i| i.as_os_str() == "-") {
        bail!(lmz::Error::usage("`-` (stdin) must be the only input"));
    }
    Ok(args.inputs.len() == 1 && args.inputs[0].as_os_str() == "-")
}

/// The entries of the inputs, in archive order (none for stdin).
fn walk(args: &PackArgs, skip: Vec<(u64, u64)>) -> Result<Vec<Item>> {
    if is_stdin(args)? {
        return Ok(Vec::new());
    }
    let mut walker = Walker {
        items: Vec::new(),
        links: HashMap::new(),
        skip,
    };
    for i in &args.inputs {
        let name = input_name(i)?;
        walker.add(i, &name)?;
    }
    Ok(walker.items)
}

/// Writes the archive of `items` (or of stdin), or shard `shard`'s part of it, to `out`.
fn write_all<W: Write>(
    args: &PackArgs,
    model: Option<&dyn Model>,
    out: W,
    items: &[Item],
    shard: Option<(u32, u32)>,
    show_progress: bool,
) -> Result<W> {
    let opts = WriterOptions {
        block_size: args.block_size,
        width: args.m.width(model),
        zstd_level: args.zstd_level,
        framing: args.framing,
        bias_rate: args.bias_rate,
    };
    let stdin = is_stdin(args)?;
    let data_len: u64 = items
        .iter()
        .map(|i| match i.what {
            What::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    // A stream of unknown length is spooled first, since its entry record (with its size)
    // must precede its data.
    let mut spool = None;
    let samples = if stdin {
        let mut f = tempfile_spool()?;
        let n = std::io::copy(&mut std::io::stdin().lock(), &mut f).context("reading stdin")?;
        let s = Samples::of_file(&mut f, n, args.block_size)?;
        spool = Some((f, n));
        s
    } else {
        // Every shard reads the same samples, so every shard chooses the same primer (and
        // the plan hash holds it: merge refuses parts of other primers).
        Samples::of_inputs(&args.inputs, args.block_size)?
    };
    let primer = match model {
        Some(m) if args.primer_tokens > 0 && m.pin().kind != lmz::format::ModelKind::Llama => {
            let blocks = samples.total.div_ceil(args.block_size.max(1) as u64);
            let c = lmz::archive::primer::choose(
                m,
                &samples.first,
                samples.second.as_deref(),
                blocks,
                args.primer_tokens,
                opts.width,
                opts.bias_rate,
            )?;
            log::info!(
                "primer: {} ({})",
                if c.tokens.is_some() { "yes" } else { "no" },
                c.reason
            );
            c.tokens
        }
        _ => None,
    };
    let mut w = match shard {
        None => Writer::with_primer(out, model, opts, primer.as_deref())?,
        Some((index, count)) => {
            if stdin {
                bail!(lmz::Error::usage(
                    "--shard needs inputs every shard can read alike, not stdin"
                ));
            }
            let shard = Shard {
                index,
                count,
                data_len,
            };
            Writer::part_with_primer(out, model, opts, primer.as_deref(), shard)?
        }
    };
    let bar = crate::progress(0, !show_progress);
    let b2 = bar.clone();
    w.on_progress(move |done| b2.set_position(done));
    if let Some((mut spool, n)) = spool {
        use std::io::Seek;
        spool.seek(std::io::SeekFrom::Start(0))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: now.as_secs() as i64,
            mtime_nsec: now.subsec_nanos(),
        };
        bar.set_length(n);
        w.add_file(args.stdin_name.as_bytes(), meta, n, &mut spool)?;
    } else {
        bar.set_length(match shard {
            // About a shard's share.
            Some((_, count)) => data_len / count as u64,
            None => data_len,
        });
        add_items(&mut w, items)?;
    }
    let (out, stats) = w.finish()?;
    bar.finish_and_clear();
    let model_blocks = stats.blocks[lmz::format::Codec::Model as usize];
    let coded: u64 = stats.plain.iter().sum();
    log::info!(
        "{}{} entries, {} bytes → {} bytes ({:.3} bits/byte); blocks: {} model, {} zstd, {} stored",
        match shard {
            Some((k, n)) => format!("shard {k}/{n}: "),
            None => String::new(),
        },
        stats.entries,
        coded,
        stats.archive_bytes,
        if coded > 0 {
            stats.archive_bytes as f64 * 8.0 / coded as f64
        } else {
            0.0
        },
        model_blocks,
        stats.blocks[lmz::format::Codec::Zstd as usize],
        stats.blocks[lmz::format::Codec::Stored as usize],
    );
    Ok(out)
}

/// Text from the input to choose a primer from ([`lmz::archive::primer::choose`]): the start
/// of the first non-empty regular file in walk order, and the start of its second block or,
/// for a file of one block, of the next such file.
struct Samples {
    first: Vec<u8>,
    second: Option<Vec<u8>>,
    /// Bytes of every regular file (for the number of blocks).
    total: u64,
}

/// Enough for a primer and its measurement (256 tokens are about 1 KiB of English).
const SAMPLE_BYTES: u64 = 4096;

impl Samples {
    fn of_file(f: &mut File, len: u64, block_size: u32) -> Result<Samples> {
        use std::io::{Read, Seek, SeekFrom};
        let mut read_at = |at: u64| -> Result<Vec<u8>> {
            let mut v = Vec::new();
            f.seek(SeekFrom::Start(at))?;
            Read::by_ref(f).take(SAMPLE_BYTES).read_to_end(&mut v)?;
            Ok(v)
        };
        let first = read_at(0)?;
        let second = if len > block_size as u64 + SAMPLE_BYTES / 2 {
            Some(read_at(block_size as u64)?)
        } else {
            None
        };
        Ok(Samples {
            first,
            second,
            total: len,
        })
    }

    fn of_inputs(inputs: &[PathBuf], block_size: u32) -> Result<Samples> {
        let mut files = Vec::new();
        for i in inputs {
            collect_files(i, &mut files, 2);
        }
        let mut s = Samples {
            first: Vec::new(),
            second: None,
            total: inputs.iter().map(|p| du(p)).sum(),
        };
        if let Some((p, len)) = files.first() {
            let mut f = File::open(p).with_context(|| format!("{}", p.display()))?;
            let one = Samples::of_file(&mut f, *len, block_size)?;
            s.first = one.first;
            s.second = one.second;
        }
        if s.second.is_none() {
            if let Some((p, len)) = files.get(1) {
                let mut f = File::open(p).with_context(|| format!("{}", p.display()))?;
                s.second = Some(Samples::of_file(&mut f, *len, block_size)?.first);
            }
        }
        Ok(s)
    }
}

/// The first `want` non-empty regular files under `p`, in the walk's order (sorted
/// directory entries, symlinks not followed). Unreadable paths are skipped here: the walk
/// itself reports them.
fn collect_files(p: &Path, out: &mut Vec<(PathBuf, u64)>, want: usize) {
    if out.len() >= want {
        return;
    }
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return;
    };
    if md.is_file() && md.len() > 0 {
        out.push((p.to_path_buf(), md.len()));
    } else if md.is_dir() {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        let mut kids: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        kids.sort();
        for k in kids {
            collect_files(&p.join(k), out, want);
        }
    }
}

fn du(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| du(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

fn tempfile_spool() -> Result<File> {
    let dir = std::env::temp_dir();
    for i in 0..1000 {
        let p = dir.join(format!("lmz-stdin-{}-{i}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&p);
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("{}", p.display())),
        }
    }
    bail!("cannot create a spool file in {}", dir.display())
}

pub fn run(args: PackArgs) -> Result<()> {
    if args.workers > 1 {
        return run_workers(&args);
    }
    let model = engine::load_for_pack(args.engine, args.block_size, &args.m)?;
    let model = model.as_deref();
    if args.output.as_os_str() == "-" {
        let out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        let items = walk(&args, Vec::new())?;
        write_all(&args, model, out, &items, args.shard, args.show_progress)?;
        return Ok(());
    }
    let (tmp, out) = Atomic::create(&args.output)?;
    let items = walk(&args, vec![tmp.id])?;
    let out = write_all(&args, model, out, &items, args.shard, args.show_progress)?;
    tmp.commit(out)
}

/// A folder removed with its contents when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--workers N`: the archive as N shards coded by N workers at once, each with its own
/// model instance (for several evaluators sharing one GPU), merged into the output. The
/// archive is the same bytes as with one worker: the shards share the plan, and the merge
/// is exact.
fn run_workers(args: &PackArgs) -> Result<()> {
    let n = args.workers;
    if is_stdin(args)? || args.shard.is_some() || args.output.as_os_str() == "-" {
        bail!(lmz::Error::usage(
            "--workers needs inputs other than stdin, an output file, and no --shard"
        ));
    }
    if n > lmz::format::part::MAX_SHARDS as usize {
        bail!(lmz::Error::usage("--workers: too many"));
    }
    let (tmp, mut out) = Atomic::create(&args.output)?;
    let dir = match args.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parts = TempDir(dir.join(format!(".lmz-parts-{}", std::process::id())));
    std::fs::create_dir(&parts.0).map_err(|e| lmz::Error::io(&parts.0, e))?;
    let md = std::fs::metadata(&parts.0).map_err(|e| lmz::Error::io(&parts.0, e))?;
    let items = walk(args, vec![tmp.id, (md.dev(), md.ino())])?;
    let paths: Vec<PathBuf> = (0..n).map(|k| parts.0.join(format!("part-{k}"))).collect();
    std::thread::scope(|s| {
        let jobs: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(k, path)| {
                let items = &items;
                s.spawn(move || -> Result<()> {
                    let model = engine::load_for_pack(args.engine, args.block_size, &args.m)?;
                    let f = File::create(path).map_err(|e| lmz::Error::io(path, e))?;
                    let out = BufWriter::with_capacity(1 << 20, f);
                    let shard = Some((k as u32, n as u32));
                    let out = write_all(args, model.as_deref(), out, items, shard, false)?;
                    out.into_inner()
                        .map_err(|e| lmz::Error::io(path, e.into_error()))?;
                    Ok(())
                })
            })
            .collect();
        jobs.into_iter()
            .try_for_each(|j| j.join().unwrap_or_else(|_| bail!("a worker panicked")))
    })?;
    let mut files = Vec::with_capacity(n);
    for p in &paths {
        let f = File::open(p).map_err(|e| lmz::Error::io(p, e))?;
        files.push((p.display().to_string(), f));
    }
    lmz::archive::merge::merge(files, &mut out)?;
    tmp.commit(out)
}
