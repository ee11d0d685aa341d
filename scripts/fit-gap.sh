#!/usr/bin/env bash
# How much better distilled students fit text they trained on than fresh text of the same kind:
# each student's mean KLD against the teacher (f32) on the head of every SEEN text (the
# Wikipedia leads by default; a session's synthetic.txt.xz) and on a FRESH sample drawn from
# the teacher here, on the CPU, with a seed no run used. A student that scores its seen text far
# better than the fresh sample is memorizing its text, and more passes over it will not lower
# WikiText's perplexity (README, 12-07's thirteenth session).
#   [SEEN="a.txt b.txt.xz …"] [FRESH=18432] [SEED=99] [CHUNKS=30] [SYNTHETIC_TEMP=T]
#   [SYNTHETIC_PROMPT=N] scripts/fit-gap.sh STUDENT.gguf …
# OUT (default target/fit-gap) gets the fresh sample, each text's table and the commands run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $# -ge 1 ]] || { echo "usage: scripts/fit-gap.sh STUDENT.gguf …" >&2; exit 2; }
models=()
for s in "$@"; do
    [[ -s $s ]] || { echo "fit-gap: no student $s" >&2; exit 2; }
    models+=(-m "$(realpath "$s")")
done
OUT=${OUT:-target/fit-gap}
CHUNKS=${CHUNKS:-30}
FRESH=${FRESH:-18432}
# Sampling needs the training build (candle); its CPU path is all this needs.
FEATURES=train
# shellcheck source=scripts/student-env.sh
. scripts/student-env.sh
: > "$OUT/tables.txt"
# Each text's head: CHUNKS × 512 tokens is ~2 kB a chunk of English; take 4 kB a chunk.
bytes=$((CHUNKS * 4096))
texts=()
for f in $WIKI ${SEEN:-}; do
    [[ -s $f ]] || { echo "fit-gap: no text $f" >&2; exit 2; }
    h=$OUT/seen-$(basename "${f%.xz}")
    if [[ $f == *.xz ]]; then xz -dc "$f" | head -c "$bytes" > "$h" || true; else head -c "$bytes" "$f" > "$h"; fi
    texts+=("$h")
done
# The fresh sample: prompts are the first tokens of training sequences of the leads, as the
# runs' own samples start; the sequences go on from there as the teacher writes them.
# SYNTHETIC_TEMP / SYNTHETIC_PROMPT (distill's defaults when unset, as in seed-pipeline.sh): as
# the run whose sample it is compared with drew it.
if ((FRESH > 0)); then
    run "$PC" distill --teacher "$T" --student "$(realpath "$1")" -f "$WIKI" -c 512 --device cpu \
        --val-seqs 16 --synthetic "$FRESH" --seed "${SEED:-99}" --synthetic-batch 12 --sample-only \
        ${SYNTHETIC_TEMP:+--synthetic-temp "$SYNTHETIC_TEMP"} ${SYNTHETIC_PROMPT:+--synthetic-prompt "$SYNTHETIC_PROMPT"} \
        -o "$OUT/fresh.txt" --force
    texts+=("$OUT/fresh.txt")
fi
for t in "${texts[@]}"; do
    echo "== $(basename "$t")" | tee -a "$OUT/tables.txt"
    run "$PC" eval "${models[@]}" --base "$T" -f "$t" -c 512 --chunks "$CHUNKS" | tee -a "$OUT/tables.txt"
done
