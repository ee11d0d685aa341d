#!/usr/bin/env bash
# The C ABI end to end: builds pith-ffi, checks include/pith.h is what cbindgen generates from
# the source, compiles the C tests with gcc -Wall -Wextra -Werror and runs them plain, under
# valgrind (test_basic: no leak, no invalid access) and with AddressSanitizer.
#   bash targets/ffi/test.sh            # everything
#   bash targets/ffi/test.sh --bless    # regenerate include/pith.h and stop
# The model: $PITH_MODEL, else the default one (fetched into the cache if missing).
# Skip a stage with PITH_FFI_SKIP="valgrind asan" (e.g. where valgrind is not installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
CC="${CC:-gcc}"
SKIP=" ${PITH_FFI_SKIP:-} "

if [ "${1:-}" = "--bless" ]; then
    PITH_BLESS=1 cargo test -q -p pith-ffi --test header
    echo "wrote targets/ffi/include/pith.h"
    exit 0
fi

step() { printf '\n-- %s\n' "$*"; }

step "build pith-ffi (release: libpith_ffi.so, libpith_ffi.a) and its Rust tests (header drift check)"
cargo build --release -q -p pith-ffi
cargo test --release -q -p pith-ffi

if [ -z "${PITH_MODEL:-}" ]; then
    PITH_MODEL="$(cargo run --release -q -p pith-fetch --bin pith-fetch)"
fi
export PITH_MODEL

LIB="$TARGET_DIR/release"
OUT="$TARGET_DIR/ffi-c"
mkdir -p "$OUT"
# The C tests write their temporary files in $OUT.
cd "$OUT"
build() { # name, extra flags...
    local name=$1
    shift
    "$CC" "${CFLAGS[@]}" "$@" -o "$OUT/$name" "$ROOT/targets/ffi/tests/c/${name%%-*}.c" \
        -L "$LIB" -lpith_ffi -Wl,-rpath,"$LIB" -lpthread -lm -ldl
}
CFLAGS=(-std=c11 -Wall -Wextra -Werror -g -O1 -I "$ROOT/targets/ffi/include" -I "$ROOT/targets/ffi/tests/c")
build test_basic
build test_threads
# The static library links too (a C program with no Rust toolchain at run time).
"$CC" "${CFLAGS[@]}" -o "$OUT/test_basic-static" "$ROOT/targets/ffi/tests/c/test_basic.c" \
    "$LIB/libpith_ffi.a" -lpthread -lm -ldl

step "C tests"
"$OUT/test_basic"
"$OUT/test_threads"
"$OUT/test_basic-static"

if [[ "$SKIP" != *" valgrind "* ]]; then
    # test_basic only: every entry point, error path and free once, with the real model. The
    # threaded test (several minutes under valgrind's serialised threads) runs plain and with
    # ASan, which catch the same invalid accesses and leaks on the C side.
    step "C tests under valgrind --leak-check=full --error-exitcode=1"
    for t in test_basic; do
        valgrind -q --suppressions="$ROOT/targets/ffi/tests/c/valgrind.supp" --leak-check=full --show-leak-kinds=definite,indirect,possible \
            --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=1 "$OUT/$t"
    done
fi

if [[ "$SKIP" != *" asan "* ]]; then
    step "C tests with AddressSanitizer (-fsanitize=address on the C side)"
    build test_basic-asan -fsanitize=address -fno-omit-frame-pointer
    build test_threads-asan -fsanitize=address -fno-omit-frame-pointer
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=0" "$OUT/test_basic-asan"
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=0" "$OUT/test_threads-asan"
fi
echo
echo "targets/ffi/test.sh: ok"
