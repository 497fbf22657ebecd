"""The MoE layer's settings and inputs (tinysparse/moe/layer.py, router.py, experts.py): settings
outside their domain (issue 11, kind 2) are refused with a message naming them, by the layer and
by the routers and experts built directly; an input of the wrong width is refused and a NumPy
array works as a tensor does; the default expert width counts the shared experts; the active and
total parameter counts; how a MoE model prints.
"""
import math

import numpy as np
import pytest

import tinysparse as ts
from moe_helpers import float64_moe as _layer
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.moe import ExpertChoiceRouter, Experts, MoE, TopKRouter


@pytest.mark.parametrize("kwargs,setting", [
    (dict(top_k=5), "top_k"), (dict(top_k=0), "top_k"), (dict(n_expert=0, top_k=1), "n_expert"),
    (dict(capacity_factor=0.0), "capacity_factor"), (dict(capacity_factor=-1.0), "capacity_factor"),
    (dict(d_expert=0), "d_expert"), (dict(n_shared=-1), "n_shared"), (dict(router="hash"), "router"),
    (dict(score="relu"), "score"), (dict(balance="loss"), "balance"),
    (dict(dispatch_backend="triton"), "dispatch_backend"), (dict(aux_coef=-0.1), "aux_coef"),
    (dict(z_coef=-1.0), "z_coef"), (dict(jitter=1.0), "jitter"),
    (dict(router="expert_choice", balance="bias"), "balance"),
])
def test_invalid_settings_are_refused(kwargs, setting):
    args = dict(n_embd=8, n_expert=4, top_k=2, d_expert=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=setting) as info:
        MoE(**args)
    if setting in ("router", "score", "balance"):
        assert "one of" in str(info.value) or "'aux'" in str(info.value)  # the allowed values are named


@pytest.mark.parametrize("setting,value", [
    ("capacity_factor", math.inf), ("capacity_factor", math.nan), ("capacity_factor", True),
    ("jitter", math.nan), ("jitter", -0.1), ("aux_coef", math.nan), ("aux_coef", math.inf),
    ("z_coef", math.nan), ("bias_update_rate", math.nan), ("bias_update_rate", -1e-3),
    ("top_k", 2.0), ("n_shared", 0.5), ("d_expert", 4.0),
])
def test_non_finite_and_meaningless_settings_are_refused(setting, value):
    with pytest.raises(ValueError, match=rf"MoE {setting}=.* is invalid: {setting} must be"):
        MoE(8, 4, **{"top_k": 2, setting: value})


def test_routers_built_directly_check_their_settings():
    with pytest.raises(ValueError, match=r"TopKRouter top_k must be an integer in \[1, 4\], got 5"):
        TopKRouter(8, 4, 5)
    with pytest.raises(ValueError, match=r"ExpertChoiceRouter capacity_factor must be a positive "
                                         r"finite number, got inf"):
        ExpertChoiceRouter(8, 4, math.inf)
    with pytest.raises(ValueError, match=r"router jitter must be a finite number in \[0, 1\)"):
        TopKRouter(8, 4, 2, jitter=math.nan)
    with pytest.raises(ValueError, match=r"Experts d_expert must be an integer >= 1, got 0"):
        Experts(4, 8, 0)


def test_an_input_of_the_wrong_width_is_refused():
    # (2, 3, 8) reshaped to (-1, 4) would silently be 12 tokens of width 4
    layer = MoE(4, 3, 2)
    with pytest.raises(ValueError, match=r"MoE\(n_embd=4\) got an input of shape \(2, 3, 8\)"):
        layer(ts.Tensor(np.zeros((2, 3, 8), dtype=np.float32)))


def test_a_numpy_array_input_works_as_a_tensor_does():
    layer = _layer()
    x = np.random.default_rng(13).standard_normal((1, 5, 4))
    np.testing.assert_array_equal(layer(x).data, layer(ts.Tensor(x)).data)   # was an AttributeError


# ---- sizes --------------------------------------------------------------------------------------

def test_default_expert_width_counts_the_shared_experts():
    # d_expert = 4 * n_embd // (top_k + n_shared): a token's active FFN compute is the dense MLP's
    assert MoE(8, 4, top_k=2).d_expert == 16                   # 32 // 2
    assert MoE(8, 4, top_k=2, n_shared=1).d_expert == 10       # 32 // 3
    assert MoE(8, 4, top_k=1, n_shared=2).d_expert == 10       # 32 // 3
    layer = MoE(8, 4, top_k=2, n_shared=2)                     # 32 // 4 = 8, shared 2 x 8 wide
    assert layer.d_expert == 8 and layer.experts.w1.shape == (4, 8, 8)
    assert layer.shared.c_fc.weight.shape == (8, 16)           # Linear(n_embd, n_shared * d)
    assert MoE(1, 8, top_k=8, n_shared=1).d_expert == 1        # 4 // 9 = 0: at least one unit
    assert MoE(8, 4, top_k=2, d_expert=5, n_shared=1).d_expert == 5    # given: kept
    gpt = GPT(GPTConfig(n_embd=8, n_head=2, n_layer=1, n_expert=4, top_k=2, n_shared=1))
    assert gpt.moe_layers()[0].d_expert == 10


def test_active_parameters():
    layer = MoE(8, 6, 2, 5, n_shared=1)
    expert = 8 * 5 + 5 + 5 * 8 + 8
    assert layer.experts.params_per_expert() == expert
    assert layer.active_parameters() == 8 * 6 + 2 * expert + expert   # router + top-2 + shared
    assert layer.num_parameters() == 8 * 6 + 6 * expert + expert


def test_print_a_moe_model():
    ts.manual_seed(0)
    text = repr(MoE(8, 4, 2, d_expert=5, n_shared=1, capacity_factor=1.25))
    assert text.splitlines()[:4] == [
        "MoE(",
        "  n_embd=8, n_expert=4, top_k=2, d_expert=5, n_shared=1, router='topk', "
        "capacity_factor=1.25, balance='aux'",
        "  (router): TopKRouter(8 -> 4 experts, score='softmax')",
        "  (experts): Experts(n_expert=4, n_embd=8, d_expert=5, bias=True)"]
