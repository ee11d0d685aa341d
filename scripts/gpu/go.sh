#!/usr/bin/env bash
# Device side, second call (carry .gpu/b; the first call, carrying .gpu/a, ran
# `mkdir -p /root/g && cp .gpu/a/t1 /root/g/`: a carried folder does not outlive its call; with
# a student to continue, calls carrying .gpu/c0, .gpu/c1 … ran `cp .gpu/cN/* /root/g/` first).
# Assembles the inputs, starts the seed pipeline under setsid (it outlives this call, not the
# machine), then watches it like poll.sh. LEFT: device seconds left when this call starts; the
# pipeline's deadline leaves 150 s of them for the last poll. RUNS, BATCH, ACCUM, LR, … pass
# through to scripts/seed-pipeline.sh; BENCH=1 (default) first runs scripts/gpu/bench.sh, whose
# verdict picks the dtype unless DTYPE is given (scripts/gpu/run.sh).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${LEFT:?LEFT=<the device seconds left, from the last call reply> bash scripts/gpu/go.sh}"
G=/root/g
mkdir -p $G
[[ -s $G/t1 ]] || { echo "no $G/t1: run the first call (carry .gpu/a) again"; exit 3; }
cat $G/t1 .gpu/b/t2 > $G/teacher.gguf
echo "$(cat .gpu/b/teacher.sha256)  $G/teacher.gguf" | sha256sum -c || exit 4
xz -dc .gpu/b/pc.xz > $G/pc && chmod +x $G/pc
xz -dc .gpu/b/wiki.xz > $G/wiki.txt
xz -dc .gpu/b/shakes.xz > $G/shakes.txt
xz -dc .gpu/b/wikitext.xz > $G/wikitext.txt
cp scripts/gpu/poll.sh scripts/gpu/fetch.sh $G/
# A student to continue (pack.sh with KD_FROM: .gpu/c0, .gpu/c1 … carried by the calls before
# this one, each `cp .gpu/cN/* /root/g/`).
if compgen -G "$G/kd-from.part*" > /dev/null; then
    cat "$G"/kd-from.part* > $G/kd-from.gguf
    echo "$(cat $G/kd-from.sha256)  $G/kd-from.gguf" | sha256sum -c || exit 4
    export KD_FROM=$G/kd-from.gguf
fi
# Earlier sessions' teacher-sampled text (pack.sh with SAMPLE_FROM: .gpu/s, its call ran
# `cp .gpu/s/* /root/g/`), trained on beside this session's sample.
for f in "$G"/sample-from*.txt.xz; do
    [[ -s $f ]] || continue
    xz -dc "$f" > "${f%.xz}" || exit 4
    export TRAIN_ONLY="${TRAIN_ONLY:-} ${f%.xz}"
done
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
$G/pc --help | head -1 || { ldd $G/pc; exit 5; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# Batch 64 × 512 in one step: 8.2 GiB in bf16 on an H100 (12-06's seventh session), 1.16× the
# tokens/s of batch 32 (the optimizer's and launches' per-step costs spread wider).
B=64 A=1
export PITH_COMPRESS=$G/pc TEACHER=$G/teacher.gguf WIKI=$G/wiki.txt SHAKESPEARE=$G/shakes.txt WIKITEXT=$G/wikitext.txt
export PARALLEL=1 STAGGER=${STAGGER:-10} BATCH=${BATCH:-$B} ACCUM=${ACCUM:-$A} LR=${LR:-6e-4} WARMUP=${WARMUP:-10}
export CKPT_EVERY=${CKPT_EVERY:-10} PITH_DISTILL_PROFILE=${PITH_DISTILL_PROFILE:-2}
[[ -n ${RESERVE:-} ]] && export RESERVE
[[ -n ${RUNS:-} ]] && export RUNS
DEADLINE=$(( $(date +%s) + LEFT - 150 ))
echo "batch $BATCH x $ACCUM; deadline $DEADLINE (in $((DEADLINE - $(date +%s))) s)"
echo $DEADLINE > $G/deadline
rm -f $G/done
export DEADLINE BENCH=${BENCH:-1}
[[ -n ${DTYPE:-} ]] && export DTYPE
setsid bash -c "scripts/gpu/run.sh > $G/pipe.log 2>&1; echo \$? > $G/done" < /dev/null > /dev/null 2>&1 &
bash $G/poll.sh "${WATCH:-480}"
