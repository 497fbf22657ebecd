"""The stand-in's ledger: every time the host waited for the device (a sync) or copied data to
it (an upload), with the library line that asked; and the TypeError a NumPy array gets where CuPy
would refuse it."""
import os
import sys

import numpy as _np


class DeviceSynchronized(RuntimeError):
    """The host waited for the device inside allow_synchronize(False) (cupyx's exception)."""


class Ledger:
    """What the host asked of the device since the last reset."""

    def __init__(self):
        self.allowed = True
        self.reset()

    def reset(self):
        self.syncs = []       # (kind, where)
        self.uploads = []     # (bytes, where)

    def where_counts(self):
        """{(kind, where): count} of the syncs, for messages and reports."""
        out = {}
        for key in self.syncs:
            out[key] = out.get(key, 0) + 1
        return out

    def report(self):
        return "\n".join(f"{n:4d}  {kind:<18} {where}"
                         for (kind, where), n in sorted(self.where_counts().items(),
                                                        key=lambda kv: -kv[1]))


LEDGER = Ledger()


_HERE = os.path.dirname(os.path.abspath(__file__))       # the stand-in's own files: never "where"
_PASS_THROUGH = (os.sep + os.path.join("tinysparse", "engine", "backend.py"),)


def _caller():
    """'path:line (function)' of the line that asked: the first frame outside this package and
    the device switch's helpers (backend.to_numpy reads for its caller)."""
    frame = sys._getframe(1)
    while frame is not None and (os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _HERE
                                 or frame.f_code.co_filename.endswith(_PASS_THROUGH)):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = frame.f_code.co_filename
    for root in ("tinysparse", "tests", "cuda_kernels"):
        marker = os.sep + root + os.sep
        if marker in path:
            path = root + os.sep + path.split(marker, 1)[1]
            break
    return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"


def _sync(kind):
    where = _caller()
    if not LEDGER.allowed:
        raise DeviceSynchronized(f"the host waited for the device ({kind}) at {where}, inside "
                                 f"cupyx.allow_synchronize(False)")
    LEDGER.syncs.append((kind, where))


def _upload(array):
    LEDGER.uploads.append((int(_np.asarray(array).nbytes), _caller()))


def _refuse(value):
    raise TypeError(f"Unsupported type {type(value)} (the CuPy stand-in refuses a NumPy array "
                    f"where CuPy would: move it to the device with xp.asarray first)")
