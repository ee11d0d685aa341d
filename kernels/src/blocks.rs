//! Viewing raw GGUF bytes as typed blocks.
//!
//! Every block struct in this crate is `#[repr(C)]`, `Pod`, and laid out exactly as in
//! ggml (little-endian fields, no padding). A GGUF tensor is aligned to at least 8 bytes
//! and its blocks sit at multiples of the block size, which is a multiple of the block's
//! alignment (2 for the `f16`-scaled blocks, 4 for Q8_K and f32), so the zero-copy cast
//! `&[u8] -> &[Block]` normally succeeds. When it does not (a caller handed us a
//! misaligned sub-slice), the helpers here copy a few blocks at a time into an aligned
//! stack buffer with `bytemuck::pod_read_unaligned` instead of panicking. No `unsafe`.

use bytemuck::Pod;
use core::mem::size_of;

/// Blocks copied per step on the (rare) misaligned path.
const CHUNK: usize = 8;

/// Calls `f(first_block_index, blocks)` over all of `bytes` viewed as `B`s: once with the
/// whole slice when it is suitably aligned, otherwise once per chunk of at most
/// [`CHUNK`] blocks copied into an aligned buffer.
///
/// `bytes.len()` must be a multiple of `size_of::<B>()` (checked by the callers).
pub(crate) fn for_blocks<B: Pod>(bytes: &[u8], mut f: impl FnMut(usize, &[B])) {
    debug_assert_eq!(bytes.len() % size_of::<B>(), 0);
    if let Ok(blocks) = bytemuck::try_cast_slice::<u8, B>(bytes) {
        f(0, blocks);
        return;
    }
    let mut buf = [B::zeroed(); CHUNK];
    for (ci, chunk) in bytes.chunks(CHUNK * size_of::<B>()).enumerate() {
        let n = chunk.len() / size_of::<B>();
        for (dst, src) in buf.iter_mut().zip(chunk.chunks_exact(size_of::<B>())) {
            *dst = bytemuck::pod_read_unaligned(src);
        }
        f(ci * CHUNK, &buf[..n]);
    }
}

/// Mutable counterpart of [`for_blocks`]: `f` fills the blocks, which are then written
/// back to `bytes` if a copy was needed.
pub(crate) fn for_blocks_mut<B: Pod>(bytes: &mut [u8], mut f: impl FnMut(usize, &mut [B])) {
    debug_assert_eq!(bytes.len() % size_of::<B>(), 0);
    if let Ok(blocks) = bytemuck::try_cast_slice_mut::<u8, B>(bytes) {
        f(0, blocks);
        return;
    }
    let mut buf = [B::zeroed(); CHUNK];
    for (ci, chunk) in bytes.chunks_mut(CHUNK * size_of::<B>()).enumerate() {
        let n = chunk.len() / size_of::<B>();
        f(ci * CHUNK, &mut buf[..n]);
        chunk.copy_from_slice(bytemuck::cast_slice(&buf[..n]));
    }
}

/// Dot product of two block rows given as bytes: `f(w_blocks, x_blocks)` is called on
/// matching runs of blocks (the same number of each) and the partial results summed.
/// In the aligned case this is a single call over the whole rows.
pub(crate) fn dot_blocks<W: Pod, X: Pod>(w: &[u8], x: &[u8], f: impl Fn(&[W], &[X]) -> f32) -> f32 {
    debug_assert_eq!(w.len() / size_of::<W>(), x.len() / size_of::<X>());
    if let (Ok(wb), Ok(xb)) = (bytemuck::try_cast_slice::<u8, W>(w), bytemuck::try_cast_slice::<u8, X>(x)) {
        return f(wb, xb);
    }
    let mut sum = 0.0f32;
    for_blocks::<W>(w, |i, wb| {
        let xs = &x[i * size_of::<X>()..(i + wb.len()) * size_of::<X>()];
        for_blocks::<X>(xs, |_, xb| sum += f(wb, xb));
    });
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q4_0::BlockQ4_0;
    use half::f16;

    #[test]
    fn misaligned_bytes_are_read_blockwise() {
        // 20 blocks at an odd offset: the cast fails, the chunked copy must see them all.
        let blocks: [BlockQ4_0; 20] =
            core::array::from_fn(|i| BlockQ4_0 { d: f16::from_f32(i as f32), qs: [i as u8; 16] });
        #[repr(C, align(8))]
        struct Aligned([u8; 20 * 18 + 1]);
        let mut raw = Aligned([0u8; 20 * 18 + 1]);
        raw.0[1..].copy_from_slice(bytemuck::cast_slice(&blocks));
        let unaligned = &raw.0[1..];
        assert!(bytemuck::try_cast_slice::<u8, BlockQ4_0>(unaligned).is_err());
        let mut seen = 0;
        for_blocks::<BlockQ4_0>(unaligned, |first, bs| {
            for (k, b) in bs.iter().enumerate() {
                assert_eq!(*b, blocks[first + k]);
                seen += 1;
            }
        });
        assert_eq!(seen, 20);

        let mut out = Aligned([0u8; 20 * 18 + 1]);
        for_blocks_mut::<BlockQ4_0>(&mut out.0[1..], |first, bs| {
            bs.copy_from_slice(&blocks[first..first + bs.len()]);
        });
        assert_eq!(&out.0[1..], unaligned);
    }
}
