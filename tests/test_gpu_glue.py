"""The Functions' GPU branches (GELU and LayerNorm on CuPy arrays, engine/compiled.gpu) on the CPU:
the strict CuPy stand-in (fixture fake_gpu) carries the tensors, and an adapter hands the arrays to
the simulated kernels of cuda_kernels/ and back. What a real GPU adds (the kernels' speed, the
device's rounding) is tests/test_gpu.py's; this checks the glue: reshapes, saved arrays, the
weight and bias gradients as (1, R) @ (R, C) products, every combination of weight and bias."""
import numpy as np
import pytest

import tinysparse as ts
from cuda_kernels import gelu as K_gelu
from cuda_kernels import layer_norm as K_ln
from tinysparse.engine import functional as F
from tinysparse.engine import normalization as N


class _OnTheStandIn:
    """A kernels module's functions, taking and returning stand-in arrays; counts its calls."""

    def __init__(self, module, cp):
        self.module, self.cp, self.calls = module, cp, []

    def __getattr__(self, name):
        fn = getattr(self.module, name)

        def call(*args):
            self.calls.append(name)
            host = [self.cp.asnumpy(a) if isinstance(a, self.cp.ndarray) else a for a in args]
            out = fn(*host)
            return tuple(map(self.cp.asarray, out)) if isinstance(out, tuple) else self.cp.asarray(out)
        return call


@pytest.fixture
def kernels_on_the_stand_in(fake_gpu, monkeypatch):
    adapters = {"cuda_kernels.gelu": _OnTheStandIn(K_gelu, fake_gpu),
                "cuda_kernels.layer_norm": _OnTheStandIn(K_ln, fake_gpu)}

    def gpu(name, *arrays):
        on_device = all(a is None or isinstance(a, fake_gpu.ndarray) for a in arrays)
        return adapters[name] if on_device else None
    monkeypatch.setattr(F, "gpu_kernels", gpu)
    monkeypatch.setattr(N, "gpu_kernels", gpu)
    return fake_gpu, adapters


def _run(cp, fn, arrays, g):
    """fn(**arrays as stand-in tensors)'s output and every input's gradient for upstream g, as
    NumPy arrays, in the order of `arrays` (a dict: name -> array)."""
    tensors = {n: ts.Tensor(cp.asarray(a), requires_grad=True) for n, a in arrays.items()}
    y = fn(**tensors)
    (y * ts.Tensor(cp.asarray(g))).sum().backward()
    return [cp.asnumpy(y.data)] + [cp.asnumpy(t.grad) for t in tensors.values()]


@pytest.mark.parametrize("use_weight, use_bias", [(True, True), (True, False), (False, True),
                                                  (False, False)])
def test_layer_norm_gpu_branch_matches_the_array_code(kernels_on_the_stand_in, use_weight,
                                                      use_bias):
    cp, adapters = kernels_on_the_stand_in
    rng = np.random.default_rng(7)
    B, T, C = 2, 3, 37
    x = rng.standard_normal((B, T, C)) * 3 + 1
    x[0, 1] = 5.4e17                                    # a constant row of a huge number
    w = rng.standard_normal(C) if use_weight else None
    b = rng.standard_normal(C) if use_bias else None
    g = rng.standard_normal((B, T, C))

    arrays = {"x": x, **({"weight": w} if use_weight else {}), **({"bias": b} if use_bias else {})}
    got = _run(cp, ts.functional.layer_norm, arrays, g)
    assert adapters["cuda_kernels.layer_norm"].calls == ["layer_norm_forward",
                                                         "layer_norm_backward_dx"]
    saved = N.LayerNorm.compiled
    N.LayerNorm.compiled = False
    try:
        want = _run(cp, ts.functional.layer_norm, arrays, g)
    finally:
        N.LayerNorm.compiled = saved
    assert len(got) == len(want) == 1 + len(arrays)
    for a, ref in zip(got, want):
        np.testing.assert_allclose(a, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    assert (got[0][0, 1] == (b if use_bias else 0)).all()     # the constant row: xhat = 0


def test_gelu_gpu_branch_matches_the_array_code(kernels_on_the_stand_in):
    cp, adapters = kernels_on_the_stand_in
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 11)) * 4
    g = rng.standard_normal((3, 11))
    got = _run(cp, F.gelu, {"x": x}, g)
    assert adapters["cuda_kernels.gelu"].calls == ["gelu_forward", "gelu_backward"]
    saved = F.GELU.compiled
    F.GELU.compiled = False
    try:
        want = _run(cp, F.gelu, {"x": x}, g)
    finally:
        F.GELU.compiled = saved
    for a, ref in zip(got, want):
        np.testing.assert_allclose(a, ref, rtol=1e-14, atol=0)
