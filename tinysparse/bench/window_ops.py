"""The sampling window op by op: each operation of a block, as tinysparse computes it, against
PyTorch's own op on the same input.

window.py shows that the window's arithmetic alone (the Function bodies, no engine around them)
takes less time than PyTorch's whole forward. This table says which ops win and which lose: one
transformer block of the dense model at the window's shape (1, T, C), op by op, tinysparse's
Function body on NumPy arrays against the twin's module or torch function (torch_twins.py,
torch_decode.py) on the same values. A row's two ops compute the same thing (checked to float32
rounding before any timing; a RuntimeError otherwise), so a row's ratio compares kernels:
OpenBLAS against PyTorch's BLAS for the matmuls, NumPy's exp (one thread) against PyTorch's for
GELU and the softmax, the compiled row loops against PyTorch's layer norm. Python's cost per call
is in both columns (a NumPy call and a torch call each cost microseconds). Same values, not quite
the same work: a tinysparse body also writes what its backward would read (layer norm's
normalised rows, GELU's clipped input and exp, attention's P), under no_grad too, as it does when
sampling; PyTorch's ops under no_grad keep nothing (its attention may still form P). Each op has
one row: a block runs the layer norm and the residual add twice, so the rows' sum is not a
block's time.
Imports torch on first use only.
"""
import numpy as np

from ..engine.attention import PackedCausalAttention
from ..engine.function import Context
from ..engine.functional import GELU
from .common import seconds_per_call
from .window import layer_norm_body, linear_body


def block_ops(model, twin, T):
    """[(op, tinysparse_run, pytorch_run)] for block 0 of a dense float32 model and its twin, on a
    (1, T, C) input x. Each op reads what it reads in the block's forward: fc linear the second
    layer norm of x + out linear's output, the residual add x + out linear's output, so residual
    add + proj linear is the block's output. The block's second layer norm and second residual
    add (same shapes, same work as the first) have no row.
    Raises RuntimeError where a pair does not agree to float32 rounding (rtol 1e-4, atol 1e-5)."""
    import torch
    from torch.nn import functional as F

    block, tblock = model.h[0], twin.h[0]
    n_head, C = block.attn.n_head, model.config.n_embd
    x = np.random.default_rng(0).standard_normal((1, T, C)).astype(np.float32)   # (1, T, C)
    h1 = layer_norm_body(x, block.ln_1)
    qkv = linear_body(h1, block.attn.c_attn)                                           # (1, T, 3C)
    y = PackedCausalAttention.forward(Context(None), qkv, n_head)                  # (1, T, C)
    a = linear_body(y, block.attn.c_proj)                                              # (1, T, C)
    h2 = layer_norm_body(x + a, block.ln_2)                   # ln_2 reads the stream after attention
    u = linear_body(h2, block.mlp.c_fc)                                                # (1, T, 4C)
    g = GELU.forward(Context(None), u)
    mask = torch.ones(T, T, dtype=torch.bool).tril()        # the twin's mask for a whole window
    t = {name: torch.from_numpy(arr) for name, arr in
         dict(x=x, h1=h1, qkv=qkv, y=y, a=a, h2=h2, u=u, g=g).items()}

    def torch_attention():
        q, k, v = t["qkv"].view(1, T, 3, n_head, C // n_head).permute(2, 0, 3, 1, 4)  # (1, nh, T, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)               # (1, nh, T, hd)
        return out.transpose(1, 2).reshape(1, T, C)                                 # (1, T, C)

    ops = [("layer norm", lambda: layer_norm_body(x, block.ln_1), lambda: tblock.ln_1(t["x"])),
           ("qkv linear", lambda: linear_body(h1, block.attn.c_attn),
            lambda: tblock.attn.c_attn(t["h1"])),
           ("attention", lambda: PackedCausalAttention.forward(Context(None), qkv, n_head),
            torch_attention),
           ("out linear", lambda: linear_body(y, block.attn.c_proj),
            lambda: tblock.attn.c_proj(t["y"])),
           ("fc linear", lambda: linear_body(h2, block.mlp.c_fc), lambda: tblock.mlp.c_fc(t["h2"])),
           ("gelu", lambda: GELU.forward(Context(None), u),
            lambda: F.gelu(t["u"], approximate="tanh")),
           ("proj linear", lambda: linear_body(g, block.mlp.c_proj),
            lambda: tblock.mlp.c_proj(t["g"])),
           ("residual add", lambda: x + a, lambda: t["x"] + t["a"])]
    with torch.no_grad():
        for name, ours, theirs in ops:
            if not np.allclose(ours(), theirs().numpy(), rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"{name}: tinysparse and PyTorch do not compute the same values; "
                                   f"the table would compare different work")
    return ops


def op_times(ops, blocks=6, calls=200, settle=0.15):
    """{op: {'tinysparse': [...], 'pytorch': [...]}} seconds per call: `blocks` means over `calls`
    calls each (after a pause of `settle` seconds and 3 untimed calls), the two taking turns and
    the first of the two alternating from block to block. The default pause is window_times'
    (0.15 s): after 0.05 s the other side's BLAS workers still spun, and PyTorch's ops came out
    2-3x slower than alone."""
    import torch

    times = {name: {"tinysparse": [], "pytorch": []} for name, _, _ in ops}
    with torch.no_grad():
        for b in range(blocks):
            for name, ours, theirs in ops:
                turns = [("tinysparse", ours), ("pytorch", theirs)]
                for side, run in turns if b % 2 == 0 else turns[::-1]:     # who goes first alternates
                    times[name][side].append(seconds_per_call(run, calls, settle))
    return times
