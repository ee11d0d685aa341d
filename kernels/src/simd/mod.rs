//! Run-time selected SIMD kernels for the decode-path dot products, with the scalar code
//! of the per-type modules as the oracle.
//!
//! A [`KernelPath`] names one family of kernels. [`kernel_path`] is the path the
//! dispatch functions ([`vec_dot`](crate::vec_dot), [`vec_dot_f32`](crate::vec_dot_f32),
//! [`dot_f32`](crate::dot_f32), [`gemm_f32`](crate::gemm_f32)) use: the best one this CPU
//! supports (detected once), unless [`set_kernel_path`] forced another. A block type
//! without a kernel on the selected path uses the next path down (AVX-512 → AVX2,
//! NEON i8mm → NEON dotprod → NEON), and finally the scalar reference. The integer matrix
//! kernels ([`gemm_q8`](crate::gemm_q8), [`gemv_q8`](crate::gemv_q8)) dispatch on the same
//! paths, with their own kernels for each NEON path (`usmmla` on NEON i8mm).
//!
//! Detection needs no `std`:
//! * x86-64: CPUID through `cpufeatures` (which also checks that the OS saves the
//!   YMM/ZMM state), plus CPUID bits `cpufeatures` 0.2 does not know (F16C, AVX512-VNNI).
//! * AArch64: NEON is part of the base ISA of every `aarch64-*` target with a hardware
//!   float ABI (`cfg(target_feature = "neon")`). The dot-product extension (`sdot`) is
//!   detected on Linux/Android from `getauxval(AT_HWCAP)` (`HWCAP_ASIMDDP`, via `libc`;
//!   `cpufeatures` 0.2 only detects aes/sha2/sha3/sm4/dit on AArch64). Elsewhere (Apple,
//!   bare metal) it is taken from the compile-time `cfg(target_feature = "dotprod")`,
//!   which Apple targets enable by default. The 8-bit integer matrix multiply extension
//!   (`usmmla`/`smmla`, FEAT_I8MM) likewise: `getauxval(AT_HWCAP2)` (`HWCAP2_I8MM`) on
//!   Linux/Android, else `cfg(target_feature = "i8mm")`; the `neon-i8mm` path also
//!   requires dotprod, whose kernels it falls back to.
//! * 32-bit Arm with the DSP extension (Cortex-M4/M7, `thumbv7em`): [`KernelPath::ArmDsp`],
//!   from the compile-time `cfg(target_feature = "dsp")`.
//! * Other targets: only [`KernelPath::Scalar`]; the SIMD modules are not compiled.

use core::fmt;
use core::str::FromStr;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::q4_0::BlockQ4_0;
use crate::q4_1::BlockQ4_1;
use crate::q4_k::BlockQ4K;
use crate::q5_0::BlockQ5_0;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_1::BlockQ8_1;
use crate::GgmlType;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
use crate::arch::arm::dot_neon as neon;
#[cfg(target_arch = "x86_64")]
use crate::arch::x86::dot_avx2 as avx2;
#[cfg(target_arch = "x86_64")]
use crate::arch::x86::dot_avx512 as avx512;
#[cfg(test)]
mod tests;

/// A family of dot-product kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// The portable reference code of each type's module (auto-vectorized by LLVM for the
    /// build's baseline ISA, e.g. SSE2 on x86-64).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell and later, Zen).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later), on top
    /// of AVX2 + FMA + F16C. CPUs with AVX-512 but without VNNI (Skylake-SP) use `Avx2`.
    Avx512,
    /// AArch64 Advanced SIMD (NEON), integer dots with `smull`/`sadalp`.
    Neon,
    /// AArch64 NEON plus the dot-product extension (`sdot`, FEAT_DotProd: Cortex-A55/A76
    /// and later, Apple M1 and later).
    NeonDotprod,
    /// AArch64 NEON dotprod plus the 8-bit integer matrix multiply extension (`usmmla`,
    /// FEAT_I8MM: Armv8.6-A, e.g. Cortex-A510/A710/X2, Neoverse V1/N2, Apple M2 and later).
    /// Only the prefill gemm has `usmmla` kernels; everything else runs `NeonDotprod`'s.
    NeonI8mm,
    /// 32-bit Arm M-profile with the DSP extension (Armv7E-M: Cortex-M4/M7, and later M
    /// cores): `smlad` dual 16-bit multiply-accumulates. Decode kernels for Q8_0 and Q4_0;
    /// everything else is scalar.
    ArmDsp,
}

impl KernelPath {
    /// Every path, from the most portable to the most specialized.
    pub const ALL: [KernelPath; 7] = [
        KernelPath::Scalar,
        KernelPath::Avx2,
        KernelPath::Avx512,
        KernelPath::Neon,
        KernelPath::NeonDotprod,
        KernelPath::NeonI8mm,
        KernelPath::ArmDsp,
    ];

    /// The name used by [`Display`](fmt::Display), [`FromStr`] and the runtime's
    /// `PITH_KERNELS` variable: `scalar`, `avx2`, `avx512`, `neon`, `neon-dotprod`,
    /// `neon-i8mm`, `arm-dsp`.
    pub const fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
            KernelPath::Neon => "neon",
            KernelPath::NeonDotprod => "neon-dotprod",
            KernelPath::NeonI8mm => "neon-i8mm",
            KernelPath::ArmDsp => "arm-dsp",
        }
    }

    /// Parses a [`name`](Self::name) (ASCII case-insensitive; `_` for `-`, and `dotprod`
    /// and `i8mm`, are accepted too).
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.trim();
        let is = |n: &str| s.len() == n.len() && s.bytes().zip(n.bytes()).all(|(a, b)| a.to_ascii_lowercase() == b);
        if is("neon_dotprod") || is("dotprod") {
            return Some(KernelPath::NeonDotprod);
        }
        if is("neon_i8mm") || is("i8mm") {
            return Some(KernelPath::NeonI8mm);
        }
        if is("arm_dsp") || is("dsp") {
            return Some(KernelPath::ArmDsp);
        }
        KernelPath::ALL.into_iter().find(|p| is(p.name()))
    }

    /// Whether this CPU (and build) can run the path (detected once, then cached).
    pub fn is_available(self) -> bool {
        available_mask() & (1 << self.index()) != 0
    }

    /// Why [`set_kernel_path`] refuses the path on a CPU that lacks it.
    const fn missing(self) -> &'static str {
        match self {
            KernelPath::Scalar => "the scalar kernels are always available",
            KernelPath::Avx2 => "kernel path avx2: this CPU/build lacks x86-64 AVX2+FMA+F16C",
            KernelPath::Avx512 => "kernel path avx512: this CPU/build lacks x86-64 AVX-512 F/BW/VL/VNNI (or AVX2)",
            KernelPath::Neon => "kernel path neon: this CPU/build is not AArch64 with NEON",
            KernelPath::NeonDotprod => "kernel path neon-dotprod: this CPU/build lacks AArch64 NEON dotprod (sdot)",
            KernelPath::NeonI8mm => "kernel path neon-i8mm: this CPU/build lacks AArch64 NEON i8mm (usmmla) or dotprod",
            KernelPath::ArmDsp => {
                "kernel path arm-dsp: this build is not 32-bit Arm with the DSP extension (thumbv7em)"
            }
        }
    }

    fn from_index(i: u8) -> Self {
        KernelPath::ALL[i as usize]
    }

    fn index(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for KernelPath {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KernelPath::from_name(s)
            .ok_or("unknown kernel path: use scalar, avx2, avx512, neon, neon-dotprod, neon-i8mm or arm-dsp")
    }
}

/// Bit `i` set: `KernelPath::ALL[i]` is available; bit 7 set: detection done.
static AVAILABLE: AtomicU8 = AtomicU8::new(0);
/// 0: no override; otherwise 1 + the index of the forced path.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// The availability bits (CPUID traps to the hypervisor in a VM and costs microseconds:
/// it must not run per call).
#[inline]
fn available_mask() -> u8 {
    let m = AVAILABLE.load(Ordering::Relaxed);
    if m != 0 {
        return m;
    }
    let mut m = 0x80 | 1 << KernelPath::Scalar.index();
    if detect::avx2() {
        m |= 1 << KernelPath::Avx2.index();
        if detect::avx512() {
            m |= 1 << KernelPath::Avx512.index();
        }
    }
    if detect::neon() {
        m |= 1 << KernelPath::Neon.index();
        if detect::dotprod() {
            m |= 1 << KernelPath::NeonDotprod.index();
            if detect::i8mm() {
                m |= 1 << KernelPath::NeonI8mm.index();
            }
        }
    }
    if detect::arm_dsp() {
        m |= 1 << KernelPath::ArmDsp.index();
    }
    AVAILABLE.store(m, Ordering::Relaxed);
    m
}

/// The best path this CPU supports (the most specialized available one).
pub fn best_kernel_path() -> KernelPath {
    let m = available_mask();
    (0..KernelPath::ALL.len() as u8)
        .rev()
        .find(|&i| m & (1 << i) != 0)
        .map_or(KernelPath::Scalar, KernelPath::from_index)
}

/// The path the dispatch functions use: the one forced by [`set_kernel_path`], else
/// [`best_kernel_path`]. Its `Display` (`kernel_path().to_string()`) is the path's
/// [`name`](KernelPath::name).
#[inline]
pub fn kernel_path() -> KernelPath {
    match OVERRIDE.load(Ordering::Relaxed) {
        0 => best_kernel_path(),
        i => KernelPath::from_index(i - 1),
    }
}

/// Forces the path every dispatch function uses from now on (process-wide; e.g. from the
/// runtime's `PITH_KERNELS`). Refuses, leaving the current choice unchanged, a path this
/// CPU lacks.
pub fn set_kernel_path(path: KernelPath) -> Result<(), &'static str> {
    if !path.is_available() {
        return Err(path.missing());
    }
    OVERRIDE.store(path.index() + 1, Ordering::Relaxed);
    Ok(())
}

/// Drops a [`set_kernel_path`] override: back to [`best_kernel_path`].
pub fn reset_kernel_path() {
    OVERRIDE.store(0, Ordering::Relaxed);
}

/// The paths this CPU can run, from the most portable to the most specialized
/// (always starting with [`KernelPath::Scalar`]).
pub fn available_kernel_paths() -> impl Iterator<Item = KernelPath> {
    KernelPath::ALL.into_iter().filter(|p| p.is_available())
}

/// Panics unless `path` can run here (a caller bug: use [`KernelPath::is_available`]).
#[track_caller]
pub(crate) fn check_available(path: KernelPath) {
    assert!(path.is_available(), "{}", path.missing());
}

/// Whether `path` runs a SIMD kernel (its own or, see the module docs, the next path
/// down's) for `ty`: `(vec_dot_f32, vec_dot)`. Otherwise the scalar reference runs.
pub fn has_simd_kernel(path: KernelPath, ty: GgmlType) -> (bool, bool) {
    use GgmlType::*;
    let f = match ty {
        F32 => f32_f32(path).is_some(),
        F16 => f16_f32(path).is_some(),
        Q4_0 => q4_0_f32(path).is_some(),
        Q4_1 => q4_1_f32(path).is_some(),
        Q5_0 => q5_0_f32(path).is_some(),
        Q8_0 => q8_0_f32(path).is_some(),
        Q4_K => q4_k_f32(path).is_some(),
        Q6_K => q6_k_f32(path).is_some(),
        _ => false,
    };
    let i = match ty {
        F32 => f32_f32(path).is_some(),
        Q4_0 => q4_0_q8_0(path).is_some(),
        Q4_1 => q4_1_q8_1(path).is_some(),
        Q8_0 => q8_0_q8_0(path).is_some(),
        _ => false,
    };
    (f, i)
}

mod detect {
    #[cfg(target_arch = "x86_64")]
    cpufeatures::new!(cpuid_avx2_fma, "avx2", "fma");
    #[cfg(target_arch = "x86_64")]
    cpufeatures::new!(cpuid_avx512, "avx512f", "avx512bw", "avx512vl");

    /// AVX2 + FMA + F16C, with the OS saving YMM state.
    pub fn avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            cpuid_avx2_fma::get() && cpuid_bit(1, 2, 29) // CPUID.1:ECX.F16C[bit 29]
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// AVX-512 F/BW/VL + VNNI, with the OS saving ZMM/opmask state.
    pub fn avx512() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            cpuid_avx512::get() && cpuid_bit(7, 2, 11) // CPUID.(7,0):ECX.AVX512_VNNI[bit 11]
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Bit `bit` of register `reg` (0 = EAX … 2 = ECX, 3 = EDX) of CPUID leaf `leaf`
    /// (sub-leaf 0). Only called after `cpufeatures` established AVX2/AVX-512, so the leaf
    /// exists.
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)] // `__cpuid_count` is a safe fn in newer Rust
    fn cpuid_bit(leaf: u32, reg: usize, bit: u32) -> bool {
        use core::arch::x86_64::{__cpuid_count, __get_cpuid_max};
        // SAFETY: CPUID exists on every x86-64 CPU; both calls only read identification
        // registers, and leaf 7 is only queried if the maximum basic leaf covers it.
        let r = unsafe {
            if __get_cpuid_max(0).0 < leaf {
                return false;
            }
            __cpuid_count(leaf, 0)
        };
        let v = [r.eax, r.ebx, r.ecx, r.edx][reg];
        (v >> bit) & 1 != 0
    }

    /// The Armv7E-M DSP extension: a property of the build target (thumbv7em and later M
    /// profiles), fixed at compile time like the core it runs on.
    pub fn arm_dsp() -> bool {
        cfg!(all(target_arch = "arm", target_feature = "dsp"))
    }

    /// NEON (Advanced SIMD) is baseline on AArch64 targets with a hardware float ABI.
    pub fn neon() -> bool {
        cfg!(all(target_arch = "aarch64", target_feature = "neon"))
    }

    /// The AArch64 dot-product extension (`sdot`/`udot`).
    pub fn dotprod() -> bool {
        #[cfg(all(target_arch = "aarch64", target_feature = "neon", any(target_os = "linux", target_os = "android")))]
        {
            // SAFETY: getauxval only reads the process's auxiliary vector; AT_HWCAP is
            // always present on Linux/Android (0 would just mean "no features").
            let hwcap = unsafe { libc::getauxval(libc::AT_HWCAP) };
            cfg!(target_feature = "dotprod") || hwcap & libc::HWCAP_ASIMDDP != 0
        }
        #[cfg(not(all(
            target_arch = "aarch64",
            target_feature = "neon",
            any(target_os = "linux", target_os = "android")
        )))]
        {
            cfg!(all(target_arch = "aarch64", target_feature = "neon", target_feature = "dotprod"))
        }
    }

    /// The AArch64 8-bit integer matrix multiply extension (`usmmla`/`smmla`, FEAT_I8MM).
    pub fn i8mm() -> bool {
        #[cfg(all(target_arch = "aarch64", target_feature = "neon", any(target_os = "linux", target_os = "android")))]
        {
            // Linux's arch/arm64/include/uapi/asm/hwcap.h (libc 0.2 only defines it for Android).
            const HWCAP2_I8MM: libc::c_ulong = 1 << 13;
            // SAFETY: getauxval only reads the process's auxiliary vector; an absent
            // AT_HWCAP2 (kernels before 3.x) reads as 0, i.e. "no features".
            let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
            cfg!(target_feature = "i8mm") || hwcap2 & HWCAP2_I8MM != 0
        }
        #[cfg(not(all(
            target_arch = "aarch64",
            target_feature = "neon",
            any(target_os = "linux", target_os = "android")
        )))]
        {
            cfg!(all(target_arch = "aarch64", target_feature = "neon", target_feature = "i8mm"))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Kernel selection. Each selector returns the kernel of `path` for one operation, or
// `None` when the path has none or is not available on this CPU (the caller then runs the
// scalar reference). The returned safe `fn`s rely on that availability check for the CPU
// features they were compiled for.
// ---------------------------------------------------------------------------------------

pub(crate) type F32Dot<B> = fn(&[B], &[f32]) -> f32;
pub(crate) type IntDot<W, X> = fn(&[W], &[X]) -> f32;

/// Defines a selector `$name(path) -> Option<$ty>` from per-path kernels; a path missing
/// from the list falls through to the paths named after it (`=> fallback`). NEON i8mm has no
/// dot-product kernels of its own: it takes NEON dotprod's.
macro_rules! selector {
    ($name:ident: $ty:ty { avx512: $a512:expr, avx2: $a2:expr, neon_dotprod: $nd:expr, neon: $n:expr $(,)? }) => {
        #[allow(unused_variables, unreachable_patterns)]
        pub(crate) fn $name(path: KernelPath) -> Option<$ty> {
            if !path.is_available() {
                // The kernels rely on the path's CPU features: never hand them out otherwise.
                return None;
            }
            match path {
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx512 => $a512.or($a2),
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx2 => $a2,
                #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
                KernelPath::NeonI8mm | KernelPath::NeonDotprod => $nd.or($n),
                #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
                KernelPath::Neon => $n,
                _ => None,
            }
        }
    };
}

// `Option<fn>` literals; `None::<…>` keeps the type when a path has no kernel.
selector!(f32_f32: F32Dot<f32> {
    avx512: Some(avx512::f32_f32 as F32Dot<f32>),
    avx2: Some(avx2::f32_f32 as F32Dot<f32>),
    neon_dotprod: None::<F32Dot<f32>>,
    neon: Some(neon::f32_f32 as F32Dot<f32>),
});
selector!(f16_f32: F32Dot<half::f16> {
    avx512: None::<F32Dot<half::f16>>,
    avx2: Some(avx2::f16_f32 as F32Dot<half::f16>),
    neon_dotprod: None::<F32Dot<half::f16>>,
    neon: None::<F32Dot<half::f16>>,
});
selector!(q4_0_f32: F32Dot<BlockQ4_0> {
    avx512: Some(avx512::q4_0_f32 as F32Dot<BlockQ4_0>),
    avx2: Some(avx2::q4_0_f32 as F32Dot<BlockQ4_0>),
    neon_dotprod: None::<F32Dot<BlockQ4_0>>,
    neon: Some(neon::q4_0_f32 as F32Dot<BlockQ4_0>),
});
selector!(q4_1_f32: F32Dot<BlockQ4_1> {
    avx512: Some(avx512::q4_1_f32 as F32Dot<BlockQ4_1>),
    avx2: Some(avx2::q4_1_f32 as F32Dot<BlockQ4_1>),
    neon_dotprod: None::<F32Dot<BlockQ4_1>>,
    neon: Some(neon::q4_1_f32 as F32Dot<BlockQ4_1>),
});
selector!(q5_0_f32: F32Dot<BlockQ5_0> {
    avx512: None::<F32Dot<BlockQ5_0>>,
    avx2: Some(avx2::q5_0_f32 as F32Dot<BlockQ5_0>),
    neon_dotprod: None::<F32Dot<BlockQ5_0>>,
    neon: Some(neon::q5_0_f32 as F32Dot<BlockQ5_0>),
});
selector!(q8_0_f32: F32Dot<BlockQ8_0> {
    avx512: None::<F32Dot<BlockQ8_0>>,
    avx2: Some(avx2::q8_0_f32 as F32Dot<BlockQ8_0>),
    neon_dotprod: None::<F32Dot<BlockQ8_0>>,
    neon: Some(neon::q8_0_f32 as F32Dot<BlockQ8_0>),
});
selector!(q4_k_f32: F32Dot<BlockQ4K> {
    avx512: Some(avx512::q4_k_f32 as F32Dot<BlockQ4K>),
    avx2: Some(avx2::q4_k_f32 as F32Dot<BlockQ4K>),
    neon_dotprod: None::<F32Dot<BlockQ4K>>,
    neon: Some(neon::q4_k_f32 as F32Dot<BlockQ4K>),
});
selector!(q6_k_f32: F32Dot<BlockQ6K> {
    avx512: None::<F32Dot<BlockQ6K>>,
    avx2: Some(avx2::q6_k_f32 as F32Dot<BlockQ6K>),
    neon_dotprod: None::<F32Dot<BlockQ6K>>,
    neon: Some(neon::q6_k_f32 as F32Dot<BlockQ6K>),
});
selector!(q4_0_q8_0: IntDot<BlockQ4_0, BlockQ8_0> {
    avx512: Some(avx512::q4_0_q8_0 as IntDot<BlockQ4_0, BlockQ8_0>),
    avx2: Some(avx2::q4_0_q8_0 as IntDot<BlockQ4_0, BlockQ8_0>),
    neon_dotprod: Some(neon::q4_0_q8_0_sdot as IntDot<BlockQ4_0, BlockQ8_0>),
    neon: Some(neon::q4_0_q8_0 as IntDot<BlockQ4_0, BlockQ8_0>),
});
selector!(q4_1_q8_1: IntDot<BlockQ4_1, BlockQ8_1> {
    avx512: Some(avx512::q4_1_q8_1 as IntDot<BlockQ4_1, BlockQ8_1>),
    avx2: Some(avx2::q4_1_q8_1 as IntDot<BlockQ4_1, BlockQ8_1>),
    neon_dotprod: Some(neon::q4_1_q8_1_sdot as IntDot<BlockQ4_1, BlockQ8_1>),
    neon: Some(neon::q4_1_q8_1 as IntDot<BlockQ4_1, BlockQ8_1>),
});
selector!(q8_0_q8_0: IntDot<BlockQ8_0, BlockQ8_0> {
    avx512: Some(avx512::q8_0_q8_0 as IntDot<BlockQ8_0, BlockQ8_0>),
    avx2: Some(avx2::q8_0_q8_0 as IntDot<BlockQ8_0, BlockQ8_0>),
    neon_dotprod: Some(neon::q8_0_q8_0_sdot as IntDot<BlockQ8_0, BlockQ8_0>),
    neon: Some(neon::q8_0_q8_0 as IntDot<BlockQ8_0, BlockQ8_0>),
});
