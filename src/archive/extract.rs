//! Creating entries under a destination directory, safely.
//!
//! Entries arrive already validated by [`Catalog`](super::Catalog): relative paths without
//! `.`/`..`, parents declared before children. On top of that the extractor only ever creates
//! a path whose parent is the destination or a directory *it* created or found to be a real
//! directory (never a symlink), opens files with `O_NOFOLLOW | O_CREAT | O_EXCL`, and never
//! writes through a symlink, so no entry can reach outside the destination. Existing files
//! are kept unless `overwrite` is set. File bytes arrive in data-stream order, already
//! CRC-checked; a file that is not complete when extraction stops is removed.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{Entry, EntryKind};

#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractOptions {
    /// Replace existing files, symlinks and empty directories in the way.
    pub overwrite: bool,
    /// Restore uid/gid (only possible as root; silently skipped after the first refusal).
    pub owners: bool,
}

struct Pending {
    entry: Entry,
    path: PathBuf,
    file: Option<File>,
    written: u64,
}

pub struct Extractor {
    dest: PathBuf,
    opts: ExtractOptions,
    dirs: HashSet<Vec<u8>>,
    dir_meta: Vec<(PathBuf, Entry)>,
    pending: VecDeque<Pending>,
    owners_ok: bool,
    pub files: u64,
    pub bytes: u64,
}

fn os_path(p: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(p))
}

impl Extractor {
    /// Extracts into `dest`, creating it if needed.
    pub fn new(dest: &Path, opts: ExtractOptions) -> Result<Extractor> {
        std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
        Ok(Extractor {
            dest: dest.to_owned(),
            opts,
            dirs: HashSet::new(),
            dir_meta: Vec::new(),
            pending: VecDeque::new(),
            owners_ok: opts.owners,
            files: 0,
            bytes: 0,
        })
    }

    fn unsafe_path(e: &Entry, why: &str) -> Error {
        Error::UnsafePath {
            path: String::from_utf8_lossy(&e.path).into_owned(),
            detail: why.into(),
        }
    }

    /// The destination path of `e`, after checking that its parent is ours.
    fn target(&self, e: &Entry) -> Result<PathBuf> {
        if let Some(slash) = e.path.iter().rposition(|&b| b == b'/') {
            if !self.dirs.contains(&e.path[..slash]) {
                return Err(Extractor::unsafe_path(
                    e,
                    "parent directory was not extracted",
                ));
            }
        }
        Ok(self.dest.join(os_path(&e.path)))
    }

    /// Makes room for a new entry at `p`: refuses, or (with `overwrite`) removes what is there.
    fn clear(&self, e: &Entry, p: &Path) -> Result<()> {
        match std::fs::symlink_metadata(p) {
            Err(_) => Ok(()),
            Ok(_) if !self.opts.overwrite => Err(Error::usage(format!(
                "{} already exists (use --overwrite to replace it)",
                p.display()
            ))),
            Ok(m) if m.is_dir() => std::fs::remove_dir(p).map_err(|err| {
                Error::usage(format!(
                    "{}: cannot replace directory for {:?}: {err}",
                    p.display(),
                    e.kind
                ))
            }),
            Ok(_) => std::fs::remove_file(p).map_err(|err| Error::io(p, err)),
        }
    }

    /// Creates entry `e` (a file is created empty; its bytes come through [`Self::data`]).
    pub fn begin(&mut self, e: &Entry) -> Result<()> {
        let p = self.target(e)?;
        match e.kind {
            EntryKind::Dir => {
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        self.clear(e, &p)?;
                        std::fs::create_dir(&p).map_err(|err| Error::io(&p, err))?;
                    }
                    Err(_) => std::fs::create_dir(&p).map_err(|err| Error::io(&p, err))?,
                }
                self.dirs.insert(e.path.clone());
                self.dir_meta.push((p, e.clone()));
            }
            EntryKind::Symlink => {
                self.clear(e, &p)?;
                std::os::unix::fs::symlink(os_path(&e.link), &p)
                    .map_err(|err| Error::io(&p, err))?;
                self.set_owner(&p, e);
                set_times(&p, e)?;
            }
            EntryKind::HardLink => {
                self.clear(e, &p)?;
                let t = self.dest.join(os_path(&e.link));
                std::fs::hard_link(&t, &p).map_err(|err| Error::io(&p, err))?;
            }
            EntryKind::File => {
                self.clear(e, &p)?;
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(|err| Error::io(&p, err))?;
                self.files += 1;
                let pend = Pending {
                    entry: e.clone(),
                    path: p,
                    file: Some(f),
                    written: 0,
                };
                if e.size == 0 {
                    self.complete(pend)?;
                } else {
                    self.pending.push_back(pend);
                }
            }
        }
        Ok(())
    }

    /// Routes verified data-stream bytes `[pos, pos + bytes.len())` to the files waiting
    /// for them.
    pub fn data(&mut self, pos: u64, bytes: &[u8]) -> Result<()> {
        let end = pos + bytes.len() as u64;
        while let Some(f) = self.pending.front_mut() {
            let fstart = f.entry.data_start + f.written;
            let fend = f.entry.data_start + f.entry.size;
            if fstart >= end {
                break;
            }
            if fstart < pos {
                return Err(Error::corrupt(
                    0,
                    format!("data for {} was skipped", f.path.display()),
                ));
            }
            let hi = fend.min(end);
            let chunk = &bytes[(fstart - pos) as usize..(hi - pos) as usize];
            let file = f.file.as_mut().expect("open while pending");
            file.write_all(chunk)
                .map_err(|err| Error::io(&f.path, err))?;
            f.written += chunk.len() as u64;
            self.bytes += chunk.len() as u64;
            if f.written == f.entry.size {
                let done = self.pending.pop_front().expect("front exists");
                self.complete(done)?;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn complete(&mut self, mut p: Pending) -> Result<()> {
        let f = p.file.take().expect("file open");
        // Owner before mode: chown clears set-uid and set-gid bits, even for root.
        self.set_owner(&p.path, &p.entry);
        f.set_permissions(std::fs::Permissions::from_mode(p.entry.mode))
            .map_err(|e| Error::io(&p.path, e))?;
        f.sync_all().ok();
        drop(f);
        set_times(&p.path, &p.entry)
    }

    fn set_owner(&mut self, p: &Path, e: &Entry) {
        if self.owners_ok && std::os::unix::fs::lchown(p, Some(e.uid), Some(e.gid)).is_err() {
            self.owners_ok = false;
            log::warn!(
                "cannot restore file owners (not running as root?); keeping the current user"
            );
        }
    }

    /// Checks that every file got all its bytes, then restores directory metadata (deepest
    /// first, after their contents are written).
    pub fn finish(mut self) -> Result<(u64, u64)> {
        if let Some(p) = self.pending.front() {
            return Err(Error::corrupt(
                0,
                format!(
                    "archive ended before all of {} was extracted",
                    p.path.display()
                ),
            ));
        }
        // Owner before mode (chown clears set-gid on directories too), then times last, as
        // a child's changes touch its parent's mtime.
        let dirs = std::mem::take(&mut self.dir_meta);
        for (p, e) in dirs.iter().rev() {
            self.set_owner(p, e);
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(e.mode))
                .map_err(|err| Error::io(p, err))?;
        }
        for (p, e) in dirs.iter().rev() {
            set_times(p, e)?;
        }
        Ok((self.files, self.bytes))
    }
}

impl Drop for Extractor {
    /// Incomplete files are removed: a failed extraction leaves no file with wrong bytes.
    fn drop(&mut self) {
        for p in self.pending.drain(..) {
            drop(p.file);
            let _ = std::fs::remove_file(&p.path);
        }
    }
}

fn set_times(p: &Path, e: &Entry) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(e.mtime_sec, e.mtime_nsec);
    filetime::set_symlink_file_times(p, t, t).map_err(|err| Error::io(p, err))
}
