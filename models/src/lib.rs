//! pith-models: everything done to models ahead of time. Fetching lives in the `pith-fetch`
//! crate beside it (re-exported here) so that the runtime can depend on fetching while this
//! crate, home of the compression tool (`pith-compress`), depends on the runtime's GGUF reader,
//! kernels and forward pass.
//!
//! The compression tool's modules:
//! - [`quantize`]: `dequantize` and `quantize` (type mixes, overrides, fallbacks, metadata);
//! - [`imatrix`]: calibration statistics gathered by running the runtime over text;
//! - [`gptq`]: error-compensating quantization with the calibration second moments;
//! - [`eval`]: perplexity and KL divergence against a base model, and [`plot`] for the SVG;
//! - [`prune`]: Minitron-style width and depth pruning by activation importance;
//! - [`lowrank`]: activation-whitened SVD of the linear weights (merged back to dense);
//! - [`export`] and [`convert`]: a llama GGUF to a Hugging Face model folder and back;
//! - [`distill`]: knowledge distillation on candle (feature `train`);
//! - [`output`]: atomic output files.

pub use pith_fetch::*;

pub mod convert;
pub mod distill;
pub mod error;
pub mod eval;
pub mod export;
#[cfg(feature = "train")]
pub mod fused;
pub mod gptq;
pub mod imatrix;
pub mod lowrank;
pub mod npz;
pub mod output;
pub mod plot;
pub mod progress;
pub mod prune;
pub mod quantize;

pub use error::{CompressError, Result};
