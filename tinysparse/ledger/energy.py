"""Modelled energy: joules from counted FLOPs and bytes, with a low-high band.

    model = PRESETS["horowitz-45nm"]
    e = model.estimate(led.per_token(n))            # Energy: compute and memory, each (low, high)
    e.compute, e.memory, e.total                    # joules

E = FLOPs x (pJ per FLOP of the dtype) + bytes x (pJ per byte of the memory level). Every
number is a (low, high) pair and so is every result: the band is the spread of the published
figures, not a confidence interval. This is a MODEL of the energy the arithmetic and the data
movement need on the named hardware; it never describes the machine the count ran on (that is
measure.py's job), and it leaves out static power, control, caches not named and cooling.

Which bytes: `bytes_rw` (every op's arrays, no reuse between ops) priced at DRAM is a ceiling
of the memory energy; `weight_bytes_touched` (each weight once) at DRAM is the floor a step
cannot go below. The report shows both.
"""
from dataclasses import dataclass

PICO = 1e-12


@dataclass(frozen=True)
class Energy:
    """Joules, each a (low, high) pair."""
    compute: tuple
    memory: tuple

    @property
    def total(self):
        return (self.compute[0] + self.memory[0], self.compute[1] + self.memory[1])


@dataclass(frozen=True)
class EnergyModel:
    """pJ per FLOP by dtype name and pJ per byte by memory level, each a (low, high) pair.

    name      a short label (the preset's key)
    source    where the numbers come from (each one is also cited beside it in PRESETS)
    """
    name: str
    pj_per_flop: dict
    pj_per_byte: dict
    source: str = ""

    def compute_joules(self, flops, dtype="float32"):
        """(low, high) joules of `flops` floating-point operations in `dtype`."""
        low, high = self._pair(self.pj_per_flop, dtype, "dtype")
        return (flops * low * PICO, flops * high * PICO)

    def memory_joules(self, nbytes, level="dram"):
        """(low, high) joules of moving `nbytes` bytes to or from memory `level`."""
        low, high = self._pair(self.pj_per_byte, level, "memory level")
        return (nbytes * low * PICO, nbytes * high * PICO)

    def estimate(self, figures, dtype="float32", level="dram", bytes_figure="bytes_rw"):
        """Energy of a ledger's Figures (totals or per_token): its FLOPs (matmul + other +
        padding) in `dtype`, its `bytes_figure` ('bytes_rw' or 'weight_bytes_touched') at
        `level`. ValueError for a dtype or level the model has no number for."""
        if bytes_figure not in ("bytes_rw", "weight_bytes_touched"):
            raise ValueError(f"bytes_figure must be 'bytes_rw' or 'weight_bytes_touched', "
                             f"got {bytes_figure!r}")
        return Energy(self.compute_joules(figures.flops, dtype),
                      self.memory_joules(getattr(figures, bytes_figure), level))

    def _pair(self, table, key, what):
        if key not in table:
            raise ValueError(f"energy model {self.name!r} has no {what} {key!r}; it knows "
                             f"{', '.join(sorted(table))}")
        return table[key]


def _per_byte(pj, access_bytes):
    return pj / access_bytes


PRESETS = {
    "horowitz-45nm": EnergyModel(
        name="horowitz-45nm",
        source="M. Horowitz, 'Computing's energy problem (and what we can do about it)', "
               "ISSCC 2014, 45 nm, 0.9 V",
        pj_per_flop={
            # fp32 add 0.9 pJ, fp32 mult 3.7 pJ (Horowitz 2014, energy-per-operation table):
            # an add is the low end, a multiply the high end; a multiply-add (2 FLOPs) costs
            # 4.6 pJ, 2.3 per FLOP
            "float32": (0.9, 3.7),
            # fp16 add 0.4 pJ, fp16 mult 1.1 pJ (Horowitz 2014, same table)
            "float16": (0.4, 1.1),
        },
        pj_per_byte={
            # SRAM, 64-bit access: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ (Horowitz 2014, same table)
            "sram_8kb": (_per_byte(10, 8), _per_byte(10, 8)),
            "sram_32kb": (_per_byte(20, 8), _per_byte(20, 8)),
            "sram_1mb": (_per_byte(100, 8), _per_byte(100, 8)),
            # DRAM: 1.3-2.6 nJ per 64-bit access (Horowitz 2014, same table): 162.5-325 pJ/byte
            "dram": (_per_byte(1300, 8), _per_byte(2600, 8)),
        }),
    "hbm-accelerator": EnergyModel(
        name="hbm-accelerator",
        source="NVIDIA H100 SXM5 datasheet (peak rates at 700 W board power) and "
               "M. O'Connor et al., 'Fine-Grained DRAM', MICRO 2017 (HBM2 energy per bit)",
        pj_per_flop={
            # board power / peak rate, H100 SXM5 datasheet: 700 W at 494.7 TFLOPS TF32 tensor
            # (dense) = 1.41 pJ, at 67 TFLOPS FP32 (CUDA cores) = 10.4 pJ. Board-level, so an
            # upper estimate of the arithmetic alone (memory and static power are inside it)
            "float32": (700 / 494.7e12 / PICO, 700 / 67e12 / PICO),
            # 700 W at 989.4 TFLOPS FP16/BF16 tensor (dense), same datasheet: 0.71 pJ
            "float16": (700 / 989.4e12 / PICO, 700 / 989.4e12 / PICO),
        },
        pj_per_byte={
            # HBM2: 3.97 pJ/bit (O'Connor et al. 2017, section 1) = 31.8 pJ/byte, the high end;
            # the same paper's fine-grained DRAM halves it (2x energy efficiency, abstract):
            # 1.99 pJ/bit = 15.9 pJ/byte, the low end (a proposed design, not a shipped part)
            "dram": (3.97 * 8 / 2, 3.97 * 8),
        }),
}


def get_preset(name):
    """The EnergyModel called `name`; ValueError naming the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown energy model {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[name]
