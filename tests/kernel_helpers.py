"""Shared by the tests of the compiled loops (engine/*_kernels.py, optim_kernels.py): their
answers must be the array code's to the bit, so the tests compare bits, count the loops' calls
(a loop that silently never ran would pass any comparison) and train a small GPT both ways."""
import numpy as np

from tinysparse import optim
from tinysparse.engine import random as ts_random
from tinysparse.gpt import GPT, GPTConfig


def assert_same_bits(a, b):
    """Equal shape, dtype and bits (signed zeros, last bits); NaN where the other has NaN (its
    payload bits are not a result)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b))
    assert a[~nan].tobytes() == b[~nan].tobytes()


def count_calls(monkeypatch, module, names):
    """Wrap module.<name> for each name so that each call appends the name to the returned
    list and then runs the real function."""
    calls = []
    for name in names:
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
    return calls


def gpt_after_three_steps(fused=None, **extra):
    """A seeded GPT (vocab 40, 2 layers, width 24; `extra` config fields on top) after three
    AdamW steps (lr 1e-2, weight decay 0.1, `fused` as AdamW takes it) on fixed random batches:
    (model, {parameter name: its bytes})."""
    tokens = np.random.default_rng(3).integers(0, 40, size=(3, 2, 9))
    ts_random.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=24, block_size=8, **extra))
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    for batch in tokens:
        opt.zero_grad()
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
    return model, {n: p.data.tobytes() for n, p in model.named_parameters()}
