//! Reading GGUF model files (versions 2 and 3) without llama.cpp.
//!
//! The portable engine reads its weights and vocabulary straight from the GGUF file, so this
//! parser is the first thing an untrusted file meets. Every count, length, type and tensor
//! offset/shape is checked (overflow included) before it is used, and no allocation is sized
//! by a count the remaining bytes cannot back: a hostile "2^63 strings" fails at the first
//! missing byte, not at `Vec::with_capacity`. Inconsistent or truncated files give
//! [`Error::ModelUnavailable`] naming the key or tensor and the byte offset; nothing panics.
//!
//! Layout (little-endian; ggml's `gguf.cpp` is the reference): magic `GGUF`, version (u32),
//! tensor count (u64), key/value count (u64); the key/value pairs (string key, u32 type,
//! value; arrays are an element type, a u64 count and the elements, never arrays of arrays);
//! the tensor infos (name, u32 dimension count ≤ 4, u64 dims with `ne0` first, u32 ggml type,
//! u64 offset into the data section); padding to `general.alignment` (default 32); the data
//! section. Tensor offsets must be multiples of the alignment.
//!
//! Only the weight types the portable engine implements have a known size here (F32, F16,
//! Q4_0, Q4_1, Q8_0); tensors of other types are listed with `bytes: None`, and their data is
//! only reachable once a caller knows its size, so the engine rejects them where it uses them.
//! The file is kept either memory-mapped ([`Gguf::open`]) or in memory ([`Gguf::from_vec`]).
#![allow(unsafe_code)] // Only for `Mmap::map` in `Gguf::open`: see the SAFETY note there.

use std::path::Path;

use crate::error::{Error, Result};

/// `GGUF` as a little-endian u32.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// ggml tensor type ids of the weight types this crate knows the layout of.
pub mod ggml_type {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q8_0: u32 = 8;
}

/// Elements per block and bytes per block of a ggml type, for the types with a known layout.
pub fn type_layout(t: u32) -> Option<(u64, u64)> {
    match t {
        ggml_type::F32 => Some((1, 4)),
        ggml_type::F16 => Some((1, 2)),
        ggml_type::Q4_0 => Some((32, 18)),
        ggml_type::Q4_1 => Some((32, 20)),
        ggml_type::Q8_0 => Some((32, 34)),
        _ => None,
    }
}

/// A human name for a ggml type id (for messages).
pub fn type_name(t: u32) -> String {
    match t {
        ggml_type::F32 => "F32".into(),
        ggml_type::F16 => "F16".into(),
        ggml_type::Q4_0 => "Q4_0".into(),
        ggml_type::Q4_1 => "Q4_1".into(),
        ggml_type::Q8_0 => "Q8_0".into(),
        // Types this crate does not read, named as ggml names them.
        6 => "Q5_0".into(),
        7 => "Q5_1".into(),
        9 => "Q8_1".into(),
        10 => "Q2_K".into(),
        11 => "Q3_K".into(),
        12 => "Q4_K".into(),
        13 => "Q5_K".into(),
        14 => "Q6_K".into(),
        15 => "Q8_K".into(),
        30 => "BF16".into(),
        _ => format!("ggml type {t}"),
    }
}

/// GGUF value type ids.
pub mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value. Strings are kept as bytes: GGUF says UTF-8, but llama.cpp treats them
/// as byte strings, and vocabularies are byte data.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(Vec<u8>),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: one element type throughout (GGUF has no arrays of arrays).
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<Vec<u8>>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF type id of the elements.
    pub fn elem_type(&self) -> u32 {
        use value_type as t;
        match self {
            Array::U8(_) => t::U8,
            Array::I8(_) => t::I8,
            Array::U16(_) => t::U16,
            Array::I16(_) => t::I16,
            Array::U32(_) => t::U32,
            Array::I32(_) => t::I32,
            Array::F32(_) => t::F32,
            Array::Bool(_) => t::BOOL,
            Array::String(_) => t::STRING,
            Array::U64(_) => t::U64,
            Array::I64(_) => t::I64,
            Array::F64(_) => t::F64,
        }
    }

    /// Element `i` as a signed integer, for any integer element type (bools excluded).
    fn int_at(&self, i: usize) -> Option<i128> {
        Some(match self {
            Array::U8(v) => *v.get(i)? as i128,
            Array::I8(v) => *v.get(i)? as i128,
            Array::U16(v) => *v.get(i)? as i128,
            Array::I16(v) => *v.get(i)? as i128,
            Array::U32(v) => *v.get(i)? as i128,
            Array::I32(v) => *v.get(i)? as i128,
            Array::U64(v) => *v.get(i)? as i128,
            Array::I64(v) => *v.get(i)? as i128,
            _ => return None,
        })
    }
}

impl Value {
    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        use value_type as t;
        match self {
            Value::U8(_) => t::U8,
            Value::I8(_) => t::I8,
            Value::U16(_) => t::U16,
            Value::I16(_) => t::I16,
            Value::U32(_) => t::U32,
            Value::I32(_) => t::I32,
            Value::F32(_) => t::F32,
            Value::Bool(_) => t::BOOL,
            Value::String(_) => t::STRING,
            Value::Array(_) => t::ARRAY,
            Value::U64(_) => t::U64,
            Value::I64(_) => t::I64,
            Value::F64(_) => t::F64,
        }
    }

    /// The value as a signed integer, for any integer type (bools excluded).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }
}

/// A tensor's description, checked against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, `ne0` (the contiguous one: a matrix's columns) first; each ≥ 1.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Absolute byte offset of the data in the file (a multiple of the alignment from the
    /// data section's start).
    pub offset: u64,
    /// Size of the data in bytes; `None` for types whose layout this crate does not know.
    /// When known, `offset + bytes` lies within the file.
    pub bytes: Option<u64>,
}

impl TensorInfo {
    /// Number of elements (the product of the dimensions; checked not to overflow at parse).
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file, holding its bytes.
pub struct Gguf {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data (`general.alignment`, default 32; a power of two).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Byte offset of each metadata value, parallel to `metadata`, for messages.
    value_offsets: Vec<u64>,
    bytes: Bytes,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

fn bad(offset: u64, detail: impl std::fmt::Display) -> Error {
    Error::ModelUnavailable {
        detail: format!("GGUF: {detail} (at byte {offset})"),
    }
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(bad(
                self.pos as u64,
                format_args!(
                    "file ends inside {} ({n} bytes needed, {} left)",
                    what(),
                    self.remaining()
                ),
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 length, then the bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(bad(
                at,
                format_args!(
                    "{} has length {len}, more than the {} bytes left",
                    what(),
                    self.remaining()
                ),
            ));
        }
        self.take(len as usize, what)
    }

    /// A string that must be UTF-8 (keys, tensor names).
    fn utf8(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos as u64;
        let s = self.string(what)?;
        String::from_utf8(s.to_vec()).map_err(|_| bad(at, format_args!("{} is not UTF-8", what())))
    }

    /// A vector of `count` elements of `size` bytes each, each decoded by `f`: the count is
    /// checked against the bytes left before anything is allocated.
    fn fixed<T>(
        &mut self,
        count: u64,
        size: usize,
        what: &dyn Fn() -> String,
        f: impl Fn(&[u8]) -> T,
    ) -> Result<Vec<T>> {
        let at = self.pos as u64;
        let total = count
            .checked_mul(size as u64)
            .filter(|&t| t <= self.remaining() as u64)
            .ok_or_else(|| {
                bad(
                    at,
                    format_args!(
                        "{} has {count} elements of {size} bytes, more than the {} bytes left",
                        what(),
                        self.remaining()
                    ),
                )
            })?;
        let s = self.take(total as usize, what)?;
        Ok(s.chunks_exact(size).map(f).collect())
    }
}

fn value_type_name(t: u32) -> &'static str {
    use value_type as v;
    match t {
        v::U8 => "u8",
        v::I8 => "i8",
        v::U16 => "u16",
        v::I16 => "i16",
        v::U32 => "u32",
        v::I32 => "i32",
        v::F32 => "f32",
        v::BOOL => "bool",
        v::STRING => "string",
        v::ARRAY => "array",
        v::U64 => "u64",
        v::I64 => "i64",
        v::F64 => "f64",
        _ => "unknown type",
    }
}

/// Reads one value of type `t` (not an array).
fn read_scalar(r: &mut Reader, t: u32, what: &dyn Fn() -> String) -> Result<Value> {
    use value_type as v;
    Ok(match t {
        v::U8 => Value::U8(r.array::<1>(what)?[0]),
        v::I8 => Value::I8(r.array::<1>(what)?[0] as i8),
        v::U16 => Value::U16(u16::from_le_bytes(r.array(what)?)),
        v::I16 => Value::I16(i16::from_le_bytes(r.array(what)?)),
        v::U32 => Value::U32(u32::from_le_bytes(r.array(what)?)),
        v::I32 => Value::I32(i32::from_le_bytes(r.array(what)?)),
        v::F32 => Value::F32(f32::from_le_bytes(r.array(what)?)),
        v::BOOL => Value::Bool(r.array::<1>(what)?[0] != 0),
        v::STRING => Value::String(r.string(what)?.to_vec()),
        v::U64 => Value::U64(u64::from_le_bytes(r.array(what)?)),
        v::I64 => Value::I64(i64::from_le_bytes(r.array(what)?)),
        v::F64 => Value::F64(f64::from_le_bytes(r.array(what)?)),
        _ => {
            return Err(bad(
                r.pos as u64,
                format_args!("{} has invalid value type {t}", what()),
            ))
        }
    })
}

fn read_array(r: &mut Reader, what: &dyn Fn() -> String) -> Result<Array> {
    use value_type as v;
    let at = r.pos as u64;
    let t = r.u32(what)?;
    let n = r.u64(what)?;
    Ok(match t {
        v::U8 => Array::U8(r.fixed(n, 1, what, |b| b[0])?),
        v::I8 => Array::I8(r.fixed(n, 1, what, |b| b[0] as i8)?),
        v::U16 => Array::U16(r.fixed(n, 2, what, |b| u16::from_le_bytes([b[0], b[1]]))?),
        v::I16 => Array::I16(r.fixed(n, 2, what, |b| i16::from_le_bytes([b[0], b[1]]))?),
        v::U32 => {
            Array::U32(r.fixed(n, 4, what, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?)
        }
        v::I32 => {
            Array::I32(r.fixed(n, 4, what, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))?)
        }
        v::F32 => {
            Array::F32(r.fixed(n, 4, what, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))?)
        }
        v::BOOL => Array::Bool(r.fixed(n, 1, what, |b| b[0] != 0)?),
        v::U64 => Array::U64(r.fixed(n, 8, what, |b| {
            u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
        })?),
        v::I64 => Array::I64(r.fixed(n, 8, what, |b| {
            i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
        })?),
        v::F64 => Array::F64(r.fixed(n, 8, what, |b| {
            f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
        })?),
        v::STRING => {
            // Every string takes at least its 8-byte length.
            if n > (r.remaining() / 8) as u64 {
                return Err(bad(
                    at,
                    format_args!(
                        "{} claims {n} strings, more than the {} bytes left can hold",
                        what(),
                        r.remaining()
                    ),
                ));
            }
            let mut out = Vec::with_capacity(n as usize);
            for i in 0..n {
                let s = r.string(&|| format!("{} element {i}", what()))?;
                out.push(s.to_vec());
            }
            Array::String(out)
        }
        v::ARRAY => {
            return Err(bad(
                at,
                format_args!("{} is an array of arrays (not allowed in GGUF)", what()),
            ))
        }
        _ => {
            return Err(bad(
                at,
                format_args!("{} has invalid array element type {t}", what()),
            ))
        }
    })
}

impl Gguf {
    /// Opens a GGUF file by memory-mapping it.
    pub fn open(path: &Path) -> Result<Gguf> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let bytes = if len == 0 {
            // An empty file cannot be mapped; it fails to parse all the same.
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only. The file must not change while mapped, as
            // llama.cpp also assumes of the model files it maps; a model file is never
            // written in place by lmz (fetch.rs moves complete, verified files into place).
            // If another process truncates it anyway, reads can fault (SIGBUS).
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
            Bytes::Map(map)
        };
        Gguf::parse(bytes).map_err(|e| match e {
            Error::ModelUnavailable { detail } => Error::ModelUnavailable {
                detail: format!("{}: {detail}", path.display()),
            },
            e => e,
        })
    }

    /// Parses a GGUF file held in memory.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Gguf> {
        Gguf::parse(Bytes::Owned(bytes))
    }

    /// Parses a GGUF file from a slice (copied).
    pub fn from_slice(bytes: &[u8]) -> Result<Gguf> {
        Gguf::from_vec(bytes.to_vec())
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    fn parse(bytes: Bytes) -> Result<Gguf> {
        let b = bytes.as_slice();
        let mut r = Reader { b, pos: 0 };
        let magic = r.array::<4>(&|| "the magic".into())?;
        if magic != MAGIC {
            return Err(bad(0, format_args!("not a GGUF file (magic {magic:02x?})")));
        }
        let version = r.u32(&|| "the version".into())?;
        if version != 2 && version != 3 {
            return Err(bad(
                4,
                format_args!("unsupported GGUF version {version} (2 and 3 are read)"),
            ));
        }
        let n_tensors = r.u64(&|| "the tensor count".into())?;
        let n_kv = r.u64(&|| "the metadata count".into())?;

        // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes.
        let mut metadata: Vec<(String, Value)> =
            Vec::with_capacity(n_kv.min((r.remaining() / 13) as u64) as usize);
        let mut value_offsets = Vec::with_capacity(metadata.capacity());
        let mut keys = std::collections::HashSet::new();
        for i in 0..n_kv {
            let key_at = r.pos as u64;
            let key = r.utf8(&|| format!("metadata key {i}"))?;
            if !keys.insert(key.clone()) {
                return Err(bad(key_at, format_args!("duplicate metadata key {key:?}")));
            }
            let what = || format!("metadata value {key:?}");
            let t = r.u32(&what)?;
            let at = r.pos as u64;
            let value = if t == value_type::ARRAY {
                Value::Array(read_array(&mut r, &what)?)
            } else {
                read_scalar(&mut r, t, &what)?
            };
            metadata.push((key, value));
            value_offsets.push(at);
        }

        let mut alignment = DEFAULT_ALIGNMENT;
        if let Some(i) = metadata.iter().position(|(k, _)| k == "general.alignment") {
            let at = value_offsets[i];
            match metadata[i].1 {
                Value::U32(a) if a != 0 && a.is_power_of_two() => alignment = a as u64,
                Value::U32(a) => {
                    return Err(bad(
                        at,
                        format_args!("general.alignment {a} is not a power of two"),
                    ))
                }
                ref v => {
                    return Err(bad(
                        at,
                        format_args!(
                            "general.alignment has type {}, not u32",
                            value_type_name(v.type_id())
                        ),
                    ))
                }
            }
        }

        // Each tensor info takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes.
        let mut raw: Vec<(u64, TensorInfo)> =
            Vec::with_capacity(n_tensors.min((r.remaining() / 24) as u64) as usize);
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let at = r.pos as u64;
            let name = r.utf8(&|| format!("tensor name {i}"))?;
            if !names.insert(name.clone()) {
                return Err(bad(at, format_args!("duplicate tensor name {name:?}")));
            }
            let what = || format!("tensor {name:?}");
            let n_dims_at = r.pos as u64;
            let n_dims = r.u32(&what)?;
            if n_dims as usize > MAX_DIMS {
                return Err(bad(
                    n_dims_at,
                    format_args!("tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS})"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut elements: u64 = 1;
            for _ in 0..n_dims {
                let d_at = r.pos as u64;
                let d = r.u64(&what)?;
                elements = elements
                    .checked_mul(d)
                    .filter(|&e| d >= 1 && e <= i64::MAX as u64)
                    .ok_or_else(|| {
                        bad(
                            d_at,
                            format_args!(
                                "tensor {name:?} has dimension {d}: zero, or too many elements"
                            ),
                        )
                    })?;
                dims.push(d);
            }
            let t_at = r.pos as u64;
            let ggml_type = r.u32(&what)?;
            let offset = r.u64(&what)?;
            let bytes =
                match type_layout(ggml_type) {
                    Some((block, size)) => {
                        let ne0 = dims.first().copied().unwrap_or(1);
                        if !ne0.is_multiple_of(block) {
                            return Err(bad(
                                t_at,
                                format_args!(
                                    "tensor {name:?}: {} rows of {ne0} elements are not whole \
                                 blocks of {block}",
                                    type_name(ggml_type)
                                ),
                            ));
                        }
                        // elements ≤ 2^63 and size ≤ 34: fits u64 only when checked.
                        Some((elements / block).checked_mul(size).ok_or_else(|| {
                            bad(t_at, format_args!("tensor {name:?} is too large"))
                        })?)
                    }
                    None => None,
                };
            if !offset.is_multiple_of(alignment) {
                return Err(bad(
                    t_at + 4,
                    format_args!(
                        "tensor {name:?} has offset {offset}, not a multiple of the \
                         alignment {alignment}"
                    ),
                ));
            }
            raw.push((
                t_at + 4,
                TensorInfo {
                    name,
                    dims,
                    ggml_type,
                    offset,
                    bytes,
                },
            ));
        }

        let header_end = r.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let len = b.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (at, mut t) in raw {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.bytes.unwrap_or(0)));
            match (start, end) {
                (Some(s), Some(e)) if e <= len => t.offset = s,
                _ => {
                    return Err(bad(
                        at,
                        format_args!(
                            "tensor {:?}: data at {} + {} ({} bytes) lies beyond the end of \
                             the file ({len} bytes)",
                            t.name,
                            data_offset,
                            t.offset,
                            t.bytes.map_or("unknown".into(), |b| b.to_string())
                        ),
                    ))
                }
            }
            tensors.push(t);
        }

        Ok(Gguf {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            value_offsets,
            bytes,
        })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn entry(&self, key: &str) -> Option<(&Value, u64)> {
        let i = self.metadata.iter().position(|(k, _)| k == key)?;
        Some((&self.metadata[i].1, self.value_offsets[i]))
    }

    /// The byte offset of `key`'s value, for messages (0 when absent).
    pub fn offset_of(&self, key: &str) -> u64 {
        self.entry(key).map_or(0, |(_, o)| o)
    }

    fn wrong(&self, key: &str, want: &str) -> Error {
        let (v, at) = self.entry(key).expect("called for present keys");
        let got = match v {
            Value::Array(a) => format!("array of {}", value_type_name(a.elem_type())),
            v => value_type_name(v.type_id()).into(),
        };
        bad(at, format_args!("{key} is {got}, expected {want}"))
    }

    /// Error for a required key that is absent.
    pub fn missing(&self, key: &str) -> Error {
        Error::ModelUnavailable {
            detail: format!("GGUF: required key {key} is missing"),
        }
    }

    /// An integer key as u32 (any integer type whose value fits). `Ok(None)` when absent;
    /// an error when present with another type or out of range.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        let Some((v, _)) = self.entry(key) else {
            return Ok(None);
        };
        v.as_int()
            .and_then(|i| u32::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| self.wrong(key, "an integer in u32 range"))
    }

    /// An integer key as u64 (any integer type whose value fits).
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some((v, _)) = self.entry(key) else {
            return Ok(None);
        };
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| self.wrong(key, "a non-negative integer"))
    }

    /// An integer key as i64 (any integer type whose value fits).
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        let Some((v, _)) = self.entry(key) else {
            return Ok(None);
        };
        v.as_int()
            .and_then(|i| i64::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| self.wrong(key, "an integer in i64 range"))
    }

    /// An f32 key (type f32 exactly: no conversions, the value is used bit for bit).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.entry(key) {
            None => Ok(None),
            Some((Value::F32(f), _)) => Ok(Some(*f)),
            Some(_) => Err(self.wrong(key, "f32")),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.entry(key) {
            None => Ok(None),
            Some((Value::Bool(b), _)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong(key, "bool")),
        }
    }

    /// A string key that must be UTF-8.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.entry(key) {
            None => Ok(None),
            Some((Value::String(s), at)) => std::str::from_utf8(s)
                .map(Some)
                .map_err(|_| bad(at, format_args!("{key} is not UTF-8"))),
            Some(_) => Err(self.wrong(key, "string")),
        }
    }

    /// A string-array key, as byte strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<&[Vec<u8>]>> {
        match self.entry(key) {
            None => Ok(None),
            Some((Value::Array(Array::String(v)), _)) => Ok(Some(v)),
            Some(_) => Err(self.wrong(key, "array of string")),
        }
    }

    /// An integer-array key as i32 values (any integer element type whose values fit).
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        match self.entry(key) {
            None => Ok(None),
            Some((Value::Array(Array::I32(v)), _)) => Ok(Some(v.clone())),
            Some((Value::Array(a), _)) => (0..a.len())
                .map(|i| a.int_at(i).and_then(|x| i32::try_from(x).ok()))
                .collect::<Option<Vec<i32>>>()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "array of integers in i32 range")),
            Some(_) => Err(self.wrong(key, "array of integers")),
        }
    }

    /// An f32-array key.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        match self.entry(key) {
            None => Ok(None),
            Some((Value::Array(Array::F32(v)), _)) => Ok(Some(v)),
            Some(_) => Err(self.wrong(key, "array of f32")),
        }
    }

    /// A required key: `f` on it, or an error naming the key when absent.
    pub fn require<'a, T>(
        &'a self,
        key: &str,
        f: impl FnOnce(&'a Gguf, &str) -> Result<Option<T>>,
    ) -> Result<T> {
        f(self, key)?.ok_or_else(|| self.missing(key))
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The data of a tensor of a known type (empty for unknown types: check `t.bytes`).
    /// `t` must come from this file; data ranges were checked at parse, so this cannot fail
    /// for them (a foreign `TensorInfo` out of range gives an empty slice).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let b = self.bytes();
        let Some(n) = t.bytes else { return &[] };
        let end = t.offset.checked_add(n);
        match end {
            Some(e) if e <= b.len() as u64 => &b[t.offset as usize..e as usize],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf_write::{encode, string, strings, GgufWriter};

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", string("llama"))
            .kv("a.u8", Value::U8(7))
            .kv("a.i8", Value::I8(-7))
            .kv("a.u16", Value::U16(700))
            .kv("a.i16", Value::I16(-700))
            .kv("a.u32", Value::U32(70000))
            .kv("a.i32", Value::I32(-70000))
            .kv("a.f32", Value::F32(1e-5))
            .kv("a.bool", Value::Bool(true))
            .kv("a.u64", Value::U64(1 << 40))
            .kv("a.i64", Value::I64(-(1 << 40)))
            .kv("a.f64", Value::F64(0.25))
            .kv("a.strs", strings(&["x", "", "ĠHello"]))
            .kv("a.ints", Value::Array(Array::I32(vec![1, -2, 3])))
            .kv("a.u8s", Value::Array(Array::U8(vec![1, 2])))
            .kv("a.f32s", Value::Array(Array::F32(vec![0.5])));
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 10.0 - 3.0).collect();
        for (name, t) in [
            ("f32", ggml_type::F32),
            ("f16", ggml_type::F16),
            ("q4_0", ggml_type::Q4_0),
            ("q4_1", ggml_type::Q4_1),
            ("q8_0", ggml_type::Q8_0),
        ] {
            w.tensor(name, &[32, 2], t, encode(t, &x));
        }
        // A Q4_K tensor (ggml type 12): listed, size unknown.
        w.tensor("q4_k", &[256], 12, vec![0; 144]);
        w.finish()
    }

    #[test]
    fn reads_what_the_writer_writes() {
        let b = sample();
        let g = Gguf::from_slice(&b).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.data_offset % 32, 0);
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(g.get_u32("a.u8").unwrap(), Some(7));
        assert_eq!(g.get_u32("a.u32").unwrap(), Some(70000));
        assert!(g.get_u32("a.i8").is_err());
        assert_eq!(g.get_i64("a.i64").unwrap(), Some(-(1 << 40)));
        assert_eq!(g.get_u64("a.u64").unwrap(), Some(1 << 40));
        assert!(g.get_u32("a.u64").is_err());
        assert_eq!(g.get_f32("a.f32").unwrap(), Some(1e-5));
        assert!(g.get_f32("a.f64").is_err());
        assert_eq!(g.get_bool("a.bool").unwrap(), Some(true));
        assert_eq!(g.get("a.i16"), Some(&Value::I16(-700)));
        assert_eq!(g.get("a.u16"), Some(&Value::U16(700)));
        assert_eq!(g.get("a.f64"), Some(&Value::F64(0.25)));
        let s = g.get_str_array("a.strs").unwrap().unwrap();
        assert_eq!(s, &[b"x".to_vec(), vec![], "ĠHello".as_bytes().to_vec()]);
        assert_eq!(g.get_i32_array("a.ints").unwrap(), Some(vec![1, -2, 3]));
        assert_eq!(g.get_i32_array("a.u8s").unwrap(), Some(vec![1, 2]));
        assert_eq!(g.get_f32_array("a.f32s").unwrap(), Some(&[0.5f32][..]));
        assert!(g.get_str_array("a.ints").is_err());
        assert_eq!(g.get_u32("absent").unwrap(), None);
        let e = g.require("absent", Gguf::get_u32).unwrap_err().to_string();
        assert!(e.contains("absent"), "{e}");
        let e = g.get_u32("a.f32").unwrap_err().to_string();
        assert!(e.contains("a.f32") && e.contains("byte"), "{e}");

        let sizes = [256, 128, 36, 40, 68];
        for (t, size) in g.tensors.iter().zip(sizes) {
            assert_eq!(t.bytes, Some(size), "{}", t.name);
            assert_eq!(t.dims, [32, 2]);
            assert_eq!(t.elements(), 64);
            assert_eq!(t.offset % 32, 0);
            assert_eq!(g.tensor_data(t).len() as u64, size);
        }
        let f = g.tensor("f32").unwrap();
        assert_eq!(&g.tensor_data(f)[..4], &(-3.0f32).to_le_bytes());
        let k = g.tensor("q4_k").unwrap();
        assert_eq!((k.ggml_type, k.bytes), (12, None));
        assert!(g.tensor_data(k).is_empty());
        assert!(g.tensor("nope").is_none());
    }

    /// Where each structure of `sample()` ends is unknown here; every prefix is tried:
    /// a prefix parses only if it still holds every tensor's data.
    #[test]
    fn every_truncation_fails_cleanly() {
        let b = sample();
        let full = Gguf::from_slice(&b).unwrap();
        let data_end = full
            .tensors
            .iter()
            .filter_map(|t| t.bytes.map(|n| t.offset + n))
            .max()
            .unwrap();
        for n in 0..b.len() {
            match Gguf::from_slice(&b[..n]) {
                Ok(g) => {
                    assert!(n as u64 >= data_end, "prefix {n} parsed");
                    assert_eq!(g.tensors, full.tensors);
                }
                Err(e) => {
                    assert!(matches!(e, Error::ModelUnavailable { .. }));
                    assert!(e.to_string().contains("at byte"), "{e}");
                }
            }
        }
    }

    /// A file by hand: header, then `body` (key/values and tensor infos).
    fn raw(n_tensors: u64, n_kv: u64, body: &[u8]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b.extend_from_slice(body);
        b
    }

    fn s(x: &str) -> Vec<u8> {
        let mut b = (x.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(x.as_bytes());
        b
    }

    fn err(b: &[u8]) -> String {
        match Gguf::from_slice(b) {
            Ok(_) => panic!("parsed"),
            Err(e) => {
                assert!(matches!(e, Error::ModelUnavailable { .. }));
                e.to_string()
            }
        }
    }

    fn kv(key: &str, t: u32, v: &[u8]) -> Vec<u8> {
        let mut b = s(key);
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(v);
        b
    }

    fn tensor(name: &str, dims: &[u64], t: u32, offset: u64) -> Vec<u8> {
        let mut b = s(name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b
    }

    #[test]
    fn hostile_headers() {
        assert!(err(b"GGUX\x03\0\0\0").contains("not a GGUF"));
        assert!(err(b"").contains("magic"));
        let mut v1 = raw(0, 0, &[]);
        v1[4] = 1;
        assert!(err(&v1).contains("version 1"));
        assert!(Gguf::from_slice(&raw(0, 0, &[])).is_ok());
        let mut v2 = raw(0, 0, &[]);
        v2[4] = 2;
        assert_eq!(Gguf::from_slice(&v2).unwrap().version, 2);
        // Counts far beyond the bytes.
        assert!(err(&raw(0, 1 << 63, &[])).contains("metadata key 0"));
        assert!(err(&raw(u64::MAX, 0, &[])).contains("tensor name 0"));
        // String lengths beyond the file.
        let e = err(&raw(0, 1, &u64::MAX.to_le_bytes()));
        assert!(e.contains("length") && e.contains("at byte 24"), "{e}");
        let mut big = s("k");
        big.extend_from_slice(&8u32.to_le_bytes());
        big.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(err(&raw(0, 1, &big)).contains("\"k\""));
        // Arrays of 2^63 strings, of 2^62 u64s (overflowing bytes), nested arrays.
        for (t, n) in [(8u32, 1u64 << 63), (10, 1 << 62), (4, u64::MAX), (9, 1)] {
            let mut v = t.to_le_bytes().to_vec();
            v.extend_from_slice(&n.to_le_bytes());
            v.extend_from_slice(&[0; 64]);
            let e = err(&raw(0, 1, &kv("arr", 9, &v)));
            assert!(e.contains("arr"), "{e}");
        }
        // Unknown value and element types.
        assert!(err(&raw(0, 1, &kv("k", 13, &[0; 8]))).contains("invalid value type"));
        let mut v = 99u32.to_le_bytes().to_vec();
        v.extend_from_slice(&0u64.to_le_bytes());
        assert!(err(&raw(0, 1, &kv("k", 9, &v))).contains("element type"));
        // Duplicate keys; keys that are not UTF-8.
        let mut two = kv("k", 0, &[1]);
        two.extend(kv("k", 0, &[2]));
        assert!(err(&raw(0, 2, &two)).contains("duplicate"));
        let mut bad_key = 2u64.to_le_bytes().to_vec();
        bad_key.extend_from_slice(&[0xff, 0xfe, 0, 0, 0, 0, 0]);
        assert!(err(&raw(0, 1, &bad_key)).contains("UTF-8"));
        // Alignment: zero, not a power of two, wrong type; a good one is used.
        for a in [0u32, 3, 48] {
            let e = err(&raw(0, 1, &kv("general.alignment", 4, &a.to_le_bytes())));
            assert!(e.contains("power of two"), "{e}");
        }
        let e = err(&raw(
            0,
            1,
            &kv("general.alignment", 10, &[64, 0, 0, 0, 0, 0, 0, 0]),
        ));
        assert!(e.contains("u64, not u32"), "{e}");
        let mut body = kv("general.alignment", 4, &64u32.to_le_bytes());
        body.extend(tensor("t", &[1], 0, 64));
        let mut f = raw(1, 1, &body);
        f.resize(256, 0);
        let g = Gguf::from_slice(&f).unwrap();
        assert_eq!((g.alignment, g.data_offset), (64, 128));
        assert_eq!(g.tensors[0].offset, 192);
    }

    #[test]
    fn hostile_tensors() {
        let file = |t: Vec<u8>, len: usize| {
            let mut f = raw(1, 0, &t);
            f.resize(len, 0);
            f
        };
        let ok = Gguf::from_slice(&file(tensor("t", &[32, 2], 8, 0), 256)).unwrap();
        assert_eq!(ok.tensors[0].bytes, Some(68));
        // Too many dims; zero dims; element count overflow.
        let e = err(&file(tensor("t", &[1, 1, 1, 1, 1], 0, 0), 256));
        assert!(e.contains("5 dimensions"), "{e}");
        assert!(err(&file(tensor("t", &[32, 0], 0, 0), 256)).contains("dimension 0"));
        let e = err(&file(tensor("t", &[1 << 32, 1 << 31], 0, 0), 256));
        assert!(e.contains("too many"), "{e}");
        let e = err(&file(tensor("t", &[u64::MAX], 12, 0), 256));
        assert!(e.contains("too many"), "{e}");
        // Huge but representable element counts: the byte size then lies beyond the file.
        let e = err(&file(tensor("t", &[1 << 31, 1 << 31], 0, 0), 256));
        assert!(e.contains("too large"), "{e}");
        let e = err(&file(tensor("t", &[1 << 30, 1 << 31], 0, 0), 256));
        assert!(e.contains("beyond the end"), "{e}");
        // Rows that are not whole blocks.
        assert!(err(&file(tensor("t", &[48], 2, 0), 256)).contains("whole blocks"));
        // Misaligned and out-of-file offsets; offsets that overflow.
        assert!(err(&file(tensor("t", &[8], 0, 16), 256)).contains("alignment"));
        assert!(err(&file(tensor("t", &[8], 0, 192), 256)).contains("beyond"));
        let e = err(&file(tensor("t", &[8], 0, u64::MAX - 31), 256));
        assert!(e.contains("beyond") && e.contains("\"t\""), "{e}");
        // Unknown types still need their start inside the file.
        assert!(Gguf::from_slice(&file(tensor("t", &[8], 30, 128), 256)).is_ok());
        assert!(err(&file(tensor("t", &[8], 30, 256), 256)).contains("beyond"));
        // Duplicate names.
        let mut two = tensor("t", &[8], 0, 0);
        two.extend(tensor("t", &[8], 0, 32));
        let mut f = raw(2, 0, &two);
        f.resize(256, 0);
        assert!(err(&f).contains("duplicate tensor"));
    }

    #[test]
    fn reads_the_default_model() {
        let path = crate::model::fetch::cache_dir()
            .map(|d| d.join(crate::model::fetch::DEFAULT_MODEL.file_name));
        let Some(path) = path.filter(|p| p.exists()) else {
            eprintln!("note: default model absent; skipping");
            return;
        };
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
        let u = |k| g.require(k, Gguf::get_u32).unwrap();
        assert_eq!(u("llama.block_count"), 30);
        assert_eq!(u("llama.embedding_length"), 576);
        assert_eq!(u("llama.feed_forward_length"), 1536);
        assert_eq!(u("llama.attention.head_count"), 9);
        assert_eq!(u("llama.attention.head_count_kv"), 3);
        assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), Some(100000.0));
        assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
        assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), Some("smollm"));
        let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
        assert_eq!(tokens.len(), 49152);
        let e = g.tensor("token_embd.weight").unwrap();
        assert_eq!((e.ggml_type, e.dims.as_slice()), (8, &[576u64, 49152][..]));
        let q = g.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!((q.ggml_type, q.bytes), (3, Some(576 * 576 / 32 * 20)));
        assert_eq!(g.tensor("output_norm.weight").unwrap().ggml_type, 0);
        for t in &g.tensors {
            assert!(t.bytes.is_some(), "{}", t.name);
            assert_eq!(g.tensor_data(t).len() as u64, t.bytes.unwrap());
        }
        for (k, v) in &g.metadata {
            let v = match v {
                Value::Array(a) => format!("[{} × type {}]", a.len(), a.elem_type()),
                Value::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
                v => format!("{v:?}"),
            };
            eprintln!("{k} = {v}");
        }
    }
}
