#!/usr/bin/env bash
# Everything wick checks on a GPU machine, in one call. Given a compressed CUDA build of wick,
# it makes random-weight models in the Hugging Face layout with transformers, one of each family
# wick runs, in its real shape (SmolLM2-135M, Qwen2.5-1.5B, Qwen3-0.6B, Phi-3-mini, Gemma 3 270M;
# bf16, saved as transformers saves them), generates greedily with wick and with PyTorch on the
# same weights and the same GPU, and reports how many of the first 32 tokens agree (with
# PyTorch's logits at the first disagreement, to tell a bf16 near-tie from a bug), the decode
# tokens/s of both, and the bound that weight bytes per token and the measured copy bandwidth
# set; then wick's aggregate tokens/s at 1, 8 and 32 concurrent streams (`wick bench
# --concurrency`) for the SmolLM2 and Qwen2.5 shapes; then one streamed `generate` call to
# `wick serve` on the GPU over loopback. The report goes to stdout and to $OUT/gpu-check.txt when
# OUT is set. Arguments after the binary go to gpu_check.py (e.g. `--models qwen2.5-1.5b`).
#
# usage: scripts/gpu-check.sh path/to/wick.xz [gpu_check.py options]
#
# The binary, built here (no GPU needed; x86-64-v3, not this CPU's own features, so that it
# starts on the GPU host's CPU):
#
#     eval "$(scripts/cuda-toolchain.sh)"
#     RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/gpu \
#       cargo build --release --features cuda
#     mkdir -p .gpu && xz -T0 -c target/gpu/release/wick > .gpu/wick.xz   # carry `.gpu`
#
# A dry run without a GPU, of this script and that very binary (it falls back to the CPU with
# the toolchain's libcuda stub; torch on the CPU, f32, 2 layers), takes about a minute:
#
#     LD_LIBRARY_PATH=~/.cache/wick/cuda-13.0/lib/stubs:~/.cache/wick/cuda-13.0/lib \
#       scripts/gpu-check.sh .gpu/wick.xz --device cpu --dtype f32 --layers 2 --concurrency 1,2
#
# (with an `nvidia-smi` on PATH that prints a line, and python3 with torch and transformers).
# Needs: an NVIDIA driver, Python with torch, transformers (5.x) and safetensors (CUDA 13
# libraries inside torch's environment are put on LD_LIBRARY_PATH); no network.
set -euo pipefail
binary_xz="${1:?usage: gpu-check.sh path/to/wick.xz [gpu_check.py options]}"
shift
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
report="${OUT:+$OUT/gpu-check.txt}"
log() { printf '%s\n' "$*" | tee -a "${report:-/dev/null}"; }

xz -dc "$binary_xz" > "$work/wick"
chmod +x "$work/wick"

# The CUDA 13 libraries wick links against (cudart, cublas, curand; libcuda from the driver)
# live in PyTorch's environment or a system CUDA; say which are missing before anything runs.
site="$(python3 -c 'import site, sys; print(site.getsitepackages()[0])')"
cuda_libs="$(find "$site" -name 'libcublas.so.13' -printf '%h\n' 2>/dev/null | head -1)"
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
  "$site"/nvidia/*/lib "$cuda_libs"; do
  [[ -d "$dir" ]] && LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
missing="$(ldd "$work/wick" | grep 'not found' || true)"
if [[ -n "$missing" ]]; then
  log "wick cannot start, libraries not found (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):"
  log "$missing"
  exit 1
fi

log "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
log "wick: $("$work/wick" --version)"
PYTHONUNBUFFERED=1 python3 "$here/gpu_check.py" --wick "$work/wick" --work "$work" "$@" 2>&1 \
  | tee -a "${report:-/dev/null}"
