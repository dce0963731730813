"""The issue-3 bench model with GPT-2's initialization (every matrix N(0, 0.02)) for timing `score`.

make_gpt2_bench.py keeps torch's default initialization, whose logits saturate the softmax: p = 0 at every target,
so every score cotangent p·(e_y − softmax) is exactly zero and `score` timings on it measure backward passes of
zeros (the scorer then skips every layer). This variant has a spread-out softmax (mean p ≈ 1e-3).

    /usr/bin/python3 perf/models/make_gpt2_bench_scaled.py [OUT_DIR]      # default /tmp/fisherkernels-bench
    fisherkernels bench --model OUT_DIR/gpt2_bench_scaled.onnx --tokens OUT_DIR/gpt2_bench_scaled.tokens.npy --threads 2
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures"))
import generate as g  # noqa: E402

g.VOCAB, g.D_MODEL, g.N_LAYERS, g.N_HEADS, g.D_FF, g.N_CTX = 1000, 256, 4, 4, 1024, 128


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/fisherkernels-bench"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = g.Gpt2Tiny().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    tokens = torch.randint(0, g.VOCAB, (1, 128), generator=torch.Generator().manual_seed(1))
    g.export(model, os.path.join(out, "gpt2_bench_scaled.onnx"), (tokens,), ["input_ids"], ["logits"], opset=14, fold=True)
    np.save(os.path.join(out, "gpt2_bench_scaled.tokens.npy"), tokens.numpy().astype(np.int64))
    print(out)


if __name__ == "__main__":
    main()
