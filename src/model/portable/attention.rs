//! Causal attention over one sequence's binary16 KV cache (FORMAT.md §20.7), for all the
//! query heads that share a KV head and all of a step's rows of that sequence at once.
//!
//! The work is one task per (sequence, KV head): its keys and values are converted to binary32
//! once and used by every query of the task — `H/Hkv` heads times the rows the sequence has
//! in the step (16 when the encoder feeds a chunk). Each query's sums still run in the order
//! the spec states (a key's dot product over dimensions, the softmax denominator over 16
//! lanes of positions, each output over positions), so sharing the loads changes no bit.
//!
//! Speed comes from compiling the same plain Rust once per instruction set: the `lanes`
//! loops below are independent lane-wise operations that LLVM vectorises to the width the
//! target feature allows, and Rust's floating point semantics (no contraction into FMA, no
//! reassociation) make every build compute the same bits. Calling a function compiled for a
//! target feature the CPU may lack is `unsafe`, hence this module's exception to the crate's
//! `deny(unsafe_code)`; the kernel set is checked against the CPU before it is used
//! ([`KernelSet::from_env`]).
#![allow(unsafe_code)]

use super::arith;
use super::kernels::KernelSet;

/// Keys are stored in groups of this many positions, dimension-major within a group
/// (`[dim][16]`), so one group's scores are 16 independent lanes.
pub const KEY_GROUP: usize = 16;

/// One task: the queries of one sequence against one KV head.
pub struct Task<'a> {
    /// `n_q × hd` query values (rotated), query `i` at `q[i·hd ..]`.
    pub q: &'a [f32],
    /// Positions each query attends to: keys `0 .. len[i]`.
    pub len: &'a [usize],
    /// The head's keys, `[group][dim][16]` (binary16 bits).
    pub k: &'a [u16],
    /// The head's values, `[position][dim]` (binary16 bits).
    pub v: &'a [u16],
    pub hd: usize,
}

/// Scratch of one worker, reused across tasks.
#[derive(Default)]
pub struct Scratch {
    kf: Vec<f32>,
    vf: Vec<f32>,
    scores: Vec<f32>,
}

/// Computes the task's outputs into `out` (`n_q × hd`).
pub fn attend(ks: KernelSet, t: &Task<'_>, s: &mut Scratch, out: &mut [f32]) {
    match ks {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `ks` is only ever a kernel set this CPU supports (KernelSet::from_env and
        // KernelSet::available check it).
        KernelSet::Avx512 if ks.supported() => unsafe { attend_avx512(t, s, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelSet::Avx2 if ks.supported() => unsafe { attend_avx2(t, s, out) },
        _ => attend_impl(t, s, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn attend_avx512(t: &Task<'_>, s: &mut Scratch, out: &mut [f32]) {
    attend_impl(t, s, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn attend_avx2(t: &Task<'_>, s: &mut Scratch, out: &mut [f32]) {
    attend_impl(t, s, out)
}

/// binary16 → binary32 without branches (the same values as [`arith::f16_to_f32`], so that
/// lane loops vectorise).
#[inline(always)]
fn h2f(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let mag = (h as u32) & 0x7fff;
    let finite = f32::from_bits(mag << 13) * f32::from_bits((127 + 112) << 23);
    let special = f32::from_bits(0x7f80_0000 | ((mag & 0x3ff) << 13));
    let v = if mag >= 0x7c00 { special } else { finite };
    f32::from_bits(v.to_bits() | sign)
}

#[inline(always)]
fn attend_impl(t: &Task<'_>, s: &mut Scratch, out: &mut [f32]) {
    let hd = t.hd;
    let n_q = t.len.len();
    let longest = t.len.iter().copied().max().unwrap_or(0);
    let groups = longest.div_ceil(KEY_GROUP);
    let scale = 1.0f32 / (hd as f32).sqrt();
    let stride = groups * KEY_GROUP;
    s.scores.clear();
    s.scores.resize(n_q * stride, 0.0);
    s.kf.resize(hd * KEY_GROUP, 0.0);

    // Scores, one key group at a time: converted once, used by every query.
    for grp in 0..groups {
        let kg = &t.k[grp * hd * KEY_GROUP..][..hd * KEY_GROUP];
        for (f, &h) in s.kf.iter_mut().zip(kg) {
            *f = h2f(h);
        }
        for i in 0..n_q {
            if grp * KEY_GROUP >= t.len[i] {
                continue;
            }
            let q = &t.q[i * hd..][..hd];
            let mut acc = [0.0f32; KEY_GROUP];
            for (c, &qc) in q.iter().enumerate() {
                let kc = &s.kf[c * KEY_GROUP..][..KEY_GROUP];
                for l in 0..KEY_GROUP {
                    acc[l] += qc * kc[l];
                }
            }
            let sc = &mut s.scores[i * stride + grp * KEY_GROUP..][..KEY_GROUP];
            for l in 0..KEY_GROUP {
                sc[l] = acc[l] * scale;
            }
        }
    }

    // Softmax weights and their 16-lane sum, per query. The maximum is taken over 16 lanes
    // too: it is the same value in any order (ties of ±0 give the same weights, and a NaN
    // score makes every output of the head NaN whatever the maximum is).
    let mut z = vec![0.0f32; n_q];
    for (i, zi) in z.iter_mut().enumerate() {
        let sc = &mut s.scores[i * stride..][..t.len[i]];
        let mut lanes = [f32::NEG_INFINITY; KEY_GROUP];
        let mut chunks = sc.chunks_exact(KEY_GROUP);
        for c in &mut chunks {
            for l in 0..KEY_GROUP {
                lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
            }
        }
        for (l, &x) in chunks.remainder().iter().enumerate() {
            lanes[l] = if x > lanes[l] { x } else { lanes[l] };
        }
        let mut m = f32::NEG_INFINITY;
        for &x in &lanes {
            if x > m {
                m = x;
            }
        }
        for x in sc.iter_mut() {
            *x = arith::exp(*x - m);
        }
        *zi = arith::sum16_slice(sc);
    }

    // Outputs: Σ_j e_j · v_j in position order; each value row converted once.
    out[..n_q * hd].fill(0.0);
    s.vf.resize(hd, 0.0);
    for j in 0..longest {
        for (f, &h) in s.vf.iter_mut().zip(&t.v[j * hd..][..hd]) {
            *f = h2f(h);
        }
        for i in 0..n_q {
            if j >= t.len[i] {
                continue;
            }
            let e = s.scores[i * stride + j];
            let o = &mut out[i * hd..][..hd];
            for (o, &v) in o.iter_mut().zip(&s.vf) {
                *o += e * v;
            }
        }
    }
    for i in 0..n_q {
        for o in &mut out[i * hd..][..hd] {
            *o /= z[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_free_conversion_is_the_exact_one() {
        for h in 0..=u16::MAX {
            let (a, b) = (h2f(h), arith::f16_to_f32(h));
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{h:#x}"
            );
        }
    }

    /// Every kernel set gives the scalar build's bits, on random caches with several queries
    /// of different lengths.
    #[test]
    fn kernel_sets_agree() {
        let mut seed = 5u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for &(hd, longest, n_q) in &[
            (16usize, 1usize, 1usize),
            (64, 37, 3),
            (64, 300, 48),
            (32, 16, 2),
        ] {
            let groups = longest.div_ceil(KEY_GROUP);
            let k: Vec<u16> = (0..groups * hd * KEY_GROUP)
                .map(|_| arith::f32_to_f16(((next() % 2000) as f32 - 1000.0) / 300.0))
                .collect();
            let v: Vec<u16> = (0..longest * hd)
                .map(|_| arith::f32_to_f16(((next() % 2000) as f32 - 1000.0) / 700.0))
                .collect();
            let q: Vec<f32> = (0..n_q * hd)
                .map(|_| ((next() % 2000) as f32 - 1000.0) / 250.0)
                .collect();
            let len: Vec<usize> = (0..n_q)
                .map(|i| longest - (i * 7) % longest.max(1))
                .collect();
            let t = Task {
                q: &q,
                len: &len,
                k: &k,
                v: &v,
                hd,
            };
            let mut want = vec![0.0f32; n_q * hd];
            attend(KernelSet::Scalar, &t, &mut Scratch::default(), &mut want);
            for ks in KernelSet::available() {
                let mut got = vec![0.0f32; n_q * hd];
                attend(ks, &t, &mut Scratch::default(), &mut got);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{ks:?} hd {hd} len {longest}"
                );
            }
        }
    }
}
