//! Writing GGUF files, and encoding weights in ggml's formats: for the synthetic test model
//! ([`super::synthetic`]) and for tests that need hostile or unusual files.
//!
//! The writer lays files out as llama.cpp's `gguf.cpp` requires them (version 3, tensor data
//! packed in order, each tensor padded to the alignment), so what it writes both llama.cpp and
//! [`super::gguf`] load. The quantizers follow ggml's reference rounding
//! (`quantize_row_*_ref`), so the synthetic model's weights are what `llama-quantize` would
//! have made of the same floats; the f16 conversion rounds to nearest even.

pub use super::binary16::{f16_to_f32, f32_to_f16};
use super::gguf::{ggml_type, value_type, Array, Value, DEFAULT_ALIGNMENT};

/// A GGUF file being assembled.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_scalar(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds a metadata key (in order; keys are not checked for duplicates, so tests can
    /// write bad files).
    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor: `dims` with `ne0` first, `data` already encoded in `ggml_type`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ggml_type, data));
        self
    }

    /// The alignment the file will use: `general.alignment` if set (as u32), else 32.
    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("general.alignment", Value::U32(a)) if a.is_power_of_two() => Some(*a as u64),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The file: header, metadata, tensor infos, padding, tensor data (each tensor padded to
    /// the alignment, in the order added).
    pub fn finish(&self) -> Vec<u8> {
        let align = self.alignment() as usize;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k.as_bytes());
            out.extend_from_slice(&v.type_id().to_le_bytes());
            put_scalar(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, dims, t, data) in &self.tensors {
            put_str(&mut out, name.as_bytes());
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += data.len().div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }
}

/// Shorthand for a string value.
pub fn string(s: &str) -> Value {
    Value::String(s.as_bytes().to_vec())
}

/// Shorthand for a string-array value.
pub fn strings<S: AsRef<[u8]>>(v: &[S]) -> Value {
    Value::Array(Array::String(
        v.iter().map(|s| s.as_ref().to_vec()).collect(),
    ))
}

const _: () = assert!(value_type::ARRAY == 9);

/// Encodes `x` (a whole number of rows) as ggml type `t`: F32, F16, Q4_0, Q4_1 or Q8_0
/// (quantized types need a multiple of 32 values). Panics on other types or lengths: the
/// callers are test generators with fixed shapes.
pub fn encode(t: u32, x: &[f32]) -> Vec<u8> {
    match t {
        ggml_type::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ggml_type::F16 => x
            .iter()
            .flat_map(|&v| f32_to_f16(v).to_le_bytes())
            .collect(),
        ggml_type::Q4_0 => blocks(x, quantize_q4_0),
        ggml_type::Q4_1 => blocks(x, quantize_q4_1),
        ggml_type::Q8_0 => blocks(x, quantize_q8_0),
        _ => panic!("encode: ggml type {t} not supported"),
    }
}

fn blocks(x: &[f32], f: fn(&[f32; 32], &mut Vec<u8>)) -> Vec<u8> {
    assert!(
        x.len().is_multiple_of(32),
        "quantized rows are whole blocks of 32"
    );
    let mut out = Vec::new();
    for b in x.chunks_exact(32) {
        f(b.try_into().expect("32 values"), &mut out);
    }
    out
}

/// ggml's `quantize_row_q8_0_ref`: d = amax/127, q = round(x/d) (half away from zero).
fn quantize_q8_0(x: &[f32; 32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// ggml's `quantize_row_q4_0_ref`: d = (the value of largest magnitude)/−8,
/// q = min(15, trunc(x/d + 8.5)).
fn quantize_q4_0(x: &[f32; 32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    for j in 0..16 {
        let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        out.push(q0 | (q1 << 4));
    }
}

/// ggml's `quantize_row_q4_1_ref`: d = (max − min)/15, m = min,
/// q = min(15, trunc((x − min)/d + 0.5)).
fn quantize_q4_1(x: &[f32; 32], out: &mut Vec<u8>) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    out.extend_from_slice(&f32_to_f16(min).to_le_bytes());
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        out.push(q0 | (q1 << 4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dequant(t: u32, b: &[u8]) -> Vec<f32> {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        match t {
            ggml_type::Q8_0 => b[2..34].iter().map(|&q| d * (q as i8 as f32)).collect(),
            ggml_type::Q4_0 => (0..32)
                .map(|i| {
                    let q = if i < 16 {
                        b[2 + i] & 15
                    } else {
                        b[2 + i - 16] >> 4
                    };
                    d * (q as i32 - 8) as f32
                })
                .collect(),
            _ => {
                let m = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
                (0..32)
                    .map(|i| {
                        let q = if i < 16 {
                            b[4 + i] & 15
                        } else {
                            b[4 + i - 16] >> 4
                        };
                        d * q as f32 + m
                    })
                    .collect()
            }
        }
    }

    #[test]
    fn quantizers_follow_ggml() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 12.3) * 0.173).collect();
        for (t, size, tol) in [
            (ggml_type::Q8_0, 34, 1.0 / 127.0),
            (ggml_type::Q4_0, 18, 1.0 / 8.0),
            (ggml_type::Q4_1, 20, 1.0 / 15.0),
        ] {
            let b = encode(t, &x);
            assert_eq!(b.len(), size);
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (a, y) in x.iter().zip(dequant(t, &b)) {
                assert!((a - y).abs() <= amax * tol * 1.01, "{t}: {a} vs {y}");
            }
        }
        // Q4_0: the value of largest magnitude (x[31]) maps to −8·d exactly (nibble 0).
        let b = encode(ggml_type::Q4_0, &x);
        assert_eq!(b[2 + 15] >> 4, 0);
        // All-zero blocks: zero scale (−0 for Q4_0: 0/−8, as in ggml), mid codes.
        let z = encode(ggml_type::Q4_0, &[0.0; 32]);
        assert_eq!(&z[..2], &[0, 0x80]);
        assert!(z[2..].iter().all(|&q| q == 0x88));
        let z = encode(ggml_type::Q8_0, &[0.0; 32]);
        assert!(z.iter().all(|&q| q == 0));
    }
}
