"""Compares a fit's curvature or a score's JSON with a reference, with the standard library alone (the device machine may
have no numpy), as the test suite does (SPEC §7):

    python3 perf/gpu/compare_results.py curvature REFERENCE.safetensors CANDIDATE.safetensors [TOL]
        every tensor of the reference: relative error |a - b| / |reference| <= TOL (default 1e-3)
    python3 perf/gpu/compare_results.py scores REFERENCE.json CANDIDATE.json [TOL]
        p within 1e-4 at every scored position; the relative error of the per-token and of the per-sequence epistemic
        scores <= TOL (default 1e-3). A reference with a top-level entry per method (the torch goldens' scores.json)
        is read at the candidate's "method".

Prints one PASS or FAIL line; exit status 0 on PASS, 1 on FAIL, 2 on unreadable input.
"""
import array
import json
import math
import struct
import sys


def read_safetensors(path):
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(length))
        data = f.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        code = {"F32": "f", "F64": "d"}.get(entry["dtype"])
        if code is None:
            raise ValueError(f"{path}: tensor '{name}' is {entry['dtype']}, not F32/F64")
        start, end = entry["data_offsets"]
        values = array.array(code)
        values.frombytes(data[start:end])
        tensors[name] = values
    return tensors


def relative_error(reference, candidate):
    diff = sum((a - b) ** 2 for a, b in zip(reference, candidate))
    norm = sum(a * a for a in reference)
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)


def curvature(reference_path, candidate_path, tolerance):
    reference, candidate = read_safetensors(reference_path), read_safetensors(candidate_path)
    missing = sorted(set(reference) - set(candidate))
    if missing:
        return False, f"missing tensors {missing[:3]}"
    worst, name = max((relative_error(reference[n], candidate[n]), n) for n in reference)
    return worst <= tolerance, f"worst tensor '{name}' relative error {worst:.3g}, allowed {tolerance:g} ({len(reference)} tensors)"


def scores(reference_path, candidate_path, tolerance):
    with open(reference_path) as f:
        reference = json.load(f)
    with open(candidate_path) as f:
        candidate = json.load(f)
    if "sequences" not in reference:
        reference = reference[candidate["method"]]
    token_ref, token_got, seq_ref, seq_got, worst_p = [], [], [], [], 0.0
    if len(reference["sequences"]) != len(candidate["sequences"]):
        return False, f"{len(candidate['sequences'])} sequences, the reference has {len(reference['sequences'])}"
    for r, c in zip(reference["sequences"], candidate["sequences"]):
        seq_ref.append(r["epistemic"])
        seq_got.append(c["epistemic"])
        if len(r["tokens"]) != len(c["tokens"]):
            return False, f"sequence {c['index']}: {len(c['tokens'])} positions, the reference has {len(r['tokens'])}"
        for rt, ct in zip(r["tokens"], c["tokens"]):
            if rt["position"] != ct["position"]:
                return False, f"position {ct['position']} where the reference has {rt['position']}"
            worst_p = max(worst_p, abs(rt["p"] - ct["p"]))
            token_ref.append(rt["epistemic"])
            token_got.append(ct["epistemic"])
    tokens, sequences = relative_error(token_ref, token_got), relative_error(seq_ref, seq_got)
    ok = worst_p <= 1e-4 and tokens <= tolerance and sequences <= tolerance
    return ok, f"method {candidate['method']}: max|dp| {worst_p:.3g}, token epistemic relative error {tokens:.3g}, sequence {sequences:.3g}, allowed {tolerance:g}"


def main():
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in ("curvature", "scores"):
        print(__doc__, file=sys.stderr)
        return 2
    tolerance = float(sys.argv[4]) if len(sys.argv) == 5 else 1e-3
    try:
        ok, message = (curvature if sys.argv[1] == "curvature" else scores)(sys.argv[2], sys.argv[3], tolerance)
    except (OSError, ValueError, KeyError) as e:
        print(f"compare_results: {e}", file=sys.stderr)
        return 2
    print(f"{'PASS' if ok else 'FAIL'} {message} ({sys.argv[3]} vs {sys.argv[2]})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
