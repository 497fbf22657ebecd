"""tinysparse: a from-scratch course and library for sparse-activation language models.

    import tinysparse as ts
    from tinysparse import nn, optim, functional as F
"""
from .engine._malloc import tune_malloc

tune_malloc()  # see engine/_malloc.py: a 2-6x faster step on glibc, measured

from .engine import backend, functional, ops  # noqa: E402
from .engine.backend import cuda_available  # noqa: E402
from .engine.gradcheck import GradcheckError, gradcheck  # noqa: E402
from .engine.ops import (broadcast_to, cat, concatenate, exp, log, masked_fill, matmul,  # noqa: E402
                         permute, relu, reshape, sigmoid, sqrt, stack, tanh, where)
from .engine.random import manual_seed  # noqa: E402
from .engine.tensor import Function, Tensor, is_grad_enabled, no_grad  # noqa: E402
from . import nn, optim  # noqa: E402  (they build on the engine)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Function", "no_grad", "is_grad_enabled", "gradcheck", "GradcheckError",
    "manual_seed", "cuda_available", "backend", "ops", "functional", "nn", "optim",
    "matmul", "exp", "log", "sqrt", "tanh", "relu", "sigmoid", "where", "masked_fill",
    "concatenate", "cat", "stack", "reshape", "permute", "broadcast_to",
]
