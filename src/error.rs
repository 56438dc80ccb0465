//! Errors, sorted by who is at fault.
//!
//! A caller decides what to do from [`Error::class`]: the archive is damaged or hostile
//! ([`Class::Corrupt`]), the model on this machine is not the one the archive needs
//! ([`Class::Model`]), the environment failed (I/O, [`Class::Io`]) or the caller asked for
//! something impossible ([`Class::Usage`]). Every variant carries the context a user needs to
//! act: the offset, block or path involved.
//!
//! A model-coded block that fails to decode although its payload checksum holds was not
//! damaged. For the order-1 model, which computes the same integers on every machine, that
//! can only be a forged checksum, and it stays [`Class::Corrupt`]; for llama.cpp, whose
//! logits depend on the build, the backend and the CPU kernels it picks, it means this
//! machine computed other probabilities than the writer's: [`Error::ModelDiverged`], a
//! [`Class::Model`] error that names both machines, so the user tries another machine rather
//! than giving the archive up as lost.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::format::Header;

/// Who is at fault for an [`Error`]; the `lmz` tool maps each class to its own exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The caller's request cannot be carried out (bad path, bad option, unsafe entry name).
    Usage,
    /// Reading or writing files failed (missing file, full disk, permissions).
    Io,
    /// The archive is damaged, truncated or hostile.
    Corrupt,
    /// The model is missing, unusable, not the one the archive was written with, or computes
    /// other probabilities on this machine than on the writer's.
    Model,
}

/// Where a model was evaluated, as an archive header's diagnostic strings record it: the
/// class of machine whose probabilities an archive's model-coded blocks need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// `cpu`, `cuda: <device>`, …; `rust` for models that compute the same everywhere.
    pub backend: String,
    /// The evaluating engine and its version (`llama-cpp-sys-2 0.1.161`).
    pub engine_version: String,
    /// The CPU features detected (`x86_64 sse4.2 avx avx2 fma f16c`).
    pub cpu_features: String,
}

impl Machine {
    /// The machine `h` says the archive was written on (or, for a header a model makes for
    /// a new archive, the one it evaluates on now).
    pub fn of(h: &Header) -> Machine {
        Machine {
            backend: h.backend.clone(),
            engine_version: h.engine_version.clone(),
            cpu_features: h.cpu_features.clone(),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The header's strings are diagnostics an archive may leave empty.
        let or = |s: &str| {
            if s.is_empty() {
                "?".to_string()
            } else {
                s.to_string()
            }
        };
        write!(
            f,
            "backend {}, engine {}, CPU {}",
            or(&self.backend),
            or(&self.engine_version),
            or(&self.cpu_features)
        )
    }
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
    /// A model-coded block whose payload checksum holds did not decode to its bytes (`detail`
    /// says how): the archive is not damaged, this machine computed other probabilities than
    /// the `writer`'s. Only for models whose results depend on the machine (llama.cpp).
    ModelDiverged {
        block: u64,
        offset: u64,
        /// Boxed, to keep every `Result` small.
        writer: Box<Machine>,
        here: Box<Machine>,
        detail: String,
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
    /// Something wrong with one part file of a merge (damaged, truncated, not a part):
    /// `source` says what, at offsets of that part.
    InPart { part: String, source: Box<Error> },
    /// Parts that do not make one archive together: a shard missing or given twice, parts
    /// of other plans, models or options.
    PartsDisagree { detail: String },
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
            | Error::ModelEval { .. }
            | Error::ModelDiverged { .. } => Class::Model,
            Error::Usage { .. } | Error::UnsafePath { .. } | Error::PartsDisagree { .. } => {
                Class::Usage
            }
            Error::InPart { source, .. } => source.class(),
        }
    }

    /// Whether decoding the same block again with the same model on this machine fails the
    /// same way: damage, and divergence (this machine's probabilities do not change), but not
    /// I/O or a failed evaluation. Caches of decoded blocks remember these failures.
    pub fn repeats(&self) -> bool {
        self.class() == Class::Corrupt || matches!(self, Error::ModelDiverged { .. })
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
            Error::ModelDiverged {
                block,
                offset,
                writer,
                here,
                detail,
            } => write!(
                f,
                "block {block} (at byte {offset}) {detail}, yet the archive is not damaged: \
                 its payload checksum holds. This machine computed other probabilities than \
                 the machine that wrote it (written on: {writer}; decoding on: {here}). \
                 Decode it on a machine of the writer's class (the same llama.cpp build and \
                 CPU kernel set), or repack it there with `lmz pack --engine portable`, whose \
                 archives decode on every machine"
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
            Error::InPart { part, source } => write!(f, "part {part}: {source}"),
            Error::PartsDisagree { detail } => write!(f, "cannot merge these parts: {detail}"),
        }
    }
}

/// The I/O cause is part of the message (`path: cause`), so it is not also reported as a
/// `source()`: error chains would print it twice.
impl std::error::Error for Error {}
