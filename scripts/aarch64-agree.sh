#!/usr/bin/env bash
# aarch64 Linux agrees with x86-64 (issue 14, part 3). The pith CLI and
# runtime/examples/greedy_gaps.rs, cross-built for aarch64-unknown-linux-gnu
# (scripts/cross.sh aarch64-bins), run the default model under qemu-aarch64 (scripts/cross.sh
# aarch64-run) as `-cpu max` (NEON + dotprod + i8mm) and `-cpu cortex-a53` (plain NEON), and are
# compared with the same programs built for this x86-64 machine (its default kernel path) and
# with x86-64's other kernel paths (scalar, AVX2: those this CPU has besides its default):
#   1. perplexity, WikiText-2 raw test, -c 512 --chunks 2: equal to the last digit (prefill is
#      the same bits on every kernel path, runtime/tests/paths_agree.rs);
#   2. greedy tokens, 16 steps (greedy_gaps = --temp 0 -n 16), bench/prompts/p*.txt: the same
#      ids at every step, and the same top-2 gaps (drift 0): decode of the default model's types
#      (Q4_1, Q8_0) and decode attention are the same bits on every path too
#      (kernels/src/decode_order.rs).
# The bounds can be loosened for a model whose types still decode in each path's own order
# (AGREE_PPL_TOL, AGREE_NEAR_TIE: a parting then has to be a near-tie; AGREE_DRIFT).
# The scalar path's perplexity (minutes) runs only where the CPU has no second SIMD path.
#
#   bash scripts/aarch64-agree.sh       # prints a table; exit 1 on disagreement
# Env: AGREE_CPUS ("max cortex-a53"), AGREE_PPL_CPUS ("max"), AGREE_CTX (512), AGREE_CHUNKS (2), AGREE_N (16),
#      AGREE_PPL_TOL (0, percent), AGREE_NEAR_TIE (0: no parting), AGREE_DRIFT (0), AGREE_TEXT
#      (../shared/data/wikitext-2-raw-test.txt), PITH_MODEL (else the default model, fetched).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TEXT=${AGREE_TEXT:-../shared/data/wikitext-2-raw-test.txt}
CTX=${AGREE_CTX:-512}
CHUNKS=${AGREE_CHUNKS:-2}
N=${AGREE_N:-16}
read -r -a CPUS <<<"${AGREE_CPUS:-max cortex-a53}"
# Perplexity only on these (qemu makes it minutes per CPU; cortex-a53 gave -cpu max's figure to
# the last digit in every run measured), greedy on all of AGREE_CPUS.
read -r -a PPL_CPUS <<<"${AGREE_PPL_CPUS:-max}"
PPL_TOL=${AGREE_PPL_TOL:-0}
NEAR_TIE=${AGREE_NEAR_TIE:-0}
DRIFT=${AGREE_DRIFT:-0}
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
X86_PITH="$TARGET_DIR/release/pith"
X86_GAPS="$TARGET_DIR/release/examples/greedy_gaps"
PROMPTS=(bench/prompts/p*.txt)
[[ -f "$TEXT" ]] || { echo "aarch64-agree: $TEXT not found" >&2; exit 2; }
[[ ${#CPUS[@]} -gt 0 ]] || { echo "aarch64-agree: AGREE_CPUS is empty" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
T0=$SECONDS
stage() { printf '\n-- [%3ds] %s\n' $((SECONDS - T0)) "$*"; }

stage "build: x86-64 (the release units scripts/test.sh builds) and aarch64 (scripts/cross.sh aarch64-bins)"
# --workspace: the same feature set as `cargo test --workspace --release`, so after
# scripts/test.sh nothing is compiled again.
cargo build --release -q --workspace --bin pith --example greedy_gaps
bash scripts/cross.sh aarch64-bins -q
MODEL=${PITH_MODEL:-$(cargo run --release -q -p pith-fetch --bin pith-fetch)}

# The x86-64 kernel paths: the default one first, then the others this CPU has.
"$X86_GAPS" "$MODEL" "${PROMPTS[0]}" 0 >/dev/null 2>"$tmp/kernels.txt"
read -r X86_DEFAULT X86_HERE < <(sed -n 's/^kernels: \([^ ]*\) (here: \(.*\))$/\1 \2/p' "$tmp/kernels.txt") || true
[[ -n "${X86_DEFAULT:-}" ]] || { echo "aarch64-agree: greedy_gaps did not name its kernels:" >&2; cat "$tmp/kernels.txt" >&2; exit 1; }
X86_PATHS=("$X86_DEFAULT")
for p in $X86_HERE; do [[ "$p" == "$X86_DEFAULT" ]] || X86_PATHS+=("$p"); done

# ppl NAME CMD...: the figure of `CMD perplexity ...` into $tmp/NAME.ppl (stderr: $tmp/NAME.err).
ppl() {
    local name=$1 s=$SECONDS
    shift
    if ! "$@" perplexity -m "$MODEL" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
        echo "aarch64-agree: perplexity ($name) failed:" >&2
        cat "$tmp/$name.err" >&2
        exit 1
    fi
    awk '/^PPL = / {print $3}' "$tmp/$name.out" >"$tmp/$name.ppl"
    printf '   %-22s PPL %s  (%d s)\n' "$name" "$(cat "$tmp/$name.ppl")" $((SECONDS - s))
}
# greedy NAME CMD...: greedy_gaps on every prompt into $tmp/NAME.pK.jsonl.
greedy() {
    local name=$1 s=$SECONDS p
    shift
    for p in "${PROMPTS[@]}"; do
        if ! "$@" "$MODEL" "$p" "$N" >"$tmp/$name.$(basename "$p" .txt).jsonl" 2>"$tmp/$name.err"; then
            echo "aarch64-agree: greedy_gaps ($name, $p) failed:" >&2
            cat "$tmp/$name.err" >&2
            exit 1
        fi
    done
    sed -n 's/^kernels: \([^ ]*\).*/\1/p' "$tmp/$name.err" >"$tmp/$name.kernels"
    printf '   %-22s greedy, %d prompts, kernels %s  (%d s)\n' "$name" "${#PROMPTS[@]}" "$(cat "$tmp/$name.kernels")" \
        $((SECONDS - s))
}

# Perplexity on the scalar path takes minutes (its gemm is the plain oracle), so it calibrates
# only where the CPU has no second SIMD path; greedy runs every path (seconds).
X86_PPL=("${X86_PATHS[@]}")
if [[ ${#X86_PATHS[@]} -gt 2 ]]; then
    X86_PPL=()
    for p in "${X86_PATHS[@]}"; do [[ "$p" == scalar ]] || X86_PPL+=("$p"); done
fi

stage "x86-64: kernel paths ${X86_PATHS[*]} (default $X86_DEFAULT; perplexity on ${X86_PPL[*]})"
for p in "${X86_PATHS[@]}"; do
    if [[ " ${X86_PPL[*]} " == *" $p "* ]]; then ppl "x86-$p" env PITH_KERNELS="$p" "$X86_PITH"; fi
    greedy "x86-$p" env PITH_KERNELS="$p" "$X86_GAPS"
done
ARM=()
ARM_PPL=()
for cpu in "${CPUS[@]}"; do
    stage "aarch64 under qemu-aarch64 -cpu $cpu"
    if [[ " ${PPL_CPUS[*]} " == *" $cpu "* ]]; then
        ppl "aarch64-$cpu" env QEMU_CPU="$cpu" bash scripts/cross.sh aarch64-run pith
        ARM_PPL+=("aarch64-$cpu")
    fi
    greedy "aarch64-$cpu" env QEMU_CPU="$cpu" bash scripts/cross.sh aarch64-run examples/greedy_gaps
    ARM+=("aarch64-$cpu")
done

stage "compare"
python3 - "$tmp" "$PPL_TOL" "$NEAR_TIE" "$DRIFT" "$CTX" "$CHUNKS" "$N" "x86-$X86_DEFAULT" "${X86_PATHS[*]/#/x86-}" \
    "${X86_PPL[*]/#/x86-}" "${ARM[*]}" "${ARM_PPL[*]}" "${PROMPTS[*]}" <<'PY'
import json, os, sys

tmp, tol, tie, max_drift = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ctx, chunks, n, ref = sys.argv[5:9]
x86 = [p for p in sys.argv[9].split() if p != ref]  # x86-64's other paths: checked the same way
x86_ppl = [p for p in sys.argv[10].split() if p != ref]
arm = sys.argv[11].split()
arm_ppl = sys.argv[12].split()
prompts = [os.path.basename(p)[:-4] for p in sys.argv[13].split()]
ok = True

def ppl(name):
    return float(open(f"{tmp}/{name}.ppl").read())

def kernels(name):
    return open(f"{tmp}/{name}.kernels").read().strip()

def steps(name, p):
    return [json.loads(l) for l in open(f"{tmp}/{name}.{p}.jsonl", encoding="utf-8")]

r = ppl(ref)
print(f"\nperplexity, -c {ctx} --chunks {chunks}: every run within {tol:g} % of {ref}")
print(f"  {'run':<22} {'kernels':<12} {'PPL':>8}  vs {ref}")
print(f"  {ref:<22} {kernels(ref):<12} {r:8.4f}  (reference)")
for name in x86_ppl + arm_ppl:
    d = (ppl(name) - r) / r * 100
    verdict = ("ok" if abs(d) <= tol else "FAIL")
    ok &= verdict != "FAIL"
    print(f"  {name:<22} {kernels(name):<12} {ppl(name):8.4f}  {d:+.3f} %  {verdict}")

# Greedy: ids equal up to the first step where they part, which must be a near-tie (the
# reference's top-2 gap there ≤ tie). Drift: the largest change of the top-2 gap on the steps
# before that, how far this run's logits move from the reference's (≤ max_drift).
print(f"\ngreedy, {n} steps, vs {ref}: the same ids (a parting only at x86 gap <= {tie:g}), drift <= {max_drift:g}")
print(f"  {'prompt':<7} {'run':<22} {'drift':>6}  result")
for p in prompts:
    want = steps(ref, p)
    for name in x86 + arm:
        got = steps(name, p)
        k = next((i for i, (a, b) in enumerate(zip(want, got)) if a["id"] != b["id"]), None)
        drift = max([abs(a["gap"] - b["gap"]) for a, b in zip(want, got[:k])], default=0.0)
        if k is None and len(got) == len(want):
            res = "same"
        elif k is None:
            res = f"FAIL: {len(got)} steps, the reference {len(want)}"
        else:
            g = want[k]["gap"]
            res = f"parts at step {k}, x86 gap {g:.3f}"
            res = res + " (near-tie, allowed)" if g <= tie else "FAIL: " + res + " (not a near-tie)"
        if drift > max_drift and not res.startswith("FAIL"):
            res = f"FAIL: {res}, top-2 gaps moved by {drift:.3g}"
        ok &= not res.startswith("FAIL")
        print(f"  {p:<7} {name:<22} {drift:6.3f}  {res}")
print("\naarch64-agree: " + ("ok" if ok else "FAIL: aarch64 disagrees with x86-64"))
sys.exit(0 if ok else 1)
PY
echo "aarch64-agree: ${SECONDS} s in all"
