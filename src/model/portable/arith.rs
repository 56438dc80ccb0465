//! The floating-point functions of "lmz transformer v1" (FORMAT.md §20), written out.
//!
//! Every logit must come out bit for bit the same on every machine, so nothing here calls
//! libm (whose `expf`, `sinf`, `powf` differ between platforms and releases) or lets the
//! compiler choose an order: each function is a fixed sequence of IEEE 754 operations that
//! are exactly rounded by definition (`+ − × ÷ √`, comparisons, conversions). Rust never
//! contracts `a * b + c` into a fused multiply-add and never reassociates, so this plain code
//! *is* the specification's arithmetic; loops over independent lanes may still be vectorised
//! by the compiler, which changes no bit.
//!
//! Reductions that the spec states as "16 lanes": lane `l` sums the terms `i ≡ l (mod 16)` in
//! order, then the lanes are folded by halving (`l += l + 8`, then `+ 4`, `+ 2`, `+ 1`). That
//! order maps onto one AVX-512 register, two AVX2 registers or four NEON registers, so a
//! vectorised implementation reproduces it exactly.

/// The binary16 conversions of §20.3 (one copy, shared with the kernels and the GGUF writer).
pub use crate::model::binary16::{f16_to_f32, f32_to_f16};

/// `1.5 · 2^23`: adding then subtracting it rounds an f32 of magnitude below `2^22` to the
/// nearest integer, ties to even, with two exactly rounded additions (no `roundevenf` call).
const ROUNDER: f32 = 12_582_912.0;

/// `ln 2` split for Cody–Waite reduction (Cephes' constants): `LN2_HI` has few enough
/// significant bits that `k · LN2_HI` is exact for every `|k| ≤ 127`.
const LN2_HI: f32 = 355.0 / 512.0; // 0x3F31_8000
const LN2_LO: f32 = -2.121_944_4e-4;

/// Coefficients `1/k!` of the exp polynomial, each the correctly rounded f32 quotient
/// `1 / k!` (k! is exact in f32 for k ≤ 7).
const EXP_C: [f32; 8] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];

/// `e^x` in f32, by the spec's algorithm (FORMAT.md §20.3): NaN → NaN; `x > 88` → +∞;
/// `x < −87` → +0; otherwise `k = round(x · log2 e)`, `r = (x − k·LN2_HI) − k·LN2_LO`,
/// a degree-7 Taylor polynomial in `r` by Horner's rule, times `2^k` (exact). About 1 ulp.
///
/// Written without branches (the out-of-range cases are selected at the end) so that loops
/// over many values vectorise; the selected value is the spec's in every case: a NaN input
/// flows through every step as NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // `clamp` keeps a NaN as NaN, as the spec's comparisons do.
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + ROUNDER;
    let k = t - ROUNDER;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let mut p = EXP_C[7];
    p = p * r + EXP_C[6];
    p = p * r + EXP_C[5];
    p = p * r + EXP_C[4];
    p = p * r + EXP_C[3];
    p = p * r + EXP_C[2];
    p = p * r + EXP_C[1];
    p = p * r + EXP_C[0];
    // k is an integer in −126 ..= 127 (for a NaN, anything: the product stays NaN). `t`'s
    // low mantissa bits hold it, since t = 1.5·2^23 + k exactly: 2^k is built from those
    // bits with integer operations, which vectorise.
    let ki = t.to_bits().wrapping_sub(ROUNDER.to_bits());
    let scale = f32::from_bits(ki.wrapping_add(127) << 23);
    let y = p * scale;
    if x > 88.0 {
        f32::INFINITY
    } else if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// SiLU, `x / (1 + e^−x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// The 16-lane sum (module doc): lane `i mod 16` accumulates `xs[i]` in order from +0, then
/// the lanes fold by halving.
pub fn sum16(xs: impl IntoIterator<Item = f32>) -> f32 {
    let mut lanes = [0.0f32; 16];
    for (i, x) in xs.into_iter().enumerate() {
        lanes[i & 15] += x;
    }
    fold16(lanes)
}

/// [`sum16`] of a slice, in a shape that vectorises (the same additions in the same order).
#[inline(always)]
pub fn sum16_slice(xs: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            lanes[l] += c[l];
        }
    }
    for (l, &x) in chunks.remainder().iter().enumerate() {
        lanes[l] += x;
    }
    fold16(lanes)
}

/// The fold of [`sum16`]: `l[i] += l[i + h]` for `h` = 8, 4, 2, 1 and `i < h`.
#[inline]
pub fn fold16(mut l: [f32; 16]) -> f32 {
    let mut h = 8;
    while h > 0 {
        for i in 0..h {
            l[i] += l[i + h];
        }
        h /= 2;
    }
    l[0]
}

/// RMSNorm (FORMAT.md §20.4): `ss = sum16(x_i · x_i)`, `scale = 1 / √(ss / n + eps)`,
/// `out_i = (x_i · scale) · w_i`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut lanes = [0.0f32; 16];
    for (i, &v) in x.iter().enumerate() {
        lanes[i & 15] += v * v;
    }
    let ss = fold16(lanes);
    let mean = ss / x.len() as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

// ---- binary64 functions for the RoPE table (FORMAT.md §20.5) ----

/// `ln 2` as the nearest binary64.
const LN2_F64: f64 = std::f64::consts::LN_2;

/// `2^n` for an integer `n` in the normal range, from its bits.
fn pow2_f64(n: i64) -> f64 {
    f64::from_bits(((n + 1023) as u64) << 52)
}

/// `e^y` in binary64 for `−700 < y < 700`: `n = roundTiesEven(y / ln 2)` (the quotient
/// rounded, then rounded to an integer), `r = y − n · ln 2` (two roundings), Horner over
/// `1/k!` for k = 18 down to 0 (each `1/k!` the correctly rounded quotient of 1 by the
/// running product k!, exact in binary64 for k ≤ 18), times `2^n`.
pub fn exp_f64(y: f64) -> f64 {
    let n = (y / LN2_F64).round_ties_even();
    let r = y - n * LN2_F64;
    let mut fact = [1.0f64; 19];
    for k in 1..19 {
        fact[k] = fact[k - 1] * k as f64;
    }
    let mut p = 0.0f64;
    for k in (0..19).rev() {
        p = p * r + 1.0 / fact[k];
    }
    p * pow2_f64(n as i64)
}

/// `ln x` in binary64 for a positive normal `x`: `x = m · 2^e` with `m` in [1, 2) from the
/// bits; if `m > √2` (the binary64 `1.4142135623730951`) then `m = m / 2`, `e = e + 1`;
/// `s = (m − 1) / (m + 1)`, `t = s`, `acc = s`, and for k = 1 ..= 20: `t = t · s²`,
/// `acc = acc + t / (2k + 1)`; the result is `2 · acc + e · ln 2`.
pub fn ln_f64(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut t = s;
    let mut acc = s;
    for k in 1..=20 {
        t *= s2;
        acc += t / (2 * k + 1) as f64;
    }
    2.0 * acc + e as f64 * LN2_F64
}

/// `π/2` in three binary64 parts (fdlibm's `pio2_1`, `pio2_2`, `pio2_3`: 33 significant
/// bits each but the last), for Cody–Waite reduction.
const PIO2_1: f64 = f64::from_bits(0x3FF9_21FB_5440_0000); // 1.57079632673412561417
const PIO2_2: f64 = f64::from_bits(0x3DD0_B461_1A60_0000); // 6.0771005063039659766e-11
const PIO2_3: f64 = f64::from_bits(0x3BA3_198A_2E00_0000); // 2.0222662487111664558e-21

/// `(sin a, cos a)` in binary64 for `a ≥ 0`: `n = roundTiesEven(a · (2/π))`,
/// `r = ((a − n·PIO2_1) − n·PIO2_2) − n·PIO2_3`, Taylor polynomials in `r²` (sine to `r^17`,
/// cosine to `r^18`, coefficients `±1/k!` as correctly rounded quotients), then the quadrant
/// `n mod 4` picks and signs them.
pub fn sin_cos_f64(a: f64) -> (f64, f64) {
    let n = (a * std::f64::consts::FRAC_2_PI).round_ties_even();
    let r = ((a - n * PIO2_1) - n * PIO2_2) - n * PIO2_3;
    let r2 = r * r;
    let mut fact = [1.0f64; 19];
    for k in 1..19 {
        fact[k] = fact[k - 1] * k as f64;
    }
    // sin r = r · Σ_{j=0..8} (−1)^j r^{2j} / (2j+1)!, cos r = Σ_{j=0..9} (−1)^j r^{2j} / (2j)!.
    let mut s = 0.0f64;
    for j in (0..9).rev() {
        let c = 1.0 / fact[2 * j + 1];
        s = s * r2 + if j % 2 == 0 { c } else { -c };
    }
    let s = s * r;
    let mut c = 0.0f64;
    for j in (0..10).rev() {
        let k = 1.0 / fact[2 * j];
        c = c * r2 + if j % 2 == 0 { k } else { -k };
    }
    match (n as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// The RoPE frequencies `base^(−2i/dims)` for `i < dims/2`, in binary64:
/// `exp_f64(−(2i / dims) · ln_f64(base))`, the quotient and product each rounded.
pub fn rope_freqs(base: f32, dims: usize) -> Vec<f64> {
    let lb = ln_f64(base as f64);
    (0..dims / 2)
        .map(|i| exp_f64(-((2 * i) as f64 / dims as f64) * lb))
        .collect()
}

/// Cosines and sines of position `pos` for every RoPE pair: `a = pos · freq_i` (binary64),
/// then [`sin_cos_f64`], each rounded to f32. Written `[cos_0, sin_0, cos_1, sin_1, …]`.
pub fn rope_row(pos: u32, freqs: &[f64], out: &mut [f32]) {
    for (i, &f) in freqs.iter().enumerate() {
        let (s, c) = sin_cos_f64(pos as f64 * f);
        out[2 * i] = c as f32;
        out[2 * i + 1] = s as f32;
    }
}

/// Rotates one head's adjacent pairs: `(x0, x1) → (x0·c − x1·s, x0·s + x1·c)`.
#[inline]
pub fn rope_apply(x: &mut [f32], cs: &[f32]) {
    for (p, t) in x.chunks_exact_mut(2).zip(cs.chunks_exact(2)) {
        let (x0, x1) = (p[0], p[1]);
        let (c, s) = (t[0], t[1]);
        p[0] = x0 * c - x1 * s;
        p[1] = x0 * s + x1 * c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator for test inputs.
    fn rng(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn exp_is_close_to_the_true_value() {
        let mut s = 1;
        let mut worst = 0.0f64;
        for _ in 0..200_000 {
            let x = (rng(&mut s) as f64 / u64::MAX as f64) * 175.0 - 87.0;
            let x = x as f32;
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        // A few ulps of f32 (2^-23 ≈ 1.2e-7).
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(88.5), f32::INFINITY);
        assert_eq!(exp(-87.5), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.0).is_finite());
        assert!(exp(-87.0) > 0.0);
    }

    /// Golden values: the exact bits of the spec's functions at fixed inputs. A change in
    /// any of them changes the logits of every kind-3 archive.
    #[test]
    fn golden_bits() {
        let exps: Vec<u32> = [-86.9f32, -10.0, -1.0, -0.5, 0.1, 1.0, 2.5, 20.0, 87.9]
            .iter()
            .map(|&x| exp(x).to_bits())
            .collect();
        let mut h = crc32fast::Hasher::new();
        for e in &exps {
            h.update(&e.to_le_bytes());
        }
        let freqs = rope_freqs(100_000.0, 64);
        for f in &freqs {
            h.update(&f.to_bits().to_le_bytes());
        }
        let mut row = vec![0.0f32; 64];
        for pos in [0u32, 1, 7, 100, 1000, 8191, 65535] {
            rope_row(pos, &freqs, &mut row);
            for v in &row {
                h.update(&v.to_bits().to_le_bytes());
            }
        }
        assert_eq!(exp(1.0).to_bits(), 0x402d_f854, "e rounded to f32");
        assert_eq!(h.finalize(), GOLDEN_ARITH_CRC, "arith golden checksum");
    }

    /// CRC32 of the bytes `golden_bits` hashes (set once from this implementation, then
    /// frozen: FORMAT.md §20 quotes it).
    const GOLDEN_ARITH_CRC: u32 = 0x60b7_bb18;

    #[test]
    fn f64_functions_are_accurate() {
        for &x in &[
            1.0f64, 2.0, 10.0, 10_000.0, 100_000.0, 0.3, 1e-3, 1.41, 1.42,
        ] {
            let got = ln_f64(x);
            assert!(
                (got - x.ln()).abs() <= 1e-15 * x.ln().abs().max(1.0),
                "ln {x}"
            );
        }
        for &y in &[0.0f64, -1.0, -11.5, 1.0, 0.5, -0.3] {
            let got = exp_f64(y);
            assert!(((got - y.exp()) / y.exp()).abs() < 1e-15, "exp {y}");
        }
        let mut s = 7;
        for _ in 0..100_000 {
            let a = (rng(&mut s) % 1_000_000) as f64 * 0.013_7;
            let (sn, cs) = sin_cos_f64(a);
            assert!(
                (sn - a.sin()).abs() < 1e-12 && (cs - a.cos()).abs() < 1e-12,
                "{a}"
            );
        }
    }

    #[test]
    fn sum16_order_is_lanes_then_halving() {
        let xs: Vec<f32> = (0..37).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let mut l = [0.0f32; 16];
        for (i, x) in xs.iter().enumerate() {
            l[i % 16] += x;
        }
        let a = ((l[0] + l[8]) + (l[4] + l[12])) + ((l[2] + l[10]) + (l[6] + l[14]));
        let b = ((l[1] + l[9]) + (l[5] + l[13])) + ((l[3] + l[11]) + (l[7] + l[15]));
        assert_eq!(sum16(xs.iter().copied()).to_bits(), (a + b).to_bits());
        assert_eq!(sum16_slice(&xs).to_bits(), (a + b).to_bits());
    }
}
