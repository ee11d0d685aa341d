#!/usr/bin/env bash
# Greedy continuations of pith and llama.cpp on the same file and prompts, compared.
#
#   LLAMA_COMPLETION=/path/to/llama-completion scripts/greedy-vs-llama.sh MODEL.gguf [N] [PROMPT_FILE...]
#
# Defaults: N = 32, prompts bench/prompts/p*.txt. llama.cpp runs `-f P -n N --temp 0 -c 512
# -no-cnv`; pith runs examples/greedy_gaps.rs, which also prints the gap between the two largest
# logits at every step. For each prompt: "same", or the step where the texts part and pith's
# gap there (a gap ≤ 0.1 is a near-tie that summation order decides).
set -euo pipefail
model=${1:?usage: LLAMA_COMPLETION=... $0 MODEL.gguf [N] [PROMPT_FILE...]}
n=${2:-32}
shift $(( $# >= 2 ? 2 : 1 ))
prompts=("$@")
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ ${#prompts[@]} -gt 0 ] || prompts=("$root"/bench/prompts/p*.txt)
: "${LLAMA_COMPLETION:?set LLAMA_COMPLETION to a llama-completion binary}"
export LD_LIBRARY_PATH="$(dirname "$LLAMA_COMPLETION")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo build -q --release -p pith --example greedy_gaps --manifest-path "$root/Cargo.toml"
gaps="$root/target/release/examples/greedy_gaps"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for p in "${prompts[@]}"; do
    "$LLAMA_COMPLETION" -m "$model" -f "$p" -n "$n" --temp 0 -c 512 -t 2 -no-cnv --no-display-prompt \
        >"$tmp/llama.txt" 2>/dev/null </dev/null
    "$gaps" "$model" "$p" "$n" >"$tmp/pith.jsonl"
    python3 - "$tmp/llama.txt" "$tmp/pith.jsonl" "$(basename "$p")" <<'PY'
import json, sys
llama = open(sys.argv[1], encoding='utf-8', errors='replace').read()
steps = [json.loads(l) for l in open(sys.argv[2], encoding='utf-8')]
pith = ''.join(s['text'] for s in steps)
name = sys.argv[3]
if llama.startswith(pith) and len(llama) - len(pith) <= 1 or pith.startswith(llama.rstrip('\n')):
    print(f"{name}: same ({len(steps)} tokens; smallest gap {min(s['gap'] for s in steps):.3f})")
else:
    i = next(i for i, (a, b) in enumerate(zip(pith + '\0', llama + '\0')) if a != b)
    pos = 0
    for s in steps:
        if pos + len(s['text']) > i:
            break
        pos += len(s['text'])
    # The texts part inside step s's token, or at its start when llama's token at step s - 1
    # was longer than pith's (" <" against " <="): either step may be the one that parted.
    prev = steps[s['step'] - 1] if s['step'] > 0 else None
    at_start = i == pos and prev is not None
    g = min(s['gap'], prev['gap']) if at_start else s['gap']
    where = f"step {prev['step']}-{s['step']}" if at_start else f"step {s['step']}"
    verdict = "near-tie" if g <= 0.1 else "NOT a near-tie"
    print(f"{name}: parts at {where} (gap {g:.3f}, {verdict}): pith {(prev['text'] if at_start else '') + s['text']!r}, llama {llama[pos - (len(prev['text']) if at_start else 0):pos + 12]!r}")
PY
done
