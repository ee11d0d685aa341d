//! The runtime's error type.

use crate::gguf::GgufError;
use alloc::string::String;
use alloc::vec::Vec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture '{0}' (pith runs: llama, qwen2, gemma3)")]
    UnsupportedArch(String),
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { tensor: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("tensor '{tensor}' has type {ty}, which pith cannot use there ({why})")]
    BadTensorType { tensor: String, ty: pith_kernels::GgmlType, why: &'static str },
    #[error("tensor '{0}' is not aligned in memory for its type")]
    Misaligned(String),
    #[error("hyper-parameter '{key}' is invalid: {reason}")]
    BadHyperParam { key: String, reason: String },
    #[error("context overflow: {needed} tokens do not fit in the context of {n_ctx} (use a larger -c)")]
    ContextOverflow { needed: usize, n_ctx: usize },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
    #[error("cannot start threads: {0}")]
    Threads(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[cfg(feature = "std")]
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
    #[cfg(feature = "std")]
    #[error("{path}: {source}")]
    InFile { path: String, source: alloc::boxed::Box<Error> },
}

pub type Result<T, E = Error> = core::result::Result<T, E>;
