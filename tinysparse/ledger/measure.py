"""Measured energy: what the hardware's own counters say a block of code used.

    with EnergyMeter() as meter:
        model(idx)
    meter.joules            # None where nothing is measurable; meter.source says what was read

Two counters, the first that is readable wins:
- NVIDIA GPUs: NVML's total-energy counter (nvmlDeviceGetTotalEnergyConsumption, millijoules
  since the driver loaded; Volta and newer) through the nvidia-ml-py package (`pip install
  -e '.[cuda]'`), summed over the visible GPUs: the whole board, every process on it.
- Linux CPUs: RAPL through /sys/class/powercap/intel-rapl:N/energy_uj (microjoules, package
  domains; the counter wraps at max_energy_range_uj). Often readable by root only.
Elsewhere `joules` is None and `why` says "not measurable on this machine: ...".

A measured figure is the whole device's energy over the block's wall time, idle power and
other processes included; never compare it with a modelled figure without saying so.
"""
import glob
import os
import time

POWERCAP = "/sys/class/powercap"
NOT_MEASURABLE = "not measurable on this machine"


class _Nvml:
    source = "NVML total energy (all visible NVIDIA GPUs)"

    def __init__(self):
        import pynvml                       # from nvidia-ml-py, the cuda extra
        pynvml.nvmlInit()
        self._nvml = pynvml
        count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        if not self._handles:
            raise RuntimeError("NVML sees no GPU")
        self.read()                         # older GPUs raise NotSupported here

    def read(self):
        """Joules since the driver loaded, all GPUs together."""
        total = sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)
        return total / 1000.0


class _Rapl:
    source = "RAPL package energy (/sys/class/powercap)"

    def __init__(self, root=POWERCAP):
        self._domains = []
        for path in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
            name = _read_text(os.path.join(path, "name"))
            if name is None or not name.startswith("package"):
                continue                  # core/uncore/dram sub-domains are inside a package
            energy = os.path.join(path, "energy_uj")
            wrap = _read_text(os.path.join(path, "max_energy_range_uj"))
            self._domains.append((energy, int(wrap) if wrap else None))
        if not self._domains:
            raise RuntimeError(f"no RAPL package domain under {root}")
        self._raw()                         # PermissionError where only root may read

    def _raw(self):
        values = []
        for energy, _ in self._domains:
            with open(energy) as f:
                values.append(int(f.read()))
        return values

    def start(self):
        self._start = self._raw()

    def joules_since_start(self):
        total = 0
        for (_, wrap), before, after in zip(self._domains, self._start, self._raw()):
            delta = after - before
            if delta < 0 and wrap:          # the counter wrapped once
                delta += wrap
            total += delta
        return total / 1e6


def _read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def find_counter(powercap=POWERCAP):
    """(counter, None) for the first readable energy counter, or (None, why not)."""
    reasons = []
    try:
        return _Nvml(), None
    except ImportError:
        reasons.append("no nvidia-ml-py (install the cuda extra on an NVIDIA machine)")
    except Exception as exc:  # noqa: BLE001  (NVML raises its own error classes)
        reasons.append(f"NVML: {' '.join(str(exc).split()) or type(exc).__name__}")
    try:
        return _Rapl(powercap), None
    except (OSError, RuntimeError, ValueError) as exc:
        reasons.append(f"RAPL: {' '.join(str(exc).split())}")
    return None, f"{NOT_MEASURABLE} ({'; '.join(reasons)})"


class EnergyMeter:
    """Context manager: the joules the device's counter advanced during the block, and the
    block's wall time. joules is None (and `why` says why) where no counter is readable."""

    def __init__(self, powercap=POWERCAP):
        self._counter, self.why = find_counter(powercap)
        self.source = self._counter.source if self._counter is not None else None
        self.joules = None
        self.seconds = None

    def __enter__(self):
        if isinstance(self._counter, _Rapl):
            self._counter.start()
        elif self._counter is not None:
            self._before = self._counter.read()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        if isinstance(self._counter, _Rapl):
            self.joules = self._counter.joules_since_start()
        elif self._counter is not None:
            self.joules = self._counter.read() - self._before
        return False
