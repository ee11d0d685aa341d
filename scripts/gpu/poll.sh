#!/usr/bin/env bash
# Device side, every later call (no carry): waits up to $1 s for the pipeline that go.sh
# started, prints its progress, and once it is done packs the results into $OUT: a tar.xz of the
# table, the evaluation and the logs, and the KD student's Q4_K_M file in 16 MB parts (the
# device tool returns at most 16 MiB a file). Call it again at once when it returns: a machine
# idle for 30 s is given back, and the pipeline with it.
G=/root/g S=/root/sp
end=$(( $(date +%s) + $1 ))
while [[ $(date +%s) -lt $end && ! -e $G/done ]]; do sleep 5; done
grep -E "^bench" $S/bench.txt 2> /dev/null
tail -n 25 $G/pipe.log
for f in "$S"/*.log; do
    case $f in *width.log|*depth.log) continue ;; esac
    echo "== $(basename "$f")"; grep -E "validation|tok/s" "$f" | tail -n 2; grep profile "$f" | tail -n 1
    # The profile line above: steps 11-20, part by part under PITH_DISTILL_PROFILE=2 (go.sh's default).
    grep -E "AdamW in place" "$f" | head -n 1
done
tail -n 1 $S/gpu.log 2> /dev/null
echo "now $(date +%s) deadline $(cat $G/deadline)"
if [[ -e $G/done ]]; then
    echo "pipeline exit $(cat $G/done)"
    # The teacher-sampled text (tens of MB) comes back as its first 200 kB, to read.
    [[ -s $S/synthetic.txt ]] && head -c 200000 $S/synthetic.txt > $S/synthetic-head.txt
    # The whole sample and the kd student's Q8_0 copy come back by fetch.sh, in later calls.
    [[ -s $S/synthetic.txt && ! -s $S/synthetic.txt.xz ]] && xz -T16 -c $S/synthetic.txt > $S/synthetic.txt.xz
    ls -l $S/kd.q8_0.gguf $S/synthetic.txt.xz 2> /dev/null
    (cd $S && tar cJf "$OUT/results.tar.xz" --exclude=./synthetic.txt ./*.log ./*.md ./*.txt ./*.wall 2> /dev/null
        ls -l $S > "$OUT/ls.txt")
    [[ -s $S/kd.q4_k_m.gguf ]] && split -b 16000000 -d $S/kd.q4_k_m.gguf "$OUT/kdq."
    ls -l "$OUT"
fi
