"""Where the engine's compiled loops apply, and their import on first use.

Three fused Functions have @njit twins of their array code, bitwise the same: GELU
(gelu_kernels.py), layer norm and attention's softmax (row_kernels.py); so has the backward of
an embedding lookup, np.add.at over table rows (scatter_kernels.py). They take C-contiguous NumPy arrays of one dtype, float32 or float64;
anything else (CuPy arrays, views with strides, float16, which Function.apply hands over as
float32 anyway) runs the array code. numba is imported the first time a loop is wanted: it takes
a while to load, and the array code needs none of it. A Function's `compiled = False` (and
scatter.compiled) turns its loops off (make bench times the array code beside them).
"""
import importlib

import numpy as np

KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_loaded = {}     # module name -> the module, or False where numba does not import


def kernels(name, *arrays):
    """The module engine/<name>.py, or None where the array code must run: an array (None
    entries are skipped) that is not a C-contiguous NumPy array of the first one's dtype, a
    dtype other than float32 and float64, or numba missing."""
    dtype = arrays[0].dtype
    if dtype not in KERNEL_DTYPES:
        return None
    for a in arrays:
        if a is not None and (a.__class__ is not np.ndarray or a.dtype != dtype
                              or not a.flags.c_contiguous):
            return None
    module = _loaded.get(name)
    if module is None:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            module = False
        _loaded[name] = module
    return module or None
