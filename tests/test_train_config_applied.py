"""How a training run (tinysparse/training/loop.py) applies its configs: the corpus, batch
sampler and optimizer they build, the learning rate each AdamW update receives at its own step
(after a resume too), the clipped gradient it updates with, and the configs a run refuses (a
device that is not there, a resume with other model settings).

Every input is chosen so that a plausible bug gives a different answer: a schedule shifted by one
step or decayed over the wrong horizon, clipping ignored. The runs are train_helpers' 1-layer,
16-wide GPT on a 20 kB synthetic corpus; the fixture `updates` (conftest.py) records the lr and
the gradient norm of every update as it starts.
"""
import numpy as np
import pytest

import tinysparse.training.loop as loop
from tinysparse import optim
from tinysparse.training import train
from train_helpers import global_norm, log_of, model_config, train_config


# ----------------------------------------------------------------------------- the learning rate

@pytest.mark.parametrize("decay", [6, None], ids=["lr_decay_iters", "max_iters"])
def test_each_update_gets_the_schedules_rate_for_its_own_step(tmp_path, updates, decay):
    # warm-up 3, cosine to step 6 (or to max_iters 8), then min_lr: the schedule shifted by one
    # step, or decayed over the wrong horizon, differs at every step of this run
    cfg = train_config(tmp_path, lr_decay_iters=decay)
    train(model_config(), cfg)
    horizon = decay or cfg.max_iters
    expected = [optim.cosine_lr(s, cfg.lr, cfg.warmup_iters, horizon, cfg.min_lr)
                for s in range(cfg.max_iters)]
    assert [u.lr for u in updates] == expected
    shifted = [optim.cosine_lr(s + 1, cfg.lr, cfg.warmup_iters, horizon, cfg.min_lr)
               for s in range(cfg.max_iters)]
    assert all(a != b for a, b in zip(expected[:6], shifted[:6]))     # the input discriminates
    log = log_of(tmp_path)
    assert [r["lr"] for r in log] == [None, expected[3], expected[7]]  # steps 0, 4 and 8


def test_a_resumed_run_continues_the_schedule_where_it_stopped(tmp_path, updates):
    cfg = train_config(tmp_path)
    train(model_config(), train_config(tmp_path, max_iters=4))
    train(model_config(), cfg, resume=True)
    assert [u.lr for u in updates] == [optim.cosine_lr(s, cfg.lr, cfg.warmup_iters, 6, cfg.min_lr)
                                       for s in range(8)]


# ----------------------------------------------------------------------------- gradient clipping

def test_the_update_reads_the_clipped_gradient(tmp_path, updates):
    # at initialisation the gradient's global norm is far above 0.01: every step clips
    train(model_config(), train_config(tmp_path, grad_clip=0.01))
    assert len(updates) == 8 and all(u.norm <= 0.01 * (1 + 1e-6) for u in updates)


def test_grad_clip_zero_updates_with_the_whole_gradient(tmp_path, updates, monkeypatch):
    norms, real = [], optim.clip_grad_norm

    def measured(params, max_norm):
        params = list(params)
        norms.append(global_norm(params))
        return real(params, max_norm)

    monkeypatch.setattr(optim, "clip_grad_norm", measured)
    train(model_config(), train_config(tmp_path, grad_clip=0.0))
    assert min(norms) > 0.01                          # so clipping at 0.01 would have changed them
    assert [u.norm for u in updates] == norms         # untouched: 0 means no clipping


# ----------------------------------------------------------------------------- what a run is built from

def test_a_run_is_built_from_its_configs(tmp_path):
    from tinysparse.training.data import BatchSampler
    from tinysparse.training.data import load_corpus as real_load_corpus
    cfg = train_config(tmp_path, seed=11, max_bytes=12_000, weight_decay=0.05)
    run = loop.TrainingRun(model_config(), cfg)
    corpus = real_load_corpus("synthetic", 16, 12_000, seed=11)
    assert np.array_equal(run.corpus.train, corpus.train) and np.array_equal(run.corpus.val,
                                                                             corpus.val)
    x, y = run.sampler.train_batch()
    x_ref, y_ref = BatchSampler(corpus, 4, 16, seed=11).train_batch()
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    assert (run.opt.beta1, run.opt.beta2, run.opt.weight_decay) == (0.9, 0.95, 0.05)  # nanoGPT
    assert run.device == "cpu" and run.sync_every == 1 and run.tokens_per_step == 64


@pytest.mark.skipif(loop.backend.cuda_available(), reason="needs a machine without a GPU")
def test_a_run_on_a_device_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(loop.backend.DeviceError, match="device 'cuda' was requested"):
        train(model_config(), train_config(tmp_path, device="cuda"))


def test_resume_names_only_the_model_settings_that_differ(tmp_path):
    train(model_config(), train_config(tmp_path, max_iters=2))
    with pytest.raises(ValueError, match=r"^--resume: the checkpoint in .* has model config "
                                         r"\{'n_embd': 16\}; drop the model flags that differ, "
                                         r"or use a new --out-dir$"):
        train(model_config(n_embd=32), train_config(tmp_path, max_iters=4), resume=True)
