//! Reader tests: valid files round-trip through the writer; every kind of malformed file gets
//! the right typed error (never a panic).

use super::writer::{GgufBuilder, OwnedValue};
use super::*;
use alloc::string::String;
use alloc::vec;

fn sample() -> GgufBuilder {
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", OwnedValue::String("llama".into()))
        .kv("u8", OwnedValue::U8(7))
        .kv("i8", OwnedValue::I8(-7))
        .kv("u16", OwnedValue::U16(700))
        .kv("i16", OwnedValue::I16(-700))
        .kv("u32", OwnedValue::U32(70000))
        .kv("i32", OwnedValue::I32(-70000))
        .kv("f32", OwnedValue::F32(1.5))
        .kv("bool", OwnedValue::Bool(true))
        .kv("u64", OwnedValue::U64(1 << 40))
        .kv("i64", OwnedValue::I64(-(1 << 40)))
        .kv("f64", OwnedValue::F64(2.25))
        .kv("strs", OwnedValue::strings(["a", "bc", "ünï"]))
        .kv("nested", OwnedValue::Array(ValueType::Array, vec![OwnedValue::i32s([1, 2]), OwnedValue::i32s([3])]));
    b.tensor("a", &[32, 2], GgmlType::F32, vec![1u8; 256]);
    b.tensor("b", &[64], GgmlType::Q4_0, vec![2u8; 36]);
    b.tensor("c", &[256, 1], GgmlType::Q6_K, vec![3u8; 210]);
    b
}

#[test]
fn round_trip_every_value_type() {
    let bytes = sample().to_bytes();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get("u8"), Some(&Value::U8(7)));
    assert_eq!(g.get("i8"), Some(&Value::I8(-7)));
    assert_eq!(g.get("u16"), Some(&Value::U16(700)));
    assert_eq!(g.get("i16"), Some(&Value::I16(-700)));
    assert_eq!(g.get_u64("u32").unwrap(), Some(70000));
    assert_eq!(g.get("i32"), Some(&Value::I32(-70000)));
    assert_eq!(g.get_f32("f32").unwrap(), Some(1.5));
    assert_eq!(g.get_bool("bool").unwrap(), Some(true));
    assert_eq!(g.get_u64("u64").unwrap(), Some(1 << 40));
    assert_eq!(g.get("i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(g.get("f64"), Some(&Value::F64(2.25)));
    let s: Vec<&str> = g.get_array("strs").unwrap().unwrap().strings().unwrap().collect();
    assert_eq!(s, ["a", "bc", "ünï"]);
    let nested: Vec<Vec<i64>> = g
        .get_array("nested")
        .unwrap()
        .unwrap()
        .iter()
        .map(|v| match v {
            Value::Array(a) => a.ints().unwrap().collect(),
            _ => panic!("not an array"),
        })
        .collect();
    assert_eq!(nested, [vec![1, 2], vec![3]]);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert!(matches!(g.get_u64("strs"), Err(GgufError::WrongType { .. })));
    assert!(matches!(g.require_u64("nope"), Err(GgufError::MissingKey(k)) if k == "nope"));

    let a = g.tensor("a").unwrap();
    assert_eq!((a.ty, a.n_cols(), a.n_rows(), a.data.len()), (GgmlType::F32, 32, 2, 256));
    assert!(a.data.iter().all(|&x| x == 1));
    let c = g.tensor("c").unwrap();
    assert_eq!((c.ty, c.data.len()), (GgmlType::Q6_K, 210));
    assert!(c.data.iter().all(|&x| x == 3));
    // Zero copy: tensor bytes point into the buffer, at aligned offsets.
    for t in &g.tensors {
        let p = t.data.as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(p as u64, g.data_offset + t.offset);
        assert_eq!(p % 32, 0);
    }
}

#[test]
fn truncation_anywhere_is_an_error() {
    let bytes = sample().to_bytes();
    let data_start = Gguf::parse(&bytes).unwrap().data_offset as usize;
    for n in 0..bytes.len() {
        let r = Gguf::parse(&bytes[..n]);
        assert!(r.is_err(), "prefix of {n} bytes parsed");
        if n < data_start {
            // Inside the header: reported as truncation (or a count the rest cannot hold).
            assert!(
                matches!(r, Err(GgufError::Truncated { .. }) | Err(GgufError::AbsurdCount { .. })),
                "prefix {n}: {r:?}"
            );
        } else {
            assert!(matches!(r, Err(GgufError::TensorOutOfBounds { .. })), "prefix {n}: {r:?}");
        }
    }
}

/// A hand-assembled header for crafting malformed files.
#[derive(Default)]
struct Raw(Vec<u8>);
impl Raw {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        Raw::default().u32(GGUF_MAGIC).u32(3).u64(n_tensors).u64(n_kv)
    }
    /// A tensor info entry.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(mut self, n: usize) -> Self {
        let pad = self.0.len().div_ceil(32) * 32;
        self.0.resize(pad + n, 0);
        self
    }
    fn parse(&self) -> Result<Gguf<'_>, GgufError> {
        Gguf::parse(&self.0)
    }
}

#[test]
fn wrong_magic_and_version() {
    let mut b = sample().to_bytes();
    b[0] = b'X';
    let e = Gguf::parse(&b).unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }));
    assert!(e.to_string().contains("not a GGUF file"));
    for v in [0u32, 1, 4, u32::MAX] {
        let r = Raw::default().u32(GGUF_MAGIC).u32(v).u64(0).u64(0);
        assert_eq!(r.parse().unwrap_err(), GgufError::UnsupportedVersion(v));
    }
    // Version 2 files (same layout as 3 for our purposes) are read.
    let r = Raw::default().u32(GGUF_MAGIC).u32(2).u64(0).u64(0);
    assert_eq!(r.parse().unwrap().version, 2);
}

#[test]
fn absurd_counts_and_lengths() {
    assert!(matches!(Raw::header(u64::MAX, 0).parse(), Err(GgufError::AbsurdCount { what: "tensors", .. })));
    assert!(matches!(Raw::header(0, 1 << 60).parse(), Err(GgufError::AbsurdCount { what: "metadata entries", .. })));
    // A key whose length runs past the end of the file.
    let r = Raw::header(0, 1).u64(u64::MAX).bytes(&[b'a'; 20]);
    assert!(matches!(r.parse(), Err(GgufError::Truncated { .. })));
    // A string value of absurd length.
    let r = Raw::header(0, 1).str("k").u32(8).u64(1 << 62).bytes(&[0; 20]);
    let e = r.parse().unwrap_err();
    assert!(matches!(e, GgufError::Truncated { .. }) && e.to_string().contains("'k'"), "{e}");
    // An array of absurd length.
    let r = Raw::header(0, 1).str("arr").u32(9).u32(4).u64(1 << 61).bytes(&[0; 64]);
    assert!(matches!(r.parse(), Err(GgufError::AbsurdCount { what: "array elements", .. })));
    // An array of strings of absurd length.
    let r = Raw::header(0, 1).str("arr").u32(9).u32(8).u64(u64::MAX / 2).bytes(&[0; 64]);
    assert!(matches!(r.parse(), Err(GgufError::AbsurdCount { .. })));
}

#[test]
fn bad_values() {
    let r = Raw::header(0, 1).str("k").u32(13).u32(0);
    assert_eq!(r.parse().unwrap_err(), GgufError::UnknownValueType { key: "k".into(), id: 13 });
    let r = Raw::header(0, 1).str("k").u32(7).bytes(&[2]);
    assert!(matches!(r.parse(), Err(GgufError::BadValue { .. })));
    let r = Raw::header(0, 1).str("k").u32(9).u32(99).u64(0);
    assert!(matches!(r.parse(), Err(GgufError::UnknownValueType { .. })));
    // Invalid UTF-8 in a key and in a value.
    let r = Raw::header(0, 1).u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1);
    assert!(matches!(r.parse(), Err(GgufError::InvalidUtf8 { .. })));
    let r = Raw::header(0, 1).str("k").u32(8).u64(1).bytes(&[0x80]);
    assert!(matches!(r.parse(), Err(GgufError::InvalidUtf8 { .. })));
    // Arrays nested too deep.
    let mut r = Raw::header(0, 1).str("deep").u32(9);
    for _ in 0..20 {
        r = r.u32(9).u64(1);
    }
    r = r.u32(4).u64(0);
    assert!(matches!(r.parse(), Err(GgufError::BadValue { .. })));
    // Duplicate keys.
    let r = Raw::header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    assert_eq!(r.parse().unwrap_err(), GgufError::DuplicateKey("k".into()));
    // Bad alignment.
    for a in [0u32, 3, 48] {
        let r = Raw::header(0, 1).str("general.alignment").u32(4).u32(a);
        assert!(matches!(r.parse(), Err(GgufError::BadAlignment(_))), "alignment {a}");
    }
    let r = Raw::header(0, 1).str("general.alignment").u32(8).str("x");
    assert!(matches!(r.parse(), Err(GgufError::BadAlignment(_))));
}

#[test]
fn bad_tensors() {
    let ok = Raw::header(1, 0).tensor("t", &[32, 2], 0, 0).data(256);
    assert!(ok.parse().is_ok());
    let e = Raw::header(1, 0).tensor("t", &[32, 2], 99, 0).data(256).parse().unwrap_err();
    assert_eq!(e, GgufError::UnknownTensorType { tensor: "t".into(), id: 99 });
    assert!(e.to_string().contains("'t'") && e.to_string().contains("99"));
    // Data outside the file.
    let e = Raw::header(1, 0).tensor("t", &[32, 2], 0, 0).data(255).parse().unwrap_err();
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    let e = Raw::header(1, 0).tensor("t", &[32, 2], 0, u64::MAX - 31).data(256).parse().unwrap_err();
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    // Misaligned offset.
    let e = Raw::header(1, 0).tensor("t", &[32], 0, 4).data(256).parse().unwrap_err();
    assert!(matches!(e, GgufError::MisalignedTensor { .. }));
    // Shapes: too many dims, zero dims, zero length, overflow, partial blocks.
    for dims in [&[1u64, 1, 1, 1, 1][..], &[], &[0, 4], &[u64::MAX, 2], &[1 << 32, 1 << 32], &[33]] {
        let ty = if dims == [33] { GgmlType::Q4_0.id() } else { 0 };
        let e = Raw::header(1, 0).tensor("t", dims, ty, 0).data(64).parse().unwrap_err();
        assert!(matches!(e, GgufError::BadShape { .. }), "{dims:?}: {e}");
    }
    // Duplicates and overlaps.
    let e = Raw::header(2, 0).tensor("t", &[32], 0, 0).tensor("t", &[32], 0, 128).data(256).parse().unwrap_err();
    assert_eq!(e, GgufError::DuplicateTensor("t".into()));
    let e = Raw::header(2, 0).tensor("a", &[32], 0, 0).tensor("b", &[32], 0, 96).data(256).parse().unwrap_err();
    assert!(matches!(e, GgufError::OverlappingTensors { .. }), "{e}");
}

#[test]
fn errors_name_the_problem() {
    let e =
        Raw::header(1, 0).tensor("blk.0.attn_q.weight", &[33], GgmlType::Q4_0.id(), 0).data(64).parse().unwrap_err();
    let msg: String = alloc::format!("{e}");
    assert!(msg.contains("blk.0.attn_q.weight") && msg.contains("block size"), "{msg}");
}
