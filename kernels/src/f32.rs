//! F32: plain little-endian `f32`, one element per "block". Also home of the
//! vectorization-friendly f32 dot products every other module builds on.

/// Independent accumulators in the f32 dot products. 16 lanes = two AVX registers or
/// four SSE/NEON registers: enough independent add chains to hide the FP add latency,
/// and a shape LLVM auto-vectorizes without `unsafe` or intrinsics.
pub const LANES: usize = 16;

/// "Quantizes" to F32: a copy.
pub fn quantize_row_f32(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "quantize_row_f32: length mismatch");
    dst.copy_from_slice(src);
}

/// Dequantizes F32: a copy.
pub fn dequantize_row_f32(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "dequantize_row_f32: length mismatch");
    dst.copy_from_slice(src);
}

/// `a·b + c` rounded once (IEEE `fusedMultiplyAdd`), as the SIMD kernels' `fmadd` rounds it:
/// what a scalar reference uses where the kernels it checks fuse. One instruction on AArch64
/// and on x86-64 CPUs with FMA, `libm`'s exact software form elsewhere.
#[inline]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    crate::arch::fma_f32(a, b, c)
}

/// `Σ a[i] * b[i]`, accumulated in [`LANES`] independent partial sums over chunks, then
/// reduced pairwise. The lane structure (rather than one running sum) is what lets LLVM
/// keep the whole loop in SIMD registers; it also makes the rounding error grow like
/// `n / LANES` instead of `n`.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: length mismatch ({} vs {})", a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        fma_lanes(&mut acc, xa, xb);
    }
    let mut tail = 0.0f32;
    for (&x, &y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    reduce_lanes(&acc) + tail
}

/// `acc[k] += a[k] * b[k]` for one chunk of [`LANES`] elements (multiply then add;
/// Rust does not contract these into FMAs, so results do not depend on the CPU).
#[inline(always)]
pub(crate) fn fma_lanes(acc: &mut [f32; LANES], a: &[f32], b: &[f32]) {
    let (a, b) = (&a[..LANES], &b[..LANES]);
    for k in 0..LANES {
        acc[k] += a[k] * b[k];
    }
}

/// Sum of the lanes. (A plain in-order sum: a pairwise tree here made LLVM's SLP
/// vectorizer pick 2-wide vectors for the *loops* feeding the accumulators, costing
/// 2.5x in the Q8_0 dot.)
#[inline(always)]
pub(crate) fn reduce_lanes(acc: &[f32; LANES]) -> f32 {
    acc.iter().sum()
}

/// Dot product of a row of blocks (each dequantized to `QK` floats by `dequant`) with
/// f32 activations: each block is expanded into a stack buffer and multiplied into the
/// lane accumulators. `QK` must be a multiple of [`LANES`].
#[inline(always)]
pub(crate) fn dot_dequantized<B, const QK: usize>(w: &[B], x: &[f32], dequant: impl Fn(&B, &mut [f32; QK])) -> f32 {
    const { assert!(QK.is_multiple_of(LANES)) };
    assert_eq!(w.len() * QK, x.len(), "vec_dot_*_f32: {} blocks of {QK} do not match {} activations", w.len(), x.len());
    let mut acc = [0.0f32; LANES];
    let mut buf = [0.0f32; QK];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        dequant(b, &mut buf);
        for (bw, bx) in buf.chunks_exact(LANES).zip(xs.chunks_exact(LANES)) {
            fma_lanes(&mut acc, bw, bx);
        }
    }
    reduce_lanes(&acc)
}

/// Dot product of elements converted to f32 by `conv` (F16, BF16 rows) with f32
/// activations, converting [`LANES`] elements at a time.
#[inline(always)]
pub(crate) fn dot_converted<T: Copy>(w: &[T], x: &[f32], conv: impl Fn(T) -> f32) -> f32 {
    assert_eq!(w.len(), x.len(), "dot: length mismatch ({} vs {})", w.len(), x.len());
    let mut acc = [0.0f32; LANES];
    let mut buf = [0.0f32; LANES];
    let cw = w.chunks_exact(LANES);
    let cx = x.chunks_exact(LANES);
    let (tw, tx) = (cw.remainder(), cx.remainder());
    for (ww, xx) in cw.zip(cx) {
        for (o, &v) in buf.iter_mut().zip(ww) {
            *o = conv(v);
        }
        fma_lanes(&mut acc, &buf, xx);
    }
    let mut tail = 0.0f32;
    for (&v, &y) in tw.iter().zip(tx) {
        tail += conv(v) * y;
    }
    reduce_lanes(&acc) + tail
}

/// Dot product of two rows stored in the same 16-bit float format, both widened with `conv`
/// (the `vec_dot` of F16 and BF16, whose activation type is their own).
pub(crate) fn dot_both_converted<T: Copy>(w: &[T], x: &[T], conv: impl Fn(T) -> f32) -> f32 {
    assert_eq!(w.len(), x.len(), "dot: length mismatch ({} vs {})", w.len(), x.len());
    let mut acc = [0.0f32; LANES];
    let mut bw = [0.0f32; LANES];
    let mut bx = [0.0f32; LANES];
    let cw = w.chunks_exact(LANES);
    let cx = x.chunks_exact(LANES);
    let (tw, tx) = (cw.remainder(), cx.remainder());
    for (ww, xx) in cw.zip(cx) {
        for k in 0..LANES {
            bw[k] = conv(ww[k]);
            bx[k] = conv(xx[k]);
        }
        fma_lanes(&mut acc, &bw, &bx);
    }
    let mut tail = 0.0f32;
    for (&a, &b) in tw.iter().zip(tx) {
        tail += conv(a) * conv(b);
    }
    reduce_lanes(&acc) + tail
}

/// F32 · F32 (the `vec_dot` for F32 weights, whose activation type is F32).
pub fn vec_dot_f32_f32(w: &[f32], x: &[f32]) -> f32 {
    dot_f32(w, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    #[test]
    fn dot_f32_matches_f64_reference() {
        let mut rng = rng(1);
        for n in [0usize, 1, 15, 16, 17, 31, 256, 1000, 4099] {
            let a = gaussian(&mut rng, n, 1.0);
            let b = gaussian(&mut rng, n, 1.0);
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let abs_sum: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum();
            let got = dot_f32(&a, &b) as f64;
            // Chunked f32 summation: error <= ~(n/16 + 4) * eps * Σ|a b|; 1e-5 is loose
            // for n <= 4099 yet ~1e4x below any indexing mistake.
            assert!((got - exact).abs() <= 1e-5 * abs_sum + 1e-30, "n={n}: {got} vs {exact}");
        }
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn dot_f32_rejects_mismatched_lengths() {
        dot_f32(&[1.0; 3], &[1.0; 4]);
    }

    #[test]
    fn roundtrip_is_exact() {
        let e = gaussian_roundtrip_error(crate::GgmlType::F32, 4, 1000);
        assert_eq!(e, 0.0);
    }

    #[test]
    fn vec_dot_paths() {
        check_vec_dot(crate::GgmlType::F32, &[1, 17, 1024], 1e-6);
        check_vec_dot_f32(crate::GgmlType::F32, &[1, 17, 1024]);
    }

    #[test]
    fn reduce_lanes_sums_all() {
        let acc: [f32; LANES] = core::array::from_fn(|i| (i + 1) as f32);
        assert_eq!(reduce_lanes(&acc), (LANES * (LANES + 1) / 2) as f32);
    }
}
