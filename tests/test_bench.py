"""The benchmark runs end to end and its PyTorch twin computes what tinysparse computes.

Speed is never asserted: these check that the command works and prints its table, on a model
small enough to take a second or two.
"""
import argparse
import sys

import numpy as np
import pytest

import tinysparse as ts
from tinysparse.bench import add_bench_arguments, run_bench
from tinysparse.bench.torch_twins import build_torch_twin
from tinysparse.gpt import GPT, GPTConfig

TINY = ["--n-layer", "1", "--n-embd", "16", "--block-size", "8", "--batch-size", "2",
        "--iters", "2", "--warmup", "1", "--settle", "0", "--layer-tokens", "24"]


def bench(*flags):
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args([*TINY, *flags])
    return run_bench(args)


def test_defaults_are_the_headline_config():
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args([])
    assert (args.batch_size, args.n_layer, args.n_head, args.n_embd) == (16, 4, 4, 128)
    assert (args.block_size, args.vocab_size, args.threads) == (64, 96, 2)
    assert not args.no_torch and not args.profile
    assert args.suite == ["step", "moe", "layer"] and args.layer_tokens == 1024


def test_bench_without_torch_prints_the_tinysparse_row(capsys):
    assert bench("--no-torch") == 0
    out = capsys.readouterr().out
    assert "config: vocab 96, n_layer 1" in out
    assert "median ms" in out and "MFU" in out
    assert any(line.startswith("tinysparse") for line in out.splitlines())
    assert not any(line.startswith("pytorch") for line in out.splitlines())
    assert "skipped (--no-torch)" in out
    assert "matmul peak" in out and "GFLOP/s" in out


def test_bench_when_torch_is_missing_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert bench() == 0
    out = capsys.readouterr().out
    assert "torch is not installed" in out and "pip install torch" in out
    assert any(line.startswith("tinysparse") for line in out.splitlines())


def test_bench_with_torch_prints_both_rows_the_ratio_and_the_loss_check(capsys):
    pytest.importorskip("torch")
    assert bench() == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("tinysparse") for line in lines)
    assert any(line.startswith("pytorch") for line in lines)
    assert any(line.startswith("ratio tinysparse/pytorch:") for line in lines)
    assert any(line.startswith("loss check:") and "(OK" in line for line in lines)


def test_bench_profile_groups_time_by_function(capsys):
    assert bench("--no-torch", "--profile") == 0
    out = capsys.readouterr().out
    assert "profile:" in out
    assert "MatMul.forward" in out and "MatMul.backward" in out
    assert "engine (tensor.py backward/apply)" in out
    assert "optimizer (AdamW step, zero_grad)" in out


def test_bench_rejects_zero_iterations(capsys):
    assert bench("--no-torch", "--iters", "0") == 2


def test_moe_suite_prints_every_model_and_checks_the_twins(capsys):
    pytest.importorskip("torch")
    assert bench("--suite", "moe") == 0
    out = capsys.readouterr().out
    for row in ("dense", "tiny-moe", "tiny-moe (torch loop)", "E8 top-2 d128 (torch loop)"):
        assert any(line.startswith(row + " ") for line in out.splitlines()), row
    assert "ratio tiny-moe / dense step" in out
    assert out.count("PyTorch loop over experts") == 2 and "MISMATCH" not in out
    assert "config: vocab" not in out                 # the dense suite did not run


def test_layer_suite_compares_backends_and_scales_the_expert_count(capsys):
    assert bench("--suite", "layer", "--no-torch") == 0
    out = capsys.readouterr().out
    assert "dense FFN" in out and "E8 top-2 d2C numpy" in out and "E64 top-8 dC/2 numpy" in out
    assert "Scaling at fixed active FLOPs" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["8"], ["128"])]
    assert [r[0] for r in rows] == ["8", "128"] and rows[0][2] == "1.00x"


def test_a_twin_mismatch_fails_the_bench(capsys, monkeypatch):
    pytest.importorskip("torch")
    from tinysparse.bench import moe as bench_moe
    real = bench_moe.build_torch_twin

    def off_by_a_bit(model):              # a twin whose weights differ: its losses must not match
        twin = real(model)
        for p in twin.parameters():
            p.data.mul_(1.5)
        return twin
    monkeypatch.setattr(bench_moe, "build_torch_twin", off_by_a_bit)
    assert bench("--suite", "moe") == 1
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_expert", [0, 4])
def test_torch_twin_matches_tinysparse(bias, n_expert):
    """Same weights, same batch: the same loss and the same gradients (Linear's transposed);
    n_expert=4: the MoE as PyTorch's loop over experts, aux and z losses included."""
    torch = pytest.importorskip("torch")
    ts.manual_seed(3)
    config = GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=8, bias=bias,
                       n_expert=n_expert, top_k=2, n_shared=1 if n_expert else 0)
    model = GPT(config)
    twin = build_torch_twin(model)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(3, config.block_size + 1))
    idx, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()

    _, loss = model(idx, targets)
    _, twin_loss = twin(torch.from_numpy(idx), torch.from_numpy(targets))
    assert abs(loss.item() - twin_loss.item()) < 1e-4

    loss.backward()
    twin_loss.backward()
    ours = dict(model.named_parameters())
    for name, p in twin.named_parameters():
        grad = p.grad.numpy()
        expected = ours[name].grad
        if isinstance(twin.get_submodule(name.rsplit(".", 1)[0]), torch.nn.Linear) and name.endswith("weight"):
            expected = expected.T
        np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5, err_msg=name)


def test_sampling_suite_times_generate_with_and_without_the_kv_cache(capsys):
    assert bench("--suite", "sampling") == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.split()[:1] in (["dense"], ["moe"], ["adaptive"])]
    assert [(r[0], r[1]) for r in rows] == [("dense", "7"), ("dense", "32"), ("moe", "7"),
                                            ("moe", "32"), ("adaptive", "7"), ("adaptive", "32")]
    assert all(r[-1] == "yes" for r in rows)           # cached and uncached drew the same tokens
    assert "config: vocab" not in out                  # the dense suite did not run


def test_sampling_suite_fails_when_the_cache_changes_the_tokens(capsys, monkeypatch):
    from tinysparse.bench import sampling
    real = sampling._timed_generate

    def broken(model, n_new, kv_cache, seed=0, **kw):  # a cache that loses the thread
        return real(model, n_new, kv_cache, seed=seed + int(bool(kv_cache)), **kw)

    monkeypatch.setattr(sampling, "_timed_generate", broken)
    assert bench("--suite", "sampling") == 1
    assert " NO" in capsys.readouterr().out


def test_sampling_suite_times_tinysparse_against_the_torch_twin_cache(capsys):
    pytest.importorskip("torch")
    assert bench("--suite", "sampling") == 0
    out = capsys.readouterr().out
    assert "pytorch tok/s" in out
    header = out.index("pytorch tok/s")
    rows = [line.split() for line in out[header:].splitlines()[1:] if line.strip()]
    assert [r[0] for r in rows] == ["7", "32"]                # block_size - 1, 4 x block_size
    for r in rows:
        ts_rate, pt_rate, ratio = float(r[1]), float(r[2]), float(r[3].rstrip("x"))
        assert ts_rate > 0 and pt_rate > 0 and ratio == pytest.approx(ts_rate / pt_rate, rel=0.05, abs=0.01)


def test_sampling_suite_without_torch_says_why_in_one_line(capsys):
    assert bench("--suite", "sampling", "--no-torch") == 0
    out = capsys.readouterr().out
    assert "PyTorch comparison skipped (--no-torch)" in out and "pytorch tok/s" not in out
