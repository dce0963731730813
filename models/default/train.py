#!/usr/bin/python3
"""Train and export the embedded default model: a byte-level GPT-style transformer.

    /usr/bin/python3 models/default/build_corpus.py     # writes models/default/corpus/
    /usr/bin/python3 models/default/train.py [--steps N] [--measure]

Architecture: vocab 256 (raw bytes, no tokenizer files), context 128, d_model 128, 4 pre-LN
blocks with 4 heads, GELU MLP of width 512, learned position embeddings, final LayerNorm and an
untied output head `head` (a Linear with bias, so it is a K-FAC layer of its own). About 0.9 M
parameters.

Reproducible settings: one thread, fixed seed, deterministic algorithms, batches drawn from a
seeded generator (the same corpus, step count and torch build should give the same weights;
the committed model was trained once, with the defaults below, in 1243 s).

Writes model.onnx (opset 17, dynamic batch and seq axes, no constant folding so layer ids are
the parameter names) and model.json (context, vocab, tokenizer, training figures) beside this
script. Held-out bits per byte are measured on windows of corpus/heldout.txt (documents never
trained on) against the unigram byte distribution of corpus/train.txt.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 256
CONTEXT = 128
D_MODEL = 128
N_LAYERS = 4
N_HEADS = 4
D_FF = 512
BATCH = 16
SEED = 1234
LR = 4e-3
WARMUP = 50
MIN_LR_FRACTION = 0.1  # cosine decay to 10% of LR
EVAL_WINDOWS = 512

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.c_proj = nn.Linear(D_MODEL, D_MODEL)
        causal = torch.tril(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool)).view(1, 1, CONTEXT, CONTEXT)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, x):
        b, t, _ = x.size()
        hd = D_MODEL // N_HEADS
        q, k, v = self.c_attn(x).split(D_MODEL, dim=2)
        q = q.view(b, t, N_HEADS, hd).transpose(1, 2)
        k = k.view(b, t, N_HEADS, hd).transpose(1, 2)
        v = v.view(b, t, N_HEADS, hd).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(hd)
        att = torch.where(self.causal[:, :, :t, :t], att, att.new_tensor(-1e9))
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, t, D_MODEL)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D_MODEL)
        self.attn = Attention()
        self.ln_2 = nn.LayerNorm(D_MODEL)
        self.c_fc = nn.Linear(D_MODEL, D_FF)
        self.c_proj = nn.Linear(D_FF, D_MODEL)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class ByteGpt(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, D_MODEL)
        self.wpe = nn.Embedding(CONTEXT, D_MODEL)
        self.h = nn.ModuleList([Block() for _ in range(N_LAYERS)])
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB)
        for name, p in self.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, input_ids):
        t = input_ids.size(1)
        pos = torch.arange(t, dtype=torch.long, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.head(self.ln_f(x))


def load_bytes(name):
    with open(os.path.join(HERE, "corpus", name), "rb") as f:
        return torch.from_numpy(np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64))


def windows(data, starts):
    idx = starts.unsqueeze(1) + torch.arange(CONTEXT + 1).unsqueeze(0)
    return data[idx]


def bits_per_byte(model, data, gen):
    starts = torch.randint(0, len(data) - CONTEXT - 1, (EVAL_WINDOWS,), generator=gen)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for chunk in windows(data, starts).split(64):
            logits = model(chunk[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, VOCAB), chunk[:, 1:].reshape(-1), reduction="sum"))
            count += chunk[:, 1:].numel()
    model.train()
    return total / count / math.log(2)


def unigram_bits_per_byte(train, heldout):
    counts = torch.bincount(train, minlength=VOCAB).double() + 1.0  # add-one: bytes unseen in training
    logp = torch.log2(counts / counts.sum())
    return float(-logp[heldout].mean())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--measure", action="store_true", help="time 10 steps and stop")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    train, heldout = load_bytes("train.txt"), load_bytes("heldout.txt")
    model = ByteGpt()
    print(f"parameters: {sum(p.numel() for p in model.parameters())}")
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    steps = 10 if args.measure else args.steps
    start = time.time()
    for step in range(steps):
        lr = LR * min(1.0, (step + 1) / WARMUP) * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = windows(train, torch.randint(0, len(train) - CONTEXT - 1, (BATCH,), generator=gen))
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item() / math.log(2):.3f} bits/byte lr {lr:.2e} {time.time() - start:.0f}s", flush=True)
    seconds = time.time() - start
    if args.measure:
        print(f"{seconds / steps:.3f} s/step")
        return
    eval_gen = torch.Generator().manual_seed(SEED + 1)
    heldout_bpb = bits_per_byte(model, heldout, eval_gen)
    train_bpb = bits_per_byte(model, train, eval_gen)
    unigram_bpb = unigram_bits_per_byte(train, heldout)
    print(f"held-out {heldout_bpb:.3f} bits/byte, train {train_bpb:.3f}, unigram baseline {unigram_bpb:.3f}")

    model.eval()
    path = os.path.join(HERE, "model.onnx")
    example = windows(heldout, torch.tensor([0, 1000]))[:, :CONTEXT]
    axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    torch.onnx.export(model, (example,), path, input_names=["input_ids"], output_names=["logits"],
                      dynamic_axes=axes, opset_version=17, do_constant_folding=False)
    onnx.checker.check_model(onnx.load(path))
    meta = {
        "format": "fisherkernels-default/1",
        "model": "model.onnx",
        "tokenizer": "bytes",
        "vocab": VOCAB,
        "context": CONTEXT,
        "d_model": D_MODEL, "layers": N_LAYERS, "heads": N_HEADS, "d_ff": D_FF,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": SEED, "steps": steps, "batch": BATCH, "lr": LR,
        "train_seconds": round(seconds),
        "heldout_bits_per_byte": round(heldout_bpb, 4),
        "train_bits_per_byte": round(train_bpb, 4),
        "unigram_bits_per_byte": round(unigram_bpb, 4),
        "torch": torch.__version__,
    }
    with open(os.path.join(HERE, "model.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
