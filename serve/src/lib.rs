//! `pith serve`: a local OpenAI-compatible server over one model.
//!
//! - `api.rs`: the request and response bodies (OpenAI's shapes), their validation, the error body.
//! - `scheduler.rs`: the slots; one worker thread owns the model binding and runs one forward
//!   pass per step over every active sequence (continuous batching).
//! - `constrain.rs`: `response_format` (JSON / JSON schema) as a logit mask (llguidance).
//! - `web/index.html`: the chat page served at `/`, embedded in the binary.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as Server-Sent Events
//! or not), `GET /v1/models`, `GET /health` (503 while the model loads), `POST /tokenize`,
//! `POST /detokenize`, `GET /metrics` (Prometheus text), `GET /` (the page). Every error is an
//! OpenAI-style `{"error": {...}}` with its 4xx/5xx status; no request body can panic the server.

pub mod api;
pub mod constrain;
pub mod scheduler;

use api::{ApiError, GenParams, Usage};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream::{self, Stream};
use pith::session::{LoadOptions, LoadedModel};
use scheduler::{Event, Job, LogitMask, Scheduler, SlotConfig, TokenInfo};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// The chat page.
const INDEX_HTML: &str = include_str!("../web/index.html");

/// `pith serve`'s settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model: PathBuf,
    /// The id clients name the model by (default: the file name without `.gguf`).
    pub alias: Option<String>,
    pub host: String,
    pub port: u16,
    /// Context of each slot (default: the model's training context, at most 4096).
    pub ctx: Option<usize>,
    pub parallel: usize,
    pub threads: usize,
    pub n_batch: usize,
    /// Requests that may wait for a slot (more get 503).
    pub queue: usize,
    pub api_key: Option<String>,
    /// Allow a non-loopback bind without an API key.
    pub insecure: bool,
    /// Largest request body in bytes (more get 413).
    pub max_body: usize,
    /// KV cache types of every slot.
    pub cache_k: pith::model::CacheType,
    pub cache_v: pith::model::CacheType,
    /// How the model file is held: read into huge pages (default) or mapped (`--mmap`).
    pub weights: pith::file::WeightMemory,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            model: PathBuf::new(),
            alias: None,
            host: "127.0.0.1".into(),
            port: 8080,
            ctx: None,
            parallel: 4,
            threads: 0,
            n_batch: 512,
            queue: 64,
            api_key: None,
            insecure: false,
            max_body: 4 << 20,
            cache_k: pith::model::CacheType::F16,
            cache_v: pith::model::CacheType::F16,
            weights: pith::file::WeightMemory::default(),
        }
    }
}

/// What the handlers share.
struct App {
    opts: ServeOptions,
    model_id: String,
    ready: OnceLock<Ready>,
    started: Instant,
    created: u64,
    requests: [AtomicU64; ROUTES.len()],
    errors: AtomicU64,
    next_id: AtomicU64,
}

struct Ready {
    model: Arc<LoadedModel>,
    sched: Scheduler,
    n_ctx: usize,
    /// The vocabulary as the grammar engine sees it: built once, on a thread of its own after
    /// loading (0.3 s for a 49k vocabulary, seconds for 262k); a JSON request that comes
    /// before it is done waits for it.
    vocab: Arc<OnceLock<Result<Arc<constrain::ConstraintVocab>, String>>>,
}

const ROUTES: [&str; 7] = ["chat_completions", "completions", "models", "tokenize", "detokenize", "health", "metrics"];

impl App {
    fn count(&self, route: &str) {
        if let Some(i) = ROUTES.iter().position(|r| *r == route) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "the model is still loading")
        })
    }
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.opts.api_key else { return Ok(()) };
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid or missing API key (Authorization: Bearer KEY)",
            ))
        }
    }
    fn check_model(&self, name: &Option<String>) -> Result<(), ApiError> {
        match name.as_deref() {
            None | Some("") => Ok(()),
            Some(n) if n == self.model_id => Ok(()),
            Some(n) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("model '{n}' does not exist; this server serves '{}'", self.model_id),
            )
            .with_code("model_not_found")),
        }
    }
    async fn body(&self, body: Body) -> Result<axum::body::Bytes, ApiError> {
        axum::body::to_bytes(body, self.opts.max_body).await.map_err(|e| {
            let too_big = find_source::<http_body_util::LengthLimitError>(&e);
            if too_big {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    format!("the request body is larger than {} bytes", self.opts.max_body),
                )
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            }
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_loopback(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost",
    }
}

/// Runs the server until Ctrl-C (which drains: requests in flight finish, new ones are
/// refused) or until loading the model fails.
pub fn serve(opts: ServeOptions) -> Result<(), String> {
    if !is_loopback(&opts.host) && opts.api_key.is_none() && !opts.insecure {
        return Err(format!(
            "--host {} is reachable from other machines: pass --api-key KEY (clients send it as a bearer token) or --insecure",
            opts.host
        ));
    }
    if opts.parallel == 0 {
        return Err("--parallel must be at least 1".into());
    }
    if opts.queue == 0 {
        return Err("--queue must be at least 1".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pith-serve-http")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    rt.block_on(run(opts))
}

async fn run(opts: ServeOptions) -> Result<(), String> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("binding {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("binding {addr}: {e}"))?;
    let model_id = opts.alias.clone().unwrap_or_else(|| {
        let name = opts.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.strip_suffix(".gguf").map(str::to_string).unwrap_or(name)
    });
    let app = Arc::new(App {
        opts: opts.clone(),
        model_id,
        ready: OnceLock::new(),
        started: Instant::now(),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        requests: Default::default(),
        errors: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
    });
    eprintln!("pith serve: listening on http://{local} (loading {})", opts.model.display());
    // Load in the background: /health answers 503 meanwhile.
    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::channel::<String>(1);
    let loader = app.clone();
    tokio::task::spawn_blocking(move || {
        let r = load(&loader);
        match r {
            Ok(msg) => eprintln!("{msg}"),
            Err(e) => {
                let _ = fail_tx.try_send(e);
            }
        }
    });
    let router = router(app.clone());
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("pith serve: draining (requests in flight finish; Ctrl-C again to quit now)");
                tokio::spawn(async {
                    let _ = tokio::signal::ctrl_c().await;
                    std::process::exit(130);
                });
                Ok(())
            }
            Some(e) = fail_rx.recv() => Err(e),
        }
    };
    let (err_tx, err_rx) = tokio::sync::oneshot::channel::<String>();
    let shutdown = async move {
        if let Err(e) = shutdown.await {
            let _ = err_tx.send(e);
        }
    };
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.map_err(|e| format!("serving: {e}"))?;
    if let Ok(e) = err_rx.await {
        return Err(e);
    }
    eprintln!("pith serve: stopped");
    Ok(())
}

fn load(app: &App) -> Result<String, String> {
    let o = &app.opts;
    let t0 = Instant::now();
    let model = LoadedModel::open(&o.model, LoadOptions { threads: o.threads, weights: o.weights }, |_| true)
        .map_err(|e| e.to_string())?;
    let model = Arc::new(model);
    let train = model.config().n_ctx_train.max(1);
    let n_ctx = o.ctx.unwrap_or(train.min(4096));
    if n_ctx == 0 {
        return Err("-c must be at least 1".into());
    }
    let cfg = SlotConfig {
        parallel: o.parallel,
        n_ctx,
        n_batch: o.n_batch.max(1),
        threads: o.threads,
        queue: o.queue,
        cache_k: o.cache_k,
        cache_v: o.cache_v,
    };
    let sched = Scheduler::start(model.clone(), cfg)?;
    let msg = format!(
        "pith serve: model '{}' ready in {:.1} s: {} slots of {} tokens, KV cache {}/{} ({:.1} MB)",
        app.model_id,
        t0.elapsed().as_secs_f64(),
        o.parallel,
        n_ctx,
        o.cache_k,
        o.cache_v,
        sched.kv_bytes as f64 / 1e6
    );
    let vocab = Arc::new(OnceLock::new());
    let (v, m) = (vocab.clone(), model.clone());
    std::thread::spawn(move || {
        let _ = v.get_or_init(|| constrain::ConstraintVocab::new(m.tokenizer()));
    });
    let _ = app.ready.set(Ready { model, sched, n_ctx, vocab });
    Ok(msg)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn index() -> impl IntoResponse {
    Html(INDEX_HTML)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found_error", format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Counts an error response.
fn errored(app: &App, e: ApiError) -> Response {
    app.errors.fetch_add(1, Ordering::Relaxed);
    e.into_response()
}

async fn health(State(app): State<Arc<App>>) -> Response {
    app.count("health");
    match app.ready() {
        Ok(_) => axum::Json(json!({"status": "ok"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.count("models");
    if let Err(e) = app.authorize(&headers) {
        return errored(&app, e);
    }
    let meta = app.ready.get().map(|r| {
        let c = r.model.config();
        json!({"n_ctx": r.n_ctx, "n_ctx_train": c.n_ctx_train, "n_vocab": c.n_vocab, "n_embd": c.n_embd,
               "n_layer": c.n_layer, "architecture": c.arch, "slots": app.opts.parallel})
    });
    axum::Json(json!({"object": "list", "data": [{
        "id": app.model_id, "object": "model", "created": app.created, "owned_by": "pith", "meta": meta
    }]}))
    .into_response()
}

async fn tokenize(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    app.count("tokenize");
    let r = async {
        app.authorize(&headers)?;
        let req: api::TokenizeRequest = api::parse(&app.body(body).await?)?;
        let ready = app.ready()?;
        let parse_special = req.parse_special.unwrap_or(true);
        let ids = ready
            .model
            .tokenize(&req.content, req.add_special, parse_special)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let tokens: Vec<Value> = if req.with_pieces {
            let tok = ready.model.tokenizer();
            ids.iter()
                .map(|&id| {
                    let b = tok.token_bytes(id, true);
                    match String::from_utf8(b.clone()) {
                        Ok(s) => json!({"id": id, "piece": s}),
                        Err(_) => json!({"id": id, "piece": b}),
                    }
                })
                .collect()
        } else {
            ids.iter().map(|&id| json!(id)).collect()
        };
        Ok::<_, ApiError>(axum::Json(json!({"tokens": tokens})).into_response())
    }
    .await;
    r.unwrap_or_else(|e| errored(&app, e))
}

async fn detokenize(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    app.count("detokenize");
    let r = async {
        app.authorize(&headers)?;
        let req: api::DetokenizeRequest = api::parse(&app.body(body).await?)?;
        let ready = app.ready()?;
        let n_vocab = ready.model.config().n_vocab;
        let ids = req
            .tokens
            .iter()
            .map(|&t| {
                u32::try_from(t)
                    .ok()
                    .filter(|&id| (id as usize) < n_vocab)
                    .ok_or_else(|| ApiError::bad_request(format!("tokens: {t} is not a token id (0..{n_vocab})")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        let text = ready.model.detokenize(&ids, true).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok::<_, ApiError>(axum::Json(json!({"content": text})).into_response())
    }
    .await;
    r.unwrap_or_else(|e| errored(&app, e))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.count("metrics");
    use std::fmt::Write;
    let mut s = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(s, "# HELP pith_{name} {help}\n# TYPE pith_{name} {kind}\npith_{name} {value}");
    };
    put(
        "uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        format!("{:.3}", app.started.elapsed().as_secs_f64()),
    );
    put("model_loaded", "gauge", "1 once the model is loaded.", u8::from(app.ready.get().is_some()).to_string());
    put("errors_total", "counter", "Requests answered with an error.", app.errors.load(Ordering::Relaxed).to_string());
    if let Some(r) = app.ready.get() {
        let m = &r.sched.metrics;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        put("queue_depth", "gauge", "Requests waiting for a slot.", m.queued.load(Ordering::Relaxed).to_string());
        put("slots_active", "gauge", "Slots serving a request.", m.active.load(Ordering::Relaxed).to_string());
        put("slots_total", "gauge", "Slots (--parallel).", app.opts.parallel.to_string());
        put("prompt_tokens_total", "counter", "Prompt tokens received.", g(&m.prompt_tokens).to_string());
        put(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens found in a slot's cache.",
            g(&m.cached_prompt_tokens).to_string(),
        );
        put("generated_tokens_total", "counter", "Tokens generated.", g(&m.generated_tokens).to_string());
        put("requests_completed_total", "counter", "Generations that finished.", g(&m.completed).to_string());
        put("requests_cancelled_total", "counter", "Generations whose client went away.", g(&m.cancelled).to_string());
        put(
            "prompt_seconds_total",
            "counter",
            "Time spent on prompt chunks.",
            format!("{:.6}", g(&m.prompt_us) as f64 / 1e6),
        );
        put(
            "decode_seconds_total",
            "counter",
            "Time spent in decode steps.",
            format!("{:.6}", g(&m.decode_us) as f64 / 1e6),
        );
        let dec = g(&m.decode_us) as f64 / 1e6;
        let tps = if dec > 0.0 { g(&m.generated_tokens) as f64 / dec } else { 0.0 };
        put(
            "generated_tokens_per_second",
            "gauge",
            "Generated tokens per second of decode steps (all slots).",
            format!("{tps:.3}"),
        );
        put(
            "recent_generated_tokens_per_second",
            "gauge",
            "Generated tokens/s over the last second of decoding.",
            format!("{:.3}", g(&m.recent_tps_milli) as f64 / 1e3),
        );
    }
    let _ = writeln!(s, "# HELP pith_requests_total Requests received, by route.\n# TYPE pith_requests_total counter");
    for (i, r) in ROUTES.iter().enumerate() {
        let _ = writeln!(s, "pith_requests_total{{route=\"{r}\"}} {}", app.requests[i].load(Ordering::Relaxed));
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], s).into_response()
}

/// Which endpoint a generation answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

async fn chat_completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    app.count("chat_completions");
    let r = async {
        app.authorize(&headers)?;
        let req: api::ChatRequest = api::parse_request(&app.body(body).await?)?;
        app.check_model(&req.sampling.model)?;
        let params = req.sampling.params(req.top_logprobs()?)?;
        let messages = req.messages()?;
        let ready = app.ready()?;
        let text = ready.model.template().render(&messages, true).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let ids = ready.model.tokenize(&text, true, true).map_err(|e| ApiError::bad_request(e.to_string()))?;
        generate(&app, ready, ids, params, Kind::Chat).await
    }
    .await;
    r.unwrap_or_else(|e| errored(&app, e))
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    app.count("completions");
    let r = async {
        app.authorize(&headers)?;
        let req: api::CompletionRequest = api::parse_request(&app.body(body).await?)?;
        app.check_model(&req.sampling.model)?;
        if req.echo {
            return Err(ApiError::bad_request("echo is not supported"));
        }
        let params = req.sampling.params(req.top_logprobs()?)?;
        let ready = app.ready()?;
        let ids = ready.model.tokenize(req.prompt()?, true, true).map_err(|e| ApiError::bad_request(e.to_string()))?;
        generate(&app, ready, ids, params, Kind::Text).await
    }
    .await;
    r.unwrap_or_else(|e| errored(&app, e))
}

/// `response_format` as a logit mask (`None` for plain text).
async fn make_mask(ready: &Ready, v: &Option<Value>) -> Result<Option<Box<dyn LogitMask>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let fmt = constrain::ResponseFormat::from_openai(v).map_err(ApiError::bad_request)?;
    if matches!(fmt, constrain::ResponseFormat::Text) {
        return Ok(None);
    }
    let vocab = ready.vocab.clone();
    let model = ready.model.clone();
    let built = tokio::task::spawn_blocking(move || {
        let vocab = vocab.get_or_init(|| constrain::ConstraintVocab::new(model.tokenizer())).clone()?;
        constrain::Constraint::new(&vocab, &fmt)
    })
    .await
    .map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("building the constraint: {e}"))
    })?;
    match built {
        Ok(c) => Ok(c.map(|c| Box::new(c) as Box<dyn LogitMask>)),
        Err(e) => Err(ApiError::bad_request(format!("response_format: {e}"))),
    }
}

async fn generate(
    app: &App,
    ready: &Ready,
    ids: Vec<u32>,
    params: GenParams,
    kind: Kind,
) -> Result<Response, ApiError> {
    let n_ctx = ready.n_ctx;
    if ids.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    if ids.len() >= n_ctx {
        return Err(ApiError::bad_request(format!(
            "the prompt is {} tokens; the context is {n_ctx} tokens (at least one must be left to generate)",
            ids.len()
        ))
        .with_code("context_length_exceeded"));
    }
    if let Some(m) = params.max_tokens {
        if ids.len().saturating_add(m) > n_ctx {
            return Err(ApiError::bad_request(format!(
                "max_tokens {m} + the prompt's {} tokens exceed the context of {n_ctx} tokens",
                ids.len()
            ))
            .with_code("context_length_exceeded"));
        }
    }
    let mask = make_mask(ready, &params.response_format).await?;
    let (tx, rx) = unbounded_channel();
    let stream = params.stream;
    let include_usage = params.include_usage;
    let logprobs = params.logprobs;
    let job = Job { prompt: ids, params, mask, events: tx, submitted: Instant::now() };
    ready.sched.submit(job).map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_busy", "the server is busy (queue full); retry later")
    })?;
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        id: match kind {
            Kind::Chat => format!("chatcmpl-{n}"),
            Kind::Text => format!("cmpl-{n}"),
        },
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        model: app.model_id.clone(),
        kind,
        logprobs: logprobs.is_some(),
    };
    if stream {
        let mut r = sse(meta, rx, include_usage).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
        Ok(r)
    } else {
        collect(meta, rx).await
    }
}

/// What every response of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    logprobs: bool,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Text, _) => "text_completion",
        }
    }
    fn wrap(&self, chunk: bool, choices: Value, usage: Option<&Usage>) -> Value {
        let mut v = json!({"id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model,
                           "system_fingerprint": "pith", "choices": choices});
        if let Some(u) = usage {
            v["usage"] = json!(u);
        }
        v
    }
}

/// OpenAI's chat `logprobs.content` entries.
fn chat_logprobs(tokens: &[TokenInfo]) -> Value {
    let entry = |bytes: &[u8], lp: f32| json!({"token": String::from_utf8_lossy(bytes), "logprob": lp, "bytes": bytes});
    Value::Array(
        tokens
            .iter()
            .map(|t| {
                let mut e = entry(&t.bytes, t.logprob);
                e["top_logprobs"] = Value::Array(t.top.iter().map(|(_, b, lp)| entry(b, *lp)).collect());
                e
            })
            .collect(),
    )
}

/// Legacy completions' `logprobs` object; `offset` is the text length before these tokens.
fn text_logprobs(tokens: &[TokenInfo], offset: &mut usize) -> Value {
    let mut text_offset = Vec::new();
    for t in tokens {
        text_offset.push(*offset);
        *offset += String::from_utf8_lossy(&t.bytes).len();
    }
    json!({
        "tokens": tokens.iter().map(|t| String::from_utf8_lossy(&t.bytes).into_owned()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.top.iter().map(|(_, b, lp)| (String::from_utf8_lossy(b).into_owned(), json!(lp))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

async fn collect(meta: Meta, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut infos = Vec::new();
    loop {
        match rx.recv().await {
            Some(Event::Delta { text: t, tokens }) => {
                text.push_str(&t);
                infos.extend(tokens);
            }
            Some(Event::Done { finish, usage, timings }) => {
                let logprobs = meta.logprobs.then(|| match meta.kind {
                    Kind::Chat => json!({"content": chat_logprobs(&infos)}),
                    Kind::Text => text_logprobs(&infos, &mut 0),
                });
                let choice = match meta.kind {
                    Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                         "logprobs": logprobs, "finish_reason": finish.as_str()}),
                    Kind::Text => {
                        json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish.as_str()})
                    }
                };
                let mut v = meta.wrap(false, json!([choice]), Some(&usage));
                v["timings"] = timings_json(&timings, &usage);
                return Ok(axum::Json(v).into_response());
            }
            Some(Event::Error(e)) => return Err(e),
            None => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the generation ended without an answer",
                ))
            }
        }
    }
}

fn timings_json(t: &scheduler::Timings, u: &Usage) -> Value {
    let tps = if t.gen_ms > 0.0 { u.completion_tokens.saturating_sub(1) as f64 / (t.gen_ms / 1e3) } else { 0.0 };
    json!({"cached_tokens": t.cached_tokens, "queued_ms": t.queued_ms, "prompt_ms": t.prompt_ms,
           "generation_ms": t.gen_ms, "generated_tokens_per_second": tps})
}

/// The SSE stream of one request: chunks as the worker sends text, the finish chunk, the
/// usage chunk when asked for, then `[DONE]`. Dropping it (the client went away) closes the
/// receiver, which frees the slot at the worker's next step.
fn sse(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    struct St {
        meta: Meta,
        rx: UnboundedReceiver<Event>,
        out: VecDeque<String>,
        done: bool,
        include_usage: bool,
        offset: usize,
    }
    let mut first = VecDeque::new();
    if meta.kind == Kind::Chat {
        let c = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
        first.push_back(meta.wrap(true, c, None).to_string());
    }
    let st = St { meta, rx, out: first, done: false, include_usage, offset: 0 };
    let s = stream::unfold(st, |mut st| async move {
        loop {
            if let Some(d) = st.out.pop_front() {
                return Some((Ok(SseEvent::default().data(d)), st));
            }
            if st.done {
                return None;
            }
            let m = &st.meta;
            match st.rx.recv().await {
                Some(Event::Delta { text, tokens }) => {
                    let lp = m.logprobs.then(|| match m.kind {
                        Kind::Chat => json!({"content": chat_logprobs(&tokens)}),
                        Kind::Text => text_logprobs(&tokens, &mut st.offset),
                    });
                    let c = match m.kind {
                        Kind::Chat => {
                            json!([{"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}])
                        }
                        Kind::Text => json!([{"index": 0, "text": text, "logprobs": lp, "finish_reason": null}]),
                    };
                    st.out.push_back(m.wrap(true, c, None).to_string());
                }
                Some(Event::Done { finish, usage, timings }) => {
                    let c = match m.kind {
                        Kind::Chat => {
                            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish.as_str()}])
                        }
                        Kind::Text => {
                            json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": finish.as_str()}])
                        }
                    };
                    st.out.push_back(m.wrap(true, c, None).to_string());
                    if st.include_usage {
                        let mut u = m.wrap(true, json!([]), Some(&usage));
                        u["timings"] = timings_json(&timings, &usage);
                        st.out.push_back(u.to_string());
                    }
                    st.out.push_back("[DONE]".into());
                    st.done = true;
                }
                Some(Event::Error(e)) => {
                    st.out.push_back(e.body().to_string());
                    st.out.push_back("[DONE]".into());
                    st.done = true;
                }
                None => {
                    st.done = true;
                }
            }
        }
    });
    Sse::new(s)
}

/// Whether `e` or one of its sources is an `E`.
fn find_source<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<E>() {
            return true;
        }
        cur = c.source();
    }
    false
}
