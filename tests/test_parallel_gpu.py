"""The GPU path of expert parallelism (tinysparse/parallel/nccl.py): NCCL's all-to-all through
CuPy, and 2-rank training with CuPy arrays. The tests marked gpu skip without a CUDA GPU (and
CuPy); the offsets NCCL's send/recv pairs use are checked everywhere.
"""
import os
import sys

import numpy as np
import pytest

from tinysparse.engine import backend
from tinysparse.parallel import SingleProcess
from tinysparse.parallel.nccl import pairs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parallel_worker  # noqa: E402
from test_parallel import _ok, launch  # noqa: E402

NO_GPU = None if backend.cuda_available() else "no CUDA GPU (and CuPy) here"


def test_pairs_offsets_in_elements():
    """Rank sends 2 rows to rank 0, none to rank 1, 3 to rank 2; receives 1, 4, 0; rows of 5."""
    assert pairs([2, 0, 3], [1, 4, 0], 5) == [(0, 0, 10, 0, 5), (1, 10, 0, 5, 20),
                                             (2, 10, 15, 25, 0)]
    assert pairs([0, 0], [0, 0], 3) == []


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")
def test_nccl_alltoallv_on_one_rank_returns_the_rows():
    import cupy
    from tinysparse.parallel.nccl import NcclAlltoallv
    rows = cupy.arange(24, dtype=cupy.float64).reshape(6, 4)
    out = NcclAlltoallv(SingleProcess()).alltoallv(rows, [6], [6])
    assert isinstance(out, cupy.ndarray) and cupy.array_equal(out, rows)


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")
def test_two_ranks_on_the_gpu_train_like_one_process_on_the_cpu(tmp_path):
    """CuPy arrays on 2 ranks (NCCL with 2 GPUs; staged through the host on one GPU): 4 float64
    steps equal one CPU process to 1e-6."""
    single, two = str(tmp_path / "one"), str(tmp_path / "two")
    parallel_worker.train(single, 4, resume=False, single=True, float32=False, n_expert=4,
                          capacity=None)
    _ok(launch(2, "train", two, "4", "--device", "cuda"))
    a = np.load(os.path.join(single, "result.npz"))
    b = np.load(os.path.join(two, "result.npz"))
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
