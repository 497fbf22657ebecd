"""Training a GPT (chapter 04): the data, the loop's settings, the loop, checkpoints, sampling.

    from tinysparse.training import PRESETS, TrainConfig, train, sample
    summary = train(GPTConfig(**PRESETS["tiny"]["model"]), TrainConfig(max_iters=200))

Files, in reading order: data.py (bytes -> batches; corpora.py holds the sources), config.py
(TrainConfig, PRESETS), loop.py (train: setup, step, loop, checkpoint), reporting.py (the
progress line, evaluation and log lines, the summary at the end), evaluation.py
(the loss on each split, bits per byte), checkpoint.py (safetensors + JSON checkpoints; with
atomic.py, files written atomically, and checkpoint_schema.py, the checks made on loading),
sampling.py (load a run, sample text), convert.py (old pickle checkpoints, with consent).
"""
from .checkpoint import CheckpointError
from .config import PRESETS, TrainConfig
from .corpora import DataError
from .data import ByteTokenizer, load_corpus
from .evaluation import bits_per_byte, evaluate
from .loop import TrainingDiverged, train
from .sampling import load_run, sample, sample_text

__all__ = ["PRESETS", "TrainConfig", "train", "evaluate", "TrainingDiverged", "bits_per_byte",
           "load_run", "sample", "sample_text", "CheckpointError", "ByteTokenizer", "DataError",
           "load_corpus"]
