#!/usr/bin/env bash
# The Java binding on the host JVM: builds libpith_jni.so (release), compiles the classes and
# the test with plain javac (no Maven, no external jars) and runs the test on the default
# model ($PITH_MODEL, else fetched into the cache) with -Xcheck:jni.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release -q -p pith-jni
if [ -z "${PITH_MODEL:-}" ]; then
    PITH_MODEL="$(cargo run --release -q -p pith-fetch --bin pith-fetch)"
fi
export PITH_MODEL
CLASSES="$TARGET_DIR/java-classes"
rm -rf "$CLASSES"
mkdir -p "$CLASSES"
javac -Xlint:all -Werror -d "$CLASSES" targets/java/java/dev/pith/*.java targets/java/test/dev/pith/PithTest.java
LIB="$TARGET_DIR/release/libpith_jni.so"
ls -l "$LIB"
java -Xcheck:jni -Dpith.library="$LIB" -cp "$CLASSES" dev.pith.PithTest
echo "targets/java/test.sh: ok"
