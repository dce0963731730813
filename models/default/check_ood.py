#!/usr/bin/python3
"""Sanity check of the embedded default model, independent of torch and of the C# engine:
a float64 numpy forward pass built from model.onnx's initializers scores every demo text, and
the mean next-byte loss of a 128-byte window must separate held-out English prose from
out-of-distribution text (AUROC per category and overall). Loss is not the engine's epistemic
score; this only shows the model knows its domain, so that uncertainty *can* mean something.

    /usr/bin/python3 models/default/check_ood.py [--min-auroc 0.9]
"""
import argparse
import json
import math
import os

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 7


def load_weights():
    model = onnx.load(os.path.join(HERE, "model.onnx"))
    return {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}


def layer_norm(x, w, b, prefix):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w[prefix + ".weight"] + w[prefix + ".bias"]


def linear(x, w, prefix):
    return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]


def erf(x):
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), vectorized: numpy has no erf."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def forward(tokens, w, meta):
    """logits [batch, seq, vocab] for tokens [batch, seq], float64."""
    b, t = tokens.shape
    d, heads = meta["d_model"], meta["heads"]
    hd = d // heads
    x = w["wte.weight"][tokens] + w["wpe.weight"][np.arange(t)]
    causal = np.tril(np.ones((t, t), dtype=bool))
    for i in range(meta["layers"]):
        p = f"h.{i}."
        qkv = linear(layer_norm(x, w, None, p + "ln_1"), w, p + "attn.c_attn")
        q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(b, t, heads, hd).transpose(0, 2, 1, 3) for j in range(3))
        att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        att = np.where(causal, att, -1e9)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        x = x + linear(y, w, p + "attn.c_proj")
        x = x + linear(gelu(linear(layer_norm(x, w, None, p + "ln_2"), w, p + "c_fc")), w, p + "c_proj")
    return linear(layer_norm(x, w, None, "ln_f"), w, "head")


def mean_losses(windows, w, meta):
    """Mean next-byte loss (bits) per window: targets are the next byte, the last position has none."""
    logits = forward(windows, w, meta)[:, :-1]
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = windows[:, 1:]
    nll = -np.take_along_axis(logp, target[..., None], -1)[..., 0]
    return nll.mean(1) / math.log(2)


def file_windows(name, context):
    with open(os.path.join(HERE, name), "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
    n = len(data) // context
    return data[:n * context].reshape(n, context)


def auroc(negatives, positives):
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    neg, pos = np.asarray(negatives), np.asarray(positives)
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--min-auroc", type=float, default=0.9)
    args = parser.parse_args()
    with open(os.path.join(HERE, "model.json")) as f:
        meta = json.load(f)
    w = load_weights()
    context = meta["context"]
    rng = np.random.default_rng(SEED)
    heldout = file_windows("heldout_in.txt", context)
    categories = {
        "code": file_windows("ood_code.txt", context),
        "german": file_windows("ood_german.txt", context),
        "french": file_windows("ood_french.txt", context),
        "shuffled": np.stack([rng.permutation(row) for row in heldout[:32]]),
        "random": rng.integers(0, 256, size=(32, context)),
    }
    inside = mean_losses(heldout, w, meta)
    fit = mean_losses(file_windows("fit.txt", context), w, meta)
    print(f"{'text':<10} {'windows':>7} {'bits/byte':>9} {'AUROC vs held-out':>18}")
    print(f"{'fit':<10} {len(fit):>7} {fit.mean():>9.3f}")
    print(f"{'held-out':<10} {len(inside):>7} {inside.mean():>9.3f}")
    outside_all = []
    for name, windows in categories.items():
        outside = mean_losses(windows, w, meta)
        outside_all.append(outside)
        print(f"{name:<10} {len(outside):>7} {outside.mean():>9.3f} {auroc(inside, outside):>18.3f}")
    overall = auroc(inside, np.concatenate(outside_all))
    print(f"all out-of-distribution: AUROC {overall:.3f} (next-byte loss, held-out vs OOD)")
    if overall < args.min_auroc:
        raise SystemExit(f"AUROC {overall:.3f} is below {args.min_auroc}")


if __name__ == "__main__":
    main()
