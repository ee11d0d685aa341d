//! `response_format` as a logit mask (serve/src/constrain.rs): the request shapes it refuses and
//! why, and end to end on the default model (SmolLM2-135M): a generation loop that masks the
//! logits at every step, whose output must parse and validate against the schema with an
//! independent validator (the `jsonschema` crate), and must end within the token cap.
//!
//! Timings are printed (`--nocapture`) and are measured on a shared, loaded machine.

use pith::chat::Message;
use pith::sampling::{Sampler, SamplerConfig};
use pith::session::{LoadOptions, LoadedModel};
use pith::{Logits, Pool, State};
use pith_serve::constrain::{Constraint, ConstraintVocab, ResponseFormat};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- request shapes (no model)

fn refused(v: Value) -> String {
    match ResponseFormat::from_openai(&v) {
        Ok(f) => panic!("{v} was accepted as {f:?}"),
        Err(e) => e,
    }
}

fn with_schema(schema: Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": true}})
}

#[test]
fn bad_response_formats_name_the_problem() {
    let cases: Vec<(Value, &[&str])> = vec![
        (json!("json_object"), &["response_format must be an object", "a string"]),
        (json!(null), &["must be an object", "null"]),
        (json!({}), &["response_format.type is missing"]),
        (json!({"type": 3}), &["response_format.type must be a string", "a number"]),
        (json!({"type": "xml"}), &["\"xml\" is not supported", "json_schema"]),
        (json!({"type": "json_schema"}), &["response_format.json_schema is missing"]),
        (json!({"type": "json_schema", "json_schema": []}), &["json_schema must be an object", "an array"]),
        (json!({"type": "json_schema", "json_schema": {"name": "x"}}), &["json_schema.schema is missing"]),
        (
            json!({"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}),
            &["json_schema.name must be a string"],
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}}),
            &["json_schema.strict must be a boolean"],
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}),
            &["json_schema.schema must be a JSON schema", "a string"],
        ),
        // Schemas that parse as JSON but that no output can satisfy or that are malformed.
        (with_schema(json!({"type": "strin"})), &["not a usable JSON schema", "strin"]),
        (with_schema(json!({"type": "string", "minLength": 5, "maxLength": 2})), &["not a usable JSON schema"]),
        (with_schema(json!({"$ref": "#/$defs/missing"})), &["not a usable JSON schema", "missing"]),
        (with_schema(json!(false)), &["not a usable JSON schema"]),
    ];
    for (v, needles) in cases {
        let e = refused(v.clone());
        for n in needles {
            assert!(e.contains(n), "for {v}: message {e:?} does not mention {n:?}");
        }
    }
}

/// The schema of the 20 end-to-end requests: required string, number, enum and array fields.
/// String lengths and the array size are bounded, as a client would, to keep the test short.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 24},
            "age": {"type": "number", "minimum": 0, "maximum": 150},
            "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
            "skills": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 16},
                "minItems": 1,
                "maxItems": 3
            }
        },
        "required": ["name", "age", "role", "skills"],
        "additionalProperties": false
    })
}

#[test]
fn good_response_formats_are_read() {
    assert_eq!(ResponseFormat::from_openai(&json!({"type": "text"})), Ok(ResponseFormat::Text));
    assert_eq!(ResponseFormat::from_openai(&json!({"type": "json_object"})), Ok(ResponseFormat::JsonObject));
    let f = ResponseFormat::from_openai(&with_schema(person_schema())).expect("the person schema");
    assert_eq!(f, ResponseFormat::JsonSchema { schema: person_schema() });
    // `strict` and `name` are optional.
    let f =
        ResponseFormat::from_openai(&json!({"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}));
    assert!(f.is_ok(), "{f:?}");
}

// ---------------------------------------------------------------- end to end on the default model

struct Fixture {
    model: LoadedModel,
    vocab: Arc<ConstraintVocab>,
    vocab_build: Duration,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = pith_fetch::ensure_default_model().expect("the default model ($PITH_MODEL or the cache)");
        let model = LoadedModel::open(path, LoadOptions { threads: 1, ..Default::default() }, |_| true).expect("load");
        let t = Instant::now();
        let vocab = ConstraintVocab::new(model.tokenizer()).expect("constraint vocabulary");
        let vocab_build = t.elapsed();
        eprintln!(
            "ConstraintVocab::new ({} tokens, once per model): {:.1} ms (measured under load)",
            model.tokenizer().n_vocab(),
            vocab_build.as_secs_f64() * 1e3
        );
        Fixture { model, vocab, vocab_build }
    })
}

/// Control tokens of the vocabulary that are not end of generation: never allowed in JSON.
fn control_ids(tok: &pith::tokenizer::Tokenizer) -> Vec<u32> {
    (0..tok.n_vocab() as u32)
        .filter(|&id| !tok.is_eog(id) && tok.token_bytes(id, false).is_empty() && !tok.token_bytes(id, true).is_empty())
        .collect()
}

fn eog_ids(tok: &pith::tokenizer::Tokenizer) -> Vec<u32> {
    (0..tok.n_vocab() as u32).filter(|&id| tok.is_eog(id)).collect()
}

struct Run {
    text: String,
    tokens: usize,
    finished: bool,
    new_cost: Duration,
    mask_costs: Vec<Duration>,
}

/// A chat request for `user`, decoded with the constraint for `fmt` masking every step.
fn generate(fmt: &ResponseFormat, system: &str, user: &str, temperature: f32, seed: u64, max_tokens: usize) -> Run {
    let f = fixture();
    let tok = f.model.tokenizer();
    let controls = control_ids(tok);
    let eogs = eog_ids(tok);
    let model = f.model.bind().expect("bind");
    let pool = Pool::new(1).expect("pool");
    let mut state = State::new(&model, 512, 512).expect("state");
    let msgs = [Message::new("system", system), Message::new("user", user)];
    let prompt = f.model.template().render(&msgs, true).expect("render");
    let mut ids = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos());
    }
    ids.extend(tok.encode(&prompt, true).expect("encode"));
    let mut sampler = Sampler::new(SamplerConfig { temperature, seed, ..Default::default() });
    for &t in &ids {
        sampler.accept(t);
    }

    let t = Instant::now();
    let mut c = Constraint::new(&f.vocab, fmt).expect("constraint").expect("a JSON format has a constraint");
    let new_cost = t.elapsed();

    let mut logits = model.forward(&mut state, &pool, &ids, Logits::Last).expect("prefill").to_vec();
    let mut out = Vec::new();
    let mut mask_costs = Vec::new();
    let mut finished = false;
    while out.len() < max_tokens {
        let t = Instant::now();
        c.mask_logits(&mut logits).expect("mask");
        mask_costs.push(t.elapsed());
        for &id in &controls {
            assert_eq!(logits[id as usize], f32::NEG_INFINITY, "control token {id} allowed in JSON");
        }
        if out.is_empty() {
            for &id in &eogs {
                assert_eq!(logits[id as usize], f32::NEG_INFINITY, "end of generation allowed before any JSON");
            }
        }
        let id = sampler.sample(&logits);
        assert!(
            logits[id as usize].is_finite(),
            "sampled token {id} ({:?}) that the mask forbade",
            tok.decode(&[id], true)
        );
        sampler.accept(id);
        c.accept(id).expect("accept");
        if tok.is_eog(id) {
            finished = c.is_finished();
            break;
        }
        out.push(id);
        if c.is_finished() {
            finished = true;
            break;
        }
        logits = model.forward(&mut state, &pool, &[id], Logits::Last).expect("decode").to_vec();
    }
    Run { text: tok.decode(&out, false), tokens: out.len(), finished, new_cost, mask_costs }
}

fn report_costs(label: &str, runs: &[Run]) {
    let mut masks: Vec<Duration> = runs.iter().flat_map(|r| r.mask_costs.iter().copied()).collect();
    masks.sort();
    let mut news: Vec<Duration> = runs.iter().map(|r| r.new_cost).collect();
    news.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = masks.iter().map(|d| ms(*d)).sum::<f64>() / masks.len().max(1) as f64;
    eprintln!(
        "{label} (measured under load): Constraint::new p50 {:.2} ms, max {:.2} ms; mask_logits per token over {} steps: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(news[news.len() / 2]),
        ms(news[news.len() - 1]),
        masks.len(),
        mean,
        ms(masks[masks.len() / 2]),
        ms(masks[(masks.len() * 99 / 100).min(masks.len() - 1)]),
        ms(masks[masks.len() - 1]),
    );
}

const MAX_TOKENS: usize = 96;

#[test]
fn twenty_schema_requests_parse_and_validate() {
    let f = fixture();
    let schema = person_schema();
    let validator = jsonschema::validator_for(&schema).expect("the validator compiles the schema");
    let fmt = ResponseFormat::from_openai(&with_schema(schema.clone())).expect("schema");
    let system = "You answer with one JSON object with the fields name, age, role (admin, editor or viewer) and skills (a list of short strings).";
    let people = [
        "a librarian from Lisbon",
        "a retired sea captain",
        "a junior web developer",
        "the head of a small newspaper",
        "a ten-year-old chess prodigy",
        "a beekeeper who writes poems",
        "a nurse working night shifts",
        "a database administrator",
        "a famous jazz drummer",
        "a mountain guide in Nepal",
    ];
    let t0 = Instant::now();
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for i in 0..20 {
        let who = people[i % people.len()];
        let user = format!("Describe {who} as JSON.");
        // Greedy for the first five, then sampled at 0.7 and 1.0 with different seeds.
        let temperature = match i {
            0..=4 => 0.0,
            _ if i % 2 == 0 => 0.7,
            _ => 1.0,
        };
        let r = generate(&fmt, system, &user, temperature, 1000 + i as u64, MAX_TOKENS);
        eprintln!("[{i:2}] t={temperature} {} tokens, finished={}: {}", r.tokens, r.finished, r.text);
        match serde_json::from_str::<Value>(&r.text) {
            Err(e) => failures.push(format!("request {i}: does not parse ({e}): {:?}", r.text)),
            Ok(v) => {
                let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
                if !errors.is_empty() {
                    failures.push(format!("request {i}: {errors:?} in {}", r.text));
                }
            }
        }
        if !r.finished {
            failures.push(format!("request {i}: the grammar did not finish within {MAX_TOKENS} tokens"));
        }
        runs.push(r);
    }
    eprintln!(
        "20 schema requests: {:.1} s in all, {} tokens (measured under load); vocabulary built once in {:.1} ms",
        t0.elapsed().as_secs_f64(),
        runs.iter().map(|r| r.tokens).sum::<usize>(),
        f.vocab_build.as_secs_f64() * 1e3
    );
    report_costs("json_schema", &runs);
    assert!(failures.is_empty(), "{} of 20 failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn json_object_mode_gives_an_object() {
    let fmt = ResponseFormat::JsonObject;
    let asks = [
        ("Give a JSON object describing a cat with its name and age.", 0.0),
        ("Return the capital cities of France and Spain as a JSON object.", 0.8),
        ("As JSON: a book with title and year.", 1.0),
    ];
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for (i, (user, temperature)) in asks.iter().enumerate() {
        let r = generate(&fmt, "You answer in JSON only. Keep it short.", user, *temperature, 7 + i as u64, MAX_TOKENS);
        eprintln!("[{i}] t={temperature} {} tokens, finished={}: {}", r.tokens, r.finished, r.text);
        match serde_json::from_str::<Value>(&r.text) {
            Ok(Value::Object(_)) => {}
            Ok(other) => failures.push(format!("ask {i}: not an object: {other}")),
            // Out of tokens with the object still open: what the mask let through must be a
            // prefix of valid JSON (the parser runs out of input, it meets no wrong character).
            Err(e) if !r.finished && e.is_eof() => {}
            Err(e) => failures.push(format!("ask {i}: does not parse ({e}): {:?}", r.text)),
        }
        // No schema bounds an object's length: a sampled answer can go on past any budget (at
        // 1.0 one string listing years, at 0.8 a list of five capitals with populations: both
        // seen), which says nothing about the mask. The greedy ask must close its object.
        if !r.finished && *temperature == 0.0 {
            failures.push(format!("ask {i}: the grammar did not finish within {MAX_TOKENS} tokens"));
        }
        runs.push(r);
    }
    report_costs("json_object", &runs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_token_the_mask_forbade_is_refused() {
    let f = fixture();
    let tok = f.model.tokenizer();
    let fmt = ResponseFormat::from_openai(&with_schema(person_schema())).expect("schema");
    let mut c = Constraint::new(&f.vocab, &fmt).expect("constraint").expect("some");
    let mut logits = vec![0.0f32; tok.n_vocab()];
    c.mask_logits(&mut logits).expect("mask");
    // JSON for an object starts with `{`: a token spelling a letter is masked out and refused.
    let letter = tok.encode("x", false).expect("encode")[0];
    assert_eq!(logits[letter as usize], f32::NEG_INFINITY);
    let e = c.accept(letter).expect_err("a masked token must be refused");
    assert!(e.contains("not allowed"), "{e}");
    // Text needs no constraint.
    assert!(Constraint::new(&f.vocab, &ResponseFormat::Text).expect("text").is_none());
    // A logit vector of the wrong length is an error, not a panic.
    let mut c = Constraint::new(&f.vocab, &fmt).expect("constraint").expect("some");
    assert!(c.mask_logits(&mut [0.0; 10]).is_err());
}

#[test]
fn byte_tokens_and_the_mask_agree_with_the_vocabulary() {
    // Forcing a JSON string through the mask token by token: a multi-byte character the
    // vocabulary spells in byte pieces must be reachable (byte tokens map to their bytes).
    let f = fixture();
    let tok = f.model.tokenizer();
    let fmt = ResponseFormat::from_openai(&with_schema(json!({"type": "string", "maxLength": 8}))).expect("schema");
    let mut c = Constraint::new(&f.vocab, &fmt).expect("constraint").expect("some");
    let ids = tok.encode("\"añ€\"", false).expect("encode");
    for &id in &ids {
        let mut logits = vec![0.0f32; tok.n_vocab()];
        c.mask_logits(&mut logits).expect("mask");
        assert!(
            logits[id as usize].is_finite(),
            "token {id} {:?} of a valid string was masked",
            tok.token_bytes(id, true)
        );
        c.accept(id).expect("accept");
    }
    assert!(c.is_finished(), "the string is complete: the grammar must be finished");
    // After the end only end-of-generation is allowed.
    let mut logits = vec![0.0f32; tok.n_vocab()];
    c.mask_logits(&mut logits).expect("mask");
    let allowed: Vec<u32> = (0..tok.n_vocab() as u32).filter(|&i| logits[i as usize].is_finite()).collect();
    assert!(!allowed.is_empty() && allowed.iter().all(|&i| tok.is_eog(i)), "after the end: {allowed:?}");
}

#[test]
fn an_spm_vocabulary_spells_json_in_byte_tokens() {
    // A tiny SPM model (pith::testing): <unk> <s> </s>, the 256 tokens <0x00>..<0xFF>, ▁, the
    // letters. `"`, `{`, `ñ`... exist only as byte tokens, so JSON is reachable only if each
    // `<0xNN>` maps to its byte; <unk> and <s> are control tokens, never allowed.
    use pith::testing::{build, spm_vocab, TinySpec};
    let vocab = spm_vocab(&["name"], 0);
    let spec = TinySpec { n_vocab: vocab.len(), vocab: Some(vocab), ..Default::default() };
    let (bytes, _) = build(&spec);
    let model = LoadedModel::from_bytes(&bytes, LoadOptions { threads: 1, ..Default::default() }, |_| true)
        .expect("tiny model");
    let tok = model.tokenizer();
    let cv = ConstraintVocab::new(tok).expect("vocabulary");
    let fmt = ResponseFormat::from_openai(&with_schema(json!({
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": false
    })))
    .expect("schema");
    let mut c = Constraint::new(&cv, &fmt).expect("constraint").expect("some");
    let mut ids = tok.encode("{\"name\": \"añ\"}", false).expect("encode");
    // The SPM space prefix is not part of the JSON.
    if ids.first().is_some_and(|&id| tok.token_bytes(id, true) == b" ") {
        ids.remove(0);
    }
    let byte_tokens = ids.iter().filter(|&&id| (3..259).contains(&id) && tok.token_bytes(id, true).len() == 1).count();
    assert!(byte_tokens >= 4, "the JSON should be spelled with byte tokens: {ids:?}");
    for (k, &id) in ids.iter().enumerate() {
        let mut logits = vec![0.0f32; tok.n_vocab()];
        c.mask_logits(&mut logits).expect("mask");
        for ctl in [0u32, 1] {
            assert_eq!(logits[ctl as usize], f32::NEG_INFINITY, "control token {ctl} allowed at step {k}");
        }
        assert!(logits[id as usize].is_finite(), "step {k}: token {id} ({:?}) masked", tok.token_bytes(id, true));
        c.accept(id).expect("accept");
    }
    assert!(c.is_finished());
}

// ---------------------------------------------------------------- other vocabularies

/// Where `scripts/fetch-test-vectors.sh` puts llama.cpp's vocabulary files (as
/// runtime/tests/tokenizer.rs finds them).
fn vectors_dir() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("PITH_TEST_VECTORS") {
        return p.into();
    }
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let cache = nonempty("PITH_CACHE_DIR").unwrap_or_else(|| {
        nonempty("XDG_CACHE_HOME")
            .unwrap_or_else(|| nonempty("HOME").unwrap_or_else(|| "/root".into()).join(".cache"))
            .join("pith")
    });
    cache.join("llama-vocab-0.3.36")
}

/// A walk through the grammar with random logits: every step takes the best allowed token of
/// a random vector, so any token of the vocabulary (byte pieces, multi-byte characters,
/// control tokens) may be offered; the result must still be valid, complete JSON.
#[test]
fn random_walks_on_other_vocabularies_stay_valid() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"enum": ["admin", "editor", "viewer"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}
        },
        "required": ["name", "age", "role", "tags"],
        "additionalProperties": false
    });
    let validator = jsonschema::validator_for(&schema).expect("validator");
    let fmt = ResponseFormat::from_openai(&with_schema(schema)).expect("schema");
    // llama-spm: SPM with <0xNN> byte tokens; gemma-4: 262,144 tokens.
    for name in ["llama-spm", "gemma-4"] {
        let path = vectors_dir().join(format!("ggml-vocab-{name}.gguf"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("cannot read {}: {e}\nrun scripts/fetch-test-vectors.sh (or set PITH_TEST_VECTORS)", path.display())
        });
        let g = pith::gguf::Gguf::parse(&bytes).expect("gguf");
        let tok = pith::tokenizer::Tokenizer::from_gguf(&g).expect("tokenizer");
        let t = Instant::now();
        let cv = ConstraintVocab::new(&tok).expect("vocabulary");
        let build = t.elapsed();
        let mut runs = Vec::new();
        for seed in 0..4u64 {
            let t = Instant::now();
            let mut c = Constraint::new(&cv, &fmt).expect("constraint").expect("some");
            let new_cost = t.elapsed();
            let mut rng = pith::testing::Rng(seed * 7919 + 1);
            let mut out = Vec::new();
            let mut mask_costs = Vec::new();
            let mut finished = false;
            for _ in 0..200 {
                let mut logits: Vec<f32> = (0..tok.n_vocab()).map(|_| rng.uniform()).collect();
                let t = Instant::now();
                c.mask_logits(&mut logits).expect("mask");
                mask_costs.push(t.elapsed());
                let (id, best) = logits
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, l)| (i as u32, *l))
                    .expect("non-empty");
                assert!(best.is_finite(), "{name}: nothing allowed");
                c.accept(id).expect("accept");
                if tok.is_eog(id) || c.is_finished() {
                    finished = c.is_finished();
                    if !tok.is_eog(id) {
                        out.push(id);
                    }
                    break;
                }
                out.push(id);
            }
            let text = tok.decode(&out, false);
            eprintln!("{name} walk {seed}: {} tokens, finished={finished}: {text}", out.len());
            assert!(finished, "{name} walk {seed}: not finished after 200 tokens: {text}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} walk {seed}: {e}: {text:?}"));
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{name} walk {seed}: {errors:?} in {text}");
            runs.push(Run { text, tokens: out.len(), finished, new_cost, mask_costs });
        }
        eprintln!(
            "{name} ({} tokens): ConstraintVocab::new {:.1} ms, once per model (measured under load)",
            tok.n_vocab(),
            build.as_secs_f64() * 1e3
        );
        report_costs(name, &runs);
    }
}
