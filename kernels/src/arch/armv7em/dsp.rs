//! Q8_0 and Q4_0 decode on the DSP extension: per 4 weights one word load, two `sxtb16` (or an
//! `and` and two `uxtb16` for nibbles), and two `smlad` against the token's codes, widened the
//! same way. The integer sum of a block is exact; each block then adds `d_w · d_x · Σ` in f32
//! (Q4_0's `-8` offset as `-8 · d_w · d_x · Σx`, from the token's per-block sums).

use crate::gemm_q8::VecQ8;
use crate::q4_0::BlockQ4_0;
use crate::q8_0::BlockQ8_0;
use core::arch::asm;

const QK: usize = 32;
const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 2 + QK);
const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 2 + QK / 2);

/// `acc + lo(a)·lo(b) + hi(a)·hi(b)` over signed 16-bit halves.
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: a register-only instruction of the DSP extension, which this build targets.
    unsafe {
        asm!("smlad {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// One-operand byte-pair extensions: `$insn` widens bytes 0 and 2 (or, with `ror #8`, 1 and 3)
/// of a word into its two 16-bit halves.
macro_rules! extend16 {
    ($($(#[$doc:meta])* $name:ident: $insn:literal;)*) => {$(
        $(#[$doc])*
        #[inline(always)]
        fn $name(x: u32) -> u32 {
            let r: u32;
            // SAFETY: a register-only instruction of the DSP extension, which this build targets.
            unsafe { asm!($insn, r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags)) };
            r
        }
    )*};
}

extend16! {
    /// Bytes 0 and 2 sign-extended to the two halves.
    sxtb16: "sxtb16 {r}, {x}";
    /// Bytes 1 and 3 sign-extended to the two halves.
    sxtb16_ror8: "sxtb16 {r}, {x}, ror #8";
    /// Bytes 0 and 2 zero-extended to the two halves.
    uxtb16: "uxtb16 {r}, {x}";
    /// Bytes 1 and 3 zero-extended to the two halves.
    uxtb16_ror8: "uxtb16 {r}, {x}, ror #8";
}

/// Little-endian word `i` of `b` (4 codes; Cortex-M4/M7 load unaligned words in one `ldr`).
#[inline(always)]
fn word<const N: usize>(b: &[u8; N], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// `s[at..at + N]` as an array (the callers' chunks make the range exact).
#[inline(always)]
fn arr<const N: usize>(s: &[u8], at: usize) -> &[u8; N] {
    match s[at..at + N].try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("a range of N bytes"),
    }
}

/// `Σ w·x` over 4 signed weight codes in `w` and 4 signed activation codes in `x`.
#[inline(always)]
fn dot4_ss(w: u32, x: u32, acc: i32) -> i32 {
    smlad(sxtb16_ror8(w), sxtb16_ror8(x), smlad(sxtb16(w), sxtb16(x), acc))
}

/// `Σ w·x` over 4 unsigned weight codes (< 128) in `w` and 4 signed activation codes in `x`.
#[inline(always)]
fn dot4_us(w: u32, x: u32, acc: i32) -> i32 {
    smlad(uxtb16_ror8(w), sxtb16_ror8(x), smlad(uxtb16(w), sxtb16(x), acc))
}

/// The token's codes as bytes (for word loads) and its per-block scales.
fn codes(x: &VecQ8) -> (&[u8], &[f32]) {
    (bytemuck::cast_slice(&x.acts.q), &x.acts.d)
}

/// Q8_0 rows against one token: `out[r] = Σ_b d_w · d_x · Σ_i w_i x_i`.
pub(crate) fn gemv_q8_0_dsp(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let (q, d) = codes(x);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let mut acc = 0.0f32;
        for (b, blk) in row.chunks_exact(2 + QK).enumerate() {
            let dw = crate::f16::f16_to_f32(half::f16::from_le_bytes([blk[0], blk[1]]));
            let (wq, xq) = (arr::<QK>(blk, 2), arr::<QK>(q, b * QK));
            let mut s = 0i32;
            for i in 0..QK / 4 {
                s = dot4_ss(word(wq, i), word(xq, i), s);
            }
            acc += dw * d[b] * s as f32;
        }
        *o = acc;
    }
}

/// Q4_0 rows against one token: nibble `n` is weight `n − 8`; byte `j` holds weights `j`
/// (low nibble) and `j + 16` (high), so the low nibbles of a word meet codes `4i..4i + 4` and
/// the high ones codes `16 + 4i..`.
pub(crate) fn gemv_q4_0_dsp(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let (q, d) = codes(x);
    let ds = &x.acts.ds32;
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        let mut acc = 0.0f32;
        for (b, blk) in row.chunks_exact(2 + QK / 2).enumerate() {
            let dw = crate::f16::f16_to_f32(half::f16::from_le_bytes([blk[0], blk[1]]));
            let (wq, xq) = (arr::<{ QK / 2 }>(blk, 2), arr::<QK>(q, b * QK));
            let mut s = 0i32;
            for i in 0..QK / 8 {
                let v = word(wq, i);
                s = dot4_us(v & 0x0F0F_0F0F, word(xq, i), s);
                s = dot4_us((v >> 4) & 0x0F0F_0F0F, word(xq, 4 + i), s);
            }
            // Σ (n − 8)·x·d_x = d_x·Σ n·x − 8·(d_x·Σ x), the latter the token's ds32.
            acc += dw * (d[b] * s as f32 - 8.0 * ds[b]);
        }
        *o = acc;
    }
}
