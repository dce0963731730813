#!/usr/bin/env bash
# The two-process check of SPEC §9: two `silo` processes on localhost clustering and a `fit --cluster` over them; the result
# must equal a local fit of the same batches within 1e-6 relative. Each process is ended by its own id (SIGTERM: a graceful stop).
# Usage: tests/scripts/cluster_two_silos.sh [path/to/fisherkernels.dll]   (default: the Release build)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cli="${1:-$root/src/FisherKernels.Cli/bin/Release/net10.0/fisherkernels.dll}"
work="$(mktemp -d)"
cluster="ci-$$"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

start_silo() { # $1: log name; returns once the silo says it is ready
    dotnet "$cli" silo --cluster "$cluster" --threads 1 > "$work/$1.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 1 240); do
        if grep -q "ready" "$work/$1.log"; then cat "$work/$1.log"; return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then echo "$1 exited:"; cat "$work/$1.log"; return 1; fi
        sleep 0.5
    done
    echo "$1 not ready after 120 s:"; cat "$work/$1.log"; return 1
}

start_silo silo1
start_silo silo2
fit=(--model "$root/tests/fixtures/gpt2_tiny.onnx" --tokens "$root/tests/fixtures/gpt2_tiny.tokens.npy" --batch-size 1
     --fisher sampled --samples 2 --seed 3 --sample-positions 0.5)
dotnet "$cli" fit "${fit[@]}" --cluster "$cluster" --shards 2 --out "$work/cluster.safetensors" | tee "$work/fit.out"
grep -q "2 shards on 2 silos" "$work/fit.out" || { echo "the two shards did not run on the two silos"; exit 1; }
dotnet "$cli" fit "${fit[@]}" --threads 1 --out "$work/local.safetensors"

/usr/bin/python3 - "$work/local.safetensors" "$work/cluster.safetensors" <<'PY'
import json, struct, sys
import numpy as np
def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype=np.float32) for k, v in header.items() if v["dtype"] == "F32"}
local, cluster = read(sys.argv[1]), read(sys.argv[2])
assert local.keys() == cluster.keys(), (sorted(local), sorted(cluster))
worst = max(float(np.max(np.abs(local[k] - cluster[k])) / max(float(np.max(np.abs(local[k]))), 1e-30)) for k in local)
print(f"{len(local)} tensors, worst relative difference {worst:.2e}")
assert worst <= 1e-6, worst
PY
echo "two-silo cluster fit equals the local fit"
