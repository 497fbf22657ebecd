"""Row-wise compiled loops (Numba @njit): layer norm's forward and input gradient, and the
softmax of attention's scores, each bitwise its array code.

normalization.LayerNorm written with NumPy arrays is about nine whole-array passes forward and
ten backward, each a temporary; on a 1 x 128 row (one sampled token) it is fourteen NumPy calls
of about 3 us each. Attention's softmax is six passes over the (B, nh, T, T) scores besides the
exp, and its backward five. Here each row is read into registers and cache once per stage.

Same bits as the array code. Every element goes through the same float operations in the same
order, each rounded to the array's dtype (constants come in rounded to it; Numba leaves
fastmath off, so there is no fused multiply-add and no reassociation); the exp stays NumPy's,
between two loops. The subtle part is the row sums: NumPy adds a contiguous row by pairwise
summation (numpy/_core/src/umath/loops_utils.h.src: blocks of at most 128 summed with 8
accumulators, larger rows split in two at a multiple of 8), and `row_sum` is that algorithm, so
a mean here is NumPy's mean to the bit. The sums over rows (layer norm's weight and bias
gradients) stay NumPy's. tests/test_layer_norm_kernels.py and tests/test_softmax_kernels.py
check the bits on awkward row lengths, and fail loudly if a NumPy release changes its sums.

Imports nothing of the project (the kernels' rule, docs/ARCHITECTURE.md).
"""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def block_sum(a, lo, n, zero):
    """a[lo:lo+n].sum() for 0 <= lo and n <= 128, as NumPy adds a block: under 8 one by one
    from zero, else 8 accumulators over the multiples of 8, combined as a tree, then the rest
    one by one.

    The block is sliced first and indexed from 0 by a loop counter that cannot be negative. With
    a[lo + i], Numba must allow for a negative index (Python's wraparound) on every read, and
    the loop ran about twice as slowly: 2048 sums of 128 float32 took 181 us, sliced 99 us (the
    same adds in the same order: the same bits). That the wraparound checks are what held LLVM
    back is our reading, not shown in the generated code."""
    s = a[lo:lo + n]
    if n < 8:
        total = zero
        for i in range(n):
            total += s[i]
        return total
    r0, r1, r2, r3 = s[0], s[1], s[2], s[3]
    r4, r5, r6, r7 = s[4], s[5], s[6], s[7]
    whole = n - n % 8
    for block in range(1, whole // 8):
        i = 8 * block
        r0 += s[i]
        r1 += s[i + 1]
        r2 += s[i + 2]
        r3 += s[i + 3]
        r4 += s[i + 4]
        r5 += s[i + 5]
        r6 += s[i + 6]
        r7 += s[i + 7]
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(whole, n):
        total += s[i]
    return total


@njit(cache=True, error_model="numpy")
def row_sum(a, lo, n, zero):
    """a[lo:lo+n].sum() as NumPy's pairwise summation adds it (zero: 0 in a's dtype).

    NumPy recurses: sum(n) = sum(first h) + sum(the rest), h = n // 2 rounded down to a multiple
    of 8, down to blocks of at most 128. The same tree is walked here with explicit stacks, since
    Numba cannot cache a recursive function reliably (a cached caller crashed on loading)."""
    if n <= 128:
        return block_sum(a, lo, n, zero)
    depth = 128                                   # each level halves n: ample for any length
    todo_lo = np.empty(depth, np.int64)
    todo_n = np.empty(depth, np.int64)            # n >= 0: a range to sum; -1: add the top two
    values = np.empty(depth, a.dtype)
    todo_lo[0], todo_n[0] = lo, n
    pending, done = 1, 0
    while pending:
        pending -= 1
        start, count = todo_lo[pending], todo_n[pending]
        if count < 0:                             # both halves are summed: left + right
            done -= 1
            values[done - 1] = values[done - 1] + values[done]
        elif count <= 128:
            values[done] = block_sum(a, start, count, zero)
            done += 1
        else:
            half = count // 2
            half -= half % 8
            todo_lo[pending], todo_n[pending] = 0, -1                  # last: combine
            todo_lo[pending + 1], todo_n[pending + 1] = start + half, count - half
            todo_lo[pending + 2], todo_n[pending + 2] = start, half    # first: the left half
            pending += 3
    return values[0]


@njit(cache=True, error_model="numpy")
def layer_norm_forward(x, weight, bias, use_weight, use_bias, eps, zero, one, count, out, xhat,
                       rstd, var):
    """Rows of x (R, C): xhat = (d - mean d) / sqrt(var + eps) with d = x - x[:, :1] (the
    shifted data of normalization._normalize), rstd = 1 / std, out = xhat * weight + bias.
    eps, zero, one and count (C) come in x's dtype. Returns False as soon as a variance is not
    finite (the caller then runs the scaled path)."""
    R, C = x.shape
    square = np.empty(C, x.dtype)
    for r in range(R):
        row, centered = x[r], xhat[r]
        first = row[0]
        for j in range(C):
            centered[j] = row[j] - first
        mean = (zero + row_sum(centered, 0, C, zero)) / count
        for j in range(C):
            c = centered[j] - mean
            centered[j] = c
            square[j] = c * c
        v = (zero + row_sum(square, 0, C, zero)) / count
        if not np.isfinite(v):
            return False
        std = np.sqrt(v + eps)
        var[r] = v
        rstd[r] = one / std
        for j in range(C):
            h = centered[j] / std
            centered[j] = h
            if use_weight:
                h = h * weight[j]
            if use_bias:
                h = h + bias[j]
            out[r, j] = h
    return True


@njit(cache=True, error_model="numpy")
def layer_norm_backward(grad, xhat, rstd, weight, use_weight, zero, count, dx, dw, db, sum_rows):
    """Per row (R, C), in LayerNorm.backward's order of operations:
        dx = rstd * ((gh - sum(gh) / C) - xhat * sum(gh * xhat) / C),  gh = grad * weight;
    and, when sum_rows, dw += grad * xhat and db += grad over the rows, row after row from 0
    (dw, db zeroed by the caller): NumPy's order for a sum over the leading axes of a
    C-contiguous array with C > 1 (with C = 1 NumPy sums that column pairwise; the caller keeps
    NumPy's sums then). zero and count (C) come in grad's dtype."""
    R, C = grad.shape
    gh = np.empty(C, grad.dtype)
    product = np.empty(C, grad.dtype)
    for r in range(R):
        for j in range(C):
            g = grad[r, j]
            if sum_rows:
                db[j] += g
                dw[j] += g * xhat[r, j]
            if use_weight:
                g = g * weight[j]
            gh[j] = g
            product[j] = g * xhat[r, j]
        mean_gh = (zero + row_sum(gh, 0, C, zero)) / count
        dot = zero + row_sum(product, 0, C, zero)
        scale = rstd[r]
        for j in range(C):
            projection = xhat[r, j] * dot
            projection = projection / count
            dx[r, j] = scale * ((gh[j] - mean_gh) - projection)


@njit(cache=True, error_model="numpy")
def softmax_shift(scores, ceiling, causal, scale):
    """Rows of scores (R, T), in place: s = s * scale, then min(s, ceiling[r % T]) when causal
    (-inf above the diagonal, +inf elsewhere), then s - max(row). NaN passes every step as it
    does NumPy's (a NaN row stays NaN); the sign of a zero maximum cannot matter, since the exp
    that follows maps +0 and -0 alike to 1."""
    R, T = scores.shape
    for r in range(R):
        row = scores[r]
        top = row[0]                              # replaced by the first scaled score at j = 0
        for j in range(T):
            v = row[j] * scale
            if causal and v > ceiling[r % T, j]:
                v = ceiling[r % T, j]
            row[j] = v
            if j == 0 or v > top or v != v:       # np.max: a NaN anywhere makes the maximum NaN
                top = v
        for j in range(T):
            row[j] = row[j] - top                 # (and a NaN maximum the whole row NaN)


@njit(cache=True, error_model="numpy")
def softmax_normalize(weights, zero):
    """Rows of weights (R, T), in place: w / sum(w), the sum added in NumPy's order."""
    R, T = weights.shape
    for r in range(R):
        row = weights[r]
        total = zero + row_sum(row, 0, T, zero)
        for j in range(T):
            row[j] = row[j] / total


@njit(cache=True, error_model="numpy")
def softmax_backward(ds, p, scale, zero):
    """Rows (R, T), in place on ds (holding dP = G V^T): dS = ((dP - sum(dP * P)) * P) * scale,
    Attention.backward's order of operations."""
    R, T = ds.shape
    product = np.empty(T, ds.dtype)
    for r in range(R):
        for j in range(T):
            product[j] = ds[r, j] * p[r, j]
        dot = zero + row_sum(product, 0, T, zero)
        for j in range(T):
            ds[r, j] = ((ds[r, j] - dot) * p[r, j]) * scale
