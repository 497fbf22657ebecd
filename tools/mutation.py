"""Mutation testing of one module (or a few): do the tests notice a planted bug?

    make mutation MODULE=tinysparse/training/loop.py
    make mutation MODULE="tinysparse/training/sampling.py tinysparse/gpt.py::GPT.generate"
    .venv/bin/python tools/mutation.py tinysparse/moe/dispatch.py [--jobs 2] [--tests tests/x.py]

mutmut (3.8) copies the package into mutants/, plants one small bug at a time in every function
of the named modules (an operator flipped, a constant moved by one, a call argument dropped,
...), and runs the tests against each. A mutant the tests fail on is KILLED; one they pass is a
SURVIVOR: either a bug the suite would let through, or an equivalent mutant (a change no input
can observe). Score = killed / total.

Which tests run: first the module's own test files (TESTS below; a module without an entry gets
every test file but the slow whole-program ones) run once with every function instrumented, so
mutmut learns which tests call which function; then each mutant runs only the tests that called
its function, stopping at the first failure. One module takes minutes on 2 cores.

Every run starts from an empty mutants/ folder: mutmut keeps a survivor's verdict even after new
tests are added, so a cached run would report stale survivors. `--survivors` is the exception,
for the loop of killing survivors: it keeps the last run of the same modules and retests only
the mutants that were not killed, with the tests as they are now (mutmut collects the new tests'
coverage first). It needs the same test FILES as the last run: a changed TESTS entry makes mutmut
forget every verdict, so it is refused then (run without --survivors). A target `path.py::Name` or `path.py::Class.method` scores only that function's
mutants.

Exit status: 0 when every selected mutant was killed, 1 when some survived (or were not run),
2 on bad arguments.
"""
from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = "mutants"         # mutmut's working copy (fixed by mutmut); git-ignored
SEP = "ǁ"                   # mutmut's separator in the mangled name of a method

# The training loop's tests: every one of these files runs train() (test_train_progress.py calls
# the run's progress line, reporting.py, directly), so each exercises the loop, its evaluation
# and its reports.
TRAIN_TESTS = ["tests/test_train_resume.py", "tests/test_train_last_good_checkpoint.py",
               "tests/test_train_config.py", "tests/test_train_learning.py",
               "tests/test_train_moe_run.py", "tests/test_train_progress.py",
               "tests/test_train_config_applied.py", "tests/test_train_evaluation.py",
               "tests/test_train_divergence.py", "tests/test_train_interrupt.py",
               "tests/test_train_output.py"]
# The MoE layer's tests: every one of these files routes and dispatches tokens through the layer.
MOE_TESTS = ["tests/test_moe_gradients.py", "tests/test_moe_routing.py",
             "tests/test_moe_balancing.py", "tests/test_moe_capacity.py",
             "tests/test_moe_settings.py", "tests/test_moe_gpt.py", "tests/test_moe_empty_batch.py"]

# Every primitive's gradcheck, dtype rules and numerics (engine/ops.py and ops_unary.py).
PRIMITIVE_TESTS = ["tests/test_engine_grads.py", "tests/test_dtypes.py",
                   "tests/test_numerics_examples.py", "tests/test_numerics_float16.py",
                   "tests/test_numerics_properties.py"]

# Module -> the test files that exercise it. A mutant runs only those of these tests that call
# its function, so an entry only narrows the first, instrumented run.
TESTS = {
    # the GPU path's host reads, the device stream's resume and the sampler on the device (the
    # strict CuPy stand-in); log.jsonl's cumulative train_flops (the ledger's tests)
    "tinysparse/training/loop.py": TRAIN_TESTS + ["tests/test_fake_gpu_training.py",
                                                  "tests/test_ledger_cli.py"],
    "tinysparse/training/evaluation.py": TRAIN_TESTS + ["tests/test_evaluation.py"],
    "tinysparse/training/reporting.py": TRAIN_TESTS,
    "tinysparse/training/checkpoint.py": ["tests/test_checkpoint.py",
                                          "tests/test_checkpoint_state.py",
                                          "tests/test_checkpoint_refusals.py"],
    "tinysparse/training/checkpoint_schema.py": ["tests/test_checkpoint_schema_fields.py",
                                                 "tests/test_checkpoint_schema_generators.py",
                                                 "tests/test_checkpoint_schema_meta.py",
                                                 "tests/test_checkpoint_schema_arrays.py",
                                                 "tests/test_checkpoint.py",
                                                 "tests/test_checkpoint_state.py",
                                                 "tests/test_checkpoint_refusals.py"],
    "tinysparse/training/atomic.py": ["tests/test_checkpoint.py", "tests/test_train_resume.py",
                                      "tests/test_train_last_good_checkpoint.py",
                                      "tests/test_train_learning.py",
                                      "tests/test_train_moe_run.py"],
    "tinysparse/training/sampling.py": ["tests/test_sampling.py", "tests/test_train_resume.py",
                                        "tests/test_train_learning.py",
                                        "tests/test_train_moe_run.py"],
    "tinysparse/gpt.py": ["tests/test_gpt.py", "tests/test_sampling.py", "tests/test_logits_to_keep.py",
                          "tests/test_compute.py", "tests/test_kv_cache.py", "tests/test_moe_gpt.py",
                          "tests/test_early_exit.py", "tests/test_mod.py"],
    "tinysparse/gpt_inputs.py": ["tests/test_gpt.py", "tests/test_sampling.py",
                                 "tests/test_fake_gpu.py"],
    "tinysparse/engine/linear.py": ["tests/test_linear.py", "tests/test_layers.py"],
    # the primitives: their own tests, and PRIMITIVE_TESTS (gradchecks, dtype rules, numerics)
    "tinysparse/engine/ops.py": ["tests/test_ops_binary.py", "tests/test_ops_matmul.py",
                                 *PRIMITIVE_TESTS],
    "tinysparse/engine/ops_unary.py": ["tests/test_ops_unary.py", *PRIMITIVE_TESTS,
                                       "tests/test_fake_gpu.py", "tests/test_gpu_glue.py"],
    "tinysparse/layers.py": ["tests/test_layers.py", "tests/test_nn.py", "tests/test_optim.py",
                             "tests/test_gpt.py", "tests/test_fake_gpu.py"],
    "tinysparse/gpt_config.py": ["tests/test_gpt.py", "tests/test_moe_gpt.py",
                                 "tests/test_moe_settings.py", "tests/test_null_experts.py",
                                 "tests/test_top_p.py", "tests/test_mod.py"],
    "tinysparse/moe/dispatch.py": ["tests/test_moe_dispatch.py", "tests/test_numba_dispatch.py",
                                   *MOE_TESTS, "tests/test_fake_gpu.py"],
    "tinysparse/moe/router.py": ["tests/test_router.py", *MOE_TESTS, "tests/test_router_topk.py"],
    "tinysparse/ledger/counter.py": ["tests/test_ledger.py", "tests/test_ledger_counter.py",
                                     "tests/test_ledger_energy.py",
                                     "tests/test_ledger_cli.py", "tests/test_compute.py",
                                     "tests/test_vs_dense.py"],
    "tinysparse/ledger/leverage.py": ["tests/test_leverage.py"],
    "tinysparse/ledger/compare.py": ["tests/test_vs_dense.py"],
    "tinysparse/parallel/cost.py": ["tests/test_parallel_cost.py"],
    "cuda_kernels/gelu.py": ["tests/test_cuda_gelu.py"],
    "cuda_kernels/layer_norm.py": ["tests/test_cuda_layer_norm.py"],
    "tinysparse/bench/gpu_vs_torch.py": ["tests/test_bench_twins.py"],
    "tinysparse/bench/common.py": ["tests/test_bench_targets.py", "tests/test_bench_window.py",
                                   "tests/test_gelu_kernels.py", "tests/test_profile.py"],
    "tinysparse/bench/window.py": ["tests/test_bench_window.py"],
    "tinysparse/bench/window_ops.py": ["tests/test_bench_window_ops.py"],
    "tinysparse/bench/scaling.py": ["tests/test_bench_scaling.py"],
    "tinysparse/adaptive/compute.py": ["tests/test_compute.py", "tests/test_compute_map.py",
                                       "tests/test_early_exit.py"],
    "tinysparse/adaptive/decode.py": ["tests/test_sampling.py", "tests/test_kv_cache.py",
                                      "tests/test_logits_to_keep.py", "tests/test_early_exit.py",
                                      "tests/test_gpt.py"],
}
# Whole-program tests (every chapter script, benchmarks, PyTorch parity): minutes each, and
# every mutant would rerun them. Left out of the fallback selection.
SLOW = {"tests/test_lessons.py", "tests/test_bench_command.py", "tests/test_bench_twins.py",
        "tests/test_bench_moe.py", "tests/test_bench_grouped.py", "tests/test_bench_sampling.py",
        "tests/test_bench_targets.py", "tests/test_torch_parity.py", "tests/test_gpu.py"}


def parse_target(text):
    """'path.py' or 'path.py::Class.method' -> (path, qualified name or None)."""
    path, _, name = text.partition("::")
    if not path.endswith(".py") or not (ROOT / path).is_file():
        raise SystemExit(f"error: {path!r} is not a Python file of this repository; name one "
                         f"like MODULE=tinysparse/training/loop.py")
    return path, name or None


def module_name(path):
    return path[:-len(".py")].replace("/", ".").removesuffix(".__init__")


def mutant_pattern(path, name):
    """The fnmatch pattern of a target's mutant names (mutmut: 'pkg.mod.x_func__mutmut_3',
    'pkg.mod.xǁClassǁmethod__mutmut_3')."""
    if name is None:
        return f"{module_name(path)}.*"
    *classes, func = name.split(".")
    mangled = f"x{SEP}{'.'.join(classes)}{SEP}{func}" if classes else f"x_{func}"
    return f"{module_name(path)}.{mangled}__mutmut_*"


def select_tests(paths, override=None):
    if override:
        return override
    if all(p in TESTS for p in paths):
        return sorted({t for p in paths for t in TESTS[p]})
    every = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    return [t for t in every if t not in SLOW]


TESTS_USED = "tests-used.json"     # in mutants/: the test files of the last run


def check_same_tests(tests):
    """--survivors needs the last run's test files: mutmut forgets every verdict when the test
    selection changes (a new file in TESTS), so only the survivors would be rerun and every
    killed mutant would come back 'not checked'."""
    used = ROOT / MUTANTS / TESTS_USED
    if used.is_file() and json.loads(used.read_text()) != list(tests):
        raise SystemExit(f"error: the test files changed since the last run (then "
                         f"{used.read_text().strip()}, now {json.dumps(list(tests))}), which "
                         f"makes mutmut forget every verdict; run without --survivors")


def configure(paths, tests):
    """mutmut's settings from [tool.mutmut] in pyproject.toml, narrowed to this run's modules
    and test files (mutmut reads one static config; this is its documented dataclass)."""
    from mutmut import configuration
    cfg = configuration.config()
    cfg.only_mutate = list(paths)
    cfg.pytest_add_cli_args_test_selection = list(tests)
    return cfg


def results(paths):
    """{mutant name: (mutmut status, source path)} of the modules' meta files."""
    from mutmut.stats import status_by_exit_code
    out = {}
    for path in paths:
        meta = json.loads((ROOT / MUTANTS / f"{path}.meta").read_text())
        for name, code in meta["exit_code_by_key"].items():
            out[name] = (status_by_exit_code[code], path)
    return out


# What counts as killed: a failing test, a timeout (the mutant hung the tests), and pytest's
# "interrupted" (exit status 2: a KeyboardInterrupt escaped into pytest, which in a mutant's run
# can only come from the mutated code, e.g. a broken Ctrl-C handler; a Ctrl-C of yours stops
# the whole mutmut run instead).
NOTICED = ("killed", "timeout", "check was interrupted by user")


def summarize(statuses, patterns):
    """(killed, total, the others sorted) of the mutants matching any pattern; see NOTICED."""
    chosen = {n: s for n, (s, _) in statuses.items()
              if any(fnmatch.fnmatch(n, p) for p in patterns)}
    killed = sum(s in NOTICED for s in chosen.values())
    others = sorted((n, s) for n, s in chosen.items() if s not in NOTICED)
    return killed, len(chosen), others


def keep_torch_on_one_thread():
    """Make torch.set_num_threads(n) set 1 thread, whatever n (bench/common.py's threads() asks
    for 2): a child that mutmut forks from a process whose torch ran 2 OpenMP threads hangs at
    its first parallel op. Timings under mutmut mean nothing anyway. No-op without torch."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
    except ImportError:
        return
    set_threads = torch.set_num_threads
    set_threads(1)
    torch.set_num_threads = lambda n: set_threads(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="+", help="path.py or path.py::Class.method")
    parser.add_argument("--tests", nargs="+", help="test files to use instead of the map")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS") or 2),
                        help="mutants tested at once (default 2, or $JOBS)")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    parser.add_argument("--survivors", action="store_true",
                        help="retest only the last run's survivors (after adding tests)")
    args = parser.parse_args(argv)
    targets = [parse_target(t) for t in args.targets]
    paths = sorted({p for p, _ in targets})
    patterns = [mutant_pattern(p, n) for p, n in targets]
    tests = select_tests(paths, args.tests)

    os.chdir(ROOT)
    # as in tests/conftest.py: Numba's CUDA simulator, set before numba is first imported
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    # mutmut forks each mutant's test run from a process that has run Numba's parallel kernels;
    # GNU OpenMP (Numba's 'omp' layer, its choice here) kills such a child with SIGTERM ("fork()
    # called from a process already using GNU OpenMP"), Numba's own workqueue layer does not
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    # PyTorch (the bench tests' twins) hangs a child forked after the parent ran it on 2 threads
    # (its OpenMP pool is not in the child): every mutant of bench/window.py timed out, and a
    # timeout is no kill. So torch stays on one thread in this process and its children
    keep_torch_on_one_thread()
    configure(paths, tests)
    if args.survivors:
        if not all((ROOT / MUTANTS / f"{p}.meta").is_file() for p in paths):
            raise SystemExit(f"error: no earlier run of {', '.join(paths)} in {MUTANTS}/; run "
                             f"without --survivors first")
        check_same_tests(tests)
        names = summarize(results(paths), patterns)[2]
        if not names:
            print("no survivors to retest")
        names = [n for n, _ in names]
    else:
        shutil.rmtree(MUTANTS, ignore_errors=True)
        only = [p for p, (_, n) in zip(patterns, targets) if n is not None]
        # a function target: only its mutants run (mutmut takes fnmatch patterns of mutant names)
        names = [*only, *(mutant_pattern(p, None) for p, n in targets if n is None)] if only else []
    print(f"mutating {', '.join(args.targets)}\ntests: {' '.join(tests)}", flush=True)
    import mutmut.__main__ as mutmut_main
    if names or not args.survivors:
        mutmut_main._run(names, args.jobs)
    (ROOT / MUTANTS / TESTS_USED).write_text(json.dumps(tests) + "\n")

    statuses = results(paths)
    killed, total, others = summarize(statuses, patterns)
    how = collections.Counter(s for n, (s, _) in statuses.items()
                              if s in NOTICED and any(fnmatch.fnmatch(n, p) for p in patterns))
    print(f"\nmutation score of {', '.join(args.targets)}: {killed}/{total} killed"
          + (f" ({100 * killed / total:.1f}%)" if total else "")
          + (f"; of them {how['timeout']} by a timeout" if how["timeout"] else "")
          + (f"; {how[NOTICED[2]]} stopped the tests with KeyboardInterrupt"
             if how[NOTICED[2]] else ""))
    if others:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        print(f"{len(others)} not killed (see one with: .venv/bin/mutmut show NAME):")
        for name, status in others:
            print(f"  {status:10} {name}")
            if args.diffs:
                print("    " + get_diff_for_mutant(name, path=statuses[name][1]).replace("\n", "\n    "))
    return 0 if total and killed == total else 1


if __name__ == "__main__":
    sys.exit(main())
