"""Test-wide setup.

The CUDA kernels in cuda_kernels/ run on the CPU under Numba's CUDA simulator. The switch must be
set before numba is first imported anywhere, so it is set here, at the very top of collection.
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import functools  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tinysparse as ts  # noqa: E402  (after the simulator switch: tinysparse may load numba)
from checkpoint_helpers import KINDS, model_config, train_config  # noqa: E402
import resume_helpers  # noqa: E402
from tinysparse import optim  # noqa: E402
from tinysparse.moe import MoE  # noqa: E402
from tinysparse.training import data as data_module  # noqa: E402
from tinysparse.training import loop as loop_module  # noqa: E402
from tinysparse.training import train  # noqa: E402
from train_helpers import global_norm  # noqa: E402


@functools.lru_cache(maxsize=None)
def _synthetic_corpus(*args, **kwargs):
    return data_module.load_corpus("synthetic", *args, **kwargs)


def _load_corpus_once(spec, *args, **kwargs):
    """load_corpus, with each synthetic corpus built once per session: the generator is seeded
    (same arguments, same bytes: test_data.py checks it), and building one took a third of each
    tiny training run. Files and the stdlib are read as they are now."""
    if spec == "synthetic":
        return _synthetic_corpus(*args, **kwargs)
    return data_module.load_corpus(spec, *args, **kwargs)


@pytest.fixture(autouse=True)
def _corpora_built_once(monkeypatch):
    monkeypatch.setattr(loop_module, "load_corpus", _load_corpus_once)


@pytest.fixture
def rng():
    """A fresh, fixed-seed generator for each test: same inputs every run."""
    return np.random.default_rng(1234)


def _moe_layer_run(backend, router, x_np, w_np, capacity_factor=1.0):
    """A tiny float64 MoE (n_embd 6, 5 experts, top-2, one shared expert), same weights for every
    backend, forward and backward of sum(out * w_np) + aux_loss on dispatch_backend=`backend`.
    Returns ([output, x.grad, every parameter's .grad], layer, x)."""
    ts.manual_seed(0)
    layer = MoE(6, 5, top_k=2, d_expert=7, n_shared=1, router=router,
                capacity_factor=capacity_factor, dispatch_backend=backend)
    layer.astype(np.float64)
    x = ts.Tensor(x_np, requires_grad=True)
    out = layer(x)
    ((out * w_np).sum() + layer.aux_loss).backward()
    return [out.data, x.grad, *(p.grad for p in layer.parameters())], layer, x


@pytest.fixture
def moe_layer_run():
    """_moe_layer_run: the backends' MoE layers compared output by output, gradient by gradient."""
    return _moe_layer_run


@pytest.fixture(scope="session")
def ckpt_runs(tmp_path_factory):
    """A 4-step run of each checkpoint_helpers.KINDS (dense, MoE with bias balancing, MoE with
    dropout): {kind: run folder}. Shared by the checkpoint tests; copy a folder to damage it."""
    root = tmp_path_factory.mktemp("runs")
    for kind, kw in KINDS.items():
        train(model_config(**kw), train_config(root / kind))
    return {kind: root / kind for kind in KINDS}


@pytest.fixture
def ckpt_run(ckpt_runs, tmp_path):
    """A fresh copy of the dense run, to damage."""
    return Path(shutil.copytree(ckpt_runs["dense"], tmp_path / "run"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """20 steps in one go (resume_helpers' configs): the reference the interrupted and resumed
    runs must reproduce: (summary, checkpoint), built once in each test module that uses it."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(resume_helpers.model_config(), resume_helpers.train_config(out))
    return summary, resume_helpers.ckpt_of(out)


@pytest.fixture
def updates(monkeypatch):
    """Every AdamW update of the runs in the test: the lr it used and the norm of the gradient
    it read, recorded as the update starts (the training loop's tests, train_helpers.py)."""
    seen, real = [], optim.AdamW.step

    def step(self):
        seen.append(SimpleNamespace(lr=self.lr, norm=global_norm(self.params)))
        real(self)

    monkeypatch.setattr(optim.AdamW, "step", step)
    return seen


@pytest.fixture
def fake_gpu(monkeypatch):
    """The strict CuPy stand-in (tests/fake_cupy/) installed as `cupy` and `cupyx`, and taken by
    tinysparse.engine.backend for a GPU: device 'cuda' runs on NumPy, every host synchronisation
    counted in fake_gpu.LEDGER (reset here). Yields the stand-in module."""
    import fake_cupy
    from tinysparse.engine import backend
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setitem(sys.modules, "cupyx", fake_cupy.cupyx)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.delenv("TINYSPARSE_DEVICE", raising=False)
    fake_cupy.LEDGER.reset()
    fake_cupy.LEDGER.allowed = True
    yield fake_cupy
    fake_cupy.LEDGER.allowed = True
