//! Loading a model file into a ready-to-run engine, and the generation loop.

use crate::chat::ChatTemplate;
use crate::file::MappedFile;
use crate::gguf::Gguf;
use crate::model::{Logits, Model, State};
use crate::parallel::Pool;
use crate::sampling::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};

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
    /// After the GGUF header is parsed, the tokenizer is built on a second thread while this one
    /// binds the weights, starts the thread team and faults the weights' pages in (the first
    /// forward pass would otherwise stop at a page fault for every 64 KiB of weights): on two
    /// cores, the slowest of those steps sets the start-up time, not their sum.
    pub fn load_timed(file: &'a MappedFile, threads: usize) -> Result<(Self, LoadTimings)> {
        Self::load_timed_with(file, threads, |_| Ok(())).map(|(e, (), t)| (e, t))
    }

    /// [`Engine::load_timed`] that also runs `prepare` on the bound model while the tokenizer is
    /// still being built (`pith run` allocates its [`State`] there); its time is
    /// [`LoadTimings::prepare`].
    pub fn load_timed_with<S>(
        file: &'a MappedFile,
        threads: usize,
        prepare: impl FnOnce(&Model<'a>) -> Result<S>,
    ) -> Result<(Self, S, LoadTimings)> {
        use std::time::Instant;
        let mut t = LoadTimings::default();
        let start = Instant::now();
        let gguf = file.gguf()?;
        t.parse = start.elapsed();
        let (model, tokenizer, pool, prepared) = std::thread::scope(|s| -> Result<_> {
            let g = &gguf;
            let tok = s.spawn(move || {
                let start = Instant::now();
                Tokenizer::from_gguf(g).map(|tk| (tk, start.elapsed()))
            });
            let start = Instant::now();
            let model = Model::from_gguf(&gguf).map_err(|e| file.context(e));
            t.bind = start.elapsed();
            let start = Instant::now();
            let pool = Pool::new(threads);
            t.threads = start.elapsed();
            let start = Instant::now();
            file.prefault();
            t.prefault = start.elapsed();
            let start = Instant::now();
            // (Without a model there is nothing to prepare; its own error is returned below.)
            let prepared = model.as_ref().map_err(|e| Error::Tokenizer(e.to_string())).and_then(prepare);
            t.prepare = start.elapsed();
            let start = Instant::now();
            let tok = tok.join().map_err(|_| file.context(Error::Tokenizer("the tokenizer build panicked".into())))?;
            t.tokenizer_wait = start.elapsed();
            let (tokenizer, took) = tok.map_err(|e| file.context(e))?;
            t.tokenizer = took;
            let model = model?;
            Ok((model, tokenizer, pool?, prepared?))
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
        let mut logits = self.model.forward(state, &self.pool, prompt, Logits::Last)?;
        let prefill = t0.elapsed();
        let mut out = Generation { prompt_tokens: prompt.len(), prefill, ..Default::default() };
        let mut dec = StreamDecoder::new();
        let t1 = std::time::Instant::now();
        while out.tokens.len() < max_new {
            let id = sampler.sample(logits);
            sampler.accept(id);
            if self.tokenizer.is_eog(id) {
                out.stop = Stop::EndOfGeneration;
                out.eog_token = Some(id);
                break;
            }
            out.tokens.push(id);
            let piece = dec.push(&self.tokenizer, id);
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
            logits = self.model.forward(state, &self.pool, &[id], Logits::Last)?;
        }
        let rest = dec.flush();
        if !rest.is_empty() {
            // Generation is over either way; a Break here has nothing left to stop.
            let _ = on_text(&rest);
        }
        out.decode = t1.elapsed();
        Ok(out)
    }
}

/// Where [`Engine::load_timed`] spent its time. `tokenizer` ran on a second thread alongside
/// `bind`, `threads`, `prefault` and `prepare`; `tokenizer_wait` is how long the loading thread then waited
/// for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadTimings {
    /// GGUF header, metadata and tensor table.
    pub parse: std::time::Duration,
    /// Binding the weights (shapes and types checked).
    pub bind: std::time::Duration,
    /// Starting the thread team.
    pub threads: std::time::Duration,
    /// Faulting the weights' pages in ([`MappedFile::prefault`]).
    pub prefault: std::time::Duration,
    /// The caller's `prepare` step ([`Engine::load_timed_with`]).
    pub prepare: std::time::Duration,
    /// Building the tokenizer from `tokenizer.ggml.*` (second thread).
    pub tokenizer: std::time::Duration,
    /// Waiting for the tokenizer after the steps above.
    pub tokenizer_wait: std::time::Duration,
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
