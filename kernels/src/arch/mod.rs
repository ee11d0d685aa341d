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

/// [`f32::fma`](crate::f32::fma): the fused multiply-add instruction where the CPU has one.
#[inline]
pub(crate) fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        use core::arch::aarch64::*;
        // SAFETY: NEON is enabled for this target (cfg above).
        unsafe { vget_lane_f32::<0>(vfma_f32(vdup_n_f32(c), vdup_n_f32(a), vdup_n_f32(b))) }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if x86_fma::get() {
            // SAFETY: the CPU has FMA (checked just above).
            return unsafe { fma_x86(a, b, c) };
        }
        libm::fmaf(a, b, c)
    }
    #[cfg(not(any(all(target_arch = "aarch64", target_feature = "neon"), target_arch = "x86_64")))]
    {
        // Elsewhere: LLVM's fused multiply-add where the build may use the unstable intrinsic
        // (feature `nightly-fma`: the Cortex-M firmware, whose M4F has `vfma.f32`), else
        // `libm`'s exact software form (~100 instructions).
        #[cfg(feature = "nightly-fma")]
        #[allow(unused_unsafe)]
        // SAFETY: `fmaf32` has no preconditions (it is `unsafe` only in older compilers).
        return unsafe { core::intrinsics::fmaf32(a, b, c) };
        #[cfg(not(feature = "nightly-fma"))]
        libm::fmaf(a, b, c)
    }
}

#[cfg(target_arch = "x86_64")]
cpufeatures::new!(x86_fma, "fma");

/// # Safety
/// The CPU must support FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "fma")]
unsafe fn fma_x86(a: f32, b: f32, c: f32) -> f32 {
    use core::arch::x86_64::*;
    _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)))
}
