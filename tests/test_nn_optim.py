"""Modules (tinysparse/nn.py), layers (tinysparse/layers.py), and optimizers, schedules and
clipping (tinysparse/optim.py).

Optimizer steps are compared with updates written out by hand in NumPy, in float64, so that any
difference in the formula (bias correction, where weight decay applies, momentum) shows up.
"""
import math
import re
import subprocess
import sys

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor, backend, nn, optim
from tinysparse import functional as F
from tinysparse.nn import Parameter


# ---- a model with every kind of child ------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d):
        self.fc = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.ln(self.fc(x).relu()))


class Net(nn.Module):
    def __init__(self, vocab=5, d=3, n_layer=2):
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d) for _ in range(n_layer)])
        self.head = nn.Sequential([nn.Linear(d, 4), nn.GELU(), nn.Linear(4, vocab, bias=False)])
        self.scale = Parameter([2.0])
        self.name = "not a parameter"  # plain attributes are ignored
        self.register_buffer("counts", np.zeros(vocab))

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.layers:
            x = x + block(x)
        return self.head(x) * self.scale


EXPECTED_NAMES = [
    "embed.weight",
    "layers.0.fc.weight", "layers.0.fc.bias", "layers.0.ln.weight", "layers.0.ln.bias",
    "layers.1.fc.weight", "layers.1.fc.bias", "layers.1.ln.weight", "layers.1.ln.bias",
    "head.0.weight", "head.0.bias", "head.2.weight",
    "scale",
]


def test_named_parameters_find_nested_modules_in_order():
    ts.manual_seed(0)
    model = Net()
    names = [name for name, _ in model.named_parameters()]
    assert names == EXPECTED_NAMES
    assert all(isinstance(p, Parameter) and p.requires_grad for p in model.parameters())
    assert len(model.parameters()) == len(EXPECTED_NAMES)
    assert model.num_parameters() == 5 * 3 + 2 * (9 + 3 + 3 + 3) + (12 + 4) + 20 + 1
    assert len(model.layers) == 2 and isinstance(model.layers[1], Block)
    assert [type(m).__name__ for m in model.head] == ["Linear", "GELU", "Linear"]
    assert dict(model.named_buffers()).keys() == {"counts"}
    assert sum(1 for _ in model.modules()) == 1 + 1 + 1 + 2 * 4 + 1 + 3


def test_astype_casts_every_parameter_in_place_and_keeps_buffers():
    ts.manual_seed(0)
    model = Net()
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    idx = np.array([[0, 3, 4]])
    model(idx).sum().backward()
    params = model.parameters()
    assert model.astype(np.float64) is model
    assert model.parameters() == params                 # the same Parameter objects: optimizers keep them
    for name, p in model.named_parameters():
        assert p.dtype == np.float64 and p.grad is None, name
        np.testing.assert_array_equal(p.data, before[name])   # float32 -> float64 is exact
    assert model(idx).dtype == np.float64
    model.astype("float32")
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert dict(model.named_buffers())["counts"].dtype == np.float64      # buffers keep theirs
    with pytest.raises(TypeError, match=r"Net.astype\(int64\): parameters must be a floating dtype"):
        model.astype(np.int64)


def test_shared_parameters_are_listed_once():
    ts.manual_seed(0)
    model = Net()
    model.head[2].weight = model.embed.weight  # weight tying (shapes differ here; irrelevant)
    names = [name for name, _ in model.named_parameters()]
    assert "head.2.weight" not in names and names.count("embed.weight") == 1


def test_module_list_append_and_sequential_forward():
    ts.manual_seed(0)
    seq = nn.Sequential([nn.Linear(2, 3)])
    seq.append(nn.Tanh())
    seq.append(nn.ReLU())
    assert [name for name, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    x = Tensor(np.ones((4, 2), np.float32))
    expected = np.maximum(np.tanh(x.data @ seq[0].weight.data + seq[0].bias.data), 0)
    np.testing.assert_allclose(seq(x).numpy(), expected, rtol=1e-6)


def test_state_dict_round_trip():
    ts.manual_seed(0)
    a = Net()
    a.counts.data[:] = [1, 2, 3, 4, 5]
    ts.manual_seed(1)
    b = Net()
    idx = np.array([[0, 1, 4], [2, 2, 3]])
    a.eval(), b.eval()
    assert not np.allclose(a(idx).numpy(), b(idx).numpy())
    state = a.state_dict()
    assert list(state) == EXPECTED_NAMES + ["counts"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b.load_state_dict(state)
    np.testing.assert_array_equal(a(idx).numpy(), b(idx).numpy())
    np.testing.assert_array_equal(b.counts.numpy(), [1, 2, 3, 4, 5])
    # copies both ways: neither side sees later changes of the other
    a.embed.weight.data[0, 0] += 1.0
    assert state["embed.weight"][0, 0] != a.embed.weight.data[0, 0]
    state["scale"][0] = 99.0
    assert b.scale.data[0] == 2.0
    assert b.embed.weight.dtype == np.float32


def test_load_state_dict_with_wrong_names_raises_key_error_naming_them():
    ts.manual_seed(0)
    model = Net()
    state = model.state_dict()
    state["layers.2.fc.weight"] = state.pop("layers.1.fc.weight")
    with pytest.raises(KeyError, match=r"missing \['layers.1.fc.weight'\].*unexpected \['layers.2.fc.weight'\]"):
        model.load_state_dict(state)


def test_load_state_dict_with_wrong_shape_raises_value_error_and_changes_nothing():
    ts.manual_seed(0)
    model = Net()
    before = model.state_dict()
    ts.manual_seed(1)
    state = Net().state_dict()
    state["head.2.weight"] = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"'head.2.weight'.*\(4, 6\).*\(4, 5\)"):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():  # a failed load leaves the model as it was
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_train_and_eval_propagate_to_every_module():
    ts.manual_seed(0)
    model = Net()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    idx = np.array([[1, 2]])
    np.testing.assert_array_equal(model(idx).numpy(), model(idx).numpy())  # dropout is off
    model.train()
    assert all(m.training for m in model.modules())
    ts.manual_seed(5)
    first = model(idx).numpy()
    ts.manual_seed(6)
    assert not np.array_equal(first, model(idx).numpy())  # dropout is on


def test_zero_grad_clears_every_parameter():
    ts.manual_seed(0)
    model = Net()
    F.cross_entropy(model(np.array([[0, 1, 2]])), np.array([[1, 2, 3]])).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# ---- the layers ----------------------------------------------------------------------------------

def test_linear_shapes_init_and_forward():
    ts.manual_seed(0)
    lin = nn.Linear(6, 4)
    assert lin.weight.shape == (6, 4) and lin.bias.shape == (4,)
    assert lin.weight.dtype == np.float32
    bound = 1 / math.sqrt(6)
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound
    assert np.abs(lin.weight.data).max() > 0.5 * bound  # really uniform over the range
    x = Tensor(np.ones((2, 3, 6), np.float32))
    y = lin(x)
    assert y.shape == (2, 3, 4)
    np.testing.assert_allclose(y.numpy(), x.data @ lin.weight.data + lin.bias.data, rtol=1e-6)
    no_bias = nn.Linear(6, 4, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]


def test_linear_gradcheck():
    ts.manual_seed(0)
    lin = nn.Linear(3, 2, dtype=np.float64)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 3)), requires_grad=True)
    assert ts.gradcheck(lambda x, w, b: lin(x), x, lin.weight, lin.bias)


def test_embedding_lookup_and_gradient_with_repeated_ids():
    ts.manual_seed(0)
    emb = nn.Embedding(5, 3)
    assert emb.weight.shape == (5, 3) and emb.weight.dtype == np.float32
    idx = np.array([[1, 1, 4], [1, 0, 4]])
    out = emb(idx)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out.numpy(), emb.weight.data[idx])
    np.testing.assert_array_equal(emb(Tensor(idx)).numpy(), out.numpy())
    np.testing.assert_array_equal(emb([1, 2]).numpy(), emb.weight.data[[1, 2]])
    out.sum().backward()
    np.testing.assert_array_equal(emb.weight.grad[:, 0], [1, 3, 0, 0, 2])  # how often each id appears
    emb64 = nn.Embedding(4, 2, dtype=np.float64)
    assert ts.gradcheck(lambda w: emb64(np.array([3, 3, 0, 3])), emb64.weight)


def test_layer_norm_module():
    ln = nn.LayerNorm(4)
    assert ln.weight.shape == ln.bias.shape == (4,)
    np.testing.assert_array_equal(ln.weight.data, np.ones(4))
    np.testing.assert_array_equal(ln.bias.data, np.zeros(4))
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32))
    y = ln(x)
    assert y.shape == (2, 3, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y.numpy().mean(axis=-1), 0, atol=1e-6)
    assert nn.LayerNorm(4, bias=False).bias is None
    assert [n for n, _ in nn.LayerNorm(4, bias=False).named_parameters()] == ["weight"]


def test_dropout_module_rejects_bad_p():
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_parameter_dtypes():
    assert Parameter([1.0, 2.0]).dtype == np.float32
    assert Parameter(np.ones(2)).dtype == np.float64  # an array keeps its dtype
    assert Parameter(np.ones(2)).requires_grad


# ---- SGD -----------------------------------------------------------------------------------------

def _quadratic_grads(params):
    """loss = sum(p^2) for every p: grad = 2p, easy to do by hand."""
    loss = sum(((p * p).sum() for p in params), Tensor(np.zeros(())))
    loss.backward()


def test_sgd_without_momentum():
    p = Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.1)
    _quadratic_grads([p])
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.1 * 2.0, -2.0 + 0.1 * 4.0], rtol=1e-15)


def test_sgd_with_momentum_and_weight_decay_by_hand():
    p0 = np.array([1.0, -2.0, 0.5])
    p = Parameter(p0.copy())
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    expected, v = p0.copy(), np.zeros(3)
    for _ in range(3):
        opt.zero_grad()
        _quadratic_grads([p])
        opt.step()
        g = 2 * expected + 0.01 * expected
        v = 0.9 * v + g
        expected = expected - 0.1 * v
        np.testing.assert_allclose(p.data, expected, rtol=1e-14)


def test_sgd_skips_parameters_without_gradients():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = optim.SGD([a, b], lr=0.5)
    _quadratic_grads([a])
    opt.step()
    np.testing.assert_array_equal(a.data, [0.0, 0.0])
    np.testing.assert_array_equal(b.data, [1.0, 1.0])


def test_optimizer_argument_checks():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="positive"):
        optim.AdamW([Parameter(np.ones(2))], lr=0.0)


# ---- AdamW ---------------------------------------------------------------------------------------

def numpy_adamw(params, grads_per_step, lr, betas, eps, wd, decayed):
    """AdamW (Loshchilov & Hutter, Algorithm 2) written out plainly; returns the params per step."""
    b1, b2 = betas
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    history = []
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            decay = lr * wd * p if decayed[i] else 0.0
            params[i] = p - decay - lr * m_hat / (np.sqrt(v_hat) + eps)
        history.append([p.copy() for p in params])
    return history


@pytest.mark.parametrize("decay_1d", [False, True])
def test_adamw_matches_numpy_for_three_steps(decay_1d):
    rng = np.random.default_rng(0)
    initial = [rng.standard_normal((3, 2)), rng.standard_normal(2), rng.standard_normal((1, 4))]
    grads = [[rng.standard_normal(p.shape) for p in initial] for _ in range(3)]
    lr, betas, eps, wd = 0.1, (0.8, 0.95), 1e-8, 0.5  # large lr and decay: differences show
    params = [Parameter(p.copy()) for p in initial]
    opt = optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, decay_1d=decay_1d)
    decayed = [True, decay_1d, True]
    expected = numpy_adamw(initial, grads, lr, betas, eps, wd, decayed)
    for step in range(3):
        for p, g in zip(params, grads[step]):
            p.grad = g.copy()
        opt.step()
        for i, p in enumerate(params):
            np.testing.assert_allclose(p.data, expected[step][i], rtol=1e-12, atol=1e-14,
                                       err_msg=f"step {step + 1}, param {i}")
    # the 1-D parameter's decay really made a difference (the test can tell the two apart)
    undecayed = numpy_adamw(initial, grads, lr, betas, eps, wd, [True, not decay_1d, True])
    assert not np.allclose(undecayed[-1][1], params[1].data)


def test_adamw_state_dict_round_trip_gives_identical_steps():
    rng = np.random.default_rng(1)
    initial = [rng.standard_normal((2, 3)), rng.standard_normal(3)]
    grads = [[rng.standard_normal(p.shape) for p in initial] for _ in range(4)]

    def run(params, opt, steps):
        for g in steps:
            for p, gi in zip(params, g):
                p.grad = gi.copy()
            opt.step()

    a = [Parameter(p.copy()) for p in initial]
    opt_a = optim.AdamW(a, lr=0.05, weight_decay=0.1)
    run(a, opt_a, grads[:2])
    saved = opt_a.state_dict()
    assert saved["step_count"] == 2 and len(saved["m"]) == 2
    b = [Parameter(p.data.copy()) for p in a]
    opt_b = optim.AdamW(b, lr=0.9, weight_decay=0.1)  # lr comes from the state
    opt_b.load_state_dict(saved)
    saved["m"][0][:] = 0.0  # the loaded state is a copy
    run(a, opt_a, grads[2:])
    run(b, opt_b, grads[2:])
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.data, pb.data)
    with pytest.raises(ValueError, match="does not match"):
        optim.AdamW([Parameter(np.ones(5))]).load_state_dict(opt_a.state_dict())


def test_sgd_state_dict_round_trip():
    a = Parameter(np.array([1.0, 2.0]))
    opt = optim.SGD([a], lr=0.1, momentum=0.9)
    _quadratic_grads([a])
    opt.step()
    b = Parameter(a.data.copy())
    opt_b = optim.SGD([b], lr=0.1, momentum=0.9)
    opt_b.load_state_dict(opt.state_dict())
    for p, o in ((a, opt), (b, opt_b)):
        o.zero_grad()
        _quadratic_grads([p])
        o.step()
    np.testing.assert_array_equal(a.data, b.data)


# ---- schedules and clipping ----------------------------------------------------------------------

def test_cosine_lr_warmup_peak_decay_and_floor():
    lr = lambda s: optim.cosine_lr(s, max_lr=1.0, warmup_steps=10, max_steps=110, min_lr=0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)         # halfway through the decay: the mean
    assert lr(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr(110) == pytest.approx(0.1) and lr(1000) == pytest.approx(0.1)
    values = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    warm = [lr(s) for s in range(10)]
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_cosine_schedule_drives_the_optimizer():
    opt = optim.SGD([Parameter(np.ones(1))], lr=1.0)
    sched = optim.CosineSchedule(opt, max_lr=2.0, warmup_steps=2, max_steps=6)
    seen = [sched.step() for _ in range(3)]
    assert seen == pytest.approx([1.0, 2.0, 2.0]) and opt.lr == pytest.approx(2.0)
    other = optim.CosineSchedule(opt, max_lr=2.0, warmup_steps=2, max_steps=6)
    other.load_state_dict(sched.state_dict())
    assert other.step() == sched.step()


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_old_norm():
    a, b, c = Parameter(np.zeros(2)), Parameter(np.zeros((2, 2))), Parameter(np.zeros(3))
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([[0.0, 4.0], [0.0, 12.0]])
    held = b.grad
    norm = optim.clip_grad_norm([a, b, c], max_norm=1.3)
    assert norm == pytest.approx(13.0, rel=1e-12)
    new_norm = math.sqrt((a.grad ** 2).sum() + (b.grad ** 2).sum())
    assert new_norm == pytest.approx(1.3, rel=1e-5)
    np.testing.assert_allclose(a.grad, [0.3, 0.0], rtol=1e-5)       # the direction is kept
    np.testing.assert_allclose(b.grad, [[0, 0.4], [0, 1.2]], rtol=1e-5)
    np.testing.assert_array_equal(held, [[0.0, 4.0], [0.0, 12.0]])  # replaced, not modified
    assert c.grad is None


def test_clip_grad_norm_leaves_small_gradients_alone():
    a = Parameter(np.zeros(2, np.float32))
    a.grad = np.array([0.3, 0.4], np.float32)
    held = a.grad
    assert optim.clip_grad_norm([a], max_norm=1.0) == pytest.approx(0.5)
    assert a.grad is held
    assert optim.clip_grad_norm([Parameter(np.zeros(2))], 1.0) == 0.0
    b = Parameter(np.zeros(2, np.float32))
    b.grad = np.array([30.0, 40.0], np.float32)
    optim.clip_grad_norm([b], max_norm=1.0)
    assert b.grad.dtype == np.float32


# ---- learning --------------------------------------------------------------------------------

def test_mlp_learns_xor_with_adamw():
    ts.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(256, 2)).astype(np.float32)
    y = ((x[:, 0] > 0) != (x[:, 1] > 0)).astype(np.int64)  # XOR of the signs: not linear
    model = nn.Sequential([nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.GELU(),
                           nn.Linear(32, 2)])
    opt = optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.01)
    inputs = Tensor(x)
    for _ in range(300):
        loss = F.cross_entropy(model(inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with ts.no_grad():
        accuracy = (model(inputs).numpy().argmax(axis=1) == y).mean()
    assert accuracy > 0.9, f"accuracy {accuracy:.2f} after 300 AdamW steps, loss {loss.item():.3f}"
    assert loss.dtype == np.float32


# ---- PyTorch habits (issue 11, kind 6) -----------------------------------------------------------

def test_sequential_takes_modules_as_positional_arguments_as_pytorch_does():
    ts.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, 2))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = Tensor(np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32))
    by_hand = model[2](F.gelu(model[0](x)))
    np.testing.assert_array_equal(model(x).data, by_hand.data)
    as_list = nn.Sequential([model[0], model[1], model[2]])       # the list spelling still works
    np.testing.assert_array_equal(as_list(x).data, by_hand.data)


def test_sequential_refuses_what_is_not_a_module_instead_of_skipping_it():
    with pytest.raises(TypeError, match=r"Sequential item 1 is a function, not an nn.Module "
                                        r"\(wrap a function in a Module: nn.GELU\(\)"):
        nn.Sequential(nn.Linear(2, 3), F.gelu)
    with pytest.raises(TypeError, match="ModuleList.append: item 1 is a int"):
        nn.ModuleList([nn.Linear(2, 3)]).append(3)


def test_print_model_shows_the_tree_as_pytorch_does():
    model = nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, 2, bias=False))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=16, bias=True)\n"
        "  (1): GELU()\n"
        "  (2): Linear(in_features=16, out_features=2, bias=False)\n"
        ")")
    ts.manual_seed(0)
    assert repr(Net()) == (
        "Net(\n"
        "  (embed): Embedding(5, 3)\n"
        "  (layers): ModuleList(\n"
        "    (0): Block(\n"
        "      (fc): Linear(in_features=3, out_features=3, bias=True)\n"
        "      (ln): LayerNorm(3, eps=1e-05, bias=True)\n"
        "      (drop): Dropout(p=0.5)\n"
        "    )\n"
        "    (1): Block(\n"
        "      (fc): Linear(in_features=3, out_features=3, bias=True)\n"
        "      (ln): LayerNorm(3, eps=1e-05, bias=True)\n"
        "      (drop): Dropout(p=0.5)\n"
        "    )\n"
        "  )\n"
        "  (head): Sequential(\n"
        "    (0): Linear(in_features=3, out_features=4, bias=True)\n"
        "    (1): GELU()\n"
        "    (2): Linear(in_features=4, out_features=5, bias=False)\n"
        "  )\n"
        ")")


def test_an_optimizer_given_a_module_names_the_fix():
    model = nn.Linear(2, 3)
    with pytest.raises(TypeError, match=re.escape("AdamW takes an iterable of parameters, got a "
                                                  "Linear module; pass model.parameters()")):
        optim.AdamW(model)
    with pytest.raises(TypeError, match=re.escape("SGD takes an iterable of parameters, got a "
                                                  "single Tensor; pass [tensor]")):
        optim.SGD(model.weight)
    with pytest.raises(TypeError, match="parameter groups"):
        optim.AdamW([{"params": model.parameters(), "lr": 1e-3}])
    with pytest.raises(TypeError, match="item 0 of the parameters is a ndarray"):
        optim.AdamW([np.ones(3)])
    with pytest.raises(ValueError, match="listed more than once"):   # it would step twice
        optim.AdamW(model.parameters() + [model.weight])


def test_an_error_from_the_device_reaches_the_user_unchanged(monkeypatch):
    # the command line adds "--device cpu"; nn must not (a Python user has no such flag)
    def no_gpu(device):
        raise backend.DeviceError("device 'cuda' was requested but no GPU is here")
    monkeypatch.setattr(backend, "check_device", no_gpu)
    with pytest.raises(backend.DeviceError, match=r"^device 'cuda' was requested but no GPU is here$"):
        nn.Linear(2, 3).to("cuda")


@pytest.mark.skipif(backend.cuda_available(), reason="this machine has a GPU")
def test_model_to_cuda_without_a_gpu_has_no_command_line_hint():
    with pytest.raises(backend.DeviceError) as info:
        nn.Linear(2, 3).to("cuda")
    assert "--device" not in str(info.value)


def test_nn_re_exports_every_layer_of_layers_py():
    """The layers live in layers.py and the module system in nn.py; `nn.X` and
    `from tinysparse.nn import X` must keep naming the same objects (a layer added to layers.py
    and not re-exported fails here)."""
    from tinysparse import layers
    own = {name for name, value in vars(layers).items()
           if not name.startswith("_") and getattr(value, "__module__", None) == layers.__name__}
    assert own >= {"Linear", "Embedding", "LayerNorm", "Dropout", "GELU", "ReLU", "Tanh", "check_ids"}
    missing = sorted(name for name in own if getattr(nn, name, None) is not getattr(layers, name))
    assert not missing, f"nn.py does not re-export {missing} from layers.py"


def test_layers_py_imported_first_in_a_fresh_interpreter():
    """nn.py imports layers.py at its end and layers.py imports nn.py: either may come first."""
    code = ("from tinysparse.layers import Linear\n"
            "from tinysparse.nn import Linear as nn_Linear, Module\n"
            "assert Linear is nn_Linear and issubclass(Linear, Module)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---- sizes, rates and indices outside their domain (issue 11, kind 2) ---------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.Linear(0, 3), ValueError, r"Linear d_in \(in_features\) must be an integer >= 1, got 0"),
    (lambda: nn.Linear(2, -1), ValueError, r"Linear d_out \(out_features\) must be an integer >= 1, got -1"),
    (lambda: nn.Linear(2.0, 3), TypeError, r"Linear d_in \(in_features\) must be an integer >= 1, got 2.0"),
    (lambda: nn.Embedding(0, 3), ValueError, r"Embedding n \(num_embeddings\) must be an integer >= 1"),
    (lambda: nn.Embedding(4, True), TypeError, r"Embedding d \(embedding_dim\) must be an integer"),
    (lambda: nn.LayerNorm(3, eps=math.nan), ValueError, r"LayerNorm eps must be a positive finite number, got nan"),
    (lambda: nn.LayerNorm(3, eps=0.0), ValueError, r"LayerNorm eps must be a positive finite number"),
    (lambda: nn.LayerNorm(0), ValueError, r"LayerNorm d \(normalized_shape\) must be an integer >= 1"),
    (lambda: nn.Dropout(math.nan), ValueError, r"Dropout p must be a finite number in \[0, 1\), got nan"),
    (lambda: nn.Dropout(1.0), ValueError, r"Dropout p must be a finite number in \[0, 1\), got 1.0"),
])
def test_layers_refuse_sizes_and_rates_outside_their_domain(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_embedding_refuses_ids_outside_the_table():
    ts.manual_seed(0)
    emb = nn.Embedding(5, 3)
    np.testing.assert_array_equal(emb(np.array([4, 0])).data, emb.weight.data[[4, 0]])
    with pytest.raises(ValueError, match=re.escape("Embedding input[1] = -1 is outside the valid "
                                                   "token ids [0, 5)")):
        emb(np.array([1, -1]))                 # NumPy would read row 4
    with pytest.raises(ValueError, match=re.escape("input[0, 0] = 5 is outside the valid token ids [0, 5)")):
        emb([[5]])
    with pytest.raises(TypeError, match="integer token ids, got dtype float64"):
        emb(np.array([1.0]))


def test_linear_and_layer_norm_name_a_wrong_input_width():
    with pytest.raises(ValueError, match=re.escape("Linear(in_features=2, out_features=3, bias=True) "
                                                   "got an input of shape (4, 5); its last axis must be 2")):
        nn.Linear(2, 3)(Tensor(np.ones((4, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"LayerNorm\(3, .*\) got an input of shape \(2, 4\)"):
        nn.LayerNorm(3)(Tensor(np.ones((2, 4), dtype=np.float32)))


def test_a_module_without_forward_says_what_is_missing():
    class Empty(nn.Module):
        pass
    with pytest.raises(NotImplementedError, match=r"Empty has no forward\(\)"):
        Empty()(1)


@pytest.mark.parametrize("make, match", [
    (lambda p: optim.AdamW(p, lr=math.nan), r"AdamW lr must be a positive finite number, got nan"),
    (lambda p: optim.AdamW(p, lr=math.inf), r"AdamW lr must be a positive finite number, got inf"),
    (lambda p: optim.SGD(p, lr=-0.1), r"SGD lr must be a positive finite number, got -0.1"),
    (lambda p: optim.AdamW(p, betas=(1.0, 0.999)), r"AdamW betas\[0\] must be a finite number in \[0, 1\)"),
    (lambda p: optim.AdamW(p, betas=(0.9, math.nan)), r"AdamW betas\[1\] must be a finite number in \[0, 1\)"),
    (lambda p: optim.AdamW(p, eps=0.0), r"AdamW eps must be a positive finite number, got 0.0"),
    (lambda p: optim.AdamW(p, weight_decay=math.nan), r"AdamW weight_decay must be a finite number >= 0, got nan"),
    (lambda p: optim.AdamW(p, weight_decay=-0.1), r"AdamW weight_decay must be a finite number >= 0"),
    (lambda p: optim.AdamW(p, lr=0.5, weight_decay=2.0), r"AdamW lr \* weight_decay = 1 must be below 1"),
    (lambda p: optim.SGD(p, momentum=math.nan), r"SGD momentum must be a finite number in \[0, 1\)"),
    (lambda p: optim.SGD(p, momentum=1.0), r"SGD momentum must be a finite number in \[0, 1\)"),
    (lambda p: optim.SGD(p, weight_decay=math.inf), r"SGD weight_decay must be a finite number >= 0"),
    (lambda p: optim.CosineSchedule(optim.SGD(p), max_lr=1e-3, warmup_steps=10, max_steps=100,
                                    min_lr=1e-2), r"CosineSchedule min_lr must be a finite number in \[0, 0.001\]"),
])
def test_optimizers_refuse_rates_outside_their_domain(make, match):
    with pytest.raises(ValueError, match=match):
        make([Parameter(np.ones(2))])


@pytest.mark.parametrize("max_norm", [math.nan, -1.0, 0.0])
def test_clip_grad_norm_refuses_a_max_norm_without_meaning(max_norm):
    p = Parameter(np.ones(2))
    p.grad = np.array([3.0, 4.0], dtype=np.float32)
    with pytest.raises(ValueError, match=r"clip_grad_norm max_norm must be a positive number "
                                         r"\(math.inf: no clipping\), got"):
        optim.clip_grad_norm([p], max_norm)      # nan used to turn clipping off silently
    assert optim.clip_grad_norm([p], math.inf) == 5.0
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])


def test_the_chapters_coming_from_pytorch_table_holds():
    """lessons/02_neural_networks/README.md, section 9: each row that is about this library."""
    ts.manual_seed(0)
    lin = nn.Linear(2, 3)
    x = Tensor(np.ones((4, 2), dtype=np.float32))
    lin(x).sum().backward()
    assert type(lin.weight.grad) is np.ndarray and lin.weight.shape == (2, 3)   # (d_in, d_out)
    before = x
    x += 1.0                                          # a new Tensor, not an in-place update
    assert x is not before and np.all(before.data == 1.0)
    z = 3.0
    tanh_form = 0.5 * z * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    assert nn.GELU()(Tensor([z])).item() == pytest.approx(tanh_form, rel=1e-6)
    logits, targets = Tensor(np.zeros((2, 3, 5))), np.zeros((2, 3), dtype=np.int64)
    assert F.cross_entropy(logits, targets).item() == pytest.approx(math.log(5))   # classes last
    assert nn.Dropout().p == 0.1 and optim.AdamW(lin.parameters()).lr == 3e-4
    assert Tensor([1.0, 2.0]).dtype == np.float32 and Tensor(np.zeros(2)).dtype == np.float64
    assert lin.weight.dtype == np.float32


def test_dim_is_accepted_beside_axis():
    x = Tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.sum(dim=1).data, x.sum(axis=1).data)
    np.testing.assert_array_equal(F.softmax(x, dim=-1).data, F.softmax(x, axis=-1).data)
