#!/usr/bin/env bash
# `--precision q8` (the default: 8-bit activations, integer kernels) against `--precision f32`
# (f32 activations, dequantize-dot), per file, in the same run: q8 must never be the slower.
#
#   bench/precision.sh FILE.gguf... [-- PITH BENCH FLAGS]   (default flags: -p 128 -n 64 -t 1 -r 3)
#
# Prints one line per file and test with both medians and the ratio q8 / f32.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
files=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do files+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
flags=("$@")
[ ${#flags[@]} -eq 0 ] && flags=(-p 128 -n 64 -t 1 -r 3)
[ ${#files[@]} -gt 0 ] || { echo "usage: $0 FILE.gguf... [-- PITH BENCH FLAGS]" >&2; exit 2; }
cargo build --release -q -p pith-cli --bin pith
printf '| file | test | threads | q8 t/s | f32 t/s | q8 / f32 |\n|---|---|---|---|---|---|\n'
for f in "${files[@]}"; do
    q8=$(target/release/pith bench -m "$f" --precision q8 "${flags[@]}" 2>/dev/null | grep -E '^\| (pp|tg)')
    f32=$(target/release/pith bench -m "$f" --precision f32 "${flags[@]}" 2>/dev/null | grep -E '^\| (pp|tg)')
    paste -d'|' <(echo "$q8") <(echo "$f32") | awk -F'|' -v f="$(basename "$f")" \
        '{ printf "| %s | %s | %s | %.1f | %.1f | %.2f |\n", f, $2, $3, $4, $11, $4 / $11 }' | sed 's/  */ /g'
done
