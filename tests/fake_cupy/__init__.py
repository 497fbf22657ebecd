"""A strict CuPy stand-in backed by NumPy: tinysparse's GPU path, run and checked on a CPU.

The `fake_gpu` fixture (tests/conftest.py) puts this package in sys.modules as `cupy` (and
`cupyx`), so `tinysparse.engine.backend` imports it and takes it for a GPU. Its arrays are NumPy
arrays in a wrapper of their own type, `ndarray`, that behaves like CuPy's where correctness
depends on it:

- a distinct type: `isinstance(a, numpy.ndarray)` is False, and the library must ask
  `backend.array_module` for the right functions;
- a NumPy array passed into one of its functions or operators raises TypeError, as CuPy does
  ("Unsupported type <class 'numpy.ndarray'>"); index arrays are the exception, as in CuPy
  (`a[numpy_index]` copies the index to the device: counted as an upload);
- NumPy functions refuse its arrays: `__array__` raises (CuPy: "Implicit conversion to a NumPy
  array is not allowed"), and so does every NumPy array function (`np.sum(a)`: stricter than
  CuPy, which hands those to itself; library code must call `xp.sum`). NumPy ufuncs on its
  arrays and scalars compute on the device, as CuPy's `__array_ufunc__` does
  (`np.float32(2) * a`);
- every way the host waits for the device is COUNTED as a synchronisation (`LEDGER.syncs`, each
  with the library line that caused it), or raises DeviceSynchronized inside
  `cupyx.allow_synchronize(False)` (CuPy's own switch): `float()`, `int()`, `bool()`,
  `operator.index`, `.item()`, `.tolist()`, `.get()`, `asnumpy`, printing, and every operation
  whose result's SIZE depends on the data (a boolean mask in an index, `nonzero`, `flatnonzero`,
  `argwhere`, one-argument `where`, `unique`; `bincount`, which CuPy implements with two reads:
  a check for negative values and the maximum), and an explicit `Device().synchronize()`;
- copies from the host (`asarray` of NumPy data or a list) are counted as uploads
  (`LEDGER.uploads`): not a wait, but traffic a training step should not repeat.

What it does not model: timing and streams (everything runs at once), memory limits, CuPy's
handful of semantic differences from NumPy beyond the above (its sort is always stable, as
NumPy's kind='stable' is), and the CUDA kernels' zero-copy path (cuda_kernels/ needs a real GPU
or Numba's simulator on NumPy arrays).

The pieces: _ledger.py (what the host asked of the device: syncs and uploads), _array.py (the
device array), _functions.py (the module's functions and dtype names), _cuda.py (cupy.random,
cupy.cuda and cupyx). Their names start with an underscore so that `import cupy.cuda` still
fails as it did for a single-module stand-in: `cupy.cuda` is an attribute here, not a module.
"""
from ._ledger import LEDGER, DeviceSynchronized, Ledger  # noqa: F401
from ._array import ndarray  # noqa: F401
from ._functions import *  # noqa: F401,F403  (every cupy.<name>: see _functions.__all__)
from ._cuda import cuda, cupyx, random  # noqa: F401

__version__ = "0+numpy-stand-in"
