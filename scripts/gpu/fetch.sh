#!/usr/bin/env bash
# Device side: returns a file larger than one call can (the device tool brings back at most 8
# files of 16 MiB, 64 MiB in all, a call): `bash /root/g/fetch.sh FILE K` splits FILE once into
# 16,000,000-byte parts NAME.00, NAME.01, … and copies parts 4K … 4K+3 to $OUT, with FILE's
# sha256. Here: `cat NAME.?? > NAME` after every K, then `sha256sum -c`.
set -euo pipefail
f=$1 k=${2:-0}
[[ -s $f ]] || { echo "fetch: no $f"; exit 3; }
name=$(basename "$f") parts=/root/g/parts/$name
if [[ ! -e $parts/done ]]; then
    rm -rf "$parts" && mkdir -p "$parts"
    split -b 16000000 -d "$f" "$parts/$name."
    (cd "$(dirname "$f")" && sha256sum "$name") > "$parts/$name.sha256"
    touch "$parts/done"
fi
n=$(find "$parts" -name "$name.[0-9][0-9]" | wc -l)
for i in 0 1 2 3; do
    p=$(printf '%s/%s.%02d' "$parts" "$name" $((4 * k + i)))
    [[ -e $p ]] && cp "$p" "$OUT/"
done
cp "$parts/$name.sha256" "$OUT/"
echo "fetch: $name, $n parts in all; this call: $(ls "$OUT" | tr '\n' ' ')"
[[ $((4 * k + 4)) -ge $n ]] && echo "fetch: last call for $name" || echo "fetch: next: fetch.sh $f $((k + 1))"
