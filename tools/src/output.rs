//! Output files that appear whole or not at all: written under a hidden temporary name in
//! the target's directory, renamed over the target only when complete. An error, a panic or
//! a signal (SIGINT, SIGTERM, SIGHUP) removes the temporary file, so no reader ever sees a
//! partial archive under the final name. (SIGKILL cannot be caught; then the hidden
//! temporary file stays, but never under the final name.)

use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

pub struct Atomic {
    tmp: PathBuf,
    target: PathBuf,
    /// (device, inode) of the temporary file, so a pack never packs its own output.
    pub id: (u64, u64),
    signals: Option<signal_hook::iterator::Handle>,
    done: bool,
}

impl Atomic {
    /// Creates the temporary file for `target`; returns it with a buffered writer on it.
    pub fn create(target: &Path) -> Result<(Atomic, BufWriter<File>)> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = target
            .file_name()
            .ok_or_else(|| lmz::Error::usage(format!("{}: not a file name", target.display())))?;
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
        let mut a = Atomic {
            tmp: tmp.clone(),
            target: target.to_path_buf(),
            id: (0, 0),
            signals: None,
            done: false,
        };
        let md = file.metadata().map_err(|e| lmz::Error::io(&tmp, e))?;
        a.id = (md.dev(), md.ino());
        a.signals = Some(remove_on_signal(tmp)?);
        Ok((a, BufWriter::with_capacity(1 << 20, file)))
    }

    /// Flushes and syncs `out` and renames the file into place.
    pub fn commit(mut self, out: BufWriter<File>) -> Result<()> {
        let file = out
            .into_inner()
            .map_err(|e| lmz::Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| lmz::Error::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target).map_err(|e| lmz::Error::io(&self.target, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Atomic {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
        if let Some(s) = self.signals.take() {
            s.close();
        }
    }
}

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
