"""The command line, run as a user runs it: `python -m tinysparse ...` in a subprocess.

Bad input must end with a non-zero status and ONE line on stderr, "error: <problem>; <fix>",
never a traceback. argparse's own errors (unknown choice, not a number) keep argparse's format:
a usage line and "tinysparse ...: error: ...", status 2.
"""
import os
import re
import signal
import subprocess
import sys

import pytest

from tinysparse.engine.backend import cuda_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-iters", "2", "--data", "synthetic", "--max-bytes", "20000",
        "--sample-tokens", "20"]


def env():
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e.pop("TINYSPARSE_DEVICE", None)
    e.pop("TINYSPARSE_DEBUG", None)
    return e


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tinysparse", *map(str, args)], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *words):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def assert_usage_error(proc, *words):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("usage: tinysparse") and "error: " in lines[-1], proc.stderr
    for w in words:
        assert w in lines[-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-step run that the sample and resume cases use."""
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run("train", *TINY, "--max-iters", 3, "--out-dir", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_train_then_sample(run_dir):
    out, proc = run_dir
    assert "done: step 3" in proc.stdout and "bits/byte" in proc.stdout
    assert "---- sample" in proc.stdout
    names = sorted(os.listdir(out))
    assert names[1:] == ["ckpt.json", "config.json", "log.jsonl"]
    assert re.fullmatch(r"ckpt-000003-[0-9a-f]{12}\.safetensors", names[0])
    s = run("sample", "--out-dir", out, "--prompt", "add:", "--max-new-tokens", 30)
    assert s.returncode == 0 and s.stderr == ""
    assert s.stdout.startswith("add:") and len(s.stdout) > 4


@pytest.mark.parametrize("args, words", [
    (["--data", "nope"], ["unknown --data 'nope'", "stdlib"]),
    (["--data", "file:does/not/exist.txt"], ["no such file"]),
    (["--n-embd", "30", "--n-head", "4"], ["divisible", "--n-embd"]),
    (["--max-iters", "0"], ["--max-iters"]),
    (["--max-iters", "-5"], ["--max-iters"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--lr", "0"], ["--lr"]),
    (["--lr", "-0.1"], ["--lr"]),
    (["--block-size", "0"], ["--block-size"]),
    (["--dropout", "1.5"], ["--dropout"]),
])
def test_bad_train_input(tmp_path, args, words):
    assert_one_line_error(run("train", *TINY, "--max-iters", 2, "--out-dir", tmp_path, *args), *words)
    assert not (tmp_path / "ckpt.json").exists()


def test_file_too_short_for_the_block_size(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("print('hi')\n")
    proc = run("train", *TINY, "--block-size", 64, "--data", f"file:{short}", "--out-dir", tmp_path)
    assert_one_line_error(proc, "--block-size")


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu():
    assert_one_line_error(run("train", *TINY, "--device", "cuda", "--out-dir", "unused"),
                          "cuda", "--device cpu")


def test_resume_without_a_checkpoint(tmp_path):
    assert_one_line_error(run("train", "--resume", "--out-dir", tmp_path / "none"),
                          "--resume", "no checkpoint")


def test_resume_with_a_different_model(run_dir):
    assert_one_line_error(run("train", "--resume", "--out-dir", run_dir[0], "--n-embd", 32),
                          "n_embd=16", "--n-embd")


def test_sample_without_a_run(tmp_path):
    assert_one_line_error(run("sample", "--out-dir", tmp_path / "none"), "no checkpoint",
                          "make train")


def test_sample_from_a_corrupt_checkpoint(tmp_path):
    (tmp_path / "ckpt.json").write_bytes(b"{not json")
    assert_one_line_error(run("sample", "--out-dir", tmp_path), "ckpt.json", "not valid JSON")


def test_an_old_pickle_checkpoint_is_named_never_opened(tmp_path):
    (tmp_path / "ckpt.pkl").write_bytes(b"not even a pickle")
    assert_one_line_error(run("sample", "--out-dir", tmp_path), "ckpt.pkl", "old pickle format",
                          "convert-checkpoint")


@pytest.mark.parametrize("args, words", [
    (["--temperature", "0"], ["--temperature"]),
    (["--temperature", "-1"], ["--temperature"]),
    (["--top-k", "-1"], ["--top-k"]),
    (["--max-new-tokens", "-1"], ["--max-new-tokens"]),
    (["--prompt", ""], ["--prompt"]),
])
def test_bad_sample_input(run_dir, args, words):
    assert_one_line_error(run("sample", "--out-dir", run_dir[0], *args), *words)


@pytest.mark.parametrize("args, words", [
    (["train", "--preset", "huge"], ["--preset", "huge"]),
    (["train", "--max-iters", "many"], ["--max-iters"]),
    (["train", "--device", "tpu"], ["--device"]),
    (["fly"], ["fly"]),
    (["convert-checkpoint"], ["--out-dir"]),
    ([], ["required"]),
])
def test_argparse_errors(args, words):
    assert_usage_error(run(*args), *words)


def test_diverging_run_exits_non_zero(tmp_path):
    proc = run("train", *TINY, "--max-iters", 50, "--lr", "1e10", "--warmup-iters", 0,
               "--out-dir", tmp_path)
    assert_one_line_error(proc, "is nan at step", "--lr")


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_saves_and_exits_130(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tinysparse", "train", *TINY, "--max-iters",
                             "1000000", "--out-dir", str(tmp_path)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:            # the first evaluation runs inside the Ctrl-C handler
            if line.startswith("step      0:"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted at step" in out and "checkpoint saved to" in out
    assert "Traceback" not in err and (tmp_path / "ckpt.json").exists()
