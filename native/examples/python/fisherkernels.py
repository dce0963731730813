"""A small ctypes binding of libfisherkernels.so (native/include/fisherkernels.h) for numpy users.

    FISHERKERNELS_LIBRARY=artifacts/native/libfisherkernels.so /usr/bin/python3 fisherkernels.py

runs the example at the bottom. Arrays are float32, row-major; inputs are converted, outputs are
written in place or returned.
"""
import ctypes
import os

import numpy as np

_f32 = ctypes.POINTER(ctypes.c_float)
_i64 = ctypes.POINTER(ctypes.c_int64)


class FisherKernelsError(Exception):
    """A non-zero fk_status with fk_last_error()'s message."""

    def __init__(self, status, message):
        super().__init__(f"{message} (fk_status {status})")
        self.status = status


def load_library(path=None):
    lib = ctypes.CDLL(path or os.environ.get("FISHERKERNELS_LIBRARY", "libfisherkernels.so"))
    lib.fk_abi_version.restype = ctypes.c_uint32
    lib.fk_last_error.restype = ctypes.c_char_p
    lib.fk_status_string.restype = ctypes.c_char_p
    lib.fk_status_string.argtypes = [ctypes.c_int]
    lib.fk_engine_create.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.fk_engine_destroy.argtypes = [ctypes.c_void_p]
    lib.fk_engine_destroy.restype = None
    lib.fk_kfac_accumulate.argtypes = [ctypes.c_void_p, _f32, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
                                       ctypes.c_float, _f32]
    lib.fk_woodbury_apply.argtypes = [ctypes.c_void_p, _f32, _f32, _f32, ctypes.c_int64, ctypes.c_int64, _f32,
                                      ctypes.c_int64, _f32]
    lib.fk_kron_quadratic.argtypes = [ctypes.c_void_p, _f32, ctypes.c_int64, _f32, ctypes.c_int64, ctypes.c_double,
                                      ctypes.c_double, _f32, ctypes.c_int64, _f32]
    lib.fk_model_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.fk_model_destroy.argtypes = [ctypes.c_void_p]
    lib.fk_model_destroy.restype = None
    lib.fk_model_score.argtypes = [ctypes.c_void_p, _i64, ctypes.c_int64, ctypes.c_int64, ctypes.c_char_p,
                                   ctypes.c_double, _f32, _f32, _f32]
    lib.fk_model_jvp.argtypes = [ctypes.c_void_p, _i64, ctypes.c_int64, ctypes.c_int64, ctypes.c_char_p, _f32,
                                 ctypes.c_int64]
    for name in ("fk_engine_create", "fk_kfac_accumulate", "fk_woodbury_apply", "fk_kron_quadratic",
                 "fk_model_load", "fk_model_score", "fk_model_jvp"):
        getattr(lib, name).restype = ctypes.c_int
    if lib.fk_abi_version() != 1:
        raise RuntimeError(f"libfisherkernels ABI {lib.fk_abi_version()}, this binding speaks 1")
    return lib


def _f32_in(array):
    return np.ascontiguousarray(array, dtype=np.float32)


def _ptr(array):
    return array.ctypes.data_as(_f32)


class Engine:
    def __init__(self, backend=None, lib=None):
        self._lib = lib or load_library()
        handle = ctypes.c_void_p()
        self._check(self._lib.fk_engine_create(backend.encode() if backend else None, ctypes.byref(handle)))
        self._handle = handle

    def close(self):
        if self._handle:
            self._lib.fk_engine_destroy(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check(self, status):
        if status != 0:
            raise FisherKernelsError(status, self._lib.fk_last_error().decode("utf-8"))

    def kfac_accumulate(self, x, factor, weight=1.0, append_one=False):
        """factor += weight * x~ᵀ x~ in place; factor must be a C-contiguous float32 array."""
        x = _f32_in(x)
        rows, cols = x.shape
        dim = cols + int(append_one)
        if factor.dtype != np.float32 or not factor.flags.c_contiguous or factor.shape != (dim, dim):
            raise ValueError(f"factor must be a C-contiguous float32 array of shape ({dim}, {dim})")
        self._check(self._lib.fk_kfac_accumulate(self._handle, _ptr(x), rows, cols, int(append_one), weight,
                                                 _ptr(factor)))
        return factor

    def woodbury_apply(self, d, u, s, b):
        """(diag(d) + U diag(s) Uᵀ)⁻¹ b."""
        d, u, s, b = _f32_in(d), _f32_in(u), _f32_in(s), _f32_in(b)
        n, r = u.shape
        k = b.shape[1]
        out = np.empty((n, k), dtype=np.float32)
        self._check(self._lib.fk_woodbury_apply(self._handle, _ptr(d), _ptr(u), _ptr(s), n, r, _ptr(b), k,
                                                _ptr(out)))
        return out

    def kron_quadratic(self, a_factor, g_factor, positions, prior_precision, xs):
        """vec(X_i)ᵀ (positions·A⊗G + prior_precision·I)⁻¹ vec(X_i) for each X_i [g × a] in xs."""
        a_factor, g_factor, xs = _f32_in(a_factor), _f32_in(g_factor), _f32_in(xs)
        count = xs.shape[0]
        out = np.empty(count, dtype=np.float32)
        self._check(self._lib.fk_kron_quadratic(self._handle, _ptr(a_factor), a_factor.shape[0], _ptr(g_factor),
                                                g_factor.shape[0], positions, prior_precision, _ptr(xs), count,
                                                _ptr(out)))
        return out


class Model:
    """An ONNX language model loaded on an engine (the engine must outlive it)."""

    def __init__(self, engine, onnx_path):
        self._engine = engine
        self._lib = engine._lib
        handle = ctypes.c_void_p()
        engine._check(self._lib.fk_model_load(engine._handle, os.fsencode(onnx_path), ctypes.byref(handle)))
        self._handle = handle

    def close(self):
        if self._handle:
            self._lib.fk_model_destroy(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def score(self, tokens, curvature_path=None, prior_precision=1.0):
        """(p, aleatoric, epistemic), each [batch, seq] float32, NaN where a position has no next-token target."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        batch, seq = tokens.shape
        p, aleatoric, epistemic = (np.empty((batch, seq), dtype=np.float32) for _ in range(3))
        curvature = os.fsencode(curvature_path) if curvature_path is not None else None
        self._engine._check(self._lib.fk_model_score(self._handle, tokens.ctypes.data_as(_i64), batch, seq, curvature,
                                                     prior_precision, _ptr(p), _ptr(aleatoric), _ptr(epistemic)))
        return p, aleatoric, epistemic

    def jvp(self, tokens, direction_path, vocab):
        """J·V of the logits, [batch, seq, vocab] float32, for the direction in a safetensors file."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        batch, seq = tokens.shape
        out = np.empty((batch, seq, vocab), dtype=np.float32)
        self._engine._check(self._lib.fk_model_jvp(self._handle, tokens.ctypes.data_as(_i64), batch, seq,
                                                   os.fsencode(direction_path), _ptr(out), out.size))
        return out


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    with Engine() as engine:
        x = rng.standard_normal((64, 8))
        a = engine.kfac_accumulate(x, np.zeros((9, 9), dtype=np.float32), weight=1 / 64, append_one=True)
        g = np.eye(4, dtype=np.float32)
        variances = engine.kron_quadratic(a, g, positions=64, prior_precision=1.0, xs=rng.standard_normal((3, 4, 9)))
        print("A diagonal:", np.round(np.diag(a), 4))
        print("gradient variances:", variances)
