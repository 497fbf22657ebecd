"""The one device switch: every array in tinysparse is a NumPy array (cpu) or a CuPy array (cuda).

Nothing else in the library imports cupy. Code that needs the array module of a tensor asks
`array_module(array)`; code that needs the module for a device name asks `get_xp(device)`.

The default device comes from the environment variable TINYSPARSE_DEVICE (cpu | cuda), cpu when
unset. Asking for cuda where CuPy is missing or finds no GPU is a clear error, never a silent
fall back to the CPU. The messages name the library's own fix (device 'cpu', the environment
variable); the CLI adds its flag (--device cpu) when it reports a DeviceError.
"""
import os

import numpy as np

DEVICES = ("cpu", "cuda")

_cupy = None          # the cupy module once imported successfully
_cupy_error = None    # why cupy is unusable, once we know


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide."""


def _try_cupy():
    """Import cupy once; return the module or None (and remember why not)."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy  # noqa: the only import of cupy in tinysparse
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        _cupy_error = (f"CuPy is not installed ({exc.__class__.__name__}); install it with "
                       f"`make cuda-install` (it picks the wheel of the driver's CUDA version)")
        return None
    try:
        # `import cupy` succeeds without a GPU; the first allocation would fail, so ask first.
        available = cupy.cuda.is_available()
    except Exception as exc:
        available, _cupy_error = False, f"CuPy cannot reach a GPU ({exc})"
    if not available:
        _cupy_error = _cupy_error or "CuPy is installed but finds no CUDA GPU on this machine"
        return None
    _cupy = cupy
    return _cupy


def cuda_available():
    """True when CuPy is installed and sees a GPU."""
    return _try_cupy() is not None


def check_device(device):
    """Validate a device name and return it; raise DeviceError naming the problem and the fix."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cuda" and _try_cupy() is None:
        raise DeviceError(f"device 'cuda' was requested but {_cupy_error}; use device 'cpu'")
    return device


def default_device():
    """The device named by TINYSPARSE_DEVICE, or cpu."""
    name = os.environ.get("TINYSPARSE_DEVICE", "").strip().lower()
    if not name:
        return check_device("cpu")
    try:
        return check_device(name)
    except DeviceError as e:
        raise DeviceError(f"{e} (it comes from TINYSPARSE_DEVICE={name}: unset the variable or "
                          f"set it to cpu)") from None


def resolve_device(device):
    """Turn None ('the default'), 'auto' (cuda when available) or a device name into a device name."""
    if device is None:
        return default_device()
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return check_device(device)


def get_xp(device):
    """The array module (numpy or cupy) of a device name."""
    return _try_cupy() if check_device(device) == "cuda" else np


def is_cuda_array(array):
    """True for a CuPy array. Also when nothing in tinysparse has imported CuPy yet (a user's
    `Tensor(cupy_array)` as the first call): a CuPy array's type says where it comes from."""
    if _cupy is not None:
        return isinstance(array, _cupy.ndarray)
    if isinstance(array, np.ndarray):
        return False
    return (type(array).__module__.split(".")[0] == "cupy" and _try_cupy() is not None
            and isinstance(array, _cupy.ndarray))


def device_of(array):
    return "cuda" if is_cuda_array(array) else "cpu"


def array_module(array):
    """numpy or cupy, whichever owns this array (numpy for scalars and lists)."""
    return _cupy if is_cuda_array(array) else np


def to_numpy(array):
    """A NumPy array from an array on either device (no copy on the CPU)."""
    return array.get() if is_cuda_array(array) else np.asarray(array)


def synchronize(device="cuda"):
    """Wait until the device has finished all work queued so far (a no-op on the CPU and where
    no GPU is in use): call it before reading a clock, or a time measures only the queueing."""
    if device == "cuda" and _cupy is not None:
        _cupy.cuda.Device().synchronize()


def allow_synchronize(allow):
    """A context in which a wait of the host for the GPU raises, with allow=False (CuPy's own
    check, cupyx.allow_synchronize; it sees the waits CuPy makes: reading values, sizes, copies
    to the host), or is allowed again inside such a block (allow=True). A no-op context where
    no GPU is in use. For checks that code runs without waiting (bench/gpu_check.py)."""
    import contextlib
    if _cupy is None:
        return contextlib.nullcontext()
    import cupyx  # noqa: CuPy's companion package, installed with it
    return cupyx.allow_synchronize(allow)


def to_device(array, device):
    """Move an array to a device; a no-op when it is already there."""
    device = check_device(device)
    if device == device_of(array):
        return array
    return _cupy.asarray(array) if device == "cuda" else array.get()


def cuda_nccl():
    """CuPy's NCCL bindings (cupy.cuda.nccl) where CuPy, a GPU and NCCL are present, else None:
    expert parallelism's GPU all-to-all (tinysparse/parallel/nccl.py) comes through this door."""
    if _try_cupy() is None:
        return None
    try:
        from cupy.cuda import nccl  # noqa: CuPy's NCCL bindings, part of CuPy
    except ImportError:
        return None
    return nccl
