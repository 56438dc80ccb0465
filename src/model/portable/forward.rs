//! The forward pass of "lmz transformer v1" (FORMAT.md §20.4–§20.7): weights, per-sequence
//! KV caches, and one evaluation step over any set of rows.
//!
//! A row is one token of one sequence at one position. Every row is computed by the same
//! operations in the same order whatever else shares its step: matrix products treat each
//! activation row on its own (`kernels`), attention reads only its own sequence's cache, and
//! nothing sums across rows. So lockstep batches of any width, any mix of positions and a
//! whole-chunk prefill give exactly the logits of one token at a time — by construction, not
//! by a probe. Threads split rows, heads and output columns; never a sum.

use rayon::prelude::*;

use super::arith;
use super::attention::{self, KEY_GROUP};
use super::kernels::{matmul, Acts, KernelSet, Matrix};

/// Hyperparameters, from the GGUF metadata (FORMAT.md §20.2).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
}

impl Config {
    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
}

pub struct Weights {
    pub cfg: Config,
    pub token_embd: Matrix,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    /// `None`: the output matrix is `token_embd` (tied).
    pub output: Option<Matrix>,
    /// RoPE frequencies (binary64), [`arith::rope_freqs`].
    pub freqs: Vec<f64>,
}

impl Weights {
    pub fn output(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    pub fn heap_bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.heap_bytes())
                    .sum::<usize>()
            })
            .sum();
        l + self.token_embd.heap_bytes() + self.output.as_ref().map_or(0, |m| m.heap_bytes())
    }
}

/// One sequence's KV cache: binary16 keys and values (FORMAT.md §20.6), 2 bytes per element
/// like llama.cpp's f16 cache. Grows by key groups as the sequence does.
#[derive(Default)]
pub struct Cache {
    /// Positions filled.
    pub len: usize,
    /// Per layer: `[kv head][group][dim][16]`, the head's groups contiguous.
    k: Vec<Vec<u16>>,
    /// Per layer: `[kv head][position][dim]`.
    v: Vec<Vec<u16>>,
    /// Positions allocated (a multiple of 16).
    cap: usize,
}

impl Cache {
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn heap_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|x| x.capacity() * 2).sum()
    }

    /// Makes this cache hold exactly `src`'s positions (an archive primer's, copied into a
    /// block's sequence), keeping its own allocation where it is large enough.
    pub fn copy_from(&mut self, cfg: &Config, src: &Cache) {
        self.len = 0;
        if src.len == 0 {
            return;
        }
        self.reserve(cfg, src.len);
        let hd = cfg.head_dim;
        // Keys: whole groups of 16 positions (lanes past `len` are never read).
        let kn = src.len.div_ceil(KEY_GROUP) * KEY_GROUP * hd;
        let vn = src.len * hd;
        for l in 0..cfg.n_layer {
            for g in 0..cfg.n_head_kv {
                let (dst, from) = (g * self.cap * hd, g * src.cap * hd);
                self.k[l][dst..dst + kn].copy_from_slice(&src.k[l][from..from + kn]);
                self.v[l][dst..dst + vn].copy_from_slice(&src.v[l][from..from + vn]);
            }
        }
        self.len = src.len;
    }

    /// Makes room for positions `0 .. n`.
    fn reserve(&mut self, cfg: &Config, n: usize) {
        if n <= self.cap {
            return;
        }
        let new_cap = n.div_ceil(KEY_GROUP).max(1) * KEY_GROUP;
        let hd = cfg.head_dim;
        if self.k.len() != cfg.n_layer {
            self.k = vec![Vec::new(); cfg.n_layer];
            self.v = vec![Vec::new(); cfg.n_layer];
            self.cap = 0;
        }
        // Re-lay each head's region at the new capacity (the layout is head-major).
        for l in 0..cfg.n_layer {
            let mut k = vec![0u16; cfg.n_head_kv * new_cap * hd];
            let mut v = vec![0u16; cfg.n_head_kv * new_cap * hd];
            if self.cap > 0 {
                let old = self.cap * hd;
                for g in 0..cfg.n_head_kv {
                    k[g * new_cap * hd..][..old].copy_from_slice(&self.k[l][g * old..][..old]);
                    v[g * new_cap * hd..][..old].copy_from_slice(&self.v[l][g * old..][..old]);
                }
            }
            self.k[l] = k;
            self.v[l] = v;
        }
        self.cap = new_cap;
    }

    fn put(&mut self, cfg: &Config, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = cfg.head_dim;
        let region = self.cap * hd;
        let (grp, lane) = (pos / KEY_GROUP, pos % KEY_GROUP);
        for g in 0..cfg.n_head_kv {
            let kh = &mut self.k[layer][g * region..][..region];
            let base = grp * hd * KEY_GROUP;
            for c in 0..hd {
                kh[base + c * KEY_GROUP + lane] = arith::f32_to_f16(k[g * hd + c]);
            }
            let vh = &mut self.v[layer][g * region + pos * hd..][..hd];
            for (o, &x) in vh.iter_mut().zip(&v[g * hd..(g + 1) * hd]) {
                *o = arith::f32_to_f16(x);
            }
        }
    }
}

/// Buffers of one step, reused across steps.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    acts: Acts,
    rope: Vec<f32>,
    pub logits: Vec<f32>,
}

/// One row of a step: a token of the sequence whose cache is `caches[slot]`, at that cache's
/// next position.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub slot: usize,
    pub token: u32,
}

/// Where a step's time went, for `lmz bench`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    pub matmul: std::time::Duration,
    pub attention: std::time::Duration,
    pub other: std::time::Duration,
}

impl Weights {
    /// Evaluates `rows` (tokens below `n_vocab`; a slot's rows in order) and leaves the
    /// logits, `rows.len() × n_vocab`, in `s.logits`. Each row's token is appended to its
    /// slot's cache first, so a slot's later rows in the same step see its earlier ones.
    pub fn forward(
        &self,
        ks: KernelSet,
        pool: Option<&rayon::ThreadPool>,
        rows: &[Row],
        caches: &mut [Cache],
        s: &mut Scratch,
        times: &mut StepTimes,
    ) {
        let cfg = &self.cfg;
        let n = rows.len();
        let d = cfg.n_embd;
        let kvd = cfg.kv_dim();
        let hd = cfg.head_dim;
        let t0 = std::time::Instant::now();
        let mut t_mm = std::time::Duration::ZERO;
        let mut t_att = std::time::Duration::ZERO;

        // Positions: each row takes its slot's next one.
        let mut pos = Vec::with_capacity(n);
        for r in rows {
            let c = &mut caches[r.slot];
            pos.push(c.len);
            c.len += 1;
        }
        for (r, &p) in rows.iter().zip(&pos) {
            caches[r.slot].reserve(cfg, p + 1);
        }
        s.rope.resize(n * hd, 0.0);
        for (i, &p) in pos.iter().enumerate() {
            arith::rope_row(p as u32, &self.freqs, &mut s.rope[i * hd..(i + 1) * hd]);
        }

        s.x.resize(n * d, 0.0);
        for (i, r) in rows.iter().enumerate() {
            self.token_embd
                .row_f32(r.token as usize, &mut s.x[i * d..(i + 1) * d]);
        }
        s.xn.resize(n * d, 0.0);
        s.q.resize(n * d, 0.0);
        s.k.resize(n * kvd, 0.0);
        s.v.resize(n * kvd, 0.0);
        s.att.resize(n * d, 0.0);
        s.o.resize(n * d, 0.0);
        s.g.resize(n * cfg.n_ff, 0.0);
        s.u.resize(n * cfg.n_ff, 0.0);

        for (li, l) in self.layers.iter().enumerate() {
            norm_rows(&s.x, &l.attn_norm, cfg.eps, d, &mut s.xn);
            let t = std::time::Instant::now();
            s.acts.set(ks, &s.xn, n, d);
            matmul(ks, pool, &l.wq, &s.acts, &mut s.q);
            matmul(ks, pool, &l.wk, &s.acts, &mut s.k);
            matmul(ks, pool, &l.wv, &s.acts, &mut s.v);
            t_mm += t.elapsed();
            for i in 0..n {
                let cs = &s.rope[i * hd..(i + 1) * hd];
                for h in s.q[i * d..(i + 1) * d].chunks_exact_mut(hd) {
                    arith::rope_apply(h, cs);
                }
                for h in s.k[i * kvd..(i + 1) * kvd].chunks_exact_mut(hd) {
                    arith::rope_apply(h, cs);
                }
            }
            for (i, r) in rows.iter().enumerate() {
                caches[r.slot].put(
                    cfg,
                    li,
                    pos[i],
                    &s.k[i * kvd..(i + 1) * kvd],
                    &s.v[i * kvd..(i + 1) * kvd],
                );
            }
            let t = std::time::Instant::now();
            attention(cfg, ks, pool, li, rows, &pos, caches, &s.q, &mut s.att);
            t_att += t.elapsed();

            let t = std::time::Instant::now();
            s.acts.set(ks, &s.att, n, d);
            matmul(ks, pool, &l.wo, &s.acts, &mut s.o);
            t_mm += t.elapsed();
            for (x, &o) in s.x.iter_mut().zip(&s.o) {
                *x += o;
            }
            norm_rows(&s.x, &l.ffn_norm, cfg.eps, d, &mut s.xn);
            let t = std::time::Instant::now();
            s.acts.set(ks, &s.xn, n, d);
            matmul(ks, pool, &l.gate, &s.acts, &mut s.g);
            matmul(ks, pool, &l.up, &s.acts, &mut s.u);
            t_mm += t.elapsed();
            for (g, &u) in s.g.iter_mut().zip(&s.u) {
                *g = arith::silu(*g) * u;
            }
            let t = std::time::Instant::now();
            s.acts.set(ks, &s.g, n, cfg.n_ff);
            matmul(ks, pool, &l.down, &s.acts, &mut s.o);
            t_mm += t.elapsed();
            for (x, &o) in s.x.iter_mut().zip(&s.o) {
                *x += o;
            }
        }
        norm_rows(&s.x, &self.output_norm, cfg.eps, d, &mut s.xn);
        let t = std::time::Instant::now();
        s.acts.set(ks, &s.xn, n, d);
        s.logits.resize(n * cfg.n_vocab, 0.0);
        matmul(ks, pool, self.output(), &s.acts, &mut s.logits);
        t_mm += t.elapsed();
        times.matmul += t_mm;
        times.attention += t_att;
        times.other += t0.elapsed().saturating_sub(t_mm + t_att);
    }
}

fn norm_rows(x: &[f32], w: &[f32], eps: f32, d: usize, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        arith::rms_norm(xr, w, eps, or);
    }
}

/// Below this many multiply-adds (all rows, heads and positions of a step) attention runs on
/// the calling thread.
const PARALLEL_ATTENTION_MACS: usize = 1 << 18;

/// Causal attention for every row and head (FORMAT.md §20.7), into `att` (`rows × n_embd`):
/// one task per (sequence, KV head), holding every query of the step that reads it.
#[allow(clippy::too_many_arguments)]
fn attention(
    cfg: &Config,
    ks: KernelSet,
    pool: Option<&rayon::ThreadPool>,
    layer: usize,
    rows: &[Row],
    pos: &[usize],
    caches: &[Cache],
    q: &[f32],
    att: &mut [f32],
) {
    let hd = cfg.head_dim;
    let per_kv = cfg.n_head / cfg.n_head_kv;
    // The slots of this step, in order of first appearance, with their rows.
    let mut slots: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match slots.iter_mut().find(|(s, _)| *s == r.slot) {
            Some((_, v)) => v.push(i),
            None => slots.push((r.slot, vec![i])),
        }
    }
    // A task is a run of query heads of one sequence sharing a KV head: the whole group, or
    // single heads when there are too few groups to keep every thread busy (decoding one
    // block at a time).
    let threads = pool.map_or(1, |p| p.current_num_threads());
    // A pool round trip costs tens of µs: short contexts (a decoder's first tokens, small
    // blocks) are done on this thread.
    let work: usize = pos.iter().map(|&p| (p + 1) * cfg.n_head * hd).sum();
    let parallel = threads > 1 && work >= PARALLEL_ATTENTION_MACS;
    let split = parallel && slots.len() * cfg.n_head_kv < 2 * threads && per_kv > 1;
    let (run_len, n_runs) = if split {
        (1, cfg.n_head)
    } else {
        (per_kv, cfg.n_head_kv)
    };
    let tasks: Vec<(usize, usize)> = (0..slots.len())
        .flat_map(|si| (0..n_runs).map(move |r| (si, r * run_len)))
        .collect();
    let run = |&(si, a0): &(usize, usize), scratch: &mut attention::Scratch| -> Vec<f32> {
        let (slot, ref idx) = slots[si];
        let c = &caches[slot];
        let region = c.cap * hd;
        let g = a0 / per_kv;
        let mut qs = Vec::with_capacity(idx.len() * run_len * hd);
        let mut len = Vec::with_capacity(idx.len() * run_len);
        for &i in idx {
            for a in a0..a0 + run_len {
                qs.extend_from_slice(&q[i * cfg.n_embd + a * hd..][..hd]);
                len.push(pos[i] + 1);
            }
        }
        let t = attention::Task {
            q: &qs,
            len: &len,
            k: &c.k[layer][g * region..][..region],
            v: &c.v[layer][g * region..][..region],
            hd,
        };
        let mut out = vec![0.0f32; qs.len()];
        attention::attend(ks, &t, scratch, &mut out);
        out
    };
    let results: Vec<Vec<f32>> = match pool {
        Some(p) if tasks.len() > 1 && parallel => p.install(|| {
            tasks
                .par_iter()
                .map_init(attention::Scratch::default, |s, t| run(t, s))
                .collect()
        }),
        _ => {
            let mut s = attention::Scratch::default();
            tasks.iter().map(|t| run(t, &mut s)).collect()
        }
    };
    for (&(si, a0), out) in tasks.iter().zip(&results) {
        let mut k = 0;
        for &i in &slots[si].1 {
            for a in a0..a0 + run_len {
                att[i * cfg.n_embd + a * hd..][..hd].copy_from_slice(&out[k * hd..][..hd]);
                k += 1;
            }
        }
    }
}
