"""The C ABI through ctypes, checked against numpy float64 (run by CTest: native/CMakeLists.txt)."""
import ctypes
import unittest

import numpy as np

from fisherkernels import Engine, FisherKernelsError, load_library

FK_ERR_INVALID_ARGUMENT = 1
FK_ERR_UNSUPPORTED = 4


def relative_error(got, ref):
    return np.linalg.norm(got - ref) / np.linalg.norm(ref)


def spd(rng, n):
    b = rng.uniform(-1, 1, (n, n))
    return b @ b.T / n + 0.1 * np.eye(n)


class KernelTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lib = load_library()
        cls.engine = Engine("cpu", cls.lib)

    @classmethod
    def tearDownClass(cls):
        cls.engine.close()

    def setUp(self):
        self.rng = np.random.default_rng(7)

    def test_kfac_accumulate(self):
        for append_one in (False, True):
            x = self.rng.standard_normal((50, 11)).astype(np.float32)
            start = spd(self.rng, 11 + append_one).astype(np.float32)
            xt = np.hstack([x, np.ones((50, 1), np.float32)]) if append_one else x
            ref = start.astype(np.float64) + 0.5 * xt.astype(np.float64).T @ xt.astype(np.float64)
            got = self.engine.kfac_accumulate(x, start.copy(), weight=0.5, append_one=append_one)
            self.assertLessEqual(relative_error(got, ref), 1e-5)

    def test_woodbury_apply(self):
        n, r, k = 40, 6, 3
        d = self.rng.uniform(1, 2, n)
        u = self.rng.uniform(-0.5, 0.5, (n, r))
        s = self.rng.uniform(0.5, 1.5, r)
        b = self.rng.standard_normal((n, k))
        d, u, s, b = (v.astype(np.float32) for v in (d, u, s, b))
        dense = np.diag(d.astype(np.float64)) + u.astype(np.float64) @ np.diag(s) @ u.T.astype(np.float64)
        ref = np.linalg.solve(dense, b.astype(np.float64))
        self.assertLessEqual(relative_error(self.engine.woodbury_apply(d, u, s, b), ref), 1e-5)

    def test_kron_quadratic(self):
        a, g, count, positions, tau = 6, 5, 4, 24.0, 0.7
        af, gf = spd(self.rng, a).astype(np.float32), spd(self.rng, g).astype(np.float32)
        xs = self.rng.standard_normal((count, g, a)).astype(np.float32)
        # Row-major vec(X) for X [g × a] pairs with G ⊗ A.
        precision = positions * np.kron(gf.astype(np.float64), af.astype(np.float64)) + tau * np.eye(a * g)
        flat = xs.reshape(count, -1).astype(np.float64)
        ref = np.einsum("ij,ij->i", flat, np.linalg.solve(precision, flat.T).T)
        got = self.engine.kron_quadratic(af, gf, positions, tau, xs)
        self.assertLessEqual(relative_error(got, ref), 1e-4)

    def test_errors_carry_status_and_message(self):
        with self.assertRaises(FisherKernelsError) as caught:
            Engine("tpu", self.lib)
        self.assertEqual(caught.exception.status, FK_ERR_INVALID_ARGUMENT)
        self.assertIn("unknown backend 'tpu'", str(caught.exception))
        factor = np.zeros((3, 3), np.float32)
        status = self.lib.fk_kfac_accumulate(self.engine._handle, None, 2, 3, 0, 1.0,
                                             factor.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        self.assertEqual(status, FK_ERR_INVALID_ARGUMENT)
        self.assertIn(b"x is NULL", self.lib.fk_last_error())


class ModelTests(unittest.TestCase):
    def test_model_load_reports_unsupported(self):
        # The ONNX executor is not part of the library yet: the call must say so.
        lib = load_library()
        with Engine("cpu", lib) as engine:
            model = ctypes.c_void_p()
            status = lib.fk_model_load(engine._handle, b"model.onnx", ctypes.byref(model))
            self.assertEqual(status, FK_ERR_UNSUPPORTED)
            self.assertIn(b"fk_model_load", lib.fk_last_error())
            self.assertFalse(model.value)


if __name__ == "__main__":
    unittest.main()
