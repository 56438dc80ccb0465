//! `lmz mount`: the archive as a read-only FUSE file system (the `lmz-fuse` crate), and
//! `lmz bench-mount`, its benchmark.

pub mod bench;

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use lmz::archive::Archive;
use lmz::format::ModelKind;
use lmz::model::Model;

use crate::engine;
use crate::ModelArgs;

#[derive(Args, Clone, Debug)]
pub struct MountArgs {
    archive: PathBuf,
    mountpoint: PathBuf,
    /// Stay in the foreground (default: detach once mounted). SIGINT or SIGTERM unmounts.
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Mount option, repeatable or comma-separated: allow_other, allow_root,
    /// default_permissions, auto_unmount, kernel_cache (keep file pages across opens), direct_io
    /// (bypass the page cache), noexec,
    /// nosuid, nodev, noatime, fsname=NAME, or any other kernel FUSE option. Always read-only.
    #[arg(short = 'o', value_name = "OPTION")]
    options: Vec<String>,
    /// Most bytes of decoded blocks kept in memory (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// Decoder threads (default: 1 for language-model archives, else the number of cores).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Blocks decoded ahead of a sequential reader (0: no prefetch).
    #[arg(long, value_name = "N", default_value_t = 4)]
    readahead: usize,
    /// Most bytes the kernel reads ahead through its page cache (default: one block for
    /// language-model archives, where every block costs seconds; else the kernel's default).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    kernel_readahead: Option<u64>,
    /// Threads answering kernel requests.
    #[arg(long, value_name = "N", default_value_t = 8)]
    fuse_threads: usize,
    /// Keep this file updated with cache counters and per-block decode counts.
    #[arg(long, value_name = "PATH")]
    stats_file: Option<PathBuf>,
    /// Where a detached mount writes its messages (default: discarded once mounted).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Set on the detached child process.
    #[arg(long, hide = true)]
    detached: bool,
    #[command(flatten)]
    m: ModelArgs,
}

/// Parses `4096`, `64K`, `256M`, `2G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s}: unknown size suffix (use K, M, G or T)")),
            };
            (&s[..i], mul)
        }
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s}: not a size"))?;
    n.checked_mul(mul).ok_or_else(|| format!("{s}: too large"))
}

fn absolute(p: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}", p.display()))
}

pub fn run(args: MountArgs) -> Result<()> {
    let mountpoint =
        std::fs::canonicalize(&args.mountpoint).map_err(|e| lmz::Error::io(&args.mountpoint, e))?;
    if !mountpoint.is_dir() {
        return Err(lmz::Error::usage(format!(
            "{}: the mount point must be a directory",
            mountpoint.display()
        ))
        .into());
    }
    if !args.foreground && !args.detached {
        return detach(&args, &mountpoint);
    }
    let archive_path = absolute(&args.archive)?;
    let archive = Archive::open(&archive_path)
        .with_context(|| format!("reading {}", archive_path.display()))?;
    let model = engine::load_for_archive(archive.header(), &args.m)?;
    archive.check_model(model.as_deref())?;
    let md = std::fs::metadata(&archive_path).map_err(|e| lmz::Error::io(&archive_path, e))?;
    let stats_file = args.stats_file.as_deref().map(absolute).transpose()?;
    if args.detached {
        // Hold no directory busy.
        let _ = std::env::set_current_dir("/");
    }
    let workers = args
        .workers
        .unwrap_or_else(|| match archive.header().pin.kind {
            ModelKind::Llama => 1,
            _ => std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
        });
    let cfg = lmz_fuse::MountConfig {
        mountpoint,
        fsname: archive_path.to_string_lossy().into_owned(),
        options: args.options.clone(),
        cache: lmz_fuse::CacheConfig {
            capacity: args.cache_size,
            workers,
            // Lockstep batches pay off only for the language model; the order-1 model
            // decodes a batch one block after another, so a reader would wait for the
            // whole batch.
            batch: match archive.header().pin.kind {
                ModelKind::Llama => args.m.width(model.as_deref()),
                _ => 1,
            },
            ..Default::default()
        },
        fs: lmz_fuse::FsOptions {
            readahead: args.readahead,
            kernel_cache: false,
            direct_io: false,
            kernel_readahead: match (args.kernel_readahead, archive.header().pin.kind) {
                (Some(b), _) => Some(b.clamp(4096, u32::MAX as u64) as u32),
                (None, ModelKind::Llama) => Some(archive.header().block_size.max(4096)),
                (None, _) => None,
            },
            root_uid: md.uid(),
            root_gid: md.gid(),
            root_mtime: lmz_fuse::system_time(
                md.mtime(),
                md.mtime_nsec().clamp(0, 999_999_999) as u32,
            ),
        },
        fuse_threads: args.fuse_threads.max(1),
        stats_file,
    };
    let model: Option<Arc<dyn Model>> = model.map(Arc::from);
    lmz_fuse::mount(Arc::new(archive), model, &cfg, || {})?;
    Ok(())
}

/// Runs this program again as `... --detached` in the background and returns once the
/// mount is up; if the child fails first, passes on its messages and exit status.
fn detach(args: &MountArgs, mountpoint: &std::path::Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating the lmz executable")?;
    let mut child_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    child_args.push("--detached".into());
    let log_file = args.log_file.as_deref().map(absolute).transpose()?;
    match lmz_fuse::daemon::spawn_detached(&exe, &child_args, mountpoint, log_file.as_deref()) {
        Ok(pid) => {
            log::debug!(
                "mounted {} on {} (process {pid})",
                args.archive.display(),
                mountpoint.display()
            );
            Ok(())
        }
        Err(lmz_fuse::daemon::DaemonError::Exited { code, log }) => {
            // The child already said what went wrong, in lmz's own words.
            eprint!("{log}");
            std::process::exit(code.unwrap_or(1));
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
    }
}
