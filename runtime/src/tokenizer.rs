//! Text ↔ token ids, built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! The goal is to produce exactly the ids llama.cpp produces (`llama-vocab.cpp`,
//! `unicode.cpp`), so that a prompt means the same thing to pith as to llama.cpp:
//!
//! * **Special tokens** are matched in the raw text first, longest text first
//!   (`tokenizer_st_partition`): control and unknown tokens only when `parse_special` is on,
//!   user-defined tokens always; with llama.cpp's per-token `lstrip`/`rstrip` rules.
//! * **BPE** (`tokenizer.ggml.model` `gpt2`, and `gemma4`): the text is pre-split as llama.cpp
//!   does for the file's `tokenizer.ggml.pre` — its hand-written splitters for the GPT-2,
//!   Llama-3, Qwen2 and Qwen3.5 patterns, and its other regex lists run with llama.cpp's
//!   "collapsed category" trick on the `tokenizers` crate's regex engine (fancy-regex) — then
//!   each word is byte-level encoded and merged lowest merge rank first, leftmost on ties.
//! * **SPM** (`llama`): llama.cpp's merge loop (the adjacent pair whose concatenation is the
//!   highest-scoring token first, leftmost on ties), with the space prefix, `▁` escaping and
//!   `<0xXX>` byte fallback.
//!
//! Both merge loops are pith's own rather than `tokenizers`' BPE model: SPM merges by score,
//! which that model cannot express, and building the model (it wants owned `String`s for every
//! token and merge) took ~35 ms of the ~65 ms start-up for a 49k-token vocabulary; the loops
//! here work on token ids and start in a few milliseconds.

use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use tokenizers::utils::SysRegex;

use crate::gguf::Gguf;
use crate::Error;

// Token attributes, as llama.cpp's `llama_token_attr` (only the bits pith uses).
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;
const ATTR_LSTRIP: u16 = 1 << 7;
const ATTR_RSTRIP: u16 = 1 << 8;

/// SentencePiece's visible space, `▁` (U+2581).
const SPM_SPACE: &str = "\u{2581}";

/// "No symbol" / "no token" in the merge loops.
const NONE: u32 = u32::MAX;

fn err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

/// A fast hash for token texts and merge pairs (std's SipHash made hashing a third of the
/// start-up time), seeded randomly per tokenizer so a file cannot aim collisions at it.
#[derive(Clone, Copy)]
struct FastHash(u64);

impl FastHash {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new() -> Self {
        FastHash(RandomState::new().hash_one(0u64) | 1)
    }

    fn mix(h: u64, w: u64) -> u64 {
        (h.rotate_left(23) ^ w).wrapping_mul(Self::K)
    }

    /// A final avalanche, so the low bits used for table indices depend on every input bit.
    fn finish(mut h: u64) -> u64 {
        h ^= h >> 31;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^ (h >> 29)
    }

    fn bytes(self, b: &[u8]) -> u64 {
        let mut h = self.0 ^ b.len() as u64;
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = Self::mix(h, u64::from_le_bytes(w));
        }
        // The last 1..=7 bytes, read with overlapping loads (no partial stores to reload); with
        // the length in the seed this still tells all texts apart.
        let r = chunks.remainder();
        let n = r.len();
        if n >= 4 {
            let lo = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            let hi = u32::from_le_bytes([r[n - 4], r[n - 3], r[n - 2], r[n - 1]]);
            h = Self::mix(h, u64::from(lo) | u64::from(hi) << 32);
        } else if n > 0 {
            let w = u64::from(r[0]) | u64::from(r[n / 2]) << 8 | u64::from(r[n - 1]) << 16;
            h = Self::mix(h, w);
        }
        Self::finish(h)
    }
}

/// `FastHash` as a `Hasher` for the merge table's `u64` keys.
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = FastHash::mix(self.0, u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = FastHash::mix(self.0, x);
    }
    fn finish(&self) -> u64 {
        FastHash::finish(self.0)
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// Token texts in one buffer, with an open-addressing hash index from text to id.
struct Vocab {
    buf: String,
    /// `ends[i]` is where token `i`'s text ends in `buf` (it starts where `i - 1` ends).
    ends: Vec<u32>,
    /// Per slot: the text's hash in the high 32 bits, token id + 1 in the low ones (0 for an
    /// empty slot); a power-of-two size at most half full.
    slots: Vec<u64>,
    hasher: FastHash,
    /// Some text names two tokens (the later id is the one found).
    has_duplicates: bool,
}

impl Vocab {
    /// Indexes `texts`; with duplicates the last id wins, as in llama.cpp's `token_to_id`.
    fn new<'a>(texts: impl Iterator<Item = &'a str>, n: usize) -> Result<Self, Error> {
        let mut v = Vocab {
            buf: String::with_capacity(n * 8),
            ends: Vec::with_capacity(n),
            slots: vec![0; (n.max(1) * 2).next_power_of_two()],
            hasher: FastHash::new(),
            has_duplicates: false,
        };
        // Write to each page of the (zeroed, untouched) index before the inserts read it: a read
        // maps the shared zero page, and the insert's write then replaces it, which flushes the
        // TLB of every core running this process — an interrupt per page (~4 ms for the 1 MiB
        // index while the other loading thread runs).
        for s in v.slots.iter_mut().step_by(512) {
            *s = std::hint::black_box(0);
        }
        for (i, t) in texts.enumerate() {
            if t.is_empty() {
                v.buf.push_str(&format!("[EMPTY_{i}]")); // llama.cpp's name for an empty token
            } else {
                v.buf.push_str(t);
            }
            let end = u32::try_from(v.buf.len()).map_err(|_| err("the token texts exceed 4 GiB"))?;
            v.ends.push(end);
            if v.ends.len() > n {
                return Err(err("tokenizer.ggml.tokens is longer than it says"));
            }
            let id = (v.ends.len() - 1) as u32;
            let (slot, tag) = v.find_slot(v.text(id));
            v.has_duplicates |= v.slots[slot] != 0;
            v.slots[slot] = tag | u64::from(id + 1);
        }
        if v.ends.len() != n {
            return Err(err("tokenizer.ggml.tokens could not be read"));
        }
        Ok(v)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Token `id`'s text ("" when out of range).
    fn text(&self, id: u32) -> &str {
        let i = id as usize;
        let Some(&end) = self.ends.get(i) else {
            return "";
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.buf.get(start as usize..end as usize).unwrap_or("")
    }

    /// The slot holding `s`, or the empty slot where it would go; and the slot's tag for `s`.
    fn find_slot(&self, s: &str) -> (usize, u64) {
        let h = self.hasher.bytes(s.as_bytes());
        let mask = self.slots.len() - 1;
        let tag = h & 0xffff_ffff_0000_0000;
        let mut i = h as usize & mask;
        loop {
            let v = self.slots[i];
            if v == 0 || (v & 0xffff_ffff_0000_0000 == tag && self.text((v as u32) - 1) == s) {
                return (i, tag);
            }
            i = (i + 1) & mask;
        }
    }

    fn get(&self, s: &str) -> Option<u32> {
        match self.slots[self.find_slot(s).0] as u32 {
            0 => None,
            v => Some(v - 1),
        }
    }
}

/// Which algorithm turns a piece of text into ids.
enum Algo {
    /// SentencePiece-style (`tokenizer.ggml.model = llama`): score-driven merges.
    Spm,
    /// Byte-pair encoding over pre-split words.
    Bpe(Box<BpeModel>),
}

/// The merge rules "a b", found by text as llama.cpp's `bpe_ranks` finds them, but indexed by
/// the token that `a` + `b` make: the rule joining two adjacent symbols is looked up with the
/// token their joined text is (one vocabulary look-up) and the left symbol's length. Building
/// it takes no look-ups of the halves (keyed by the halves' ids, two hash look-ups per rule were
/// most of the tokenizer's start-up).
struct Merges {
    /// Per token: the rank and left-half length (bytes) of the first rule making it (rank
    /// `NONE`: no rule makes it).
    by_result: Vec<(u32, u32)>,
    /// Later rules making the same token with another split: (token << 32 | left length) →
    /// rank; rare.
    more: HashMap<u64, u32, FastHash>,
    /// Rules whose joined text is not a token (the joined symbol has no id): (a, b) → rank;
    /// rare.
    text: HashMap<(String, String), u32>,
}

impl Merges {
    /// The rule joining adjacent symbols whose texts are `joined[..split]` and
    /// `joined[split..]`: its rank, and the id of the joined text (`NONE` if not a token).
    fn find(&self, vocab: &Vocab, joined: &str, split: usize) -> Option<(u32, u32)> {
        match vocab.get(joined) {
            Some(t) => {
                let (rank, s) = self.by_result[t as usize];
                if rank == NONE {
                    None
                } else if s as usize == split {
                    Some((rank, t))
                } else if self.more.is_empty() {
                    None
                } else {
                    self.more.get(&pair(t, split as u32)).map(|&r| (r, t))
                }
            }
            None if self.text.is_empty() => None,
            None => self.text.get(&(joined[..split].to_owned(), joined[split..].to_owned())).map(|&r| (r, NONE)),
        }
    }
}

struct BpeModel {
    merges: Merges,
    pre: PreTokenizer,
    /// Map bytes to GPT-2's printable characters before merging (false for `gemma4`).
    byte_encode: bool,
    /// Replace ' ' with '▁' before splitting (`gemma4`).
    escape_whitespace: bool,
    /// A word found whole in the vocabulary is taken as is (llama3 and a few others).
    ignore_merges: bool,
    /// `gemma4`: a word made only of newlines is taken whole when it is a token.
    newline_words: bool,
}

/// A tokenizer built from GGUF metadata; see the module documentation.
pub struct Tokenizer {
    algo: Algo,
    vocab: Vocab,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    /// Control, user-defined and unknown tokens, longest text first: the partition order.
    specials: Vec<u32>,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field(
                "kind",
                &match self.algo {
                    Algo::Spm => "spm",
                    Algo::Bpe(_) => "bpe",
                },
            )
            .field("n_vocab", &self.vocab.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Pieces of the input after special-token partitioning.
#[derive(Clone, Copy, Debug)]
enum Frag {
    /// A byte range of the input still to be tokenized.
    Text(usize, usize),
    /// A special token matched in the text.
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer described by `g`'s `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, Error> {
        let model_name = g.get_str("tokenizer.ggml.model")?.ok_or_else(|| err("tokenizer.ggml.model is missing"))?;
        let pre_name = g.get_str("tokenizer.ggml.pre")?;

        // Model type and llama.cpp's defaults for it (llama_vocab::impl::load): SPM has <s> = 1,
        // </s> = 2, <unk> = 0, adds BOS and a space prefix; GPT-2 BPE uses id 11 for BOS and EOS.
        let pre_cfg = match model_name {
            "llama" => None,
            "gpt2" => Some(pre_config(pre_name.unwrap_or(""))?),
            "gemma4" => Some(pre_config("gemma4")?),
            other => {
                return Err(err(format!(
                    "tokenizer model '{other}' is not supported (pith supports gpt2, llama, gemma4)"
                )))
            }
        };
        let (mut bos, mut eos, mut unk) = match model_name {
            "llama" => (Some(1), Some(2), Some(0)),
            "gpt2" => (Some(11), Some(11), None),
            _ => (None, None, None),
        };
        let mut add_bos = pre_cfg.is_none();
        let mut add_space_prefix = pre_cfg.is_none();

        let list = g.get_array("tokenizer.ggml.tokens")?.ok_or_else(|| err("tokenizer.ggml.tokens is missing"))?;
        let strings = list.strings().ok_or_else(|| err("tokenizer.ggml.tokens is not an array of strings"))?;
        let n = list.len();
        if n == 0 || n >= NONE as usize {
            return Err(err(format!("the vocabulary has {n} tokens")));
        }
        let vocab = Vocab::new(strings, n)?;

        let scores: Vec<f32> = match g.get_array("tokenizer.ggml.scores")? {
            None => vec![0.0; n],
            Some(a) => {
                let mut v: Vec<f32> = if let Some(f) = a.f32s() {
                    f.collect()
                } else if let Some(i) = a.ints() {
                    i.map(|x| x as f32).collect()
                } else {
                    return Err(err("tokenizer.ggml.scores is not an array of numbers"));
                };
                if v.len() < n {
                    return Err(err(format!("tokenizer.ggml.scores has {} entries for {n} tokens", v.len())));
                }
                v.truncate(n);
                v
            }
        };

        let mut attrs: Vec<u16> = match g.get_array("tokenizer.ggml.token_type")? {
            None => vec![ATTR_NORMAL; n],
            Some(a) => {
                let mut v: Vec<u16> = a
                    .ints()
                    .ok_or_else(|| err("tokenizer.ggml.token_type is not an array of integers"))?
                    .map(|t| match t {
                        1 => ATTR_NORMAL,
                        2 => ATTR_UNKNOWN,
                        3 => ATTR_CONTROL,
                        4 => ATTR_USER_DEFINED,
                        5 => ATTR_UNUSED,
                        6 => ATTR_BYTE,
                        _ => 0,
                    })
                    .collect();
                if v.len() < n {
                    return Err(err(format!("tokenizer.ggml.token_type has {} entries for {n} tokens", v.len())));
                }
                v.truncate(n);
                v
            }
        };

        if let Some(cfg) = &pre_cfg {
            add_bos |= cfg.add_bos;
            if cfg.no_bos {
                bos = None;
            }
        }
        if let Some(b) = g.get_bool("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = b;
        }

        // Special token ids: defaults out of range are dropped; keys in range override.
        let in_range = |d: Option<u32>| d.filter(|&i| (i as usize) < n);
        (bos, eos, unk) = (in_range(bos), in_range(eos), in_range(unk));
        let key_id = |key: &str, default: Option<u32>| -> Result<Option<u32>, Error> {
            Ok(match g.get_u64(key)? {
                Some(v) if v < n as u64 => Some(v as u32),
                _ => default,
            })
        };
        let bos = key_id("tokenizer.ggml.bos_token_id", bos)?;
        let eos = key_id("tokenizer.ggml.eos_token_id", eos)?;
        let eot = key_id("tokenizer.ggml.eot_token_id", None)?;
        let eom = key_id("tokenizer.ggml.eom_token_id", None)?;
        let unk = key_id("tokenizer.ggml.unknown_token_id", unk)?;
        // FIM ids (the old prefix/suffix/middle keys override the new ones, as in llama.cpp).
        let fim = |new: &str, old: Option<&str>| -> Result<Option<u32>, Error> {
            let v = key_id(new, None)?;
            old.map_or(Ok(v), |k| key_id(k, v))
        };
        let mut fim_ids = [
            fim("tokenizer.ggml.fim_pre_token_id", Some("tokenizer.ggml.prefix_token_id"))?,
            fim("tokenizer.ggml.fim_suf_token_id", Some("tokenizer.ggml.suffix_token_id"))?,
            fim("tokenizer.ggml.fim_mid_token_id", Some("tokenizer.ggml.middle_token_id"))?,
            fim("tokenizer.ggml.fim_pad_token_id", None)?,
            fim("tokenizer.ggml.fim_rep_token_id", None)?,
            fim("tokenizer.ggml.fim_sep_token_id", None)?,
        ];

        if let Some(b) = g.get_bool("tokenizer.ggml.add_bos_token")? {
            add_bos = b;
        }
        if pre_cfg.as_ref().is_some_and(|c| c.name == "gemma4") {
            add_bos = true; // llama.cpp overrides this for Gemma 4
        }

        // FIM tokens not named by a key are found by their text and become control tokens.
        // (llama.cpp walks a hash map, so with several candidates its pick is arbitrary: take
        // the lowest id.)
        for (slot, names) in fim_ids.iter_mut().zip(FIM_TEXTS) {
            if slot.is_none() {
                *slot = names.iter().filter_map(|t| vocab.get(t)).min();
                if let Some(id) = *slot {
                    attrs[id as usize] |= ATTR_CONTROL;
                }
            }
        }

        // Control tokens named "unused" are unused.
        for (id, a) in attrs.iter_mut().enumerate() {
            if *a & ATTR_CONTROL != 0 && vocab.text(id as u32).contains("unused") {
                *a |= ATTR_UNUSED;
            }
        }

        // End-of-generation tokens: FIM pad/repo/sep, tokens known by their text (which become
        // control tokens), eos, eot, eom.
        let mut eog: Vec<u32> = fim_ids[3..].iter().flatten().copied().collect();
        for name in EOG_TEXTS {
            if let Some(id) = vocab.get(name) {
                eog.push(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
        for name in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = vocab.get(name) {
                attrs[id as usize] = ATTR_USER_DEFINED; // gpt-oss: always rendered
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let has = |eog: &[u32], texts: &[&str]| eog.iter().any(|&i| texts.contains(&vocab.text(i)));
        let (has_return, has_call, has_flush) =
            (has(&eog, &["<|return|>"]), has(&eog, &["<|call|>", "<|calls|>"]), has(&eog, &["<|flush|>"]));
        if has_call && (has_return || has_flush) {
            // o200k_harmony / solar-open: "<|end|>" does not end generation.
            if let Some(pos) = eog.iter().position(|&i| vocab.text(i) == "<|end|>") {
                let id = eog.remove(pos);
                attrs[id as usize] = ATTR_USER_DEFINED;
            }
        }
        if has(&eog, &["<|tool_response>", "<|plamo:eos|>"]) {
            // Gemma 4 and PLaMo have a normal "</s>".
            if let Some(pos) = eog.iter().position(|&i| vocab.text(i) == "</s>") {
                let id = eog.remove(pos);
                attrs[id as usize] = ATTR_NORMAL;
            }
        }

        // The special-token cache: longest text first (ties by id; llama.cpp's sort is unstable).
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        specials.sort_by(|&a, &b| vocab.text(b).len().cmp(&vocab.text(a).len()).then(a.cmp(&b)));

        // Per-model attributes that GGUF does not carry (llama.cpp sets them by name).
        let general_name = g.get_str("general.name")?.unwrap_or("").to_ascii_lowercase();
        let arch = g.get_str("general.architecture")?.unwrap_or("");
        let pre_raw = pre_name.unwrap_or("");
        let set = |attrs: &mut [u16], text: &str, bit: u16, on: bool| {
            if let Some(id) = vocab.get(text) {
                if on {
                    attrs[id as usize] |= bit;
                } else {
                    attrs[id as usize] &= !bit;
                }
            }
        };
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"].iter().any(|s| pre_raw.contains(s))
            || ["nomic-bert-moe", "jina-bert-v3"].iter().any(|s| arch.contains(s))
        {
            set(&mut attrs, "<mask>", ATTR_LSTRIP, true);
        } else if general_name.contains("phi-3") || general_name.contains("phi3") {
            for &id in &specials {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            set(&mut attrs, "</s>", ATTR_RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(&mut attrs, t, ATTR_RSTRIP, false);
            }
        } else if general_name.contains("modern-bert") {
            set(&mut attrs, "[MASK]", ATTR_LSTRIP, true);
        }

        let algo = match pre_cfg {
            None => Algo::Spm,
            Some(cfg) => Algo::Bpe(Box::new(build_bpe(g, &vocab, cfg)?)),
        };

        Ok(Tokenizer { algo, vocab, scores, attrs, specials, eog, bos, eos, unk, add_bos, add_space_prefix })
    }

    /// Text to ids. No BOS/EOS added. With `parse_special`, control tokens written in the text
    /// (`<|im_start|>`, ...) become their ids; user-defined tokens always do (as in llama.cpp).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, Error> {
        let frags = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        match &self.algo {
            Algo::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Frag::Text(start, len) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[start..start + len]);
                            let escaped = buf.replace(' ', SPM_SPACE);
                            self.spm_tokenize(&escaped, &mut out)?;
                            prev_special = false;
                        }
                        Frag::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Algo::Bpe(bpe) => {
                let mut scratch = BpeScratch::default();
                for f in frags {
                    match f {
                        Frag::Text(start, len) => {
                            let piece = &text[start..start + len];
                            if bpe.escape_whitespace {
                                self.bpe_tokenize(bpe, &piece.replace(' ', SPM_SPACE), &mut scratch, &mut out)?;
                            } else {
                                self.bpe_tokenize(bpe, piece, &mut scratch, &mut out)?;
                            }
                        }
                        Frag::Token(id) => out.push(id),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether a prompt should start with BOS (`tokenizer.ggml.add_bos_token`, or llama.cpp's
    /// default for the tokenizer type).
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End of generation: eos, eot, eom, and the tokens llama.cpp treats as such by their text
    /// (`<|im_end|>`, `<|endoftext|>`, `<end_of_turn>`, `<|eot_id|>`, ...; FIM pad/repo/sep).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Every end-of-generation id, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    /// The bytes token `id` stands for in output text (llama.cpp's `token_to_piece` without
    /// stripping): byte-level decoding for BPE, `▁` → space and `<0xXX>` → byte for SPM.
    /// Control and unknown tokens give nothing unless `special`; ids out of range give nothing.
    pub fn token_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(&attr) = self.attrs.get(id as usize) else {
            return Vec::new();
        };
        let text = self.vocab.text(id);
        if !special && attr & (ATTR_UNKNOWN | ATTR_CONTROL) != 0 {
            return Vec::new();
        }
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        if attr & ATTR_NORMAL != 0 {
            return match &self.algo {
                Algo::Bpe(b) if b.byte_encode => byte_decode(text),
                _ => text.replace(SPM_SPACE, " ").into_bytes(),
            };
        }
        if attr & ATTR_BYTE != 0 {
            return vec![parse_byte_token(text)];
        }
        Vec::new()
    }

    /// Ids to text (lossy UTF-8), as llama.cpp's `llama_detokenize` without its space clean-up:
    /// the concatenated [`token_bytes`](Self::token_bytes), minus the space an SPM tokenizer's
    /// space prefix put at the start of a first text token.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.token_bytes(id, special);
            let skip = usize::from(i == 0 && self.add_space_prefix && piece.first() == Some(&b' '));
            bytes.extend_from_slice(&piece[skip..]);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of the token whose text is exactly `text` (the vocabulary's spelling: `Ġ`/`▁` for
    /// spaces, `<|im_end|>` for specials).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text)
    }

    /// Splits `text` at special tokens (llama.cpp's `tokenizer_st_partition`).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Frag> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Frag::Text(0, text.len()));
        let bytes = text.as_bytes();
        let mut next = Vec::new();
        for &id in &self.specials {
            let attr = self.attrs[id as usize];
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let pat = self.vocab.text(id);
            if pat.is_empty() || !text.contains(pat) {
                continue;
            }
            next.clear();
            for &f in &frags {
                let Frag::Text(mut off, mut len) = f else {
                    next.push(f);
                    continue;
                };
                loop {
                    let Some(rel) = text[off..off + len].find(pat) else {
                        if len > 0 {
                            next.push(Frag::Text(off, len));
                        }
                        break;
                    };
                    let m = off + rel;
                    let mut left = m - off;
                    if attr & ATTR_LSTRIP != 0 {
                        while left > 0 && is_c_space(bytes[off + left - 1]) {
                            left -= 1;
                        }
                    }
                    if left > 0 {
                        next.push(Frag::Text(off, left));
                    }
                    next.push(Frag::Token(id));
                    let right = m + pat.len();
                    if right >= off + len {
                        break;
                    }
                    let (mut ro, mut rl) = (right, off + len - right);
                    if attr & ATTR_RSTRIP != 0 {
                        while rl > 0 && is_c_space(bytes[ro]) {
                            ro += 1;
                            rl -= 1;
                        }
                    }
                    (off, len) = (ro, rl);
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }

    /// SPM byte fallback: `<0xXX>`, else the byte itself as a token.
    fn byte_token(&self, b: u8) -> Result<u32, Error> {
        if let Some(id) = self.vocab.get(&format!("<0x{b:02X}>")) {
            return Ok(id);
        }
        if b < 0x80 {
            if let Some(id) = self.vocab.get(char::from(b).encode_utf8(&mut [0; 4])) {
                return Ok(id);
            }
        }
        // llama.cpp throws here; fall back to the unknown token when there is one.
        self.unk.ok_or_else(|| err(format!("the vocabulary has no token for byte 0x{b:02X}")))
    }

    /// llama.cpp's SPM session: start from UTF-8 characters, repeatedly merge the adjacent pair
    /// whose concatenation is the highest-scoring token (leftmost on ties), then map each
    /// symbol to its token or, failing that, to byte tokens.
    fn spm_tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<(), Error> {
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            let next = if start + len == text.len() { NONE } else { i as u32 + 1 };
            syms.push(Sym { start: start as u32, len: len as u32, id: NONE, prev: (i as u32).wrapping_sub(1), next });
        }
        if syms.is_empty() {
            return Ok(());
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<SpmBigram>, syms: &[Sym], left: u32, right: u32| {
            if left == NONE || right == NONE {
                return;
            }
            let (l, r) = (&syms[left as usize], &syms[right as usize]);
            let piece = &text[l.start as usize..(r.start + r.len) as usize];
            if let Some(id) = self.vocab.get(piece) {
                heap.push(SpmBigram { score: self.scores[id as usize], left, right, size: piece.len() as u32 });
            }
        };
        for i in 1..syms.len() as u32 {
            try_add(&mut heap, &syms, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left as usize, b.right as usize);
            let (ln, rn) = (syms[l].len, syms[r].len);
            if ln == 0 || rn == 0 || ln + rn != b.size {
                continue;
            }
            syms[l].len += rn;
            syms[r].len = 0;
            let rnext = syms[r].next;
            syms[l].next = rnext;
            if rnext != NONE {
                syms[rnext as usize].prev = b.left;
            }
            let lprev = syms[l].prev;
            try_add(&mut heap, &syms, lprev, b.left);
            try_add(&mut heap, &syms, b.left, rnext);
        }
        // Every merged symbol is a token by construction, so a symbol that is not a token is a
        // single character: llama.cpp's `rev_merge` re-segmentation never applies, and the
        // character goes out as byte tokens.
        let mut i = 0;
        while i != NONE {
            let s = &syms[i as usize];
            let piece = &text[s.start as usize..(s.start + s.len) as usize];
            match self.vocab.get(piece) {
                Some(id) => out.push(id),
                None => {
                    let bytes: Vec<u32> =
                        piece.as_bytes().iter().map(|&b| self.byte_token(b)).collect::<Result<_, _>>()?;
                    match self.unk {
                        // A vocabulary without byte tokens (llama.cpp throws): one unknown token
                        // per character, as SentencePiece without byte fallback gives.
                        Some(unk) if bytes.iter().all(|&id| id == unk) => out.push(unk),
                        _ => out.extend(bytes),
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    fn bpe_tokenize(&self, bpe: &BpeModel, text: &str, s: &mut BpeScratch, out: &mut Vec<u32>) -> Result<(), Error> {
        let words = bpe.pre.split(text)?;
        for w in &words {
            if w.is_empty() {
                continue;
            }
            let word: &str = if bpe.byte_encode {
                s.word.clear();
                s.word.extend(w.bytes().map(byte_char));
                &s.word
            } else {
                w
            };
            if bpe.ignore_merges || (bpe.newline_words && word.bytes().all(|b| b == b'\n')) {
                if let Some(id) = self.vocab.get(word) {
                    out.push(id);
                    continue;
                }
            }
            bpe_merge(bpe, &self.vocab, word, &mut s.syms, &mut s.heap, out);
        }
        Ok(())
    }
}

/// A symbol of the merge loops: a byte range of the word and its token id (`NONE` if the
/// text is not a token), linked to its neighbours (`NONE` at the ends).
#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    id: u32,
    prev: u32,
    next: u32,
}

/// The merge table's key for the token pair (`a`, `b`).
fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// A pair of adjacent SPM symbols whose concatenation is a token.
struct SpmBigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for SpmBigram {
    /// Highest score first, then leftmost (llama.cpp's comparator, with `<` on the floats).
    fn cmp(&self, o: &Self) -> Ordering {
        if self.score < o.score {
            Ordering::Less
        } else if self.score > o.score {
            Ordering::Greater
        } else {
            o.left.cmp(&self.left)
        }
    }
}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for SpmBigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for SpmBigram {}

/// A pair of adjacent BPE symbols that a merge rule joins.
struct BpeBigram {
    rank: u32,
    left: u32,
    right: u32,
    /// The symbols' lengths when queued: the pair is stale if either changed.
    llen: u32,
    rlen: u32,
    merged: u32,
}

impl Ord for BpeBigram {
    /// Lowest rank first, then leftmost (a max-heap, so reversed).
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then(o.left.cmp(&self.left))
    }
}
impl PartialOrd for BpeBigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for BpeBigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for BpeBigram {}

/// Buffers reused across the words of one `encode`.
#[derive(Default)]
struct BpeScratch {
    word: String,
    syms: Vec<Sym>,
    heap: BinaryHeap<BpeBigram>,
}

/// llama.cpp's BPE session on one word: symbols start as UTF-8 characters; the adjacent pair
/// with the lowest merge rank (leftmost on ties) is joined until no rule applies; each symbol
/// then goes out as its token, or byte by byte when it is not one.
fn bpe_merge(
    bpe: &BpeModel,
    vocab: &Vocab,
    word: &str,
    syms: &mut Vec<Sym>,
    heap: &mut BinaryHeap<BpeBigram>,
    out: &mut Vec<u32>,
) {
    syms.clear();
    heap.clear();
    for (i, (start, c)) in word.char_indices().enumerate() {
        let len = c.len_utf8();
        let id = vocab.get(&word[start..start + len]).unwrap_or(NONE);
        let next = if start + len == word.len() { NONE } else { i as u32 + 1 };
        syms.push(Sym { start: start as u32, len: len as u32, id, prev: (i as u32).wrapping_sub(1), next });
    }
    let text = |s: &Sym| &word[s.start as usize..(s.start + s.len) as usize];
    let add = |heap: &mut BinaryHeap<BpeBigram>, syms: &[Sym], left: u32, right: u32| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (&syms[left as usize], &syms[right as usize]);
        // Adjacent symbols: the right one starts where the left one ends.
        debug_assert_eq!(l.start + l.len, r.start);
        let joined = &word[l.start as usize..(r.start + r.len) as usize];
        if let Some((rank, merged)) = bpe.merges.find(vocab, joined, l.len as usize) {
            heap.push(BpeBigram { rank, left, right, llen: l.len, rlen: r.len, merged });
        }
    };
    for i in 1..syms.len() as u32 {
        add(heap, syms, i - 1, i);
    }
    while let Some(b) = heap.pop() {
        let (l, r) = (b.left as usize, b.right as usize);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len != b.llen || syms[r].len != b.rlen {
            continue; // outdated
        }
        syms[l].len += syms[r].len;
        syms[l].id = b.merged;
        syms[r].len = 0;
        let rnext = syms[r].next;
        syms[l].next = rnext;
        if rnext != NONE {
            syms[rnext as usize].prev = b.left;
        }
        let lprev = syms[l].prev;
        add(heap, syms, lprev, b.left);
        add(heap, syms, b.left, rnext);
    }
    let mut i = if syms.is_empty() { NONE } else { 0 };
    while i != NONE {
        let s = &syms[i as usize];
        if s.id != NONE {
            out.push(s.id);
        } else {
            // Not a token: its bytes one by one, skipping those without a token.
            for &b in text(s).as_bytes() {
                let id = if bpe.byte_encode {
                    if b < 0x80 {
                        vocab.get(char::from(b).encode_utf8(&mut [0; 4]))
                    } else {
                        None // a lone byte ≥ 0x80 is not UTF-8, so it names no token
                    }
                } else {
                    vocab.get(&format!("<0x{b:02X}>"))
                };
                out.extend(id);
            }
        }
        i = s.next;
    }
}

/// `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The byte of an SPM `<0xXX>` token (`strtol` of the two hex digits; 0 if malformed).
fn parse_byte_token(text: &str) -> u8 {
    text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level encoding

/// GPT-2's printable stand-in for byte `b`.
fn byte_char(b: u8) -> char {
    let self_mapped = |b: u8| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    if self_mapped(b) {
        return char::from(b);
    }
    // The others take 256, 257, ... in byte order.
    let rank = (0..b).filter(|&x| !self_mapped(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('\u{FFFD}')
}

/// The byte that GPT-2's printable character `c` stands for.
fn char_byte(c: char) -> Option<u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=255u8).map(|b| (byte_char(b), b)).collect()).get(&c).copied()
}

/// llama.cpp's `llama_decode_text`: byte-level characters back to bytes.
fn byte_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// BPE set-up

/// What a `tokenizer.ggml.pre` name means (llama_vocab::impl::load + llm_tokenizer_bpe).
struct PreConfig {
    name: &'static str,
    regexes: &'static [&'static str],
    byte_encode: bool,
    escape_whitespace: bool,
    ignore_merges: bool,
    add_bos: bool,
    /// No default BOS id (the file may still name one).
    no_bos: bool,
}

const FIM_PRE: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP: &[&str] = &["<|file_sep|>"];
/// Texts of the FIM prefix, suffix, middle, pad, repo and separator tokens.
const FIM_TEXTS: [&[&str]; 6] = [FIM_PRE, FIM_SUF, FIM_MID, FIM_PAD, FIM_REP, FIM_SEP];

/// Token texts llama.cpp treats as end of generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

// llama.cpp's pre-tokenizer regex lists (llm_tokenizer_bpe), by pre-tokenizer type.
const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const RE_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_NEWLINES: &str = r"[^\n]+|[\n]+";

const PRE_LLAMA3: &[&str] = &[RE_LLAMA3];
const PRE_JAIS2: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
];
const PRE_DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    concat!(
        "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}",
        "\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}",
        "\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}",
        "\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}",
        "\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}",
        "\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}",
        "\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}",
        "\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}",
        "\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}",
        "\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}",
        "\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}",
        "\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}",
        "\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}",
        "\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}",
        "\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}",
        "\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}",
        "\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
    ),
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
    "\\p{N}+",
];
const PRE_DEEPSEEK3: &[&str] = &[
    r"\p{N}{1,3}",
    "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const PRE_SPARK2_5: &[&str] = &[
    r"\p{N}{1,3}",
    "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"##,
    r"\p{N}",
];
const PRE_DEEPSEEK_CODER: &[&str] =
    &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+", r"\p{N}"];
const PRE_FALCON: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", RE_GPT2, "[0-9][0-9][0-9]"];
const PRE_STARCODER: &[&str] = &[r"\p{N}", RE_GPT2];
const PRE_GPT2: &[&str] = &[RE_GPT2];
const PRE_QWEN2: &[&str] = &[RE_QWEN2];
const PRE_QWEN35: &[&str] = &[RE_QWEN35];
const PRE_BLOOM: &[&str] = &[" ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+"];
const PRE_VIKING: &[&str] = &[" ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+", r"\p{N}"];
const PRE_TEKKEN: &[&str] = &[
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const PRE_CHAMELEON: &[&str] = &[
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    r"([\t\n]|    |  )",
    r"\p{N}",
    r"[\p{P}!-/:-@\[-`{-~]",
    RE_GPT2,
];
const PRE_GPT4O: &[&str] = &[
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const PRE_GRANITE_EMB_MULTI: &[&str] = &[
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const PRE_BAILINGMOE: &[&str] = &[
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
];
const PRE_SEED_CODER: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const PRE_UFAKZEKA: &[&str] = &[r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"];
const PRE_LAGUNA: &[&str] = &[RE_NEWLINES, RE_QWEN2];
const PRE_EXAONE_MOE: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
];
const PRE_NEWLINES: &[&str] = &[RE_NEWLINES];
const PRE_MINICPM5: &[&str] = &[
    r"\p{N}{1,3}",
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const PRE_DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", RE_GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];

/// The regexes llama.cpp splits text with before byte-level BPE for `tokenizer.ggml.pre` =
/// `pre` (applied in order, each splitting the pieces the previous ones left; matches and the
/// text between them are kept as pieces), and whether words found whole in the vocabulary skip
/// the merges. `None` for a name pith does not know or one that is not byte-level. This is what
/// `pith-compress export` writes as a Hugging Face `tokenizer.json` pre-tokenizer.
pub fn bpe_pre_split(pre: &str) -> Option<(&'static [&'static str], bool)> {
    let c = pre_config(pre).ok()?;
    c.byte_encode.then_some((c.regexes, c.ignore_merges))
}

fn pre_config(pre: &str) -> Result<PreConfig, Error> {
    let cfg = |name: &'static str, regexes: &'static [&'static str]| PreConfig {
        name,
        regexes,
        byte_encode: true,
        escape_whitespace: false,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    };
    let c = match pre {
        "" | "default" => cfg("default", PRE_DEFAULT),
        "minicpm5" => PreConfig { ignore_merges: true, ..cfg("minicpm5", PRE_MINICPM5) },
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => PreConfig { ignore_merges: true, add_bos: true, ..cfg("llama3", PRE_LLAMA3) },
        "jais-2" => cfg("jais-2", PRE_JAIS2),
        "dbrx" | "smaug-bpe" => cfg("dbrx", PRE_LLAMA3),
        "deepseek-llm" => cfg("deepseek-llm", PRE_DEEPSEEK_LLM),
        "deepseek-coder" => cfg("deepseek-coder", PRE_DEEPSEEK_CODER),
        "deepseek-v3" | "hunyuan-dense" | "hy_v4" | "joyai-llm" => cfg("deepseek-v3", PRE_DEEPSEEK3),
        "spark2_5" => cfg("spark2_5", PRE_SPARK2_5),
        "falcon" => cfg("falcon", PRE_FALCON),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg("starcoder", PRE_STARCODER)
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "exaone4"
        | "trillion" | "granite-docling" => cfg("gpt-2", PRE_GPT2),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "megrez" | "hunyuan" | "solar-open"
        | "grok-2" => cfg("qwen2", PRE_QWEN2),
        "qwen35" => cfg("qwen35", PRE_QWEN35),
        "poro-chat" | "bloom" | "gpt3-finnish" => cfg("bloom", PRE_BLOOM),
        "chatglm-bpe" => PreConfig { no_bos: true, ..cfg("chatglm-bpe", PRE_LLAMA3) },
        "glm4" | "glm5" => PreConfig { no_bos: true, ignore_merges: true, ..cfg("glm4", PRE_LLAMA3) },
        "viking" => cfg("viking", PRE_VIKING),
        "tekken" => PreConfig { ignore_merges: true, add_bos: true, ..cfg("tekken", PRE_TEKKEN) },
        "chameleon" => PreConfig { add_bos: true, ..cfg("chameleon", PRE_CHAMELEON) },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => cfg("gpt-4o", PRE_GPT4O),
        "granite-embed-multi-97m" => {
            PreConfig { ignore_merges: true, ..cfg("granite-embed-multi-97m", PRE_GRANITE_EMB_MULTI) }
        }
        "bailingmoe" | "bailingmoe2" | "llada-moe" => cfg("bailingmoe", PRE_BAILINGMOE),
        "seed-coder" => cfg("seed-coder", PRE_SEED_CODER),
        "ufakzeka" => cfg("ufakzeka", PRE_UFAKZEKA),
        "laguna" => cfg("laguna", PRE_LAGUNA),
        "exaone-moe" => cfg("exaone-moe", PRE_EXAONE_MOE),
        "gemma4" | "granite-embed-multi-311m" => {
            PreConfig { byte_encode: false, escape_whitespace: true, ..cfg("gemma4", PRE_NEWLINES) }
        }
        "sarvam-moe" => PreConfig { byte_encode: false, escape_whitespace: true, ..cfg("sarvam-moe", PRE_NEWLINES) },
        other => {
            return Err(err(format!("pre-tokenizer '{other}' is not supported")));
        }
    };
    Ok(c)
}

fn build_bpe(g: &Gguf<'_>, vocab: &Vocab, cfg: PreConfig) -> Result<BpeModel, Error> {
    let pre = PreTokenizer::new(cfg.regexes)?;

    // Merges "a b", split at the first space after the first byte, ranked by position; a pair
    // listed twice keeps its first rank (all as llama.cpp's `bpe_ranks`).
    let arr = g.get_array("tokenizer.ggml.merges")?.ok_or_else(|| err("tokenizer.ggml.merges is missing"))?;
    let list = arr.strings().ok_or_else(|| err("tokenizer.ggml.merges is not an array of strings"))?;
    let mut merges = Merges {
        by_result: vec![(NONE, 0); vocab.len()],
        more: HashMap::with_hasher(FastHash::new()),
        text: HashMap::new(),
    };
    let mut joined = String::new();
    let mut last = NONE;
    for (rank, m) in list.enumerate() {
        let rank = u32::try_from(rank).map_err(|_| err("too many merges"))?;
        let Some(sp) = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
            continue;
        };
        let (a, b) = (&m[..sp], &m[sp + 1..]);
        // Vocabularies usually list merge results in merge order: try the token after the
        // previous result before hashing. (No token's text is empty, so "a " makes none.)
        let guess = last.wrapping_add(1);
        let t = vocab.text(guess);
        let made = if b.is_empty() {
            None
        } else if !vocab.has_duplicates && t.len() == a.len() + b.len() && t.starts_with(a) && t.ends_with(b) {
            Some(guess)
        } else {
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            vocab.get(&joined)
        };
        match made {
            Some(id) => {
                last = id;
                let split = a.len() as u32;
                let first = &mut merges.by_result[id as usize];
                if first.0 == NONE {
                    *first = (rank, split);
                } else if first.1 != split {
                    merges.more.entry(pair(id, split)).or_insert(rank);
                }
            }
            None => {
                merges.text.entry((a.to_owned(), b.to_owned())).or_insert(rank);
            }
        }
    }
    Ok(BpeModel {
        merges,
        pre,
        byte_encode: cfg.byte_encode,
        escape_whitespace: cfg.escape_whitespace,
        ignore_merges: cfg.ignore_merges,
        newline_words: cfg.name == "gemma4",
    })
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenization (llama.cpp's unicode_regex_split)

// Per-character classes, as llama.cpp's `unicode_cpt_flags` (only what the splitters read).
const F_LETTER: u8 = 1 << 0;
const F_NUMBER: u8 = 1 << 1;
const F_SPACE: u8 = 1 << 2;
const F_MARK: u8 = 1 << 3;
const F_PUNCT: u8 = 1 << 4;
const F_SYMBOL: u8 = 1 << 5;
/// Set for every character: llama.cpp's flags are never all zero inside the text.
const F_ANY: u8 = 1 << 6;

/// Stand-ins for non-ASCII characters in llama.cpp's "collapsed" text (it uses bytes
/// 0xD0..=0xD5); private-use characters here, so no Rust regex class matches them by accident.
const COLLAPSED_OTHER: char = '\u{E0D0}';
const COLLAPSED_NUMBER: char = '\u{E0D1}';
const COLLAPSED_LETTER: char = '\u{E0D2}';
const COLLAPSED_PUNCT: char = '\u{E0D3}';
const COLLAPSED_MARK: char = '\u{E0D4}';
const COLLAPSED_SYMBOL: char = '\u{E0D5}';

/// Unicode categories recognised in llama.cpp regexes, with their collapsed stand-in and the
/// ASCII characters of the category (`k_ucat_enum`, `k_ucat_cpt`, `k_ucat_map`).
const UCATS: &[(&str, char, &str)] = &[
    (r"\p{N}", COLLAPSED_NUMBER, "0-9"),
    (r"\p{L}", COLLAPSED_LETTER, "A-Za-z"),
    (r"\p{P}", COLLAPSED_PUNCT, r"!-#%-*,-/:-;?-@\[-\]_\{\}"),
    (r"\p{M}", COLLAPSED_MARK, ""),
    (r"\p{S}", COLLAPSED_SYMBOL, r"\$\+<->^`\|\~"),
    (r"\p{Lu}", COLLAPSED_LETTER, "A-Za-z"),
    (r"\p{Ll}", COLLAPSED_LETTER, "A-Za-z"),
    (r"\p{Lt}", COLLAPSED_LETTER, "A-Za-z"),
    (r"\p{Lm}", COLLAPSED_LETTER, "A-Za-z"),
    (r"\p{Lo}", COLLAPSED_LETTER, "A-Za-z"),
];

enum Step {
    Gpt2,
    Llama3,
    Qwen2,
    Qwen35,
    Newlines,
    /// A general regex run on the collapsed text (`collapsed`) or on the characters.
    Regex {
        re: SysRegex,
        collapsed: bool,
    },
}

struct PreTokenizer {
    steps: Vec<Step>,
}

/// The characters of a piece of text, with what the splitters need to know about them.
struct Chars {
    chars: Vec<char>,
    flags: Vec<u8>,
}

impl PreTokenizer {
    fn new(regexes: &[&str]) -> Result<Self, Error> {
        let mut steps = Vec::with_capacity(regexes.len());
        for &r in regexes {
            let step = match r {
                RE_GPT2 => Step::Gpt2,
                RE_LLAMA3 => Step::Llama3,
                RE_QWEN2 => Step::Qwen2,
                RE_QWEN35 => Step::Qwen35,
                RE_NEWLINES => Step::Newlines,
                _ => {
                    let collapsed = UCATS.iter().any(|(k, _, _)| r.contains(k));
                    let pattern = if collapsed { collapse_regex(r)? } else { r.to_owned() };
                    let rust = ecma_to_rust(&pattern).map_err(|e| err(format!("pre-tokenizer regex {r:?}: {e}")))?;
                    let re = SysRegex::new(&rust).map_err(|e| err(format!("pre-tokenizer regex {r:?}: {e}")))?;
                    Step::Regex { re, collapsed }
                }
            };
            steps.push(step);
        }
        Ok(PreTokenizer { steps })
    }

    /// Splits `text` into words (llama.cpp's `unicode_regex_split`, without the byte encoding).
    fn split<'t>(&self, text: &'t str) -> Result<Vec<&'t str>, Error> {
        let cs = Chars::new(text)?;
        let n = cs.chars.len();
        let mut offsets = vec![n];
        let mut collapsed: Option<(String, Vec<usize>)> = None;
        let mut plain: Option<(String, Vec<usize>)> = None;
        for step in &self.steps {
            offsets = match step {
                Step::Gpt2 => split_gpt2(&cs, &offsets),
                Step::Llama3 => split_llama3(&cs, &offsets, Digits::UpTo3, false),
                Step::Qwen2 => split_llama3(&cs, &offsets, Digits::One, false),
                Step::Qwen35 => split_llama3(&cs, &offsets, Digits::One, true),
                Step::Newlines => split_newlines(&cs, &offsets),
                Step::Regex { re, collapsed: c } => {
                    let slot = if *c { &mut collapsed } else { &mut plain };
                    let (t, pos) = slot.get_or_insert_with(|| cs.transformed(*c));
                    split_regex(re, t, pos, &offsets)
                }
            };
        }
        // Offsets are in characters; turn them into byte slices of `text`.
        let mut byte_at = Vec::with_capacity(n + 1);
        byte_at.extend(text.char_indices().map(|(i, _)| i));
        byte_at.push(text.len());
        let mut words = Vec::with_capacity(offsets.len());
        let mut start = 0;
        for len in offsets {
            words.push(&text[byte_at[start]..byte_at[start + len]]);
            start += len;
        }
        Ok(words)
    }
}

impl Chars {
    fn new(text: &str) -> Result<Self, Error> {
        let chars: Vec<char> = text.chars().collect();
        let mut flags: Vec<u8> = chars.iter().map(|&c| base_flags(c)).collect();
        if !text.is_ascii() {
            let classes = categories().ok_or_else(|| err("cannot compile the Unicode category regexes"))?;
            // Byte offset → character index, for the matches.
            let mut idx = vec![0u32; text.len() + 1];
            for (ci, (bi, _)) in text.char_indices().enumerate() {
                idx[bi] = ci as u32;
            }
            idx[text.len()] = chars.len() as u32;
            for (re, bit) in classes {
                for (s, e) in re.find_iter(text) {
                    for f in &mut flags[idx[s] as usize..idx[e] as usize] {
                        *f |= *bit;
                    }
                }
            }
            for (&c, f) in chars.iter().zip(flags.iter_mut()) {
                let c = c as u32;
                if c >= 0x80 && NEW_IN_UNICODE_16.binary_search_by(|&(a, b)| range_cmp(a, b, c)).is_ok() {
                    *f &= F_SPACE | F_ANY;
                }
            }
        }
        Ok(Chars { chars, flags })
    }

    /// The text a general regex runs on, and each character's byte offset in it (plus the end).
    /// Collapsed: ASCII kept, other whitespace → 0x0B, other characters → their category's
    /// stand-in. Plain: the characters, with non-ASCII whitespace → 0x0B.
    fn transformed(&self, collapsed: bool) -> (String, Vec<usize>) {
        let mut s = String::with_capacity(self.chars.len());
        let mut pos = Vec::with_capacity(self.chars.len() + 1);
        for (&c, &f) in self.chars.iter().zip(&self.flags) {
            pos.push(s.len());
            let t = if c.is_ascii() {
                c
            } else if f & F_SPACE != 0 {
                '\u{0B}'
            } else if !collapsed {
                c
            } else if f & F_NUMBER != 0 {
                COLLAPSED_NUMBER
            } else if f & F_LETTER != 0 {
                COLLAPSED_LETTER
            } else if f & F_PUNCT != 0 {
                COLLAPSED_PUNCT
            } else if f & F_MARK != 0 {
                COLLAPSED_MARK
            } else if f & F_SYMBOL != 0 {
                COLLAPSED_SYMBOL
            } else {
                COLLAPSED_OTHER
            };
            s.push(t);
        }
        pos.push(s.len());
        (s, pos)
    }
}

/// Characters assigned in Unicode 16.0, which Rust's tables know and llama.cpp's (Unicode 15.1,
/// in the llama.cpp this is checked against) leave undefined: they get no category here either.
#[rustfmt::skip]
const NEW_IN_UNICODE_16: &[(u32, u32)] = &[
    (0x897, 0x897), (0x1B4E, 0x1B4F), (0x1B7F, 0x1B7F), (0x1C89, 0x1C8A), (0x2427, 0x2429),
    (0x31E4, 0x31E5), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3), (0x10D40, 0x10D65),
    (0x10D69, 0x10D85), (0x10D8E, 0x10D8F), (0x10EC2, 0x10EC4), (0x10EFC, 0x10EFC),
    (0x11380, 0x11389), (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x113B5),
    (0x113B7, 0x113C0), (0x113C2, 0x113C2), (0x113C5, 0x113C5), (0x113C7, 0x113CA),
    (0x113CC, 0x113D5), (0x113D7, 0x113D8), (0x113E1, 0x113E2), (0x116D0, 0x116E3),
    (0x11BC0, 0x11BE1), (0x11BF0, 0x11BF9), (0x11F5A, 0x11F5A), (0x13460, 0x143FA),
    (0x16100, 0x16139), (0x16D40, 0x16D79), (0x18CFF, 0x18CFF), (0x1CC00, 0x1CCF9),
    (0x1CD00, 0x1CEB3), (0x1E5D0, 0x1E5FA), (0x1E5FF, 0x1E5FF), (0x1F8B2, 0x1F8BB),
    (0x1F8C0, 0x1F8C1), (0x1FA89, 0x1FA89), (0x1FA8F, 0x1FA8F), (0x1FABE, 0x1FABE),
    (0x1FAC6, 0x1FAC6), (0x1FADC, 0x1FADC), (0x1FADF, 0x1FADF), (0x1FAE9, 0x1FAE9),
    (0x1FBCB, 0x1FBEF),
];

/// Where `c` lies relative to the range `a..=b`.
fn range_cmp(a: u32, b: u32, c: u32) -> Ordering {
    if b < c {
        Ordering::Less
    } else if a > c {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// Flags known without a category lookup: everything for ASCII, whitespace for the rest.
fn base_flags(c: char) -> u8 {
    let f = match c {
        'A'..='Z' | 'a'..='z' => F_LETTER,
        '0'..='9' => F_NUMBER,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | ' ' => F_SPACE,
        '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~' => F_SYMBOL,
        '!'..='/' | ':'..='@' | '['..='_' | '{' | '}' => F_PUNCT,
        _ if c.is_ascii() => 0,
        _ if c.is_whitespace() => F_SPACE,
        _ => 0,
    };
    f | F_ANY
}

/// Regexes for the general categories of non-ASCII characters (compiled on first use).
fn categories() -> Option<&'static [(SysRegex, u8)]> {
    static CATS: OnceLock<Option<Vec<(SysRegex, u8)>>> = OnceLock::new();
    CATS.get_or_init(|| {
        [(r"\p{L}+", F_LETTER), (r"\p{N}+", F_NUMBER), (r"\p{M}+", F_MARK), (r"\p{P}+", F_PUNCT), (r"\p{S}+", F_SYMBOL)]
            .iter()
            .map(|&(p, bit)| SysRegex::new(p).ok().map(|re| (re, bit)))
            .collect()
    })
    .as_deref()
}

/// llama.cpp's regex collapsing: each `\p{X}` becomes the category's stand-in plus its ASCII
/// members (inside a `[...]` already, or wrapped in one).
fn collapse_regex(r: &str) -> Result<String, Error> {
    if !r.is_ascii() {
        return Err(err(format!("regex {r:?} mixes Unicode categories and non-ASCII characters")));
    }
    let b = r.as_bytes();
    let mut out = String::with_capacity(r.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' && (i == 0 || b[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && b[i] == b']' && b[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'p' && b[i + 2] == b'{' {
            if let Some(close) = r[i + 3..].find('}').map(|p| p + i + 3).filter(|&c| c <= i + 10) {
                if let Some((_, stand_in, ascii)) = UCATS.iter().find(|(k, _, _)| *k == &r[i..=close]) {
                    if !inside {
                        out.push('[');
                    }
                    out.push(*stand_in);
                    out.push_str(ascii);
                    if !inside {
                        out.push(']');
                    }
                    i = close + 1;
                    continue;
                }
            }
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    Ok(out)
}

/// Translates the ECMAScript regexes llama.cpp hands to `std::regex` into Rust regex syntax,
/// with ECMAScript's ASCII meaning of `\s`, `\d`, `\w` and `\b`.
fn ecma_to_rust(p: &str) -> Result<String, String> {
    const SPACE: &str = r"\t\n\x0B\x0C\r ";
    let cs: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() * 2);
    let lit = |out: &mut String, c: char| {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    };
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            '\\' => {
                let e = *cs.get(i + 1).ok_or("trailing backslash")?;
                i += 2;
                match e {
                    's' => out.push_str(&format!("[{SPACE}]")),
                    'S' => out.push_str(&format!("[^{SPACE}]")),
                    'd' => out.push_str("[0-9]"),
                    'D' => out.push_str("[^0-9]"),
                    'w' => out.push_str("[0-9A-Za-z_]"),
                    'W' => out.push_str("[^0-9A-Za-z_]"),
                    'b' => out.push_str(r"(?-u:\b)"),
                    'B' => out.push_str(r"(?-u:\B)"),
                    _ => {
                        let (ch, used) = escape_char(e, &cs[i..])?;
                        i += used;
                        lit(&mut out, ch);
                    }
                }
            }
            '[' => {
                i += 1;
                out.push('[');
                if cs.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                let mut first = true;
                loop {
                    let c = *cs.get(i).ok_or("unterminated [")?;
                    if c == ']' && !first {
                        i += 1;
                        break;
                    }
                    first = false;
                    // One atom: a character, or a class escape (\s, \d, \w).
                    let lo = if c == '\\' {
                        let e = *cs.get(i + 1).ok_or("trailing backslash")?;
                        i += 2;
                        match e {
                            's' => {
                                out.push_str(SPACE);
                                continue;
                            }
                            'd' => {
                                out.push_str("0-9");
                                continue;
                            }
                            'w' => {
                                out.push_str("0-9A-Za-z_");
                                continue;
                            }
                            'S' | 'D' | 'W' => return Err(format!("\\{e} inside [] is not supported")),
                            _ => {
                                let (ch, used) = escape_char(e, &cs[i..])?;
                                i += used;
                                ch
                            }
                        }
                    } else {
                        i += 1;
                        c
                    };
                    // A range `lo-hi`, unless the '-' closes the class.
                    if cs.get(i) == Some(&'-') && cs.get(i + 1).is_some_and(|&n| n != ']') {
                        let h = cs[i + 1];
                        let hi = if h == '\\' {
                            let e = *cs.get(i + 2).ok_or("trailing backslash")?;
                            let (ch, used) = escape_char(e, &cs[i + 3..])?;
                            i += 3 + used;
                            ch
                        } else {
                            i += 2;
                            h
                        };
                        lit(&mut out, lo);
                        out.push('-');
                        lit(&mut out, hi);
                    } else {
                        lit(&mut out, lo);
                    }
                }
                out.push(']');
            }
            '(' if cs.get(i + 1) == Some(&'?') => {
                let k = *cs.get(i + 2).ok_or("bad group")?;
                if !matches!(k, ':' | '=' | '!') {
                    return Err(format!("group (?{k} is not supported"));
                }
                out.push('(');
                out.push('?');
                out.push(k);
                i += 3;
            }
            '{' => {
                // A counted repetition, copied as is.
                let end = cs[i..].iter().position(|&x| x == '}').ok_or("unterminated {")? + i;
                if !cs[i + 1..end].iter().all(|x| x.is_ascii_digit() || *x == ',') {
                    return Err("bad {} repetition".into());
                }
                out.extend(&cs[i..=end]);
                i = end + 1;
            }
            '.' => {
                out.push_str(r"[^\n\r\x{2028}\x{2029}]");
                i += 1;
            }
            '(' | ')' | '|' | '*' | '+' | '?' | '^' | '$' => {
                out.push(c);
                i += 1;
            }
            _ => {
                lit(&mut out, c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The character an ECMAScript escape `\e...` stands for, and how many characters after `e` it
/// used (`\xHH`, `\uHHHH`, control escapes, escaped punctuation).
fn escape_char(e: char, rest: &[char]) -> Result<(char, usize), String> {
    let hex = |n: usize| -> Result<char, String> {
        let s: String = rest.get(..n).ok_or("short hex escape")?.iter().collect();
        u32::from_str_radix(&s, 16).ok().and_then(char::from_u32).ok_or_else(|| format!("bad escape {s}"))
    };
    Ok(match e {
        'n' => ('\n', 0),
        'r' => ('\r', 0),
        't' => ('\t', 0),
        'f' => ('\u{0C}', 0),
        'v' => ('\u{0B}', 0),
        '0' => ('\0', 0),
        'x' => (hex(2)?, 2),
        'u' => (hex(4)?, 4),
        c if c.is_ascii_alphanumeric() => return Err(format!("escape \\{c} is not supported")),
        c => (c, 0),
    })
}

/// Runs a general regex over each fragment (llama.cpp's `unicode_regex_split_stl`): every match
/// and every gap between matches becomes a fragment.
fn split_regex(re: &SysRegex, text: &str, pos: &[usize], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len() * 2);
    let to_char = |b: usize| pos.partition_point(|&p| p < b);
    let mut start = 0;
    for &len in offsets {
        let (b0, b1) = (pos[start], pos[start + len]);
        let mut done = 0; // characters consumed in this fragment
        for (ms, me) in re.find_iter(&text[b0..b1]) {
            let (cs, ce) = (to_char(b0 + ms) - start, to_char(b0 + me) - start);
            if cs > done {
                out.push(cs - done);
            }
            out.push(ce - cs);
            done = ce;
        }
        if done < len {
            out.push(len - done);
        }
        start += len;
    }
    out
}

/// Splits runs of '\n' from runs of anything else.
fn split_newlines(cs: &Chars, offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let mut pos = start;
        while pos < start + len {
            let nl = cs.chars[pos] == '\n';
            let run = pos;
            while pos < start + len && (cs.chars[pos] == '\n') == nl {
                pos += 1;
            }
            out.push(pos - run);
        }
        start += len;
    }
    out
}

/// One fragment being split by a hand-written splitter: character and flag lookups that see
/// nothing outside the fragment, and the pieces cut so far.
struct Cutter<'a> {
    cs: &'a Chars,
    ini: usize,
    end: usize,
    prev: usize,
    out: &'a mut Vec<usize>,
}

/// What `cpt()` returns outside the fragment.
const OUT_OF_RANGE: u32 = u32::MAX;

impl Cutter<'_> {
    fn cpt(&self, p: usize) -> u32 {
        if p >= self.ini && p < self.end {
            self.cs.chars[p] as u32
        } else {
            OUT_OF_RANGE
        }
    }
    fn flags(&self, p: usize) -> u8 {
        if p >= self.ini && p < self.end {
            self.cs.flags[p]
        } else {
            0
        }
    }
    /// Cuts a piece ending at `end`; returns its length.
    fn cut(&mut self, end: usize) -> usize {
        let len = end - self.prev;
        if len > 0 {
            self.out.push(len);
        }
        self.prev = end;
        len
    }
    /// The alternatives every splitter ends with, after `nws` whitespace characters at `pos`:
    /// `\s+(?!\S)` (all but the last space when more text follows), then `\s+`, then any single
    /// character. Cuts the piece and returns the new position.
    fn cut_spaces_or_char(&mut self, pos: usize, nws: usize) -> usize {
        let end = if nws > 1 && self.cpt(pos + nws) != OUT_OF_RANGE {
            pos + nws - 1
        } else if nws > 0 {
            pos + nws
        } else {
            pos + 1
        };
        self.cut(end);
        end
    }
}

fn is(c: u32, ch: char) -> bool {
    c == ch as u32
}

fn lower_ascii(c: u32) -> u32 {
    if (b'A' as u32..=b'Z' as u32).contains(&c) {
        c + 32
    } else {
        c
    }
}

/// llama.cpp's `unicode_regex_split_custom_gpt2`:
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn split_gpt2(cs: &Chars, offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let (ini, end) = (start, start + len);
        start = end;
        let mut k = Cutter { cs, ini, end, prev: ini, out: &mut out };
        let mut pos = ini;
        while pos < end {
            let c = k.cpt(pos);
            let f = k.flags(pos);
            if is(c, '\'') && pos + 1 < end {
                let n = k.cpt(pos + 1);
                if is(n, 's') || is(n, 't') || is(n, 'm') || is(n, 'd') {
                    pos += k.cut(pos + 2);
                    continue;
                }
                if pos + 2 < end {
                    let nn = k.cpt(pos + 2);
                    if (is(n, 'r') && is(nn, 'e')) || (is(n, 'v') && is(nn, 'e')) || (is(n, 'l') && is(nn, 'l')) {
                        pos += k.cut(pos + 3);
                        continue;
                    }
                }
            }
            let sp = usize::from(is(c, ' '));
            let mut f2 = if sp == 1 { k.flags(pos + 1) } else { f };
            if f2 & F_LETTER != 0 {
                pos += sp;
                while f2 & F_LETTER != 0 {
                    pos += 1;
                    f2 = k.flags(pos);
                }
                k.cut(pos);
                continue;
            }
            if f2 & F_NUMBER != 0 {
                pos += sp;
                while f2 & F_NUMBER != 0 {
                    pos += 1;
                    f2 = k.flags(pos);
                }
                k.cut(pos);
                continue;
            }
            if f2 & (F_SPACE | F_LETTER | F_NUMBER) == 0 && f2 != 0 {
                pos += sp;
                while f2 & (F_SPACE | F_LETTER | F_NUMBER) == 0 && f2 != 0 {
                    pos += 1;
                    f2 = k.flags(pos);
                }
                k.cut(pos);
                continue;
            }
            let mut nws = 0;
            while k.flags(pos + nws) & F_SPACE != 0 {
                nws += 1;
            }
            pos = k.cut_spaces_or_char(pos, nws);
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Digits {
    One,
    UpTo3,
}

/// llama.cpp's `unicode_regex_split_custom_llama3` (`Digits::UpTo3`), `_qwen2` (`Digits::One`)
/// and `_qwen35` (`marks`: letter runs also take combining marks), for
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*`
/// `|\s*[\r\n]+|\s+(?!\S)|\s+`.
fn split_llama3(cs: &Chars, offsets: &[usize], digits: Digits, marks: bool) -> Vec<usize> {
    let word = if marks { F_LETTER | F_MARK } else { F_LETTER };
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let (ini, end) = (start, start + len);
        start = end;
        let mut k = Cutter { cs, ini, end, prev: ini, out: &mut out };
        let mut pos = ini;
        while pos < end {
            let c = k.cpt(pos);
            let f = k.flags(pos);
            if is(c, '\'') && pos + 1 < end {
                let n = lower_ascii(k.cpt(pos + 1));
                if is(n, 's') || is(n, 't') || is(n, 'm') || is(n, 'd') {
                    pos += k.cut(pos + 2);
                    continue;
                }
                if pos + 2 < end {
                    let nn = lower_ascii(k.cpt(pos + 2));
                    if (is(n, 'r') && is(nn, 'e')) || (is(n, 'v') && is(nn, 'e')) || (is(n, 'l') && is(nn, 'l')) {
                        pos += k.cut(pos + 3);
                        continue;
                    }
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(is(c, '\r') || is(c, '\n') || f & F_NUMBER != 0) && (f & word != 0 || k.flags(pos + 1) & word != 0) {
                pos += 1;
                while k.flags(pos) & word != 0 {
                    pos += 1;
                }
                k.cut(pos);
                continue;
            }
            // \p{N}{1,3} or \p{N}
            if f & F_NUMBER != 0 {
                match digits {
                    Digits::One => {
                        pos += 1;
                        k.cut(pos);
                    }
                    Digits::UpTo3 => {
                        let mut run = pos;
                        while k.flags(pos) & F_NUMBER != 0 {
                            pos += 1;
                            if pos - run >= 3 {
                                k.cut(pos);
                                run = pos;
                            }
                        }
                        k.cut(pos);
                    }
                }
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            let not_word = F_SPACE | word | F_NUMBER;
            let sp = usize::from(is(c, ' '));
            let mut f2 = if sp == 1 { k.flags(pos + 1) } else { f };
            if f2 & not_word == 0 && f != 0 {
                pos += sp;
                while f2 & not_word == 0 && f2 != 0 {
                    pos += 1;
                    f2 = k.flags(pos);
                }
                let mut c2 = k.cpt(pos);
                while is(c2, '\r') || is(c2, '\n') {
                    pos += 1;
                    c2 = k.cpt(pos);
                }
                k.cut(pos);
                continue;
            }
            let mut nws = 0;
            let mut last_rn = 0;
            while k.flags(pos + nws) & F_SPACE != 0 {
                let c2 = k.cpt(pos + nws);
                if is(c2, '\r') || is(c2, '\n') {
                    last_rn = pos + nws + 1;
                }
                nws += 1;
            }
            // \s*[\r\n]+
            if last_rn > 0 {
                pos = last_rn;
                k.cut(pos);
                continue;
            }
            pos = k.cut_spaces_or_char(pos, nws);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// Streaming detokenizer: push ids one at a time, get back the text that is complete UTF-8 so
/// far (a multi-byte character split across tokens is held until its last byte arrives).
/// Control tokens produce no text, as in [`Tokenizer::token_bytes`] with `special = false`.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds token `id`; returns the text completed by it (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend(tok.token_bytes(id, false));
        self.drain(false)
    }

    /// Returns whatever is left (an unfinished character becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        self.drain(true)
    }

    /// Decodes `pending` like `String::from_utf8_lossy`, keeping a trailing incomplete
    /// character unless `last`.
    fn drain(&mut self, last: bool) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None if last => {
                            out.push('\u{FFFD}');
                            rest = &[];
                            break;
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }
}
