"""GPU or CUDA simulator? Chapter 07's run.py asks this before anything imports numba.

numba reads NUMBA_ENABLE_CUDASIM once, at its first import, and then runs @cuda.jit kernels either
on a GPU (0) or in its CUDA simulator on the CPU (1). This file imports only the standard library,
so run.py can import it first, choose, and import numba after:

    --simulator given, or NUMBA_ENABLE_CUDASIM set to anything but 0   -> the simulator
    NUMBA_ENABLE_CUDASIM=0                                              -> the GPU (run.py checks)
    neither: a cheap look for an NVIDIA device, then a child process with the simulator off
    compiles and launches a kernel; the GPU if that worked, else the simulator, with the reason
"""
import glob
import os
import re
import shutil
import subprocess
import sys

PROBE = """from numba import cuda
import numpy as np
@cuda.jit
def one(a):
    a[cuda.grid(1)] = 1
a = np.zeros(64)
one[2, 32](a)
assert a.sum() == 64
"""


def why_no_gpu():
    """None when Numba can compile and run a kernel on a GPU here, else the reason.

    A cheap look first (no NVIDIA device file and no nvidia-smi: no GPU), then the real test, in a
    child process so that THIS process has not imported numba yet: compile and launch a kernel."""
    if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")    # /dev/dxg: WSL2
            or shutil.which("nvidia-smi")):
        return "no NVIDIA GPU here (no /dev/nvidia*, no nvidia-smi)"
    try:
        r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180,
                           env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    except subprocess.TimeoutExpired:
        return "a test kernel did not finish in 180 s"
    if r.returncode != 0:
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()] or ["?"]
        err = max((i for i, ln in enumerate(lines) if re.match(r"[\w.]+(Error|Exception)\b", ln)),
                  default=-1)                   # the exception line, and what follows it
        why = ' '.join(lines[err:])[:160]
        fix = ("pip install 'numpy<2.5' (numba-cuda 0.30 cannot compile with NumPy 2.5)"
               if "module 'numpy' has no attribute" in why else "pip install -e '.[cuda]'")
        return f"a GPU may be here but Numba cannot run a kernel on it ({why}); {fix}"
    return None


def choose_mode(force_simulator):
    """('simulator' | 'gpu', why), with NUMBA_ENABLE_CUDASIM set to match."""
    given = os.environ.get("NUMBA_ENABLE_CUDASIM", "")
    if force_simulator:
        mode, why = "simulator", "--simulator was given"
    elif given not in ("", "0"):
        mode, why = "simulator", f"NUMBA_ENABLE_CUDASIM={given} was set"
    elif given == "0":
        mode, why = "gpu", "NUMBA_ENABLE_CUDASIM=0 was set"
    else:
        reason = why_no_gpu()
        mode, why = (("gpu", "Numba ran a test kernel on the GPU") if reason is None
                     else ("simulator", reason))
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1" if mode == "simulator" else "0"
    return mode, why
