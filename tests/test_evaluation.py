"""Scoring a model (tinysparse/training/evaluation.py) where test_train_evaluation.py does not: a
single evaluation batch, and the GPU path through the strict CuPy stand-in (fixture fake_gpu),
which must score what the CPU scores and read the device once per split."""
import contextlib
import io
from types import SimpleNamespace

import numpy as np

from checkpoint_helpers import model_config, train_config
from tinysparse.training.evaluation import evaluate
from tinysparse.training.loop import TrainingRun
from train_helpers import MeanIdModel, split_corpus


def test_one_evaluation_batch_is_enough():
    cfg = SimpleNamespace(seed=1, batch_size=3, eval_iters=1)
    assert evaluate(MeanIdModel(), split_corpus(), cfg, 8) == {"train": 3.0, "val": 200.0}


def test_evaluation_on_the_gpu_scores_what_the_cpu_does_with_one_read_per_split(fake_gpu,
                                                                               tmp_path):
    scores = {}
    for device in ("cpu", "cuda"):
        with contextlib.redirect_stdout(io.StringIO()):
            run = TrainingRun(model_config(dropout=0.1),
                              train_config(tmp_path / device, device=device, eval_iters=3))
        fake_gpu.LEDGER.reset()
        scores[device] = evaluate(run.model, run.corpus, run.cfg, run.mcfg.block_size)
        if device == "cuda":
            syncs = fake_gpu.LEDGER.syncs
            assert len(syncs) == 2, fake_gpu.LEDGER.report()         # train and val: one each
            assert all("training/evaluation.py" in where for _, where in syncs), \
                fake_gpu.LEDGER.report()
    assert scores["cuda"].keys() == {"train", "val"}
    for split in ("train", "val"):
        assert type(scores["cuda"][split]) is float
        np.testing.assert_allclose(scores["cuda"][split], scores["cpu"][split], rtol=2e-5)
    assert scores["cpu"]["train"] != scores["cpu"]["val"]
