//! Per-architecture kernels: everything written with one instruction set's intrinsics lives
//! here, one folder per architecture (as ggml's `arch/x86`, `arch/arm`). Each kernel has a
//! scalar oracle outside this folder that it is tested against; which kernel runs is decided
//! by the [kernel table](crate::kernel_table) and [`KernelPath`](crate::KernelPath).

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(crate) mod arm;
#[cfg(all(target_arch = "arm", target_feature = "dsp"))]
pub(crate) mod armv7em;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
