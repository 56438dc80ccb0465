//! `lmz merge`: the parts of `lmz pack --shard K/N` into one archive (the library's
//! `archive::merge` does the work), written atomically: on any refusal or failure no file
//! appears under the output's name.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::output::Atomic;

pub fn run(parts: &[PathBuf], output: &std::path::Path) -> Result<()> {
    if output.as_os_str() == "-" {
        bail!(lmz::Error::usage(
            "merge writes a file (it may still refuse the parts after it began writing)"
        ));
    }
    let mut opened = Vec::with_capacity(parts.len());
    for p in parts {
        if p.as_path() == output
            || std::fs::canonicalize(p).ok() == std::fs::canonicalize(output).ok()
                && output.exists()
        {
            bail!(lmz::Error::usage(format!(
                "{}: the output is one of the parts",
                output.display()
            )));
        }
        let f = File::open(p).map_err(|e| lmz::Error::io(p, e))?;
        opened.push((p.display().to_string(), f));
    }
    let (tmp, mut out) = Atomic::create(output)?;
    let t = std::time::Instant::now();
    let stats = lmz::archive::merge::merge(opened, &mut out)?;
    tmp.commit(out)?;
    log::info!(
        "{} parts → {} ({} entries, {} blocks, {} bytes) in {:.2} s",
        stats.parts,
        output.display(),
        stats.entries,
        stats.blocks,
        stats.archive_bytes,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
