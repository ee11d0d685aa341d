//! GGUF metadata values, borrowed from the file.

use super::{GgufError, Reader, WhatAt};
use alloc::string::ToString;

/// Arrays nested deeper than this are rejected (a hostile file could otherwise recurse freely).
pub const MAX_ARRAY_DEPTH: u32 = 8;

/// GGUF metadata value types, numbered as in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Size of a fixed-size value, `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// A metadata value. Strings and arrays borrow the file's bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(ArrayValue<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// An array, validated at parse time and decoded lazily from the file's bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct ArrayValue<'a> {
    pub elem_type: ValueType,
    pub len: u64,
    /// The encoded elements (without the type and length header).
    pub(crate) bytes: &'a [u8],
}

impl<'a> Value<'a> {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as a non-negative integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is one that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as f32 (floats, or integers converted).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> ArrayValue<'a> {
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, decoded one by one.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter { r: Reader::new(self.bytes), elem_type: self.elem_type, left: self.len }
    }

    /// The elements as strings, if this is an array of strings.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + 'a> {
        (self.elem_type == ValueType::String).then(|| StrIter::new(self.bytes, self.len))
    }

    /// The elements as f32, if this is an array of numbers.
    pub fn f32s(&self) -> Option<impl Iterator<Item = f32> + 'a> {
        // f32 (token scores) straight from the bytes, without a `Value` per element.
        let f32s = (self.elem_type == ValueType::F32)
            .then(|| self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        let f64s = (self.elem_type == ValueType::F64).then(|| self.iter().filter_map(|v| v.as_f32()));
        matches!(self.elem_type, ValueType::F32 | ValueType::F64)
            .then(|| f32s.into_iter().flatten().chain(f64s.into_iter().flatten()))
    }

    /// The elements as i64, if this is an array of integers.
    pub fn ints(&self) -> Option<impl Iterator<Item = i64> + 'a> {
        use ValueType::*;
        // i32 (token types) straight from the bytes, without a `Value` per element.
        let i32s = (self.elem_type == I32)
            .then(|| self.bytes.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))));
        let others = matches!(self.elem_type, U8 | I8 | U16 | I16 | U32 | U64 | I64)
            .then(|| self.iter().filter_map(|v| v.as_i64()));
        matches!(self.elem_type, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64)
            .then(|| i32s.into_iter().flatten().chain(others.into_iter().flatten()))
    }
}

/// Iterator over an [`ArrayValue`]'s elements.
pub struct ArrayIter<'a> {
    r: Reader<'a>,
    elem_type: ValueType,
    left: u64,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;
    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The bytes were validated when the file was parsed, so this cannot fail; stop if it did.
        read_value(&mut self.r, self.elem_type, "", 0).ok()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// Reads (and fully validates) one value of type `ty` for metadata key `key`.
pub(crate) fn read_value<'a>(r: &mut Reader<'a>, ty: ValueType, key: &str, depth: u32) -> Result<Value<'a>, GgufError> {
    let w = || WhatAt(alloc::format!("value of metadata key '{key}'"));
    if let Some(n) = ty.fixed_size() {
        let b = r.bytes(n as u64, &w)?;
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(b);
        return Ok(match ty {
            ValueType::U8 => Value::U8(a[0]),
            ValueType::I8 => Value::I8(a[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes([a[0], a[1]])),
            ValueType::I16 => Value::I16(i16::from_le_bytes([a[0], a[1]])),
            ValueType::U32 => Value::U32(u32::from_le_bytes([a[0], a[1], a[2], a[3]])),
            ValueType::I32 => Value::I32(i32::from_le_bytes([a[0], a[1], a[2], a[3]])),
            ValueType::F32 => Value::F32(f32::from_le_bytes([a[0], a[1], a[2], a[3]])),
            ValueType::Bool => match a[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::BadValue {
                        key: key.to_string(),
                        reason: alloc::format!("bool byte is {b}, not 0 or 1"),
                    })
                }
            },
            ValueType::U64 => Value::U64(u64::from_le_bytes(a)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(a)),
            _ => Value::F64(f64::from_le_bytes(a)),
        });
    }
    match ty {
        ValueType::String => Ok(Value::String(r.string(&w)?)),
        _ => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::BadValue {
                    key: key.to_string(),
                    reason: alloc::format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                });
            }
            let tid = r.u32(&w)?;
            let elem_type =
                ValueType::from_id(tid).ok_or_else(|| GgufError::UnknownValueType { key: key.to_string(), id: tid })?;
            let len = r.u64(&w)?;
            // Every element takes at least one byte (strings and arrays at least 8).
            let min = elem_type.fixed_size().unwrap_or(8) as u64;
            let rem = r.remaining() as u64;
            if len > rem / min {
                return Err(GgufError::AbsurdCount { what: "array elements", count: len, bytes: rem });
            }
            let start = r.pos;
            if let Some(n) = elem_type.fixed_size() {
                r.bytes(len * n as u64, &w)?;
                if elem_type == ValueType::Bool {
                    if let Some(b) = r.buf[start..r.pos].iter().find(|&&b| b > 1) {
                        return Err(GgufError::BadValue {
                            key: key.to_string(),
                            reason: alloc::format!("bool byte is {b}, not 0 or 1"),
                        });
                    }
                }
            } else if elem_type == ValueType::String {
                read_strings(r, len, key)?;
            } else {
                for _ in 0..len {
                    read_value(r, elem_type, key, depth + 1)?;
                }
            }
            Ok(Value::Array(ArrayValue { elem_type, len, bytes: &r.buf[start..r.pos] }))
        }
    }
}

/// Strings shorter than this have a length prefix of ASCII bytes (`n, 0, 0, ...`), so a run of
/// them validates as one piece of UTF-8 exactly when each string does.
const SHORT: u64 = 128;

/// UTF-8 validation with SIMD where the CPU has it: a vocabulary's ~1.5 MB of strings in a few
/// runs took ~2 ms string by string with `core::str::from_utf8`, ~0.2 ms this way.
fn utf8(b: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(b).ok()
}

/// Reads and validates `len` strings (an array's elements), with the errors, and in the order,
/// of reading them one by one. Each run of short strings (prefixes and all) is validated as one
/// piece; a run or long string that fails is read again string by string for the error.
fn read_strings(r: &mut Reader<'_>, len: u64, key: &str) -> Result<(), GgufError> {
    let w = || WhatAt(alloc::format!("value of metadata key '{key}'"));
    let buf = r.buf;
    let check = |from: usize, to: usize| -> Result<(), GgufError> {
        if utf8(&buf[from..to]).is_some() {
            return Ok(());
        }
        let mut each = Reader { buf: &buf[..to], pos: from };
        while each.pos < to {
            each.string(&w)?;
        }
        Ok(())
    };
    let mut run = r.pos;
    for _ in 0..len {
        let at = r.pos;
        let n = match r.u64(&w).and_then(|n| r.bytes(n, &w).map(|_| n)) {
            Ok(n) => n,
            Err(e) => {
                check(run, at)?; // an earlier string's error comes first
                return Err(e);
            }
        };
        if n >= SHORT {
            check(run, at)?;
            check(at, r.pos)?;
            run = r.pos;
        }
    }
    check(run, r.pos)
}

/// The strings of a parsed (so valid) array's bytes, without a [`Value`] per element (the
/// tokenizer reads ~100k of them at start-up): each run of short strings is validated as one
/// piece, as [`read_strings`] does, and its strings are slices of it.
struct StrIter<'a> {
    bytes: &'a [u8],
    pos: usize,
    left: u64,
    /// The current run of short strings, from byte `run_at` of `bytes`.
    run: &'a str,
    run_at: usize,
}

impl<'a> StrIter<'a> {
    fn new(bytes: &'a [u8], len: u64) -> Self {
        StrIter { bytes, pos: 0, left: len, run: "", run_at: 0 }
    }

    /// The string whose length prefix is at `at`: its byte range.
    fn span(&self, at: usize) -> Option<(usize, usize)> {
        let n = self.bytes.get(at..at.checked_add(8)?)?;
        let n = usize::try_from(u64::from_le_bytes(n.try_into().ok()?)).ok()?;
        let a = at + 8;
        Some((a, a.checked_add(n).filter(|&b| b <= self.bytes.len())?))
    }
}

impl<'a> Iterator for StrIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        // Parsing validated the array, so none of this can fail; stop if it did.
        if self.left == 0 {
            return None;
        }
        let (a, b) = self.span(self.pos)?;
        let s = if (b - a) as u64 >= SHORT {
            utf8(&self.bytes[a..b])?
        } else {
            if b > self.run_at + self.run.len() {
                // A new run: as far as the short strings go.
                let (mut end, mut left) = (self.pos, self.left);
                while let Some((_, e)) = self.span(end).filter(|&(a, e)| left > 0 && ((e - a) as u64) < SHORT) {
                    end = e;
                    left -= 1;
                }
                self.run = utf8(&self.bytes[self.pos..end])?;
                self.run_at = self.pos;
            }
            self.run.get(a - self.run_at..b - self.run_at)?
        };
        self.pos = b;
        self.left -= 1;
        Some(s)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// A short human-readable rendering of a value: arrays show their type, length and first
/// `max_items` elements; long strings are cut at 200 characters.
pub fn display_value(v: &Value<'_>, max_items: usize) -> alloc::string::String {
    use alloc::format;
    match v {
        Value::String(s) => {
            let cut: alloc::string::String = s.chars().take(200).collect();
            let more = if cut.len() < s.len() { "…" } else { "" };
            format!("{cut:?}{more}")
        }
        Value::Array(a) => {
            let items: alloc::vec::Vec<_> = a.iter().take(max_items).map(|e| display_value(&e, max_items)).collect();
            let more = if a.len() > max_items { ", …" } else { "" };
            format!("[{:?}; {}] [{}{more}]", a.elem_type, a.len, items.join(", "))
        }
        Value::U8(x) => format!("{x}"),
        Value::I8(x) => format!("{x}"),
        Value::U16(x) => format!("{x}"),
        Value::I16(x) => format!("{x}"),
        Value::U32(x) => format!("{x}"),
        Value::I32(x) => format!("{x}"),
        Value::F32(x) => format!("{x}"),
        Value::Bool(x) => format!("{x}"),
        Value::U64(x) => format!("{x}"),
        Value::I64(x) => format!("{x}"),
        Value::F64(x) => format!("{x}"),
    }
}
