//! Integer-exact matrix products of the portable engine: a scalar reference and SIMD kernel
//! sets that give the same bits, chosen at run time.
//!
//! Why this shape: the archive format pins the model's *bits*, so every machine must compute
//! every product exactly as the contract's scalar arithmetic does (quantized activations,
//! exact integer block sums, then a fixed sequence of `f32` multiplies and adds per block, in
//! block order, no FMA). Integers are exact in any order, so the SIMD kernels are free in the
//! integer part and only keep the float steps in order. The trick that makes that cheap is
//! the layout: weights are repacked at load time into groups of [`GROUP`] = 16 rows, where
//! one 32-bit lane of a 512-bit vector holds 4 consecutive weights of one row. A
//! `vpdpbusd` with a broadcast of 4 activation bytes then accumulates the block sums of 16
//! rows at once with no horizontal reduction, and the per-block float step is one vector
//! operation across those 16 rows — each lane runs exactly the scalar sequence for its row.
//! Tokens are tiled (up to [`TILE`] per pass) so that a block's weights are unpacked once per
//! tile, and a tile sweeps a span of groups whose weights stay in L2; threads split row
//! groups, never a sum.
//!
//! Layout of a quantized [`Matrix`] (`nb = cols / 32` blocks per row, `groups = ⌈rows/16⌉`):
//! - `qs`: for group g, block b, a record of `QS` bytes at `(g·nb + b)·QS`, made of 64-byte
//!   vectors; vector k, lane l (bytes `64k + 4l .. +4`) holds row `16g + l`'s bytes:
//!   Q4_0/Q4_1 (QS = 256, k < 4): the GGUF `qs[4k .. 4k+4]` (low nibbles are weights 4k.., high
//!   nibbles weights 16+4k..); Q8_0 (QS = 512, k < 8): weights `4k .. 4k+4` stored as `w + 128`
//!   (unsigned, the `u8` side of `vpdpbusd`). Memory is the GGUF's: 4 bits per Q4 weight.
//! - `sc`: the f16 scales per (group, block): `d` of the 16 rows, then (Q4_1) their `m`.
//! - Padded rows (beyond `rows`) are zero and never returned.
//!
//! Activations ([`Acts`]) are quantized per block of 32 into a 48-byte record: the 32 `i8`,
//! `d`, `s = d·Σq`, and the integer corrections `−8·Σq` (Q4_0: nibble − 8) and `−128·Σq`
//! (Q8_0: stored `w + 128`), which start the block's integer accumulator.
//!
//! Kernel sets: `Scalar` (any CPU; the reference), `Avx2` (AVX2 + F16C: `vpmaddubsw` u8×s8
//! pairs — Q4 nibbles ≤ 15 sum 8 products in i16 without saturation, Q8_0 uses the sign trick
//! |w| × sign(w)·q ≤ 2·128·127), `Avx512` (AVX-512 F/BW/VL + VNNI). F32/F16 matrices take the
//! scalar path in every set (the default model has none).
#![allow(unsafe_code)]
// SIMD intrinsics, and threads writing disjoint rows of one output.
// `acc = acc + term` spelled out as the contract writes it; indexed loops over lanes mirror
// the vector code.
#![allow(clippy::assign_op_pattern, clippy::needless_range_loop)]

use crate::error::{Error, Result};
pub use crate::model::binary16::f16_to_f32;

/// Rows per group of the repacked layout (one 32-bit lane per row in a 512-bit vector).
pub const GROUP: usize = 16;
/// Most tokens one pass over a row group's blocks serves.
pub const TILE: usize = 8;
/// Elements per quantized block.
const QK: usize = 32;

/// The kernels one product runs with; every set gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSet {
    Scalar,
    /// AVX2 + F16C.
    Avx2,
    /// AVX-512 F + BW + VL + VNNI.
    Avx512,
    /// Reserved for aarch64 NEON kernels; not built yet, so never [`available`](Self::available).
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl KernelSet {
    const ALL: &'static [KernelSet] = &[
        KernelSet::Scalar,
        KernelSet::Avx2,
        KernelSet::Avx512,
        #[cfg(target_arch = "aarch64")]
        KernelSet::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Scalar => "scalar",
            KernelSet::Avx2 => "avx2",
            KernelSet::Avx512 => "avx512",
            #[cfg(target_arch = "aarch64")]
            KernelSet::Neon => "neon",
        }
    }

    /// Whether this CPU (and this build) runs the set.
    pub fn supported(self) -> bool {
        match self {
            KernelSet::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The sets this CPU runs, `Scalar` first, fastest last.
    pub fn available() -> Vec<KernelSet> {
        Self::ALL
            .iter()
            .copied()
            .filter(|k| k.supported())
            .collect()
    }

    pub fn best() -> KernelSet {
        *Self::available().last().unwrap_or(&KernelSet::Scalar)
    }

    /// `LMZ_KERNELS=scalar|avx2|avx512|neon` forces one; unset, empty or `auto` → [`best`](Self::best).
    pub fn from_env() -> Result<KernelSet> {
        Self::parse(std::env::var("LMZ_KERNELS").ok().as_deref())
    }

    /// [`from_env`](Self::from_env) for a given value of the variable.
    pub fn parse(value: Option<&str>) -> Result<KernelSet> {
        let v = value.unwrap_or("").trim();
        if v.is_empty() || v.eq_ignore_ascii_case("auto") {
            return Ok(Self::best());
        }
        let have: Vec<&str> = Self::available().iter().map(|k| k.name()).collect();
        let have = have.join(", ");
        let known = ["scalar", "avx2", "avx512", "neon"];
        let found = Self::ALL
            .iter()
            .copied()
            .find(|k| k.name().eq_ignore_ascii_case(v));
        match found {
            Some(k) if k.supported() => Ok(k),
            Some(_) => Err(Error::usage(format!(
                "LMZ_KERNELS={v}: this CPU does not run the {v} kernels (it has: {have})"
            ))),
            None if known.iter().any(|n| n.eq_ignore_ascii_case(v)) => Err(Error::usage(format!(
                "LMZ_KERNELS={v}: not available in this build (this CPU has: {have})"
            ))),
            None => Err(Error::usage(format!(
                "LMZ_KERNELS={v}: unknown kernel set (expected auto, scalar, avx2, avx512 or \
                 neon; this CPU has: {have})"
            ))),
        }
    }

    /// The set actually run for `self`: itself when supported, else `Scalar` (same bits).
    fn effective(self) -> KernelSet {
        if self.supported() {
            self
        } else {
            KernelSet::Scalar
        }
    }
}

/// GGUF weight types this engine multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WeightType {
    pub fn from_ggml(id: u32) -> Option<WeightType> {
        Some(match id {
            0 => WeightType::F32,
            1 => WeightType::F16,
            2 => WeightType::Q4_0,
            3 => WeightType::Q4_1,
            8 => WeightType::Q8_0,
            _ => return None,
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q4_0 => 2,
            WeightType::Q4_1 => 3,
            WeightType::Q8_0 => 8,
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_len(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 => 1,
            _ => QK,
        }
    }

    /// Bytes per block in GGUF.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 => 2,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q8_0 => 34,
        }
    }

    /// Bytes of one GGUF row of `cols` elements; `None` when `cols` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            return None;
        }
        (cols / self.block_len()).checked_mul(self.block_bytes())
    }

    fn quantized(self) -> bool {
        matches!(self, WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0)
    }

    /// Bytes of one (group, block) record of `qs`.
    fn qs_bytes(self) -> usize {
        match self {
            WeightType::Q8_0 => 512,
            _ => 256,
        }
    }

    /// f16 scales per (group, block).
    fn sc_len(self) -> usize {
        match self {
            WeightType::Q4_1 => 2 * GROUP,
            _ => GROUP,
        }
    }
}

/// 64 bytes, 64-aligned: the unit of a repacked matrix's storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

enum Store {
    /// Quantized: the `qs` records and the f16 scales (see the module doc).
    Quant { qs: Vec<Line>, sc: Vec<u16> },
    /// F32, row-major.
    F32(Vec<f32>),
    /// F16, row-major.
    F16(Vec<u16>),
}

/// A weight matrix, rows × cols, repacked at load time into the kernels' layout.
pub struct Matrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    /// Blocks per row (quantized types).
    nb: usize,
    groups: usize,
    store: Store,
}

impl Matrix {
    /// `data` is exactly `rows × row_bytes(cols)` bytes of GGUF row-major data (untrusted).
    pub fn from_gguf(
        ty: WeightType,
        data: &[u8],
        cols: usize,
        rows: usize,
    ) -> std::result::Result<Matrix, String> {
        if rows == 0 || cols == 0 {
            return Err(format!("{ty:?} matrix of {rows} × {cols}: empty"));
        }
        let rb = ty.row_bytes(cols).ok_or_else(|| {
            format!(
                "{ty:?} matrix with {cols} columns: not a multiple of the block length {}",
                ty.block_len()
            )
        })?;
        let want = rb
            .checked_mul(rows)
            .ok_or_else(|| format!("{ty:?} matrix of {rows} × {cols}: size overflows"))?;
        if data.len() != want {
            return Err(format!(
                "{ty:?} matrix of {rows} × {cols}: {} bytes of data, expected {want}",
                data.len()
            ));
        }
        let groups = rows.div_ceil(GROUP);
        let nb = cols / QK;
        let store = match ty {
            WeightType::F32 => Store::F32(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            WeightType::F16 => Store::F16(
                data.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            _ => {
                let qsb = ty.qs_bytes();
                let scl = ty.sc_len();
                let recs = groups
                    .checked_mul(nb)
                    .ok_or_else(|| format!("{ty:?} matrix of {rows} × {cols}: size overflows"))?;
                let mut qs = vec![Line([0; 64]); recs * (qsb / 64)];
                let mut sc = vec![0u16; recs * scl];
                let bb = ty.block_bytes();
                for (r, row) in data.chunks_exact(rb).enumerate() {
                    let (g, l) = (r / GROUP, r % GROUP);
                    for (b, blk) in row.chunks_exact(bb).enumerate() {
                        let rec = g * nb + b;
                        let line0 = rec * (qsb / 64);
                        sc[rec * scl + l] = u16::from_le_bytes([blk[0], blk[1]]);
                        match ty {
                            WeightType::Q8_0 => {
                                for j in 0..QK {
                                    qs[line0 + j / 4].0[4 * l + j % 4] = blk[2 + j] ^ 0x80;
                                }
                            }
                            _ => {
                                let off = if ty == WeightType::Q4_1 {
                                    sc[rec * scl + GROUP + l] =
                                        u16::from_le_bytes([blk[2], blk[3]]);
                                    4
                                } else {
                                    2
                                };
                                for j in 0..16 {
                                    qs[line0 + j / 4].0[4 * l + j % 4] = blk[off + j];
                                }
                            }
                        }
                    }
                }
                Store::Quant { qs, sc }
            }
        };
        Ok(Matrix {
            ty,
            rows,
            cols,
            nb,
            groups,
            store,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    /// Bytes this matrix holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        match &self.store {
            Store::Quant { qs, sc } => qs.capacity() * 64 + sc.capacity() * 2,
            Store::F32(v) => v.capacity() * 4,
            Store::F16(v) => v.capacity() * 2,
        }
    }

    /// Row `r` dequantized per the contract (embedding lookup). Panics if `r ≥ rows` or
    /// `out` is shorter than `cols`.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of a matrix of {} rows", self.rows);
        let out = &mut out[..self.cols];
        match &self.store {
            Store::F32(v) => out.copy_from_slice(&v[r * self.cols..][..self.cols]),
            Store::F16(v) => {
                for (o, &h) in out.iter_mut().zip(&v[r * self.cols..][..self.cols]) {
                    *o = f16_to_f32(h);
                }
            }
            Store::Quant { qs, sc } => {
                let (g, l) = (r / GROUP, r % GROUP);
                let (lines, scl) = (self.ty.qs_bytes() / 64, self.ty.sc_len());
                for b in 0..self.nb {
                    let rec = g * self.nb + b;
                    let recq = &qs[rec * lines..][..lines];
                    let dw = f16_to_f32(sc[rec * scl + l]);
                    let o = &mut out[b * QK..][..QK];
                    let byte = |j: usize| recq[j / 4].0[4 * l + j % 4];
                    match self.ty {
                        WeightType::Q8_0 => {
                            for (j, o) in o.iter_mut().enumerate() {
                                *o = dw * ((byte(j) ^ 0x80) as i8 as f32);
                            }
                        }
                        WeightType::Q4_0 => {
                            for j in 0..16 {
                                o[j] = dw * (((byte(j) & 15) as i32 - 8) as f32);
                                o[j + 16] = dw * (((byte(j) >> 4) as i32 - 8) as f32);
                            }
                        }
                        _ => {
                            let mw = f16_to_f32(sc[rec * scl + GROUP + l]);
                            for j in 0..16 {
                                o[j] = (dw * ((byte(j) & 15) as f32)) + mw;
                                o[j + 16] = (dw * ((byte(j) >> 4) as f32)) + mw;
                            }
                        }
                    }
                }
            }
        }
    }

    fn qs_ptr(&self) -> *const u8 {
        match &self.store {
            Store::Quant { qs, .. } => qs.as_ptr() as *const u8,
            _ => std::ptr::null(),
        }
    }

    fn sc_ptr(&self) -> *const u16 {
        match &self.store {
            Store::Quant { sc, .. } => sc.as_ptr(),
            _ => std::ptr::null(),
        }
    }
}

/// One quantized activation block (48 bytes, 16-aligned).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(16))]
struct ABlock {
    q: [i8; 32],
    d: f32,
    s: f32,
    /// −8·Σq: starts a Q4_0 block sum (weights are nibble − 8).
    neg8: i32,
    /// −128·Σq: starts a Q8_0 block sum (weights stored as w + 128).
    neg128: i32,
}

/// `rows` activation rows of `cols` f32 each, quantized per the contract (when `cols` is a
/// multiple of 32) and kept as f32 too. Buffers are reused across calls.
#[derive(Default)]
pub struct Acts {
    rows: usize,
    cols: usize,
    x: Vec<f32>,
    blocks: Vec<ABlock>,
}

impl Acts {
    pub fn new() -> Acts {
        Acts::default()
    }

    /// Takes `rows` rows of `cols` values from `x` (its first `rows × cols`).
    pub fn set(&mut self, ks: KernelSet, x: &[f32], rows: usize, cols: usize) {
        let n = rows.checked_mul(cols).expect("activation size overflows");
        assert!(x.len() >= n, "{} activations for {rows} × {cols}", x.len());
        self.rows = rows;
        self.cols = cols;
        self.x.clear();
        self.x.extend_from_slice(&x[..n]);
        self.blocks.clear();
        if !cols.is_multiple_of(QK) {
            return;
        }
        let nb = n / QK;
        self.blocks.resize(nb, ABlock::default());
        match ks.effective() {
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx512 => unsafe { x86::quantize_avx512(&self.x, &mut self.blocks) },
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 => unsafe { x86::quantize_avx2(&self.x, &mut self.blocks) },
            _ => quantize_scalar(&self.x, &mut self.blocks),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// The contract's activation quantization of one block of 32.
///
/// `round_ties_even` is a libm call without SSE4.1, so the rounding is done as
/// `(v + 1.5·2^23) − 1.5·2^23` after the clamp: for |v| ≤ 127 the sum lies where the f32 ulp
/// is 1, so it rounds v to the nearest integer, ties to even, exactly; clamping first gives
/// the same result as rounding first (127 and −127 are integers).
#[inline(always)]
fn quantize_block(xs: &[f32]) -> ABlock {
    const MAGIC: f32 = 12_582_912.0;
    let mut amax = 0.0f32;
    for &x in xs {
        let a = x.abs();
        if a > amax {
            amax = a;
        }
    }
    let d = amax / 127.0;
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut blk = ABlock {
        d,
        ..ABlock::default()
    };
    let mut sum = 0i32;
    for (q, &x) in blk.q.iter_mut().zip(xs) {
        let v = x * inv;
        let v = if v.is_nan() {
            0.0
        } else {
            v.clamp(-127.0, 127.0)
        };
        *q = ((v + MAGIC) - MAGIC) as i8;
        sum += *q as i32;
    }
    blk.s = d * (sum as f32);
    blk.neg8 = -8 * sum;
    blk.neg128 = -128 * sum;
    blk
}

fn quantize_scalar(x: &[f32], blocks: &mut [ABlock]) {
    for (blk, xs) in blocks.iter_mut().zip(x.chunks_exact(QK)) {
        *blk = quantize_block(xs);
    }
}

/// The output, shared by threads that write disjoint rows of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Token rows whose quantized activations one pass over the weights serves (kept in L2).
fn token_chunk(nb: usize) -> usize {
    let per_token = nb * std::mem::size_of::<ABlock>() + 1;
    ((384 << 10) / per_token).clamp(TILE, 256) / TILE * TILE
}

/// Weight bytes of the row groups one token tile sweeps before the next tile starts (kept in
/// L2). Sweeping several groups per tile writes each token's outputs in runs of
/// `span × 64` bytes rather than 64 bytes a page apart, which is what bounds a wide
/// product's output (49152 logits × 256 tokens is 50 MB).
const SPAN_BYTES: usize = 256 << 10;

/// Below this many multiply-adds (~15 µs on one AVX-512 core) a product runs on the calling
/// thread: a pool round trip (waking a worker) costs more than it saves.
const MIN_PARALLEL_MACS: usize = 1 << 21;

/// `out[t * w.rows() + r]` = row r of W · activation row t, for every t < x.rows(),
/// r < w.rows(), exactly as the contract's scalar arithmetic. `pool`: rows are split over its
/// threads (never a sum); `None` = this thread. A set this CPU lacks runs as `Scalar`.
pub fn matmul(
    ks: KernelSet,
    pool: Option<&rayon::ThreadPool>,
    w: &Matrix,
    x: &Acts,
    out: &mut [f32],
) {
    assert_eq!(
        x.cols, w.cols,
        "activations of {} columns for a matrix of {}",
        x.cols, w.cols
    );
    let tokens = x.rows;
    assert!(
        out.len() >= tokens * w.rows,
        "output of {} for {tokens} × {}",
        out.len(),
        w.rows
    );
    if w.ty.quantized() {
        assert_eq!(x.blocks.len(), tokens * w.nb, "activations not quantized");
    }
    if tokens == 0 {
        return;
    }
    let ks = ks.effective();
    let op = OutPtr(out.as_mut_ptr());
    let threads = pool.map_or(1, |p| p.current_num_threads());
    let macs = tokens * w.rows * w.cols;
    let parts = if macs < MIN_PARALLEL_MACS {
        1
    } else {
        threads.min(w.groups)
    };
    if parts <= 1 {
        // SAFETY: rows 0..rows of every token lie inside `out` (checked above).
        unsafe { run_groups(ks, w, x, op, 0, w.groups) };
        return;
    }
    let pool = pool.expect("parts > 1 only with a pool");
    let groups = w.groups;
    // In place: this thread computes part 0 while the pool's threads take the others (one
    // wake-up fewer than sending every part to the pool).
    pool.in_place_scope(|s| {
        for p in 1..parts {
            s.spawn(move |_| {
                let (g0, g1) = (groups * p / parts, groups * (p + 1) / parts);
                // SAFETY: each part writes only its own rows' outputs.
                unsafe { run_groups(ks, w, x, op, g0, g1) };
            });
        }
        // SAFETY: as above, part 0.
        unsafe { run_groups(ks, w, x, op, 0, groups / parts) };
    });
}

/// Computes the outputs of row groups `g0..g1` for every token.
///
/// # Safety
/// `out` must hold `x.rows × w.rows` f32 and no one else may write these rows meanwhile.
unsafe fn run_groups(ks: KernelSet, w: &Matrix, x: &Acts, out: OutPtr, g0: usize, g1: usize) {
    let tokens = x.rows;
    if !w.ty.quantized() {
        for t in 0..tokens {
            let xr = &x.x[t * w.cols..][..w.cols];
            for r in g0 * GROUP..(g1 * GROUP).min(w.rows) {
                let mut acc = 0.0f32;
                match &w.store {
                    Store::F32(v) => {
                        for (&a, &b) in v[r * w.cols..][..w.cols].iter().zip(xr) {
                            acc = acc + (a * b);
                        }
                    }
                    Store::F16(v) => {
                        for (&a, &b) in v[r * w.cols..][..w.cols].iter().zip(xr) {
                            acc = acc + (f16_to_f32(a) * b);
                        }
                    }
                    Store::Quant { .. } => unreachable!(),
                }
                *out.0.add(t * w.rows + r) = acc;
            }
        }
        return;
    }
    let chunk = token_chunk(w.nb);
    let group_bytes = w.nb * (w.ty.qs_bytes() + 2 * w.ty.sc_len());
    let span = (SPAN_BYTES / group_bytes).max(1);
    let mut t0 = 0;
    while t0 < tokens {
        let t1 = (t0 + chunk).min(tokens);
        let mut gs = g0;
        while gs < g1 {
            let ge = (gs + span).min(g1);
            let mut t = t0;
            while t < t1 {
                let n = (t1 - t).min(TILE);
                for g in gs..ge {
                    let tile = Tile {
                        w,
                        x,
                        out,
                        g,
                        t,
                        n,
                        prefetch: t == t0,
                    };
                    match ks {
                        #[cfg(target_arch = "x86_64")]
                        KernelSet::Avx512 => x86::tile_avx512(&tile),
                        #[cfg(target_arch = "x86_64")]
                        KernelSet::Avx2 => x86::tile_avx2(&tile),
                        _ => tile_scalar(&tile),
                    }
                }
                t += n;
            }
            gs = ge;
        }
        t0 = t1;
    }
}

/// One unit of work: row group `g` × tokens `t .. t + n` (n ≤ TILE).
struct Tile<'a> {
    w: &'a Matrix,
    x: &'a Acts,
    out: OutPtr,
    g: usize,
    t: usize,
    n: usize,
    /// The first tile over this group in this token chunk: its weights come from memory, so
    /// prefetch ahead (later tiles find them in L2). Only wide tiles do: with 1–3 tokens the loop is
    /// light enough for the hardware prefetcher, and measured faster without.
    prefetch: bool,
}

impl Tile<'_> {
    /// Valid rows in this group.
    fn live_rows(&self) -> usize {
        (self.w.rows - self.g * GROUP).min(GROUP)
    }

    fn acts(&self, i: usize) -> &[ABlock] {
        &self.x.blocks[(self.t + i) * self.w.nb..][..self.w.nb]
    }

    /// Writes `vals` (the group's 16 rows) as token `t + i`'s outputs.
    ///
    /// # Safety
    /// As [`run_groups`].
    unsafe fn store(&self, i: usize, vals: &[f32; GROUP]) {
        let base = self.out.0.add((self.t + i) * self.w.rows + self.g * GROUP);
        for (l, &v) in vals.iter().enumerate().take(self.live_rows()) {
            *base.add(l) = v;
        }
    }
}

/// The scalar reference kernel: the contract's arithmetic over the repacked layout, written
/// lane-wise over the group's 16 rows (as the vector kernels are) so that the compiler can
/// vectorize it on any target; each lane is the contract's sequence for its row.
fn tile_scalar(tile: &Tile) {
    let w = tile.w;
    let (ty, nb) = (w.ty, w.nb);
    let (qsb, scl) = (ty.qs_bytes(), ty.sc_len());
    let Store::Quant { qs, sc } = &w.store else {
        unreachable!()
    };
    let mut acc = [[0.0f32; GROUP]; TILE];
    for b in 0..nb {
        let rec = tile.g * nb + b;
        let recq = &qs[rec * qsb / 64..][..qsb / 64];
        let sc = &sc[rec * scl..][..scl];
        // wt[j][l]: weight j of the block, row l of the group.
        let mut wt = [[0i16; GROUP]; QK];
        for k in 0..qsb / 64 {
            for l in 0..GROUP {
                for i in 0..4 {
                    let byte = recq[k].0[4 * l + i];
                    match ty {
                        WeightType::Q8_0 => wt[4 * k + i][l] = (byte ^ 0x80) as i8 as i16,
                        _ => {
                            wt[4 * k + i][l] = (byte & 15) as i16;
                            wt[16 + 4 * k + i][l] = (byte >> 4) as i16;
                        }
                    }
                }
            }
        }
        let mut dw = [0.0f32; GROUP];
        let mut mw = [0.0f32; GROUP];
        for l in 0..GROUP {
            dw[l] = f16_to_f32(sc[l]);
            if ty == WeightType::Q4_1 {
                mw[l] = f16_to_f32(sc[GROUP + l]);
            }
        }
        for (i, acc) in acc.iter_mut().enumerate().take(tile.n) {
            let a = &tile.acts(i)[b];
            let init = if ty == WeightType::Q4_0 { a.neg8 } else { 0 };
            let mut isum = [init; GROUP];
            for j in 0..QK {
                let q = a.q[j] as i32;
                for l in 0..GROUP {
                    // |products| ≤ 128·127, |sums| < 2^24: these never wrap; wrapping ops only
                    // spare the overflow checks that would keep the loop from vectorizing.
                    isum[l] = isum[l].wrapping_add((wt[j][l] as i32).wrapping_mul(q));
                }
            }
            for l in 0..GROUP {
                let mut term = (dw[l] * a.d) * (isum[l] as f32);
                if ty == WeightType::Q4_1 {
                    term = term + (mw[l] * a.s);
                }
                acc[l] = acc[l] + term;
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(tile.n) {
        // SAFETY: the tile's rows belong to this caller (run_groups).
        unsafe { tile.store(i, acc) };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Activation quantization, AVX-512: the same bits as [`quantize_block`].
    ///
    /// # Safety
    /// The CPU must run AVX-512 F/BW/VL; `x.len() == 32 · blocks.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize_avx512(x: &[f32], blocks: &mut [ABlock]) {
        let absmask = _mm512_set1_epi32(0x7fff_ffff);
        let lo = _mm512_set1_ps(-127.0);
        let hi = _mm512_set1_ps(127.0);
        for (blk, xs) in blocks.iter_mut().zip(x.chunks_exact(QK)) {
            let x0 = _mm512_loadu_ps(xs.as_ptr());
            let x1 = _mm512_loadu_ps(xs.as_ptr().add(16));
            let a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x0), absmask));
            let a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x1), absmask));
            // max(a, m) returns m when a is NaN: NaN is ignored, as in the contract.
            let m = _mm512_max_ps(a1, _mm512_max_ps(a0, _mm512_setzero_ps()));
            let amax = _mm512_reduce_max_ps(m);
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            let vinv = _mm512_set1_ps(inv);
            let q = |xv: __m512| {
                let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(xv, vinv),
                );
                let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
                let v = _mm512_maskz_mov_ps(ord, v);
                _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi))
            };
            let q0 = q(x0);
            let q1 = q(x1);
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            _mm_storeu_si128(blk.q.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(
                blk.q.as_mut_ptr().add(16) as *mut __m128i,
                _mm512_cvtepi32_epi8(q1),
            );
            blk.d = d;
            blk.s = d * (sum as f32);
            blk.neg8 = -8 * sum;
            blk.neg128 = -128 * sum;
        }
    }

    /// Activation quantization, AVX2: the same bits as [`quantize_block`].
    ///
    /// # Safety
    /// The CPU must run AVX2; `x.len() == 32 · blocks.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_avx2(x: &[f32], blocks: &mut [ABlock]) {
        let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let lo = _mm256_set1_ps(-127.0);
        let hi = _mm256_set1_ps(127.0);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (blk, xs) in blocks.iter_mut().zip(x.chunks_exact(QK)) {
            let xv: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(xs.as_ptr().add(8 * k)));
            // max(a, m) returns m when a is NaN: NaN is ignored, as in the contract.
            let mut m = _mm256_setzero_ps();
            for v in xv {
                m = _mm256_max_ps(_mm256_and_ps(v, absmask), m);
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m1 = _mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2));
            let amax = _mm_cvtss_f32(m1);
            let d = amax / 127.0;
            let inv = _mm256_set1_ps(if d == 0.0 { 0.0 } else { 1.0 / d });
            let qv: [__m256i; 4] = std::array::from_fn(|k| {
                let v = _mm256_mul_ps(xv[k], inv);
                let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
                // cvtps rounds to nearest even (the MXCSR default Rust assumes); clamping
                // first is equivalent, as in `quantize_block`.
                _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi))
            });
            let p01 = _mm256_packs_epi32(qv[0], qv[1]);
            let p23 = _mm256_packs_epi32(qv[2], qv[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), order);
            _mm256_storeu_si256(blk.q.as_mut_ptr() as *mut __m256i, bytes);
            let s8 = _mm256_add_epi32(
                _mm256_add_epi32(qv[0], qv[1]),
                _mm256_add_epi32(qv[2], qv[3]),
            );
            let s4 = _mm_add_epi32(
                _mm256_castsi256_si128(s8),
                _mm256_extracti128_si256::<1>(s8),
            );
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)));
            blk.d = d;
            blk.s = d * (sum as f32);
            blk.neg8 = -8 * sum;
            blk.neg128 = -128 * sum;
        }
    }

    pub(super) fn tile_avx512(tile: &Tile) {
        macro_rules! go {
            ($($n:literal)*) => {
                match (tile.w.ty, tile.n) {
                    $(
                        (WeightType::Q4_0, $n) => unsafe { avx512_q4::<$n, false>(tile) },
                        (WeightType::Q4_1, $n) => unsafe { avx512_q4::<$n, true>(tile) },
                        (WeightType::Q8_0, $n) => unsafe { avx512_q8::<$n>(tile) },
                    )*
                    _ => unreachable!(),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8)
    }

    pub(super) fn tile_avx2(tile: &Tile) {
        macro_rules! go {
            ($($n:literal)*) => {
                match (tile.w.ty, tile.n) {
                    $(
                        (WeightType::Q4_0, $n) => unsafe { avx2_q4::<$n, false>(tile) },
                        (WeightType::Q4_1, $n) => unsafe { avx2_q4::<$n, true>(tile) },
                        (WeightType::Q8_0, $n) => unsafe { avx2_q8::<$n>(tile) },
                    )*
                    _ => unreachable!(),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8)
    }

    /// How far ahead (bytes of `qs`) the first tile of a group prefetches: the next group's
    /// records follow this one's, so the stream runs on across groups.
    const PREFETCH: usize = 2048;

    /// Prefetches the `qs` lines `PREFETCH` bytes past record `p` (`lines` of 64 bytes) and
    /// the matching scales.
    #[inline(always)]
    unsafe fn prefetch(p: *const u8, lines: usize, sc: *const u16, scl: usize) {
        for k in 0..lines {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 64 * k) as *const i8);
        }
        let ahead = PREFETCH / (64 * lines);
        _mm_prefetch::<_MM_HINT_T0>(sc.wrapping_add(ahead * scl) as *const i8);
    }

    #[inline(always)]
    unsafe fn bcast4(p: *const i8) -> i32 {
        (p as *const i32).read_unaligned()
    }

    /// Stores a 16-row result vector for token `i` of the tile (masked in the last group).
    #[inline(always)]
    unsafe fn store16(tile: &Tile, i: usize, v: __m512) {
        let base = tile.out.0.add((tile.t + i) * tile.w.rows + tile.g * GROUP);
        let live = tile.live_rows();
        if live == GROUP {
            _mm512_storeu_ps(base, v);
        } else {
            _mm512_mask_storeu_ps(base, ((1u32 << live) - 1) as u16, v);
        }
    }

    /// `init` + the block sums of 16 rows: weight vector k (4 weights per row) pairs with
    /// activations `4k .. 4k+4`. `split`: four independent chains (few tokens per tile, where
    /// one chain of 8 dependent `vpdpbusd` would be latency-bound).
    #[inline(always)]
    unsafe fn dot32(init: __m512i, ww: &[__m512i; 8], q: *const i8, split: bool) -> __m512i {
        let bq = |k: usize| _mm512_set1_epi32(bcast4(q.add(4 * k)));
        if split {
            let z = _mm512_setzero_si512();
            let mut c = [init, z, z, z];
            for k in 0..8 {
                c[k % 4] = _mm512_dpbusd_epi32(c[k % 4], ww[k], bq(k));
            }
            _mm512_add_epi32(_mm512_add_epi32(c[0], c[1]), _mm512_add_epi32(c[2], c[3]))
        } else {
            let mut c = init;
            for k in 0..8 {
                c = _mm512_dpbusd_epi32(c, ww[k], bq(k));
            }
            c
        }
    }

    /// Q4_0 (`Q41 = false`) and Q4_1 × `T` tokens over one 16-row group.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn avx512_q4<const T: usize, const Q41: bool>(tile: &Tile) {
        let w = tile.w;
        let nb = w.nb;
        let scl = w.ty.sc_len();
        let rec0 = tile.g * nb;
        let qs = w.qs_ptr().add(rec0 * 256);
        let sc = w.sc_ptr().add(rec0 * scl);
        let acts: [*const ABlock; T] = std::array::from_fn(|i| tile.acts(i).as_ptr());
        let m4 = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let p = qs.add(b * 256);
            if T >= 4 && tile.prefetch {
                prefetch(p, 4, sc.add(b * scl), scl);
            }
            let v: [__m512i; 4] =
                std::array::from_fn(|k| _mm512_loadu_si512(p.add(64 * k) as *const _));
            let wl: [__m512i; 4] = std::array::from_fn(|k| _mm512_and_si512(v[k], m4));
            let wh: [__m512i; 4] =
                std::array::from_fn(|k| _mm512_and_si512(_mm512_srli_epi16::<4>(v[k]), m4));
            let s = sc.add(b * scl);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(s as *const __m256i));
            let mw = if Q41 {
                _mm512_cvtph_ps(_mm256_loadu_si256(s.add(GROUP) as *const __m256i))
            } else {
                _mm512_setzero_ps()
            };
            let ww = [wl[0], wl[1], wl[2], wl[3], wh[0], wh[1], wh[2], wh[3]];
            for i in 0..T {
                let a = &*acts[i].add(b);
                let init = if Q41 {
                    _mm512_setzero_si512()
                } else {
                    _mm512_set1_epi32(a.neg8)
                };
                let isum = dot32(init, &ww, a.q.as_ptr(), T < 4);
                let dd = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
                let mut term = _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum));
                if Q41 {
                    term = _mm512_add_ps(term, _mm512_mul_ps(mw, _mm512_set1_ps(a.s)));
                }
                acc[i] = _mm512_add_ps(acc[i], term);
            }
        }
        for (i, &v) in acc.iter().enumerate() {
            store16(tile, i, v);
        }
    }

    /// Q8_0 × `T` tokens over one 16-row group (weights stored as w + 128).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn avx512_q8<const T: usize>(tile: &Tile) {
        let w = tile.w;
        let nb = w.nb;
        let rec0 = tile.g * nb;
        let qs = w.qs_ptr().add(rec0 * 512);
        let sc = w.sc_ptr().add(rec0 * GROUP);
        let acts: [*const ABlock; T] = std::array::from_fn(|i| tile.acts(i).as_ptr());
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let p = qs.add(b * 512);
            if T >= 4 && tile.prefetch {
                prefetch(p, 8, sc.add(b * GROUP), GROUP);
            }
            let wv: [__m512i; 8] =
                std::array::from_fn(|k| _mm512_loadu_si512(p.add(64 * k) as *const _));
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(b * GROUP) as *const __m256i));
            for i in 0..T {
                let a = &*acts[i].add(b);
                let isum = dot32(_mm512_set1_epi32(a.neg128), &wv, a.q.as_ptr(), T < 4);
                let dd = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
                acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum)));
            }
        }
        for (i, &v) in acc.iter().enumerate() {
            store16(tile, i, v);
        }
    }

    /// Stores an 8-row result (half `h` of the group) for token `i` of the tile.
    #[inline(always)]
    unsafe fn store8(tile: &Tile, i: usize, h: usize, v: __m256) {
        let base = tile
            .out
            .0
            .add((tile.t + i) * tile.w.rows + tile.g * GROUP + 8 * h);
        let live = tile.live_rows().saturating_sub(8 * h).min(8);
        if live == 8 {
            _mm256_storeu_ps(base, v);
        } else {
            let mut tmp = [0.0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), base, live);
        }
    }

    /// Q4_0 / Q4_1 × `T` tokens, AVX2: the group as two halves of 8 rows.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn avx2_q4<const T: usize, const Q41: bool>(tile: &Tile) {
        let w = tile.w;
        let nb = w.nb;
        let scl = w.ty.sc_len();
        let rec0 = tile.g * nb;
        let qs = w.qs_ptr().add(rec0 * 256);
        let sc = w.sc_ptr().add(rec0 * scl);
        let acts: [*const ABlock; T] = std::array::from_fn(|i| tile.acts(i).as_ptr());
        let m4 = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let halves = if tile.live_rows() > 8 { 2 } else { 1 };
        for h in 0..halves {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let p = qs.add(b * 256 + 32 * h);
                let v: [__m256i; 4] =
                    std::array::from_fn(|k| _mm256_loadu_si256(p.add(64 * k) as *const __m256i));
                let wl: [__m256i; 4] = std::array::from_fn(|k| _mm256_and_si256(v[k], m4));
                let wh: [__m256i; 4] =
                    std::array::from_fn(|k| _mm256_and_si256(_mm256_srli_epi16::<4>(v[k]), m4));
                let s = sc.add(b * scl + 8 * h);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(s as *const __m128i));
                let mw = if Q41 {
                    _mm256_cvtph_ps(_mm_loadu_si128(s.add(GROUP) as *const __m128i))
                } else {
                    _mm256_setzero_ps()
                };
                for i in 0..T {
                    let a = &*acts[i].add(b);
                    let q = a.q.as_ptr();
                    // Each i16 lane sums ≤ 8 pairs of (nibble ≤ 15) × (|q| ≤ 127): ≤ 30480.
                    let mut s16 = _mm256_maddubs_epi16(wl[0], _mm256_set1_epi32(bcast4(q)));
                    for k in 1..4 {
                        s16 = _mm256_add_epi16(
                            s16,
                            _mm256_maddubs_epi16(wl[k], _mm256_set1_epi32(bcast4(q.add(4 * k)))),
                        );
                    }
                    for k in 0..4 {
                        s16 = _mm256_add_epi16(
                            s16,
                            _mm256_maddubs_epi16(
                                wh[k],
                                _mm256_set1_epi32(bcast4(q.add(16 + 4 * k))),
                            ),
                        );
                    }
                    let mut isum = _mm256_madd_epi16(s16, ones);
                    if !Q41 {
                        isum = _mm256_add_epi32(isum, _mm256_set1_epi32(a.neg8));
                    }
                    let dd = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
                    let mut term = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(isum));
                    if Q41 {
                        term = _mm256_add_ps(term, _mm256_mul_ps(mw, _mm256_set1_ps(a.s)));
                    }
                    acc[i] = _mm256_add_ps(acc[i], term);
                }
            }
            for (i, &v) in acc.iter().enumerate() {
                store8(tile, i, h, v);
            }
        }
    }

    /// Q8_0 × `T` tokens, AVX2: |w| (u8) × sign(w)·q (s8), pairs ≤ 2·128·127 < 2^15.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn avx2_q8<const T: usize>(tile: &Tile) {
        let w = tile.w;
        let nb = w.nb;
        let rec0 = tile.g * nb;
        let qs = w.qs_ptr().add(rec0 * 512);
        let sc = w.sc_ptr().add(rec0 * GROUP);
        let acts: [*const ABlock; T] = std::array::from_fn(|i| tile.acts(i).as_ptr());
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let halves = if tile.live_rows() > 8 { 2 } else { 1 };
        for h in 0..halves {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let p = qs.add(b * 512 + 32 * h);
                let ws: [__m256i; 8] = std::array::from_fn(|k| {
                    _mm256_xor_si256(_mm256_loadu_si256(p.add(64 * k) as *const __m256i), flip)
                });
                let wa: [__m256i; 8] = std::array::from_fn(|k| _mm256_abs_epi8(ws[k]));
                let dw =
                    _mm256_cvtph_ps(_mm_loadu_si128(sc.add(b * GROUP + 8 * h) as *const __m128i));
                for i in 0..T {
                    let a = &*acts[i].add(b);
                    let q = a.q.as_ptr();
                    let mut isum = _mm256_setzero_si256();
                    for k in 0..8 {
                        let sq = _mm256_sign_epi8(_mm256_set1_epi32(bcast4(q.add(4 * k))), ws[k]);
                        isum = _mm256_add_epi32(
                            isum,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(wa[k], sq), ones),
                        );
                    }
                    let dd = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
                    acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(isum)));
                }
            }
            for (i, &v) in acc.iter().enumerate() {
                store8(tile, i, h, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: small, deterministic, good enough for test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Roughly uniform in (−1, 1) times 2^(−8 .. 8): many magnitudes, so order matters.
        fn value(&mut self) -> f32 {
            let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            u * 2f32.powi(self.below(17) as i32 - 8)
        }
    }

    fn f16_bits(rng: &mut Rng, edgy: bool) -> u16 {
        let sign = if rng.below(2) == 0 { 0 } else { 0x8000 };
        let pick = if edgy { rng.below(12) } else { 11 };
        sign | match pick {
            0 => 0,
            1 => (rng.below(0x3ff) + 1) as u16,    // subnormal
            2 => 0x7c00,                           // inf
            3 => 0x7e00 | rng.below(0x200) as u16, // quiet NaN
            4 => 0x7c01,                           // signalling NaN
            5 => 0x7bff,                           // largest finite
            6 => 0x0400,                           // smallest normal
            _ => (((rng.below(12) + 5) << 10) | rng.below(1024)) as u16,
        }
    }

    fn gen_matrix(rng: &mut Rng, ty: WeightType, rows: usize, cols: usize, edgy: bool) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..rows {
            match ty {
                WeightType::F32 => {
                    for _ in 0..cols {
                        let v = if edgy && rng.below(20) == 0 {
                            [0.0, -0.0, f32::INFINITY, f32::NAN, 1e-40, 3e38][rng.below(6)]
                        } else {
                            rng.value()
                        };
                        data.extend_from_slice(&v.to_le_bytes());
                    }
                }
                WeightType::F16 => {
                    for _ in 0..cols {
                        let e = edgy && rng.below(4) == 0;
                        data.extend_from_slice(&f16_bits(rng, e).to_le_bytes());
                    }
                }
                _ => {
                    for _ in 0..cols / QK {
                        let zero = rng.below(10) == 0;
                        data.extend_from_slice(&f16_bits(rng, edgy).to_le_bytes());
                        if ty == WeightType::Q4_1 {
                            data.extend_from_slice(&f16_bits(rng, edgy).to_le_bytes());
                        }
                        let n = if ty == WeightType::Q8_0 { 32 } else { 16 };
                        for _ in 0..n {
                            let b = match (zero, rng.below(8)) {
                                (true, _) => 0,
                                (_, 0) => 0x80, // Q8_0: −128
                                (_, 1) => 0xff,
                                _ => rng.next() as u8,
                            };
                            data.push(b);
                        }
                    }
                }
            }
        }
        data
    }

    fn gen_acts(rng: &mut Rng, n: usize, edgy: bool) -> Vec<f32> {
        let mut x: Vec<f32> = (0..n).map(|_| rng.value()).collect();
        for blk in x.chunks_mut(QK) {
            match rng.below(if edgy { 6 } else { 12 }) {
                0 => blk.iter_mut().for_each(|v| *v = 0.0),
                1 => blk.iter_mut().for_each(|v| *v *= 1e-38), // tiny, some subnormal
                2 => blk.iter_mut().for_each(|v| *v *= 1e30),
                3 if edgy => {
                    for v in blk.iter_mut() {
                        if rng.below(4) == 0 {
                            *v = [
                                -0.0,
                                f32::INFINITY,
                                f32::NEG_INFINITY,
                                f32::NAN,
                                -f32::NAN,
                                1e-45,
                                f32::MAX,
                                f32::MIN_POSITIVE,
                            ][rng.below(8)];
                        }
                    }
                }
                4 if edgy => blk.iter_mut().for_each(|v| *v = f32::NAN),
                _ => {}
            }
        }
        x
    }

    // ---- the contract's pseudocode, transcribed directly over the GGUF bytes ----

    fn ref_f16(h: u16) -> f32 {
        let s = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
        let e = ((h >> 10) & 0x1f) as i32;
        let m = (h & 0x3ff) as f32;
        match e {
            0 => s * m * 2f32.powi(-24),
            31 if m == 0.0 => s * f32::INFINITY,
            31 => f32::NAN,
            _ => s * (1024.0 + m) * 2f32.powi(e - 25),
        }
    }

    /// (q, d, s) of one activation block, exactly as the contract writes it.
    fn ref_quant(xs: &[f32]) -> ([i32; 32], f32, f32) {
        let mut amax = 0.0f32;
        for &x in xs {
            let a = x.abs();
            if a > amax {
                amax = a;
            }
        }
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        let mut q = [0i32; 32];
        let mut sum = 0;
        for i in 0..32 {
            let mut v = (xs[i] * inv).round_ties_even();
            if v.is_nan() {
                v = 0.0;
            }
            v = v.clamp(-127.0, 127.0);
            q[i] = v as i32;
            sum += q[i];
        }
        (q, d, d * (sum as f32))
    }

    /// Integer weights (and f16 scales) of block b of row r, from the GGUF bytes.
    fn ref_block(
        ty: WeightType,
        data: &[u8],
        cols: usize,
        r: usize,
        b: usize,
    ) -> ([i32; 32], u16, u16) {
        let rb = ty.row_bytes(cols).unwrap();
        let bb = ty.block_bytes();
        let blk = &data[r * rb + b * bb..][..bb];
        let d = u16::from_le_bytes([blk[0], blk[1]]);
        let mut w = [0i32; 32];
        match ty {
            WeightType::Q8_0 => {
                for j in 0..32 {
                    w[j] = blk[2 + j] as i8 as i32;
                }
                (w, d, 0)
            }
            WeightType::Q4_0 => {
                for j in 0..16 {
                    w[j] = (blk[2 + j] & 15) as i32 - 8;
                    w[j + 16] = (blk[2 + j] >> 4) as i32 - 8;
                }
                (w, d, 0)
            }
            _ => {
                for j in 0..16 {
                    w[j] = (blk[4 + j] & 15) as i32;
                    w[j + 16] = (blk[4 + j] >> 4) as i32;
                }
                (w, d, u16::from_le_bytes([blk[2], blk[3]]))
            }
        }
    }

    fn reference(
        ty: WeightType,
        data: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        tokens: usize,
    ) -> Vec<f32> {
        let mut y = vec![0.0f32; tokens * rows];
        for t in 0..tokens {
            let xr = &x[t * cols..][..cols];
            for r in 0..rows {
                let mut acc = 0.0f32;
                match ty {
                    WeightType::F32 | WeightType::F16 => {
                        for i in 0..cols {
                            let wi = if ty == WeightType::F32 {
                                f32::from_le_bytes(
                                    data[(r * cols + i) * 4..][..4].try_into().unwrap(),
                                )
                            } else {
                                ref_f16(u16::from_le_bytes(
                                    data[(r * cols + i) * 2..][..2].try_into().unwrap(),
                                ))
                            };
                            acc = acc + (wi * xr[i]);
                        }
                    }
                    _ => {
                        for b in 0..cols / 32 {
                            let (q, d, s) = ref_quant(&xr[b * 32..][..32]);
                            let (w, dwb, mwb) = ref_block(ty, data, cols, r, b);
                            let (dw, mw) = (ref_f16(dwb), ref_f16(mwb));
                            let mut isum = 0i32;
                            for i in 0..32 {
                                isum += w[i] * q[i];
                            }
                            let term = if ty == WeightType::Q4_1 {
                                ((dw * d) * (isum as f32)) + (mw * s)
                            } else {
                                (dw * d) * (isum as f32)
                            };
                            acc = acc + term;
                        }
                    }
                }
                y[t * rows + r] = acc;
            }
        }
        y
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn assert_same(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                same(g, w),
                "{what}: output {i}: {g:e} ({:#x}) ≠ {w:e} ({:#x})",
                g.to_bits(),
                w.to_bits()
            );
        }
    }

    const QTYPES: [WeightType; 3] = [WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0];
    const ALL_TYPES: [WeightType; 5] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q8_0,
    ];

    /// Runs one product with every set; each must equal the reference transcription.
    fn check(rng: &mut Rng, ty: WeightType, rows: usize, cols: usize, tokens: usize, edgy: bool) {
        let data = gen_matrix(rng, ty, rows, cols, edgy);
        let x = gen_acts(rng, tokens * cols, edgy);
        let m = Matrix::from_gguf(ty, &data, cols, rows).unwrap();
        let want = reference(ty, &data, rows, cols, &x, tokens);
        for ks in KernelSet::available() {
            let mut acts = Acts::new();
            acts.set(ks, &x, tokens, cols);
            let mut out = vec![f32::from_bits(0x7fa0_0001); tokens * rows + 3];
            matmul(ks, None, &m, &acts, &mut out);
            let what = format!(
                "{} {ty:?} {rows}×{cols}, {tokens} tokens, edgy {edgy}",
                ks.name()
            );
            assert_same(&what, &out[..tokens * rows], &want);
            assert!(
                out[tokens * rows..]
                    .iter()
                    .all(|v| v.to_bits() == 0x7fa0_0001),
                "{what}: wrote past the end"
            );
        }
    }

    #[test]
    fn every_set_matches_the_contract_on_random_shapes() {
        let mut rng = Rng(1);
        let tokens = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 64];
        for ty in ALL_TYPES {
            for case in 0..150 {
                let rows = match case % 4 {
                    0 => rng.below(16) + 1,
                    1 => 16 * (rng.below(4) + 1),
                    _ => rng.below(90) + 1,
                };
                let cols = if ty.quantized() {
                    32 * [1, 2, 3, 5, 18, 48][rng.below(6)]
                } else {
                    [1, 3, 32, 33, 100, 576][rng.below(6)]
                };
                let t = tokens[rng.below(tokens.len())];
                check(&mut rng, ty, rows, cols, t, case % 3 == 2);
            }
        }
    }

    #[test]
    fn every_set_matches_the_contract_on_model_shapes() {
        let mut rng = Rng(2);
        // Several token chunks (300 > 256), rows not a multiple of 16, full model widths.
        check(&mut rng, WeightType::Q4_1, 37, 576, 300, false);
        check(&mut rng, WeightType::Q4_1, 21, 1536, 300, true);
        check(&mut rng, WeightType::Q8_0, 50, 576, 300, true);
        check(&mut rng, WeightType::Q4_0, 19, 1536, 200, false);
        for t in [1, 6, 16, 256] {
            check(&mut rng, WeightType::Q4_1, 192, 576, t, false);
            check(&mut rng, WeightType::Q8_0, 160, 576, t, false);
        }
    }

    #[test]
    fn reused_activation_buffers_give_the_same_bits() {
        let mut rng = Rng(8);
        let (rows, cols) = (40, 96);
        let data = gen_matrix(&mut rng, WeightType::Q4_1, rows, cols, false);
        let m = Matrix::from_gguf(WeightType::Q4_1, &data, cols, rows).unwrap();
        for ks in KernelSet::available() {
            let mut reused = Acts::new();
            let big = gen_acts(&mut rng, 50 * cols, true);
            reused.set(ks, &big, 50, cols);
            let x = gen_acts(&mut rng, 3 * cols, false);
            reused.set(ks, &x, 3, cols);
            assert_eq!(reused.rows(), 3);
            let mut fresh = Acts::new();
            fresh.set(ks, &x, 3, cols);
            let (mut a, mut b) = (vec![0.0; 3 * rows], vec![0.0; 3 * rows]);
            matmul(ks, None, &m, &reused, &mut a);
            matmul(ks, None, &m, &fresh, &mut b);
            assert_same(ks.name(), &a, &b);
        }
    }

    #[test]
    fn quantization_is_the_same_in_every_set() {
        let mut rng = Rng(3);
        let cols = 32 * 40;
        let mut x = gen_acts(&mut rng, cols * 7, true);
        // Ties: with amax = 127, d = 1 and x·inv = x.
        let ties = [
            127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, 4.5, -0.0,
        ];
        for (i, v) in ties.iter().enumerate() {
            x[i] = *v;
            x[32 + i] = v * 3.0;
        }
        let mut base = Acts::new();
        base.set(KernelSet::Scalar, &x, 7, cols);
        for (blk, xs) in base.blocks.iter().zip(x.chunks(32)) {
            let (q, d, s) = ref_quant(xs);
            assert_eq!(blk.q.map(|v| v as i32), q);
            assert!(same(blk.d, d) && same(blk.s, s));
        }
        for ks in KernelSet::available() {
            let mut a = Acts::new();
            a.set(ks, &x, 7, cols);
            for (i, (p, q)) in a.blocks.iter().zip(&base.blocks).enumerate() {
                let ok = p.q == q.q
                    && p.d.to_bits() == q.d.to_bits()
                    && same(p.s, q.s)
                    && p.neg8 == q.neg8
                    && p.neg128 == q.neg128;
                assert!(ok, "{}: block {i}: {p:?} ≠ {q:?}", ks.name());
            }
        }
    }

    #[test]
    fn f16_conversion_is_exact_and_the_hardwares() {
        for h in 0..=u16::MAX {
            let (a, b) = (f16_to_f32(h), ref_f16(h));
            assert!(same(a, b), "{h:#x}: {a:e} ≠ {b:e}");
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            #[target_feature(enable = "f16c")]
            unsafe fn hw(h: u16) -> u32 {
                use std::arch::x86_64::*;
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h as i16))).to_bits()
            }
            for h in 0..=u16::MAX {
                assert_eq!(f16_to_f32(h).to_bits(), unsafe { hw(h) }, "{h:#x}");
            }
        }
    }

    #[test]
    fn row_dequantization_follows_the_contract() {
        let mut rng = Rng(4);
        for ty in ALL_TYPES {
            let (rows, cols) = (37, 96);
            let data = gen_matrix(&mut rng, ty, rows, cols, true);
            let m = Matrix::from_gguf(ty, &data, cols, rows).unwrap();
            let mut out = vec![0.0; cols];
            for r in 0..rows {
                m.row_f32(r, &mut out);
                for (i, &o) in out.iter().enumerate() {
                    let want = match ty {
                        WeightType::F32 => {
                            f32::from_le_bytes(data[(r * cols + i) * 4..][..4].try_into().unwrap())
                        }
                        WeightType::F16 => ref_f16(u16::from_le_bytes(
                            data[(r * cols + i) * 2..][..2].try_into().unwrap(),
                        )),
                        _ => {
                            let (w, d, mm) = ref_block(ty, &data, cols, r, i / 32);
                            let v = ref_f16(d) * (w[i % 32] as f32);
                            if ty == WeightType::Q4_1 {
                                v + ref_f16(mm)
                            } else {
                                v
                            }
                        }
                    };
                    assert!(same(o, want), "{ty:?} row {r} col {i}: {o} ≠ {want}");
                }
            }
        }
    }

    #[test]
    fn thread_pools_give_the_same_bits() {
        let mut rng = Rng(5);
        for ty in QTYPES {
            let (rows, cols, tokens) = (203, 576, 9);
            let data = gen_matrix(&mut rng, ty, rows, cols, false);
            let x = gen_acts(&mut rng, tokens * cols, false);
            let m = Matrix::from_gguf(ty, &data, cols, rows).unwrap();
            for ks in KernelSet::available() {
                let mut acts = Acts::new();
                acts.set(ks, &x, tokens, cols);
                let mut base = vec![0.0; tokens * rows];
                matmul(ks, None, &m, &acts, &mut base);
                for threads in 1..=3 {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut out = vec![0.0; tokens * rows];
                    matmul(ks, Some(&pool), &m, &acts, &mut out);
                    assert_same(
                        &format!("{} {ty:?} {threads} threads", ks.name()),
                        &out,
                        &base,
                    );
                }
            }
        }
    }

    #[test]
    fn untrusted_shapes_are_errors() {
        let q = WeightType::Q4_1;
        assert!(Matrix::from_gguf(q, &[0; 20], 32, 1).is_ok());
        assert!(Matrix::from_gguf(q, &[0; 19], 32, 1).is_err());
        assert!(Matrix::from_gguf(q, &[0; 21], 32, 1).is_err());
        assert!(Matrix::from_gguf(q, &[0; 40], 64, 0).is_err());
        assert!(Matrix::from_gguf(q, &[0; 20], 33, 1).is_err());
        assert!(Matrix::from_gguf(q, &[], 0, 5).is_err());
        assert!(Matrix::from_gguf(q, &[0; 20], usize::MAX / 32 * 32, usize::MAX).is_err());
        assert!(Matrix::from_gguf(WeightType::F32, &[0; 12], 3, 1).is_ok());
        assert!(Matrix::from_gguf(WeightType::F16, &[0; 12], 3, 1).is_err());
        for id in 0..40 {
            if let Some(t) = WeightType::from_ggml(id) {
                assert_eq!(t.ggml_id(), id);
            }
        }
        assert_eq!(WeightType::Q4_1.row_bytes(576), Some(360));
        assert_eq!(WeightType::Q8_0.row_bytes(100), None);
    }

    #[test]
    fn kernel_names_parse() {
        assert_eq!(KernelSet::parse(None).unwrap(), KernelSet::best());
        assert_eq!(KernelSet::parse(Some("")).unwrap(), KernelSet::best());
        assert_eq!(KernelSet::parse(Some("auto")).unwrap(), KernelSet::best());
        assert_eq!(KernelSet::available()[0], KernelSet::Scalar);
        for ks in KernelSet::available() {
            assert_eq!(KernelSet::parse(Some(ks.name())).unwrap(), ks);
        }
        let e = KernelSet::parse(Some("sse9")).unwrap_err();
        assert_eq!(e.class(), crate::error::Class::Usage);
        assert!(e.to_string().contains("scalar"), "{e}");
        #[cfg(not(target_arch = "aarch64"))]
        assert!(KernelSet::parse(Some("neon")).is_err());
    }

    /// GMAC/s per kernel set on the default model's shapes:
    /// `cargo test --release --no-default-features -p lmz bench_report -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_report() {
        let shapes = [
            (WeightType::Q4_1, 576, 576),
            (WeightType::Q4_1, 192, 576),
            (WeightType::Q4_1, 1536, 576),
            (WeightType::Q4_1, 576, 1536),
            (WeightType::Q8_0, 49152, 576),
        ];

        let mut rng = Rng(6);
        let pool2 = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (ty, rows, cols) in shapes {
            let data = gen_matrix(&mut rng, ty, rows, cols, false);
            let t0 = std::time::Instant::now();
            let m = Matrix::from_gguf(ty, &data, cols, rows).unwrap();
            println!(
                "{ty:?} {rows}×{cols}: repacked in {:.1} ms, {} bytes (GGUF {})",
                t0.elapsed().as_secs_f64() * 1e3,
                m.heap_bytes(),
                data.len()
            );
            for tokens in [1, 16, 256] {
                let x = gen_acts(&mut rng, tokens * cols, false);
                let mut out = vec![0.0; tokens * rows];
                let mut line = format!("{ty:?} {rows:>5}×{cols:<4} {tokens:>3} tok:");
                for ks in KernelSet::available() {
                    let mut acts = Acts::new();
                    acts.set(ks, &x, tokens, cols);
                    for pool in [None, Some(&pool2)] {
                        if ks == KernelSet::Scalar && (pool.is_some() || tokens > 16) {
                            continue;
                        }
                        // Best of 9 trials of ~20 ms: the machine is shared, a mean would
                        // measure the neighbours.
                        let macs = (rows * cols * tokens) as f64;
                        let reps = ((2e7 / macs * 5.0) as usize).clamp(1, 20000);
                        matmul(ks, pool, &m, &acts, &mut out);
                        let mut s = f64::MAX;
                        for _ in 0..9 {
                            let t0 = std::time::Instant::now();
                            for _ in 0..reps {
                                matmul(ks, pool, &m, &acts, &mut out);
                            }
                            s = s.min(t0.elapsed().as_secs_f64());
                        }
                        let thr = if pool.is_some() { 2 } else { 1 };
                        line +=
                            &format!("  {}×{thr} {:6.1}", ks.name(), macs * reps as f64 / s / 1e9);
                    }
                }
                println!("{line}");
            }
        }
        // Activation quantization alone, one 576-wide row.
        let x = gen_acts(&mut rng, 576 * 16, false);
        for ks in KernelSet::available() {
            let mut a = Acts::new();
            let t0 = std::time::Instant::now();
            for _ in 0..20000 {
                a.set(ks, &x, 16, 576);
            }
            println!(
                "quantize 16×576 {}: {:.2} µs",
                ks.name(),
                t0.elapsed().as_secs_f64() / 20000.0 * 1e6
            );
        }
    }
}
