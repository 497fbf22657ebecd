"""Shared by the adaptive mechanisms' tests: sampling with and without the KV cache, seed for seed."""
import tinysparse as ts


def sample_both_ways(model, prompt, n_new, seed):
    """[uncached tokens, cached tokens] of model.generate from prompt, each after manual_seed(seed)."""
    runs = []
    for kv in (False, True):
        ts.manual_seed(seed)
        runs.append(model.generate(prompt, n_new, kv_cache=kv))
    return runs
