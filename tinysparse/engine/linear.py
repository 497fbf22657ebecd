"""The affine map of a Linear layer, y = x W + b, as one fused Function (PyTorch's F.linear).

Written as two Functions, x @ W then + b, it is two graph nodes and two calls of Function.apply,
and the add makes a second output array: the matmul's result is read and a new one written.
Here the bias goes into the matmul's fresh result in place. A small gain, measured on this
repository's 2-core machine with the two versions alternating step by step in one process
(median of the per-pair time ratios): the headline training step (make bench's) took 0.985x
the pair's time over 150 pairs (interquartile range 0.95-1.01); a 64-token window forward at
batch 1 (what cached sampling runs past block_size) 0.996x over 1000 pairs, since there the
matmuls dominate (64 x 128 @ 128 x 512: about 80 us a call, of which the fusion saves 2-4).

Same bits as x @ W + b: the product is MatMul's own computation, and adding b in place rounds
each element exactly as the separate add did. The bias gradient is the engine's unbroadcast
sum of the output gradient (autograd.unbroadcast), as it was for the separate add.
"""
from .autograd import unbroadcast
from .ops import MatMul
from .tensor import Function


class Linear(Function):
    # y = x W + b,  x (..., d_in), W (d_in, d_out), b (d_out,)
    # dL/dx = g W^T,  dL/dW = sum over the leading axes of x^T g,  dL/db = sum over them of g
    integers_take_float_dtype = True
    new_grads = True   # every gradient below is a new array (the bias's is copied if it is g)

    @staticmethod
    def forward(ctx, x, weight, bias):
        y = MatMul.forward(ctx, x, weight)      # saves (x, weight); a new (..., d_out) array
        y += bias
        return y

    @staticmethod
    def backward(ctx, grad):
        dx, dw = MatMul.backward(ctx, grad)     # reads needs_input_grad[0] and [1]
        db = None
        if ctx.needs_input_grad[2]:
            db = unbroadcast(grad, grad.shape[-1:])
            if db is grad:                      # a 1-D x: the gradient is the output's own
                db = grad.copy()
        return dx, dw, db


def linear(x, weight, bias=None):
    """x @ weight + bias: x (..., d_in), weight (d_in, d_out), bias (d_out,) or None ->
    (..., d_out). One Function with a bias, the matmul alone without. Tensors or arrays of one
    floating dtype (integer x takes it). ValueError names a shape that does not fit."""
    if len(weight.shape) != 2:
        raise ValueError(f"linear needs a weight of shape (d_in, d_out), got {tuple(weight.shape)}")
    d_in, d_out = weight.shape
    if not len(x.shape) or x.shape[-1] != d_in:
        raise ValueError(f"linear: the input's last axis must be d_in={d_in} (weight "
                         f"{tuple(weight.shape)}), got an input of shape {tuple(x.shape)}")
    if bias is None:
        return MatMul.apply(x, weight)
    if tuple(bias.shape) != (d_out,):
        raise ValueError(f"linear: the bias must have shape ({d_out},) for a weight of shape "
                         f"{tuple(weight.shape)}, got {tuple(bias.shape)}")
    return Linear.apply(x, weight, bias)
