#!/usr/bin/env bash
# Device side, started by go.sh under setsid: with BENCH=1 first the trainer's A/B (bench.sh:
# candle's ops vs the fused kernels, the layers' backward by hand vs autograd, f32 vs bf16,
# batch sizes) on the width student, whose verdict picks the dtype unless DTYPE is set, the
# batch and the backward; then the seed pipeline up to DEADLINE (the bench's minutes come out of
# the training window). Environment from go.sh.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
G=/root/g OUT=/root/sp
dt=${DTYPE:-}
if [[ ${BENCH:-0} == 1 ]]; then
    mkdir -p $OUT
    [[ -s $OUT/teacher-f32.gguf ]] || "$PITH_COMPRESS" dequantize "$TEACHER" $OUT/teacher-f32.gguf --type f32 --force
    "$PITH_COMPRESS" prune $OUT/teacher-f32.gguf $G/bench-width.gguf -f "$WIKI" --width "${WIDTH:-ffn=1024,embd=512}" -c 256 --chunks 4 \
        --force > $G/bench-prune.log 2>&1
    bash scripts/gpu/bench.sh "$PITH_COMPRESS" $OUT/teacher-f32.gguf $G/bench-width.gguf "$WIKI" "${BENCH_SECS:-40}" \
        "$BATCH" 2>&1 | tee $OUT/bench.txt
    [[ -n $dt ]] || dt=$(tail -1 $OUT/bench.txt | awk '/^bench: dtype/ {print $3}')
    # A batch the bench found faster (BENCH_CFGS) trains with it, unless BATCH_FIXED=1; the peak
    # learning rate follows the tokens a step by its square root, at most 1e-3.
    b=$(tail -1 $OUT/bench.txt | awk '/^bench: dtype/ {print $5}')
    # The layers' backward through autograd where the bench found it faster than by hand.
    if tail -1 $OUT/bench.txt | grep -q ' autograd$'; then
        echo "run: the layers' backward through autograd (the bench's)"
        export PITH_DISTILL_AUTOGRAD=1
    fi
    if [[ ${BATCH_FIXED:-0} != 1 && -n $b && $b != "$BATCH" ]]; then
        LR=$(python3 -c "print(f'{min(1e-3, $LR * ($b / $BATCH) ** 0.5):.3g}')")
        echo "run: batch $BATCH → $b (the bench's), lr → $LR"
        export BATCH=$b LR
    fi
fi
exec scripts/seed-pipeline.sh --device cuda --tokens auto --deadline "$DEADLINE" --out $OUT --dtype "${dt:-f32}"
