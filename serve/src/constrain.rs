//! `response_format`: output constrained to a JSON object or to a JSON schema, by masking the
//! logits of every step with llguidance (the grammar engine llama.cpp and mistral.rs use).
//!
//! - [`ResponseFormat::from_openai`] reads a request's `response_format` value and checks that
//!   its schema compiles (so a bad schema is a 400, not a failure mid-generation).
//! - [`ConstraintVocab`] is built once per loaded model: every token id's bytes in a token trie
//!   (llguidance's `TokEnv`) and the grammar compiler over it, shared by every request (`Arc`).
//! - [`Constraint`] is one request's parser: [`Constraint::mask_logits`] before sampling,
//!   [`Constraint::accept`] after, [`Constraint::is_finished`] to stop.
//!
//! Choices the caller sees:
//! - The JSON is written compactly with a space after `,` and `:` (`{"a": 1, "b": [2, 3]}`):
//!   no free whitespace between tokens, so a small model cannot wander off in newlines and
//!   the grammar ends at the closing brace. A schema's own `x-guidance` options are replaced.
//! - Control tokens (`<|im_start|>`, ...) never appear inside the JSON; end-of-generation tokens
//!   are allowed only where the JSON can end. The grammar stops by itself after the closing
//!   brace ([`Constraint::is_finished`]), so the caller need not wait for an EOS token.
//! - `strict` is accepted and needs no different handling: the output always follows the
//!   schema (llguidance's non-lenient mode; a keyword it cannot enforce is an error).

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

/// What a request asked its output to be.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    /// Free text (no constraint).
    Text,
    /// Any JSON object (`{"type": "json_object"}`).
    JsonObject,
    /// JSON valid against `schema` (`{"type": "json_schema", "json_schema": {"schema": ...}}`).
    JsonSchema { schema: Value },
}

/// The JSON-writing options every grammar is compiled with (llguidance's `x-guidance`).
fn writing_options() -> Value {
    json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

/// The llguidance grammar for a format (`None` for text).
fn grammar_for(fmt: &ResponseFormat) -> Option<TopLevelGrammar> {
    let mut schema = match fmt {
        ResponseFormat::Text => return None,
        ResponseFormat::JsonObject => json!({"type": "object"}),
        ResponseFormat::JsonSchema { schema } => schema.clone(),
    };
    match &mut schema {
        Value::Object(m) => {
            m.insert("x-guidance".to_string(), writing_options());
        }
        // `true` (anything) and `false` (nothing) have no room for options: wrap them.
        other => {
            let inner = other.take();
            schema = json!({"allOf": [inner], "x-guidance": writing_options()});
        }
    }
    Some(TopLevelGrammar::from_json_schema(schema))
}

/// Compiles `grammar` with `factory`, turning an error or a panic into a message.
fn compile(factory: &ParserFactory, grammar: TopLevelGrammar) -> Result<Matcher, String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory.create_parser(grammar)));
    match r {
        Ok(Ok(parser)) => {
            let m = Matcher::new(Ok(parser));
            match m.get_error() {
                Some(e) => Err(e),
                None => Ok(m),
            }
        }
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("the grammar compiler failed on it (internal error)".to_string()),
    }
}

/// A grammar compiler over a one-byte-per-token vocabulary: checks schemas without a model.
fn schema_checker() -> Result<&'static ParserFactory, String> {
    static CHECKER: OnceLock<Result<ParserFactory, String>> = OnceLock::new();
    CHECKER
        .get_or_init(|| {
            let mut f =
                ParserFactory::new_simple(&ApproximateTokEnv::single_byte_env()).map_err(|e| format!("{e:#}"))?;
            f.quiet();
            Ok(f)
        })
        .as_ref()
        .map_err(|e| format!("the JSON schema compiler is unavailable: {e}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ResponseFormat {
    /// Reads a request's `response_format` value (OpenAI's shapes): `{"type": "text"}`,
    /// `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"name": ...,
    /// "schema": {...}, "strict": ...}}`. A schema is compiled here, so that one llguidance
    /// cannot enforce is refused with the reason.
    pub fn from_openai(v: &Value) -> Result<Self, String> {
        let Value::Object(obj) = v else {
            return Err(format!(
                "response_format must be an object such as {{\"type\": \"json_object\"}}, not {}",
                kind(v)
            ));
        };
        let ty = match obj.get("type") {
            None => {
                return Err(
                    "response_format.type is missing (expected \"text\", \"json_object\" or \"json_schema\")".into()
                )
            }
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return Err(format!("response_format.type must be a string, not {}", kind(other))),
        };
        match ty {
            "text" => Ok(ResponseFormat::Text),
            "json_object" => Ok(ResponseFormat::JsonObject),
            "json_schema" => {
                let js = match obj.get("json_schema") {
                    None => {
                        return Err("response_format.json_schema is missing (type \"json_schema\" needs {\"name\": ..., \"schema\": {...}})".into())
                    }
                    Some(Value::Object(js)) => js,
                    Some(other) => {
                        return Err(format!("response_format.json_schema must be an object, not {}", kind(other)))
                    }
                };
                match js.get("name") {
                    None | Some(Value::String(_)) => {}
                    Some(other) => {
                        return Err(format!("response_format.json_schema.name must be a string, not {}", kind(other)))
                    }
                }
                match js.get("strict") {
                    None | Some(Value::Bool(_)) | Some(Value::Null) => {}
                    Some(other) => {
                        return Err(format!("response_format.json_schema.strict must be a boolean, not {}", kind(other)))
                    }
                }
                let schema = match js.get("schema") {
                    None => return Err("response_format.json_schema.schema is missing".into()),
                    Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                    Some(other) => {
                        return Err(format!(
                            "response_format.json_schema.schema must be a JSON schema (an object), not {}",
                            kind(other)
                        ))
                    }
                };
                let fmt = ResponseFormat::JsonSchema { schema };
                if let Some(g) = grammar_for(&fmt) {
                    compile(schema_checker()?, g)
                        .map_err(|e| format!("response_format.json_schema.schema is not a usable JSON schema: {e}"))?;
                }
                Ok(fmt)
            }
            other => Err(format!(
                "response_format.type \"{other}\" is not supported (expected \"text\", \"json_object\" or \"json_schema\")"
            )),
        }
    }
}

/// A model's vocabulary as the grammar engine sees it; built once per loaded model and shared.
pub struct ConstraintVocab {
    factory: ParserFactory,
    n_vocab: usize,
    /// End-of-generation ids: allowed only where the grammar can end.
    eog: Vec<u32>,
    /// Control and unknown tokens that are not end-of-generation: never allowed.
    control: Vec<u32>,
}

impl std::fmt::Debug for ConstraintVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintVocab")
            .field("n_vocab", &self.n_vocab)
            .field("eog", &self.eog)
            .field("control", &self.control.len())
            .finish()
    }
}

impl ConstraintVocab {
    /// Reads every token's bytes (byte tokens `<0xNN>` as their byte; control tokens as
    /// nothing, so no JSON can contain them) and builds the token trie and grammar compiler.
    pub fn new(tok: &pith::tokenizer::Tokenizer) -> Result<Arc<Self>, String> {
        let n_vocab = tok.n_vocab();
        let n = u32::try_from(n_vocab).map_err(|_| format!("a vocabulary of {n_vocab} tokens is too large"))?;
        if n == 0 {
            return Err("the vocabulary is empty".into());
        }
        let mut words = Vec::with_capacity(n_vocab);
        let mut eog = Vec::new();
        let mut control = Vec::new();
        for id in 0..n {
            if tok.is_eog(id) {
                eog.push(id);
                words.push(Vec::new());
                continue;
            }
            let bytes = tok.token_bytes(id, false);
            if bytes.is_empty() && !tok.token_bytes(id, true).is_empty() {
                control.push(id);
            }
            words.push(bytes);
        }
        if eog.is_empty() {
            match tok.eos() {
                Some(e) if e < n => {
                    eog.push(e);
                    words[e as usize].clear();
                    control.retain(|&c| c != e);
                }
                _ => return Err("the model has no end-of-generation token, which constrained output needs".into()),
            }
        }
        let first = tok.eos().filter(|e| eog.contains(e)).unwrap_or(eog[0]);
        let info = TokRxInfo::new(n, first);
        // The trie builder asserts on what it is given: a panic is an error here, not a crash.
        let built = std::panic::catch_unwind(|| {
            let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
            let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
            ParserFactory::new_simple(&env).map_err(|e| format!("{e:#}"))
        });
        let mut factory = match built {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(format!("cannot build the grammar engine's vocabulary: {e}")),
            Err(_) => return Err("cannot build the grammar engine's vocabulary (internal error)".into()),
        };
        factory.quiet();
        Ok(Arc::new(ConstraintVocab { factory, n_vocab, eog, control }))
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }
}

/// One request's constraint: a grammar parser over the shared vocabulary. `Send`, so the
/// scheduler's worker thread may own it.
pub struct Constraint {
    vocab: Arc<ConstraintVocab>,
    matcher: Matcher,
    /// The mask of the last [`Constraint::mask_logits`], until the next [`Constraint::accept`].
    mask: Option<SimpleVob>,
    finished: bool,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("finished", &self.finished).finish()
    }
}

impl Constraint {
    /// The parser for `fmt` (`None` for [`ResponseFormat::Text`]).
    pub fn new(vocab: &Arc<ConstraintVocab>, fmt: &ResponseFormat) -> Result<Option<Self>, String> {
        let Some(g) = grammar_for(fmt) else {
            return Ok(None);
        };
        let matcher = compile(&vocab.factory, g).map_err(|e| format!("response_format cannot be enforced: {e}"))?;
        Ok(Some(Constraint { vocab: Arc::clone(vocab), matcher, mask: None, finished: false }))
    }

    fn engine_error(&self, what: &str, e: impl std::fmt::Display) -> String {
        match self.matcher.get_error() {
            Some(m) => format!("constrained output: {what}: {m}"),
            None => format!("constrained output: {what}: {e}"),
        }
    }

    /// Sets every token the grammar does not allow next to `f32::NEG_INFINITY` (end of
    /// generation is allowed only where the JSON can end; after the end, only it is).
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let n = self.vocab.n_vocab;
        if logits.len() != n {
            return Err(format!("constrained output: {} logits for a vocabulary of {n} tokens", logits.len()));
        }
        let mask = if self.finished {
            let mut m = SimpleVob::alloc(n);
            for &e in &self.vocab.eog {
                m.allow_token(e);
            }
            m
        } else {
            match self.matcher.compute_mask() {
                Ok(m) => m,
                Err(e) => return Err(self.engine_error("computing the mask", e)),
            }
        };
        // 32 ids per word: a full word is left alone, a zero word cleared.
        for (w, chunk) in mask.as_slice().iter().zip(logits.chunks_mut(32)) {
            match *w {
                u32::MAX => {}
                0 => chunk.fill(f32::NEG_INFINITY),
                bits => {
                    for (i, l) in chunk.iter_mut().enumerate() {
                        if bits & (1 << i) == 0 {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        let words = mask.as_slice().len();
        if words * 32 < n {
            logits[words * 32..].fill(f32::NEG_INFINITY);
        }
        for &c in &self.vocab.control {
            logits[c as usize] = f32::NEG_INFINITY;
        }
        if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
            return Err("constrained output: the grammar allows no token here".into());
        }
        self.mask = Some(mask);
        Ok(())
    }

    /// Advances the grammar over the sampled `token` (which must be one the last mask allowed).
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        if token as usize >= self.vocab.n_vocab {
            return Err(format!("constrained output: token {token} is outside the vocabulary"));
        }
        if let Some(m) = self.mask.take() {
            if token as usize >= m.len() || !m.is_allowed(token) || self.vocab.control.contains(&token) {
                return Err(format!("constrained output: token {token} was not allowed by the grammar"));
            }
        }
        if self.finished {
            return if self.vocab.is_eog(token) {
                Ok(())
            } else {
                Err(format!("constrained output: token {token} after the JSON was complete"))
            };
        }
        let ok = match self.matcher.try_consume_tokens(&[token]) {
            Ok(k) => k,
            Err(e) => return Err(self.engine_error("advancing the grammar", e)),
        };
        if ok != 1 {
            return Err(format!("constrained output: token {token} does not continue the JSON"));
        }
        if self.matcher.is_stopped() || self.vocab.is_eog(token) {
            self.finished = true;
        }
        Ok(())
    }

    /// Whether the JSON is complete: generation must stop (an EOS token is not needed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

// A `Constraint` moves to the scheduler's worker thread; the vocabulary is shared by all.
const _: fn() = || {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Constraint>();
    send_sync::<ConstraintVocab>();
};

impl crate::scheduler::LogitMask for Constraint {
    fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), String> {
        Constraint::mask_logits(self, logits)
    }
    fn accept(&mut self, token: u32) -> Result<(), String> {
        Constraint::accept(self, token)
    }
    fn is_finished(&self) -> bool {
        Constraint::is_finished(self)
    }
}
