"""make gpu-check (tinysparse/bench/gpu_check.py) where there is no GPU: it says so in one line
and exits 2, and the training command it runs still takes its flags. gpu-check runs this file
with the kernels' tests, so it skips with them where they have nowhere to run."""
import os
import subprocess
import sys

import pytest

import tinysparse as ts
from cuda_helpers import skip_module_without_a_device

skip_module_without_a_device()


NO_CUPY_GPU = pytest.mark.skipif(ts.backend.cuda_available(),
                                 reason="a GPU is here: the script would run its full check")


@NO_CUPY_GPU
def test_gpu_check_says_there_is_no_gpu_and_exits_2():
    r = subprocess.run([sys.executable, "-m", "tinysparse.bench.gpu_check"], capture_output=True,
                       text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU here")


def test_gpu_check_training_command_runs(tmp_path):
    """The flags gpu_check passes to `tinysparse train` still exist: two steps on the CPU."""
    from tinysparse.bench import gpu_check
    ok, detail = gpu_check.stage_train("numpy", 2, timeout=120, device="cpu")
    assert ok, detail
