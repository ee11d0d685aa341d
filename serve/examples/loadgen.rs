//! A bounded load client for any OpenAI-compatible server (pith serve, llama-server).
//!
//! `loadgen --url http://127.0.0.1:8080 [--clients 8] [--requests 64] [--max-tokens 64]`
//! 1. sends every request alone, one after another (greedy): the reference answers and the
//!    one-client throughput;
//! 2. sends them again from `--clients` concurrent streaming clients: time to first token per
//!    request, aggregate generated tokens/s, errors, and answers that differ from step 1.
//!
//! `loadgen --url … --prefix`: time to first token of a follow-up turn in a ~2,000-token
//! conversation (the history already in a slot) against a fresh ~50-token prompt.
//!
//! Prints one JSON object. Plain std (threads, TcpStream, chunked decoding): no client library
//! between the measurement and the socket.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Opts {
    host: String,
    port: u16,
    clients: usize,
    requests: usize,
    max_tokens: usize,
    prefix: bool,
    model: Option<String>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        host: "127.0.0.1".into(),
        port: 8080,
        clients: 8,
        requests: 64,
        max_tokens: 64,
        prefix: false,
        model: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--url" => {
                let u = val()?;
                let hp = u.trim_start_matches("http://").trim_end_matches('/');
                let (h, p) = hp.rsplit_once(':').ok_or("--url http://HOST:PORT")?;
                o.host = h.into();
                o.port = p.parse().map_err(|_| "--url: bad port")?;
            }
            "--clients" => o.clients = val()?.parse().map_err(|_| "--clients: a number")?,
            "--requests" => o.requests = val()?.parse().map_err(|_| "--requests: a number")?,
            "--max-tokens" => o.max_tokens = val()?.parse().map_err(|_| "--max-tokens: a number")?,
            "--model" => o.model = Some(val()?),
            "--prefix" => o.prefix = true,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(o)
}

/// What one streamed request gave.
#[derive(Clone, Debug, Default)]
struct Outcome {
    text: String,
    tokens: usize,
    prompt_tokens: usize,
    ttft: Duration,
    total: Duration,
    error: Option<String>,
}

/// Sends a streamed chat request and reads the SSE answer (HTTP/1.1 chunked).
fn stream_chat(o: &Opts, messages: &Value) -> Outcome {
    let mut body = json!({"messages": messages, "max_tokens": o.max_tokens, "temperature": 0, "stream": true,
                          "stream_options": {"include_usage": true}, "ignore_eos": true, "cache_prompt": o.prefix});
    if let Some(m) = &o.model {
        body["model"] = json!(m);
    }
    let body = body.to_string();
    let t0 = Instant::now();
    let mut out = Outcome::default();
    let r = (|| -> Result<(), String> {
        let mut c = TcpStream::connect((o.host.as_str(), o.port)).map_err(|e| e.to_string())?;
        c.set_nodelay(true).ok();
        write!(
            c,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            o.host,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(c);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if !line.contains(" 200") {
            let mut rest = String::new();
            let _ = r.read_to_string(&mut rest);
            return Err(format!("{} {}", line.trim(), rest.chars().take(300).collect::<String>()));
        }
        let mut chunked = false;
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim().is_empty() {
                break;
            }
            if line.to_ascii_lowercase().starts_with("transfer-encoding: chunked") {
                chunked = true;
            }
        }
        let mut pending = Vec::new();
        let mut handle = |data: &[u8], out: &mut Outcome| -> Result<bool, String> {
            pending.extend_from_slice(data);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = pending.drain(..=i).collect();
                let l = String::from_utf8_lossy(&l);
                let Some(d) = l.trim_end().strip_prefix("data: ") else { continue };
                if d == "[DONE]" {
                    return Ok(true);
                }
                let v: Value = serde_json::from_str(d).map_err(|e| format!("bad chunk ({e}): {d}"))?;
                if let Some(e) = v.get("error") {
                    return Err(e.to_string());
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    out.tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                    out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                }
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    if !t.is_empty() && out.text.is_empty() {
                        out.ttft = t0.elapsed();
                    }
                    out.text.push_str(t);
                }
            }
            Ok(false)
        };
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line).map_err(|e| e.to_string())?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                if n == 0 {
                    return Ok(());
                }
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                if handle(&buf[..n], &mut out)? {
                    return Ok(());
                }
            }
        } else {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).map_err(|e| e.to_string())?;
            handle(&buf, &mut out)?;
            Ok(())
        }
    })();
    out.total = t0.elapsed();
    out.error = r.err();
    out
}

fn prompts(n: usize) -> Vec<String> {
    let topics = [
        "the history of Rome",
        "how rain forms",
        "why cats purr",
        "the rules of chess",
        "how bread rises",
        "what a compiler does",
        "the water cycle",
        "how bees make honey",
        "the moon's phases",
        "how a bicycle works",
        "what DNA is",
        "why the sky is blue",
        "how volcanoes erupt",
        "the first computers",
        "how to plant a tree",
        "what gravity is",
    ];
    (0..n).map(|i| format!("Explain {} in a few sentences. (request {i})", topics[i % topics.len()])).collect()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn load(o: &Opts) -> Value {
    let ps = prompts(o.requests);
    let msgs = |p: &str| json!([{"role": "user", "content": p}]);
    // 1. Alone.
    let t0 = Instant::now();
    let alone: Vec<Outcome> = ps.iter().map(|p| stream_chat(o, &msgs(p))).collect();
    let alone_wall = t0.elapsed().as_secs_f64();
    let alone_tokens: usize = alone.iter().map(|r| r.tokens).sum();
    let alone_gen: f64 = alone.iter().map(|r| (r.total - r.ttft).as_secs_f64()).sum();
    // 2. Together.
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..o.clients {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= ps.len() {
                    break;
                }
                let r = stream_chat(o, &msgs(&ps[i]));
                results.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let mut res = results.into_inner().unwrap_or_else(|e| e.into_inner());
    res.sort_by_key(|(i, _)| *i);
    let errors: Vec<String> = res
        .iter()
        .chain(alone.iter().enumerate().map(|(i, r)| (i, r.clone())).collect::<Vec<_>>().iter())
        .filter_map(|(i, r)| r.error.as_ref().map(|e| format!("{i}: {e}")))
        .collect();
    let mismatches: Vec<usize> = res.iter().filter(|(i, r)| r.text != alone[*i].text).map(|(i, _)| *i).collect();
    let tokens: usize = res.iter().map(|(_, r)| r.tokens).sum();
    let mut ttft: Vec<f64> = res.iter().map(|(_, r)| r.ttft.as_secs_f64() * 1e3).collect();
    let mut alone_ttft: Vec<f64> = alone.iter().map(|r| r.ttft.as_secs_f64() * 1e3).collect();
    let per_client: Vec<f64> =
        res.iter().map(|(_, r)| r.tokens as f64 / (r.total - r.ttft).as_secs_f64().max(1e-9)).collect();
    let agg = tokens as f64 / wall;
    let one = alone_tokens as f64 / alone_wall;
    json!({
        "requests": o.requests, "clients": o.clients, "max_tokens": o.max_tokens,
        "errors": errors.len(), "error_samples": errors.iter().take(3).collect::<Vec<_>>(),
        "answers_differing_from_alone": mismatches.len(), "differing": mismatches,
        "alone": {"wall_s": alone_wall, "tokens": alone_tokens, "tokens_per_s": one,
                  "decode_tokens_per_s": alone_tokens as f64 / alone_gen.max(1e-9),
                  "ttft_ms_p50": percentile(&mut alone_ttft, 0.5)},
        "together": {"wall_s": wall, "tokens": tokens, "aggregate_tokens_per_s": agg,
                     "ttft_ms_p50": percentile(&mut ttft.clone(), 0.5), "ttft_ms_p99": percentile(&mut ttft, 0.99),
                     "per_client_tokens_per_s_p50": percentile(&mut per_client.clone(), 0.5)},
        "speedup": agg / one,
    })
}

/// TTFT of a follow-up turn in a long conversation against a fresh short prompt.
fn prefix(o: &Opts) -> Value {
    let para = "The city council met on Tuesday to discuss the new library, the repairs to the old bridge, \
                and the budget for the coming year. Several residents spoke about parking near the market. ";
    let mut history = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    // ~2,000 tokens of earlier turns.
    for i in 0..10 {
        history.push(json!({"role": "user", "content": format!("Part {i} of the minutes: {}", para.repeat(4))}));
        history.push(json!({"role": "assistant", "content": format!("Noted part {i}. {}", para)}));
    }
    let one = Opts { max_tokens: 8, ..clone_opts(o) };
    let mut warm = history.clone();
    warm.push(json!({"role": "user", "content": "Summarize the minutes in one line."}));
    let first = stream_chat(&one, &Value::Array(warm.clone()));
    if let Some(e) = &first.error {
        return json!({"error": e});
    }
    let mut follow = warm;
    follow.push(json!({"role": "assistant", "content": first.text}));
    follow.push(json!({"role": "user", "content": "And what about the bridge?"}));
    let mut turn = Vec::new();
    let mut fresh = Vec::new();
    let mut prompt_tokens = 0;
    let mut fresh_tokens = 0;
    for k in 0..5 {
        // A new question each round so the short prompt is never cached.
        let q = format!("Question {k}: in two short sentences, what would a careful gardener do first in spring, and why would that help the roses grow well this year?");
        let r = stream_chat(&one, &json!([{"role": "user", "content": q}]));
        let f = stream_chat(&one, &Value::Array(follow.clone()));
        prompt_tokens = f.prompt_tokens;
        if let Some(e) = r.error.or(f.error) {
            return json!({"error": e});
        }
        fresh.push(r.ttft.as_secs_f64() * 1e3);
        fresh_tokens = r.prompt_tokens;
        turn.push(f.ttft.as_secs_f64() * 1e3);
        follow.push(json!({"role": "assistant", "content": f.text}));
        follow.push(json!({"role": "user", "content": format!("Follow-up {k}: and the library?")}));
    }
    let (t, f) = (percentile(&mut turn.clone(), 0.5), percentile(&mut fresh.clone(), 0.5));
    json!({"cold_conversation_ttft_ms": first.ttft.as_secs_f64() * 1e3, "followup_ttft_ms": turn, "fresh_50_token_ttft_ms": fresh,
           "followup_median_ms": t, "conversation_tokens": prompt_tokens, "fresh_prompt_tokens": fresh_tokens, "fresh_median_ms": f, "ratio": t / f})
}

fn clone_opts(o: &Opts) -> Opts {
    Opts { host: o.host.clone(), model: o.model.clone(), ..*o }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let v = if o.prefix { prefix(&o) } else { load(&o) };
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}
