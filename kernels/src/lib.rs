//! pith-kernels: GGUF-compatible block formats with a clear scalar reference for each.
//!
//! One module per tensor type (`q4_0`, `q4_1`, …, `q2_k`, …, `f16`, `bf16`, `f32`), each
//! holding the `#[repr(C)]` block struct exactly as ggml lays it out, the reference
//! quantizer (bit-identical to ggml's `quantize_row_*_ref`), the dequantizer
//! (bit-identical to ggml's `dequantize_row_*`), the integer dot product against the
//! 8-bit activation type of [`GgmlType::vec_dot_type`] (`vec_dot_q4_0_q8_0`, …), and a
//! dot product against f32 activations (`vec_dot_q4_0_f32`, …).
//!
//! IQ4_NL and IQ4_XS (`iq4_nl`, `iq4_xs`) index ggml's fixed non-linear 16-value grid; their
//! `quantize_row_<t>_weighted` is ggml's own importance search (bit-identical to
//! `quantize_iq4_*` with `quant_weights`), and they have no block grid.
//!
//! Each weight block type (Q4_0 … Q8_0, Q2_K … Q6_K) also has an importance-aware
//! quantizer, `quantize_row_<t>_weighted`, minimizing `Σ importance[i] (x[i] - x̂[i])²`
//! over the block's stored parameters and codes (the search is in `weighted.rs`), and a
//! "block grid" view for error-compensating quantization: `block_grid_<t>` (the affine grid
//! `scale[i] * q + offset[i]` each element's stored parameters allow), `block_codes_<t>` and
//! `set_block_codes_<t>` (read / write the codes alone).
//!
//! [`dequantize_row`], [`quantize_row`], [`quantize_row_weighted`], [`vec_dot`] and
//! [`vec_dot_f32`] (plus [`dot_f32`]), and per block [`block_grid`], [`block_codes`] and
//! [`set_block_codes`], are the runtime-facing dispatch: they take raw little-endian GGUF
//! bytes, check lengths (a mismatch is a caller bug and panics with a message), and view
//! the bytes as blocks with `bytemuck` — zero-copy when aligned, block-by-block copies
//! otherwise (see `blocks.rs`).
//!
//! The dispatch functions (and [`gemm_f32`]) run SIMD kernels chosen at run time (AVX2,
//! AVX-512, NEON, NEON dotprod; see [`KernelPath`], [`kernel_path`], [`set_kernel_path`]),
//! tested against the scalar code of the per-type modules, which stays the oracle.
//!
//! `no_std` + `alloc`; float math that `core` lacks (`sqrtf`, `roundf`, `fabsf`) comes
//! from `libm`.
#![no_std]
#![cfg_attr(feature = "nightly-fma", feature(core_intrinsics))]
#![cfg_attr(feature = "nightly-fma", allow(internal_features))]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(target_endian = "big")]
compile_error!("pith-kernels reads GGUF's little-endian blocks in place: big-endian targets are not supported");

#[allow(unsafe_code)] // SIMD intrinsics; every block carries a SAFETY comment
mod arch;
#[allow(unsafe_code)] // SIMD intrinsics; every block carries a SAFETY comment
pub mod attn;
mod blocks;
pub mod decode_order;
mod dispatch;
pub(crate) mod grid;
mod kquant;
pub mod table;
#[cfg(test)]
mod test_util;
pub mod types;
mod weighted;

pub mod bf16;
pub mod f16;
pub mod f32;
#[allow(unsafe_code)] // SIMD intrinsics; every block carries a SAFETY comment
pub mod gemm;
#[allow(unsafe_code)] // SIMD intrinsics; every block carries a SAFETY comment
pub mod gemm_q8;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
#[allow(unsafe_code)] // SIMD intrinsics; every block carries a SAFETY comment
mod simd;
#[allow(unsafe_code)] // SIMD intrinsics; every block carries a SAFETY comment
pub mod vmath;

pub use attn::{attend, attend_f16, attend_group, KvRows};
pub use dispatch::{
    block_codes, block_grid, dequantize_row, dot_f32, has_block_grid, quantize_row, quantize_row_weighted,
    set_block_codes, vec_dot, vec_dot_f32, vec_dot_f32_on, vec_dot_on,
};
pub use gemm::{gemm_f32, gemm_f32_nn, gemm_f32_nn_acc, Elem, Mat};
pub use gemm_q8::{
    gemm_q8, gemm_q8_on, gemm_q8_supported, gemv_q8, gemv_q8_many, gemv_q8_many_on, gemv_q8_on, gemv_q8_supported,
    ActsQ8, ActsQ8Part, PackedTile, VecQ8, GEMM_Q8_ROWS,
};
pub use simd::{
    available_kernel_paths, best_kernel_path, has_simd_kernel, kernel_path, reset_kernel_path, set_kernel_path,
    KernelPath,
};
pub use table::{gemv_kernel, kernel_table, type_kernels, GemvFn, GemvManyFn, TypeKernels};
pub use types::{GgmlType, ALL_TYPES, QK_K};
pub use vmath::{gelu_mul, silu_mul, softmax_scaled};
