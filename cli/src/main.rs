//! The `pith` command line.

mod bench;

use clap::{Args, Parser, Subcommand};
use pith::chat::Message;
use pith::engine::{Engine, Stop};
use pith::file::MappedFile;
use pith::sampling::{Sampler, SamplerConfig};
use pith::{CacheType, State};
use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A line on stderr. Unlike `eprintln!`, a failing stderr (closed, full) is ignored rather than
/// a panic: there is nowhere left to report it.
macro_rules! log {
    ($($a:tt)*) => {{
        // Formatted first, then written in one call: stderr is unbuffered, and `writeln!` on it
        // makes a system call per piece of the format (~45 for the load line).
        let _ = std::io::stderr().write_all(format!("{}\n", format_args!($($a)*)).as_bytes());
    }};
}

/// Standard output, every write checked. A closed pipe (`| head`) ends the program at once and
/// quietly, with status 0: the reader has what it wanted. Any other failure (`> /dev/full`)
/// ends it with `pith: error: writing to stdout: …` and status 1. Nothing is left to clean up
/// in `pith`, so exiting from here is safe.
struct Out(std::io::StdoutLock<'static>);

impl Out {
    fn new() -> Self {
        Out(std::io::stdout().lock())
    }
    fn write(&mut self, b: impl AsRef<[u8]>) {
        if let Err(e) = self.0.write_all(b.as_ref()) {
            stdout_failed(e)
        }
    }
    fn line(&mut self, s: impl AsRef<str>) {
        self.write(s.as_ref());
        self.write(b"\n");
    }
    fn flush(&mut self) {
        if let Err(e) = self.0.flush() {
            stdout_failed(e)
        }
    }
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    log!("pith: error: writing to stdout: {e}");
    std::process::exit(1)
}

/// Ctrl-C (SIGINT) and SIGTERM. While a reply is being generated (`GENERATING`), the first one
/// asks the generation to stop after the current token; at any other moment, or a second time,
/// the program exits (status 130) at once, removing any temporary files of a model download.
static GENERATING: AtomicBool = AtomicBool::new(false);
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

fn install_interrupt_handler() -> Res<()> {
    ctrlc::set_handler(|| {
        let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= 2 || !GENERATING.load(Ordering::SeqCst) {
            log!("");
            // Removes a half-fetched default model's temporaries, if a fetch is under way.
            pith_fetch::cleanup::remove_all_and_exit(130);
        }
    })
    .map_err(|e| format!("installing the Ctrl-C handler: {e}"))
}

/// Whether a Ctrl-C asked the current generation to stop.
fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

#[derive(Parser)]
#[command(name = "pith", version, about = "On-device inference for compressed language models")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a continuation of a prompt, streamed to stdout.
    Run(RunArgs),
    /// Chat interactively (or one user turn per line of piped stdin).
    Chat(ChatArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(TokenizeArgs),
    /// Print a GGUF file's metadata and tensor table.
    Inspect(InspectArgs),
    /// Perplexity of a text (llama-perplexity's protocol).
    Perplexity(PerplexityArgs),
    /// Prompt and generation throughput, peak memory and weight bandwidth.
    Bench(BenchArgs),
    /// A local OpenAI-compatible HTTP server with a web chat page (Ctrl-C drains and exits).
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Model file (GGUF). Default: $PITH_MODEL, else the default model (fetched if missing).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// The model's name in the API (default: the file name without .gguf).
    #[arg(short = 'a', long = "alias")]
    alias: Option<String>,
    /// Address to listen on. Anything but loopback needs --api-key or --insecure.
    #[arg(long = "host", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free port; the chosen one is printed).
    #[arg(long = "port", default_value_t = 8080)]
    port: u16,
    /// Context of each slot in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size")]
    ctx: Option<usize>,
    /// Requests served at once; their decode steps share one forward pass.
    #[arg(long = "parallel", short = 'P', default_value_t = 4)]
    parallel: usize,
    /// Worker threads (0 = one per performance core: big cores of a big.LITTLE CPU, see `pith::parallel::default_threads`).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// Prompt tokens computed per step (a long prompt is split; other requests decode between).
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    n_batch: usize,
    /// Requests that may wait for a free slot; more are answered 503.
    #[arg(long = "queue", default_value_t = 64)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long = "api-key")]
    api_key: Option<String>,
    /// Allow a non-loopback --host without --api-key.
    #[arg(long)]
    insecure: bool,
    /// Largest request body in bytes (more are answered 413).
    #[arg(long = "max-body", default_value_t = 4 << 20)]
    max_body: usize,
    /// Map the model file instead of reading it into memory: zero copy, pages shared with other
    /// processes and droppable under memory pressure, but decode is slower (4 KiB file pages
    /// instead of huge pages).
    #[arg(long = "mmap")]
    mmap: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Model file (GGUF). Default: $PITH_MODEL, else the default model (fetched if missing).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Prompt tokens for the prompt-processing test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens for the generation test (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Tokens already in the KV cache when each test starts (filled untimed, as llama-bench's
    /// -d): prompt processing and generation deep into a conversation.
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    depth: usize,
    /// Sequences decoding together in the generation test: each step one forward pass with a
    /// token of every sequence, as `pith serve --parallel N` runs (aggregate tokens/s).
    #[arg(short = 's', long = "sequences", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    sequences: u16,
    /// Thread counts to test, comma-separated.
    #[arg(short = 't', long = "threads", value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Repetitions per test (the median is reported).
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    reps: usize,
    /// Output format: table or json.
    #[arg(long = "format", value_parser = ["table", "json"], default_value = "table")]
    format: String,
    /// Matmul arithmetic: q8 (8-bit activations, integer dot products: the fast path) or f32.
    #[arg(long = "precision", default_value = "q8", value_parser = parse_precision)]
    precision: pith::Precision,
    #[command(flatten)]
    cache: CacheArgs,
    /// Context size (tokens) at which the KV cache's memory is reported.
    #[arg(long = "kv-ctx", default_value_t = 8192)]
    kv_ctx: usize,
    /// Also measure the machine's read bandwidth (STREAM-style, a 256 MB buffer and a weights-sized
    /// one) and put the generation figures next to the bounds it implies.
    #[arg(long)]
    roofline: bool,
    /// Map the model file instead of reading it into memory: zero copy, pages shared with other
    /// processes and droppable under memory pressure, but decode is slower (4 KiB file pages
    /// instead of huge pages).
    #[arg(long = "mmap")]
    mmap: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// Model file (GGUF). Default: $PITH_MODEL, else SmolLM2-135M-Instruct Q4_1 (fetched into the
    /// cache if missing).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Worker threads (0 = one per performance core; more than the logical CPUs is allowed, with a warning).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// Matmul arithmetic: q8 (activations quantized to 8 bits, integer dot products, as
    /// llama.cpp's CPU backend: the fast path) or f32 (f32 activations against exactly
    /// dequantized weights).
    #[arg(long = "precision", default_value = "q8", value_parser = parse_precision)]
    precision: pith::Precision,
    /// Map the model file instead of reading it into memory: zero copy, pages shared with other
    /// processes and droppable under memory pressure, but decode is slower (4 KiB file pages
    /// instead of huge pages).
    #[arg(long = "mmap")]
    mmap: bool,
}

/// How the KV cache stores keys and values.
#[derive(Args)]
struct CacheArgs {
    /// KV cache type of the keys: f16, q8_0 or q4_0 (the block types need a head_dim that is a
    /// multiple of 32).
    #[arg(long = "cache-type-k", default_value = "f16", value_parser = parse_cache_type)]
    cache_type_k: CacheType,
    /// KV cache type of the values: f16, q8_0 or q4_0.
    #[arg(long = "cache-type-v", default_value = "f16", value_parser = parse_cache_type)]
    cache_type_v: CacheType,
}

impl CacheArgs {
    fn types(&self) -> (CacheType, CacheType) {
        (self.cache_type_k, self.cache_type_v)
    }
}

fn parse_cache_type(s: &str) -> Result<CacheType, String> {
    s.parse()
}

fn parse_precision(s: &str) -> Result<pith::Precision, String> {
    match s {
        "f32" => Ok(pith::Precision::F32),
        "q8" => Ok(pith::Precision::Q8),
        _ => Err(format!("'{s}' is not a precision (f32, q8)")),
    }
}

#[derive(Args)]
struct SampleArgs {
    /// Sampling temperature (0 or less = greedy).
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    temp: f32,
    /// Top-k (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    /// Top-p (1.0 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    /// RNG seed (same seed, same output; -1 = a random seed, as llama.cpp).
    #[arg(short = 's', long = "seed", default_value_t = 42, allow_negative_numbers = true)]
    seed: i64,
}

/// A seed from the clock and the process id (for `--seed -1`).
fn random_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (t as u64) ^ ((std::process::id() as u64) << 32)
}

/// `-n`: tokens to generate; negative (llama.cpp's -1) = until the end of generation or a full
/// context.
fn max_tokens(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl SampleArgs {
    fn sampler(&self) -> Result<Sampler, String> {
        let c = SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: match u64::try_from(self.seed) {
                Ok(s) => s,
                Err(_) if self.seed == -1 => random_seed(),
                Err(_) => return Err(format!("--seed {}: use a seed of 0 or more, or -1 for a random one", self.seed)),
            },
        };
        c.validate()?;
        Ok(Sampler::new(c))
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(short = 'p', long = "prompt", conflicts_with = "file", required_unless_present = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Tokens to generate (-1 = until the end of generation or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = 128, allow_negative_numbers = true)]
    n: i64,
    /// Context size in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 2048)]
    ctx: usize,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    sample: SampleArgs,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt.
    #[arg(long = "system")]
    system: Option<String>,
    /// Maximum tokens per reply (-1 = until the end of generation or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = 512, allow_negative_numbers = true)]
    n: i64,
    /// Context size in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 2048)]
    ctx: usize,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    sample: SampleArgs,
}

#[derive(Args)]
struct TokenizeArgs {
    /// Model file (GGUF) whose tokenizer to use. Default: $PITH_MODEL, else the default model
    /// (fetched if missing).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Text to tokenize.
    #[arg(short = 'p', long = "prompt", conflicts_with = "file", required_unless_present = "file")]
    prompt: Option<String>,
    /// Read the text from a file.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Treat special-token text (e.g. <|im_start|>) as plain text.
    #[arg(long = "no-parse-special")]
    no_parse_special: bool,
    /// Prepend BOS when the model asks for it.
    #[arg(long = "add-bos")]
    add_bos: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// GGUF file.
    file: PathBuf,
    /// Print whole arrays instead of their first elements.
    #[arg(long)]
    full: bool,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to evaluate.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Chunk (context) size.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx: usize,
    /// Chunks to evaluate (0 = all).
    #[arg(long = "chunks", default_value_t = 0)]
    chunks: usize,
    #[command(flatten)]
    cache: CacheArgs,
}

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version go to stdout, checked like every other write; usage errors
            // to stderr.
            let r = e.print().and_then(|()| std::io::stdout().flush());
            if let (false, Err(err)) = (e.use_stderr(), r) {
                stdout_failed(err)
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let r = select_kernels().and_then(|()| match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Chat(a) => chat(a),
        Cmd::Tokenize(a) => tokenize(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Perplexity(a) => perplexity(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Serve(a) => serve(a),
    });
    match r {
        Ok(code) => code,
        Err(e) => {
            log!("pith: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Honours `PITH_KERNELS=scalar|avx2|avx512|neon|neon-dotprod|neon-i8mm` (default: the best the CPU has).
fn select_kernels() -> Res<()> {
    let Ok(v) = std::env::var("PITH_KERNELS") else { return Ok(()) };
    let p: pith_kernels::KernelPath = v.parse().map_err(|e| format!("PITH_KERNELS={v}: {e}"))?;
    pith_kernels::set_kernel_path(p).map_err(|e| format!("PITH_KERNELS={v}: {e}"))
}

/// Warns when `-t` asks for more threads than the machine has logical CPUs (each extra thread
/// of the spinning team only takes time from the others).
fn warn_threads(threads: &[usize]) {
    let Ok(cpus) = std::thread::available_parallelism() else { return };
    if let Some(&t) = threads.iter().filter(|&&t| t > cpus.get()).max() {
        log!(
            "pith: warning: -t {t} is more than the {} logical CPUs here; extra threads only slow it down",
            cpus.get()
        );
    }
}

fn model_path(m: &Option<PathBuf>) -> Res<PathBuf> {
    match m {
        Some(p) => Ok(p.clone()),
        None => pith_fetch::ensure_default_model().map_err(|e| e.to_string()),
    }
}

fn open(m: &ModelArgs) -> Res<MappedFile> {
    warn_threads(&[m.threads]);
    MappedFile::open_with(model_path(&m.model)?, weight_memory(m.mmap)).map_err(|e| e.to_string())
}

fn weight_memory(mmap: bool) -> pith::file::WeightMemory {
    if mmap {
        pith::file::WeightMemory::Map
    } else {
        pith::file::WeightMemory::Copy
    }
}

fn read_text(prompt: &Option<String>, file: &Option<PathBuf>) -> Res<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => {
            let b = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            String::from_utf8(b)
                .map_err(|e| format!("{}: not valid UTF-8 (byte {})", f.display(), e.utf8_error().valid_up_to()))
        }
        (None, None) => Err("give a prompt with -p or -f".into()),
    }
}

/// Runs one generation, streaming its text to `out`, with Ctrl-C stopping it after the current
/// token. Returns the generation and the reply text.
fn generate_to(
    eng: &Engine<'_>,
    state: &mut State,
    sampler: &mut Sampler,
    prompt: &[u32],
    n: usize,
    out: &mut Out,
) -> Res<(pith::engine::Generation, String)> {
    let mut reply = String::new();
    INTERRUPTS.store(0, Ordering::SeqCst);
    GENERATING.store(true, Ordering::SeqCst);
    let g = eng.generate_with(state, sampler, prompt, n, |s| {
        if !s.is_empty() {
            reply.push_str(s);
            out.write(s);
            out.flush();
        }
        if interrupted() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    GENERATING.store(false, Ordering::SeqCst);
    let g = g.map_err(|e| e.to_string())?;
    Ok((g, reply))
}

fn run(a: RunArgs) -> Res<ExitCode> {
    let mut sampler = a.sample.sampler()?;
    let text = read_text(&a.prompt, &a.file)?;
    install_interrupt_handler()?;
    let t0 = std::time::Instant::now();
    let file = open(&a.model)?;
    let map = t0.elapsed();
    // The state (KV cache, buffers) is allocated while a second thread faults the weights in.
    let (eng, mut state, lt) = Engine::load_timed_with(&file, a.model.threads, |m| {
        let (k, v) = a.cache.types();
        State::with_cache_types(m, a.ctx, 512, k, v)
    })
    .map_err(|e| e.to_string())?;
    warn_load(&eng);
    state.set_precision(a.model.precision);
    let t1 = std::time::Instant::now();
    let ids = eng.tokenize_prompt(&text).map_err(|e| e.to_string())?;
    let tokenize_time = t1.elapsed();
    if ids.len() > a.ctx {
        return Err(format!(
            "the prompt has {} tokens, more than the context of {} (use a larger -c)",
            ids.len(),
            a.ctx
        ));
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    log!(
        "pith: loaded {} in {:.0} ms ({} threads): map {:.1} ms, parse {:.1} ms, bind {:.1} ms, state {:.1} ms, \
         tokenizer {:.1} ms, threads {:.1} ms, page faults {:.1} ms alongside ({:.1} ms waited), template {:.1} ms, \
         prompt tokenized {:.1} ms",
        file.path().display(),
        ms(t0.elapsed()),
        eng.pool.threads(),
        ms(map),
        ms(lt.parse),
        ms(lt.bind),
        ms(lt.prepare),
        ms(lt.tokenizer),
        ms(lt.threads),
        ms(lt.prefault),
        ms(lt.prefault_wait),
        ms(lt.template),
        ms(tokenize_time)
    );
    let mut out = Out::new();
    let (g, reply) = generate_to(&eng, &mut state, &mut sampler, &ids, max_tokens(a.n), &mut out)?;
    // The text ends with a newline for the terminal's sake; nothing generated, nothing printed.
    if !reply.is_empty() {
        out.write(b"\n");
        out.flush();
    }
    match g.stop {
        Stop::ContextFull => log!("pith: stopped: the context of {} tokens is full", a.ctx),
        Stop::Interrupted => log!("pith: interrupted"),
        _ => {}
    }
    report(&g);
    Ok(if g.stop == Stop::Interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS })
}

fn report(g: &pith::engine::Generation) {
    let pp = g.prompt_tokens as f64 / g.prefill.as_secs_f64().max(1e-9);
    let tg = g.tokens.len() as f64 / g.decode.as_secs_f64().max(1e-9);
    log!(
        "pith: prompt {} tokens in {:.0} ms ({pp:.1} t/s), generated {} tokens in {:.0} ms ({tg:.1} t/s)",
        g.prompt_tokens,
        g.prefill.as_secs_f64() * 1e3,
        g.tokens.len(),
        g.decode.as_secs_f64() * 1e3
    );
}

/// The engine's load warnings (unused tensors), on stderr.
fn warn_load(eng: &Engine<'_>) {
    for w in eng.warnings() {
        log!("pith: warning: {w}");
    }
}

fn chat(a: ChatArgs) -> Res<ExitCode> {
    let mut sampler = a.sample.sampler()?;
    install_interrupt_handler()?;
    let file = open(&a.model)?;
    let eng = Engine::load(&file, a.model.threads).map_err(|e| e.to_string())?;
    warn_load(&eng);
    let (k, v) = a.cache.types();
    let mut state = State::with_cache_types(&eng.model, a.ctx, 512, k, v).map_err(|e| e.to_string())?;
    state.set_precision(a.model.precision);
    let interactive = std::io::stdin().is_terminal();
    let mut messages: Vec<Message> = Vec::new();
    let base = |m: &mut Vec<Message>| {
        m.clear();
        if let Some(s) = &a.system {
            m.push(Message::new("system", s));
        }
    };
    base(&mut messages);
    // Tokens currently in the KV cache, so each turn only feeds what is new.
    let mut fed: Vec<u32> = Vec::new();
    if interactive {
        log!("pith chat: type a message; /reset starts over, Ctrl-C stops a reply, /exit, Ctrl-D or Ctrl-C quits.");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = Out::new();
    loop {
        if interactive {
            let mut e = std::io::stderr();
            let _ = e.write_all(b"> ").and_then(|_| e.flush());
        }
        let line = match lines.next() {
            None => break,
            Some(Ok(l)) => l,
            Some(Err(e)) => return Err(format!("reading stdin: {e}")),
        };
        let line = line.trim_end_matches('\r');
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                base(&mut messages);
                fed.clear();
                state.reset();
                sampler.reset();
                log!("pith: conversation reset");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        let text = eng.template.render(&messages, true).map_err(|e| e.to_string())?;
        let ids = eng.tokenize_prompt(&text).map_err(|e| e.to_string())?;
        // Reuse the cached prefix; feed the rest.
        let common = fed.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        state.truncate(common);
        fed.truncate(common);
        let new = &ids[common..];
        if state.pos + new.len() > state.n_ctx {
            messages.pop();
            log!(
                "pith: this turn needs {} tokens but the context holds {}; /reset or start with a larger -c",
                state.pos + new.len(),
                state.n_ctx
            );
            continue;
        }
        let (g, reply) = generate_to(&eng, &mut state, &mut sampler, new, max_tokens(a.n), &mut out)?;
        out.write(b"\n");
        out.flush();
        fed.extend_from_slice(new);
        fed.extend_from_slice(&g.tokens);
        fed.truncate(state.pos);
        match g.stop {
            Stop::ContextFull => log!("pith: the context is full; /reset to continue"),
            // The reply so far stays in the conversation, as it was shown.
            Stop::Interrupted => log!("pith: reply stopped (Ctrl-C); the conversation goes on"),
            _ => {}
        }
        messages.push(Message::new("assistant", &reply));
    }
    out.flush();
    Ok(ExitCode::SUCCESS)
}

fn tokenize(a: TokenizeArgs) -> Res<ExitCode> {
    let text = read_text(&a.prompt, &a.file)?;
    let file = MappedFile::open(model_path(&a.model)?).map_err(|e| e.to_string())?;
    let g = file.gguf().map_err(|e| e.to_string())?;
    let tok = pith::tokenizer::Tokenizer::from_gguf(&g).map_err(|e| file.context(e).to_string())?;
    let mut ids = Vec::new();
    if a.add_bos && tok.add_bos() {
        ids.extend(tok.bos());
    }
    ids.extend(tok.encode(&text, !a.no_parse_special).map_err(|e| e.to_string())?);
    let mut out = Out::new();
    out.line(serde_json::to_string(&ids).map_err(|e| e.to_string())?);
    out.flush();
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: InspectArgs) -> Res<ExitCode> {
    let file = MappedFile::open(&a.file).map_err(|e| e.to_string())?;
    let g = file.gguf().map_err(|e| e.to_string())?;
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "file: {}\nGGUF version {}, {} metadata keys, {} tensors, alignment {}, data at byte {}",
        a.file.display(),
        g.version,
        g.metadata.len(),
        g.tensors.len(),
        g.alignment,
        g.data_offset
    );
    let _ = writeln!(out, "\nmetadata:");
    for (k, v) in &g.metadata {
        let _ = writeln!(out, "  {k:<45} {}", pith::gguf::display_value(v, if a.full { usize::MAX } else { 8 }));
    }
    let _ =
        writeln!(out, "\ntensors:\n  {:<36} {:<6} {:>24} {:>12} {:>12}", "name", "type", "shape", "bytes", "offset");
    let mut total = 0u64;
    let mut by_type = std::collections::BTreeMap::<&str, (usize, u64)>::new();
    for t in &g.tensors {
        total += t.data.len() as u64;
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.data.len() as u64;
        let _ = writeln!(
            out,
            "  {:<36} {:<6} {:>24} {:>12} {:>12}",
            t.name,
            t.ty.name(),
            format!("{:?}", t.dims),
            t.data.len(),
            t.offset
        );
    }
    let n_el: u64 = g.tensors.iter().map(|t| t.n_elements()).sum();
    let _ = writeln!(
        out,
        "\ntotal: {} tensors, {} elements, {:.2} MiB of tensor data ({:.2} MiB file), {:.3} bits per weight",
        g.tensors.len(),
        n_el,
        total as f64 / 1048576.0,
        file.bytes().len() as f64 / 1048576.0,
        total as f64 * 8.0 / n_el.max(1) as f64
    );
    for (ty, (n, b)) in by_type {
        let _ = writeln!(out, "  {ty:<6} {n:>4} tensors {:>10.2} MiB", b as f64 / 1048576.0);
    }
    let mut o = Out::new();
    o.write(out.as_bytes());
    o.flush();
    Ok(ExitCode::SUCCESS)
}

fn perplexity(a: PerplexityArgs) -> Res<ExitCode> {
    let text = read_text(&None, &Some(a.file.clone()))?;
    let t0 = std::time::Instant::now();
    let file = open(&a.model)?;
    let eng = Engine::load(&file, a.model.threads).map_err(|e| e.to_string())?;
    warn_load(&eng);
    let (k, v) = a.cache.types();
    pith::KvCache::bytes_for(&eng.model, a.ctx.max(1), k, v).map_err(|e| e.to_string())?;
    let tokens = eng.tokenizer.encode(&text, false).map_err(|e| e.to_string())?;
    let bos = if eng.tokenizer.add_bos() { eng.tokenizer.bos() } else { None };
    if a.ctx < 4 {
        return Err(format!("-c {}: a chunk needs at least 4 tokens", a.ctx));
    }
    if tokens.len() < a.ctx {
        return Err(format!(
            "{}: the text has {} tokens, shorter than one chunk of {} (-c); give a longer text or a smaller -c{}",
            a.file.display(),
            tokens.len(),
            a.ctx,
            if tokens.len() >= 4 { format!(", e.g. -c {}", tokens.len()) } else { String::new() }
        ));
    }
    let avail = tokens.len() / a.ctx.max(1);
    let n = if a.chunks == 0 { avail } else { a.chunks.min(avail) };
    log!(
        "pith: {} tokens, {} chunks of {} (scoring the second half of each), {} threads; tokenized in {:.1} s",
        tokens.len(),
        n,
        a.ctx,
        eng.pool.threads(),
        t0.elapsed().as_secs_f64()
    );
    let t1 = std::time::Instant::now();
    let mut out = Out::new();
    let stats = pith::perplexity::perplexity_with_cache(
        &eng.model,
        &eng.pool,
        &tokens,
        pith::perplexity::PerplexityParams { n_ctx: a.ctx, max_chunks: a.chunks, bos, precision: a.model.precision },
        a.cache.types(),
        |s| {
            out.write(format!("[{}]{:.4},", s.chunks, s.ppl()));
            out.flush();
        },
    )
    .map_err(|e| e.to_string())?;
    out.write(b"\n");
    let secs = t1.elapsed().as_secs_f64();
    log!(
        "pith: {} chunks in {:.1} s ({:.1} s per chunk, {:.0} tokens/s)",
        stats.chunks,
        secs,
        secs / stats.chunks as f64,
        (stats.chunks * a.ctx) as f64 / secs
    );
    out.line(format!("PPL = {:.4} +/- {:.5}", stats.ppl(), stats.ppl_error()));
    out.flush();
    Ok(ExitCode::SUCCESS)
}

fn serve(a: ServeArgs) -> Res<ExitCode> {
    warn_threads(&[a.threads]);
    let model = model_path(&a.model)?;
    let opts = pith_serve::ServeOptions {
        model,
        alias: a.alias,
        host: a.host,
        port: a.port,
        ctx: a.ctx,
        parallel: a.parallel,
        threads: a.threads,
        n_batch: a.n_batch,
        queue: a.queue,
        api_key: a.api_key,
        insecure: a.insecure,
        max_body: a.max_body,
        cache_k: a.cache.cache_type_k,
        cache_v: a.cache.cache_type_v,
        weights: weight_memory(a.mmap),
    };
    pith_serve::serve(opts)?;
    Ok(ExitCode::SUCCESS)
}

fn bench(a: BenchArgs) -> Res<ExitCode> {
    use crate::bench::{
        bench_pp, bench_tg, bench_tg_together, peak_rss_bytes, read_bandwidth, repeat, BenchResult, Setup,
    };
    if a.threads.is_empty() || a.threads.contains(&0) {
        return Err("-t: give thread counts of at least 1, e.g. -t 1,2".into());
    }
    warn_threads(&a.threads);
    let file = MappedFile::open_with(model_path(&a.model)?, weight_memory(a.mmap)).map_err(|e| e.to_string())?;
    let g = file.gguf().map_err(|e| e.to_string())?;
    let model = pith::Model::from_gguf(&g).map_err(|e| file.context(e).to_string())?;
    let wbytes = model.weight_bytes() as f64;
    let kernels = pith_kernels::kernel_path().to_string();
    let precision = format!("{:?}", a.precision).to_lowercase();
    let (ck, cv) = a.cache.types();
    // The KV cache of `--kv-ctx` tokens in these types (allocated untouched: its pages are
    // only reserved), also checking the types against the model before any test runs.
    let kv_bytes = pith::KvCache::new(&model, a.kv_ctx, ck, cv).map_err(|e| e.to_string())?.bytes();
    let mut results = Vec::new();
    for &t in &a.threads {
        let pool = pith::Pool::new(t).map_err(|e| e.to_string())?;
        let mk = |test: String, (med, lo, hi): (f64, f64, f64), gbps: Option<f64>| BenchResult {
            test,
            threads: t,
            tokens_per_second: med,
            min_tokens_per_second: lo,
            max_tokens_per_second: hi,
            repetitions: a.reps.max(1),
            weight_gb_per_second: gbps,
            kernels: kernels.clone(),
            precision: precision.clone(),
            cache_type_k: ck.to_string(),
            cache_type_v: cv.to_string(),
        };
        let setup = Setup { precision: a.precision, cache: (ck, cv), depth: a.depth, sequences: a.sequences.into() };
        // llama-bench's names: "pp512", "tg128 @ d4096".
        let at = if a.depth > 0 { format!(" @ d{}", a.depth) } else { String::new() };
        if a.n_prompt > 0 {
            let r = repeat(a.reps, || bench_pp(&model, &pool, a.n_prompt, setup)).map_err(|e| e.to_string())?;
            results.push(mk(format!("pp{}{at}", a.n_prompt), r, None));
        }
        if a.n_gen > 0 && a.sequences == 1 {
            let r = repeat(a.reps, || bench_tg(&model, &pool, a.n_gen, setup)).map_err(|e| e.to_string())?;
            results.push(mk(format!("tg{}{at}", a.n_gen), r, Some(r.0 * wbytes / 1e9)));
        }
        if a.n_gen > 0 && a.sequences > 1 {
            // Weights are read once per step, for every sequence.
            let r = repeat(a.reps, || bench_tg_together(&model, &pool, a.n_gen, setup)).map_err(|e| e.to_string())?;
            let steps_gbps = r.0 / f64::from(a.sequences) * wbytes / 1e9;
            results.push(mk(format!("tg{} x{}{at}", a.n_gen, a.sequences), r, Some(steps_gbps)));
        }
    }
    let rss = peak_rss_bytes();
    // Two working sets: 256 MB (larger than most last-level caches; the usual STREAM-style
    // figure) and the weights' own size, which is what generation streams per token (a model
    // smaller than the last-level cache is partly served from it).
    let sizes = [(256usize << 20, "256 MB buffer"), (model.weight_bytes(), "weights-sized buffer")];
    let mut bw: Vec<(usize, &str, usize, f64)> = Vec::new();
    if a.roofline {
        for &t in &a.threads {
            let pool = pith::Pool::new(t).map_err(|e| e.to_string())?;
            for &(bytes, what) in &sizes {
                bw.push((t, what, bytes, read_bandwidth(&pool, bytes, 7)));
            }
        }
    }
    let mut out = Out::new();
    if a.format == "json" {
        out.line(serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?);
        out.flush();
        return Ok(ExitCode::SUCCESS);
    }
    out.line(format!(
        "model: {} ({:.1} MB of weights), kernels: {kernels}, precision: {precision}, KV cache: K {ck}, V {cv}",
        file.path().display(),
        wbytes / 1e6
    ));
    out.line("| test | threads | t/s (median) | min–max | weights GB/s |");
    out.line("|---|---|---|---|---|");
    for r in &results {
        let gb = r.weight_gb_per_second.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into());
        out.line(format!(
            "| {} | {} | {:.1} | {:.1}–{:.1} | {gb} |",
            r.test, r.threads, r.tokens_per_second, r.min_tokens_per_second, r.max_tokens_per_second
        ));
    }
    if let Some(b) = rss {
        out.line(format!("peak RSS: {:.1} MB", b as f64 / 1e6));
    }
    out.line(format!(
        "KV cache (K {ck}, V {cv}) at {} tokens: {:.1} MB ({} bytes)",
        a.kv_ctx,
        kv_bytes as f64 / 1e6,
        kv_bytes
    ));
    for (t, what, bytes, gbps) in bw {
        let bound = gbps * 1e9 / wbytes;
        let tg = results.iter().find(|r| r.threads == t && r.test.starts_with("tg")).map(|r| r.tokens_per_second);
        let frac = tg.map(|v| format!(", tg at {:.0} % of it", 100.0 * v / bound)).unwrap_or_default();
        out.line(format!(
            "read bandwidth, {t} thread(s), {what} ({:.0} MB): {gbps:.1} GB/s → generation bound {bound:.0} t/s{frac}",
            bytes as f64 / 1e6
        ));
    }
    out.flush();
    Ok(ExitCode::SUCCESS)
}
