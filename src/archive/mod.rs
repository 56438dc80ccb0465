//! Archives: writing ([`writer`]), random access through the tail index ([`reader`]),
//! sequential reading from a pipe ([`stream`]), creating entries on disk ([`extract`]), and
//! choosing an archive primer by measuring ([`primer`]).
//!
//! [`Catalog`] holds the rules every reader applies to the entry list, whichever way it was
//! read: unique paths, parents declared before children, hard links to earlier files, file
//! data in stream order without overlap. Checking them once, in one place, is what lets the
//! extractor and the mount trust the entry list.

pub mod extract;
pub mod merge;
pub mod primer;
pub mod reader;
pub mod stream;
pub mod writer;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::{Entry, EntryKind};

pub use reader::Archive;
pub use writer::{FileData, Meta, PackStats, Shard, Writer, WriterOptions, DEFAULT_BIAS_RATE};

/// A validated entry list.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Vec<Entry>,
    by_path: HashMap<Vec<u8>, usize>,
    /// End of the last file's data in the data stream.
    data_end: u64,
}

impl Catalog {
    /// Appends `e`, read at archive offset `offset`, if it obeys the rules above.
    pub fn push(&mut self, e: Entry, offset: u64) -> Result<()> {
        if self.by_path.contains_key(&e.path) {
            return Err(Error::corrupt(
                offset,
                format!("duplicate entry {:?}", String::from_utf8_lossy(&e.path)),
            ));
        }
        if let Some(slash) = e.path.iter().rposition(|&b| b == b'/') {
            let parent = &e.path[..slash];
            match self.by_path.get(parent) {
                Some(&i) if self.entries[i].kind == EntryKind::Dir => {}
                _ => {
                    return Err(Error::corrupt(
                        offset,
                        format!(
                            "entry {:?} comes before its parent directory",
                            String::from_utf8_lossy(&e.path)
                        ),
                    ))
                }
            }
        }
        match e.kind {
            EntryKind::HardLink => match self.by_path.get(&e.link) {
                Some(&i) if self.entries[i].kind == EntryKind::File => {}
                _ => {
                    return Err(Error::corrupt(
                        offset,
                        "hard link to something other than an earlier file",
                    ))
                }
            },
            EntryKind::File => {
                let end = e
                    .data_end()
                    .ok_or_else(|| Error::corrupt(offset, "file data range overflows"))?;
                if e.data_start < self.data_end {
                    return Err(Error::corrupt(
                        offset,
                        "file data out of stream order or overlapping",
                    ));
                }
                self.data_end = end;
            }
            _ => {}
        }
        self.by_path.insert(e.path.clone(), self.entries.len());
        self.entries.push(e);
        Ok(())
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn find(&self, path: &[u8]) -> Option<usize> {
        self.by_path.get(path).copied()
    }

    /// Where the last file's data ends in the data stream.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }
}
