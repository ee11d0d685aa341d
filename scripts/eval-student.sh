#!/usr/bin/env bash
# The steps a GPU session skips with EVAL_CHUNKS=0 (scripts/seed-pipeline.sh), made where the
# student lands: its imatrix Q4_K_M copy and the issue's evaluation (WikiText-2, `-c 512
# --chunks 40`, `eval --base` the teacher in f32), here on the CPU.
#   scripts/eval-student.sh STUDENT.gguf [EARLIER.gguf …]
# EARLIER: more students to evaluate beside it (e.g. the one it continued). OUT (default
# target/eval-student) gets STUDENT's .q4_k_m.gguf, eval.txt and the commands run (cmds.txt).
# TEACHER, WIKI, WIKITEXT, PITH_COMPRESS, CHUNKS (40) as in seed-pipeline.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $# -ge 1 && -s $1 ]] || { echo "usage: scripts/eval-student.sh STUDENT.gguf [EARLIER.gguf …]" >&2; exit 2; }
S=$(realpath "$1"); shift
OUT=${OUT:-target/eval-student}
WIKITEXT=${WIKITEXT:-../shared/data/wikitext-2-raw-test.txt}
[[ -s $WIKITEXT ]] || { echo "eval-student: no evaluation text at $WIKITEXT (set WIKITEXT)" >&2; exit 1; }
# shellcheck source=scripts/student-env.sh
. scripts/student-env.sh
CHUNKS=${CHUNKS:-40}
name=$(basename "$S" .gguf)
name=${name%.q8_0}
run "$PC" imatrix "$S" -f "$WIKI" -o "$OUT/$name.imatrix.gguf" -c 512 --chunks 32 --force
# A Q8_0 student (what a GPU session brings back) is requantized: its Q4_K_M differs from the f32
# student's by Q8_0's rounding (12-07's student: the Q8_0 copy 30.14, the f32 file 30.10).
run "$PC" quantize "$S" "$OUT/$name.q4_k_m.gguf" --type Q4_K_M --imatrix "$OUT/$name.imatrix.gguf" \
    --allow-requantize --force
models=(-m "$T")
for e in "$@"; do models+=(-m "$e"); done
models+=(-m "$S" -m "$OUT/$name.q4_k_m.gguf")
run "$PC" eval "${models[@]}" --base "$T" -f "$WIKITEXT" -c 512 --chunks "$CHUNKS" | tee "$OUT/eval.txt"
