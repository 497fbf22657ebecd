"""The bench's grouped matmul suite, `--suite gmm` (tinysparse/bench/grouped.py, grouped_why.py):
every strategy's forward, dX and dW against one dense matmul of equal FLOPs, numba checked on
awkward routings against the reference, and the table of why routed is slower than dense, split
into shape, weights and uneven rows: every column checked against what it must be (rows per
expert, weights' MiB, padded rows) or against the medians run_why returns.

Speed is never asserted: each runs the suite on a model small enough to take a second or two
(bench_helpers.bench) and checks that it works and what it prints.
"""
import pytest

from bench_helpers import bench


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
