#!/usr/bin/env bash
# Device side: the trainer's speed on this GPU, A/B, before a pipeline run (go.sh, BENCH=1):
# candle's own element-wise ops vs the fused kernels (models/src/fused.rs), f32 (TF32 matmuls)
# vs bf16 mixed precision. Each configuration distills STUDENT from TEACHER for SECS seconds
# at batch B × 512; prints one line each (tokens/s, last loss, the phase profile) and, last,
# the dtype to train in: bf16 when it is ≥ 1.3× faster than fused f32 and its loss is no worse
# than 5 % above f32's (a sanity check of the bf16 path), else f32.
#   bench.sh PC TEACHER STUDENT TEXT [SECS] [B]
set -uo pipefail
PC=$1 T=$2 S=$3 F=$4 SECS=${5:-40} B=${6:-16}
D=$(mktemp -d)
declare -A RATE LOSS
for cfg in "unfused f32" "fused f32" "fused bf16"; do
    read -r k dt <<< "$cfg"
    off=0; [[ $k == unfused ]] && off=1
    PITH_DISTILL_UNFUSED=$off PITH_DISTILL_PROFILE=1 timeout $((SECS + 120)) "$PC" distill --teacher "$T" --student "$S" \
        -f "$F" -o "$D/out.gguf" --checkpoint "$D/ckpt" --force -c 512 --batch "$B" --accum 1 --device cuda \
        --dtype "$dt" --time-limit "$SECS" --val-seqs 2 --val-every 100000 --checkpoint-every 0 > "$D/log" 2>&1
    rc=$?
    RATE[$k-$dt]=$(grep -oE '[0-9]+ tok/s' "$D/log" | tail -1 | grep -oE '^[0-9]+' || echo 0)
    LOSS[$k-$dt]=$(grep -oE 'loss [0-9.]+' "$D/log" | tail -1 | grep -oE '[0-9.]+$' || echo nan)
    echo "bench $k $dt: rc $rc, ${RATE[$k-$dt]} tok/s, last loss ${LOSS[$k-$dt]}"
    grep -E "fused kernels|profile to" "$D/log" | tail -2 | cut -c1-400
done
rm -rf "$D"
choice=f32
if awk -v b="${RATE[fused-bf16]:-0}" -v f="${RATE[fused-f32]:-0}" -v lb="${LOSS[fused-bf16]:-nan}" -v lf="${LOSS[fused-f32]:-nan}" \
    'BEGIN { exit !(f > 0 && b >= 1.3 * f && lb + 0 > 0 && lb <= 1.05 * lf) }'; then
    choice=bf16
fi
echo "bench: dtype $choice"
