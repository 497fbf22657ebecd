"""tools/mutation.py (`make mutation`): its target syntax, its test map, its score, and that the
normal suite never collects mutmut's copy of the tests."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_and_their_mutant_names(tool):
    assert tool.parse_target("tinysparse/gpt.py::GPT.generate") == ("tinysparse/gpt.py",
                                                                    "GPT.generate")
    assert tool.parse_target("tinysparse/moe/router.py") == ("tinysparse/moe/router.py", None)
    with pytest.raises(SystemExit, match="not a Python file of this repository"):
        tool.parse_target("tinysparse/nowhere.py")
    assert tool.mutant_pattern("tinysparse/moe/router.py", None) == "tinysparse.moe.router.*"
    assert tool.mutant_pattern("tinysparse/gpt.py", "GPT.generate") == \
        "tinysparse.gpt.xǁGPTǁgenerate__mutmut_*"
    assert tool.mutant_pattern("tinysparse/training/sampling.py", "sample_text") == \
        "tinysparse.training.sampling.x_sample_text__mutmut_*"


def test_the_names_follow_mutmuts():
    mutmut = pytest.importorskip("mutmut.mutation.trampoline_templates")
    assert mutmut.mangle_function_name(name="generate", class_name="GPT") == "xǁGPTǁgenerate"
    assert mutmut.mangle_function_name(name="sample", class_name=None) == "x_sample"


def test_every_mapped_module_and_test_file_exists(tool):
    for module, tests in tool.TESTS.items():
        assert (ROOT / module).is_file(), module
        assert tests and all((ROOT / t).is_file() for t in tests), module


def test_test_selection(tool):
    assert tool.select_tests(["tinysparse/training/loop.py", "tinysparse/training/evaluation.py"]) \
        == ["tests/test_evaluation.py", "tests/test_fake_gpu_training.py",
            "tests/test_ledger_cli.py", "tests/test_train_config.py",
            "tests/test_train_config_applied.py", "tests/test_train_divergence.py",
            "tests/test_train_evaluation.py", "tests/test_train_interrupt.py",
            "tests/test_train_last_good_checkpoint.py", "tests/test_train_learning.py",
            "tests/test_train_moe_run.py", "tests/test_train_output.py",
            "tests/test_train_progress.py", "tests/test_train_resume.py"]
    fallback = tool.select_tests(["tinysparse/nn.py"])            # no entry: all but the slow
    assert "tests/test_ops_unary.py" in fallback and not set(fallback) & tool.SLOW
    assert tool.select_tests(["tinysparse/nn.py"], ["tests/test_x.py"]) == ["tests/test_x.py"]


def test_the_score_counts_failures_timeouts_and_interrupts_and_lists_the_rest(tool):
    statuses = {"m.x_f__mutmut_1": ("killed", "m.py"), "m.x_f__mutmut_2": ("survived", "m.py"),
                "m.x_f__mutmut_3": ("timeout", "m.py"), "m.x_g__mutmut_1": ("no tests", "m.py"),
                "n.x_h__mutmut_1": ("survived", "n.py"),
                "m.x_g__mutmut_2": ("check was interrupted by user", "m.py")}
    assert tool.summarize(statuses, ["m.*"]) == (3, 5, [("m.x_f__mutmut_2", "survived"),
                                                        ("m.x_g__mutmut_1", "no tests")])
    assert tool.summarize(statuses, ["m.x_f__mutmut_*"])[:2] == (2, 3)


def test_survivors_are_retested_only_with_the_last_runs_test_files(tool, tmp_path, monkeypatch):
    """mutmut resets every verdict when the test selection changes: --survivors would then
    rerun the survivors alone and report every killed mutant as 'not checked'."""
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    tool.check_same_tests(["tests/test_a.py"])                # no record of a last run: fine
    (tmp_path / tool.MUTANTS).mkdir()
    (tmp_path / tool.MUTANTS / tool.TESTS_USED).write_text('["tests/test_a.py"]\n')
    tool.check_same_tests(["tests/test_a.py"])
    with pytest.raises(SystemExit, match=r'^error: the test files changed since the last run '
                                         r'\(then \["tests/test_a.py"\], now \["tests/test_a.py", '
                                         r'"tests/test_b.py"\]\).*run without --survivors$'):
        tool.check_same_tests(["tests/test_a.py", "tests/test_b.py"])

def test_torch_stays_on_one_thread_whatever_a_test_asks(tool, monkeypatch):
    """A child forked after torch ran 2 OpenMP threads hangs: under the tool, the bench tests'
    threads(2) must leave torch on 1. A user's OMP_NUM_THREADS is kept."""
    torch = pytest.importorskip("torch")
    real, before = torch.set_num_threads, torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", real)       # the tool's patch is undone after
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    try:
        tool.keep_torch_on_one_thread()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "3"
        monkeypatch.delenv("OMP_NUM_THREADS")
        tool.keep_torch_on_one_thread()
        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        real(before)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_pytest_never_collects_the_mutants_folder():
    import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "mutants" in config["tool"]["pytest"]["ini_options"]["norecursedirs"]
    assert config["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert "mutants/" in (ROOT / ".gitignore").read_text().splitlines()
