//! JNI entry points of `dev.pith.Native` (targets/java/java/dev/pith/Native.java), written by
//! hand over the C ABI (`pith-ffi`): every call goes through the same checked functions C
//! callers use (handle tags, busy sessions, panics caught), and a failure becomes a
//! `dev.pith.PithException` carrying the status name and `pith_last_error`'s message.
//!
//! Handles are Java `long`s holding the C pointers; 0 is NULL (a closed object), which the C
//! ABI refuses with an error, never a crash.
#![deny(unsafe_op_in_unsafe_fn)]

use jni::objects::{JByteArray, JClass, JIntArray, JObject, JObjectArray, JString, JValue};
use jni::sys::{jboolean, jfloat, jint, jintArray, jlong, jstring, JNI_TRUE};
use jni::JNIEnv;
use pith_ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};

const EXC: &str = "dev/pith/PithException";

fn status_name(st: PithStatus) -> String {
    format!("{st:?}")
}

/// Throws `dev.pith.PithException("[STATUS] message")` for a failed call on `handle`.
fn throw_status(env: &mut JNIEnv, st: PithStatus, handle: *const c_void) {
    // SAFETY: handle is NULL or a pith handle (the C ABI checks its tag).
    let msg = unsafe { CStr::from_ptr(pith_last_error(handle)) }.to_string_lossy().into_owned();
    let _ = env.throw_new(EXC, format!("[{}] {msg}", status_name(st)));
}

fn throw(env: &mut JNIEnv, msg: &str) {
    let _ = env.throw_new(EXC, msg);
}

/// A Java string as a C string (None after throwing: not valid, or holds a NUL).
fn c_string(env: &mut JNIEnv, s: &JString, what: &str) -> Option<CString> {
    if s.is_null() {
        throw(env, &format!("{what} is null"));
        return None;
    }
    let r: String = match env.get_string(s) {
        Ok(v) => v.into(),
        Err(_) => {
            throw(env, &format!("{what}: cannot read the string"));
            return None;
        }
    };
    match CString::new(r) {
        Ok(c) => Some(c),
        Err(_) => {
            throw(env, &format!("{what} contains a NUL character"));
            None
        }
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_abiVersion(_env: JNIEnv, _c: JClass) -> jint {
    pith_abi_version() as jint
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_modelLoad(
    mut env: JNIEnv,
    _c: JClass,
    path: JString,
    threads: jint,
) -> jlong {
    let Some(path) = c_string(&mut env, &path, "path") else { return 0 };
    let mut p = std::mem::MaybeUninit::<PithModelParams>::zeroed();
    // SAFETY: p is a zeroed PithModelParams; struct_size set before init reads it.
    let mut p = unsafe {
        (*p.as_mut_ptr()).struct_size = std::mem::size_of::<PithModelParams>() as u32;
        pith_model_params_init(p.as_mut_ptr());
        p.assume_init()
    };
    p.abi_version = PITH_ABI_VERSION;
    p.n_threads = threads;
    let mut out: *mut PithModel = std::ptr::null_mut();
    // SAFETY: valid C string, params and out-pointer.
    let st = unsafe { pith_model_load(path.as_ptr(), &p, &mut out) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, std::ptr::null());
        return 0;
    }
    out as jlong
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_modelFree(mut env: JNIEnv, _c: JClass, model: jlong) {
    // SAFETY: the Java object passes its handle once (close() zeroes it first); tags checked.
    let st = unsafe { pith_model_free(model as *mut PithModel) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, model as *const c_void);
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_tokenize(
    mut env: JNIEnv,
    _c: JClass,
    model: jlong,
    text: JString,
    add_bos: jboolean,
) -> jintArray {
    let Some(text) = c_string(&mut env, &text, "text") else { return std::ptr::null_mut() };
    let m = model as *const PithModel;
    let mut n = 0usize;
    // SAFETY: size query: NULL buffer of capacity 0.
    let st = unsafe { pith_tokenize(m, text.as_ptr(), add_bos == JNI_TRUE, true, std::ptr::null_mut(), 0, &mut n) };
    if st != PithStatus::PITH_OK && st != PithStatus::PITH_ERR_BUFFER_TOO_SMALL {
        throw_status(&mut env, st, m.cast());
        return std::ptr::null_mut();
    }
    let mut ids = vec![0u32; n];
    // SAFETY: ids holds n u32s.
    let st = unsafe { pith_tokenize(m, text.as_ptr(), add_bos == JNI_TRUE, true, ids.as_mut_ptr(), n, &mut n) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, m.cast());
        return std::ptr::null_mut();
    }
    let ids: Vec<jint> = ids.iter().map(|&i| i as jint).collect();
    match env.new_int_array(ids.len() as jint).and_then(|a| env.set_int_array_region(&a, 0, &ids).map(|()| a)) {
        Ok(a) => a.into_raw(),
        Err(_) => std::ptr::null_mut(),
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_detokenize(
    mut env: JNIEnv,
    _c: JClass,
    model: jlong,
    ids: JIntArray,
) -> jstring {
    if ids.is_null() {
        throw(&mut env, "ids is null");
        return std::ptr::null_mut();
    }
    let len = env.get_array_length(&ids).unwrap_or(0).max(0) as usize;
    let mut buf = vec![0 as jint; len];
    if env.get_int_array_region(&ids, 0, &mut buf).is_err() {
        return std::ptr::null_mut();
    }
    let ids: Vec<u32> = buf.iter().map(|&i| i as u32).collect();
    let m = model as *const PithModel;
    let mut n = 0usize;
    // SAFETY: size query.
    let st = unsafe { pith_detokenize(m, ids.as_ptr(), ids.len(), false, std::ptr::null_mut(), 0, &mut n) };
    if st != PithStatus::PITH_OK && st != PithStatus::PITH_ERR_BUFFER_TOO_SMALL {
        throw_status(&mut env, st, m.cast());
        return std::ptr::null_mut();
    }
    let mut text = vec![0u8; n + 1];
    // SAFETY: text holds n + 1 bytes.
    let st =
        unsafe { pith_detokenize(m, ids.as_ptr(), ids.len(), false, text.as_mut_ptr() as *mut c_char, n + 1, &mut n) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, m.cast());
        return std::ptr::null_mut();
    }
    let s = String::from_utf8_lossy(&text[..n]).into_owned();
    env.new_string(s).map(|s| s.into_raw()).unwrap_or(std::ptr::null_mut())
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_sessionNew(
    mut env: JNIEnv,
    _c: JClass,
    model: jlong,
    n_ctx: jint,
    threads: jint,
) -> jlong {
    if n_ctx <= 0 {
        throw(&mut env, "nCtx must be at least 1");
        return 0;
    }
    let p = PithSessionParams {
        struct_size: std::mem::size_of::<PithSessionParams>() as u32,
        n_ctx: n_ctx as u32,
        n_threads: threads,
    };
    let mut out: *mut PithSession = std::ptr::null_mut();
    // SAFETY: params and out-pointer valid; the model handle's tag is checked.
    let st = unsafe { pith_session_new(model as *const PithModel, &p, &mut out) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, model as *const c_void);
        return 0;
    }
    out as jlong
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_sessionFree(mut env: JNIEnv, _c: JClass, s: jlong) {
    // SAFETY: tags checked by the C ABI.
    let st = unsafe { pith_session_free(s as *mut PithSession) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, s as *const c_void);
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_sessionCancel(mut env: JNIEnv, _c: JClass, s: jlong) {
    // SAFETY: tags checked by the C ABI.
    let st = unsafe { pith_session_cancel(s as *const PithSession) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, s as *const c_void);
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_sessionReset(mut env: JNIEnv, _c: JClass, s: jlong) {
    // SAFETY: tags checked by the C ABI.
    let st = unsafe { pith_session_reset(s as *mut PithSession) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, s as *const c_void);
    }
}

/// What the C text callback needs to reach Java.
struct CallbackCtx<'a, 'l> {
    env: &'a mut JNIEnv<'l>,
    cb: &'a JObject<'l>,
    /// A Java exception is pending (thrown by the callback): stop and let it propagate.
    failed: bool,
}

/// Calls `cb.onText(piece)`; true = go on.
fn call_java(ctx: &mut CallbackCtx, piece: &str) -> bool {
    let s = match ctx.env.new_string(piece) {
        Ok(s) => s,
        Err(_) => {
            ctx.failed = true;
            return false;
        }
    };
    let r = ctx.env.call_method(ctx.cb, "onText", "(Ljava/lang/String;)Z", &[JValue::Object(&s)]);
    let _ = ctx.env.delete_local_ref(s);
    match r.and_then(|v| v.z()) {
        Ok(go_on) => go_on,
        Err(_) => {
            ctx.failed = true;
            false
        }
    }
}

extern "C" fn on_text(text: *const c_char, len: usize, user: *mut c_void) -> i32 {
    // SAFETY: user is the CallbackCtx of the generate call below, alive during it; text is
    // `len` bytes of valid UTF-8 (the C ABI's contract).
    let (ctx, piece) = unsafe {
        (
            &mut *(user as *mut CallbackCtx),
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(text as *const u8, len)),
        )
    };
    i32::from(!call_java(ctx, piece))
}

/// Returns `int[] { stopReason, nPromptTokens, nTokens }`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_pith_Native_sessionGenerate<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    s: jlong,
    prompt: JString<'l>,
    max_tokens: jint,
    temperature: jfloat,
    top_k: jint,
    top_p: jfloat,
    min_p: jfloat,
    repeat_penalty: jfloat,
    seed: jlong,
    stop: JObjectArray<'l>,
    cb: JObject<'l>,
) -> jintArray {
    let Some(prompt) = c_string(&mut env, &prompt, "prompt") else { return std::ptr::null_mut() };
    let mut stops: Vec<CString> = Vec::new();
    if !stop.is_null() {
        let n = env.get_array_length(&stop).unwrap_or(0);
        for i in 0..n {
            let Ok(o) = env.get_object_array_element(&stop, i) else { return std::ptr::null_mut() };
            let Some(c) = c_string(&mut env, &JString::from(o), "stop string") else { return std::ptr::null_mut() };
            stops.push(c);
        }
    }
    let stop_ptrs: Vec<*const c_char> = stops.iter().map(|c| c.as_ptr()).collect();
    let mut ctx = CallbackCtx { env: &mut env, cb: &cb, failed: false };
    let params = PithGenParams {
        struct_size: std::mem::size_of::<PithGenParams>() as u32,
        max_tokens,
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        repeat_last_n: 64,
        seed: seed as u64,
        stop: if stop_ptrs.is_empty() { std::ptr::null() } else { stop_ptrs.as_ptr() },
        n_stop: stop_ptrs.len(),
        on_text: if cb.is_null() { None } else { Some(on_text) },
        user_data: &mut ctx as *mut CallbackCtx as *mut c_void,
    };
    let mut r = PithGenResult {
        struct_size: std::mem::size_of::<PithGenResult>() as u32,
        stop_reason: PithStopReason::PITH_STOP_LENGTH,
        n_prompt_tokens: 0,
        n_tokens: 0,
        prefill_ms: 0.0,
        decode_ms: 0.0,
    };
    // SAFETY: every pointer in params lives until the call returns; tags checked.
    let st = unsafe { pith_session_generate(s as *mut PithSession, prompt.as_ptr(), &params, &mut r) };
    let failed = ctx.failed;
    if failed {
        // The callback's exception is pending; it propagates to the Java caller.
        return std::ptr::null_mut();
    }
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, s as *const c_void);
        return std::ptr::null_mut();
    }
    let out = [r.stop_reason as jint, r.n_prompt_tokens as jint, r.n_tokens as jint];
    match env.new_int_array(3).and_then(|a| env.set_int_array_region(&a, 0, &out).map(|()| a)) {
        Ok(a) => a.into_raw(),
        Err(_) => std::ptr::null_mut(),
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_sessionSave<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    s: jlong,
) -> JByteArray<'l> {
    let sp = s as *mut PithSession;
    let mut n = 0usize;
    // SAFETY: size query.
    let st = unsafe { pith_session_save_state(sp, std::ptr::null_mut(), 0, &mut n) };
    if st != PithStatus::PITH_ERR_BUFFER_TOO_SMALL && st != PithStatus::PITH_OK {
        throw_status(&mut env, st, sp.cast());
        return JByteArray::default();
    }
    let mut buf = vec![0u8; n];
    // SAFETY: buf holds n bytes.
    let st = unsafe { pith_session_save_state(sp, buf.as_mut_ptr(), n, &mut n) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, sp.cast());
        return JByteArray::default();
    }
    env.byte_array_from_slice(&buf[..n]).unwrap_or_default()
}

#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_sessionLoad(mut env: JNIEnv, _c: JClass, s: jlong, state: JByteArray) {
    if state.is_null() {
        throw(&mut env, "state is null");
        return;
    }
    let Ok(bytes) = env.convert_byte_array(&state) else { return };
    let sp = s as *mut PithSession;
    // SAFETY: bytes is a live buffer of bytes.len() bytes.
    let st = unsafe { pith_session_load_state(sp, bytes.as_ptr(), bytes.len()) };
    if st != PithStatus::PITH_OK {
        throw_status(&mut env, st, sp.cast());
    }
}

/// Measures the per-piece cost of the streaming path's Java side: `n` calls of
/// `cb.onText(piece)` made the way generation makes them (a new Java string each, a method
/// call, the local reference freed). Returns nanoseconds in all.
#[no_mangle]
pub extern "system" fn Java_dev_pith_Native_benchCallbacks<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    cb: JObject<'l>,
    n: jint,
) -> jlong {
    let start = std::time::Instant::now();
    let mut ctx = CallbackCtx { env: &mut env, cb: &cb, failed: false };
    let piece = c" token";
    for _ in 0..n.max(0) {
        if on_text(piece.as_ptr(), 6, &mut ctx as *mut CallbackCtx as *mut c_void) != 0 {
            break;
        }
    }
    start.elapsed().as_nanos() as jlong
}
