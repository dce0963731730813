#!/usr/bin/env bash
# Kernel benchmarks of the CUDA backend on a machine with an NVIDIA GPU, each figure beside cuBLAS
# (ssyrk for accumulation, two sgemm + sger for the linear JVP) timed in the same process, with the
# same host-to-device contract. Where libcublas is missing the baseline is the CPU backend (named so
# in the JSON's "baseline" field).
#
#   perf/gpu/run-gpu-bench.sh publish   # on a machine with the .NET SDK: self-contained build into artifacts/gpu-bench
#   perf/gpu/run-gpu-bench.sh run       # on the GPU machine (no SDK needed): bench + results file
#   perf/gpu/run-gpu-bench.sh           # both, where the SDK and the GPU are on the same machine
#
# With the SDK present, `run` also runs the CUDA conformance suite (tests/FisherKernels.Kernels.Tests,
# class CudaConformance) so that the figures come with a correctness check on the same device.
set -euo pipefail
cd "$(dirname "$0")/../.."
published=artifacts/gpu-bench
results=perf/results/gpu
step=${1:-all}

if [[ $step == publish || $step == all ]]; then
    dotnet publish src/FisherKernels.Cli -c Release -r linux-x64 --self-contained -o "$published" -v q -nologo
fi

if [[ $step == run || $step == all ]]; then
    [[ -x $published/fisherkernels ]] || { echo "run-gpu-bench: $published/fisherkernels is missing: run '$0 publish' first" >&2; exit 1; }
    device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
    [[ -n $device ]] || device="unknown NVIDIA device (nvidia-smi missing)"
    mkdir -p "$results"
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    out="$results/bench-cuda-$stamp.json"
    "$published/fisherkernels" bench --backend cuda --json > "$out.tmp"
    mv "$out.tmp" "$out"
    echo "device: $device" > "$results/bench-cuda-$stamp.device.txt"
    echo "run-gpu-bench: $out ($device)"
    "$published/fisherkernels" bench --backend cuda | tee "$results/bench-cuda-$stamp.txt"
    if command -v dotnet >/dev/null; then
        dotnet test tests/FisherKernels.Kernels.Tests -c Release --filter "FullyQualifiedName~CudaConformance" -nologo \
            | tee "$results/conformance-cuda-$stamp.txt"
    fi
fi
