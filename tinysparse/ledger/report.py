"""The per-token report of the `ledger` command: count a trained model's work on validation text.

    result = ledger_report(model, val_tokens, batch_size=8, train_step=True)
    print(format_report(result))

It runs inference (eval mode, no gradient) on `batch_size` validation windows of block_size
tokens under ledger.count(), and with train_step one forward + backward in training mode (the
optimizer's update is not a Function and is not counted), and reports per token: FLOPs (matmul /
other / padding), bytes (no reuse / weights once), arithmetic intensity, the modelled energy
band, the measured energy where a counter is readable, and the analytic estimate beside the
counted value. The command line (tinysparse/__main__.py) loads the run with load_run; this
module never reads files.
"""
import numpy as np

from ..engine.tensor import no_grad
from . import analytic, energy, roofline
from .counter import count
from .measure import EnergyMeter
from .moe_bytes import bytes_vs_batch

MOE_BATCHES = (1, 8, 64, 512)


def validation_windows(tokens, n_windows, T):
    """(x, y) of n_windows windows of T tokens spread evenly over `tokens` (deterministic),
    y shifted by one. ValueError when the text is shorter than one window."""
    tokens = np.asarray(tokens)
    if len(tokens) < T + 1:
        raise ValueError(f"the validation text has {len(tokens)} tokens; a window of block_size "
                         f"{T} needs {T + 1}: train on a larger corpus (--max-bytes)")
    starts = np.linspace(0, len(tokens) - T - 1, n_windows).astype(np.int64)
    idx = starts[:, None] + np.arange(T)                          # (n_windows, T)
    return tokens[idx].astype(np.int64), tokens[idx + 1].astype(np.int64)


def _count_inference(model, x):
    model.eval()
    with no_grad(), count(model) as led:
        model(x)
    return led


def _count_training(model, x, y):
    model.train()
    with count(model) as led:
        _, loss = model(x, y)
        loss.backward()
    model.eval()
    return led


def _measured(model, x):
    """Joules per token of one uncounted inference forward, or why there is no figure."""
    meter = EnergyMeter()
    model.eval()
    with no_grad(), meter:
        model(x)
    if meter.joules is None:
        return {"why": meter.why}
    return {"joules_per_token": meter.joules / x.size, "source": meter.source,
            "seconds": meter.seconds}


def _phase(led, n_tokens, analytic_flops, model_energy, label):
    per = led.per_token(n_tokens)
    return {"label": label, "per_token": per, "tokens": n_tokens, "analytic": analytic_flops,
            "energy_no_reuse": model_energy.estimate(per),
            "energy_weights_once": model_energy.estimate(per, bytes_figure="weight_bytes_touched"),
            "by_op": led.by_op(), "by_module": led.by_module(), "unknown": sorted(led.unknown_ops)}


def ledger_report(model, val_tokens, batch_size=8, train_step=False,
                  energy_model="horowitz-45nm", roofline_png=None, measure_roofline=True,
                  moe_batches=MOE_BATCHES):
    """Everything the report prints, as a dict (see format_report)."""
    model_energy = energy.get_preset(energy_model)
    T = model.config.block_size
    x, y = validation_windows(val_tokens, batch_size, T)
    n = x.size
    result = {"model": model, "tokens": n, "batch_size": batch_size, "T": T,
              "energy_model": model_energy}
    result["inference"] = _phase(_count_inference(model, x), n,
                                 analytic.forward_flops_per_token(model, T), model_energy,
                                 "inference (forward)")
    result["measured"] = _measured(model, x)
    if train_step:
        result["training"] = _phase(_count_training(model, x, y), n,
                                    analytic.training_flops_per_token(model, T), model_energy,
                                    "training step (forward + backward)")
    if measure_roofline:
        ceilings = roofline.measure_ceilings()
        rows = roofline.place(result["inference"]["by_op"], ceilings)
        result["roofline"] = {"ceilings": ceilings, "rows": rows,
                              "png": roofline.plot(rows, ceilings, roofline_png)
                              if roofline_png else None}
    if model.config.n_expert and moe_batches:
        windows = -(-4 * max(moe_batches) // T)                 # 4x the largest batch, in windows
        xs, _ = validation_windows(val_tokens, windows, T)
        result["moe_bytes"] = bytes_vs_batch(model, xs, moe_batches)
    return result


# ---- printing ---------------------------------------------------------------------------------------

def _si(value, unit=""):
    """3 significant digits with an SI prefix: 1.64e-06 J -> '1.64 uJ', 1.77e6 -> '1.77 M'."""
    if value == 0:
        return f"0 {unit}".rstrip()
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""),
                          (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= scale or scale == 1e-12:
            return f"{value / scale:.3g} {prefix}{unit}".rstrip()


def _band(pair, unit="J"):
    return f"{_si(pair[0], unit)} - {_si(pair[1], unit)}"


def _phase_lines(p):
    f = p["per_token"]
    lines = [f"{p['label']}, per token:",
             f"  FLOPs      matmul {_si(f.flops_matmul)}, other {_si(f.flops_other)}, padding "
             f"{_si(f.flops_padding)}; total {_si(f.flops)} (FlopCounterMode would report the "
             f"matmul figure alone)",
             f"  analytic   {_si(p['analytic'])} ({'6N + 12LTC' if 'training' in p['label'] else '2N + 4LTC'}"
             f"); counted matmul / analytic = {f.flops_matmul / p['analytic']:.3f}",
             f"  bytes      {_si(f.bytes_rw, 'B')} read+written (no reuse between ops); "
             f"{_si(f.weight_bytes_touched, 'B')} of distinct weights (each read once per "
             f"{p['tokens']}-token batch)",
             f"  intensity  {f.intensity:.2f} FLOP/byte (no reuse)"]
    e1, e2 = p["energy_no_reuse"], p["energy_weights_once"]
    lines.append(f"  energy, modelled: compute {_band(e1.compute)}; memory {_band(e1.memory)} "
                 f"(no reuse) or {_band(e2.memory)} (weights once)")
    if p["unknown"]:
        lines.append(f"  not costed (no formula; bytes only): {', '.join(p['unknown'])}")
    return lines


def _table(title, rows, limit=8):
    lines = [f"  {title:<28} {'matmul':>10} {'other':>10} {'bytes':>10} {'FLOP/B':>8}"]
    for name, f in rows[:limit]:
        lines.append(f"  {name[:28]:<28} {_si(f.flops_matmul):>10} {_si(f.flops_other):>10} "
                     f"{_si(f.bytes_rw, 'B'):>10} {f.intensity:>8.2f}")
    return lines


def format_report(result):
    """The report as text, every figure labelled counted, modelled, measured or analytic."""
    model, em = result["model"], result["energy_model"]
    c = model.config
    kind = (f"MoE, {c.n_expert} experts, top-{c.top_k}" if c.n_expert else "dense")
    lines = [f"ledger: {type(model).__name__} ({kind}; {model.num_parameters() / 1e6:.2f}M "
             f"parameters, {model.num_active_parameters() / 1e6:.2f}M active), "
             f"{result['batch_size']} validation windows x {result['T']} = {result['tokens']} "
             f"tokens; counted FLOPs and bytes are what the engine executed",
             f"energy model (modelled, not this machine): {em.name}, float32, DRAM; {em.source}",
             ""]
    for key in ("inference", "training"):
        if key in result:
            lines += _phase_lines(result[key]) + [""]
    m = result["measured"]
    lines.append("energy, measured: " + (
        m["why"] if "why" in m else
        f"{_si(m['joules_per_token'], 'J')} per token ({m['source']}, uncounted forward of "
        f"{m['seconds'] * 1e3:.0f} ms: the whole device, idle power and other processes included)"))
    lines += ["", "inference by module (counted):"] + _table("module", result["inference"]["by_module"])
    lines += ["inference by op (counted):"] + _table("op", result["inference"]["by_op"])
    if "roofline" in result:
        lines += [""] + _roofline_lines(result["roofline"])
    if "moe_bytes" in result:
        lines += [""] + _moe_lines(result["moe_bytes"], c)
    return "\n".join(lines)


def _roofline_lines(r):
    ce = r["ceilings"]
    lines = [f"roofline (measured in this run on a possibly shared machine): float32 matmul peak "
             f"{_si(ce.peak_flops, 'FLOP/s')}, copy bandwidth {_si(ce.bandwidth, 'B/s')} "
             f"({_si(ce.copy_bytes, 'B')} array); ridge {ce.ridge:.1f} FLOP/byte"]
    for p in sorted(r["rows"], key=lambda p: -p.flops)[:8]:
        lines.append(f"  {p.name:<24} {p.intensity:8.2f} FLOP/B  {p.bound}-bound, attainable "
                     f"{_si(p.attainable, 'FLOP/s')}")
    if r["png"]:
        lines.append(f"  plot: {r['png']}")
    return lines


def _moe_lines(rows, c):
    lines = [f"MoE inference weight bytes vs batch (routing measured on validation text; "
             f"uniform = E(1-(1-k/E)^B), E={c.n_expert}, k={c.top_k}):",
             f"  {'B':>5} {'experts read':>13} {'uniform':>8} {'MoE B/token':>12} "
             f"{'dense B/token':>14}"]
    for r in rows:
        lines.append(f"  {r.batch:>5} {r.distinct:>13.2f} {r.uniform:>8.2f} "
                     f"{_si(r.moe_bytes_per_token, 'B'):>12} {_si(r.dense_bytes_per_token, 'B'):>14}")
    lines.append("  (dense: a model whose parameters are the MoE's active ones, equal FLOPs per "
                 "token, reading all its weights once per batch)")
    return lines
