"""PyTorch's spellings of NumPy's arguments, accepted side by side: dim= beside axis=,
keepdim= beside keepdims=. One argument, two names: giving both is an error that says so.

Also the one place axes are checked, so that an axis out of range is a message that names the
tensor's shape and the valid range rather than a bare IndexError.
"""
import operator


def axis_argument(axis, dim, default=None):
    """The axis the caller meant, whichever name they used (None: `default`)."""
    if dim is None:
        return default if axis is None else axis
    if axis is not None:
        raise TypeError(f"give axis= or dim= (two names for one argument), not both: "
                        f"got axis={axis!r} and dim={dim!r}")
    return dim


def keepdims_argument(keepdims, keepdim):
    """keepdims= (NumPy) or keepdim= (PyTorch), as a bool."""
    if keepdim is None:
        return bool(keepdims)
    if keepdims:
        raise TypeError("give keepdims= or keepdim= (two names for one argument), not both")
    return bool(keepdim)


def normalize_axes(axis, ndim, shape=None):
    """axis (None, an int, or a tuple of ints, negative ones counting from the end) as a sorted
    tuple of non-negative axes; a clear error for one out of range or repeated."""
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for ax in axes:
        try:
            ax = operator.index(ax)
        except TypeError:
            raise TypeError(f"an axis must be an int (or a tuple of ints), got {ax!r}") from None
        if not -ndim <= ax < ndim:
            where = f"shape {tuple(shape)}" if shape is not None else f"{ndim} dimensions"
            valid = f"[{-ndim}, {ndim - 1}]" if ndim else "none: a 0-d tensor has no axes"
            raise IndexError(f"axis {ax} is out of range for a tensor of {where}: "
                             f"valid axes are {valid}")
        out.append(ax % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis {axis!r} names an axis twice")
    return tuple(sorted(out))
