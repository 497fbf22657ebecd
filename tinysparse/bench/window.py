"""Where cached sampling's time goes past block_size: the window every such step re-runs.

Once the context holds block_size tokens, each sampling step slides the window and runs all of
it again, in tinysparse and in its PyTorch twin alike (the positions shift, so no cached key
stays valid: adaptive/kv_cache.py; tinysparse runs it without a cache, the twin with a fresh one
that keeps references). Sampling 4 x block_size tokens is mostly these forwards.
This file times three versions of one window forward, taking turns in blocks:

    tinysparse    GPT.forward(window, logits_to_keep=1), as generate runs it past block_size
                  (without a KV cache: adaptive/decode.py says why)
    bodies only   the same Functions' forward bodies called straight on NumPy arrays, in the same
                  order: no Tensor, no Function.apply, no Module call, no argument check
                  (window_logits_without_the_engine)
    pytorch       the twin's forward_cached (torch_decode.py), the head on the last position

The first two return the same bits (checked before timing), so their difference is what
tinysparse spends around the arithmetic at this shape: the engine's layers (a Tensor, a
Function.apply and a Module call per op) and the argument checks. The second against the third
compares the arithmetic itself (the kernels, BLAS, NumPy's exp) with PyTorch's whole forward,
PyTorch's own dispatch included: a floor for what a leaner engine could reach, not PyTorch's
kernels alone.
Imports torch on first use only.
"""
import numpy as np

from ..engine.attention import PackedCausalAttention
from ..engine.function import Context
from ..engine.functional import GELU
from ..engine.linear import Linear
from ..engine.normalization import LayerNorm
from ..engine.ops import MatMul
from ..engine.tensor import no_grad
from .common import seconds_per_call


def layer_norm_body(x, module):
    """nn.LayerNorm module's output for array x (..., C), by LayerNorm's forward body alone."""
    return LayerNorm.forward(Context(None), x, module.weight.data, module.bias.data, module.eps)


def linear_body(x, module):
    """nn.Linear module's output (..., d_out) for array x (..., d_in), by Linear's forward body
    alone (a module with a bias)."""
    return Linear.forward(Context(None), x, module.weight.data, module.bias.data)


def window_logits_without_the_engine(model, idx):
    """Logits (B, 1, vocab_size) of the last position of idx (B, T), T <= block_size, computed as
    GPT.forward computes them in eval mode (dropout off), by the Functions' forward bodies alone.
    For a dense GPT with biases (no MoE, no Mixture-of-Depths) in float32 or float64, in eval
    mode: a ValueError otherwise (float16: Function.apply computes it in float32, the bodies
    alone would not, so the bits would differ)."""
    c = model.config
    if c.n_expert or c.mod_capacity or not c.bias:
        raise ValueError("window_logits_without_the_engine follows the dense GPT with biases only "
                         f"(n_expert={c.n_expert}, mod_capacity={c.mod_capacity}, bias={c.bias})")
    if model.training:
        raise ValueError("window_logits_without_the_engine computes the eval-mode forward (no "
                         "dropout); call model.eval() first")
    dtype = model.wte.weight.data.dtype
    if dtype.itemsize < 4:
        raise ValueError(f"window_logits_without_the_engine follows float32 and float64 only, got "
                         f"{dtype} (Function.apply computes it in float32); "
                         f"use model.astype(np.float32)")
    B, T = idx.shape
    x = model.wte.weight.data[idx] + model.wpe.weight.data[:T]            # (B, T, C)
    for block in model.h:
        qkv = linear_body(layer_norm_body(x, block.ln_1), block.attn.c_attn)      # (B, T, 3C)
        y = PackedCausalAttention.forward(Context(None), qkv, block.attn.n_head)   # (B, T, C)
        x = x + linear_body(y, block.attn.c_proj)
        h = GELU.forward(Context(None), linear_body(layer_norm_body(x, block.ln_2), block.mlp.c_fc))
        x = x + linear_body(h, block.mlp.c_proj)
    x = layer_norm_body(x[:, T - 1:], model.ln_f)                             # (B, 1, C)
    return MatMul.forward(Context(None), x, model.wte.weight.data.T)      # (B, 1, vocab_size)


def window_times(model, twin, idx, blocks=12, calls=40, settle=0.15):
    """Seconds per window forward {'tinysparse', 'bodies only', 'pytorch'}: `blocks` lists of one
    block's mean over `calls` forwards each, the three taking turns block by block, each block
    after an untimed pause of `settle` seconds and 3 untimed forwards (common.seconds_per_call).
    Raises RuntimeError if the first two differ in any bit (then the comparison would mean
    nothing)."""
    import torch

    from .torch_decode import TorchKVCache, forward_cached
    torch_idx = torch.as_tensor(idx)
    runs = {"tinysparse": lambda: model(idx, logits_to_keep=1)[0].data,
            "bodies only": lambda: window_logits_without_the_engine(model, idx),
            "pytorch": lambda: forward_cached(twin, torch_idx, TorchKVCache(len(twin.h)))}
    times = {name: [] for name in runs}
    with no_grad(), torch.no_grad():
        if not np.array_equal(runs["tinysparse"](), runs["bodies only"]()):
            raise RuntimeError("the bodies alone did not give the forward's logits (not the same "
                               "bits): the window comparison would mean nothing")
        for _ in range(blocks):
            for name, run in runs.items():
                times[name].append(seconds_per_call(run, calls, settle))
    return times
