//! lmz-fuse: a read-only FUSE mount of an lmz archive.
//!
//! A thin adapter over [`lmz::archive::Archive`]: opening maps the archive and validates
//! its index, nothing is decoded at mount time; a read decodes only the blocks that cover
//! it, through the decoded-block [`cache`] (an LRU bounded in bytes, one decode per block
//! however many readers want it, prefetch ahead of sequential readers, a pool of decoder
//! threads). A block that fails to decode (CRC mismatch, damaged payload, or a model-coded
//! block this machine's llama.cpp computes other probabilities for than the writer's) makes
//! the reads that touch it fail with `EIO` and is logged with its reason; everything else
//! keeps working.
//!
//! [`mount`] runs one mount in the foreground until it is unmounted from outside
//! (`umount`, `fusermount3 -u`) or the process gets SIGINT, SIGTERM or SIGHUP, which
//! unmount it cleanly. [`daemon`] has the helpers for detaching (re-running the program in
//! the foreground as a child and waiting for the mount to appear).
#![forbid(unsafe_code)]

pub mod cache;
pub mod daemon;
mod fs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use lmz::archive::Archive;
use lmz::model::Model;

pub use cache::{BlockCache, CacheConfig, CacheStats};
pub use fs::{system_time, Event, FsOptions, LmzFs};

/// Everything about one mount besides the archive and the model.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    /// Source shown in the mount table (the archive path).
    pub fsname: String,
    /// `-o` options as given (each may hold several, comma-separated).
    pub options: Vec<String>,
    pub cache: CacheConfig,
    pub fs: FsOptions,
    /// Threads answering FUSE requests (reads wait for decodes, so more than one).
    pub fuse_threads: usize,
    /// Rewritten with the cache counters and per-block decode counts as they change.
    pub stats_file: Option<PathBuf>,
}

/// What the `-o` options ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedOptions {
    pub mount_options: Vec<MountOption>,
    pub acl: SessionACL,
    /// `kernel_cache`: keep file pages in the kernel's cache across opens.
    pub kernel_cache: bool,
    /// `direct_io`: bypass the kernel's page cache; every read reaches the mount as issued.
    pub direct_io: bool,
}

/// The fuser mount options, access policy and file flags for `-o` options. Always
/// read-only; `rw` is refused.
pub fn parse_options(options: &[String], fsname: &str) -> lmz::Result<ParsedOptions> {
    let mut out = vec![MountOption::RO];
    let mut acl = SessionACL::Owner;
    let mut kernel_cache = false;
    let mut direct_io = false;
    let mut named = false;
    let mut subtype = false;
    for o in options
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let opt = match o {
            "ro" => continue,
            "rw" => {
                return Err(lmz::Error::usage(
                    "lmz mounts are read-only: option `rw` is not supported",
                ))
            }
            "allow_other" => {
                acl = SessionACL::All;
                continue;
            }
            "allow_root" => {
                if acl == SessionACL::Owner {
                    acl = SessionACL::RootAndOwner;
                }
                continue;
            }
            "kernel_cache" => {
                kernel_cache = true;
                continue;
            }
            "direct_io" => {
                direct_io = true;
                continue;
            }
            "auto_unmount" => MountOption::AutoUnmount,
            "default_permissions" => MountOption::DefaultPermissions,
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "dirsync" => MountOption::DirSync,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            _ => {
                if let Some(v) = o.strip_prefix("fsname=") {
                    named = true;
                    MountOption::FSName(v.to_string())
                } else if let Some(v) = o.strip_prefix("subtype=") {
                    subtype = true;
                    subtype_option(v)
                } else {
                    MountOption::CUSTOM(o.to_string())
                }
            }
        };
        if !out.contains(&opt) {
            out.push(opt);
        }
    }
    if !named {
        out.push(MountOption::FSName(fsname.to_string()));
    }
    if !subtype {
        out.push(subtype_option("lmz"));
    }
    // fusermount's auto_unmount needs allow_other or allow_root.
    if out.contains(&MountOption::AutoUnmount) && acl == SessionACL::Owner {
        acl = SessionACL::RootAndOwner;
    }
    Ok(ParsedOptions {
        mount_options: out,
        acl,
        kernel_cache,
        direct_io,
    })
}

/// The subtype as a plain option string: fusermount gets `subtype=…` either way, and the
/// direct mount (as root) passes it to the kernel, which then lists the mount as `fuse.…`
/// (fuser's `Subtype` variant only reaches fusermount).
fn subtype_option(v: &str) -> MountOption {
    MountOption::CUSTOM(format!("subtype={v}"))
}

/// Renders the stats file: `key value` lines, then `block_decodes` with `block:count`
/// pairs for every block decoded at least once.
pub fn render_stats(c: &BlockCache) -> String {
    let s = c.stats();
    let mut out = format!(
        "blocks {}\ndecodes {}\ndecode_errors {}\ndecode_seconds {:.6}\nhits {}\nmisses {}\njoined {}\n\
         prefetch_queued {}\ncached_blocks {}\ncached_bytes {}\ncapacity {}\nin_flight {}\nfailed {}\nblock_decodes",
        s.blocks,
        s.decodes,
        s.decode_errors,
        s.decode_nanos as f64 / 1e9,
        s.hits,
        s.misses,
        s.joined,
        s.prefetch_queued,
        s.cached_blocks,
        s.cached_bytes,
        s.capacity,
        s.in_flight,
        s.failed
    );
    for (i, n) in c.decode_counts().into_iter().enumerate() {
        if n > 0 {
            out.push_str(&format!(" {i}:{n}"));
        }
    }
    out.push('\n');
    out
}

fn write_stats(path: &Path, c: &BlockCache) {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let r = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(render_stats(c).as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        log::warn!("{}: cannot write stats: {e}", path.display());
    }
}

fn join_session(t: std::thread::JoinHandle<std::io::Result<()>>, mp: &Path) -> lmz::Result<()> {
    match t.join() {
        Ok(r) => r.map_err(|e| lmz::Error::io(mp, e)),
        Err(_) => Err(lmz::Error::io(
            mp,
            std::io::Error::other("the FUSE session thread panicked"),
        )),
    }
}

/// Mounts `archive` at `cfg.mountpoint` and serves it until it is unmounted from outside or
/// a SIGINT, SIGTERM or SIGHUP arrives (then it unmounts). `on_mounted` runs once the
/// kernel has accepted the mount. The model must already be checked against the archive.
pub fn mount(
    archive: Arc<Archive>,
    model: Option<Arc<dyn Model>>,
    cfg: &MountConfig,
    on_mounted: impl FnOnce(),
) -> lmz::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let parsed = parse_options(&cfg.options, &cfg.fsname)?;
    let mut config = Config::default();
    config.mount_options = parsed.mount_options;
    config.acl = parsed.acl;
    config.n_threads = Some(cfg.fuse_threads.max(1));
    config.clone_fd = cfg.fuse_threads > 1;

    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| lmz::Error::io("signal handlers", e))?;
    let sig_handle = signals.handle();
    let sig_tx = tx.clone();
    let sig_thread = std::thread::spawn(move || {
        if let Some(s) = signals.forever().next() {
            let _ = sig_tx.send(Event::Signal(s));
        }
    });
    let stop_signals = || {
        sig_handle.close();
        let _ = sig_thread.join();
    };

    let cache = Arc::new(BlockCache::new(archive.clone(), model, cfg.cache));
    let fs_opts = FsOptions {
        kernel_cache: parsed.kernel_cache || cfg.fs.kernel_cache,
        direct_io: parsed.direct_io || cfg.fs.direct_io,
        ..cfg.fs.clone()
    };
    let fs = LmzFs::new(archive.clone(), cache.clone(), fs_opts, Some(tx));
    let slot = fs.unmounter_slot();
    let mut session = match fuser::Session::new(fs, &cfg.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            stop_signals();
            cache.shutdown();
            return Err(lmz::Error::io(&cfg.mountpoint, e));
        }
    };
    // Two handles on the same mount: one for a signal, one for the filesystem's destroy.
    let mut unmounter = session.unmount_callable();
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.unmount_callable());
    let session_thread = match std::thread::Builder::new()
        .name("lmz-fuse-session".into())
        .spawn(move || session.run())
    {
        Ok(t) => t,
        Err(e) => {
            // The session was dropped with the closure, which unmounted it.
            stop_signals();
            cache.shutdown();
            return Err(lmz::Error::io("starting the session thread", e));
        }
    };
    log::info!(
        "mounted {} on {} ({} entries, {} blocks; cache {} bytes, {} decoder threads, readahead {} blocks)",
        cfg.fsname,
        cfg.mountpoint.display(),
        archive.entries().len(),
        archive.block_count(),
        cfg.cache.capacity,
        cfg.cache.workers,
        cfg.fs.readahead
    );
    on_mounted();

    // The stats writer: rewrites the file within 20 ms of any change of the counters.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stats_thread = cfg.stats_file.clone().map(|path| {
        let cache = cache.clone();
        write_stats(&path, &cache);
        std::thread::spawn(move || {
            let mut seen = cache.generation();
            loop {
                let stop = !matches!(
                    stop_rx.recv_timeout(Duration::from_millis(20)),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                let g = cache.generation();
                if g != seen || stop {
                    seen = g;
                    write_stats(&path, &cache);
                }
                if stop {
                    return;
                }
            }
        })
    });

    let result = match rx.recv() {
        Ok(Event::Signal(s)) => {
            log::info!("signal {s}: unmounting {}", cfg.mountpoint.display());
            match unmounter.unmount() {
                Ok(()) => join_session(session_thread, &cfg.mountpoint),
                Err(e) => {
                    // Busy (a process has its working directory inside, say): detach it
                    // lazily; exiting closes the connection.
                    log::warn!(
                        "unmounting {}: {e}; detaching it lazily",
                        cfg.mountpoint.display()
                    );
                    daemon::lazy_unmount(&cfg.mountpoint);
                    Ok(())
                }
            }
        }
        Ok(Event::Ended) | Err(_) => {
            log::info!("{} was unmounted", cfg.mountpoint.display());
            join_session(session_thread, &cfg.mountpoint)
        }
    };
    stop_signals();
    drop(stop_tx);
    if let Some(t) = stats_thread {
        let _ = t.join();
    }
    cache.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> lmz::Result<ParsedOptions> {
        parse_options(
            &list.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "/a.lmz",
        )
    }

    #[test]
    fn options_are_read_only_and_named() {
        let p = opts(&["allow_other,noexec", "kernel_cache", "max_read=65536"]).unwrap();
        assert_eq!(p.acl, SessionACL::All);
        assert!(p.kernel_cache && !p.direct_io);
        assert!(p.mount_options.contains(&MountOption::RO));
        assert!(p.mount_options.contains(&MountOption::NoExec));
        assert!(p
            .mount_options
            .contains(&MountOption::FSName("/a.lmz".into())));
        assert!(p
            .mount_options
            .contains(&MountOption::CUSTOM("subtype=lmz".into())));
        assert!(p
            .mount_options
            .contains(&MountOption::CUSTOM("max_read=65536".into())));
        assert!(opts(&["rw"]).is_err());
        let p = opts(&["auto_unmount", "fsname=x"]).unwrap();
        assert_eq!(p.acl, SessionACL::RootAndOwner);
        assert!(p.mount_options.contains(&MountOption::FSName("x".into())));
        assert!(!p
            .mount_options
            .contains(&MountOption::FSName("/a.lmz".into())));
    }
}
