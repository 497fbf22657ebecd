"""Chapter 10's three pictures, drawn from the runs' results (the JSON in each run folder), so
they can be redrawn without training. Each function returns the PNG's path, or None when
matplotlib is missing (run.py says the plots were skipped)."""
import os


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def loss_vs_training_flops(results, frontier, leverages, path):
    """Validation loss against counted cumulative training FLOPs for every run; the dense
    frontier (final points, log-log segments); an arrow from each sparse model's final point to
    the frontier's FLOPs at the same loss: its leverage."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in results:
        xs = [c for _, c, _ in r["curve"] if c > 0]
        ys = [l for _, c, l in r["curve"] if c > 0]
        style = "-" if r["kind"] == "dense" else "--"
        ax.plot(xs, ys, style, marker="o", markersize=3, label=r["name"])
    ax.plot([c for c, _ in frontier], [l for _, l in frontier], "k-", lw=2, alpha=0.4,
            label="dense frontier (final points)")
    for i, (name, lev) in enumerate(leverages.items()):
        if lev.dense_flops is not None:
            ax.annotate("", xy=(lev.dense_flops, lev.loss), xytext=(lev.sparse_flops, lev.loss),
                        arrowprops=dict(arrowstyle="<-", color="crimson"))
            ax.annotate(f"{name}: {lev.leverage:.2f}x"
                        f"{'' if lev.kind == 'interpolated' else ' (' + lev.kind + ')'}",
                        (lev.dense_flops, lev.loss), xytext=(6, 14 * i - 14),
                        textcoords="offset points", fontsize=7, color="crimson", va="center")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs, counted by the ledger (cumulative)")
    ax.set_ylabel("validation loss (nats per byte)")
    ax.set_title("loss against training compute; arrows: leverage at equal loss")
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def cost_vs_batch(curves, path):
    """curves: {name: {"batches": [...], "flops": [...], "bytes": [...], "energy": [(lo, hi)]}}:
    FLOPs per token (flat), weight bytes per token, modelled energy per token against batch."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for name, c in curves.items():
        B = c["batches"]
        axes[0].plot(B, c["flops"], marker="o", label=name)
        axes[1].plot(B, c["bytes"], marker="o", label=name)
        lo, hi = [e[0] for e in c["energy"]], [e[1] for e in c["energy"]]
        line, = axes[2].plot(B, [(a + b) / 2 for a, b in zip(lo, hi)], marker="o", label=name)
        axes[2].fill_between(B, lo, hi, color=line.get_color(), alpha=0.15)
    titles = ("FLOPs per token (counted)", "weight bytes per token (routing measured)",
              "energy per token, modelled (band)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens decoded together (batch)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, path)


def claim_decomposed(factors, combined, path):
    """factors: [(label, value or None, note)] on a log scale; None: no sourced figure (an empty
    slot, labelled). combined: the published combined factor, drawn as a line."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f[0] for f in factors]
    values = [f[1] if f[1] is not None else 1.0 for f in factors]
    colors = ["crimson" if "measured" in f[2] else ("grey" if f[1] is None else "steelblue")
              for f in factors]
    bars = ax.bar(range(len(factors)), values, color=colors)
    for bar, (_, value, note) in zip(bars, factors):
        text = "no sourced figure" if value is None else f"{value:.2f}x\n{note}"
        ax.text(bar.get_x() + bar.get_width() / 2, max(bar.get_height(), 1.0) * 1.05, text,
                ha="center", va="bottom", fontsize=6)
    ax.axhline(combined, color="k", ls="--", lw=1)
    ax.text(len(factors) - 0.5, combined * 1.05, f"'up to {combined:.0f}x': four practices "
            f"combined (Patterson et al. 2022)", ha="right", fontsize=7)
    ax.set_xticks(range(len(factors)))
    ax.set_xticklabels(labels, fontsize=7, rotation=15)
    ax.set_yscale("log")
    ax.set_ylim(0.5, combined * 3)
    ax.set_ylabel("energy factor (x less)")
    ax.set_title("the 100x claim, decomposed: red measured here, blue modelled from sources")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
