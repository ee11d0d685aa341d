#!/usr/bin/env bash
# Install the cross toolchains pith needs (see ../shared/toolchains.md):
#   - Debian's rustc-web (can build aarch64-unknown-linux-gnu and, with
#     RUSTC_BOOTSTRAP=1 -Zbuild-std, thumbv7em-none-eabihf),
#   - the arm64 std for it, the aarch64 cross linker, qemu-user (runs aarch64
#     test binaries) and qemu-system-arm (runs Cortex-M firmware on mps2-an386).
#
# Idempotent: only installs what is missing, and skips `apt-get update` when
# nothing is missing. Non-interactive. Needs root (or sudo) only when something
# has to be installed.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { printf '[setup-toolchains] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    fi
fi

# Packages installed with recommends vs. without (qemu-system-arm pulls in a
# large graphics/audio stack through its recommends).
PKGS=(rustc-web rust-web-src libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu qemu-user)
# valgrind: targets/ffi/test.sh runs the C tests under it.
PKGS_NO_RECOMMENDS=(qemu-system-arm valgrind)

is_installed() {
    # dpkg-query prints "install ok installed" for a fully installed package.
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
missing_nr=()
for p in "${PKGS[@]}"; do is_installed "$p" || missing+=("$p"); done
for p in "${PKGS_NO_RECOMMENDS[@]}"; do is_installed "$p" || missing_nr+=("$p"); done

need_arch=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    need_arch=1
fi

if [ "$need_arch" -eq 0 ] && [ "${#missing[@]}" -eq 0 ] && [ "${#missing_nr[@]}" -eq 0 ]; then
    log "all cross toolchain packages already installed"
else
    if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
        log "error: need root (or passwordless sudo) to install: ${missing[*]} ${missing_nr[*]}"
        exit 1
    fi
    if [ "$need_arch" -eq 1 ]; then
        log "adding dpkg architecture arm64"
        $SUDO dpkg --add-architecture arm64
    fi
    log "apt-get update"
    $SUDO apt-get update -q
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing: ${missing[*]}"
        $SUDO apt-get install -y -q "${missing[@]}"
    fi
    if [ "${#missing_nr[@]}" -gt 0 ]; then
        log "installing (no recommends): ${missing_nr[*]}"
        $SUDO apt-get install -y -q --no-install-recommends "${missing_nr[@]}"
    fi
fi

# Sanity checks: fail loudly here rather than with an obscure cargo error later.
for tool in /usr/bin/rustc aarch64-linux-gnu-gcc qemu-aarch64 qemu-system-arm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "error: $tool not found after installation"
        exit 1
    fi
done
if [ ! -d /usr/aarch64-linux-gnu/lib ]; then
    log "error: /usr/aarch64-linux-gnu/lib missing (aarch64 libc for qemu -L)"
    exit 1
fi
log "ok: $(/usr/bin/rustc -V) ($(/usr/bin/rustc --print sysroot))"
