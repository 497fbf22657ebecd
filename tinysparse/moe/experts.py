"""The experts: E feed-forward networks stored as stacked weights, plus optional shared experts.

Each expert is the dense MLP of gpt.py at a smaller width d_expert:

    FFN_e(x) = GELU(x W1_e + b1_e) W2_e + b2_e

Stacking the E experts' weights into one (E, n_embd, d_expert) array (rather than E Linear
modules) is what lets a single grouped matmul serve every expert: the dispatch buffer holds each
expert's tokens in one contiguous segment, and segment e is multiplied by slice W1[e].
"""
import math

import numpy as np

from ..engine import functional as F
from .. import nn
from .._checks import check_int
from ..engine import random as ts_random
from .primitives import grouped_linear


def _uniform(shape, bound, dtype):
    return ts_random.generator().uniform(-bound, bound, size=shape).astype(dtype)


class Experts(nn.Module):
    """A bank of n_expert FFNs, n_embd -> d_expert -> n_embd, run on a dispatch buffer."""

    def __init__(self, n_expert, n_embd, d_expert, bias=True, dtype=np.float32):
        for name, value in (("n_expert", n_expert), ("n_embd", n_embd), ("d_expert", d_expert)):
            check_int(f"Experts {name}", value, low=1)
        self.n_expert, self.n_embd, self.d_expert = n_expert, n_embd, d_expert
        # PyTorch's Linear init per expert: U(-1/sqrt(d_in), 1/sqrt(d_in)); GPT re-initialises.
        b_in, b_hid = 1.0 / math.sqrt(n_embd), 1.0 / math.sqrt(d_expert)
        self.w1 = nn.Parameter(_uniform((n_expert, n_embd, d_expert), b_in, dtype))
        self.b1 = nn.Parameter(_uniform((n_expert, d_expert), b_in, dtype)) if bias else None
        self.w2 = nn.Parameter(_uniform((n_expert, d_expert, n_embd), b_hid, dtype))
        self.b2 = nn.Parameter(_uniform((n_expert, n_embd), b_hid, dtype)) if bias else None

    def extra_repr(self):
        return (f"n_expert={self.n_expert}, n_embd={self.n_embd}, d_expert={self.d_expert}, "
                f"bias={self.b1 is not None}")

    def forward(self, buffer, offsets, backend="numpy"):
        """buffer (S, n_embd), rows [offsets[e], offsets[e+1]) routed to expert e -> (S, n_embd)."""
        h = grouped_linear(buffer, self.w1, self.b1, offsets, backend)    # (S, d_expert)
        h = F.gelu(h)
        return grouped_linear(h, self.w2, self.b2, offsets, backend)      # (S, n_embd)

    def params_per_expert(self):
        """Parameters one expert owns (what a token pays for each expert it visits)."""
        return self.num_parameters() // self.n_expert


class SharedExperts(nn.Module):
    """n_shared experts that every token passes through (DeepSeekMoE, Dai et al. 2024, eq. 9-11).

    The sum of n_shared FFNs of width d_expert equals ONE FFN of width n_shared * d_expert whose
    hidden units are the experts' side by side (the output biases add up into one), so it is
    stored as a plain MLP: one dense matmul instead of n_shared small ones.
    """

    def __init__(self, n_embd, n_shared, d_expert, bias=True):
        self.c_fc = nn.Linear(n_embd, n_shared * d_expert, bias=bias)
        self.c_proj = nn.Linear(n_shared * d_expert, n_embd, bias=bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))
