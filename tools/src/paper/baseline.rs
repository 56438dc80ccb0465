//! The classical compressors, each run on one chunk at a time: gzip -9, LZMA2 (xz -9e),
//! PNG at its best compression and FLAC at its best compression.
//!
//! gzip, xz and flac are the standard command-line tools (what a user would compare
//! against); PNG is the `png` crate with every filter tried at zlib level 9, the smallest
//! kept. Every size is the whole file the tool writes for that chunk, header included; the
//! paper counts a classical compressor's header once for the whole dataset, which
//! [`Baseline::header_bytes`] makes possible to reproduce.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

use super::modality::{AUDIO_RATE, PATCH_COLS, PATCH_ROWS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    Gzip,
    Lzma2,
    Png,
    Flac,
}

impl Baseline {
    pub const ALL: [Baseline; 4] = [
        Baseline::Gzip,
        Baseline::Lzma2,
        Baseline::Png,
        Baseline::Flac,
    ];

    /// The name in results.json.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Gzip => "gzip",
            Baseline::Lzma2 => "lzma2",
            Baseline::Png => "png",
            Baseline::Flac => "flac",
        }
    }

    /// How it is run, for the report.
    pub fn how(self) -> &'static str {
        match self {
            Baseline::Gzip => "gzip -9 -n",
            Baseline::Lzma2 => "xz -9e (LZMA2 in the .xz container)",
            Baseline::Png => {
                "PNG, 8-bit grayscale 64×32 (image patches' own shape), zlib level 9, best of all filters"
            }
            Baseline::Flac => "flac -8 -e -p, 8-bit unsigned mono 16 kHz, no padding, no seek table",
        }
    }

    /// Compressed size of `chunk`.
    pub fn compress(self, chunk: &[u8]) -> Result<usize> {
        match self {
            Baseline::Gzip => pipe("gzip", &["-9", "-n", "-c"], chunk),
            Baseline::Lzma2 => pipe("xz", &["-9e", "-c", "-T1"], chunk),
            Baseline::Png => png_best(chunk),
            Baseline::Flac => flac_best(chunk),
        }
        .with_context(|| format!("{} on a chunk of {} bytes", self.name(), chunk.len()))
    }

    /// What the paper takes as a header: the size of one zero byte compressed.
    pub fn header_bytes(self) -> Result<usize> {
        self.compress(&[0])
    }
}

fn pipe(cmd: &str, args: &[&str], data: &[u8]) -> Result<usize> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd} (is it installed?)"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("{cmd}: writer thread panicked"))??;
    if !out.status.success() {
        bail!(
            "{cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout.len())
}

/// The shape a chunk is given as an image: a patch's own 64 × 32 when it has a patch's
/// length, else one row per 64 bytes (the last row padded is never needed: callers pass
/// multiples of 64 or a single byte, which becomes a 1 × 1 image).
fn image_shape(len: usize) -> (u32, u32) {
    if len == PATCH_ROWS * PATCH_COLS {
        (PATCH_COLS as u32, PATCH_ROWS as u32)
    } else if len.is_multiple_of(PATCH_COLS) {
        (PATCH_COLS as u32, (len / PATCH_COLS) as u32)
    } else {
        (len as u32, 1)
    }
}

fn png_best(chunk: &[u8]) -> Result<usize> {
    let (w, h) = image_shape(chunk.len());
    let mut best = usize::MAX;
    let filters = [
        (
            png::FilterType::NoFilter,
            png::AdaptiveFilterType::NonAdaptive,
        ),
        (png::FilterType::Sub, png::AdaptiveFilterType::NonAdaptive),
        (png::FilterType::Up, png::AdaptiveFilterType::NonAdaptive),
        (png::FilterType::Avg, png::AdaptiveFilterType::NonAdaptive),
        (png::FilterType::Paeth, png::AdaptiveFilterType::NonAdaptive),
        (png::FilterType::Sub, png::AdaptiveFilterType::Adaptive),
    ];
    for (f, a) in filters {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Best);
            enc.set_filter(f);
            enc.set_adaptive_filter(a);
            let mut wr = enc.write_header()?;
            wr.write_image_data(chunk)?;
        }
        best = best.min(out.len());
    }
    Ok(best)
}

fn flac_best(chunk: &[u8]) -> Result<usize> {
    // flac writes a seekable file (and so its MD5 signature) only to a file, not a pipe.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lmz-flac-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (inp, outp) = (dir.join("in.raw"), dir.join("out.flac"));
    std::fs::write(&inp, chunk)?;
    let rate = format!("--sample-rate={AUDIO_RATE}");
    let out = Command::new("flac")
        .args([
            "-s",
            "-f",
            "--force-raw-format",
            "--endian=little",
            "--sign=unsigned",
            "--channels=1",
            "--bps=8",
            &rate,
            "-8",
            "-e",
            "-p",
            "--no-padding",
            "--no-seektable",
            "-o",
        ])
        .arg(&outp)
        .arg(&inp)
        .output()
        .context("cannot run flac (install the flac package)")?;
    ensure!(
        out.status.success(),
        "flac failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let n = std::fs::metadata(&outp)?.len() as usize;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smooth() -> Vec<u8> {
        (0..2048).map(|i| ((i % 64) * 2 + (i / 64)) as u8).collect()
    }

    #[test]
    fn png_is_a_valid_png_that_compresses_a_smooth_patch() {
        let n = png_best(&smooth()).unwrap();
        assert!(n < 1024, "{n}");
        let mut rng = crate::paper::draw::SplitMix64::new(3);
        let noise: Vec<u8> = (0..2048).map(|_| rng.next_u64() as u8).collect();
        assert!(png_best(&noise).unwrap() > 2048);
        assert!(png_best(&[0]).unwrap() > 50);
    }

    #[test]
    fn image_shapes() {
        assert_eq!(image_shape(2048), (64, 32));
        assert_eq!(image_shape(8192), (64, 128));
        assert_eq!(image_shape(1), (1, 1));
    }

    // The command-line baselines need their tools (CI installs them).
    #[test]
    fn command_line_baselines_shrink_redundant_bytes() {
        let data = b"the same words again and again, ".repeat(64);
        for b in [Baseline::Gzip, Baseline::Lzma2, Baseline::Flac] {
            let n = b.compress(&data[..2048]).unwrap();
            assert!(n < 2048, "{}: {n}", b.name());
            assert!(b.header_bytes().unwrap() > 10, "{}", b.name());
        }
    }
}
