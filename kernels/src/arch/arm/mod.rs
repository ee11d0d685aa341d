//! AArch64 kernels: NEON, NEON + dotprod (`sdot`), NEON + i8mm (`usmmla`).
//!
//! * `dot_neon`: `vec_dot` / `vec_dot_f32` per block type, selected in `simd`.
//! * `q8_neon`: the integer gemm (prefill, all three paths) and the hand-written decode
//!   kernels of Q4_0, Q4_1 and Q8_0.
//! * `gemv_grid`: the decode kernels of every other type, from its `Grid` view.

pub(crate) mod dot_neon;
mod gemv_grid;
pub(crate) mod q8_neon;

use crate::gemm_q8::VecQ8;
use crate::{GgmlType, KernelPath};
pub(crate) use gemv_grid::{gemv_grid_neon, gemv_grid_sdot, gemv_iq4_neon, gemv_iq4_sdot};

macro_rules! q8_gemv {
    ($($name:ident: $ty:ident on $path:ident;)*) => {$(
        pub(crate) fn $name(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
            q8_neon::gemv_q8(KernelPath::$path, GgmlType::$ty, w, rb, x, out)
        }
    )*};
}

q8_gemv! {
    gemv_q4_0_neon: Q4_0 on Neon;
    gemv_q4_1_neon: Q4_1 on Neon;
    gemv_q8_0_neon: Q8_0 on Neon;
    gemv_q4_0_sdot: Q4_0 on NeonDotprod;
    gemv_q4_1_sdot: Q4_1 on NeonDotprod;
    gemv_q8_0_sdot: Q8_0 on NeonDotprod;
}
