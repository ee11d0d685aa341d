//! pith's C ABI. The header `include/pith.h` is generated from this file by cbindgen
//! (build.rs; `tests/header.rs` fails when the committed header is stale).
//!
//! Rules every function follows:
//! - it returns a [`PithStatus`] (a few getters return a value that cannot fail);
//! - a null pointer, invalid UTF-8, a handle of the wrong type (checked by a magic tag), a
//!   buffer that is too small or a parameter out of range is an error, never a crash;
//! - no panic crosses the boundary: every entry point runs under `catch_unwind`
//!   ([`PithStatus::PITH_ERR_PANIC`]);
//! - the message of the last failed call on a handle, on the calling thread, is
//!   `pith_last_error(handle)` (`pith_last_error(NULL)` for calls that have no handle yet,
//!   e.g. a failed load).
//!
//! Threads: a model is read-only and may be used from any number of threads at once; a
//! session is used by one thread at a time (a second thread's call while one is running
//! fails with [`PithStatus::PITH_ERR_BUSY`]), except `pith_session_cancel`, which any thread
//! may call while the session is generating.
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_camel_case_types)]

use pith::chat::Message;
use pith::engine::{CancelToken, GenerateOptions, LoadOptions, LoadedModel, Session, Stop};
use pith::sampling::SamplerConfig;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

/// ABI major version: a caller built against another major version is refused at load.
pub const PITH_ABI_VERSION_MAJOR: u32 = 1;
/// ABI minor version: grows when functions or struct fields are added (old callers keep
/// working).
pub const PITH_ABI_VERSION_MINOR: u32 = 0;
/// `(major << 16) | minor`, as `pith_abi_version()` returns it.
pub const PITH_ABI_VERSION: u32 = (PITH_ABI_VERSION_MAJOR << 16) | PITH_ABI_VERSION_MINOR;

/// What every call returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PithStatus {
    PITH_OK = 0,
    /// A null pointer, a value out of range, a struct_size too small.
    PITH_ERR_INVALID_ARGUMENT = 1,
    /// A string that is not valid UTF-8.
    PITH_ERR_INVALID_UTF8 = 2,
    /// The handle is not of the type the function takes (or was freed, where detectable).
    PITH_ERR_WRONG_HANDLE = 3,
    /// The caller was built against another major version of this ABI.
    PITH_ERR_ABI_MISMATCH = 4,
    /// A file could not be read or written.
    PITH_ERR_IO = 5,
    /// The model file (or buffer) is not a model pith can run.
    PITH_ERR_BAD_MODEL = 6,
    /// The output buffer is too small; the size it needs was written to the size out-param.
    PITH_ERR_BUFFER_TOO_SMALL = 7,
    /// Another thread is using this session.
    PITH_ERR_BUSY = 8,
    /// The context (KV cache) cannot hold the tokens.
    PITH_ERR_CONTEXT_FULL = 9,
    /// The load progress callback cancelled the load.
    PITH_ERR_CANCELLED = 10,
    /// A saved session state that does not fit this session (other model, corrupt, too long).
    PITH_ERR_BAD_STATE = 11,
    /// A bug in pith (an internal panic); the session should be freed.
    PITH_ERR_PANIC = 12,
    /// Any other failure (thread start, tokenizer, chat template).
    PITH_ERR_OTHER = 13,
}

/// Why a generation stopped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PithStopReason {
    /// `max_tokens` were generated.
    PITH_STOP_LENGTH = 0,
    /// The model produced an end-of-generation token.
    PITH_STOP_EOG = 1,
    /// The context is full.
    PITH_STOP_CONTEXT_FULL = 2,
    /// The text callback returned non-zero.
    PITH_STOP_CALLBACK = 3,
    /// `pith_session_cancel`.
    PITH_STOP_CANCELLED = 4,
    /// One of the stop strings appeared (it and what follows were not passed on).
    PITH_STOP_STRING = 5,
}

/// Load progress: called with a fraction in [0, 1]; return false to cancel the load.
pub type PithProgressFn = Option<extern "C" fn(progress: f32, user_data: *mut c_void) -> bool>;

/// Streaming text: `text` is `len` bytes of whole, valid UTF-8 (never a split character),
/// NUL-terminated; valid only during the call. Return 0 to go on, non-zero to stop.
pub type PithTextFn = Option<extern "C" fn(text: *const c_char, len: usize, user_data: *mut c_void) -> i32>;

/// Model load parameters. Initialise with `pith_model_params_default()` (header), which sets
/// `struct_size` and `abi_version` to what the caller was compiled with.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PithModelParams {
    /// `sizeof(PithModelParams)` as the caller knows it.
    pub struct_size: u32,
    /// `PITH_ABI_VERSION` the caller was built against.
    pub abi_version: u32,
    /// Default worker threads of new sessions (0 = one per performance core).
    pub n_threads: i32,
    /// Optional; may cancel the load.
    pub progress: PithProgressFn,
    pub progress_user_data: *mut c_void,
}

/// Session parameters (`pith_session_params_default()`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PithSessionParams {
    pub struct_size: u32,
    /// Context size in tokens (default 2048).
    pub n_ctx: u32,
    /// Worker threads (-1 = the model's default, 0 = one per performance core).
    pub n_threads: i32,
}

/// Generation parameters (`pith_gen_params_default()`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PithGenParams {
    pub struct_size: u32,
    /// Most tokens to generate (-1 = until end of generation or a full context). Default 128.
    pub max_tokens: i32,
    /// 0 or less = greedy. Default 0.8.
    pub temperature: f32,
    /// 0 = off. Default 40.
    pub top_k: i32,
    /// 1 = off. Default 0.95.
    pub top_p: f32,
    /// 0 = off. Default 0.05.
    pub min_p: f32,
    /// 1 = off. Default 1.
    pub repeat_penalty: f32,
    /// Default 64.
    pub repeat_last_n: i32,
    /// Same seed, same text. Default 42.
    pub seed: u64,
    /// `n_stop` NUL-terminated UTF-8 stop strings (may be NULL when `n_stop` is 0).
    pub stop: *const *const c_char,
    pub n_stop: usize,
    /// Optional streaming callback.
    pub on_text: PithTextFn,
    pub user_data: *mut c_void,
}

/// What a generation did (`pith_gen_result_init()` sets `struct_size`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PithGenResult {
    pub struct_size: u32,
    pub stop_reason: PithStopReason,
    /// Tokens fed before generating (the prompt, after any cached prefix).
    pub n_prompt_tokens: u32,
    /// Tokens generated.
    pub n_tokens: u32,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// One chat message: NUL-terminated UTF-8 role ("system", "user", "assistant") and content.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PithMessage {
    pub role: *const c_char,
    pub content: *const c_char,
}

/// Facts about a model (`pith_model_info`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PithModelInfo {
    pub struct_size: u32,
    pub n_vocab: u32,
    pub n_ctx_train: u32,
    pub n_layer: u32,
    pub n_embd: u32,
    /// -1 when the model has none.
    pub bos_token: i32,
    pub eos_token: i32,
}

const MODEL_MAGIC: u64 = u64::from_le_bytes(*b"PITHMODL");
const SESSION_MAGIC: u64 = u64::from_le_bytes(*b"PITHSESS");
const FREED: u64 = u64::from_le_bytes(*b"PITHFREE");

/// Opaque model handle (`PithModel *`).
#[repr(C)]
pub struct PithModel {
    // First, so that any handle's type can be read from its first 8 bytes.
    magic: AtomicU64,
    model: Arc<LoadedModel>,
}

/// Opaque session handle (`PithSession *`).
#[repr(C)]
pub struct PithSession {
    magic: AtomicU64,
    cancel: CancelToken,
    session: Mutex<Session>,
}

/// An error on its way out: a status and a message for `pith_last_error`.
struct Failure(PithStatus, String);

type R<T> = Result<T, Failure>;

fn fail<T>(st: PithStatus, msg: impl Into<String>) -> R<T> {
    Err(Failure(st, msg.into()))
}

impl From<pith::Error> for Failure {
    fn from(e: pith::Error) -> Self {
        use pith::Error as E;
        let root = match &e {
            E::InFile { source, .. } => source.as_ref(),
            other => other,
        };
        let st = match root {
            E::File { .. } => PithStatus::PITH_ERR_IO,
            E::Gguf(_)
            | E::UnsupportedArch(_)
            | E::MissingTensor(_)
            | E::ShapeMismatch { .. }
            | E::BadTensorType { .. }
            | E::Misaligned(_)
            | E::BadHyperParam { .. } => PithStatus::PITH_ERR_BAD_MODEL,
            E::ContextOverflow { .. } => PithStatus::PITH_ERR_CONTEXT_FULL,
            E::BadToken { .. } => PithStatus::PITH_ERR_INVALID_ARGUMENT,
            E::Cancelled => PithStatus::PITH_ERR_CANCELLED,
            E::BadSessionState(_) => PithStatus::PITH_ERR_BAD_STATE,
            _ => PithStatus::PITH_ERR_OTHER,
        };
        // A file that cannot be opened is an I/O error; one that opens but does not parse is
        // a bad model even though it is wrapped with its path.
        let st = if matches!(e, E::File { .. }) { PithStatus::PITH_ERR_IO } else { st };
        Failure(st, e.to_string())
    }
}

thread_local! {
    /// The last error message per handle address (0 = no handle), on this thread.
    static LAST_ERROR: RefCell<HashMap<usize, CString>> = RefCell::new(HashMap::new());
}

fn set_error(key: usize, msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|m| {
        m.borrow_mut().insert(key, c);
    });
}

fn forget_errors(key: usize) {
    LAST_ERROR.with(|m| {
        m.borrow_mut().remove(&key);
    });
}

/// Runs an entry point: panics are caught, failures recorded for `pith_last_error(key)`.
fn guard(key: usize, f: impl FnOnce() -> R<()>) -> PithStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => PithStatus::PITH_OK,
        Ok(Err(Failure(st, msg))) => {
            set_error(key, &msg);
            st
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_error(key, &format!("internal error (panic): {what}"));
            PithStatus::PITH_ERR_PANIC
        }
    }
}

/// The tag at the start of a handle.
///
/// # Safety
/// `p` is null or points to at least 8 readable, 8-aligned bytes.
unsafe fn tag_of(p: *const c_void) -> Option<u64> {
    if p.is_null() || !(p as usize).is_multiple_of(8) {
        return None;
    }
    // SAFETY: non-null and aligned; readable by the caller's contract (a pointer that pith
    // returned, or at least some live object of 8 bytes).
    Some(unsafe { core::ptr::read_volatile(p as *const u64) })
}

/// The model behind a handle.
///
/// # Safety
/// `p` is null or a pointer the caller got from pith (or another object of at least 8 bytes).
unsafe fn model_ref<'a>(p: *const PithModel) -> R<&'a PithModel> {
    // SAFETY: forwarded contract.
    match unsafe { tag_of(p.cast()) } {
        None if p.is_null() => fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "the model handle is NULL"),
        // SAFETY: the tag says it is a live PithModel that pith allocated.
        Some(MODEL_MAGIC) => Ok(unsafe { &*p }),
        Some(FREED) => fail(PithStatus::PITH_ERR_WRONG_HANDLE, "the model handle was freed"),
        _ => fail(PithStatus::PITH_ERR_WRONG_HANDLE, "not a model handle"),
    }
}

/// The session behind a handle (see [`model_ref`]).
///
/// # Safety
/// As [`model_ref`].
unsafe fn session_ref<'a>(p: *const PithSession) -> R<&'a PithSession> {
    // SAFETY: forwarded contract.
    match unsafe { tag_of(p.cast()) } {
        None if p.is_null() => fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "the session handle is NULL"),
        // SAFETY: the tag says it is a live PithSession that pith allocated.
        Some(SESSION_MAGIC) => Ok(unsafe { &*p }),
        Some(FREED) => fail(PithStatus::PITH_ERR_WRONG_HANDLE, "the session handle was freed"),
        _ => fail(PithStatus::PITH_ERR_WRONG_HANDLE, "not a session handle"),
    }
}

/// Runs `f` on the session if no other thread is.
fn with_session<T>(s: &PithSession, f: impl FnOnce(&mut Session) -> R<T>) -> R<T> {
    match s.session.try_lock() {
        Ok(mut g) => f(&mut g),
        Err(TryLockError::WouldBlock) => fail(
            PithStatus::PITH_ERR_BUSY,
            "the session is in use by another thread (a session is used by one thread at a time)",
        ),
        Err(TryLockError::Poisoned(_)) => {
            fail(PithStatus::PITH_ERR_PANIC, "the session is unusable after an internal error; free it")
        }
    }
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is null or a NUL-terminated string that stays valid for `'a`.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> R<&'a str> {
    if p.is_null() {
        return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, format!("{what} is NULL"));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| {
        Failure(PithStatus::PITH_ERR_INVALID_UTF8, format!("{what} is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })
}

/// Writes `v` through an out-pointer (ignored when null).
///
/// # Safety
/// `p` is null or valid for writing a `T`.
unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { p.write(v) }
    }
}

/// Reads a growable struct: `struct_size` first; fields past what the caller knows keep
/// their defaults, and a caller's larger (newer) struct is read up to what this library knows.
///
/// # Safety
/// `p` is null or points to `struct_size` readable bytes that start with the `u32` size.
unsafe fn read_sized<T: Copy>(p: *const T, default: T, min_size: usize, what: &str) -> R<T> {
    if p.is_null() {
        return Ok(default);
    }
    // SAFETY: non-null; the first field of every sized struct is the u32 struct_size.
    let size = unsafe { (p as *const u32).read_unaligned() } as usize;
    if size < min_size {
        return fail(
            PithStatus::PITH_ERR_INVALID_ARGUMENT,
            format!("{what}.struct_size is {size}, less than the {min_size} bytes of ABI 1.0; initialise it with its _default() function"),
        );
    }
    let mut out = default;
    let n = size.min(core::mem::size_of::<T>());
    // SAFETY: the caller's struct has `size` >= n readable bytes; `out` is a T of
    // size_of::<T>() >= n bytes; every field of these repr(C) structs accepts any bytes its
    // caller writes (integers, floats, pointers, nullable function pointers).
    unsafe { core::ptr::copy_nonoverlapping(p as *const u8, (&mut out as *mut T).cast::<u8>(), n) };
    Ok(out)
}

/// Fills a caller's growable struct with `v`, up to the size it says it has.
///
/// # Safety
/// `p` is null or points to `struct_size` writable bytes that start with the `u32` size.
unsafe fn write_sized<T: Copy>(p: *mut T, v: T, min_size: usize, what: &str) -> R<()> {
    if p.is_null() {
        return Ok(());
    }
    // SAFETY: non-null; struct_size is the first field.
    let size = unsafe { (p as *const u32).read_unaligned() } as usize;
    if size < min_size {
        return fail(
            PithStatus::PITH_ERR_INVALID_ARGUMENT,
            format!("{what}.struct_size is {size}, expected at least {min_size}"),
        );
    }
    let n = size.min(core::mem::size_of::<T>());
    // SAFETY: the caller's struct has `size` >= n writable bytes; v is size_of::<T>() >= n.
    unsafe { core::ptr::copy_nonoverlapping((&v as *const T).cast::<u8>(), p as *mut u8, n) };
    // Keep the caller's own struct_size.
    // SAFETY: as above, the first 4 bytes are writable.
    unsafe { (p as *mut u32).write_unaligned(size as u32) };
    Ok(())
}

fn model_params_default() -> PithModelParams {
    PithModelParams {
        struct_size: core::mem::size_of::<PithModelParams>() as u32,
        abi_version: PITH_ABI_VERSION,
        n_threads: 0,
        progress: None,
        progress_user_data: core::ptr::null_mut(),
    }
}

fn session_params_default() -> PithSessionParams {
    PithSessionParams { struct_size: core::mem::size_of::<PithSessionParams>() as u32, n_ctx: 2048, n_threads: -1 }
}

fn gen_params_default() -> PithGenParams {
    let s = SamplerConfig::default();
    PithGenParams {
        struct_size: core::mem::size_of::<PithGenParams>() as u32,
        max_tokens: 128,
        temperature: s.temperature,
        top_k: s.top_k as i32,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n as i32,
        seed: 42,
        stop: core::ptr::null(),
        n_stop: 0,
        on_text: None,
        user_data: core::ptr::null_mut(),
    }
}

/// `(PITH_ABI_VERSION_MAJOR << 16) | PITH_ABI_VERSION_MINOR` of this library.
#[no_mangle]
pub extern "C" fn pith_abi_version() -> u32 {
    PITH_ABI_VERSION
}

/// A static English description of a status code.
#[no_mangle]
pub extern "C" fn pith_status_string(status: PithStatus) -> *const c_char {
    let s: &'static CStr = match status {
        PithStatus::PITH_OK => c"ok",
        PithStatus::PITH_ERR_INVALID_ARGUMENT => c"invalid argument",
        PithStatus::PITH_ERR_INVALID_UTF8 => c"invalid UTF-8",
        PithStatus::PITH_ERR_WRONG_HANDLE => c"wrong handle type",
        PithStatus::PITH_ERR_ABI_MISMATCH => c"ABI version mismatch",
        PithStatus::PITH_ERR_IO => c"I/O error",
        PithStatus::PITH_ERR_BAD_MODEL => c"bad model",
        PithStatus::PITH_ERR_BUFFER_TOO_SMALL => c"buffer too small",
        PithStatus::PITH_ERR_BUSY => c"session busy",
        PithStatus::PITH_ERR_CONTEXT_FULL => c"context full",
        PithStatus::PITH_ERR_CANCELLED => c"cancelled",
        PithStatus::PITH_ERR_BAD_STATE => c"bad session state",
        PithStatus::PITH_ERR_PANIC => c"internal error",
        PithStatus::PITH_ERR_OTHER => c"error",
    };
    s.as_ptr()
}

/// The message of the last failed call on `handle` (a `PithModel *` or `PithSession *`;
/// NULL for calls without a handle, such as a failed load) made by the calling thread, or ""
/// when there was none. Valid until the next failing call on that handle on this thread, or
/// until the handle is freed.
///
/// # Safety
/// `handle` is NULL or a handle pith returned.
#[no_mangle]
pub unsafe extern "C" fn pith_last_error(handle: *const c_void) -> *const c_char {
    let key = handle as usize;
    let r = catch_unwind(|| LAST_ERROR.with(|m| m.borrow().get(&key).map(|c| c.as_ptr()).unwrap_or(c"".as_ptr())));
    r.unwrap_or(c"".as_ptr())
}

/// Fills `params` (of `struct_size` bytes, set by the caller) with the defaults.
/// Prefer the header's `pith_model_params_default()`, which also sets the ABI version.
///
/// # Safety
/// `params` is NULL or points to `params->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn pith_model_params_init(params: *mut PithModelParams) -> PithStatus {
    guard(0, || {
        if params.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "params is NULL");
        }
        // SAFETY: caller's contract.
        unsafe {
            write_sized(params, model_params_default(), core::mem::size_of::<PithModelParams>(), "PithModelParams")
        }
    })
}

/// Fills `params` with the defaults (n_ctx 2048, the model's threads).
///
/// # Safety
/// `params` is NULL or points to `params->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn pith_session_params_init(params: *mut PithSessionParams) -> PithStatus {
    guard(0, || {
        if params.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "params is NULL");
        }
        // SAFETY: caller's contract.
        unsafe {
            write_sized(
                params,
                session_params_default(),
                core::mem::size_of::<PithSessionParams>(),
                "PithSessionParams",
            )
        }
    })
}

/// Fills `params` with the defaults (128 tokens, temperature 0.8, top-k 40, top-p 0.95,
/// min-p 0.05, no repetition penalty, seed 42, no stop strings, no callback).
///
/// # Safety
/// `params` is NULL or points to `params->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn pith_gen_params_init(params: *mut PithGenParams) -> PithStatus {
    guard(0, || {
        if params.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "params is NULL");
        }
        // SAFETY: caller's contract.
        unsafe { write_sized(params, gen_params_default(), core::mem::size_of::<PithGenParams>(), "PithGenParams") }
    })
}

fn load_common(
    params: *const PithModelParams,
    out: *mut *mut PithModel,
    load: impl FnOnce(LoadOptions, &mut dyn FnMut(f32) -> bool) -> R<LoadedModel>,
) -> PithStatus {
    guard(0, || {
        if out.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "out (PithModel **) is NULL");
        }
        // SAFETY: out is non-null and writable by the caller's contract.
        unsafe { out.write(core::ptr::null_mut()) };
        if params.is_null() {
            return fail(
                PithStatus::PITH_ERR_INVALID_ARGUMENT,
                "params is NULL: pass pith_model_params_default(), which carries the ABI version you built against",
            );
        }
        // SAFETY: caller's contract (params->struct_size readable bytes).
        let p = unsafe {
            read_sized(params, model_params_default(), core::mem::size_of::<PithModelParams>(), "PithModelParams")
        }?;
        let major = p.abi_version >> 16;
        if major != PITH_ABI_VERSION_MAJOR {
            return fail(
                PithStatus::PITH_ERR_ABI_MISMATCH,
                format!(
                    "the caller was built against pith ABI {}.{}, this library is {}.{}: rebuild against this pith.h",
                    major,
                    p.abi_version & 0xffff,
                    PITH_ABI_VERSION_MAJOR,
                    PITH_ABI_VERSION_MINOR
                ),
            );
        }
        let threads = usize::try_from(p.n_threads)
            .map_err(|_| Failure(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_threads must be 0 or more".into()))?;
        let (cb, ud) = (p.progress, p.progress_user_data);
        let mut progress = |f: f32| cb.is_none_or(|cb| cb(f, ud));
        let m = load(LoadOptions { threads, ..Default::default() }, &mut progress)?;
        let h = Box::new(PithModel { magic: AtomicU64::new(MODEL_MAGIC), model: Arc::new(m) });
        // SAFETY: out is non-null and writable (checked above).
        unsafe { out.write(Box::into_raw(h)) };
        Ok(())
    })
}

/// Loads (memory-maps) a model file. On success `*out` is the model; on failure NULL, and
/// `pith_last_error(NULL)` says why.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `params` is NULL or initialised by
/// `pith_model_params_default()`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pith_model_load(
    path: *const c_char,
    params: *const PithModelParams,
    out: *mut *mut PithModel,
) -> PithStatus {
    load_common(params, out, |opts, progress| {
        // SAFETY: caller's contract.
        let path = unsafe { str_arg(path, "path") }?;
        Ok(LoadedModel::open(path, opts, progress)?)
    })
}

/// Loads a model from `len` bytes at `data` (copied: the buffer may be freed after the call).
///
/// # Safety
/// `data` is NULL or `len` readable bytes; `params` and `out` as for `pith_model_load`.
#[no_mangle]
pub unsafe extern "C" fn pith_model_load_from_buffer(
    data: *const c_void,
    len: usize,
    params: *const PithModelParams,
    out: *mut *mut PithModel,
) -> PithStatus {
    load_common(params, out, |opts, progress| {
        if data.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "data is NULL");
        }
        // SAFETY: `len` readable bytes at `data` by the caller's contract.
        let bytes = unsafe { core::slice::from_raw_parts(data as *const u8, len) };
        Ok(LoadedModel::from_bytes(bytes, opts, progress)?)
    })
}

/// Frees a model (NULL is a no-op). Sessions made from it stay valid: they share it.
///
/// # Safety
/// `model` is NULL or a model handle not yet freed, not in use by another call.
#[no_mangle]
pub unsafe extern "C" fn pith_model_free(model: *mut PithModel) -> PithStatus {
    if model.is_null() {
        return PithStatus::PITH_OK;
    }
    let key = model as usize;
    guard(key, || {
        // SAFETY: caller's contract.
        let m = unsafe { model_ref(model) }?;
        m.magic.store(FREED, Ordering::SeqCst);
        // SAFETY: it is a live PithModel made by Box::into_raw in pith_model_load*.
        drop(unsafe { Box::from_raw(model) });
        forget_errors(key);
        Ok(())
    })
}

/// Changes the default worker threads of sessions created from now on (0 = one per performance core).
///
/// # Safety
/// `model` is NULL or a model handle.
#[no_mangle]
pub unsafe extern "C" fn pith_model_set_threads(model: *mut PithModel, n_threads: i32) -> PithStatus {
    guard(model as usize, || {
        // SAFETY: caller's contract.
        let m = unsafe { model_ref(model) }?;
        let n = usize::try_from(n_threads)
            .map_err(|_| Failure(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_threads must be 0 or more".into()))?;
        m.model.set_threads(n);
        Ok(())
    })
}

/// Facts about the model, written up to `info->struct_size` (set it to sizeof first).
///
/// # Safety
/// `model` is NULL or a model handle; `info` is NULL or `info->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn pith_model_info(model: *const PithModel, info: *mut PithModelInfo) -> PithStatus {
    guard(model as usize, || {
        // SAFETY: caller's contract.
        let m = unsafe { model_ref(model) }?;
        if info.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "info is NULL");
        }
        let c = m.model.config();
        let t = m.model.tokenizer();
        let v = PithModelInfo {
            struct_size: core::mem::size_of::<PithModelInfo>() as u32,
            n_vocab: c.n_vocab as u32,
            n_ctx_train: c.n_ctx_train.min(u32::MAX as usize) as u32,
            n_layer: c.n_layer as u32,
            n_embd: c.n_embd as u32,
            bos_token: t.bos().map_or(-1, |b| b as i32),
            eos_token: t.eos().map_or(-1, |b| b as i32),
        };
        // SAFETY: caller's contract.
        unsafe { write_sized(info, v, core::mem::size_of::<PithModelInfo>(), "PithModelInfo") }
    })
}

/// Text to token ids. `add_bos`: prepend BOS when the model asks for it; `parse_special`:
/// special-token text (`<|im_start|>`) becomes those tokens. Writes up to `cap` ids to `out`
/// and their count to `*n_out`; when `cap` is too small (`out` may then be NULL), returns
/// PITH_ERR_BUFFER_TOO_SMALL with the count needed in `*n_out`.
///
/// # Safety
/// `model` NULL or a model handle; `text` NULL or NUL-terminated; `out` NULL or `cap`
/// writable ids; `n_out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pith_tokenize(
    model: *const PithModel,
    text: *const c_char,
    add_bos: bool,
    parse_special: bool,
    out: *mut u32,
    cap: usize,
    n_out: *mut usize,
) -> PithStatus {
    guard(model as usize, || {
        // SAFETY: caller's contract.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: caller's contract.
        let text = unsafe { str_arg(text, "text") }?;
        if n_out.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_out is NULL");
        }
        let ids = m.model.tokenize(text, add_bos, parse_special)?;
        // SAFETY: n_out is non-null and writable.
        unsafe { n_out.write(ids.len()) };
        if ids.len() > cap || (out.is_null() && !ids.is_empty()) {
            return fail(
                PithStatus::PITH_ERR_BUFFER_TOO_SMALL,
                format!("{} token ids do not fit in a buffer of {cap}", ids.len()),
            );
        }
        if !ids.is_empty() {
            // SAFETY: out holds cap >= ids.len() writable u32s.
            unsafe { core::ptr::copy_nonoverlapping(ids.as_ptr(), out, ids.len()) };
        }
        Ok(())
    })
}

/// Token ids to text (UTF-8, NUL-terminated; bytes that are not valid UTF-8 become U+FFFD).
/// `special`: include the text of control tokens. Writes the length without the NUL to
/// `*n_out`; a `cap` below length + 1 gives PITH_ERR_BUFFER_TOO_SMALL with the length in
/// `*n_out` (so the buffer needs `*n_out + 1` bytes).
///
/// # Safety
/// `model` NULL or a model handle; `ids` NULL or `n_ids` readable ids; `out` NULL or `cap`
/// writable bytes; `n_out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pith_detokenize(
    model: *const PithModel,
    ids: *const u32,
    n_ids: usize,
    special: bool,
    out: *mut c_char,
    cap: usize,
    n_out: *mut usize,
) -> PithStatus {
    guard(model as usize, || {
        // SAFETY: caller's contract.
        let m = unsafe { model_ref(model) }?;
        if n_out.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_out is NULL");
        }
        if ids.is_null() && n_ids > 0 {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "ids is NULL");
        }
        let ids: &[u32] = if n_ids == 0 {
            &[]
        } else {
            // SAFETY: n_ids readable u32s by the caller's contract.
            unsafe { core::slice::from_raw_parts(ids, n_ids) }
        };
        let s = m.model.detokenize(ids, special)?;
        // SAFETY: n_out is non-null and writable.
        unsafe { n_out.write(s.len()) };
        if out.is_null() || cap < s.len() + 1 {
            return fail(
                PithStatus::PITH_ERR_BUFFER_TOO_SMALL,
                format!("{} bytes of text and a NUL do not fit in a buffer of {cap}", s.len()),
            );
        }
        // SAFETY: out holds cap >= len + 1 writable bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(s.as_ptr(), out as *mut u8, s.len());
            out.add(s.len()).write(0);
        }
        Ok(())
    })
}

/// A new session (conversation) on `model`. `params` may be NULL (defaults).
///
/// # Safety
/// `model` NULL or a model handle; `params` NULL or initialised by
/// `pith_session_params_default()`; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pith_session_new(
    model: *const PithModel,
    params: *const PithSessionParams,
    out: *mut *mut PithSession,
) -> PithStatus {
    guard(model as usize, || {
        if out.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "out (PithSession **) is NULL");
        }
        // SAFETY: out is non-null and writable.
        unsafe { out.write(core::ptr::null_mut()) };
        // SAFETY: caller's contract.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: caller's contract.
        let p = unsafe {
            read_sized(params, session_params_default(), core::mem::size_of::<PithSessionParams>(), "PithSessionParams")
        }?;
        if p.n_ctx == 0 {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_ctx must be at least 1");
        }
        let threads = match p.n_threads {
            -1 => None,
            n => Some(usize::try_from(n).map_err(|_| {
                Failure(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_threads must be -1 (the model's), 0 or more".into())
            })?),
        };
        let s = Session::new(m.model.clone(), p.n_ctx as usize, threads)?;
        let h = Box::new(PithSession {
            magic: AtomicU64::new(SESSION_MAGIC),
            cancel: s.cancel_token(),
            session: Mutex::new(s),
        });
        // SAFETY: out is non-null and writable.
        unsafe { out.write(Box::into_raw(h)) };
        Ok(())
    })
}

/// Frees a session (NULL is a no-op). Fails with PITH_ERR_BUSY while another thread uses it.
///
/// # Safety
/// `session` is NULL or a session handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn pith_session_free(session: *mut PithSession) -> PithStatus {
    if session.is_null() {
        return PithStatus::PITH_OK;
    }
    let key = session as usize;
    guard(key, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        if let Err(TryLockError::WouldBlock) = s.session.try_lock() {
            return fail(PithStatus::PITH_ERR_BUSY, "the session is in use by another thread");
        }
        s.magic.store(FREED, Ordering::SeqCst);
        // SAFETY: a live PithSession made by Box::into_raw in pith_session_new.
        drop(unsafe { Box::from_raw(session) });
        forget_errors(key);
        Ok(())
    })
}

/// Replaces the session's thread team (0 = one per performance core).
///
/// # Safety
/// `session` is NULL or a session handle.
#[no_mangle]
pub unsafe extern "C" fn pith_session_set_threads(session: *mut PithSession, n_threads: i32) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        let n = usize::try_from(n_threads)
            .map_err(|_| Failure(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_threads must be 0 or more".into()))?;
        with_session(s, |s| Ok(s.set_threads(n)?))
    })
}

/// Forgets the conversation (KV cache and sampler history).
///
/// # Safety
/// `session` is NULL or a session handle.
#[no_mangle]
pub unsafe extern "C" fn pith_session_reset(session: *mut PithSession) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        with_session(s, |s| {
            s.reset();
            Ok(())
        })
    })
}

/// Stops the session's current generation within one token. Any thread may call it while
/// another is generating; a generation that starts later is not affected.
///
/// # Safety
/// `session` is NULL or a session handle that stays alive during the call.
#[no_mangle]
pub unsafe extern "C" fn pith_session_cancel(session: *const PithSession) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        s.cancel.cancel();
        Ok(())
    })
}

/// Converts a C generation request into options.
///
/// # Safety
/// `params` NULL or initialised by `pith_gen_params_default()`, its stop strings valid.
unsafe fn gen_options(params: *const PithGenParams) -> R<(GenerateOptions, PithTextFn, *mut c_void)> {
    // SAFETY: caller's contract.
    let p =
        unsafe { read_sized(params, gen_params_default(), core::mem::size_of::<PithGenParams>(), "PithGenParams") }?;
    let bad = |m: &str| Failure(PithStatus::PITH_ERR_INVALID_ARGUMENT, m.into());
    let mut stop = Vec::new();
    if p.n_stop > 0 {
        if p.stop.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "stop is NULL but n_stop > 0");
        }
        for i in 0..p.n_stop {
            // SAFETY: n_stop readable pointers by the caller's contract.
            let sp = unsafe { *p.stop.add(i) };
            // SAFETY: each a NUL-terminated string (or NULL, refused).
            stop.push(unsafe { str_arg(sp, &format!("stop[{i}]")) }?.to_string());
        }
    }
    let sampling = SamplerConfig {
        temperature: p.temperature,
        top_k: usize::try_from(p.top_k).map_err(|_| bad("top_k must be 0 or more"))?,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: usize::try_from(p.repeat_last_n).map_err(|_| bad("repeat_last_n must be 0 or more"))?,
        seed: p.seed,
    };
    sampling.validate().map_err(|e| Failure(PithStatus::PITH_ERR_INVALID_ARGUMENT, e))?;
    let max_tokens = usize::try_from(p.max_tokens).unwrap_or(usize::MAX);
    Ok((GenerateOptions { max_tokens, stop, sampling }, p.on_text, p.user_data))
}

fn stop_reason(s: Stop) -> PithStopReason {
    match s {
        Stop::Length => PithStopReason::PITH_STOP_LENGTH,
        Stop::EndOfGeneration => PithStopReason::PITH_STOP_EOG,
        Stop::ContextFull => PithStopReason::PITH_STOP_CONTEXT_FULL,
        Stop::Interrupted => PithStopReason::PITH_STOP_CALLBACK,
        Stop::Cancelled => PithStopReason::PITH_STOP_CANCELLED,
        Stop::StopString => PithStopReason::PITH_STOP_STRING,
    }
}

/// Runs one generation call with the C callback and writes the result.
///
/// # Safety
/// `result` NULL or `result->struct_size` writable bytes.
unsafe fn run_generation(
    s: &PithSession,
    params: *const PithGenParams,
    result: *mut PithGenResult,
    go: impl FnOnce(
        &mut Session,
        &GenerateOptions,
        &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> pith::Result<pith::engine::Generation>,
) -> R<()> {
    // SAFETY: caller's contract.
    let (opts, cb, ud) = unsafe { gen_options(params) }?;
    with_session(s, |sess| {
        let mut buf: Vec<u8> = Vec::new();
        let mut on_text = |piece: &str| {
            let Some(cb) = cb else { return ControlFlow::Continue(()) };
            buf.clear();
            buf.extend_from_slice(piece.as_bytes());
            buf.push(0);
            if cb(buf.as_ptr() as *const c_char, piece.len(), ud) != 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let g = go(sess, &opts, &mut on_text)?;
        let r = PithGenResult {
            struct_size: core::mem::size_of::<PithGenResult>() as u32,
            stop_reason: stop_reason(g.stop),
            n_prompt_tokens: g.prompt_tokens as u32,
            n_tokens: g.tokens.len() as u32,
            prefill_ms: g.prefill.as_secs_f64() * 1e3,
            decode_ms: g.decode.as_secs_f64() * 1e3,
        };
        // SAFETY: caller's contract.
        unsafe { write_sized(result, r, core::mem::size_of::<PithGenResult>(), "PithGenResult") }
    })
}

/// Continues the session's text with `prompt` (UTF-8; special-token text is parsed; BOS is
/// added when the session is empty and the model wants it) and generates, streaming whole
/// UTF-8 pieces to `params->on_text`. An empty prompt continues where the last call stopped.
/// `params` may be NULL (defaults); `result` may be NULL. A cancelled generation returns
/// PITH_OK with `stop_reason` PITH_STOP_CANCELLED.
///
/// # Safety
/// `session` NULL or a session handle; `prompt` NULL or NUL-terminated; `params` NULL or
/// initialised by `pith_gen_params_default()`; `result` NULL or initialised by
/// `pith_gen_result_init()`.
#[no_mangle]
pub unsafe extern "C" fn pith_session_generate(
    session: *mut PithSession,
    prompt: *const c_char,
    params: *const PithGenParams,
    result: *mut PithGenResult,
) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        // SAFETY: caller's contract.
        let prompt = unsafe { str_arg(prompt, "prompt") }?;
        // SAFETY: caller's contract.
        unsafe { run_generation(s, params, result, |sess, o, cb| sess.generate(prompt, o, cb)) }
    })
}

/// Generates the assistant's reply to a conversation of `n_messages` messages, rendered with
/// the model's chat template. Pass the whole conversation each turn: the part already in the
/// KV cache is reused.
///
/// # Safety
/// As `pith_session_generate`; `messages` NULL or `n_messages` readable messages whose
/// strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pith_session_chat(
    session: *mut PithSession,
    messages: *const PithMessage,
    n_messages: usize,
    params: *const PithGenParams,
    result: *mut PithGenResult,
) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        if messages.is_null() || n_messages == 0 {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "messages is NULL or empty");
        }
        // SAFETY: n_messages readable messages.
        let ms = unsafe { core::slice::from_raw_parts(messages, n_messages) };
        let mut conv = Vec::with_capacity(ms.len());
        for (i, m) in ms.iter().enumerate() {
            // SAFETY: NUL-terminated strings by the caller's contract.
            let role = unsafe { str_arg(m.role, &format!("messages[{i}].role")) }?;
            // SAFETY: as above.
            let content = unsafe { str_arg(m.content, &format!("messages[{i}].content")) }?;
            conv.push(Message::new(role, content));
        }
        // SAFETY: caller's contract.
        unsafe { run_generation(s, params, result, |sess, o, cb| sess.chat(&conv, o, cb)) }
    })
}

/// Saves the session (KV cache, tokens, sampler position) into `buf`. Writes the size to
/// `*n_out`; a `cap` too small (`buf` may be NULL) gives PITH_ERR_BUFFER_TOO_SMALL with the
/// size needed in `*n_out`.
///
/// # Safety
/// `session` NULL or a session handle; `buf` NULL or `cap` writable bytes; `n_out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn pith_session_save_state(
    session: *mut PithSession,
    buf: *mut u8,
    cap: usize,
    n_out: *mut usize,
) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        if n_out.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_out is NULL");
        }
        let bytes = with_session(s, |s| Ok(s.save_state()))?;
        // SAFETY: n_out non-null, writable.
        unsafe { n_out.write(bytes.len()) };
        if buf.is_null() || cap < bytes.len() {
            return fail(
                PithStatus::PITH_ERR_BUFFER_TOO_SMALL,
                format!("the state is {} bytes, the buffer {cap}", bytes.len()),
            );
        }
        // SAFETY: buf holds cap >= len writable bytes.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
        Ok(())
    })
}

/// Restores a state saved by `pith_session_save_state` (from a session of the same model);
/// the session then continues exactly as the saved one would. On error it is unchanged.
///
/// # Safety
/// `session` NULL or a session handle; `buf` NULL or `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn pith_session_load_state(session: *mut PithSession, buf: *const u8, len: usize) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        if buf.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "buf is NULL");
        }
        // SAFETY: len readable bytes.
        let bytes = unsafe { core::slice::from_raw_parts(buf, len) };
        with_session(s, |s| Ok(s.restore_state(bytes)?))
    })
}

/// `pith_session_save_state` into a file (replaced if it exists).
///
/// # Safety
/// `session` NULL or a session handle; `path` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pith_session_save_file(session: *mut PithSession, path: *const c_char) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        // SAFETY: caller's contract.
        let path = unsafe { str_arg(path, "path") }?;
        let bytes = with_session(s, |s| Ok(s.save_state()))?;
        std::fs::write(path, bytes).map_err(|e| Failure(PithStatus::PITH_ERR_IO, format!("{path}: {e}")))
    })
}

/// `pith_session_load_state` from a file.
///
/// # Safety
/// `session` NULL or a session handle; `path` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pith_session_load_file(session: *mut PithSession, path: *const c_char) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        // SAFETY: caller's contract.
        let path = unsafe { str_arg(path, "path") }?;
        let bytes = std::fs::read(path).map_err(|e| Failure(PithStatus::PITH_ERR_IO, format!("{path}: {e}")))?;
        with_session(s, |s| Ok(s.restore_state(&bytes)?))
    })
}

/// Tokens in the session's KV cache (0 on a bad handle).
///
/// # Safety
/// `session` NULL or a session handle.
#[no_mangle]
pub unsafe extern "C" fn pith_session_n_past(session: *mut PithSession, n_out: *mut usize) -> PithStatus {
    guard(session as usize, || {
        // SAFETY: caller's contract.
        let s = unsafe { session_ref(session) }?;
        if n_out.is_null() {
            return fail(PithStatus::PITH_ERR_INVALID_ARGUMENT, "n_out is NULL");
        }
        let n = with_session(s, |s| Ok(s.n_past()))?;
        // SAFETY: non-null, writable.
        unsafe { put(n_out, n) };
        Ok(())
    })
}
