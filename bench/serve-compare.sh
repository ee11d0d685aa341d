#!/usr/bin/env bash
# pith serve against llama-server on the same file and settings, measured in the same run,
# alternating (serve/examples/loadgen.rs drives both).
#
#   LLAMA_SERVER=/path/to/llama-server bench/serve-compare.sh [MODEL] [ROUNDS]
#
# Each round, for each server in turn: start it (--parallel 4, the same per-slot context and
# threads), run the load (8 concurrent streaming chat clients, 64 requests, 64 tokens each,
# greedy, ignore_eos; every request also sent alone first) and the prefix-reuse probe (a
# follow-up turn in a ~2,200-token conversation against a fresh ~60-token prompt), stop it.
# Prints each run's JSON and a summary of medians. Do not run it beside a build: llama.cpp's
# threads and pith's spinning team both collapse under contention.
#
# Environment: PARALLEL (4), CTX per slot (2560), THREADS (2), CLIENTS (8), REQUESTS (64),
# MAX_TOKENS (64).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
model="${1:-$(cargo run --release -q -p pith-fetch --bin pith-fetch)}"
rounds="${2:-2}"
par="${PARALLEL:-4}"; ctx="${CTX:-2560}"; threads="${THREADS:-2}"
clients="${CLIENTS:-8}"; requests="${REQUESTS:-64}"; maxt="${MAX_TOKENS:-64}"
cargo build --release -q -p pith-cli -p pith-serve --example loadgen
pith="$root/target/release/pith"
loadgen="$root/target/release/examples/loadgen"
out="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() {
    for _ in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "server on port $1 never became ready" >&2; return 1
}

run_one() { # name round
    local name=$1 r=$2 port pid
    port=$(free_port)
    if [ "$name" = pith ]; then
        "$pith" serve -m "$model" --port "$port" --parallel "$par" -c "$ctx" -t "$threads" 2>"$out/$name.$r.log" &
    else
        LD_LIBRARY_PATH="$(dirname "$LLAMA_SERVER")" "$LLAMA_SERVER" -m "$model" --port "$port" --parallel "$par" \
            -c $((ctx * par)) -t "$threads" -tb "$threads" --no-webui 2>"$out/$name.$r.log" >/dev/null &
    fi
    pid=$!
    wait_ready "$port"
    "$loadgen" --url "http://127.0.0.1:$port" --clients "$clients" --requests "$requests" --max-tokens "$maxt" \
        > "$out/$name.$r.load.json"
    "$loadgen" --url "http://127.0.0.1:$port" --prefix > "$out/$name.$r.prefix.json"
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    echo "== $name round $r"; cat "$out/$name.$r.load.json" "$out/$name.$r.prefix.json"
}

servers=(pith)
if [ -n "${LLAMA_SERVER:-}" ]; then servers+=(llama); else echo "LLAMA_SERVER not set: pith only" >&2; fi
for r in $(seq 1 "$rounds"); do
    for s in "${servers[@]}"; do run_one "$s" "$r"; done
done

python3 - "$out" "$rounds" "${servers[@]}" <<'EOF'
import json, statistics, sys
out, rounds, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def med(xs): return statistics.median(xs) if xs else float('nan')
print("\n| server | one client t/s | 8 clients aggregate t/s | speedup | TTFT p50 ms | TTFT p99 ms | errors | answers ≠ alone | follow-up / fresh TTFT |")
print("|---|---|---|---|---|---|---|---|---|")
for s in servers:
    L = [json.load(open(f"{out}/{s}.{r}.load.json")) for r in range(1, rounds + 1)]
    P = [json.load(open(f"{out}/{s}.{r}.prefix.json")) for r in range(1, rounds + 1)]
    f = lambda xs: f"{med(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"
    print(f"| {s} | {f([l['alone']['tokens_per_s'] for l in L])} | {f([l['together']['aggregate_tokens_per_s'] for l in L])} "
          f"| {f([l['speedup'] for l in L])} | {f([l['together']['ttft_ms_p50'] for l in L])} | {f([l['together']['ttft_ms_p99'] for l in L])} "
          f"| {sum(l['errors'] for l in L)} | {sum(l['answers_differing_from_alone'] for l in L)} "
          f"| {f([p.get('ratio', float('nan')) for p in P])} |")
EOF
