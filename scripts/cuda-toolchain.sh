#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolchain from NVIDIA's PyPI wheels — enough to build wick with
# `--features cuda` on a machine with no GPU and no system CUDA — and prints the environment to
# use it:
#
#     eval "$(scripts/cuda-toolchain.sh)"
#     cargo build --release --features cuda
#
# The tree is cached in $WICK_CUDA_HOME (default ~/.cache/wick/cuda-13.0) and made only once;
# pip checks every wheel against the hashes in scripts/cuda-requirements.txt. The wheels ship
# versioned library names only (libcublas.so.13), so the linker gets unversioned symlinks; no
# wheel has the driver's libcuda.so, so lib/stubs/libcuda.so (soname libcuda.so.1) is built from
# the function names in cuda.h. With the stub on LD_LIBRARY_PATH a CUDA build also starts on a
# machine without a GPU (and falls back to the CPU); on a GPU machine the driver's real
# libcuda.so.1 must come first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${WICK_CUDA_HOME:-$HOME/.cache/wick/cuda-13.0}"
stamp="$(sha256sum "$here/cuda-requirements.txt" | cut -c1-16)"

if [[ "$(cat "$root/.complete" 2>/dev/null)" != "$stamp" ]]; then
  mkdir -p "$(dirname "$root")"
  work="$(mktemp -d "$root.partial.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "assembling CUDA 13.0 from PyPI wheels into $root" >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    -d "$work/wheels" -r "$here/cuda-requirements.txt" >&2
  for wheel in "$work"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$work/site"
  done
  cuda="$work/site/nvidia/cu13"
  # zip files do not keep the executable bit.
  find "$cuda/bin" "$cuda/nvvm/bin" -type f -exec chmod +x {} +
  for lib in "$cuda"/lib/*.so.*; do
    name="$(basename "$lib")"
    ln -sf "$name" "$cuda/lib/${name%%.so.*}.so"
  done
  # Every driver function cuda.h declares, under its real (versioned, after macro expansion)
  # and its plain name: enough for the linker. Each returns CUDA_ERROR_STUB_LIBRARY (34), so a
  # program that calls one (cuInit first) learns there is no driver and can fall back.
  mkdir -p "$cuda/lib/stubs"
  {
    gcc -E -P -I "$cuda/include" "$cuda/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' || true
    grep -hoE '^#define[[:space:]]+cu[A-Z][A-Za-z0-9_]*[[:space:]]+cu[A-Z][A-Za-z0-9_]*' "$cuda/include/cuda.h" | awk '{print $2; print $3}'
  } | tr -d '( \t' | sort -u | sed 's/.*/int &(void) { return 34; }/' > "$work/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$work/stub.c"
  ln -sf libcuda.so "$cuda/lib/stubs/libcuda.so.1"
  rm -rf "$root"
  mv "$cuda" "$root"
  echo "$stamp" > "$root/.complete"
fi

cat <<ENV
export CUDA_ROOT="$root"
export CUDA_PATH="$root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export PATH="$root/bin:\$PATH"
export LIBRARY_PATH="$root/lib:$root/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$root/lib:$root/lib/stubs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
