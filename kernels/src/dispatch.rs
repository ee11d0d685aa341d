//! The runtime-facing entry points: raw GGUF bytes in, checked lengths, per-type dispatch.
//!
//! (Kept out of `lib.rs` because the crate's `f32` module would shadow the primitive
//! `f32` type there.)

use crate::blocks::{dot_blocks, for_blocks, for_blocks_mut};
use crate::simd::{self, kernel_path, KernelPath};
use crate::GgmlType;
use crate::{bf16, f16, iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k};

/// Bytes for `n` elements of `ty`, panicking with a clear message when `n` is not a
/// whole number of blocks.
fn row_bytes(ty: GgmlType, n: usize, what: &str) -> usize {
    ty.row_bytes(n).unwrap_or_else(|| {
        panic!("{what}: {n} elements is not a whole number of {ty} blocks ({} elements each)", ty.block_size())
    })
}

/// Dequantizes dst.len() elements of `ty` from `src` (exactly ty.row_bytes(dst.len()) bytes).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let bytes = row_bytes(ty, dst.len(), "dequantize_row");
    assert_eq!(
        src.len(),
        bytes,
        "dequantize_row: {} elements of {ty} take {bytes} bytes, got {}",
        dst.len(),
        src.len()
    );
    macro_rules! deq {
        ($block:ty, $f:path) => {{
            let per = ty.block_size();
            for_blocks::<$block>(src, |first, blocks| $f(blocks, &mut dst[first * per..(first + blocks.len()) * per]))
        }};
    }
    use GgmlType::*;
    match ty {
        F32 => deq!(f32, crate::f32::dequantize_row_f32),
        F16 => deq!(half::f16, f16::dequantize_row_f16),
        BF16 => deq!(half::bf16, bf16::dequantize_row_bf16),
        Q4_0 => deq!(q4_0::BlockQ4_0, q4_0::dequantize_row_q4_0),
        Q4_1 => deq!(q4_1::BlockQ4_1, q4_1::dequantize_row_q4_1),
        Q5_0 => deq!(q5_0::BlockQ5_0, q5_0::dequantize_row_q5_0),
        Q5_1 => deq!(q5_1::BlockQ5_1, q5_1::dequantize_row_q5_1),
        Q8_0 => deq!(q8_0::BlockQ8_0, q8_0::dequantize_row_q8_0),
        Q8_1 => deq!(q8_1::BlockQ8_1, q8_1::dequantize_row_q8_1),
        Q2_K => deq!(q2_k::BlockQ2K, q2_k::dequantize_row_q2_k),
        Q3_K => deq!(q3_k::BlockQ3K, q3_k::dequantize_row_q3_k),
        Q4_K => deq!(q4_k::BlockQ4K, q4_k::dequantize_row_q4_k),
        Q5_K => deq!(q5_k::BlockQ5K, q5_k::dequantize_row_q5_k),
        Q6_K => deq!(q6_k::BlockQ6K, q6_k::dequantize_row_q6_k),
        Q8_K => deq!(q8_k::BlockQ8K, q8_k::dequantize_row_q8_k),
        IQ4_NL => deq!(iq4_nl::BlockIQ4NL, iq4_nl::dequantize_row_iq4_nl),
        IQ4_XS => deq!(iq4_xs::BlockIQ4XS, iq4_xs::dequantize_row_iq4_xs),
    }
}

/// Quantizes src into dst (exactly ty.row_bytes(src.len()) bytes), round-to-nearest reference.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    let bytes = row_bytes(ty, src.len(), "quantize_row");
    assert_eq!(dst.len(), bytes, "quantize_row: {} elements of {ty} take {bytes} bytes, got {}", src.len(), dst.len());
    macro_rules! quant {
        ($block:ty, $f:path) => {{
            let per = ty.block_size();
            for_blocks_mut::<$block>(dst, |first, blocks| $f(&src[first * per..(first + blocks.len()) * per], blocks))
        }};
    }
    use GgmlType::*;
    match ty {
        F32 => quant!(f32, crate::f32::quantize_row_f32),
        F16 => quant!(half::f16, f16::quantize_row_f16),
        BF16 => quant!(half::bf16, bf16::quantize_row_bf16),
        Q4_0 => quant!(q4_0::BlockQ4_0, q4_0::quantize_row_q4_0),
        Q4_1 => quant!(q4_1::BlockQ4_1, q4_1::quantize_row_q4_1),
        Q5_0 => quant!(q5_0::BlockQ5_0, q5_0::quantize_row_q5_0),
        Q5_1 => quant!(q5_1::BlockQ5_1, q5_1::quantize_row_q5_1),
        Q8_0 => quant!(q8_0::BlockQ8_0, q8_0::quantize_row_q8_0),
        Q8_1 => quant!(q8_1::BlockQ8_1, q8_1::quantize_row_q8_1),
        Q2_K => quant!(q2_k::BlockQ2K, q2_k::quantize_row_q2_k),
        Q3_K => quant!(q3_k::BlockQ3K, q3_k::quantize_row_q3_k),
        Q4_K => quant!(q4_k::BlockQ4K, q4_k::quantize_row_q4_k),
        Q5_K => quant!(q5_k::BlockQ5K, q5_k::quantize_row_q5_k),
        Q6_K => quant!(q6_k::BlockQ6K, q6_k::quantize_row_q6_k),
        Q8_K => quant!(q8_k::BlockQ8K, q8_k::quantize_row_q8_k),
        IQ4_NL => quant!(iq4_nl::BlockIQ4NL, iq4_nl::quantize_row_iq4_nl),
        IQ4_XS => quant!(iq4_xs::BlockIQ4XS, iq4_xs::quantize_row_iq4_xs),
    }
}

/// Importance-aware quantization of `src` into `dst` (exactly `ty.row_bytes(src.len())`
/// bytes): per block, the parameters and codes minimizing `Σ importance[i] (src[i] - x̂[i])²`
/// (see `quantize_row_<t>_weighted` in the type modules). `importance` has one entry per
/// element, `>= 0`; a block whose importance is all zero (or negative/non-finite, which
/// count as 0) is treated as uniform. Never worse than [`quantize_row`] on any block under
/// that block's importance, except for IQ4_NL / IQ4_XS, which run ggml's own importance
/// search (`quantize_iq4_nl` / `quantize_iq4_xs` with `quant_weights`, bit for bit; an
/// all-zero group of 32 counts as uniform there). F32/F16/BF16 ignore `importance` and
/// convert as [`quantize_row`] does.
///
/// Panics for Q8_1 and Q8_K (activation-only types without an importance-aware quantizer)
/// and on length mismatches.
pub fn quantize_row_weighted(ty: GgmlType, src: &[f32], importance: &[f32], dst: &mut [u8]) {
    let bytes = row_bytes(ty, src.len(), "quantize_row_weighted");
    assert_eq!(
        dst.len(),
        bytes,
        "quantize_row_weighted: {} elements of {ty} take {bytes} bytes, got {}",
        src.len(),
        dst.len()
    );
    assert_eq!(
        importance.len(),
        src.len(),
        "quantize_row_weighted: {} importance values for {} elements",
        importance.len(),
        src.len()
    );
    macro_rules! quant {
        ($block:ty, $f:path) => {{
            let per = ty.block_size();
            for_blocks_mut::<$block>(dst, |first, blocks| {
                let r = first * per..(first + blocks.len()) * per;
                $f(&src[r.clone()], &importance[r], blocks)
            })
        }};
    }
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => quantize_row(ty, src, dst),
        Q8_1 | Q8_K => {
            panic!("quantize_row_weighted: {ty} is an activation-only type without an importance-aware quantizer")
        }
        Q4_0 => quant!(q4_0::BlockQ4_0, q4_0::quantize_row_q4_0_weighted),
        Q4_1 => quant!(q4_1::BlockQ4_1, q4_1::quantize_row_q4_1_weighted),
        Q5_0 => quant!(q5_0::BlockQ5_0, q5_0::quantize_row_q5_0_weighted),
        Q5_1 => quant!(q5_1::BlockQ5_1, q5_1::quantize_row_q5_1_weighted),
        Q8_0 => quant!(q8_0::BlockQ8_0, q8_0::quantize_row_q8_0_weighted),
        Q2_K => quant!(q2_k::BlockQ2K, q2_k::quantize_row_q2_k_weighted),
        Q3_K => quant!(q3_k::BlockQ3K, q3_k::quantize_row_q3_k_weighted),
        Q4_K => quant!(q4_k::BlockQ4K, q4_k::quantize_row_q4_k_weighted),
        Q5_K => quant!(q5_k::BlockQ5K, q5_k::quantize_row_q5_k_weighted),
        Q6_K => quant!(q6_k::BlockQ6K, q6_k::quantize_row_q6_k_weighted),
        IQ4_NL => quant!(iq4_nl::BlockIQ4NL, iq4_nl::quantize_row_iq4_nl_weighted),
        IQ4_XS => quant!(iq4_xs::BlockIQ4XS, iq4_xs::quantize_row_iq4_xs_weighted),
    }
}

/// True for the types with a block grid ([`block_grid`], [`block_codes`],
/// [`set_block_codes`]): the ten weight block types Q4_0 … Q6_K. F32/F16/BF16 have no
/// blocks of codes, Q8_1/Q8_K are activation-only types, and IQ4_NL/IQ4_XS index a
/// non-linear grid (no affine `scale * q + offset` in the stored index; they are in the
/// kernel table through their [`crate::grid`] view only).
pub const fn has_block_grid(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K)
}

/// Checks the arguments of the grid functions: a grid type, one block of bytes, and
/// `per_element` slices of one entry per element.
fn check_grid_args(ty: GgmlType, what: &str, block: usize, per_element: &[(usize, &str)]) {
    assert!(
        has_block_grid(ty),
        "{what}: {ty} has no block grid (only Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K … Q6_K do)"
    );
    assert_eq!(block, ty.type_size(), "{what}: a {ty} block is {} bytes, got {block}", ty.type_size());
    for &(len, name) in per_element {
        assert_eq!(
            len,
            ty.block_size(),
            "{what}: `{name}` needs {} entries (one per element), got {len}",
            ty.block_size()
        );
    }
}

/// The affine grid the stored parameters of one block (`block`: exactly `ty.type_size()`
/// bytes, any alignment) allow: element `i` can take the values `scale[i] * q + offset[i]`
/// for the integers `q` in the returned inclusive range `(qmin, qmax)`, the same range for
/// every element of a type. The codes `q` are those of [`block_codes`] /
/// [`set_block_codes`]:
///
/// | type | scale | offset | q |
/// | --- | --- | --- | --- |
/// | Q4_0 / Q5_0 | `d` | `-8 d` / `-16 d` | `0..=15` / `0..=31` |
/// | Q4_1 / Q5_1 | `d` | `m` | `0..=15` / `0..=31` |
/// | Q8_0 | `d` | 0 | `-127..=127` |
/// | Q2_K / Q4_K / Q5_K | `d * sc_j` | `-(dmin * m_j)` | `0..=3` / `0..=15` / `0..=31` |
/// | Q3_K | `d * (sc_j - 32)` | 0 | `-4..=3` |
/// | Q6_K | `d * sc_j` | 0 | `-32..=31` |
///
/// (`j` is the element's sub-block.) Scales and offsets are computed with the
/// dequantizer's own operations, and `scale * q + offset` (f32) equals what
/// [`dequantize_row`] produces for a stored `q`, for every block whose f16 parameters are
/// finite: the same bits, except that a zero may come out with the other sign.
///
/// Panics when `ty` has no grid (see [`has_block_grid`]) or on length mismatches.
pub fn block_grid(ty: GgmlType, block: &[u8], scale: &mut [f32], offset: &mut [f32]) -> (i32, i32) {
    check_grid_args(ty, "block_grid", block.len(), &[(scale.len(), "scale"), (offset.len(), "offset")]);
    macro_rules! grid {
        ($block:ty, $f:path) => {{
            let b: $block = bytemuck::pod_read_unaligned(block);
            // Lengths checked above: the conversions cannot fail.
            $f(&b, scale.try_into().unwrap(), offset.try_into().unwrap())
        }};
    }
    use GgmlType::*;
    match ty {
        Q4_0 => grid!(q4_0::BlockQ4_0, q4_0::block_grid_q4_0),
        Q4_1 => grid!(q4_1::BlockQ4_1, q4_1::block_grid_q4_1),
        Q5_0 => grid!(q5_0::BlockQ5_0, q5_0::block_grid_q5_0),
        Q5_1 => grid!(q5_1::BlockQ5_1, q5_1::block_grid_q5_1),
        Q8_0 => grid!(q8_0::BlockQ8_0, q8_0::block_grid_q8_0),
        Q2_K => grid!(q2_k::BlockQ2K, q2_k::block_grid_q2_k),
        Q3_K => grid!(q3_k::BlockQ3K, q3_k::block_grid_q3_k),
        Q4_K => grid!(q4_k::BlockQ4K, q4_k::block_grid_q4_k),
        Q5_K => grid!(q5_k::BlockQ5K, q5_k::block_grid_q5_k),
        Q6_K => grid!(q6_k::BlockQ6K, q6_k::block_grid_q6_k),
        F32 | F16 | BF16 | Q8_1 | Q8_K | IQ4_NL | IQ4_XS => unreachable!("checked by check_grid_args"),
    }
}

/// Reads the stored codes of one block (element order, in the convention of
/// [`block_grid`]). Panics when `ty` has no grid or on length mismatches.
pub fn block_codes(ty: GgmlType, block: &[u8], codes: &mut [i32]) {
    check_grid_args(ty, "block_codes", block.len(), &[(codes.len(), "codes")]);
    macro_rules! codes {
        ($block:ty, $f:path) => {{
            let b: $block = bytemuck::pod_read_unaligned(block);
            $f(&b, codes.try_into().unwrap())
        }};
    }
    use GgmlType::*;
    match ty {
        Q4_0 => codes!(q4_0::BlockQ4_0, q4_0::block_codes_q4_0),
        Q4_1 => codes!(q4_1::BlockQ4_1, q4_1::block_codes_q4_1),
        Q5_0 => codes!(q5_0::BlockQ5_0, q5_0::block_codes_q5_0),
        Q5_1 => codes!(q5_1::BlockQ5_1, q5_1::block_codes_q5_1),
        Q8_0 => codes!(q8_0::BlockQ8_0, q8_0::block_codes_q8_0),
        Q2_K => codes!(q2_k::BlockQ2K, q2_k::block_codes_q2_k),
        Q3_K => codes!(q3_k::BlockQ3K, q3_k::block_codes_q3_k),
        Q4_K => codes!(q4_k::BlockQ4K, q4_k::block_codes_q4_k),
        Q5_K => codes!(q5_k::BlockQ5K, q5_k::block_codes_q5_k),
        Q6_K => codes!(q6_k::BlockQ6K, q6_k::block_codes_q6_k),
        F32 | F16 | BF16 | Q8_1 | Q8_K | IQ4_NL | IQ4_XS => unreachable!("checked by check_grid_args"),
    }
}

/// Stores `codes` (element order, each within the range [`block_grid`] reports) into one
/// block, leaving its parameters (scales, mins) untouched. Panics when `ty` has no grid,
/// on length mismatches, or on an out-of-range code.
pub fn set_block_codes(ty: GgmlType, block: &mut [u8], codes: &[i32]) {
    check_grid_args(ty, "set_block_codes", block.len(), &[(codes.len(), "codes")]);
    macro_rules! set {
        ($block:ty, $f:path) => {{
            let mut b: $block = bytemuck::pod_read_unaligned(block);
            $f(&mut b, codes.try_into().unwrap());
            block.copy_from_slice(bytemuck::bytes_of(&b));
        }};
    }
    use GgmlType::*;
    match ty {
        Q4_0 => set!(q4_0::BlockQ4_0, q4_0::set_block_codes_q4_0),
        Q4_1 => set!(q4_1::BlockQ4_1, q4_1::set_block_codes_q4_1),
        Q5_0 => set!(q5_0::BlockQ5_0, q5_0::set_block_codes_q5_0),
        Q5_1 => set!(q5_1::BlockQ5_1, q5_1::set_block_codes_q5_1),
        Q8_0 => set!(q8_0::BlockQ8_0, q8_0::set_block_codes_q8_0),
        Q2_K => set!(q2_k::BlockQ2K, q2_k::set_block_codes_q2_k),
        Q3_K => set!(q3_k::BlockQ3K, q3_k::set_block_codes_q3_k),
        Q4_K => set!(q4_k::BlockQ4K, q4_k::set_block_codes_q4_k),
        Q5_K => set!(q5_k::BlockQ5K, q5_k::set_block_codes_q5_k),
        Q6_K => set!(q6_k::BlockQ6K, q6_k::set_block_codes_q6_k),
        F32 | F16 | BF16 | Q8_1 | Q8_K | IQ4_NL | IQ4_XS => unreachable!("checked by check_grid_args"),
    }
}

/// Dot product of n elements: weights `w` in `ty`, activations `x` in `ty.vec_dot_type()`.
/// Runs on [`kernel_path`].
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    vec_dot_with(kernel_path(), ty, n, w, x)
}

/// [`vec_dot`] on an explicit kernel path (for tests and benchmarks; panics if the CPU
/// lacks `path`).
pub fn vec_dot_on(path: KernelPath, ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    simd::check_available(path);
    vec_dot_with(path, ty, n, w, x)
}

/// Dot product of a weight row in `ty` with f32 activations, dequantizing on the fly (f32
/// math). Runs on [`kernel_path`].
pub fn vec_dot_f32(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    vec_dot_f32_with(kernel_path(), ty, w, x)
}

/// [`vec_dot_f32`] on an explicit kernel path (for tests and benchmarks; panics if the CPU
/// lacks `path`).
pub fn vec_dot_f32_on(path: KernelPath, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    simd::check_available(path);
    vec_dot_f32_with(path, ty, w, x)
}

/// `Σ a[i] * b[i]` on [`kernel_path`] (the scalar version is [`crate::f32::dot_f32`]).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    match simd::f32_f32(kernel_path()) {
        Some(f) => f(a, b),
        None => crate::f32::dot_f32(a, b),
    }
}

/// `path` must be available (the SIMD kernels rely on it).
fn vec_dot_with(path: KernelPath, ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    let xty = ty.vec_dot_type();
    let wbytes = row_bytes(ty, n, "vec_dot");
    let xbytes = row_bytes(xty, n, "vec_dot");
    assert_eq!(w.len(), wbytes, "vec_dot: {n} weights of {ty} take {wbytes} bytes, got {}", w.len());
    assert_eq!(x.len(), xbytes, "vec_dot: {n} activations of {xty} take {xbytes} bytes, got {}", x.len());
    macro_rules! dot {
        ($wb:ty, $xb:ty, $f:path) => {
            dot_blocks::<$wb, $xb>(w, x, $f)
        };
        ($wb:ty, $xb:ty, $f:path, $simd:ident) => {{
            let f: simd::IntDot<$wb, $xb> = simd::$simd(path).unwrap_or($f);
            dot_blocks::<$wb, $xb>(w, x, f)
        }};
    }
    use GgmlType::*;
    match ty {
        F32 => dot!(f32, f32, crate::f32::vec_dot_f32_f32, f32_f32),
        F16 => dot!(half::f16, half::f16, f16::vec_dot_f16_f16),
        BF16 => dot!(half::bf16, half::bf16, bf16::vec_dot_bf16_bf16),
        Q4_0 => dot!(q4_0::BlockQ4_0, q8_0::BlockQ8_0, q4_0::vec_dot_q4_0_q8_0, q4_0_q8_0),
        Q4_1 => dot!(q4_1::BlockQ4_1, q8_1::BlockQ8_1, q4_1::vec_dot_q4_1_q8_1, q4_1_q8_1),
        Q5_0 => dot!(q5_0::BlockQ5_0, q8_0::BlockQ8_0, q5_0::vec_dot_q5_0_q8_0),
        Q5_1 => dot!(q5_1::BlockQ5_1, q8_1::BlockQ8_1, q5_1::vec_dot_q5_1_q8_1),
        Q8_0 => dot!(q8_0::BlockQ8_0, q8_0::BlockQ8_0, q8_0::vec_dot_q8_0_q8_0, q8_0_q8_0),
        Q8_1 => dot!(q8_1::BlockQ8_1, q8_1::BlockQ8_1, q8_1::vec_dot_q8_1_q8_1),
        Q2_K => dot!(q2_k::BlockQ2K, q8_k::BlockQ8K, q2_k::vec_dot_q2_k_q8_k),
        Q3_K => dot!(q3_k::BlockQ3K, q8_k::BlockQ8K, q3_k::vec_dot_q3_k_q8_k),
        Q4_K => dot!(q4_k::BlockQ4K, q8_k::BlockQ8K, q4_k::vec_dot_q4_k_q8_k),
        Q5_K => dot!(q5_k::BlockQ5K, q8_k::BlockQ8K, q5_k::vec_dot_q5_k_q8_k),
        Q6_K => dot!(q6_k::BlockQ6K, q8_k::BlockQ8K, q6_k::vec_dot_q6_k_q8_k),
        Q8_K => dot!(q8_k::BlockQ8K, q8_k::BlockQ8K, q8_k::vec_dot_q8_k_q8_k),
        IQ4_NL => dot!(iq4_nl::BlockIQ4NL, q8_0::BlockQ8_0, iq4_nl::vec_dot_iq4_nl_q8_0),
        IQ4_XS => dot!(iq4_xs::BlockIQ4XS, q8_k::BlockQ8K, iq4_xs::vec_dot_iq4_xs_q8_k),
    }
}

/// `path` must be available (the SIMD kernels rely on it).
fn vec_dot_f32_with(path: KernelPath, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let wbytes = row_bytes(ty, n, "vec_dot_f32");
    assert_eq!(w.len(), wbytes, "vec_dot_f32: {n} weights of {ty} take {wbytes} bytes, got {}", w.len());
    macro_rules! dot {
        ($block:ty, $f:path) => {{
            let per = ty.block_size();
            let mut sum = 0.0f32;
            for_blocks::<$block>(w, |first, blocks| sum += $f(blocks, &x[first * per..(first + blocks.len()) * per]));
            sum
        }};
        ($block:ty, $f:path, $simd:ident) => {{
            let f: simd::F32Dot<$block> = simd::$simd(path).unwrap_or($f);
            dot!($block, f)
        }};
    }
    use GgmlType::*;
    match ty {
        F32 => dot!(f32, crate::f32::dot_f32, f32_f32),
        F16 => dot!(half::f16, f16::vec_dot_f16_f32, f16_f32),
        BF16 => dot!(half::bf16, bf16::vec_dot_bf16_f32),
        Q4_0 => dot!(q4_0::BlockQ4_0, q4_0::vec_dot_q4_0_f32, q4_0_f32),
        Q4_1 => dot!(q4_1::BlockQ4_1, q4_1::vec_dot_q4_1_f32, q4_1_f32),
        Q5_0 => dot!(q5_0::BlockQ5_0, q5_0::vec_dot_q5_0_f32, q5_0_f32),
        Q5_1 => dot!(q5_1::BlockQ5_1, q5_1::vec_dot_q5_1_f32),
        Q8_0 => dot!(q8_0::BlockQ8_0, q8_0::vec_dot_q8_0_f32, q8_0_f32),
        Q8_1 => dot!(q8_1::BlockQ8_1, q8_1::vec_dot_q8_1_f32),
        Q2_K => dot!(q2_k::BlockQ2K, q2_k::vec_dot_q2_k_f32),
        Q3_K => dot!(q3_k::BlockQ3K, q3_k::vec_dot_q3_k_f32),
        Q4_K => dot!(q4_k::BlockQ4K, q4_k::vec_dot_q4_k_f32, q4_k_f32),
        Q5_K => dot!(q5_k::BlockQ5K, q5_k::vec_dot_q5_k_f32),
        Q6_K => dot!(q6_k::BlockQ6K, q6_k::vec_dot_q6_k_f32, q6_k_f32),
        Q8_K => dot!(q8_k::BlockQ8K, q8_k::vec_dot_q8_k_f32),
        IQ4_NL => dot!(iq4_nl::BlockIQ4NL, iq4_nl::vec_dot_iq4_nl_f32),
        IQ4_XS => dot!(iq4_xs::BlockIQ4XS, iq4_xs::vec_dot_iq4_xs_f32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::ALL_TYPES;
    use bytemuck::Zeroable;
    use std::vec;
    use std::vec::Vec;

    /// Copies `bytes` to an odd address so the bytemuck cast fails for every block type
    /// with alignment > 1.
    fn misaligned(bytes: &[u8]) -> (Vec<u64>, usize) {
        let mut store = vec![0u64; bytes.len() / 8 + 2];
        let raw: &mut [u8] = bytemuck::cast_slice_mut(&mut store);
        raw[1..1 + bytes.len()].copy_from_slice(bytes);
        (store, bytes.len())
    }

    #[test]
    fn misaligned_inputs_give_the_same_results() {
        let mut rng = rng(7);
        for ty in ALL_TYPES {
            let n = 2048; // > 8 blocks of every type, so the chunked path loops
            let x = gaussian(&mut rng, n, 1.0);
            let a = gaussian(&mut rng, n, 1.0);
            let wq = quantize(ty, &x);
            let aq = quantize(ty.vec_dot_type(), &a);

            let (ws, wl) = misaligned(&wq);
            let wm = &bytemuck::cast_slice::<u64, u8>(&ws)[1..1 + wl];
            let (xs, xl) = misaligned(&aq);
            let xm = &bytemuck::cast_slice::<u64, u8>(&xs)[1..1 + xl];

            let mut d1 = vec![0.0f32; n];
            let mut d2 = vec![0.0f32; n];
            dequantize_row(ty, &wq, &mut d1);
            dequantize_row(ty, wm, &mut d2);
            assert_eq!(d1, d2, "{ty}: dequantize");

            let mut q2 = vec![0u8; wq.len() + 1];
            quantize_row(ty, &x, &mut q2[1..]);
            assert_eq!(&q2[1..], &wq[..], "{ty}: quantize into misaligned bytes");

            // Chunked sums group the blocks differently: equal up to f32 rounding.
            let scale: f32 = d1.iter().zip(&a).map(|(w, x)| (w * x).abs()).sum();
            let (v1, v2) = (vec_dot(ty, n, &wq, &aq), vec_dot(ty, n, wm, xm));
            assert!((v1 - v2).abs() <= 1e-5 * scale, "{ty}: vec_dot {v1} vs {v2}");
            let (f1, f2) = (vec_dot_f32(ty, &wq, &a), vec_dot_f32(ty, wm, &a));
            assert!((f1 - f2).abs() <= 1e-5 * scale, "{ty}: vec_dot_f32 {f1} vs {f2}");
        }
    }

    #[test]
    #[should_panic(expected = "not a whole number of q4_K blocks")]
    fn partial_blocks_are_rejected() {
        let mut dst = [0.0f32; 100];
        dequantize_row(GgmlType::Q4_K, &[0; 144], &mut dst);
    }

    #[test]
    #[should_panic(expected = "take 36 bytes, got 34")]
    fn wrong_activation_type_is_rejected() {
        // Q4_1 wants Q8_1 activations (36 bytes per 32), not Q8_0 (34).
        vec_dot(GgmlType::Q4_1, 32, &[0; 20], &[0; 34]);
    }

    #[test]
    fn misaligned_weighted_and_grid_calls_give_the_same_results() {
        let mut rng = rng(8);
        for ty in ALL_TYPES.into_iter().filter(|&t| has_block_grid(t)) {
            let n = 2048;
            let x = gaussian(&mut rng, n, 1.0);
            let imp = lognormal(&mut rng, n, 1.0);
            let q = quantize_weighted(ty, &x, &imp);
            let mut q2 = vec![0u8; q.len() + 1];
            quantize_row_weighted(ty, &x, &imp, &mut q2[1..]);
            assert_eq!(&q2[1..], &q[..], "{ty}: weighted quantize into misaligned bytes");

            let (bs, tsz) = (ty.block_size(), ty.type_size());
            let (mut s1, mut o1, mut s2, mut o2) = (vec![0.0; bs], vec![0.0; bs], vec![0.0; bs], vec![0.0; bs]);
            let (mut c1, mut c2) = (vec![0i32; bs], vec![0i32; bs]);
            for b in 0..n / bs {
                let (block, mis) = (&q[b * tsz..(b + 1) * tsz], &q2[1 + b * tsz..1 + (b + 1) * tsz]);
                assert_eq!(block_grid(ty, block, &mut s1, &mut o1), block_grid(ty, mis, &mut s2, &mut o2));
                assert_eq!((&s1, &o1), (&s2, &o2), "{ty}: block_grid on misaligned bytes");
                block_codes(ty, block, &mut c1);
                block_codes(ty, mis, &mut c2);
                assert_eq!(c1, c2, "{ty}: block_codes on misaligned bytes");
            }
            let mut codes = vec![0i32; bs];
            let (lo, hi) = block_grid(ty, &q[..tsz], &mut s1, &mut o1);
            for (i, c) in codes.iter_mut().enumerate() {
                *c = lo + (i as i32 * 7) % (hi - lo + 1);
            }
            let (mut a, mut b) = (q[..tsz].to_vec(), q2[..tsz + 1].to_vec());
            set_block_codes(ty, &mut a, &codes);
            set_block_codes(ty, &mut b[1..], &codes);
            assert_eq!(&a[..], &b[1..], "{ty}: set_block_codes on misaligned bytes");
        }
    }

    #[test]
    fn grid_code_ranges_are_the_documented_ones() {
        use GgmlType::*;
        let want = [
            (Q4_0, (0, 15)),
            (Q4_1, (0, 15)),
            (Q5_0, (0, 31)),
            (Q5_1, (0, 31)),
            (Q8_0, (-127, 127)),
            (Q2_K, (0, 3)),
            (Q3_K, (-4, 3)),
            (Q4_K, (0, 15)),
            (Q5_K, (0, 31)),
            (Q6_K, (-32, 31)),
        ];
        for (ty, range) in want {
            assert!(has_block_grid(ty));
            let block = quantize(ty, &vec![1.0; ty.block_size()]);
            let bs = ty.block_size();
            assert_eq!(block_grid(ty, &block, &mut vec![0.0; bs], &mut vec![0.0; bs]), range, "{ty}");
        }
        for ty in [F32, F16, BF16, Q8_1, Q8_K, IQ4_NL, IQ4_XS] {
            assert!(!has_block_grid(ty), "{ty}");
        }
    }

    #[test]
    fn grid_offsets_follow_the_formats() {
        // Q4_0: d = -0.5 (largest element -4 maps to code 0): offset -8 d = 4.
        let mut x = vec![0.0f32; 32];
        x[3] = -4.0;
        let q = quantize(GgmlType::Q4_0, &x);
        let (mut s, mut o) = (vec![0.0; 32], vec![0.0; 32]);
        block_grid(GgmlType::Q4_0, &q, &mut s, &mut o);
        assert_eq!((s[0], o[0]), (0.5, -4.0));
        // Q4_K: a block with d = 1, dmin = 0.5, sub-block 2 scale 3, min 4.
        let mut b = crate::q4_k::BlockQ4K::zeroed();
        b.d = half::f16::ONE;
        b.dmin = half::f16::from_f32(0.5);
        b.scales = crate::kquant::pack_scale_min_k4(&[0, 0, 3, 0, 0, 0, 0, 0], &[0, 0, 4, 0, 0, 0, 0, 0]);
        let (mut s, mut o) = (vec![0.0; 256], vec![0.0; 256]);
        block_grid(GgmlType::Q4_K, bytemuck::bytes_of(&b), &mut s, &mut o);
        assert_eq!((s[64], o[64], s[95], o[95], s[96], o[96]), (3.0, -2.0, 3.0, -2.0, 0.0, -0.0));
        // Q3_K: stored scale 0 means d * (0 - 32).
        let mut b = crate::q3_k::BlockQ3K::zeroed();
        b.d = half::f16::from_f32(0.25);
        block_grid(GgmlType::Q3_K, bytemuck::bytes_of(&b), &mut s, &mut o);
        assert_eq!((s[0], o[0]), (-8.0, 0.0));
    }

    #[test]
    fn float_types_ignore_importance() {
        let mut rng = rng(9);
        let x = gaussian(&mut rng, 64, 1.0);
        let imp = lognormal(&mut rng, 64, 1.0);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            assert_eq!(quantize_weighted(ty, &x, &imp), quantize(ty, &x), "{ty}");
        }
    }

    #[test]
    #[should_panic(expected = "q8_K is an activation-only type")]
    fn weighted_q8_k_is_rejected() {
        quantize_weighted(GgmlType::Q8_K, &[0.0; 256], &[1.0; 256]);
    }

    #[test]
    #[should_panic(expected = "q8_1 has no block grid")]
    fn grid_of_q8_1_is_rejected() {
        block_grid(GgmlType::Q8_1, &[0; 36], &mut [0.0; 32], &mut [0.0; 32]);
    }

    #[test]
    #[should_panic(expected = "f16 has no block grid")]
    fn set_codes_of_f16_is_rejected() {
        set_block_codes(GgmlType::F16, &mut [0; 2], &[0]);
    }

    #[test]
    #[should_panic(expected = "set_block_codes_q4_k: code 16 of element 5 is outside 0..=15")]
    fn out_of_range_codes_are_rejected() {
        let mut codes = vec![0i32; 256];
        codes[5] = 16;
        set_block_codes(GgmlType::Q4_K, &mut [0; 144], &codes);
    }

    #[test]
    #[should_panic(expected = "set_block_codes_q8_0: code -128 of element 0 is outside -127..=127")]
    fn q8_0_codes_exclude_minus_128() {
        let mut codes = vec![0i32; 32];
        codes[0] = -128;
        set_block_codes(GgmlType::Q8_0, &mut [0; 34], &codes);
    }

    #[test]
    #[should_panic(expected = "quantize_row_weighted: 31 importance values for 32 elements")]
    fn importance_length_is_checked() {
        quantize_weighted(GgmlType::Q4_0, &[0.0; 32], &[1.0; 31]);
    }

    #[test]
    #[should_panic(expected = "block_grid: `scale` needs 32 entries (one per element), got 31")]
    fn grid_lengths_are_checked() {
        block_grid(GgmlType::Q4_0, &[0; 18], &mut [0.0; 31], &mut [0.0; 32]);
    }

    #[test]
    fn all_zero_rows() {
        for ty in ALL_TYPES {
            let n = 512;
            let q = quantize(ty, &vec![0.0; n]);
            let mut d = vec![1.0f32; n];
            dequantize_row(ty, &q, &mut d);
            assert!(d.iter().all(|&v| v == 0.0), "{ty}");
            let aq = quantize(ty.vec_dot_type(), &vec![1.0; n]);
            assert_eq!(vec_dot(ty, n, &q, &aq), 0.0, "{ty}");
            assert_eq!(vec_dot_f32(ty, &q, &vec![1.0; n]), 0.0, "{ty}");
        }
    }
}
