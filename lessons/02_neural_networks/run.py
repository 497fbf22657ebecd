"""Chapter 02: neural networks. Module, Linear, cross-entropy, SGD vs AdamW, an MLP on two spirals.

    python lessons/02_neural_networks/run.py            # the whole chapter, a few seconds
    python lessons/02_neural_networks/run.py --quick    # fewer training steps (the tests use it)
    python lessons/02_neural_networks/run.py --out-dir somewhere/   # where the PNG and checkpoint go

Read lessons/02_neural_networks/README.md alongside. Every claim the script prints is checked, and
it exits with status 1 if any check fails.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import tinysparse as ts
from tinysparse import functional as F
from tinysparse import nn, optim
from tinysparse.lesson import check, section, summary



# ---- the data: two interleaved spirals -----------------------------------------------------------

def make_spirals(n, rng, turns=2.0, noise=0.04):
    """n points on two spiral arms, one per class; arm 1 is arm 0 rotated by pi.

    Point at angle t has radius t / (2 pi turns), so the arms wind `turns` times and end at
    radius 1. A linear model can do no better than chance here: the classes alternate along
    every ray from the centre, so the network must bend its boundary `2 * turns` times.
    """
    t = np.sqrt(rng.random(n)) * turns * 2 * np.pi  # sqrt: points spread evenly along the arm
    label = rng.integers(0, 2, n)
    radius = t / (turns * 2 * np.pi)
    angle = t + np.pi * label
    X = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    X += noise * rng.standard_normal(X.shape)
    return X.astype(np.float32), label


def make_mlp(width):
    """2 inputs -> width -> width -> 2 logits, GELU in between."""
    return nn.Sequential([
        nn.Linear(2, width), nn.GELU(),
        nn.Linear(width, width), nn.GELU(),
        nn.Linear(width, 2),
    ])


def accuracy(model, X, y):
    with ts.no_grad():  # evaluation records no graph: only the arithmetic is paid for
        return float((model(ts.Tensor(X)).data.argmax(axis=1) == y).mean())


def full_loss(model, X, y):
    with ts.no_grad():
        return F.cross_entropy(model(ts.Tensor(X)), y).item()


# ---- 1. Module: parameters found by attribute ----------------------------------------------------

class ListOfLayers(nn.Module):
    """A mistake on purpose: a plain Python list is not a Module, so its layers are invisible."""

    def __init__(self):
        self.layers = [nn.Linear(2, 8), nn.Linear(8, 2)]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class ModuleListOfLayers(ListOfLayers):
    """The fix: nn.ModuleList is a Module, and it names its children 0, 1, 2, ..."""

    def __init__(self):
        self.layers = nn.ModuleList([nn.Linear(2, 8), nn.Linear(8, 2)])


def part_modules(width):
    section("1. Module: parameters are discovered by attribute")
    model = make_mlp(width)
    print(f"  make_mlp({width}) = nn.Sequential of Linear/GELU; its parameters:")
    for name, p in model.named_parameters():
        print(f"    {name:<10} {str(p.shape):<10} {p.dtype}")
    expected = 2 * width + width + width * width + width + width * 2 + 2
    check(model.num_parameters() == expected,
          f"{model.num_parameters()} parameters = (2+1)*{width} + ({width}+1)*{width} + ({width}+1)*2")
    x = ts.Tensor(np.zeros((5, 2), dtype=np.float32))
    check(model(x).shape == (5, 2), "Linear stores W as (d_in, d_out): x (5, 2) @ W (2, ...) -> logits (5, 2)")
    hidden, visible = ListOfLayers(), ModuleListOfLayers()
    print(f"  layers kept in a Python list: {len(hidden.parameters())} parameters found; "
          f"in an nn.ModuleList: {len(visible.parameters())} "
          f"({', '.join(n for n, _ in visible.named_parameters())})")
    check(len(hidden.parameters()) == 0 and len(visible.parameters()) == 4,
          "an optimizer given hidden.parameters() would train nothing: use nn.ModuleList")


# ---- 2. Softmax cross-entropy and its gradient ---------------------------------------------------

def part_cross_entropy():
    section("2. Softmax cross-entropy: dL/dz = softmax(z) - onehot(y)")
    rng = np.random.default_rng(0)
    N, V = 4, 3
    z = ts.Tensor(rng.standard_normal((N, V)), requires_grad=True)  # float64 for the checks
    y = np.array([0, 2, 1, 2])
    # L = (1/N) sum_i [ logsumexp(z_i) - z_i[y_i] ]
    loss = F.cross_entropy(z, y)
    loss.backward()
    p = np.exp(z.data - z.data.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    by_hand = -np.log(p[np.arange(N), y]).mean()
    onehot = np.eye(V)[y]
    print(f"  logits z {z.shape}, targets y = {y.tolist()}, loss = {loss.item():.6f} "
          f"(by hand: {by_hand:.6f})")
    print("  row 0:  softmax(z) = " + np.array2string(p[0], precision=4)
          + ",  onehot(y) = " + np.array2string(onehot[0], precision=0)
          + ",  N * dL/dz = " + np.array2string(N * z.grad[0], precision=4))
    check(abs(loss.item() - by_hand) < 1e-12, "the loss is the mean negative log-probability of the target")
    check(np.allclose(z.grad, (p - onehot) / N), "backward gives (softmax(z) - onehot(y)) / N")
    check(ts.gradcheck(lambda t: F.cross_entropy(t, y), z), "gradcheck of F.cross_entropy")


# ---- 3. Weight decay: coupled (L2 in Adam) vs decoupled (AdamW) ----------------------------------

def decay_shrinkage(grad_scale, decoupled, lr=0.01, wd=0.1, steps=20):
    """How much further a weight starting at 1.0 ends up toward 0 because of weight decay.

    The loss gradient alternates +grad_scale, -grad_scale (a weight the loss pushes back and
    forth: its gradient has RMS grad_scale but leads nowhere). Runs `steps` steps with decay on
    and with decay off, on the same gradients, and returns p(off) - p(on).
    """
    after = []
    for decay in (wd, 0.0):
        p = nn.Parameter(np.ones((1, 1), dtype=np.float64))  # 2-D: AdamW decays it
        opt = optim.AdamW([p], lr=lr, weight_decay=decay if decoupled else 0.0)
        for t in range(steps):
            g = np.full((1, 1), grad_scale * (-1.0) ** t)
            # L2 regularisation adds (wd/2) |p|^2 to the loss, i.e. wd * p to the gradient,
            # *before* Adam divides by sqrt(v). AdamW shrinks p itself, outside that division.
            p.grad = g if decoupled else g + decay * p.data
            opt.step()
        after.append(p.data.item())
    return after[1] - after[0]


def part_weight_decay():
    section("3. Weight decay in Adam: L2 (coupled) vs AdamW (decoupled)")
    lr, wd, steps = 0.01, 0.1, 20
    print(f"  {steps} steps, lr = {lr}, weight decay = {wd}, the weight starts at 1.0, the loss gradient")
    print("  alternates +-s. Shrinkage: how much further toward 0 the weight ends because of decay.")
    print(f"  {'gradient scale s':>17} {'Adam + L2':>10} {'AdamW':>10}")
    rows = {}
    for s in (0.0, 0.1, 1.0, 10.0, 100.0):
        rows[s] = (decay_shrinkage(s, False, lr, wd, steps), decay_shrinkage(s, True, lr, wd, steps))
        print(f"  {s:>17g} {rows[s][0]:>10.4f} {rows[s][1]:>10.4f}")
    target = steps * lr * wd  # about lr * wd * p per step, p close to 1
    check(all(abs(r[1] / target - 1) < 0.1 for r in rows.values()),
          f"AdamW: the same shrinkage (about steps * lr * wd = {target:g}) whatever the gradient")
    check(rows[0.0][0] > 5 * target and rows[100.0][0] < target / 50,
          "Adam + L2: the decay is divided by sqrt(v), so weights with large gradients are barely "
          "decayed and weights the loss ignores are decayed hard")

    bias = nn.Parameter(np.ones(3, dtype=np.float64))
    weight = nn.Parameter(np.ones((3, 3), dtype=np.float64))
    opt = optim.AdamW([weight, bias], lr=lr, weight_decay=wd)
    weight.grad, bias.grad = np.zeros((3, 3)), np.zeros(3)  # no loss gradient: decay alone acts
    opt.step()
    print(f"  AdamW step with zero gradients: weight (3, 3) -> {weight.data[0, 0]:.4f}, "
          f"bias (3,) -> {bias.data[0]:.4f}")
    check(math.isclose(weight.data[0, 0], 1 - lr * wd) and bias.data[0] == 1.0,
          "1-D parameters (biases, norm gains) are not decayed (decay_1d=False)")


# ---- 4. The training loop ------------------------------------------------------------------------

def train(model, opt, X, y, steps, batch_size, log_steps):
    """Minibatch training; returns {step: loss on the whole training set}."""
    rng = np.random.default_rng(1)  # the same batches, in the same order, for every optimizer
    history = {0: full_loss(model, X, y)}
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(X), batch_size)
        logits = model(ts.Tensor(X[idx]))       # forward: (B, 2) logits, the graph is recorded
        loss = F.cross_entropy(logits, y[idx])  # a scalar: the mean over the batch
        opt.zero_grad()                         # backward *adds* into .grad: clear the last step's
        loss.backward()                         # every parameter's .grad = dloss/dparameter
        opt.step()                              # parameters move; the graph is garbage now
        if step in log_steps:
            history[step] = full_loss(model, X, y)
    return history


def part_training(args, data):
    section("4. Training the same MLP with SGD + momentum and with AdamW")
    X, y, Xt, yt = data
    optimizers = {
        # PyTorch's SGD: v = momentum * v + g;  p -= lr * v
        "SGD+momentum": lambda params: optim.SGD(params, lr=0.1, momentum=0.9),
        # Loshchilov & Hutter's AdamW; 1-D parameters are not decayed
        "AdamW": lambda params: optim.AdamW(params, lr=1e-2, weight_decay=0.01),
    }
    print(f"  {len(X)} training and {len(Xt)} test points, {args.steps} steps of batch "
          f"{args.batch_size}, MLP width {args.width}")
    print("  SGD+momentum: lr 0.1, momentum 0.9;  AdamW: lr 0.01, betas (0.9, 0.999), weight decay 0.01")
    log_steps = sorted({round(args.steps * f) for f in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)})
    models, histories = {}, {}
    for name, make_opt in optimizers.items():
        ts.manual_seed(0)  # the same initial weights for both optimizers
        model = make_mlp(args.width)
        histories[name] = train(model, make_opt(model.parameters()), X, y, args.steps,
                                args.batch_size, set(log_steps))
        models[name] = model

    print("\n  loss on the whole training set (cross-entropy; log 2 = 0.693 is a coin flip)")
    print(f"  {'step':>6} " + " ".join(f"{name:>13}" for name in optimizers))
    for step in [0] + log_steps:
        print(f"  {step:>6} " + " ".join(f"{histories[name][step]:>13.4f}" for name in optimizers))
    print()
    results = {}
    for name, model in models.items():
        results[name] = (accuracy(model, X, y), accuracy(model, Xt, yt))
        print(f"  {name:<13} train accuracy {results[name][0]:6.1%}   test accuracy {results[name][1]:6.1%}")
    for name, h in histories.items():
        check(h[args.steps] < h[0], f"{name}: training lowered the loss ({h[0]:.3f} -> {h[args.steps]:.3f})")
    if not args.quick:
        check(results["AdamW"][1] > 0.95, "AdamW reaches > 95% test accuracy on the spirals")
    return models, results


# ---- 5. state_dict: a checkpoint is a dict of arrays ---------------------------------------------

def part_state_dict(model, args, Xt):
    section("5. state_dict: save, load, same predictions")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "mlp_adamw.npz")
    state = model.state_dict()  # {"0.weight": array, "0.bias": array, "2.weight": ...}: copies
    np.savez(path, **state)
    print(f"  saved {len(state)} arrays ({', '.join(state)}) to {path}")
    ts.manual_seed(123)
    fresh = make_mlp(args.width)  # different random weights...
    with np.load(path) as f:
        fresh.load_state_dict({k: f[k] for k in f.files})  # ...replaced by the saved ones
    with ts.no_grad():
        same = np.array_equal(model(ts.Tensor(Xt)).data, fresh(ts.Tensor(Xt)).data)
    check(same, "a fresh model loaded from the file gives bit-identical logits")


# ---- 6. The decision boundary --------------------------------------------------------------------

def part_plot(models, results, data, args):
    section("6. The decision boundary")
    try:
        import matplotlib
        matplotlib.use("Agg")  # write files, never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib is not installed: no picture (pip install matplotlib, or '.[plot]')")
        return
    X, y, Xt, yt = data
    lim = 1.25
    grid = np.linspace(-lim, lim, 200, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 5), constrained_layout=True)
    for ax, (name, model) in zip(np.atleast_1d(axes), models.items()):
        with ts.no_grad():
            p1 = F.softmax(model(ts.Tensor(points)), axis=-1).data[:, 1].reshape(gx.shape)
        ax.contourf(gx, gy, p1, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=1)
        ax.scatter(Xt[:, 0], Xt[:, 1], c=yt, cmap="RdBu_r", s=8, edgecolors="white", linewidths=0.3)
        ax.set_title(f"{name}: test accuracy {results[name][1]:.1%}")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.suptitle(f"P(class 1) after {args.steps} steps (test points shown; black line: p = 0.5)")
    path = os.path.join(args.out_dir, "decision_boundary.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"  saved {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (used by the tests)")
    parser.add_argument("--out-dir", default="out/lesson02", help="where the PNG and checkpoint go")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2000, quick 300)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 300 if args.quick else 2000
    # One BLAS thread, always. The thread count decides the order in which a matrix product's
    # terms are summed, and 2000 steps of training amplify that last-bit difference: with two
    # threads AdamW's loss at step 700 came out 0.074 instead of 0.027. One thread gives the
    # same numbers whatever the machine's core count (the matrices, 128 x 64, are too small for
    # threads to help anyway; on a busy machine their spin-waiting made this script 10-30x slower).
    threadpool_limits(1, user_api="blas")

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    X, y = make_spirals(1000, rng)
    Xt, yt = make_spirals(1000, rng)  # test points: the same spirals, new draws
    data = (X, y, Xt, yt)

    part_modules(args.width)
    part_cross_entropy()
    part_weight_decay()
    models, results = part_training(args, data)
    part_state_dict(models["AdamW"], args, Xt)
    part_plot(models, results, data, args)

    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
