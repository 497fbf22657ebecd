"""The GPU path on the CPU, through the strict CuPy stand-in (tests/fake_cupy/, fixture fake_gpu).

What is covered here: device placement (every array created, indexed or stored where its
tensor lives), the host synchronisations of a training step counted against their budgets,
dense and MoE training, resume bit for bit with dropout, sampling, and the dispatch backends
that take CuPy arrays. The NumPy reference dispatch runs on the stand-in's arrays; the 'cuda'
backend's zero-copy path (cuda_kernels/ on CuPy arrays) needs a real GPU: tests/test_gpu.py
and `make gpu-check` run it there, tests/test_cuda_kernels_*.py run its kernels on NumPy arrays
under Numba's simulator.
"""
import math

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import nn, optim
from tinysparse.engine import backend
from tinysparse.engine import functional as F
from tinysparse.engine import random as ts_random
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.moe.dispatch import NumpyDispatch, auto_backend_name, expert_counts


# ---- the instrument itself: it must catch what it is for -------------------------------------

def test_stand_in_refuses_numpy_where_cupy_does(fake_gpu):
    cp = fake_gpu
    a = cp.arange(6, dtype=cp.float32)
    host = np.ones(6, dtype=np.float32)
    for bad in (lambda: a + host, lambda: host + a, lambda: cp.maximum(a, host),
                lambda: cp.where(a > 0, host, a), lambda: np.sum(a), lambda: np.asarray(a),
                lambda: a.__setitem__(slice(None), host)):
        with pytest.raises(TypeError):
            bad()
    assert not isinstance(a, np.ndarray) and type(a).__module__ == "cupy"
    assert fake_gpu.LEDGER.syncs == []


def test_stand_in_counts_every_wait_and_upload(fake_gpu):
    cp = fake_gpu
    a = cp.asarray(np.arange(6))                                    # one upload
    waits = [lambda: float(a[0]), lambda: int(a.sum()), lambda: bool(a[1] > 0),
             lambda: a[2].item(), lambda: a.tolist(), lambda: a.get(), lambda: a[a > 2],
             lambda: cp.flatnonzero(a), lambda: cp.nonzero(a), lambda: cp.where(a > 1),
             lambda: cp.asnumpy(a), lambda: cp.unique(a), lambda: f"{a[0]}",
             lambda: cp.cuda.Device().synchronize()]
    for i, wait in enumerate(waits, 1):
        wait()
        assert len(fake_gpu.LEDGER.syncs) == i, wait
    fake_gpu.LEDGER.reset()
    cp.bincount(a)                                                  # CuPy reads back twice
    assert len(fake_gpu.LEDGER.syncs) == 2
    assert len(fake_gpu.LEDGER.uploads) == 0 and a[np.array([0, 2])].shape == (2,)
    assert len(fake_gpu.LEDGER.uploads) == 1                        # a host index is copied over
    with fake_gpu.cupyx.allow_synchronize(False), pytest.raises(fake_gpu.DeviceSynchronized,
                                                                 match="test_fake_gpu"):
        float(a[0])


def test_stand_in_keeps_numpy_semantics_for_what_it_computes(fake_gpu):
    cp = fake_gpu
    a = cp.asarray(np.arange(12.0).reshape(3, 4))
    view = a[1:]
    view += 1.0                                                     # in place, through a view
    cp.exp(a, out=a)
    np.testing.assert_array_equal(a.get(), np.exp(np.arange(12.0).reshape(3, 4) + (np.arange(12) >= 4).reshape(3, 4)))
    assert (a.sum()).shape == () and isinstance(a.sum(), cp.ndarray)  # reductions stay 0-d arrays
    assert isinstance(np.float32(2) * a, cp.ndarray)                  # a NumPy scalar is fine


def test_stand_in_names_the_module_of_its_arguments_without_a_wait(fake_gpu):
    cp = fake_gpu
    a = cp.arange(3)
    assert cp.get_array_module(a) is cp and cp.get_array_module(np.ones(2), a) is cp
    assert cp.get_array_module(np.ones(2)) is np and cp.get_array_module() is np
    assert fake_gpu.LEDGER.syncs == []


# ---- device placement --------------------------------------------------------------------------

def test_tensor_of_a_cupy_array_as_the_first_call(fake_gpu):
    assert backend._cupy is None                                    # nothing imported CuPy yet
    t = ts.Tensor(fake_gpu.ones(3, dtype=fake_gpu.float32))
    assert t.device == "cuda" and isinstance(t.data, fake_gpu.ndarray)


def test_gpt_built_on_the_gpu_has_every_parameter_there(fake_gpu, monkeypatch):
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, n_expert=4, top_k=2,
                    dispatch_backend="numpy")
    ts.manual_seed(0)
    cpu = GPT(cfg)
    monkeypatch.setenv("TINYSPARSE_DEVICE", "cuda")
    ts.manual_seed(0)
    gpu = GPT(cfg)
    for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert q.device == "cuda", name
        np.testing.assert_array_equal(q.numpy(), p.numpy(), err_msg=name)  # the same init draws
    idx = np.random.default_rng(0).integers(0, 256, (2, 8))
    logits, loss = gpu(idx, idx)
    np.testing.assert_allclose(logits.numpy(), cpu(idx)[0].numpy(), rtol=1e-4, atol=1e-5)
    loss.backward()
    assert all(isinstance(p.grad, fake_gpu.ndarray) for p in gpu.parameters())
    # ids and targets already on the device are checked there, never copied to the host
    on_device = fake_gpu.asarray(idx)
    logits_d, loss_d = gpu(on_device, on_device)
    np.testing.assert_array_equal(logits_d.numpy(), logits.numpy())
    assert loss_d.item() == loss.item()


@pytest.mark.parametrize("op", ["exp", "log", "sqrt", "tanh", "sigmoid"])
def test_unary_ops_run_on_the_device_with_the_hosts_values(fake_gpu, op):
    x_np = np.array([0.25, 1.0, 2.5, 7.0])
    grads = []
    for data in (x_np, fake_gpu.asarray(x_np)):                     # the host, then the device
        x = ts.Tensor(data, requires_grad=True)
        y = getattr(x, op)()
        assert isinstance(y.data, type(data))
        y.sum().backward()
        assert isinstance(x.grad, type(data))
        grads.append((y.numpy(), ts.Tensor(x.grad).numpy()))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_array_equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("index", [[2, 0, 2], np.array([1, 1, 3]), (np.array([0, 2]), [1, 1]),
                                   np.array([True, False, True, False])])
def test_list_and_numpy_indices_on_a_cuda_tensor_backward(fake_gpu, index):
    a_np = np.arange(12.0).reshape(4, 3)
    a_cpu = ts.Tensor(a_np, requires_grad=True)
    a_gpu = ts.Tensor(a_np, requires_grad=True, device="cuda")
    for a in (a_cpu, a_gpu):
        out = a[index]
        (out * out).sum().backward()
    assert isinstance(a_gpu.grad, fake_gpu.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(a_gpu.grad), a_cpu.grad)


def test_where_with_a_host_mask_on_a_cuda_tensor(fake_gpu):
    x = ts.Tensor(np.arange(4.0), requires_grad=True, device="cuda")
    y = ts.where(np.array([True, False, True, False]), x, 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(x.grad), [1, 0, 1, 0])


def test_take_along_axis_gradient_and_device(fake_gpu):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5, 4))
    idx = np.array([[[0, 4, 4, 1]] * 5] * 3)[:, :2]               # (3, 2, 4): repeats in a fiber
    assert ts.gradcheck(lambda t: ts.ops.take_along_axis(t, idx, axis=1), ts.Tensor(a, requires_grad=True))
    grads = []
    for device in ("cpu", "cuda"):
        t = ts.Tensor(a, requires_grad=True, device=device)
        out = ts.ops.take_along_axis(t, idx, axis=1)
        (out * ts.Tensor(np.arange(24.0).reshape(3, 2, 4), device=device)).sum().backward()
        grads.append(backend.to_numpy(t.grad))
    np.testing.assert_array_equal(*grads)


@pytest.mark.parametrize("make", [lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.1),
                                  lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)])
def test_optimizer_state_follows_a_model_moved_after_it_was_built(fake_gpu, make):
    results = []
    for device in ("cpu", "cuda"):
        ts.manual_seed(0)
        model = nn.Linear(3, 2)
        opt = make(model.parameters())                              # state made on the host
        model.to(device)
        for _ in range(2):
            x = ts.Tensor(np.ones((4, 3), dtype=np.float32), device=device)
            opt.zero_grad()
            (model(x) * model(x)).sum().backward()
            opt.step()
        for slot in opt._slots():
            assert all(backend.device_of(a) == device for a in getattr(opt, slot))
        results.append(backend.to_numpy(model.weight.data))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)


# ---- the device stream -------------------------------------------------------------------------

def _splitmix64(seed, n):
    """The reference: Steele et al.'s SplitMix64, one Python integer at a time."""
    out, state, mask = [], seed, 2 ** 64 - 1
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_device_stream_is_splitmix64_and_resumes_exactly(fake_gpu):
    assert _splitmix64(0, 1) == [0xE220A8397B1DCDAF]                 # the published first output
    stream = ts_random.DeviceStream(12345)
    first = stream.uint64(5, fake_gpu)
    assert backend.to_numpy(first).tolist() == _splitmix64(12345, 5)
    state = stream.state()
    more = backend.to_numpy(stream.uint64(3, np)).tolist()
    assert more == _splitmix64(12345, 8)[5:]                        # NumPy and CuPy: one stream
    ts.manual_seed(7)
    a = ts_random.uniform((4, 5), device="cuda")
    saved = ts_random.get_device_state()
    b = ts_random.uniform((4, 5), device="cuda", dtype=np.float64)
    ts_random.set_device_state(saved)
    np.testing.assert_array_equal(backend.to_numpy(ts_random.uniform((4, 5), "cuda", np.float64)),
                                  backend.to_numpy(b))
    u = backend.to_numpy(a)
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    assert np.all(u * 2 ** 24 == np.floor(u * 2 ** 24))           # exact multiples of 2^-24
    assert state == {"seed": 12345, "counter": 5} and fake_gpu.LEDGER.syncs[:0] == []


# ---- the dispatch backends that take CuPy arrays -----------------------------------------------

def test_auto_chooses_the_cuda_kernels_for_cupy_arrays(fake_gpu):
    assert auto_backend_name(fake_gpu.zeros((2, 3), dtype=fake_gpu.float32)) == "cuda"
    assert auto_backend_name(fake_gpu.zeros((2, 3), dtype=fake_gpu.float16)) == "numpy"
    assert auto_backend_name(np.zeros((2, 3), dtype=np.float32)) == "numba"


@pytest.mark.parametrize("capacity", [None, 3])
def test_numpy_reference_on_cupy_arrays_waits_once_per_plan(fake_gpu, capacity):
    rng = np.random.default_rng(0)
    T, k, E, C = 13, 2, 5, 6
    ids = np.stack([rng.choice(E, size=k, replace=False) for _ in range(T)])
    ids[[1, 7], 1] = -1                                             # empty slots, as expert choice leaves
    x, w = rng.standard_normal((T, C)), rng.standard_normal((E, C, 4))
    gates = rng.uniform(0.1, 1, (T, k))
    ref, be = NumpyDispatch(), NumpyDispatch()
    want = ref.plan(ids, E, capacity)
    fake_gpu.LEDGER.reset()
    got = be.plan(fake_gpu.asarray(ids), E, capacity)
    assert len(fake_gpu.LEDGER.syncs) == 1                          # the offsets, read once
    for field in ("token_index", "slot_position", "offsets", "counts", "rank"):
        np.testing.assert_array_equal(backend.to_numpy(getattr(got, field)), getattr(want, field))
    fake_gpu.LEDGER.reset()
    cx, cw, cg = (fake_gpu.asarray(a) for a in (x, w, gates))
    buf = be.gather(cx, got.token_index)
    y = be.grouped_mm(buf, cw, None, got.offsets)
    dw, _ = be.grouped_mm_dw(buf, y, got.offsets, with_bias=False)
    out = be.combine(y, cg, got.slot_position)
    dy, dgates = be.combine_backward(out, y, cg, got.slot_position)
    dx = be.scatter(be.grouped_mm_dx(dy, cw, got.offsets), got.slot_position)
    assert fake_gpu.LEDGER.syncs == []                              # the primitives never wait
    rbuf = ref.gather(x, want.token_index)
    ry = ref.grouped_mm(rbuf, w, None, want.offsets)
    rout = ref.combine(ry, gates, want.slot_position)
    rdy, rdg = ref.combine_backward(rout, ry, gates, want.slot_position)
    for a, b in [(y, ry), (out, rout), (dgates, rdg), (dw, ref.grouped_mm_dw(rbuf, ry, want.offsets, False)[0]),
                 (dx, ref.scatter(ref.grouped_mm_dx(rdy, w, want.offsets), want.slot_position))]:
        np.testing.assert_array_equal(backend.to_numpy(a), b)


def test_expert_counts_without_a_wait(fake_gpu):
    ids = np.array([[0, 3], [3, -1], [4, 0], [-1, -1]])
    fake_gpu.LEDGER.reset()
    got = expert_counts(fake_gpu.asarray(ids), 6)
    assert fake_gpu.LEDGER.syncs == []
    np.testing.assert_array_equal(backend.to_numpy(got), [2, 0, 0, 2, 1, 0])
    np.testing.assert_array_equal(expert_counts(ids, 6), [2, 0, 0, 2, 1, 0])


def test_cross_entropy_with_ignore_index_on_the_device_never_waits(fake_gpu):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 5))
    targets[0, 1] = -1
    losses = []
    for device in ("cpu", "cuda"):
        z = ts.Tensor(logits, requires_grad=True, device=device)
        t = targets if device == "cpu" else fake_gpu.asarray(targets)
        fake_gpu.LEDGER.reset()
        loss = F.cross_entropy(z, t, ignore_index=-1)
        loss.backward()
        waits = len(fake_gpu.LEDGER.syncs)
        losses.append((float(backend.to_numpy(loss.data)), backend.to_numpy(z.grad)))
    assert waits == 1                       # int64 targets are range-checked (one read), no more
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-6)
    np.testing.assert_allclose(losses[1][1], losses[0][1], rtol=1e-5, atol=1e-7)
