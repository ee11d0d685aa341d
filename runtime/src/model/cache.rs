//! The per-sequence KV cache: keys and values of every layer and position, each stored as f16
//! or in a GGUF block format (Q8_0, Q4_0; rows quantized by the kernels' ggml-exact
//! `quantize_row` as they are written, read in place by decode attention).

use super::Model;
use crate::{Error, Result};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;
use half::f16;
use pith_kernels::{GgmlType, KvRows};

/// How a KV cache stores keys or values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CacheType {
    /// IEEE half precision (2 bytes a value).
    #[default]
    F16,
    /// GGUF Q8_0 blocks: 32 values as i8 with an f16 scale (34 bytes per 32 values).
    Q8_0,
    /// GGUF Q4_0 blocks: 32 values as 4-bit codes with an f16 scale (18 bytes per 32 values).
    Q4_0,
}

impl CacheType {
    /// Every type, in the order the CLI lists them.
    pub const ALL: [CacheType; 3] = [CacheType::F16, CacheType::Q8_0, CacheType::Q4_0];

    /// The name `FromStr` reads (`f16`, `q8_0`, `q4_0`).
    pub fn name(self) -> &'static str {
        match self {
            CacheType::F16 => "f16",
            CacheType::Q8_0 => "q8_0",
            CacheType::Q4_0 => "q4_0",
        }
    }

    /// The GGUF type of the storage.
    pub fn ggml(self) -> GgmlType {
        match self {
            CacheType::F16 => GgmlType::F16,
            CacheType::Q8_0 => GgmlType::Q8_0,
            CacheType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// A stable code for saved sessions.
    pub fn code(self) -> u8 {
        match self {
            CacheType::F16 => 0,
            CacheType::Q8_0 => 1,
            CacheType::Q4_0 => 2,
        }
    }

    /// The type of a [`CacheType::code`].
    pub fn from_code(c: u8) -> Option<Self> {
        CacheType::ALL.into_iter().find(|t| t.code() == c)
    }
}

impl fmt::Display for CacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CacheType {
    type Err = String;
    fn from_str(s: &str) -> core::result::Result<Self, String> {
        CacheType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| alloc::format!("'{s}' is not a KV cache type (f16, q8_0, q4_0)"))
    }
}

/// One of K or V: (n_layer, n_ctx, row) in its type's units (halves, or block bytes).
enum Store {
    F16(Vec<f16>),
    Blocks(CacheType, Vec<u8>),
}

impl Store {
    fn new(ty: CacheType, units: usize, n_ctx: usize) -> Result<Self> {
        let too_big = || Error::BadHyperParam {
            key: "n_ctx".to_string(),
            reason: alloc::format!("a KV cache for {n_ctx} tokens cannot be allocated"),
        };
        // Zeroed memory straight from the allocator (`calloc`: fresh pages from `mmap`, touched
        // only as positions are written; a memset of the whole cache cost ~5 ms of start-up), and
        // fallibly. (Not a `try_reserve` probe before `vec![0; n]`: glibc raises its mmap
        // threshold when the probe's mapping is freed, so the real allocation then came from the
        // heap and `calloc` cleared all of it — the same ~3-5 ms.)
        Ok(match ty {
            CacheType::F16 => Store::F16(bytemuck::allocation::try_zeroed_vec(units).map_err(|_| too_big())?),
            _ => Store::Blocks(ty, bytemuck::allocation::try_zeroed_vec(units).map_err(|_| too_big())?),
        })
    }

    fn bytes(&self) -> usize {
        match self {
            Store::F16(v) => v.len() * 2,
            Store::Blocks(_, b) => b.len(),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Store::F16(v) => bytemuck::cast_slice(v),
            Store::Blocks(_, b) => b,
        }
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Store::F16(v) => bytemuck::cast_slice_mut(v),
            Store::Blocks(_, b) => b,
        }
    }

    /// Rows from unit `at` on, as attention reads them.
    fn rows(&self, at: usize) -> KvRows<'_> {
        match self {
            Store::F16(v) => KvRows::F16(&v[at..]),
            Store::Blocks(CacheType::Q8_0, b) => KvRows::Q8_0(&b[at..]),
            Store::Blocks(_, b) => KvRows::Q4_0(&b[at..]),
        }
    }

    /// Writes `src` (one row) at unit `at`, rounded or quantized to the type.
    fn write(&mut self, at: usize, units: usize, src: &[f32]) {
        match self {
            Store::F16(v) => half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut v[at..at + units], src),
            Store::Blocks(ty, b) => pith_kernels::quantize_row(ty.ggml(), src, &mut b[at..at + units]),
        }
    }

    /// Rows `at..at + dst.len() / row_len` (units `units` per row) widened to f32 into `dst`.
    fn widen(&self, at: usize, units: usize, row_len: usize, dst: &mut [f32]) {
        match self {
            Store::F16(v) => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&v[at..at + dst.len()], dst);
            }
            Store::Blocks(ty, b) => {
                for (r, row) in dst.chunks_exact_mut(row_len).enumerate() {
                    pith_kernels::dequantize_row(ty.ggml(), &b[at + r * units..at + (r + 1) * units], row);
                }
            }
        }
    }
}

/// One sequence's keys and values for every layer, up to `n_ctx` positions, in the
/// [`CacheType`]s chosen for K and V. Several caches share one [`super::Workspace`].
pub struct KvCache {
    /// Positions this cache holds.
    pub n_ctx: usize,
    /// Tokens already in the cache (positions `..pos` are live).
    pub pos: usize,
    n_layer: usize,
    kv_dim: usize,
    k_type: CacheType,
    v_type: CacheType,
    k_units: usize, // one row of K, in the store's units
    v_units: usize,
    k: Store, // (n_layer, n_ctx, k_units)
    v: Store, // (n_layer, n_ctx, v_units)
}

/// Units (halves or block bytes) of a row of `kv_dim` values of `ty`, checking that quantized
/// types see whole blocks per head.
fn row_units(ty: CacheType, kv_dim: usize, head_dim: usize, which: &str) -> Result<usize> {
    if ty != CacheType::F16 && !head_dim.is_multiple_of(32) {
        return Err(Error::BadHyperParam {
            key: alloc::format!("cache_type_{which}"),
            reason: alloc::format!(
                "a {ty} KV cache needs a head_dim that is a multiple of 32; this model's head_dim is {head_dim}"
            ),
        });
    }
    match ty {
        CacheType::F16 => Ok(kv_dim),
        _ => ty.ggml().row_bytes(kv_dim).ok_or_else(|| Error::BadHyperParam {
            key: alloc::format!("cache_type_{which}"),
            reason: alloc::format!("{kv_dim} values are not whole {ty} blocks"),
        }),
    }
}

impl KvCache {
    /// An empty cache for `model` of `n_ctx` positions, keys stored as `k`, values as `v`.
    /// Quantized types need the model's head_dim to be a multiple of 32.
    pub fn new(model: &Model<'_>, n_ctx: usize, k: CacheType, v: CacheType) -> Result<Self> {
        let c = &model.config;
        if n_ctx == 0 {
            return Err(Error::BadHyperParam { key: "n_ctx".to_string(), reason: "must be at least 1".to_string() });
        }
        let (kv_dim, n_layer) = (c.kv_dim(), c.n_layer);
        let k_units = row_units(k, kv_dim, c.head_dim, "k")?;
        let v_units = row_units(v, kv_dim, c.head_dim, "v")?;
        let total = |u: usize| {
            n_layer.checked_mul(n_ctx).and_then(|x| x.checked_mul(u)).ok_or_else(|| Error::BadHyperParam {
                key: "n_ctx".to_string(),
                reason: "KV cache size overflows".to_string(),
            })
        };
        let (kt, vt) = (total(k_units)?, total(v_units)?);
        Ok(KvCache {
            n_ctx,
            pos: 0,
            n_layer,
            kv_dim,
            k_type: k,
            v_type: v,
            k_units,
            v_units,
            k: Store::new(k, kt, n_ctx)?,
            v: Store::new(v, vt, n_ctx)?,
        })
    }

    /// Memory held by K + V, in bytes.
    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }

    /// Bytes K + V would take for `model` at `n_ctx` positions (without allocating them).
    pub fn bytes_for(model: &Model<'_>, n_ctx: usize, k: CacheType, v: CacheType) -> Result<usize> {
        let c = &model.config;
        let unit = |t: CacheType| if t == CacheType::F16 { 2 } else { 1 };
        let ku = row_units(k, c.kv_dim(), c.head_dim, "k")? * unit(k);
        let vu = row_units(v, c.kv_dim(), c.head_dim, "v")? * unit(v);
        Ok(c.n_layer * n_ctx * (ku + vu))
    }

    /// Drops cached tokens from position `pos` on.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// Forgets every cached token.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// The storage types of keys and values.
    pub fn types(&self) -> (CacheType, CacheType) {
        (self.k_type, self.v_type)
    }

    /// Whether this cache was made for a model of `model`'s shape.
    pub(super) fn fits(&self, model: &Model<'_>) -> bool {
        self.n_layer == model.config.n_layer && self.kv_dim == model.config.kv_dim()
    }

    /// Bytes of one position of one layer, for K and for V (saving a session).
    pub fn row_bytes(&self) -> (usize, usize) {
        (self.k.bytes() / (self.n_layer * self.n_ctx), self.v.bytes() / (self.n_layer * self.n_ctx))
    }

    /// Layer `layer`'s rows `..n_pos` of K and of V, as raw bytes of their type (saving).
    pub fn layer_bytes(&self, layer: usize, n_pos: usize) -> (&[u8], &[u8]) {
        let (kr, vr) = self.row_bytes();
        let (k, v) = (self.k.as_bytes(), self.v.as_bytes());
        (&k[layer * self.n_ctx * kr..][..n_pos * kr], &v[layer * self.n_ctx * vr..][..n_pos * vr])
    }

    /// [`KvCache::layer_bytes`], writable (restoring a session; set `pos` to match).
    pub fn layer_bytes_mut(&mut self, layer: usize, n_pos: usize) -> (&mut [u8], &mut [u8]) {
        let (kr, vr) = self.row_bytes();
        let n_ctx = self.n_ctx;
        let (k, v) = (self.k.as_bytes_mut(), self.v.as_bytes_mut());
        (&mut k[layer * n_ctx * kr..][..n_pos * kr], &mut v[layer * n_ctx * vr..][..n_pos * vr])
    }

    /// Stores one position's keys and values (kv_dim each) in layer `layer`.
    pub(super) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let row = layer * self.n_ctx + pos;
        self.k.write(row * self.k_units, self.k_units, k);
        self.v.write(row * self.v_units, self.v_units, v);
    }

    /// Layer `layer`'s keys and values from position `lo` on, read in place.
    pub(super) fn rows(&self, layer: usize, lo: usize) -> (KvRows<'_>, KvRows<'_>) {
        let row = layer * self.n_ctx + lo;
        (self.k.rows(row * self.k_units), self.v.rows(row * self.v_units))
    }

    /// Layer `layer` as batch attention reads it (rows widened to f32 on request).
    pub(super) fn layer(&self, layer: usize) -> LayerKv<'_> {
        LayerKv { cache: self, layer }
    }
}

/// One layer of a [`KvCache`].
pub(super) struct LayerKv<'a> {
    cache: &'a KvCache,
    layer: usize,
}

impl super::attention::KvSource for LayerKv<'_> {
    fn widen_k(&self, lo: usize, dst: &mut [f32]) {
        let c = self.cache;
        let row = self.layer * c.n_ctx + lo;
        c.k.widen(row * c.k_units, c.k_units, c.kv_dim, dst);
    }
    fn widen_v(&self, lo: usize, dst: &mut [f32]) {
        let c = self.cache;
        let row = self.layer * c.n_ctx + lo;
        c.v.widen(row * c.v_units, c.v_units, c.kv_dim, dst);
    }
    fn f16(&self) -> Option<(&[f16], &[f16])> {
        let c = self.cache;
        let at = self.layer * c.n_ctx * c.kv_dim;
        match (&c.k, &c.v) {
            (Store::F16(k), Store::F16(v)) => Some((&k[at..], &v[at..])),
            _ => None,
        }
    }
}
