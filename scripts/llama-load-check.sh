#!/usr/bin/env bash
# Checks that llama.cpp loads and runs every GGUF file given (e.g. everything
# scripts/compress-table.sh wrote): `llama-bench -p 16 -n 4` per file. It never fetches or
# builds llama.cpp: give it a build with LLAMA_BENCH.
#
#   LLAMA_BENCH=/path/to/llama-bench scripts/llama-load-check.sh FILE.gguf...
set -uo pipefail
: "${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench binary}"
fail=0
for f in "$@"; do
    if out=$("$LLAMA_BENCH" -m "$f" -p 16 -n 4 -r 1 -t 2 -o csv 2>&1); then
        ts=$(echo "$out" | tail -1 | awk -F, '{print $(NF-1)}' | tr -d '"')
        printf 'ok    %s (tg4 %s t/s)\n' "$f" "$ts"
    else
        printf 'FAIL  %s\n%s\n' "$f" "$(echo "$out" | tail -3)"
        fail=1
    fi
done
exit $fail
