#!/usr/bin/python3
"""ONNX's own backend node tests for the operators the engine supports, from the onnx package's test-case generators.

Run with Debian's Python (python3-onnx 1.12, numpy 1.24):
    /usr/bin/python3 tests/FisherKernels.Onnx.Tests/NodeTests/make_node_tests.py
Writes node_tests.json (per case: name, op types, opset, input and output names, rtol/atol as ONNX's runner uses them,
the sequence inputs and outputs with their lengths, the optional inputs given as none, string tensors' shapes and values) and node_tests.npz (per case:
the model's bytes as uint8 "<name>/model", inputs "<name>/in<i>", expected outputs "<name>/out<i>"; element j of a
sequence as "<name>/in<i>[j]" or "<name>/out<i>[j]") beside this script. A case is kept when every node of its graph is a default-domain operator the
engine's registry lists (OperatorRegistry.cs is read for the names); "_expanded" cases (a function's body) included.
"""
import json, os, re, sys
import numpy as np

# onnx 1.12's generators still use the aliases numpy 1.24 removed.
for alias, value in {"float": float, "int": int, "bool": bool, "object": object, "complex": complex}.items():
    if not hasattr(np, alias):
        setattr(np, alias, value)
import onnx
import onnx.backend.test.case.node as node_cases

# The .npy types FisherKernels.IO.NpyFile reads.
NPY_TYPES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}
BFLOAT16 = onnx.TensorProto.BFLOAT16
HERE = os.path.dirname(os.path.abspath(__file__))
REGISTRY = os.path.join(HERE, "..", "..", "..", "src", "FisherKernels.Onnx", "Operators", "OperatorRegistry.cs")


def supported_ops():
    src = open(REGISTRY).read()
    ops = set(re.findall(r'Onnx\("(\w+)"', src))
    for group in re.findall(r'new\[\] \{([^}]*)\}\s*\.Select\(op => Onnx', src):
        ops |= set(re.findall(r'"(\w+)"', group))
    return ops


def all_nodes(graph):
    """The graph's nodes and those of every subgraph (If's branches, Loop's body), which must be supported too."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from all_nodes(g)


def is_strings(a):
    """A string tensor (numpy holds them as objects): kept in node_tests.json, as .npy would need pickling."""
    return a.dtype == object and all(isinstance(v, str) for v in a.ravel())


def widen_bfloat16(bits):
    """bfloat16 values from their uint16 bits (how onnx 1.12 stores them), exactly, as float32: what the engine holds."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_bfloat16(x):
    """float32 to bfloat16 rounded to nearest, ties to even (the ONNX specification's Cast, onnx >= 1.14's reference);
    NaN stays a quiet NaN of its sign. Returned widened to float32."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32)
    rounded = np.where(np.isnan(x), (bits >> 16).astype(np.uint32) | 0x40, rounded)
    return widen_bfloat16(rounded.astype(np.uint16))


def bfloat16_as_float32(graph, inputs, outputs):
    """A Cast/CastLike case with bfloat16 values: each as float32. onnx 1.12's expected float -> bfloat16 outputs are
    truncated (its generator drops the low 16 bits); checked to be exactly that, they are replaced by the rounding the
    specification asks for."""
    assert {n.op_type for n in graph.node} <= {"Cast", "CastLike"}, [n.op_type for n in graph.node]
    is_bf16 = [v.type.tensor_type.elem_type == BFLOAT16 for v in list(graph.input) + list(graph.output)]
    inputs = [widen_bfloat16(a) if b else a for a, b in zip(inputs, is_bf16)]
    note = None
    new_outputs = []
    for a, b in zip(outputs, is_bf16[len(inputs):]):
        if b:
            x = np.asarray(inputs[0], np.float32)
            assert np.array_equal((x.view(np.uint32) >> 16).astype(np.uint16), a), "onnx's expected bfloat16 is not x truncated"
            a = round_to_bfloat16(x)
            note = "expected output rounded to nearest even bfloat16 (onnx 1.12's generator truncates)"
        new_outputs.append(a)
    return inputs, new_outputs, note


def main():
    ops = supported_ops()
    np.random.seed(0)
    cases, arrays, left_out = [], {}, {}
    seen = {}
    for case in node_cases.collect_testcases(None):
        # onnx 1.12 gives a few different cases one name: number the repeats.
        seen[case.name] = seen.get(case.name, 0) + 1
        name = case.name if seen[case.name] == 1 else f"{case.name}_{seen[case.name]}"
        graph = case.model.graph
        types = sorted({n.op_type for n in graph.node})
        if not {n.op_type for n in all_nodes(graph)} <= ops or any(n.domain not in ("", "ai.onnx") for n in all_nodes(graph)):
            continue
        inputs, outputs = case.data_sets[0]
        # A sequence (a list) is its elements; an optional input given as None is left out of the feeds.
        arrs = [np.asarray(e) for a in list(inputs) + list(outputs) if a is not None for e in (a if isinstance(a, list) else [a])]
        odd = sorted({a.dtype.name for a in arrs if a.dtype.str[1:] not in NPY_TYPES and not is_strings(a)})
        if odd:
            # Neither the engine nor the tests' .npy reader has these element types.
            left_out[name] = "element type " + ", ".join(odd)
            continue
        initializers = {t.name for t in graph.initializer}
        names_in = [v.name for v in graph.input if v.name not in initializers]
        names_out = [v.name for v in graph.output]
        assert len(names_in) == len(inputs) and len(names_out) == len(outputs), name
        note = None
        if any(v.type.tensor_type.elem_type == BFLOAT16 for v in list(graph.input) + list(graph.output)):
            inputs, outputs, note = bfloat16_as_float32(graph, inputs, outputs)
        arrays[f"{name}/model"] = np.frombuffer(case.model.SerializeToString(), dtype=np.uint8)
        sequences, absent, strings = {}, [], {}
        for kind, values in (("in", inputs), ("out", outputs)):
            for i, a in enumerate(values):
                if a is None:
                    assert kind == "in", name
                    absent.append(i)
                elif isinstance(a, list):
                    sequences[f"{kind}{i}"] = len(a)
                    for j, e in enumerate(a):
                        arrays[f"{name}/{kind}{i}[{j}]"] = np.require(e, requirements="C")
                elif is_strings(np.asarray(a)):
                    strings[f"{kind}{i}"] = {"shape": list(np.shape(a)), "values": [str(v) for v in np.asarray(a).ravel()]}
                else:
                    arrays[f"{name}/{kind}{i}"] = np.require(a, requirements="C")
        opset = next(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))
        cases.append({"name": name, "ops": types, "opset": opset, "inputs": names_in, "outputs": names_out,
                      "rtol": case.rtol, "atol": case.atol, **({"note": note} if note else {}),
                      **({"sequences": sequences} if sequences else {}), **({"absent_inputs": absent} if absent else {}),
                      **({"strings": strings} if strings else {})})
    cases.sort(key=lambda c: c["name"])
    with open(os.path.join(HERE, "node_tests.json"), "w") as f:
        json.dump({"onnx": onnx.__version__, "cases": cases, "left_out": left_out}, f, indent=1, sort_keys=True)
    np.savez_compressed(os.path.join(HERE, "node_tests.npz"), **arrays)
    print(f"{len(cases)} cases, {len(left_out)} left out", file=sys.stderr)


if __name__ == "__main__":
    main()
