//! `lmz bench`: lmz next to xz -9 and zstd -19 on the same bytes, in one run.
//!
//! For each file (or its first `--limit` bytes): pack it into an in-memory archive, unpack
//! it and compare, and run the baselines. Reports bits per byte of the whole archive, the
//! model's ideal bits per byte (Σ −log2 p over the coded tokens), the range coder's overhead
//! against that ideal, and pack/unpack throughput.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;

use lmz::archive::{Archive, Meta, Writer, WriterOptions};
use lmz::format::Codec;

use crate::engine::{self, Engine};
use crate::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(required_unless_present = "suite")]
    files: Vec<PathBuf>,
    /// Use only the first BYTES of each file; with `--suite paper`, the bytes measured per
    /// modality (a multiple of 8192, at least 8192; default 16384, sized for 30 minutes on
    /// a 2-core CPU; larger limits are for GPUs).
    #[arg(long, value_name = "BYTES")]
    limit: Option<u64>,
    /// Run a fixed suite instead of files: `paper` reproduces the experiments of "Language
    /// Modeling Is Compression" on real text, images and speech (fetched and cached).
    #[arg(long, value_enum, conflicts_with_all = ["files", "widths"])]
    suite: Option<Suite>,
    /// `--suite`: where results.json, results.md and the plots go.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "lmz-paper",
        requires = "suite"
    )]
    out: PathBuf,
    /// `--suite`: seed of the chunk drawing (the same seed measures the same bytes).
    #[arg(long, default_value_t = 0, requires = "suite")]
    seed: u64,
    /// `--suite`: the models to run (each through the engine `lmz pack` would use).
    #[arg(long, value_enum, value_delimiter = ',', requires = "suite",
          default_values_t = crate::paper::SuiteModel::ALL)]
    models: Vec<crate::paper::SuiteModel>,
    #[arg(long, default_value_t = 8192)]
    block_size: u32,
    /// Engines to measure, one after another in this run (e.g. `portable,llama`).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Engine::bench_default())]
    engine: Vec<Engine>,
    /// Skip xz and zstd.
    #[arg(long)]
    no_baselines: bool,
    #[arg(long)]
    json: bool,
    /// Throughput mode: for each batch width W, pack and unpack W blocks of the first file
    /// in lockstep, next to the bare model's throughput for the same batch shape.
    #[arg(long, value_delimiter = ',', value_name = "W,W,...")]
    widths: Vec<usize>,
    /// Most archive-primer tokens, as `lmz pack --primer` (0: none); lmz measures whether
    /// the primer pays, as pack does.
    #[arg(long, value_name = "TOKENS", default_value_t = lmz::archive::primer::DEFAULT_PRIMER_TOKENS)]
    primer: usize,
    /// The adaptive bias's rate, as `lmz pack --bias-rate` (0: none; portable engine).
    #[arg(long, value_name = "RATE", default_value_t = lmz::archive::DEFAULT_BIAS_RATE)]
    bias_rate: u16,
    /// Also pack each file without the primer and without the adaptive bias, in the same
    /// run: what each contributes; and the archive's size under the classic framing (exact: the same blocks framed
    /// the other way, FORMAT.md §7.1).
    #[arg(long)]
    ablation: bool,
    #[command(flatten)]
    m: ModelArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// The experiments of Delétang et al. (2023): text, images, speech in 2,048-byte chunks.
    Paper,
}

/// `--widths`: pack/unpack W blocks at once for each W, against the model's raw speed.
fn widths(
    args: &BenchArgs,
    model: Option<&dyn lmz::model::Model>,
) -> Result<Option<serde_json::Value>> {
    let src =
        std::fs::read(&args.files[0]).with_context(|| format!("{}", args.files[0].display()))?;
    ensure!(!src.is_empty(), "empty input");
    let mut rows = Vec::new();
    let mut profiles = Vec::new();
    if !args.json {
        println!("| W | blocks × bytes | tokens | pack tok/s | raw model, pack's steps | pack / raw | unpack tok/s | raw model, 1 token per step | unpack / raw | pack B/s | unpack B/s |");
        println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    for &w in &args.widths {
        let bs = args.block_size as usize;
        let data: Vec<u8> = src.iter().copied().cycle().take(w * bs).collect();
        let plains: Vec<&[u8]> = data.chunks(bs).collect();
        let t0 = Instant::now();
        let mut ls = lmz::codec::Lockstep::new(model, w);
        let (coded, stats) = lmz::codec::encode_with(&mut ls, &plains, 19)?;
        let pack_s = t0.elapsed().as_secs_f64();
        let pack_profile = ls.profile();
        drop(ls);
        let refs: Vec<lmz::codec::BlockRefData> = coded
            .iter()
            .enumerate()
            .map(|(i, c)| c.as_block(i as u64))
            .collect();
        let t1 = Instant::now();
        let mut ls = lmz::codec::Lockstep::new(model, w);
        let back = lmz::codec::decode_with(&mut ls, &refs)?;
        let unpack_s = t1.elapsed().as_secs_f64();
        let unpack_profile = ls.profile();
        drop(ls);
        for (r, p) in back.into_iter().zip(&plains) {
            ensure!(&r? == p, "round trip differs");
        }
        let kept: u64 = coded.iter().map(|c| c.header.tokens as u64).sum();
        // The bare model for the same batch shapes: one sequence per model-coded block, each
        // as long as its block, so sequences leave the batch as blocks finish; decoders feed
        // one token per sequence per step, encoders (where the model allows) `ENCODE_CHUNK`.
        // (Blocks the encoder tried but did not keep are left out; for prose there are none.)
        let lengths: Vec<usize> = coded
            .iter()
            .filter(|c| c.header.codec == Codec::Model)
            .map(|c| c.header.tokens as usize)
            .collect();
        let (raw, raw_chunked) = match model {
            Some(m) => (
                m.raw_tokens_per_second(&lengths, 1)?,
                if pack_profile.eval.rows > pack_profile.eval.steps * w as u64 {
                    m.raw_tokens_per_second(&lengths, lmz::codec::ENCODE_CHUNK)?
                } else {
                    None
                },
            ),
            None => (None, None),
        };
        let raw_pack = raw_chunked.or(raw);
        let pack_tps = stats.tokens as f64 / pack_s;
        let unpack_tps = kept as f64 / unpack_s;
        let pack_p = profile_json(&pack_profile, pack_s);
        let unpack_p = profile_json(&unpack_profile, unpack_s);
        profiles.push((w, pack_p.clone(), unpack_p.clone()));
        let row = serde_json::json!({
            "width": w, "blocks": plains.len(), "block_bytes": bs, "tokens": stats.tokens,
            "pack_tokens_per_s": pack_tps, "unpack_tokens_per_s": unpack_tps,
            "raw_tokens_per_s": raw, "raw_pack_shape_tokens_per_s": raw_pack,
            "pack_bytes_per_s": data.len() as f64 / pack_s, "unpack_bytes_per_s": data.len() as f64 / unpack_s,
            "pack_profile": pack_p, "unpack_profile": unpack_p,
        });
        if !args.json {
            let num = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.1}"));
            let pct = |x: f64, r: Option<f64>| {
                r.map_or("–".into(), |r| format!("{:.0}%", 100.0 * x / r))
            };
            println!(
                "| {w} | {} × {bs} | {} | {pack_tps:.1} | {} | {} | {unpack_tps:.1} | {} | {} | {:.0} | {:.0} |",
                plains.len(),
                stats.tokens,
                num(raw_pack),
                pct(pack_tps, raw_pack),
                num(raw),
                pct(unpack_tps, raw),
                data.len() as f64 / pack_s,
                data.len() as f64 / unpack_s,
            );
        }
        rows.push(row);
    }
    let alone = model.map(|m| tables_alone(m.pin().vocab_size as usize));
    if args.json {
        let tables: Vec<_> = alone
            .iter()
            .flatten()
            .map(|a| {
                serde_json::json!({
                    "threads": a.threads,
                    "tables_per_s": a.tables_per_s,
                    "finds_per_s": a.finds_per_s,
                    "intervals_per_s": a.intervals_per_s,
                })
            })
            .collect();
        return Ok(Some(
            serde_json::json!({ "widths": rows, "tables_alone": tables }),
        ));
    } else {
        if let Some(alone) = &alone {
            println!();
            println!("Frequency tables alone (no model step: the most tokens per second any backend could code):");
            println!();
            println!("| table threads | whole tables/s | symbol at a point/s (unpack) | one symbol's interval/s (pack) |");
            println!("|---:|---:|---:|---:|");
            for a in alone {
                println!(
                    "| {} | {:.0} | {:.0} | {:.0} |",
                    a.threads, a.tables_per_s, a.finds_per_s, a.intervals_per_s
                );
            }
        }
        println!();
        println!("Per coded token (µs) and share of the run's wall time:");
        println!();
        println!("| W | pass | model step | of which matrix products | of which attention | frequency table | range coder | rest (tokenize, zstd, setup) | tokens per model step |");
        println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for (w, pack, unpack) in &profiles {
            for (pass, p) in [("pack", pack), ("unpack", unpack)] {
                let cell = |k: &str| {
                    format!(
                        "{:.1} ({:.1}%)",
                        p[k]["us_per_token"].as_f64().unwrap_or(0.0),
                        p[k]["share"].as_f64().unwrap_or(0.0) * 100.0
                    )
                };
                println!(
                    "| {w} | {pass} | {} | {} | {} | {} | {} | {} | {:.1} |",
                    cell("model"),
                    cell("matmul"),
                    cell("attention"),
                    cell("freqs"),
                    cell("coder"),
                    cell("rest"),
                    p["tokens_per_step"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(None)
}

/// What [`lmz::model::tables::Tables`] makes per second from rows of `symbols` logits, with
/// no model step: whole tables, the symbol at a point (what a decoder needs) and one
/// symbol's interval (an encoder's), on one thread and on every core. The ceiling of coding on a backend whose
/// model step costs nothing (a GPU's is far from free, but the CPU waits idle during it).
struct Alone {
    threads: usize,
    tables_per_s: f64,
    finds_per_s: f64,
    intervals_per_s: f64,
}

fn tables_alone(symbols: usize) -> Vec<Alone> {
    use lmz::model::tables::Tables;
    const ROWS: usize = 256;
    let bits = lmz::format::FREQ_BITS as u32;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let logits: Vec<Vec<f32>> = (0..ROWS)
        .map(|_| {
            (0..symbols)
                .map(|_| (next() % 4000) as f32 / 100.0 - 20.0)
                .collect()
        })
        .collect();
    let targets: Vec<u32> = (0..ROWS)
        .map(|_| (next() % symbols as u64) as u32)
        .collect();
    let points: Vec<u32> = (0..ROWS).map(|_| (next() % (1 << bits)) as u32).collect();
    let rows: Vec<&[f32]> = logits.iter().map(|l| l.as_slice()).collect();
    let mut tables_out = vec![Vec::new(); ROWS];
    let mut intervals_out = vec![(0, 0); ROWS];
    let mut finds_out = vec![(0, 0, 0); ROWS];
    // Rows per second of `f`, run over all rows for half a second (after a warm-up run).
    let rate = |f: &mut dyn FnMut()| {
        f();
        let start = Instant::now();
        let mut n = 0;
        while n < 4 * ROWS || start.elapsed().as_secs_f64() < 0.5 {
            f();
            n += ROWS;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = vec![1];
    if cores > 1 {
        threads.push(cores);
    }
    threads
        .into_iter()
        .map(|t| {
            let mut tables = Tables::new(t);
            let tables_per_s = rate(&mut || tables.fill(&rows, symbols, bits, &mut tables_out));
            let finds_per_s =
                rate(&mut || tables.find(&rows, symbols, bits, &points, &mut finds_out));
            let intervals_per_s =
                rate(&mut || tables.intervals(&rows, symbols, bits, &targets, &mut intervals_out));
            Alone {
                threads: tables.threads(),
                tables_per_s,
                finds_per_s,
                intervals_per_s,
            }
        })
        .collect()
}

/// A [`lmz::codec::Profile`] per coded token, with each part's share of `wall` seconds.
fn profile_json(p: &lmz::codec::Profile, wall: f64) -> serde_json::Value {
    let tokens = p.eval.rows.max(1) as f64;
    let wall = wall.max(1e-9);
    let part = |s: f64| serde_json::json!({ "us_per_token": s * 1e6 / tokens, "share": s / wall });
    let model = p.eval.model.as_secs_f64();
    let freqs = p.eval.freqs.as_secs_f64();
    let coder = p.coder.as_secs_f64();
    serde_json::json!({
        "tokens": p.eval.rows,
        "steps": p.eval.steps,
        "tokens_per_step": p.eval.rows as f64 / p.eval.steps.max(1) as f64,
        "model": part(model),
        "matmul": part(p.eval.matmul.as_secs_f64()),
        "attention": part(p.eval.attention.as_secs_f64()),
        "freqs": part(freqs),
        "coder": part(coder),
        "rest": part((wall - model - freqs - coder).max(0.0)),
    })
}

fn baseline(cmd: &str, args: &[&str], data: &[u8]) -> Option<usize> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().ok()?;
    feeder.join().ok()?.ok()?;
    out.status.success().then_some(out.stdout.len())
}

/// Measures each engine in turn. With `--json`, one document: one engine's results as they
/// are, several engines' as `{"engines": [{"engine": NAME, "results": ...}, ...]}`.
pub fn run(args: BenchArgs, show_progress: bool) -> Result<()> {
    if let Some(Suite::Paper) = args.suite {
        let command = std::iter::once("lmz".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
        let limit = args
            .limit
            .map_or(crate::paper::DEFAULT_LIMIT, |l| l as usize);
        return crate::paper::run(
            crate::paper::Options {
                limit,
                out: args.out.clone(),
                seed: args.seed,
                models: args.models.clone(),
                json: args.json,
                show_progress,
                command,
            },
            &args.m,
        );
    }
    let mut docs = Vec::new();
    for (i, &e) in args.engine.iter().enumerate() {
        if args.engine.len() > 1 && !args.json {
            if i > 0 {
                println!();
            }
            println!("### engine: {}", e.name());
            println!();
        }
        if let Some(d) = run_engine(&args, e)? {
            docs.push(serde_json::json!({ "engine": e.name(), "results": d }));
        }
    }
    if args.json {
        let out = match docs.len() {
            1 => docs.pop().expect("one")["results"].take(),
            _ => serde_json::json!({ "engines": docs }),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// Runs one engine's measurements: prints its tables, or returns its JSON with `--json`.
/// Packs `data` as one file into an in-memory archive, after `primer` if given.
fn pack_one(
    args: &BenchArgs,
    model: Option<&dyn lmz::model::Model>,
    name: &[u8],
    data: &[u8],
    primer: Option<&[lmz::model::Token]>,
    bias_rate: u16,
) -> Result<(Vec<u8>, lmz::archive::PackStats)> {
    let opts = WriterOptions {
        block_size: args.block_size,
        width: args.m.width(model),
        zstd_level: 19,
        bias_rate,
        ..WriterOptions::default()
    };
    let mut w = Writer::with_primer(Vec::new(), model, opts, primer)?;
    let meta = Meta {
        mode: 0o644,
        ..Meta::default()
    };
    w.add_file(name, meta, data.len() as u64, &mut &data[..])?;
    Ok(w.finish()?)
}

fn run_engine(args: &BenchArgs, engine: Engine) -> Result<Option<serde_json::Value>> {
    let model = engine::load_for_pack(engine, args.block_size, &args.m)?;
    let model = model.as_deref();
    if let Some(m) = model {
        for &w in &args.widths {
            ensure!(
                w <= m.max_width(),
                "width {w}: this model evaluates at most {} sequences at once",
                m.max_width()
            );
        }
        // The once-per-process determinism probes (about a second each on two cores) are
        // not part of the throughput being measured.
        for &w in args.widths.iter().chain([&args.m.width(Some(m))]) {
            m.lockstep_exact(w);
            m.chunks_exact(w);
        }
    }
    if !args.widths.is_empty() {
        return widths(args, model);
    }
    let mut rows = Vec::new();
    if !args.json {
        println!(
            "| file | bytes | lmz bpb | primer tokens | bpb without primer | bpb without bias | bpb classic framing | model ideal bpb | coder overhead bits/token | bytes/block | xz -9e bpb | zstd -19 bpb | pack B/s | pack tok/s | unpack B/s | unpack tok/s |"
        );
        println!(
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
    }
    for path in &args.files {
        let mut data = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        if let Some(l) = args.limit {
            data.truncate(l as usize);
        }
        let name = path.file_name().map_or(b"file".to_vec(), |n| {
            n.to_string_lossy().as_bytes().to_vec()
        });
        let t0 = Instant::now();
        let primer = match model {
            Some(m) if args.primer > 0 => {
                let (first, second) = lmz::archive::primer::samples(&data, args.block_size);
                let blocks = (data.len() as u64).div_ceil(args.block_size.max(1) as u64);
                let width = args.m.width(model);
                lmz::archive::primer::choose(
                    m,
                    first,
                    second,
                    blocks,
                    args.primer,
                    width,
                    args.bias_rate,
                )?
                .tokens
            }
            _ => None,
        };
        let (bytes, stats) =
            pack_one(args, model, &name, &data, primer.as_deref(), args.bias_rate)?;
        let pack_s = t0.elapsed().as_secs_f64();
        // The writer sets the bias for kind 3 only (FORMAT.md §12.9).
        let biased = args.bias_rate != 0
            && model.is_some_and(|m| m.pin().kind == lmz::format::ModelKind::Portable);
        let without = match (&primer, args.ablation) {
            (Some(_), true) => Some(
                pack_one(args, model, &name, &data, None, args.bias_rate)?
                    .1
                    .archive_bytes,
            ),
            (None, true) => Some(stats.archive_bytes),
            (_, false) => None,
        };
        // The same primer, no adaptive bias.
        let unbiased = match (biased, args.ablation) {
            (true, true) => Some(
                pack_one(args, model, &name, &data, primer.as_deref(), 0)?
                    .1
                    .archive_bytes,
            ),
            (false, true) => Some(stats.archive_bytes),
            (_, false) => None,
        };

        let t1 = Instant::now();
        let a = Archive::from_bytes(bytes)?;
        let classic = if args.ablation {
            let now = a.framing_bytes(a.framing())?;
            let other = a.framing_bytes(lmz::format::Framing::Classic)?;
            Some(stats.archive_bytes - now + other)
        } else {
            None
        };
        let mut back = Vec::with_capacity(data.len());
        for r in a.decode_blocks(model, 0..a.block_count(), args.m.width(model))? {
            back.extend_from_slice(&r?);
        }
        let unpack_s = t1.elapsed().as_secs_f64();
        ensure!(back == data, "{}: round trip differs", path.display());

        let n = data.len().max(1) as f64;
        let mi = Codec::Model as usize;
        let model_bits = stats.coded[mi] as f64 * 8.0;
        let tokens = stats.kept_tokens.max(1) as f64;
        let (xz, zs) = if args.no_baselines {
            (None, None)
        } else {
            (
                baseline("xz", &["-9e", "-c"], &data),
                baseline("zstd", &["-19", "-c", "-q"], &data),
            )
        };
        let row = serde_json::json!({
            "file": path.display().to_string(),
            "bytes": data.len(),
            "archive_bytes": stats.archive_bytes,
            "lmz_bpb": stats.archive_bytes as f64 * 8.0 / n,
            "primer_tokens": primer.as_ref().map_or(0, Vec::len),
            "no_primer_bpb": without.map(|b| b as f64 * 8.0 / n),
            "bias_rate": if biased { args.bias_rate } else { 0 },
            "no_bias_bpb": unbiased.map(|b| b as f64 * 8.0 / n),
            "classic_framing_bpb": classic.map(|b| b as f64 * 8.0 / n),
            "blocks": { "model": stats.blocks[mi], "zstd": stats.blocks[Codec::Zstd as usize], "stored": stats.blocks[Codec::Stored as usize] },
            "model_plain_bytes": stats.plain[mi],
            "model_ideal_bpb": if stats.plain[mi] > 0 { stats.kept_ideal_bits / stats.plain[mi] as f64 } else { 0.0 },
            "model_coded_bpb": if stats.plain[mi] > 0 { model_bits / stats.plain[mi] as f64 } else { 0.0 },
            "coder_overhead_bits_per_token": if stats.kept_tokens > 0 { (model_bits - stats.kept_ideal_bits) / tokens } else { 0.0 },
            "coder_overhead_bytes_per_block": if stats.blocks[mi] > 0 { (model_bits - stats.kept_ideal_bits) / 8.0 / stats.blocks[mi] as f64 } else { 0.0 },
            "tokens": stats.kept_tokens,
            "xz_bpb": xz.map(|x| x as f64 * 8.0 / n),
            "zstd_bpb": zs.map(|x| x as f64 * 8.0 / n),
            "pack_seconds": pack_s,
            "pack_bytes_per_s": n / pack_s,
            "pack_tokens_per_s": stats.model.tokens as f64 / pack_s,
            "unpack_seconds": unpack_s,
            "unpack_bytes_per_s": n / unpack_s,
            "unpack_tokens_per_s": stats.kept_tokens as f64 / unpack_s,
        });
        if !args.json {
            let f = |k: &str| {
                row[k]
                    .as_f64()
                    .map_or("–".to_string(), |v| format!("{v:.3}"))
            };
            let f1 = |k: &str| {
                row[k]
                    .as_f64()
                    .map_or("–".to_string(), |v| format!("{v:.1}"))
            };
            let f4 = |k: &str| {
                row[k]
                    .as_f64()
                    .map_or("–".to_string(), |v| format!("{v:.4}"))
            };
            let g = |k: &str| {
                row[k]
                    .as_f64()
                    .map_or("–".to_string(), |v| format!("{v:.0}"))
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                ),
                data.len(),
                f("lmz_bpb"),
                row["primer_tokens"],
                f("no_primer_bpb"),
                f("no_bias_bpb"),
                f("classic_framing_bpb"),
                f("model_ideal_bpb"),
                f4("coder_overhead_bits_per_token"),
                f("coder_overhead_bytes_per_block"),
                f("xz_bpb"),
                f("zstd_bpb"),
                g("pack_bytes_per_s"),
                f1("pack_tokens_per_s"),
                g("unpack_bytes_per_s"),
                f1("unpack_tokens_per_s"),
            );
        }
        rows.push(row);
    }
    Ok(args.json.then_some(serde_json::Value::Array(rows)))
}
