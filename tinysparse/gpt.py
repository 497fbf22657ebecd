"""A GPT in the shape of nanoGPT: token + position embeddings, pre-norm blocks, a tied LM head.

Radford et al. 2019 (GPT-2) with the pre-norm residual stream:
    x = x + attn(ln_1(x));  x = x + ffn(ln_2(x))
The feed-forward slot of each Block is built by `make_ffn(config)`, so a Mixture-of-Experts layer
can take the dense MLP's place without touching the rest of the model.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from .engine import functional as F
from . import nn
from .engine import random as ts_random
from .engine.backend import array_module, to_numpy
from .moe import MoE
from .engine.tensor import Tensor, no_grad


@dataclass
class GPTConfig:
    vocab_size: int = 256     # tokens in the vocabulary (256 for the byte tokenizer)
    n_layer: int = 4          # transformer blocks
    n_head: int = 4           # attention heads per block; n_embd must divide evenly
    n_embd: int = 128         # width of the residual stream (C)
    block_size: int = 64      # longest context the model sees (T at most this)
    dropout: float = 0.0      # dropout on embeddings, attention output and MLP output
    bias: bool = True         # biases in Linear layers and LayerNorms
    # Mixture of Experts (chapter 05; tinysparse/moe). n_expert = 0 keeps the dense MLP.
    n_expert: int = 0         # routed experts per MoE layer; 0 = dense MLP in every block
    top_k: int = 2            # experts each token visits (token choice; the average for expert choice)
    d_expert: int = 0         # hidden width of one expert; 0 = 4*n_embd // (top_k + n_shared), so a
                              # token's active FFN compute equals the dense MLP's (DeepSeekMoE's rule)
    n_shared: int = 0         # shared experts every token passes through (DeepSeekMoE)
    router: str = "topk"      # 'topk' (token choice) or 'expert_choice' (Zhou et al. 2022; not causal)
    score: str = "softmax"    # router affinity: 'softmax' or 'sigmoid' (DeepSeek-V3)
    capacity_factor: float | None = None  # C = ceil(factor * T*k / E) slots per expert; None = dropless
    balance: str = "aux"      # 'aux' (Switch loss), 'bias' (DeepSeek-V3, aux-loss-free) or 'none'
    aux_coef: float = 0.01    # weight of the Switch load-balance loss (Fedus et al. 2021: 0.01)
    z_coef: float = 0.001     # weight of the ST-MoE router z-loss (Zoph et al. 2022: 0.001); 0 = off
    bias_update_rate: float = 0.001  # gamma of balance='bias': each step moves every expert's
                                     # selection bias by +-gamma toward balance (DeepSeek-V3)
    jitter: float = 0.0       # router noise: its input times U(1-j, 1+j) in training (Switch); 0 = off
    dispatch_backend: str = "auto"  # sparse dispatch: 'numpy', 'numba' (CPU kernels), 'cuda', or
                                    # 'auto' (numba on float32/64 NumPy arrays, else numpy)

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("n_expert", "d_expert"):  # 0 has a meaning for both; the MoE checks the rest
            if getattr(self, name) < 0:
                raise ValueError(f"GPTConfig.{name} must be at least 0, got {getattr(self, name)}")

    def to_dict(self):
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        qkv = self.c_attn(x)                                      # (B, T, 3C)
        # split into heads, softmax(q k^T / sqrt(hd)) v per head, heads side by side again:
        # one fused Function (functional.PackedCausalAttention; chapter 03 builds it step by step)
        y = F.causal_self_attention(qkv, self.n_head)             # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The dense feed-forward network: C -> 4C -> C with GELU."""

    def __init__(self, config):
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


def make_ffn(config):
    """The feed-forward slot of a Block: a dense MLP, or a Mixture of Experts when n_expert > 0."""
    if config.n_expert == 0:
        return MLP(config)
    return MoE(config.n_embd, config.n_expert, config.top_k, config.d_expert or None,
               n_shared=config.n_shared, router=config.router, score=config.score,
               capacity_factor=config.capacity_factor, balance=config.balance,
               aux_coef=config.aux_coef, z_coef=config.z_coef,
               bias_update_rate=config.bias_update_rate, jitter=config.jitter,
               dispatch_backend=config.dispatch_backend, bias=config.bias, dropout=config.dropout)


class Block(nn.Module):
    def __init__(self, config):
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = make_ffn(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)   # token embeddings, tied to the head
        self.wpe = nn.Embedding(config.block_size, config.n_embd)   # learned positions
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self._aux_total = None    # the MoE auxiliary loss of the last forward with targets (a Tensor)
        self._init_weights()

    def _init_weights(self):
        # GPT-2 init: N(0, 0.02) everywhere, biases 0, and the projections that write into the
        # residual stream scaled by 1/sqrt(2 * n_layer) so the stream's variance stays put with depth.
        rng = ts_random.generator()

        def is_bias(name):  # a MoE's stacked experts (moe/experts.py) call their biases b1, b2
            return name.endswith(("bias", "experts.b1", "experts.b2"))

        for name, p in self.named_parameters():
            if is_bias(name) or name.split(".")[-2].startswith("ln"):
                continue  # LayerNorm gains stay 1, biases 0
            residual = name.endswith(("c_proj.weight", "experts.w2"))  # w2: the experts' c_proj
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if residual else 0.02
            p.data = rng.normal(0.0, std, size=p.shape).astype(p.dtype)
        for name, p in self.named_parameters():
            if is_bias(name):
                p.data = np.zeros(p.shape, dtype=p.dtype)

    def num_parameters(self, non_embedding=True):
        """Parameter count; by default without the position embeddings (as nanoGPT reports)."""
        n = sum(p.size for p in self.parameters())
        return n - self.wpe.weight.size if non_embedding else n

    def moe_layers(self):
        """The MoE layers of the model, first block first (empty for a dense model)."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    @property
    def last_aux_loss(self):
        """The MoE auxiliary loss (balance + z-loss, all layers) of the last forward with targets,
        as a float; read on demand so that a GPU step does not wait on a copy it does not log."""
        return 0.0 if self._aux_total is None else float(to_numpy(self._aux_total.data))

    def moe_stats(self):
        """Load balance of the last forward, over all MoE layers (None for a dense model):
        max_over_mean_load  mean over layers of (tokens on the busiest expert / mean per expert);
                            1.0 is perfect balance, n_expert is every token on one expert
        worst_layer_load    the largest max/mean of any layer
        dropped_fraction    slots dropped at capacity / slots routed, all layers together
        """
        stats = [m.stats for m in self.moe_layers()]
        if not stats or not stats[0]:
            return None
        loads = [s["max_over_mean_load"] for s in stats]
        routed = sum(int(s["tokens_per_expert"].sum()) for s in stats)
        dropped = sum(s["dropped_fraction"] * int(s["tokens_per_expert"].sum()) for s in stats)
        return {"max_over_mean_load": float(np.mean(loads)), "worst_layer_load": float(max(loads)),
                "dropped_fraction": dropped / max(routed, 1)}

    def update_router_bias(self):
        """DeepSeek-V3's auxiliary-loss-free balancing step: call after each optimizer step.
        A no-op unless config.balance == 'bias'."""
        for layer in self.moe_layers():
            layer.update_bias()

    def num_active_parameters(self, non_embedding=True):
        """Parameters one token actually uses: a MoE layer counts its router, the top_k experts a
        token visits and the shared experts, not all n_expert experts. Equals num_parameters()
        for a dense model."""
        n = self.num_parameters(non_embedding)
        return n - sum(m.num_parameters() - m.active_parameters() for m in self.moe_layers())

    def flops_per_token(self, T=None):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L T C,
        with N the ACTIVE parameters: the experts a token skips cost it nothing."""
        c = self.config
        T = T or c.block_size
        return 6 * self.num_active_parameters() + 12 * c.n_layer * T * c.n_embd

    def forward(self, idx, targets=None):
        idx = idx.data if isinstance(idx, Tensor) else idx
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        xp = array_module(self.wte.weight.data)
        idx = xp.asarray(idx)
        tok = self.wte(idx)                                       # (B, T, C)
        pos = self.wpe(xp.arange(T))                              # (T, C), broadcast over B
        x = self.drop(tok + pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = x @ self.wte.weight.T                            # (B, T, vocab_size)
        loss = None
        if targets is not None:
            targets = targets.data if isinstance(targets, Tensor) else targets
            loss = F.cross_entropy(logits, xp.asarray(targets))
            aux = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
            # load balance + router z-loss of every MoE layer join the loss while training; in
            # eval mode the loss is the cross-entropy alone, comparable with a dense model's
            if aux and self.training:
                total = aux[0]
                for a in aux[1:]:
                    total = total + a
                loss = loss + total
                self._aux_total = total
        return logits, loss

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Extend idx (B, T) by max_new_tokens sampled tokens; returns a NumPy int64 array."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        idx = np.asarray(to_numpy(idx.data if isinstance(idx, Tensor) else idx), dtype=np.int64)
        rng = ts_random.generator()
        was_training = self.training
        self.eval()
        with no_grad():
            for _ in range(max_new_tokens):
                context = idx[:, -self.config.block_size:]         # crop to what the model can see
                logits, _ = self(context)
                last = to_numpy(logits.data[:, -1, :]).astype(np.float64) / temperature  # (B, V)
                if top_k is not None:
                    kth = np.sort(last, axis=-1)[:, -min(top_k, last.shape[-1])][:, None]
                    last = np.where(last < kth, -np.inf, last)
                probs = np.exp(last - last.max(axis=-1, keepdims=True))
                probs /= probs.sum(axis=-1, keepdims=True)
                nxt = np.array([rng.choice(len(p), p=p) for p in probs])[:, None]
                idx = np.concatenate([idx, nxt], axis=1)
        self.train(was_training)
        return idx
