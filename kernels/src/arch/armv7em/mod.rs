//! 32-bit Arm M-profile kernels: the Armv7E-M DSP extension (Cortex-M4/M7/M33/M55), whose
//! `smlad` multiplies two pairs of signed 16-bit halves and adds both products to an
//! accumulator in one instruction. No SIMD registers: the "vectors" are 32-bit words of four
//! 8-bit codes, widened in pairs by `sxtb16`/`uxtb16`.
//!
//! * `dsp`: the decode kernels (gemv) of Q8_0 and Q4_0 against a [`VecQ8`](crate::VecQ8)
//!   token, tested against the scalar oracle by the Cortex-M firmware's self-test (bare
//!   metal has no test harness; `targets/cortex-m`).

mod dsp;

pub(crate) use dsp::{gemv_q4_0_dsp, gemv_q8_0_dsp};
