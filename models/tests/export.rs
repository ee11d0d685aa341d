//! `pith-compress export` and `convert` on tiny random llama models: an F32/F16/BF16 GGUF goes
//! to a Hugging Face folder and back byte for byte; the exported Q/K rows are Hugging Face's
//! layout (checked against a formula and against RoPE itself: Hugging Face's rotate-half on
//! the exported weights gives the same attention scores as ggml's adjacent pairs on the
//! file's); a folder without pith's carried metadata converts to a model that pith runs to
//! the same logits and tokens; bad input gives errors naming the problem and leaves nothing.

use pith::file::MappedFile;
use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::Gguf;
use pith::model::{Logits, Model, State};
use pith::testing::{build, spm_vocab, Rng, TinySpec};
use pith::tokenizer::Tokenizer;
use pith::{Pool, Precision};
use pith_kernels::GgmlType;
use pith_models::convert::{self, ConvertArgs};
use pith_models::export::{self, ExportArgs};
use pith_models::CompressError;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// GPT-2's byte → printable character map.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// A byte-level BPE tokenizer (`gpt2`, pre `smollm`) of exactly `n_vocab` tokens: three
/// special tokens, the 256 bytes, then merged words.
fn bpe_keys(b: &mut GgufBuilder, n_vocab: usize) {
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    tokens.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    let mut merges = Vec::new();
    let words = ["Ġt", "he", "Ġthe", "Ġa", "in", "Ġin", "er", "on", "Ġc", "at", "Ġcat", "Ġs", "Ġsat", "is", "Ġis"];
    for w in words {
        // Split into two known tokens: the longest known prefix.
        let chars: Vec<char> = w.chars().collect();
        let cut = (1..chars.len())
            .rev()
            .find(|&k| {
                let (a, c): (String, String) = (chars[..k].iter().collect(), chars[k..].iter().collect());
                tokens.contains(&a) && tokens.contains(&c)
            })
            .unwrap();
        let (a, c): (String, String) = (chars[..cut].iter().collect(), chars[cut..].iter().collect());
        merges.push(format!("{a} {c}"));
        tokens.push(w.into());
    }
    let mut i = 0;
    while tokens.len() < n_vocab - 1 {
        tokens.push(format!("unused{i}"));
        i += 1;
    }
    tokens.push("<|user|>".into());
    let types: Vec<i32> = (0..tokens.len())
        .map(|i| {
            if i < 3 {
                3
            } else if i == tokens.len() - 1 {
                4
            } else {
                1
            }
        })
        .collect();
    b.kv("tokenizer.ggml.add_space_prefix", OwnedValue::Bool(false))
        .kv("tokenizer.ggml.add_bos_token", OwnedValue::Bool(false))
        .kv("tokenizer.ggml.model", OwnedValue::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", OwnedValue::String("smollm".into()))
        .kv("tokenizer.ggml.tokens", OwnedValue::strings(tokens))
        .kv("tokenizer.ggml.token_type", OwnedValue::i32s(types))
        .kv("tokenizer.ggml.merges", OwnedValue::strings(merges))
        .kv("tokenizer.ggml.bos_token_id", OwnedValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", OwnedValue::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", OwnedValue::U32(0))
        .kv("tokenizer.ggml.padding_token_id", OwnedValue::U32(2))
        .kv(
            "tokenizer.chat_template",
            OwnedValue::String(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}".into(),
            ),
        )
        .kv("general.quantization_version", OwnedValue::U32(2));
}

/// A tiny llama GGUF: the fixture's weights, SmolLM2-like metadata (some of it with no place
/// in Hugging Face's files), optionally a BPE tokenizer; `spec.weight_type` for the matrices.
fn model(spec: &TinySpec, tokenizer: bool) -> Vec<u8> {
    let (bytes, _) = build(spec);
    let g = Gguf::parse(&bytes).unwrap();
    let mut b = GgufBuilder::new();
    for (k, v) in &g.metadata {
        b.kv(k, OwnedValue::from_value(v));
    }
    b.kv("general.type", OwnedValue::String("model".into()))
        .kv("general.languages", OwnedValue::strings(["en"]))
        .kv("general.file_type", OwnedValue::U32(if spec.weight_type == GgmlType::F16 { 1 } else { 0 }))
        .kv("llama.vocab_size", OwnedValue::U32(spec.n_vocab as u32))
        .kv("llama.rope.dimension_count", OwnedValue::U32(spec.head_dim() as u32))
        .kv("pith.test.f64", OwnedValue::F64(0.1))
        .kv("pith.test.nested", OwnedValue::Array(pith::gguf::ValueType::Array, vec![OwnedValue::i32s([1, -2])]));
    if tokenizer {
        bpe_keys(&mut b, spec.n_vocab);
    }
    // Tensors sorted by name, as llama.cpp's converter leaves many files.
    let mut ts: Vec<_> = g.tensors.iter().collect();
    ts.sort_by_key(|t| t.name);
    for t in ts {
        b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
    }
    b.to_bytes()
}

fn spec(weight_type: GgmlType, tied: bool, seed: u64) -> TinySpec {
    TinySpec { n_vocab: 300, n_layer: 2, weight_type, tied, seed, ..Default::default() }
}

struct Dir(tempfile::TempDir);
impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    }
}

fn do_export(input: &Path, output: &Path, force: bool) -> Result<(), CompressError> {
    export::run_export(&ExportArgs { input: input.into(), output: output.into(), force })
}

fn do_convert(input: &Path, output: &Path, ty: Option<&str>) -> Result<(), CompressError> {
    convert::run(&ConvertArgs {
        input: input.into(),
        output: output.into(),
        ty: ty.map(String::from),
        force: false,
        tokenizer: None,
    })
}

fn logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let f = MappedFile::open(path).unwrap();
    let g = f.gguf().unwrap();
    let m = Model::from_gguf(&g).unwrap();
    let mut s = State::new(&m, tokens.len(), tokens.len()).unwrap();
    s.set_precision(Precision::F32);
    m.forward(&mut s, &Pool::single(), tokens, Logits::From(0)).unwrap().to_vec()
}

fn read_config(dir: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

fn write_config(dir: &Path, c: &Json) {
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(c).unwrap()).unwrap();
}

/// The f32 values of a safetensors tensor.
fn st_f32(dir: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

fn gguf_f32(bytes: &[u8], name: &str) -> Vec<f32> {
    let g = Gguf::parse(bytes).unwrap();
    let t = g.tensor(name).unwrap();
    assert_eq!(t.ty, GgmlType::F32);
    t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn round_trip_is_byte_exact() {
    let cases = [
        (GgmlType::F32, false, true),
        (GgmlType::F32, true, false),
        (GgmlType::F16, false, true),
        (GgmlType::BF16, true, true),
    ];
    for (i, (ty, tied, tok)) in cases.into_iter().enumerate() {
        let d = Dir::new();
        let bytes = model(&spec(ty, tied, 10 + i as u64), tok);
        std::fs::write(d.p("in.gguf"), &bytes).unwrap();
        do_export(&d.p("in.gguf"), &d.p("hf"), false).unwrap();
        let mut files: Vec<String> =
            std::fs::read_dir(d.p("hf")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        files.sort();
        let mut want = vec!["config.json", "generation_config.json", "model.safetensors"];
        if tok {
            want.extend(["tokenizer.json", "tokenizer_config.json"]);
            want.sort();
        }
        assert_eq!(files, want, "case {i}");
        let c = read_config(&d.p("hf"));
        assert_eq!(c["tie_word_embeddings"], Json::Bool(tied));
        assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-5), "written in its short form");
        let dt = match ty {
            GgmlType::F16 => "float16",
            GgmlType::BF16 => "bfloat16",
            _ => "float32",
        };
        assert_eq!(c["torch_dtype"], Json::String(dt.into()));
        do_convert(&d.p("hf"), &d.p("back.gguf"), None).unwrap();
        let back = std::fs::read(d.p("back.gguf")).unwrap();
        if back != bytes {
            let (ga, gb) = (Gguf::parse(&bytes).unwrap(), Gguf::parse(&back).unwrap());
            for ((ka, va), (kb, vb)) in ga.metadata.iter().zip(&gb.metadata) {
                assert_eq!((ka, va), (kb, vb), "case {i}: metadata");
            }
            assert_eq!(ga.metadata.len(), gb.metadata.len(), "case {i}: metadata keys");
            for (ta, tb) in ga.tensors.iter().zip(&gb.tensors) {
                assert_eq!((ta.name, &ta.dims, ta.ty), (tb.name, &tb.dims, tb.ty), "case {i}: tensors");
                assert!(ta.data == tb.data, "case {i}: {} data", ta.name);
            }
            panic!("case {i} ({ty}, tied {tied}, tokenizer {tok}): the GGUF changed");
        }
        assert_eq!(d.names(), ["back.gguf", "hf", "in.gguf"], "temporary files left");
    }
}

#[test]
fn quantized_weights_are_dequantized_exactly() {
    let d = Dir::new();
    let bytes = model(&spec(GgmlType::Q8_0, false, 3), true);
    std::fs::write(d.p("q.gguf"), &bytes).unwrap();
    do_export(&d.p("q.gguf"), &d.p("hf"), false).unwrap();
    do_convert(&d.p("hf"), &d.p("back.gguf"), None).unwrap();
    // The same as dequantizing with pith-compress, tensor for tensor.
    let g = Gguf::parse(&bytes).unwrap();
    let (deq, _) = pith_models::quantize::dequantize(&g, GgmlType::F32).unwrap();
    let back = std::fs::read(d.p("back.gguf")).unwrap();
    let gb = Gguf::parse(&back).unwrap();
    assert_eq!(gb.tensors.len(), deq.tensors.len());
    for t in &deq.tensors {
        let b = gb.tensor(&t.name).unwrap();
        assert_eq!((b.ty, &b.dims), (t.ty, &t.dims), "{}", t.name);
        assert!(b.data == t.data.as_slice(), "{}", t.name);
    }
    assert_eq!(gb.get_u64("general.file_type").unwrap(), Some(0));
    let toks: Vec<u32> = (0..12).map(|i| (i * 37 % 300) as u32).collect();
    std::fs::write(d.p("deq.gguf"), deq.to_bytes()).unwrap();
    let (a, b) = (logits(&d.p("deq.gguf"), &toks), logits(&d.p("back.gguf"), &toks));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

/// Hugging Face row `r` of head `h` is GGUF row `h * hd + 2 * (r mod hd/2) + r div (hd/2)`.
#[test]
fn q_and_k_rows_are_the_hugging_face_layout() {
    let sp = spec(GgmlType::F32, false, 5);
    let bytes = model(&sp, false);
    let d = Dir::new();
    std::fs::write(d.p("in.gguf"), &bytes).unwrap();
    do_export(&d.p("in.gguf"), &d.p("hf"), false).unwrap();
    let (n, hd) = (sp.n_embd, sp.head_dim());
    for (proj, heads) in [("q", sp.n_head), ("k", sp.n_head_kv)] {
        for l in 0..sp.n_layer {
            let g = gguf_f32(&bytes, &format!("blk.{l}.attn_{proj}.weight"));
            let (shape, h) = st_f32(&d.p("hf"), &format!("model.layers.{l}.self_attn.{proj}_proj.weight"));
            assert_eq!(shape, [heads * hd, n]);
            for head in 0..heads {
                for r in 0..hd {
                    let src = head * hd + 2 * (r % (hd / 2)) + r / (hd / 2);
                    let dst = head * hd + r;
                    assert_eq!(h[dst * n..(dst + 1) * n], g[src * n..(src + 1) * n], "{proj} layer {l} row {dst}");
                }
            }
        }
    }
    // V and O are not permuted.
    let g = gguf_f32(&bytes, "blk.0.attn_v.weight");
    assert_eq!(st_f32(&d.p("hf"), "model.layers.0.self_attn.v_proj.weight").1, g);

    // RoPE itself: Hugging Face's rotate-half on the exported weights gives the attention scores
    // ggml's adjacent pairs give on the file's weights.
    let mut rng = Rng(9);
    let x: Vec<f64> = (0..n).map(|_| rng.uniform() as f64).collect();
    let y: Vec<f64> = (0..n).map(|_| rng.uniform() as f64).collect();
    let matvec = |w: &[f32], v: &[f64]| -> Vec<f64> {
        w.chunks_exact(n).map(|row| row.iter().zip(v).map(|(&a, b)| a as f64 * b).sum()).collect()
    };
    let rope = |v: &mut [f64], pos: f64, halves: bool| {
        for h in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let th = pos * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                let (a, b) = if halves { (i, i + hd / 2) } else { (2 * i, 2 * i + 1) };
                let (va, vb) = (h[a], h[b]);
                h[a] = va * th.cos() - vb * th.sin();
                h[b] = va * th.sin() + vb * th.cos();
            }
        }
    };
    let scores = |wq: &[f32], wk: &[f32], halves: bool| -> Vec<f64> {
        let (mut q, mut k) = (matvec(wq, &x), matvec(wk, &y));
        rope(&mut q, 7.0, halves);
        rope(&mut k, 3.0, halves);
        let group = sp.n_head / sp.n_head_kv;
        (0..sp.n_head).map(|h| (0..hd).map(|i| q[h * hd + i] * k[(h / group) * hd + i]).sum()).collect()
    };
    let ggml = scores(&gguf_f32(&bytes, "blk.1.attn_q.weight"), &gguf_f32(&bytes, "blk.1.attn_k.weight"), false);
    let hf = scores(
        &st_f32(&d.p("hf"), "model.layers.1.self_attn.q_proj.weight").1,
        &st_f32(&d.p("hf"), "model.layers.1.self_attn.k_proj.weight").1,
        true,
    );
    for (a, b) in ggml.iter().zip(&hf) {
        assert!((a - b).abs() < 1e-9 * (1.0 + a.abs()), "{ggml:?} vs {hf:?}");
    }
}

/// A folder as another tool leaves it (no `pith_gguf_metadata`, merges as pairs, shards)
/// converts to a model pith runs to the same logits and tokens.
#[test]
fn a_plain_hugging_face_folder_converts() {
    let d = Dir::new();
    let sp = spec(GgmlType::F32, false, 8);
    let bytes = model(&sp, true);
    std::fs::write(d.p("in.gguf"), &bytes).unwrap();
    do_export(&d.p("in.gguf"), &d.p("hf"), false).unwrap();
    let hf = d.p("hf");
    let mut c = read_config(&hf);
    c.as_object_mut().unwrap().remove("pith_gguf_metadata");
    write_config(&hf, &c);
    let mut tok: Json = serde_json::from_slice(&std::fs::read(hf.join("tokenizer.json")).unwrap()).unwrap();
    let pairs: Vec<Json> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let (a, b) = m.as_str().unwrap().split_once(' ').unwrap();
            serde_json::json!([a, b])
        })
        .collect();
    tok["model"]["merges"] = Json::Array(pairs);
    std::fs::write(hf.join("tokenizer.json"), serde_json::to_vec(&tok).unwrap()).unwrap();
    // Two shards with an index, as save_pretrained writes larger models.
    let st_bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let views: Vec<_> = part.iter().map(|n| (n.to_string(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &hf.join(file)).unwrap();
        for n in part {
            map.insert(n.to_string(), Json::String(file.into()));
        }
    }
    std::fs::write(
        hf.join("model.safetensors.index.json"),
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": map})).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(hf.join("model.safetensors")).unwrap();
    do_convert(&hf, &d.p("back.gguf"), None).unwrap();

    let back = std::fs::read(d.p("back.gguf")).unwrap();
    let (ga, gb) = (Gguf::parse(&bytes).unwrap(), Gguf::parse(&back).unwrap());
    for t in &ga.tensors {
        assert!(gb.tensor(t.name).unwrap().data == t.data, "{}", t.name);
    }
    for k in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.pre"] {
        assert_eq!(ga.get(k), gb.get(k), "{k}");
    }
    assert_eq!(gb.get_str("general.name").unwrap(), None, "nothing carried");
    let toks: Vec<u32> = (0..10).map(|i| (i * 31 % 300) as u32).collect();
    let (a, b) = (logits(&d.p("in.gguf"), &toks), logits(&d.p("back.gguf"), &toks));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let (ta, tb) = (Tokenizer::from_gguf(&ga).unwrap(), Tokenizer::from_gguf(&gb).unwrap());
    let text = "<|im_start|>the cat sat in 2024, is the cat<|user|>";
    let ids = ta.encode(text, true).unwrap();
    assert!(ids.len() < text.len(), "merges used: {ids:?}");
    assert_eq!(ids, tb.encode(text, true).unwrap());
}

/// A folder as transformers 5's `save_pretrained` leaves the exported one: `rope_theta` inside
/// `rope_parameters`, `dtype` for `torch_dtype`, no `add_bos_token`, the chat template in
/// `chat_template.jinja`, merges as pairs; `pith_gguf_metadata` kept. It converts to the
/// original file, byte for byte.
#[test]
fn a_folder_saved_by_transformers_5_round_trips() {
    let d = Dir::new();
    let bytes = model(&spec(GgmlType::F32, true, 12), true);
    std::fs::write(d.p("in.gguf"), &bytes).unwrap();
    do_export(&d.p("in.gguf"), &d.p("hf"), false).unwrap();
    let hf = d.p("hf");
    let mut c = read_config(&hf);
    let o = c.as_object_mut().unwrap();
    let theta = o.remove("rope_theta").unwrap();
    o.remove("rope_scaling");
    o.insert("rope_parameters".into(), serde_json::json!({"rope_theta": theta, "rope_type": "default"}));
    let dt = o.remove("torch_dtype").unwrap();
    o.insert("dtype".into(), dt);
    write_config(&hf, &c);
    let tcp = hf.join("tokenizer_config.json");
    let mut tc: Json = serde_json::from_slice(&std::fs::read(&tcp).unwrap()).unwrap();
    let o = tc.as_object_mut().unwrap();
    assert_eq!(o.remove("add_bos_token"), Some(Json::Bool(false)));
    let template = o.remove("chat_template").unwrap();
    std::fs::write(hf.join("chat_template.jinja"), template.as_str().unwrap()).unwrap();
    std::fs::write(&tcp, serde_json::to_vec(&tc).unwrap()).unwrap();
    let tp = hf.join("tokenizer.json");
    let mut tok: Json = serde_json::from_slice(&std::fs::read(&tp).unwrap()).unwrap();
    for m in tok["model"]["merges"].as_array_mut().unwrap() {
        let (a, b) = m.as_str().unwrap().split_once(' ').unwrap();
        *m = serde_json::json!([a, b]);
    }
    std::fs::write(&tp, serde_json::to_vec(&tok).unwrap()).unwrap();
    do_convert(&hf, &d.p("back.gguf"), None).unwrap();
    assert!(std::fs::read(d.p("back.gguf")).unwrap() == bytes);
    // RoPE scaling is refused by name.
    let mut c = read_config(&hf);
    c["rope_parameters"]["rope_type"] = serde_json::json!("llama3");
    write_config(&hf, &c);
    let e = err_of(do_convert(&hf, &d.p("x.gguf"), None));
    assert!(e.contains("rope_parameters") && e.contains("llama3"), "{e}");
}

#[test]
fn convert_to_f16_keeps_vectors_f32() {
    let d = Dir::new();
    std::fs::write(d.p("in.gguf"), model(&spec(GgmlType::F32, false, 4), true)).unwrap();
    do_export(&d.p("in.gguf"), &d.p("hf"), false).unwrap();
    do_convert(&d.p("hf"), &d.p("f16.gguf"), Some("f16")).unwrap();
    let f = MappedFile::open(d.p("f16.gguf")).unwrap();
    let g = f.gguf().unwrap();
    for t in &g.tensors {
        let want = if t.dims.len() == 1 { GgmlType::F32 } else { GgmlType::F16 };
        assert_eq!(t.ty, want, "{}", t.name);
    }
    assert_eq!(g.get_u64("general.file_type").unwrap(), Some(1));
    let toks = [5u32, 17, 250, 3];
    let (a, b) = (logits(&d.p("in.gguf"), &toks), logits(&d.p("f16.gguf"), &toks));
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max < 0.05, "f16 logits differ by {max}");
    let e = do_convert(&d.p("hf"), &d.p("q.gguf"), Some("q4_0")).unwrap_err().to_string();
    assert!(e.contains("f32, f16 or bf16"), "{e}");
}

fn err_of(r: Result<(), CompressError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let d = Dir::new();
    // Not llama.
    let (qwen, _) = build(&TinySpec { arch: "qwen2", ..Default::default() });
    std::fs::write(d.p("qwen.gguf"), qwen).unwrap();
    let e = err_of(do_export(&d.p("qwen.gguf"), &d.p("out"), false));
    assert!(e.contains("general.architecture is 'qwen2'") && e.contains("llama"), "{e}");
    // A tokenizer model export does not write.
    let toks = spm_vocab(&["the"], 0);
    let (spm, _) = build(&TinySpec { n_vocab: toks.len(), vocab: Some(toks), ..Default::default() });
    let g = Gguf::parse(&spm).unwrap();
    let mut b = GgufBuilder::new();
    for (k, v) in &g.metadata {
        b.kv(k, OwnedValue::from_value(v));
    }
    b.kv("tokenizer.ggml.model", OwnedValue::String("t5".into()));
    for t in &g.tensors {
        b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
    }
    std::fs::write(d.p("spm.gguf"), b.to_bytes()).unwrap();
    let e = err_of(do_export(&d.p("spm.gguf"), &d.p("out"), false));
    assert!(e.contains("tokenizer.ggml.model 't5' is not supported"), "{e}");
    // A missing tensor in the GGUF.
    let bytes = model(&spec(GgmlType::F32, false, 1), false);
    let g = Gguf::parse(&bytes).unwrap();
    let mut b = GgufBuilder::new();
    for (k, v) in &g.metadata {
        b.kv(k, OwnedValue::from_value(v));
    }
    for t in g.tensors.iter().filter(|t| t.name != "blk.1.ffn_up.weight") {
        b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
    }
    std::fs::write(d.p("missing.gguf"), b.to_bytes()).unwrap();
    let e = err_of(do_export(&d.p("missing.gguf"), &d.p("out"), false));
    assert!(e.contains("tensor blk.1.ffn_up.weight is missing"), "{e}");
    assert_eq!(d.names(), ["missing.gguf", "qwen.gguf", "spm.gguf"], "no output folder left");

    // A good export, then broken folders.
    std::fs::write(d.p("in.gguf"), &bytes).unwrap();
    do_export(&d.p("in.gguf"), &d.p("hf"), false).unwrap();
    let e = err_of(do_export(&d.p("in.gguf"), &d.p("hf"), false));
    assert!(e.contains("exists; pass --force"), "{e}");
    do_export(&d.p("in.gguf"), &d.p("hf"), true).unwrap();
    std::fs::write(d.p("notes.txt"), "x").unwrap();
    let e = err_of(do_export(&d.p("in.gguf"), &d.p("notes.txt"), true));
    assert!(e.contains("not a folder"), "{e}");
    std::fs::create_dir(d.p("home")).unwrap();
    std::fs::write(d.p("home/precious"), "x").unwrap();
    let e = err_of(do_export(&d.p("in.gguf"), &d.p("home"), true));
    assert!(e.contains("neither empty nor a model folder"), "{e}");

    let copy = |name: &str| {
        let to = d.p(name);
        std::fs::create_dir(&to).unwrap();
        for f in std::fs::read_dir(d.p("hf")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        to
    };
    // config.json that does not match the tensors.
    let bad = copy("bad_cfg");
    let mut c = read_config(&bad);
    c["intermediate_size"] = serde_json::json!(64);
    write_config(&bad, &c);
    let e = err_of(do_convert(&bad, &d.p("x.gguf"), None));
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("does not match config.json"), "{e}");
    // Not llama.
    let mut c = read_config(&bad);
    c["model_type"] = serde_json::json!("mistral");
    c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    write_config(&bad, &c);
    let e = err_of(do_convert(&bad, &d.p("x.gguf"), None));
    assert!(e.contains("llama (LlamaForCausalLM) only"), "{e}");
    // A missing tensor, and an unsupported dtype.
    let st_bytes = std::fs::read(d.p("hf/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let missing = copy("missing_t");
    let views: Vec<_> = st
        .iter()
        .filter(|(n, _)| *n != "model.layers.1.self_attn.o_proj.weight")
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    safetensors::serialize_to_file(views, None, &missing.join("model.safetensors")).unwrap();
    let e = err_of(do_convert(&missing, &d.p("x.gguf"), None));
    assert!(e.contains("tensor model.layers.1.self_attn.o_proj.weight is missing"), "{e}");
    let f64s = copy("f64");
    let norm = st.tensor("model.norm.weight").unwrap();
    let wide: Vec<u8> = norm
        .data()
        .chunks_exact(4)
        .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes())
        .collect();
    let wide_view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, norm.shape().to_vec(), &wide).unwrap();
    let views: Vec<_> =
        st.iter().map(|(n, v)| (n.to_string(), if n == "model.norm.weight" { wide_view.clone() } else { v })).collect();
    safetensors::serialize_to_file(views, None, &f64s.join("model.safetensors")).unwrap();
    let e = err_of(do_convert(&f64s, &d.p("x.gguf"), None));
    assert!(e.contains("model.norm.weight") && e.contains("F64 is not supported"), "{e}");
    // A tensor llama does not have.
    let extra = copy("extra");
    let views: Vec<_> = st
        .iter()
        .map(|(n, v)| (n.to_string(), v))
        .chain([("model.layers.0.self_attn.q_proj.bias".to_string(), norm.clone())])
        .collect();
    safetensors::serialize_to_file(views, None, &extra.join("model.safetensors")).unwrap();
    let e = err_of(do_convert(&extra, &d.p("x.gguf"), None));
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.bias") && e.contains("not a tensor of a Hugging Face llama"),
        "{e}"
    );
    assert!(!d.p("x.gguf").exists());
    assert!(d.names().iter().all(|n| !n.contains("pith-tmp")), "{:?}", d.names());
}

#[test]
fn the_binary_has_both_commands() {
    let d = Dir::new();
    let bytes = model(&spec(GgmlType::F16, false, 2), true);
    std::fs::write(d.p("in.gguf"), &bytes).unwrap();
    let run = |args: &[&Path]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pith-compress"))
            .args(args)
            .env("PITH_NO_PROGRESS", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[Path::new("export"), &d.p("in.gguf"), &d.p("hf")]);
    run(&[Path::new("convert"), &d.p("hf"), &d.p("back.gguf")]);
    assert!(std::fs::read(d.p("back.gguf")).unwrap() == bytes);
}

/// The fixtures' SentencePiece vocabulary (byte tokens, <unk> <s> </s>; scores −length, many
/// tied, or with `distinct` −id, as Llama 2's are).
fn spm_model(seed: u64, distinct: bool) -> (Vec<u8>, TinySpec) {
    let mut toks = spm_vocab(&["the", "cat", "sat", "on", "mat", "t", "c", "s", "m", "th", "ca", "ma"], 0);
    // Pieces without ▁, so that words are reached by several merge paths.
    toks.extend(["he", "at", "th", "the", "ca", "cat", "ma", "mat", "on", "ti", "ic", "tic"].map(String::from));
    let sp = TinySpec { n_vocab: toks.len(), vocab: Some(toks), seed, ..Default::default() };
    let (bytes, _) = build(&sp);
    if !distinct {
        return (bytes, sp);
    }
    let g = Gguf::parse(&bytes).unwrap();
    let mut b = GgufBuilder::new();
    for (k, v) in &g.metadata {
        b.kv(k, OwnedValue::from_value(v));
    }
    let n = sp.n_vocab;
    b.kv("tokenizer.ggml.scores", OwnedValue::f32s((0..n).map(|i| if i < 259 { 0.0 } else { -(i as f32) })));
    for t in &g.tensors {
        b.tensor(t.name, &t.dims, t.ty, t.data.to_vec());
    }
    (b.to_bytes(), sp)
}

#[test]
fn sentencepiece_round_trip_is_byte_exact() {
    let d = Dir::new();
    let (bytes, _) = spm_model(21, false);
    std::fs::write(d.p("in.gguf"), &bytes).unwrap();
    do_export(&d.p("in.gguf"), &d.p("hf"), false).unwrap();
    let tok: Json = serde_json::from_slice(&std::fs::read(d.p("hf/tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tok["model"]["byte_fallback"], Json::Bool(true));
    assert_eq!(tok["model"]["unk_token"], Json::String("<unk>".into()));
    let merges = tok["model"]["merges"].as_array().unwrap();
    for m in ["h e", "c at", "ca t", "m at", "ma t", "▁ the", "▁t he", "▁th e"] {
        assert!(merges.contains(&Json::String(m.into())), "{m}");
    }
    do_convert(&d.p("hf"), &d.p("back.gguf"), None).unwrap();
    assert!(std::fs::read(d.p("back.gguf")).unwrap() == bytes);
}

/// Without the carried scores (a folder another tool wrote), the scores convert derives from
/// the merge ranks tokenize as the original scores do (distinct scores: where two pairs tie,
/// SentencePiece merges the leftmost and BPE the higher-ranked, which can part).
#[test]
fn sentencepiece_folder_without_carried_metadata_tokenizes_the_same() {
    let d = Dir::new();
    let (bytes, _) = spm_model(22, true);
    std::fs::write(d.p("in.gguf"), &bytes).unwrap();
    do_export(&d.p("in.gguf"), &d.p("hf"), false).unwrap();
    let mut c = read_config(&d.p("hf"));
    c.as_object_mut().unwrap().remove("pith_gguf_metadata");
    write_config(&d.p("hf"), &c);
    do_convert(&d.p("hf"), &d.p("back.gguf"), None).unwrap();
    let back = std::fs::read(d.p("back.gguf")).unwrap();
    let (ga, gb) = (Gguf::parse(&bytes).unwrap(), Gguf::parse(&back).unwrap());
    for k in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"] {
        assert_eq!(ga.get(k), gb.get(k), "{k}");
    }
    let (ta, tb) = (Tokenizer::from_gguf(&ga).unwrap(), Tokenizer::from_gguf(&gb).unwrap());
    for text in ["the cat sat on the mat", "he sat at the cat mat", "thematic cats, 42 é", "  the  mat "] {
        let ids = ta.encode(text, true).unwrap();
        assert_eq!(ids, tb.encode(text, true).unwrap(), "{text:?}");
    }
    let toks: Vec<u32> = (0..8).map(|i| (i * 29 % 300) as u32).collect();
    let (a, b) = (logits(&d.p("in.gguf"), &toks), logits(&d.p("back.gguf"), &toks));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}
