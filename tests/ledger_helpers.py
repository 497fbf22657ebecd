"""Shared by the ledger's tests: a small dense GPT and a batch, every size odd and distinct (a
formula that swaps or drops a dimension gives another number)."""
import tinysparse as ts
from tinysparse.gpt import GPT, GPTConfig

B, T, C, L, H, V = 3, 7, 24, 2, 3, 50


def dense_gpt():
    ts.manual_seed(0)
    return GPT(GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V))


def batch(rng, n_batch=B, n_tokens=T, vocab=V):
    return rng.integers(0, vocab, (n_batch, n_tokens)), rng.integers(0, vocab, (n_batch, n_tokens))
