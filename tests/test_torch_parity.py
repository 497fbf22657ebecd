"""Forward values and gradients against PyTorch, in float64, on identical inputs.

PyTorch is an optional reference: without it these tests skip. Each check runs the same function
in both libraries, contracts the output with one random upstream gradient, and compares the output
and every input's gradient to rtol 1e-5.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests skip")
TF = torch.nn.functional

import tinysparse as ts  # noqa: E402
from tinysparse import Tensor, nn, optim  # noqa: E402
from tinysparse import functional as F  # noqa: E402

RTOL, ATOL = 1e-5, 1e-8


def close(ours, theirs, what=""):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    ours = ours.numpy() if isinstance(ours, Tensor) else ours
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=what)


def compare(ts_fn, torch_fn, *arrays, seed=0):
    """Run both functions on the same float64 arrays; compare outputs and input gradients."""
    ours = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out_ours, out_theirs = ts_fn(*ours), torch_fn(*theirs)
    close(out_ours, out_theirs, "forward")
    upstream = np.random.default_rng(seed).standard_normal(out_ours.shape)
    out_ours.backward(upstream)
    out_theirs.backward(torch.tensor(upstream))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        close(a.grad, b.grad, f"gradient of input {i}")


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.mark.parametrize("shape, axis", [((4, 7), -1), ((2, 3, 5), 1), ((2, 3, 5), 0), ((6,), 0)])
def test_softmax_and_log_softmax(rng, shape, axis):
    x = rng.standard_normal(shape) * 3
    compare(lambda t: F.softmax(t, axis=axis), lambda t: torch.softmax(t, dim=axis), x)
    compare(lambda t: F.log_softmax(t, axis=axis), lambda t: torch.log_softmax(t, dim=axis), x)


@pytest.mark.parametrize("lead", [(6,), (2, 5)])
@pytest.mark.parametrize("ignore_index", [None, -100, 3])
def test_cross_entropy(rng, lead, ignore_index):
    V = 7
    logits = rng.standard_normal(lead + (V,)) * 2
    targets = rng.integers(0, V, size=lead)
    if ignore_index is not None:
        targets.reshape(-1)[[0, -1]] = ignore_index  # ignore two rows
    kwargs = {} if ignore_index is None else {"ignore_index": ignore_index}
    compare(lambda z: F.cross_entropy(z, targets, **kwargs),
            lambda z: TF.cross_entropy(z.reshape(-1, V), torch.tensor(targets.reshape(-1)), **kwargs),
            logits)


@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 4), (1, 1, 6)])
def test_layer_norm(rng, shape):
    C = shape[-1]
    x = rng.standard_normal(shape) * 2 + 1
    w, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    compare(lambda x, w, b: F.layer_norm(x, w, b), lambda x, w, b: TF.layer_norm(x, (C,), w, b, eps=1e-5),
            x, w, b)
    compare(lambda x: F.layer_norm(x), lambda x: TF.layer_norm(x, (C,), eps=1e-5), x)


def test_gelu(rng):
    x = rng.standard_normal((4, 9)) * 3
    compare(F.gelu, lambda t: TF.gelu(t, approximate="tanh"), x)


@pytest.mark.parametrize("sa, sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((1, 3, 4), (2, 4, 5)),
                                    ((4,), (2, 4, 3)), ((2, 3, 4), (4,)), ((4,), (4,)),
                                    ((3, 4), (2, 4, 2))])
def test_matmul(rng, sa, sb):
    compare(lambda a, b: a @ b, lambda a, b: a @ b, rng.standard_normal(sa), rng.standard_normal(sb))


def test_two_layer_mlp_with_identical_weights(rng):
    """Linear - GELU - LayerNorm - Linear, then cross-entropy: loss and every gradient."""
    d_in, d_hidden, V, B, T = 5, 8, 6, 2, 3
    ts.manual_seed(0)
    ours = nn.Sequential([nn.Linear(d_in, d_hidden, dtype=np.float64), nn.GELU(),
                          nn.LayerNorm(d_hidden, dtype=np.float64), nn.Linear(d_hidden, V, dtype=np.float64)])
    ours[2].weight.data[:] = rng.uniform(0.5, 1.5, d_hidden)  # not the trivial init
    ours[2].bias.data[:] = rng.standard_normal(d_hidden)
    theirs = torch.nn.Sequential(torch.nn.Linear(d_in, d_hidden), torch.nn.GELU(approximate="tanh"),
                                 torch.nn.LayerNorm(d_hidden, eps=1e-5), torch.nn.Linear(d_hidden, V)).double()
    with torch.no_grad():
        for i in (0, 2, 3):
            w = ours[i].weight.data
            # tinysparse's Linear weight is (d_in, d_out); torch's is (d_out, d_in)
            theirs[i].weight.copy_(torch.tensor(w.T if i != 2 else w))
            theirs[i].bias.copy_(torch.tensor(ours[i].bias.data))
    x = rng.standard_normal((B, T, d_in))
    targets = rng.integers(0, V, size=(B, T))
    loss = F.cross_entropy(ours(Tensor(x)), targets)
    loss_t = TF.cross_entropy(theirs(torch.tensor(x)).reshape(-1, V), torch.tensor(targets.reshape(-1)))
    close(loss, loss_t, "loss")
    loss.backward()
    loss_t.backward()
    for i in (0, 2, 3):
        g = ours[i].weight.grad
        close(g.T if i != 2 else g, theirs[i].weight.grad, f"layer {i} weight gradient")
        close(ours[i].bias.grad, theirs[i].bias.grad, f"layer {i} bias gradient")


def _set_grads(ours, theirs, grads):
    for p, q, g in zip(ours, theirs, grads):
        p.grad = g.copy()
        q.grad = torch.tensor(g)


def test_adamw_five_steps(rng):
    shapes = [(4, 3), (3,), (2, 1, 5)]
    initial = [rng.standard_normal(s) for s in shapes]
    ours = [nn.Parameter(a.copy()) for a in initial]
    theirs = [torch.tensor(a, requires_grad=True) for a in initial]
    kwargs = dict(lr=0.05, betas=(0.85, 0.98), eps=1e-8, weight_decay=0.2)
    opt = optim.AdamW(ours, decay_1d=True, **kwargs)  # torch decays every parameter
    opt_t = torch.optim.AdamW(theirs, **kwargs)
    for step in range(5):
        _set_grads(ours, theirs, [rng.standard_normal(s) for s in shapes])
        opt.step()
        opt_t.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-6, atol=1e-12,
                                       err_msg=f"step {step + 1}, parameter {i}")


def test_sgd_momentum_five_steps(rng):
    shapes = [(3, 2), (2,)]
    initial = [rng.standard_normal(s) for s in shapes]
    ours = [nn.Parameter(a.copy()) for a in initial]
    theirs = [torch.tensor(a, requires_grad=True) for a in initial]
    opt = optim.SGD(ours, lr=0.1, momentum=0.9, weight_decay=0.01)
    opt_t = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(5):
        _set_grads(ours, theirs, [rng.standard_normal(s) for s in shapes])
        opt.step()
        opt_t.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_sigmoid_over_the_whole_range_including_the_tails(rng):
    x = np.concatenate([rng.uniform(-40, 40, 30), [-700.0, -100.0, -20.0, -17.0, 0.0, 20.0, 700.0]])
    compare(lambda t: t.sigmoid(), torch.sigmoid, x)
    compare(F.gelu, lambda t: TF.gelu(t, approximate="tanh"), rng.uniform(-12, 12, 40))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_max_and_min_with_dim_match_torch(rng, dim):
    x = rng.permutation(12).reshape(3, 4).astype(np.float64)   # no ties: one index each
    for name in ("max", "min"):
        ours = getattr(Tensor(x), name)(dim=dim, keepdim=True)
        theirs = getattr(torch.tensor(x), name)(dim=dim, keepdim=True)
        close(ours.values, theirs.values, name)
        np.testing.assert_array_equal(ours.indices.numpy(), theirs.indices.numpy())
        compare(lambda t: getattr(t, name)(dim=dim).values, lambda t: getattr(t, name)(dim=dim).values, x)


def test_shape_methods_match_torch(rng):
    x = rng.standard_normal((2, 1, 3, 1))
    cases = [lambda t: t.squeeze(), lambda t: t.squeeze(1), lambda t: t.squeeze(0),
             lambda t: t.unsqueeze(-1), lambda t: t.unsqueeze(2), lambda t: t.flatten(),
             lambda t: t.flatten(1), lambda t: t.flatten(0, 2), lambda t: t.clone() * 2,
             lambda t: t.sum(dim=(0, 2), keepdim=True), lambda t: t.mean(dim=-2)]
    for i, fn in enumerate(cases):
        compare(fn, fn, x, seed=i)
    ours, theirs = Tensor(x), torch.tensor(x)
    assert ours.numel() == theirs.numel() and ours.dim() == theirs.dim()
    assert ours.argmax().item() == theirs.argmax().item()
    np.testing.assert_array_equal(ours.argmin(dim=2).numpy(), theirs.argmin(dim=2).numpy())
