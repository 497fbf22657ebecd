"""One seeded source of randomness for the library: weight init, dropout, sampling.

`manual_seed(s)` makes a run repeatable: same seed, same numbers on the CPU. The state can be
saved and restored (checkpoints do), so a resumed run draws exactly what an unbroken one would.
"""
import numpy as np

from . import backend

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the global generator (and CuPy's, where a GPU is in use)."""
    global _generator
    _generator = np.random.default_rng(seed)
    if backend.cuda_available():
        backend.get_xp("cuda").random.seed(seed)
    return _generator


def generator():
    """The global np.random.Generator."""
    return _generator


def get_state():
    return _generator.bit_generator.state


def set_state(state):
    _generator.bit_generator.state = state


def uniform(shape, device="cpu", dtype=np.float32):
    """Uniform [0, 1) numbers on a device, drawn from the seeded generators (no host round trip)."""
    if device == "cuda":
        return backend.get_xp("cuda").random.random(shape, dtype=dtype)
    return _generator.random(shape, dtype=dtype if dtype in (np.float32, np.float64) else np.float64)
