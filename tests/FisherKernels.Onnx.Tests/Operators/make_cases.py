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


def case(name, op, inputs, outputs, attrs=None, opset=17, domain="", tol=2e-6, ort=False):
    """inputs: list of arrays or None (absent optional input); outputs: list of float64/int64/bool arrays.
    ort: the test also runs the case in ONNX Runtime (as a one-node model) and compares."""
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
            arrays[f"{name}/in{i}"] = np.require(x, requirements="C")
    for i, y in enumerate(outputs):
        y = np.require(y, requirements="C")
        arrays[f"{name}/out{i}"] = y.astype(np.float64) if y.dtype.kind == "f" else y
    cases.append({"name": name, "op": op, "domain": domain, "opset": opset, "attributes": enc,
                  "inputs": [x is not None for x in inputs], "outputs": len(outputs), "tolerance": tol,
                  **({"ort": True} if ort else {})})


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

# ---- Unary --------------------------------------------------------------------------------------
verf = np.vectorize(math.erf)
x = f32(3, 5, scale=2.0)
pos = f32(3, 5, low=0.1, scale=3.0)
case("sqrt", "Sqrt", [pos], [np.sqrt(d(pos))])
case("reciprocal", "Reciprocal", [pos], [1 / d(pos)])
case("neg", "Neg", [x], [-d(x)])
case("neg_int64", "Neg", [i64([1, -2, 3])], [i64([-1, 2, -3])])
case("exp", "Exp", [x], [np.exp(d(x))])
case("log", "Log", [pos], [np.log(d(pos))])
case("tanh", "Tanh", [x], [np.tanh(d(x))])
wide = np.concatenate([f32(40, scale=3.0), np.array([0, 1e-4, -1e-4, 6, -6, 20, -20], np.float32)]).astype(np.float32)
case("erf", "Erf", [wide], [verf(d(wide))], tol=3e-7)
case("sigmoid", "Sigmoid", [x], [1 / (1 + np.exp(-d(x)))])
case("relu", "Relu", [x], [np.maximum(d(x), 0)])
gelu_erf = lambda v: 0.5 * d(v) * (1 + verf(d(v) / math.sqrt(2)))
gelu_tanh = lambda v: 0.5 * d(v) * (1 + np.tanh(math.sqrt(2 / math.pi) * (d(v) + 0.044715 * d(v) ** 3)))
case("gelu_none", "Gelu", [wide], [gelu_erf(wide)], opset=20, tol=1e-6)
case("gelu_tanh", "Gelu", [wide], [gelu_tanh(wide)], attrs={"approximate": "tanh"}, opset=20, tol=1e-6)
xb, bias = f32(2, 3, 8), f32(8)
case("fastgelu_bias", "FastGelu", [xb, bias], [gelu_tanh(d(xb) + d(bias))], domain="com.microsoft", opset=1, tol=1e-6)
case("fastgelu", "FastGelu", [xb], [gelu_tanh(xb)], domain="com.microsoft", opset=1, tol=1e-6)
case("biasgelu", "BiasGelu", [xb, bias], [gelu_erf(d(xb) + d(bias))], domain="com.microsoft", opset=1, tol=1e-6)

# ---- Gemm ---------------------------------------------------------------------------------------
for ta in (0, 1):
    for tb in (0, 1):
        a = f32(4, 3) if ta else f32(3, 4)
        b = f32(5, 4) if tb else f32(4, 5)
        c = f32(5)
        opa = d(a).T if ta else d(a); opb = d(b).T if tb else d(b)
        case(f"gemm_t{ta}{tb}", "Gemm", [a, b, c], [0.5 * opa @ opb + 2.0 * d(c)], attrs={"transA": ta, "transB": tb, "alpha": 0.5, "beta": 2.0})
a, b = f32(3, 4), f32(4, 5)
for name, c in [("scalar", f32()), ("column", f32(3, 1)), ("full", f32(3, 5))]:
    case(f"gemm_c_{name}", "Gemm", [a, b, c], [d(a) @ d(b) + d(c)])
case("gemm_no_c", "Gemm", [a, b, None], [d(a) @ d(b)])

# ---- Normalization ------------------------------------------------------------------------------
def layer_norm(v, g, b, axis, eps):
    v = d(v); axes = tuple(range(axis % v.ndim, v.ndim))
    mu = v.mean(axis=axes, keepdims=True); var = ((v - mu) ** 2).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + eps)
    y = (v - mu) * inv * d(g) + (0 if b is None else d(b))
    return y, mu, inv

def rms_norm(v, g, axis, eps):
    v = d(v); axes = tuple(range(axis % v.ndim, v.ndim))
    inv = 1 / np.sqrt((v ** 2).mean(axis=axes, keepdims=True) + eps)
    return v * inv * d(g), inv

x, g, b = f32(2, 3, 8) + 0.5, f32(8), f32(8)
y, mu, inv = layer_norm(x, g, b, -1, 1e-5)
case("layernorm", "LayerNormalization", [x, g, b], [y, mu, inv])
g2 = f32(3, 8)
case("layernorm_axis1", "LayerNormalization", [x, g2, None], [layer_norm(x, g2, None, 1, 1e-3)[0]], attrs={"axis": 1, "epsilon": 1e-3})
case("simplified_layernorm", "SimplifiedLayerNormalization", [x, g], [rms_norm(x, g, -1, 1e-6)[0]], attrs={"epsilon": 1e-6}, domain="com.microsoft", opset=1)
case("rmsnorm", "RMSNormalization", [x, g], [rms_norm(x, g, -1, 1e-5)[0]], opset=23)
skip, sb = f32(2, 3, 8), f32(8)
s = d(x) + d(skip) + d(sb)
y, mu, inv = layer_norm(s, g, b, -1, 1e-12)
case("skip_layernorm", "SkipLayerNormalization", [x, skip, g, b, sb], [y, mu, inv, s], domain="com.microsoft", opset=1)
skip2 = f32(3, 8)
case("skip_layernorm_broadcast_skip", "SkipLayerNormalization", [x, skip2, g], [layer_norm(d(x) + d(skip2), g, None, -1, 1e-5)[0]],
     attrs={"epsilon": 1e-5}, domain="com.microsoft", opset=1)
case("skip_simplified_layernorm", "SkipSimplifiedLayerNormalization", [x, skip, g, sb], [rms_norm(s, g, -1, 1e-6)[0]],
     attrs={"epsilon": 1e-6}, domain="com.microsoft", opset=1)

# ---- Reductions ---------------------------------------------------------------------------------
x = f32(2, 3, 4)
red = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max}
for op, fn in red.items():
    case(f"{op.lower()}_attr", op, [x], [fn(d(x), axis=(1,), keepdims=True)], attrs={"axes": [1]}, opset=11)
    case(f"{op.lower()}_input_negative", op, [x, i64([-1, 0])], [fn(d(x), axis=(2, 0), keepdims=False)], attrs={"keepdims": 0}, opset=18)
    case(f"{op.lower()}_all", op, [x], [fn(d(x), axis=None, keepdims=True)], opset=18)
    case(f"{op.lower()}_noop", op, [x, i64([])], [d(x)], attrs={"noop_with_empty_axes": 1}, opset=18)
case("reducesum_input_opset13", "ReduceSum", [x, i64([1])], [d(x).sum(axis=1)], attrs={"keepdims": 0}, opset=13)
x33 = f32(3, 3)
case("reducemean_square_axis0", "ReduceMean", [x33], [d(x33).mean(axis=0)], attrs={"axes": [0], "keepdims": 0}, opset=13)

# ---- Data movement ------------------------------------------------------------------------------
x = f32(2, 3, 4)
case("transpose_default", "Transpose", [x], [d(x).transpose()])
case("transpose_perm", "Transpose", [x], [d(x).transpose(0, 2, 1)], attrs={"perm": [0, 2, 1]})
xh = f32(2, 3, 2, 4)
case("transpose_heads", "Transpose", [xh], [d(xh).transpose(0, 2, 1, 3)], attrs={"perm": [0, 2, 1, 3]})
case("transpose_int64", "Transpose", [i64([[1, 2, 3], [4, 5, 6]])], [i64([[1, 4], [2, 5], [3, 6]])])
xe = f32(3, 1)
case("expand", "Expand", [xe, i64([2, 1, 4])], [np.broadcast_to(d(xe), (2, 3, 4))])
case("expand_smaller_shape", "Expand", [xe, i64([1])], [d(xe)])
case("expand_bool", "Expand", [np.array([[True], [False]]), i64([2, 3])], [np.array([[True] * 3, [False] * 3])])
x = f32(4, 5, 6)
case("slice_basic", "Slice", [x, i64([1, 0]), i64([3, 4]), i64([0, 2])], [d(x)[1:3, :, 0:4]])
case("slice_negative_step", "Slice", [x, i64([-1]), i64([-1000]), i64([1]), i64([-2])], [d(x)[:, ::-2]])
case("slice_clamp", "Slice", [x, i64([2]), i64([2**62]), i64([-1])], [d(x)[..., 2:]])
case("slice_step", "Slice", [x, i64([0, 1]), i64([4, 6]), i64([0, 2]), i64([2, 2])], [d(x)[0:4:2, :, 1:6:2]])
case("slice_empty", "Slice", [x, i64([3]), i64([1]), i64([0])], [d(x)[3:1]])
case("slice_opset9_attributes", "Slice", [x], [d(x)[:, 1:3]], attrs={"starts": [1], "ends": [3], "axes": [1]}, opset=9)
case("slice_int64", "Slice", [i64([1, 2, 3, 4]), i64([-2]), i64([100])], [i64([3, 4])])
a, b, c = f32(2, 1, 3), f32(2, 2, 3), f32(2, 3, 3)
case("concat", "Concat", [a, b, c], [np.concatenate([d(a), d(b), d(c)], axis=1)], attrs={"axis": 1})
case("concat_negative_axis", "Concat", [a, a], [np.concatenate([d(a), d(a)], axis=-1)], attrs={"axis": -1})
case("concat_int64", "Concat", [i64([1, 2]), i64([3])], [i64([1, 2, 3])], attrs={"axis": 0})
x = f32(2, 6)
case("split_equal", "Split", [x], list(np.split(d(x), 3, axis=1)), attrs={"axis": 1}, opset=13)
case("split_input", "Split", [x, i64([1, 5])], [d(x)[:, :1], d(x)[:, 1:]], attrs={"axis": -1}, opset=13)
case("split_attribute", "Split", [x], [d(x)[:, :2], d(x)[:, 2:]], attrs={"axis": 1, "split": [2, 4]}, opset=11)
x7 = f32(7, 2)
case("split_num_outputs_uneven", "Split", [x7], [d(x7)[:3], d(x7)[3:6], d(x7)[6:]], attrs={"num_outputs": 3}, opset=18)
emb = f32(5, 3)
ids = i64([[0, 4, 4], [-1, 2, 1]])
case("gather_embedding", "Gather", [emb, ids], [d(emb)[ids]])
x = f32(2, 5, 3)
case("gather_axis1", "Gather", [x, i64([3, -5])], [np.take(d(x), [3, 0], axis=1)], attrs={"axis": 1})
case("gather_scalar_index", "Gather", [x, i64(2)], [d(x)[:, 2]], attrs={"axis": -2})
case("gather_shape_int64", "Gather", [i64([2, 7, 16]), i64(1)], [i64(7)])
x = f32(2, 4, 5)
case("trilu_upper", "Trilu", [x], [np.triu(d(x))])
case("trilu_lower_k", "Trilu", [x, i64(-1)], [np.tril(d(x), -1)], attrs={"upper": 0})
case("trilu_upper_k", "Trilu", [x, i64(2)], [np.triu(d(x), 2)])
case("trilu_bool", "Trilu", [np.ones((3, 3), bool)], [np.tril(np.ones((3, 3), bool))], attrs={"upper": 0})
cond = rng.random((2, 1, 4)) > 0.5
wx, wy = f32(3, 4), f32(2, 3, 1)
case("where", "Where", [cond, wx, wy], [np.where(cond, d(wx), d(wy))])
case("where_int64", "Where", [np.array([True, False]), i64([1, 2]), i64([9])], [i64([1, 9])])
x = f32(2, 3)
case("identity", "Identity", [x], [d(x)])
case("dropout", "Dropout", [x], [d(x), np.ones((2, 3), bool)])
# Training mode: an element stays when numpy's RandomState(seed).uniform(0, 1) draw for it is >= ratio, as ONNX's own
# dropout cases compute their expected outputs; own generator for x so the draws above and below stay.
def dropout_training(x, ratio, seed):
    keep = np.random.RandomState(seed).uniform(0, 1, x.shape) >= ratio
    return d(x) * keep / (1 - float(ratio)), keep

xdrop = np.random.default_rng(13).standard_normal((3, 4, 5)).astype(np.float32)
case("dropout_training_seed7", "Dropout", [xdrop, np.array(0.3, np.float32), np.array(True)], list(dropout_training(xdrop, np.float32(0.3), 7)),
     attrs={"seed": 7}, opset=13)
case("dropout_training_default_ratio", "Dropout", [xdrop, None, np.array(True)], list(dropout_training(xdrop, 0.5, 3)), attrs={"seed": 3}, opset=13)
case("dropout_training_false", "Dropout", [xdrop, np.array(0.3, np.float32), np.array(False)], [d(xdrop), np.ones(xdrop.shape, bool)],
     attrs={"seed": 7}, opset=13)
xf = f32(2, 3, 4)
case("flatten", "Flatten", [xf], [d(xf).reshape(6, 4)], attrs={"axis": 2})
xs = f32(1, 3, 1)
case("squeeze_input", "Squeeze", [xs, i64([-1])], [d(xs).reshape(1, 3)])
case("squeeze_all", "Squeeze", [xs], [d(xs).reshape(3)])
case("squeeze_attribute", "Squeeze", [xs], [d(xs).reshape(3, 1)], attrs={"axes": [0]}, opset=11)
case("unsqueeze_input", "Unsqueeze", [x, i64([0, -1])], [d(x).reshape(1, 2, 3, 1)])
case("unsqueeze_attribute", "Unsqueeze", [x], [d(x).reshape(2, 1, 3)], attrs={"axes": [1]}, opset=11)

# ---- Cast, shapes, constants, masks -------------------------------------------------------------
case("cast_float_to_int64", "Cast", [np.array([1.7, -1.7, 0.0], np.float32)], [i64([1, -1, 0])], attrs={"to": 7})
case("cast_int64_to_float", "Cast", [i64([3, -2])], [np.array([3.0, -2.0])], attrs={"to": 1})
case("cast_bool_to_float16", "Cast", [np.array([True, False])], [np.array([1.0, 0.0])], attrs={"to": 10})
case("cast_int64_to_bool", "Cast", [i64([0, 5])], [np.array([False, True])], attrs={"to": 9})
x = f32(2, 3, 4)
case("shape", "Shape", [x], [i64([2, 3, 4])])
case("shape_start_end", "Shape", [x], [i64([3])], attrs={"start": -2, "end": -1}, opset=15)
case("shape_clamped", "Shape", [x], [i64([3, 4])], attrs={"start": 1, "end": 10}, opset=15)
case("constant_tensor", "Constant", [], [i64([[1, 2]])], attrs={"value": i64([[1, 2]])})
case("constant_value_float", "Constant", [], [np.array(2.5)], attrs={"value_float": 2.5})
case("constant_value_ints", "Constant", [], [i64([4, 5])], attrs={"value_ints": [4, 5]})
case("constantofshape_default", "ConstantOfShape", [i64([2, 3])], [np.zeros((2, 3))])
case("constantofshape_int64", "ConstantOfShape", [i64([3])], [i64([7, 7, 7])], attrs={"value": i64([7])})
case("range_int64", "Range", [i64(0), i64(5), i64(2)], [i64([0, 2, 4])])
case("range_negative", "Range", [i64(10), i64(4), i64(-3)], [i64([10, 7])])
case("range_float", "Range", [np.float32(1.0), np.float32(2.0), np.float32(0.25)], [np.arange(1.0, 2.0, 0.25)])
a, b = i64([[1, 2, 3]]), i64([[2], [3]])
case("equal", "Equal", [a, b], [np.equal(a, b)])
fa, fb = f32(2, 3), f32(3)
case("less", "Less", [fa, fb], [np.less(fa, fb)])
case("greater", "Greater", [fa, fb], [np.greater(fa, fb)])
case("not", "Not", [np.array([True, False])], [np.array([False, True])])
case("equal_bool", "Equal", [np.array([True, False]), np.array([True])], [np.array([True, False])])

# ---- Later additions: Cos, Sin, Abs, Max, Min, And, Or, Xor ---------------------------------------
x = f32(3, 5, scale=3.0)
case("cos", "Cos", [x], [np.cos(d(x))])
case("sin", "Sin", [x], [np.sin(d(x))])
case("abs", "Abs", [x], [np.abs(d(x))])
a, b = f32(2, 3, 4), f32(4)
case("max_broadcast", "Max", [a, b], [np.maximum(d(a), d(b))], opset=13)
case("min_broadcast", "Min", [a, b], [np.minimum(d(a), d(b))], opset=13)
case("max_scalar", "Max", [a, np.float32(0.25)], [np.maximum(d(a), 0.25)], opset=13)
case("min_int64", "Min", [i64([[1, 5], [7, -2]]), i64([3])], [i64([[1, 3], [3, -2]])], opset=13)
p_, q_ = np.array([[True, False, True, False]]), np.array([[True], [False]])
case("and", "And", [p_, q_], [np.logical_and(p_, q_)])
case("or", "Or", [p_, q_], [np.logical_or(p_, q_)])
case("xor", "Xor", [p_, q_], [np.logical_xor(p_, q_)])

# ---- CumSum ---------------------------------------------------------------------------------------
x = f32(2, 5)
case("cumsum", "CumSum", [x, i64(1)], [np.cumsum(d(x), axis=1)])
case("cumsum_exclusive_reverse_axis0", "CumSum", [x, i64(-2)],
     [np.flip(np.cumsum(np.flip(d(x), 0), axis=0), 0) - d(x)], attrs={"exclusive": 1, "reverse": 1})
mask = i64([[1, 1, 1, 0], [0, 1, 1, 1]])
case("cumsum_position_ids", "CumSum", [mask, np.array(1, np.int32)], [np.cumsum(mask, axis=1)])

# ---- Pad, Tile, ScatterND ---------------------------------------------------------------------------
def pad_ref(x, pads, mode, value=0.0, axes=None):
    """ONNX Pad: negative pads crop first, the positive ones then pad what is left (numpy.pad semantics)."""
    x = np.asarray(x); r = x.ndim
    axes = list(range(r)) if axes is None else [a % r for a in axes]
    n = len(axes); begin, end = [0] * r, [0] * r
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + n]
    x = x[tuple(slice(max(0, -b), x.shape[d] - max(0, -e)) for d, (b, e) in enumerate(zip(begin, end)))]
    width = [(max(0, b), max(0, e)) for b, e in zip(begin, end)]
    return np.pad(x, width, mode="constant", constant_values=value) if mode == "constant" else np.pad(x, width, mode=mode)

x = f32(2, 3, 4)
case("pad_constant_value", "Pad", [x, i64([0, 1, 2, 1, 0, 3]), np.float32(1.5)], [pad_ref(d(x), [0, 1, 2, 1, 0, 3], "constant", 1.5)], opset=13, ort=True)
case("pad_constant_default_opset11", "Pad", [x, i64([1, 0, 0, 0, 2, 1])], [pad_ref(d(x), [1, 0, 0, 0, 2, 1], "constant")], opset=11, ort=True)
xr = f32(3, 5)
case("pad_reflect", "Pad", [xr, i64([2, 3, 1, 4])], [pad_ref(d(xr), [2, 3, 1, 4], "reflect")], attrs={"mode": "reflect"}, opset=13, ort=True)
case("pad_edge", "Pad", [x, i64([0, 2, 0, 1, 0, 3])], [pad_ref(d(x), [0, 2, 0, 1, 0, 3], "edge")], attrs={"mode": "edge"}, opset=13, ort=True)
case("pad_negative_crops", "Pad", [xr, i64([-1, 2, 1, -3]), np.float32(-2.0)], [pad_ref(d(xr), [-1, 2, 1, -3], "constant", -2.0)], opset=13, ort=True)
case("pad_reflect_crop_then_pad", "Pad", [xr, i64([0, -2, 0, 2])], [pad_ref(d(xr), [0, -2, 0, 2], "reflect")], attrs={"mode": "reflect"}, opset=13, ort=True)
case("pad_axes_opset18", "Pad", [x, i64([2, 1]), None, i64([-1])], [pad_ref(d(x), [2, 1], "reflect", axes=[-1])], attrs={"mode": "reflect"}, opset=18, ort=True)
case("pad_axes_two_opset21", "Pad", [x, i64([1, 0, 0, 2]), np.float32(0.5), i64([2, 0])], [pad_ref(d(x), [1, 0, 0, 2], "constant", 0.5, axes=[2, 0])], opset=21, ort=True)
case("pad_wrap_opset19", "Pad", [xr, i64([1, 2, 2, 3])], [pad_ref(d(xr), [1, 2, 2, 3], "wrap")], attrs={"mode": "wrap"}, opset=19, ort=True)
case("pad_opset2_attributes", "Pad", [xr], [pad_ref(d(xr), [0, 1, 2, 0], "constant", 0.25)], attrs={"pads": [0, 1, 2, 0], "value": 0.25}, opset=2, ort=True)
case("pad_int64", "Pad", [i64([[1, 2], [3, 4]]), i64([0, 1, 1, 0]), i64(9)], [pad_ref(i64([[1, 2], [3, 4]]), [0, 1, 1, 0], "constant", 9)], opset=13, ort=True)
xt = f32(2, 3)
case("tile", "Tile", [xt, i64([2, 3])], [np.tile(d(xt), (2, 3))], opset=13, ort=True)
x3 = f32(2, 1, 3)
case("tile_ones_and_zero", "Tile", [x3, i64([1, 4, 1])], [np.tile(d(x3), (1, 4, 1))], opset=13, ort=True)
case("tile_empty", "Tile", [x3, i64([1, 0, 2])], [np.tile(d(x3), (1, 0, 2))], opset=6, ort=True)
case("tile_int64", "Tile", [i64([[1, 2]]), i64([2, 2])], [np.tile(i64([[1, 2]]), (2, 2))], opset=13, ort=True)

def scatter_nd(data, indices, updates, reduction="none"):
    out = np.array(data, copy=True)
    idx = indices.reshape(-1, indices.shape[-1]); upd = updates.reshape((idx.shape[0],) + data.shape[indices.shape[-1]:])
    combine = {"none": lambda old, new: new, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[reduction]
    for j, t in enumerate(idx):
        t = tuple(int(v) for v in t)
        out[t] = combine(out[t], upd[j])
    return out

data = f32(4, 3, 2)
ind = i64([[2, 1], [0, -1], [-1, 0]])
upd = f32(3, 2)
case("scatternd_slices", "ScatterND", [data, ind, upd], [scatter_nd(d(data), ind, d(upd))], opset=13, ort=True)
ind1 = i64([[[3], [1]]])
upd1 = f32(1, 2, 3, 2)
case("scatternd_rows", "ScatterND", [data, ind1, upd1], [scatter_nd(d(data), ind1, d(upd1))], opset=11, ort=True)
ind3 = i64([[1, 2, 0], [1, 2, 0], [0, 0, 1]])
upd3 = f32(3)
case("scatternd_add_duplicates", "ScatterND", [data, ind3, upd3], [scatter_nd(d(data), ind3, d(upd3), "add")], attrs={"reduction": "add"}, opset=16, ort=True)
case("scatternd_int64", "ScatterND", [i64([1, 2, 3, 4]), i64([[0], [3]]), i64([7, 8])], [i64([7, 2, 3, 8])], opset=18, ort=True)
# The other reductions, each with a repeated index tuple (applied in order); own generator so the draws above stay.
srng = np.random.default_rng(16)
sdata = srng.standard_normal((4, 3, 2)).astype(np.float32)
supd = srng.standard_normal((3, 2)).astype(np.float32)
sind = i64([[1, 2], [3, -1], [1, 2]])
for reduction, opset in [("mul", 16), ("max", 18), ("min", 18)]:
    case(f"scatternd_{reduction}_duplicates", "ScatterND", [sdata, sind, supd], [scatter_nd(d(sdata), sind, d(supd), reduction)],
         attrs={"reduction": reduction}, opset=opset, ort=True)
case("scatternd_mul_int64", "ScatterND", [i64([1, 2, 3, 4]), i64([[1], [3], [1]]), i64([5, 6, 7])], [i64([1, 70, 3, 24])],
     attrs={"reduction": "mul"}, opset=16, ort=True)


# ---- com.microsoft RotaryEmbedding (ONNX Runtime contrib schema) -------------------------------------
def rotary_ref(x, pos, cos, sin, interleaved=False, num_heads=0, rotary_dim=0):
    x = d(x); cos = d(cos); sin = d(sin)
    if x.ndim == 3:
        b, s, hidden = x.shape
        head = 2 * cos.shape[1] if rotary_dim == 0 else hidden // num_heads
        xh = x.reshape(b, s, hidden // head, head)                  # [b, s, n, h]
    else:
        xh = x.transpose(0, 2, 1, 3); b, s = xh.shape[:2]; head = xh.shape[3]
    r = rotary_dim or head; half = r // 2
    p = np.broadcast_to(pos.reshape(-1)[0] + np.arange(s), (b, s)) if pos.size == 1 else pos
    c = cos[p][:, :, None, :]; sn = sin[p][:, :, None, :]          # [b, s, 1, half]
    y = xh.copy()
    if interleaved:
        x1, x2 = xh[..., 0:r:2], xh[..., 1:r:2]
        y[..., 0:r:2] = x1 * c - x2 * sn; y[..., 1:r:2] = x2 * c + x1 * sn
    else:
        x1, x2 = xh[..., :half], xh[..., half:r]
        y[..., :half] = x1 * c - x2 * sn; y[..., half:r] = x2 * c + x1 * sn
    return y.reshape(x.shape) if x.ndim == 3 else y.transpose(0, 2, 1, 3)

def rope_cache(max_pos, half):
    angle = np.arange(max_pos)[:, None] * (10000.0 ** (-np.arange(half) / half))[None, :]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)

cos8, sin8 = rope_cache(10, 4)
xq = f32(2, 3, 16)                                                   # 2 heads of 8
pos = i64([[0, 1, 2], [4, 6, 9]])
case("rotary_3d_position_ids", "RotaryEmbedding", [xq, pos, cos8, sin8], [rotary_ref(xq, pos, cos8, sin8)], domain="com.microsoft", opset=1, ort=True)
x4 = f32(2, 2, 3, 8)                                                 # [b, heads, s, h]
case("rotary_4d_interleaved_offset", "RotaryEmbedding", [x4, i64([5]), cos8, sin8], [rotary_ref(x4, i64([5]), cos8, sin8, True)],
     attrs={"interleaved": 1}, domain="com.microsoft", opset=1, ort=True)
cos4, sin4 = rope_cache(10, 2)
case("rotary_partial_dim", "RotaryEmbedding", [xq, pos, cos4, sin4], [rotary_ref(xq, pos, cos4, sin4, num_heads=2, rotary_dim=4)],
     attrs={"num_heads": 2, "rotary_embedding_dim": 4}, domain="com.microsoft", opset=1, ort=True)


def rotary23_ref(x, cos, sin, pos=None, interleaved=False, num_heads=0, rotary_dim=0):
    """ONNX RotaryEmbedding-23 (onnx/reference semantics): caches gathered by position_ids, or per token without them."""
    x = d(x); shape = x.shape
    xh = x.transpose(0, 2, 1, 3) if x.ndim == 4 else x.reshape(shape[0], shape[1], num_heads, shape[2] // num_heads)
    r = rotary_dim or xh.shape[-1]; half = r // 2
    c = (d(cos)[pos] if pos is not None else d(cos))[..., :half][:, :, None, :]
    sn = (d(sin)[pos] if pos is not None else d(sin))[..., :half][:, :, None, :]
    y = xh.copy()
    if interleaved:
        x1, x2 = xh[..., 0:r:2], xh[..., 1:r:2]
        y[..., 0:r:2] = c * x1 - sn * x2; y[..., 1:r:2] = sn * x1 + c * x2
    else:
        x1, x2 = xh[..., :half], xh[..., half:r]
        y[..., :half] = c * x1 - sn * x2; y[..., half:r] = sn * x1 + c * x2
    return y.transpose(0, 2, 1, 3) if x.ndim == 4 else y.reshape(shape)

case("rotary23_3d_position_ids", "RotaryEmbedding", [xq, cos8, sin8, pos], [rotary23_ref(xq, cos8, sin8, pos, num_heads=2)],
     attrs={"num_heads": 2}, opset=23, ort=True)
cb, sb = f32(2, 3, 4), f32(2, 3, 4)
case("rotary23_4d_per_token_caches_interleaved", "RotaryEmbedding", [x4, cb, sb], [rotary23_ref(x4, cb, sb, interleaved=True)],
     attrs={"interleaved": 1}, opset=23, ort=True)
case("rotary23_partial", "RotaryEmbedding", [x4, cos4, sin4, pos], [rotary23_ref(x4, cos4, sin4, pos, rotary_dim=4)],
     attrs={"rotary_embedding_dim": 4}, opset=23, ort=True)
# The specification's caches may be head_size/2 wide with a smaller rotary dimension (the first R/2 columns are
# used); ONNX Runtime 1.31 refuses that form, so numpy only.
case("rotary23_partial_wide_cache", "RotaryEmbedding", [x4, cos8, sin8, pos], [rotary23_ref(x4, cos8, sin8, pos, rotary_dim=4)],
     attrs={"rotary_embedding_dim": 4}, opset=23)

# ---- com.microsoft Attention and MultiHeadAttention (ONNX Runtime contrib schemas) ------------------
def mha_ref(q, k, v, heads, mask=None, unidirectional=False, scale=None, filter_value=-10000.0):
    """softmax(scale·Q Kᵀ + mask)·V per head; the mask adds filter_value where it is 0 (raw 2-D/3-D) or past
    the valid length (1-D [batch]) or before the start (1-D [2·batch]); unidirectional excludes the keys after the
    query outright (−inf, as ONNX Runtime's CPU kernel: a query whose visible keys are all padding still attends to them)."""
    q, k, v = d(q), d(k), d(v)
    b, s, hidden = q.shape; l = k.shape[1]; h = hidden // heads; hv = v.shape[2] // heads
    qh = q.reshape(b, s, heads, h).transpose(0, 2, 1, 3)
    kh = k.reshape(b, l, heads, h).transpose(0, 2, 1, 3)
    vh = v.reshape(b, l, heads, hv).transpose(0, 2, 1, 3)
    add = np.zeros((b, s, l))
    if mask is not None:
        m = np.asarray(mask)
        j = np.arange(l)[None, None, :]
        if m.ndim == 1 and m.size == b:
            add += np.where(j >= m[:, None, None], filter_value, 0.0)
        elif m.ndim == 1:
            add += np.where((j >= m[:b, None, None]) | (j < np.minimum(m[b:], l)[:, None, None]), filter_value, 0.0)
        elif m.ndim == 2:
            add += np.where(m[:, None, :] == 0, filter_value, 0.0)
        else:
            add += np.where(m == 0, filter_value, 0.0)
    if unidirectional and s > 1:
        add = np.where(np.arange(l)[None, None, :] > np.arange(s)[None, :, None], -np.inf, add)
    scores = (scale if scale else 1 / math.sqrt(h)) * qh @ kh.transpose(0, 1, 3, 2) + add[:, None]
    p = np.exp(scores - scores.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(b, s, heads * hv)

def packed_attention_ref(x, w, bias, heads, sizes=None, **kw):
    qkv = d(x) @ d(w) + (0 if bias is None else d(bias))
    dq = sizes[0] if sizes else w.shape[1] // 3
    return mha_ref(qkv[..., :dq], qkv[..., dq:2 * dq], qkv[..., 2 * dq:], heads, **kw)

ms = "com.microsoft"
x, w, bq = f32(2, 4, 8), f32(8, 24, scale=0.5), f32(24)
m2 = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32)
case("attention_raw_mask", "Attention", [x, w, bq, m2], [packed_attention_ref(x, w, bq, 2, mask=m2)],
     attrs={"num_heads": 2}, domain=ms, opset=1, tol=1e-5, ort=True)
xg = f32(1, 5, 8)
case("attention_unidirectional", "Attention", [xg, w, bq], [packed_attention_ref(xg, w, bq, 2, unidirectional=True)],
     attrs={"num_heads": 2, "unidirectional": 1}, domain=ms, opset=1, tol=1e-5, ort=True)
ml = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.int32)
# Query 0 of batch 0 sees only a padded key: it attends to it alone (padding adds −10000, causality excludes).
case("attention_left_padding_unidirectional", "Attention", [x, w, bq, ml], [packed_attention_ref(x, w, bq, 2, mask=ml, unidirectional=True)],
     attrs={"num_heads": 2, "unidirectional": 1}, domain=ms, opset=1, tol=1e-5, ort=True)
w20, b20 = f32(8, 20, scale=0.5), f32(20)
lengths = np.array([3, 4], np.int32)
case("attention_qkv_hidden_sizes_lengths", "Attention", [x, w20, b20, lengths], [packed_attention_ref(x, w20, b20, 2, sizes=[8, 8, 4], mask=lengths)],
     attrs={"num_heads": 2, "qkv_hidden_sizes": [8, 8, 4]}, domain=ms, opset=1, tol=1e-5, ort=True)
m3 = (rng.random((2, 4, 4)) > 0.3).astype(np.int64); m3[..., 0] = 1
case("attention_no_bias_3d_mask_scale", "Attention", [x, w, None, m3], [packed_attention_ref(x, w, None, 4, mask=m3, scale=0.3)],
     attrs={"num_heads": 4, "scale": 0.3}, domain=ms, opset=1, tol=1e-5)
startend = np.array([4, 3, 1, 0], np.int32)
case("attention_end_start_positions", "Attention", [x, w, bq, startend], [packed_attention_ref(x, w, bq, 2, mask=startend)],
     attrs={"num_heads": 2}, domain=ms, opset=1, tol=1e-5, ort=True)
q, k, v = f32(2, 3, 8), f32(2, 3, 8), f32(2, 3, 8)
mb = f32(24)
mm = np.array([[1, 1, 0], [1, 1, 1]], np.int32)
case("mha_self_bias_mask", "MultiHeadAttention", [q, k, v, mb, mm], [mha_ref(d(q) + mb[:8], d(k) + mb[8:16], d(v) + mb[16:], 2, mask=mm)],
     attrs={"num_heads": 2}, domain=ms, opset=1, tol=1e-5, ort=True)
kc, vc = f32(2, 5, 8), f32(2, 5, 4)
klen = np.array([5, 3], np.int32)
case("mha_cross_lengths", "MultiHeadAttention", [q, kc, vc, None, klen], [mha_ref(q, kc, vc, 2, mask=klen)],
     attrs={"num_heads": 2}, domain=ms, opset=1, tol=1e-5, ort=True)
case("mha_unidirectional_scale", "MultiHeadAttention", [q, k, v], [mha_ref(q, k, v, 4, unidirectional=True, scale=0.5)],
     attrs={"num_heads": 4, "unidirectional": 1, "scale": 0.5}, domain=ms, opset=1, tol=1e-5, ort=True)


# ---- ONNX Attention (opset 23) ---------------------------------------------------------------------
def attention23_ref(q, k, v, mask=None, is_causal=False, scale=None, q_heads=None, kv_heads=None):
    """onnx/reference semantics without past state: 3-D inputs split into heads, GQA by repeating each kv head,
    bool mask (True attends) or float mask added, shorter masks padded with −inf, causal top-left."""
    q, k, v = d(q), d(k), d(v)
    three = q.ndim == 3
    if three:
        split = lambda t, n: t.reshape(t.shape[0], t.shape[1], n, -1).transpose(0, 2, 1, 3)
        q, k, v = split(q, q_heads), split(k, kv_heads), split(v, kv_heads)
    b, nq, s, h = q.shape; l = k.shape[2]
    k = np.repeat(k, nq // k.shape[1], axis=1); v = np.repeat(v, nq // v.shape[1], axis=1)
    bias = np.zeros((s, l))
    if mask is not None:
        m = mask
        if m.dtype == np.bool_:
            m = np.where(m, 0.0, -np.inf)
        m = d(m)
        m = np.concatenate([m, np.full(m.shape[:-1] + (l - m.shape[-1],), -np.inf)], axis=-1)
        bias = bias + m
    if is_causal:
        bias = bias + np.where(np.arange(l)[None, :] > np.arange(s)[:, None], -np.inf, 0.0)
    scores = (scale if scale else 1 / math.sqrt(h)) * q @ k.transpose(0, 1, 3, 2) + bias
    p = np.exp(scores - scores.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    y = p @ v
    return y.transpose(0, 2, 1, 3).reshape(b, s, -1) if three else y

qa, ka, va = f32(2, 4, 3, 4), f32(2, 2, 3, 4), f32(2, 2, 3, 6)
case("attention23_4d_gqa_causal", "Attention", [qa, ka, va], [attention23_ref(qa, ka, va, is_causal=True)],
     attrs={"is_causal": 1}, opset=23, tol=1e-5, ort=True)
q3, k3, v3 = f32(2, 3, 8), f32(2, 5, 8), f32(2, 5, 4)
mb3 = rng.random((2, 1, 3, 5)) > 0.4; mb3[..., 0] = True
case("attention23_3d_bool_mask", "Attention", [q3, k3, v3, mb3], [attention23_ref(q3, k3, v3, mask=mb3, q_heads=2, kv_heads=2)],
     attrs={"q_num_heads": 2, "kv_num_heads": 2}, opset=23, tol=1e-5, ort=True)
q4, k4, v4 = f32(1, 2, 3, 4), f32(1, 2, 5, 4), f32(1, 2, 5, 4)
mf, mf5 = f32(3, 4), f32(2, 3, 5)
case("attention23_float_mask_scale", "Attention", [q4, k4, v4, mf5], [attention23_ref(q4, k4, v4, mask=mf5, scale=0.3)],
     attrs={"scale": 0.3}, opset=23, tol=1e-5, ort=True)
# The specification pads a mask shorter than the keys with −inf; ONNX Runtime 1.31 refuses that form, so numpy only.
case("attention23_short_float_mask", "Attention", [q4, k4, v4, mf], [attention23_ref(q4, k4, v4, mask=mf)], opset=23, tol=1e-5)

# ---- com.microsoft EmbedLayerNormalization (ONNX Runtime contrib schema and CPU kernel) --------------
def i32(values):
    return np.array(values, dtype=np.int32)

def embed_layer_norm_ref(ids, word, pos, gamma, beta, eps, seg_ids=None, seg=None, mask=None, pos_ids=None):
    """Outputs (output, mask_index, embedding_sum): per token word[id] + position[pos] (+ segment[seg]), layer-normalized;
    positions are 0..S-1 without position_ids ([1, S] ones broadcast over the batch); mask_index counts mask entries equal to 1."""
    b, sq = ids.shape
    p = np.broadcast_to(np.arange(sq), (b, sq)) if pos_ids is None else np.broadcast_to(pos_ids, (b, sq))
    s = d(word)[ids] + d(pos)[p] + (0 if seg is None else d(seg)[seg_ids])
    y = layer_norm(s, gamma, beta, -1, eps)[0]
    mask_index = np.zeros(b, np.int32) if mask is None else (mask == 1).sum(axis=1).astype(np.int32)
    return y, mask_index, s

ids = i32([[1, 4, 2, 0], [3, 3, 5, 1]])
segs = i32([[0, 0, 1, 1], [0, 1, 1, 1]])
word, pos, seg, ge, be = f32(6, 8), f32(5, 8), f32(2, 8), f32(8), f32(8)
mask = i32([[1, 1, 1, 0], [1, 1, 0, 0]])
case("embed_layernorm_full", "EmbedLayerNormalization", [ids, segs, word, pos, seg, ge, be, mask],
     list(embed_layer_norm_ref(ids, word, pos, ge, be, 1e-5, segs, seg, mask)), attrs={"epsilon": 1e-5}, domain=ms, opset=1, ort=True)
pids1 = i32([[4, 0, 2, 1]])
case("embed_layernorm_no_segments_broadcast_positions", "EmbedLayerNormalization", [ids, None, word, pos, None, ge, be, None, pids1],
     list(embed_layer_norm_ref(ids, word, pos, ge, be, 1e-12, pos_ids=pids1)[:2]), domain=ms, opset=1, ort=True)
pids = i32([[0, 1, 2, 3], [2, 3, 4, 0]])
case("embed_layernorm_position_ids", "EmbedLayerNormalization", [ids, segs, word, pos, seg, ge, be, None, pids],
     list(embed_layer_norm_ref(ids, word, pos, ge, be, 1e-12, segs, seg, pos_ids=pids)[:2]), domain=ms, opset=1, ort=True)
# Output alone is the schema's minimum; ONNX Runtime 1.31's shape inference insists on mask_index, so numpy only.
case("embed_layernorm_output_only", "EmbedLayerNormalization", [ids, segs, word, pos, seg, ge, be],
     [embed_layer_norm_ref(ids, word, pos, ge, be, 1e-12, segs, seg)[0]], domain=ms, opset=1)

# ---- com.microsoft Gelu (erf form) and QuickGelu (x·sigmoid(alpha·x)) ---------------------------------
case("ms_gelu", "Gelu", [wide], [gelu_erf(wide)], domain=ms, opset=1, tol=1e-6, ort=True)
quick = lambda v, alpha: d(v) / (1 + np.exp(-alpha * d(v)))
case("quickgelu_default_alpha", "QuickGelu", [wide], [quick(wide, 1.702)], domain=ms, opset=1, tol=1e-6, ort=True)
case("quickgelu_alpha", "QuickGelu", [wide], [quick(wide, 0.75)], attrs={"alpha": 0.75}, domain=ms, opset=1, tol=1e-6, ort=True)

# ---- com.microsoft GroupQueryAttention, prompt without a cache (ONNX Runtime contrib schema and CPU kernel) -----
def present(t, kv_heads):
    return d(t).reshape(t.shape[0], t.shape[1], kv_heads, -1).transpose(0, 2, 1, 3)

# ONNX Runtime needs head sizes that are multiples of 8.
qg, kg, vg = f32(2, 4, 32), f32(2, 4, 16), f32(2, 4, 16)
case("gqa_prompt_present", "GroupQueryAttention", [qg, kg, vg, None, None, i32([3, 3]), np.array(4, np.int32)],
     [attention23_ref(qg, kg, vg, is_causal=True, q_heads=4, kv_heads=2), present(kg, 2), present(vg, 2)],
     attrs={"num_heads": 4, "kv_num_heads": 2}, domain=ms, opset=1, tol=1e-5, ort=True)
qm, km, vm = f32(1, 3, 16), f32(1, 3, 8), f32(1, 3, 8)
case("gqa_multi_query_scale", "GroupQueryAttention", [qm, km, vm, None, None, i32([2]), np.array(3, np.int32)],
     [attention23_ref(qm, km, vm, is_causal=True, scale=0.3, q_heads=2, kv_heads=1), present(km, 1), present(vm, 1)],
     attrs={"num_heads": 2, "kv_num_heads": 1, "scale": 0.3}, domain=ms, opset=1, tol=1e-5, ort=True)

# ---- com.microsoft BiasAdd: X + bias + skip (ONNX Runtime has only a CUDA kernel, so numpy only) ------------------
xa, ba, sa = f32(2, 3, 5), f32(5), f32(2, 3, 5)
case("biasadd", "BiasAdd", [xa, ba, sa], [d(xa) + d(ba) + d(sa)], domain=ms, opset=1)

# ---- Clip (opset 11+: min and max as optional inputs): y = min(max(x, lo), hi) -----------------------------------
xc = f32(3, 4, scale=2.0)
case("clip_both_opset11", "Clip", [xc, np.float32(-0.5), np.float32(0.75)], [np.minimum(np.maximum(d(xc), -0.5), 0.75)], opset=11, ort=True)
case("clip_max_only", "Clip", [xc, None, np.float32(0.2)], [np.minimum(d(xc), 0.2)], opset=13, ort=True)
case("clip_min_only_opset21", "Clip", [xc, np.float32(0.1)], [np.maximum(d(xc), 0.1)], opset=21)
case("clip_no_bounds", "Clip", [xc], [d(xc)], opset=13, ort=True)
case("clip_min_above_max", "Clip", [xc, np.float32(1.0), np.float32(-1.0)], [np.full(xc.shape, -1.0)], opset=13, ort=True)
case("clip_int64", "Clip", [i64([[-5, 0, 3], [9, -1, 2]]), i64(-1), i64(4)], [i64([[-1, 0, 3], [4, -1, 2]])], opset=13, ort=True)

# ---- 8-bit integers: numpy's own int8/uint8 arithmetic, which wraps around; integer Div truncates toward zero -------
def i8(values):
    return np.array(values, dtype=np.int8)


def u8(values):
    return np.array(values, dtype=np.uint8)

ua, ub = u8([[200, 100, 255, 0], [3, 0, 17, 250]]), u8([100, 100, 1, 7])
case("add_uint8_wraps", "Add", [ua, ub], [ua + ub], opset=14, ort=True)
case("sub_uint8_wraps", "Sub", [ua, ub], [ua - ub], opset=14, ort=True)
case("mul_uint8_wraps", "Mul", [ua, ub], [ua * ub], opset=14, ort=True)
sa8, sb8 = i8([[100, -7, 127, -128], [7, -7, 7, -7]]), i8([[3, 5, 1, -1], [2, 2, -2, -2]])
case("mul_int8_wraps", "Mul", [sa8, sb8], [sa8 * sb8], opset=14, ort=True)
case("add_int8_wraps", "Add", [sa8, sb8], [sa8 + sb8], opset=14, ort=True)
case("div_int8_truncates", "Div", [sa8[1:], sb8[1:]], [np.trunc(sa8[1:].astype(np.float64) / sb8[1:]).astype(np.int8)], opset=14, ort=True)
case("div_uint8", "Div", [ua, u8([7, 3, 2, 9])], [ua // u8([7, 3, 2, 9])], opset=14, ort=True)
case("max_int8", "Max", [sa8, i8([0])], [np.maximum(sa8, i8([0]))], opset=13, ort=True)
case("min_uint8", "Min", [ua, ub], [np.minimum(ua, ub)], opset=13, ort=True)
case("clip_int8", "Clip", [sa8, i8(-8), i8(50)], [np.clip(sa8, -8, 50)], opset=13, ort=True)
case("clip_uint8_max_only", "Clip", [ua, None, u8(99)], [np.minimum(ua, 99)], opset=13, ort=True)
case("cast_float_to_int8", "Cast", [np.array([1.7, -1.7, 127.0, -128.0, 0.4], np.float32)], [i8([1, -1, 127, -128, 0])], attrs={"to": 3}, ort=True)
case("cast_float_to_uint8", "Cast", [np.array([1.7, 255.0, 0.9], np.float32)], [u8([1, 255, 0])], attrs={"to": 2}, ort=True)
case("cast_int64_to_int8_wraps", "Cast", [i64([300, -129, 5])], [i64([300, -129, 5]).astype(np.int8)], attrs={"to": 3}, ort=True)
case("cast_uint8_to_float", "Cast", [ua], [d(ua)], attrs={"to": 1}, ort=True)
case("cast_int8_to_int64", "Cast", [sa8], [sa8.astype(np.int64)], attrs={"to": 7}, ort=True)
case("where_uint8", "Where", [np.array([True, False, True, False]), ua, ub], [np.where(np.array([True, False, True, False]), ua, ub)], ort=True)
case("less_int8", "Less", [sa8, sb8], [np.less(sa8, sb8)], ort=True)
case("transpose_int8", "Transpose", [sa8], [sa8.transpose()], ort=True)
case("pad_uint8_value", "Pad", [ua, i64([0, 1, 1, 0]), u8(9)], [np.pad(ua, ((0, 1), (1, 0)), constant_values=9)], opset=13, ort=True)
case("concat_int8", "Concat", [sa8, sb8], [np.concatenate([sa8, sb8], axis=1)], attrs={"axis": 1}, ort=True)
case("gather_uint8", "Gather", [ua, i64([1, 0, 1])], [ua[[1, 0, 1]]], ort=True)

# ---- 16-bit and unsigned 32/64-bit integers: numpy's own results (wrap-around; uint64 beyond int64's range) -----------
u64a = np.array([[2**64 - 1, 2**63 + 5, 7], [0, 2**63, 2**40]], dtype=np.uint64)
u64b = np.array([2**63 + 6, 2**63 - 1, 9], dtype=np.uint64)
case("max_uint64_beyond_int64", "Max", [u64a, u64b], [np.maximum(u64a, u64b)], opset=13, ort=True)
case("min_uint64_beyond_int64", "Min", [u64a, u64b], [np.minimum(u64a, u64b)], opset=13, ort=True)
i16a, i16b = np.array([[32767, -32768, 5], [-3, 300, 0]], np.int16), np.array([1, -1, 200], np.int16)
case("add_int16_wraps", "Add", [i16a, i16b], [i16a + i16b], opset=14, ort=True)
# ONNX Runtime 1.31 has no int16 Min, no uint32 exponent for Pow and no uint64 Where: numpy alone for those three.
case("min_int16", "Min", [i16a, i16b], [np.minimum(i16a, i16b)], opset=13)
u16a, u16b = np.array([65535, 3, 1000], np.uint16), np.array([1, 5, 999], np.uint16)
case("sub_uint16_wraps", "Sub", [u16a, u16b], [u16a - u16b], opset=14, ort=True)
u32a, u32b = np.array([4294967295, 70000, 12], np.uint32), np.array([2, 70000, 5], np.uint32)
case("mul_uint32_wraps", "Mul", [u32a, u32b], [u32a * u32b], opset=14, ort=True)
case("div_uint32", "Div", [u32a, u32b], [u32a // u32b], opset=14, ort=True)
xp = np.array([[1.5, -2.0, 0.5], [3.0, -1.25, 2.0]], np.float32)
case("pow_float_uint32_exponent", "Pow", [xp, np.array([2, 3, 0], np.uint32)], [d(xp) ** np.array([2, 3, 0])], opset=15)
case("cast_uint64_to_int8_wraps", "Cast", [u64a], [u64a.astype(np.int8)], attrs={"to": 3}, ort=True)
case("cast_uint64_to_int64_wraps", "Cast", [u64a], [u64a.astype(np.int64)], attrs={"to": 7}, ort=True)
case("cast_int64_to_uint32_wraps", "Cast", [i64([-1, 2**32 + 3, 5])], [i64([-1, 2**32 + 3, 5]).astype(np.uint32)], attrs={"to": 12}, ort=True)
case("cast_int32_to_uint16_wraps", "Cast", [np.array([-2, 65537, 9], np.int32)], [np.array([-2, 65537, 9], np.int32).astype(np.uint16)], attrs={"to": 4}, ort=True)
case("cast_float_to_int16", "Cast", [np.array([1.7, -1.7, 32767.0, -32768.0], np.float32)], [np.array([1, -1, 32767, -32768], np.int16)], attrs={"to": 5}, ort=True)
case("cast_uint32_to_float", "Cast", [u32a], [d(u32a.astype(np.float32))], attrs={"to": 1}, ort=True)
case("where_uint64", "Where", [np.array([True, False, True]), u64b, u64a[0]], [np.where(np.array([True, False, True]), u64b, u64a[0])])
case("transpose_int16", "Transpose", [i16a], [i16a.transpose()], ort=True)

# ---- Cast to bfloat16: the nearest bfloat16 (ties to even), found here by comparing the two bfloat16 neighbours in
# float64 (not by the engine's add-and-mask), held as float32 -------------------------------------------------------
def nearest_bfloat16(x):
    out = []
    for v in np.asarray(x, np.float32).ravel():
        if not np.isfinite(v):
            out.append(float(v))
            continue
        bits = int(np.float32(v).view(np.uint32))
        lo_bits = bits & 0xFFFF0000
        lo = float(np.uint32(lo_bits).view(np.float32))
        # The next bfloat16 up in magnitude is |lo| + one unit in its last place (2^128 past the largest finite one,
        # which is infinity as a value, as IEEE rounding overflows).
        exponent = max((lo_bits >> 23) & 0xFF, 1) - 127
        hi_value = abs(lo) + 2.0 ** (exponent - 7)
        hi = float(np.uint32(lo_bits + 0x10000).view(np.float32))
        dl, dh = abs(abs(float(v)) - abs(lo)), abs(hi_value - abs(float(v)))
        # Toward the neighbour with an even last kept bit on a tie.
        out.append(lo if dl < dh or (dl == dh and (lo_bits >> 16) % 2 == 0) else hi)
    return np.array(out).reshape(np.shape(x))

xb = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8 + 2**-20), 0.1, -0.0, 3.3e38, 1e-40, 65504.0, -2.5e-3, 7.0],
              np.float32)
case("cast_float_to_bfloat16_rounds_to_nearest_even", "Cast", [xb], [nearest_bfloat16(xb)], attrs={"to": 16}, tol=0)

# ---- Cast to float16: numpy's float16 cast (nearest, ties to even; subnormals; overflow to infinity), held as float32 --
xh = np.array([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11 + 2**-20), 0.1, -0.0, 65504.0, 65519.0, 65520.0, -1e6,
               3e-5, 2**-25, 2**-25 + 2**-40, 1e-8, -2.5e-3, 7.0, np.inf, np.nan], np.float32)
case("cast_float_to_float16_rounds_to_nearest_even", "Cast", [xh], [xh.astype(np.float16)], attrs={"to": 10}, tol=0)
ih = i64([2049, 2051, -4097, 65519, 65520, -70000, 3, 0])
case("cast_int64_to_float16_rounds", "Cast", [ih], [ih.astype(np.float16)], attrs={"to": 10}, tol=0)

# ---- Cast to and from string: numpy's text of a float32 (str(np.float32)) and numpy's parse of text (as float32,
# and int64 for integers); kept as JSON (numpy holds strings as objects) ----------------------------------------------
def cast_strings():
    floats = np.array([0.0, -0.0, 1.0, 100.0, 1e-4, 9.9999e-5, 1e-5, 1.5e16, 1e16, 9.999999e15, 123456789.0, 3.4028235e38,
                       1.4e-45, 0.1, 1 / 3, -2.5, 65504.0, 1e7, 16777217.0, 0.5488135, -7.25e-8, np.nan, np.inf, -np.inf],
                      np.float32)
    texts = ["3.14", "1000", "1e-5", "1E8", "+INF", "INF", "inf", "-Inf", "NaN", "nan", "-0", "  2.5", ".5", "1.",
             "0.1", "16777217", "-3.4028235e38", "1e-46"]
    integers = ["100", "-7", "0", "9007199254740993"]
    return {"format": {"bits": [int(v) for v in floats.view(np.uint32)], "text": [str(v) for v in floats]},
            "parse_float": {"text": texts, "bits": [int(v) for v in np.array(texts, dtype=object).astype(np.float32).view(np.uint32)]},
            "parse_int64": {"text": integers, "values": [int(v) for v in np.array(integers, dtype=object).astype(np.int64)]}}


if __name__ == "__main__":
    with open(os.path.join(HERE, "cast_strings.json"), "w") as f:
        json.dump(cast_strings(), f, indent=1)
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    np.savez(os.path.join(HERE, "cases.npz"), **arrays)
    print(f"{len(cases)} cases, {len(arrays)} arrays")
