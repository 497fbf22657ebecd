"""The grouped matmul kernels (cuda_kernels/matmul_naive.py and matmul_tiled.py): forward, dX,
dW and db against the NumPy reference, on uneven, empty and one-row segments and tiles that do
not divide the sizes; the tiled kernels add in the naive kernels' order, bit for bit."""
import numpy as np
import pytest

from cuda_helpers import REF, TIGHT, segments, skip_module_without_a_device
from cuda_kernels import host, matmul_naive, matmul_tiled
from tinysparse.moe.cuda_dispatch import CudaDispatch

skip_module_without_a_device()


COUNTS = {"uneven": [5, 0, 9, 3],             # an empty expert; S = 17, not a multiple of the tile
          "one_expert": [0, 0, 11, 0],
          "nothing": [0, 0, 0],
          "one_row": [1]}


# every case with tile 4; bigger tiles (64 and 256 simulated threads a block) on one case
MATMUL_CASES = [(m, 4, case) for m in ("naive", "tiled") for case in COUNTS] + \
               [("tiled", 8, "uneven"), ("naive", 16, "uneven")]


@pytest.mark.parametrize("matmul,tile,case", MATMUL_CASES)
def test_grouped_matmul_matches_numpy(matmul, tile, case):
    rng = np.random.default_rng(7)
    offsets = segments(COUNTS[case])
    E, S, d_in, d_out = len(COUNTS[case]), int(offsets[-1]), 13, 6    # 13: not a tile multiple
    x, g = rng.standard_normal((S, d_in)), rng.standard_normal((S, d_out))
    w, b = rng.standard_normal((E, d_in, d_out)), rng.standard_normal((E, d_out))
    be = CudaDispatch(matmul=matmul, tile=tile)
    for bias in (b, None):
        np.testing.assert_allclose(be.grouped_mm(x, w, bias, offsets),
                                   REF.grouped_mm(x, w, bias, offsets), **TIGHT)
    np.testing.assert_allclose(be.grouped_mm_dx(g, w, offsets), REF.grouped_mm_dx(g, w, offsets),
                               **TIGHT)
    for a, r in zip(be.grouped_mm_dw(x, g, offsets), REF.grouped_mm_dw(x, g, offsets)):
        np.testing.assert_allclose(a, r, **TIGHT)           # empty experts: zeros
    dw, db = be.grouped_mm_dw(x, g, offsets, with_bias=False)
    assert db is None and dw.shape == (E, d_in, d_out)


@pytest.mark.skipif(not host.SIMULATED, reason="bitwise equality of two kernels is a simulator "
                    "property: on a GPU the compiler may fuse multiply-adds differently")
@host.simulator_paced
def test_tiled_sums_in_the_naive_order_bitwise():
    rng = np.random.default_rng(3)
    offsets = segments([6, 0, 3])
    shapes = [(9, 5), (9, 7), (3, 5, 7), (3, 7)]
    x, g, w, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    zero = host.zero_of(np.float32)
    for name, args, shape in [("grouped_mm", (x, w, b, offsets), (9, 7)),
                              ("grouped_mm_dx", (g, w, offsets), (9, 5)),
                              ("grouped_mm_dw", (x, g, offsets), (3, 5, 7))]:
        outs = []
        for module in (matmul_naive, matmul_tiled):
            out = host.Outputs(like=x).empty(shape, np.float32)
            getattr(module, name)(*map(host.device_view, args), zero, out, tile=4)
            outs.append(out.copy_to_host())
        np.testing.assert_array_equal(outs[0], outs[1], err_msg=name)
