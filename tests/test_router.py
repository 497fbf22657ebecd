"""The routers (tinysparse/moe/router.py) built directly: their defaults, dtypes and refusals,
the jitter's formula, the losses on one token, the balancing bias's bookkeeping, and the cases
where ranking by the logits and by the probabilities differ. test_moe_routing.py and
test_moe_balancing.py test them inside the layer; here each rule gets an input where a plausible
slip (a default moved, float64 creeping into a float32 model, a load not accumulated) gives
another answer.
"""
import math

import numpy as np
import pytest

import tinysparse as ts
from tinysparse.engine import random as ts_random
from tinysparse.moe import ExpertChoiceRouter, RoutingResult, TopKRouter
from tinysparse.moe.router import Router


def tensor(array, dtype=np.float32):
    return ts.Tensor(np.asarray(array, dtype=dtype))


# ----------------------------------------------------------------------------- settings

def test_defaults_and_dtypes():
    ts.manual_seed(0)
    base, topk, ec = Router(4, 3), TopKRouter(4, 3, 2), ExpertChoiceRouter(4, 3)
    assert (base.score, base.jitter) == ("softmax", 0.0)
    assert (topk.score, topk.jitter, topk.bias_update_rate, topk.bias) == ("softmax", 0.0, 0.001, None)
    assert (ec.score, ec.jitter, ec.capacity_factor) == ("softmax", 0.0, 2.0)
    for router in (base, topk, ec):
        assert router.weight.dtype == np.float32 and router.weight.shape == (4, 3)
    for cls, args in ((TopKRouter, (4, 3, 2)), (ExpertChoiceRouter, (4, 3))):
        assert cls(*args, dtype=np.float64).weight.dtype == np.float64
    assert TopKRouter(4, 3, 2, balance_bias=True).bias.dtype == np.float32


def test_the_initial_weights_are_n_0_002():
    ts.manual_seed(1)
    w = TopKRouter(100, 100, 2).weight.data.astype(np.float64)
    assert abs(w.mean()) < 1e-3 and abs(w.std() - 0.02) < 1e-3


def test_explicit_gate_normalisation_is_kept():
    assert TopKRouter(4, 3, 2).normalize_gates and not TopKRouter(4, 3, 1).normalize_gates
    assert TopKRouter(4, 3, 2, normalize_gates=False).normalize_gates is False
    assert TopKRouter(4, 3, 1, normalize_gates=True).normalize_gates is True
    router = TopKRouter(4, 3, 1, normalize_gates=True)
    assert np.allclose(router(tensor(np.ones((2, 4)))).gates.data, 1.0)   # one gate, renormalised


@pytest.mark.parametrize("make, message", [
    (lambda: Router(0, 3), r"^router n_embd must be an integer >= 1, got 0$"),
    (lambda: Router(4, 0), r"^router n_expert must be an integer >= 1, got 0$"),
    (lambda: Router(4, 3, score="relu"), r"^unknown score 'relu': use one of softmax, sigmoid$"),
    (lambda: TopKRouter(4, 3, 2, bias_update_rate=-0.1),
     r"^TopKRouter bias_update_rate must be a finite number >= 0, got -0.1$"),
])
def test_bad_settings_are_refused_in_one_line(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_smallest_settings_are_valid():
    ts.manual_seed(0)
    r = TopKRouter(1, 1, 1)(tensor([[2.0]]))
    assert r.expert_ids.tolist() == [[0]] and r.gates.data.tolist() == [[1.0]]
    assert TopKRouter(4, 3, 2, bias_update_rate=0.0).bias_update_rate == 0.0


# ----------------------------------------------------------------------------- jitter

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("u, factor", [(0.0, 0.75), (1.0, 1.25), (0.5, 1.0)])
def test_jitter_multiplies_the_input_by_1_minus_j_plus_2_j_u(monkeypatch, u, factor, dtype):
    router = TopKRouter(3, 4, 2, jitter=0.25, dtype=dtype)
    x = tensor(np.arange(6.0).reshape(2, 3) - 2.0, dtype)
    drawn = []

    def uniform(shape, device="cpu", dtype=np.float32):
        drawn.append((tuple(shape), device, dtype))
        return np.full(shape, u, dtype=dtype)

    monkeypatch.setattr(ts_random, "uniform", uniform)
    r = router(x)                                   # U(1 - j, 1 + j) noise: 1 - j + 2 j u
    assert drawn == [((2, 3), "cpu", dtype)]                # the noise in the input's dtype
    np.testing.assert_allclose(r.logits.data, (x.data * factor) @ router.weight.data, rtol=1e-6)
    assert r.logits.dtype == dtype


def test_no_jitter_draws_no_random_numbers():
    router = TopKRouter(3, 4, 2)
    before = ts_random.get_state()
    router(tensor(np.ones((5, 3))))
    assert ts_random.get_state() == before          # jitter 0 leaves the generator alone


# ----------------------------------------------------------------------------- affinities

def test_softmax_and_sigmoid_affinities_follow_their_formulas():
    from scipy.special import expit, softmax
    x = np.random.default_rng(2).standard_normal((5, 4))
    for score in ("softmax", "sigmoid"):
        router = TopKRouter(4, 6, 2, score=score, dtype=np.float64)
        r = router(tensor(x, np.float64))
        logits = x @ router.weight.data
        np.testing.assert_allclose(r.logits.data, logits, rtol=1e-12)
        s = softmax(logits, axis=-1) if score == "softmax" else expit(logits)
        np.testing.assert_allclose(r.scores.data, s, rtol=1e-12)
        np.testing.assert_allclose(r.probs.data, s / s.sum(axis=-1, keepdims=True), rtol=1e-12)
        picked = np.take_along_axis(s, r.expert_ids, axis=-1)
        np.testing.assert_allclose(r.gates.data, picked / picked.sum(-1, keepdims=True),
                                   rtol=1e-12)


# ----------------------------------------------------------------------------- losses

def test_the_losses_of_a_single_token():
    # one token, top-1: f = [0, 1, 0], P = its probabilities; the means are over T = 1 and
    # T*k = 1, not over a floor of 2
    router = TopKRouter(2, 3, 1)
    router.weight.data = np.array([[0.0, 1.0, -1.0], [0.5, 0.0, 0.0]], dtype=np.float32)
    r = router(tensor([[1.0, 2.0]]))
    p = r.probs.data[0].astype(np.float64)
    f = np.eye(3)[r.expert_ids[0, 0]]
    assert router.load_balance_loss(r).item() == pytest.approx(3 * (p * f).sum(), rel=1e-6)
    lse = math.log(np.exp(r.logits.data[0].astype(np.float64)).sum())
    assert router.z_loss(r).item() == pytest.approx(lse ** 2, rel=1e-6)
    assert router.load_balance_loss(r).dtype == np.float32 and router.z_loss(r).dtype == np.float32


# ----------------------------------------------------------------------------- balancing bias

def test_the_bias_follows_the_load_of_every_forward_since_the_last_update():
    router = TopKRouter(2, 3, 1, balance_bias=True)
    router.weight.data = np.array([[5.0, 0.0, -5.0], [-5.0, 0.0, 5.0]], dtype=np.float32)
    router(tensor([[1.0, 0.0]] * 3))                # 3 tokens to expert 0
    router(tensor([[0.0, 1.0]] * 2))                # then 2 to expert 2
    router.update_bias()                            # load [3, 0, 2], mean 5/3
    np.testing.assert_array_equal(router.bias.data, np.float32(0.001) * np.array([-1, 1, -1],
                                                                                 np.float32))
    assert router.bias.dtype == np.float32          # a float32 buffer stays float32


def test_selection_adds_the_bias_in_the_scores_dtype():
    # scores 0.5 and 0.5 for experts 0 and 1: a bias of 2**-30 on expert 1 vanishes in float32
    # (0.5 + 2**-30 rounds to 0.5), so the tie goes to the lower id, as the ranking promises
    router = TopKRouter(2, 2, 1, balance_bias=True)
    router.weight.data = np.zeros((2, 2), dtype=np.float32)
    router.bias.data = np.array([0.0, 2.0 ** -30], dtype=np.float32)
    assert router(tensor([[1.0, 1.0]])).expert_ids.tolist() == [[0]]


# ----------------------------------------------------------------------------- expert choice

def test_expert_choice_with_softmax_ranks_tokens_by_probability_not_logit():
    # expert 0's logits: token 0 = 1.0 and token 1 = 3.0, but token 1 gives expert 1 far more,
    # so its probability for expert 0 is lower: softmax columns are not ordered like the logits
    router = ExpertChoiceRouter(2, 2, capacity_factor=1.0)
    router.weight.data = np.eye(2, dtype=np.float32)
    r = router(tensor([[1.0, 0.0], [3.0, 10.0]]))
    assert r.logits.data[1, 0] > r.logits.data[0, 0] and r.probs.data[1, 0] < r.probs.data[0, 0]
    assert r.expert_ids.tolist() == [[0], [1]]      # expert 0 took token 0, expert 1 token 1


def test_expert_choice_with_sigmoid_ranks_by_the_logits_where_sigmoid_saturates():
    # float32 sigmoid is 1.0 for logits 20 and 30: the logits still tell them apart
    router = ExpertChoiceRouter(1, 1, capacity_factor=0.5, score="sigmoid")
    router.weight.data = np.ones((1, 1), dtype=np.float32)
    r = router(tensor([[20.0], [30.0]]))
    assert r.scores.data[0, 0] == r.scores.data[1, 0] == 1.0
    assert r.expert_ids.tolist() == [[-1], [0]]     # cap 1: the larger logit wins, not token 0


def test_expert_choice_table_shapes_and_order():
    ts.manual_seed(3)
    router = ExpertChoiceRouter(6, 8, capacity_factor=2.0)
    r = router(tensor(np.random.default_rng(0).standard_normal((64, 6))))
    for row in r.expert_ids:                        # each token's experts in ascending order
        real = row[row >= 0]
        assert real.tolist() == sorted(real.tolist())
    assert r.gates.dtype == np.float32 and r.expert_ids.dtype == np.int64
    one_each = ExpertChoiceRouter(6, 4, capacity_factor=0.25)(tensor(np.eye(6)[:4] * 50))
    assert one_each.expert_ids.shape[1] == 1        # no token got two experts: one column
    empty = ExpertChoiceRouter(6, 4)(tensor(np.zeros((0, 6))))
    assert empty.expert_ids.shape == (0, 1)


def test_routing_result_holds_what_it_is_given():
    r = RoutingResult(np.zeros((1, 1), np.int64), None, None, None, None)
    assert r.expert_ids.shape == (1, 1)


def test_top_k_ids_sorts_only_the_candidates_unless_the_kth_place_is_tied(monkeypatch):
    # the documented shortcut: argpartition, then a sort of k columns; a row is fully sorted only
    # when several columns tie at its k-th value (here row 5 alone)
    from tinysparse.moe.router import top_k_ids
    scores = np.random.default_rng(0).standard_normal((64, 32))
    scores[5, [3, 7, 9]] = 10.0 + np.array([1.0, 0.0, 0.0])          # k = 2: 7 and 9 tie at 2nd
    widths, real = [], np.argsort

    def argsort(a, *args, **kwargs):
        widths.append(np.shape(a))
        return real(a, *args, **kwargs)

    monkeypatch.setattr(np, "argsort", argsort)
    ids = top_k_ids(scores, 2)
    monkeypatch.undo()
    assert widths == [(64, 2), (1, 32)]
    np.testing.assert_array_equal(ids, np.argsort(-scores, axis=-1, kind="stable")[:, :2])
