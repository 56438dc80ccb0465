//! The fuser `Filesystem` over an [`Archive`]: a read-only tree built from the entry list,
//! file reads served from the decoded-block cache.
//!
//! Inode numbers: the root is 1, entry `i` is `i + 2`. A hard link has no inode of its own:
//! it names its target's inode, whose link count counts the links. Nothing ever changes,
//! so attributes and entries are given long TTLs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use lmz::archive::Archive;
use lmz::format::{Entry, EntryKind};

use crate::cache::BlockCache;

/// The archive never changes: let the kernel keep what it learns for a day.
const TTL: Duration = Duration::from_secs(86_400);
pub const ROOT: u64 = 1;
/// Reads this close to where the previous read of a handle ended count as sequential
/// (the kernel's readahead may deliver neighbouring requests out of order).
const SEQ_SLACK: u64 = 256 * 1024;

/// What the session tells the code that mounted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The kernel ended the session (unmounted from outside, or the connection died).
    Ended,
    /// A termination signal arrived.
    Signal(i32),
}

/// Settings of the filesystem proper.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Blocks to prefetch ahead of a sequential reader (0: none).
    pub readahead: usize,
    /// Let the kernel keep file pages cached across opens (`-o kernel_cache`).
    pub kernel_cache: bool,
    /// Bypass the kernel's page cache (`-o direct_io`).
    pub direct_io: bool,
    /// Most bytes the kernel reads ahead of a reader through the page cache (`None`: the
    /// kernel's default, 128 KiB on most systems). With a slow model, a small value keeps
    /// a 4 KiB read from decoding many blocks; `readahead` then does the reading ahead.
    pub kernel_readahead: Option<u32>,
    /// Attributes of the root directory (usually from the archive file).
    pub root_uid: u32,
    pub root_gid: u32,
    pub root_mtime: SystemTime,
}

/// Per-open-file state: where the last read ended, for sequential-read detection.
#[derive(Clone, Copy, Debug, Default)]
struct Handle {
    /// End of the sequential run so far; `None` before the first read.
    next: Option<u64>,
}

/// Where the session's unmounter goes once the session exists.
pub type UnmounterSlot = Arc<Mutex<Option<fuser::SessionUnmounter>>>;

/// A directory listing item: inode, entry index (`None` for "." and ".."), name.
type DirItem<'a> = (u64, Option<usize>, &'a [u8]);

pub struct LmzFs {
    archive: Arc<Archive>,
    cache: Arc<BlockCache>,
    opts: FsOptions,
    /// Indexed by inode number (0 unused): parent inode, children (entry indices), nlink.
    parent: Vec<u64>,
    children: Vec<Vec<usize>>,
    nlink: Vec<u32>,
    /// Hard-link entry → its target entry.
    link_target: HashMap<usize, usize>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    events: Mutex<Option<Sender<Event>>>,
    /// Filled by the mounting code once the session exists (see [`LmzFs::unmounter_slot`]).
    unmounter: UnmounterSlot,
}

fn parent_path(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|&b| b == b'/').map(|i| &path[..i])
}

fn base_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

pub fn system_time(sec: i64, nsec: u32) -> SystemTime {
    let nanos = Duration::from_nanos(nsec.min(999_999_999) as u64);
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

impl LmzFs {
    pub fn new(
        archive: Arc<Archive>,
        cache: Arc<BlockCache>,
        opts: FsOptions,
        events: Option<Sender<Event>>,
    ) -> LmzFs {
        let entries = archive.entries();
        let n = entries.len() + 2;
        let mut parent = vec![ROOT; n];
        let mut children = vec![Vec::new(); n];
        let mut nlink = vec![1u32; n];
        nlink[ROOT as usize] = 2;
        let mut link_target = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            // The catalog guarantees parents are earlier directory entries.
            let p = match parent_path(&e.path) {
                Some(pp) => archive.find(pp).map_or(ROOT, |j| j as u64 + 2),
                None => ROOT,
            };
            parent[i + 2] = p;
            children[p as usize].push(i);
            match e.kind {
                EntryKind::Dir => {
                    nlink[i + 2] = 2;
                    nlink[p as usize] += 1;
                }
                EntryKind::HardLink => {
                    if let Some(t) = archive.find(&e.link) {
                        link_target.insert(i, t);
                        nlink[t + 2] += 1;
                    }
                }
                _ => {}
            }
        }
        LmzFs {
            archive,
            cache,
            opts,
            parent,
            children,
            nlink,
            link_target,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            events: Mutex::new(events),
            unmounter: UnmounterSlot::default(),
        }
    }

    /// The entry index an inode stands for (`None` for the root or an unknown inode),
    /// following hard links.
    fn entry_of(&self, ino: u64) -> Option<usize> {
        let i = usize::try_from(ino.checked_sub(2)?).ok()?;
        if i >= self.archive.entries().len() {
            return None;
        }
        Some(self.link_target.get(&i).copied().unwrap_or(i))
    }

    fn valid(&self, ino: u64) -> bool {
        ino == ROOT || self.entry_of(ino).is_some()
    }

    /// Inode and attributes of entry `i` (a hard link resolves to its target).
    fn entry_attr(&self, i: usize) -> FileAttr {
        let i = self.link_target.get(&i).copied().unwrap_or(i);
        let e: &Entry = &self.archive.entries()[i];
        let ino = i as u64 + 2;
        let (kind, size) = match e.kind {
            EntryKind::Dir => (FileType::Directory, 0),
            EntryKind::Symlink => (FileType::Symlink, e.link.len() as u64),
            EntryKind::File | EntryKind::HardLink => (FileType::RegularFile, e.size),
        };
        let t = system_time(e.mtime_sec, e.mtime_nsec);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: (e.mode & 0o7777) as u16,
            nlink: self.nlink[ino as usize],
            uid: e.uid,
            gid: e.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn root_attr(&self) -> FileAttr {
        let t = self.opts.root_mtime;
        FileAttr {
            ino: INodeNo(ROOT),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: self.nlink[ROOT as usize],
            uid: self.opts.root_uid,
            gid: self.opts.root_gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        if ino == ROOT {
            return Some(self.root_attr());
        }
        self.entry_of(ino).map(|i| self.entry_attr(i))
    }

    /// Children of directory `ino` as (inode, kind, name), after "." and "..".
    fn dir_listing(&self, ino: u64) -> Result<Vec<DirItem<'_>>, Errno> {
        let is_dir = ino == ROOT
            || self
                .entry_of(ino)
                .is_some_and(|i| self.archive.entries()[i].kind == EntryKind::Dir);
        if !is_dir {
            return Err(if self.valid(ino) {
                Errno::ENOTDIR
            } else {
                Errno::ENOENT
            });
        }
        let kids = &self.children[ino as usize];
        let mut out = Vec::with_capacity(kids.len() + 2);
        out.push((ino, None, &b"."[..]));
        out.push((self.parent[ino as usize], None, &b".."[..]));
        for &c in kids {
            let target = self.link_target.get(&c).copied().unwrap_or(c);
            out.push((
                target as u64 + 2,
                Some(c),
                base_name(&self.archive.entries()[c].path),
            ));
        }
        Ok(out)
    }

    fn kind_of(&self, i: Option<usize>) -> FileType {
        match i.map(|i| self.archive.entries()[i].kind) {
            None | Some(EntryKind::Dir) => FileType::Directory,
            Some(EntryKind::Symlink) => FileType::Symlink,
            Some(EntryKind::File | EntryKind::HardLink) => FileType::RegularFile,
        }
    }

    /// Notes a read on handle `fh` and returns whether it continues a sequential run: the
    /// first read of a handle at offset 0, or a read starting where the previous one ended.
    fn sequential(&self, fh: u64, offset: u64, end: u64) -> bool {
        let mut hs = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let h = hs.entry(fh).or_default();
        let seq = match h.next {
            None => offset == 0,
            Some(next) => offset.abs_diff(next) <= SEQ_SLACK,
        };
        h.next = Some(match h.next {
            Some(next) if seq => next.max(end),
            _ => end,
        });
        seq
    }

    fn read_file(&self, i: usize, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let e = &self.archive.entries()[i];
        if e.kind != EntryKind::File {
            return Err(if e.kind == EntryKind::Dir {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            });
        }
        if offset >= e.size || size == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(size as u64).min(e.size);
        let (start, stop) = (e.data_start + offset, e.data_start + end);
        let blocks = self.archive.blocks_covering(start, stop);
        if self.opts.readahead > 0 && self.sequential(fh, offset, end) {
            let file_blocks = self
                .archive
                .blocks_covering(e.data_start, e.data_start + e.size);
            let from = blocks.end;
            let to = (from + self.opts.readahead).min(file_blocks.end);
            if from < to {
                self.cache.prefetch(from..to);
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let first = blocks.start;
        for (k, r) in self.cache.get_range(blocks).into_iter().enumerate() {
            match r {
                Ok(plain) => {
                    let bstart = self.archive.block_start(first + k);
                    let lo = start.max(bstart) - bstart;
                    let hi = stop.min(bstart + plain.len() as u64) - bstart;
                    out.extend_from_slice(&plain[lo as usize..hi as usize]);
                }
                Err(err) => {
                    log::error!(
                        "{}: read of bytes {offset}..{end} failed ({err}); answering EIO",
                        String::from_utf8_lossy(&e.path)
                    );
                    return Err(Errno::EIO);
                }
            }
        }
        Ok(out)
    }

    /// The slot for the session's unmounter. When the session ends from outside (`umount`),
    /// [`Filesystem::destroy`] takes the mount out of the session through it, so the
    /// session does not try to unmount a second time (and log a failure) when it drops.
    pub fn unmounter_slot(&self) -> UnmounterSlot {
        self.unmounter.clone()
    }

    fn send(&self, ev: Event) {
        if let Some(tx) = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = tx.send(ev);
        }
    }
}

impl Filesystem for LmzFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        if let Some(bytes) = self.opts.kernel_readahead {
            if let Err(nearest) = config.set_max_readahead(bytes) {
                let _ = config.set_max_readahead(nearest);
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let taken = self
            .unmounter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut u) = taken {
            // Already unmounted from outside: this only forgets the mount (an error here
            // says there was nothing left to unmount).
            if let Err(e) = u.unmount() {
                log::debug!("after the session ended: {e}");
            }
        }
        self.send(Event::Ended);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let p = parent.0;
        let dir_path: &[u8] = if p == ROOT {
            b""
        } else {
            match self.entry_of(p).map(|i| &self.archive.entries()[i]) {
                Some(e) if e.kind == EntryKind::Dir => &e.path,
                Some(_) => return reply.error(Errno::ENOTDIR),
                None => return reply.error(Errno::ENOENT),
            }
        };
        let mut path = Vec::with_capacity(dir_path.len() + 1 + name.len());
        if !dir_path.is_empty() {
            path.extend_from_slice(dir_path);
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        match self.archive.find(&path) {
            Some(i) => reply.entry(&TTL, &self.entry_attr(i), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry_of(ino.0).map(|i| &self.archive.entries()[i]) {
            Some(e) if e.kind == EntryKind::Symlink => reply.data(&e.link),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(i) = self.entry_of(ino.0) else {
            return reply.error(if ino.0 == ROOT {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        };
        match self.archive.entries()[i].kind {
            EntryKind::Dir => return reply.error(Errno::EISDIR),
            EntryKind::Symlink => return reply.error(Errno::ELOOP),
            _ => {}
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Handle::default());
        let mut flags = FopenFlags::empty();
        if self.opts.kernel_cache {
            flags |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        if self.opts.direct_io {
            flags |= FopenFlags::FOPEN_DIRECT_IO;
        }
        reply.opened(FileHandle(fh), flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(i) = self.entry_of(ino.0) else {
            return reply.error(if ino.0 == ROOT {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        };
        match self.read_file(i, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.dir_listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (k, (child, entry, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(*child),
                k as u64 + 1,
                self.kind_of(*entry),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let list = match self.dir_listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (k, (child, entry, name)) in list.iter().enumerate().skip(offset as usize) {
            let attr = match entry {
                Some(i) => self.entry_attr(*i),
                None => match self.attr(*child) {
                    Some(a) => a,
                    None => continue,
                },
            };
            if reply.add(
                INodeNo(*child),
                k as u64 + 1,
                OsStr::from_bytes(name),
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        reply.statfs(
            self.archive.archive_len().div_ceil(BSIZE),
            0,
            0,
            self.archive.entries().len() as u64 + 1,
            0,
            BSIZE as u32,
            255,
            BSIZE as u32,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        if self.valid(ino.0) {
            reply.error(Errno::ENODATA)
        } else {
            reply.error(Errno::ENOENT)
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.valid(ino.0) {
            reply.error(Errno::ENOENT)
        } else if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        use fuser::AccessFlags as A;
        let Some(attr) = self.attr(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if mask.contains(A::W_OK) {
            return reply.error(Errno::EROFS);
        }
        let perm = attr.perm as u32;
        let allowed = if req.uid() == 0 {
            // Root reads anything, and executes what has an execute bit (or is a directory).
            !mask.contains(A::X_OK) || attr.kind == FileType::Directory || perm & 0o111 != 0
        } else {
            let bits = if req.uid() == attr.uid {
                perm >> 6
            } else if req.gid() == attr.gid {
                perm >> 3
            } else {
                perm
            } & 7;
            (!mask.contains(A::R_OK) || bits & 4 != 0) && (!mask.contains(A::X_OK) || bits & 1 != 0)
        };
        if allowed {
            reply.ok()
        } else {
            reply.error(Errno::EACCES)
        }
    }
}
