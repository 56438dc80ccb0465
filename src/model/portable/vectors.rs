//! The engine's golden vectors (FORMAT.md §20.10, `format-spec/vectors/portable/`): for
//! fixed token sequences, the SHA-256 of every frequency table the model yields, checked
//! under every kernel set this machine runs, one and several threads, and three schedules —
//! one sequence token by token, all sequences in lockstep with staggered starts, and 16-token
//! prefill chunks. The tables are hashed, not the logits: they are what the format depends
//! on, and an implementation that reproduces them decodes every archive of the model.
//!
//! `LMZ_REGEN_VECTORS=1` rewrites a vector file from this implementation (only ever after a
//! deliberate change of the arithmetic, which then needs a new `arith_version`).

use sha2::{Digest, Sha256};

use super::kernels::KernelSet;
use super::{PortableLm, PortableOptions};
use crate::format::hex;
use crate::model::fetch::{hash_file, ModelFile};
use crate::model::{Evaluator, Model, Token};

pub const VECTOR_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/format-spec/vectors/portable");

/// How the sequences are fed.
#[derive(Clone, Copy, Debug)]
pub enum Schedule {
    /// One sequence at a time, one token per step.
    Alone,
    /// Every sequence in one evaluator, sequence `i` starting at step `3·i`, one token each
    /// per step (so steps mix positions and sequences leave the batch at different times).
    Staggered,
    /// One sequence at a time, 16 tokens per step (the encoder's prefill).
    Chunks,
}

/// Per sequence, the SHA-256 of its tables in order (each table's `vocab + 1` entries as
/// little-endian u32). Sequence inputs are `bos, s[0], …, s[n−2]`, one table per token of `s`.
pub fn digests(m: &PortableLm, seqs: &[Vec<Token>], schedule: Schedule) -> Vec<String> {
    let bos = m.pin().bos;
    let inputs: Vec<Vec<Token>> = seqs
        .iter()
        .map(|s| {
            std::iter::once(bos)
                .chain(s[..s.len() - 1].iter().copied())
                .collect()
        })
        .collect();
    let mut hashers: Vec<Sha256> = seqs.iter().map(|_| Sha256::new()).collect();
    let absorb = |h: &mut Sha256, cum: &[u32]| {
        for c in cum {
            h.update(c.to_le_bytes());
        }
    };
    let longest = inputs.iter().map(|s| s.len()).max().unwrap_or(0);
    match schedule {
        Schedule::Alone | Schedule::Chunks => {
            let chunk = if matches!(schedule, Schedule::Chunks) {
                16
            } else {
                1
            };
            for (i, inp) in inputs.iter().enumerate() {
                let mut e = m.new_eval(1, longest, chunk);
                for piece in inp.chunks(chunk) {
                    e.rows.clear();
                    for &t in piece {
                        e.add(0, t).unwrap();
                    }
                    let mut out = vec![Vec::new(); piece.len()];
                    e.integers(|tables, logits, symbols| {
                        tables.fill(logits, symbols, 24, &mut out)
                    })
                    .unwrap();
                    for cum in &out {
                        absorb(&mut hashers[i], cum);
                    }
                }
            }
        }
        Schedule::Staggered => {
            let mut e = m.new_eval(inputs.len(), longest, 1);
            let mut step = 0;
            loop {
                let feed: Vec<(usize, Token)> = inputs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, inp)| {
                        let k = step as isize - 3 * i as isize;
                        (k >= 0 && (k as usize) < inp.len()).then(|| (i, inp[k as usize]))
                    })
                    .collect();
                if feed.is_empty() && step > 3 * inputs.len() {
                    break;
                }
                if !feed.is_empty() {
                    let mut out = vec![Vec::new(); feed.len()];
                    e.step(&feed, &mut out).unwrap();
                    for ((i, _), cum) in feed.iter().zip(&out) {
                        absorb(&mut hashers[*i], cum);
                    }
                }
                step += 1;
            }
        }
    }
    hashers.into_iter().map(|h| hex(&h.finalize())).collect()
}

/// A vector file: the model's SHA-256, then per sequence a line `sha256-of-tables token,token,…`.
pub struct VectorFile {
    pub model_sha256: String,
    pub seqs: Vec<(String, Vec<Token>)>,
}

impl VectorFile {
    pub fn parse(text: &str) -> VectorFile {
        let mut model_sha256 = String::new();
        let mut seqs = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(h) = line.strip_prefix("model ") {
                model_sha256 = h.trim().to_string();
                continue;
            }
            let (d, toks) = line.split_once(' ').expect("digest and tokens");
            let toks = toks.split(',').map(|t| t.trim().parse().unwrap()).collect();
            seqs.push((d.to_string(), toks));
        }
        VectorFile { model_sha256, seqs }
    }

    pub fn render(&self, header: &str) -> String {
        let mut s = String::new();
        for l in header.lines() {
            s.push_str(&format!("# {l}\n"));
        }
        s.push_str(&format!("model {}\n", self.model_sha256));
        for (d, t) in &self.seqs {
            let toks: Vec<String> = t.iter().map(|t| t.to_string()).collect();
            s.push_str(&format!("{d} {}\n", toks.join(",")));
        }
        s
    }
}

/// Loads `path` (already hashed by the caller when `file` is given) with kernels `ks` on
/// `threads` threads.
pub fn load(file: &ModelFile, ks: KernelSet, threads: usize) -> PortableLm {
    PortableLm::load(
        file,
        4096,
        PortableOptions {
            threads,
            table_threads: Some(threads),
            kernels: Some(ks),
        },
    )
    .unwrap()
}

pub fn model_file(path: &std::path::Path, name: &str) -> ModelFile {
    let (sha256, size) = hash_file(path).unwrap();
    ModelFile {
        path: path.to_path_buf(),
        sha256,
        size,
        name: name.into(),
    }
}

/// Checks (or with `LMZ_REGEN_VECTORS=1` writes) the vector file `name` for `file`, whose
/// sequences are `texts` tokenized by the model (when regenerating) or the file's own tokens.
/// Every kernel set runs `schedules_for(ks)`.
pub fn check(file: &ModelFile, name: &str, texts: &[&[u8]], header: &str) {
    let path = std::path::Path::new(VECTOR_DIR).join(name);
    let regen = std::env::var_os("LMZ_REGEN_VECTORS").is_some();
    let best = load(file, KernelSet::best(), 2);
    let vf = if regen {
        let seqs: Vec<Vec<Token>> = texts.iter().map(|t| best.tokenize(t).unwrap()).collect();
        let d = digests(&best, &seqs, Schedule::Alone);
        let vf = VectorFile {
            model_sha256: hex(&file.sha256),
            seqs: d.into_iter().zip(seqs).collect(),
        };
        std::fs::create_dir_all(VECTOR_DIR).unwrap();
        std::fs::write(&path, vf.render(header)).unwrap();
        vf
    } else {
        VectorFile::parse(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
    };
    assert_eq!(
        vf.model_sha256,
        hex(&file.sha256),
        "{name}: model file differs"
    );
    let seqs: Vec<Vec<Token>> = vf.seqs.iter().map(|(_, t)| t.clone()).collect();
    let want: Vec<&str> = vf.seqs.iter().map(|(d, _)| d.as_str()).collect();
    drop(best);
    for ks in KernelSet::available() {
        for (threads, schedule) in [
            (1, Schedule::Alone),
            (2, Schedule::Staggered),
            (2, Schedule::Chunks),
        ] {
            let m = load(file, ks, threads);
            let got = digests(&m, &seqs, schedule);
            assert_eq!(
                got, want,
                "{name}: kernels {ks:?}, {threads} threads, {schedule:?}"
            );
        }
    }
}
