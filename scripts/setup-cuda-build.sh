#!/usr/bin/env bash
# A CUDA 13.0 build environment for `cargo build -p pith-models --features cuda` on a machine
# without a CUDA toolkit or GPU: NVIDIA's PyPI wheels (pinned to the GPU machine's 13.0
# toolkit) unpacked into DIR, `lib*.so` links to the versioned libraries, and a link-time stub
# `libcuda.so` (one empty function per `cu*` symbol of cuda.h; the driver's own library is
# loaded on the GPU machine). Prints the lines to `source` before the build.
#
#   eval "$(scripts/setup-cuda-build.sh [DIR])"   # DIR default: target/cuda13
#   cargo build --release -p pith-models --features cuda --bin pith-compress
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${1:-target/cuda13}
mkdir -p "$DIR/wheels"
DIR=$(cd "$DIR" && pwd)
ROOT=$DIR/x/nvidia/cu13
if [[ ! -x $ROOT/bin/nvcc ]]; then
    for p in nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 \
        nvidia-cuda-runtime==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 \
        nvidia-cuda-nvrtc==13.0.88 nvidia-nvvm==13.0.88; do
        python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --python-version 3.12 \
            -d "$DIR/wheels" "$p" >&2
    done
    for w in "$DIR"/wheels/*.whl; do python3 -m zipfile -e "$w" "$DIR/x" >&2; done
    chmod +x "$ROOT"/bin/* "$ROOT"/nvvm/bin/*
    (cd "$ROOT/lib" && for f in libcudart libnvrtc libcublas libcublasLt; do ln -sf "$f.so.13" "$f.so"; done \
        && ln -sf libcurand.so.10 libcurand.so)
    mkdir -p "$ROOT/lib/stubs"
    { grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' "$ROOT/include/cuda.h" | sed 's/\s*($//'
      grep -ohE '#define cu[A-Za-z0-9_]+ +cu[A-Za-z0-9_]+' "$ROOT/include/cuda.h" | awk '{print $3}'
    } | sort -u | awk '{print "void "$1"(void){}"}' > "$DIR/stub.c"
    cc -shared -fPIC -o "$ROOT/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$DIR/stub.c"
fi
"$ROOT/bin/nvcc" --version | tail -2 >&2
cat <<ENV
export CUDA_ROOT=$ROOT CUDA_HOME=$ROOT CUDA_PATH=$ROOT
export PATH=$ROOT/bin:\$PATH CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$ROOT/lib:$ROOT/lib/stubs
export RUSTFLAGS="-L native=$ROOT/lib -L native=$ROOT/lib/stubs"
ENV
