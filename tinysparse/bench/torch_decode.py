"""Greedy sampling with a KV cache for the PyTorch twin (torch_twins.py), the way a PyTorch user
writes it: each layer keeps its keys and values, a step appends the new token's k and v
(torch.cat, as Hugging Face's DynamicCache does) and attends over them, and only the last
position goes through the LM head.

It follows tinysparse's sampling loop (adaptive/decode.py) step for step, so the two return the
same tokens for the same weights: the first step runs the prompt's last block_size tokens (the
prefill), every later step feeds only the token just chosen, and when the cache holds
block_size positions the window slides and the cache is rebuilt from the last block_size tokens
(adaptive/kv_cache.py says why). tinysparse runs such a window without a cache, since a full one
is never read; the twin's fresh cache holds references to k and v, not copies, so the two do the
same work. The choice is the argmax of the last logits: tinysparse's
generate with top_k=1 keeps only the likeliest token, so its draw is that argmax too.

Everything torch is imported on first use, so importing this module never imports torch.
"""
import numpy as np


class TorchKVCache:
    """Per layer, keys and values (B, n_head, T, head_dim) of the positions consumed so far."""

    def __init__(self, n_layer):
        self.k, self.v = [None] * n_layer, [None] * n_layer
        self.length = 0

    def append(self, layer, k, v):
        """Add the new positions' k, v (B, nh, T, hd); returns all of the layer's keys and values."""
        import torch
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


def _attention(attn, x, layer, cache, start):
    """The twin's CausalSelfAttention on x (B, T, C) at positions start.., through the cache."""
    import torch
    from torch.nn import functional as F
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).view(B, T, 3, attn.n_head, C // attn.n_head).permute(2, 0, 3, 1, 4)
    k, v = cache.append(layer, k, v)                                 # (B, nh, start + T, hd)
    # query i (absolute position start + i) sees keys 0 .. start + i
    mask = torch.ones(T, start + T, dtype=torch.bool).tril(diagonal=start)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)      # (B, nh, T, hd)
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))


def forward_cached(twin, idx, cache):
    """Logits (B, V) of the last of idx's (B, T) tokens, which follow the cache's positions;
    advances the cache by T. Raises ValueError when the tokens do not fit in block_size."""
    import torch
    from torch.nn import functional as F
    B, T = idx.shape
    start = cache.length
    if start + T > twin.wpe.num_embeddings:
        raise ValueError(f"TorchKVCache holds {start} positions: {T} more pass block_size "
                         f"{twin.wpe.num_embeddings}; start a new cache from the last tokens")
    x = twin.wte(idx) + twin.wpe(torch.arange(start, start + T))     # (B, T, C)
    for layer, block in enumerate(twin.h):
        x = x + _attention(block.attn, block.ln_1(x), layer, cache, start)
        x = x + block.mlp(block.ln_2(x))
    cache.length = start + T
    return F.linear(twin.ln_f(x[:, -1]), twin.wte.weight)           # tied LM head, (B, V)


def torch_greedy_generate(twin, idx, max_new_tokens):
    """idx (B, T) int64 NumPy -> (B, T + max_new_tokens) NumPy: greedy decoding with the cache."""
    import torch
    block_size = twin.wpe.num_embeddings
    tokens = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    cache = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if cache is None or cache.length == block_size:          # first step, or the window slid
                cache = TorchKVCache(len(twin.h))
                logits = forward_cached(twin, tokens[:, -block_size:], cache)    # prefill
            else:
                logits = forward_cached(twin, tokens[:, -1:], cache)  # only the newest token
            tokens = torch.cat([tokens, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return tokens.numpy()
