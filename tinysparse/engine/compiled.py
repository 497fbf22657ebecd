"""Where the compiled loops apply, and their import on first use.

Three fused Functions have @njit twins of their array code, bitwise the same: GELU
(gelu_kernels.py), layer norm and attention's softmax (row_kernels.py); so have the backward of
an embedding lookup, np.add.at over table rows (scatter_kernels.py), and AdamW's update
(tinysparse/optim_kernels.py). They take C-contiguous NumPy arrays of one dtype, float32 or
float64; anything else (CuPy arrays, views with strides, float16, which Function.apply hands
over as float32 anyway) runs the array code. On a GPU, GELU and LayerNorm have @cuda.jit twins
in cuda_kernels/gelu.py and cuda_kernels/layer_norm.py (gpu() below): CuPy arrays of those
dtypes run them, within rounding of the array code (the device's exp is not NumPy's). numba is
imported the first time a loop is wanted: it takes a while to load, and the array code needs none
of it. A Function's `compiled = False`
(and scatter.compiled, AdamW's fused=False) turns its loops off (make bench times the array
code beside them).
"""
import importlib

import numpy as np

KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_loaded = {}     # module name -> the module, or False where numba does not import


def applies(*arrays):
    """True when every array (None entries are skipped) is a C-contiguous NumPy array of the
    first one's dtype, and that dtype is float32 or float64."""
    dtype = arrays[0].dtype
    return dtype in KERNEL_DTYPES and all(
        a is None or (a.__class__ is np.ndarray and a.dtype == dtype and a.flags.c_contiguous)
        for a in arrays)


def load(name):
    """The module of compiled loops `name` ('.row_kernels' beside this file, or a full name),
    imported once; None where numba does not import."""
    module = _loaded.get(name)
    if module is None:
        try:
            module = importlib.import_module(name, __package__)
        except ImportError:
            module = False
        _loaded[name] = module
    return module or None


def kernels(name, *arrays):
    """load(name) where the loops apply to these arrays (applies), else None: the array code runs."""
    return load(name) if applies(*arrays) else None


def gpu(name, *arrays):
    """The @cuda.jit module `name` (say 'cuda_kernels.gelu') where its kernels apply to these
    arrays, else None (the array code runs): CuPy arrays (None entries skipped), C-contiguous, of
    the first one's dtype, float32 or float64, on a real GPU whose Numba compiles kernels
    (cuda_kernels.host.compile_problem; never under the simulator, whose tests call the kernels
    directly)."""
    dtype = arrays[0].dtype
    if dtype not in KERNEL_DTYPES or not all(
            a is None or (type(a).__module__.split(".")[0] == "cupy" and a.dtype == dtype
                          and a.flags.c_contiguous) for a in arrays):
        return None
    host = load("cuda_kernels.host")
    if host is None or host.SIMULATED or host.compile_problem() is not None:
        return None
    return load(name)
