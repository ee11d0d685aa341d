//! x86-64 kernels: AVX2 (+ FMA, F16C) and AVX-512 F/BW/VL + VNNI.
//!
//! * `dot_avx2`, `dot_avx512`: `vec_dot` / `vec_dot_f32` per block type (the `Precision::F32`
//!   decode path and ggml-compatible integer dots), selected in `simd`.
//! * `q8_avx2`, `q8_avx512`: the integer gemm (prefill) and its activation quantizer.
//! * `gemv_avx512` (Q4_0, Q4_1, Q8_0, hand-written), `gemv_avx512_k` (Q5_0, Q5_1, Q2_K … Q6_K,
//!   hand-written), `q8_avx2`'s gemv (Q4_0, Q4_1, Q8_0), and
//!   `gemv_grid` (every other type, from its `Grid` view): the decode kernels of the table.

pub(crate) mod dot_avx2;
pub(crate) mod dot_avx512;
pub(crate) mod gemv_avx512;
mod gemv_avx512_k;
mod gemv_grid;
pub(crate) mod q8_avx2;
pub(crate) mod q8_avx512;

use crate::gemm_q8::VecQ8;
use crate::GgmlType;
pub(crate) use gemv_avx512_k::{
    gemv_iq4nl_avx512, gemv_iq4xs_avx512, gemv_q23k_avx512, gemv_q45k_avx512, gemv_q5_avx512, gemv_q6k_avx512,
};
pub(crate) use gemv_grid::{gemv_grid_avx2, gemv_grid_avx512, gemv_iq4_avx2, gemv_q5_avx2};

pub(crate) fn gemv_q4_0_avx512(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    gemv_avx512::gemv_q4_avx512::<false>(w, rb, x, out)
}

pub(crate) fn gemv_q4_1_avx512(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    gemv_avx512::gemv_q4_avx512::<true>(w, rb, x, out)
}

pub(crate) fn gemv_many_q4_0_avx512(w: &[u8], rb: usize, xs: &[&VecQ8], outs: &mut [&mut [f32]]) {
    gemv_avx512::gemv_many_q4_avx512::<false>(w, rb, xs, outs)
}

pub(crate) fn gemv_many_q4_1_avx512(w: &[u8], rb: usize, xs: &[&VecQ8], outs: &mut [&mut [f32]]) {
    gemv_avx512::gemv_many_q4_avx512::<true>(w, rb, xs, outs)
}

pub(crate) fn gemv_many_q8_0_avx512(w: &[u8], rb: usize, xs: &[&VecQ8], outs: &mut [&mut [f32]]) {
    gemv_avx512::gemv_many_q8_0_avx512(w, rb, xs, outs)
}

pub(crate) fn gemv_q8_0_avx512(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    gemv_avx512::gemv_q8_0_avx512(w, rb, x, out)
}

pub(crate) fn gemv_q4_0_avx2(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    q8_avx2::gemv_q8_avx2(GgmlType::Q4_0, w, rb, x, out)
}

pub(crate) fn gemv_q4_1_avx2(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    q8_avx2::gemv_q8_avx2(GgmlType::Q4_1, w, rb, x, out)
}

pub(crate) fn gemv_q8_0_avx2(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    q8_avx2::gemv_q8_avx2(GgmlType::Q8_0, w, rb, x, out)
}
