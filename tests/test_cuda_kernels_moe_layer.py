"""The whole MoE layer through dispatch_backend='cuda' (naive and tiled grouped matmul): the same
outputs and gradients as dispatch 'numpy' with each router, capacity drops included, and a
gradcheck through the kernels."""
import numpy as np
import pytest

import tinysparse as ts
from cuda_helpers import skip_module_without_a_device
from tinysparse.moe import MoE
from tinysparse.moe.cuda_dispatch import CudaDispatch
from tinysparse.moe.dispatch import DISPATCH_BACKENDS, get_backend

skip_module_without_a_device()


@pytest.fixture
def cuda_naive(monkeypatch):
    """'cuda naive' as a dispatch_backend name for one test (the registry is restored after)."""
    monkeypatch.setitem(DISPATCH_BACKENDS, "cuda naive", CudaDispatch(matmul="naive"))
    return "cuda naive"


@pytest.mark.parametrize("router,cf", [("topk", 1.0), ("topk", None), ("expert_choice", 1.0)])
def test_moe_layer_same_outputs_and_gradients_as_numpy(router, cf, cuda_naive, moe_layer_run):
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((2, 7, 6)), rng.standard_normal((2, 7, 6))
    ref, _, _ = moe_layer_run("numpy", router, x_np, w_np, cf)
    for backend in ("cuda", cuda_naive):
        got, layer, _ = moe_layer_run(backend, router, x_np, w_np, cf)
        assert isinstance(get_backend(layer.backend_name), CudaDispatch)
        if router == "topk" and cf is not None:
            assert layer.stats["dropped_fraction"] > 0        # capacity really drops slots here
        for a, r in zip(got, ref):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)


def test_moe_gradcheck_through_cuda():
    ts.manual_seed(1)
    layer = MoE(3, 3, top_k=2, d_expert=2, capacity_factor=1.0, dispatch_backend="cuda",
                aux_coef=0.5, z_coef=0.1)
    layer.astype(np.float64)
    layer.router.weight.data = np.random.default_rng(1).standard_normal(layer.router.weight.shape)
    x = ts.Tensor(np.random.default_rng(2).standard_normal((1, 4, 3)), requires_grad=True)

    def loss(*_):
        return (layer(x) * np.cos(np.arange(12.0)).reshape(1, 4, 3)).sum() + layer.aux_loss

    loss()
    assert layer.stats["dropped_fraction"] > 0
    assert ts.gradcheck(loss, x, *layer.parameters())
