//! Loading a model file into a ready-to-run engine, and the generation loop.

use crate::chat::ChatTemplate;
use crate::file::MappedFile;
use crate::gguf::Gguf;
use crate::model::{Logits, Model, State};
use crate::parallel::Pool;
use crate::sampling::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::session::{CancelToken, GenerateOptions, LoadOptions, LoadedModel, Session};

/// Everything needed to run one model file: weights, tokenizer, chat template, threads.
pub struct Engine<'a> {
    pub gguf: Gguf<'a>,
    pub model: Model<'a>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub pool: Pool,
}

impl<'a> Engine<'a> {
    /// Parses and binds `file`; errors name the file.
    pub fn load(file: &'a MappedFile, threads: usize) -> Result<Self> {
        Self::load_timed(file, threads).map(|(e, _)| e)
    }

    /// [`Engine::load`], also saying where the time went.
    ///
    /// A second thread faults the weights' pages in from the start (the first forward pass would
    /// otherwise stop at a page fault for every 64 KiB of weights) while this one parses the
    /// GGUF header, binds the weights, builds the tokenizer and starts the thread team, then
    /// helps with whatever of the map is left: on two cores, start-up takes about half the sum
    /// of the two.
    pub fn load_timed(file: &'a MappedFile, threads: usize) -> Result<(Self, LoadTimings)> {
        Self::load_timed_with(file, threads, |_| Ok(())).map(|(e, (), t)| (e, t))
    }

    /// [`Engine::load_timed`] that also runs `prepare` on the bound model while the pages are
    /// still being faulted in (`pith run` allocates its [`State`] there); its time is
    /// [`LoadTimings::prepare`].
    pub fn load_timed_with<S>(
        file: &'a MappedFile,
        threads: usize,
        prepare: impl FnOnce(&Model<'a>) -> Result<S>,
    ) -> Result<(Self, S, LoadTimings)> {
        use std::time::Instant;
        let mut t = LoadTimings::default();
        let claimed = std::sync::atomic::AtomicU64::new(0);
        let (gguf, model, tokenizer, pool, prepared) = std::thread::scope(|s| -> Result<_> {
            let faults = s.spawn(|| {
                let start = Instant::now();
                file.prefault_pieces(&claimed, false);
                start.elapsed()
            });
            let loaded = (|| -> Result<_> {
                let start = Instant::now();
                let gguf = file.gguf()?;
                t.parse = start.elapsed();
                let start = Instant::now();
                let model = Model::from_gguf(&gguf).map_err(|e| file.context(e));
                t.bind = start.elapsed();
                let start = Instant::now();
                // (Without a model there is nothing to prepare; its own error is returned below.)
                let prepared = model.as_ref().map_err(|e| Error::Tokenizer(e.to_string())).and_then(prepare);
                t.prepare = start.elapsed();
                let start = Instant::now();
                // A tokenizer error is reported before a model error, as when it was built alongside.
                let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| file.context(e))?;
                t.tokenizer = start.elapsed();
                let start = Instant::now();
                let pool = Pool::new(threads);
                t.threads = start.elapsed();
                let model = model?;
                Ok((gguf, model, tokenizer, pool?, prepared?))
            })();
            let start = Instant::now();
            if loaded.is_ok() {
                file.prefault_pieces(&claimed, true); // what the other thread has not got to yet
            } else {
                MappedFile::stop_prefault(&claimed);
            }
            let faulted =
                faults.join().map_err(|_| file.context(Error::Threads("the page-fault thread panicked".into())));
            t.prefault_wait = start.elapsed();
            t.prefault = faulted?;
            loaded
        })?;
        let start = Instant::now();
        let tok_text = |id: Option<u32>| id.map(|i| tokenizer.decode(&[i], true)).unwrap_or_default();
        let template = ChatTemplate::new(
            gguf.get_str("tokenizer.chat_template").map_err(|e| file.context(e))?,
            &tok_text(tokenizer.bos()),
            &tok_text(tokenizer.eos()),
        )
        .map_err(|e| file.context(e))?;
        if tokenizer.n_vocab() != model.config.n_vocab {
            return Err(file.context(Error::Tokenizer(format!(
                "vocabulary has {} tokens but the model has {} rows of embeddings",
                tokenizer.n_vocab(),
                model.config.n_vocab
            ))));
        }
        t.template = start.elapsed();
        Ok((Engine { gguf, model, tokenizer, template, pool }, prepared, t))
    }

    /// One line per tensor of the file that the forward pass does not use (a front end shows
    /// them: nothing in a file is skipped silently).
    pub fn warnings(&self) -> Vec<String> {
        let arch = &self.model.config.arch;
        self.model
            .unused
            .iter()
            .map(|t| format!("tensor '{t}' is not part of the {arch} architecture; ignored"))
            .collect()
    }

    /// Tokenizes a prompt the way llama.cpp does for generation: special tokens parsed, BOS
    /// prepended when the model asks for it.
    pub fn tokenize_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.tokenizer.add_bos() {
            ids.extend(self.tokenizer.bos());
        }
        ids.extend(self.tokenizer.encode(text, true)?);
        Ok(ids)
    }

    /// Feeds `prompt` (appended to whatever `state` holds) and samples up to `max_new` tokens,
    /// calling `on_text` with each piece of decoded text as soon as it is complete UTF-8.
    /// Stops at an end-of-generation token or when the context is full.
    pub fn generate(
        &self,
        state: &mut State,
        sampler: &mut Sampler,
        prompt: &[u32],
        max_new: usize,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.generate_with(state, sampler, prompt, max_new, |s| {
            if !s.is_empty() {
                on_text(s);
            }
            core::ops::ControlFlow::Continue(())
        })
    }

    /// [`Engine::generate`] whose callback can stop generation: `Break` ends it after the
    /// current token (the result's `stop` is [`Stop::Interrupted`]); the callback is also asked
    /// with an empty piece after every token, so that a caller can stop even while the decoder
    /// holds back an incomplete UTF-8 sequence.
    pub fn generate_with(
        &self,
        state: &mut State,
        sampler: &mut Sampler,
        prompt: &[u32],
        max_new: usize,
        on_text: impl FnMut(&str) -> core::ops::ControlFlow<()>,
    ) -> Result<Generation> {
        decode_loop(&self.model, &self.tokenizer, &self.pool, state, sampler, prompt, max_new, None, on_text)
    }
}

/// The generation loop behind [`Engine::generate_with`] and [`Session`]: `cancel`, when given,
/// is checked before each new token is sampled, so a cancel from another thread stops it
/// within one token ([`Stop::Cancelled`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_loop(
    model: &Model<'_>,
    tokenizer: &Tokenizer,
    pool: &Pool,
    state: &mut State,
    sampler: &mut Sampler,
    prompt: &[u32],
    max_new: usize,
    cancel: Option<&AtomicBool>,
    mut on_text: impl FnMut(&str) -> core::ops::ControlFlow<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Tokenizer("the prompt is empty".into()));
    }
    let needed = state.pos + prompt.len();
    if needed > state.n_ctx {
        return Err(Error::ContextOverflow { needed, n_ctx: state.n_ctx });
    }
    for &t in prompt {
        sampler.accept(t);
    }
    let t0 = std::time::Instant::now();
    let mut logits = model.forward(state, pool, prompt, Logits::Last)?;
    let prefill = t0.elapsed();
    let mut out = Generation { prompt_tokens: prompt.len(), prefill, ..Default::default() };
    let mut dec = StreamDecoder::new();
    let t1 = std::time::Instant::now();
    while out.tokens.len() < max_new {
        if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            out.stop = Stop::Cancelled;
            break;
        }
        let id = sampler.sample(logits);
        sampler.accept(id);
        if tokenizer.is_eog(id) {
            out.stop = Stop::EndOfGeneration;
            out.eog_token = Some(id);
            break;
        }
        out.tokens.push(id);
        let piece = dec.push(tokenizer, id);
        if on_text(&piece).is_break() {
            out.stop = Stop::Interrupted;
            break;
        }
        if out.tokens.len() == max_new {
            break;
        }
        if state.pos >= state.n_ctx {
            out.stop = Stop::ContextFull;
            break;
        }
        logits = model.forward(state, pool, &[id], Logits::Last)?;
    }
    let rest = dec.flush();
    if !rest.is_empty() {
        // Generation is over either way; a Break here has nothing left to stop.
        let _ = on_text(&rest);
    }
    out.decode = t1.elapsed();
    Ok(out)
}

/// Where [`Engine::load_timed`] spent its time. `prefault` ran on a second thread alongside
/// `parse`, `bind`, `prepare`, `tokenizer` and `threads`; `prefault_wait` is how long the loading
/// thread then spent on the pages left and waiting for that thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadTimings {
    /// GGUF header, metadata and tensor table.
    pub parse: std::time::Duration,
    /// Binding the weights (shapes and types checked).
    pub bind: std::time::Duration,
    /// The caller's `prepare` step ([`Engine::load_timed_with`]).
    pub prepare: std::time::Duration,
    /// Building the tokenizer from `tokenizer.ggml.*`.
    pub tokenizer: std::time::Duration,
    /// Starting the thread team.
    pub threads: std::time::Duration,
    /// Faulting the weights' pages in ([`MappedFile::prefault_pieces`], second thread).
    pub prefault: std::time::Duration,
    /// Faulting the pages that thread had not got to, and waiting for it, after the steps above.
    pub prefault_wait: std::time::Duration,
    /// Compiling the chat template.
    pub template: std::time::Duration,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stop {
    #[default]
    Length,
    EndOfGeneration,
    ContextFull,
    /// The caller's callback asked to stop (Ctrl-C, a closed output).
    Interrupted,
    /// [`Session::cancel`] (or its [`CancelToken`]) stopped it, from any thread.
    Cancelled,
    /// The text reached one of the stop strings ([`GenerateOptions::stop`]).
    StopString,
}

/// What one `generate` call did.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// Generated tokens, without the end-of-generation token (not yet in the cache: the last
    /// one sampled is never fed back).
    pub tokens: Vec<u32>,
    pub eog_token: Option<u32>,
    pub stop: Stop,
    pub prompt_tokens: usize,
    pub prefill: std::time::Duration,
    pub decode: std::time::Duration,
}
