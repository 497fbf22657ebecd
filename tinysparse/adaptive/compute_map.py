"""The compute map: a text coloured by the compute each of its tokens took, and what it shows.

    summary = compute_map(model, text_bytes, png="map.png", dense=dense_model)

draws (matplotlib, the `plot` extra) four panels: the text, each byte on a background as dark as
its FLOPs; a layer x token heatmap of what ran (trace.py: the fraction of each layer's work);
FLOPs per token against the surprisal of the token under a dense model, with Spearman's rho (do
the tokens a dense model finds hard get more compute?); the mean FLOPs by token class. Without
matplotlib, `ansi_text` gives the coloured text for a terminal. The numbers come back as a dict.
"""
import string

import numpy as np

from .trace import trace

CLASSES = {                          # checked in this order: '_' is an identifier character
    "whitespace": set(b" \t\n\r"),
    "identifier": set((string.ascii_letters + "_").encode()),
    "digit": set(string.digits.encode()),
    "punctuation": set(string.punctuation.encode()),
}


def token_class(byte):
    """'whitespace' (indentation, newlines), 'punctuation', 'identifier' (letters, _), 'digit',
    or 'other' (bytes of non-ASCII characters, control bytes)."""
    for name, members in CLASSES.items():
        if byte in members:
            return name
    return "other"


def class_means(ids, flops):
    """{class: (mean FLOPs, count)} over the classes present."""
    names = np.array([token_class(int(b)) for b in ids])
    return {c: (float(flops[names == c].mean()), int((names == c).sum()))
            for c in [*CLASSES, "other"] if (names == c).any()}


def spearman(flops, surprisal):
    """Spearman's rank correlation of FLOPs and surprisal over the tokens that have both (NaN
    when fewer than 3, or when either is constant: a dense model's FLOPs do not vary)."""
    from scipy.stats import spearmanr
    ok = np.isfinite(surprisal)
    if ok.sum() < 3 or np.ptp(flops[ok]) == 0 or np.ptp(surprisal[ok]) == 0:
        return float("nan")
    return float(spearmanr(flops[ok], surprisal[ok]).statistic)


def ansi_text(ids, flops, levels=(236, 238, 240, 243, 246, 250)):
    """The text with a 256-colour ANSI background per byte, darker = fewer FLOPs (quantiles)."""
    edges = np.quantile(flops, np.linspace(0, 1, len(levels) + 1)[1:-1]) if flops.size else []
    out = []
    for b, f in zip(ids, flops):
        level = levels[int(np.searchsorted(edges, f, side="right"))]
        ch = bytes([int(b)]).decode("latin-1")
        out.append(ch if ch == "\n" else f"\x1b[48;5;{level}m\x1b[30m{ch}\x1b[0m")
    return "".join(out)


def _text_grid(ids, flops, max_lines=40, max_cols=100):
    """(FLOPs by line and column, NaN where no byte, the characters) for the text panel."""
    lines, cols, row = [[]], [[]], 0
    for b, f in zip(ids, flops):
        if b == 10:
            lines.append([]), cols.append([])
            continue
        lines[-1].append(chr(b) if 32 <= b < 127 else "?")
        cols[-1].append(f)
    lines, cols = lines[:max_lines], cols[:max_lines]
    grid = np.full((len(lines), max_cols), np.nan)
    for r, values in enumerate(cols):
        grid[r, :min(len(values), max_cols)] = values[:max_cols]
    return grid, [line[:max_cols] for line in lines]


def draw(path, ids, result, rho, means, title):
    """Write the four-panel PNG to path (matplotlib's Agg backend: no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    flops, work, surprisal = result["flops"], result["work"], result["surprisal"]
    fig = plt.figure(figsize=(14, 11))
    grid, lines = _text_grid(ids, flops)
    ax = fig.add_subplot(2, 1, 1)
    ax.imshow(grid, cmap="viridis", aspect="auto", interpolation="nearest")
    for r, line in enumerate(lines):
        for col, ch in enumerate(line):
            ax.text(col, r, ch, ha="center", va="center", fontsize=6, family="monospace",
                    color="white")
    ax.set_axis_off()
    ax.set_title(f"{title}: the text, each byte coloured by its matmul FLOPs (brighter = more)")
    ax = fig.add_subplot(2, 3, 4)
    n = min(work.shape[1], 256)
    ax.imshow(work[:, :n], cmap="magma", aspect="auto", interpolation="nearest", vmin=0)
    ax.set_xlabel("token"), ax.set_ylabel("layer"), ax.set_title("what ran (fraction of a layer)")
    ax = fig.add_subplot(2, 3, 5)
    ax.scatter(surprisal, flops, s=4, alpha=0.5)
    ax.set_xlabel("surprisal (nats)"), ax.set_ylabel("FLOPs per token")
    ax.set_title(f"Spearman rho = {rho:.3f}")
    ax = fig.add_subplot(2, 3, 6)
    names = list(means)
    ax.bar(names, [means[c][0] for c in names])
    ax.set_ylabel("mean FLOPs per token"), ax.set_title("by token class")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compute_map(model, text, png=None, dense=None, title="compute map"):
    """Trace `text` (bytes) through model as sampling runs it and summarise; with png, draw it
    (ImportError when matplotlib is missing: callers fall back to ansi_text). dense: a model for
    the surprisal (None: the model itself). Returns {'tokens', 'mean_flops', 'flops', 'work',
    'surprisal', 'spearman', 'class_means', 'ids'}."""
    ids = np.frombuffer(bytes(text), dtype=np.uint8).astype(np.int64)
    if ids.size == 0:
        raise ValueError("the compute map needs a text of at least one byte")
    if dense is not None and dense.config.block_size < min(ids.size, model.config.block_size):
        raise ValueError(f"the dense model's block_size {dense.config.block_size} is below the "
                         f"model's {model.config.block_size}: it cannot score the same windows")
    result = trace(model, ids, dense)
    rho = spearman(result["flops"], result["surprisal"])
    means = class_means(ids, result["flops"])
    if png is not None:
        draw(png, ids, result, rho, means, title)
    return {**result, "ids": ids, "tokens": int(ids.size), "mean_flops": float(result["flops"].mean()),
            "spearman": rho, "class_means": means}
