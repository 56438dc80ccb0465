//! `lmz merge` of arbitrary bytes: the input is cut into parts before every part magic
//! (`\x89LMZPART`), so a seed is the concatenation of a set's parts.
//! Asserts: no panic; a merge that succeeds wrote exactly the archive its statistics
//! describe, one the random-access reader opens with those entry and block counts (a merge
//! never emits an archive readers reject), and the same parts in reverse order merge into
//! the same bytes.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use lmz::archive::merge::merge;
use lmz::archive::Archive;
use lmz::format::part::PART_MAGIC;

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut starts: Vec<usize> = (1..data.len().saturating_sub(7))
        .filter(|&i| data[i..i + 8] == PART_MAGIC)
        .collect();
    starts.insert(0, 0);
    starts.push(data.len());
    starts.windows(2).map(|w| &data[w[0]..w[1]]).take(64).collect()
}

fn run(parts: &[&[u8]]) -> lmz::Result<(Vec<u8>, lmz::archive::merge::MergeStats)> {
    let mut out = Vec::new();
    let ps = parts
        .iter()
        .enumerate()
        .map(|(k, p)| (format!("part {k}"), Cursor::new(*p)))
        .collect();
    let stats = merge(ps, &mut out)?;
    Ok((out, stats))
}

fuzz_target!(|data: &[u8]| {
    let mut parts = split(data);
    let Ok((out, stats)) = run(&parts) else {
        return;
    };
    assert_eq!(out.len() as u64, stats.archive_bytes);
    let a = Archive::from_bytes(out.clone()).expect("a merged archive opens");
    assert_eq!(a.entries().len() as u64, stats.entries);
    assert_eq!(a.block_count() as u64, stats.blocks);
    parts.reverse();
    let (again, _) = run(&parts).expect("the same parts in another order merge too");
    assert!(again == out, "the merge depends on the order of the parts");
});
