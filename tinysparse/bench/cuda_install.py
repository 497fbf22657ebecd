"""Install the CuPy and numba-cuda wheels that match this machine's NVIDIA driver.

    python -m tinysparse.bench.cuda_install                 # what `make gpu-check` and
                                                            # `make train DEVICE=cuda` run first
    python -m tinysparse.bench.cuda_install --dry-run       # print the pip commands, run none
    python -m tinysparse.bench.cuda_install --dry-run --driver-cuda 13.0    # as if on CUDA 13.0
    python -m tinysparse.bench.cuda_install --dry-run --driver-cuda none    # as if no driver

CuPy publishes one wheel per CUDA major version (cupy-cuda12x, cupy-cuda13x), and numba-cuda an
extra per major version ([cu12], [cu13]); the project's extras `cuda12` and `cuda13` name them.
The wheel must match the DRIVER's CUDA version (a CUDA-12 wheel on a CUDA-13 driver works, a
CUDA-13 wheel on a CUDA-12 driver does not), and two CuPy wheels in one environment overwrite
each other's `cupy` module, so any other CuPy wheel is uninstalled first.

The driver's version: libcuda's cuDriverGetVersion, through ctypes (it needs no GPU work, not
even cuInit), else the "CUDA Version" that nvidia-smi prints. When neither answers, one line
says which extra to choose and the exit status is 2. Installing is idempotent: with the right
wheels already there it runs nothing. Imports nothing of tinysparse (it runs before CuPy is).
"""
import argparse
import ctypes
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTRAS = {12: ("cuda12", "cupy-cuda12x"), 13: ("cuda13", "cupy-cuda13x")}   # CUDA major -> both
EXIT_OK, EXIT_FAILED, EXIT_UNKNOWN = 0, 1, 2
DETECT = object()                   # --driver-cuda not given: ask the driver


def driver_cuda_version():
    """(major, minor) of the CUDA version the NVIDIA driver supports, or None without a driver."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            return version.value // 1000, (version.value % 1000) // 10    # 12040 -> (12, 4)
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text):
    """(major, minor) from nvidia-smi's header ("CUDA Version: 12.4"), or None."""
    m = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_version(text):
    """--driver-cuda: '12.4', '13', or 'none' -> (major, minor) or None."""
    if text.strip().lower() == "none":
        return None
    m = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--driver-cuda {text!r}: give a version like 12.4, or none")
    return int(m.group(1)), int(m.group(2) or 0)


def choose_extra(version):
    """(extra, cupy wheel) for a driver's CUDA version; ValueError with the reason if none fits.
    A newer major than the wheels know runs the newest of them (drivers run older CUDA)."""
    major = version[0]
    if major < min(EXTRAS):
        raise ValueError(f"the NVIDIA driver supports CUDA {version[0]}.{version[1]}, older than "
                         f"CuPy's wheels need (CUDA {min(EXTRAS)} or newer): update the driver")
    return EXTRAS[min(major, max(EXTRAS))]


def installed_distributions():
    """Names (lower case) of the installed distributions of this Python."""
    return {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}


def numpy_version():
    """This Python's NumPy as (major, minor)."""
    major, minor = importlib.metadata.version("numpy").split(".")[:2]
    return int(major), int(minor)


def plan_commands(version, installed, python=sys.executable, repo=REPO, numpy=None):
    """The pip commands (argument lists) that give this Python the wheels for `version`:
    uninstall any other CuPy wheel, install the matching extra; [] when nothing is missing.
    `numpy` is NumPy's (major, minor), this Python's by default: from 2.5 on the extra is
    installed again, since it caps NumPy below 2.5 (pyproject.toml says why)."""
    numpy = numpy or numpy_version()
    extra, wheel = choose_extra(version)
    others = sorted(n for n in installed if re.fullmatch(r"cupy(-cuda\d+x?|-rocm.*)?", n)
                    and n != wheel)
    commands = []
    if others:                          # two CuPy wheels would overwrite each other's `cupy`
        commands.append([python, "-m", "pip", "uninstall", "--yes", *others])
    if others or wheel not in installed or "numba-cuda" not in installed or numpy >= (2, 5):
        commands.append([python, "-m", "pip", "install", "--quiet", "-e", f"{repo}[{extra}]"])
    return commands


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinysparse.bench.cuda_install",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the pip commands, run none")
    p.add_argument("--driver-cuda", type=parse_version, default=DETECT, metavar="X.Y|none",
                   help="the driver's CUDA version instead of asking the driver (for a dry run)")
    args = p.parse_args(argv)
    version = driver_cuda_version() if args.driver_cuda is DETECT else args.driver_cuda
    if version is None:
        print("cuda-install: no NVIDIA driver found (libcuda and nvidia-smi do not answer), so the "
              "CUDA version is unknown: on a GPU machine run `pip install -e '.[cuda12]'` for a "
              "CUDA 12 driver or `pip install -e '.[cuda13]'` for CUDA 13 (nvidia-smi shows "
              "\"CUDA Version\")")
        return EXIT_UNKNOWN
    try:
        commands = plan_commands(version, installed_distributions())
    except ValueError as exc:
        print(f"cuda-install: {exc}")
        return EXIT_UNKNOWN
    extra, wheel = choose_extra(version)
    print(f"cuda-install: driver CUDA {version[0]}.{version[1]} -> {wheel} (extra [{extra}])"
          + ("" if commands else ": already installed"))
    for command in commands:
        print(("would run: " if args.dry_run else "running: ") + shlex.join(command), flush=True)
        if not args.dry_run and subprocess.run(command).returncode != 0:
            print(f"cuda-install: pip failed (exit above); install by hand: "
                  f"pip install -e '.[{extra}]'")
            return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
