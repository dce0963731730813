"""The issue-3 speed target's model: GPT-2-like, d = 256, 4 layers, 4 heads, MLP 1024, vocabulary 1000,
128 positions (random weights; speed does not depend on training), and tokens [1, 128].

Every matrix is drawn N(0, 0.02) as GPT-2 initializes them. torch's default initialization saturates the softmax of
this model: p = 0 at every target, so every score cotangent p·(e_y − softmax) is exactly zero and `score` timings
measure backward passes of zeros (the figures of perf/results/summary-2026-12-01.md's first table did).

    /usr/bin/python3 perf/models/make_gpt2_bench.py [OUT_DIR]      # default /tmp/fisherkernels-bench
    fisherkernels bench --model OUT_DIR/gpt2_bench.onnx --tokens OUT_DIR/gpt2_bench.tokens.npy --threads 2

Reuses the fixture generator's GPT-2 modules (tests/fixtures/generate.py) with larger sizes; exported with
constant folding, as exporters usually are. Too large (14 MB) to commit, hence a script.
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
    g.export(model, os.path.join(out, "gpt2_bench.onnx"), (tokens,), ["input_ids"], ["logits"], opset=14, fold=True)
    np.save(os.path.join(out, "gpt2_bench.tokens.npy"), tokens.numpy().astype(np.int64))
    print(out)


if __name__ == "__main__":
    main()
