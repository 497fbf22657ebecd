"""make gpu-check's stage 1 (tinysparse/bench/gpu_check.py, DEVICE_TESTS) names test files that
exist, every CUDA kernel test among them: a renamed or split file would otherwise show up only
on a GPU, as a pytest error there. Runs everywhere (test_gpu_check.py skips without a device)."""
import glob
import os

from tinysparse.bench import gpu_check


def test_stage_1_names_existing_files_and_every_kernel_test():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    missing = [f for f in gpu_check.DEVICE_TESTS if not os.path.isfile(os.path.join(root, f))]
    assert missing == []
    kernels = {os.path.relpath(f, root) for f in glob.glob(os.path.join(root, "tests",
                                                                       "test_cuda_kernels_*.py"))}
    assert kernels and kernels <= set(gpu_check.DEVICE_TESTS)
    assert "tests/test_gpu.py" in gpu_check.DEVICE_TESTS
