//! pith-models: everything done to models ahead of time. Fetching lives in the `pith-fetch`
//! crate beside it (re-exported here) so that the runtime can depend on fetching while this
//! crate, home of the compression tool (`pith-compress`), depends on the runtime's GGUF reader,
//! kernels and forward pass.

pub use pith_fetch::*;
