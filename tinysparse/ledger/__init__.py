"""The efficiency ledger (chapter 10): executed FLOPs, bytes moved and energy per token.

    from tinysparse import ledger
    with ledger.count(model) as led:
        model(idx)
    led.totals.flops_matmul, led.by_module(), led.per_token(idx.size)

Files, one idea each:

    counter.py      count(): the observer of the engine's hook, the module stack, the tables
    costs.py        the cost formula of each Function class (arithmetic, matmul, shape ops,
                    reductions), registered by class, each with its convention
    costs_fused.py  the fused ops (softmax, cross-entropy, GELU, layer norm, attention) and the
                    Mixture-of-Experts primitives (sparse work counted as executed)
    energy.py       EnergyModel: modelled energy from FLOPs and bytes, sourced presets, a band
    measure.py      measured energy: NVML on NVIDIA GPUs, RAPL on Linux CPUs, where readable
    roofline.py     this machine's ceilings, measured; each op placed by arithmetic intensity
    moe_bytes.py    MoE inference: distinct experts and weight bytes per token against batch size
    analytic.py     the textbook estimates (6N + 12 L T C) beside the counted values
    report.py       the `ledger` command: load a run, count inference (and a step), print

The engine never imports this package: it calls whatever observer is installed
(engine/function.py set_observer, nn.set_call_observer), and count() installs one.
"""
from .counter import Figures, Ledger, Totals, count, module_paths
from .costs import COSTS, Cost, Formula, conventions, register

__all__ = ["count", "Ledger", "Figures", "Totals", "module_paths", "COSTS", "Cost", "Formula",
           "conventions", "register"]
