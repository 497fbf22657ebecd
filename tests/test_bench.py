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
    from tinysparse.bench import torch_twins       # every suite builds its twin through it
    real = torch_twins.build_torch_twin

    def off_by_a_bit(model):              # a twin whose weights differ: its losses must not match
        twin = real(model)
        for p in twin.parameters():
            p.data.mul_(1.5)
        return twin
    monkeypatch.setattr(torch_twins, "build_torch_twin", off_by_a_bit)
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
    from tinysparse.bench import targets
    targets.reset()
    assert bench("--suite", "sampling") == 0
    out = capsys.readouterr().out
    assert "pytorch tok/s" in out
    header = out.index("pytorch tok/s")
    rows = [line.split() for line in out[header:].split("\n\n")[0].splitlines()[1:]]
    assert [r[0] for r in rows] == ["7", "32"]                # block_size - 1, 4 x block_size
    # ts/pt is the median of the per-round ratios (the recorded targets), not the ratio of the
    # two rate columns: on a busy machine those part (test_the_decode_suite_records_... pins it)
    for r, key in zip(rows, ("decode_short", "decode_long")):
        ts_rate, pt_rate, ratio = float(r[1]), float(r[2]), float(r[3].rstrip("x"))
        assert ts_rate > 0 and pt_rate > 0 and ratio == pytest.approx(targets.results()[key], abs=0.005)


def test_sampling_suite_without_torch_says_why_in_one_line(capsys):
    assert bench("--suite", "sampling", "--no-torch") == 0
    out = capsys.readouterr().out
    assert "PyTorch comparison skipped (--no-torch)" in out and "pytorch tok/s" not in out


def test_grouped_suite_times_every_strategy_against_a_dense_matmul(capsys):
    assert bench("--suite", "gmm") == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "numba (default)" in line)
    for name in ("numpy reference", "numba parallel", "per-expert BLAS", "padded batched", "dense"):
        assert name in header
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.split()[:1] in (["forward"], ["dX"], ["dW"])}
    assert set(rows) == {"forward", "dX", "dW"} and rows["forward"].rstrip().endswith("1.0x")
    assert "per-expert BLAS calls" in out and "the dense shape" in out


def test_grouped_suite_checks_numba_on_awkward_routings(capsys):
    assert bench("--suite", "gmm") == 0
    out = capsys.readouterr().out
    awkward = out[out.index("awkward routings"):].splitlines()[2:6]
    assert [line.split()[0] for line in awkward] == ["experts", "one", "1000", "a"]
    for line in awkward:
        diff = float(line.split()[-3])
        assert diff < 1e-3, line                          # numba computes what the reference does


def test_every_run_ends_with_the_targets_table(capsys):
    from tinysparse.bench import targets
    assert bench("--suite", "gmm") == 0
    out = capsys.readouterr().out
    table = out[out.index("Targets of issue 16"):].splitlines()[2:]
    assert len(table) == len(targets.TARGETS)
    measured = [line for line in table if line.split(". ", 1)[1].startswith("grouped matmul")]
    assert len(measured) == 3 and all(line.split()[-1] in ("yes", "no") for line in measured)
    assert all(line.rstrip().endswith("not run") for line in table if line not in measured)
    assert set(targets.results()) == {"gmm_fwd", "gmm_dx", "gmm_dw"}


def test_paired_ratio_is_the_median_of_the_per_round_ratios():
    from tinysparse.bench.common import paired_ratio
    # the machine slows tenfold over the last two rounds, both sides alike, and a burst of load
    # hits one side of round 3: the rounds' ratios are 1.1, 1.1, 4, 1.1, 1.2, while the ratio of
    # the two medians (40 / 20) says 2
    slow, fast = [11, 22, 40, 110, 240], [10, 20, 10, 100, 200]
    median, q25, q75 = paired_ratio(slow, fast)
    assert (median, q25, q75) == pytest.approx((1.1, 1.1, 1.2))
    assert np.median(slow) / np.median(fast) == pytest.approx(2.0)     # not what it returns
    assert paired_ratio([3.0], [2.0]) == pytest.approx((1.5, 1.5, 1.5))


SLOW, FAST = [11.0, 22.0, 40.0, 110.0, 240.0], [10.0, 20.0, 10.0, 100.0, 200.0]   # as above


def test_the_step_suite_records_the_median_of_its_per_step_ratios(capsys, monkeypatch):
    pytest.importorskip("torch")
    from tinysparse.bench import dense, targets
    runs = {"tinysparse": (SLOW, [4.6] * 5), dense.ARRAY_CODE: (SLOW, [4.6] * 5),
            "pytorch": (FAST, [4.6] * 5)}
    monkeypatch.setattr(dense, "time_alternating", lambda *a, **k: runs)
    targets.reset()
    assert bench("--suite", "step") == 0
    assert targets.results()["step"] == pytest.approx(1.1)          # not 40 / 20
    assert targets.spreads()["step"] == pytest.approx((1.1, 1.2))
    out = capsys.readouterr().out
    assert "1.10x (median of the per-step ratios, quartiles 1.10-1.20x), 2.00x (ratio" in out
    row = next(x for x in out.splitlines() if x.startswith("1. dense training step"))
    assert row.split()[-3:] == ["1.10x", "no", "1.10-1.20x"]


def test_the_decode_suite_records_rates_pytorch_time_over_ours(monkeypatch):
    pytest.importorskip("torch")
    from tinysparse.bench import sampling, targets
    tokens = np.zeros((1, 8), dtype=np.int64)
    monkeypatch.setattr(sampling, "torch_sampling_speed", lambda *a, **k: (
        {"tinysparse": FAST, "pytorch": SLOW}, {"tinysparse": tokens, "pytorch": tokens}))
    targets.reset()
    assert bench("--suite", "decode") == 0
    # a rate ratio: ours over PyTorch's tokens/s is PyTorch's time over ours, per round
    assert targets.results()["decode_short"] == pytest.approx(1.1)
    assert targets.results()["decode_long"] == pytest.approx(1.1)
    assert targets.spreads()["decode_long"] == pytest.approx((1.1, 1.2))


def test_paired_ratio_refuses_timings_that_do_not_pair():
    from tinysparse.bench.common import paired_ratio
    with pytest.raises(ValueError, match="got 1 and 3"):
        paired_ratio([1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="got 0 and 0"):
        paired_ratio([], [])


def test_a_target_is_met_by_its_own_direction():
    from tinysparse.bench import targets
    targets.reset()
    targets.record("step", 0.9, (0.8, 1.05))
    targets.record("decode_short", 0.9)
    with pytest.raises(KeyError, match="no bench target 'nope'"):
        targets.record("nope", 1.0)
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        targets.print_targets()
    lines = buf.getvalue().splitlines()
    step = next(line for line in lines if line.startswith("1. dense training step"))
    assert step.split()[-2:] == ["yes", "0.80-1.05x"]     # met by the median; quartiles after
    assert next(line for line in lines if "block-1 tokens" in line).endswith("no")   # a rate: >= 1


def test_decode_suite_compares_cached_sampling_with_the_twin_and_records_it(capsys):
    pytest.importorskip("torch")
    from tinysparse.bench import targets
    assert bench("--suite", "decode", "--profile") == 0
    out = capsys.readouterr().out
    assert "pytorch tok/s" in out and "cached greedy generate calls" in out
    assert set(targets.results()) == {"decode_short", "decode_long"}
    assert not any(line.split()[:1] == ["dense"] for line in out.splitlines())  # nor sampling's table


def test_profile_covers_the_moe_step_and_the_dispatch_primitives(capsys):
    assert bench("--suite", "moe", "layer", "--no-torch", "--profile") == 0
    out = capsys.readouterr().out
    assert "tiny-moe steps, timed per Function" in out and "GroupedLinear.backward" in out
    primitives = out[out.index("profile: dispatch primitives"):].splitlines()
    assert primitives[1].split() == ["primitive", "numpy", "numba"]   # registered ones left out
    assert [line.split()[0] for line in primitives[2:11]] == [
        "plan", "gather", "scatter", "grouped_mm", "grouped_mm_dx", "grouped_mm_dw", "combine",
        "combine_backward", "total"]


def test_grouped_suite_splits_the_gap_into_shape_weights_and_uneven_rows(capsys):
    from tinysparse.bench.grouped_why import PAD_ROWS, SHAPES, run_why
    assert bench("--suite", "gmm") == 0
    assert "why the grouped matmul" in capsys.readouterr().out
    T, C = 40, 8
    med = run_why(T, C, warmup=0, iters=2, indent="  ")
    out = capsys.readouterr().out
    lines = out[out.index("why the grouped matmul"):].splitlines()[2:]
    assert all(line.startswith("  ") for line in lines)
    assert [" ".join(line.split()[:3]) for line in lines] == [label for label, *_ in SHAPES]
    for line, (label, E, k, width) in zip(lines, SHAPES):
        cells = line.split()[3:]
        assert float(cells[0]) == round(T * k / E)                     # rows per expert
        fewest, most = map(int, cells[1].split("-"))
        assert 0 <= fewest <= T * k / E <= most <= T                   # a token visits an expert once
        assert float(cells[2]) == round(E * C * width * C * 4 / 2**20, 1)   # weights MiB
        pad_rows = int(cells[8])
        assert pad_rows % PAD_ROWS == 0 and T * k <= pad_rows < T * k + PAD_ROWS * E
        m = med[label]
        assert float(cells[9]) == pytest.approx(m["call us"], abs=0.051)
        assert float(cells[10]) == pytest.approx(m["loop us"], abs=0.0051)
        want = (m["routed"] / m["dense"], m["one weight"] / m["dense"],
                m["E weights"] / m["one weight"], m["routed"] / m["E weights"])
        got = [float(c.rstrip("x")) for c in cells[11::2]]
        assert got == pytest.approx(want, abs=0.006)                   # printed to 2 decimals


def test_gpu_vs_torch_compares_equal_models_and_reports_their_ratio(capsys):
    """gpu_vs_torch (gpu_check --full's stage) on the CPU: the twins start equal (same first loss),
    the ratio and tokens/s are the medians' own, and the CLI prints that line."""
    pytest.importorskip("torch")
    from tinysparse.bench import gpu_vs_torch
    r = gpu_vs_torch.step_vs_torch("tiny", iters=2, warmup=1, device="cpu")
    assert r["ok"] and r["loss_diff"] < 1e-5 and r["batch"] == (16, 64)
    assert r["ratio"] == pytest.approx(r["ms"]["tinysparse"] / r["ms"]["pytorch"])
    assert r["tok_s"]["pytorch"] == pytest.approx(16 * 64 / (r["ms"]["pytorch"] / 1e3))
    line = gpu_vs_torch.describe(r)
    assert line.startswith("tiny (0.81M params, B=16, T=64) on cpu: tinysparse ")
    assert f"ratio {r['ratio']:.2f}x" in line and "MISMATCH" not in line
    assert "MISMATCH" in gpu_vs_torch.describe({**r, "ok": False, "loss_diff": 0.5})
    assert gpu_vs_torch.main(["--preset", "tiny", "--iters", "1", "--warmup", "1",
                              "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("tiny (0.81M params")


def test_gpu_vs_torch_refuses_twins_that_differ(monkeypatch, capsys):
    """A twin whose first loss differs (one weight off) fails the check, and the CLI exits 1;
    an unknown preset and a missing GPU are one-line errors, not tracebacks."""
    torch = pytest.importorskip("torch")
    from tinysparse.bench import gpu_vs_torch, torch_twins
    built = torch_twins.build_torch_twin

    def off_by_a_little(model):
        twin = built(model)
        with torch.no_grad():
            twin.wte.weight.mul_(3.0)            # logits 3x: a first loss far off 1e-3
        return twin
    monkeypatch.setattr(torch_twins, "build_torch_twin", off_by_a_little)
    r = gpu_vs_torch.step_vs_torch("tiny", iters=1, warmup=1, device="cpu")
    assert not r["ok"] and r["loss_diff"] > gpu_vs_torch.GPU_LOSS_TOLERANCE
    assert gpu_vs_torch.main(["--preset", "tiny", "--iters", "1", "--warmup", "1",
                              "--device", "cpu"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gpu_vs_torch.main(["--preset", "tiny-adaptive", "--device", "cpu"])
    assert "invalid choice: 'tiny-adaptive'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_vs_torch.main(["--preset", "tiny"]) == 2
    assert capsys.readouterr().err.startswith("error: this PyTorch (")
    assert gpu_vs_torch.stage("tiny")[0] is None                   # gpu_check shows SKIP
