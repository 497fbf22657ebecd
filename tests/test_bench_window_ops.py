"""bench/window_ops.py: one block of the sampling window op by op, tinysparse's Function bodies
against PyTorch's ops on the same inputs (no speed is asserted)."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse.gpt import GPT, GPTConfig
from bench_helpers import bench

torch = pytest.importorskip("torch")

from tinysparse.bench.torch_twins import build_torch_twin  # noqa: E402
from tinysparse.bench.window_ops import block_ops, op_times  # noqa: E402

OPS = ["layer norm", "qkv linear", "attention", "out linear", "fc linear", "gelu", "proj linear",
       "residual add"]


def _model_and_twin():
    ts.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=23, n_layer=2, n_head=2, n_embd=12, block_size=9)).eval()
    rng = np.random.default_rng(2)
    for p in model.parameters():        # every weight and bias away from its init (biases start 0)
        p.data = (p.data + 0.3 * rng.standard_normal(p.shape)).astype(np.float32)
    return model, build_torch_twin(model).eval()


def test_each_pair_computes_the_same_values_on_the_window_shape():
    model, twin = _model_and_twin()
    ops = block_ops(model, twin, 7)
    assert [name for name, _, _ in ops] == OPS
    with torch.no_grad():
        for name, ours, theirs in ops:
            a, b = ours(), theirs().numpy()
            assert a.shape == b.shape == ((1, 7, 36) if name == "qkv linear" else
                                          (1, 7, 48) if name in ("fc linear", "gelu") else
                                          (1, 7, 12)), name
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_ops_read_what_they_read_in_the_blocks_forward():
    model, twin = _model_and_twin()
    run = {name: ours for name, ours, _ in block_ops(model, twin, 7)}
    x = run["residual add"]() - run["out linear"]()      # the block's input, to float32 rounding
    with ts.no_grad():
        want = model.h[0](ts.Tensor(x)).data             # (1, 7, 12): the engine's block
    # the second residual add: the stream after attention plus the MLP's output, whose layer norm
    # reads that stream (not the block's input)
    np.testing.assert_allclose(run["residual add"]() + run["proj linear"](), want,
                               rtol=1e-4, atol=1e-4)


def test_a_pair_that_computes_different_values_is_refused_by_name():
    model, twin = _model_and_twin()
    twin.h[0].mlp.c_fc.weight.data *= 1.001             # 0.1% off: more than float32 rounding
    with pytest.raises(RuntimeError, match="^fc linear: tinysparse and PyTorch do not compute the "
                                           "same values"):
        block_ops(model, twin, 5)


def test_op_times_are_seconds_per_call_for_both_sides_of_every_op():
    import time
    calls, turns = {"ours": 0, "theirs": 0}, []

    def count(op, side):
        def run():
            time.sleep(0.001)                            # a call that takes a known least time
            calls[side] += 1
            if not turns or turns[-1] != (op, side):
                turns.append((op, side))
        return run

    ops = [(op, count(op, "ours"), count(op, "theirs")) for op in ("a", "b")]
    t0 = time.perf_counter()
    times = op_times(ops, blocks=3, calls=4, settle=0)
    elapsed = time.perf_counter() - t0
    assert list(times) == ["a", "b"]
    assert all(len(t[side]) == 3 and min(t[side]) >= 0.001 for t in times.values()
               for side in ("tinysparse", "pytorch"))
    assert calls == {"ours": 2 * 3 * (3 + 4), "theirs": 2 * 3 * (3 + 4)}   # 3 warm-up calls a block
    assert sum(sum(t[side]) * 4 for t in times.values() for side in t) < elapsed   # per call
    # block 0 starts with tinysparse, block 1 with pytorch, block 2 with tinysparse, for each op
    first = [("a", "ours"), ("a", "theirs"), ("b", "ours"), ("b", "theirs")]
    second = [("a", "theirs"), ("a", "ours"), ("b", "theirs"), ("b", "ours")]
    assert turns == first + second + first


def test_the_decode_suite_prints_the_block_op_by_op(capsys):
    assert bench("--suite", "decode") == 0                      # bench_helpers.TINY: block size 8
    out = capsys.readouterr().out
    table = out[out.index("one block of that window op by op"):].splitlines()
    assert table[1].split() == ["op", "tinysparse", "us", "pytorch", "us", "/", "pytorch"]
    rows = table[2:2 + len(OPS) + 1]
    assert [r[:14].strip() for r in rows] == OPS + ["sum"]
    us = np.array([[float(v) for v in r[14:].split()[:2]] for r in rows])
    np.testing.assert_allclose(us[-1], us[:-1].sum(axis=0), atol=0.5)   # the sum row sums the ops
