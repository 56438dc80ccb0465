//! The decoded-block cache: an LRU of plain blocks bounded in bytes, fed by a pool of
//! decoder threads.
//!
//! - A block is decoded at most once at a time: the first request for a missing block
//!   queues it and every later request for it waits on the same slot (in-flight map plus a
//!   condition variable per slot) until the one decode ends.
//! - Reads queue their blocks as *demand*; sequential readers also queue the blocks ahead
//!   of them as *prefetch*. Workers take demand first, and decode a run of contiguous
//!   queued blocks (split evenly among the workers) as one batch: the model blocks of a
//!   batch are evaluated in lockstep, in a model context each worker keeps for its life.
//! - A block that fails as corrupt (CRC mismatch, bad payload), or diverges (its payload
//!   intact, but this machine's llama.cpp computing other probabilities than the writer's),
//!   fails the same way every time, since neither the archive nor this machine changes: the
//!   failure is remembered and not decoded again. Other failures (model evaluation) are
//!   retried on the next request.
//! - Every decode is counted per block ([`BlockCache::decode_count`]), so tests can check
//!   that concurrent readers never decode a cached block twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use lmz::archive::Archive;
use lmz::codec::Lockstep;
use lmz::model::Model;

/// A decoded block, shared between the cache and the readers holding it.
pub type Block = Arc<Vec<u8>>;

/// Why a block could not be decoded.
#[derive(Clone, Debug)]
pub struct BlockError {
    pub block: usize,
    pub class: lmz::Class,
    /// Whether decoding the block again would fail the same way ([`lmz::Error::repeats`]:
    /// damage, or this machine's probabilities differing from the writer's), so the failure
    /// is remembered rather than paid for again at every read.
    pub repeats: bool,
    pub message: String,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {}: {}", self.block, self.message)
    }
}

impl std::error::Error for BlockError {}

pub type BlockResult = Result<Block, BlockError>;

/// Cache and decoder-pool settings.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Most bytes of decoded blocks kept.
    pub capacity: u64,
    /// Decoder threads.
    pub workers: usize,
    /// Most contiguous queued blocks decoded together as one batch.
    pub batch: usize,
    /// Most prefetch requests kept queued; older ones are dropped first.
    pub max_prefetch_queue: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 256 << 20,
            workers: 2,
            batch: 8,
            max_prefetch_queue: 4096,
        }
    }
}

/// Counters of a cache, for the stats file and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct CacheStats {
    pub blocks: usize,
    /// Block requests answered from the cache.
    pub hits: u64,
    /// Block requests that queued a decode.
    pub misses: u64,
    /// Block requests that waited for a decode already queued or running.
    pub joined: u64,
    /// Blocks queued by prefetch.
    pub prefetch_queued: u64,
    /// Decodes run, and those that failed.
    pub decodes: u64,
    pub decode_errors: u64,
    /// Time spent decoding, all workers together.
    pub decode_nanos: u64,
    pub cached_blocks: usize,
    pub cached_bytes: u64,
    pub capacity: u64,
    /// Blocks queued or being decoded now.
    pub in_flight: usize,
    /// Blocks remembered as failing (corrupt or diverged).
    pub failed: usize,
}

/// LRU map of decoded blocks, bounded by the sum of their lengths.
struct Lru {
    map: HashMap<usize, (Block, u64)>,
    order: BTreeMap<u64, usize>,
    tick: u64,
    bytes: u64,
    capacity: u64,
}

impl Lru {
    fn new(capacity: u64) -> Lru {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            capacity,
        }
    }

    fn get(&mut self, i: usize) -> Option<Block> {
        let (b, t) = self.map.get_mut(&i)?;
        self.order.remove(t);
        self.tick += 1;
        *t = self.tick;
        self.order.insert(self.tick, i);
        Some(b.clone())
    }

    fn contains(&self, i: usize) -> bool {
        self.map.contains_key(&i)
    }

    fn insert(&mut self, i: usize, b: Block) {
        let len = b.len() as u64;
        if len > self.capacity || self.map.contains_key(&i) {
            return;
        }
        while self.bytes + len > self.capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&victim) {
                self.bytes -= old.len() as u64;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, i);
        self.map.insert(i, (b, self.tick));
        self.bytes += len;
    }
}

/// Where a decode delivers its result to the readers waiting for it.
#[derive(Default)]
struct Slot {
    result: Mutex<Option<BlockResult>>,
    done: Condvar,
}

impl Slot {
    fn wait(&self) -> BlockResult {
        let mut r = lock(&self.result);
        loop {
            if let Some(r) = r.as_ref() {
                return r.clone();
            }
            r = self.done.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn set(&self, r: BlockResult) {
        *lock(&self.result) = Some(r);
        self.done.notify_all();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Queued { prefetch: bool },
    Decoding,
}

struct State {
    lru: Lru,
    in_flight: HashMap<usize, (Arc<Slot>, Stage)>,
    failed: HashMap<usize, BlockError>,
    demand: VecDeque<usize>,
    prefetch: VecDeque<usize>,
    shutdown: bool,
}

struct Shared {
    archive: Arc<Archive>,
    model: Option<Arc<dyn Model>>,
    config: CacheConfig,
    state: Mutex<State>,
    /// Signalled when work is queued or on shutdown.
    work: Condvar,
    decodes: Vec<AtomicU32>,
    hits: AtomicU64,
    misses: AtomicU64,
    joined: AtomicU64,
    prefetch_queued: AtomicU64,
    decodes_total: AtomicU64,
    decode_errors: AtomicU64,
    decode_nanos: AtomicU64,
    /// Bumped after every decode batch (the stats writer watches it).
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (every update is a
    // single insert or remove), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cache plus its decoder threads. Dropping it stops the threads.
pub struct BlockCache {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl BlockCache {
    pub fn new(
        archive: Arc<Archive>,
        model: Option<Arc<dyn Model>>,
        config: CacheConfig,
    ) -> BlockCache {
        let config = CacheConfig {
            workers: config.workers.max(1),
            batch: config.batch.max(1),
            ..config
        };
        let n = archive.block_count();
        let shared = Arc::new(Shared {
            archive,
            model,
            config,
            state: Mutex::new(State {
                lru: Lru::new(config.capacity),
                in_flight: HashMap::new(),
                failed: HashMap::new(),
                demand: VecDeque::new(),
                prefetch: VecDeque::new(),
                shutdown: false,
            }),
            work: Condvar::new(),
            decodes: (0..n).map(|_| AtomicU32::new(0)).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            prefetch_queued: AtomicU64::new(0),
            decodes_total: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            decode_nanos: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        });
        let workers = (0..config.workers)
            .map(|k| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("lmz-decode-{k}"))
                    .spawn(move || s.worker())
                    .expect("spawning a decoder thread")
            })
            .collect();
        BlockCache {
            shared,
            workers: Mutex::new(workers),
        }
    }

    pub fn archive(&self) -> &Arc<Archive> {
        &self.shared.archive
    }

    /// The decoded blocks `range`, in order, decoding the missing ones (all queued at once,
    /// so several workers can decode them in parallel).
    pub fn get_range(&self, range: Range<usize>) -> Vec<BlockResult> {
        enum Got {
            Ready(BlockResult),
            Wait(Arc<Slot>),
        }
        let s = &*self.shared;
        let mut got = Vec::with_capacity(range.len());
        {
            let mut st = lock(&s.state);
            let mut queued = false;
            for i in range {
                if let Some(b) = st.lru.get(i) {
                    s.hits.fetch_add(1, Ordering::Relaxed);
                    got.push(Got::Ready(Ok(b)));
                } else if let Some(e) = st.failed.get(&i) {
                    got.push(Got::Ready(Err(e.clone())));
                } else if let Some((slot, stage)) =
                    st.in_flight.get(&i).map(|(a, b)| (a.clone(), *b))
                {
                    s.joined.fetch_add(1, Ordering::Relaxed);
                    if stage == (Stage::Queued { prefetch: true }) {
                        // A reader now needs it: move it to the demand queue.
                        st.in_flight
                            .insert(i, (slot.clone(), Stage::Queued { prefetch: false }));
                        st.demand.push_back(i);
                        queued = true;
                    }
                    got.push(Got::Wait(slot));
                } else {
                    s.misses.fetch_add(1, Ordering::Relaxed);
                    let slot = Arc::new(Slot::default());
                    st.in_flight
                        .insert(i, (slot.clone(), Stage::Queued { prefetch: false }));
                    st.demand.push_back(i);
                    queued = true;
                    got.push(Got::Wait(slot));
                }
            }
            if queued {
                s.work.notify_all();
            }
        }
        got.into_iter()
            .map(|g| match g {
                Got::Ready(r) => r,
                Got::Wait(slot) => slot.wait(),
            })
            .collect()
    }

    /// One decoded block.
    pub fn get(&self, i: usize) -> BlockResult {
        self.get_range(i..i + 1)
            .pop()
            .expect("one result per block")
    }

    /// Queues blocks `range` for background decoding unless cached, failed or in flight.
    pub fn prefetch(&self, range: Range<usize>) {
        let s = &*self.shared;
        let mut st = lock(&s.state);
        let mut queued = false;
        for i in range {
            if i >= s.decodes.len()
                || st.lru.contains(i)
                || st.failed.contains_key(&i)
                || st.in_flight.contains_key(&i)
            {
                continue;
            }
            st.in_flight.insert(
                i,
                (Arc::new(Slot::default()), Stage::Queued { prefetch: true }),
            );
            st.prefetch.push_back(i);
            s.prefetch_queued.fetch_add(1, Ordering::Relaxed);
            queued = true;
        }
        // Bound the prefetch queue: drop the oldest requests nobody waits for.
        while st.prefetch.len() > s.config.max_prefetch_queue {
            let Some(old) = st.prefetch.pop_front() else {
                break;
            };
            if let Some((_, Stage::Queued { prefetch: true })) = st.in_flight.get(&old) {
                st.in_flight.remove(&old);
            }
        }
        if queued {
            s.work.notify_all();
        }
    }

    /// How many times block `i` was decoded.
    pub fn decode_count(&self, i: usize) -> u32 {
        self.shared
            .decodes
            .get(i)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Decode counts of every block.
    pub fn decode_counts(&self) -> Vec<u32> {
        self.shared
            .decodes
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Changes after every decode batch and every block request (for the stats writer).
    pub fn generation(&self) -> u64 {
        let s = &*self.shared;
        s.generation.load(Ordering::Acquire)
            + s.hits.load(Ordering::Relaxed)
            + s.misses.load(Ordering::Relaxed)
            + s.joined.load(Ordering::Relaxed)
            + s.prefetch_queued.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> CacheStats {
        let s = &*self.shared;
        let st = lock(&s.state);
        CacheStats {
            blocks: s.decodes.len(),
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            joined: s.joined.load(Ordering::Relaxed),
            prefetch_queued: s.prefetch_queued.load(Ordering::Relaxed),
            decodes: s.decodes_total.load(Ordering::Relaxed),
            decode_errors: s.decode_errors.load(Ordering::Relaxed),
            decode_nanos: s.decode_nanos.load(Ordering::Relaxed),
            cached_blocks: st.lru.map.len(),
            cached_bytes: st.lru.bytes,
            capacity: st.lru.capacity,
            in_flight: st.in_flight.len(),
            failed: st.failed.len(),
        }
    }

    /// Stops the decoder threads (queued requests still waiting get an error) and joins them.
    pub fn shutdown(&self) {
        {
            let mut st = lock(&self.shared.state);
            st.shutdown = true;
            self.shared.work.notify_all();
        }
        for h in lock(&self.workers).drain(..) {
            let _ = h.join();
        }
        let mut st = lock(&self.shared.state);
        st.demand.clear();
        st.prefetch.clear();
        for (i, (slot, _)) in st.in_flight.drain() {
            slot.set(Err(BlockError {
                block: i,
                class: lmz::Class::Io,
                repeats: false,
                message: "the mount is shutting down".into(),
            }));
        }
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    /// Takes the next queued block (demand first) and the queued blocks right after it, up
    /// to `batch`, marking them as decoding. `None` on shutdown.
    fn next_batch(&self) -> Option<Range<usize>> {
        let mut st = lock(&self.state);
        loop {
            if st.shutdown {
                return None;
            }
            let next = st.demand.pop_front().or_else(|| st.prefetch.pop_front());
            match next {
                None => st = self.work.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(first) => {
                    // Skip stale queue entries (promoted, already taken by a batch, dropped).
                    let Some((_, Stage::Queued { .. })) = st.in_flight.get(&first) else {
                        continue;
                    };
                    // The run of queued blocks from `first`, shared among the workers so
                    // none idles while another decodes a long batch alone.
                    let mut run = 1;
                    while run < self.config.batch
                        && matches!(
                            st.in_flight.get(&(first + run)),
                            Some((_, Stage::Queued { .. }))
                        )
                    {
                        run += 1;
                    }
                    let take = run.div_ceil(self.config.workers);
                    for i in first..first + take {
                        if let Some((_, stage)) = st.in_flight.get_mut(&i) {
                            *stage = Stage::Decoding;
                        }
                    }
                    return Some(first..first + take);
                }
            }
        }
    }

    fn worker(&self) {
        // One lockstep context per worker, kept across batches: a model context is created
        // once (and again only after a failed step), not per decode.
        let mut ls = Lockstep::new(self.model.as_deref(), self.config.batch);
        while let Some(range) = self.next_batch() {
            let start = Instant::now();
            let width = range.len();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.archive.decode_blocks_with(&mut ls, range.clone())
            }));
            if outcome.is_err() {
                // Whatever the context held is suspect after a panic.
                ls = Lockstep::new(self.model.as_deref(), self.config.batch);
            }
            let results: Vec<BlockResult> = match outcome {
                Ok(Ok(rs)) => rs
                    .into_iter()
                    .zip(range.clone())
                    .map(|(r, i)| {
                        r.map(Arc::new).map_err(|e| BlockError {
                            block: i,
                            class: e.class(),
                            repeats: e.repeats(),
                            message: e.to_string(),
                        })
                    })
                    .collect(),
                Ok(Err(e)) => range
                    .clone()
                    .map(|i| {
                        Err(BlockError {
                            block: i,
                            class: e.class(),
                            repeats: e.repeats(),
                            message: e.to_string(),
                        })
                    })
                    .collect(),
                Err(_) => range
                    .clone()
                    .map(|i| {
                        Err(BlockError {
                            block: i,
                            class: lmz::Class::Model,
                            repeats: false,
                            message: "decoder panicked".into(),
                        })
                    })
                    .collect(),
            };
            self.decode_nanos
                .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.decodes_total
                .fetch_add(width as u64, Ordering::Relaxed);
            for i in range.clone() {
                self.decodes[i].fetch_add(1, Ordering::Relaxed);
            }
            let mut slots = Vec::with_capacity(width);
            {
                let mut st = lock(&self.state);
                for (i, r) in range.clone().zip(&results) {
                    match r {
                        Ok(b) => st.lru.insert(i, b.clone()),
                        Err(e) => {
                            self.decode_errors.fetch_add(1, Ordering::Relaxed);
                            log::error!("{e}");
                            if e.repeats {
                                st.failed.insert(i, e.clone());
                            }
                        }
                    }
                    if let Some((slot, _)) = st.in_flight.remove(&i) {
                        slots.push(slot);
                    }
                }
            }
            for (slot, r) in slots.into_iter().zip(results) {
                slot.set(r);
            }
            self.generation.fetch_add(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lmz::archive::{Meta, Writer, WriterOptions};

    fn archive(files: &[Vec<u8>], block_size: u32) -> Archive {
        let mut w = Writer::new(
            Vec::new(),
            None,
            WriterOptions {
                block_size,
                width: 1,
                zstd_level: 1,
                ..WriterOptions::default()
            },
        )
        .unwrap();
        for (k, f) in files.iter().enumerate() {
            w.add_file(
                format!("f{k}").as_bytes(),
                Meta::default(),
                f.len() as u64,
                &mut &f[..],
            )
            .unwrap();
        }
        let (bytes, _) = w.finish().unwrap();
        Archive::from_bytes(bytes).unwrap()
    }

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefgh "[(x % 9) as usize]
            })
            .collect()
    }

    #[test]
    fn lru_evicts_least_recent_within_capacity() {
        let mut l = Lru::new(10);
        l.insert(1, Arc::new(vec![0; 4]));
        l.insert(2, Arc::new(vec![0; 4]));
        assert!(l.get(1).is_some());
        l.insert(3, Arc::new(vec![0; 4]));
        assert!(l.contains(1) && l.contains(3) && !l.contains(2));
        assert_eq!(l.bytes, 8);
        l.insert(4, Arc::new(vec![0; 11]));
        assert!(!l.contains(4));
    }

    #[test]
    fn concurrent_readers_decode_each_block_once() {
        let f = data(64 * 1024, 7);
        let a = Arc::new(archive(std::slice::from_ref(&f), 1024));
        let n = a.block_count();
        assert!(n >= 64);
        let c = Arc::new(BlockCache::new(
            a.clone(),
            None,
            CacheConfig {
                capacity: 1 << 30,
                workers: 3,
                batch: 4,
                ..Default::default()
            },
        ));
        std::thread::scope(|sc| {
            for t in 0..8 {
                let c = c.clone();
                let f = &f;
                sc.spawn(move || {
                    for k in 0..200 {
                        let i = (k * 7 + t * 13) % n;
                        let b = c.get(i).unwrap();
                        let s = c.archive().block_start(i) as usize;
                        assert_eq!(&b[..], &f[s..s + b.len()]);
                    }
                });
            }
        });
        assert!(c.decode_counts().iter().all(|&d| d <= 1));
        let s = c.stats();
        assert_eq!(
            s.decodes,
            c.decode_counts().iter().map(|&d| d as u64).sum::<u64>()
        );
    }

    #[test]
    fn prefetch_fills_the_cache() {
        let f = data(16 * 1024, 3);
        let a = Arc::new(archive(&[f], 1024));
        let c = BlockCache::new(
            a,
            None,
            CacheConfig {
                capacity: 1 << 30,
                workers: 1,
                batch: 8,
                ..Default::default()
            },
        );
        c.prefetch(0..8);
        for i in 0..8 {
            c.get(i).unwrap();
        }
        assert!((0..8).all(|i| c.decode_count(i) == 1));
        assert_eq!(c.stats().prefetch_queued, 8);
    }

    #[test]
    fn small_cache_still_answers() {
        let f = data(8 * 1024, 5);
        let a = Arc::new(archive(std::slice::from_ref(&f), 1024));
        let c = BlockCache::new(
            a,
            None,
            CacheConfig {
                capacity: 0,
                workers: 2,
                batch: 2,
                ..Default::default()
            },
        );
        for i in 0..8 {
            assert_eq!(&c.get(i).unwrap()[..], &f[i * 1024..(i + 1) * 1024]);
        }
        assert_eq!(c.stats().cached_blocks, 0);
    }

    #[test]
    fn a_corrupt_block_fails_alone_and_is_remembered() {
        let f = data(8 * 1024, 9);
        let a = archive(std::slice::from_ref(&f), 1024);
        let r = a.blocks()[3];
        let mut bytes = {
            let mut w = Writer::new(
                Vec::new(),
                None,
                WriterOptions {
                    block_size: 1024,
                    width: 1,
                    zstd_level: 1,
                    ..WriterOptions::default()
                },
            )
            .unwrap();
            w.add_file(b"f0", Meta::default(), f.len() as u64, &mut &f[..])
                .unwrap();
            w.finish().unwrap().0
        };
        let coded = a.block(3).unwrap().header.coded_len as u64;
        bytes[(r.end() - coded.div_ceil(2)) as usize] ^= 1;
        let a = Arc::new(Archive::from_bytes(bytes).unwrap());
        let c = BlockCache::new(
            a,
            None,
            CacheConfig {
                workers: 2,
                ..Default::default()
            },
        );
        let rs = c.get_range(0..8);
        for (i, r) in rs.iter().enumerate() {
            match r {
                Ok(b) => assert_eq!(&b[..], &f[i * 1024..(i + 1) * 1024]),
                Err(e) => {
                    assert_eq!(i, 3);
                    assert_eq!(e.block, 3);
                    assert_eq!(e.class, lmz::Class::Corrupt);
                }
            }
        }
        assert!(rs[3].is_err());
        assert!(c.get(3).is_err());
        assert_eq!(c.decode_count(3), 1, "a corrupt block is not decoded again");
        assert_eq!(c.stats().failed, 1);
    }
}
