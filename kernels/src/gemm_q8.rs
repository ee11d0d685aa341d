//! Integer matrix × matrix for prefill: weight rows in a block type against activations
//! quantized to 8 bits, with VNNI (`vpdpbusd`) on AVX-512 and a scalar reference.
//!
//! Every block type with a grid (see [`block_grid`](crate::block_grid)) stores, per
//! sub-block `j` of `G` elements (G = 32, or 16 for Q2_K, Q3_K and Q6_K), weights
//! `w_i = s_j · u_i + m_j` with unsigned 8-bit codes `u_i`. Activations are quantized per
//! 32 elements, `x_i ≈ dx · q_i` with `q_i` in `-127..=127` ([`ActsQ8`]). Then
//!
//! ```text
//! Σ_{i ∈ j} w_i x_i ≈ (s_j dx) · Σ u_i q_i  +  m_j · (dx Σ q_i)
//! ```
//!
//! an exact integer dot product and two scalings per sub-block and token.
//!
//! Weights are unpacked ("packed", in BLAS terms) once per tile of [`GEMM_Q8_ROWS`] = 16
//! rows into a scratch [`PackedTile`] — a transient copy of 16 rows, never of the matrix, so
//! the file map stays the only resident copy — laid out so that one 64-byte vector holds 4
//! consecutive codes of each of the 16 rows: `u[(c / 4) * 64 + r * 4 + c % 4]` for row `r`,
//! column `c`. A `vpdpbusd` of that vector against 4 bytes of one token broadcast to all
//! lanes adds 4 products to each row's i32 lane; the hot loop does this for 12 tokens per
//! weight load (`gemm_q8_16x12`), and the tile is reused for every token.

use alloc::vec::Vec;

use crate::f16::f16_to_f32;
use crate::{GgmlType, KernelPath};

/// Rows per packed weight tile (the lanes of one 512-bit vector of i32).
pub const GEMM_Q8_ROWS: usize = 16;
/// Elements per activation block (one scale each).
pub(crate) const QA: usize = 32;
/// Tokens per step of the AVX-512 hot loop.
#[cfg(target_arch = "x86_64")]
pub(crate) const NT: usize = 12;

/// Activations quantized for [`gemm_q8`]: per token, per 32 elements, `x ≈ d · q`.
#[derive(Clone, Debug, Default)]
pub struct ActsQ8 {
    pub(crate) n_tok: usize,
    pub(crate) k: usize,
    /// (n_tok, k): the codes, `|q| ≤ 127`.
    pub(crate) q: Vec<i8>,
    /// (n_tok, k / 32): the scales `d = amax / 127`.
    pub(crate) d: Vec<f32>,
    /// (n_tok, k / 16): `d · Σ q` over each 16 elements.
    pub(crate) ds16: Vec<f32>,
    /// (n_tok, k / 32): `d · Σ q` over each 32 elements.
    pub(crate) ds32: Vec<f32>,
}

impl ActsQ8 {
    /// Quantizes `x`: (n_tok, k) row-major, `k` a multiple of 32.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        assert!(k > 0 && k.is_multiple_of(QA), "ActsQ8: row length {k} is not a positive multiple of 32");
        assert!(x.len().is_multiple_of(k), "ActsQ8: {} values are not whole rows of {k}", x.len());
        self.reset(x.len() / k, k);
        quantize_acts(x, &mut self.q, &mut self.d, &mut self.ds16, &mut self.ds32);
    }

    /// Sizes the buffers for `n_tok` tokens of `k` elements (`k` a positive multiple of 32),
    /// to be filled through [`parts_mut`](Self::parts_mut).
    pub fn reset(&mut self, n_tok: usize, k: usize) {
        assert!(k > 0 && k.is_multiple_of(QA), "ActsQ8: row length {k} is not a positive multiple of 32");
        self.n_tok = n_tok;
        self.k = k;
        self.q.resize(n_tok * k, 0);
        self.d.resize(n_tok * k / QA, 0.0);
        self.ds16.resize(n_tok * k / 16, 0.0);
        self.ds32.resize(n_tok * k / QA, 0.0);
    }

    /// The tokens split into parts of `per` tokens (the last may be shorter), each quantized on
    /// its own by [`ActsQ8Part::quantize`] — e.g. on different threads. Same bits as
    /// [`quantize`](Self::quantize).
    pub fn parts_mut(&mut self, per: usize) -> Vec<ActsQ8Part<'_>> {
        assert!(per > 0, "ActsQ8: parts of 0 tokens");
        let k = self.k;
        let q = self.q.chunks_mut(per * k);
        let d = self.d.chunks_mut(per * k / QA);
        let ds16 = self.ds16.chunks_mut(per * k / 16);
        let ds32 = self.ds32.chunks_mut(per * k / QA);
        q.zip(d).zip(ds16.zip(ds32)).map(|((q, d), (ds16, ds32))| ActsQ8Part { k, q, d, ds16, ds32 }).collect()
    }

    /// Tokens held.
    pub fn n_tok(&self) -> usize {
        self.n_tok
    }

    /// Elements per token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `d · Σ q` per `g` elements (g = 16 or 32), (n_tok, k / g).
    pub(crate) fn ds(&self, g: usize) -> &[f32] {
        if g == 16 {
            &self.ds16
        } else {
            &self.ds32
        }
    }
}

/// Some consecutive tokens of an [`ActsQ8`], quantized on their own.
#[derive(Debug)]
pub struct ActsQ8Part<'a> {
    k: usize,
    q: &'a mut [i8],
    d: &'a mut [f32],
    ds16: &'a mut [f32],
    ds32: &'a mut [f32],
}

impl ActsQ8Part<'_> {
    /// Tokens in this part.
    pub fn n_tok(&self) -> usize {
        self.q.len() / self.k
    }

    /// Quantizes this part's tokens from `x` (`n_tok() · k` values).
    pub fn quantize(&mut self, x: &[f32]) {
        assert_eq!(x.len(), self.q.len(), "ActsQ8Part: {} values for {} tokens of {}", x.len(), self.n_tok(), self.k);
        quantize_acts(x, self.q, self.d, self.ds16, self.ds32);
    }
}

/// The activation quantizer on [`kernel_path`](crate::kernel_path).
fn quantize_acts(x: &[f32], q: &mut [i8], d: &mut [f32], ds16: &mut [f32], ds32: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel_path() == KernelPath::Avx512 {
        crate::arch::x86::q8_avx512::quantize_acts_avx512(x, q, d, ds16, ds32);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernel_path() == KernelPath::Avx2 {
        crate::arch::x86::q8_avx2::quantize_acts_avx2(x, q, d, ds16, ds32);
        return;
    }
    quantize_acts_scalar(x, q, d, ds16, ds32);
}

/// The reference activation quantizer: per 32 elements `d = amax / 127`, `q = round(x · (1/d))`
/// (ties away from zero, as ggml's `quantize_row_q8_0/1`: measured on SmolLM2 Q4_1, ties to
/// even raised WikiText-2 perplexity by 0.07 at 10 chunks, so ties are common in real
/// activations), `ds16` / `ds32` = `d · Σ q`.
pub(crate) fn quantize_acts_scalar(x: &[f32], q: &mut [i8], d: &mut [f32], ds16: &mut [f32], ds32: &mut [f32]) {
    let blocks = x.chunks_exact(QA).zip(q.chunks_exact_mut(QA));
    let params = d.iter_mut().zip(ds32.iter_mut()).zip(ds16.chunks_exact_mut(2));
    for ((xb, qb), ((d, ds32), ds16)) in blocks.zip(params) {
        let amax = xb.iter().fold(0.0f32, |a, &v| a.max(libm::fabsf(v)));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sums = [0i32; 2];
        for (i, (q, &v)) in qb.iter_mut().zip(xb).enumerate() {
            // |v · inv| ≤ 127 up to rounding; the clamp also keeps the cast exact.
            *q = libm::roundf(v * inv).clamp(-127.0, 127.0) as i8;
            sums[i / 16] += *q as i32;
        }
        *d = scale;
        ds16[0] = scale * sums[0] as f32;
        ds16[1] = scale * sums[1] as f32;
        *ds32 = scale * (sums[0] + sums[1]) as f32;
    }
}

/// A tile of up to 16 weight rows unpacked for the hot loop (zero rows pad a short tile).
#[derive(Clone, Debug, Default)]
pub struct PackedTile {
    pub(crate) k: usize,
    /// Elements per scale group: 32, or 16 for Q2_K / Q3_K / Q6_K.
    pub(crate) g: usize,
    /// (k / 4, 16, 4): unsigned codes, 4 consecutive columns of each row per 64 bytes.
    pub(crate) u: Vec<u8>,
    /// (k / g, 16): the scale of each group of each row.
    pub(crate) s: Vec<f32>,
    /// (k / g, 16): the offset of each group of each row.
    pub(crate) m: Vec<f32>,
}

/// Elements per scale group of `ty` in the packed layout (the table's unpacked view).
fn group_len(ty: GgmlType) -> usize {
    crate::type_kernels(ty).map_or(32, |t| t.group)
}

/// Whether [`gemm_q8`] takes weights of type `ty` with rows of `k` elements.
pub fn gemm_q8_supported(ty: GgmlType, k: usize) -> bool {
    crate::type_kernels(ty).is_some() && k > 0 && k.is_multiple_of(ty.block_size()) && k.is_multiple_of(QA)
}

impl PackedTile {
    /// Unpacks `n_rows ≤ 16` rows of `ty` (`rows`: `n_rows` encoded rows of `k` elements).
    pub fn pack(&mut self, ty: GgmlType, rows: &[u8], n_rows: usize, k: usize) {
        self.pack_on(crate::kernel_path(), ty, rows, n_rows, k)
    }

    /// [`PackedTile::pack`] with `path`'s packer: on AVX-512, Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0
    /// rows are transposed into the tile with dword permutes (the same tile, bit for bit, as the
    /// scalar packer's).
    pub fn pack_on(&mut self, path: KernelPath, ty: GgmlType, rows: &[u8], n_rows: usize, k: usize) {
        assert!(gemm_q8_supported(ty, k), "PackedTile: {ty} rows of {k} elements are not supported");
        assert!(n_rows <= GEMM_Q8_ROWS, "PackedTile: {n_rows} rows, at most {GEMM_Q8_ROWS}");
        let rb = ty.row_bytes(k).unwrap_or(0);
        assert_eq!(rows.len(), n_rows * rb, "PackedTile: {} bytes for {n_rows} rows of {rb}", rows.len());
        let g = group_len(ty);
        self.k = k;
        self.g = g;
        self.u.clear();
        self.u.resize(k * GEMM_Q8_ROWS, 0);
        self.s.clear();
        self.s.resize(k / g * GEMM_Q8_ROWS, 0.0);
        self.m.clear();
        self.m.resize(k / g * GEMM_Q8_ROWS, 0.0);
        #[cfg(target_arch = "x86_64")]
        if path == KernelPath::Avx512
            && path.is_available()
            && matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0)
            && rb * GEMM_Q8_ROWS <= i32::MAX as usize
        {
            // SAFETY: AVX-512 is available; `rows` holds `n_rows ≤ 16` rows of `rb` bytes
            // (asserted above), `u`, `s`, `m` the tile of `k` columns (sized above).
            unsafe {
                crate::arch::x86::q8_avx512::pack_tile_avx512(
                    ty,
                    rows,
                    rb,
                    n_rows,
                    k,
                    &mut self.u,
                    &mut self.s,
                    &mut self.m,
                )
            };
            return;
        }
        let _ = path;
        for (r, row) in rows.chunks_exact(rb.max(1)).take(n_rows).enumerate() {
            match ty {
                GgmlType::Q4_0 => self.pack_q4(r, row, 18, |b| (f16_at(b, 0), -8.0 * f16_at(b, 0))),
                GgmlType::Q4_1 => self.pack_q4(r, row, 20, |b| (f16_at(b, 0), f16_at(b, 2))),
                GgmlType::Q8_0 => self.pack_q8_0(r, row),
                _ => self.pack_grid(ty, r, row),
            }
        }
    }

    /// Q4_0 / Q4_1: `bytes`-byte blocks ending in 16 bytes of nibbles (element j low, j + 16 high).
    fn pack_q4(&mut self, r: usize, row: &[u8], bytes: usize, params: impl Fn(&[u8]) -> (f32, f32)) {
        for (b, blk) in row.chunks_exact(bytes).enumerate() {
            let (s, m) = params(blk);
            self.s[b * GEMM_Q8_ROWS + r] = s;
            self.m[b * GEMM_Q8_ROWS + r] = m;
            let qs = &blk[bytes - 16..];
            // Four nibble bytes at a time: elements 4j.. (low) and 16 + 4j.. (high).
            for j in 0..4 {
                let v = u32::from_le_bytes([qs[4 * j], qs[4 * j + 1], qs[4 * j + 2], qs[4 * j + 3]]);
                let lo = (v & 0x0f0f_0f0f).to_le_bytes();
                let hi = ((v >> 4) & 0x0f0f_0f0f).to_le_bytes();
                let at_lo = (b * 8 + j) * 64 + r * 4;
                let at_hi = (b * 8 + 4 + j) * 64 + r * 4;
                self.u[at_lo..at_lo + 4].copy_from_slice(&lo);
                self.u[at_hi..at_hi + 4].copy_from_slice(&hi);
            }
        }
    }

    /// Q8_0: `u = q + 128`, `m = -128 d`.
    fn pack_q8_0(&mut self, r: usize, row: &[u8]) {
        for (b, blk) in row.chunks_exact(34).enumerate() {
            let d = f16_at(blk, 0);
            self.s[b * GEMM_Q8_ROWS + r] = d;
            self.m[b * GEMM_Q8_ROWS + r] = -128.0 * d;
            for j in 0..8 {
                let v = u32::from_le_bytes([blk[2 + 4 * j], blk[3 + 4 * j], blk[4 + 4 * j], blk[5 + 4 * j]]);
                let at = (b * 8 + j) * 64 + r * 4;
                self.u[at..at + 4].copy_from_slice(&(v ^ 0x8080_8080).to_le_bytes());
            }
        }
    }

    /// Any type of the [kernel table](crate::kernel_table), through its `unpack` (codes, and
    /// per group a scale and an offset).
    fn pack_grid(&mut self, ty: GgmlType, r: usize, row: &[u8]) {
        let Some(tk) = crate::type_kernels(ty) else { unreachable!("checked by gemm_q8_supported") };
        let (bs, g) = (ty.block_size(), self.g);
        let (mut u, mut s, mut m) = ([0u8; 256], [0.0f32; 16], [0.0f32; 16]);
        for (b, blk) in row.chunks_exact(ty.type_size()).enumerate() {
            (tk.unpack)(blk, &mut u[..bs], &mut s[..bs / g], &mut m[..bs / g]);
            for (c4, u4) in u[..bs].chunks_exact(4).enumerate() {
                let at = (b * bs / 4 + c4) * 64 + r * 4;
                self.u[at..at + 4].copy_from_slice(u4);
            }
            for j in 0..bs / g {
                let at = (b * bs / g + j) * GEMM_Q8_ROWS + r;
                self.s[at] = s[j];
                self.m[at] = m[j];
            }
        }
    }
}

/// The f16 at `b[at..at + 2]` as f32.
#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])))
}

/// `out[t][r] = Σ_c w[r][c] · x[t][c]` for the `n_rows` rows of `w` (type `ty`, rows of
/// `acts.k()` elements) and the `n_tok` tokens of `acts` (`out`: one slice of `n_rows` per
/// token, e.g. this call's share of each token's output row), on
/// [`kernel_path`](crate::kernel_path). `tile` is scratch space, reused across calls.
pub fn gemm_q8(ty: GgmlType, w: &[u8], n_rows: usize, acts: &ActsQ8, out: &mut [&mut [f32]], tile: &mut PackedTile) {
    gemm_q8_with(crate::kernel_path(), ty, w, n_rows, acts, out, tile)
}

/// [`gemm_q8`] on an explicit kernel path (for tests and benchmarks; panics if the CPU lacks it).
pub fn gemm_q8_on(
    path: KernelPath,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    acts: &ActsQ8,
    out: &mut [&mut [f32]],
    tile: &mut PackedTile,
) {
    assert!(path.is_available(), "gemm_q8_on: kernel path {path} is not available here");
    gemm_q8_with(path, ty, w, n_rows, acts, out, tile)
}

fn gemm_q8_with(
    path: KernelPath,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    acts: &ActsQ8,
    out: &mut [&mut [f32]],
    tile: &mut PackedTile,
) {
    let (k, n_tok) = (acts.k, acts.n_tok);
    assert!(gemm_q8_supported(ty, k), "gemm_q8: {ty} rows of {k} elements are not supported");
    let rb = ty.row_bytes(k).unwrap_or(0);
    assert_eq!(w.len(), n_rows * rb, "gemm_q8: {} bytes for {n_rows} rows of {rb}", w.len());
    assert_eq!(out.len(), n_tok, "gemm_q8: {} output rows for {n_tok} tokens", out.len());
    assert!(out.iter().all(|o| o.len() == n_rows), "gemm_q8: output rows must hold {n_rows} values");
    let mut r0 = 0;
    while r0 < n_rows {
        let nr = GEMM_Q8_ROWS.min(n_rows - r0);
        tile.pack_on(path, ty, &w[r0 * rb..(r0 + nr) * rb], nr, k);
        match path {
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => crate::arch::x86::q8_avx512::gemm_q8_16xn_avx512(tile, acts, r0, nr, out),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => crate::arch::x86::q8_avx2::gemm_q8_16xn_avx2(tile, acts, r0, nr, out),
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            KernelPath::Neon | KernelPath::NeonDotprod | KernelPath::NeonI8mm => {
                crate::arch::arm::q8_neon::gemm_q8_16xn(path, tile, acts, r0, nr, out)
            }
            _ => gemm_q8_16xn_scalar(tile, acts, r0, nr, out),
        }
        r0 += nr;
    }
}

/// The reference for one tile: rows `0..nr` of `tile` against every token `t`, into
/// `out[t][r0..r0 + nr]`.
pub fn gemm_q8_16xn_scalar(tile: &PackedTile, acts: &ActsQ8, r0: usize, nr: usize, out: &mut [&mut [f32]]) {
    let (k, g, n_tok) = (tile.k, tile.g, acts.n_tok);
    assert_eq!(acts.k, k, "gemm_q8: activation rows of {} vs weight rows of {k}", acts.k);
    let ds = acts.ds(g);
    for t in 0..n_tok {
        let q = &acts.q[t * k..(t + 1) * k];
        for r in 0..nr {
            let mut acc = 0.0f32;
            for j in 0..k / g {
                let mut dot = 0i32;
                for (c, &qc) in q.iter().enumerate().take((j + 1) * g).skip(j * g) {
                    dot += tile.u[(c / 4) * 64 + r * 4 + c % 4] as i32 * qc as i32;
                }
                let (s, m) = (tile.s[j * GEMM_Q8_ROWS + r], tile.m[j * GEMM_Q8_ROWS + r]);
                let dx = acts.d[t * (k / QA) + j * g / QA];
                // The SIMD kernels' arithmetic (every path, same bits): the group's value in
                // one fused step over its offset term, then added to the row's sum.
                acc += crate::f32::fma(dot as f32, s * dx, m * ds[t * (k / g) + j]);
            }
            out[t][r0 + r] = acc;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_util::rng;
    use alloc::vec;
    use rand::rngs::StdRng;
    use rand::Rng;

    /// Random rows of `ty`: values with an outlier now and then, so scales vary.
    fn weights(ty: GgmlType, n_rows: usize, k: usize, rng: &mut StdRng) -> Vec<u8> {
        let rb = ty.row_bytes(k).unwrap();
        let mut w = vec![0u8; n_rows * rb];
        let mut row = vec![0.0f32; k];
        for r in 0..n_rows {
            for v in row.iter_mut() {
                *v = rng.gen_range(-1.0f32..1.0) * if rng.gen_range(0.0f32..1.0) < 0.05 { 4.0 } else { 1.0 };
            }
            crate::quantize_row(ty, &row, &mut w[r * rb..(r + 1) * rb]);
        }
        w
    }

    /// (n_tok, n_rows) as one slice per token.
    pub(crate) fn rows_of(out: &mut [f32], n_rows: usize) -> Vec<&mut [f32]> {
        out.chunks_exact_mut(n_rows).collect()
    }

    fn acts(n_tok: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n_tok * k).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
    }

    /// Every type in the kernel table: every type the gemm takes (the block-grid types and
    /// IQ4_NL / IQ4_XS).
    fn grid_types() -> impl Iterator<Item = GgmlType> {
        crate::kernel_table().iter().map(|r| r.ty)
    }

    /// Every packer builds the scalar packer's tile, bit for bit (scales, offsets, codes; rows
    /// past `n_rows` zero), for every row count of a tile.
    #[test]
    fn every_packer_builds_the_same_tile() {
        let mut rng = rng(11);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0] {
            let k = 576;
            let w = weights(ty, GEMM_Q8_ROWS, k, &mut rng);
            let rb = ty.row_bytes(k).unwrap();
            for n in 1..=GEMM_Q8_ROWS {
                let mut want = PackedTile::default();
                want.pack_on(KernelPath::Scalar, ty, &w[..n * rb], n, k);
                let mut got = PackedTile::default();
                // A tile reused from a larger packing: the rows past `n` must come back zero.
                got.pack_on(crate::kernel_path(), ty, &w, GEMM_Q8_ROWS, k);
                got.pack_on(crate::kernel_path(), ty, &w[..n * rb], n, k);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(want.u, got.u, "{ty} {n} rows: codes");
                assert_eq!(bits(&want.s), bits(&got.s), "{ty} {n} rows: scales");
                assert_eq!(bits(&want.m), bits(&got.m), "{ty} {n} rows: offsets");
            }
        }
    }

    #[test]
    fn packed_tile_holds_the_dequantized_weights() {
        let mut rng = rng(7);
        for ty in grid_types() {
            let k = 512;
            let w = weights(ty, 5, k, &mut rng);
            let mut tile = PackedTile::default();
            tile.pack(ty, &w, 5, k);
            let rb = ty.row_bytes(k).unwrap();
            let mut deq = vec![0.0f32; k];
            for r in 0..GEMM_Q8_ROWS {
                if r < 5 {
                    crate::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut deq);
                }
                for (c, &want) in deq.iter().enumerate() {
                    let j = c / tile.g;
                    let u = tile.u[(c / 4) * 64 + r * 4 + c % 4] as f32;
                    let got = tile.s[j * GEMM_Q8_ROWS + r] * u + tile.m[j * GEMM_Q8_ROWS + r];
                    let want = if r < 5 { want } else { 0.0 };
                    // s·u + m vs the dequantizer's own rounding order: a few ulps of the block's range.
                    let bound = 4.0 * f32::EPSILON * (tile.s[j * GEMM_Q8_ROWS + r].abs() * 255.0 + want.abs());
                    assert!((got - want).abs() <= bound, "{ty} row {r} col {c}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn activation_codes_reproduce_the_input() {
        let mut rng = rng(3);
        let x = acts(3, 96, &mut rng);
        let mut a = ActsQ8::default();
        a.quantize(&x, 96);
        for (b, xb) in x.chunks_exact(32).enumerate() {
            let d = a.d[b];
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(d, amax / 127.0);
            for (i, &v) in xb.iter().enumerate() {
                assert!((a.q[b * 32 + i] as f32 * d - v).abs() <= d * 0.5 + 1e-6);
            }
            let sum: i32 = a.q[b * 32..b * 32 + 32].iter().map(|&q| q as i32).sum();
            assert_eq!(a.ds32[b], d * sum as f32);
        }
        // Every path quantizes to the same bits.
        let mut b = ActsQ8::default();
        quantize_acts_scalar(
            &x,
            {
                b.q.resize(x.len(), 0);
                &mut b.q
            },
            {
                b.d.resize(x.len() / 32, 0.0);
                &mut b.d
            },
            {
                b.ds16.resize(x.len() / 16, 0.0);
                &mut b.ds16
            },
            {
                b.ds32.resize(x.len() / 32, 0.0);
                &mut b.ds32
            },
        );
        assert_eq!((&a.q, &a.d, &a.ds16, &a.ds32), (&b.q, &b.d, &b.ds16, &b.ds32));
        // Ties round away from zero on every path (amax 127: d = 1, codes = values).
        let ties: Vec<f32> = (0..32).map(|i| if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }).collect();
        a.quantize(&ties, 32);
        let want: Vec<i8> = ties.iter().map(|&v| libm::roundf(v) as i8).collect();
        assert_eq!(a.q, want);
        assert_eq!((a.q[1], a.q[16], a.q[17]), (-15, 1, 2));
        // All-zero and tiny rows quantize to zeros without NaN.
        a.quantize(&[0.0; 32], 32);
        assert!(a.q.iter().all(|&q| q == 0) && a.d[0] == 0.0);
    }

    #[test]
    fn parts_quantize_to_the_same_bits_as_the_whole() {
        let mut rng = rng(4);
        let x = acts(11, 64, &mut rng);
        let mut whole = ActsQ8::default();
        whole.quantize(&x, 64);
        let mut split = ActsQ8::default();
        split.reset(11, 64);
        let mut t0 = 0;
        for mut part in split.parts_mut(3) {
            let n = part.n_tok();
            part.quantize(&x[t0 * 64..(t0 + n) * 64]);
            t0 += n;
        }
        assert_eq!(t0, 11);
        assert_eq!((&whole.q, &whole.d, &whole.ds16, &whole.ds32), (&split.q, &split.d, &split.ds16, &split.ds32));
    }

    /// The scalar reference against f32 arithmetic on the dequantized weights: the only error
    /// is the activations' rounding, at most `d/2` per element, so per output
    /// `|err| ≤ Σ_c |w_c| · d_c / 2` (plus f32 summation slack).
    #[test]
    fn scalar_reference_matches_f32_within_the_activation_rounding() {
        let mut rng = rng(11);
        for ty in grid_types() {
            let (n_rows, n_tok, k) = (19, 5, 512);
            let w = weights(ty, n_rows, k, &mut rng);
            let x = acts(n_tok, k, &mut rng);
            let mut a = ActsQ8::default();
            a.quantize(&x, k);
            let mut out = vec![0.0f32; n_rows * n_tok];
            gemm_q8_on(
                KernelPath::Scalar,
                ty,
                &w,
                n_rows,
                &a,
                &mut rows_of(&mut out, n_rows),
                &mut PackedTile::default(),
            );
            let rb = ty.row_bytes(k).unwrap();
            let mut wr = vec![0.0f32; k];
            for r in 0..n_rows {
                crate::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut wr);
                for t in 0..n_tok {
                    let xt = &x[t * k..(t + 1) * k];
                    let exact: f64 = wr.iter().zip(xt).map(|(&p, &q)| p as f64 * q as f64).sum();
                    let mag: f64 = wr.iter().zip(xt).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
                    let round: f64 = wr
                        .iter()
                        .enumerate()
                        .map(|(c, &p)| p.abs() as f64 * a.d[t * k / 32 + c / 32] as f64 * 0.5)
                        .sum();
                    let bound = round + 1e-5 * mag + 1e-6;
                    let got = out[t * n_rows + r] as f64;
                    assert!((got - exact).abs() <= bound, "{ty} row {r} token {t}: {got} vs {exact} (bound {bound})");
                }
            }
        }
    }

    /// Every SIMD path against the scalar reference: the integer sums are exact and the f32
    /// scaling is the same fused step per group, added in the same order: the same bits.
    #[test]
    fn simd_paths_match_the_scalar_reference() {
        let mut rng = rng(5);
        for path in crate::available_kernel_paths() {
            for ty in grid_types() {
                for (n_rows, n_tok, k) in [(16, 12, 256), (35, 29, 512), (3, 1, 256), (16, 17, 1536)] {
                    let w = weights(ty, n_rows, k, &mut rng);
                    check_gemm(path, ty, &w, n_rows, &acts(n_tok, k, &mut rng), k);
                }
            }
        }
    }

    /// `path`'s gemm against the scalar reference on `x` (n_tok, k): the same bits.
    pub(crate) fn check_gemm(path: KernelPath, ty: GgmlType, w: &[u8], n_rows: usize, x: &[f32], k: usize) {
        let n_tok = x.len() / k;
        let mut a = ActsQ8::default();
        a.quantize(x, k);
        let mut want = vec![0.0f32; n_rows * n_tok];
        let mut got = vec![0.0f32; n_rows * n_tok];
        let mut tile = PackedTile::default();
        gemm_q8_on(KernelPath::Scalar, ty, w, n_rows, &a, &mut rows_of(&mut want, n_rows), &mut tile);
        gemm_q8_on(path, ty, w, n_rows, &a, &mut rows_of(&mut got, n_rows), &mut tile);
        for r in 0..n_rows {
            for t in 0..n_tok {
                let (g, e) = (got[t * n_rows + r], want[t * n_rows + r]);
                // Every path performs the reference's fused steps in its order: the same bits.
                assert_eq!(g.to_bits(), e.to_bits(), "{path} {ty} {n_rows}x{n_tok}x{k} row {r} token {t}: {g} vs {e}");
            }
        }
    }

    /// `path`'s gemv against the scalar reference on one token `x`, with the same bound as
    /// [`check_gemm`]; returns the reference outputs and the quantized token.
    pub(crate) fn check_gemv(path: KernelPath, ty: GgmlType, w: &[u8], n_rows: usize, x: &[f32]) -> (Vec<f32>, VecQ8) {
        let k = x.len();
        let mut v = VecQ8::default();
        v.quantize_for(path, x);
        let (mut want, mut got) = (vec![0.0f32; n_rows], vec![0.0f32; n_rows]);
        gemv_q8_on(KernelPath::Scalar, ty, w, n_rows, &v, &mut want);
        gemv_q8_on(path, ty, w, n_rows, &v, &mut got);
        let rb = ty.row_bytes(k).unwrap();
        let mut wr = vec![0.0f32; k];
        // Q4_0, Q4_1 and Q8_0 decode in one order on every path (`decode_order`), except the
        // Cortex-M DSP kernels: the same bits.
        let canonical = matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) && path != KernelPath::ArmDsp;
        for r in 0..n_rows {
            if canonical {
                assert_eq!(got[r].to_bits(), want[r].to_bits(), "{path} {ty} {k} row {r}: {} vs {}", got[r], want[r]);
                continue;
            }
            crate::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut wr);
            let mag: f32 = wr.iter().zip(x).map(|(p, q)| (p * q).abs()).sum();
            assert!(
                (got[r] - want[r]).abs() <= 1e-5 * mag + 1e-6,
                "{path} {ty} {k} row {r}: {} vs {}",
                got[r],
                want[r]
            );
        }
        (want, v)
    }

    /// The decode kernels against the scalar reference (exact integer sums; f32 scaling order
    /// differs) and against `vec_dot` on the same codes (same products, ggml's activation
    /// format): bound 1e-5 of Σ|terms| plus the activation rounding for the latter.
    #[test]
    fn gemv_paths_match_the_scalar_reference() {
        let mut rng = rng(9);
        for path in crate::available_kernel_paths() {
            for ty in grid_types() {
                let shapes: &[(usize, usize)] = if ty.block_size() == 256 {
                    &[(7, 512), (3, 256), (5, 1536), (2, 768)]
                } else {
                    &[(7, 576), (3, 32), (5, 1536), (2, 96)]
                };
                for &(n_rows, k) in shapes {
                    let w = weights(ty, n_rows, k, &mut rng);
                    let x = acts(1, k, &mut rng);
                    let (want, v) = check_gemv(path, ty, &w, n_rows, &x);
                    let rb = ty.row_bytes(k).unwrap();
                    let mut wr = vec![0.0f32; k];
                    for r in 0..n_rows {
                        crate::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut wr);
                        let mag: f32 = wr.iter().zip(&x).map(|(p, q)| (p * q).abs()).sum();
                        let exact: f32 = wr.iter().zip(&x).map(|(p, q)| p * q).sum();
                        let round: f32 = wr.iter().enumerate().map(|(c, p)| p.abs() * v.acts.d[c / 32] * 0.5).sum();
                        assert!(
                            (want[r] - exact).abs() <= round + 1e-5 * mag,
                            "{ty} {k} row {r}: {} vs exact {exact}",
                            want[r]
                        );
                    }
                }
            }
        }
    }

    /// The several-token decode: every token's outputs are the bits of its own `gemv_q8`, on
    /// every path, for every type (those with a several-token kernel and the others), for 1 to
    /// 9 tokens and row counts that are not multiples of the kernels' steps.
    #[test]
    fn gemv_many_equals_gemv_per_token() {
        let mut rng = rng(21);
        for path in crate::available_kernel_paths() {
            for ty in grid_types() {
                let k = if ty.block_size() == 256 { 512 } else { 576 };
                for n_rows in [1, 2, 5, 16] {
                    let w = weights(ty, n_rows, k, &mut rng);
                    for n_tok in [1, 2, 3, 4, 5, 8, 9] {
                        let x = acts(n_tok, k, &mut rng);
                        let vs: Vec<VecQ8> = x
                            .chunks_exact(k)
                            .map(|xt| {
                                let mut v = VecQ8::default();
                                v.quantize_for(path, xt);
                                v
                            })
                            .collect();
                        let refs: Vec<&VecQ8> = vs.iter().collect();
                        let mut got = vec![f32::NAN; n_tok * n_rows];
                        gemv_q8_many_on(path, ty, &w, n_rows, &refs, &mut rows_of(&mut got, n_rows));
                        for (t, v) in vs.iter().enumerate() {
                            let mut want = vec![0.0f32; n_rows];
                            gemv_q8_on(path, ty, &w, n_rows, v, &mut want);
                            let bits = |s: &[f32]| s.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                            assert_eq!(
                                bits(&got[t * n_rows..(t + 1) * n_rows]),
                                bits(&want),
                                "{path} {ty} {n_rows} rows, token {t} of {n_tok}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn unsupported_shapes_are_refused() {
        assert!(!gemm_q8_supported(GgmlType::Q4_K, 128));
        assert!(!gemm_q8_supported(GgmlType::F16, 256));
        assert!(!gemm_q8_supported(GgmlType::Q4_0, 48));
        assert!(gemm_q8_supported(GgmlType::Q4_0, 64));
    }
}

/// One token's activations quantized for [`gemv_q8`] (decode): the codes of [`ActsQ8`] plus,
/// per 4 consecutive codes (one i32 lane of a `vpdpbusd`), their scale and sum, so the hot loop
/// needs no per-block activation work: `dl` the block scale, `s4` the code sum, `dsl = dl · s4`.
#[derive(Clone, Debug, Default)]
pub struct VecQ8 {
    /// Which per-path layouts below were built (the others are empty).
    layouts: Layouts,
    /// The token quantized by [`ActsQ8::quantize`]; its codes `acts.q` feed the hot loop.
    pub(crate) acts: ActsQ8,
    /// (k / 4): `Σ` of each 4 codes (a constant offset `c · s` folds into the integer sum as
    /// `c · s4`).
    pub(crate) s4: Vec<i32>,
    /// (k / 4): `-8 · Σ` of each 4 codes (the Q4_0 offset, folded into the accumulator).
    pub(crate) neg8: Vec<i32>,
    /// (k / 4): `-128 · Σ` of each 4 codes (the offset of Q8_0 codes stored as `q + 128`).
    pub(crate) neg128: Vec<i32>,
    /// (k / 4): the scale of the block holding each 4 codes.
    pub(crate) dl: Vec<f32>,
    /// (k / 4): `dl · Σ` of each 4 codes.
    pub(crate) dsl: Vec<f32>,
    /// The layout of the 4-blocks-per-step Q4 kernels, in groups of 4 blocks (the last one
    /// zero-padded): (groups, 4 blocks, 16): codes 0..16 of each block…
    pub(crate) lo4: Vec<i8>,
    /// … and codes 16..32.
    pub(crate) hi4: Vec<i8>,
    /// (groups, 16 lanes): `-8 ·` the sum of lane `i`'s 8 codes (4 in `lo4`, 4 in `hi4`).
    pub(crate) n8g: Vec<i32>,
    /// (groups, 16 lanes): the scale of lane `i`'s block (block `i / 4` of the group).
    pub(crate) dg: Vec<f32>,
    /// (groups, 16 lanes): that scale times the sum of lane `i`'s 8 codes (every path's Q4_1
    /// offset term, [`crate::decode_order`]; built for the SIMD paths).
    pub(crate) dsg: Vec<f32>,
    /// (k / 4): scratch, `Σ` of each 4 codes (what the lanes above are built from).
    sum4: Vec<i32>,
}

/// Which of [`VecQ8`]'s per-path layouts a token holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Layouts {
    /// The codes and scales only (the scalar kernels read nothing else).
    #[default]
    Plain,
    /// Plus the grouped `dsg` (NEON kernels).
    Neon,
    /// Plus the AVX2 kernels' lanes.
    Avx2,
    /// Plus the AVX-512 kernels' lanes and grouped codes.
    Avx512,
    /// Every layout (tests and benchmarks that run one token on several paths).
    All,
}

impl Layouts {
    fn of(path: KernelPath) -> Self {
        match path {
            KernelPath::Avx2 => Layouts::Avx2,
            KernelPath::Avx512 => Layouts::Avx512,
            KernelPath::Neon | KernelPath::NeonDotprod | KernelPath::NeonI8mm => Layouts::Neon,
            _ => Layouts::Plain,
        }
    }
}

impl VecQ8 {
    /// Quantizes one token (`x.len()` a multiple of 32) exactly as [`ActsQ8::quantize`] does,
    /// with the layouts the kernels of [`kernel_path`](crate::kernel_path) read.
    pub fn quantize(&mut self, x: &[f32]) {
        self.quantize_with(Layouts::of(crate::kernel_path()), x)
    }

    /// [`quantize`](Self::quantize) for the kernels of `path`.
    pub fn quantize_for(&mut self, path: KernelPath, x: &[f32]) {
        self.quantize_with(Layouts::of(path), x)
    }

    /// [`quantize`](Self::quantize) with every path's layouts (to run one token on several
    /// paths, e.g. in tests and benchmarks).
    pub fn quantize_for_every_path(&mut self, x: &[f32]) {
        self.quantize_with(Layouts::All, x)
    }

    /// Whether the token holds what the kernels of `path` read.
    fn serves(&self, path: KernelPath) -> bool {
        let need = Layouts::of(path);
        need == Layouts::Plain || self.layouts == Layouts::All || self.layouts == need
    }

    fn quantize_with(&mut self, layouts: Layouts, x: &[f32]) {
        let k = x.len();
        assert!(k > 0 && k.is_multiple_of(QA), "VecQ8: length {k} is not a positive multiple of 32");
        // The gemm's quantizer on one token, into reused buffers (no allocation per call).
        self.acts.quantize(x, k);
        self.layouts = layouts;
        let (x86, avx512, avx2) = match layouts {
            Layouts::Plain | Layouts::Neon => (false, false, false),
            Layouts::Avx2 => (true, false, true),
            Layouts::Avx512 => (true, true, false),
            Layouts::All => (true, true, true),
        };
        let grouped = layouts != Layouts::Plain;
        let (q, d) = (&self.acts.q, &self.acts.d);
        // Σ of each 4 codes, once (the lanes below and the grouped sums both derive from it);
        // indexed loops over presized buffers, not pushes, so that they vectorize (this builder
        // was ~3 % of a 576-wide model's one-thread decode).
        let n4 = k / 4;
        let sum4 = &mut self.sum4;
        sum4.clear();
        sum4.resize(n4, 0);
        for (s, c) in sum4.iter_mut().zip(q.chunks_exact(4)) {
            *s = c[0] as i32 + c[1] as i32 + c[2] as i32 + c[3] as i32;
        }
        let sized = |v: &mut Vec<i32>, on: bool| {
            v.clear();
            v.resize(if on { n4 } else { 0 }, 0);
        };
        sized(&mut self.s4, avx512);
        sized(&mut self.neg128, avx512);
        sized(&mut self.neg8, avx2);
        for v in [&mut self.dl, &mut self.dsl] {
            v.clear();
            v.resize(if x86 { n4 } else { 0 }, 0.0);
        }
        if x86 {
            // 8 lanes of 4 codes a block.
            for ((dl, dsl), (s, db)) in
                self.dl.chunks_exact_mut(8).zip(self.dsl.chunks_exact_mut(8)).zip(sum4.chunks_exact(8).zip(d.iter()))
            {
                for i in 0..8 {
                    dl[i] = *db;
                    dsl[i] = *db * s[i] as f32;
                }
            }
            if avx512 {
                for ((o, n), &s) in self.s4.iter_mut().zip(self.neg128.iter_mut()).zip(sum4.iter()) {
                    *o = s;
                    *n = -128 * s;
                }
            }
            if avx2 {
                for (n, &s) in self.neg8.iter_mut().zip(sum4.iter()) {
                    *n = -8 * s;
                }
            }
        }
        let ng = if grouped { (k / QA).div_ceil(4) } else { 0 };
        let ng512 = if avx512 { ng } else { 0 };
        for v in [&mut self.lo4, &mut self.hi4] {
            v.clear();
            v.resize(ng512 * 64, 0);
        }
        self.dg.clear();
        self.dg.resize(ng512 * 16, 0.0);
        self.dsg.clear();
        self.dsg.resize(ng * 16, 0.0);
        self.n8g.clear();
        self.n8g.resize(ng512 * 16, 0);
        if !grouped {
            return;
        }
        if avx512 {
            for (b, qb) in q.chunks_exact(QA).enumerate() {
                self.lo4[b * 16..b * 16 + 16].copy_from_slice(&qb[..16]);
                self.hi4[b * 16..b * 16 + 16].copy_from_slice(&qb[16..]);
            }
        }
        // Lane m of block b: codes 4m..4m + 4 and 16 + 4m..16 + 4m + 4, i.e. the 4-sums m and
        // 4 + m of the block.
        let nb = k / QA;
        for b in 0..nb {
            let sb = &sum4[8 * b..8 * b + 8];
            let lanes = 4 * b..4 * b + 4;
            let s: [i32; 4] = core::array::from_fn(|m| sb[m] + sb[4 + m]);
            for (m, o) in self.dsg[lanes.clone()].iter_mut().enumerate() {
                *o = d[b] * s[m] as f32;
            }
            if avx512 {
                for (m, o) in self.n8g[lanes.clone()].iter_mut().enumerate() {
                    *o = -8 * s[m];
                }
                self.dg[lanes].fill(d[b]);
            }
        }
    }

    /// Elements.
    pub fn k(&self) -> usize {
        self.acts.k
    }
}

/// Whether [`gemv_q8`] has a kernel for `ty` with rows of `k` elements: every type in the
/// [kernel table](crate::kernel_table), rows of whole blocks.
pub fn gemv_q8_supported(ty: GgmlType, k: usize) -> bool {
    crate::type_kernels(ty).is_some() && k > 0 && k.is_multiple_of(ty.block_size()) && k.is_multiple_of(QA)
}

/// `out[r] = Σ_c w[r][c] · x[c]` for the `n_rows` rows of `w` (any type in the
/// [kernel table](crate::kernel_table)) against one quantized token, on
/// [`kernel_path`](crate::kernel_path): the decode matmul, rows looped inside the kernel.
pub fn gemv_q8(ty: GgmlType, w: &[u8], n_rows: usize, x: &VecQ8, out: &mut [f32]) {
    gemv_q8_with(crate::kernel_path(), ty, w, n_rows, x, out)
}

/// [`gemv_q8`] on an explicit kernel path (panics if the CPU lacks it).
pub fn gemv_q8_on(path: KernelPath, ty: GgmlType, w: &[u8], n_rows: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(path.is_available(), "gemv_q8_on: kernel path {path} is not available here");
    gemv_q8_with(path, ty, w, n_rows, x, out)
}

fn gemv_q8_with(path: KernelPath, ty: GgmlType, w: &[u8], n_rows: usize, x: &VecQ8, out: &mut [f32]) {
    assert!(gemv_q8_supported(ty, x.k()), "gemv_q8: no kernel for {ty} rows of {}", x.k());
    let rb = ty.row_bytes(x.k()).unwrap_or(0);
    assert_eq!(w.len(), n_rows * rb, "gemv_q8: {} bytes for {n_rows} rows of {rb}", w.len());
    assert_eq!(out.len(), n_rows, "gemv_q8: output length");
    let Some((runs_on, kernel)) = crate::gemv_kernel(ty, path) else { unreachable!("checked by gemv_q8_supported") };
    assert!(x.serves(runs_on), "gemv_q8: the token was not quantized for the {runs_on} kernels");
    kernel(w, rb, x, out)
}

/// `outs[t][r] = Σ_c w[r][c] · xs[t][c]` for several quantized tokens, on
/// [`kernel_path`](crate::kernel_path): each `outs[t]` holds exactly the bits of
/// [`gemv_q8`] on `xs[t]` alone. Types with a several-token kernel on the path (Q4_0, Q4_1 and
/// Q8_0 on AVX-512) decode each weight group once for up to 4 tokens; the others run the decode kernel
/// once per token.
pub fn gemv_q8_many(ty: GgmlType, w: &[u8], n_rows: usize, xs: &[&VecQ8], outs: &mut [&mut [f32]]) {
    gemv_q8_many_with(crate::kernel_path(), ty, w, n_rows, xs, outs)
}

/// [`gemv_q8_many`] on an explicit kernel path (panics if the CPU lacks it).
pub fn gemv_q8_many_on(
    path: KernelPath,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    xs: &[&VecQ8],
    outs: &mut [&mut [f32]],
) {
    assert!(path.is_available(), "gemv_q8_many_on: kernel path {path} is not available here");
    gemv_q8_many_with(path, ty, w, n_rows, xs, outs)
}

fn gemv_q8_many_with(path: KernelPath, ty: GgmlType, w: &[u8], n_rows: usize, xs: &[&VecQ8], outs: &mut [&mut [f32]]) {
    assert_eq!(xs.len(), outs.len(), "gemv_q8_many: one output per token");
    let Some(first) = xs.first() else { return };
    let k = first.k();
    assert!(gemv_q8_supported(ty, k), "gemv_q8: no kernel for {ty} rows of {k}");
    let rb = ty.row_bytes(k).unwrap_or(0);
    assert_eq!(w.len(), n_rows * rb, "gemv_q8: {} bytes for {n_rows} rows of {rb}", w.len());
    let Some(tk) = crate::type_kernels(ty) else { unreachable!("checked by gemv_q8_supported") };
    let (runs_on, kernel, many) = tk.gemv_with_many(path);
    for (x, o) in xs.iter().zip(outs.iter()) {
        assert_eq!(x.k(), k, "gemv_q8_many: tokens of different lengths");
        assert!(x.serves(runs_on), "gemv_q8: the token was not quantized for the {runs_on} kernels");
        assert_eq!(o.len(), n_rows, "gemv_q8: output length");
    }
    match many {
        Some(many) if xs.len() > 1 => many(w, rb, xs, outs),
        _ => {
            for (x, o) in xs.iter().zip(outs.iter_mut()) {
                kernel(w, rb, x, o);
            }
        }
    }
}
