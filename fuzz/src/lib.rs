//! Shared code for pith's fuzz targets and the seed generator (`examples/make_seeds.rs`).
//!
//! [`ModelCase`] turns fuzz input bytes into a *structurally valid* tiny GGUF file of any
//! architecture pith runs (llama, qwen2, gemma3; every
//! tensor's bytes match its shape and type, offsets are aligned), plus the tokens and batch size
//! for one short forward pass. The input is read as a fixed sequence of one-byte "knobs"
//! (missing bytes read as 0, and all-zero knobs give a sane model that binds and runs), followed
//! by the prompt tokens and free-form byte patches. See [`knob`] for the layout; seeds are
//! written by [`ModelCase::to_bytes`].

use pith::gguf::writer::{GgufBuilder, OwnedValue};
use pith::gguf::ValueType;
use pith_kernels::{GgmlType, ALL_TYPES};

/// Largest dimension the generator produces (keeps every run fast).
pub const MAX_DIM: u64 = 256;
/// Context the forward pass gets (`State::new(&model, N_CTX, n_batch)`).
pub const N_CTX: usize = 8;

/// Byte positions of the knobs in the input.
pub mod knob {
    pub const N_EMBD: usize = 0; // index into EMBD
    pub const N_HEAD: usize = 1; // index into HEADS
    pub const N_HEAD_KV: usize = 2; // index into the divisors of n_head (≥ 0xF0: any 1..=16)
    pub const N_FF: usize = 3; // index into FF
    pub const N_VOCAB: usize = 4; // 0 → 96, else the value
    pub const N_LAYER: usize = 5; // 2 - (b & 1); ARCHES[(b >> 1) % 3]; gemma3 window (b >> 3) % 8
    pub const FLAGS: usize = 6; // see FLAG_*
    pub const TY_ATTN: usize = 7; // ALL_TYPES[b % 15] for q, k, v, o
    pub const TY_FFN: usize = 8; // ... gate, up, down
    pub const TY_EMBD: usize = 9; // ... token_embd
    pub const TY_OUT: usize = 10; // ... output
    pub const TY_NORM: usize = 11; // < 0xF0: f32, else ALL_TYPES[b % 15]
    pub const ALIGN: usize = 12; // index into ALIGNMENTS (general.alignment)
    pub const HEAD_DIM: usize = 13; // 0: n_embd / n_head, else b % 33 (written as key_length)
    pub const ROPE_DIM: usize = 14; // 0: absent, else b % 34
    pub const ROPE_SCALING: usize = 15; // 1: linear, 2: "none", 3: "yarn" (unsupported), else absent
    pub const ROPE_FACTOR: usize = 16; // factor = b / 16
    pub const RMS_EPS: usize = 17; // 0: 1e-5, 1: absent, 2: 0, 3: NaN, 4: 1e-6, else b * 1e-7
    pub const ROPE_THETA: usize = 18; // 0: 1e4, 1: absent, 2: 1, 3: inf, 4: NaN, else b * 1e3
    pub const CTX_LEN: usize = 19; // 0 → 256, else the value
    pub const MANGLE_KEY: usize = 20; // 0: none, else MANGLE_KEYS[(b - 1) % len]
    pub const MANGLE_KIND: usize = 21; // how the key's value is replaced (see mangled_value)
    pub const MANGLE_VAL: usize = 22; // two bytes, little-endian
    pub const RESHAPE_TENSOR: usize = 24; // 0: none, else tensor (b - 1) % n
    pub const RESHAPE_KIND: usize = 25; // see reshape()
    pub const RESHAPE_VAL: usize = 26; // new dimension (0 → 1)
    pub const DROP_TENSOR: usize = 27; // 0: none, else tensor (b - 1) % n is left out
    pub const RETYPE_TENSOR: usize = 28; // 0: none, else tensor (b - 1) % n ...
    pub const RETYPE_TYPE: usize = 29; // ... gets ALL_TYPES[b % 15]
    pub const SEED: usize = 30; // weight generator seed
    pub const N_BATCH: usize = 31; // 8 - b % 8
    pub const N_TOKENS: usize = 32; // 0 → 4, else b % 9
    /// Then N_TOKENS bytes of tokens (each `b % (n_vocab + 2)`: ids ≥ n_vocab are errors),
    /// then patches of 4 bytes: tensor, offset (u16 LE), value.
    pub const COUNT: usize = 33;

    pub const FLAG_TIED: u8 = 1; // no output.weight
    pub const FLAG_BIASES: u8 = 2; // attn_{q,k,v}.bias
    pub const FLAG_RAW_BYTES: u8 = 4; // random tensor bytes instead of quantized small values
    pub const FLAG_Q8: u8 = 8; // Precision::Q8 matmuls
    pub const FLAG_VOCAB_KEY: u8 = 16; // write llama.vocab_size
    pub const FLAG_NO_KV_KEY: u8 = 32; // omit head_count_kv
    pub const FLAG_VALUE_LENGTH: u8 = 64; // write key_length and value_length explicitly
}

const EMBD: [u64; 16] = [64, 32, 256, 128, 96, 16, 8, 48, 2, 4, 6, 10, 12, 192, 160, 24];
const HEADS: [u64; 8] = [4, 2, 1, 8, 3, 6, 5, 7];
const FF: [u64; 8] = [128, 64, 256, 32, 96, 160, 8, 24];
const ALIGNMENTS: [u32; 8] = [32, 64, 16, 8, 4, 2, 1, 128];
/// Architectures the builder writes (each with the tensors its row in pith's `model/arch.rs`
/// asks for, so a sane case binds).
const ARCHES: [&str; 3] = ["llama", "qwen2", "gemma3"];
/// Keys the fuzzer rewrites; `llama.` stands for the case's architecture.
const MANGLE_KEYS: [&str; 13] = [
    "llama.embedding_length",
    "llama.block_count",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.feed_forward_length",
    "llama.context_length",
    "llama.attention.key_length",
    "llama.attention.value_length",
    "llama.rope.dimension_count",
    "llama.vocab_size",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "general.architecture",
];

/// Reads knobs; past the end every byte is 0.
struct Knobs<'a>(&'a [u8]);
impl Knobs<'_> {
    fn get(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }
    fn u16(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.get(i), self.get(i + 1)])
    }
}

/// splitmix64, for tensor contents.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn ty(b: u8) -> GgmlType {
    ALL_TYPES[b as usize % ALL_TYPES.len()]
}

/// A tensor before serialisation.
struct Spec {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    /// Scale of the generated values; norms are centred on 1.
    scale: f32,
    norm: bool,
}

/// One fuzz case: the GGUF file and how to run it.
#[derive(Debug, Clone)]
pub struct ModelCase {
    pub file: Vec<u8>,
    pub tokens: Vec<u32>,
    pub n_batch: usize,
    pub q8: bool,
}

impl ModelCase {
    /// Decodes fuzz input (any bytes) into a case. Never panics; always a valid GGUF file.
    pub fn from_bytes(data: &[u8]) -> ModelCase {
        use knob::*;
        let k = Knobs(data);
        let flags = k.get(FLAGS);
        let n_embd = EMBD[k.get(N_EMBD) as usize % EMBD.len()];
        let n_head = HEADS[k.get(N_HEAD) as usize % HEADS.len()];
        let n_head_kv = {
            let b = k.get(N_HEAD_KV);
            if b >= 0xF0 {
                (b & 0xF) as u64 + 1
            } else {
                let mut divs: Vec<u64> = (1..=n_head).rev().filter(|d| n_head.is_multiple_of(*d)).collect();
                let r = 1.min(divs.len() - 1);
                divs.rotate_left(r);
                divs[b as usize % divs.len()]
            }
        };
        let n_ff = FF[k.get(N_FF) as usize % FF.len()];
        let n_vocab = match k.get(N_VOCAB) {
            0 => 96,
            b => b as u64,
        };
        let n_layer = 2 - (k.get(N_LAYER) & 1) as u64;
        let arch = ARCHES[(k.get(N_LAYER) >> 1) as usize % ARCHES.len()];
        let key = |s: &str| format!("{arch}.{s}");
        let head_dim_key = match k.get(HEAD_DIM) {
            0 => None,
            b => Some((b % 33) as u64),
        };
        // Shapes follow what pith's Config will derive, so a sane case binds.
        let head_dim = head_dim_key.unwrap_or(n_embd / n_head);
        let (q_dim, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);

        let mut b = GgufBuilder::new();
        b.kv("general.architecture", OwnedValue::String(arch.into()))
            .kv("general.name", OwnedValue::String("fuzz".into()))
            .kv("general.alignment", OwnedValue::U32(ALIGNMENTS[k.get(ALIGN) as usize % ALIGNMENTS.len()]))
            .kv(&key("embedding_length"), OwnedValue::U32(n_embd as u32))
            .kv(&key("block_count"), OwnedValue::U32(n_layer as u32))
            .kv(&key("attention.head_count"), OwnedValue::U32(n_head as u32))
            .kv(&key("feed_forward_length"), OwnedValue::U32(n_ff as u32))
            .kv(
                &key("context_length"),
                OwnedValue::U32(match k.get(CTX_LEN) {
                    0 => 256,
                    c => c as u32,
                }),
            );
        if flags & FLAG_NO_KV_KEY == 0 {
            b.kv(&key("attention.head_count_kv"), OwnedValue::U32(n_head_kv as u32));
        }
        if flags & FLAG_VOCAB_KEY != 0 {
            b.kv(&key("vocab_size"), OwnedValue::U32(n_vocab as u32));
        }
        if let Some(h) = head_dim_key {
            b.kv(&key("attention.key_length"), OwnedValue::U32(h as u32));
        }
        if flags & FLAG_VALUE_LENGTH != 0 {
            b.kv(&key("attention.key_length"), OwnedValue::U32(head_dim as u32));
            b.kv(&key("attention.value_length"), OwnedValue::U32(head_dim as u32));
        }
        match k.get(ROPE_DIM) {
            0 => {}
            r => {
                b.kv(&key("rope.dimension_count"), OwnedValue::U32((r % 34) as u32));
            }
        }
        let factor = OwnedValue::F32(k.get(ROPE_FACTOR) as f32 / 16.0);
        match k.get(ROPE_SCALING) {
            1 => {
                b.kv(&key("rope.scaling.type"), OwnedValue::String("linear".into()));
                b.kv(&key("rope.scaling.factor"), factor);
            }
            2 => {
                b.kv(&key("rope.scaling.type"), OwnedValue::String("none".into()));
            }
            3 => {
                b.kv(&key("rope.scaling.type"), OwnedValue::String("yarn".into()));
                b.kv(&key("rope.scaling.factor"), factor);
            }
            _ => {}
        }
        let eps = match k.get(RMS_EPS) {
            0 => Some(1e-5),
            1 => None,
            2 => Some(0.0),
            3 => Some(f32::NAN),
            4 => Some(1e-6),
            e => Some(e as f32 * 1e-7),
        };
        if let Some(e) = eps {
            b.kv(&key("attention.layer_norm_rms_epsilon"), OwnedValue::F32(e));
        }
        let theta = match k.get(ROPE_THETA) {
            0 => Some(10000.0),
            1 => None,
            2 => Some(1.0),
            3 => Some(f32::INFINITY),
            4 => Some(f32::NAN),
            t => Some(t as f32 * 1000.0),
        };
        if let Some(t) = theta {
            b.kv(&key("rope.freq_base"), OwnedValue::F32(t));
        }
        if arch == "gemma3" {
            let w = (k.get(N_LAYER) >> 3) % 8;
            if w != 0 {
                b.kv(&key("attention.sliding_window"), OwnedValue::U32(w as u32));
            }
        }
        if let Some(name) = k.get(MANGLE_KEY).checked_sub(1).map(|i| MANGLE_KEYS[i as usize % MANGLE_KEYS.len()]) {
            let name = match name.strip_prefix("llama.") {
                Some(rest) => key(rest),
                None => name.to_string(),
            };
            match mangled_value(k.get(MANGLE_KIND), k.u16(MANGLE_VAL)) {
                Some(v) => {
                    b.kv(&name, v);
                }
                None => b.metadata.retain(|(k, _)| *k != name),
            }
        }

        // Tensors, in the order llama.cpp writes them.
        let w = |name: String, rows: u64, cols: u64, t: usize| Spec {
            name,
            dims: vec![cols.max(1), rows.max(1)],
            ty: ty(k.get(t)),
            scale: 0.3,
            norm: false,
        };
        let v = |name: String, n: u64| Spec {
            name,
            dims: vec![n.max(1)],
            ty: match k.get(TY_NORM) {
                n if n < 0xF0 => GgmlType::F32,
                n => ty(n),
            },
            scale: 0.1,
            norm: true,
        };
        let mut specs = vec![w("token_embd.weight".into(), n_vocab, n_embd, TY_EMBD)];
        if flags & FLAG_TIED == 0 {
            specs.push(w("output.weight".into(), n_vocab, n_embd, TY_OUT));
        }
        specs.push(v("output_norm.weight".into(), n_embd));
        for l in 0..n_layer {
            let n = |s: &str| format!("blk.{l}.{s}");
            specs.push(v(n("attn_norm.weight"), n_embd));
            specs.push(w(n("attn_q.weight"), q_dim, n_embd, TY_ATTN));
            specs.push(w(n("attn_k.weight"), kv_dim, n_embd, TY_ATTN));
            specs.push(w(n("attn_v.weight"), kv_dim, n_embd, TY_ATTN));
            specs.push(w(n("attn_output.weight"), n_embd, q_dim, TY_ATTN));
            specs.push(v(n("ffn_norm.weight"), n_embd));
            specs.push(w(n("ffn_gate.weight"), n_ff, n_embd, TY_FFN));
            specs.push(w(n("ffn_up.weight"), n_ff, n_embd, TY_FFN));
            specs.push(w(n("ffn_down.weight"), n_embd, n_ff, TY_FFN));
            if arch == "gemma3" {
                specs.push(v(n("attn_q_norm.weight"), head_dim));
                specs.push(v(n("attn_k_norm.weight"), head_dim));
                specs.push(v(n("post_attention_norm.weight"), n_embd));
                specs.push(v(n("post_ffw_norm.weight"), n_embd));
            }
            // qwen2 needs its biases; llama takes them when present; gemma3 ignores them.
            if flags & FLAG_BIASES != 0 || arch == "qwen2" {
                for (s, d) in [("attn_q.bias", q_dim), ("attn_k.bias", kv_dim), ("attn_v.bias", kv_dim)] {
                    let mut b = v(n(s), d);
                    b.norm = false;
                    specs.push(b);
                }
            }
        }
        let pick = |b: u8, len: usize| b.checked_sub(1).map(|i| i as usize % len);
        if let Some(i) = pick(k.get(RESHAPE_TENSOR), specs.len()) {
            reshape(&mut specs[i].dims, k.get(RESHAPE_KIND), k.get(RESHAPE_VAL));
        }
        if let Some(i) = pick(k.get(RETYPE_TENSOR), specs.len()) {
            specs[i].ty = ty(k.get(RETYPE_TYPE));
        }
        if let Some(i) = pick(k.get(DROP_TENSOR), specs.len()) {
            specs.remove(i);
        }

        // Tensor bytes: small values quantized to the type (the file a converter would write),
        // or raw random bytes (NaN/inf scales and all).
        let mut rng = Rng(0x5EED ^ k.get(SEED) as u64);
        let raw = flags & FLAG_RAW_BYTES != 0;
        let mut datas: Vec<Vec<u8>> = Vec::with_capacity(specs.len());
        for s in &mut specs {
            let cols = s.dims[0] as usize;
            let rows = (s.dims[1..].iter().product::<u64>()) as usize;
            // A shape the type cannot hold would make the file itself invalid: use f32 then.
            let rb = match s.ty.row_bytes(cols) {
                Some(rb) => rb,
                None => {
                    s.ty = GgmlType::F32;
                    cols * 4
                }
            };
            let mut data = vec![0u8; rb * rows];
            if raw {
                for c in data.chunks_mut(8) {
                    let r = rng.next().to_le_bytes();
                    c.copy_from_slice(&r[..c.len()]);
                }
            } else {
                // Quantizing is slow for the K-quants (and more so under ASan): quantize a few
                // distinct rows and repeat them.
                let mut vals = vec![0f32; cols];
                let distinct = rows.min(3);
                for r in 0..distinct {
                    for x in vals.iter_mut() {
                        *x = rng.uniform() * s.scale + if s.norm { 1.0 } else { 0.0 };
                    }
                    pith_kernels::quantize_row(s.ty, &vals, &mut data[r * rb..(r + 1) * rb]);
                }
                for r in distinct..rows {
                    data.copy_within((r % distinct) * rb..(r % distinct + 1) * rb, r * rb);
                }
            }
            datas.push(data);
        }

        // Tokens, then byte patches into the tensors.
        let n_tok = match k.get(N_TOKENS) {
            0 => 4,
            n => (n % 9) as usize,
        };
        let tail = data.get(COUNT..).unwrap_or(&[]);
        let tokens: Vec<u32> =
            (0..n_tok).map(|i| tail.get(i).copied().unwrap_or(0) as u32 % (n_vocab as u32 + 2)).collect();
        for p in tail.get(n_tok..).unwrap_or(&[]).chunks_exact(4).take(64) {
            if datas.is_empty() {
                break;
            }
            let d = &mut datas[p[0] as usize % specs.len()];
            if !d.is_empty() {
                let at = u16::from_le_bytes([p[1], p[2]]) as usize % d.len();
                d[at] = p[3];
            }
        }
        for (s, d) in specs.into_iter().zip(datas) {
            b.tensor(&s.name, &s.dims, s.ty, d);
        }

        ModelCase { file: b.to_bytes(), tokens, n_batch: 8 - (k.get(N_BATCH) % 8) as usize, q8: flags & FLAG_Q8 != 0 }
    }

    /// Input bytes for a case: `knobs` (indexed by [`knob`] constants, missing = 0) and tokens.
    pub fn to_bytes(knobs: &[(usize, u8)], tokens: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; knob::COUNT];
        for &(i, b) in knobs {
            v[i] = b;
        }
        v[knob::N_TOKENS] = tokens.len() as u8;
        v.extend_from_slice(tokens);
        v
    }
}

/// A replacement for a hyper-parameter's value, of another type or out of range
/// (`None`: the key is removed).
fn mangled_value(kind: u8, v: u16) -> Option<OwnedValue> {
    Some(match kind % 14 {
        0 => return None,
        1 => OwnedValue::U32(0),
        2 => OwnedValue::U32(v as u32),
        3 => OwnedValue::U64(u64::MAX - v as u64),
        4 => OwnedValue::I32(-(v as i32)),
        5 => OwnedValue::I8(v as i8),
        6 => OwnedValue::U8(v as u8),
        7 => OwnedValue::I64(i64::MIN + v as i64),
        8 => OwnedValue::F32(f32::from_bits((v as u32) << 16)),
        9 => OwnedValue::F64(v as f64 / 7.0),
        10 => OwnedValue::String(if v % 2 == 0 { "llama".into() } else { format!("{v}") }),
        11 => OwnedValue::Bool(v % 2 == 1),
        12 => OwnedValue::Array(ValueType::U32, vec![OwnedValue::U32(v as u32); (v % 3) as usize]),
        _ => OwnedValue::U32(1 << (v % 32)),
    })
}

/// Changes a tensor's shape (staying within [`MAX_DIM`] per dimension and 4 dimensions).
fn reshape(dims: &mut Vec<u64>, kind: u8, val: u8) {
    let v = (val as u64).clamp(1, MAX_DIM);
    match kind % 6 {
        0 => dims[0] = v,
        1 => {
            if dims.len() > 1 {
                dims[1] = v
            } else {
                dims.push(v)
            }
        }
        2 => dims.truncate(1),
        3 => {
            if dims.len() < 4 {
                dims.push(1)
            }
        }
        4 => dims.reverse(),
        _ => {
            if dims.len() < 4 {
                dims.push(v)
            }
        }
    }
}

/// `bytes` copied to a 64-byte-aligned buffer, as a memory map would give it (the fuzzer's and
/// the allocator's alignment must not decide which code paths run). Returns (storage, offset).
pub fn aligned_copy(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut v = vec![0u8; bytes.len() + 64];
    let off = v.as_ptr().align_offset(64);
    v[off..off + bytes.len()].copy_from_slice(bytes);
    (v, off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_case_binds_and_runs() {
        let c = ModelCase::from_bytes(&[]);
        let g = pith::gguf::Gguf::parse(&c.file).unwrap();
        let m = pith::Model::from_gguf(&g).unwrap();
        let mut s = pith::State::new(&m, N_CTX, c.n_batch).unwrap();
        let l = m.forward(&mut s, &pith::Pool::single(), &c.tokens, pith::Logits::Last).unwrap();
        assert_eq!(l.len(), 96);
        assert!(l.iter().all(|x| x.is_finite()));
    }
}
