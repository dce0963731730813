#!/usr/bin/python3
"""Float64 reference outputs for the operator tests, written from the ONNX operator specification.

Run with Debian's Python: /usr/bin/python3 tests/FisherKernels.Onnx.Tests/Operators/make_cases.py
Writes cases.json (op, attributes, tolerance per case) and cases.npz (inputs and reference outputs)
beside this script. Inputs are float32 (or int64/bool); references are computed in float64 from them.
"""
import json, math, os
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(1234)
cases, arrays = [], {}


def f32(*shape, scale=1.0, low=None):
    x = rng.standard_normal(shape) * scale
    if low is not None:
        x = rng.uniform(low, low + scale, shape)
    return x.astype(np.float32)


def i64(values):
    return np.array(values, dtype=np.int64)


def case(name, op, inputs, outputs, attrs=None, opset=17, domain="", tol=2e-6):
    """inputs: list of arrays or None (absent optional input); outputs: list of float64/int64/bool arrays."""
    assert name not in {c["name"] for c in cases}, name
    enc = {}
    for k, v in (attrs or {}).items():
        if isinstance(v, np.ndarray):
            arrays[f"{name}/attr_{k}"] = v
            enc[k] = ["tensor", None]
        elif isinstance(v, bool) or isinstance(v, (int, np.integer)):
            enc[k] = ["int", int(v)]
        elif isinstance(v, float):
            enc[k] = ["float", v]
        elif isinstance(v, str):
            enc[k] = ["string", v]
        elif isinstance(v, list) and all(isinstance(e, int) for e in v):
            enc[k] = ["ints", v]
        elif isinstance(v, list):
            enc[k] = ["floats", [float(e) for e in v]]
        else:
            raise TypeError(k)
    for i, x in enumerate(inputs):
        if x is not None:
            arrays[f"{name}/in{i}"] = np.asarray(x)
    for i, y in enumerate(outputs):
        y = np.asarray(y)
        arrays[f"{name}/out{i}"] = y.astype(np.float64) if y.dtype.kind == "f" else y
    cases.append({"name": name, "op": op, "domain": domain, "opset": opset, "attributes": enc,
                  "inputs": [x is not None for x in inputs], "outputs": len(outputs), "tolerance": tol})


def d(x):
    return np.asarray(x, dtype=np.float64)


# ---- MatMul -------------------------------------------------------------------------------------
for name, sa, sb in [("2d", (3, 4), (4, 5)), ("batched", (2, 3, 4), (2, 4, 5)), ("shared_weight", (2, 3, 4), (4, 5)),
                     ("broadcast_batches", (2, 1, 3, 4), (1, 3, 4, 2)), ("broadcast_a", (3, 4), (2, 4, 5)),
                     ("vec_mat", (4,), (2, 4, 3)), ("mat_vec", (2, 3, 4), (4,)), ("vec_vec", (4,), (4,))]:
    a, b = f32(*sa), f32(*sb)
    case(f"matmul_{name}", "MatMul", [a, b], [np.matmul(d(a), d(b))])

# ---- binary arithmetic with broadcasting --------------------------------------------------------
binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
for op, fn in binary.items():
    for name, sa, sb in [("same", (2, 3), (2, 3)), ("bias", (2, 3, 4), (4,)), ("scalar", (2, 3), ()),
                         ("scalar_first", (), (3, 2)), ("both", (2, 1, 4), (3, 1)), ("mask", (2, 2, 3, 3), (2, 1, 3, 3))]:
        a, b = f32(*sa), f32(*sb)
        if op == "Div":
            b = (np.sign(b) + (b == 0)) * (np.abs(b) + 0.5)
            b = b.astype(np.float32)
        case(f"{op.lower()}_{name}", op, [a, b], [fn(d(a), d(b))])
case("add_int64", "Add", [i64([[1, 2, 3]]), i64([[10], [20]])], [i64([[11, 12, 13], [21, 22, 23]])])
case("div_int64_truncates", "Div", [i64([7, -7, 9]), i64([2, 2, -4])], [i64([3, -3, -2])])
case("mul_int64", "Mul", [i64([2, 3]), i64(4)], [i64([8, 12])])
a = f32(2, 3, low=0.5, scale=2.0)
case("pow_square", "Pow", [a, np.float32(2.0)], [d(a) ** 2])
e = f32(3, low=-1.0, scale=2.0)
case("pow_tensor", "Pow", [a, e], [d(a) ** d(e)], tol=5e-6)
case("pow_int_exponent", "Pow", [a, i64(3)], [d(a) ** 3])

# ---- Softmax / LogSoftmax -----------------------------------------------------------------------
def softmax(x, axis):
    x = d(x); m = x.max(axis=axis, keepdims=True); e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)

def log_softmax(x, axis):
    x = d(x); m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))

x = f32(2, 3, 5)
case("softmax_last", "Softmax", [x], [softmax(x, -1)])
case("softmax_axis1", "Softmax", [x], [softmax(x, 1)], attrs={"axis": 1})
case("softmax_negative_axis", "Softmax", [x], [softmax(x, -3)], attrs={"axis": -3})
big = (f32(2, 7) * 30 + 1000).astype(np.float32)
case("softmax_large_logits", "Softmax", [big], [softmax(big, -1)])
case("logsoftmax_large_logits", "LogSoftmax", [big], [log_softmax(big, -1)], tol=1e-6)
case("logsoftmax_axis0", "LogSoftmax", [x], [log_softmax(x, 0)], attrs={"axis": 0})
case("softmax_opset11_coerces_2d", "Softmax", [x], [softmax(d(x).reshape(2, 15), 1).reshape(2, 3, 5)], attrs={"axis": 1}, opset=11)

# ---- Reshape ------------------------------------------------------------------------------------
x = f32(2, 3, 4)
case("reshape_infer", "Reshape", [x, i64([4, -1])], [d(x).reshape(4, 6)])
case("reshape_copy_zero", "Reshape", [x, i64([0, 0, 2, 2])], [d(x).reshape(2, 3, 2, 2)])
case("reshape_allowzero_empty", "Reshape", [np.zeros((0, 3), np.float32), i64([3, 0])], [np.zeros((3, 0))], attrs={"allowzero": 1}, opset=14)
case("reshape_int64", "Reshape", [i64([[1, 2], [3, 4]]), i64([-1])], [i64([1, 2, 3, 4])])

if __name__ == "__main__":
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    np.savez(os.path.join(HERE, "cases.npz"), **arrays)
    print(f"{len(cases)} cases, {len(arrays)} arrays")
