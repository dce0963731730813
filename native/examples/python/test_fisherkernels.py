"""The C ABI through ctypes, checked against numpy float64 (run by CTest: native/CMakeLists.txt)."""
import ctypes
import json
import os
import subprocess
import tempfile
import unittest

import numpy as np

from fisherkernels import Engine, FisherKernelsError, Model, load_library

FK_ERR_INVALID_ARGUMENT = 1
FK_ERR_IO = 2
FK_ERR_BUFFER_TOO_SMALL = 5


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
    """A fixture model scored through the C ABI (isotropic and K-FAC), against the torch float64 goldens
    (SPEC §7 tolerances) and against the managed API (the fisherkernels CLI on the same inputs)."""

    fixtures = os.environ.get("FISHERKERNELS_FIXTURES", os.path.join(os.path.dirname(__file__), "../../../tests/fixtures"))

    @classmethod
    def setUpClass(cls):
        cls.lib = load_library()
        cls.engine = Engine("cpu", cls.lib)
        cls.model = Model(cls.engine, os.path.join(cls.fixtures, "gpt2_tiny.onnx"))
        cls.tokens = np.load(os.path.join(cls.fixtures, "gpt2_tiny.tokens.npy"))

    @classmethod
    def tearDownClass(cls):
        cls.model.close()
        cls.engine.close()

    def golden_scores(self, report):
        """Per-position arrays [batch, seq] from a SPEC §6 score JSON, NaN where a position has no target."""
        arrays = {key: np.full(self.tokens.shape, np.nan) for key in ("p", "aleatoric", "epistemic")}
        for sequence in report["sequences"]:
            for token in sequence["tokens"]:
                for key, array in arrays.items():
                    array[sequence["index"], token["position"]] = token[key]
        return arrays["p"], arrays["aleatoric"], arrays["epistemic"]

    def assert_scores(self, got, ref, tolerances):
        for name, g, r, tolerance in zip(("p", "aleatoric", "epistemic"), got, ref, tolerances):
            np.testing.assert_array_equal(np.isnan(g), np.isnan(r), err_msg=f"{name}: positions without a target")
            mask = ~np.isnan(r)
            self.assertLessEqual(relative_error(g[mask], r[mask]), tolerance, name)

    def curvature(self):
        return os.path.join(self.fixtures, "gpt2_tiny.kfac.safetensors")

    def test_scores_match_torch(self):
        with open(os.path.join(self.fixtures, "gpt2_tiny.scores.json")) as f:
            golden = json.load(f)
        # The golden K-FAC scores use the factors of gpt2_tiny.kfac.safetensors and τ = 1.
        for method, curvature in (("isotropic", None), ("kfac", self.curvature())):
            with self.subTest(method=method):
                got = self.model.score(self.tokens, curvature_path=curvature, prior_precision=1.0)
                self.assert_scores(got, self.golden_scores(golden[method]), (1e-4, 1e-4, 1e-3))

    def test_scores_match_managed_api(self):
        cli = os.environ.get("FISHERKERNELS_CLI", "")
        self.assertTrue(os.path.isfile(cli), f"FISHERKERNELS_CLI='{cli}' is not the built CLI (dotnet cake --target=Build)")
        for method, curvature in (("isotropic", None), ("kfac", self.curvature())):
            with self.subTest(method=method), tempfile.TemporaryDirectory() as folder:
                out = os.path.join(folder, "scores.json")
                command = ["dotnet", cli, "score", "--model", os.path.join(self.fixtures, "gpt2_tiny.onnx"),
                           "--tokens", os.path.join(self.fixtures, "gpt2_tiny.tokens.npy"), "--method", method,
                           "--prior-precision", "0.5", "--out", out]
                subprocess.run(command + (["--curvature", curvature] if curvature else []), check=True)
                with open(out) as f:
                    managed = json.load(f)
                # Same code path, float32 results: only the rounding of the outputs differs.
                got = self.model.score(self.tokens, curvature_path=curvature, prior_precision=0.5)
                self.assert_scores(got, self.golden_scores(managed), (1e-6, 1e-6, 1e-6))

    def test_jvp_matches_torch(self):
        got = self.model.jvp(self.tokens, os.path.join(self.fixtures, "gpt2_tiny.direction.safetensors"), vocab=64)
        ref = np.load(os.path.join(self.fixtures, "gpt2_tiny.jvp.npy"))
        self.assertLessEqual(relative_error(got, ref), 1e-3)

    def test_model_errors(self):
        with self.assertRaises(FisherKernelsError) as caught:
            Model(self.engine, os.path.join(self.fixtures, "no_such_model.onnx"))
        self.assertEqual(caught.exception.status, FK_ERR_IO)
        with self.assertRaises(FisherKernelsError) as caught:
            self.model.jvp(self.tokens, os.path.join(self.fixtures, "gpt2_tiny.direction.safetensors"), vocab=63)
        self.assertEqual(caught.exception.status, FK_ERR_BUFFER_TOO_SMALL)


if __name__ == "__main__":
    unittest.main()
