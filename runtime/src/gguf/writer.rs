//! GGUF writer: builds a file in memory (tests, small models) with standard layout.

use super::{ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use alloc::string::String;
use alloc::vec::Vec;
use pith_kernels::GgmlType;

/// An owned metadata value for writing.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements must all have the type given.
    Array(ValueType, Vec<OwnedValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl OwnedValue {
    /// The GGUF value type this value is written as.
    pub fn value_type(&self) -> ValueType {
        match self {
            OwnedValue::U8(_) => ValueType::U8,
            OwnedValue::I8(_) => ValueType::I8,
            OwnedValue::U16(_) => ValueType::U16,
            OwnedValue::I16(_) => ValueType::I16,
            OwnedValue::U32(_) => ValueType::U32,
            OwnedValue::I32(_) => ValueType::I32,
            OwnedValue::F32(_) => ValueType::F32,
            OwnedValue::Bool(_) => ValueType::Bool,
            OwnedValue::String(_) => ValueType::String,
            OwnedValue::Array(..) => ValueType::Array,
            OwnedValue::U64(_) => ValueType::U64,
            OwnedValue::I64(_) => ValueType::I64,
            OwnedValue::F64(_) => ValueType::F64,
        }
    }

    /// An owned copy of a value read from a file (to carry metadata over into a new file).
    pub fn from_value(v: &super::Value<'_>) -> Self {
        use super::Value as V;
        match v {
            V::U8(x) => OwnedValue::U8(*x),
            V::I8(x) => OwnedValue::I8(*x),
            V::U16(x) => OwnedValue::U16(*x),
            V::I16(x) => OwnedValue::I16(*x),
            V::U32(x) => OwnedValue::U32(*x),
            V::I32(x) => OwnedValue::I32(*x),
            V::F32(x) => OwnedValue::F32(*x),
            V::Bool(x) => OwnedValue::Bool(*x),
            V::String(s) => OwnedValue::String((*s).into()),
            V::Array(a) => OwnedValue::Array(a.elem_type, a.iter().map(|e| Self::from_value(&e)).collect()),
            V::U64(x) => OwnedValue::U64(*x),
            V::I64(x) => OwnedValue::I64(*x),
            V::F64(x) => OwnedValue::F64(*x),
        }
    }

    /// An array of strings.
    pub fn strings<S: Into<String>>(it: impl IntoIterator<Item = S>) -> Self {
        OwnedValue::Array(ValueType::String, it.into_iter().map(|s| OwnedValue::String(s.into())).collect())
    }
    /// An array of f32.
    pub fn f32s(it: impl IntoIterator<Item = f32>) -> Self {
        OwnedValue::Array(ValueType::F32, it.into_iter().map(OwnedValue::F32).collect())
    }
    /// An array of i32.
    pub fn i32s(it: impl IntoIterator<Item = i32>) -> Self {
        OwnedValue::Array(ValueType::I32, it.into_iter().map(OwnedValue::I32).collect())
    }

    fn write_payload(&self, out: &mut Vec<u8>) {
        match self {
            OwnedValue::U8(v) => out.push(*v),
            OwnedValue::I8(v) => out.push(*v as u8),
            OwnedValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            OwnedValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            OwnedValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            OwnedValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            OwnedValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            OwnedValue::Bool(v) => out.push(*v as u8),
            OwnedValue::String(s) => write_str(out, s),
            OwnedValue::Array(t, items) => {
                out.extend_from_slice(&(*t as u32).to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    it.write_payload(out);
                }
            }
            OwnedValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            OwnedValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            OwnedValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A tensor to write: name, ggml-order dims, type and its encoded bytes.
#[derive(Clone, Debug)]
pub struct OwnedTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

/// Collects metadata and tensors, then serialises them as GGUF v3.
#[derive(Clone, Debug, Default)]
pub struct GgufBuilder {
    pub metadata: Vec<(String, OwnedValue)>,
    pub tensors: Vec<OwnedTensor>,
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) a metadata key.
    pub fn kv(&mut self, key: &str, v: OwnedValue) -> &mut Self {
        if let Some(e) = self.metadata.iter_mut().find(|(k, _)| k == key) {
            e.1 = v;
        } else {
            self.metadata.push((key.into(), v));
        }
        self
    }

    /// Adds a tensor; `data` must hold exactly the bytes of `dims` in `ty`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push(OwnedTensor { name: name.into(), dims: dims.to_vec(), ty, data });
        self
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| match v {
                OwnedValue::U32(a) if *a > 0 => Some(*a as u64),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.write_with(|b| {
            out.extend_from_slice(b);
            Ok::<(), core::convert::Infallible>(())
        });
        out
    }

    /// Total size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        let mut n = 0u64;
        let _ = self.write_header_with(|b| {
            n += b.len() as u64;
            Ok::<(), core::convert::Infallible>(())
        });
        n + self.data_size()
    }

    /// Bytes of the data section (tensors with their padding, the last one unpadded).
    fn data_size(&self) -> u64 {
        let align = self.alignment();
        let mut offset = 0u64;
        let mut end = 0u64;
        for t in &self.tensors {
            end = offset + t.data.len() as u64;
            offset = end.div_ceil(align) * align;
        }
        end
    }

    /// Streams the file to `sink` piece by piece (header, then each tensor's bytes with its
    /// padding), so large files need not be assembled in memory.
    pub fn write_with<E>(&self, mut sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let align = self.alignment();
        self.write_header_with(&mut sink)?;
        let zeros = [0u8; 64];
        let mut pos = 0u64;
        for t in &self.tensors {
            let aligned = pos.div_ceil(align) * align;
            let mut pad = aligned - pos;
            while pad > 0 {
                let k = pad.min(zeros.len() as u64);
                sink(&zeros[..k as usize])?;
                pad -= k;
            }
            sink(&t.data)?;
            pos = aligned + t.data.len() as u64;
        }
        Ok(())
    }

    /// Header, metadata and tensor infos, padded to the alignment.
    fn write_header_with<E>(&self, mut sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            v.write_payload(&mut out);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(t.ty as u32).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).div_ceil(align) * align;
        }
        let n = (out.len() as u64).div_ceil(align) * align;
        out.resize(n as usize, 0);
        sink(&out)
    }
}
