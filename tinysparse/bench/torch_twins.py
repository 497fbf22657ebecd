"""PyTorch twins of tinysparse models, for the benchmarks: the same maths, the same weights.

The dense GPT is written the way a PyTorch user would write it (fused qkv Linear,
scaled_dot_product_attention, tied head). The Mixture of Experts is the common PyTorch
"loop over experts" implementation (as in Hugging Face's Mixtral block): for each expert, find
its tokens with torch.nonzero, run the expert's FFN on them, index_add_ the gated answers back.
That is the baseline a sparse-dispatch implementation has to beat.

Everything torch is defined on first use, so importing this module never imports torch.
"""
import functools

import numpy as np

LR, WEIGHT_DECAY = 3e-4, 0.1        # the same AdamW for both frameworks


@functools.lru_cache(maxsize=None)
def torch_modules():
    """tinysparse/gpt.py in PyTorch, with tinysparse/moe/layer.py's top-k softmax MoE:
    {"GPT": ..., "MLP": ..., "LoopMoE": ...}, classes built from a GPTConfig."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class CausalSelfAttention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.n_head = c.n_head
            self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
            self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)

        def forward(self, x):
            B, T, C = x.shape
            qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    class MLP(nn.Module):
        def __init__(self, c, width=None):
            super().__init__()
            width = width or 4 * c.n_embd
            self.c_fc = nn.Linear(c.n_embd, width, bias=c.bias)
            self.c_proj = nn.Linear(width, c.n_embd, bias=c.bias)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Holder(nn.Module):
        """A bare parameter holder, so the names match tinysparse's (router.weight, experts.w1)."""

        def __init__(self, **shapes):
            super().__init__()
            for name, shape in shapes.items():
                self.register_parameter(name, nn.Parameter(torch.zeros(shape)))

    class LoopMoE(nn.Module):
        def __init__(self, c):
            super().__init__()
            C, E, d = c.n_embd, c.n_expert, c.d_expert or 4 * c.n_embd // (c.top_k + c.n_shared)
            self.E, self.k, self.aux_coef, self.z_coef = E, c.top_k, c.aux_coef, c.z_coef
            self.router = Holder(weight=(C, E))
            shapes = dict(w1=(E, C, d), w2=(E, d, C))
            if c.bias:
                shapes.update(b1=(E, d), b2=(E, C))
            self.experts = Holder(**shapes)
            self.shared = MLP(c, c.n_shared * d) if c.n_shared else None
            self.aux_loss = None

        def forward(self, x):
            B, T, C = x.shape
            x2 = x.reshape(B * T, C)                                      # (B*T, C)
            logits = x2 @ self.router.weight                              # (B*T, E)
            probs = torch.softmax(logits, dim=-1)
            top, ids = torch.topk(probs, self.k, dim=-1)                  # (B*T, k)
            gates = top / top.sum(dim=-1, keepdim=True) if self.k > 1 else top
            ex = self.experts
            out = torch.zeros_like(x2)
            for e in range(self.E):
                t, j = torch.nonzero(ids == e, as_tuple=True)             # expert e's tokens
                if t.numel() == 0:
                    continue
                h = x2[t] @ ex.w1[e] + (ex.b1[e] if hasattr(ex, "b1") else 0)
                y = F.gelu(h, approximate="tanh") @ ex.w2[e] + (ex.b2[e] if hasattr(ex, "b2") else 0)
                out.index_add_(0, t, gates[t, j, None] * y)
            if self.shared is not None:
                out = out + self.shared(x2)
            f = torch.bincount(ids.reshape(-1), minlength=self.E).to(probs.dtype) / ids.numel()
            self.aux_loss = (self.aux_coef * self.E * (f * probs.mean(0)).sum()
                             + self.z_coef * (torch.logsumexp(logits, -1) ** 2).mean())
            return out.reshape(B, T, C)

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(c.n_embd, bias=c.bias), CausalSelfAttention(c)
            self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
            self.mlp = LoopMoE(c) if c.n_expert else MLP(c)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
            self.h = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
            self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)

        def forward(self, idx, targets=None):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in self.h:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)          # tied LM head
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
                for block in self.h:                                  # the MoE auxiliary losses
                    if isinstance(block.mlp, LoopMoE):
                        loss = loss + block.mlp.aux_loss
            return logits, loss

    return {"GPT": TorchGPT, "MLP": MLP, "LoopMoE": LoopMoE}


def check_twinnable(config):
    """The twin covers tinysparse's defaults: ValueError for a setting it does not implement."""
    if config.dropout:
        raise ValueError("the torch twin has no dropout: build the tinysparse model with dropout=0")
    if config.n_expert and (config.router, config.score, config.capacity_factor, config.balance) != (
            "topk", "softmax", None, "aux"):
        raise ValueError("the torch twin's MoE is top-k softmax routing, dropless, with the aux "
                         "loss: router='topk', score='softmax', capacity_factor=None, balance='aux'")


def build_torch_twin(ts_model):
    """A torch.nn.Module computing exactly what `ts_model` (a tinysparse GPT) computes, same weights.

    The parameter names match one for one (h.0.attn.c_attn.weight, h.0.mlp.experts.w1, ...).
    """
    check_twinnable(ts_model.config)
    return copy_weights(ts_model, torch_modules()["GPT"](ts_model.config))


def copy_weights(ts_module, twin):
    """Copy a tinysparse module's parameters into its torch twin (names must match); returns twin.

    tinysparse stores a Linear weight (d_in, d_out), the layout x @ W reads; torch's Linear stores
    (d_out, d_in): those are transposed. Expert and router weights keep tinysparse's layout.
    Values are cast to the twin's dtype (float32 unless it was made .double()).
    """
    import torch
    theirs = dict(twin.named_parameters())
    ours = ts_module.state_dict()
    if set(ours) != set(theirs):
        raise KeyError(f"models differ: {sorted(set(ours) ^ set(theirs))}")
    with torch.no_grad():
        for name, array in ours.items():
            owner = twin.get_submodule(name.rsplit(".", 1)[0]) if "." in name else twin
            if isinstance(owner, torch.nn.Linear) and name.endswith(".weight"):
                array = array.T
            theirs[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))  # to the twin's dtype
    return twin


def torch_adamw(twin):
    """torch's AdamW set up as tinysparse's: no weight decay on 1-D parameters (gains, biases)."""
    import torch
    params = list(twin.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2]},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=1e-8)
