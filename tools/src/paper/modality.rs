//! Turning the fetched files into the bytes each modality is measured on, as the paper
//! does (Delétang et al. 2023, and its published code):
//!
//! - text: the Wikipedia XML as it is (UTF-8 bytes);
//! - image: each photograph to 8-bit grayscale (the mean of R, G and B, truncated; 16-bit
//!   channels keep their high byte; alpha is dropped), cut into non-overlapping patches of
//!   32 rows × 64 columns, row-major, 2,048 bytes each;
//! - audio: 16 kHz mono 16-bit PCM, each sample to one unsigned byte: its high byte plus
//!   128 (the paper's `audioop.lin2lin(x, 2, 1)` then `bias(…, 128)`). Recordings of another
//!   rate are refused, never resampled.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// Height and width of an image patch (2,048 bytes).
pub const PATCH_ROWS: usize = 32;
pub const PATCH_COLS: usize = 64;
/// The one sample rate the audio modality takes.
pub const AUDIO_RATE: u32 = 16_000;

/// What one modality's bytes are drawn from: contiguous segments (a text, one recording),
/// or patches that are units on their own.
pub enum Pool {
    /// Windows are drawn inside each segment, never across two.
    Segments(Vec<Vec<u8>>),
    /// Image patches of [`PATCH_ROWS`] × [`PATCH_COLS`] bytes.
    Patches(Vec<Vec<u8>>),
}

impl Pool {
    pub fn bytes(&self) -> usize {
        match self {
            Pool::Segments(s) | Pool::Patches(s) => s.iter().map(Vec::len).sum(),
        }
    }
}

/// Text: the bzip2-compressed XML, decompressed with `bzip2 -dc`.
pub fn text(bz2: &Path) -> Result<Pool> {
    let out = Command::new("bzip2")
        .arg("-dc")
        .arg(bz2)
        .output()
        .context("cannot run bzip2 (install the bzip2 package)")?;
    ensure!(
        out.status.success(),
        "bzip2 -dc {} failed: {}",
        bz2.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(Pool::Segments(vec![out.stdout]))
}

/// Images: every patch of every photograph, in the order given.
pub fn images(pngs: &[impl AsRef<Path>]) -> Result<Pool> {
    let mut patches = Vec::new();
    for p in pngs {
        let p = p.as_ref();
        let (w, h, gray) = grayscale_png(p).with_context(|| format!("decoding {}", p.display()))?;
        patches.extend(cut_patches(&gray, w, h));
    }
    Ok(Pool::Patches(patches))
}

/// A PNG as 8-bit grayscale: width, height, pixels row-major.
pub fn grayscale_png(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let file = std::fs::File::open(path)?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    // Palettes and low bit depths expanded to 8 bits; 16-bit channels keep their high byte.
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => bail!("palette left unexpanded"),
    };
    ensure!(
        info.bit_depth == png::BitDepth::Eight,
        "not 8 bits after expansion"
    );
    let line = info.line_size;
    let mut gray = Vec::with_capacity(w * h);
    for row in buf[..line * h].chunks(line) {
        for px in row[..w * channels].chunks(channels) {
            gray.push(match channels {
                1 | 2 => px[0],
                _ => to_gray(px[0], px[1], px[2]),
            });
        }
    }
    Ok((w, h, gray))
}

/// The paper's grayscale: `np.mean(rgb).astype(np.uint8)`, the mean truncated.
pub fn to_gray(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 + g as u32 + b as u32) / 3) as u8
}

/// Non-overlapping [`PATCH_ROWS`] × [`PATCH_COLS`] patches, row-major over the grid, each
/// row-major; the right and bottom margins that do not fill a patch are left out.
pub fn cut_patches(gray: &[u8], w: usize, h: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for pr in 0..h / PATCH_ROWS {
        for pc in 0..w / PATCH_COLS {
            let mut patch = Vec::with_capacity(PATCH_ROWS * PATCH_COLS);
            for r in 0..PATCH_ROWS {
                let start = (pr * PATCH_ROWS + r) * w + pc * PATCH_COLS;
                patch.extend_from_slice(&gray[start..start + PATCH_COLS]);
            }
            out.push(patch);
        }
    }
    out
}

/// Audio: each recording as one segment of 8-bit samples.
pub fn audio(wavs: &[impl AsRef<Path>]) -> Result<Pool> {
    let mut segs = Vec::new();
    for p in wavs {
        let p = p.as_ref();
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let samples = wav_pcm16_mono(&bytes).with_context(|| format!("{}", p.display()))?;
        segs.push(samples.iter().map(|&s| sample_to_byte(s)).collect());
    }
    Ok(Pool::Segments(segs))
}

/// One 16-bit sample as the paper's byte: the high byte (arithmetic shift), plus 128.
pub fn sample_to_byte(s: i16) -> u8 {
    ((s >> 8) as i8 as u8).wrapping_add(128)
}

/// The samples of a 16 kHz, 16-bit, mono PCM WAV file.
pub fn wav_pcm16_mono(b: &[u8]) -> Result<Vec<i16>> {
    ensure!(
        b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WAVE",
        "not a RIFF WAVE file"
    );
    let u16le = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32le = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let mut at = 12;
    let mut fmt = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let len = u32le(at + 4) as usize;
        let body = at + 8;
        let end = body.checked_add(len).filter(|&e| e <= b.len());
        match id {
            b"fmt " => {
                ensure!(len >= 16 && end.is_some(), "truncated fmt chunk");
                fmt = Some((
                    u16le(body),
                    u16le(body + 2),
                    u32le(body + 4),
                    u16le(body + 14),
                ));
            }
            b"data" => {
                let Some((format, channels, rate, bits)) = fmt else {
                    bail!("data chunk before fmt chunk");
                };
                ensure!(
                    format == 1 && channels == 1 && bits == 16,
                    "not 16-bit mono PCM (format {format}, {channels} channels, {bits} bits)"
                );
                ensure!(
                    rate == AUDIO_RATE,
                    "sample rate {rate} Hz: the suite takes {AUDIO_RATE} Hz recordings only and \
                     does not resample"
                );
                // A truncated last chunk is read as far as it goes, in whole samples.
                let data = &b[body..end.unwrap_or(b.len())];
                return Ok(data
                    .chunks_exact(2)
                    .map(|s| i16::from_le_bytes([s[0], s[1]]))
                    .collect());
            }
            _ => {}
        }
        at = body + len + (len & 1);
    }
    bail!("no data chunk")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let mut b = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"LIST\x04\0\0\0abcd");
        b.extend_from_slice(b"data");
        b.extend_from_slice(&((samples.len() * 2) as u32).to_le_bytes());
        for s in samples {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    #[test]
    fn wav_samples_are_read_past_other_chunks() {
        let s = [0, 1, -1, i16::MAX, i16::MIN, 256, -256];
        assert_eq!(wav_pcm16_mono(&wav(16_000, 1, &s)).unwrap(), s);
    }

    #[test]
    fn other_rates_and_stereo_are_refused_not_resampled() {
        let e = wav_pcm16_mono(&wav(8_000, 1, &[0; 4])).unwrap_err();
        assert!(e.to_string().contains("8000 Hz"), "{e}");
        assert!(wav_pcm16_mono(&wav(16_000, 2, &[0; 4])).is_err());
        assert!(wav_pcm16_mono(b"RIFF\0\0\0\0WAVE").is_err());
        assert!(wav_pcm16_mono(b"not a wav").is_err());
    }

    #[test]
    fn samples_become_the_papers_bytes() {
        // audioop.lin2lin(x, 2, 1) keeps the high byte (rounding toward −∞); bias adds 128.
        assert_eq!(sample_to_byte(0), 128);
        assert_eq!(sample_to_byte(255), 128);
        assert_eq!(sample_to_byte(256), 129);
        assert_eq!(sample_to_byte(-1), 127);
        assert_eq!(sample_to_byte(i16::MAX), 255);
        assert_eq!(sample_to_byte(i16::MIN), 0);
    }

    #[test]
    fn gray_is_the_truncated_mean() {
        assert_eq!(to_gray(0, 0, 2), 0);
        assert_eq!(to_gray(1, 1, 2), 1);
        assert_eq!(to_gray(255, 255, 255), 255);
    }

    #[test]
    fn patches_are_row_major_and_leave_the_margins() {
        let (w, h) = (130, 70); // 2 × 2 patches, margins of 2 columns and 6 rows
        let gray: Vec<u8> = (0..w * h).map(|i| (i % 251) as u8).collect();
        let p = cut_patches(&gray, w, h);
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|x| x.len() == 2048));
        // Patch 1 is the top-right one: its first row starts at column 64 of row 0.
        assert_eq!(&p[1][..64], &gray[64..128]);
        // Patch 2 is bottom-left: row 32.
        assert_eq!(&p[2][64..128], &gray[33 * w..33 * w + 64]);
    }
}
