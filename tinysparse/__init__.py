"""tinysparse: a from-scratch course and library for sparse-activation language models.

    import tinysparse as ts
    from tinysparse import nn, optim, functional as F
"""
from ._malloc import tune_malloc

tune_malloc()  # see _malloc.py: a 2-6x faster step on glibc, measured

from . import backend, ops  # noqa: E402
from .backend import cuda_available
from .gradcheck import GradcheckError, gradcheck
from .ops import (broadcast_to, cat, concatenate, exp, log, masked_fill, matmul, permute, relu,
                  reshape, sigmoid, sqrt, stack, tanh, where)
from .random import manual_seed
from .tensor import Function, Tensor, is_grad_enabled, no_grad
from . import functional, nn, optim  # noqa: E402  (they build on the names above)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Function", "no_grad", "is_grad_enabled", "gradcheck", "GradcheckError",
    "manual_seed", "cuda_available", "backend", "ops", "functional", "nn", "optim",
    "matmul", "exp", "log", "sqrt", "tanh", "relu", "sigmoid", "where", "masked_fill",
    "concatenate", "cat", "stack", "reshape", "permute", "broadcast_to",
]
