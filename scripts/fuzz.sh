#!/usr/bin/env bash
# Fuzzes pith's GGUF reader and model binding / forward pass with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [SECONDS]        # each target for SECONDS (default 60)
#
# Targets (fuzz/fuzz_targets/):
#   gguf_parse  arbitrary bytes -> Gguf::parse -> metadata rendering, Model::from_gguf, tokenizer
#   gguf_model  a valid tiny llama GGUF built from the input -> Model::from_gguf -> forward
#   serve_request  arbitrary bytes as a `pith serve` request body -> parse, checks, chat template
#
# Seeds are generated at run time (fuzz/examples/make_seeds.rs) into fuzz/corpus/<target>/,
# which also receives the inputs libFuzzer finds; crashes go to fuzz/artifacts/<target>/.
# Exits non-zero if any target crashes, panics, leaks, times out or runs out of memory.
#
# Works on the stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer, ...), which
# RUSTC_BOOTSTRAP=1 allows. AddressSanitizer is used unless its runtime is unavailable, in which
# case the script falls back to no sanitizer (and says so).
#
# Environment:
#   PITH_FUZZ_SANITIZER   address (default) | none | ...  (no fallback when set explicitly)
#   PITH_FUZZ_TARGET_DIR  cargo target dir (default fuzz/target)
#   PITH_FUZZ_TARGETS     space-separated subset of targets (default: all)
set -euo pipefail

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: $0 [SECONDS]   (a positive number of seconds per target)" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
targets=(${PITH_FUZZ_TARGETS:-gguf_parse gguf_model serve_request})
target_dir="${PITH_FUZZ_TARGET_DIR:-$root/fuzz/target}"
corpus="$root/fuzz/corpus"
artifacts="$root/fuzz/artifacts"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== generating seeds into $corpus"
cargo run --quiet --manifest-path fuzz/Cargo.toml --target-dir "$target_dir" --example make_seeds -- "$corpus"

sanitizer="${PITH_FUZZ_SANITIZER:-address}"
mkdir -p "$artifacts"
build_log="$artifacts/build.log"
echo "== building fuzz targets (sanitizer: $sanitizer)"
if ! cargo fuzz build -s "$sanitizer" --target-dir "$target_dir" >"$build_log" 2>&1; then
    # Fall back only when the failure is about the sanitizer runtime, never on compile errors.
    if [ -z "${PITH_FUZZ_SANITIZER:-}" ] && grep -qiE 'asan|sanitizer' "$build_log" \
        && ! grep -qE '^error\[E[0-9]+\]' "$build_log"; then
        tail -n 20 "$build_log" >&2
        echo "!! AddressSanitizer is unavailable here: falling back to --sanitizer none" >&2
        sanitizer=none
        cargo fuzz build -s none --target-dir "$target_dir"
    else
        tail -n 40 "$build_log" >&2
        exit 1
    fi
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$corpus/$t" "$artifacts/$t"
    log="$artifacts/$t.log"
    echo "== fuzzing $t for ${secs}s (log: $log)"
    marker="$artifacts/.start-$t"
    touch "$marker"
    set +e
    cargo fuzz run -s "$sanitizer" --target-dir "$target_dir" "$t" "$corpus/$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    new_artifacts=$(find "$artifacts/$t" -type f -newer "$marker")
    # libFuzzer's last status line, then its final statistics.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
    if [ "$rc" -ne 0 ] || [ -n "$new_artifacts" ]; then
        echo "!! $t FAILED (exit $rc)" >&2
        grep -E -m 8 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|SUMMARY|^Test unit written' "$log" >&2 || true
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "== FAILED: ${failed[*]} (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer <target> <artifact>)" >&2
    exit 1
fi
echo "== all targets ran ${secs}s without a crash (sanitizer: $sanitizer)"
