"""The benchmark runs end to end and its PyTorch twin computes what tinysparse computes.

Speed is never asserted: these check that the command works and prints its table, on a model
small enough to take a second or two.
"""
import argparse
import sys

import numpy as np
import pytest

import tinysparse as ts
from tinysparse.bench import add_bench_arguments, build_torch_twin, run_bench
from tinysparse.gpt import GPT, GPTConfig

TINY = ["--n-layer", "1", "--n-embd", "16", "--block-size", "8", "--batch-size", "2",
        "--iters", "2", "--warmup", "1", "--settle", "0"]


def bench(*flags):
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args([*TINY, *flags])
    return run_bench(args)


def test_defaults_are_the_headline_config():
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args([])
    assert (args.batch_size, args.n_layer, args.n_head, args.n_embd) == (16, 4, 4, 128)
    assert (args.block_size, args.vocab_size, args.threads) == (64, 96, 2)
    assert not args.no_torch and not args.profile


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


@pytest.mark.parametrize("bias", [True, False])
def test_torch_twin_matches_tinysparse(bias):
    """Same weights, same batch: the same loss and the same gradients (Linear's transposed)."""
    torch = pytest.importorskip("torch")
    ts.manual_seed(3)
    config = GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=8, bias=bias)
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
