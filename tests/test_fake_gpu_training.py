"""Training on the GPU path through the strict CuPy stand-in (fixture fake_gpu, tests/fake_cupy/):
the host synchronisations of a step against their budgets, resume bit for bit with dropout,
sampling, the checkpoint's rng.cupy slot, and gpu-check's lent-GPU stages.

Budgets (training/loop.py): a dense step never waits for the device, except that every
log_interval steps the losses are read (one transfer); a MoE step waits once per MoE layer, for
the dropless buffer's size (NumpyDispatch.plan reads the offsets). Measured before this file
existed: 4 waits per dense step (the causal mask) and 72 per tiny-moe step.
"""
import contextlib
import io
import json
import math

import numpy as np
import pytest

from checkpoint_helpers import model_config, train_config
from tinysparse.engine import backend
from tinysparse.gpt import GPTConfig
from tinysparse.training import train
from tinysparse.training.checkpoint import CKPT_NAME, CheckpointError, load_checkpoint
from tinysparse.training.config import PRESETS, TrainConfig
from tinysparse.training.loop import TrainingRun
from tinysparse.training.sampling import sample_text


def _run(preset, tmp_path, device="cuda", log_interval=1000, **model):
    mcfg = GPTConfig(**{**PRESETS[preset]["model"], "dispatch_backend": "numpy", **model})
    tcfg = TrainConfig(**{**PRESETS[preset]["train"], "out_dir": str(tmp_path), "device": device,
                          "max_bytes": 60_000, "max_iters": 1000, "log_interval": log_interval,
                          "eval_interval": 1000, "checkpoint_interval": 1000, "sample_tokens": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        return TrainingRun(mcfg, tcfg)


@pytest.mark.parametrize("preset, budget", [("tiny", 0), ("tiny-moe", 4)])
def test_sync_budget_of_a_training_step(fake_gpu, tmp_path, preset, budget):
    run = _run(preset, tmp_path)
    progress = {}
    run.step(progress)                                  # warm-up: the corpus goes up once here
    fake_gpu.LEDGER.reset()
    run.step(progress)
    syncs, uploads = fake_gpu.LEDGER.syncs, fake_gpu.LEDGER.uploads
    assert len(syncs) == budget, fake_gpu.LEDGER.report()
    assert all(kind == ".get()" and "moe/dispatch.py" in where and "(plan)" in where
               for kind, where in syncs), fake_gpu.LEDGER.report()
    assert len(uploads) == 1 and uploads[0][0] == 8 * run.cfg.batch_size   # the B start positions
    assert run.step_count == 2 and run.pending                  # the losses are not read yet


def test_a_dense_step_runs_with_waiting_forbidden_and_the_log_step_reads_once(fake_gpu, tmp_path):
    run = _run("tiny", tmp_path, log_interval=3)
    progress = {}
    run.step(progress)
    with fake_gpu.cupyx.allow_synchronize(False):
        run.step(progress)                              # would raise DeviceSynchronized
    fake_gpu.LEDGER.reset()
    run.step(progress)                                  # step 3: the log step reads the losses
    (kind, where), = fake_gpu.LEDGER.syncs                        # all three in one transfer
    assert kind == ".get()" and "training/loop.py" in where, fake_gpu.LEDGER.report()
    assert len(run.st["history"]) == 3 and all(map(math.isfinite, run.st["history"]))


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_gpu_path_losses_match_the_cpu(fake_gpu, tmp_path, preset):
    """Same data, same init: the device path computes what the CPU does, up to rounding (layer
    norm and sums take their overflow-safe forms on a GPU, an embedding's gradient a matmul)."""
    losses = {}
    for device in ("cpu", "cuda"):
        run = _run(preset, tmp_path / device, device=device, n_layer=2)
        progress = {}
        for _ in range(3):
            run.step(progress)
        run.read_pending()
        losses[device] = run.st["history"]
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=2e-5)


@pytest.mark.parametrize("kw", [dict(dropout=0.1),
                                dict(dropout=0.1, n_expert=4, top_k=2, jitter=0.2,
                                     dispatch_backend="numpy")])
def test_resume_on_the_gpu_is_bit_identical_with_dropout(fake_gpu, tmp_path, kw):
    mcfg = model_config(**kw)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        train(mcfg, train_config(tmp_path / "straight", device="cuda", max_iters=4))
        train(mcfg, train_config(tmp_path / "parts", device="cuda", max_iters=2))
        train(mcfg, train_config(tmp_path / "parts", device="cuda", max_iters=4), resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "parts")
    for name in a["model"]:
        np.testing.assert_array_equal(a["model"][name], b["model"][name], err_msg=name)
    assert a["history"] == b["history"]
    assert a["rng_cupy"] == b["rng_cupy"] and a["rng_cupy"]["counter"] > 0   # dropout drew
    meta = json.loads((tmp_path / "parts" / CKPT_NAME).read_text())
    assert meta["rng"]["cupy"] == {"bit_generator": "SplitMix64",
                                   "seed": str(train_config("x").seed),   # seeded by the run
                                   "counter": str(a["rng_cupy"]["counter"])}


def test_a_resume_that_lost_the_device_stream_differs(fake_gpu, tmp_path):
    """The control for the test above: without the saved stream, dropout replays old masks."""
    mcfg = model_config(dropout=0.1)
    with contextlib.redirect_stdout(io.StringIO()):
        train(mcfg, train_config(tmp_path / "straight", device="cuda", max_iters=4))
        train(mcfg, train_config(tmp_path / "parts", device="cuda", max_iters=2))
        meta = json.loads((tmp_path / "parts" / CKPT_NAME).read_text())
        meta["rng"]["cupy"] = None                      # as a checkpoint from before it was saved
        (tmp_path / "parts" / CKPT_NAME).write_text(json.dumps(meta))
        train(mcfg, train_config(tmp_path / "parts", device="cuda", max_iters=4), resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "parts")
    assert a["history"][:2] == b["history"][:2] and a["history"][2:] != b["history"][2:]


@pytest.mark.parametrize("bad, says", [
    ({"bit_generator": "XORWOW", "seed": "0", "counter": "1"}, "SplitMix64"),
    ({"bit_generator": "SplitMix64", "seed": "0", "counter": "-1"}, "rng.cupy.counter"),
    ({"bit_generator": "SplitMix64", "seed": str(2 ** 64), "counter": "1"}, "rng.cupy.seed"),
    ({"bit_generator": "SplitMix64", "seed": "0", "counter": 1}, "rng.cupy.counter"),
    ({"bit_generator": "SplitMix64", "seed": "0", "counter": "1", "offset": "2"}, "offset"),
    ("state", "rng.cupy"),
])
def test_checkpoint_refuses_a_bad_device_stream(ckpt_run, bad, says):
    meta = json.loads((ckpt_run / CKPT_NAME).read_text())
    assert meta["rng"]["cupy"]["bit_generator"] == "SplitMix64"      # CPU runs save it too
    meta["rng"]["cupy"] = bad
    (ckpt_run / CKPT_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=says):
        load_checkpoint(ckpt_run)


def test_sampling_from_a_model_on_the_gpu(fake_gpu, tmp_path):
    runs = {d: _run("tiny", tmp_path / d, device=d, n_layer=1) for d in ("cpu", "cuda")}
    texts = {d: sample_text(r.model, "def ", 20, 0.8, 50, seed=0) for d, r in runs.items()}
    assert texts["cuda"].startswith("def ") and len(texts["cuda"].encode("utf-8", "replace")) >= 20
    assert texts["cuda"] == texts["cpu"]                # same weights, same host draws


def test_gpu_check_full_stages_on_the_stand_in(fake_gpu):
    """gpu_full's sync check and resume check, on the stand-in (a GPU runs them for real with
    `make gpu-check ARGS=--full`); the CUDA kernels' stages need the device."""
    from tinysparse.bench import gpu_full
    ok, detail = gpu_full.sync_free("tiny")
    assert ok, detail
    ok, detail = gpu_full.resume(n_layer=1, n_embd=32, block_size=16)
    assert ok and "parameters bit-identical" in detail, detail
