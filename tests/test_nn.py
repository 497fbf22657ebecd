"""The module system (tinysparse/nn.py): parameters and buffers found in nested modules,
state dicts, astype, train/eval, zero_grad, Sequential and ModuleList, printing a model as PyTorch
does, errors from the device, and the re-export of the layers of tinysparse/layers.py.
"""
import subprocess
import sys

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor, backend, nn
from tinysparse import functional as F
from tinysparse.nn import Parameter


# ---- a model with every kind of child ------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d):
        self.fc = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.ln(self.fc(x).relu()))


class Net(nn.Module):
    def __init__(self, vocab=5, d=3, n_layer=2):
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d) for _ in range(n_layer)])
        self.head = nn.Sequential([nn.Linear(d, 4), nn.GELU(), nn.Linear(4, vocab, bias=False)])
        self.scale = Parameter([2.0])
        self.name = "not a parameter"  # plain attributes are ignored
        self.register_buffer("counts", np.zeros(vocab))

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.layers:
            x = x + block(x)
        return self.head(x) * self.scale


EXPECTED_NAMES = [
    "embed.weight",
    "layers.0.fc.weight", "layers.0.fc.bias", "layers.0.ln.weight", "layers.0.ln.bias",
    "layers.1.fc.weight", "layers.1.fc.bias", "layers.1.ln.weight", "layers.1.ln.bias",
    "head.0.weight", "head.0.bias", "head.2.weight",
    "scale",
]


def test_named_parameters_find_nested_modules_in_order():
    ts.manual_seed(0)
    model = Net()
    names = [name for name, _ in model.named_parameters()]
    assert names == EXPECTED_NAMES
    assert all(isinstance(p, Parameter) and p.requires_grad for p in model.parameters())
    assert len(model.parameters()) == len(EXPECTED_NAMES)
    assert model.num_parameters() == 5 * 3 + 2 * (9 + 3 + 3 + 3) + (12 + 4) + 20 + 1
    assert len(model.layers) == 2 and isinstance(model.layers[1], Block)
    assert [type(m).__name__ for m in model.head] == ["Linear", "GELU", "Linear"]
    assert dict(model.named_buffers()).keys() == {"counts"}
    assert sum(1 for _ in model.modules()) == 1 + 1 + 1 + 2 * 4 + 1 + 3


def test_astype_casts_every_parameter_in_place_and_keeps_buffers():
    ts.manual_seed(0)
    model = Net()
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    idx = np.array([[0, 3, 4]])
    model(idx).sum().backward()
    params = model.parameters()
    assert model.astype(np.float64) is model
    assert model.parameters() == params                 # the same Parameter objects: optimizers keep them
    for name, p in model.named_parameters():
        assert p.dtype == np.float64 and p.grad is None, name
        np.testing.assert_array_equal(p.data, before[name])   # float32 -> float64 is exact
    assert model(idx).dtype == np.float64
    model.astype("float32")
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert dict(model.named_buffers())["counts"].dtype == np.float64      # buffers keep theirs
    with pytest.raises(TypeError, match=r"Net.astype\(int64\): parameters must be a floating dtype"):
        model.astype(np.int64)


def test_shared_parameters_are_listed_once():
    ts.manual_seed(0)
    model = Net()
    model.head[2].weight = model.embed.weight  # weight tying (shapes differ here; irrelevant)
    names = [name for name, _ in model.named_parameters()]
    assert "head.2.weight" not in names and names.count("embed.weight") == 1


def test_module_list_append_and_sequential_forward():
    ts.manual_seed(0)
    seq = nn.Sequential([nn.Linear(2, 3)])
    seq.append(nn.Tanh())
    seq.append(nn.ReLU())
    assert [name for name, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    x = Tensor(np.ones((4, 2), np.float32))
    expected = np.maximum(np.tanh(x.data @ seq[0].weight.data + seq[0].bias.data), 0)
    np.testing.assert_allclose(seq(x).numpy(), expected, rtol=1e-6)


def test_state_dict_round_trip():
    ts.manual_seed(0)
    a = Net()
    a.counts.data[:] = [1, 2, 3, 4, 5]
    ts.manual_seed(1)
    b = Net()
    idx = np.array([[0, 1, 4], [2, 2, 3]])
    a.eval(), b.eval()
    assert not np.allclose(a(idx).numpy(), b(idx).numpy())
    state = a.state_dict()
    assert list(state) == EXPECTED_NAMES + ["counts"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b.load_state_dict(state)
    np.testing.assert_array_equal(a(idx).numpy(), b(idx).numpy())
    np.testing.assert_array_equal(b.counts.numpy(), [1, 2, 3, 4, 5])
    # copies both ways: neither side sees later changes of the other
    a.embed.weight.data[0, 0] += 1.0
    assert state["embed.weight"][0, 0] != a.embed.weight.data[0, 0]
    state["scale"][0] = 99.0
    assert b.scale.data[0] == 2.0
    assert b.embed.weight.dtype == np.float32


def test_load_state_dict_with_wrong_names_raises_key_error_naming_them():
    ts.manual_seed(0)
    model = Net()
    state = model.state_dict()
    state["layers.2.fc.weight"] = state.pop("layers.1.fc.weight")
    with pytest.raises(KeyError, match=r"missing \['layers.1.fc.weight'\].*unexpected \['layers.2.fc.weight'\]"):
        model.load_state_dict(state)


def test_load_state_dict_with_wrong_shape_raises_value_error_and_changes_nothing():
    ts.manual_seed(0)
    model = Net()
    before = model.state_dict()
    ts.manual_seed(1)
    state = Net().state_dict()
    state["head.2.weight"] = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"'head.2.weight'.*\(4, 6\).*\(4, 5\)"):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():  # a failed load leaves the model as it was
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_train_and_eval_propagate_to_every_module():
    ts.manual_seed(0)
    model = Net()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    idx = np.array([[1, 2]])
    np.testing.assert_array_equal(model(idx).numpy(), model(idx).numpy())  # dropout is off
    model.train()
    assert all(m.training for m in model.modules())
    ts.manual_seed(5)
    first = model(idx).numpy()
    ts.manual_seed(6)
    assert not np.array_equal(first, model(idx).numpy())  # dropout is on


def test_zero_grad_clears_every_parameter():
    ts.manual_seed(0)
    model = Net()
    F.cross_entropy(model(np.array([[0, 1, 2]])), np.array([[1, 2, 3]])).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())

def test_parameter_dtypes():
    assert Parameter([1.0, 2.0]).dtype == np.float32
    assert Parameter(np.ones(2)).dtype == np.float64  # an array keeps its dtype
    assert Parameter(np.ones(2)).requires_grad

# ---- PyTorch habits (issue 11, kind 6) -----------------------------------------------------------

def test_sequential_takes_modules_as_positional_arguments_as_pytorch_does():
    ts.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, 2))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = Tensor(np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32))
    by_hand = model[2](F.gelu(model[0](x)))
    np.testing.assert_array_equal(model(x).data, by_hand.data)
    as_list = nn.Sequential([model[0], model[1], model[2]])       # the list spelling still works
    np.testing.assert_array_equal(as_list(x).data, by_hand.data)


def test_sequential_refuses_what_is_not_a_module_instead_of_skipping_it():
    with pytest.raises(TypeError, match=r"Sequential item 1 is a function, not an nn.Module "
                                        r"\(wrap a function in a Module: nn.GELU\(\)"):
        nn.Sequential(nn.Linear(2, 3), F.gelu)
    with pytest.raises(TypeError, match="ModuleList.append: item 1 is a int"):
        nn.ModuleList([nn.Linear(2, 3)]).append(3)


def test_print_model_shows_the_tree_as_pytorch_does():
    model = nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, 2, bias=False))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=16, bias=True)\n"
        "  (1): GELU()\n"
        "  (2): Linear(in_features=16, out_features=2, bias=False)\n"
        ")")
    ts.manual_seed(0)
    assert repr(Net()) == (
        "Net(\n"
        "  (embed): Embedding(5, 3)\n"
        "  (layers): ModuleList(\n"
        "    (0): Block(\n"
        "      (fc): Linear(in_features=3, out_features=3, bias=True)\n"
        "      (ln): LayerNorm(3, eps=1e-05, bias=True)\n"
        "      (drop): Dropout(p=0.5)\n"
        "    )\n"
        "    (1): Block(\n"
        "      (fc): Linear(in_features=3, out_features=3, bias=True)\n"
        "      (ln): LayerNorm(3, eps=1e-05, bias=True)\n"
        "      (drop): Dropout(p=0.5)\n"
        "    )\n"
        "  )\n"
        "  (head): Sequential(\n"
        "    (0): Linear(in_features=3, out_features=4, bias=True)\n"
        "    (1): GELU()\n"
        "    (2): Linear(in_features=4, out_features=5, bias=False)\n"
        "  )\n"
        ")")

def test_an_error_from_the_device_reaches_the_user_unchanged(monkeypatch):
    # the command line adds "--device cpu"; nn must not (a Python user has no such flag)
    def no_gpu(device):
        raise backend.DeviceError("device 'cuda' was requested but no GPU is here")
    monkeypatch.setattr(backend, "check_device", no_gpu)
    with pytest.raises(backend.DeviceError, match=r"^device 'cuda' was requested but no GPU is here$"):
        nn.Linear(2, 3).to("cuda")


@pytest.mark.skipif(backend.cuda_available(), reason="this machine has a GPU")
def test_model_to_cuda_without_a_gpu_has_no_command_line_hint():
    with pytest.raises(backend.DeviceError) as info:
        nn.Linear(2, 3).to("cuda")
    assert "--device" not in str(info.value)


def test_nn_re_exports_every_layer_of_layers_py():
    """The layers live in layers.py and the module system in nn.py; `nn.X` and
    `from tinysparse.nn import X` must keep naming the same objects (a layer added to layers.py
    and not re-exported fails here)."""
    from tinysparse import layers
    own = {name for name, value in vars(layers).items()
           if not name.startswith("_") and getattr(value, "__module__", None) == layers.__name__}
    assert own >= {"Linear", "Embedding", "LayerNorm", "Dropout", "GELU", "ReLU", "Tanh", "check_ids"}
    missing = sorted(name for name in own if getattr(nn, name, None) is not getattr(layers, name))
    assert not missing, f"nn.py does not re-export {missing} from layers.py"


def test_layers_py_imported_first_in_a_fresh_interpreter():
    """nn.py imports layers.py at its end and layers.py imports nn.py: either may come first."""
    code = ("from tinysparse.layers import Linear\n"
            "from tinysparse.nn import Linear as nn_Linear, Module\n"
            "assert Linear is nn_Linear and issubclass(Linear, Module)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

def test_a_module_without_forward_says_what_is_missing():
    class Empty(nn.Module):
        pass
    with pytest.raises(NotImplementedError, match=r"Empty has no forward\(\)"):
        Empty()(1)
