//! The runtime-facing entry points: raw GGUF bytes in, checked lengths, per-type dispatch.
//!
//! (Kept out of `lib.rs` because the crate's `f32` module would shadow the primitive
//! `f32` type there.)

use crate::blocks::{dot_blocks, for_blocks, for_blocks_mut};
use crate::simd::{self, kernel_path, KernelPath};
use crate::GgmlType;
use crate::{bf16, f16, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k};

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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::ALL_TYPES;
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
