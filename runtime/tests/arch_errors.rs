//! Bad input for every architecture: a file of each family with a missing or mis-shaped tensor,
//! a bad sliding-window value or a vocabulary that disagrees with the embedding gets a named
//! error (never a panic); a tensor the architecture does not use is named, not skipped.

use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::Gguf;
use pith::testing::{build, TinySpec};
use pith::{Model, Pool, State};

fn spec(arch: &'static str) -> TinySpec {
    match arch {
        "gemma3" => TinySpec {
            arch,
            n_head_kv: 1,
            head_dim: Some(32),
            sliding_window: Some((4, 2)),
            tied: true,
            ..Default::default()
        },
        _ => TinySpec { arch, ..Default::default() },
    }
}

/// A change to a file: metadata to set or drop, tensors to drop or reshape, tensors to add.
#[derive(Default)]
struct Edit {
    set: Vec<(String, OwnedValue)>,
    drop_key: Option<String>,
    drop_tensor: Option<String>,
    /// (name, new dims): the tensor's bytes are cut or padded to the new shape.
    reshape: Option<(String, Vec<u64>)>,
    add_f32: Option<(String, usize)>,
}

/// The file rebuilt with `e` applied.
fn rebuild(bytes: &[u8], e: &Edit) -> Vec<u8> {
    let g = Gguf::parse(bytes).expect("tiny file parses");
    let mut b = GgufBuilder::new();
    for (k, v) in &g.metadata {
        if Some(*k) == e.drop_key.as_deref() || e.set.iter().any(|(s, _)| s == k) {
            continue;
        }
        b.kv(k, OwnedValue::from_value(v));
    }
    for (k, v) in &e.set {
        b.kv(k, v.clone());
    }
    for t in &g.tensors {
        if Some(t.name) == e.drop_tensor.as_deref() {
            continue;
        }
        match &e.reshape {
            Some((name, dims)) if name == t.name => {
                let n: u64 = dims.iter().product();
                let bytes = t.ty.row_bytes(n as usize).expect("whole blocks");
                let mut data = t.data.to_vec();
                data.resize(bytes, 0);
                b.tensor(t.name, dims, t.ty, data);
            }
            _ => {
                b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
            }
        }
    }
    if let Some((name, n)) = &e.add_f32 {
        b.tensor(name, &[*n as u64], pith_kernels::GgmlType::F32, vec![0u8; n * 4]);
    }
    b.to_bytes()
}

/// Binding `bytes` fails; the message is returned.
fn bind_error(bytes: &[u8]) -> String {
    let g = Gguf::parse(bytes).expect("the edited file still parses");
    match Model::from_gguf(&g) {
        Ok(_) => panic!("the edited file was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_architecture_binds_and_runs() {
    for arch in ["llama", "qwen2", "gemma3"] {
        let (bytes, _) = build(&spec(arch));
        let g = Gguf::parse(&bytes).unwrap();
        let m = Model::from_gguf(&g).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(m.unused.is_empty(), "{arch}: unused {:?}", m.unused);
        let mut st = State::new(&m, 16, 8).unwrap();
        let l = m.forward(&mut st, &Pool::single(), &[1, 2, 3], pith::Logits::Last).unwrap();
        assert!(l.iter().all(|v| v.is_finite()), "{arch}");
    }
}

#[test]
fn missing_tensors_are_named() {
    for (arch, tensor) in [
        ("qwen2", "blk.1.attn_k.bias"),
        ("qwen2", "output.weight"),
        ("gemma3", "blk.0.attn_q_norm.weight"),
        ("gemma3", "blk.1.post_ffw_norm.weight"),
        ("gemma3", "blk.1.post_attention_norm.weight"),
        ("llama", "blk.0.ffn_gate.weight"),
    ] {
        let (bytes, _) = build(&spec(arch));
        let bad = rebuild(&bytes, &Edit { drop_tensor: Some(tensor.into()), ..Default::default() });
        let g = Gguf::parse(&bad).unwrap();
        match Model::from_gguf(&g) {
            // An untied qwen2 file without output.weight binds the embedding (tied), as
            // llama.cpp does; every other removal is an error naming the tensor.
            Ok(_) if tensor == "output.weight" => {}
            Ok(_) => panic!("{arch}: {tensor} missing was accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(tensor) && msg.contains("missing"), "{arch}: {msg}");
            }
        }
    }
}

#[test]
fn misshaped_tensors_are_named() {
    for (arch, tensor, dims) in [
        ("qwen2", "blk.0.attn_q.bias", vec![32u64]),
        ("gemma3", "blk.1.attn_k_norm.weight", vec![64u64]),
        ("gemma3", "blk.0.attn_q.weight", vec![64u64, 64]),
        ("gemma3", "blk.0.post_attention_norm.weight", vec![32u64]),
    ] {
        let (bytes, _) = build(&spec(arch));
        let bad = rebuild(&bytes, &Edit { reshape: Some((tensor.into(), dims)), ..Default::default() });
        let msg = bind_error(&bad);
        assert!(msg.contains(tensor) && msg.contains("shape"), "{arch} {tensor}: {msg}");
    }
}

#[test]
fn bad_sliding_window_values_are_named() {
    let key = |k: &str| format!("gemma3.{k}");
    let cases: Vec<(String, OwnedValue, &str)> = vec![
        (key("attention.sliding_window"), OwnedValue::String("512".into()), "attention.sliding_window"),
        (key("attention.sliding_window"), OwnedValue::U64(1 << 40), "out of range"),
        (
            key("attention.sliding_window_pattern"),
            OwnedValue::Array(pith::gguf::ValueType::Bool, vec![OwnedValue::Bool(true)]),
            "1 entries for 2 layers",
        ),
        (key("attention.sliding_window_pattern"), OwnedValue::String("6".into()), "sliding_window_pattern"),
        (key("rope.freq_base_swa"), OwnedValue::F32(-1.0), "rope.freq_base_swa"),
        (key("final_logit_softcapping"), OwnedValue::F32(-30.0), "final_logit_softcapping"),
    ];
    let (bytes, _) = build(&spec("gemma3"));
    for (k, v, want) in cases {
        let bad = rebuild(&bytes, &Edit { set: vec![(k.clone(), v)], ..Default::default() });
        let msg = bind_error(&bad);
        assert!(msg.contains(want), "{k}: {msg}");
    }
    // A per-layer pattern of the right length is taken as is: both layers global here.
    let ok = rebuild(
        &bytes,
        &Edit {
            set: vec![(
                key("attention.sliding_window_pattern"),
                OwnedValue::Array(pith::gguf::ValueType::Bool, vec![OwnedValue::Bool(false), OwnedValue::Bool(false)]),
            )],
            ..Default::default()
        },
    );
    let g = Gguf::parse(&ok).unwrap();
    let m = Model::from_gguf(&g).unwrap();
    assert_eq!(m.config.window(0), None);
    assert_eq!(m.config.sliding_window.as_ref().map(|s| s.window), Some(4));
}

#[test]
fn a_vocabulary_that_disagrees_with_the_embedding_is_named() {
    for arch in ["qwen2", "gemma3"] {
        let (bytes, _) = build(&spec(arch));
        let bad = rebuild(
            &bytes,
            &Edit { set: vec![(format!("{arch}.vocab_size"), OwnedValue::U32(97))], ..Default::default() },
        );
        let msg = bind_error(&bad);
        assert!(msg.contains("token_embd.weight") && msg.contains("shape"), "{arch}: {msg}");
    }
}

#[test]
fn unknown_architectures_and_required_keys_are_named() {
    let (bytes, _) = build(&spec("qwen2"));
    let bad = rebuild(
        &bytes,
        &Edit { set: vec![("general.architecture".into(), OwnedValue::String("qwen3".into()))], ..Default::default() },
    );
    let msg = bind_error(&bad);
    assert!(msg.contains("'qwen3'") && msg.contains("gemma3"), "{msg}");
    let bad = rebuild(&bytes, &Edit { drop_key: Some("qwen2.attention.head_count".into()), ..Default::default() });
    let msg = bind_error(&bad);
    assert!(msg.contains("qwen2.attention.head_count"), "{msg}");
}

#[test]
fn tensors_the_architecture_does_not_use_are_listed() {
    // A qwen2 file with a gemma-only norm, and a llama file with an unknown tensor.
    for (arch, extra) in [("qwen2", "blk.0.post_ffw_norm.weight"), ("llama", "blk.1.attn_sinks.weight")] {
        let (bytes, _) = build(&spec(arch));
        let with = rebuild(&bytes, &Edit { add_f32: Some((extra.into(), 64)), ..Default::default() });
        let g = Gguf::parse(&with).unwrap();
        let m = Model::from_gguf(&g).unwrap();
        assert_eq!(m.unused, vec![extra.to_string()], "{arch}");
    }
}
