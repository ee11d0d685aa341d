//! The tokenizer of a SentencePiece-style (`tokenizer.ggml.model = "llama"`) vocabulary, over
//! the GGUF's own arrays in flash: what `pith::tokenizer` does for such files (llama.cpp's SPM
//! session) without its std-only machinery. Quadratic in the prompt length, which is a
//! handful of tokens here; a host test of the firmware's output (run.sh) checks the ids.

use alloc::vec::Vec;
use pith::gguf::Gguf;

const SPACE: &str = "\u{2581}";
/// llama.cpp token types.
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_BYTE: i64 = 6;

pub struct Spm<'a> {
    /// (n_vocab) token texts, borrowed from the model.
    tokens: Vec<&'a str>,
    /// (n_vocab) merge scores.
    scores: Vec<f32>,
    /// (n_vocab) llama.cpp token types (1 normal when the file has none).
    types: Vec<i8>,
    /// (n_vocab) ids sorted by text, for lookups.
    by_text: Vec<u32>,
    pub unk: Option<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

impl<'a> Spm<'a> {
    pub fn from_gguf(g: &Gguf<'a>) -> Result<Self, &'static str> {
        if g.get_str("tokenizer.ggml.model").ok().flatten() != Some("llama") {
            return Err("the firmware tokenizes SentencePiece-style (llama) vocabularies only");
        }
        let arr = |k| g.get_array(k).ok().flatten();
        let tokens: Vec<&'a str> =
            arr("tokenizer.ggml.tokens").and_then(|a| a.strings()).ok_or("tokenizer.ggml.tokens is missing")?.collect();
        let scores: Vec<f32> = match arr("tokenizer.ggml.scores").and_then(|a| a.f32s()) {
            Some(s) => s.collect(),
            None => alloc::vec![0.0; tokens.len()],
        };
        let types: Vec<i8> = match arr("tokenizer.ggml.token_type").and_then(|a| a.ints()) {
            Some(t) => t.map(|t| t as i8).collect(),
            None => alloc::vec![1; tokens.len()],
        };
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err("tokenizer arrays differ in length");
        }
        let mut by_text: Vec<u32> = (0..tokens.len() as u32).collect();
        by_text.sort_unstable_by(|&a, &b| tokens[a as usize].cmp(tokens[b as usize]));
        let id = |k| g.get_u64(k).ok().flatten().map(|v| v as u32).filter(|&v| (v as usize) < tokens.len());
        let flag = |k, default| g.get_bool(k).ok().flatten().unwrap_or(default);
        Ok(Spm {
            unk: id("tokenizer.ggml.unknown_token_id"),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token", true),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
            tokens,
            scores,
            types,
            by_text,
        })
    }

    fn id(&self, text: &str) -> Option<u32> {
        self.by_text.binary_search_by(|&i| self.tokens[i as usize].cmp(text)).ok().map(|i| self.by_text[i])
    }

    /// Token ids of `text`: spaces as ▁, merged by score (leftmost pair on ties), unknown
    /// characters as byte tokens or, lacking those, one unknown token each.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut s = alloc::string::String::new();
        if self.add_space_prefix && !text.is_empty() {
            s.push_str(SPACE);
        }
        for c in text.chars() {
            if c == ' ' {
                s.push_str(SPACE);
            } else {
                s.push(c);
            }
        }
        let mut out = Vec::new();
        if self.add_bos {
            out.extend(self.bos);
        }
        // Symbols as byte ranges of `s`.
        let mut syms: Vec<(usize, usize)> = s.char_indices().map(|(i, c)| (i, i + c.len_utf8())).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 1..syms.len() {
                if let Some(id) = self.id(&s[syms[i - 1].0..syms[i].1]) {
                    let score = self.scores[id as usize];
                    if best.is_none_or(|(b, _)| score > b) {
                        best = Some((score, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            syms[i - 1].1 = syms[i].1;
            syms.remove(i);
        }
        for &(a, b) in &syms {
            let piece = &s[a..b];
            match self.id(piece) {
                Some(id) => out.push(id),
                None => {
                    let mut hex = [0u8; 6];
                    let bytes: Vec<Option<u32>> = piece
                        .bytes()
                        .map(|byte| {
                            let h = b"0123456789ABCDEF";
                            hex.copy_from_slice(&[
                                b'<',
                                b'0',
                                b'x',
                                h[(byte >> 4) as usize],
                                h[(byte & 15) as usize],
                                b'>',
                            ]);
                            core::str::from_utf8(&hex).ok().and_then(|t| self.id(t))
                        })
                        .collect();
                    if bytes.iter().all(Option::is_some) {
                        out.extend(bytes.into_iter().flatten());
                    } else {
                        out.extend(self.unk);
                    }
                }
            }
        }
        out
    }

    /// The bytes token `id` stands for in generated text (control and unknown tokens: none).
    pub fn piece(&self, id: u32, out: &mut Vec<u8>) {
        let Some(&t) = self.tokens.get(id as usize) else { return };
        match self.types[id as usize] as i64 {
            TYPE_CONTROL | TYPE_UNKNOWN => {}
            TYPE_BYTE => {
                if let Some(b) =
                    t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(b);
                }
            }
            _ => {
                for (i, part) in t.split(SPACE).enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(part.as_bytes());
                }
            }
        }
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }
}
