#!/usr/bin/env bash
# Reproduces the quantization table in README.md: makes the F16 copy of the default model
# (exact dequantization of its weights, rounded to f16), gathers calibration statistics on
# Wikipedia leads (not WikiText), quantizes to each type with round-to-nearest, importance-
# weighted rounding and error compensation, and evaluates every file against the F16 copy on
# WikiText-2 (`-c 512`, CHUNKS chunks, default 40).
#
# Usage: scripts/compress-table.sh [OUTDIR] [TYPES...]
#   OUTDIR defaults to target/compress-table; TYPES to "Q4_0 Q4_K_M Q8_0" (any --type name
#   works, e.g. IQ4_NL IQ4_XS; those have no error-compensated (gptq) row: their grids are
#   non-linear).
#   WIKITEXT=path (default ../shared/data/wikitext-2-raw-test.txt), CHUNKS=N, IMATRIX_CHUNKS=N.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-target/compress-table}
shift || true
TYPES=("$@")
[[ ${#TYPES[@]} -gt 0 ]] || TYPES=(Q4_0 Q4_K_M Q8_0)
WIKITEXT=${WIKITEXT:-../shared/data/wikitext-2-raw-test.txt}
CHUNKS=${CHUNKS:-40}
IMATRIX_CHUNKS=${IMATRIX_CHUNKS:-48}
export PITH_NO_PROGRESS=${PITH_NO_PROGRESS:-}
mkdir -p "$OUT"
cargo build --release -q -p pith-models --bin pith-compress
PC=target/release/pith-compress
MODEL=$(cargo run --release -q -p pith-fetch --bin pith-fetch)
CALIB=$(bash scripts/fetch-calibration.sh)
[[ -s "$OUT/f16.gguf" ]] || $PC dequantize "$MODEL" "$OUT/f16.gguf" --type f16
[[ -s "$OUT/imatrix.gguf" ]] || $PC imatrix "$OUT/f16.gguf" -f "$CALIB" -o "$OUT/imatrix.gguf" -c 512 --chunks "$IMATRIX_CHUNKS"
MODELS=()
for t in "${TYPES[@]}"; do
    lt=$(echo "$t" | tr 'A-Z' 'a-z')
    $PC quantize "$OUT/f16.gguf" "$OUT/$lt-rtn.gguf" --type "$t" --force
    $PC quantize "$OUT/f16.gguf" "$OUT/$lt-imatrix.gguf" --type "$t" --imatrix "$OUT/imatrix.gguf" --force
    MODELS+=(-m "$OUT/$lt-rtn.gguf" -m "$OUT/$lt-imatrix.gguf")
    if [[ $lt != iq4_* ]]; then
        $PC quantize "$OUT/f16.gguf" "$OUT/$lt-gptq.gguf" --type "$t" --imatrix "$OUT/imatrix.gguf" --gptq --force
        MODELS+=(-m "$OUT/$lt-gptq.gguf")
    fi
done
$PC eval --base "$OUT/f16.gguf" "${MODELS[@]}" -f "$WIKITEXT" -c 512 --chunks "$CHUNKS" \
    --plot "$OUT/size-vs-kld.svg" --force | tee "$OUT/table.txt"
