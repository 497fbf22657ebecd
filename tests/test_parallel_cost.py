"""The expert-parallel cost model (tinysparse/parallel/cost.py), on values worked out by hand:
a wrong fraction of rows, a missed node limit or a swapped alpha and beta gives another number."""
import math

import pytest

from tinysparse.parallel import cost
from tinysparse.parallel.cost import MoEShape


def test_distinct_nodes_among_uniform_picks():
    assert cost.distinct_nodes(1, 128) == pytest.approx(1.0)
    assert cost.distinct_nodes(2, 2) == pytest.approx(1.5)           # 2 * (1 - 1/4)
    assert cost.distinct_nodes(8, 2) == pytest.approx(2 * (1 - 0.5 ** 8))
    assert cost.distinct_nodes(8, 1) == 1.0                           # one node: always home


def test_rows_per_token_split_between_nvlink_and_network():
    # one node of 8 GPUs: 7 of 8 destinations over NVLink, none over the network
    assert cost.rows_per_token(8, 8, 8) == pytest.approx((7.0, 0.0))
    # two nodes: k (G-1)/P = 3.5 rows by NVLink, k (P-G)/P = 4 over the network
    assert cost.rows_per_token(16, 8, 8) == pytest.approx((3.5, 4.0))
    # fewer ranks than a node: G is capped at P
    assert cost.rows_per_token(4, 8, 8) == pytest.approx((6.0, 0.0))
    # 1024 ranks: 8 * 1016/1024 rows cross the network
    assert cost.rows_per_token(1024, 8, 8)[1] == pytest.approx(7.9375)


def test_node_limited_routing_sends_one_row_per_destination_node_at_most_m():
    # two nodes: the other node is reached with probability 1 - (1/2)^8, once
    nv, net = cost.rows_per_token(16, 8, 8, node_limit=4)
    assert net == pytest.approx((2 * (1 - 0.5 ** 8)) / 2)
    assert nv == pytest.approx(8 * 7 / 16 + 8 * 8 / 16)              # rows forwarded inside nodes
    # 128 nodes: about 7.7 distinct other nodes, capped at M = 4
    assert cost.rows_per_token(1024, 8, 8, node_limit=4)[1] == 4.0
    assert cost.rows_per_token(1024, 8, 8, node_limit=16)[1] == pytest.approx(
        128 * (1 - (127 / 128) ** 8) * 127 / 128)
    # inside one node the limit changes nothing
    assert cost.rows_per_token(8, 8, 8, node_limit=1) == cost.rows_per_token(8, 8, 8)


def test_alltoall_seconds_is_the_slower_fabric():
    shape = MoEShape(n_embd=100, top_k=8, bytes_per_number=2, tokens_per_rank=1000)
    row = 200                                                           # bytes
    # one node: NVLink only, 7 peers
    beta, alpha, _ = cost.INTERCONNECTS["nvlink4"]
    want = alpha * 7 + 1000 * 7.0 * row / beta
    assert cost.alltoall_seconds(shape, 8) == pytest.approx(want)
    # two nodes over 100 GbE: the network (8 peers, 4 rows a token) is the slower fabric
    beta_e, alpha_e, _ = cost.INTERCONNECTS["eth-100g"]
    want = alpha_e * 8 + 1000 * 4.0 * row / beta_e
    assert cost.alltoall_seconds(shape, 16, inter="eth-100g") == pytest.approx(want)
    assert want > alpha * 7 + 1000 * 3.5 * row / beta
    # one rank alone sends nothing and waits for no peer: no time on either fabric
    assert cost.alltoall_seconds(shape, 1) == 0.0


def test_expert_seconds_counts_forward_and_twice_the_forward_backward():
    shape = MoEShape(n_embd=10, d_expert=20, top_k=2, tokens_per_rank=3)
    flops = 3 * (2 * 2 * 10 * 20) * 3 * 2                               # 3 passes, 2 matmuls, rows
    assert cost.expert_seconds(shape) == pytest.approx(flops / cost.GPUS["h100-bf16"][0])


def test_projection_rows():
    rows = cost.projection(ranks=(8, 1024))
    assert [r["P"] for r in rows] == [8, 1024] and [r["nodes"] for r in rows] == [1, 128]
    one_node, many = rows
    assert one_node["ib-ndr"] == one_node["eth-100g"] == one_node["ib-ndr/M=4"]   # NVLink only
    assert one_node["ib-ndr"] == pytest.approx(4e3 * cost.alltoall_seconds(MoEShape(), 8))
    assert many["net_rows"] == pytest.approx(7.9375) and many["net_rows_limited"] == 4.0
    assert many["eth-100g/M=4"] < many["eth-100g"] and many["ib-ndr/M=4"] < many["ib-ndr"]
    assert many["compute_ms"] == pytest.approx(1e3 * cost.expert_seconds(MoEShape()))
    # nodes of 4 GPUs, 12 ranks: every entry is 4 all-to-alls of that very layout
    (row,) = cost.projection(ranks=(12,), G=4, node_limit=2)
    assert row["nodes"] == 3 and isinstance(row["nodes"], int)
    for net in ("ib-ndr", "eth-100g"):
        assert row[net] == pytest.approx(4e3 * cost.alltoall_seconds(MoEShape(), 12, 4, inter=net))
        assert row[f"{net}/M=2"] == pytest.approx(
            4e3 * cost.alltoall_seconds(MoEShape(), 12, 4, inter=net, node_limit=2))
    assert row["ib-ndr"] != pytest.approx(4e3 * cost.alltoall_seconds(MoEShape(), 12, 8))


def test_fit_alpha_beta_recovers_latency_and_bandwidth():
    sizes = [1e3, 1e5, 1e6]
    alpha, beta = cost.fit_alpha_beta(sizes, [2e-6 + s / 5e9 for s in sizes])
    assert alpha == pytest.approx(2e-6) and beta == pytest.approx(5e9)
    # an intercept of exactly zero is a fit like any other (not the fallback)
    alpha, beta = cost.fit_alpha_beta([1e3, 3e3], [1e-6, 3e-6])
    assert alpha == pytest.approx(0.0, abs=1e-18) and beta == pytest.approx(1e9)
    # a negative intercept (noise) falls back to a line through the origin: sum(xy) / sum(x^2)
    alpha, beta = cost.fit_alpha_beta([100, 200], [0.5, 1.5])
    assert alpha == 0.0 and beta == pytest.approx(1 / (350 / 50000))
    # times that do not grow with size: no finite bandwidth
    assert cost.fit_alpha_beta([1, 2], [2.0, 2.0])[1] == math.inf
    with pytest.raises(ValueError, match=r"^fit_alpha_beta needs two or more distinct message "
                                         r"sizes$"):
        cost.fit_alpha_beta([5, 5], [1.0, 2.0])


def test_node_limited_rows_refuse_a_partial_node():
    # 12 ranks in nodes of 8: 4 ranks sit in a second node, which P // G would count as none
    with pytest.raises(ValueError, match="12 ranks are no multiple of 8 GPUs per node"):
        cost.rows_per_token(12, 8, 8, node_limit=4)
    assert cost.rows_per_token(12, 8, 8)[1] == pytest.approx(8 * 4 / 12)   # no limit: exact
    assert cost.rows_per_token(4, 8, 8, node_limit=4) == pytest.approx((6.0, 0.0))  # one node
