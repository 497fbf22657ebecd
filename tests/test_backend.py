"""The device switch (tinysparse/backend.py): cpu by default, a clear error for anything else
this machine cannot provide, never a silent fall back."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor, nn
from tinysparse.engine import backend


@pytest.fixture
def no_device_env(monkeypatch):
    monkeypatch.delenv("TINYSPARSE_DEVICE", raising=False)


def test_default_device_is_cpu(no_device_env):
    assert backend.default_device() == "cpu"
    assert backend.resolve_device(None) == "cpu"
    assert backend.get_xp("cpu") is np
    t = Tensor([1.0, 2.0])
    assert t.device == "cpu" and isinstance(t.data, np.ndarray)


@pytest.mark.parametrize("value", ["cpu", " CPU ", ""])
def test_device_variable_spellings_of_cpu(monkeypatch, value):
    monkeypatch.setenv("TINYSPARSE_DEVICE", value)
    assert backend.default_device() == "cpu"


def test_bogus_device_variable_raises_naming_the_value(monkeypatch):
    monkeypatch.setenv("TINYSPARSE_DEVICE", "bogus")
    with pytest.raises(backend.DeviceError, match=r"unknown device 'bogus'.*cpu, cuda"):
        backend.default_device()
    with pytest.raises(backend.DeviceError, match="bogus"):
        Tensor([1.0])  # a new tensor asks for the default device


def test_unknown_device_names_are_rejected(no_device_env):
    for name in ("gpu", "cuda:0", "tpu"):
        with pytest.raises(backend.DeviceError, match=repr(name)):
            backend.check_device(name)
    with pytest.raises(backend.DeviceError, match="'gpu'"):
        Tensor([1.0]).to("gpu")
    assert issubclass(backend.DeviceError, RuntimeError)


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    if backend.cuda_available():
        pytest.skip("a CUDA GPU is available here: the error path cannot be exercised")
    monkeypatch.delenv("TINYSPARSE_DEVICE", raising=False)
    for ask in (lambda: backend.check_device("cuda"), lambda: backend.get_xp("cuda"),
                lambda: Tensor([1.0], device="cuda"), lambda: Tensor([1.0]).to("cuda"),
                lambda: nn.Linear(2, 2).to("cuda")):
        with pytest.raises(backend.DeviceError, match=r"device 'cuda' was requested but .*(CuPy|GPU)") as e:
            ask()
        assert "--device" not in str(e.value) and str(e.value).endswith("use device 'cpu'")
    monkeypatch.setenv("TINYSPARSE_DEVICE", "cuda")
    with pytest.raises(backend.DeviceError, match="TINYSPARSE_DEVICE=cuda: unset the variable") as e:
        backend.default_device()
    assert "--" not in str(e.value)  # a library error names no command-line flag
    monkeypatch.delenv("TINYSPARSE_DEVICE")
    assert backend.resolve_device("auto") == "cpu"  # 'auto' is the one spelling that may fall back
    assert ts.cuda_available() is False


def test_numpy_and_to_cpu(no_device_env):
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    out = x.numpy()
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.arange(6.0).reshape(2, 3))
    assert x.to("cpu") is x  # a no-op: the same tensor, still a leaf that requires grad
    model = nn.Linear(2, 3)
    weight = model.weight.data
    assert model.to("cpu") is model and model.weight.data is weight


def test_array_helpers_on_the_cpu():
    a = np.ones(3)
    assert backend.array_module(a) is np and backend.array_module([1, 2]) is np
    assert backend.device_of(a) == "cpu" and not backend.is_cuda_array(a)
    assert backend.to_numpy(a) is a           # no copy on the CPU
    assert backend.to_device(a, "cpu") is a
