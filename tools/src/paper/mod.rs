//! `lmz bench --suite paper`: the experiments of "Language Modeling Is Compression"
//! (Delétang et al., 2023) on real text, images and speech, with lmz's models beside
//! gzip, LZMA2, PNG and FLAC on the same 2,048-byte chunks.
//!
//! One run: fetch and verify the data ([`data`]), turn it into each modality's bytes
//! ([`modality`]), draw the measured bytes with a seed ([`draw`]), run the classical
//! compressors ([`baseline`]) and lmz's models ([`lm`]) on the same chunks, and write
//! results.json, results.md and PNG plots ([`report`], [`plot`]).

pub mod baseline;
pub mod data;
pub mod draw;
pub mod lm;
pub mod modality;
pub mod plot;
pub mod rates;
pub mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use lmz::model::Model;

use crate::engine::{self, Engine};
use crate::ModelArgs;
use baseline::Baseline;
use draw::{CHUNK, UNIT};
use lm::Mapping;
use report::Row;

/// Bytes per modality when `--limit` is not given: two units of 8,192 bytes (eight
/// 2,048-byte chunks) per modality. Measured on a quiet 2-core machine (README): every model
/// at 8,192 bytes took 7.6 minutes, Gemma 3 270M (llama.cpp, one token per step) most of it,
/// so twice that leaves room inside 30 minutes for a machine that is not quiet.
pub const DEFAULT_LIMIT: usize = 16 * 1024;

/// Chunk sizes of the text sweep (the main table's is [`CHUNK`]).
pub const SWEEP: [usize; 5] = [512, 1024, 2048, 4096, 8192];

/// The models the suite can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SuiteModel {
    /// lmz's built-in order-1 byte model (no model file).
    Order1,
    /// SmolLM2-135M-Instruct Q4_1, the default model (portable engine).
    #[value(name = "smollm2-135m")]
    Smollm2,
    /// Gemma 3 270M Q4_K_M (through llama.cpp: the portable engine does not run it).
    #[value(name = "gemma3-270m")]
    Gemma3,
}

impl SuiteModel {
    pub const ALL: [SuiteModel; 3] = [SuiteModel::Order1, SuiteModel::Smollm2, SuiteModel::Gemma3];

    pub fn id(self) -> &'static str {
        match self {
            SuiteModel::Order1 => "order1",
            SuiteModel::Smollm2 => "smollm2-135m",
            SuiteModel::Gemma3 => "gemma3-270m",
        }
    }
}

pub struct Options {
    pub limit: usize,
    pub out: PathBuf,
    pub seed: u64,
    pub models: Vec<SuiteModel>,
    pub json: bool,
    pub show_progress: bool,
    /// The command line, recorded in results.json.
    pub command: String,
}

/// One modality's drawn bytes.
struct Dataset {
    modality: &'static str,
    name: String,
    pool_bytes: usize,
    units: Vec<Vec<u8>>,
}

fn datasets(limit: usize, seed: u64) -> Result<Vec<Dataset>> {
    let text = data::fetch(&data::GENSIM)?;
    let mut imgs = data::fetch(&data::SKIMAGE)?;
    imgs.extend(data::fetch(&data::JXL_TESTDATA)?);
    let wavs = data::fetch(&data::POCKETSPHINX_TESTDATA)?;
    let pools = [
        (
            "text",
            "enwiki XML dump (gensim 4.4.0 test data)".to_string(),
            modality::text(&text[0])?,
        ),
        (
            "image",
            format!(
                "{} photographs (scikit-image 0.26.0, Debian libjxl-testdata), 8-bit grayscale 32×64 patches",
                imgs.len()
            ),
            modality::images(&imgs)?,
        ),
        (
            "audio",
            format!(
                "{} LibriVox recordings (Debian pocketsphinx-testdata), 16 kHz, 8-bit samples",
                wavs.len()
            ),
            modality::audio(&wavs)?,
        ),
    ];
    let mut out = Vec::new();
    for (i, (m, name, pool)) in pools.into_iter().enumerate() {
        // Each modality its own stream of the seed, so that one pool's size cannot shift
        // another's draw.
        let units = draw::draw(&pool, limit, seed.wrapping_add(i as u64))
            .with_context(|| format!("drawing the {m} chunks"))?;
        out.push(Dataset {
            modality: m,
            name,
            pool_bytes: pool.bytes(),
            units,
        });
    }
    Ok(out)
}

/// A loaded model and what the rows say about it.
struct Loaded {
    id: SuiteModel,
    model: Box<dyn Model>,
    engine: &'static str,
    file_bytes: u64,
    width: usize,
}

fn load(id: SuiteModel, template: &ModelArgs) -> Result<Loaded> {
    let block = UNIT as u32;
    let (model, engine, file_bytes) = match id {
        SuiteModel::Order1 => {
            let m = engine::load_for_pack(Engine::Order1, block, template)?.context("order1")?;
            (m, "order1", 0)
        }
        _ => {
            let args = ModelArgs {
                model: Some(PathBuf::from(id.id())),
                ..template.clone()
            };
            // `auto`, as `lmz pack` does: the portable engine where it runs the model.
            let m = engine::load_for_pack(Engine::Auto, block, &args)?.context("model")?;
            let engine = match m.pin().kind {
                lmz::format::ModelKind::Portable => "portable",
                _ => "llama",
            };
            let size = m.pin().size;
            (m, engine, size)
        }
    };
    let width = template.width(Some(model.as_ref()));
    // The once-per-process determinism probes are not part of what is timed.
    model.lockstep_exact(width);
    model.chunks_exact(width);
    Ok(Loaded {
        id,
        model,
        engine,
        file_bytes,
        width,
    })
}

/// Which LM jobs run: (modality index, chunk size, mapping).
fn lm_jobs(id: SuiteModel) -> Vec<(usize, usize, Mapping)> {
    let mut jobs = vec![
        (0, CHUNK, Mapping::Raw),
        (1, CHUNK, Mapping::Raw),
        (2, CHUNK, Mapping::Raw),
    ];
    // The ASCII comparison and the chunk-size sweep for the fast model and the default one
    // only: Gemma codes one block and one token per step on a CPU (its kernels are not
    // batch-invariant there), about 7× slower per byte, and would triple the suite's time.
    if id != SuiteModel::Gemma3 {
        jobs.extend([(1, CHUNK, Mapping::Ascii7), (2, CHUNK, Mapping::Ascii7)]);
        jobs.extend(
            SWEEP
                .iter()
                .filter(|&&z| z != CHUNK)
                .map(|&z| (0, z, Mapping::Raw)),
        );
    }
    jobs
}

pub fn run(opts: Options, template: &ModelArgs) -> Result<()> {
    let t_all = Instant::now();
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    // Fail before the long part if the plots could not be drawn.
    let font = plot::font()?;
    let sets = datasets(opts.limit, opts.seed)?;
    let per = (opts.limit / UNIT * UNIT) as u64;
    let mut rows: Vec<Row> = Vec::new();

    // Classical compressors: fast; every modality, the paper's chunk size, plus the sweep.
    for (i, d) in sets.iter().enumerate() {
        for b in Baseline::ALL {
            let sizes: &[usize] = if i == 0 && matches!(b, Baseline::Gzip | Baseline::Lzma2) {
                &SWEEP
            } else {
                &[CHUNK]
            };
            for &z in sizes {
                let t0 = Instant::now();
                let chunks = draw::chunks(&d.units, z);
                let mut total = 0u64;
                for c in &chunks {
                    total += b.compress(c)? as u64;
                }
                rows.push(Row {
                    modality: d.modality,
                    dataset: d.name.clone(),
                    compressor: b.name().into(),
                    how: b.how().into(),
                    chunk_bytes: z,
                    chunks: chunks.len() as u64,
                    raw_bytes: per,
                    compressed_bytes: total,
                    model_bytes: 0,
                    header_bytes: Some(b.header_bytes()? as u64),
                    ideal_bits: None,
                    paper_style_bytes: None,
                    tokens: None,
                    seconds: t0.elapsed().as_secs_f64(),
                });
            }
        }
    }

    // lmz's models: the slow part, under a progress bar.
    let mut work: u64 = opts
        .models
        .iter()
        .map(|&m| lm_jobs(m).len() as u64 * per)
        .sum();
    if opts.models.contains(&SuiteModel::Smollm2) {
        work += 3 * per;
    }
    let bar = crate::progress(work, !opts.show_progress);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:32} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_bar}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut skipped = Vec::new();
    for &id in &opts.models {
        bar.set_message(format!("loading {}", id.id()));
        let l = match load(id, template) {
            Ok(l) => l,
            Err(e) if id == SuiteModel::Gemma3 => {
                // Only Gemma may be missing (a build without llama.cpp): say so in the results.
                log::warn!("{}: skipped: {e:#}", id.id());
                skipped.push(json!({"model": id.id(), "reason": format!("{e:#}")}));
                bar.inc(lm_jobs(id).len() as u64 * per);
                continue;
            }
            Err(e) => return Err(e.context(format!("loading {}", id.id()))),
        };
        for (mi, z, mapping) in lm_jobs(id) {
            let d = &sets[mi];
            let ascii = mapping == Mapping::Ascii7;
            bar.set_message(format!(
                "{} {}{} /{z}",
                l.id.id(),
                d.modality,
                if ascii { " ascii" } else { "" }
            ));
            let chunks = draw::chunks(&d.units, z);
            let c = lm::code_chunks(l.model.as_ref(), l.width, &chunks, mapping, |n| bar.inc(n))
                .with_context(|| format!("{} on {}", l.id.id(), d.modality))?;
            rows.push(Row {
                modality: d.modality,
                dataset: d.name.clone(),
                compressor: format!("lmz-{}{}", l.id.id(), if ascii { "-ascii" } else { "" }),
                how: format!(
                    "{} engine, {}each chunk one model block from an empty context, range-coder payload{}",
                    l.engine,
                    if ascii { "bytes >> 1 (the paper's ASCII mapping), " } else { "raw bytes, " },
                    if ascii { " + the dropped low bits stored (1 bit per byte)" } else { "" }
                ),
                chunk_bytes: z,
                chunks: c.chunks,
                raw_bytes: c.raw_bytes,
                compressed_bytes: c.payload_bytes + c.side_bytes,
                model_bytes: l.file_bytes,
                header_bytes: None,
                ideal_bits: Some(c.ideal_bits),
                paper_style_bytes: ascii.then_some(c.payload_bytes as f64 * 8.0 / 7.0),
                tokens: Some(c.tokens),
                seconds: c.seconds,
            });
        }
        if id == SuiteModel::Smollm2 {
            // lmz as a user runs it: `lmz pack` defaults (this model, the auto engine, 8 KiB
            // blocks, zstd or storage where the model loses), the whole archive counted.
            for d in &sets {
                bar.set_message(format!("lmz pack {}", d.modality));
                let t0 = Instant::now();
                let data: Vec<u8> = d.units.concat();
                let opts_w = lmz::archive::WriterOptions {
                    width: l.width,
                    ..Default::default()
                };
                let mut w = lmz::archive::Writer::new(Vec::new(), Some(l.model.as_ref()), opts_w)?;
                w.add_file(
                    d.modality.as_bytes(),
                    lmz::archive::Meta {
                        mode: 0o644,
                        ..Default::default()
                    },
                    data.len() as u64,
                    &mut data.as_slice(),
                )?;
                let (_, stats) = w.finish()?;
                bar.inc(per);
                rows.push(Row {
                    modality: d.modality,
                    dataset: d.name.clone(),
                    compressor: "lmz".into(),
                    how: format!(
                        "lmz pack defaults: {} ({} engine), {}-byte blocks, model, zstd -19 or stored per block, whole archive",
                        l.id.id(),
                        l.engine,
                        lmz::archive::WriterOptions::default().block_size
                    ),
                    chunk_bytes: lmz::archive::WriterOptions::default().block_size as usize,
                    chunks: d.units.len() as u64,
                    raw_bytes: data.len() as u64,
                    compressed_bytes: stats.archive_bytes,
                    model_bytes: l.file_bytes,
                    header_bytes: None,
                    ideal_bits: None,
                    paper_style_bytes: None,
                    tokens: Some(stats.kept_tokens),
                    seconds: t0.elapsed().as_secs_f64(),
                });
            }
        }
    }
    bar.finish_and_clear();

    let seconds = t_all.elapsed().as_secs_f64();
    let header = format!(
        "Command: `{}` (seed {}, {} bytes per modality, {:.1} minutes on {} cores)\n\n\
         Data: {}.\n",
        opts.command,
        opts.seed,
        per,
        seconds / 60.0,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        sets.iter()
            .map(|d| format!(
                "{}: {} (drawn from {} bytes)",
                d.modality, d.name, d.pool_bytes
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let breaks = break_evens(&rows);
    let mut md = report::markdown(&rows, &header);
    if !breaks.is_empty() {
        md.push_str(
            "\n### Where each model pays for itself (extrapolated): the dataset size above which its adjusted rate beats the best classical compressor\n\n\
             | model | modality | rate | best classical | rate | break-even dataset size |\n|---|---|---:|---|---:|---:|\n",
        );
        for b in &breaks {
            md.push_str(&format!(
                "| {} | {} | {:.1}% | {} | {:.1}% | {} |\n",
                b["compressor"].as_str().unwrap_or(""),
                b["modality"].as_str().unwrap_or(""),
                b["rate"].as_f64().unwrap_or(0.0) * 100.0,
                b["baseline"].as_str().unwrap_or(""),
                b["baseline_rate"].as_f64().unwrap_or(0.0) * 100.0,
                b["break_even_bytes"].as_f64().map_or(
                    "never (its rate is not lower)".into(),
                    |d| format!("{:.0} MB", d / 1e6)
                ),
            ));
        }
    }
    let plots = plot::all(&rows, &opts.out, &font)?;
    let doc = json!({
        "suite": "paper",
        "command": opts.command,
        "seed": opts.seed,
        "limit_bytes_per_modality": per,
        "chunk_bytes": CHUNK,
        "unit_bytes": UNIT,
        "lmz_version": env!("CARGO_PKG_VERSION"),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "seconds": seconds,
        "datasets": sets.iter().map(|d| json!({"modality": d.modality, "dataset": d.name, "pool_bytes": d.pool_bytes, "drawn_bytes": per})).collect::<Vec<_>>(),
        "published": report::published_json(),
        "skipped": skipped,
        "plots": plots.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect::<Vec<_>>(),
        "break_even": breaks,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc)?;
    let jp = opts.out.join("results.json");
    std::fs::write(&jp, &text).with_context(|| format!("writing {}", jp.display()))?;
    let mp = opts.out.join("results.md");
    std::fs::write(&mp, &md).with_context(|| format!("writing {}", mp.display()))?;
    if opts.json {
        println!("{text}");
    } else {
        println!("{md}");
        println!(
            "Written: {}, {} and {} plots",
            jp.display(),
            mp.display(),
            plots.len()
        );
    }
    Ok(())
}

/// For each model row (chunks of 2,048 bytes, raw bytes), the dataset size from which its
/// adjusted rate beats the best classical compressor on that modality (extrapolated).
fn break_evens(rows: &[Row]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| {
        r.chunk_bytes == CHUNK && r.model_bytes > 0 && !r.compressor.ends_with("-ascii")
    }) {
        let best = rows
            .iter()
            .filter(|b| {
                b.modality == r.modality && b.chunk_bytes == CHUNK && b.header_bytes.is_some()
            })
            .min_by(|a, b| a.rate().total_cmp(&b.rate()));
        if let Some(b) = best {
            out.push(json!({
                "compressor": r.compressor,
                "modality": r.modality,
                "rate": r.rate(),
                "model_bytes": r.model_bytes,
                "baseline": b.compressor,
                "baseline_rate": b.rate(),
                "extrapolated": true,
                "break_even_bytes": rates::break_even(r.rate(), r.model_bytes as f64, b.rate()),
            }));
        }
    }
    out
}
