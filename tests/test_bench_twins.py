"""The PyTorch twins (tinysparse/bench/torch_twins.py) compute what tinysparse computes: the same
loss and the same gradients from the same weights, dense and MoE, with and without biases; and a
twin that differs fails whatever compares against it: the bench's MoE suite, and gpu_vs_torch
(bench/gpu_vs_torch.py, gpu_check --full's stage), which on the CPU here compares equal models,
reports their ratio and tokens/s, and refuses an unknown preset or a missing GPU in one line.

Speed is never asserted: each runs the suite on a model small enough to take a second or two
(bench_helpers.bench) and checks that it works and what it prints.
"""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse.bench.torch_twins import build_torch_twin
from tinysparse.gpt import GPT, GPTConfig
from bench_helpers import bench


# ----------------------------------------------------------------------------- same numbers

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_expert", [0, 4])
def test_torch_twin_matches_tinysparse(bias, n_expert):
    """Same weights, same batch: the same loss and the same gradients (Linear's transposed);
    n_expert=4: the MoE as PyTorch's loop over experts, aux and z losses included."""
    torch = pytest.importorskip("torch")
    ts.manual_seed(3)
    config = GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=8, bias=bias,
                       n_expert=n_expert, top_k=2, n_shared=1 if n_expert else 0)
    model = GPT(config)
    twin = build_torch_twin(model)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(3, config.block_size + 1))
    idx, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()

    _, loss = model(idx, targets)
    _, twin_loss = twin(torch.from_numpy(idx), torch.from_numpy(targets))
    assert abs(loss.item() - twin_loss.item()) < 1e-4

    loss.backward()
    twin_loss.backward()
    ours = dict(model.named_parameters())
    for name, p in twin.named_parameters():
        grad = p.grad.numpy()
        expected = ours[name].grad
        if isinstance(twin.get_submodule(name.rsplit(".", 1)[0]), torch.nn.Linear) and name.endswith("weight"):
            expected = expected.T
        np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------- a twin that differs

def test_a_twin_mismatch_fails_the_bench(capsys, monkeypatch):
    pytest.importorskip("torch")
    from tinysparse.bench import torch_twins       # every suite builds its twin through it
    real = torch_twins.build_torch_twin

    def off_by_a_bit(model):              # a twin whose weights differ: its losses must not match
        twin = real(model)
        for p in twin.parameters():
            p.data.mul_(1.5)
        return twin
    monkeypatch.setattr(torch_twins, "build_torch_twin", off_by_a_bit)
    assert bench("--suite", "moe") == 1
    assert "MISMATCH" in capsys.readouterr().out


# ----------------------------------------------------------------------------- gpu_vs_torch

def test_gpu_vs_torch_compares_equal_models_and_reports_their_ratio(capsys):
    """gpu_vs_torch (gpu_check --full's stage) on the CPU: the twins start equal (same first loss),
    the ratio and tokens/s are the medians' own, and the CLI prints that line."""
    pytest.importorskip("torch")
    from tinysparse.bench import gpu_vs_torch
    r = gpu_vs_torch.step_vs_torch("tiny", iters=2, warmup=1, device="cpu")
    assert r["ok"] and r["loss_diff"] < 1e-5 and r["batch"] == (16, 64)
    assert r["ratio"] == pytest.approx(r["ms"]["tinysparse"] / r["ms"]["pytorch"])
    assert r["tok_s"]["pytorch"] == pytest.approx(16 * 64 / (r["ms"]["pytorch"] / 1e3))
    line = gpu_vs_torch.describe(r)
    assert line.startswith("tiny (0.81M params, B=16, T=64) on cpu: tinysparse ")
    assert f"ratio {r['ratio']:.2f}x" in line and "MISMATCH" not in line
    assert "MISMATCH" in gpu_vs_torch.describe({**r, "ok": False, "loss_diff": 0.5})
    assert gpu_vs_torch.main(["--preset", "tiny", "--iters", "1", "--warmup", "1",
                              "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("tiny (0.81M params")


def test_gpu_vs_torch_refuses_twins_that_differ(monkeypatch, capsys):
    """A twin whose first loss differs (one weight off) fails the check, and the CLI exits 1;
    an unknown preset and a missing GPU are one-line errors, not tracebacks."""
    torch = pytest.importorskip("torch")
    from tinysparse.bench import gpu_vs_torch, torch_twins
    built = torch_twins.build_torch_twin

    def off_by_a_little(model):
        twin = built(model)
        with torch.no_grad():
            twin.wte.weight.mul_(3.0)            # logits 3x: a first loss far off 1e-3
        return twin
    monkeypatch.setattr(torch_twins, "build_torch_twin", off_by_a_little)
    r = gpu_vs_torch.step_vs_torch("tiny", iters=1, warmup=1, device="cpu")
    assert not r["ok"] and r["loss_diff"] > gpu_vs_torch.GPU_LOSS_TOLERANCE
    assert gpu_vs_torch.main(["--preset", "tiny", "--iters", "1", "--warmup", "1",
                              "--device", "cpu"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gpu_vs_torch.main(["--preset", "tiny-adaptive", "--device", "cpu"])
    assert "invalid choice: 'tiny-adaptive'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_vs_torch.main(["--preset", "tiny"]) == 2
    assert capsys.readouterr().err.startswith("error: this PyTorch (")
    assert gpu_vs_torch.stage("tiny")[0] is None                   # gpu_check shows SKIP
