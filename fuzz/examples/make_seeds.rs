//! Writes seed corpora for the fuzz targets (run by `scripts/fuzz.sh`; seeds are generated, never
//! committed):
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds -- fuzz/corpus
//! ```
//!
//! * `<out>/gguf_parse/`: small valid GGUF files — tiny llama models (f32 and quantized, tied,
//!   other alignments) with a GPT-2 BPE or a SentencePiece vocabulary, a file holding every
//!   metadata value type, and an empty one.
//! * `<out>/gguf_model/`: knob bytes for `pith_fuzz::ModelCase` covering each weight type,
//!   GQA, biases, rope options, the qwen2 and gemma3 architectures and a few deliberate errors.
//!
//! Each file must still be accepted by its consumer (checked here), so a seed that stops binding
//! after a change in pith is noticed.

use std::path::Path;

use pith::gguf::writer::{GgufBuilder, OwnedValue as O};
use pith::gguf::{Gguf, ValueType};
use pith_fuzz::{knob::*, ModelCase};
use pith_kernels::{GgmlType, ALL_TYPES};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

/// `file` re-written with extra metadata.
fn with_kvs(file: &[u8], kvs: Vec<(&str, O)>) -> Vec<u8> {
    let g = Gguf::parse(file).expect("valid base file");
    let mut b = GgufBuilder::new();
    for (k, v) in &g.metadata {
        b.kv(k, O::from_value(v));
    }
    for (k, v) in kvs {
        b.kv(k, v);
    }
    for t in &g.tensors {
        b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
    }
    b.to_bytes()
}

fn gpt2_vocab() -> Vec<(&'static str, O)> {
    let toks = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "H",
        "e",
        "l",
        "o",
        "Ġ",
        "w",
        "r",
        "d",
        ",",
        "!",
        "1",
        "2",
        "3",
        "He",
        "ll",
        "llo",
        "Ġw",
        "or",
        "Hello",
        "Ġworld",
        "Ċ",
        "ĉ",
        "Ã¿",
    ];
    let merges = ["H e", "l l", "ll o", "Ġ w", "o r", "He llo", "Ġw or", "Ġwor l", "Ġworl d"];
    let types: Vec<i32> = toks.iter().map(|t| if t.starts_with("<|") { 3 } else { 1 }).collect();
    vec![
        ("tokenizer.ggml.model", O::String("gpt2".into())),
        ("tokenizer.ggml.pre", O::String("smollm".into())),
        ("tokenizer.ggml.tokens", O::strings(toks)),
        ("tokenizer.ggml.token_type", O::i32s(types)),
        ("tokenizer.ggml.merges", O::strings(merges)),
        ("tokenizer.ggml.bos_token_id", O::U32(1)),
        ("tokenizer.ggml.eos_token_id", O::U32(2)),
        ("tokenizer.ggml.add_bos_token", O::Bool(false)),
    ]
}

fn spm_vocab() -> Vec<(&'static str, O)> {
    let mut toks: Vec<String> = ["<unk>", "<s>", "</s>", "▁", "▁H", "ello", "▁world", "e", "l", "o", ",", "!"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    toks.extend((0..=255u32).step_by(17).map(|b| format!("<0x{b:02X}>")));
    let n = toks.len();
    let types: Vec<i32> = (0..n)
        .map(|i| match i {
            0 => 2,
            1 | 2 => 3,
            i if i >= 12 => 6,
            _ => 1,
        })
        .collect();
    let scores: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
    vec![
        ("tokenizer.ggml.model", O::String("llama".into())),
        ("tokenizer.ggml.tokens", O::strings(toks)),
        ("tokenizer.ggml.scores", O::f32s(scores)),
        ("tokenizer.ggml.token_type", O::i32s(types)),
        ("tokenizer.ggml.add_space_prefix", O::Bool(true)),
    ]
}

fn all_value_types() -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", O::String("llama".into()))
        .kv("t.u8", O::U8(7))
        .kv("t.i8", O::I8(-7))
        .kv("t.u16", O::U16(700))
        .kv("t.i16", O::I16(-700))
        .kv("t.u32", O::U32(70000))
        .kv("t.i32", O::I32(-70000))
        .kv("t.u64", O::U64(1 << 40))
        .kv("t.i64", O::I64(-(1 << 40)))
        .kv("t.f32", O::F32(0.5))
        .kv("t.f64", O::F64(0.25))
        .kv("t.bool", O::Bool(true))
        .kv("t.str", O::String("ünïcode ▁".into()))
        .kv("t.arr", O::Array(ValueType::U16, vec![O::U16(1), O::U16(2)]))
        .kv("t.nested", O::Array(ValueType::Array, vec![O::Array(ValueType::Bool, vec![O::Bool(false)])]));
    b.tensor("x", &[32, 2], GgmlType::Q8_0, vec![0; 68]);
    b.tensor("y", &[4], GgmlType::F16, vec![0; 8]);
    b.to_bytes()
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into());
    let out = Path::new(&out);
    let (pdir, mdir) = (out.join("gguf_parse"), out.join("gguf_model"));
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::create_dir_all(&mdir).unwrap();

    // --- serve_request: request bodies of every route, valid and near-valid.
    let sdir = out.join("serve_request");
    std::fs::create_dir_all(&sdir).unwrap();
    let bodies = [
        r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"seed":1,"stop":["\n"],"stream":true,"stream_options":{"include_usage":true}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"logprobs":true,"top_logprobs":5,"presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1,"n":1}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}}}}"#,
        r#"{"prompt":"Once upon a time","max_tokens":-1,"logprobs":2,"echo":false,"stop":"END","ignore_eos":true}"#,
        r#"{"prompt":["one"],"max_completion_tokens":3}"#,
        r#"{"content":"Hello <|im_start|> world","add_special":true,"with_pieces":true}"#,
        r#"{"tokens":[1,2,3,-1,99999999999]}"#,
    ];
    for (i, b) in bodies.iter().enumerate() {
        write(&sdir, &format!("body{i}"), b.as_bytes());
    }

    // --- gguf_model: knob bytes.
    // A small sane base: n_embd 8 (EMBD[6]), 2 heads (HEADS[1]), n_ff 8 (FF[6]), 16 tokens.
    let small = [(N_EMBD, 6u8), (N_HEAD, 1), (N_FF, 6), (N_VOCAB, 16)];
    let mut model_seeds: Vec<(String, Vec<u8>)> = vec![
        ("default".into(), ModelCase::to_bytes(&[], &[1, 2, 3, 4])),
        ("small".into(), ModelCase::to_bytes(&small, &[1, 5, 9])),
        (
            "small_tied_bias_q8".into(),
            ModelCase::to_bytes(&[small.as_slice(), &[(FLAGS, FLAG_TIED | FLAG_BIASES | FLAG_Q8)]].concat(), &[3; 8]),
        ),
        (
            "rope_options".into(),
            ModelCase::to_bytes(
                &[(ROPE_DIM, 8), (ROPE_SCALING, 1), (ROPE_FACTOR, 32), (FLAGS, FLAG_VALUE_LENGTH | FLAG_VOCAB_KEY)],
                &[7, 8],
            ),
        ),
        (
            "gqa_1kv_batch1".into(),
            ModelCase::to_bytes(&[(N_HEAD, 3), (N_HEAD_KV, 2), (N_BATCH, 7)], &[1, 2, 3, 4, 5, 6]),
        ),
        ("raw_bytes".into(), ModelCase::to_bytes(&[(FLAGS, FLAG_RAW_BYTES), (SEED, 9)], &[0, 1])),
        ("align1".into(), ModelCase::to_bytes(&[(ALIGN, 6), (TY_ATTN, 2), (TY_FFN, 6)], &[2, 2])),
        ("bad_shape".into(), ModelCase::to_bytes(&[(RESHAPE_TENSOR, 5), (RESHAPE_KIND, 0), (RESHAPE_VAL, 7)], &[1])),
        ("mangled_heads".into(), ModelCase::to_bytes(&[(MANGLE_KEY, 3), (MANGLE_KIND, 4), (MANGLE_VAL, 2)], &[1])),
        // The other architectures (N_LAYER's bits 1-2 pick it; bits 3-5 gemma3's window).
        (
            "qwen2".into(),
            ModelCase::to_bytes(&[small.as_slice(), &[(N_LAYER, 2), (FLAGS, FLAG_Q8)]].concat(), &[1, 2, 3]),
        ),
        (
            "gemma3_window".into(),
            ModelCase::to_bytes(
                &[small.as_slice(), &[(N_LAYER, 4 | (3 << 3)), (N_HEAD_KV, 1)]].concat(),
                &[1, 2, 3, 4, 5],
            ),
        ),
        (
            "gemma3_head_dim_tied_q8".into(),
            ModelCase::to_bytes(
                &[small.as_slice(), &[(N_LAYER, 5), (HEAD_DIM, 16), (FLAGS, FLAG_TIED | FLAG_Q8)]].concat(),
                &[2, 4, 6],
            ),
        ),
    ];
    // Byte patches after the tokens (tensor, offset u16 LE, value): an f32 made huge / NaN, and
    // a Q4_K super-block scale made +inf (f16 0x7c00).
    let patch = |mut v: Vec<u8>, ps: &[(u8, u16, u8)]| {
        for &(t, off, val) in ps {
            v.push(t);
            v.extend_from_slice(&off.to_le_bytes());
            v.push(val);
        }
        v
    };
    model_seeds.push((
        "small_patched".into(),
        patch(
            ModelCase::to_bytes(&small, &[1, 2]),
            &[(2, 3, 0x7f), (2, 2, 0xc0), (4, 7, 0xff), (6, 11, 0x80), (9, 1, 0x55)],
        ),
    ));
    let q4k = [(N_EMBD, 2u8), (N_HEAD, 1), (N_FF, 2), (N_VOCAB, 8), (N_LAYER, 1), (TY_ATTN, 10), (TY_FFN, 10)];
    model_seeds
        .push(("q4_K_inf_scale".into(), patch(ModelCase::to_bytes(&q4k, &[1, 2]), &[(4, 0, 0x00), (4, 1, 0x7c)])));
    // Each weight type on every matmul, at a width its blocks divide (256 = EMBD[2] for K-quants).
    for (i, t) in ALL_TYPES.iter().enumerate() {
        let wide = if t.block_size() > 32 { 2 } else { 1 }; // EMBD[2] = 256, EMBD[1] = 32
        let ff = if t.block_size() > 32 { 2 } else { 3 }; // FF[2] = 256, FF[3] = 32
        let k = [
            (N_EMBD, wide),
            (N_HEAD, 1),
            (N_FF, ff),
            (N_VOCAB, 8),
            (N_LAYER, 1),
            (TY_ATTN, i as u8),
            (TY_FFN, i as u8),
            (TY_EMBD, i as u8),
            (TY_OUT, i as u8),
        ];
        model_seeds.push((format!("type_{}", t.name()), ModelCase::to_bytes(&k, &[1, 2])));
    }
    // Seeds that are meant to fail binding (or may, like alignment 1 with its misaligned norms).
    let may_fail = ["bad_shape", "mangled_heads", "type_q8_K", "align1"];
    let mut bound = 0;
    for (name, bytes) in &model_seeds {
        let case = ModelCase::from_bytes(bytes);
        let g = Gguf::parse(&case.file).expect("generated file parses");
        match pith::Model::from_gguf(&g) {
            Ok(_) => bound += 1,
            Err(e) if !may_fail.contains(&name.as_str()) => panic!("model seed {name} does not bind: {e}"),
            Err(_) => {}
        }
        write(&mdir, name, bytes);
    }

    // --- gguf_parse: whole files.
    let tiny = ModelCase::from_bytes(&ModelCase::to_bytes(&small, &[])).file;
    let quant = ModelCase::from_bytes(&ModelCase::to_bytes(
        &[
            (N_EMBD, 1),
            (N_HEAD, 1),
            (N_FF, 3),
            (N_VOCAB, 4),
            (N_LAYER, 1),
            (TY_ATTN, 6),
            (TY_FFN, 3),
            (TY_EMBD, 2),
            (TY_OUT, 1),
        ],
        &[],
    ))
    .file;
    let tied64 = ModelCase::from_bytes(&ModelCase::to_bytes(
        &[small.as_slice(), &[(FLAGS, FLAG_TIED), (ALIGN, 1)]].concat(),
        &[],
    ))
    .file;
    let parse_seeds: Vec<(&str, Vec<u8>)> = vec![
        ("tiny_llama_gpt2", with_kvs(&tiny, gpt2_vocab())),
        ("tiny_llama_spm", with_kvs(&tiny, spm_vocab())),
        ("quant_llama_gpt2", with_kvs(&quant, gpt2_vocab())),
        ("tied_align64_spm", with_kvs(&tied64, spm_vocab())),
        ("all_value_types", all_value_types()),
        ("empty", GgufBuilder::new().to_bytes()),
    ];
    for (name, bytes) in &parse_seeds {
        let g = Gguf::parse(bytes).unwrap_or_else(|e| panic!("seed {name} does not parse: {e}"));
        if name.contains("llama") || name.contains("spm") {
            pith::Model::from_gguf(&g).unwrap_or_else(|e| panic!("seed {name} does not bind: {e}"));
            let t = pith::tokenizer::Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("seed {name}: tokenizer: {e}"));
            t.encode("Hello, world!", true).unwrap_or_else(|e| panic!("seed {name}: encode: {e}"));
        }
        write(&pdir, name, bytes);
    }
    let size = |v: &[(String, Vec<u8>)]| v.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    println!(
        "wrote {} gguf_model seeds ({bound} bind, largest {} B) to {}, {} gguf_parse seeds (largest {} B) to {}",
        model_seeds.len(),
        size(&model_seeds),
        mdir.display(),
        parse_seeds.len(),
        parse_seeds.iter().map(|(_, b)| b.len()).max().unwrap_or(0),
        pdir.display()
    );
}
