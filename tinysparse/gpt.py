"""A GPT in the shape of nanoGPT: token + position embeddings, pre-norm blocks, a tied LM head.

Radford et al. 2019 (GPT-2) with the pre-norm residual stream:
    x = x + attn(ln_1(x));  x = x + ffn(ln_2(x))
The feed-forward slot of each Block is built by `make_ffn(config)`, so a Mixture-of-Experts layer
can take the dense MLP's place without touching the rest of the model.
"""
import math

import numpy as np

from ._checks import check_int
from .engine import functional as F
from . import nn
from .engine import random as ts_random
from .engine.backend import array_module, to_device, to_numpy
from .moe import MoE
from .adaptive.compute import compute_per_token
from .adaptive.decode import check_generate_args, generate_tokens
from .adaptive.early_exit import exit_loss
from .adaptive.kv_cache import cached_attention, kv_cache_obstacle
from .adaptive.mod import mod_blocks, wrap_block
from .adaptive.settings import make_router
from .gpt_config import GPTConfig  # noqa: F401  (importers take it from here, as in nanoGPT)
from .gpt_inputs import checked_ids, checked_targets
from .engine.tensor import Tensor, no_grad


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def extra_repr(self):
        return f"n_head={self.n_head}"

    def forward(self, x, cache=None, start=0):
        qkv = self.c_attn(x)                                      # (B, T, 3C)
        # split into heads, softmax(q k^T / sqrt(hd)) v per head, heads side by side again:
        # one fused Function (functional.PackedCausalAttention; chapter 03 builds it step by step)
        if cache is None:
            y = F.causal_self_attention(qkv, self.n_head)         # (B, T, C)
        else:   # sampling: keys and values of positions < start come from the cache (adaptive/kv_cache.py)
            y = cached_attention(qkv, self.n_head, cache, start)  # (B, T, C)
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
    """The feed-forward slot of a Block: a dense MLP, or a Mixture of Experts when n_expert > 0
    (its router adaptive when the config asks for null experts: adaptive/settings.py)."""
    if config.n_expert == 0:
        return MLP(config)
    return MoE(config.n_embd, config.n_expert, config.top_k, config.d_expert or None,
               n_shared=config.n_shared, router=make_router(config) or config.router, score=config.score,
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

    def forward(self, x, cache=None, start=0):
        x = x + self.attn(self.ln_1(x), cache, start)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)   # token embeddings, tied to the head
        self.wpe = nn.Embedding(config.block_size, config.n_embd)   # learned positions
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([wrap_block(Block(config), config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self._aux_total = None    # the MoE auxiliary loss of the last forward with targets (a Tensor)
        self._last_positions = None  # (B, T, keys per query) of the last forward: compute_per_token
        self._exit_plan, self._exit_heads = None, 0   # early exits' record of it (adaptive/early_exit.py)
        self._head_rows = None       # the last positions of the last forward that the head ran on
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
            # drawn on the host (the same numbers on every device), stored on p's device
            p.data = to_device(rng.normal(0.0, std, size=p.shape).astype(p.dtype), p.device)
        for name, p in self.named_parameters():
            if is_bias(name):
                p.data = array_module(p.data).zeros(p.shape, dtype=p.dtype)

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
        experts_per_token   routed experts a token ran, mean over tokens and layers (top_k
                            without null experts or drops; 0..top_k with them)
        """
        stats = [m.stats for m in self.moe_layers()]
        if not stats or not stats[0]:
            return None
        loads = [s["max_over_mean_load"] for s in stats]
        routed = sum(int(s["tokens_per_expert"].sum()) for s in stats)
        dropped = sum(s["dropped_fraction"] * int(s["tokens_per_expert"].sum()) for s in stats)
        return {"max_over_mean_load": float(np.mean(loads)), "worst_layer_load": float(max(loads)),
                "dropped_fraction": dropped / max(routed, 1),
                "experts_per_token": float(np.mean([s["experts_per_token"] for s in stats]))}

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
        T = c.block_size if T is None else check_int("flops_per_token T", T, low=1)
        return 6 * self.num_active_parameters() + 12 * c.n_layer * T * c.n_embd

    def compute_per_token(self):
        """(B, T) float64: the matmul FLOPs each token of the last forward executed (attention,
        the experts it ran, the head; adaptive/compute.py gives the formulas). Its sum is the
        ledger's flops_matmul for that forward."""
        return compute_per_token(self)

    def forward(self, idx, targets=None, ignore_index=None, cache=None, logits_to_keep=0):
        """Logits (B, T, vocab_size) of token ids idx (B, T), and the loss when targets are given.

        idx       integer ids in [0, vocab_size), 1 <= T <= block_size (a NumPy or CuPy array, a
                  list, or a Tensor); anything else is a ValueError (TypeError for float ids)
        targets   None, or integer ids of idx's shape, each in [0, vocab_size): the loss is the
                  mean cross-entropy (plus the MoE auxiliary losses in training mode)
        ignore_index
                  None (default): every target must be a real token, so a -1 is an error that
                  names it, never NumPy's silent reading of -1 as the last token. An integer
                  outside [0, vocab_size), e.g. -1 (nanoGPT's padding) or -100 (PyTorch's
                  default): targets equal to it are left out of the loss, whose mean is then
                  over the other positions (F.cross_entropy's rule).
        cache     None, or a KVCache (adaptive/kv_cache.py; sampling only, under no_grad): idx
                  holds the tokens at positions cache.length .. cache.length+T-1, earlier ones are
                  read from the cache, and cache.length advances by T
        logits_to_keep
                  0 (default): logits at every position. n >= 1: at the last min(n, T) positions
                  only, (B, min(n, T), vocab_size): the head skips the others (Hugging Face's
                  logits_to_keep; nanoGPT's forward slices before its lm_head at inference),
                  and so does the final layer norm, which works position by position (the
                  same numbers). Sampling reads only the last row, so generate passes 1.
                  Refused with targets, whose loss needs every position.
        Returns (logits, loss), loss None without targets.
        """
        idx = checked_ids(self.config, "idx", idx)
        check_int("GPT logits_to_keep", logits_to_keep, low=0, hint="0 keeps every position")
        if logits_to_keep and targets is not None:
            raise ValueError(f"GPT logits_to_keep={logits_to_keep} with targets: the loss needs the "
                             f"logits at every position; pass logits_to_keep=0 to train")
        B, T = idx.shape
        start = 0 if cache is None else cache.start(T, self.config.n_layer)
        tok = self.wte(idx)                                       # (B, T, C)
        if start + T > self.config.block_size:            # a slice would silently come up short
            raise ValueError(f"positions {start}..{start + T - 1} are outside the model's "
                             f"block_size {self.config.block_size}; start a new cache from the "
                             f"last block_size tokens")
        pos = self.wpe.weight[start:start + T]                    # (T, C) rows of the positions, broadcast over B
        x = self.drop(tok + pos)
        hiddens = []                    # every block's output, for the early-exit loss
        for i, block in enumerate(self.h):
            x = block(x) if cache is None else block(x, cache.layers[i], start)
            hiddens.append(x)
        if cache is not None:
            cache.length = start + T
        self._last_positions = (B, T, start + T)    # what compute_per_token needs (adaptive/compute.py)
        self._exit_plan, self._exit_heads = None, 0
        self._head_rows = min(logits_to_keep, T) if logits_to_keep else T   # positions the head ran on
        if self._head_rows < T:
            x = x[:, T - self._head_rows:]                        # (B, n, C): the last n positions
        x = self.ln_f(x)
        logits = x @ self.wte.weight.T                            # (B, n, vocab_size), n = T by default
        loss = None
        if targets is not None:
            targets = checked_targets(self.config, targets, idx.shape, ignore_index)
            if self.training and self.config.exit_scale > 0:   # LayerSkip: every layer's exit trains
                loss = exit_loss(self, hiddens, logits, targets, ignore_index)
            else:
                loss = F.cross_entropy(logits, targets, ignore_index=ignore_index)  # it uploads them
            aux = [m.aux_loss for m in self.moe_layers() + mod_blocks(self) if m.aux_loss is not None]
            # load balance + router z-loss of every MoE layer join the loss while training; in
            # eval mode the loss is the cross-entropy alone, comparable with a dense model's
            if aux and self.training:
                total = aux[0]
                for a in aux[1:]:
                    total = total + a
                loss = loss + total
                self._aux_total = total
        return logits, loss

    def kv_cache_obstacle(self):
        """None, or why sampling with a KV cache would not return this model's own tokens."""
        return kv_cache_obstacle(self.config)

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, kv_cache=None):
        """Extend idx (B, T) by max_new_tokens sampled tokens; returns a NumPy int64 array (B, T +
        max_new_tokens). The context is cropped to the last block_size tokens each step.

        idx             token ids (B, T), T >= 1 (a prompt of at least one token), in [0, vocab_size);
                        a prompt longer than block_size is fine: the model sees its last tokens
        max_new_tokens  an integer >= 0
        temperature     a positive finite number: logits are divided by it (1: the model's own
                        distribution; lower: more conservative)
        top_k           None (every token), or an integer >= 1: sample among the k likeliest; a k
                        above vocab_size keeps every token (as nanoGPT's min(top_k, V))
        kv_cache        None (a cache unless kv_cache_obstacle() names a reason not to), True, or
                        False (recompute the whole context every step). The tokens are the same
                        either way, seed for seed; past block_size the window slides every step
                        and runs whole, without a cache (adaptive/decode.py, kv_cache.py). True
                        is refused for a model with an obstacle (expert-choice routing, a
                        capacity factor).
        Each bad argument is a ValueError (TypeError for a wrong type) naming it and its range.
        """
        check_generate_args(max_new_tokens, temperature, top_k)
        if kv_cache not in (None, True, False):
            raise ValueError(f"generate kv_cache={kv_cache!r} must be None (auto), True or False")
        obstacle = self.kv_cache_obstacle()
        if kv_cache and obstacle:
            raise ValueError(f"generate kv_cache=True: {obstacle}; use kv_cache=False (recompute "
                             f"the whole context every step)")
        idx = np.asarray(to_numpy(checked_ids(self.config, "prompt", idx)), dtype=np.int64)
        use_cache = obstacle is None if kv_cache is None else kv_cache
        was_training = self.training
        self.eval()
        with no_grad():
            idx = generate_tokens(self, idx, max_new_tokens, temperature, top_k, use_cache)
        self.train(was_training)
        return idx

