"""The `bench` command (tinysparse/bench/__init__.py) and its dense training-step suite
(bench/dense.py): its defaults are the headline config; it prints the tinysparse row with MFU and
the matmul peak, and with torch the PyTorch row, the ratio and the loss check, without it a
one-line way to install it; --profile groups the time by Function; zero iterations are refused.

Speed is never asserted: each runs the suite on a model small enough to take a second or two
(bench_helpers.bench) and checks that it works and what it prints.
"""
import argparse
import sys

import pytest

from tinysparse.bench import add_bench_arguments
from bench_helpers import bench


def test_defaults_are_the_headline_config():
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args([])
    assert (args.batch_size, args.n_layer, args.n_head, args.n_embd) == (16, 4, 4, 128)
    assert (args.block_size, args.vocab_size, args.threads) == (64, 96, 2)
    assert not args.no_torch and not args.profile
    assert args.suite == ["step", "moe", "layer", "gmm", "decode"] and args.layer_tokens == 1024


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
