//! Errors of the GGUF reader. Each names the key or tensor at fault and what is wrong.

use super::Value;
use alloc::string::{String, ToString};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GgufError {
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (pith reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated while reading {what} at byte {offset}: needs {needed} bytes, {available} left")]
    Truncated { what: String, offset: u64, needed: u64, available: u64 },
    #[error("absurd count: {count} {what} cannot fit in the {bytes} bytes left in the file")]
    AbsurdCount { what: &'static str, count: u64, bytes: u64 },
    #[error("invalid UTF-8 in {what} at byte {offset}")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata key '{key}' has unknown value type {id}")]
    UnknownValueType { key: String, id: u32 },
    #[error("metadata key '{key}': {reason}")]
    BadValue { key: String, reason: String },
    #[error("metadata key '{0}' appears twice")]
    DuplicateKey(String),
    #[error("general.alignment must be a non-zero power of two u32, found {0}")]
    BadAlignment(String),
    #[error("tensor '{tensor}' has unknown or unsupported type id {id}")]
    UnknownTensorType { tensor: String, id: u32 },
    #[error("tensor '{tensor}' has a bad shape: {reason}")]
    BadShape { tensor: String, reason: String },
    #[error("tensor '{tensor}' offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { tensor: String, offset: u64, alignment: u64 },
    #[error("tensor '{tensor}' ({size} bytes at file offset {offset}) lies outside the file ({file_len} bytes)")]
    TensorOutOfBounds { tensor: String, offset: u64, size: u64, file_len: u64 },
    #[error("tensors '{a}' and '{b}' overlap")]
    OverlappingTensors { a: String, b: String },
    #[error("tensor name '{0}' appears twice")]
    DuplicateTensor(String),
    #[error("required metadata key '{0}' is missing")]
    MissingKey(String),
    #[error("metadata key '{key}' should be {expected}, found {found}")]
    WrongType { key: String, expected: &'static str, found: String },
}

impl GgufError {
    pub(crate) fn wrong_type(key: &str, expected: &'static str, v: &Value<'_>) -> Self {
        GgufError::WrongType { key: key.to_string(), expected, found: alloc::format!("{:?}", v.value_type()) }
    }
}
