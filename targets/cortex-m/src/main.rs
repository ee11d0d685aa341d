//! pith on a Cortex-M4F: the GGUF model is in flash (`include_bytes!`), read in place by the
//! same `pith` core the host runs (GGUF reader, forward pass, kernels), and the text it
//! generates is printed over semihosting, with what it cost: instructions per token (SysTick
//! under `qemu -icount shift=0`, calibrated below), heap and stack high-water marks.
//!
//! Build-time settings (environment variables; run.sh sets them): PITH_FIRMWARE_MODEL (path of
//! the GGUF, required), PITH_FIRMWARE_PROMPT, PITH_FIRMWARE_N (tokens to generate),
//! PITH_FIRMWARE_TEMP_MILLI (temperature of the second, sampled run in thousandths; default
//! 800 as `pith run`), PITH_FIRMWARE_SEED (default 42, as `pith run`). The first run is greedy.
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
/// Temperature of the sampled run, in thousandths (the greedy run always comes first).
const TEMP_MILLI: u64 = setting(option_env!("PITH_FIRMWARE_TEMP_MILLI"), 800);
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

/// The DSP decode kernels against the scalar oracle, on this core: random rows of each type
/// with a DSP kernel and random tokens; the integer sums are exact, so the two differ only by
/// the f32 rounding of the per-block products, bounded by 1e-5 of `Σ|w·x|`.
fn dsp_self_test() {
    use pith_kernels::{dequantize_row, gemv_q8_on, quantize_row, GgmlType, KernelPath, VecQ8};
    if !KernelPath::ArmDsp.is_available() {
        fail(&"this build has no DSP kernels (not thumbv7em with the DSP extension?)");
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let (rows, k) = (8, 256);
    let mut checked = 0;
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        if kernel_path_of(ty) != KernelPath::ArmDsp {
            fail(&"a DSP kernel is missing from the kernel table");
        }
        let rb = ty.row_bytes(k).unwrap_or(0);
        let w_f: Vec<f32> = (0..rows * k).map(|i| rnd() * if i % 29 == 0 { 4.0 } else { 1.0 }).collect();
        let mut w = alloc::vec![0u8; rows * rb];
        for (src, dst) in w_f.chunks_exact(k).zip(w.chunks_exact_mut(rb)) {
            quantize_row(ty, src, dst);
        }
        let mut deq = alloc::vec![0f32; rows * k];
        for (src, dst) in w.chunks_exact(rb).zip(deq.chunks_exact_mut(k)) {
            dequantize_row(ty, src, dst);
        }
        for _ in 0..4 {
            let x: Vec<f32> = (0..k).map(|_| rnd()).collect();
            let mut v = VecQ8::default();
            v.quantize_for(KernelPath::ArmDsp, &x);
            let (mut got, mut want) = (alloc::vec![0f32; rows], alloc::vec![0f32; rows]);
            gemv_q8_on(KernelPath::ArmDsp, ty, &w, rows, &v, &mut got);
            gemv_q8_on(KernelPath::Scalar, ty, &w, rows, &v, &mut want);
            for r in 0..rows {
                let mag: f32 = deq[r * k..(r + 1) * k].iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                if (got[r] - want[r]).abs() > 1e-5 * mag {
                    hprintln!("pith-firmware: {} row {}: DSP {} vs scalar {}", ty, r, got[r], want[r]);
                    fail(&"a DSP kernel disagrees with the scalar oracle");
                }
                checked += 1;
            }
        }
    }
    hprintln!("pith-firmware: DSP kernels (Q8_0, Q4_0) agree with the scalar oracle on {} rows", checked);
}

fn kernel_path_of(ty: pith_kernels::GgmlType) -> pith_kernels::KernelPath {
    pith_kernels::gemv_kernel(ty, pith_kernels::KernelPath::ArmDsp).map_or(pith_kernels::KernelPath::Scalar, |(p, _)| p)
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

    dsp_self_test();

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
    let heap_loaded = HEAP.used.load(Ordering::Relaxed);
    hprintln!(
        "pith-firmware: model {} bytes in flash, {} layers, d {}, vocab {}; prompt {:?} = {} tokens; {} tokens greedy, then sampled at temperature {} (seed {})",
        bytes.len(),
        model.config.n_layer,
        model.config.n_embd,
        tok.n_vocab(),
        PROMPT,
        prompt.len(),
        N_PREDICT,
        TEMP_MILLI as f32 / 1000.0,
        SEED
    );
    hprintln!("pith-firmware: prompt ids {:?}", prompt.as_slice());

    let mut heap_steady = 0;
    for (label, temp) in [("greedy", 0.0), ("sampled", TEMP_MILLI as f32 / 1000.0)] {
        state.cache.reset();
        // `pith run`'s chain and defaults (llama.cpp's: top-k 40, top-p 0.95, min-p 0.05).
        let mut sampler = pith::sampling::Sampler::new(pith::sampling::SamplerConfig {
            temperature: temp,
            seed: SEED,
            ..Default::default()
        });
        let t_prompt = ticks();
        let mut logits = model.forward(&mut state, &pool, &prompt, Logits::Last).unwrap_or_else(|e| fail(&e));
        let prefill_ticks = ticks() - t_prompt;
        // Sized once: no allocation while generating beyond what the model's state holds.
        let mut pending: Vec<u8> = Vec::with_capacity(256);
        let mut ids: Vec<u32> = Vec::with_capacity(N_PREDICT);
        let (mut decode_ticks, mut decoded) = (0u64, 0usize);
        let mut heap_after_first = None;
        hprint!("{}<<<", label);
        for _ in 0..N_PREDICT {
            let next = sampler.sample(logits);
            if Some(next) == tok.eos {
                break;
            }
            ids.push(next);
            tok.piece(next, &mut pending);
            print_utf8(&mut pending);
            if ids.len() == N_PREDICT {
                break;
            }
            let t = ticks();
            logits = model.forward(&mut state, &pool, &[next], Logits::Last).unwrap_or_else(|e| fail(&e));
            decode_ticks += ticks() - t;
            decoded += 1;
            heap_after_first.get_or_insert(HEAP.used.load(Ordering::Relaxed));
        }
        if !pending.is_empty() {
            hprint!("\u{FFFD}");
        }
        hprintln!(">>>");
        let heap_end = HEAP.used.load(Ordering::Relaxed);
        let ins = |t: u64| t as f64 * per_tick;
        hprintln!("pith-firmware: {} ids {:?}", label, ids.as_slice());
        hprintln!(
            "pith-firmware: {}: prefill {} tokens: {:.0} instructions ({:.0} per token); decode: {:.0} instructions per token (mean of {})",
            label,
            prompt.len(),
            ins(prefill_ticks),
            ins(prefill_ticks) / prompt.len() as f64,
            ins(decode_ticks) / decoded.max(1) as f64,
            decoded
        );
        // Heap in use: the same after every token (the model's state is allocated up front;
        // the sampler's candidate buffers, sized by top-k, on its first token).
        let first = heap_after_first.unwrap_or(heap_end);
        if heap_end != first {
            hprintln!("pith-firmware: heap {} after the first token, {} at the end", first, heap_end);
            fail(&"heap use grew with the number of generated tokens");
        }
        heap_steady = heap_steady.max(heap_end);
    }
    hprintln!("pith-firmware: clock: {:.2} instructions per SysTick tick (calibration loop)", per_tick);
    hprintln!(
        "pith-firmware: heap: {} bytes after load, {} while generating, high-water {} of {}",
        heap_loaded,
        heap_steady,
        HEAP.peak.load(Ordering::Relaxed),
        HEAP_BYTES
    );
    hprintln!("pith-firmware: stack high-water {} bytes", stack_high_water());
    debug::exit(debug::EXIT_SUCCESS);
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("pith-firmware: panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}
