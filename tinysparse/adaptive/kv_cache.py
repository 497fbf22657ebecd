"""The KV cache: sampling one token at a time without recomputing the whole context.

Without a cache, `generate` runs the model on the full context for every new token: T tokens of
work to get one, O(T^2) per sampled sequence. But causal attention makes every earlier position's
keys and values independent of the tokens after it, so they can be kept: a new token computes its
own q, k, v, appends k and v to each layer's cache, and attends over the cached keys. (Attention
Is All You Need's decoder, Vaswani et al. 2017; every inference engine since.)

Layout: each layer owns key and value buffers (B, n_head, block_size, head_dim), indexed by the
token's ABSOLUTE position, and a mask `valid` (B, block_size) of the entries written. Positions
let the adaptive mechanisms of chapter 09 write sparsely: a Mixture-of-Depths block skips tokens
(they write no K/V there: valid stays False) and an early exit writes K/V computed from the exited
state (CALM). A query at position i attends to the valid keys at positions <= i.

The window: learned positions stop at block_size. Past it, the context is the last block_size
tokens, so every token's position (and with it every cached key) changes when the window slides
one step. Each such step runs the cropped window whole: exact, and as slow as no cache. (A cache
rebuilt from it would be full, and the next step slides the window again, so decode.py runs it
without one. Cheaper rules, such as keeping half the window, sample different tokens.)

Only for sampling: the cache holds raw arrays, not a graph. Calling it with gradients on is
refused with a message naming the fix.
"""
import math
import numbers

from ..engine.attention import Attention, PackedCausalAttention
from ..engine.backend import array_module
from ..engine.function import Context, Function, is_grad_enabled


class LayerCache:
    """Keys and values of one attention layer, by absolute position (buffers made on first write)."""

    def __init__(self, capacity):
        self.capacity = capacity          # block_size: positions 0 .. capacity-1
        self.k = self.v = self.valid = None
        # True while the writes so far filled positions 0, 1, 2, ... in order, every entry kept:
        # then every cached key is valid and none lies in a new query's future (one token at a time)
        self.dense, self.filled = True, 0

    def write(self, k, v, positions, keep=None):
        """Store k, v (B, nh, T, hd) at positions: (B, T) ints, or an int p, the run p .. p+T-1 of
        every row (slices: no index arrays to build); keep (B, T) bool marks the entries that
        count (None: all of them). Returns the keys, values and mask up to the last position."""
        xp = array_module(k)
        B, nh, T, hd = k.shape
        if self.k is None:
            self.k = xp.zeros((B, nh, self.capacity, hd), dtype=k.dtype)
            self.v = xp.zeros((B, nh, self.capacity, v.shape[-1]), dtype=v.dtype)
            self.valid = xp.zeros((B, self.capacity), dtype=bool)
        if isinstance(positions, numbers.Integral):
            positions = int(positions)
            end = positions + T
            self.dense = self.dense and keep is None and positions == self.filled
            self.filled = end
            self.k[:, :, positions:end] = k
            self.v[:, :, positions:end] = v
            self.valid[:, positions:end] = True if keep is None else keep
        else:
            self.dense = False
            rows = xp.arange(B)[:, None]                                # (B, 1)
            self.k[rows, :, positions] = k.transpose(0, 2, 1, 3)        # indexed as (B, T, nh, hd)
            self.v[rows, :, positions] = v.transpose(0, 2, 1, 3)
            self.valid[rows, positions] = True if keep is None else keep
            end = int(positions.max()) + 1
        return self.k[:, :, :end], self.v[:, :, :end], self.valid[:, :end]


class KVCache:
    """One LayerCache per layer and the number of positions the model has consumed (`length`).

    GPT.forward(idx, cache=cache) reads positions from `length` on, and advances it by T."""

    def __init__(self, n_layer, block_size):
        self.block_size = block_size
        self.layers = [LayerCache(block_size) for _ in range(n_layer)]
        self.length = 0

    def room(self):
        """Positions still free before the window must slide."""
        return self.block_size - self.length

    def start(self, T, n_layer):
        """The position of the first of T new tokens; refuses a cache of another model, or one
        without room for them (ValueError naming the fix)."""
        if len(self.layers) != n_layer:
            raise ValueError(f"KVCache has {len(self.layers)} layers, the model {n_layer}; make "
                             f"it with KVCache(config.n_layer, config.block_size)")
        if T > self.room():
            raise ValueError(f"KVCache holds {self.length} of {self.block_size} positions: {T} "
                             f"more do not fit; start a new cache from the last block_size tokens")
        return self.length


def kv_cache_obstacle(config):
    """None, or why cached sampling would not return a model's own tokens: a token's computation
    must depend neither on later tokens nor on how many tokens share its forward."""
    if config.n_expert and config.router == "expert_choice":
        return ("router='expert_choice' is not causal (which experts a token gets depends on "
                "later tokens)")
    if config.n_expert and config.capacity_factor is not None:
        return (f"capacity_factor={config.capacity_factor} drops slots by the number of tokens "
                f"in the forward (C = ceil(f*T*k/E)), which a one-token step changes")
    return None


class CachedAttention(Function):
    # Vaswani et al. 2017, eq. (1), for T new queries at positions p_t (start .. start+T-1, or
    # given) against every cached key at positions 0 .. max p_t:
    #   S = q K^T / sqrt(d);  S_ij = -inf where key j is in query i's future or was never written;
    #   P = softmax(S);  Y = P V
    # A forward without a backward: the cache is for sampling, under no_grad.
    # Its cost, for a ledger: matmul 4*B*T*L*C (q K^T and P V over the L = max position + 1 keys
    # of the slice, every head), as compute.py counts it; the prefill (start 0, keep None) runs
    # PackedCausalAttention's forward, the same 4*B*T*T*C.
    @staticmethod
    def forward(ctx, qkv, n_head, layer, start, keep):
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.reshape(B, T, 3, n_head, C // n_head).transpose(2, 0, 3, 1, 4)  # (B, nh, T, hd) each
        xp = array_module(qkv)
        run = isinstance(start, numbers.Integral)       # positions start .. start+T-1 in every row
        if run and start == 0 and keep is None:
            # a prefill: the very computation of the uncached model, so its logits are identical
            layer.write(k, v, start)
            return PackedCausalAttention.forward(Context(None), qkv, n_head)
        keys, values, valid = layer.write(k, v, start, keep)                             # (B, nh, L, hd), (B, L)
        if run and T == 1 and layer.dense:
            # one new token behind a dense cache: every key 0..start is valid and none lies in
            # its future, so the mask below would hide nothing: plain attention over the cached
            # keys (engine/attention.py, the same operations: same numbers, 6 passes fewer)
            y = Attention.forward(Context(None), q, keys, values, causal=False)        # (B, nh, 1, hd)
            return y.transpose(0, 2, 1, 3).reshape(B, T, C)                            # (B, 1, C)
        L = keys.shape[2]
        s = q @ keys.swapaxes(-1, -2)                                                  # (B, nh, T, L)
        s *= 1.0 / math.sqrt(q.shape[-1])
        # hide the keys in a query's future and the ones never written (its own excepted)
        pos = start if not run else xp.broadcast_to(start + xp.arange(T), (B, T))      # (B, T)
        key_pos = xp.arange(L)[None, None, :]                                          # (1, 1, L)
        future = key_pos > pos[:, :, None]                                             # (B, T, L)
        own = key_pos == pos[:, :, None]                 # a query always sees its own key: no empty row
        hidden = (future | (~valid[:, None, :] & ~own))[:, None]                       # (B, 1, T, L)
        s[xp.broadcast_to(hidden, s.shape)] = -xp.inf
        s -= s.max(axis=-1, keepdims=True)
        xp.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        y = s @ values                                                                 # (B, nh, T, hd)
        return y.transpose(0, 2, 1, 3).reshape(B, T, C)                                # (B, T, C)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no gradient flows through the KV cache; sample under ts.no_grad()")


def cached_attention(qkv, n_head, layer, start, keep=None):
    """Causal attention of T new tokens, qkv (B, T, 3C) -> (B, T, C), writing their keys and values
    into `layer` (a LayerCache) at positions start .. start+T-1, or at `start` itself when it is a
    (B, T) array of ascending positions (a Mixture-of-Depths block's chosen tokens); keep: (B, T)
    bool, which of them later tokens may read (None = all). Sampling only: a ValueError with
    gradients on."""
    if is_grad_enabled() and getattr(qkv, "requires_grad", False):
        raise ValueError("the KV cache is for sampling: run the model under ts.no_grad() "
                         "(GPT.generate does), or call it without cache= to train")
    last = int(start.max()) if hasattr(start, "shape") else start + qkv.shape[1] - 1
    if last >= layer.capacity:
        raise ValueError(f"KV cache overflow: position {last} does not fit block_size "
                         f"{layer.capacity}; start a new cache (the window slid)")
    return CachedAttention.apply(qkv, n_head=n_head, layer=layer, start=start, keep=keep)
