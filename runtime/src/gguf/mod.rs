//! GGUF reader: zero-copy over a byte slice (a memory map on std, flash on a microcontroller).
//!
//! Everything is validated once in [`Gguf::parse`]: magic, version, counts against the bytes
//! left, string and array lengths, UTF-8, tensor shapes, types, offsets, alignment and sizes.
//! After that, accessors cannot fail on structure, only on a missing or mistyped key.

mod error;
mod value;
pub mod writer;

pub use error::GgufError;
pub use value::{display_value, ArrayValue, Value, ValueType};

use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec::Vec;
use pith_kernels::GgmlType;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Default alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limit on tensor rank.
pub const MAX_DIMS: usize = 4;

/// One tensor: its name, shape, type and bytes borrowed from the file.
#[derive(Clone, Debug)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    /// Shape in ggml order: `dims[0]` is the row length (contiguous), `dims[1]` the row count...
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// The tensor's bytes, borrowed from the file (never copied).
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (`dims[0]`).
    pub fn n_cols(&self) -> usize {
        self.dims[0] as usize
    }
    /// Number of rows (product of `dims[1..]`).
    pub fn n_rows(&self) -> usize {
        self.dims[1..].iter().product::<u64>() as usize
    }
}

/// A parsed GGUF file.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(&'a str, Value<'a>)>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo<'a>>,
    pub alignment: u64,
    /// Byte offset of the data section in the file.
    pub data_offset: u64,
    kv_index: BTreeMap<&'a str, usize>,
    tensor_index: BTreeMap<&'a str, usize>,
}

/// A bounds-checked little-endian cursor.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub(crate) fn bytes(&mut self, n: u64, what: &dyn Fn() -> WhatAt) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() as u64 {
            return Err(GgufError::Truncated {
                what: what().0,
                offset: self.pos as u64,
                needed: n,
                available: self.remaining() as u64,
            });
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn array<const N: usize>(&mut self, what: &dyn Fn() -> WhatAt) -> Result<[u8; N], GgufError> {
        let s = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(crate) fn u32(&mut self, what: &dyn Fn() -> WhatAt) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u64(&mut self, what: &dyn Fn() -> WhatAt) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A GGUF string: u64 length then UTF-8 bytes.
    pub(crate) fn string(&mut self, what: &dyn Fn() -> WhatAt) -> Result<&'a str, GgufError> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        let b = self.bytes(len, what)?;
        core::str::from_utf8(b).map_err(|_| GgufError::InvalidUtf8 { what: what().0, offset: at })
    }
}

/// A description of the item being read, for error messages (built lazily).
pub(crate) struct WhatAt(pub(crate) alloc::string::String);

fn what(s: &str) -> WhatAt {
    WhatAt(s.to_string())
}

impl<'a> Gguf<'a> {
    /// Parses and validates a whole GGUF file held in `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, GgufError> {
        let mut r = Reader::new(buf);
        let magic = r.u32(&|| what("magic"))?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic.to_le_bytes() });
        }
        let version = r.u32(&|| what("version"))?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64(&|| what("tensor count"))?;
        let n_kv = r.u64(&|| what("metadata count"))?;
        // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor
        // info at least 8 + 4 + 4 + 8 bytes: reject counts the file cannot hold before allocating.
        let rem = r.remaining() as u64;
        if n_kv > rem / 13 {
            return Err(GgufError::AbsurdCount { what: "metadata entries", count: n_kv, bytes: rem });
        }
        if n_tensors > rem / 24 {
            return Err(GgufError::AbsurdCount { what: "tensors", count: n_tensors, bytes: rem });
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut kv_index = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&|| WhatAt(alloc::format!("key of metadata entry {i}")))?;
            let tid = r.u32(&|| WhatAt(alloc::format!("type of metadata key '{key}'")))?;
            let ty =
                ValueType::from_id(tid).ok_or_else(|| GgufError::UnknownValueType { key: key.to_string(), id: tid })?;
            let v = value::read_value(&mut r, ty, key, 0)?;
            if kv_index.insert(key, metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey(key.to_string()));
            }
            metadata.push((key, v));
        }

        let alignment = match kv_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1 {
                Value::U32(a) if a != 0 && a.is_power_of_two() => a as u64,
                ref v => {
                    return Err(GgufError::BadAlignment(alloc::format!("{v:?}")));
                }
            },
        };

        struct RawTensor<'a> {
            name: &'a str,
            dims: Vec<u64>,
            ty: GgmlType,
            offset: u64,
            size: u64,
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = BTreeMap::new();
        for i in 0..n_tensors {
            let name = r.string(&|| WhatAt(alloc::format!("name of tensor {i}")))?;
            let tw = || WhatAt(alloc::format!("info of tensor '{name}'"));
            let n_dims = r.u32(&tw)?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(GgufError::BadShape {
                    tensor: name.to_string(),
                    reason: alloc::format!("{n_dims} dimensions (1..={MAX_DIMS} allowed)"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&tw)?);
            }
            let tid = r.u32(&tw)?;
            let ty = GgmlType::from_id(tid)
                .ok_or_else(|| GgufError::UnknownTensorType { tensor: name.to_string(), id: tid })?;
            let offset = r.u64(&tw)?;
            let size = tensor_size(name, &dims, ty)?;
            if offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor { tensor: name.to_string(), offset, alignment });
            }
            if tensor_index.insert(name, raw.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name.to_string()));
            }
            raw.push(RawTensor { name, dims, ty, offset, size });
        }

        // The data section starts at the next multiple of `alignment`.
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        if n_tensors > 0 && data_offset > file_len {
            return Err(GgufError::Truncated {
                what: "padding before tensor data".to_string(),
                offset: r.pos as u64,
                needed: data_offset - r.pos as u64,
                available: file_len - r.pos as u64,
            });
        }
        let data_len = file_len.saturating_sub(data_offset);

        // Every tensor must lie inside the data section, and no two may overlap.
        let mut order: Vec<usize> = (0..raw.len()).collect();
        order.sort_by_key(|&i| raw[i].offset);
        let mut prev_end = 0u64;
        let mut prev_name = "";
        for &i in &order {
            let t = &raw[i];
            let end = t.offset.checked_add(t.size).filter(|&e| e <= data_len).ok_or_else(|| {
                GgufError::TensorOutOfBounds {
                    tensor: t.name.to_string(),
                    offset: data_offset.saturating_add(t.offset),
                    size: t.size,
                    file_len,
                }
            })?;
            if t.offset < prev_end {
                return Err(GgufError::OverlappingTensors { a: prev_name.to_string(), b: t.name.to_string() });
            }
            prev_end = end;
            prev_name = t.name;
        }

        let tensors = raw
            .into_iter()
            .map(|t| {
                let start = (data_offset + t.offset) as usize;
                TensorInfo {
                    name: t.name,
                    dims: t.dims,
                    ty: t.ty,
                    offset: t.offset,
                    data: &buf[start..start + t.size as usize],
                }
            })
            .collect();

        Ok(Gguf { version, metadata, tensors, alignment, data_offset, kv_index, tensor_index })
    }

    /// The value of metadata key `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.kv_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A string value, or `None` if absent; an error if present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&'a str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(GgufError::wrong_type(key, "string", v)),
        }
    }

    /// An integer value (any integer type that fits in u64), `None` if absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| GgufError::wrong_type(key, "unsigned integer", v)),
        }
    }

    /// A float value (f32 or f64, or an integer), `None` if absent.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f32().map(Some).ok_or_else(|| GgufError::wrong_type(key, "float", v)),
        }
    }

    /// A bool value, `None` if absent.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(GgufError::wrong_type(key, "bool", v)),
        }
    }

    /// An array value, `None` if absent.
    pub fn get_array(&self, key: &str) -> Result<Option<&ArrayValue<'a>>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(GgufError::wrong_type(key, "array", v)),
        }
    }

    /// A required integer hyper-parameter.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// A required float hyper-parameter.
    pub fn require_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f32(key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&'a str, GgufError> {
        self.get_str("general.architecture")?.ok_or_else(|| GgufError::MissingKey("general.architecture".to_string()))
    }
}

/// Bytes taken by a tensor of `dims` in `ty`, with every overflow and block-size rule checked.
fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let bad = |reason: alloc::string::String| GgufError::BadShape { tensor: name.to_string(), reason };
    let mut n: u64 = 1;
    for &d in dims {
        if d == 0 {
            return Err(bad(alloc::format!("zero-length dimension in {dims:?}")));
        }
        n = n.checked_mul(d).ok_or_else(|| bad(alloc::format!("element count of {dims:?} overflows")))?;
    }
    if n > (isize::MAX as u64) {
        return Err(bad(alloc::format!("element count of {dims:?} too large")));
    }
    let bs = ty.block_size() as u64;
    if !dims[0].is_multiple_of(bs) {
        return Err(bad(alloc::format!("row length {} is not a multiple of {}'s block size {bs}", dims[0], ty)));
    }
    (n / bs).checked_mul(ty.type_size() as u64).ok_or_else(|| bad(alloc::format!("byte size of {dims:?} overflows")))
}

#[cfg(test)]
mod tests;
