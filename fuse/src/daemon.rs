//! Detaching a mount, and reading the mount table.
//!
//! Detaching without `fork` (and without unsafe code): the program runs itself again with a
//! foreground flag as a child in its own process group, its standard error going to a log
//! file, and waits until the mount table shows a new FUSE mount at the mount point. If the
//! child exits first, its log (the error) and exit status are handed back.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|&f| f == "-")?;
            let mp = fields.get(4)?;
            Some(MountEntry {
                mountpoint: PathBuf::from(OsString::from_vec(unescape(mp))),
                fstype: fields.get(dash + 1)?.to_string(),
                source: String::from_utf8_lossy(&unescape(fields.get(dash + 2)?)).into_owned(),
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// How many FUSE mounts sit on `mountpoint` (an absolute, canonical path).
pub fn fuse_mounts_at(mountpoint: &Path) -> io::Result<usize> {
    Ok(mounts()?
        .iter()
        .filter(|m| {
            m.mountpoint == mountpoint && (m.fstype == "fuse" || m.fstype.starts_with("fuse."))
        })
        .count())
}

/// Detaches the mount at `mountpoint` even if busy (`umount -l`, else `fusermount3 -uz`).
pub fn lazy_unmount(mountpoint: &Path) {
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet(Command::new("umount").arg("-l").arg(mountpoint)) {
        quiet(Command::new("fusermount3").arg("-uz").arg(mountpoint));
    }
}

/// Why a detached mount did not come up.
#[derive(Debug)]
pub enum DaemonError {
    /// The child could not be started, or the log file opened.
    Io(io::Error),
    /// The child exited before the mount appeared: its exit code (if it exited normally)
    /// and what it wrote to its log meanwhile.
    Exited { code: Option<i32>, log: String },
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::Io(e) => write!(f, "starting the mount process: {e}"),
            DaemonError::Exited { code, log } => {
                write!(f, "the mount process exited")?;
                if let Some(c) = code {
                    write!(f, " with status {c}")?;
                }
                if !log.trim().is_empty() {
                    write!(f, ": {}", log.trim())?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for DaemonError {}

fn temp_log() -> io::Result<(File, PathBuf)> {
    let dir = std::env::temp_dir();
    for i in 0..1000 {
        let p = dir.join(format!("lmz-mount-{}-{i}.log", std::process::id()));
        match OpenOptions::new().append(true).create_new(true).open(&p) {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "cannot create a log file in the temporary directory",
    ))
}

/// Runs `exe args` detached (own process group, stdin and stdout on /dev/null, stderr
/// appended to `log_file`, or to an unnamed temporary file) and waits until a new FUSE mount
/// appears at `mountpoint` (absolute and canonical). Returns the child's process id.
pub fn spawn_detached(
    exe: &Path,
    args: &[OsString],
    mountpoint: &Path,
    log_file: Option<&Path>,
) -> Result<u32, DaemonError> {
    let before = fuse_mounts_at(mountpoint).map_err(DaemonError::Io)?;
    let (log, log_path, remove) = match log_file {
        Some(p) => (
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .map_err(DaemonError::Io)?,
            p.to_path_buf(),
            false,
        ),
        None => {
            let (f, p) = temp_log().map_err(DaemonError::Io)?;
            (f, p, true)
        }
    };
    // A second handle of our own to read back what the child writes.
    let mut reader = File::open(&log_path).map_err(DaemonError::Io)?;
    let start = reader.seek(SeekFrom::End(0)).map_err(DaemonError::Io)?;
    let spawned = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn();
    if remove {
        // The child keeps its handle; the name is not needed any more.
        let _ = std::fs::remove_file(&log_path);
    }
    let mut child = spawned.map_err(DaemonError::Io)?;
    loop {
        if fuse_mounts_at(mountpoint).map_err(DaemonError::Io)? > before {
            return Ok(child.id());
        }
        if let Some(status) = child.try_wait().map_err(DaemonError::Io)? {
            let mut text = String::new();
            let _ = reader.seek(SeekFrom::Start(start));
            let _ = reader.read_to_string(&mut text);
            return Err(DaemonError::Exited {
                code: status.code(),
                log: text,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let t = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - fuse /tmp/a\\040b.lmz ro,user_id=0\n\
                 37 35 98:0 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fstype, "fuse");
        assert_eq!(m[0].source, "/tmp/a b.lmz");
        assert_eq!(m[1].fstype, "proc");
    }
}
