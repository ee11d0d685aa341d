// A stand-in for `pith serve` that implements the part of its HTTP contract the web chat page
// uses, so that the page and its test can be worked on without a model:
//   GET  /                      serve/web/index.html (read on every request)
//   GET  /health                200 {"status":"ok"}
//   GET  /v1/models             {"object":"list","data":[{"id":MODEL,"object":"model",...}]}
//   POST /v1/chat/completions   OpenAI chat completions; stream: true sends SSE chunks of a
//                               canned markdown answer, one word every MOCK_DELAY_MS
//   GET  /mock/stats            what the mock saw (requests, disconnects), for the test
// Errors are OpenAI-style {"error":{"message","type"}} with a 4xx status.
//
// Usage: node mock-server.mjs [--port P] [--host 127.0.0.1]   (port 0: any free port; the
// chosen one is printed as `listening on http://HOST:PORT`)

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const PAGE = path.resolve(here, '../../web/index.html');
const MODEL = process.env.MOCK_MODEL || 'mock-model-q8_0.gguf';
const DELAY_MS = Number(process.env.MOCK_DELAY_MS || 25);
const CTX = 4096;

const args = process.argv.slice(2);
function arg(name, dflt) {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
}
const port = Number(arg('--port', process.env.PORT || 0));
const host = arg('--host', '127.0.0.1');

const ANSWER = `## A short answer

Here is **bold**, *italic* and \`inline code\`, then a list:

- first item
- second item with a [link](https://example.com/docs?a=1&b=2)
  1. nested and numbered

\`\`\`rust
fn main() {
    println!("hello, {}", 1 < 2);
}
\`\`\`

That was turn TURN of this conversation.`;

const stats = { chat_requests: 0, completed: 0, disconnected: 0, active: 0 };

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
function sendError(res, status, type, message) {
  sendJson(res, status, { error: { message, type } });
}

// Words with their following whitespace: each one is a "token".
function tokens(text) {
  return text.match(/\S+\s*|\s+/g) || [];
}

function chat(req, res, body) {
  let j;
  try {
    j = JSON.parse(body);
  } catch (e) {
    return sendError(res, 400, 'invalid_request_error', `bad JSON: ${e.message}`);
  }
  if (!j || typeof j !== 'object' || !Array.isArray(j.messages) || j.messages.length === 0) {
    return sendError(res, 400, 'invalid_request_error', '`messages` must be a non-empty array');
  }
  if (j.model !== undefined && j.model !== MODEL) {
    return sendError(res, 404, 'not_found_error', `unknown model '${j.model}'`);
  }
  const maxTokens = j.max_tokens === undefined ? 256 : j.max_tokens;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) {
    return sendError(res, 400, 'invalid_request_error', '`max_tokens` must be a positive integer');
  }
  if (maxTokens > CTX) {
    return sendError(res, 400, 'invalid_request_error', `max_tokens ${maxTokens} is beyond the context (${CTX})`);
  }
  stats.chat_requests++;
  const turn = j.messages.filter((m) => m.role === 'user').length;
  const promptTokens = j.messages.reduce((n, m) => n + tokens(String(m.content || '')).length + 4, 0);
  const words = tokens(ANSWER.replace('TURN', String(turn)));
  const pieces = [];
  for (let i = 0; pieces.length < maxTokens; i++) {
    if (i >= words.length) {
      // A long answer (big max_tokens) goes on: a counting list, like a model that rambles.
      if (maxTokens <= words.length) break;
      pieces.push(`\n- line ${i - words.length + 1}`);
      continue;
    }
    pieces.push(words[i]);
  }
  // Cut short of the canned answer, or rambling until max_tokens: 'length'.
  const finish = pieces.length < words.length || maxTokens > words.length ? 'length' : 'stop';
  const id = `chatcmpl-mock-${stats.chat_requests}`;
  const created = Math.floor(Date.now() / 1000);
  const usage = { prompt_tokens: promptTokens, completion_tokens: pieces.length, total_tokens: promptTokens + pieces.length };

  if (!j.stream) {
    return sendJson(res, 200, {
      id, object: 'chat.completion', created, model: MODEL,
      choices: [{ index: 0, message: { role: 'assistant', content: pieces.join('') }, finish_reason: finish }],
      usage,
    });
  }

  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  const chunk = (choices, extra) =>
    `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: MODEL, choices, ...extra })}\n\n`;
  stats.active++;
  let i = -1;
  let timer = null;
  let ended = false;
  const end = (how) => {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    stats.active--;
    stats[how]++;
  };
  res.on('close', () => end('disconnected')); // the "slot" is freed on disconnect
  const step = () => {
    if (ended) return;
    if (i < 0) {
      res.write(chunk([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }]));
    } else if (i < pieces.length) {
      // Split some pieces over two writes to exercise SSE parsing across chunk boundaries.
      const text = chunk([{ index: 0, delta: { content: pieces[i] }, finish_reason: null }]);
      if (i % 3 === 0) {
        const cut = Math.floor(text.length / 2);
        res.write(text.slice(0, cut));
        res.write(text.slice(cut));
      } else {
        res.write(text);
      }
    } else {
      res.write(chunk([{ index: 0, delta: {}, finish_reason: finish }]));
      if (j.stream_options && j.stream_options.include_usage) res.write(chunk([], { usage }));
      res.write('data: [DONE]\n\n');
      end('completed');
      res.end();
      return;
    }
    i++;
    timer = setTimeout(step, DELAY_MS);
  };
  step();
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'GET' && url.pathname === '/') {
    const html = fs.readFileSync(PAGE);
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': html.length });
    return res.end(html);
  }
  if (req.method === 'GET' && url.pathname === '/health') return sendJson(res, 200, { status: 'ok' });
  if (req.method === 'GET' && url.pathname === '/v1/models') {
    return sendJson(res, 200, {
      object: 'list',
      data: [{ id: MODEL, object: 'model', created: 0, owned_by: 'pith' }],
    });
  }
  if (req.method === 'GET' && url.pathname === '/mock/stats') return sendJson(res, 200, stats);
  if (req.method === 'POST' && url.pathname === '/v1/chat/completions') {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => {
      body += d;
    });
    req.on('end', () => chat(req, res, body));
    return;
  }
  sendError(res, 404, 'not_found_error', `no route for ${req.method} ${url.pathname}`);
});

server.listen(port, host, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
