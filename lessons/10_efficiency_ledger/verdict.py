"""Chapter 10's closing arithmetic: the claim decomposed into factors, the memory side of "one
consumer GPU", and the verdict table. Inputs are run.py's measurements and published.py's
quotes; every number printed is computed here from them, never typed in."""
from tinysparse.ledger import energy

import published as pub


def _mid_ratio(a, b):
    """How many times less b is than a, for (low, high) bands: the mean of the two ends' ratios."""
    return (a[0] / b[0] + a[1] / b[1]) / 2


def _joules(em, flops, nbytes, dtype="float32"):
    c, m = em.compute_joules(flops, dtype), em.memory_joules(nbytes)
    return (c[0] + m[0], c[1] + m[1])


def precision_factor(costs, batch=1):
    """Modelled energy per token at float32 over float16 (half the bytes, Horowitz's fp16 FLOP
    energies), for one model's costs: what precision alone buys on the same 45 nm model."""
    em = energy.get_preset("horowitz-45nm")
    f, b = costs["flops"], costs["weight_bytes"][batch]
    return _mid_ratio(_joules(em, f, b), _joules(em, f, b / 2, "float16"))


def hardware_factor(costs, batch=1):
    """Modelled energy per token, horowitz-45nm over hbm-accelerator (an H100-class board with
    HBM; energy.py cites both), float32, for one model's costs."""
    f, b = costs["flops"], costs["weight_bytes"][batch]
    return _mid_ratio(_joules(energy.get_preset("horowitz-45nm"), f, b),
                      _joules(energy.get_preset("hbm-accelerator"), f, b))


def factors(best, lev, ratio, costs):
    """[(label, factor or None, note)] for the decomposition plot and its printed table."""
    return [
        (f"sparsity, training\n({best})", lev.leverage, "measured here (counted FLOPs)"),
        (f"sparsity, inference\nbatch 1 ({best})", ratio["energy1"],
         "measured counts, modelled energy"),
        ("precision\nfp32 -> fp16", precision_factor(costs), "modelled (Horowitz 2014)"),
        ("hardware\n45 nm -> H100 + HBM", hardware_factor(costs), "modelled (energy.py presets)"),
        ("datacenter\nefficiency (PUE)", None, "no sourced figure found"),
        ("location\n(grid carbon)", None, "CO2, not energy; no sourced figure found"),
    ]


def memory_rows():
    """[(model, precision, GB, fits a 24 GB card, H100s to hold it, decode tokens/s bound when
    the active weights cross PCIe 4.0 x16 every token (None: active count not published))]."""
    rows = []
    for name, total, active, _ in pub.MODELS_TOTAL:
        for label, bits in pub.BITS:
            nbytes = total * bits / 8
            bound = None if active is None else pub.PCIE4_X16 / (active * bits / 8)
            rows.append((name, label, nbytes / 1e9, nbytes <= pub.CONSUMER_GPU_BYTES,
                         -(-nbytes // pub.H100_BYTES), bound))
    return rows


def verdict_rows(best, lev, ratio, factor_rows):
    """[(claim, measured here, published, verdict)]: one row per press claim."""
    modelled = [f for _, f, note in factor_rows[2:] if f is not None]
    product = ratio["energy1"]
    for f in modelled:
        product *= f
    spark = [r for r in pub.RESULTS if r["training_speedup"]]
    savings = ", ".join(f"{r['work']} {1 - 1 / r['training_speedup']:.0%}" for r in spark)
    saved = sorted(1 - 1 / r["training_speedup"] for r in spark)
    speed = sorted(r["training_speedup"] for r in spark)
    fits = [r for r in memory_rows() if r[0] == "DeepSeek-V2"]
    int4 = next(r for r in fits if r[1] == "int4")
    e1, e64 = ratio["energy1"], ratio["energy64"]
    rows = [
        ("100x less energy from sparse activation + routing, no accuracy lost",
         f"{best}: {e1:.2f}x less modelled energy/token at batch 1, {e64:.2f}x at 64, "
         f"{lev.leverage:.2f}x less training compute, all at equal loss",
         f"MoE alone: {speed[0]:.1f}x-{speed[-1]:.0f}x training compute or energy (GLaM, "
         f"DeepSeek, Switch); up to {pub.PATTERSON_COMBINED:.0f}x only from four practices "
         f"together (Patterson 2022)",
         f"not from sparsity: x{max(e1, lev.leverage):.1f} here, at most x{speed[-1]:.0f} "
         f"published; sparsity x fp16 x modern hardware (modelled) gives x{product:.0f}"),
        ("a model that needed 8 H100s runs on one consumer GPU",
         f"{best} stores {ratio['stored']:.1f}x the parameter bytes of the dense model of its "
         f"loss (sparsity cuts FLOPs, not memory)",
         f"DeepSeek-V2 (236B): {int4[2]:.0f} GB even at int4, {int4[4]:.0f} H100s' worth; a "
         f"24 GB card holds it only with offloading",
         f"false as stated: it takes int4 and offloading, and then decoding is bus-bound "
         f"(<= {int4[5]:.1f} tokens/s over PCIe 4.0 x16)"),
        ("early adopters cut training cost 50-80%",
         f"{best}: {lev.saving:.0%} fewer training FLOPs at equal loss ({lev.kind})",
         f"{savings}",
         f"plausible at scale (published {saved[0]:.0%}-{saved[-1]:.0%}); at this tiny scale "
         + ("in range" if lev.saving >= 0.5 else f"{lev.saving:.0%}, below it")),
    ]
    return rows


def print_table(rows):
    for claim, here, others, verdict in rows:
        print(f"  claim:     {claim}")
        print(f"  measured:  {here}")
        print(f"  published: {others}")
        print(f"  verdict:   {verdict}\n")
