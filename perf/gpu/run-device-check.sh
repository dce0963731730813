#!/usr/bin/env bash
# Issue 23's device check, prepared for a session that is lent a GPU (the `device` tool: 15 minutes of device time in
# all, a 64 MiB working tree, no .NET SDK and no network there). Two steps:
#
#   perf/gpu/run-device-check.sh pack   # here, with the SDK: a self-contained linux-x64 publish of the CLI (trimmed of
#                                       # what the check does not load) and the issue-3 model, as
#                                       # artifacts/device-check/bundle.tar.xz (artifacts/ is git-ignored: carry it)
#   perf/gpu/run-device-check.sh run    # on the device machine: unpack to /tmp, then the checks below; results under
#                                       # $OUT/device-check (the device tool brings $OUT back) or perf/results/gpu/
#
# From the session, after `pack`:
#   run(command="perf/gpu/run-device-check.sh run", carry=["artifacts/device-check"], timeout_s=560)
# then copy what came back into perf/results/ with the device named, and give the machine back.
#
# The checks, each under its own time limit so that one slow step does not lose the others:
#  1. conformance of the device plan: forward --backend cuda on gpt2_tiny, llama_tiny and llama_gqa_tiny against the
#     float64 torch goldens (1e-4 of the largest logit, the CPU path's tolerance) and against forward --backend cpu;
#  2. bench --backend cuda: the kernel families beside cuBLAS (ssyrk, sgemm) where libcublas loads, else the CPU;
#  3. bench --model on the issue-3 model (perf/models/make_gpt2_bench.py), forward only, --backend cuda and cpu: each
#     against ONNX Runtime's CPU forward in the same process, so the two rows compare our device and CPU paths;
#  4. only with FK_REAL_SIZE=1 and python3 with torch there: the GPT-2-small-shaped model generated there
#     (perf/models/make_real_size.py gpt2), forward on cuda against cpu.
# FK_BACKEND (default cuda) names the device backend, FK_CHECKS (default "1 2 3 4") the checks to run: a dry run of the
# script without a GPU is `FK_BACKEND=ilgpu-cpu FK_CHECKS=1 perf/gpu/run-device-check.sh run`.
# The kernel conformance suite (xunit, tests/FisherKernels.Kernels.Tests CudaConformance) needs the SDK: it runs only
# where `dotnet` is on the PATH.
set -uo pipefail
cd "$(dirname "$0")/../.."
bundle=artifacts/device-check
step=${1:-}

if [[ $step == pack ]]; then
    set -e
    rm -rf "$bundle" && mkdir -p "$bundle/stage/fk"
    dotnet publish src/FisherKernels.Cli -c Release -r linux-x64 --self-contained -o "$bundle/stage/fk" -v q -nologo
    # Not loaded by forward or bench (the demo's plots, the cluster's Orleans and Redis, XML and data libraries, debugger
    # support): the tree and the bundle must stay under 64 MiB together. Checked on 2026-12-07 with forward (cpu,
    # ilgpu-cpu), bench --quick and bench --model --forward-only on the trimmed folder.
    (cd "$bundle/stage/fk" && rm -f onnxruntime.dll libSkiaSharp.so libHarfBuzzSharp.so Microsoft.CodeAnalysis*.dll \
        libmscordaccore.so libmscordbi.so createdump ./*.pdb Orleans.*.dll StackExchange.Redis.dll Pipelines.Sockets.Unofficial.dll \
        ScottPlot.dll SkiaSharp*.dll HarfBuzzSharp*.dll Microsoft.VisualBasic*.dll Newtonsoft.Json.dll Humanizer.dll Polly*.dll \
        System.Private.Xml*.dll System.Xml*.dll System.Data*.dll)
    models=${FK_BENCH_MODELS:-/tmp/fisherkernels-bench}
    [[ -f $models/gpt2_bench.onnx ]] || /usr/bin/python3 perf/models/make_gpt2_bench.py "$models"
    mkdir -p "$bundle/stage/models" && cp "$models/gpt2_bench.onnx" "$models/gpt2_bench.tokens.npy" "$bundle/stage/models/"
    tar -C "$bundle/stage" -cf - fk models | xz -9 -T2 > "$bundle/bundle.tar.xz"
    rm -rf "$bundle/stage"
    ls -la "$bundle/bundle.tar.xz"
    size=$(stat -c %s "$bundle/bundle.tar.xz") tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    echo "pack: bundle $size bytes + tracked tree $tree bytes (the carry limit is 64 MiB in all)"
    (( size + tree < 62 * 1024 * 1024 )) || { echo "pack: too close to the 64 MiB carry limit" >&2; exit 1; }
    exit 0
fi

[[ $step == run ]] || { echo "usage: $0 pack|run" >&2; exit 2; }
[[ -f $bundle/bundle.tar.xz ]] || { echo "run: $bundle/bundle.tar.xz is missing: run '$0 pack' where the SDK is and carry $bundle" >&2; exit 1; }
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=${OUT:+$OUT/device-check}
results=${results:-perf/results/gpu/device-check-$stamp}
mkdir -p "$results"
log="$results/log.txt"
say() { echo "$*" | tee -a "$log"; }
work=/tmp/fk-device-check
rm -rf "$work" && mkdir -p "$work" && tar -C "$work" -xJf "$bundle/bundle.tar.xz"
fk="$work/fk/fisherkernels"
fixtures=tests/fixtures
say "device-check $stamp"
say "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo 'nvidia-smi missing')"
say "cublas: $(ldconfig -p 2>/dev/null | grep -o 'libcublas.so[^ ]*' | head -1 || true)"
python=$(command -v python3 || true)
device=${FK_BACKEND:-cuda}
checks=" ${FK_CHECKS:-1 2 3 4} "

[[ $checks == *" 1 "* ]] && {
say "== 1. device plan conformance (forward --backend $device vs torch float64 goldens and vs --backend cpu)"
for model in gpt2_tiny llama_tiny llama_gqa_tiny; do
    for backend in "$device" cpu; do
        timeout 120 "$fk" forward --model "$fixtures/$model.onnx" --tokens "$fixtures/$model.tokens.npy" \
            --out "$work/$model.$backend.npy" --backend "$backend" >> "$log" 2>&1 || say "FAIL $model forward --backend $backend (status $?)"
    done
    if [[ -n $python ]]; then
        "$python" perf/gpu/compare_npy.py "$fixtures/$model.logits.npy" "$work/$model.$device.npy" 1e-4 2>&1 | tee -a "$log"
        "$python" perf/gpu/compare_npy.py "$work/$model.cpu.npy" "$work/$model.$device.npy" 1e-4 2>&1 | tee -a "$log"
    else
        say "python3 missing: logits kept, not compared"; cp "$work/$model".*.npy "$results/" 2>/dev/null
    fi
done
}

[[ $checks == *" 2 "* ]] && {
say "== 2. bench --backend $device (kernel families; cuBLAS baselines where libcublas loads)"
timeout 200 "$fk" bench --backend "$device" --json > "$results/bench-$device.json" 2>> "$log" || say "bench --backend $device: status $?"
timeout 60 "$fk" bench --backend "$device" --quick > "$results/bench-$device-quick.txt" 2>> "$log" || true
}

[[ $checks == *" 3 "* ]] && {
say "== 3. issue-3 model, forward, $device and cpu (each against ONNX Runtime's CPU forward in the same process)"
for backend in "$device" cpu; do
    timeout 120 "$fk" bench --backend "$backend" --model "$work/models/gpt2_bench.onnx" --tokens "$work/models/gpt2_bench.tokens.npy" \
        --forward-only --json > "$results/bench-model-$backend.json" 2>> "$log" || say "bench --model --backend $backend: status $?"
done
timeout 60 "$fk" forward --model "$work/models/gpt2_bench.onnx" --tokens "$work/models/gpt2_bench.tokens.npy" --out "$work/bench.$device.npy" --backend "$device" >> "$log" 2>&1
timeout 60 "$fk" forward --model "$work/models/gpt2_bench.onnx" --tokens "$work/models/gpt2_bench.tokens.npy" --out "$work/bench.cpu.npy" --backend cpu >> "$log" 2>&1
[[ -n $python ]] && "$python" perf/gpu/compare_npy.py "$work/bench.cpu.npy" "$work/bench.$device.npy" 1e-4 2>&1 | tee -a "$log"
}

if [[ $checks == *" 4 "* ]] && [[ ${FK_REAL_SIZE:-0} == 1 ]] && [[ -n $python ]] && "$python" -c "import torch, numpy, onnx" 2>/dev/null; then
    say "== 4. GPT-2-small-shaped model (generated here)"
    timeout 240 "$python" perf/models/make_real_size.py gpt2 "$work/real" >> "$log" 2>&1 || say "make_real_size: status $?"
    for backend in "$device" cpu; do
        /usr/bin/time -f "forward --backend $backend: %e s, %M KiB" timeout 120 "$fk" forward --model "$work/real/gpt2.onnx" \
            --tokens "$work/real/gpt2.tokens1.npy" --out "$work/real.$backend.npy" --backend "$backend" >> "$log" 2>&1
    done
    "$python" perf/gpu/compare_npy.py "$work/real.cpu.npy" "$work/real.$device.npy" 1e-4 2>&1 | tee -a "$log"
fi

if command -v dotnet > /dev/null; then
    say "== kernel conformance (xunit, SDK present)"
    timeout 300 dotnet test tests/FisherKernels.Kernels.Tests -c Release --filter "FullyQualifiedName~CudaConformance" -nologo >> "$log" 2>&1
fi
say "results: $results"
