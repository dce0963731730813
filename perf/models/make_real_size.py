"""Issue 18's real-size models: a GPT-2-small-shaped one (124M parameters, vocabulary 50,257, d = 768, 12 layers,
12 heads, MLP 3072, 1024 positions, tied output head) and a LLaMA-shaped one of similar size (vocabulary 32,000,
d = 768, 12 layers, rotary, RMSNorm, SwiGLU with 2048 hidden, grouped-query attention with 12 query and 4
key-value heads, untied head: 124.7M parameters). Random N(0, 0.02) weights as GPT-2 initializes them (speed and
memory do not depend on training); opset 14, constant folding, as exporters usually do.

    /usr/bin/python3 perf/models/make_real_size.py gpt2|llama|llama_ri|all [OUT_DIR]   # default /tmp/fisherkernels-real

Writes OUT_DIR/<name>.onnx (about 500 MB each: never commit them), OUT_DIR/<name>.tokens.npy ([8, 128], the fit's
batch) and OUT_DIR/<name>.tokens1.npy ([1, 128], one sequence to score). Reuses the fixture generator's modules
(tests/fixtures/generate.py) with real sizes; the LLaMA attention adds grouped-query heads, which the fixture's
does not have (each key-value head serves 3 query heads through Expand + Reshape, as Hugging Face's repeat_kv).
llama_ri is the same model with the key-value heads repeated as much plain torch code does it (issue 16): split off
by view(b, -1, heads, hd) and repeated by torch.repeat_interleave, which torch exports as one Loop over sequences
(SplitToSequence, SequenceAt, SequenceInsert, ConcatFromSequence) per repeat: 24 Loops, unrolled by the engine when
it builds a plan. ("all" is gpt2 and llama.)
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures"))
import generate as g  # noqa: E402

KV_HEADS = 4


class GqaAttention(nn.Module):
    """The fixture's LLaMA attention with KV_HEADS key-value heads shared by the g.N_HEADS query heads."""

    def __init__(self):
        super().__init__()
        hd = g.D_MODEL // g.N_HEADS
        self.q_proj = nn.Linear(g.D_MODEL, g.D_MODEL, bias=False)
        self.k_proj = nn.Linear(g.D_MODEL, KV_HEADS * hd, bias=False)
        self.v_proj = nn.Linear(g.D_MODEL, KV_HEADS * hd, bias=False)
        self.o_proj = nn.Linear(g.D_MODEL, g.D_MODEL, bias=False)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        freqs = torch.outer(torch.arange(g.N_CTX, dtype=torch.float64), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().float(), persistent=False)
        self.register_buffer("sin_cached", emb.sin().float(), persistent=False)
        self.register_buffer("causal", torch.tril(torch.ones(g.N_CTX, g.N_CTX, dtype=torch.bool)), persistent=False)

    #: Repeat the key-value heads with torch.repeat_interleave (exported as Loops) instead of Expand + Reshape.
    interleave = False

    @staticmethod
    def repeat_kv(x, times):
        b, h, t, hd = x.shape
        return x[:, :, None, :, :].expand(b, h, times, t, hd).reshape(b, h * times, t, hd)

    def forward(self, x):
        b, t, _ = x.size()
        hd = g.D_MODEL // g.N_HEADS
        q = self.q_proj(x).view(b, t, g.N_HEADS, hd).transpose(1, 2)
        # view(b, -1, …) leaves the exporter without the sizes, which is what makes repeat_interleave a Loop.
        k = self.k_proj(x).view(b, -1 if self.interleave else t, KV_HEADS, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, -1 if self.interleave else t, KV_HEADS, hd).transpose(1, 2)
        cos = self.cos_cached[:t]
        sin = self.sin_cached[:t]
        q = q * cos + g.rotate_half(q) * sin
        k = k * cos + g.rotate_half(k) * sin
        if self.interleave:
            # The view after it restores the shape torch 1.13's Loop body gets wrong (tests/fixtures/README.md, llama_gqa_tiny).
            k = torch.repeat_interleave(k, g.N_HEADS // KV_HEADS, dim=1).view(b, g.N_HEADS, t, hd)
            v = torch.repeat_interleave(v, g.N_HEADS // KV_HEADS, dim=1).view(b, g.N_HEADS, t, hd)
        else:
            k = self.repeat_kv(k, g.N_HEADS // KV_HEADS)
            v = self.repeat_kv(v, g.N_HEADS // KV_HEADS)
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(hd)
        att = torch.where(self.causal[:t, :t], att, att.new_tensor(-1e9))
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, t, g.D_MODEL)
        return self.o_proj(y)


def build(name):
    if name == "gpt2":
        g.VOCAB, g.D_MODEL, g.N_LAYERS, g.N_HEADS, g.D_FF, g.N_CTX = 50257, 768, 12, 12, 3072, 1024
        return g.Gpt2Tiny()
    g.VOCAB, g.D_MODEL, g.N_LAYERS, g.N_HEADS, g.D_FF, g.N_CTX = 32000, 768, 12, 12, 2048, 1024
    GqaAttention.interleave = name == "llama_ri"
    g.LlamaAttention = GqaAttention  # LlamaLayer looks the class up when it is built
    return g.LlamaTiny()


def make(name, out):
    torch.manual_seed(0)
    model = build(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    count = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, g.VOCAB, (8, 128), generator=gen)
    path = os.path.join(out, name + ".onnx")
    torch.onnx.export(model, (tokens[:1],), path, input_names=["input_ids"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
                      opset_version=14, do_constant_folding=True)
    if name == "llama_ri":
        import onnx
        loops = sum(n.op_type == "Loop" for n in onnx.load(path).graph.node)
        assert loops == 2 * g.N_LAYERS, "expected a Loop per key and value repeat, found %d" % loops
    np.save(os.path.join(out, name + ".tokens.npy"), tokens.numpy().astype(np.int64))
    np.save(os.path.join(out, name + ".tokens1.npy"), tokens[:1].numpy().astype(np.int64))
    print("%s: %d parameters, %s (%.0f MB)" % (name, count, path, os.path.getsize(path) / 1e6))


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/fisherkernels-real"
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    if which not in ("gpt2", "llama", "llama_ri", "all"):
        sys.exit("usage: make_real_size.py gpt2|llama|llama_ri|all [OUT_DIR]")
    for name in (["gpt2", "llama"] if which == "all" else [which]):
        make(name, out)


if __name__ == "__main__":
    main()
