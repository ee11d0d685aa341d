//! The kernel table: for each block type, its integer matrix kernels on every kernel path.
//!
//! One row per weight type, built from the type's [`Grid`] view (its module says how its bits
//! become codes, scales and offsets) and, where a type has one, a hand-written kernel that
//! replaces the generic one on a path. The runtime never lists types: it asks
//! [`gemv_kernel`] for the decode kernel of a type on the selected path, and
//! [`gemm_q8`](crate::gemm_q8) packs any type in the table for prefill.
//!
//! Adding a block type: its module (block struct, quantize, dequantize, `impl Grid`), then one
//! row here.

use crate::gemm_q8::VecQ8;
use crate::grid::Grid;
use crate::{GgmlType, KernelPath};

/// Unpacks one block into codes, per-group scales and per-group offsets (see [`crate::grid`]).
pub(crate) type UnpackFn = fn(&[u8], &mut [u8], &mut [f32], &mut [f32]);

/// A decode kernel: `out[r] = row r of w · x`, rows of `rb` bytes.
pub type GemvFn = fn(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]);

/// A decode kernel for several tokens: `outs[t][r] = row r of w · xs[t]`, each `outs[t]` the
/// same bits as the path's [`GemvFn`] on `xs[t]` alone (the weights decoded once for several
/// tokens).
pub type GemvManyFn = fn(w: &[u8], rb: usize, xs: &[&VecQ8], outs: &mut [&mut [f32]]);

/// Number of kernel paths (the slots of [`TypeKernels::gemv`]).
const PATHS: usize = KernelPath::ALL.len();

/// One row of the table.
#[derive(Clone, Copy)]
pub struct TypeKernels {
    /// The weight type.
    pub ty: GgmlType,
    /// Elements per scale group of the unpacked view (32, or 16).
    pub group: usize,
    /// Unpacks one block: codes, per-group scales and offsets (see [`crate::grid`]).
    pub(crate) unpack: UnpackFn,
    /// Decode kernels, indexed by [`KernelPath`] (`None`: the path has no kernel of its own).
    gemv: [Option<GemvFn>; PATHS],
    /// Several-token decode kernels, by path, where a type has one (`None`: the path's
    /// [`GemvFn`] runs once per token).
    gemv_many: [Option<GemvManyFn>; PATHS],
}

/// The generic kernels of a [`Grid`] type on every path this build has.
#[allow(unused_mut)]
const fn generic<T: Grid>() -> TypeKernels {
    let mut gemv: [Option<GemvFn>; PATHS] = [None; PATHS];
    gemv[KernelPath::Scalar as usize] = Some(gemv_scalar::<T> as GemvFn);
    #[cfg(target_arch = "x86_64")]
    {
        if T::MAX_CODE <= 127 {
            gemv[KernelPath::Avx2 as usize] = Some(crate::arch::x86::gemv_grid_avx2::<T> as GemvFn);
        }
        gemv[KernelPath::Avx512 as usize] = Some(crate::arch::x86::gemv_grid_avx512::<T> as GemvFn);
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        if T::MAX_CODE <= 127 {
            gemv[KernelPath::Neon as usize] = Some(crate::arch::arm::gemv_grid_neon::<T> as GemvFn);
            gemv[KernelPath::NeonDotprod as usize] = Some(crate::arch::arm::gemv_grid_sdot::<T> as GemvFn);
        }
    }
    TypeKernels { ty: T::TY, group: T::GROUP, unpack: T::unpack, gemv, gemv_many: [None; PATHS] }
}

/// `row` with the hand-written kernel `f` on `path`.
#[cfg_attr(
    not(any(
        target_arch = "x86_64",
        all(target_arch = "aarch64", target_feature = "neon"),
        all(target_arch = "arm", target_feature = "dsp")
    )),
    allow(dead_code)
)]
const fn with(mut row: TypeKernels, path: KernelPath, f: GemvFn) -> TypeKernels {
    row.gemv[path as usize] = Some(f);
    row
}

use crate::{iq4_nl::BlockIQ4NL, iq4_xs::BlockIQ4XS};
use crate::{q2_k::BlockQ2K, q3_k::BlockQ3K, q4_k::BlockQ4K, q5_k::BlockQ5K, q6_k::BlockQ6K};
use crate::{q4_0::BlockQ4_0, q4_1::BlockQ4_1, q5_0::BlockQ5_0, q5_1::BlockQ5_1, q8_0::BlockQ8_0};

/// Q4_0, Q4_1 and Q8_0: a generic row with the hand-written kernels of every path
/// (`gemv_<t>_avx512`, `_avx2`, `_neon`, `_sdot` in `arch/`), all in the order of
/// [`crate::decode_order`], whose scalar kernels replace the generic oracle.
macro_rules! with_all_paths {
    ($block:ty, $scalar:expr, $avx512:ident, $avx2:ident, $neon:ident, $sdot:ident $(, many: $many:ident)?) => {{
        #[allow(unused_mut)]
        let mut row = generic::<$block>();
        row = with(row, KernelPath::Scalar, $scalar);
        #[cfg(target_arch = "x86_64")]
        {
            row = with(row, KernelPath::Avx512, crate::arch::x86::$avx512);
            row = with(row, KernelPath::Avx2, crate::arch::x86::$avx2);
        }
        $(
        #[cfg(target_arch = "x86_64")]
        {
            row.gemv_many[KernelPath::Avx512 as usize] = Some(crate::arch::x86::$many as GemvManyFn);
        }
        )?
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        {
            row = with(row, KernelPath::Neon, crate::arch::arm::$neon);
            row = with(row, KernelPath::NeonDotprod, crate::arch::arm::$sdot);
        }
        row
    }};
}

/// `row` with a Cortex-M DSP kernel (`arch/armv7em`), in builds for such cores only.
macro_rules! with_dsp {
    ($row:expr, $f:ident) => {{
        #[allow(unused_mut)]
        let mut row = $row;
        #[cfg(all(target_arch = "arm", target_feature = "dsp"))]
        {
            row = with(row, KernelPath::ArmDsp, crate::arch::armv7em::$f);
        }
        row
    }};
}

/// A generic row with hand-written x86 kernels on AVX-512 (and AVX2), in x86 builds only.
macro_rules! with_x86 {
    ($block:ty, avx512: $f:ident $(::<$b:literal>)? $(, avx2: $f2:ident ::<$b2:literal>)?) => {{
        #[allow(unused_mut)]
        let mut row = generic::<$block>();
        #[cfg(target_arch = "x86_64")]
        {
            row = with(row, KernelPath::Avx512, crate::arch::x86::$f$(::<$b>)?);
            $(row = with(row, KernelPath::Avx2, crate::arch::x86::$f2::<$b2>);)?
        }
        row
    }};
}

/// `row` (IQ4_NL, or IQ4_XS when `$xs`) with the IQ4 kernels of AVX2, NEON and NEON dotprod.
macro_rules! with_iq4 {
    ($row:expr, $xs:literal) => {{
        #[allow(unused_mut)]
        let mut row = $row;
        #[cfg(target_arch = "x86_64")]
        {
            row = with(row, KernelPath::Avx2, crate::arch::x86::gemv_iq4_avx2::<$xs>);
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        {
            row = with(row, KernelPath::Neon, crate::arch::arm::gemv_iq4_neon::<$xs>);
            row = with(row, KernelPath::NeonDotprod, crate::arch::arm::gemv_iq4_sdot::<$xs>);
        }
        row
    }};
}

/// The table, one row per weight type with integer kernels.
static TABLE: [TypeKernels; 12] = [
    with_dsp!(
        with_all_paths!(BlockQ4_0, crate::decode_order::gemv_q4_canon::<false>, gemv_q4_0_avx512, gemv_q4_0_avx2, gemv_q4_0_neon, gemv_q4_0_sdot, many: gemv_many_q4_0_avx512),
        gemv_q4_0_dsp
    ),
    with_all_paths!(BlockQ4_1, crate::decode_order::gemv_q4_canon::<true>, gemv_q4_1_avx512, gemv_q4_1_avx2, gemv_q4_1_neon, gemv_q4_1_sdot, many: gemv_many_q4_1_avx512),
    with_x86!(BlockQ5_0, avx512: gemv_q5_avx512::<false>, avx2: gemv_q5_avx2::<false>),
    with_x86!(BlockQ5_1, avx512: gemv_q5_avx512::<true>, avx2: gemv_q5_avx2::<true>),
    with_dsp!(
        with_all_paths!(BlockQ8_0, crate::decode_order::gemv_q8_0_canon, gemv_q8_0_avx512, gemv_q8_0_avx2, gemv_q8_0_neon, gemv_q8_0_sdot, many: gemv_many_q8_0_avx512),
        gemv_q8_0_dsp
    ),
    with_x86!(BlockQ2K, avx512: gemv_q23k_avx512::<false>),
    with_x86!(BlockQ3K, avx512: gemv_q23k_avx512::<true>),
    with_x86!(BlockQ4K, avx512: gemv_q45k_avx512::<false>),
    with_x86!(BlockQ5K, avx512: gemv_q45k_avx512::<true>),
    with_x86!(BlockQ6K, avx512: gemv_q6k_avx512),
    // Codes up to 241 (grid + 128): the generic AVX2 / NEON kernels cannot take them; their
    // own kernels read the grid's signed values (`gemv_iq4_*`).
    with_iq4!(with_x86!(BlockIQ4NL, avx512: gemv_iq4nl_avx512), false),
    with_iq4!(with_x86!(BlockIQ4XS, avx512: gemv_iq4xs_avx512), true),
];

/// The table's row for `ty`, if it has integer kernels.
pub fn type_kernels(ty: GgmlType) -> Option<&'static TypeKernels> {
    TABLE.iter().find(|r| r.ty == ty)
}

/// Every row of the table.
pub fn kernel_table() -> &'static [TypeKernels] {
    &TABLE
}

/// The path a request for `path` falls back to when it has no kernel of its own.
const fn next_down(path: KernelPath) -> Option<KernelPath> {
    match path {
        KernelPath::Scalar => None,
        KernelPath::Avx2 | KernelPath::Neon | KernelPath::ArmDsp => Some(KernelPath::Scalar),
        KernelPath::Avx512 => Some(KernelPath::Avx2),
        KernelPath::NeonDotprod => Some(KernelPath::Neon),
        KernelPath::NeonI8mm => Some(KernelPath::NeonDotprod),
    }
}

impl TypeKernels {
    /// The decode kernel that runs for a request on `path`, and the path it belongs to: the
    /// path's own, else the next one down (AVX-512 → AVX2 → scalar; NEON i8mm → dotprod →
    /// NEON → scalar).
    pub fn gemv(&self, path: KernelPath) -> (KernelPath, GemvFn) {
        let (p, f, _) = self.gemv_with_many(path);
        (p, f)
    }

    /// [`gemv`](Self::gemv), and the several-token kernel of the path it resolves to, if any.
    pub fn gemv_with_many(&self, path: KernelPath) -> (KernelPath, GemvFn, Option<GemvManyFn>) {
        let mut p = path;
        loop {
            if let Some(f) = self.gemv[p as usize] {
                return (p, f, self.gemv_many[p as usize]);
            }
            match next_down(p) {
                Some(n) => p = n,
                None => unreachable!("every row has a scalar kernel"),
            }
        }
    }
}

/// The decode kernel for `ty` on `path` (see [`TypeKernels::gemv`]), if `ty` is in the table.
pub fn gemv_kernel(ty: GgmlType, path: KernelPath) -> Option<(KernelPath, GemvFn)> {
    type_kernels(ty).map(|r| r.gemv(path))
}

/// The scalar oracle of every decode kernel ([`crate::grid::dot_row_scalar`] per row).
fn gemv_scalar<T: Grid>(w: &[u8], rb: usize, x: &VecQ8, out: &mut [f32]) {
    let a = &x.acts;
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        *o = crate::grid::dot_row_scalar::<T>(row, &a.q, &a.d, &a.ds16, &a.ds32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block type with a grid is in the table, and is in it once; so are the types with a
    /// grid view but no block grid (IQ4_NL, IQ4_XS: non-linear grids). The table is the truth
    /// for the integer kernels: every row has prefill and decode kernels.
    #[test]
    fn every_grid_type_has_a_row() {
        use GgmlType::*;
        let view_only = [IQ4_NL, IQ4_XS];
        for ty in crate::ALL_TYPES.into_iter().filter(|&t| crate::has_block_grid(t) || view_only.contains(&t)) {
            assert_eq!(TABLE.iter().filter(|r| r.ty == ty).count(), 1, "{ty}: one row in the kernel table");
        }
        for row in &TABLE {
            assert!(
                crate::has_block_grid(row.ty) || view_only.contains(&row.ty),
                "{}: in the table without a grid view",
                row.ty
            );
            assert!(crate::gemm_q8_supported(row.ty, 256), "{}: no prefill kernel", row.ty);
            assert!(crate::gemv_q8_supported(row.ty, 256), "{}: no decode kernel", row.ty);
            assert!(row.group == 16 || row.group == 32, "{}: groups of {}", row.ty, row.group);
        }
    }

    /// Known gaps: Cortex-M's DSP path has decode kernels for Q4_0 and Q8_0 only (what fits a
    /// microcontroller's flash), the other types run the scalar oracle there.
    fn known_scalar_gap(ty: GgmlType, path: KernelPath) -> bool {
        path == KernelPath::ArmDsp && !matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0)
    }

    /// No (type, decode, path) cell falls back to the scalar oracle on a CPU with SIMD: every
    /// available SIMD path runs a kernel of its own family (x86 or Arm), except the
    /// [`known_scalar_gap`] cells.
    #[test]
    fn no_type_falls_back_to_scalar_on_a_simd_path() {
        for row in &TABLE {
            for path in crate::available_kernel_paths() {
                let (got, _) = row.gemv(path);
                if path != KernelPath::Scalar && !known_scalar_gap(row.ty, path) {
                    assert_ne!(got, KernelPath::Scalar, "{} decode on {path} falls back to the scalar oracle", row.ty);
                }
            }
        }
    }

    /// Which kernel each type takes on each path: its own path's, except NEON i8mm, whose
    /// decode runs the dotprod kernels (one token has no second column for `usmmla`), and the
    /// [`known_scalar_gap`] cells, which run the scalar oracle.
    #[test]
    fn the_path_each_type_takes() {
        for row in &TABLE {
            for path in KernelPath::ALL {
                let want = match path {
                    _ if known_scalar_gap(row.ty, path) => KernelPath::Scalar,
                    KernelPath::NeonI8mm => KernelPath::NeonDotprod,
                    p => p,
                };
                let compiled = match path {
                    KernelPath::Scalar => true,
                    KernelPath::Avx2 | KernelPath::Avx512 => cfg!(target_arch = "x86_64"),
                    KernelPath::Neon | KernelPath::NeonDotprod | KernelPath::NeonI8mm => {
                        cfg!(all(target_arch = "aarch64", target_feature = "neon"))
                    }
                    KernelPath::ArmDsp => cfg!(all(target_arch = "arm", target_feature = "dsp")),
                };
                if compiled {
                    assert_eq!(row.gemv(path).0, want, "{} decode on {path}", row.ty);
                }
            }
        }
    }
}
