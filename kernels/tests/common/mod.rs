//! Fixture loading and small numeric helpers shared by the integration tests.
#![allow(dead_code)]

use pith_kernels::{dequantize_row, quantize_row, GgmlType};
use std::collections::HashMap;

/// Records of `fixtures/ggml_ref.bin` (written by `fixtures/make_fixtures.py`):
/// magic `PITHFIX1`, then `u32 name_len, name, u32 data_len, data`, little-endian.
pub struct Fixtures(HashMap<String, &'static [u8]>);

static GGML_REF: &[u8] = include_bytes!("../fixtures/ggml_ref.bin");

/// IQ4_NL / IQ4_XS records (written by `fixtures/make_iq4_fixtures.py`, same format).
static IQ4_REF: &[u8] = include_bytes!("../fixtures/iq4_ref.bin");

/// 12 rows x 512 little-endian f32 of real weights (see make_fixtures.py): rows 0..4 are
/// blk.0.ffn_down.weight, 4..8 blk.5.attn_q.weight, 8..12 token_embd.weight.
pub static REAL_ROWS: &[u8] = include_bytes!("../fixtures/real_rows.f32");
pub const REAL_ROW_LEN: usize = 512;
pub const REAL_GROUPS: [&str; 3] = ["blk.0.ffn_down (Q4_1)", "blk.5.attn_q (Q4_1)", "token_embd (Q8_0)"];

impl Fixtures {
    pub fn load() -> Self {
        Self::parse(GGML_REF)
    }

    /// The IQ4 records of `fixtures/iq4_ref.bin`.
    pub fn load_iq4() -> Self {
        Self::parse(IQ4_REF)
    }

    fn parse(bytes: &'static [u8]) -> Self {
        let mut d = bytes;
        assert_eq!(&d[..8], b"PITHFIX1", "bad fixture magic");
        d = &d[8..];
        let mut map = HashMap::new();
        let take = |d: &mut &'static [u8]| {
            let n = u32::from_le_bytes(d[..4].try_into().unwrap()) as usize;
            let v = &d[4..4 + n];
            *d = &d[4 + n..];
            v
        };
        while !d.is_empty() {
            let name = std::str::from_utf8(take(&mut d)).unwrap().to_owned();
            let data = take(&mut d);
            map.insert(name, data);
        }
        Fixtures(map)
    }

    pub fn bytes(&self, key: &str) -> &'static [u8] {
        self.0.get(key).unwrap_or_else(|| panic!("fixture record {key:?} missing"))
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        f32s(self.bytes(key))
    }

    pub fn str(&self, key: &str) -> &'static str {
        std::str::from_utf8(self.bytes(key)).unwrap()
    }
}

pub fn f32s(b: &[u8]) -> Vec<f32> {
    assert_eq!(b.len() % 4, 0);
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

pub fn real_rows() -> Vec<Vec<f32>> {
    f32s(REAL_ROWS).chunks(REAL_ROW_LEN).map(<[f32]>::to_vec).collect()
}

pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quantize_row(ty, x, &mut q);
    q
}

pub fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n];
    dequantize_row(ty, q, &mut y);
    y
}

/// `sqrt(Σ (x - y)²) / sqrt(Σ x²)`.
pub fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let den: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
    (num / den).sqrt()
}

pub fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

pub fn abs_dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum()
}

pub fn norm64(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// Index of the first differing `chunk`-sized piece, for readable failure messages.
pub fn first_diff(a: &[u8], b: &[u8], chunk: usize) -> Option<usize> {
    a.chunks(chunk).zip(b.chunks(chunk)).position(|(x, y)| x != y)
}
