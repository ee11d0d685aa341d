# Sourced by scripts/eval-student.sh and scripts/fit-gap.sh (from the repository root, with OUT
# set): PC, pith-compress (built with FEATURES unless PITH_COMPRESS names one), TEACHER and WIKI
# as in seed-pipeline.sh, run() (runs a command and appends it to $OUT/cmds.txt, emptied here)
# and T, the teacher dequantized to f32 in $OUT (kept from an earlier call).
mkdir -p "$OUT"
if [[ -z ${PITH_COMPRESS:-} ]]; then
    cargo build --release -q -p pith-models ${FEATURES:+--features "$FEATURES"} --bin pith-compress
    PITH_COMPRESS=$PWD/target/release/pith-compress
fi
PC=$PITH_COMPRESS
TEACHER=${TEACHER:-$(cargo run --release -q -p pith-fetch --bin pith-fetch)}
WIKI=${WIKI:-$(scripts/fetch-calibration.sh)}
T=$OUT/teacher-f32.gguf
run() { echo "$*" >> "$OUT/cmds.txt"; "$@"; }
: > "$OUT/cmds.txt"
[[ -s $T ]] || run "$PC" dequantize "$TEACHER" "$T" --type f32 --force
