//! lmz: lossless compression with a language model as the probability model, in an archive
//! format built for random access.
//!
//! Layers, bottom up: [`format`](mod@format) (the on-disk layout, pure byte functions), [`coder`] (a
//! range coder over integer frequencies), [`model`] (next-token distributions: llama.cpp or a
//! pure-Rust test model, turned into integers by one deterministic function), [`codec`]
//! (per-block choice of stored / zstd / model coding, lockstep evaluation of many blocks) and
//! [`archive`] (writer, random-access reader, stream reader, safe extraction).
#![deny(unsafe_code)]

pub mod archive;
pub mod codec;
pub mod coder;
pub mod error;
pub mod format;
pub mod model;

pub use error::{Class, Error, Result};
