"""Shared by the benchmark's tests (test_bench_command.py, test_bench_twins.py, test_bench_moe.py,
test_bench_grouped.py, test_bench_sampling.py, test_bench_targets.py, test_bench_window.py,
test_bench_window_ops.py): `bench(*flags)` runs `python -m tinysparse bench` in this process
with TINY's flags first (a 1-layer, 16-wide model, 2 timed steps: a second or two a suite) and
the test's after them. Not a test module: nothing here is collected.
"""
import argparse

from tinysparse.bench import add_bench_arguments, run_bench

TINY = ["--n-layer", "1", "--n-embd", "16", "--block-size", "8", "--batch-size", "2",
        "--iters", "2", "--warmup", "1", "--settle", "0", "--layer-tokens", "24"]


def bench(*flags):
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args([*TINY, *flags])
    return run_bench(args)
