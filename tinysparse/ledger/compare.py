"""Per-token inference costs of a trained model, side by side with another (chapter 10, `make train`).

    costs = token_costs(model, val_tokens, batches=(1, 64))
    costs["flops"], costs["weight_bytes"][64], costs["energy"][1]      # per token
    print(ledger_line("tiny-moe", costs, 1.52, "dense tiny", dense_costs, 1.61))

What each figure is:

    flops         counted FLOPs per token of an eval-mode forward over validation windows
                  (matmul + other + padding: the ledger's total, counter.py), the work a token
                  costs whatever the batch
    weight_bytes  {B: weight bytes read per token when B tokens are decoded together}: every
                  parameter of a dense model once per batch, / B; of a MoE, the weights outside
                  the routed experts once plus, per layer, the distinct experts the batch's
                  tokens were routed to (measured routing, moe_bytes.py), / B
    energy        {B: (low, high) joules per token}, MODELLED: flops at float32 plus
                  weight_bytes[B] from DRAM, with an EnergyModel preset (energy.py); activations
                  and the KV cache are left out, so it is a floor of the memory side
    total_bytes   every parameter's bytes: what has to be stored somewhere to run the model
"""
import numpy as np

from ..moe import MoE
from . import energy
from .moe_bytes import bytes_vs_batch
from .report import _count_inference, validation_windows


def token_costs(model, val_tokens, batches=(1, 64), n_windows=8, energy_model="horowitz-45nm"):
    """The figures of the module docstring for `model` on `val_tokens` (1-D token ids), as a dict
    of plain floats (JSON-ready; the batch keys are ints)."""
    T = model.config.block_size
    x, _ = validation_windows(val_tokens, n_windows, T)
    per = _count_inference(model, x).per_token(x.size)
    total_bytes = float(sum(p.data.nbytes for p in model.parameters()))
    if any(isinstance(m, MoE) for m in model.modules()):
        windows = max(n_windows, -(-4 * max(batches) // T))       # 4x the largest batch, in windows
        xs, _ = validation_windows(val_tokens, windows, T)
        rows = bytes_vs_batch(model, xs, batches)
        weights = {r.batch: float(r.moe_bytes_per_token) for r in rows}
        experts = {r.batch: float(r.distinct) for r in rows}
    else:
        weights = {B: total_bytes / B for B in batches}
        experts = {}
    em = energy.get_preset(energy_model)
    joules = {}
    for B in batches:
        c, m = em.compute_joules(per.flops), em.memory_joules(weights[B])
        joules[B] = (c[0] + m[0], c[1] + m[1])
    return {"flops": float(per.flops), "flops_matmul": float(per.flops_matmul),
            "weight_bytes": weights, "energy": joules, "experts_read": experts,
            "total_bytes": total_bytes, "params": int(model.num_parameters()),
            "active_params": int(model.num_active_parameters(non_embedding=False)),
            "energy_model": em.name}


def _si(value, unit):
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "u"),
                          (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def ledger_line(name, costs, loss, dense_name, dense_costs, dense_loss, batch=1, note=""):
    """One line: FLOPs and modelled energy per token of `name` against `dense_name` (decoding
    `batch` tokens together), and both validation losses (nats). `note` is appended (e.g. where
    the dense figures come from)."""
    f, fd = costs["flops"], dense_costs["flops"]
    e, ed = costs["energy"][batch], dense_costs["energy"][batch]
    ratio = (ed[0] / e[0] + ed[1] / e[1]) / 2
    return (f"ledger: {name} {_si(f, 'FLOP')}/token vs {dense_name} {_si(fd, 'FLOP')} "
            f"({fd / f:.2f}x fewer); modelled energy {_si(e[0], 'J')}-{_si(e[1], 'J')} vs "
            f"{_si(ed[0], 'J')}-{_si(ed[1], 'J')} per token at batch {batch} ({ratio:.2f}x less, "
            f"{costs['energy_model']}); val loss {loss:.4f} vs {dense_loss:.4f} nats"
            + (f" ({note})" if note else ""))


def total_bytes_at(params, bits):
    """Bytes to store `params` parameters at `bits` bits each (16: fp16/bf16, 8: int8, 4: int4)."""
    return float(np.ceil(params * bits / 8))
