//! The compression tool's error: every failure names the file, tensor or option at fault.

use std::path::PathBuf;

/// Errors of `pith-compress`.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// A file could not be read, mapped or parsed (the runtime's error, which names the file).
    #[error("{0}")]
    Runtime(#[from] pith::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Standard output failed (`> /dev/full`; a closed pipe ends the program quietly).
    #[error("writing to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("{0} exists; pass --force to overwrite it")]
    OutputExists(PathBuf),
    #[error("{0} is the input file; the input is never modified")]
    OutputIsInput(PathBuf),
    #[error("unknown type '{0}' (known: {1})")]
    UnknownType(String, String),
    #[error("{0}")]
    BadOption(String),
    #[error("tensor {tensor}: {why}")]
    Tensor { tensor: String, why: String },
    #[error("calibration text {path}: {why}")]
    Calibration { path: PathBuf, why: String },
    #[error("imatrix {path}: {why}")]
    Imatrix { path: PathBuf, why: String },
    /// The text `pith-compress eval` scores is unusable (empty, not UTF-8, too short).
    #[error("evaluation text {path}: {why}")]
    EvalText { path: PathBuf, why: String },
    /// A model (a GGUF file, a Hugging Face folder or one of its files) that export or convert
    /// cannot take; names the file or part at fault.
    #[error("{what}: {why}")]
    Model { what: String, why: String },
    /// A model cannot be compared with the base (vocabulary), or failed to run; names the model.
    #[error("{model}: {why}")]
    EvalModel { model: String, why: String },
}

pub type Result<T, E = CompressError> = std::result::Result<T, E>;

impl CompressError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CompressError::Io { path: path.into(), source }
    }
}

impl From<pith::gguf::GgufError> for CompressError {
    fn from(e: pith::gguf::GgufError) -> Self {
        CompressError::Runtime(e.into())
    }
}
