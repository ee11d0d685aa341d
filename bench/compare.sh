#!/usr/bin/env bash
# pith vs llama.cpp on the same file, measured alternately in the same run (these machines are
# noisy; only ratios measured side by side mean anything).
#
#   LLAMA_BENCH=/path/to/llama-bench bench/compare.sh [MODEL.gguf] [THREADS=1,2] [ROUNDS=3]
#
# Runs `pith bench` and `llama-bench` one after the other ROUNDS times for pp512 and tg128 at each
# thread count, then prints the median tokens/s of each and the ratio pith / llama.cpp.
# It never downloads or builds llama.cpp: give it a build with LLAMA_BENCH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench binary (this script never fetches or builds llama.cpp)}"
MODEL=${1:-$(cargo run --release -q -p pith-fetch --bin pith-fetch)}
THREADS=${2:-1,2}
ROUNDS=${3:-3}
cargo build --release -q -p pith-cli --bin pith
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS: pith" >&2
    target/release/pith bench -m "$MODEL" -p 512 -n 128 -t "$THREADS" -r 1 --format json > "$out/pith.$r.json"
    echo "round $r/$ROUNDS: llama-bench" >&2
    "$LLAMA_BENCH" -m "$MODEL" -p 512 -n 128 -t "$THREADS" -r 1 -o json > "$out/llama.$r.json"
done
python3 - "$out" "$ROUNDS" "$MODEL" <<'PY'
import json, statistics, sys, os
out, rounds, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pith, llama = {}, {}
for r in range(1, rounds + 1):
    for e in json.load(open(os.path.join(out, f"pith.{r}.json"))):
        pith.setdefault((e["test"], e["threads"]), []).append(e["tokens_per_second"])
        kernels = e["kernels"]
    for e in json.load(open(os.path.join(out, f"llama.{r}.json"))):
        test = f"pp{e['n_prompt']}" if e["n_prompt"] > 0 else f"tg{e['n_gen']}"
        llama.setdefault((test, e["n_threads"]), []).append(e["avg_ts"])
print(f"model: {model}; pith kernels: {kernels}; median of {rounds} alternating rounds")
print("| test | threads | pith t/s | llama.cpp t/s | ratio |")
print("|---|---|---|---|---|")
for key in sorted(pith):
    p = statistics.median(pith[key])
    l = statistics.median(llama[key]) if key in llama else float("nan")
    print(f"| {key[0]} | {key[1]} | {p:.1f} | {l:.1f} | {p / l:.2f} |")
PY
