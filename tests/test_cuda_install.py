"""make cuda-install (tinysparse/bench/cuda_install.py) by dry runs: the pip commands it would run
for a CUDA 12 driver, a CUDA 13 driver and no driver, without a GPU; and the make targets that
run it first."""
import subprocess
import sys

import pytest

from tinysparse.bench import cuda_install as ci

ROOT = ci.REPO
PY = "/venv/python"


def _plan(version, installed=(), numpy=(2, 4)):
    return ci.plan_commands(version, set(installed), python=PY, repo="/repo", numpy=numpy)


@pytest.mark.parametrize("version, extra", [((12, 4), "cuda12"), ((12, 0), "cuda12"),
                                            ((13, 0), "cuda13"), ((13, 2), "cuda13"),
                                            ((14, 1), "cuda13")])   # a newer driver runs older CUDA
def test_the_extra_follows_the_driver_major_version(version, extra):
    assert _plan(version) == [[PY, "-m", "pip", "install", "--quiet", "-e", f"/repo[{extra}]"]]


def test_another_cupy_wheel_is_removed_first():
    assert _plan((13, 0), {"cupy-cuda12x", "numba-cuda", "numpy"}) == [
        [PY, "-m", "pip", "uninstall", "--yes", "cupy-cuda12x"],
        [PY, "-m", "pip", "install", "--quiet", "-e", "/repo[cuda13]"]]
    assert _plan((12, 8), {"cupy-cuda13x", "cupy", "numba-cuda"})[0] == [
        PY, "-m", "pip", "uninstall", "--yes", "cupy", "cupy-cuda13x"]


def test_nothing_to_do_when_the_right_wheels_are_there():
    assert _plan((12, 8), {"cupy-cuda12x", "numba-cuda"}) == []
    assert _plan((12, 8), {"cupy-cuda12x"}) != []                  # numba-cuda missing
    assert _plan((12, 8), {"cupy-cuda12x", "cupyx-tools", "numba-cuda"}) == []  # not a CuPy wheel


def test_numpy_2_5_is_replaced_by_the_extra_s_cap():
    """numba-cuda 0.30.4 cannot compile with NumPy 2.5 (pyproject.toml): the extra, which caps
    NumPy, is installed again over wheels that are otherwise complete."""
    have = {"cupy-cuda13x", "numba-cuda"}
    assert _plan((13, 0), have, numpy=(2, 4)) == []
    assert _plan((13, 0), have, numpy=(2, 5)) == [
        [PY, "-m", "pip", "install", "--quiet", "-e", "/repo[cuda13]"]]
    assert _plan((13, 0), have, numpy=(3, 0)) != []


def test_every_cuda_extra_caps_numpy_below_2_5():
    tomllib = pytest.importorskip("tomllib")     # Python 3.11+
    with open(f"{ROOT}/pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    for name in ("cuda", "cuda12", "cuda13"):
        assert "numpy<2.5" in extras[name], name


def test_a_driver_too_old_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"CUDA 11\.8, older .* update the driver"):
        _plan((11, 8))


def test_versions_from_nvidia_smi_and_the_flag():
    header = "| NVIDIA-SMI 580.65.06    Driver Version: 580.65.06    CUDA Version: 13.0     |"
    assert ci.parse_nvidia_smi(header) == (13, 0)
    assert ci.parse_nvidia_smi("NVIDIA-SMI has failed") is None
    assert ci.parse_version("12.4") == (12, 4) and ci.parse_version("13") == (13, 0)
    assert ci.parse_version("none") is None


def _dry_run(*flags):
    return subprocess.run([sys.executable, "-m", "tinysparse.bench.cuda_install", "--dry-run",
                           *flags], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("version, wheel", [("12.4", "cupy-cuda12x"), ("13.0", "cupy-cuda13x")])
def test_dry_run_prints_the_commands(version, wheel):
    r = _dry_run("--driver-cuda", version)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"cuda-install: driver CUDA {version} -> {wheel}")
    assert lines[-1].startswith("would run: ") and f"[cuda{version[:2]}]" in lines[-1]


def test_dry_run_without_a_driver_says_which_to_choose_in_one_line():
    r = _dry_run("--driver-cuda", "none")
    assert r.returncode == 2
    (line,) = r.stdout.splitlines()
    assert "no NVIDIA driver" in line and ".[cuda12]" in line and ".[cuda13]" in line


def test_make_targets_install_what_they_need():
    def recipe(*target):
        r = subprocess.run(["make", "-n", *target], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        return [ln for ln in r.stdout.splitlines() if "tinysparse" in ln or "pip install" in ln]
    train = recipe("train", "DEVICE=cuda")
    assert "tinysparse.bench.cuda_install" in train[-2] and "train" in train[-1]
    assert not any("cuda_install" in ln for ln in recipe("train", "DEVICE=cpu"))
    check = recipe("gpu-check")
    assert "cuda_install || test $? -eq 2" in check[-2] and "gpu_check" in check[-1]
    assert any(".[bench]" in ln for ln in recipe("-W", "pyproject.toml", "bench"))
    assert "--dry-run" in recipe("cuda-install", "DRY_RUN=1")[-1]


def test_gpu_check_dry_run_lists_the_lent_gpu_stages():
    r = subprocess.run([sys.executable, "-m", "tinysparse.bench.gpu_check", "--full", "--dry-run"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for stage in ("versions", "sync-free step, tiny (dense)", "dispatch numpy then cuda",
                  "resume with dropout", "tests on the device", "train tiny-moe, dispatch cuda"):
        assert stage in out
