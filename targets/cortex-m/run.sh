#!/usr/bin/env bash
# The Cortex-M4F firmware end to end: fetch glassllm (852K parameters, FP16, PyPI, sha256-pinned
# by pith-fetch), convert it to GGUF and quantize it with pith-compress, build the firmware with
# each quantized file in flash, run it on the mps2-an386 board under qemu-system-arm
# (semihosting, -icount shift=0: one instruction = 1 ns of virtual time), and check that its
# greedy and its seeded sampled text equal the host's `pith run` on the same file.
#
#   bash targets/cortex-m/run.sh            # Q8_0 and Q4_0
#   TYPES="q8_0" N=64 bash targets/cortex-m/run.sh
#
# Prints, per type: flash bytes (code + model), static RAM, heap and stack high-water marks,
# instructions per token (prefill and decode), and exits non-zero when the texts differ, the
# DSP kernels disagree with the scalar oracle (the firmware's self-test), or the firmware fails.
# Needs scripts/setup-toolchains.sh (Debian's rustc-web with the core sources, qemu-system-arm).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TYPES=${TYPES:-"q8_0 q4_0"}
N=${N:-32}
PROMPT=${PROMPT:-"Once upon a time"}
TEMP_MILLI=${TEMP_MILLI:-800}
SEED=${SEED:-42}
OUT=${OUT:-$ROOT/target/cortex-m-run}
mkdir -p "$OUT"

# Host tools: the CLI (reference text), pith-compress (convert, quantize), pith-fetch.
(cd targets/cortex-m && cargo fmt --check)
cargo build --release -q -p pith-cli --bin pith -p pith-models --bin pith-compress -p pith-fetch --bin pith-fetch
BIN="$ROOT/target/release"
NPZ=$("$BIN/pith-fetch" -q glassllm-en)
TOK=$("$BIN/pith-fetch" -q glassllm-en-tokenizer)
"$BIN/pith-compress" convert "$NPZ" "$OUT/glassllm-en.f32.gguf" --tokenizer "$TOK" --type f32 --force

# The firmware's compiler: Debian's rustc with the core sources (-Zbuild-std), linked by the
# rust-lld of rustup's toolchain (Debian's rustc ships none).
LLD="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
[ -x "$LLD" ] || { echo "run.sh: no rust-lld at $LLD" >&2; exit 1; }
ELF="$ROOT/target/cortex-m/thumbv7em-none-eabihf/release/pith-cortex-m"

fail=0
for ty in $TYPES; do
    model="$OUT/glassllm-en.$ty.gguf"
    "$BIN/pith-compress" quantize --type "$ty" --pure "$OUT/glassllm-en.f32.gguf" "$model" --force 2>&1 | tail -1
    "$BIN/pith" run -m "$model" -p "$PROMPT" -n "$N" --temp 0 >"$OUT/host-greedy.$ty.txt" 2>/dev/null
    "$BIN/pith" run -m "$model" -p "$PROMPT" -n "$N" --temp "$(python3 -c "print($TEMP_MILLI/1000)")" --seed "$SEED" \
        >"$OUT/host-sampled.$ty.txt" 2>/dev/null
    (cd targets/cortex-m && PITH_FIRMWARE_MODEL="$model" PITH_FIRMWARE_PROMPT="$PROMPT" PITH_FIRMWARE_N="$N" \
        PITH_FIRMWARE_TEMP_MILLI="$TEMP_MILLI" PITH_FIRMWARE_SEED="$SEED" \
        RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_THUMBV7EM_NONE_EABIHF_LINKER="$LLD" \
        cargo build --release -q -Zbuild-std=core,alloc --target-dir "$ROOT/target/cortex-m")
    rc=0
    timeout 600 qemu-system-arm -M mps2-an386 -nographic -monitor none -serial none \
        -semihosting-config enable=on,target=native -icount shift=0 -kernel "$ELF" \
        >"$OUT/firmware.$ty.txt" 2>&1 </dev/null || rc=$?
    grep '^pith-firmware' "$OUT/firmware.$ty.txt" || true
    python3 - "$OUT" "$ty" "$ELF" "$rc" <<'PY' || fail=1
import re, struct, sys
out, ty, elf, rc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fw = open(f"{out}/firmware.{ty}.txt", encoding="utf-8", errors="replace").read()
ok = rc == 0
if rc != 0:
    print(f"{ty}: the firmware exited with {rc}")
for label in ("greedy", "sampled"):
    m = re.search(label + r"<<<(.*?)>>>", fw, re.S)
    host = open(f"{out}/host-{label}.{ty}.txt", encoding="utf-8").read().rstrip("\n")
    got = m.group(1) if m else None
    same = got is not None and got == host
    ok &= same
    print(f"{ty} {label}: {'same text as the host' if same else 'DIFFERS from the host'}: {host!r}")
    if not same:
        print(f"   firmware: {got!r}")
# Flash = loadable segments below the RAM at 0x20000000; static RAM = the rest (data + bss,
# which holds the heap array).
b = open(elf, "rb").read()
phoff, = struct.unpack_from("<I", b, 0x1C)
phentsize, phnum = struct.unpack_from("<HH", b, 0x2A)
flash = ram = 0
for i in range(phnum):
    p_type, off, vaddr, paddr, filesz, memsz, flags, align = struct.unpack_from("<8I", b, phoff + i * phentsize)
    if p_type != 1:
        continue
    if paddr < 0x20000000:
        flash += filesz
    if vaddr >= 0x20000000:
        ram += memsz
heap = re.search(r"high-water (\d+) of (\d+)", fw)
stack = re.search(r"stack high-water (\d+)", fw)
dec = re.search(r"greedy: prefill .*?decode: (\d+) instructions per token", fw)
if heap and stack and dec:
    static = ram - int(heap.group(2))
    print(f"{ty}: flash {flash} bytes; RAM high-water {int(heap.group(1)) + int(stack.group(1)) + static} bytes "
          f"(heap {heap.group(1)} + stack {stack.group(1)} + static {static}); decode {int(dec.group(1)):,} instructions per token")
sys.exit(0 if ok else 1)
PY
done
exit $fail
