"""tinysparse/ledger/leverage.py: the dense frontier, log-log interpolation, training leverage.

The frontier below is (1e9 FLOPs, loss 4.0), (1e10, 3.0), (1e11, 2.5). At loss 3.5 the three
ways one could interpolate give three answers: log-log (the power law) 2.91e9, log FLOPs linear
in loss 3.16e9, linear in both 5.5e9; a ratio taken the wrong way round gives 1/2.91."""
import math

import pytest

from tinysparse.ledger.leverage import (EXTRAPOLATED, INTERPOLATED, UNREACHABLE, at_loss,
                                        dense_frontier, training_leverage)

POINTS = [(1e10, 3.0), (1e9, 4.0), (1e11, 2.5)]          # out of order on purpose


def test_leverage_is_the_log_log_frontier_flops_over_the_sparse_flops():
    frontier = dense_frontier(POINTS)
    lev = training_leverage(frontier, 3.5, 1e9)
    t = math.log(3.5 / 4.0) / math.log(3.0 / 4.0)                # 0.4642
    assert lev.dense_flops == pytest.approx(1e9 * 10 ** t, rel=1e-12)
    assert lev.dense_flops == pytest.approx(2.9118e9, rel=1e-4)
    assert lev.leverage == pytest.approx(2.9118, rel=1e-4)       # not 1/2.91, not 5.5, not 3.16
    assert lev.saving == pytest.approx(1 - 1 / 2.9118, rel=1e-4)
    assert lev.kind == INTERPOLATED


def test_the_frontier_passes_through_its_points_and_interpolates_between_them():
    frontier = dense_frontier(POINTS)
    for c, l in frontier:
        flops, kind = at_loss([p[1] for p in frontier], [p[0] for p in frontier], l)
        assert flops == pytest.approx(c, rel=1e-12) and kind == INTERPOLATED
    # between (1e10, 3.0) and (1e11, 2.5): the second segment, not the first
    t = math.log(2.7 / 3.0) / math.log(2.5 / 3.0)
    assert training_leverage(frontier, 2.7, 1e10).dense_flops == pytest.approx(1e10 * 10 ** t)


def test_a_loss_below_the_frontier_is_extrapolated_along_the_last_segment():
    lev = training_leverage(dense_frontier(POINTS), 2.0, 1e10)
    t = math.log(2.0 / 3.0) / math.log(2.5 / 3.0)                # 2.224: beyond the last point
    assert lev.kind == EXTRAPOLATED
    assert lev.dense_flops == pytest.approx(1e10 * 10 ** t, rel=1e-12)
    above = training_leverage(dense_frontier(POINTS), 5.0, 1e8)  # above: the first segment
    assert above.kind == EXTRAPOLATED
    assert above.dense_flops == pytest.approx(1e9 * 10 ** (math.log(5 / 4) / math.log(3 / 4)))


def test_one_dense_point_cannot_place_another_loss():
    frontier = dense_frontier([(1e9, 3.0)])
    lev = training_leverage(frontier, 2.5, 1e9)
    assert lev.kind == UNREACHABLE and lev.dense_flops is None and lev.leverage is None
    assert training_leverage(frontier, 3.0, 5e8).leverage == pytest.approx(2.0)


def test_a_larger_model_that_did_worse_is_not_on_the_frontier():
    frontier = dense_frontier([(1e9, 4.0), (1e10, 3.0), (2e10, 3.2), (1e11, 2.5)])
    assert frontier == [(1e9, 4.0), (1e10, 3.0), (1e11, 2.5)]


def test_at_loss_interpolates_any_cost_of_the_dense_model_of_equal_loss():
    # FLOPs per token 1e5 at loss 4 and 1e6 at loss 2: at loss sqrt(8) (the log-midpoint) the
    # log-log value is the geometric mean 3.16e5 (linear would give 5.5e5 at loss 3)
    value, kind = at_loss([2.0, 4.0], [1e6, 1e5], math.sqrt(8.0))
    assert value == pytest.approx(math.sqrt(1e11)) and kind == INTERPOLATED


@pytest.mark.parametrize("points", [[], [(0.0, 3.0)], [(1e9, -1.0)], [(math.inf, 3.0)]])
def test_bad_frontier_points_are_refused(points):
    with pytest.raises(ValueError, match="frontier"):
        dense_frontier(points)


def test_a_sparse_run_without_flops_is_refused():
    with pytest.raises(ValueError, match="sparse_flops"):
        training_leverage(dense_frontier(POINTS), 3.0, 0)


def test_small_positive_values_are_valid_and_zero_is_not():
    # log-log needs > 0, not > 1: FLOPs, losses and costs below 1 are fine (nats, GFLOP units)
    frontier = dense_frontier([(0.5, 0.8), (0.25, 0.9)])
    assert frontier == [(0.25, 0.9), (0.5, 0.8)]
    assert at_loss([0.5, 0.9], [0.5, 0.2], 0.9) == (pytest.approx(0.2), INTERPOLATED)
    lev = training_leverage(frontier, 0.85, 0.5)
    assert lev.loss == 0.85 and lev.sparse_flops == 0.5 and lev.kind == INTERPOLATED
    assert lev.leverage == pytest.approx(lev.dense_flops / 0.5)
    with pytest.raises(ValueError, match="frontier points must be positive and finite"):
        dense_frontier([(1e9, 0.0)])


@pytest.mark.parametrize("losses, values, loss", [
    ([0.0, 2.0], [1.0, 2.0], 1.0),       # a loss of zero
    ([1.0, 2.0], [0.0, 2.0], 1.5),       # a value of zero
    ([1.0, 2.0], [1.0, 2.0], 0.0),       # the loss asked for is zero
])
def test_at_loss_refuses_what_log_log_cannot_take(losses, values, loss):
    with pytest.raises(ValueError, match="losses and values must be positive"):
        at_loss(losses, values, loss)


def test_at_loss_without_models_is_refused():
    with pytest.raises(ValueError, match="at_loss needs at least one"):
        at_loss([], [], 1.0)


def test_two_models_are_enough_to_extrapolate():
    # one segment, (loss 2, 1e6) - (loss 4, 1e5): loss 1 lies one log-step beyond loss 2
    value, kind = at_loss([2.0, 4.0], [1e6, 1e5], 1.0)
    assert kind == EXTRAPOLATED and value == pytest.approx(1e7)
    value, kind = at_loss([2.0, 4.0], [1e6, 1e5], 8.0)
    assert kind == EXTRAPOLATED and value == pytest.approx(1e4)


def test_an_equal_loss_at_more_flops_is_not_on_the_frontier():
    assert dense_frontier([(1e9, 3.0), (2e9, 3.0), (4e9, 2.0)]) == [(1e9, 3.0), (4e9, 2.0)]
