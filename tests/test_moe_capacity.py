"""The MoE layer's expert capacity and load statistics (tinysparse/moe/dispatch.py: capacity;
layer.py): C = ceil(factor * T*k / E), capped at the number of slots, and what the layer keeps
and drops with it; the statistics of a forward (tokens per expert, loads, the dropped fraction,
the router's entropy).
"""
import math

import numpy as np
import pytest

import tinysparse as ts
from moe_helpers import float64_moe as _layer
from tinysparse.moe import capacity


def test_capacity_is_capped_at_the_number_of_slots():
    assert capacity(0.75, 8, 3) == 2
    assert capacity(1e300, 8, 4) == 8             # was an int too large for the plan's arrays
    assert capacity(1.0, 0, 4) == 1
    with pytest.raises(ValueError, match="capacity_factor"):
        capacity(math.inf, 8, 4)
    huge, dropless = _layer(capacity_factor=1e300), _layer()
    x = ts.Tensor(np.random.default_rng(12).standard_normal((1, 5, 4)))
    np.testing.assert_array_equal(huge(x).data, dropless(x).data)
    assert huge.stats["dropped_fraction"] == 0.0


def test_capacity_rounds_up_where_the_product_is_not_whole():
    # C = ceil(factor * T*k / E); each product here has a fraction, so floor gives one less
    assert capacity(1.25, 6, 4) == 2           # 1.875
    assert capacity(1.0, 10, 4) == 3           # 2.5
    assert capacity(2.0, 7, 3) == 5            # 4.67
    assert capacity(0.3, 10, 4) == 1           # 0.75: ceil, not the floor of 0 raised to 1


def test_the_layer_keeps_ceil_of_the_fractional_capacity():
    # 5 tokens x top-2 over 4 experts, factor 1: C = ceil(2.5) = 3. Every token prefers experts 0
    # and 1, so each gets 5 slots and keeps 3: 4 of 10 slots dropped (floor, C = 2, drops 6)
    layer = _layer(n_expert=4, capacity_factor=1.0)
    layer.router.weight.data = np.tile([10.0, 5.0, -10.0, -10.0], (4, 1))
    layer(ts.Tensor(np.random.default_rng(3).random((1, 5, 4)) + 1.0))     # x > 0: fixed choice
    assert layer.stats["tokens_per_expert"].tolist() == [5, 5, 0, 0]
    assert layer.stats["dropped_fraction"] == 0.4


def test_stats():
    layer = _layer(n_expert=3, top_k=2, capacity_factor=0.5)
    layer(ts.Tensor(np.random.default_rng(9).standard_normal((1, 6, 4))))
    s = layer.stats
    assert s["tokens_per_expert"].sum() == 12 and s["mean_load"] == 4.0
    assert s["max_load"] == s["tokens_per_expert"].max()
    C = math.ceil(0.5 * 12 / 3)
    kept = np.minimum(s["tokens_per_expert"], C).sum()
    assert s["dropped_fraction"] == pytest.approx((12 - kept) / 12)
    assert 0 < s["router_entropy"] <= math.log(3) + 1e-12
