#!/usr/bin/env bash
# Fetches llama.cpp's tokenizer test vectors: vocab-only GGUF files (ggml-vocab-*.gguf) with
# their test texts (.inp) and llama.cpp's token ids for them (.out). They come from the PyPI
# source distribution of llama-cpp-python, which vendors llama.cpp; its checksum is pinned.
#
# Usage: scripts/fetch-test-vectors.sh [DIR]
#   DIR defaults to ${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}/llama-vocab-0.3.36,
#   where runtime/tests/tokenizer.rs looks (or set PITH_TEST_VECTORS=DIR for the tests).
set -euo pipefail

VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
DIR=${1:-${PITH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pith}/llama-vocab-$VERSION}

# Vocabularies the tests use; each needs .gguf, .gguf.inp and .gguf.out.
VOCABS=(gpt-2 llama-bpe llama-spm qwen2 qwen35 phi-3 starcoder refact command-r mpt falcon
        deepseek-llm deepseek-coder gemma-4)

complete() {
    local v f
    for v in "${VOCABS[@]}"; do
        for f in "ggml-vocab-$v.gguf" "ggml-vocab-$v.gguf.inp" "ggml-vocab-$v.gguf.out"; do
            [[ -s "$DIR/$f" ]] || return 1
        done
    done
}

if complete; then
    echo "test vectors already in $DIR"
    exit 0
fi

sha256_of() {
    if command -v sha256sum >/dev/null; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "downloading the llama-cpp-python $VERSION source distribution from PyPI..."
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$VERSION" -d "$tmp"
sdist="$tmp/llama_cpp_python-$VERSION.tar.gz"
[[ -f "$sdist" ]] || { echo "error: pip did not produce $sdist" >&2; exit 1; }

got=$(sha256_of "$sdist")
if [[ "$got" != "$SHA256" ]]; then
    echo "error: checksum mismatch for $(basename "$sdist")" >&2
    echo "  expected $SHA256" >&2
    echo "  got      $got" >&2
    exit 1
fi

pattern="*/vendor/llama.cpp/models/ggml-vocab-*"
if tar --version 2>/dev/null | grep -q 'GNU tar'; then
    tar -xzf "$sdist" -C "$tmp" --wildcards "$pattern"
else
    tar -xzf "$sdist" -C "$tmp" "$pattern"
fi

mkdir -p "$DIR"
cp "$tmp"/llama_cpp_python-"$VERSION"/vendor/llama.cpp/models/ggml-vocab-* "$DIR"/

if ! complete; then
    echo "error: the source distribution lacks some of the expected vocab files" >&2
    exit 1
fi
echo "test vectors in $DIR ($(ls "$DIR" | wc -l | tr -d ' ') files)"
