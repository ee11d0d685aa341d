//! Request and response bodies in OpenAI's shapes, parsed strictly (a wrong type in a known
//! field is an error naming the field; unknown fields are ignored, as OpenAI's clients send
//! extras), and the error body every failure answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pith::sampling::SamplerConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An HTTP error with OpenAI's body: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, code: None, message: message.into() }
    }
    /// 400: the request is malformed or asks for something impossible.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code, "param": Value::Null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// One chat message. `content` is a string or an array of `{"type": "text", "text"}` parts.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The `/v1/completions` prompt: a string, or an array holding one string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// What chat and text completions share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// OpenAI's newer name for `max_tokens` in chat.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// llama.cpp's name for `repetition_penalty`.
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<Value>,
    /// llama.cpp's extension: never stop at end-of-generation tokens (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// llama.cpp's extension: reuse the part of the prompt a slot already holds (default true).
    /// Reuse changes how the rest of the prompt is split into batches, which can move logits by
    /// float rounding; `false` computes the whole prompt, so an answer is reproducible
    /// bit for bit whatever the slot held.
    pub cache_prompt: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Chat: a boolean. `top_logprobs` (0..=20) alternatives per token when true.
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    /// Read from the same object by [`parse_request`] (not `#[serde(flatten)]`, which breaks
    /// on numbers when serde_json's `arbitrary_precision` is on anywhere in the build).
    #[serde(skip)]
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Legacy completions: an integer, the number of alternatives per token (0..=5 at OpenAI;
    /// up to 20 here).
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    /// As in [`ChatRequest::sampling`].
    #[serde(skip)]
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub add_special: bool,
    #[serde(default)]
    pub parse_special: Option<bool>,
    #[serde(default)]
    pub with_pieces: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

/// A chat or text completion request: its own fields and the sampling fields, both read from
/// the one JSON object.
pub trait WithSampling: serde::de::DeserializeOwned {
    fn set_sampling(&mut self, s: Sampling);
}

impl WithSampling for ChatRequest {
    fn set_sampling(&mut self, s: Sampling) {
        self.sampling = s;
    }
}

impl WithSampling for CompletionRequest {
    fn set_sampling(&mut self, s: Sampling) {
        self.sampling = s;
    }
}

/// Parses a completion request body (see [`parse`]).
pub fn parse_request<T: WithSampling>(body: &[u8]) -> Result<T, ApiError> {
    let v: Value = parse(body)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("invalid request: expected a JSON object"));
    }
    let invalid = |e: serde_json::Error| ApiError::bad_request(format!("invalid request: {e}"));
    let mut r: T = serde_json::from_value(v.clone()).map_err(invalid)?;
    r.set_sampling(serde_json::from_value(v).map_err(invalid)?);
    Ok(r)
}

/// Parses a JSON body; a syntax error or a wrong type names where it is.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "invalid JSON",
            _ => "invalid request",
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

/// The generation parameters of a request, checked and in pith's terms.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// `None`: until end of generation or the context is full.
    pub max_tokens: Option<usize>,
    pub sampling: SamplerConfig,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stop: Vec<String>,
    /// Alternatives per token when log-probabilities are asked for.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub response_format: Option<Value>,
    pub ignore_eos: bool,
    pub cache_prompt: bool,
}

/// Most `top_logprobs` alternatives.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Sampling {
    /// Checks every field's range; the message names the field.
    pub fn params(&self, logprobs: Option<usize>) -> Result<GenParams, ApiError> {
        let bad = |m: String| Err(ApiError::bad_request(m));
        if let Some(n) = self.n {
            if n != 1 {
                return bad(format!("n: only 1 choice per request is supported, got {n}"));
            }
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None | Some(-1) => None,
            Some(n) if n < 1 => return bad(format!("max_tokens must be at least 1 (or -1 for no limit), got {n}")),
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let mut s = SamplerConfig::default();
        if let Some(t) = self.temperature {
            if !t.is_finite() || t > 100.0 {
                return bad(format!("temperature must be a finite number ≤ 100 (≤ 0 is greedy), got {t}"));
            }
            s.temperature = t;
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
            s.top_p = p;
        }
        if let Some(k) = self.top_k {
            if k < 0 {
                return bad(format!("top_k must be ≥ 0 (0 = all tokens), got {k}"));
            }
            s.top_k = usize::try_from(k).unwrap_or(usize::MAX);
        }
        if let Some(m) = self.min_p {
            if !(0.0..=1.0).contains(&m) {
                return bad(format!("min_p must be in [0, 1], got {m}"));
            }
            s.min_p = m;
        }
        if let Some(r) = self.repetition_penalty.or(self.repeat_penalty) {
            if !(r > 0.0 && r.is_finite()) {
                return bad(format!("repetition_penalty must be positive, got {r}"));
            }
            s.repeat_penalty = r;
        }
        s.seed = match self.seed {
            Some(v) if v >= 0 => v as u64,
            // -1 or absent: a fresh seed.
            _ => fresh_seed(),
        };
        let pen = |name: &str, v: Option<f32>| -> Result<f32, ApiError> {
            match v {
                None => Ok(0.0),
                Some(v) if (-2.0..=2.0).contains(&v) => Ok(v),
                Some(v) => Err(ApiError::bad_request(format!("{name} must be in [-2, 2], got {v}"))),
            }
        };
        let presence_penalty = pen("presence_penalty", self.presence_penalty)?;
        let frequency_penalty = pen("frequency_penalty", self.frequency_penalty)?;
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) if v.len() > 4 => return bad(format!("stop: at most 4 sequences, got {}", v.len())),
            Some(Stop::Many(v)) => v.clone(),
        };
        let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
        if let Some(k) = logprobs {
            if k > MAX_TOP_LOGPROBS {
                return bad(format!("top_logprobs must be in 0..={MAX_TOP_LOGPROBS}, got {k}"));
            }
        }
        Ok(GenParams {
            max_tokens,
            sampling: s,
            presence_penalty,
            frequency_penalty,
            stop,
            logprobs,
            stream: self.stream,
            include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
            response_format: self.response_format.clone().filter(|v| !v.is_null()),
            ignore_eos: self.ignore_eos,
            cache_prompt: self.cache_prompt.unwrap_or(true),
        })
    }
}

fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

impl ChatRequest {
    pub fn top_logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs, self.top_logprobs) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(ApiError::bad_request("top_logprobs needs logprobs: true")),
            (true, None) => Ok(Some(0)),
            (true, Some(k)) if k < 0 => Err(ApiError::bad_request(format!("top_logprobs must be ≥ 0, got {k}"))),
            (true, Some(k)) => Ok(Some(usize::try_from(k).unwrap_or(usize::MAX))),
        }
    }

    /// The messages as the chat template takes them.
    pub fn messages(&self) -> Result<Vec<pith::chat::Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("messages must hold at least one message"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant" | "tool") {
                    return Err(ApiError::bad_request(format!(
                        "messages[{i}].role: unknown role '{}' (system, user, assistant)",
                        m.role
                    )));
                }
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut s = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => s.push_str(t),
                                ("text", None) => {
                                    return Err(ApiError::bad_request(format!(
                                        "messages[{i}].content[{j}]: a text part needs 'text'"
                                    )))
                                }
                                (k, _) => {
                                    return Err(ApiError::bad_request(format!(
                                        "messages[{i}].content[{j}]: content of type '{k}' is not supported (text only)"
                                    )))
                                }
                            }
                        }
                        s
                    }
                };
                let role = if m.role == "developer" { "system" } else { m.role.as_str() };
                Ok(pith::chat::Message::new(role, &content))
            })
            .collect()
    }
}

impl CompletionRequest {
    pub fn prompt(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            Prompt::Text(s) => Ok(s),
            Prompt::Texts(v) if v.len() == 1 => Ok(&v[0]),
            Prompt::Texts(v) => {
                Err(ApiError::bad_request(format!("prompt: one prompt per request is supported, got {}", v.len())))
            }
        }
    }
    pub fn top_logprobs(&self) -> Result<Option<usize>, ApiError> {
        match self.logprobs {
            None => Ok(None),
            Some(k) if k < 0 => Err(ApiError::bad_request(format!("logprobs must be ≥ 0, got {k}"))),
            Some(k) => Ok(Some(usize::try_from(k).unwrap_or(usize::MAX))),
        }
    }
}

/// Everything the server does with a request body before the model sees it, for every route
/// that takes one: parse, check ranges, build the messages and render them with a chat
/// template (the fuzz target `serve_request` drives this with arbitrary bytes).
pub fn check_body(body: &[u8], template: &pith::chat::ChatTemplate) -> Vec<Result<(), ApiError>> {
    let chat = parse_request::<ChatRequest>(body).and_then(|r| {
        let p = r.sampling.params(r.top_logprobs()?)?;
        if let Some(f) = &p.response_format {
            crate::constrain::ResponseFormat::from_openai(f).map_err(ApiError::bad_request)?;
        }
        let m = r.messages()?;
        template.render(&m, true).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(())
    });
    let text = parse_request::<CompletionRequest>(body).and_then(|r| {
        r.sampling.params(r.top_logprobs()?)?;
        r.prompt().map(|_| ())
    });
    let tok = parse::<TokenizeRequest>(body).map(|_| ());
    let detok = parse::<DetokenizeRequest>(body).map(|_| ());
    vec![chat, text, tok, detok]
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse_request::<ChatRequest>(br#"{"messages": [], "temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("invalid request"), "{}", e.message);
        let e = parse_request::<ChatRequest>(br#"{"messages": [{"role": "user", "content": "x"}"#).unwrap_err();
        assert!(e.message.contains("invalid JSON"), "{}", e.message);
        let e = parse_request::<ChatRequest>(b"").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = parse_request::<ChatRequest>(br#"{"model": "m"}"#).unwrap_err();
        assert!(e.message.contains("messages"), "{}", e.message);
    }

    #[test]
    fn ranges_are_checked() {
        let r: ChatRequest = parse_request(br#"{"messages": [{"role":"user","content":"hi"}], "top_p": 0}"#).unwrap();
        assert!(r.sampling.params(None).unwrap_err().message.contains("top_p"));
        let r: ChatRequest = parse_request(br#"{"messages": [{"role":"user","content":"hi"}], "n": 2}"#).unwrap();
        assert!(r.sampling.params(None).unwrap_err().message.contains("n:"));
        let r: ChatRequest =
            parse_request(br#"{"messages": [{"role":"user","content":"hi"}], "max_tokens": 0}"#).unwrap();
        assert!(r.sampling.params(None).unwrap_err().message.contains("max_tokens"));
        let r: ChatRequest =
            parse_request(br#"{"messages": [{"role":"user","content":"hi"}], "stop": ["a","b","c","d","e"]}"#).unwrap();
        assert!(r.sampling.params(None).unwrap_err().message.contains("stop"));
        let r: ChatRequest = parse_request(br#"{"messages": [{"role":"wizard","content":"hi"}]}"#).unwrap();
        assert!(r.messages().unwrap_err().message.contains("role"));
        let r: ChatRequest = parse_request(
            br#"{"messages": [{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                 "max_tokens": -1, "temperature": 0, "seed": 5, "stop": "x", "logprobs": true, "top_logprobs": 3}"#,
        )
        .unwrap();
        assert_eq!(r.messages().unwrap()[0].content, "ab");
        let p = r.sampling.params(r.top_logprobs().unwrap()).unwrap();
        assert_eq!(
            (p.max_tokens, p.sampling.seed, p.stop.clone(), p.logprobs),
            (None, 5, vec!["x".to_string()], Some(3))
        );
    }
}
