#!/usr/bin/python3
"""Float64 numpy references for the posterior and calibration tests (no torch, no sklearn, no scipy).

    /usr/bin/python3 tests/FisherKernels.Core.Tests/Uncertainty/make_references.py

writes, beside this script:
  kfac_quadratic_references.json  for every fixture model and layer, vec(X)ᵀ (M·A⊗G + τI)⁻¹ vec(X) by a DENSE
                                  solve (not the eigen formula the engine uses), X = [∇W | ∇b] ([out, in(+1)])
                                  from <m>.grads.safetensors and A, G from <m>.kfac.safetensors, τ in TAUS.
  calibration_references.json     a seeded data set (uncertainty, correct) with its AUROC (all pairs), ECE
                                  (10 equal-width bins), NLL at β = 1 and the NLL-minimizing β (grid + golden section).
"""
import json, os, struct
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "fixtures")
TAUS = [1.0, 0.01]


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F64": "<f8", "F32": "<f4"}
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(blob[8 + n + start:8 + n + end], dtype=dtypes[info["dtype"]]).reshape(info["shape"]).astype(np.float64)
    return out, meta


def kfac_references():
    result = {}
    for model in ["gpt2_tiny", "llama_tiny", "bert_tiny"]:
        layers = json.load(open(os.path.join(FIXTURES, model + ".layers.json")))["layers"]
        factors, meta = read_safetensors(os.path.join(FIXTURES, model + ".kfac.safetensors"))
        grads, _ = read_safetensors(os.path.join(FIXTURES, model + ".grads.safetensors"))
        m = float(meta["positions"])
        per_layer = {}
        for layer in layers:
            w = grads[layer["id"]]
            if layer["storage"] == "in_out":
                w = w.T
            x = np.concatenate([w, grads[layer["bias"]][:, None]], axis=1) if layer["bias"] else w
            a, g = factors[layer["id"] + ".A"], factors[layer["id"] + ".G"]
            assert x.shape == (g.shape[0], a.shape[0])
            v = x.reshape(-1, order="F")  # vec stacks columns: C = M·(A ⊗ G) acts on vec([W | b])
            values = []
            for tau in TAUS:
                precision = m * np.kron(a, g) + tau * np.eye(v.size)
                values.append(float(v @ np.linalg.solve(precision, v)))
            per_layer[layer["id"]] = values
        result[model] = per_layer
    return {"taus": TAUS, "models": result}


def calibration_references():
    rng = np.random.default_rng(2026)
    n = 300
    u = np.exp(rng.normal(-1.0, 1.2, n))
    u[:20] = np.round(u[:20], 1)  # ties for the AUROC
    correct = rng.random(n) < 1 / (1 + 3.0 * u)
    errors = ~correct
    # AUROC of u for predicting errors, over all (error, correct) pairs, ties one half.
    diff = u[errors][:, None] - u[correct][None, :]
    auroc = float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)

    def nll(beta):
        c = np.clip(1 / (1 + beta * u), 1e-12, 1 - 1e-12)
        return float(-np.mean(np.where(correct, np.log(c), np.log(1 - c))))

    def ece(c, bins=10):
        b = np.minimum((c * bins).astype(int), bins - 1)
        return float(sum(abs(correct[b == k].sum() - c[b == k].sum()) for k in range(bins)) / len(c))

    grid = np.linspace(np.log(1e-4), np.log(1e4), 4001)
    k = int(np.argmin([nll(np.exp(t)) for t in grid]))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    phi = (np.sqrt(5) - 1) / 2
    for _ in range(200):
        x1, x2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if nll(np.exp(x1)) < nll(np.exp(x2)):
            hi = x2
        else:
            lo = x1
    beta = float(np.exp((lo + hi) / 2))
    return {"uncertainty": u.tolist(), "correct": correct.tolist(), "auroc_errors": auroc,
            "ece_beta_1": ece(1 / (1 + u)), "nll_beta_1": nll(1.0), "beta": beta, "nll_at_beta": nll(beta),
            "ece_at_beta": ece(1 / (1 + beta * u))}


if __name__ == "__main__":
    with open(os.path.join(HERE, "kfac_quadratic_references.json"), "w") as f:
        json.dump(kfac_references(), f, indent=1)
    with open(os.path.join(HERE, "calibration_references.json"), "w") as f:
        json.dump(calibration_references(), f, indent=1)
