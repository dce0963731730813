"""Compares two .npy arrays (float32 or float64, little-endian, C order) with the standard library alone (the device
machine may have no numpy): prints max |a - b|, the largest |reference| and PASS when max |a - b| <= TOL * max |reference|.

    python3 perf/gpu/compare_npy.py REFERENCE.npy CANDIDATE.npy [TOL]     # TOL default 1e-4 (the CPU path's tolerance)

Exit status 0 on PASS, 1 on FAIL, 2 on unreadable input.
"""
import array
import ast
import sys


def read_npy(path):
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path}: not an .npy file")
        major = f.read(2)[0]
        length = int.from_bytes(f.read(2 if major == 1 else 4), "little")
        header = ast.literal_eval(f.read(length).decode("latin1"))
        code = {"<f4": "f", "<f8": "d"}.get(header["descr"])
        if code is None or header["fortran_order"]:
            raise ValueError(f"{path}: {header['descr']} (fortran_order={header['fortran_order']}) is not float32/float64 in C order")
        values = array.array(code)
        values.frombytes(f.read())
        return tuple(header["shape"]), values


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    tolerance = float(sys.argv[3]) if len(sys.argv) == 4 else 1e-4
    try:
        (ref_shape, ref), (shape, values) = read_npy(sys.argv[1]), read_npy(sys.argv[2])
    except (OSError, ValueError, SyntaxError) as e:
        print(f"compare_npy: {e}", file=sys.stderr)
        return 2
    if ref_shape != shape:
        print(f"FAIL shape {shape} != reference {ref_shape}")
        return 1
    scale = max(abs(v) for v in ref)
    worst = max(abs(a - b) for a, b in zip(ref, values))
    ok = worst <= tolerance * scale and worst == worst  # NaN fails
    print(f"{'PASS' if ok else 'FAIL'} max|d| = {worst:.3g}, allowed {tolerance:g} x {scale:.3g} = {tolerance * scale:.3g} ({sys.argv[2]} vs {sys.argv[1]})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
