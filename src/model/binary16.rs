//! IEEE 754 binary16 ("f16") conversions, as FORMAT.md §20.3 states them: the one copy that
//! the portable engine (weights, the KV cache), its SIMD kernels' scalar reference and the
//! GGUF writer share.
//!
//! `f16 → f32` is exact; a NaN comes out quiet with its payload's top bits, as x86's
//! `vcvtph2ps` gives it, so that scalar and SIMD kernels produce the same bits (FORMAT.md
//! lets no result depend on a NaN's payload). `f32 → f16` rounds to nearest, ties to even,
//! overflows to ±∞, and turns every NaN into `0x7E00` with the input's sign.
//!
//! Written out rather than taken from a crate: these are part of the specified arithmetic,
//! and a dependency's choice for NaNs or subnormals must not decide an archive's bits.

/// IEEE binary16 bits → binary32, exactly (subnormals, ±∞; NaN quiet, payload kept).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    match exp {
        0 => {
            // ±0 or subnormal: mant · 2^-24, exact in f32.
            let v = mant as f32 * (1.0 / 16_777_216.0);
            f32::from_bits(v.to_bits() | sign)
        }
        31 if mant == 0 => f32::from_bits(sign | 0x7f80_0000),
        31 => f32::from_bits(sign | 0x7fc0_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

/// IEEE binary32 → binary16 bits, rounding to nearest, ties to even; overflow → ±∞; every NaN
/// → the quiet NaN `0x7e00` with the input's sign.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 255 {
        return sign | if man != 0 { 0x7e00 } else { 0x7c00 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // A binary16 subnormal (or zero): the 24-bit significand shifted to units of 2^−24.
        let shift = (14 - e) as u32;
        if shift > 24 {
            return sign;
        }
        let m = man | if exp == 0 { 0 } else { 0x80_0000 };
        return sign | round_shift(m, shift) as u16;
    }
    // A carry out of the mantissa moves to the next binade, or to ∞: both are right.
    sign | round_shift(((e as u32) << 23) | man, 13) as u16
}

/// `v >> shift`, rounded to nearest, ties to even (`1 ≤ shift ≤ 24`).
#[inline]
fn round_shift(v: u32, shift: u32) -> u32 {
    let half = 1u32 << (shift - 1);
    let rem = v & ((1u32 << shift) - 1);
    let r = v >> shift;
    if rem > half || (rem == half && r & 1 == 1) {
        r + 1
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conversion written as the definition says: sign · 2^(e − 15) · (1 + m / 1024), in
    /// f64, rounded once to f32 (exact: every binary16 value is a binary32 value).
    fn by_definition(h: u16) -> f32 {
        let s = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let (e, m) = (((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f64);
        match e {
            0 => (s * m * 2f64.powi(-24)) as f32,
            31 if m == 0.0 => (s * f64::INFINITY) as f32,
            31 => f32::NAN,
            _ => (s * (1.0 + m / 1024.0) * 2f64.powi(e - 15)) as f32,
        }
    }

    #[test]
    fn to_f32_is_exact_and_nans_are_quiet() {
        for h in 0..=u16::MAX {
            let (a, b) = (f16_to_f32(h), by_definition(h));
            if b.is_nan() {
                assert!(a.is_nan() && a.to_bits() & 0x0040_0000 != 0, "{h:#x}");
                assert_eq!(a.is_sign_negative(), h & 0x8000 != 0);
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{h:#x}");
            }
        }
        // The hardware conversion (F16C) is held to this one in the kernels' tests.
    }

    #[test]
    fn round_trips_every_value() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert_eq!(f32_to_f16(f), (h & 0x8000) | 0x7e00);
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#06x}");
            }
        }
        assert_eq!(f32_to_f16(-f32::NAN), 0xfe00);
    }

    #[test]
    fn rounds_to_nearest_even() {
        // Between every pair of adjacent finite f16 values (same sign), the midpoint goes to
        // the even one, and a hair either side of it to the nearer one.
        for h in 0..0x7bffu16 {
            let (a, b) = (f16_to_f32(h) as f64, f16_to_f32(h + 1) as f64);
            let mid = ((a + b) / 2.0) as f32; // exact: f16 midpoints fit in f32
            assert_eq!(mid as f64, (a + b) / 2.0);
            let even = if h % 2 == 0 { h } else { h + 1 };
            assert_eq!(f32_to_f16(mid), even, "midpoint of {h:04x}");
            assert_eq!(f32_to_f16(-mid), even | 0x8000);
            let below = f32::from_bits(mid.to_bits() - 1);
            let above = f32::from_bits(mid.to_bits() + 1);
            assert_eq!(f32_to_f16(below), h);
            assert_eq!(f32_to_f16(above), h + 1);
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "rounds up to infinity");
        assert_eq!(f32_to_f16(65519.99), 0x7bff);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0, "tie to even zero");
        assert_eq!(f32_to_f16(2f32.powi(-25) * 1.5), 1);
        assert_eq!(f32_to_f16(1e-9), 0);
        assert_eq!(f32_to_f16(-1e-9), 0x8000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16(f32::MIN_POSITIVE / 4.0), 0, "f32 subnormal");
    }
}
