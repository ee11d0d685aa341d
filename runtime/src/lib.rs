//! pith: on-device inference for compressed language models.
//!
//! The GGUF reader, the forward pass and sampling are `no_std` + `alloc`; the `std` feature adds the
//! file map, threads, the tokenizer, chat templates and the engine (an owning,
//! `Send + Sync` [`engine::LoadedModel`] and cancellable [`engine::Session`]s). The command
//! line is the `pith-cli` crate; the C ABI is `pith-ffi` (targets/ffi).
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod chat;
#[cfg(feature = "std")]
pub mod engine;
mod error;
#[cfg(feature = "std")]
pub mod file;
pub mod gguf;
pub mod math;
pub mod model;
pub mod parallel;
#[cfg(feature = "std")]
pub mod perplexity;
pub mod sampling;
#[cfg(feature = "std")]
pub mod session;
pub mod tensor;
#[cfg(feature = "test-util")]
pub mod testing;
#[cfg(feature = "std")]
pub mod tokenizer;

pub use error::{Error, Result};
pub use model::{CacheType, Config, KvCache, Logits, Model, Seq, State, Workspace};
pub use parallel::Pool;
pub use tensor::Precision;
