//! The suite's plots, as PNG files: rates per modality beside the paper's figures, adjusted
//! rate against model size for datasets of 1 MB to 1 GB, and bits per byte against chunk
//! size for text.
//!
//! Text is drawn with a TrueType font read from the system (DejaVu Sans, Debian's
//! fonts-dejavu-core, or the file `$LMZ_PLOT_FONT` names): nothing is fetched at run time.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::rates;
use super::report::{Row, MODALITIES, PUBLISHED};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// A font for the plots, registered as plotters' "sans-serif".
pub struct Font(());

/// Finds and registers the font; an error naming the package if there is none.
pub fn font() -> Result<Font> {
    let path = std::env::var_os("LMZ_PLOT_FONT")
        .map(PathBuf::from)
        .or_else(|| FONT_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()))
        .context(
            "no font for the plots: install DejaVu Sans (Debian: apt-get install \
             fonts-dejavu-core) or set LMZ_PLOT_FONT to a .ttf file",
        )?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // plotters keeps registered fonts for the process: the bytes live as long.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{}: not a usable TrueType font", path.display()))?;
    Ok(Font(()))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// Draws every plot into `dir`; returns their paths.
pub fn all(rows: &[Row], dir: &Path, _font: &Font) -> Result<Vec<PathBuf>> {
    let a = dir.join("rates.png");
    rates_plot(rows, &a)?;
    let b = dir.join("adjusted.png");
    adjusted_plot(rows, &b)?;
    let c = dir.join("chunk_size.png");
    chunk_plot(rows, &c)?;
    Ok(vec![a, b, c])
}

fn color(i: usize) -> RGBColor {
    // As many as the rates plot has series (ours and the paper's), so none share a colour.
    const C: [RGBColor; 15] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(0, 0, 0),
        RGBColor(90, 90, 200),
        RGBColor(120, 60, 0),
        RGBColor(0, 110, 90),
        RGBColor(200, 160, 230),
    ];
    C[i % C.len()]
}

/// Rows of the main table: chunks of 2,048 bytes, and lmz's own archive row.
fn main_rows(rows: &[Row]) -> Vec<&Row> {
    rows.iter()
        .filter(|r| r.chunk_bytes == 2048 || r.compressor == "lmz")
        .collect()
}

fn rates_plot(rows: &[Row], path: &Path) -> Result<()> {
    let main = main_rows(rows);
    // Series: ours in table order, then the paper's figures.
    let mut series: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for r in &main {
        if !series.iter().any(|(n, _)| *n == r.compressor) {
            let v = MODALITIES
                .iter()
                .map(|m| {
                    main.iter()
                        .find(|x| x.compressor == r.compressor && x.modality == *m)
                        .map(|x| x.rate())
                })
                .collect();
            series.push((r.compressor.clone(), v));
        }
    }
    let mut paper_names: Vec<&str> = Vec::new();
    for p in PUBLISHED {
        if !paper_names.contains(&p.compressor) {
            paper_names.push(p.compressor);
        }
    }
    for n in paper_names {
        let v = MODALITIES
            .iter()
            .map(|m| {
                PUBLISHED
                    .iter()
                    .find(|p| p.compressor == n && p.modality == *m)
                    .map(|p| p.rate)
            })
            .collect();
        series.push((format!("paper: {n} (1 GB)"), v));
    }
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(1.0f64, |a, &b| a.max(b))
        // Headroom for the legend, drawn above the text group (whose model bars are short).
        * 1.45;
    let root = BitMapBackend::new(path, (1400, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Compression rate per modality (lower is better), chunks of 2,048 bytes",
            ("sans-serif", 26),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..3f64, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Ticks every half group; the ones at the groups' middles carry their names.
        .x_labels(7)
        .x_label_formatter(&|x| {
            let g = x - 0.5;
            if g >= 0.0 && g.fract().abs() < 1e-9 {
                MODALITIES
                    .get(g as usize)
                    .map(|m| m.to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("compressed / raw")
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .label_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    let k = series.len() as f64;
    let width = 0.84 / k;
    for (si, (name, vals)) in series.iter().enumerate() {
        let c = color(si);
        let bars: Vec<Rectangle<(f64, f64)>> = vals
            .iter()
            .enumerate()
            .filter_map(|(mi, v)| {
                v.map(|y| {
                    let x0 = mi as f64 + 0.08 + si as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.9, y)], c.filled())
                })
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn adjusted_plot(rows: &[Row], path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (1500, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (title, body) = root.split_vertically(40);
    title
        .draw(&Text::new(
            "Adjusted rate ((compressed + model file) / raw) against model size, for datasets of 1 MB to 1 GB (extrapolated from the measured rate)",
            (20, 10),
            ("sans-serif", 20),
        ))
        .map_err(err)?;
    let panels = body.split_evenly((1, 3));
    let sizes = [
        (1e6, "1 MB"),
        (1e7, "10 MB"),
        (1e8, "100 MB"),
        (1e9, "1 GB"),
    ];
    for (pi, m) in MODALITIES.iter().enumerate() {
        let lms: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                r.modality == *m
                    && r.chunk_bytes == 2048
                    && r.model_bytes > 0
                    && !r.compressor.ends_with("-ascii")
            })
            .collect();
        let best = rows
            .iter()
            .filter(|r| r.modality == *m && r.chunk_bytes == 2048 && r.header_bytes.is_some())
            .min_by(|a, b| a.rate().total_cmp(&b.rate()));
        let mut chart = ChartBuilder::on(&panels[pi])
            .caption(*m, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((5e7f64..5e8f64).log_scale(), (0.05f64..400f64).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(4)
            .x_desc("model file")
            .y_desc("adjusted rate")
            .x_label_formatter(&|x| format!("{:.0} MB", x / 1e6))
            .y_label_formatter(&|y| format!("{}%", y * 100.0))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for (si, (d, label)) in sizes.iter().enumerate() {
            let c = color(si);
            let mut pts: Vec<(f64, f64)> = lms
                .iter()
                .map(|r| {
                    (
                        r.model_bytes as f64,
                        rates::adjusted_at(r.rate(), r.model_bytes as f64, *d),
                    )
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(format!("{label} of data"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(err)?;
        }
        if let Some(b) = best {
            let y = b.rate();
            chart
                .draw_series(LineSeries::new(
                    vec![(5e7, y), (5e8, y)],
                    BLACK.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!(
                    "best classical: {} {:.1}%",
                    b.compressor,
                    y * 100.0
                ))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        }
        for r in &lms {
            chart
                .draw_series(std::iter::once(Text::new(
                    r.compressor.trim_start_matches("lmz-").to_string(),
                    (r.model_bytes as f64 * 1.04, 0.07),
                    ("sans-serif", 13),
                )))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn chunk_plot(rows: &[Row], path: &Path) -> Result<()> {
    let text: Vec<&Row> = rows.iter().filter(|r| r.modality == "text").collect();
    // The compressors measured at several sizes, and lmz's own row (one point).
    let mut names: Vec<&str> = Vec::new();
    for r in &text {
        let sizes = text.iter().filter(|x| x.compressor == r.compressor).count();
        if !names.contains(&r.compressor.as_str()) && (sizes > 1 || r.compressor == "lmz") {
            names.push(&r.compressor);
        }
    }
    let top = text.iter().map(|r| r.rate() * 8.0).fold(4.0f64, f64::max) * 1.05;
    let root = BitMapBackend::new(path, (1000, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Text: bits per byte against chunk (block) size, each chunk coded on its own",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((450f64..9000f64).log_scale(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("chunk bytes")
        .y_desc("bits per byte")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, n) in names.iter().enumerate() {
        let c = color(i);
        let mut pts: Vec<(f64, f64)> = text
            .iter()
            .filter(|r| r.compressor == *n)
            .map(|r| (r.chunk_bytes as f64, r.rate() * 8.0))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(*n)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(c: &str, m: &'static str, z: usize, model: u64, compressed: u64) -> Row {
        Row {
            modality: m,
            dataset: "d".into(),
            compressor: c.into(),
            how: String::new(),
            chunk_bytes: z,
            chunks: 4,
            raw_bytes: 8192,
            compressed_bytes: compressed,
            model_bytes: model,
            header_bytes: (model == 0).then_some(20),
            ideal_bits: None,
            paper_style_bytes: None,
            tokens: None,
            seconds: 0.0,
        }
    }

    #[test]
    fn plots_are_png_files() {
        let f = font().expect("a font for the plots (CI installs fonts-dejavu-core)");
        let mut rows = Vec::new();
        for m in MODALITIES {
            rows.push(row("gzip", m, 2048, 0, 3000));
            rows.push(row("lmz-smollm2-135m", m, 2048, 98_000_000, 1500));
            rows.push(row("lmz-gemma3-270m", m, 2048, 253_000_000, 1400));
        }
        rows.push(row("gzip", "text", 512, 0, 4000));
        let dir = tempfile::tempdir().unwrap();
        let paths = all(&rows, dir.path(), &f).unwrap();
        assert_eq!(paths.len(), 3);
        for p in paths {
            let b = std::fs::read(&p).unwrap();
            assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
            let dec = png::Decoder::new(std::io::Cursor::new(b));
            let r = dec.read_info().unwrap();
            assert!(r.info().width >= 1000);
        }
    }
}
