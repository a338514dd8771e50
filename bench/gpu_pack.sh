#!/usr/bin/env bash
# Assemble .gpu/ — what a runtime-only check on a GPU machine needs (carry it with the device tool):
#   .gpu/site/tvm/     the installed apache-tvm Python package minus the compiler (libtvm_compiler.so,
#                      CUTLASS, headers, C++ sources, web runtime, __pycache__): libtvm_runtime,
#                      libtvm_runtime_cuda and the Python files. The package has no CPython-specific
#                      extension modules (checked below), so this copy works on any Python 3.
#   .gpu/whl/          apache-tvm-ffi (cp312, manylinux x86_64): its Cython core IS Python-specific.
#                      numpy is not carried: the GPU image has numpy 2.x.
#   .gpu/artifacts/    the artifacts, built here for h100 (+ the MLP for a100, to check the embedded
#                      PTX on a newer GPU), with the PyTorch states (bench/gpu_check.py build).
#
# Use on the GPU machine (Python 3.12), from the repo root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
#   PYTHONPATH=/tmp/site:.gpu/site TVM_USE_RUNTIME_LIB=1 python3 bench/gpu_check.py check .gpu/artifacts
#
# Options: GPU_PY=3.12 (Python of the GPU machine), SKIP_BUILD=1 (keep .gpu/artifacts),
#          TARGETS=h100,a100.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpu
GPU_PY=${GPU_PY:-3.12}
FFI_VERSION=$(python -c "import importlib.metadata as m; print(m.version('apache-tvm-ffi'))")
TVM_DIR=$(python -c "import tvm, os; print(os.path.dirname(tvm.__file__))")

git check-ignore -q "$OUT/" || { echo "$OUT/ is not ignored by git: add it to .gitignore or .git/info/exclude" >&2; exit 1; }
mkdir -p "$OUT"

# 1. runtime-only tvm package
echo "== tvm runtime-only copy of $TVM_DIR"
if find "$TVM_DIR" -name "*.cpython-*.so" -o -name "*.abi3.so" | grep -q .; then
    echo "the tvm package has CPython extension modules; use its cp${GPU_PY/./} wheel instead" >&2
    exit 1
fi
rm -rf "$OUT/site"
mkdir -p "$OUT/site"
cp -a "$TVM_DIR" "$OUT/site/tvm"
( cd "$OUT/site/tvm" && rm -rf lib/libtvm_compiler.so 3rdparty include src web lib64 cmake \
    && find . -name __pycache__ -type d -prune -exec rm -rf {} + )
ls "$OUT/site/tvm/lib"
du -sh "$OUT/site/tvm"

# 2. apache-tvm-ffi wheel for the GPU machine's Python
echo "== apache-tvm-ffi==$FFI_VERSION for cp${GPU_PY/./}"
rm -rf "$OUT/whl"
mkdir -p "$OUT/whl"
python -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$OUT/whl" "apache-tvm-ffi==$FFI_VERSION"
ls -la "$OUT/whl"

# 3. artifacts
if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -f "$OUT/artifacts/build.json" ]; then
    echo "== building artifacts"
    rm -rf "$OUT/artifacts"
    python bench/gpu_check.py build "$OUT/artifacts" --targets "${TARGETS:-h100,a100}"
fi

du -sh "$OUT"/*
total=$(du -sb "$OUT" | cut -f1)
echo "total $((total / 1024 / 1024)) MiB (the device tool carries at most 64 MiB with the working tree)"
[ "$total" -lt $((60 * 1024 * 1024)) ] || { echo "too big to carry" >&2; exit 1; }
