"""The engine (chapters 01 and 03): arrays with gradients, and the operations that build the graph.

Files, in reading order:

    backend.py     the one device switch: NumPy arrays on the CPU, CuPy arrays on a GPU
    tensor.py      Tensor: an array, an optional .grad, and the operators that record the graph
    function.py    Function: forward and backward on raw arrays; apply() records; no_grad()
    autograd.py    the backward engine: reverse topological order, the chain rule
    ops.py         the primitives: arithmetic, matmul (and re-exported: the three below)
    ops_unary.py   exp, log, sqrt, tanh, relu, sigmoid, cast, clone
    ops_reduce.py  sum, mean, max, min, argmax, argmin
    ops_shape.py   reshape, unsqueeze/squeeze/flatten, permute, broadcast, indexing,
                   concatenate, stack, where
    scatter.py     deterministic index-add (GetItem's backward without floating-point atomics)
    functional.py  fused ops with hand-written backwards: softmax, cross-entropy, GELU, dropout
                   (and re-exported: layer norm, attention, linear)
    normalization.py  fused layer norm, safe for huge and for constant rows
    linear.py      x @ W + b as one Function (nn.Linear's), the bias added in place
    compiled.py    where the @njit twins of GELU, layer norm, attention's softmax and the
                   embedding backward apply (gelu_kernels.py, row_kernels.py,
                   scatter_kernels.py: bitwise the array code's, fewer passes)
    attention.py   fused scaled dot-product attention, and its packed multi-head causal form
    spelling.py    PyTorch's argument names beside NumPy's (dim=/axis=, keepdim=/keepdims=)
    interop.py     how a Tensor meets Python (bool, float, format) and NumPy (np.exp(t), ...)
    gradcheck.py   analytic vs numerical gradients, every element, float64
    random.py      the seeded generator (dropout, init) on either device
    _malloc.py     keeps freed temporaries in glibc's heap (a 2-6x faster step, measured)

The engine knows no modules, models or training: nothing here imports from the rest of tinysparse.
The public names are re-exported by the package itself: `import tinysparse as ts; ts.Tensor`.
"""
