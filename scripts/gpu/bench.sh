#!/usr/bin/env bash
# Device side: the trainer's speed on this GPU, A/B, before a pipeline run (go.sh, BENCH=1).
# Each configuration KIND:DTYPE:BATCH (BENCH_CFGS; default "unfused:f32:B fused:f32:B
# fused:bf16:B") distills STUDENT from TEACHER for SECS seconds at BATCH × 512 (`--tokens` far
# beyond them: distill's default, 65,536 tokens, is 4 steps at batch 32, which is what the
# benches of 12-06 measured): KIND is candle's
# own element-wise ops (unfused), the fused kernels with the layers' hand-written backward
# (fused), or the fused kernels with the layers' backward through autograd (autograd:
# PITH_DISTILL_AUTOGRAD=1); DTYPE f32 (TF32 matmuls) or bf16 mixed precision. Prints one line
# each (tokens/s, last loss, the phase profile) and, last, `bench: dtype D batch B [autograd]`:
# the fastest fused or autograd configuration, where a bf16 one counts only when it is ≥ 1.2×
# the f32 one of the same kind and batch (else fused's) and its loss is no worse than 5 % above
# that one's (a sanity check of the bf16 path) — or, with no f32 configuration at that batch,
# when it trained at all — and a batch other than the first
# configuration's only when it is ≥ 1.15× as fast (more tokens a step are fewer steps for the
# same tokens).
#   bench.sh PC TEACHER STUDENT TEXT [SECS] [B]
set -uo pipefail
PC=$1 T=$2 S=$3 F=$4 SECS=${5:-40} B=${6:-16}
CFGS=${BENCH_CFGS:-"unfused:f32:$B fused:f32:$B fused:bf16:$B"}
D=$(mktemp -d)
declare -A RATE LOSS
for cfg in $CFGS; do
    IFS=: read -r k dt b <<< "$cfg"
    off=0 ag=0; [[ $k == unfused ]] && off=1; [[ $k == autograd ]] && ag=1
    PITH_DISTILL_UNFUSED=$off PITH_DISTILL_AUTOGRAD=$ag PITH_DISTILL_PROFILE=1 timeout $((SECS + 120)) "$PC" distill --teacher "$T" --student "$S" \
        -f "$F" -o "$D/out.gguf" --checkpoint "$D/ckpt" --force -c 512 --batch "$b" --accum 1 --device cuda \
        --dtype "$dt" --tokens 1000000000 --time-limit "$SECS" --val-seqs 2 --val-every 100000 --checkpoint-every 0 > "$D/log" 2>&1
    rc=$?
    RATE[$cfg]=$(grep -oE '[0-9]+ tok/s' "$D/log" | tail -1 | grep -oE '^[0-9]+' || echo 0)
    LOSS[$cfg]=$(grep -oE 'loss [0-9.]+' "$D/log" | tail -1 | grep -oE '[0-9.]+$' || echo nan)
    echo "bench $k $dt batch $b: rc $rc, ${RATE[$cfg]} tok/s, last loss ${LOSS[$cfg]}"
    grep -E "fused kernels|hand-written|profile of|GPU" "$D/log" | tail -4 | cut -c1-400
done
rm -rf "$D"
first=${CFGS%% *} best="" best_rate=0
IFS=: read -r _ _ b0 <<< "$first"
for cfg in $CFGS; do
    IFS=: read -r k dt b <<< "$cfg"
    [[ $k == fused || $k == autograd ]] || continue
    r=${RATE[$cfg]:-0}
    if [[ $dt == bf16 ]]; then
        f="$k:f32:$b"; [[ -n ${RATE[$f]:-} ]] || f="fused:f32:$b"
        if [[ -n ${RATE[$f]:-} ]]; then
            awk -v r="$r" -v f="${RATE[$f]:-0}" -v lb="${LOSS[$cfg]:-nan}" -v lf="${LOSS[$f]:-nan}" \
                'BEGIN { exit !(f > 0 && r >= 1.2 * f && lb + 0 > 0 && lb <= 1.05 * lf) }' || continue
        else
            # No f32 run at this batch to compare with (BENCH_CFGS of bf16 alone, where an
            # earlier session measured it): bf16 counts when it trained at all.
            awk -v r="$r" -v lb="${LOSS[$cfg]:-nan}" 'BEGIN { exit !(r > 0 && lb + 0 > 0) }' || continue
        fi
    fi
    if [[ $b != "$b0" ]]; then
        awk -v r="$r" -v f="${RATE[fused:f32:$b0]:-${RATE[$first]:-0}}" 'BEGIN { exit !(r >= 1.15 * f) }' || continue
    fi
    if [[ $r -gt $best_rate ]]; then best=$cfg best_rate=$r; fi
done
IFS=: read -r k dt b <<< "${best:-fused:f32:$b0}"
echo "bench: dtype $dt batch $b$([[ $k == autograd ]] && echo " autograd")"
