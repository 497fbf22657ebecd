"""The stand-in's cupy.random, cupy.cuda (a device that is always there, events that time
nothing, synchronisations counted) and cupyx (allow_synchronize, CuPy's switch that makes every
sync an error)."""
import contextlib
import types

import numpy as _np

from ._array import ndarray
from ._ledger import LEDGER, DeviceSynchronized, _sync


# ---- cupy.random (CuPy's own generator: its state cannot be saved, so tinysparse does not use it)

_random_state = [_np.random.default_rng(0)]
random = types.SimpleNamespace(
    seed=lambda seed=None: _random_state.__setitem__(0, _np.random.default_rng(seed)),
    random=lambda size=None, dtype=float: ndarray(_np.asarray(
        _random_state[0].random(size, dtype=dtype))),
)


# ---- cupy.cuda and cupyx -----------------------------------------------------------------------

class _Device:
    def __init__(self, device=None):
        self.id = 0

    def synchronize(self):
        _sync("Device().synchronize()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    compute_capability = "90"


class _Event:
    def __init__(self, *args, **kwargs):
        self.recorded = False

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        _sync("Event.synchronize()")


def _elapsed_time(start, end):
    return 0.0


def _device_properties(device):
    return {"name": b"CuPy stand-in (NumPy)", "totalGlobalMem": 0, "major": 0, "minor": 0}


cuda = types.SimpleNamespace(
    is_available=lambda: True,
    Device=_Device,
    Event=_Event,
    get_elapsed_time=_elapsed_time,
    runtime=types.SimpleNamespace(getDeviceProperties=_device_properties,
                                  deviceSynchronize=lambda: _sync("deviceSynchronize()"),
                                  runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0),
)


@contextlib.contextmanager
def _allow_synchronize(allow):
    before, LEDGER.allowed = LEDGER.allowed, bool(allow)
    try:
        yield
    finally:
        LEDGER.allowed = before


cupyx = types.ModuleType("cupyx")
cupyx.allow_synchronize = _allow_synchronize
cupyx.DeviceSynchronized = DeviceSynchronized
