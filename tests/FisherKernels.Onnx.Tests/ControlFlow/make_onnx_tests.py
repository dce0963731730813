#!/usr/bin/python3
"""ONNX's own backend tests for Loop, If and the sequence operators, made runnable by the engine.

Run with Debian's Python (python3-onnx 1.12):
    /usr/bin/python3 tests/FisherKernels.Onnx.Tests/ControlFlow/make_onnx_tests.py

The cases and their expected outputs come from the onnx package's generators (onnx.backend.test.case: the node
tests of Loop, If and SequenceInsert, and the sequence model tests test_sequence_model1-8, which cover
SequenceConstruct, SequenceEmpty, SequenceInsert, SequenceAt, SequenceErase, SequenceLength, SplitToSequence and
ConcatFromSequence), nothing is computed here. The engine takes tensors only at the graph's edges, so each model is
rewritten at its edges alone: a sequence input becomes one tensor input per element and a SequenceConstruct (an
empty one a SequenceEmpty), a sequence output one SequenceAt output per expected element. Cases with optional
values are left out here and listed in skipped.txt: NodeTests runs them (its runner takes optional inputs as they are).
Double tensors become float. Integer and bool inputs (trip counts, conditions, positions, split sizes) stay
inputs: the engine folds such inputs by value when it builds a plan. Writes <case>.onnx and onnx_tests.npz (<case>/in<i>, <case>/out<i>)
beside this script, and models of our own for the derivative and refusal tests (derivative_model, body_reads_model).
"""
import importlib
import io
import os
import zipfile

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.test.case import node as node_cases
from onnx.backend.test.case import model as model_cases

HERE = os.path.dirname(os.path.abspath(__file__))


def collect():
    # Importing a case module runs its generators (onnx's own collect_testcases imports every module, and some
    # no longer import under numpy 1.24).
    for module in ("loop", "if", "sequenceinsert"):
        importlib.import_module("onnx.backend.test.case.node." + module)
    importlib.import_module("onnx.backend.test.case.model.sequence")
    cases = [c for c in node_cases._NodeTestCases if c.name.startswith(("test_loop", "test_if", "test_sequence_insert"))]
    cases += [c for c in model_cases._SimpleModelTestCases if c.name.startswith("test_sequence_model")]
    unique = {}
    for c in cases:
        unique[c.name] = c
    return [unique[n] for n in sorted(unique)]


def is_sequence(value_info):
    return value_info.type.HasField("sequence_type")


def has_optional(graph):
    """Optional values anywhere (graph edges, sub-graphs, Optional* nodes)."""
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.type.HasField("optional_type") or (is_sequence(v) and v.type.sequence_type.elem_type.HasField("optional_type")):
            return True
    for n in graph.node:
        if n.op_type.startswith("Optional"):
            return True
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH and has_optional(a.g):
                return True
    return False


def tensor_input(name, array):
    return helper.make_tensor_value_info(name, onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[array.dtype], array.shape)


def const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value)))


def as_float32(info):
    """A double tensor's value info as float (the engine computes in float32; the values are converted with it)."""
    if info.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
        info = onnx.ValueInfoProto.FromString(info.SerializeToString())
        info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return info


def as_float32_array(value):
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype == np.float64 else value


def rewrite(case, inputs, outputs):
    """The case's model with tensors at its edges; returns (model, input arrays, output arrays)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    graph = model.graph
    new_inputs, feeds, front = [], [], []
    for info, value in zip(list(graph.input), inputs):
        if not is_sequence(info):
            new_inputs.append(as_float32(info))
            feeds.append(as_float32_array(value))
            continue
        names = ["%s_%d" % (info.name, i) for i in range(len(value))]
        for n, v in zip(names, value):
            new_inputs.append(tensor_input(n, v))
            feeds.append(v)
        elem = info.type.sequence_type.elem_type.tensor_type.elem_type
        front.append(helper.make_node("SequenceConstruct", names, [info.name]) if names
                     else helper.make_node("SequenceEmpty", [], [info.name], dtype=elem))
    new_outputs, expected, back = [], [], []
    for info, value in zip(list(graph.output), outputs):
        if not is_sequence(info):
            new_outputs.append(as_float32(info))
            value = as_float32_array(value)
            expected.append(value)
            continue
        for i, v in enumerate(value):
            name = "%s_%d" % (info.name, i)
            position = "%s_position_%d" % (info.name, i)
            back.append(helper.make_node("Constant", [], [position], value=numpy_helper.from_array(np.array(i, dtype=np.int64))))
            back.append(helper.make_node("SequenceAt", [info.name, position], [name]))
            v = as_float32_array(v)
            new_outputs.append(tensor_input(name, v))
            expected.append(v)
    nodes = front + list(graph.node) + back
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.extend(new_inputs)
    del graph.output[:]
    graph.output.extend(new_outputs)
    onnx.checker.check_model(model)
    return model, feeds, expected


def derivative_model(data_dependent=None):
    """Floats through every construct at once, for the derivative tests (the expected values come from ONNX Runtime
    and finite differences in the C# test, not from here). Parameters w [3, 4] and s [4]:
        seq = SplitToSequence(x * w, [1, 2])             two parts [1, 4], [2, 4]
        Loop over SequenceLength(seq) iterations, carrying a sequence:
            t = ReduceSum(SequenceAt(seq, i), axis 0) * s  (seq and s from the outer scope)
            carried: SequenceInsert(acc, t); scanned: If(i < 1) then Tanh(t) else t * s (an If inside the body, its
            branches reading t from the body and s from the top: a condition known per iteration)
        z = ConcatFromSequence(carried, new_axis) + scanned   [2, 1, 4]
        y = If(SequenceLength(seq) > 1) then z * z else -z
    With data_dependent "if", the If's condition is ReduceSum(w) > 0 instead, and with "loop" the trip count is
    n - Cast(ReduceSum(w) > 0): values a plan that differentiates with respect to w cannot know when it is built."""
    f = onnx.TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("SequenceAt", ["seq", "i"], ["e"]),
         const("axes0", np.array([0], dtype=np.int64)),
         helper.make_node("ReduceSum", ["e", "axes0"], ["r"], keepdims=1),
         helper.make_node("Mul", ["r", "s"], ["t"]),
         helper.make_node("SequenceInsert", ["acc", "t"], ["acc_out"]),
         helper.make_node("Identity", ["c"], ["c_out"]),
         const("first", np.int64(1)),
         helper.make_node("Less", ["i", "first"], ["is_first"]),
         helper.make_node("If", ["is_first"], ["scan"], name="inner", then_branch=helper.make_graph(
             [helper.make_node("Tanh", ["t"], ["tanh_t"])], "inner_then", [], [helper.make_tensor_value_info("tanh_t", f, [1, 4])]),
             else_branch=helper.make_graph(
             [helper.make_node("Mul", ["t", "s"], ["ts"])], "inner_else", [], [helper.make_tensor_value_info("ts", f, [1, 4])]))],
        "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("acc", f, None)],
        [helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("acc_out", f, None),
         helper.make_tensor_value_info("scan", f, [1, 4])])
    then_branch = helper.make_graph([helper.make_node("Mul", ["z", "z"], ["then_y"])], "then",
                                    [], [helper.make_tensor_value_info("then_y", f, [2, 1, 4])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["z"], ["else_y"])], "else",
                                    [], [helper.make_tensor_value_info("else_y", f, [2, 1, 4])])
    positive = [helper.make_node("ReduceSum", ["w"], ["w_sum"], keepdims=0), const("zero", np.float32(0)),
                helper.make_node("Greater", ["w_sum", "zero"], ["positive"])]
    condition = ([helper.make_node("Identity", ["positive"], ["flag"])] if data_dependent == "if" else
                 [const("one", np.int64(1)), helper.make_node("Greater", ["n", "one"], ["flag"])])
    trips = ([helper.make_node("Cast", ["positive"], ["positive_int"], to=onnx.TensorProto.INT64),
              helper.make_node("Sub", ["n", "positive_int"], ["trips"])] if data_dependent == "loop" else
             [helper.make_node("Identity", ["n"], ["trips"])])
    nodes = [helper.make_node("Mul", ["x", "w"], ["h"]),
             helper.make_node("SplitToSequence", ["h", "splits"], ["seq"], axis=0),
             helper.make_node("SequenceLength", ["seq"], ["n"]),
             helper.make_node("SequenceEmpty", [], ["empty"], dtype=f),
             const("true", True)] + positive + trips + [
             helper.make_node("Loop", ["trips", "true", "empty"], ["carried", "scanned"], name="loop", body=body),
             helper.make_node("ConcatFromSequence", ["carried"], ["stacked"], axis=0, new_axis=1),
             helper.make_node("Add", ["stacked", "scanned"], ["z"])] + condition + [
             helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    rng = np.random.default_rng(16)
    graph = helper.make_graph(
        nodes, "flow_derivatives", [helper.make_tensor_value_info("x", f, [3, 4])],
        [helper.make_tensor_value_info("y", f, [2, 1, 4])],
        [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "s"),
         numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "splits")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def body_reads_model(op_type="Reshape", domain=""):
    """y = Loop(2 iterations) of acc <- acc + op(x, shape), with the body's op reading x and the graph input 'shape'
    (int64 [2]) from the outer scope. With Reshape, 'shape' sets a shape inside the body: the plan needs its value.
    With an operator of an unknown domain, the model must be refused when it loads, naming the body's node."""
    f = onnx.TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node(op_type, ["x", "shape"], ["r"], name="body_op", domain=domain),
         helper.make_node("Add", ["acc", "r"], ["acc_out"]),
         helper.make_node("Identity", ["c"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", f, None)],
        [helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", f, None)])
    graph = helper.make_graph(
        [const("two", np.int64(2)), const("true", True), const("zeros", np.zeros((4, 3), dtype=np.float32)),
         helper.make_node("Loop", ["two", "true", "zeros"], ["y"], name="loop", body=body)],
        "body_reads", [helper.make_tensor_value_info("x", f, [3, 4]), helper.make_tensor_value_info("shape", onnx.TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", f, [4, 3])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def optional_map_model():
    """Floats through SequenceMap and the Optional operators, for the derivative test; parameters w [4] and s [4]:
        seq = SplitToSequence(x * w, [1, 2]);  mapped = SequenceMap(seq, s) with body e, t -> Tanh(e) * t
        opt = Optional(mapped);  got = OptionalGetElement(opt);  z = ConcatFromSequence(got, axis 0)   [3, 4]
        y = If(OptionalHasElement(opt)) then z * z else -z, plus OptionalGetElement(Optional(w))
    Returns the model and, for x = OPTIONAL_MAP_X, y computed here in float64."""
    f = onnx.TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Tanh", ["e"], ["te"]), helper.make_node("Mul", ["te", "t"], ["mapped_e"])], "map_body",
        [helper.make_tensor_value_info("e", f, None), helper.make_tensor_value_info("t", f, [4])],
        [helper.make_tensor_value_info("mapped_e", f, None)])
    then_branch = helper.make_graph([helper.make_node("Mul", ["z", "z"], ["then_y"])], "then", [], [helper.make_tensor_value_info("then_y", f, [3, 4])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["z"], ["else_y"])], "else", [], [helper.make_tensor_value_info("else_y", f, [3, 4])])
    nodes = [helper.make_node("Mul", ["x", "w"], ["h"]),
             helper.make_node("SplitToSequence", ["h", "splits"], ["seq"], axis=0),
             helper.make_node("SequenceMap", ["seq", "s"], ["mapped"], name="map", body=body),
             helper.make_node("Optional", ["mapped"], ["opt"]),
             helper.make_node("OptionalHasElement", ["opt"], ["has"]),
             helper.make_node("OptionalGetElement", ["opt"], ["got"]),
             helper.make_node("ConcatFromSequence", ["got"], ["z"], axis=0),
             helper.make_node("If", ["has"], ["branch_y"], name="branch", then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Optional", ["w"], ["opt_w"]),
             helper.make_node("OptionalGetElement", ["opt_w"], ["w_again"]),
             helper.make_node("Add", ["branch_y", "w_again"], ["y"])]
    rng = np.random.default_rng(17)
    w, s = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(nodes, "flow_optional_map", [helper.make_tensor_value_info("x", f, [3, 4])],
                              [helper.make_tensor_value_info("y", f, [3, 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(s, "s"),
                               numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "splits")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = np.linspace(-1.5, 1.2, 12).reshape(3, 4).astype(np.float32)
    z = np.tanh(x.astype(np.float64) * w) * s.astype(np.float64)
    return model, x, z * z + w.astype(np.float64)


LOOP_LAYER = dict(vocab=7, width=4, trips=3, tokens=np.array([[1, 4, 2, 6, 0], [3, 3, 5, 1, 2]], dtype=np.int64))


def loop_layer_model(in_if=False):
    """A language model whose hidden layer is applied inside a Loop body, 3 times with the same weights (outer-scope
    initializers W [4, 4] and b [4]):  h0 = E[input_ids];  Loop 3 times: h <- Tanh(MatMul(h, W) + b);  logits = MatMul(h, U).
    Layer discovery must find W (with bias b, applied once per iteration) and U. With in_if, the layer sits in the
    then-branch of an If inside the body, taken while the iteration number is below 2; the else-branch is h <- Tanh(h)
    (so W is applied twice)."""
    f = onnx.TensorProto.FLOAT
    v, d = LOOP_LAYER["vocab"], LOOP_LAYER["width"]
    layer = [helper.make_node("MatMul", ["h", "W"], ["hw"], name="body_matmul"),
             helper.make_node("Add", ["hw", "b"], ["z"], name="body_bias"),
             helper.make_node("Tanh", ["z"], ["h_next"])]
    if in_if:
        hidden = [helper.make_tensor_value_info("h_next", f, ["batch", "seq", d])]
        layer = [const("two", np.int64(2)), helper.make_node("Less", ["i", "two"], ["early"]),
                 helper.make_node("If", ["early"], ["h_next"], name="choose",
                                  then_branch=helper.make_graph(layer, "then", [], hidden),
                                  else_branch=helper.make_graph([helper.make_node("Tanh", ["h"], ["h_plain"])], "else", [],
                                                                [helper.make_tensor_value_info("h_plain", f, ["batch", "seq", d])]))]
    body = helper.make_graph(
        layer + [helper.make_node("Identity", ["c"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", f, ["batch", "seq", d])],
        [helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_next", f, ["batch", "seq", d])])
    rng = np.random.default_rng(20)
    weights = {"E": rng.standard_normal((v, d)), "W": rng.standard_normal((d, d)) * 0.8, "b": rng.standard_normal(d) * 0.3,
               "U": rng.standard_normal((d, v))}
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "input_ids"], ["h0"]),
         const("trips", np.int64(LOOP_LAYER["trips"])), const("true", True),
         helper.make_node("Loop", ["trips", "true", "h0"], ["h_last"], name="loop", body=body),
         helper.make_node("MatMul", ["h_last", "U"], ["logits"], name="head")],
        "flow_loop_layer", [helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", f, ["batch", "seq", v])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def loop_layer_references(model, layered=(True, True, True)):
    """Float64 references for loop_layer_model (from its float32 weights, computed here by hand): the logits; the
    empirical-Fisher K-FAC factors of SPEC §3 with next-token targets, each iteration's rows counted as positions (the
    expand convention: W's A = mean of [h_k; 1][h_k; 1]^T over 2·5 positions × 3 iterations, G = mean of g_k g_k^T with
    g_k = dL/dz_k); and the isotropic epistemic score ||grad p_t||^2 over W, b and U of every targeted position.
    layered[j]: whether iteration j applies the layer (else h <- tanh(h), loop_layer_model(in_if=True))."""
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    tokens, k = LOOP_LAYER["tokens"], LOOP_LAYER["trips"]
    uses = [j for j in range(k) if layered[j]]
    targets = np.concatenate([tokens[:, 1:], np.full((tokens.shape[0], 1), -100)], axis=1)
    hs = [w["E"][tokens]]
    for j in range(k):
        hs.append(np.tanh(hs[-1] @ w["W"] + w["b"]) if layered[j] else np.tanh(hs[-1]))
    logits = hs[-1] @ w["U"]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)

    def backward(dlogits):
        """dL/dz_k for k = 0..K-1 (the body's layer outputs), and the gradients of W, b and U."""
        dh = dlogits @ w["U"].T
        dz = [None] * k
        for j in reversed(range(k)):
            dz[j] = dh * (1 - hs[j + 1] ** 2)
            dh = dz[j] @ w["W"].T if layered[j] else dz[j]
        dW = sum(np.einsum("bsi,bso->io", hs[j], dz[j]) for j in uses)
        db = sum(dz[j].sum(axis=tuple(range(dz[j].ndim - 1))) for j in uses)
        dU = np.einsum("bsi,bso->io", hs[-1], dlogits)
        return dz, dW, db, dU

    onehot = np.zeros_like(logits)
    mask = targets != -100
    onehot[mask, targets[mask]] = 1
    dz, _, _, _ = backward((p - onehot) * mask[..., None])
    positions = tokens.size
    rows_in = np.concatenate([np.concatenate([hs[j], np.ones(hs[j].shape[:-1] + (1,))], -1).reshape(-1, 5) for j in uses])
    rows_g = np.concatenate([dz[j].reshape(-1, 4) for j in uses])
    dl = ((p - onehot) * mask[..., None]).reshape(-1, logits.shape[-1])
    refs = {"logits": logits, "A_W": rows_in.T @ rows_in / (positions * len(uses)), "G_W": rows_g.T @ rows_g / (positions * len(uses)),
            "A_U": hs[-1].reshape(-1, 4).T @ hs[-1].reshape(-1, 4) / positions, "G_U": dl.T @ dl / positions}
    isotropic = np.zeros(tokens.shape)
    for bi, t in zip(*np.nonzero(mask)):
        y = targets[bi, t]
        seed = np.zeros_like(logits)
        seed[bi, t] = p[bi, t, y] * ((np.arange(logits.shape[-1]) == y) - p[bi, t])  # d p_t / d logits_t
        _, dW, db, dU = backward(seed)
        isotropic[bi, t] = (dW ** 2).sum() + (db ** 2).sum() + (dU ** 2).sum()
    refs["isotropic"] = isotropic
    refs["tokens"] = tokens
    return refs


def main():
    arrays, skipped, written = {}, [], []
    for case in collect():
        (inputs, outputs), = case.data_sets
        if has_optional(case.model.graph):
            # Run natively by NodeTests (make_node_tests.py), whose runner feeds optional and sequence inputs as they are.
            skipped.append("%s: optional values: run by NodeTests/node_tests.json" % case.name)
            continue
        model, feeds, expected = rewrite(case, inputs, outputs)
        onnx.save(model, os.path.join(HERE, case.name + ".onnx"))
        for i, v in enumerate(feeds):
            arrays["%s/in%d" % (case.name, i)] = np.asarray(v)
        for i, v in enumerate(expected):
            arrays["%s/out%d" % (case.name, i)] = np.asarray(v)
        written.append(case.name)
    onnx.save(derivative_model(), os.path.join(HERE, "flow_derivatives.onnx"))
    onnx.save(derivative_model("if"), os.path.join(HERE, "flow_data_dependent_if.onnx"))
    onnx.save(derivative_model("loop"), os.path.join(HERE, "flow_data_dependent_loop.onnx"))
    onnx.save(body_reads_model(), os.path.join(HERE, "flow_value_in_body.onnx"))
    onnx.save(body_reads_model("Mystery", "com.example"), os.path.join(HERE, "flow_unsupported_in_body.onnx"))
    optional_map, x, y = optional_map_model()
    onnx.save(optional_map, os.path.join(HERE, "flow_optional_map.onnx"))
    arrays["flow_optional_map/x"], arrays["flow_optional_map/y"] = x, y
    loop_layer = loop_layer_model()
    onnx.save(loop_layer, os.path.join(HERE, "flow_loop_layer.onnx"))
    for key, value in loop_layer_references(loop_layer).items():
        arrays["flow_loop_layer/" + key] = value
    if_layer = loop_layer_model(in_if=True)
    onnx.save(if_layer, os.path.join(HERE, "flow_loop_if_layer.onnx"))
    for key, value in loop_layer_references(if_layer, layered=(True, True, False)).items():
        arrays["flow_loop_if_layer/" + key] = value
    # A zip written by hand with fixed timestamps, so that a rerun gives the same bytes.
    with zipfile.ZipFile(os.path.join(HERE, "onnx_tests.npz"), "w", zipfile.ZIP_DEFLATED) as z:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.save(buffer, np.require(arrays[key], requirements="C"))  # keeps 0-d arrays 0-d
            z.writestr(zipfile.ZipInfo(key + ".npy", date_time=(2026, 1, 1, 0, 0, 0)), buffer.getvalue())
    with open(os.path.join(HERE, "skipped.txt"), "w") as f:
        f.write("".join(line + "\n" for line in skipped))
    print("wrote %d cases (%s); skipped %d" % (len(written), ", ".join(written), len(skipped)))


if __name__ == "__main__":
    main()
