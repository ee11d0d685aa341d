//! `pith serve`: a local OpenAI-compatible server over one model.
//!
//! - `api.rs`: the request and response bodies (OpenAI's shapes) and their validation.
//! - `scheduler.rs`: the slots; one worker thread owns the model binding and runs one forward
//!   pass per step over every active sequence (continuous batching).
//! - `constrain.rs`: `response_format` (JSON / JSON schema) as a logit mask (llguidance).
//! - `web/`: the chat page served at `/`, embedded in the binary.
pub mod constrain;
