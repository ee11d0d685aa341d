#!/usr/bin/env bash
# Packs what a GPU session of the seed pipeline needs into .gpu/a and .gpu/b (ignored by git
# through .git/info/exclude), each under the device tool's 64 MiB per call with the working
# tree: the teacher (the Q4_1 SmolLM2 file, 98 MB) in two parts, the stripped `cuda` build of
# pith-compress and the texts, xz-compressed. The repository's scripts/gpu/{go,poll}.sh travel
# with the working tree. See README "On a GPU" for the order of the calls.
#
#   eval "$(scripts/setup-cuda-build.sh)"
#   cargo build --release -p pith-models --features cuda --bin pith-compress
#   [KD_FROM=kd.q8_0.gguf] [SAMPLE_FROM="synthetic.txt.xz …"] scripts/gpu/pack.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
grep -qx '/.gpu/' .git/info/exclude 2> /dev/null || echo '/.gpu/' >> .git/info/exclude
T=${TEACHER:-$(cargo run --release -q -p pith-fetch --bin pith-fetch)}
WIKI=${WIKI:-$(scripts/fetch-calibration.sh)}
SHAKESPEARE=${SHAKESPEARE:-${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}/calibration/tinyshakespeare.txt}
WIKITEXT=${WIKITEXT:-../shared/data/wikitext-2-raw-test.txt}
PC=${PITH_COMPRESS:-target/release/pith-compress}
for f in "$T" "$WIKI" "$SHAKESPEARE" "$WIKITEXT" "$PC"; do [[ -s $f ]] || { echo "pack: no $f" >&2; exit 1; }; done
ldd "$PC" | grep libcuda > /dev/null || { echo "pack: $PC is not the cuda build" >&2; exit 1; }
rm -rf .gpu/a .gpu/b && mkdir -p .gpu/a .gpu/b
half=$(( $(stat -c %s "$T") / 2 ))
head -c "$half" "$T" > .gpu/a/t1
tail -c +$((half + 1)) "$T" > .gpu/b/t2
sha256sum "$T" | cut -d' ' -f1 > .gpu/b/teacher.sha256
strip -o .gpu/pc "$PC" && xz -T2 -6 -c .gpu/pc > .gpu/b/pc.xz && rm .gpu/pc
xz -c "$WIKI" > .gpu/b/wiki.xz
xz -c "$SHAKESPEARE" > .gpu/b/shakes.xz
xz -c "$WIKITEXT" > .gpu/b/wikitext.xz
# KD_FROM=FILE (a kd student of an earlier session, its kd.q8_0.gguf): in 45 MB parts, one
# .gpu/cN folder a call (60 MB parts and the working tree went past the 64 MiB of a call on
# 12-06); go.sh reassembles it and the pipeline's kd run continues it.
rm -rf .gpu/c*
if [[ -n ${KD_FROM:-} ]]; then
    split -b 45000000 -d -a 1 "$KD_FROM" .gpu/kd-from.part
    for p in .gpu/kd-from.part*; do mkdir -p ".gpu/c${p##*part}" && mv "$p" ".gpu/c${p##*part}/"; done
    sha256sum "$KD_FROM" | cut -d' ' -f1 > .gpu/c0/kd-from.sha256
fi
# SAMPLE_FROM="FILE.xz …" (earlier sessions' synthetic.txt.xz, fetch.sh's): .gpu/s, one call
# (at most ~60 MB in all with the working tree).
rm -rf .gpu/s
if [[ -n ${SAMPLE_FROM:-} ]]; then
    mkdir -p .gpu/s
    i=0
    for f in $SAMPLE_FROM; do
        [[ -s $f ]] || { echo "pack: no $f" >&2; exit 1; }
        cp "$f" ".gpu/s/sample-from-$i.txt.xz"
        i=$((i + 1))
    done
    [[ $(du -sm .gpu/s | cut -f1) -le 60 ]] || echo "pack: .gpu/s is over 60 MB: carry its files in two calls" >&2
fi
# What each call carries (.gpu/c* and .gpu/s only where KD_FROM / SAMPLE_FROM made them).
du -sh .gpu/a .gpu/b $(compgen -G '.gpu/[cs]*' || true)
