"""The bench's MoE suites: `--suite moe` (tinysparse/bench/moe.py), training steps of the dense and
the MoE models against PyTorch's loop over experts, and `--suite layer` (bench/layer.py), one MoE
layer per dispatch backend against a dense FFN and scaled in expert count at fixed active FLOPs;
with --profile, the MoE step per Function and the dispatch primitives per backend.

Speed is never asserted: each runs the suite on a model small enough to take a second or two
(bench_helpers.bench) and checks that it works and what it prints.
"""
import pytest

from bench_helpers import bench


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


def test_profile_covers_the_moe_step_and_the_dispatch_primitives(capsys):
    assert bench("--suite", "moe", "layer", "--no-torch", "--profile") == 0
    out = capsys.readouterr().out
    assert "tiny-moe steps, timed per Function" in out and "GroupedLinear.backward" in out
    primitives = out[out.index("profile: dispatch primitives"):].splitlines()
    assert primitives[1].split() == ["primitive", "numpy", "numba"]   # registered ones left out
    assert [line.split()[0] for line in primitives[2:11]] == [
        "plan", "gather", "scatter", "grouped_mm", "grouped_mm_dx", "grouped_mm_dw", "combine",
        "combine_backward", "total"]
