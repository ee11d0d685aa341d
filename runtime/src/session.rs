//! What an app embeds: [`LoadedModel`], an owning, `Send + Sync` model handle (the file's map
//! or a copy of a caller's buffer, the tokenizer and the chat template) shared by any number
//! of [`Session`]s (one conversation each: KV cache, sampler, thread team), whose generation
//! can be cancelled from any thread and whose state can be saved and restored.
//!
//! A [`Model`] borrows the bytes it was bound from, so the handle keeps only the bytes and
//! binds a `Model` again for each generate call (not per token): parsing the header (all
//! metadata, the vocabulary included) and binding every tensor again. For the default model
//! that measured ~5 ms per call on the loaded 2-core dev machine (runtime/tests/session.rs
//! prints it), against ~15 ms per generated token; a self-referential owner (e.g. the
//! `self_cell` crate) would remove it if it ever matters.

use crate::chat::{ChatTemplate, Message};
use crate::engine::{decode_loop, Generation, Stop};
use crate::file::MappedFile;
use crate::gguf::Gguf;
use crate::model::{CacheType, Config, Model, State};
use crate::parallel::Pool;
use crate::sampling::{Sampler, SamplerConfig, SamplerSnapshot};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use core::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Where a model's bytes live.
enum ModelBytes {
    /// A read-only memory map of the file.
    File(MappedFile),
    /// A copy of a caller's buffer, in anonymous pages (page-aligned, like a file map, so that
    /// every tensor keeps its file alignment).
    Buffer(memmap2::Mmap),
}

impl ModelBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            ModelBytes::File(f) => f.bytes(),
            ModelBytes::Buffer(m) => m,
        }
    }
}

/// A model file loaded for embedding: owns its bytes, tokenizer and chat template; `Send +
/// Sync`, so one `Arc<LoadedModel>` serves sessions on many threads at once.
pub struct LoadedModel {
    bytes: ModelBytes,
    name: String,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    config: Config,
    threads: AtomicUsize,
}

/// Load-time options.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Default worker threads for new sessions (0 = one per performance core).
    pub threads: usize,
    /// How [`LoadedModel::open`] holds the file: read into huge pages (default) or mapped.
    pub weights: crate::file::WeightMemory,
}

impl LoadedModel {
    /// Maps `path` and loads it. `progress` is called with a fraction in 0..=1 as loading goes
    /// on; returning `false` cancels the load ([`Error::Cancelled`]).
    pub fn open(path: impl AsRef<Path>, opts: LoadOptions, progress: impl FnMut(f32) -> bool) -> Result<Self> {
        let mut progress = progress;
        if !progress(0.0) {
            return Err(Error::Cancelled);
        }
        let file = MappedFile::open_with(path.as_ref(), opts.weights)?;
        let name = file.path().display().to_string();
        Self::load(ModelBytes::File(file), name, opts, progress)
    }

    /// Loads a model from a caller's buffer, copied (so the caller may free it at once).
    pub fn from_bytes(buf: &[u8], opts: LoadOptions, progress: impl FnMut(f32) -> bool) -> Result<Self> {
        let mut progress = progress;
        if !progress(0.0) {
            return Err(Error::Cancelled);
        }
        let name = "<buffer>".to_string();
        let io = |source| Error::File { path: name.clone(), source };
        if buf.is_empty() {
            return Err(Error::InFile {
                path: name.clone(),
                source: Box::new(Error::Gguf(crate::gguf::GgufError::Truncated {
                    what: "magic".into(),
                    offset: 0,
                    needed: 4,
                    available: 0,
                })),
            });
        }
        // Huge pages where the OS has them (see `WeightMemory::Copy`).
        let mut map = crate::file::huge_page_map(buf.len()).map_err(io)?;
        map.copy_from_slice(buf);
        let map = map.make_read_only().map_err(io)?;
        Self::load(ModelBytes::Buffer(map), name, opts, progress)
    }

    fn load(bytes: ModelBytes, name: String, opts: LoadOptions, mut progress: impl FnMut(f32) -> bool) -> Result<Self> {
        let ctx = |e: Error| Error::InFile { path: name.clone(), source: Box::new(e) };
        let mut step = |f: f32| if progress(f) { Ok(()) } else { Err(Error::Cancelled) };
        let gguf = Gguf::parse(bytes.bytes()).map_err(|e| ctx(e.into()))?;
        step(0.1)?;
        let model = Model::from_gguf(&gguf).map_err(ctx)?;
        let config = model.config.clone();
        step(0.2)?;
        if let ModelBytes::File(f) = &bytes {
            f.prefault();
        }
        step(0.6)?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(ctx)?;
        step(0.9)?;
        let tok_text = |id: Option<u32>| id.map(|i| tokenizer.decode(&[i], true)).unwrap_or_default();
        let template = ChatTemplate::new(
            gguf.get_str("tokenizer.chat_template").map_err(|e| ctx(e.into()))?,
            &tok_text(tokenizer.bos()),
            &tok_text(tokenizer.eos()),
        )
        .map_err(ctx)?;
        if tokenizer.n_vocab() != config.n_vocab {
            return Err(ctx(Error::Tokenizer(format!(
                "vocabulary has {} tokens but the model has {} rows of embeddings",
                tokenizer.n_vocab(),
                config.n_vocab
            ))));
        }
        step(1.0)?;
        drop(model);
        drop(gguf);
        Ok(LoadedModel { bytes, name, tokenizer, template, config, threads: AtomicUsize::new(opts.threads) })
    }

    /// Binds the weights (a [`Model`] borrowing this handle's bytes).
    pub fn bind(&self) -> Result<Model<'_>> {
        let g = Gguf::parse(self.bytes.bytes())?;
        Model::from_gguf(&g)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The file's path, or `<buffer>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Default worker threads for new sessions (0 = one per performance core).
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    /// Changes the default for sessions created from now on.
    pub fn set_threads(&self, threads: usize) {
        self.threads.store(threads, Ordering::Relaxed);
    }

    /// Text to ids; `parse_special` turns special-token text into those tokens, `add_bos`
    /// prepends BOS when the model asks for it.
    pub fn tokenize(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos && self.tokenizer.add_bos() {
            ids.extend(self.tokenizer.bos());
        }
        ids.extend(self.tokenizer.encode(text, parse_special)?);
        Ok(ids)
    }

    /// Ids to text; an id outside the vocabulary is an error. Invalid UTF-8 in the tokens'
    /// bytes becomes U+FFFD.
    pub fn detokenize(&self, ids: &[u32], special: bool) -> Result<String> {
        let n_vocab = self.config.n_vocab;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(Error::BadToken { id, n_vocab });
        }
        Ok(self.tokenizer.decode(ids, special))
    }
}

/// A flag that stops a [`Session`]'s generation within one token; clone it to another thread.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Options of one generation call.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops when the text contains one of these; the text from the stop string on
    /// is not passed to the callback.
    pub stop: Vec<String>,
    /// Sampling. Left as it was (RNG position included) when equal to the session's; otherwise
    /// a fresh sampler with this seed (the recent-token window is kept).
    pub sampling: SamplerConfig,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 128, stop: Vec::new(), sampling: SamplerConfig::default() }
    }
}

/// One conversation on a [`LoadedModel`]: KV cache, sampler, thread team. `Send`, used by one
/// thread at a time (`&mut self`); [`Session::cancel_token`] is what other threads may hold.
pub struct Session {
    model: Arc<LoadedModel>,
    state: State,
    sampler: Sampler,
    pool: Pool,
    cancel: CancelToken,
    /// The tokens in the KV cache (`state.pos` of them).
    tokens: Vec<u32>,
    /// The last token sampled and not yet fed (the next call feeds it first).
    pending: Option<u32>,
}

/// Version 2: the KV cache's K and V types follow the dimensions.
const STATE_MAGIC: &[u8; 8] = b"PITHSES2";

impl Session {
    /// A session of `n_ctx` tokens; `threads` workers (None = the model's default).
    pub fn new(model: Arc<LoadedModel>, n_ctx: usize, threads: Option<usize>) -> Result<Self> {
        Self::with_cache_types(model, n_ctx, threads, CacheType::F16, CacheType::F16)
    }

    /// [`Session::new`] with the KV cache's keys stored as `k` and values as `v`.
    pub fn with_cache_types(
        model: Arc<LoadedModel>,
        n_ctx: usize,
        threads: Option<usize>,
        k: CacheType,
        v: CacheType,
    ) -> Result<Self> {
        let state = {
            let m = model.bind()?;
            State::with_cache_types(&m, n_ctx, 512, k, v)?
        };
        let pool = Pool::new(threads.unwrap_or_else(|| model.threads()))?;
        Ok(Session {
            model,
            state,
            sampler: Sampler::new(SamplerConfig::default()),
            pool,
            cancel: CancelToken::default(),
            tokens: Vec::new(),
            pending: None,
        })
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    /// Replaces the thread team (0 = one per performance core).
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        self.pool = Pool::new(threads)?;
        Ok(())
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Context size in tokens.
    pub fn n_ctx(&self) -> usize {
        self.state.n_ctx
    }

    /// Tokens in the KV cache.
    pub fn n_past(&self) -> usize {
        self.state.pos
    }

    /// How the KV cache stores keys and values.
    pub fn cache_types(&self) -> (CacheType, CacheType) {
        self.state.cache.types()
    }

    /// A handle that stops this session's current generation from any thread.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Stops the current generation within one token (also through [`Session::cancel_token`]).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Forgets the conversation (KV cache, pending token, recent tokens).
    pub fn reset(&mut self) {
        self.state.reset();
        self.tokens.clear();
        self.pending = None;
        self.sampler.reset();
    }

    /// Continues the session's text with `prompt` (special-token text parsed; BOS first when
    /// the session is empty and the model asks for it) and generates. An empty prompt continues
    /// from where the last call stopped.
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let fresh = self.tokens.is_empty() && self.pending.is_none();
        let ids = self.model.tokenize(prompt, fresh, true)?;
        let mut feed: Vec<u32> = self.pending.into_iter().collect();
        feed.extend(ids);
        self.run(feed, opts, on_text)
    }

    /// Renders `messages` with the model's chat template (the assistant's turn opened) and
    /// generates the reply. The part of the conversation already in the KV cache is reused.
    pub fn chat(
        &mut self,
        messages: &[Message],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let text = self.model.template.render(messages, true)?;
        let ids = self.model.tokenize(&text, true, true)?;
        if ids.is_empty() {
            return Err(Error::Tokenizer("the conversation is empty".into()));
        }
        let common = self.tokens.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        self.state.truncate(common);
        self.tokens.truncate(common);
        self.pending = None;
        self.run(ids[common..].to_vec(), opts, on_text)
    }

    fn run(
        &mut self,
        feed: Vec<u32>,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        if feed.is_empty() {
            return Err(Error::Tokenizer("nothing to generate from: the prompt is empty".into()));
        }
        opts.sampling.validate().map_err(Error::Tokenizer)?;
        if opts.sampling != self.sampler.config {
            let keep = self.sampler.snapshot();
            let fresh = Sampler::new(opts.sampling.clone()).snapshot();
            self.sampler = Sampler::restore(opts.sampling.clone(), &SamplerSnapshot { recent: keep.recent, ..fresh });
        }
        self.cancel.0.store(false, Ordering::SeqCst);
        let model = self.model.bind()?;
        let start = self.state.pos;
        let mut stops = StopMatcher::new(&opts.stop);
        let mut user_stopped = false;
        let r = decode_loop(
            &model,
            &self.model.tokenizer,
            &self.pool,
            &mut self.state,
            &mut self.sampler,
            &feed,
            opts.max_tokens,
            Some(&self.cancel.0),
            |piece| {
                if user_stopped || stops.hit {
                    return ControlFlow::Break(());
                }
                let out = stops.push(piece);
                if !out.is_empty() && on_text(out).is_break() {
                    user_stopped = true;
                }
                if user_stopped || stops.hit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        let mut g = match r {
            Ok(g) => g,
            Err(e) => {
                // The cache may hold part of the feed: forget what this call added.
                self.state.truncate(start);
                return Err(e);
            }
        };
        if !stops.hit && !user_stopped {
            let rest = stops.finish();
            if !rest.is_empty() {
                let _ = on_text(&rest);
            }
        }
        if stops.hit {
            g.stop = Stop::StopString;
        }
        // What went into the cache: the feed, then the generated tokens but the last sampled
        // one (never fed back), or all of them when a cancel came after the last forward pass.
        let all: Vec<u32> = feed.iter().chain(g.tokens.iter()).chain(g.eog_token.iter()).copied().collect();
        let fed = self.state.pos - start;
        self.tokens.extend_from_slice(&all[..fed.min(all.len())]);
        self.pending = all.get(fed).copied();
        Ok(g)
    }

    /// The session (KV cache, tokens, sampler position) as bytes; [`Session::restore_state`]
    /// on a session of the same model continues exactly as this one would.
    pub fn save_state(&self) -> Vec<u8> {
        let c = &self.model.config;
        let mut w = Vec::new();
        w.extend_from_slice(STATE_MAGIC);
        for v in [c.n_layer, c.kv_dim(), c.n_vocab, c.n_embd, self.model.bytes.bytes().len(), self.state.pos] {
            w.extend_from_slice(&(v as u64).to_le_bytes());
        }
        let (kt, vt) = self.state.cache.types();
        w.extend_from_slice(&[kt.code(), vt.code()]);
        put_u32s(&mut w, &self.tokens);
        put_u32s(&mut w, &self.pending.into_iter().collect::<Vec<_>>());
        let s = &self.sampler.config;
        for f in [s.temperature, s.top_p, s.min_p, s.repeat_penalty] {
            w.extend_from_slice(&f.to_le_bytes());
        }
        for v in [s.top_k as u64, s.repeat_last_n as u64, s.seed] {
            w.extend_from_slice(&v.to_le_bytes());
        }
        let snap = self.sampler.snapshot();
        w.extend_from_slice(&snap.rng_seed);
        w.extend_from_slice(&snap.rng_stream.to_le_bytes());
        w.extend_from_slice(&snap.rng_word_pos.to_le_bytes());
        put_u32s(&mut w, &snap.recent);
        let pos = self.state.pos;
        for which in [0, 1] {
            for l in 0..c.n_layer {
                let (k, v) = self.state.cache.layer_bytes(l, pos);
                w.extend_from_slice(if which == 0 { k } else { v });
            }
        }
        w
    }

    /// Restores what [`Session::save_state`] saved (from a session of the same model; this
    /// session's context must hold its tokens). On error the session is left as it was.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let bad = |why: &str| Error::BadSessionState(why.to_string());
        let mut r = Reader { b: bytes };
        if r.take(8)? != STATE_MAGIC {
            return Err(bad("not a pith session state (bad magic)"));
        }
        let c = &self.model.config;
        let mut dims = [0usize; 6];
        for d in &mut dims {
            *d = usize::try_from(r.u64()?).map_err(|_| bad("size out of range"))?;
        }
        let [n_layer, kv, n_vocab, n_embd, file_len, pos] = dims;
        if (n_layer, kv, n_vocab, n_embd, file_len)
            != (c.n_layer, c.kv_dim(), c.n_vocab, c.n_embd, self.model.bytes.bytes().len())
        {
            return Err(bad("saved from a different model"));
        }
        let types = r.take(2)?;
        let saved = (CacheType::from_code(types[0]), CacheType::from_code(types[1]));
        let (Some(kt), Some(vt)) = saved else { return Err(bad("unknown KV cache type")) };
        let (skt, svt) = self.state.cache.types();
        if (kt, vt) != (skt, svt) {
            return Err(Error::BadSessionState(format!(
                "saved with a KV cache of K {kt}, V {vt}; this session's is K {skt}, V {svt}"
            )));
        }
        if pos > self.state.n_ctx {
            return Err(Error::ContextOverflow { needed: pos, n_ctx: self.state.n_ctx });
        }
        let tokens = r.u32s()?;
        let pending = r.u32s()?;
        if tokens.len() != pos || pending.len() > 1 || tokens.iter().chain(&pending).any(|&t| t as usize >= n_vocab) {
            return Err(bad("token list does not match the cache"));
        }
        let temperature = r.f32()?;
        let top_p = r.f32()?;
        let min_p = r.f32()?;
        let repeat_penalty = r.f32()?;
        let top_k = usize::try_from(r.u64()?).map_err(|_| bad("top-k out of range"))?;
        let repeat_last_n = usize::try_from(r.u64()?).map_err(|_| bad("repeat-last-n out of range"))?;
        let seed = r.u64()?;
        let config = SamplerConfig { temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed };
        config.validate().map_err(|e| bad(&e))?;
        let mut rng_seed = [0u8; 32];
        rng_seed.copy_from_slice(r.take(32)?);
        let rng_stream = r.u64()?;
        let rng_word_pos = u128::from_le_bytes(r.take(16)?.try_into().map_err(|_| bad("truncated"))?);
        let recent = r.u32s()?;
        let _ = kv;
        let (kr, vr) = self.state.cache.row_bytes();
        let need =
            (kr + vr).checked_mul(pos).and_then(|b| b.checked_mul(n_layer)).ok_or_else(|| bad("size out of range"))?;
        if r.b.len() != need {
            return Err(bad("the KV cache's size does not match"));
        }
        for which in [0, 1] {
            for l in 0..n_layer {
                let (k, v) = self.state.cache.layer_bytes_mut(l, pos);
                let dst = if which == 0 { k } else { v };
                dst.copy_from_slice(r.take(dst.len())?);
            }
        }
        self.state.reset();
        self.state.pos = pos;
        self.tokens = tokens;
        self.pending = pending.first().copied();
        self.sampler = Sampler::restore(config, &SamplerSnapshot { rng_seed, rng_stream, rng_word_pos, recent });
        Ok(())
    }
}

fn put_u32s(w: &mut Vec<u8>, v: &[u32]) {
    w.extend_from_slice(&(v.len() as u64).to_le_bytes());
    for x in v {
        w.extend_from_slice(&x.to_le_bytes());
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::BadSessionState("truncated".into()));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Error::BadSessionState("truncated".into()))?))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Error::BadSessionState("truncated".into()))?))
    }
    fn u32s(&mut self) -> Result<Vec<u32>> {
        let n = usize::try_from(self.u64()?).map_err(|_| Error::BadSessionState("length out of range".into()))?;
        let bytes = self.take(n.checked_mul(4).ok_or_else(|| Error::BadSessionState("length out of range".into()))?)?;
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Holds back text that may be the start of a stop string, so that the caller never sees
/// any part of one; the held text is a suffix that starts a stop string, hence starts at a
/// character boundary.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    out: String,
    hit: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.to_vec(), held: String::new(), out: String::new(), hit: false }
    }

    /// Whether the text reached a stop string (nothing more is passed on).
    pub fn hit(&self) -> bool {
        self.hit
    }

    /// Adds a piece; returns the text that is now safe to pass on.
    pub fn push(&mut self, piece: &str) -> &str {
        self.out.clear();
        let stops = self.stops.iter().filter(|s| !s.is_empty());
        if self.stops.iter().all(|s| s.is_empty()) {
            self.out.push_str(piece);
            return &self.out;
        }
        self.held.push_str(piece);
        if let Some(i) = stops.clone().filter_map(|s| self.held.find(s.as_str())).min() {
            self.out.push_str(&self.held[..i]);
            self.held.clear();
            self.hit = true;
            return &self.out;
        }
        // The longest suffix of `held` that is a proper prefix of a stop string.
        let keep = stops
            .flat_map(|s| (1..s.len()).filter(move |&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        self.out.push_str(&self.held[..cut]);
        self.held.drain(..cut);
        &self.out
    }

    /// The text held back at the end of generation (no stop string came).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<LoadedModel>();
        send_sync::<Arc<LoadedModel>>();
        send_sync::<CancelToken>();
        send::<Session>();
    }

    #[test]
    fn stop_matcher_holds_back_possible_stops() {
        let stops = vec!["END".to_string(), "éx".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("abc E"), "abc ");
        assert_eq!(m.push("N"), "");
        assert_eq!(m.push("x é"), "ENx ");
        assert!(!m.hit);
        assert_eq!(m.push("y"), "éy");
        assert_eq!(m.push("zzEND tail"), "zz");
        assert!(m.hit);
        let none: Vec<String> = Vec::new();
        let mut m = StopMatcher::new(&none);
        assert_eq!(m.push("END"), "END");
    }
}
