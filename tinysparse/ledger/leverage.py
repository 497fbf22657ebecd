"""Comparing models at equal loss: the dense frontier, training leverage, cost of the dense model of
the same loss (chapter 10).

    frontier = dense_frontier([(flops_a, loss_a), (flops_b, loss_b), (flops_c, loss_c)])
    lev = training_leverage(frontier, sparse_loss, sparse_flops)
    lev.leverage, lev.dense_flops, lev.kind            # kind: interpolated | extrapolated | not reachable

Dense models of several sizes, each trained to its end, give points (training FLOPs C_i, final
validation loss L_i). Between two neighbours the frontier is a straight line in log-log (a power
law, as scaling laws are fitted: Kaplan et al. 2020), so the dense training FLOPs that reach a
loss L between L_i and L_j are

    log C = log C_i + (log L - log L_i) * (log C_j - log C_i) / (log L_j - log L_i)

Training leverage at equal loss is that C divided by the sparse model's own training FLOPs:
above 1, the sparse model reached the loss with fewer FLOPs than the dense frontier needs. The
same log-log interpolation gives any per-token cost of "the dense model of equal loss" from the
dense models' costs (`at_loss`). A loss outside the frontier's range is extrapolated along the
nearest segment and labelled so; with a single dense point or a flat segment there is no slope
to follow, and the value is None with kind "not reachable".
"""
import math
from dataclasses import dataclass

INTERPOLATED, EXTRAPOLATED, UNREACHABLE = "interpolated", "extrapolated", "not reachable"


def dense_frontier(points):
    """The lower envelope of dense (training FLOPs, final loss) points: sorted by FLOPs, keeping a
    point only when its loss is below every cheaper point's (a larger model that did worse is not
    on the frontier). Returns [(flops, loss)]. ValueError for an empty list or a value <= 0."""
    points = sorted((float(c), float(l)) for c, l in points)
    if not points:
        raise ValueError("the dense frontier needs at least one (flops, loss) point")
    if any(c <= 0 or l <= 0 or not (math.isfinite(c) and math.isfinite(l)) for c, l in points):
        raise ValueError(f"frontier points must be positive and finite (log-log), got {points}")
    frontier = []
    for c, l in points:
        if not frontier or l < frontier[-1][1]:
            frontier.append((c, l))
    return frontier


def at_loss(losses, values, loss):
    """(value, kind): `values` (one per dense model, > 0) interpolated in log-log at `loss`, the
    models given by their `losses` (> 0, any order, distinct). kind is INTERPOLATED inside the
    losses' range (an endpoint included), EXTRAPOLATED outside it (the nearest segment's slope),
    UNREACHABLE (value None) when there is no slope: one model, or equal losses."""
    pairs = sorted(zip(map(float, losses), map(float, values)))     # by loss, ascending
    if not pairs:
        raise ValueError("at_loss needs at least one (loss, value) pair")
    if any(l <= 0 or v <= 0 for l, v in pairs) or loss <= 0:
        raise ValueError(f"losses and values must be positive (log-log), got {pairs} at {loss}")
    lo, hi = pairs[0][0], pairs[-1][0]
    if lo <= loss <= hi:
        for (l0, v0), (l1, v1) in zip(pairs, pairs[1:]):
            if l0 <= loss <= l1:
                return _loglog(l0, v0, l1, v1, loss), INTERPOLATED
        return pairs[0][1], INTERPOLATED                           # a single point, hit exactly
    if len(pairs) < 2:
        return None, UNREACHABLE
    (l0, v0), (l1, v1) = pairs[:2] if loss < lo else pairs[-2:]
    if l0 == l1:
        return None, UNREACHABLE
    return _loglog(l0, v0, l1, v1, loss), EXTRAPOLATED


def _loglog(l0, v0, l1, v1, loss):
    if l0 == l1:
        return v0
    t = (math.log(loss) - math.log(l0)) / (math.log(l1) - math.log(l0))
    return math.exp(math.log(v0) + t * (math.log(v1) - math.log(v0)))


@dataclass(frozen=True)
class Leverage:
    """dense_flops: training FLOPs the dense frontier needs for the loss (None: not reachable);
    leverage: dense_flops / the sparse model's training FLOPs; kind: how dense_flops was found."""
    loss: float
    sparse_flops: float
    dense_flops: float | None
    kind: str

    @property
    def leverage(self):
        return None if self.dense_flops is None else self.dense_flops / self.sparse_flops

    @property
    def saving(self):
        """1 - 1/leverage: the fraction of the dense training FLOPs the sparse model saved."""
        return None if self.dense_flops is None else 1.0 - self.sparse_flops / self.dense_flops


def training_leverage(frontier, loss, sparse_flops):
    """Leverage of a sparse model that reached `loss` with `sparse_flops` training FLOPs, against a
    dense_frontier(): the frontier's FLOPs at that loss (log-log) / sparse_flops."""
    if sparse_flops <= 0:
        raise ValueError(f"sparse_flops must be > 0, got {sparse_flops}")
    flops, kind = at_loss([l for _, l in frontier], [c for c, _ in frontier], loss)
    return Leverage(float(loss), float(sparse_flops), flops, kind)
