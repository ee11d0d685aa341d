//! pith on a Cortex-M4F: the GGUF model is in flash (`include_bytes!`), read in place by the
//! same `pith` core the host runs (GGUF reader, forward pass, kernels), and the text it
//! generates is printed over semihosting, with what it cost: instructions per token (SysTick
//! under `qemu -icount shift=0`, calibrated below), heap and stack high-water marks.
//!
//! Build-time settings (environment variables; run.sh sets them): PITH_FIRMWARE_MODEL (path of
//! the GGUF, required), PITH_FIRMWARE_PROMPT, PITH_FIRMWARE_N (tokens to generate),
//! PITH_FIRMWARE_TEMP_MILLI (temperature in thousandths, 0 = greedy), PITH_FIRMWARE_SEED
//! (default 42, as `pith run`).
#![no_std]
#![no_main]

extern crate alloc;

mod spm;

use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprint, hprintln};
use pith::{Logits, Model, Pool, State};

/// The model, aligned as the GGUF's own tensor alignment (32) so that tensors read in place.
#[repr(C, align(32))]
struct Aligned<T: ?Sized>(T);
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("PITH_FIRMWARE_MODEL")));

const PROMPT: &str = match option_env!("PITH_FIRMWARE_PROMPT") {
    Some(p) => p,
    None => "Once upon a time",
};

/// A decimal build-time setting.
const fn setting(v: Option<&str>, default: u64) -> u64 {
    let Some(s) = v else { return default };
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0u64;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "a firmware setting is not a decimal number");
        n = n * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    n
}
const N_PREDICT: usize = setting(option_env!("PITH_FIRMWARE_N"), 32) as usize;
/// Temperature in thousandths (0 = greedy).
const TEMP_MILLI: u64 = setting(option_env!("PITH_FIRMWARE_TEMP_MILLI"), 0);
const SEED: u64 = setting(option_env!("PITH_FIRMWARE_SEED"), 42);

// ---- heap: embedded-alloc's first-fit heap, counted -------------------------------------------

const HEAP_BYTES: usize = 2 << 20;
static mut HEAP_MEM: [core::mem::MaybeUninit<u8>; HEAP_BYTES] = [core::mem::MaybeUninit::uninit(); HEAP_BYTES];

struct Counted {
    heap: embedded_alloc::LlffHeap,
    used: AtomicUsize,
    peak: AtomicUsize,
}

// SAFETY: every call goes to the wrapped allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let p = unsafe { self.heap.alloc(l) };
        if !p.is_null() {
            let now = self.used.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.used.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { self.heap.dealloc(p, l) }
    }
}

#[global_allocator]
static HEAP: Counted =
    Counted { heap: embedded_alloc::LlffHeap::empty(), used: AtomicUsize::new(0), peak: AtomicUsize::new(0) };

// ---- time: SysTick at the core clock, its 24-bit wraps counted ----------------------------------

static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// SysTick ticks since start-up.
fn ticks() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let v = cortex_m::peripheral::SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == w {
            return ((w as u64) << 24) + (0x00FF_FFFF - v) as u64;
        }
    }
}

// ---- stack: painted at start, the untouched paint measured at the end ------------------------

const PAINT: u32 = 0xA5A5_A5A5;
extern "C" {
    static mut __sheap: u32;
    static _stack_start: u32;
}

/// Fills the free stack below the current frame (down to the end of static data) with PAINT.
fn paint_stack() {
    let bottom = core::ptr::addr_of_mut!(__sheap);
    let sp = cortex_m::register::msp::read() as usize - 256;
    let mut p = bottom;
    while (p as usize) < sp {
        // SAFETY: [__sheap, sp - 256) is RAM no one uses yet: static data ends at __sheap
        // (the heap is a static array) and the stack has not grown below this frame.
        unsafe {
            p.write_volatile(PAINT);
            p = p.add(1);
        }
    }
}

/// Bytes of stack ever used: from the top down to the lowest word whose paint was overwritten.
fn stack_high_water() -> usize {
    let mut p = core::ptr::addr_of_mut!(__sheap) as *const u32;
    // SAFETY: reading RAM between the end of static data and the stack top, all ours.
    unsafe {
        let top = core::ptr::addr_of!(_stack_start) as usize;
        while (p as usize) < top && p.read_volatile() == PAINT {
            p = p.add(1);
        }
        top - p as usize
    }
}

/// Prints the longest valid UTF-8 prefix of `pending`, keeping an unfinished character.
fn print_utf8(pending: &mut Vec<u8>) {
    loop {
        match core::str::from_utf8(pending) {
            Ok(s) => {
                hprint!("{}", s);
                pending.clear();
                return;
            }
            Err(e) => {
                let good = e.valid_up_to();
                // SAFETY-free: the prefix was just validated.
                if let Ok(s) = core::str::from_utf8(&pending[..good]) {
                    hprint!("{}", s);
                }
                match e.error_len() {
                    Some(bad) => {
                        hprint!("\u{FFFD}");
                        pending.drain(..good + bad);
                    }
                    None => {
                        pending.drain(..good);
                        return;
                    }
                }
            }
        }
    }
}

fn fail(msg: &dyn core::fmt::Display) -> ! {
    hprintln!("pith-firmware: error: {}", msg);
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}

#[entry]
fn main() -> ! {
    paint_stack();
    // SAFETY: the heap gets a static array no one else touches, once, before any allocation.
    unsafe { HEAP.heap.init(core::ptr::addr_of_mut!(HEAP_MEM) as usize, HEAP_BYTES) }
    let mut cp = cortex_m::Peripherals::take().unwrap_or_else(|| fail(&"core peripherals taken twice"));
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(0x00FF_FFFF);
    cp.SYST.clear_current();
    cp.SYST.enable_interrupt();
    cp.SYST.enable_counter();
    // A cleared counter reads 0 until its first tick loads the reload value.
    while cortex_m::peripheral::SYST::get_current() == 0 {}

    // Instructions per SysTick tick: a loop of a known instruction count (subs + bne).
    let loops = 500_000u32;
    let t0 = ticks();
    // SAFETY: a register-only countdown loop.
    unsafe {
        core::arch::asm!("1:", "subs {0}, {0}, #1", "bne 1b", inout(reg) loops => _, options(nomem, nostack));
    }
    let t1 = ticks();
    let per_tick = (2 * loops as u64) as f64 / (t1 - t0).max(1) as f64;

    let bytes: &'static [u8] = &MODEL.0;
    let g = pith::gguf::Gguf::parse(bytes).unwrap_or_else(|e| fail(&e));
    let tok = spm::Spm::from_gguf(&g).unwrap_or_else(|e| fail(&e));
    let model = Model::from_gguf(&g).unwrap_or_else(|e| fail(&e));
    let prompt = tok.encode(PROMPT);
    if prompt.is_empty() {
        fail(&"the prompt is empty");
    }
    let n_ctx = model.config.n_ctx_train.min(prompt.len() + N_PREDICT);
    if prompt.len() + N_PREDICT > n_ctx {
        fail(&"prompt + tokens to generate exceed the model's context");
    }
    let mut state = State::new(&model, n_ctx, prompt.len()).unwrap_or_else(|e| fail(&e));
    let pool = Pool::single();
    // `pith run`'s defaults (llama.cpp's chain: top-k 40, top-p 0.95, min-p 0.05).
    let mut sampler = pith::sampling::Sampler::new(pith::sampling::SamplerConfig {
        temperature: TEMP_MILLI as f32 / 1000.0,
        seed: SEED,
        ..Default::default()
    });
    let heap_loaded = HEAP.used.load(Ordering::Relaxed);
    hprintln!(
        "pith-firmware: model {} bytes in flash, {} layers, d {}, vocab {}; prompt {:?} = {} tokens; {} tokens, {}",
        bytes.len(),
        model.config.n_layer,
        model.config.n_embd,
        tok.n_vocab(),
        PROMPT,
        prompt.len(),
        N_PREDICT,
        if TEMP_MILLI == 0 { "greedy" } else { "sampled" }
    );
    hprintln!("pith-firmware: prompt ids {:?}", prompt.as_slice());

    let t_prompt = ticks();
    let mut logits = model.forward(&mut state, &pool, &prompt, Logits::Last).unwrap_or_else(|e| fail(&e));
    let prefill_ticks = ticks() - t_prompt;
    // Sized once: no allocation while generating beyond what the model's state holds.
    let mut pending: Vec<u8> = Vec::with_capacity(256);
    let mut ids: Vec<u32> = Vec::with_capacity(N_PREDICT);
    let mut decode_ticks = 0u64;
    let mut heap_after_first = 0;
    hprint!("<<<");
    for i in 0..N_PREDICT {
        let next = sampler.sample(logits);
        ids.push(next);
        tok.piece(next, &mut pending);
        print_utf8(&mut pending);
        if i + 1 == N_PREDICT {
            break;
        }
        let t = ticks();
        logits = model.forward(&mut state, &pool, &[next], Logits::Last).unwrap_or_else(|e| fail(&e));
        decode_ticks += ticks() - t;
        if i == 0 {
            heap_after_first = HEAP.used.load(Ordering::Relaxed);
        }
    }
    if !pending.is_empty() {
        hprint!("\u{FFFD}");
    }
    hprintln!(">>>");
    let heap_end = HEAP.used.load(Ordering::Relaxed);
    let ins = |t: u64| t as f64 * per_tick;
    let decoded = N_PREDICT.saturating_sub(1).max(1) as f64;
    hprintln!("pith-firmware: ids {:?}", ids.as_slice());
    hprintln!("pith-firmware: clock: {:.2} instructions per SysTick tick (calibration loop)", per_tick);
    hprintln!(
        "pith-firmware: prefill {} tokens: {:.0} instructions ({:.0} per token)",
        prompt.len(),
        ins(prefill_ticks),
        ins(prefill_ticks) / prompt.len() as f64
    );
    hprintln!(
        "pith-firmware: decode: {:.0} instructions per token (mean of {})",
        ins(decode_ticks) / decoded,
        N_PREDICT.saturating_sub(1)
    );
    hprintln!(
        "pith-firmware: heap: {} bytes after load, {} after the first token, {} at the end, high-water {}",
        heap_loaded,
        heap_after_first,
        heap_end,
        HEAP.peak.load(Ordering::Relaxed)
    );
    hprintln!("pith-firmware: stack high-water {} bytes", stack_high_water());
    if N_PREDICT > 1 && heap_end != heap_after_first {
        fail(&"heap use grew with the number of generated tokens");
    }
    debug::exit(debug::EXIT_SUCCESS);
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("pith-firmware: panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}
