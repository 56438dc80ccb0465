//! The suite's results: rows in results.json's schema, and the Markdown tables.

use serde_json::{json, Value};

use super::rates;

/// One compressor on one modality at one chunk size.
#[derive(Clone, Debug)]
pub struct Row {
    pub modality: &'static str,
    pub dataset: String,
    pub compressor: String,
    /// How it was run (tool and flags, engine and model).
    pub how: String,
    pub chunk_bytes: usize,
    pub chunks: u64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    /// Bytes of the model file the decompressor needs (0 for classical compressors and
    /// lmz's built-in order-1 model).
    pub model_bytes: u64,
    /// Classical compressors: the size of one zero byte compressed (the paper's header).
    pub header_bytes: Option<u64>,
    /// Language models: Σ −log2 p of the coded tokens.
    pub ideal_bits: Option<f64>,
    /// ASCII-mapped rows: the paper's figure, coded size × 8/7 without the stored bits.
    pub paper_style_bytes: Option<f64>,
    pub tokens: Option<u64>,
    pub seconds: f64,
}

impl Row {
    pub fn rate(&self) -> f64 {
        rates::rate(self.compressed_bytes as f64, self.raw_bytes as f64)
    }

    pub fn adjusted_rate(&self) -> f64 {
        rates::adjusted(
            self.compressed_bytes as f64,
            self.model_bytes as f64,
            self.raw_bytes as f64,
        )
    }

    /// The rate with the header counted once, as the paper counts classical compressors.
    pub fn rate_header_once(&self) -> Option<f64> {
        self.header_bytes.map(|h| {
            rates::rate(
                rates::header_once(self.compressed_bytes as f64, h as f64, self.chunks as f64),
                self.raw_bytes as f64,
            )
        })
    }

    pub fn to_json(&self) -> Value {
        let raw = self.raw_bytes as f64;
        json!({
            "modality": self.modality,
            "dataset": self.dataset,
            "compressor": self.compressor,
            "how": self.how,
            "chunk_bytes": self.chunk_bytes,
            "chunks": self.chunks,
            "raw_bytes": self.raw_bytes,
            "compressed_bytes": self.compressed_bytes,
            "model_bytes": self.model_bytes,
            "rate": self.rate(),
            "adjusted_rate": self.adjusted_rate(),
            "bits_per_byte": self.rate() * 8.0,
            "rate_header_once": self.rate_header_once(),
            "header_bytes": self.header_bytes,
            "ideal_rate": self.ideal_bits.map(|b| b / 8.0 / raw),
            "paper_style_rate": self.paper_style_bytes.map(|b| b / raw),
            "tokens": self.tokens,
            "seconds": self.seconds,
            "extrapolated_1gb": {
                "extrapolated": true,
                "raw_bytes": rates::GB,
                "rate": self.rate(),
                "adjusted_rate": rates::adjusted_at(self.rate(), self.model_bytes as f64, rates::GB),
            },
        })
    }
}

/// A figure from Table 1 of Delétang et al. (2023), quoted where we can cite it.
pub struct Published {
    pub modality: &'static str,
    pub compressor: &'static str,
    pub rate: f64,
}

/// The published figures this suite quotes: those stated in the paper's abstract (its
/// Table 1, raw rates on 1 GB in chunks of 2,048 bytes). The rest of the table is not
/// quoted here because we could not check it against the paper.
pub const PUBLISHED: &[Published] = &[
    Published {
        modality: "image",
        compressor: "Chinchilla 70B",
        rate: 0.434,
    },
    Published {
        modality: "image",
        compressor: "png",
        rate: 0.585,
    },
    Published {
        modality: "audio",
        compressor: "Chinchilla 70B",
        rate: 0.164,
    },
    Published {
        modality: "audio",
        compressor: "flac",
        rate: 0.303,
    },
];

pub fn published_json() -> Value {
    Value::Array(
        PUBLISHED
            .iter()
            .map(|p| json!({"modality": p.modality, "compressor": p.compressor, "rate": p.rate,
                "source": "Delétang et al. 2023, Language Modeling Is Compression, abstract and Table 1 (1 GB, chunks of 2,048 bytes)"}))
            .collect(),
    )
}

pub const MODALITIES: [&str; 3] = ["text", "image", "audio"];

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.1}%", v * 100.0))
}

/// The Markdown report: Table 1 (raw rates beside the paper's), adjusted rates measured
/// and extrapolated, and the text chunk-size sweep.
pub fn markdown(rows: &[Row], header: &str) -> String {
    let mut s = String::new();
    s.push_str(header);
    // The paper's chunk size, and lmz as `lmz pack` runs it (its own block size).
    let main: Vec<&Row> = rows
        .iter()
        .filter(|r| r.chunk_bytes == 2048 || r.compressor == "lmz")
        .collect();
    let mut names: Vec<&str> = Vec::new();
    for r in &main {
        if !names.contains(&r.compressor.as_str()) {
            names.push(&r.compressor);
        }
    }
    let find = |name: &str, m: &str| {
        main.iter()
            .find(|r| r.compressor == name && r.modality == m)
    };
    s.push_str(
        "\n### Raw compression rate (compressed / raw), chunks of 2,048 bytes\n\n\
         | compressor | text | image | audio | paper: image | paper: audio |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let paper = |c: &str, m: &str| {
        PUBLISHED
            .iter()
            .find(|p| p.compressor == c && p.modality == m)
            .map(|p| p.rate)
    };
    for n in &names {
        let cells: Vec<String> = MODALITIES
            .iter()
            .map(|m| pct(find(n, m).map(|r| r.rate())))
            .collect();
        s.push_str(&format!(
            "| {n} | {} | {} | {} | {} | {} |\n",
            cells[0],
            cells[1],
            cells[2],
            pct(paper(n, "image")),
            pct(paper(n, "audio"))
        ));
    }
    s.push_str(&format!(
        "| Chinchilla 70B (paper) | – | – | – | {} | {} |\n",
        pct(paper("Chinchilla 70B", "image")),
        pct(paper("Chinchilla 70B", "audio"))
    ));
    s.push_str(
        "\n### Classical compressors with the header counted once (the paper's convention)\n\n\
         | compressor | text | image | audio |\n|---|---:|---:|---:|\n",
    );
    for n in &names {
        if MODALITIES
            .iter()
            .any(|m| find(n, m).is_some_and(|r| r.header_bytes.is_some()))
        {
            let c: Vec<String> = MODALITIES
                .iter()
                .map(|m| pct(find(n, m).and_then(|r| r.rate_header_once())))
                .collect();
            s.push_str(&format!("| {n} | {} | {} | {} |\n", c[0], c[1], c[2]));
        }
    }
    s.push_str(
        "\n### ASCII mapping: the paper's figure (coded 7-bit symbols × 8/7, lossy) beside the lossless one (7-bit symbols + the dropped bits stored)\n\n\
         | model | image, paper's way | image, lossless | audio, paper's way | audio, lossless |\n|---|---:|---:|---:|---:|\n",
    );
    for n in &names {
        if let (Some(i), Some(a)) = (find(n, "image"), find(n, "audio")) {
            if i.paper_style_bytes.is_some() {
                let ps = |r: &Row| r.paper_style_bytes.map(|b| b / r.raw_bytes as f64);
                s.push_str(&format!(
                    "| {n} | {} | {} | {} | {} |\n",
                    pct(ps(i)),
                    pct(Some(i.rate())),
                    pct(ps(a)),
                    pct(Some(a.rate()))
                ));
            }
        }
    }
    s.push_str(
        "\n### Adjusted rate ((compressed + model file) / raw): as measured, and extrapolated to 1 GB\n\n\
         | compressor | model file | text | image | audio | text, 1 GB (extrapolated) | image, 1 GB (extrapolated) | audio, 1 GB (extrapolated) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in &names {
        let any = MODALITIES.iter().find_map(|m| find(n, m));
        let Some(any) = any else { continue };
        let meas: Vec<String> = MODALITIES
            .iter()
            .map(|m| pct(find(n, m).map(|r| r.adjusted_rate())))
            .collect();
        let ext: Vec<String> = MODALITIES
            .iter()
            .map(|m| {
                pct(find(n, m)
                    .map(|r| rates::adjusted_at(r.rate(), r.model_bytes as f64, rates::GB)))
            })
            .collect();
        s.push_str(&format!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} |\n",
            if any.model_bytes == 0 {
                "–".to_string()
            } else {
                format!("{:.1} MB", any.model_bytes as f64 / 1e6)
            },
            meas[0],
            meas[1],
            meas[2],
            ext[0],
            ext[1],
            ext[2]
        ));
    }
    let sweep: Vec<&Row> = rows.iter().filter(|r| r.modality == "text").collect();
    let mut sizes: Vec<usize> = sweep.iter().map(|r| r.chunk_bytes).collect();
    sizes.sort();
    sizes.dedup();
    if sizes.len() > 1 {
        s.push_str("\n### Text: bits per byte against chunk (block) size\n\n| compressor |");
        for z in &sizes {
            s.push_str(&format!(" {z} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(sizes.len()));
        s.push('\n');
        let mut cn: Vec<&str> = Vec::new();
        for r in &sweep {
            if !cn.contains(&r.compressor.as_str()) {
                cn.push(&r.compressor);
            }
        }
        for n in cn {
            s.push_str(&format!("| {n} |"));
            for z in &sizes {
                let v = sweep
                    .iter()
                    .find(|r| r.compressor == n && r.chunk_bytes == *z)
                    .map_or("–".into(), |r| format!("{:.3}", r.rate() * 8.0));
                s.push_str(&format!(" {v} |"));
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(compressor: &str, modality: &'static str, model: u64) -> Row {
        Row {
            modality,
            dataset: "d".into(),
            compressor: compressor.into(),
            how: String::new(),
            chunk_bytes: 2048,
            chunks: 4,
            raw_bytes: 8192,
            compressed_bytes: 2048,
            model_bytes: model,
            header_bytes: (model == 0).then_some(20),
            ideal_bits: None,
            paper_style_bytes: None,
            tokens: None,
            seconds: 1.0,
        }
    }

    #[test]
    fn json_rows_have_the_issue_schema_and_label_the_extrapolation() {
        let v = row("lmz-x", "text", 8192).to_json();
        for k in [
            "modality",
            "dataset",
            "compressor",
            "chunk_bytes",
            "raw_bytes",
            "compressed_bytes",
            "rate",
            "adjusted_rate",
        ] {
            assert!(!v[k].is_null(), "{k}");
        }
        assert_eq!(v["rate"], 0.25);
        assert_eq!(v["adjusted_rate"], 1.25);
        assert_eq!(v["extrapolated_1gb"]["extrapolated"], true);
    }

    #[test]
    fn markdown_puts_the_papers_figures_beside_ours() {
        let md = markdown(&[row("png", "image", 0), row("flac", "audio", 0)], "");
        assert!(md.contains("| png | – | 25.0% | – | 58.5% | – |"), "{md}");
        assert!(md.contains("Chinchilla 70B (paper) | – | – | – | 43.4% | 16.4%"));
        // Header once: 2048 − 3 × 20 bytes over 8192.
        assert!(md.contains("24.3%"), "{md}");
    }
}
