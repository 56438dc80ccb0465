//! Errors, sorted by who is at fault.
//!
//! A caller decides what to do from [`Error::class`]: the archive is damaged or hostile
//! ([`Class::Corrupt`]), the model on this machine is not the one the archive needs
//! ([`Class::Model`]), the environment failed (I/O, [`Class::Io`]) or the caller asked for
//! something impossible ([`Class::Usage`]). Every variant carries the context a user needs to
//! act: the offset, block or path involved.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Who is at fault for an [`Error`]; the `lmz` tool maps each class to its own exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The caller's request cannot be carried out (bad path, bad option, unsafe entry name).
    Usage,
    /// Reading or writing files failed (missing file, full disk, permissions).
    Io,
    /// The archive is damaged, truncated or hostile.
    Corrupt,
    /// The model is missing, unusable, or not the one the archive was written with.
    Model,
}

#[derive(Debug)]
pub enum Error {
    /// An I/O operation on `path` (or on the stream named there) failed.
    Io { path: PathBuf, source: io::Error },
    /// A structure of the archive is malformed at byte `offset` of the archive.
    Corrupt { offset: u64, detail: String },
    /// A block decoded, but its plain bytes do not match the CRC32 recorded for them: the
    /// block is damaged, or the model evaluated differently than when it was written.
    BlockCrc {
        block: u64,
        offset: u64,
        expected: u32,
        actual: u32,
    },
    /// The archive is valid but uses something this build does not implement.
    Unsupported { offset: u64, detail: String },
    /// The model at hand is not the one the archive pins.
    ModelMismatch { expected: String, found: String },
    /// No usable model: missing file, failed fetch, or a file llama.cpp cannot load.
    ModelUnavailable { detail: String },
    /// The model failed while evaluating (llama.cpp returned an error).
    ModelEval { detail: String },
    /// The caller asked for something that cannot be done.
    Usage { detail: String },
    /// An entry's path would escape the destination or is otherwise unsafe to create.
    UnsafePath { path: String, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn class(&self) -> Class {
        match self {
            Error::Io { .. } => Class::Io,
            Error::Corrupt { .. } | Error::BlockCrc { .. } | Error::Unsupported { .. } => {
                Class::Corrupt
            }
            Error::ModelMismatch { .. }
            | Error::ModelUnavailable { .. }
            | Error::ModelEval { .. } => Class::Model,
            Error::Usage { .. } | Error::UnsafePath { .. } => Class::Usage,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn corrupt(offset: u64, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            offset,
            detail: detail.into(),
        }
    }

    pub fn usage(detail: impl Into<String>) -> Error {
        Error::Usage {
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Corrupt { offset, detail } => {
                write!(f, "corrupt archive at byte {offset}: {detail}")
            }
            Error::BlockCrc {
                block,
                offset,
                expected,
                actual,
            } => write!(
                f,
                "block {block} (at byte {offset}) decoded to bytes whose CRC32 is {actual:08x}, \
                 expected {expected:08x}: the block is damaged or the model evaluated differently \
                 than when the archive was written"
            ),
            Error::Unsupported { offset, detail } => {
                write!(f, "unsupported archive feature at byte {offset}: {detail}")
            }
            Error::ModelMismatch { expected, found } => {
                write!(f, "wrong model: the archive needs {expected}, but {found}")
            }
            Error::ModelUnavailable { detail } => write!(f, "model unavailable: {detail}"),
            Error::ModelEval { detail } => write!(f, "model evaluation failed: {detail}"),
            Error::Usage { detail } => f.write_str(detail),
            Error::UnsafePath { path, detail } => write!(f, "refusing entry {path:?}: {detail}"),
        }
    }
}

/// The I/O cause is part of the message (`path: cause`), so it is not also reported as a
/// `source()`: error chains would print it twice.
impl std::error::Error for Error {}
