"""Python's and NumPy's protocols, the graph's lifetime, dtypes and PyTorch's spellings (issue 11,
kinds 5 and 6, the engine's half).

Each example is the call a learner with PyTorch habits makes, with the answer or the error it must
give: the truth value of a comparison, float() and format() of a one-element tensor, np.exp(t),
a second backward, x32 @ w64, t.sum(dim=1), ts.cat(xs, dim=0), the small Tensor methods.
"""
import gc
import operator
import weakref

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor
from tinysparse import functional as F


# ---- truth value, numbers, format ---------------------------------------------------------------

def test_assert_on_the_comparison_of_two_element_tensors_raises():
    """Without __bool__, Python fell back to __len__ and `assert a == b` passed for [1, 2], [5, 6]."""
    a, b = Tensor([1, 2]), Tensor([5, 6])
    with pytest.raises(RuntimeError, match=r"2 elements is ambiguous.*\(a == b\)\.all\(\)"):
        assert a == b
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(Tensor(np.zeros(0)))
    assert not (a == b).all() and (a == a).all() and (a != b).any()


def test_truth_value_of_one_element():
    assert Tensor(3.0) and not Tensor(0.0)
    assert Tensor([[1.0]]) and not Tensor(np.array([False]))
    assert (Tensor(2.0) > 1) is not None and bool(Tensor(2.0) > 1) is True


def test_float_int_index_and_item():
    assert float(Tensor([2.5])) == 2.5 and int(Tensor(np.array(7.9))) == 7
    assert Tensor(np.float64(3.25)).item() == 3.25
    assert operator.index(Tensor(np.array(4))) == 4 and list(range(Tensor(np.array(3)))) == [0, 1, 2]
    assert [10, 20, 30][Tensor(np.array(2))] == 30
    for convert in (float, int, lambda t: t.item()):
        with pytest.raises(TypeError, match=r"one-element Tensor.*shape \(2,\).*tolist"):
            convert(Tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="only an integer Tensor can be an index.*int\\(t\\)"):
        operator.index(Tensor(2.0))


def test_an_ndarray_indexed_by_integer_tensors():
    data = np.arange(10.0)
    assert data[Tensor(np.array(3))] == 3.0
    np.testing.assert_array_equal(data[Tensor(np.array([1, 4]))], [1.0, 4.0])


def test_format_of_one_element_and_of_many():
    assert f"{Tensor(3.14159):.3f}" == "3.142" and f"{Tensor([[2.0]]):>6.1f}" == "   2.0"
    assert f"{Tensor([1.0, 2.0])}" == str(Tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"format spec '\.3f' needs a one-element Tensor.*tolist"):
        f"{Tensor([1.0, 2.0]):.3f}"


def test_iteration_len_and_membership():
    t = Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    rows = list(t)
    assert len(rows) == 3 and all(r.shape == (2,) for r in rows)
    sum(r.sum() for r in rows).backward()
    np.testing.assert_array_equal(t.grad, np.ones((3, 2)))
    assert 4.0 in t and 9.0 not in t
    with pytest.raises(TypeError, match="0-d Tensor"):
        iter(Tensor(1.0))
    with pytest.raises(TypeError, match="0-d Tensor"):
        len(Tensor(1.0))


# ---- NumPy's protocols ----------------------------------------------------------------------------

def test_np_exp_of_a_tensor_is_the_differentiable_exp():
    """np.exp(t) used to build an object array of 0-d Tensors without a word."""
    t = Tensor(np.array([0.0, 1.0]), requires_grad=True)
    y = np.exp(t)
    assert isinstance(y, Tensor) and y.dtype == np.float64 and y.requires_grad
    np.testing.assert_allclose(y.numpy(), [1.0, np.e])
    y.sum().backward()
    np.testing.assert_allclose(t.grad, [1.0, np.e])


@pytest.mark.parametrize("call, expected", [
    (lambda a, t: a + t, lambda a, x: a + x), (lambda a, t: a - t, lambda a, x: a - x),
    (lambda a, t: a * t, lambda a, x: a * x), (lambda a, t: a / t, lambda a, x: a / x),
    (lambda a, t: a @ t, lambda a, x: a @ x), (lambda a, t: np.sqrt(t), lambda a, x: np.sqrt(x)),
    (lambda a, t: np.log(t), lambda a, x: np.log(x)), (lambda a, t: np.tanh(t), lambda a, x: np.tanh(x)),
    (lambda a, t: np.negative(t), lambda a, x: -x), (lambda a, t: np.power(t, 2), lambda a, x: x ** 2),
    (lambda a, t: np.sum(t, axis=0), lambda a, x: x.sum(axis=0)),
    (lambda a, t: np.mean(t), lambda a, x: x.mean()), (lambda a, t: np.max(t, axis=1), lambda a, x: x.max(axis=1)),
    (lambda a, t: np.reshape(t, 4), lambda a, x: x.reshape(4)),
    (lambda a, t: np.transpose(t), lambda a, x: x.T),
    (lambda a, t: np.concatenate([t, a]), lambda a, x: np.concatenate([x, a])),
    (lambda a, t: np.stack([a, t], axis=1), lambda a, x: np.stack([a, x], axis=1)),
    (lambda a, t: np.where(a > 1, t, a), lambda a, x: np.where(a > 1, x, a)),
], ids=["radd", "rsub", "rmul", "rdiv", "rmatmul", "sqrt", "log", "tanh", "negative", "power",
        "sum", "mean", "max", "reshape", "transpose", "concatenate", "stack", "where"])
def test_numpy_calls_with_a_differentiable_twin_stay_in_the_graph(call, expected, rng):
    a = rng.uniform(0.5, 2.0, (2, 2))
    t = Tensor(rng.uniform(0.5, 2.0, (2, 2)), requires_grad=True)
    out = call(a, t)
    assert isinstance(out, Tensor) and out.requires_grad
    np.testing.assert_allclose(out.numpy(), expected(a, t.data), rtol=1e-12)
    assert ts.gradcheck(lambda t: call(a, t), t)


def test_numpy_comparisons_give_boolean_tensors():
    a, t = np.array([1.0, 3.0]), Tensor(np.array([2.0, 2.0]))
    for out, want in ((a < t, [True, False]), (np.greater(a, t), [False, True]), (a == t, [False, False])):
        assert isinstance(out, Tensor) and out.dtype == bool
        np.testing.assert_array_equal(out.numpy(), want)


def test_numpy_without_a_twin_works_on_the_data_when_no_gradient_is_lost():
    t = Tensor(np.array([-1.5, 2.0]))
    out = np.maximum(t, 0)
    assert isinstance(out, np.ndarray) and out.tolist() == [0.0, 2.0]
    assert np.isfinite(Tensor(np.array([1.0, np.inf]), requires_grad=True)).tolist() == [True, False]
    assert np.shape(t) == (2,) and np.allclose(t, [-1.5, 2.0])
    np.testing.assert_allclose(t, [-1.5, 2.0])
    assert isinstance(np.asarray(t), np.ndarray) and np.array(t, copy=True) is not t.data


def test_numpy_without_a_twin_refuses_to_drop_a_gradient():
    t = Tensor(np.array([-1.5, 2.0]), requires_grad=True)
    with pytest.raises(TypeError, match=r"np\.maximum\(\) on a Tensor that requires grad.*detach\(\)\.numpy\(\)"):
        np.maximum(t, 0)
    with pytest.raises(TypeError, match=r"np\.clip\(\)"):
        np.clip(t, 0, 1)
    with pytest.raises(TypeError, match=r"np\.add\.reduce\(\)"):
        np.add.reduce(t)
    buffer = np.zeros(2)
    with pytest.raises(TypeError, match="requires grad"):
        buffer += t                                   # out= into an array: refused, untouched
    assert (buffer == 0).all()
    buffer += t.detach()
    np.testing.assert_array_equal(buffer, [-1.5, 2.0])


def test_ndarray_plus_tensor_keeps_the_tensors_dtype_rule():
    t = Tensor(np.ones(2, np.float32))
    assert (np.ones(2, np.float32) + t).dtype == np.float32
    assert (np.float64(2.0) * t).dtype == np.float32           # a NumPy scalar is weak
    with pytest.raises(TypeError, match="float64 and float32.*astype"):
        np.ones(2) + t


# ---- the graph's lifetime -----------------------------------------------------------------------

def test_a_second_backward_through_a_freed_graph_is_an_error():
    """It used to succeed and double every .grad."""
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        loss.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])           # not doubled, not half-added


def test_a_second_backward_through_a_shared_freed_part_fails_before_touching_any_grad():
    x, y = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    h = x * 3
    h.sum().backward()
    with pytest.raises(RuntimeError, match="second time"):
        (h * y).sum().backward()                              # reaches h, freed by the first
    assert y.grad is None and (x.grad == 3).all()


def test_retain_graph_keeps_it_for_another_backward():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    loss = (x.exp() * x).sum()
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_backward_releases_the_saved_arrays_and_intermediates():
    x = Tensor(np.ones(1000), requires_grad=True)
    h = x.exp()
    saved = weakref.ref(h._ctx[1].saved[0])                    # exp's output, saved for backward
    loss = h.sum()
    del h
    loss.backward()
    gc.collect()
    assert saved() is None, "the graph still holds exp's saved output after backward"


def test_backward_accepts_pytorchs_gradient_keyword_and_checks_the_shape():
    x = Tensor(np.ones(3), requires_grad=True)
    (x * 2).backward(gradient=np.full(3, 0.5))
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 1.0])
    with pytest.raises(RuntimeError, match=r"shape \(3,\), got \(2,\)"):
        (x * 2).backward(np.ones(2))


# ---- dtypes: no silent promotion ------------------------------------------------------------------

def test_a_float64_array_into_a_float32_op_is_an_error_naming_the_fix():
    x32 = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    w64 = np.ones((3, 4))
    with pytest.raises(TypeError, match=r"MatMul got float32 and float64 inputs.*astype\(np\.float32\)"):
        x32 @ w64
    with pytest.raises(TypeError, match="Add got float32 and float64"):
        x32 + np.ones(3)
    with pytest.raises(TypeError, match="float64 and float32"):
        F.layer_norm(Tensor(np.ones((2, 3))), Tensor(np.ones(3, np.float32)))
    assert (x32 @ w64.astype(np.float32)).dtype == np.float32   # the fix


def test_scalars_never_promote_and_integer_arrays_take_the_float_dtype():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    for out in (x * 2.5, x + 1, x * np.float64(0.5), x - np.int64(3), x / np.float16(2),
                x * np.arange(3), np.arange(3) + x, x @ np.arange(3), 2.0 ** x):
        assert out.dtype == np.float32, out
    np.testing.assert_array_equal((x * np.arange(3)).numpy(), [0.0, 1.0, 2.0])
    x64 = Tensor(np.ones(3), requires_grad=True)
    assert (x64 * np.float32(2)).dtype == np.float64 and x64.float().dtype == np.float32


def test_tensors_hold_numbers_and_only_floats_require_grad():
    with pytest.raises(TypeError, match="only floating-point tensors can require grad.*dtype=np.float32"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="bool, integer or floating data, not object"):
        Tensor(np.array([None, 1]))
    i = Tensor(np.ones(2), requires_grad=True).astype(np.int64)
    assert i.dtype == np.int64 and not i.requires_grad          # an integer cast leaves the graph


# ---- PyTorch's spellings: dim=, keepdim=, the small methods -------------------------------------

def test_dim_and_keepdim_beside_axis_and_keepdims(rng):
    x = Tensor(rng.standard_normal((2, 3, 4)))
    np.testing.assert_allclose(x.sum(dim=1).numpy(), x.data.sum(axis=1))
    np.testing.assert_allclose(x.mean(dim=(0, 2), keepdim=True).numpy(), x.data.mean(axis=(0, 2), keepdims=True))
    np.testing.assert_allclose(ts.ops.sum(x, dim=-1).numpy(), x.data.sum(axis=-1))
    np.testing.assert_allclose(F.softmax(x, dim=1).numpy(), F.softmax(x, axis=1).numpy())
    np.testing.assert_allclose(F.log_softmax(x, dim=0).numpy(), F.log_softmax(x, axis=0).numpy())
    parts = [Tensor(rng.standard_normal((2, 3))) for _ in range(3)]
    assert ts.cat(parts, dim=1).shape == (2, 9) and ts.concatenate(parts, dim=0).shape == (6, 3)
    assert ts.stack(parts, dim=2).shape == (2, 3, 3) and ts.cat(parts).shape == (6, 3)
    with pytest.raises(TypeError, match="axis= or dim=.*not both"):
        x.sum(axis=0, dim=1)
    with pytest.raises(TypeError, match="keepdims= or keepdim="):
        x.sum(keepdims=True, keepdim=True)


def test_max_with_dim_returns_values_and_indices_like_pytorch():
    x = Tensor(np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]]), requires_grad=True)
    values, indices = x.max(dim=1)
    np.testing.assert_array_equal(values.numpy(), [5.0, 7.0])
    np.testing.assert_array_equal(indices.numpy(), [1, 0])
    assert x.max(axis=1).shape == (2,)                          # NumPy's spelling: values only
    lo = x.min(dim=0, keepdim=True)
    np.testing.assert_array_equal(lo.values.numpy(), [[1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(lo.indices.numpy(), [[0, 1, 0]])
    values.sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(TypeError, match="dim must be one int.*axis=\\(0, 1\\)"):
        x.max(dim=(0, 1))


def test_argmax_argmin_numel_dim_item(rng):
    x = Tensor(np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]]))
    assert x.argmax().item() == 3 and x.argmin().item() == 4      # of the flattened tensor
    np.testing.assert_array_equal(x.argmax(dim=1).numpy(), [1, 0])
    np.testing.assert_array_equal(x.argmin(axis=0, keepdims=True).numpy(), [[0, 1, 0]])
    assert x.argmax().dtype.kind == "i" and not x.argmax().requires_grad
    assert x.numel() == 6 and x.dim() == 2 and x[1, 0].item() == 7.0
    with pytest.raises(ValueError, match="empty"):
        Tensor(np.zeros(0)).argmax()


def test_unsqueeze_squeeze_flatten_shapes():
    x = Tensor(np.zeros((2, 1, 3, 1)))
    assert x.squeeze().shape == (2, 3) and x.squeeze(1).shape == (2, 3, 1)
    assert x.squeeze(0).shape == (2, 1, 3, 1)                  # not size 1: left alone (PyTorch)
    assert x.squeeze((1, -1)).shape == (2, 3)
    assert x.unsqueeze(0).shape == (1, 2, 1, 3, 1) and x.unsqueeze(-1).shape == (2, 1, 3, 1, 1)
    assert x.flatten().shape == (6,) and x.flatten(1).shape == (2, 3) and x.flatten(0, 2).shape == (6, 1)
    assert Tensor(5.0).flatten().shape == (1,)
    with pytest.raises(IndexError, match=r"unsqueeze: dim 5 .*\[-5, 4\]"):
        x.unsqueeze(5)
    with pytest.raises(IndexError, match=r"axis 4 is out of range.*shape \(2, 1, 3, 1\).*\[-4, 3\]"):
        x.squeeze(4)
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        x.flatten(2, 1)


def test_clone_copies_and_stays_in_the_graph():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = x.clone()
    assert c.requires_grad and not np.shares_memory(c.data, x.data)
    c.data[0] = 10.0
    assert x.data[0] == 1.0
    (c * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_item_assignment_is_refused_with_the_fix():
    t = Tensor(np.zeros(3), requires_grad=True)
    with pytest.raises(TypeError, match=r"not changed in place.*masked_fill.*t\.data"):
        t[0] = 1.0


def test_transpose_names_a_bad_axis():
    with pytest.raises(IndexError, match=r"axis 2 is out of range.*shape \(2, 3\)"):
        Tensor(np.zeros((2, 3))).transpose(0, 2)


def test_cat_and_stack_refuse_a_lone_tensor_or_nothing():
    a = Tensor(np.ones((2, 2)))
    with pytest.raises(TypeError, match=r"cat takes a list of tensors.*ts\.cat\(\[a, b\], dim=0\)"):
        ts.cat(a)
    with pytest.raises(TypeError, match="stack takes a list"):
        ts.stack(a, a)
    with pytest.raises(ValueError, match="at least one tensor"):
        ts.cat([])
    assert ts.cat(t for t in (a, a)).shape == (4, 2)           # any iterable of tensors


def test_a_scalar_base_to_a_tensor_power():
    x = Tensor(np.array([0.0, 1.0, 3.0]), requires_grad=True)
    np.testing.assert_allclose((2.0 ** x).numpy(), [1.0, 2.0, 8.0])
    assert ts.gradcheck(lambda x: 2.0 ** x, x)
    with pytest.raises(TypeError, match="positive scalar base"):
        (-2.0) ** x
