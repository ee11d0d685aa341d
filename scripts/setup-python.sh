#!/usr/bin/env bash
# Creates the Python environment the tests use to read pith-compress's output with the `gguf`
# package (tests/python/requirements.txt: exact versions, sha256-pinned, no dependencies
# resolved from the network beyond those wheels). Prints the interpreter's path.
#
# Usage: scripts/setup-python.sh [DIR]
#   DIR defaults to ${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}/python-gguf-0.19.0;
#   tests find it there (or set PITH_TEST_PYTHON=/path/to/python).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${1:-${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}/python-gguf-0.19.0}
if [[ -x "$DIR/bin/python" ]] && "$DIR/bin/python" -c "import gguf, numpy" 2>/dev/null; then
    echo "$DIR/bin/python"
    exit 0
fi
rm -rf "$DIR"
python3 -m venv "$DIR" >&2
"$DIR/bin/pip" install -q --disable-pip-version-check --no-deps --require-hashes \
    -r tests/python/requirements.txt >&2
"$DIR/bin/python" -c "import gguf, numpy" >&2
echo "$DIR/bin/python"
