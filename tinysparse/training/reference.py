"""`train --vs-dense` (what `make train` runs): a sparse run set against the dense tiny model.

    ref = ensure_reference(tcfg)          # before the sparse run: train the dense tiny model once
    ...                                   # the sparse run itself (train())
    lines = vs_dense_report(tcfg, ref)    # after it: the compute-map PNG and one ledger line

The dense reference is the tiny preset's model trained with the sparse run's own loop settings
(corpus, batch, steps, schedule, seed, evaluation), in a run folder beside the sparse run's
(out/tiny-reference for out/tiny-moe). It is trained on first use and reused while a finished
run with the same settings is there: the comparison is at equal steps on the same batches.
"""
import inspect
import os
import colorsys

from ..adaptive.compute_map import compute_map
from ..gpt import GPTConfig
from ..ledger.compare import ledger_line, token_costs
from .checkpoint import CKPT_NAME, load_checkpoint
from .config import PRESETS, TrainConfig
from .data import load_corpus
from .sampling import load_run

REFERENCE_PRESET = "tiny"
# the loop settings that change the reference's numbers: they must be the sparse run's
SAME = ("data", "max_bytes", "batch_size", "max_iters", "lr", "min_lr", "warmup_iters",
        "lr_decay_iters", "weight_decay", "grad_clip", "eval_interval", "eval_iters", "seed")
MAP_BYTES = 1024


def reference_configs(tcfg: TrainConfig, out_dir=None):
    """(GPTConfig, TrainConfig) of the dense reference for a sparse run configured by tcfg."""
    mcfg = GPTConfig(**PRESETS[REFERENCE_PRESET]["model"])
    folder = out_dir or os.path.join(os.path.dirname(os.path.normpath(tcfg.out_dir)),
                                     f"{REFERENCE_PRESET}-reference")
    settings = {**PRESETS[REFERENCE_PRESET]["train"], **{k: getattr(tcfg, k) for k in SAME},
                "device": tcfg.device, "out_dir": folder, "sample_tokens": 0}
    return mcfg, TrainConfig.from_dict(settings)


def reference_problem(mcfg, tcfg):
    """None when tcfg.out_dir holds a finished run of mcfg with tcfg's loop settings; otherwise
    why it cannot be used (one line)."""
    if not os.path.exists(os.path.join(tcfg.out_dir, CKPT_NAME)):
        return f"no run in {tcfg.out_dir} yet"
    ckpt = load_checkpoint(tcfg.out_dir)
    if ckpt["model_config"] != mcfg.to_dict():
        return f"the run in {tcfg.out_dir} is not the {REFERENCE_PRESET} model"
    saved = ckpt["train_config"]
    differ = [k for k in SAME if saved.get(k) != getattr(tcfg, k)]
    if differ:
        return f"the run in {tcfg.out_dir} was trained with other {', '.join(differ)}"
    if ckpt["step"] != tcfg.max_iters:
        return f"the run in {tcfg.out_dir} stopped at step {ckpt['step']} of {tcfg.max_iters}"
    return None


def ensure_reference(tcfg: TrainConfig, train_fn, out_dir=None):
    """The reference's run folder, trained first (with train_fn(mcfg, tcfg), the loop) when it is
    missing or was trained with other settings. Returns (folder, trained_now)."""
    mcfg, ref_tcfg = reference_configs(tcfg, out_dir)
    problem = reference_problem(mcfg, ref_tcfg)
    if problem is None:
        print(f"dense reference: the {REFERENCE_PRESET} run in {ref_tcfg.out_dir} (same loop "
              f"settings, trained earlier)", flush=True)
        return ref_tcfg.out_dir, False
    print(f"dense reference: {problem}; training the {REFERENCE_PRESET} preset once with this "
          f"run's loop settings into {ref_tcfg.out_dir} (later runs reuse it)", flush=True)
    summary = train_fn(mcfg, ref_tcfg)
    if summary["status"] != "done":
        raise KeyboardInterrupt
    return ref_tcfg.out_dir, True


def vs_dense_report(out_dir, ref_dir, png=None, map_bytes=MAP_BYTES):
    """After a sparse run: its compute map (PNG, or None without matplotlib) over the first
    map_bytes of a standard-library source file, and one ledger line against the reference.
    Returns (png path or None, the line)."""
    model, (mcfg, tcfg), ckpt = load_run(out_dir)
    dense, _, dense_ckpt = load_run(ref_dir)
    text = open(inspect.getsourcefile(colorsys), "rb").read()[:map_bytes]
    png = png or os.path.join(out_dir, "compute_map.png")
    try:
        import matplotlib  # noqa: F401  (the plot extra)
    except ImportError:
        png = None
    compute_map(model, text, png, dense=dense, title="colorsys.py")
    corpus = load_corpus(tcfg.data, mcfg.block_size, tcfg.max_bytes, seed=tcfg.seed)
    costs, dense_costs = token_costs(model, corpus.val, (1,)), token_costs(dense, corpus.val, (1,))
    line = ledger_line(os.path.basename(os.path.normpath(out_dir)), costs, ckpt["val_loss"],
                       f"dense {REFERENCE_PRESET}", dense_costs, dense_ckpt["val_loss"],
                       note=f"dense: {ref_dir}, same steps and batches")
    return png, line
