"""Checkpoint saving and load_state in detail (tinysparse/training/checkpoint.py): what a save
refuses before it writes anything, what ckpt.json records, which files a save removes, and each
of load_state's refusals with its exact problem. test_checkpoint.py and
test_checkpoint_refusals.py cover the format, the atomic commit and damaged files.
"""
import builtins
import json
import os

import numpy as np
import pytest

from checkpoint_helpers import arrays_path, meta_of, split_safetensors
from tinysparse import optim
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.training.checkpoint import (CKPT_NAME, CheckpointError, device_stream_to_json,
                                            load_checkpoint, load_state, save_checkpoint)


def test_a_save_refuses_arrays_it_cannot_hold_before_writing(ckpt_run):
    before = sorted(os.listdir(ckpt_run))
    good = load_checkpoint(str(ckpt_run))
    ints = {**good, "model": {**good["model"], "wte.weight": np.zeros((2, 2), np.int32)}}
    with pytest.raises(TypeError, match=r"^checkpoints hold float32/float64 arrays, got int32$"):
        save_checkpoint(str(ckpt_run), ints)
    short = {**good, "optimizer": {**good["optimizer"], "m": good["optimizer"]["m"][:-1]}}
    n = len(good["optimizer"]["params"])
    with pytest.raises(ValueError, match=fr"^optimizer slot 'm' has {n - 1} arrays for {n} "
                                         r"parameters$"):
        save_checkpoint(str(ckpt_run), short)
    assert sorted(os.listdir(ckpt_run)) == before


def test_ckpt_json_records_what_was_saved(ckpt_run):
    good = load_checkpoint(str(ckpt_run))
    path = save_checkpoint(str(ckpt_run), {**good, "step": np.int64(12), "val_loss": None,
                                            "best_val_loss": np.float32(2.5), "history": [1, 2.5],
                                            "train_flops": np.int64(3_000_000_000_000_000_001),
                                            "train_flops_matmul": None})
    assert path == os.path.join(str(ckpt_run), CKPT_NAME)
    text = (ckpt_run / CKPT_NAME).read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "format": "tinysparse-checkpoint"')
    meta = json.loads(text)
    # the ledger's counts are optional: a count is written, None (not counted) is left out
    assert set(meta) == {"format", "version", "step", "arrays", "model_config", "train_config",
                         "optimizer", "rng", "sampler", "best_val_loss", "val_loss", "history",
                         "train_flops"}
    assert meta["train_flops"] == 3e18
    header, _ = split_safetensors(arrays_path(ckpt_run).read_bytes())
    assert header["__metadata__"] == {"format": "tinysparse-checkpoint"}
    assert meta["step"] == 12 and meta["val_loss"] is None and meta["best_val_loss"] == 2.5
    assert meta["history"] == [1.0, 2.5]
    assert meta["rng"]["cupy"] == device_stream_to_json(good.get("rng_cupy"))   # the device stream
    assert meta["optimizer"]["slots"] == ["m", "v"]          # sorted, params and slots left out
    assert meta["optimizer"]["params"] == good["optimizer"]["params"]
    assert meta["optimizer"]["step_count"] == good["optimizer"]["step_count"]
    assert meta["optimizer"]["lr"] == good["optimizer"]["lr"]
    assert meta["model_config"] == good["model_config"]
    assert meta["arrays"]["file"].startswith("ckpt-000012-")
    assert meta["arrays"]["bytes"] == arrays_path(ckpt_run).stat().st_size
    again = load_checkpoint(str(ckpt_run))
    assert again["val_loss"] is None and again["step"] == 12
    save_checkpoint(str(ckpt_run), {**good, "val_loss": np.float32(1.5)})
    assert json.loads((ckpt_run / CKPT_NAME).read_text())["val_loss"] == 1.5
    assert load_checkpoint(str(ckpt_run))["val_loss"] == 1.5


def test_the_device_stream_comes_back_from_a_checkpoint(ckpt_run):
    """A GPU run's dropout and router jitter resume from engine/random.py's SplitMix64 stream:
    the seed and counter a checkpoint is given are the ones loading returns (64-bit values,
    past a double's 53 bits), and None (a run from before it was saved) stays None."""
    good = load_checkpoint(str(ckpt_run))
    stream = {"seed": 2 ** 64 - 1, "counter": 2 ** 53 + 1}
    save_checkpoint(str(ckpt_run), {**good, "rng_cupy": stream})
    assert meta_of(ckpt_run)["rng"]["cupy"] == {"bit_generator": "SplitMix64",
                                                "seed": str(2 ** 64 - 1),
                                                "counter": str(2 ** 53 + 1)}
    assert load_checkpoint(str(ckpt_run))["rng_cupy"] == stream
    save_checkpoint(str(ckpt_run), {**good, "rng_cupy": None})
    assert meta_of(ckpt_run)["rng"]["cupy"] is None
    assert load_checkpoint(str(ckpt_run))["rng_cupy"] is None


def test_a_save_removes_old_arrays_and_leftovers_but_nothing_else(ckpt_run, monkeypatch):
    old = arrays_path(ckpt_run).name
    (ckpt_run / "notes.txt").write_text("mine")
    (ckpt_run / ".ckpt.json.abc.tmp").write_text("{")
    save_checkpoint(str(ckpt_run), {**load_checkpoint(str(ckpt_run)), "step": 5})
    names = sorted(os.listdir(ckpt_run))
    assert old not in names and "notes.txt" in names and ".ckpt.json.abc.tmp" not in names
    assert arrays_path(ckpt_run).name in names
    # a file that cannot be deleted is only wasted space: the save still succeeds
    real_unlink, refused = os.unlink, []

    def unlink(path, *args, **kwargs):
        if str(path).endswith(".safetensors"):
            refused.append(path)
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    save_checkpoint(str(ckpt_run), {**load_checkpoint(str(ckpt_run)), "step": 6})
    assert refused and load_checkpoint(str(ckpt_run))["step"] == 6


def _forbid_reading(monkeypatch, forbidden):
    """open() raises PermissionError for every path where forbidden(path) is true."""
    real_open = builtins.open

    def no_read(path, *args, **kwargs):
        if forbidden(str(path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_read)


def test_an_unreadable_checkpoint_is_refused_naming_the_fix(ckpt_run, monkeypatch):
    _forbid_reading(monkeypatch, lambda path: path.endswith(CKPT_NAME))
    with pytest.raises(CheckpointError, match=r"ckpt.json cannot be read \(Permission denied\); "
                                              r"check the checkpoint's permissions$"):
        load_checkpoint(str(ckpt_run))


def test_an_unreadable_arrays_file_is_refused_naming_the_fix(ckpt_run, monkeypatch):
    arrays = str(arrays_path(ckpt_run))
    _forbid_reading(monkeypatch, lambda path: path == arrays)
    with pytest.raises(CheckpointError, match=r"\.safetensors cannot be read \(Permission denied\); "
                                              r"check the arrays file's permissions$"):
        load_checkpoint(str(ckpt_run))


def test_missing_checkpoint_messages(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CKPT_NAME).mkdir()
    with pytest.raises(CheckpointError, match=r"^\S+/run/ckpt.json is a folder, not a checkpoint "
                                              r"file; pass the run folder as --out-dir$"):
        load_checkpoint(str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match=r"^--resume: no checkpoint at .*; drop --resume to "
                                              r"start a new run, or pass the --out-dir"):
        load_checkpoint(str(tmp_path), resume=True)
    with pytest.raises(CheckpointError, match=r"\(the folder .* has no ckpt.json\); train one "
                                              r"first with `make train`"):
        load_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"\(there is no run folder .*nowhere\)"):
        load_checkpoint(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- load_state

def _model_and_opt(ckpt):
    model = GPT(GPTConfig(**ckpt["model_config"]))
    return model, optim.AdamW(model.parameters(), lr=1e-3)


def _refused(ckpt, with_optimizer=True):
    model, opt = _model_and_opt(ckpt)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    with pytest.raises(CheckpointError) as info:
        load_state(ckpt, model, opt if with_optimizer else None)
    assert all(np.array_equal(p.data, before[n]) for n, p in model.named_parameters())
    assert opt.step_count == 0                       # nothing copied into either
    return str(info.value)


def test_load_state_names_the_first_problem(ckpt_runs):
    good = load_checkpoint(str(ckpt_runs["dense"]))
    arrays = good["arrays_path"]
    wrong = {**good, "model": {**good["model"], "wpe.weight": np.zeros((8, 32), np.float32)}}
    assert _refused(wrong) == (f"{arrays} does not fit the model that ckpt.json describes "
                               f"(model/wpe.weight is (8, 32), the config makes (16, 16)); copy "
                               f"the whole run folder again from where it came, or train anew")
    gone = ["ln_f.bias", "ln_f.weight", "wpe.weight", "wte.weight"]
    missing = {**good, "model": {k: a for k, a in good["model"].items() if k not in gone}}
    assert "(no array model/ln_f.bias, model/ln_f.weight, model/wpe.weight)" in _refused(missing)
    extra = {**good, "model": {**good["model"], "a": np.zeros(1), "b": np.zeros(1),
                               "c": np.zeros(1), "d": np.zeros(1)}}
    assert "(unexpected model/a, model/b, model/c)" in _refused(extra)
    order = {**good, "optimizer": {**good["optimizer"],
                                   "params": good["optimizer"]["params"][::-1]}}
    assert _refused(order).startswith(f"{good['path']} has optimizer.params that do not list the "
                                      f"model's parameters in order;")
    load_state(order, _model_and_opt(good)[0])       # without an optimizer its list is not read
    slots = {**good, "optimizer": {**good["optimizer"], "slots": ["m"]}}
    assert _refused(slots).startswith(f"{good['path']} has optimizer.slots = ['m'], but AdamW "
                                      f"keeps ['m', 'v'];")


def test_load_state_copies_parameters_buffers_and_moments(ckpt_runs):
    good = load_checkpoint(str(ckpt_runs["moe-bias"]))
    model, opt = _model_and_opt(good)
    load_state(good, model, opt)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert np.array_equal(t.data, good["model"][name]), name
    assert opt.step_count == good["optimizer"]["step_count"]
    assert all(np.array_equal(a, b) for a, b in zip(opt.m, good["optimizer"]["m"]))
    assert meta_of(ckpt_runs["moe-bias"])["optimizer"]["slots"] == sorted(opt._slots())

