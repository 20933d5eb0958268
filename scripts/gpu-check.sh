#!/usr/bin/env bash
# Everything wick checks on a GPU machine, in one call. Given a compressed CUDA build of wick,
# it makes random-weight models in the Hugging Face layout with transformers (SmolLM2-135M-shaped
# and Qwen2.5-1.5B-shaped, bf16), generates greedily with wick and with PyTorch transformers on
# the same weights and the same GPU, reports how many of the first 32 tokens agree and the decode
# tokens/s of both, wick's aggregate tokens/s at 1, 8 and 32 concurrent streams (`wick bench
# --concurrency`), then runs `wick serve` on the GPU with one streamed `generate` call over
# loopback. The report goes to stdout and to $OUT/gpu-check.txt when OUT is set.
#
# usage: scripts/gpu-check.sh path/to/wick.xz
#
# Needs: an NVIDIA driver, Python with torch, transformers and safetensors (CUDA 13 libraries
# inside torch's environment are put on LD_LIBRARY_PATH); no network.
set -euo pipefail
binary_xz="${1:?usage: gpu-check.sh path/to/wick.xz}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
report="${OUT:+$OUT/gpu-check.txt}"
log() { printf '%s\n' "$*" | tee -a "${report:-/dev/null}"; }

xz -dc "$binary_xz" > "$work/wick"
chmod +x "$work/wick"

# The CUDA 13 libraries wick links against live in PyTorch's environment.
site="$(python3 -c 'import site, sys; print(site.getsitepackages()[0])')"
cuda_libs="$(find "$site" -name 'libcublas.so.13' -printf '%h\n' 2>/dev/null | head -1)"
for dir in "$site"/nvidia/*/lib "$cuda_libs"; do
  [[ -d "$dir" ]] && LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH

log "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
log "wick: $("$work/wick" --version)"
python3 "$here/gpu_check.py" --wick "$work/wick" --work "$work" | tee -a "${report:-/dev/null}"
