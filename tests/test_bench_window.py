"""bench/window.py: the sampling window without the engine computes the model's own bits, and the
sampling suite prints the three-way table (no speed is asserted)."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse.adaptive import KVCache
from tinysparse.bench.window import window_logits_without_the_engine, window_times
from tinysparse.gpt import GPT, GPTConfig
from bench_helpers import bench

SMALL = dict(vocab_size=23, n_layer=2, n_head=2, n_embd=12, block_size=9)


def _model(dtype=np.float32, **extra):
    ts.manual_seed(1)
    model = GPT(GPTConfig(**SMALL, **extra)).eval()
    rng = np.random.default_rng(2)
    for p in model.parameters():        # every weight and bias away from its init (biases start 0)
        p.data = (p.data + 0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [1, 5, 9])
def test_the_bodies_alone_give_the_forwards_bits(dtype, T):
    model = _model(dtype)
    idx = np.random.default_rng(T).integers(0, 23, size=(2, T))
    with ts.no_grad():
        want = model(idx, cache=KVCache(2, 9), logits_to_keep=1)[0].data
        plain = model(idx, logits_to_keep=1)[0].data
    got = window_logits_without_the_engine(model, idx)
    assert got.shape == (2, 1, 23) and got.dtype == dtype
    assert np.array_equal(got, want) and np.array_equal(got, plain)


@pytest.mark.parametrize("extra", [dict(n_expert=4, top_k=2, d_expert=8), dict(mod_capacity=0.5),
                                   dict(bias=False)])
def test_other_models_are_refused_by_name(extra):
    with pytest.raises(ValueError, match=r"^window_logits_without_the_engine follows the dense GPT "
                                         r"with biases only \(n_expert="):
        window_logits_without_the_engine(_model(**extra), np.zeros((1, 3), dtype=np.int64))


def test_a_float16_model_is_refused_not_given_other_bits():
    model = _model(np.float16)       # apply computes float16 in float32: the bodies alone would not
    with pytest.raises(ValueError, match="follows float32 and float64 only, got float16"):
        window_logits_without_the_engine(model, np.zeros((1, 3), dtype=np.int64))


def test_window_times_refuses_to_time_two_different_computations(monkeypatch):
    torch = pytest.importorskip("torch")
    from tinysparse.bench import window
    from tinysparse.bench.torch_twins import build_torch_twin
    model = _model()
    twin = build_torch_twin(model).eval()
    idx = np.zeros((1, 9), dtype=np.int64)
    times = window_times(model, twin, idx, blocks=2, calls=1, settle=0)
    assert set(times) == {"tinysparse", "bodies only", "pytorch"}
    assert all(len(v) == 2 and min(v) > 0 for v in times.values())
    monkeypatch.setattr(window, "window_logits_without_the_engine",
                        lambda m, i: np.zeros((1, 1, 23), np.float32))
    with pytest.raises(RuntimeError, match="not the same bits"):
        window_times(model, twin, idx, blocks=1, calls=1, settle=0)
    assert torch is not None


def test_the_sampling_suite_prints_the_window_table(capsys):
    pytest.importorskip("torch")
    assert bench("--suite", "decode") == 0                      # bench_helpers.TINY: block size 8
    out = capsys.readouterr().out
    table = out[out.index("the 8-token window each step past block_size re-runs"):].splitlines()
    assert table[1].split() == ["forward", "ms", "/", "pytorch", "quartiles"]
    rows = [line.split() for line in table[2:5]]
    assert [r[0] for r in rows[:1]] + [" ".join(rows[1][:2]), rows[2][0]] == [
        "tinysparse", "bodies only", "pytorch"]
    assert rows[2][-2:] == ["1.00x", "1.00-1.00x"]          # the twin over itself


def test_a_model_in_training_mode_is_refused():
    model = _model().train()
    with pytest.raises(ValueError, match=r"computes the eval-mode forward \(no dropout\); call "
                                         r"model.eval\(\) first"):
        window_logits_without_the_engine(model, np.zeros((1, 3), dtype=np.int64))


def test_the_bodies_read_each_layer_norms_own_eps():
    model = _model()
    for i, ln in enumerate([m for b in model.h for m in (b.ln_1, b.ln_2)] + [model.ln_f]):
        ln.eps = 0.5 + i          # far from the default 1e-5: a body that dropped it would differ
    idx = np.random.default_rng(3).integers(0, 23, size=(1, 7))
    with ts.no_grad():
        want = model(idx, logits_to_keep=1)[0].data
    assert np.array_equal(window_logits_without_the_engine(model, idx), want)


def test_window_times_are_seconds_per_forward_of_each_version(monkeypatch):
    pytest.importorskip("torch")
    import time

    from tinysparse.bench import torch_decode
    from tinysparse.bench.torch_twins import build_torch_twin
    model = _model()
    twin = build_torch_twin(model).eval()
    calls = {"pytorch": 0}
    real = torch_decode.forward_cached

    def counted(*args):
        calls["pytorch"] += 1
        return real(*args)

    monkeypatch.setattr(torch_decode, "forward_cached", counted)
    t0 = time.perf_counter()
    times = window_times(model, twin, np.zeros((1, 9), dtype=np.int64), blocks=3, calls=5, settle=0)
    elapsed = time.perf_counter() - t0
    assert calls["pytorch"] == 3 * (3 + 5)          # per block: 3 untimed warm-up forwards, 5 timed
    total = sum(sum(v) * 5 for v in times.values())  # seconds per forward x forwards timed
    assert 0 < total < elapsed
