"""One seeded source of randomness for the library: weight init, dropout, router jitter, sampling.

`manual_seed(s)` makes a run repeatable: same seed, same numbers. Two streams, both seeded by it:

- the host generator, NumPy's PCG64 (`generator()`): weight init, sampling, and on the CPU the
  dropout masks and router jitter;
- the device stream (`uniform(..., device="cuda")`): dropout masks and router jitter on a GPU,
  drawn where the arrays are, with no host round trip. It is SplitMix64 (Steele, Lea & Flood
  2014, "Fast splittable pseudorandom number generators", OOPSLA; the generator of Java's
  SplittableRandom) used as a counter-based generator: draw i is mix64(seed + i * GOLDEN), so n
  numbers are n independent evaluations, computed with the array module's integer operations,
  and its whole state is two integers (seed, counter). CuPy's own generator (cuRAND behind
  cupy.random) cannot be saved: CuPy's documentation says its RandomState "cannot be
  serialized". This one can, so a resumed GPU run draws exactly what an unbroken one would.

Both states are saved and restored by checkpoints (training/checkpoint.py: rng.numpy and
rng.cupy), so a resumed run continues both streams bit-identically.
"""
import math

import numpy as np

from . import backend

_generator = np.random.default_rng(0)

# SplitMix64's constants (Steele et al. 2014; the finaliser is Stafford's "Mix13" variant)
GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U64 = 2 ** 64


class DeviceStream:
    """SplitMix64 as a counter-based stream: `seed` and how many numbers were drawn (`counter`)."""

    def __init__(self, seed=0, counter=0):
        self.seed, self.counter = int(seed) % _U64, int(counter)

    def uint64(self, n, xp):
        """The next n 64-bit draws as a uint64 array (n,) of module xp (numpy or cupy)."""
        u64 = xp.uint64
        i = xp.arange(self.counter + 1, self.counter + 1 + n, dtype=u64)      # (n,) 1-based
        z = i * u64(GOLDEN) + u64(self.seed)        # the generator's state after draw i (mod 2^64)
        z = (z ^ (z >> u64(30))) * u64(_M1)
        z = (z ^ (z >> u64(27))) * u64(_M2)
        self.counter += n
        return z ^ (z >> u64(31))

    def uniform(self, shape, xp, dtype=np.float32):
        """Uniform numbers in [0, 1) of `shape`: the top 24 bits of each draw times 2^-24 for
        float32 (53 bits, 2^-53 for float64): every value is exact, and 1.0 never occurs."""
        dtype = np.dtype(dtype)
        z = self.uint64(math.prod(shape), xp)
        if dtype == np.float64:
            out = (z >> xp.uint64(11)).astype(xp.float64) * (2.0 ** -53)
        else:
            out = ((z >> xp.uint64(40)).astype(xp.float32) * np.float32(2.0 ** -24)).astype(dtype)
        return out.reshape(shape)

    def state(self):
        return {"seed": self.seed, "counter": self.counter}


_device_stream = DeviceStream(0)


def manual_seed(seed):
    """Reseed both streams: the host generator and the device stream."""
    global _generator, _device_stream
    _generator = np.random.default_rng(seed)
    _device_stream = DeviceStream(seed)
    return _generator


def generator():
    """The global np.random.Generator."""
    return _generator


def get_state():
    """The host generator's state (a PCG64 state dict)."""
    return _generator.bit_generator.state


def set_state(state):
    _generator.bit_generator.state = state


def get_device_state():
    """The device stream's state: {"seed": int, "counter": int} (plain integers, JSON-able)."""
    return _device_stream.state()


def set_device_state(state):
    """Restore get_device_state()'s result; the next draws are those that followed it."""
    global _device_stream
    _device_stream = DeviceStream(state["seed"], state["counter"])


def uniform(shape, device="cpu", dtype=np.float32):
    """Uniform [0, 1) numbers on a device: from the host generator on the CPU, from the device
    stream on a GPU (computed there: no host round trip, no wait for the device)."""
    if device == "cuda":
        return _device_stream.uniform(tuple(shape), backend.get_xp("cuda"), dtype)
    return _generator.random(shape, dtype=dtype if dtype in (np.float32, np.float64) else np.float64)
