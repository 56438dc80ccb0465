//! `lmz bench --suite paper` end to end, small (8 KiB per modality): the data fetch from
//! the registries (cached after the first run), results.json's structure and plots that
//! are valid PNG files. The default model runs too, but on a few KB only.

mod common;

use common::*;
use serde_json::Value;

// One suite at a time: two model processes would oversubscribe the two cores.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn suite(out: &std::path::Path, extra: &[&str]) -> Value {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    run(lmz()
        .args([
            "-q",
            "bench",
            "--suite",
            "paper",
            "--limit",
            "8192",
            "--threads",
            "2",
        ])
        .args(extra)
        .arg("--out")
        .arg(out));
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rows(v: &Value) -> &Vec<Value> {
    v["rows"].as_array().expect("rows")
}

#[test]
fn paper_suite_writes_results_and_plots() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let v = suite(&out, &["--models", "order1,smollm2-135m"]);
    let rows = rows(&v);
    for m in ["text", "image", "audio"] {
        for c in [
            "gzip",
            "lzma2",
            "png",
            "flac",
            "lmz-order1",
            "lmz-smollm2-135m",
            "lmz",
        ] {
            assert!(
                rows.iter()
                    .any(|r| r["modality"] == m && r["compressor"] == c),
                "no {c} row for {m}"
            );
        }
    }
    for m in ["image", "audio"] {
        assert!(rows
            .iter()
            .any(|r| r["modality"] == m && r["compressor"] == "lmz-smollm2-135m-ascii"));
    }
    for r in rows {
        let raw = r["raw_bytes"].as_f64().unwrap();
        let comp = r["compressed_bytes"].as_f64().unwrap();
        let rate = r["rate"].as_f64().unwrap();
        let adj = r["adjusted_rate"].as_f64().unwrap();
        assert!(["text", "image", "audio"].contains(&r["modality"].as_str().unwrap()));
        assert!(r["dataset"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(raw, 8192.0, "{r}");
        assert!(comp > 0.0);
        assert!((rate - comp / raw).abs() < 1e-12);
        let model = r["model_bytes"].as_f64().unwrap();
        assert!((adj - (comp + model) / raw).abs() < 1e-9);
        assert!(r["chunk_bytes"]
            .as_u64()
            .is_some_and(|c| 8192u64.is_multiple_of(c)));
        assert_eq!(r["extrapolated_1gb"]["extrapolated"], true);
        if r["compressor"] == "lmz-smollm2-135m" {
            assert_eq!(model, 98_362_432.0);
        }
    }
    // Real text compresses: the default model beats gzip on it, even on 2,048-byte chunks.
    let rate = |c: &str, m: &str| {
        rows.iter()
            .find(|r| r["compressor"] == c && r["modality"] == m && r["chunk_bytes"] == 2048)
            .and_then(|r| r["rate"].as_f64())
            .unwrap()
    };
    assert!(rate("lmz-smollm2-135m", "text") < rate("gzip", "text"));
    for p in ["rates.png", "adjusted.png", "chunk_size.png"] {
        let b = std::fs::read(out.join(p)).unwrap();
        let mut r = png::Decoder::new(std::io::Cursor::new(b))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        r.next_frame(&mut buf).unwrap();
        assert!(r.info().width >= 800, "{p}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| lmz-smollm2-135m |"), "{md}");
    assert!(md.contains("43.4%") && md.contains("16.4%"));
}

#[test]
fn the_seed_decides_the_chunks() {
    let t = tempfile::tempdir().unwrap();
    let size = |v: &Value| -> Vec<u64> {
        rows(v)
            .iter()
            .map(|r| r["compressed_bytes"].as_u64().unwrap())
            .collect()
    };
    let a = suite(&t.path().join("a"), &["--models", "order1"]);
    let b = suite(&t.path().join("b"), &["--models", "order1"]);
    let c = suite(&t.path().join("c"), &["--models", "order1", "--seed", "5"]);
    assert_eq!(size(&a), size(&b));
    assert_ne!(size(&a), size(&c));
}

#[test]
fn a_limit_below_one_unit_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let e = run_fail(
        lmz()
            .args([
                "-q", "bench", "--suite", "paper", "--limit", "4096", "--models", "order1",
            ])
            .arg("--out")
            .arg(t.path()),
        1,
    );
    assert!(e.contains("8192"), "{e}");
}
