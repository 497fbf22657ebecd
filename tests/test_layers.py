"""The layers (tinysparse/layers.py): Linear, Embedding, LayerNorm and Dropout, their shapes,
initialisation, forward and gradients, their refusals of sizes, rates, token ids and input widths
outside their domain, and the rows of chapter 2's coming-from-PyTorch table.
"""
import math
import re

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor, nn, optim
from tinysparse import functional as F


# ---- the layers ----------------------------------------------------------------------------------

def test_linear_shapes_init_and_forward():
    ts.manual_seed(0)
    lin = nn.Linear(6, 4)
    assert lin.weight.shape == (6, 4) and lin.bias.shape == (4,)
    assert lin.weight.dtype == np.float32
    bound = 1 / math.sqrt(6)
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound
    assert np.abs(lin.weight.data).max() > 0.5 * bound  # really uniform over the range
    x = Tensor(np.ones((2, 3, 6), np.float32))
    y = lin(x)
    assert y.shape == (2, 3, 4)
    np.testing.assert_allclose(y.numpy(), x.data @ lin.weight.data + lin.bias.data, rtol=1e-6)
    no_bias = nn.Linear(6, 4, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]


def test_linear_gradcheck():
    ts.manual_seed(0)
    lin = nn.Linear(3, 2, dtype=np.float64)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 3)), requires_grad=True)
    assert ts.gradcheck(lambda x, w, b: lin(x), x, lin.weight, lin.bias)


def test_embedding_lookup_and_gradient_with_repeated_ids():
    ts.manual_seed(0)
    emb = nn.Embedding(5, 3)
    assert emb.weight.shape == (5, 3) and emb.weight.dtype == np.float32
    idx = np.array([[1, 1, 4], [1, 0, 4]])
    out = emb(idx)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out.numpy(), emb.weight.data[idx])
    np.testing.assert_array_equal(emb(Tensor(idx)).numpy(), out.numpy())
    np.testing.assert_array_equal(emb([1, 2]).numpy(), emb.weight.data[[1, 2]])
    out.sum().backward()
    np.testing.assert_array_equal(emb.weight.grad[:, 0], [1, 3, 0, 0, 2])  # how often each id appears
    emb64 = nn.Embedding(4, 2, dtype=np.float64)
    assert ts.gradcheck(lambda w: emb64(np.array([3, 3, 0, 3])), emb64.weight)


def test_layer_norm_module():
    ln = nn.LayerNorm(4)
    assert ln.weight.shape == ln.bias.shape == (4,)
    np.testing.assert_array_equal(ln.weight.data, np.ones(4))
    np.testing.assert_array_equal(ln.bias.data, np.zeros(4))
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32))
    y = ln(x)
    assert y.shape == (2, 3, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y.numpy().mean(axis=-1), 0, atol=1e-6)
    assert nn.LayerNorm(4, bias=False).bias is None
    assert [n for n, _ in nn.LayerNorm(4, bias=False).named_parameters()] == ["weight"]


def test_dropout_module_rejects_bad_p():
    with pytest.raises(ValueError):
        nn.Dropout(1.0)

# ---- sizes, rates and indices outside their domain (issue 11, kind 2) ---------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.Linear(0, 3), ValueError, r"Linear d_in \(in_features\) must be an integer >= 1, got 0"),
    (lambda: nn.Linear(2, -1), ValueError, r"Linear d_out \(out_features\) must be an integer >= 1, got -1"),
    (lambda: nn.Linear(2.0, 3), TypeError, r"Linear d_in \(in_features\) must be an integer >= 1, got 2.0"),
    (lambda: nn.Embedding(0, 3), ValueError, r"Embedding n \(num_embeddings\) must be an integer >= 1"),
    (lambda: nn.Embedding(4, True), TypeError, r"Embedding d \(embedding_dim\) must be an integer"),
    (lambda: nn.LayerNorm(3, eps=math.nan), ValueError, r"LayerNorm eps must be a positive finite number, got nan"),
    (lambda: nn.LayerNorm(3, eps=0.0), ValueError, r"LayerNorm eps must be a positive finite number"),
    (lambda: nn.LayerNorm(0), ValueError, r"LayerNorm d \(normalized_shape\) must be an integer >= 1"),
    (lambda: nn.Dropout(math.nan), ValueError, r"Dropout p must be a finite number in \[0, 1\), got nan"),
    (lambda: nn.Dropout(1.0), ValueError, r"Dropout p must be a finite number in \[0, 1\), got 1.0"),
])
def test_layers_refuse_sizes_and_rates_outside_their_domain(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_embedding_refuses_ids_outside_the_table():
    ts.manual_seed(0)
    emb = nn.Embedding(5, 3)
    np.testing.assert_array_equal(emb(np.array([4, 0])).data, emb.weight.data[[4, 0]])
    with pytest.raises(ValueError, match=re.escape("Embedding input[1] = -1 is outside the valid "
                                                   "token ids [0, 5)")):
        emb(np.array([1, -1]))                 # NumPy would read row 4
    with pytest.raises(ValueError, match=re.escape("input[0, 0] = 5 is outside the valid token ids [0, 5)")):
        emb([[5]])
    with pytest.raises(TypeError, match="integer token ids, got dtype float64"):
        emb(np.array([1.0]))


def test_linear_and_layer_norm_name_a_wrong_input_width():
    with pytest.raises(ValueError, match=re.escape("Linear(in_features=2, out_features=3, bias=True) "
                                                   "got an input of shape (4, 5); its last axis must be 2")):
        nn.Linear(2, 3)(Tensor(np.ones((4, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"LayerNorm\(3, .*\) got an input of shape \(2, 4\)"):
        nn.LayerNorm(3)(Tensor(np.ones((2, 4), dtype=np.float32)))

# ---- the chapter's coming-from-PyTorch table -----------------------------------------------------

def test_the_chapters_coming_from_pytorch_table_holds():
    """lessons/02_neural_networks/README.md, section 9: each row that is about this library."""
    ts.manual_seed(0)
    lin = nn.Linear(2, 3)
    x = Tensor(np.ones((4, 2), dtype=np.float32))
    lin(x).sum().backward()
    assert type(lin.weight.grad) is np.ndarray and lin.weight.shape == (2, 3)   # (d_in, d_out)
    before = x
    x += 1.0                                          # a new Tensor, not an in-place update
    assert x is not before and np.all(before.data == 1.0)
    z = 3.0
    tanh_form = 0.5 * z * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    assert nn.GELU()(Tensor([z])).item() == pytest.approx(tanh_form, rel=1e-6)
    logits, targets = Tensor(np.zeros((2, 3, 5))), np.zeros((2, 3), dtype=np.int64)
    assert F.cross_entropy(logits, targets).item() == pytest.approx(math.log(5))   # classes last
    assert nn.Dropout().p == 0.1 and optim.AdamW(lin.parameters()).lr == 3e-4
    assert Tensor([1.0, 2.0]).dtype == np.float32 and Tensor(np.zeros(2)).dtype == np.float64
    assert lin.weight.dtype == np.float32


def test_dim_is_accepted_beside_axis():
    x = Tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.sum(dim=1).data, x.sum(axis=1).data)
    np.testing.assert_array_equal(F.softmax(x, dim=-1).data, F.softmax(x, axis=-1).data)
