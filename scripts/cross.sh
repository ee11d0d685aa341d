#!/usr/bin/env bash
# Cross builds/tests for pith with Debian's rustc-web (see ../shared/toolchains.md,
# install with scripts/setup-toolchains.sh).
#
#   scripts/cross.sh thumbv7em-kernels [CARGO ARGS...]  # pith-kernels, Cortex-M4F/M7, no_std
#   scripts/cross.sh thumbv7em-pith    [CARGO ARGS...]  # pith --no-default-features, no_std
#   scripts/cross.sh aarch64-test      [CARGO ARGS...]  # cargo test -p pith-kernels under qemu-aarch64
#   scripts/cross.sh aarch64-ffi       [CARGO ARGS...]  # pith CLI + pith-ffi for aarch64, the C tests under qemu-aarch64
#   scripts/cross.sh aarch64-bins      [CARGO ARGS...]  # pith CLI + the greedy_gaps example for aarch64 (release)
#   scripts/cross.sh aarch64-run BIN [ARGS...]          # BIN (relative to the aarch64 release dir,
#                                                       # e.g. pith, examples/greedy_gaps) under qemu-aarch64
#   scripts/cross.sh all                                # the first three, in order
#
# Extra CARGO ARGS (e.g. --release) are appended to the cargo command.
#
# Debian's rustc (1.96, /usr/bin/rustc) is a different compiler from rustup's
# (~/.cargo/bin/rustc, first on PATH), so everything built with it goes into a
# separate target dir ($CROSS_TARGET_DIR, default <target dir>/cross) to keep the
# two compilers' artifacts apart. rustup's cargo drives Debian's rustc via RUSTC=.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEB_RUSTC="${DEB_RUSTC:-/usr/bin/rustc}"
DEB_RUSTDOC="${DEB_RUSTDOC:-/usr/bin/rustdoc}"
CROSS_TARGET_DIR="${CROSS_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/cross}"

# qemu-user runner for aarch64 test binaries.
# -cpu max exposes NEON + dotprod + i8mm. -L gives qemu the aarch64 sysroot
# (loader /lib/ld-linux-aarch64.so.1 is taken from there). LD_LIBRARY_PATH makes
# that loader also use the *same* glibc build: on Debian, libstd-rust-web-dev:arm64
# pulls in libc6:arm64 (/lib/aarch64-linux-gnu, e.g. 2.36-9+deb12u14) which differs
# from libc6-arm64-cross (2.36-8cross1); mixing ld.so from one with libc.so.6 from
# the other makes pthread_create spin forever (corrupted stack-cache list), i.e.
# every multi-threaded test binary hangs.
QEMU_CPU="${QEMU_CPU:-max}"
AARCH64_RUNNER="qemu-aarch64 -cpu $QEMU_CPU -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib"

run() {
    # Print the exact command (with its env) before running it.
    printf '+ %s\n' "$*" >&2
    env "$@"
}

thumbv7em_kernels() {
    run RUSTC="$DEB_RUSTC" RUSTC_BOOTSTRAP=1 \
        cargo build -p pith-kernels --target thumbv7em-none-eabihf \
        -Zbuild-std=core,alloc --target-dir "$CROSS_TARGET_DIR" "$@"
}

thumbv7em_pith() {
    run RUSTC="$DEB_RUSTC" RUSTC_BOOTSTRAP=1 \
        cargo build -p pith --no-default-features --target thumbv7em-none-eabihf \
        -Zbuild-std=core,alloc --target-dir "$CROSS_TARGET_DIR" "$@"
}

aarch64_test() {
    # RUSTDOC too: doctests are compiled for the target and rustup's rustdoc has
    # no aarch64 std.
    run RUSTC="$DEB_RUSTC" RUSTDOC="$DEB_RUSTDOC" \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$AARCH64_RUNNER" \
        cargo test -p pith-kernels --target aarch64-unknown-linux-gnu \
        --target-dir "$CROSS_TARGET_DIR" "$@"
}

aarch64_ffi() {
    # The pith CLI and the C ABI for aarch64 Linux, then the C test (tests/c/test_basic.c)
    # linked against the aarch64 libpith_ffi.so and run under qemu on the default model.
    local env=(RUSTC="$DEB_RUSTC" CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc)
    run "${env[@]}" cargo build --release -p pith-cli -p pith-ffi --target aarch64-unknown-linux-gnu \
        --target-dir "$CROSS_TARGET_DIR" "$@"
    local lib="$CROSS_TARGET_DIR/aarch64-unknown-linux-gnu/release"
    local out="$CROSS_TARGET_DIR/ffi-c-aarch64"
    mkdir -p "$out"
    local model="${PITH_MODEL:-$(cargo run --release -q -p pith-fetch --bin pith-fetch)}"
    local t
    for t in test_basic test_threads; do
        run aarch64-linux-gnu-gcc -std=c11 -Wall -Wextra -Werror -O1 -I targets/ffi/include -I targets/ffi/tests/c \
            -o "$out/$t" "targets/ffi/tests/c/$t.c" -L "$lib" -lpith_ffi -lpthread -lm -ldl
        (cd "$out" && run PITH_MODEL="$model" $AARCH64_RUNNER -E LD_LIBRARY_PATH="/usr/aarch64-linux-gnu/lib:$lib" \
            "$out/$t")
    done
}

aarch64_bins() {
    # What scripts/aarch64-agree.sh runs under qemu: the CLI and runtime/examples/greedy_gaps.rs,
    # one cargo invocation (one feature set, so neither rebuilds the other's crates).
    run RUSTC="$DEB_RUSTC" CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        cargo build --release -p pith-cli --bin pith -p pith --example greedy_gaps \
        --target aarch64-unknown-linux-gnu --target-dir "$CROSS_TARGET_DIR" "$@"
}

aarch64_run() {
    # The runner line above ($QEMU_CPU, default max); BIN relative to the aarch64 release dir
    # unless it is an absolute path. Prints the command on stderr first, as every step here.
    local bin=${1:?usage: scripts/cross.sh aarch64-run BIN [ARGS...]}
    shift
    [[ "$bin" == /* ]] || bin="$CROSS_TARGET_DIR/aarch64-unknown-linux-gnu/release/$bin"
    # shellcheck disable=SC2086 # the runner line is split into words on purpose
    run $AARCH64_RUNNER "$bin" "$@"
}

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    thumbv7em-kernels) thumbv7em_kernels "$@" ;;
    thumbv7em-pith) thumbv7em_pith "$@" ;;
    aarch64-test) aarch64_test "$@" ;;
    aarch64-ffi) aarch64_ffi "$@" ;;
    aarch64-bins) aarch64_bins "$@" ;;
    aarch64-run) aarch64_run "$@" ;;
    all)
        thumbv7em_kernels "$@"
        thumbv7em_pith "$@"
        aarch64_test "$@"
        ;;
    *) usage ;;
esac
