//! `lmz pack`: walking inputs into archive entries, and writing the archive atomically.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use lmz::archive::{Meta, Writer, WriterOptions};
use lmz::model::Model;

use crate::engine::{self, Engine};
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

/// Walks the inputs into `w`. Hard links are recorded once per inode; the archive being
/// written (`skip`) is never packed into itself.
struct Walker<'w, 'm, W: Write> {
    w: &'w mut Writer<'m, W>,
    links: HashMap<(u64, u64), Vec<u8>>,
    skip: Option<(u64, u64)>,
}

impl<W: Write> Walker<'_, '_, W> {
    fn add(&mut self, fs_path: &Path, name: &[u8]) -> Result<()> {
        let md =
            std::fs::symlink_metadata(fs_path).with_context(|| format!("{}", fs_path.display()))?;
        let id = (md.dev(), md.ino());
        if Some(id) == self.skip {
            return Ok(());
        }
        let ft = md.file_type();
        if ft.is_dir() {
            self.w.add_dir(name, meta(&md))?;
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
        } else if ft.is_symlink() {
            let t =
                std::fs::read_link(fs_path).with_context(|| format!("{}", fs_path.display()))?;
            self.w
                .add_symlink(name, t.as_os_str().as_bytes(), meta(&md))?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = self.links.get(&id) {
                    let first = first.clone();
                    return Ok(self.w.add_hardlink(name, &first, meta(&md))?);
                }
                self.links.insert(id, name.to_vec());
            }
            let mut f = File::open(fs_path).with_context(|| format!("{}", fs_path.display()))?;
            self.w
                .add_file(name, meta(&md), md.len(), &mut f)
                .with_context(|| format!("{}", fs_path.display()))?;
        } else {
            log::warn!(
                "{}: skipping (not a regular file, directory or symlink)",
                fs_path.display()
            );
        }
        Ok(())
    }
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

fn write_all<W: Write>(
    args: &PackArgs,
    model: Option<&dyn Model>,
    out: W,
    skip: Option<(u64, u64)>,
) -> Result<W> {
    let opts = WriterOptions {
        block_size: args.block_size,
        width: args.m.width(model),
        zstd_level: args.zstd_level,
    };
    let stdin = args.inputs.len() == 1 && args.inputs[0].as_os_str() == "-";
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
    let mut w = Writer::with_primer(out, model, opts, primer.as_deref())?;
    let bar = crate::progress(0, !args.show_progress);
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
        let mut total = 0;
        for i in &args.inputs {
            total += du(i);
        }
        bar.set_length(total);
        let mut walker = Walker {
            w: &mut w,
            links: HashMap::new(),
            skip,
        };
        for i in &args.inputs {
            if i.as_os_str() == "-" {
                bail!(lmz::Error::usage("`-` (stdin) must be the only input"));
            }
            let name = input_name(i)?;
            walker.add(i, &name)?;
        }
    }
    let (out, stats) = w.finish()?;
    bar.finish_and_clear();
    let model_blocks = stats.blocks[lmz::format::Codec::Model as usize];
    log::info!(
        "{} entries, {} bytes → {} bytes ({:.3} bits/byte); blocks: {} model, {} zstd, {} stored",
        stats.entries,
        stats.plain_bytes,
        stats.archive_bytes,
        if stats.plain_bytes > 0 {
            stats.archive_bytes as f64 * 8.0 / stats.plain_bytes as f64
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

/// Removes the temporary archive unless it was renamed into place.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP, removes the temporary archive and exits (128 + signal):
/// an interrupted pack leaves nothing behind. (SIGKILL cannot be caught; then the hidden
/// temporary file stays, but never under the final name.)
fn remove_on_signal(tmp: PathBuf) -> Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = std::fs::remove_file(&tmp);
            std::process::exit(128 + sig);
        }
    });
    Ok(handle)
}

pub fn run(args: PackArgs) -> Result<()> {
    let model = engine::load_for_pack(args.engine, args.block_size, &args.m)?;
    let model = model.as_deref();
    if args.output.as_os_str() == "-" {
        let out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        write_all(&args, model, out, None)?;
        return Ok(());
    }
    // Written under a temporary name in the same directory, then renamed: no reader ever
    // sees a partial archive under the final name.
    let out_path = &args.output;
    let dir = match out_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = out_path
        .file_name()
        .ok_or_else(|| lmz::Error::usage(format!("{}: not a file name", out_path.display())))?;
    let tmp = dir.join(format!(
        ".{}.lmz-tmp-{}",
        base.to_string_lossy(),
        std::process::id()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| lmz::Error::io(&tmp, e))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let signals = remove_on_signal(tmp.clone())?;
    let md = file.metadata().map_err(|e| lmz::Error::io(&tmp, e))?;
    let out = BufWriter::with_capacity(1 << 20, file);
    let out = write_all(&args, model, out, Some((md.dev(), md.ino())))?;
    let file = out
        .into_inner()
        .map_err(|e| lmz::Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| lmz::Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, out_path).map_err(|e| lmz::Error::io(out_path, e))?;
    guard.0 = None;
    signals.close();
    Ok(())
}
