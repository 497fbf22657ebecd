"""The affine map of a Linear layer, y = x W + b, as one fused Function (F.linear; unlike
PyTorch's, W is stored (d_in, d_out), as nn.Linear stores it, and no transpose is taken).

Written as two Functions, x @ W then + b, it is two graph nodes and two calls of Function.apply,
and the add makes a second output array: the matmul's result is read and a new one written.
Here the bias goes into the matmul's fresh result in place. The gain is small, within the
spread at the level of a training step: measured on this repository's 2-core machine with the
two versions alternating step by step in one process (median of the per-pair time ratios),
the headline training step (make bench's) took 0.985x the pair's time over 150 pairs
(quartiles 0.95-1.01), and a 64-token window forward at batch 1 (what cached sampling runs
past block_size) 0.996x over 1000 pairs (quartiles 0.97-1.02): there the matmuls dominate.
One nn.Linear(128, 512) on a (1, 64, 128) float32 input, 3000 calls in a loop under no_grad,
took 82-84 us a call as the pair and 80 us fused.

Same bits as x @ W + b in float32 and float64: the product is MatMul's own computation, and
adding b in place rounds each element exactly as the separate add did. The bias gradient is
the engine's unbroadcast sum of the output gradient (autograd.unbroadcast), as it was for the
separate add. float16 runs as the pair (linear(), which nn.Linear calls, routes it there):
Function.apply computes float16 in float32, and a fused call would round once where the pair
rounds twice.
"""
from .autograd import unbroadcast
from .ops import Add, MatMul
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
    """x @ weight + bias: x (..., d_in), weight (d_in, d_out) (PyTorch's is (d_out, d_in)),
    bias (d_out,) or None -> (..., d_out). One Function with a bias in float32 and float64, the
    matmul alone without one, the MatMul + Add pair in float16. Tensors or arrays of one
    floating dtype (integer x takes it). ValueError names a shape that does not fit."""
    if len(weight.shape) != 2:
        raise ValueError(f"linear needs a weight of shape (d_in, d_out), got {tuple(weight.shape)}")
    d_in, d_out = weight.shape
    if not len(x.shape) or x.shape[-1] != d_in:
        raise ValueError(f"linear: the input's last axis must be d_in={d_in} (weight "
                         f"{tuple(weight.shape)}), got an input of shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (d_out,):
        raise ValueError(f"linear: the bias must have shape ({d_out},) for a weight of shape "
                         f"{tuple(weight.shape)}, got {tuple(bias.shape)}")
    if bias is None or weight.dtype.itemsize < 4:
        y = MatMul.apply(x, weight)              # float16: the pair's two roundings
        return y if bias is None else Add.apply(y, bias)
    return Linear.apply(x, weight, bias)
