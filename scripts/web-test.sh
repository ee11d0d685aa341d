#!/usr/bin/env bash
# The web chat page's test (issue 13, part 4): headless Chromium drives the page that
# `pith serve` serves at `/`, with the default model behind it.
#   1. Debian's chromium at /usr/bin/chromium (installed here when missing: root, as in CI)
#   2. `npm ci` in serve/tests/web (playwright-core, pinned by package-lock.json; it drives the
#      system chromium and downloads no browser)
#   3. builds pith (cargo build --release -p pith-cli) and fetches the default model (pith-fetch)
#   4. starts `target/release/pith serve -m MODEL --port P` on a free loopback port, waits for
#      GET /health to answer 200, runs serve/tests/web/chat.test.mjs against it (node's test
#      runner), and stops the server whatever happens.
# Environment:
#   PITH_WEB_MOCK=1         run against serve/tests/web/mock-server.mjs instead (no build, no model)
#   PITH_WEB_BASE=URL       run against a server that is already up (no build, no start)
#   PITH_WEB_HEALTH_TIMEOUT seconds to wait for /health (default 180)
#   PITH_MODEL              the model file (default: the one pith-fetch prints)
# Also read by the test: PITH_WEB_MAX_TOKENS, PITH_WEB_LONG_TOKENS, PITH_WEB_SCREENSHOT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WEB=serve/tests/web

# 1. The browser.
if [ ! -x /usr/bin/chromium ]; then
    echo "web-test: installing Debian's chromium"
    if [ "$(id -u)" -ne 0 ]; then
        echo "web-test: /usr/bin/chromium is missing and this is not root: apt-get install chromium" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends chromium ||
        { apt-get update && apt-get install -y --no-install-recommends chromium; }
fi
/usr/bin/chromium --version 2>/dev/null  # (its wrapper script can warn on stderr)

# 2. The driver.
(cd "$WEB" && npm ci --no-audit --no-fund --loglevel=error)

SERVER_PID=""
SERVER_LOG=$(mktemp "${TMPDIR:-/tmp}/pith-web-server.XXXXXX")
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -f "$SERVER_LOG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: the kernel picks one, node reports it.
free_port() {
    node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# Polls GET $1/health until it answers 200, while the server process is alive.
wait_healthy() {
    local base=$1 timeout=${PITH_WEB_HEALTH_TIMEOUT:-180} start=$SECONDS
    while :; do
        if node -e 'fetch(process.argv[1]+"/health").then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))' "$base"; then
            echo "web-test: $base/health is 200 after $((SECONDS - start))s"
            return 0
        fi
        if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "web-test: the server exited before it was healthy; its log:" >&2
            cat "$SERVER_LOG" >&2
            return 1
        fi
        if [ $((SECONDS - start)) -ge "$timeout" ]; then
            echo "web-test: $base/health not 200 after ${timeout}s; the server's log:" >&2
            cat "$SERVER_LOG" >&2
            return 1
        fi
        sleep 0.5
    done
}

# 3-4. The server.
if [ -n "${PITH_WEB_BASE:-}" ]; then
    BASE=$PITH_WEB_BASE
elif [ "${PITH_WEB_MOCK:-0}" = 1 ]; then
    PORT=$(free_port)
    node "$WEB/mock-server.mjs" --port "$PORT" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    BASE=http://127.0.0.1:$PORT
else
    cargo build --release -p pith-cli
    MODEL=${PITH_MODEL:-$(cargo run --release -q -p pith-fetch --bin pith-fetch)}
    PORT=$(free_port)
    echo "web-test: target/release/pith serve -m $MODEL --port $PORT"
    "$ROOT/target/release/pith" serve -m "$MODEL" --port "$PORT" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    BASE=http://127.0.0.1:$PORT
fi
wait_healthy "$BASE"

# The test (node's test runner; TAP summary at the end).
rc=0
(cd "$WEB" && PITH_WEB_BASE=$BASE node --test --test-concurrency=1 chat.test.mjs) || rc=$?
if [ "$rc" -ne 0 ] && [ -n "$SERVER_PID" ]; then
    echo "web-test: FAILED; the last lines of the server's log:" >&2
    tail -n 40 "$SERVER_LOG" >&2
fi
exit "$rc"
