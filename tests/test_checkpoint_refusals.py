"""Loading refuses what it must, as one `error:` line, and never runs code from a file.

Every damaged, garbled, forged or mismatched checkpoint is tried through the command line's
main() (sample and train --resume), which must print ONE line naming the file and the fix. A
crafted pickle whose unpickling writes a marker file is put in run folders: no command may
create the marker. Old pickle checkpoints convert only with --i-trust-this-file.
"""
import ast
import os
import pickle

import numpy as np
import pytest
import safetensors.numpy

from checkpoint_helpers import (ROOT, arrays_path, edit_header, edit_meta, first_param,
                                forge_arrays)
from tinysparse.__main__ import main
from tinysparse.training import convert, load_run
from tinysparse.training.checkpoint import CKPT_NAME, LEGACY_NAME, CheckpointError, load_checkpoint


def one_error_line(capsys, argv, *words):
    """main(argv) fails with status 1 and exactly one stderr line, `error: ...`, holding words."""
    assert main([str(a) for a in argv]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], (word, err[0])
    return err[0]


def forge_arrays_dict(ckpt_run, edit):
    """Re-encode the arrays after edit({name: array}), with a matching size and checksum."""
    arrays = dict(safetensors.numpy.load(arrays_path(ckpt_run).read_bytes()))
    edit(arrays)
    forge_arrays(ckpt_run, safetensors.numpy.save(arrays))


def reshape_param(arrays, name="wpe.weight"):
    """A parameter and its AdamW moments reshaped alike: consistent, but not the config's."""
    for key in (f"model/{name}", f"optimizer/m/{name}", f"optimizer/v/{name}"):
        arrays[key] = arrays[key].reshape(8, 32)


def set_rng(meta, key, value):
    meta["rng"]["numpy"][key] = value


def cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


# (damage to a copy of a good run, the file the message must name, words it must hold)
CASES = {
    "meta-missing": (lambda r: [os.unlink(p) for p in r.iterdir()], "ckpt.json", "no checkpoint"),
    "meta-garbled": (lambda r: (r / CKPT_NAME).write_bytes(b"\x00\xff{garbage"), "ckpt.json",
                     "not valid JSON"),
    "meta-truncated": (lambda r: cut(r / CKPT_NAME, 300), "ckpt.json", "truncated"),
    "meta-not-a-checkpoint": (lambda r: (r / CKPT_NAME).write_text("[1, 2]"), "ckpt.json",
                              "not a tinysparse checkpoint"),
    "meta-missing-key": (lambda r: edit_meta(r, lambda m: m.pop("optimizer")), "ckpt.json",
                         "has no optimizer"),
    "meta-wrong-type": (lambda r: edit_meta(r, lambda m: m.update(step="four")), "ckpt.json",
                        "step = \"four\", which is not an integer"),
    "meta-newer-version": (lambda r: edit_meta(r, lambda m: m.update(version=3)), "ckpt.json",
                           "format version 3"),
    "config-unknown-field": (lambda r: edit_meta(r, lambda m: m["model_config"].update(n_wiz=3)),
                             "ckpt.json", "does not know: n_wiz"),
    "config-wrong-type": (lambda r: edit_meta(r, lambda m: m["model_config"].update(n_layer=1.5)),
                          "ckpt.json", "model_config.n_layer = 1.5, which is not an integer"),
    "config-invalid": (lambda r: edit_meta(r, lambda m: m["model_config"].update(n_head=3)),
                       "ckpt.json", "that GPTConfig refuses"),
    "rng-garbled": (lambda r: edit_meta(r, lambda m: set_rng(m, "state", "12x")), "ckpt.json",
                    "rng.numpy.state"),
    "rng-other-generator": (lambda r: edit_meta(r, lambda m: set_rng(m, "bit_generator", "MT")),
                            "ckpt.json", "\"PCG64\""),
    "history-nan": (lambda r: edit_meta(r, lambda m: m["history"].append(float("nan"))),
                    "ckpt.json", "not finite"),
    "arrays-name-escapes": (lambda r: edit_meta(r, lambda m: m["arrays"].update(
        file="../ckpt-000004-0123456789ab.safetensors")), "ckpt.json",
        "not a checkpoint file name"),
    "arrays-missing": (lambda r: os.unlink(arrays_path(r)), ".safetensors", "is missing"),
    "arrays-truncated": (lambda r: cut(arrays_path(r), 1000), ".safetensors", "truncated"),
    "arrays-bit-flipped": (lambda r: arrays_path(r).write_bytes(
        (lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:])(arrays_path(r).read_bytes())),
        ".safetensors", "SHA-256"),
    "header-garbage": (lambda r: forge_arrays(r, b"not a safetensors file at all"),
                       ".safetensors", "not a valid safetensors file"),
    "header-length-lies": (lambda r: forge_arrays(r, b"\xff" * 8 + arrays_path(r).read_bytes()[8:]),
                           ".safetensors", "not a valid safetensors file"),
    "header-offsets-lie": (lambda r: edit_header(r, lambda h: h[first_param(h)].update(
        data_offsets=[0, 10 ** 6])), ".safetensors", "not a valid safetensors file"),
    "header-shape-lies": (lambda r: edit_header(r, lambda h: h[first_param(h)].update(
        shape=[10 ** 6])), ".safetensors", "not a valid safetensors file"),
    "dtype-not-allowed": (lambda r: edit_header(r, lambda h: h[first_param(h)].update(
        dtype="I32")), ".safetensors", "of dtype I32"),
    "moment-shape-differs": (lambda r: forge_arrays_dict(r, lambda a: a.update(
        {"optimizer/m/wte.weight": a["optimizer/m/wte.weight"].T.copy()})), ".safetensors",
        "but its parameter model/wte.weight is"),
    "array-missing": (lambda r: forge_arrays_dict(r, lambda a: a.pop("optimizer/v/wte.weight")),
                      ".safetensors", "has no array optimizer/v/wte.weight"),
    "array-unexpected": (lambda r: forge_arrays_dict(r, lambda a: a.update(
        {"stowaway": np.zeros(2, np.float32)})), ".safetensors", "does not describe: stowaway"),
    "arrays-vs-config": (lambda r: forge_arrays_dict(r, reshape_param), ".safetensors",
                         "model/wpe.weight is (8, 32), the config makes (16, 16)"),
    "config-vs-arrays": (lambda r: edit_meta(r, lambda m: m["model_config"].update(n_embd=32)),
                         ".safetensors", "does not fit the model"),
}


@pytest.mark.parametrize("command", [["sample"], ["train", "--resume", "--max-iters", "6"]],
                         ids=["sample", "resume"])
@pytest.mark.parametrize("case", CASES)
def test_every_damaged_checkpoint_is_one_error_line(ckpt_run, capsys, case, command):
    damage, names_file, words = CASES[case]
    damage(ckpt_run)
    line = one_error_line(capsys, [*command, "--out-dir", ckpt_run], names_file, words)
    assert "; " in line                                         # ... then what to do
    if case != "meta-missing":
        assert str(ckpt_run) in line                                 # the file, with its folder


def test_forged_cases_really_pass_the_checksum(ckpt_run):
    """The forgeries above must reach the checks past the SHA-256, or they test nothing new."""
    edit_header(ckpt_run, lambda h: h[first_param(h)].update(dtype="I32"))
    with pytest.raises(CheckpointError, match="dtype I32"):
        load_checkpoint(str(ckpt_run))


def test_a_file_or_a_folder_in_the_wrong_place(ckpt_run, capsys):
    one_error_line(capsys, ["sample", "--out-dir", ckpt_run / CKPT_NAME], "is a file", "run folder")
    os.unlink(ckpt_run / CKPT_NAME)
    os.mkdir(ckpt_run / CKPT_NAME)
    one_error_line(capsys, ["sample", "--out-dir", ckpt_run], "is a folder", "--out-dir")


# ----------------------------------------------------------------------------- crafted pickles

class WritesMarker:
    """Unpickling this calls open(marker, "w"): the file appearing means code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_pickle(folder, marker):
    payload = {"version": 1, "model": WritesMarker(marker), "model_config": {"n_layer": 1}}
    (folder / LEGACY_NAME).write_bytes(pickle.dumps(payload))


def test_the_crafted_pickle_does_run_code_when_unpickled(tmp_path):
    crafted_pickle(tmp_path, tmp_path / "marker")               # the control: it is live
    pickle.loads((tmp_path / LEGACY_NAME).read_bytes())
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("argv, words", [
    (["sample"], ["old pickle format", "convert-checkpoint", "--i-trust-this-file", "train anew"]),
    (["train", "--resume"], ["old pickle format", "convert-checkpoint"]),
    (["convert-checkpoint"], ["can run any code", "--i-trust-this-file"]),
    (["convert-checkpoint", "--i-trust-this-file"], ["open, which no tinysparse checkpoint"]),
], ids=["sample", "resume", "convert", "convert-trusted"])
def test_no_command_runs_a_crafted_pickle(tmp_path, capsys, argv, words):
    folder, marker = tmp_path / "shared_run", tmp_path / "marker"
    folder.mkdir()
    crafted_pickle(folder, marker)
    one_error_line(capsys, [argv[0], "--out-dir", folder, *argv[1:]], *words)
    assert not marker.exists()
    assert not (folder / CKPT_NAME).exists()
    with pytest.raises(CheckpointError, match="old pickle format"):
        load_run(str(folder))                                   # the library's entry too
    assert not marker.exists()


def test_a_crafted_pickle_next_to_a_good_checkpoint_is_ignored(ckpt_run, tmp_path, capsys):
    crafted_pickle(ckpt_run, tmp_path / "marker")
    assert main(["sample", "--out-dir", str(ckpt_run), "--max-new-tokens", "5"]) == 0
    assert main(["train", "--resume", "--out-dir", str(ckpt_run), "--max-iters", "5"]) == 0
    assert not (tmp_path / "marker").exists()


# ----------------------------------------------------------------------------- conversion

def old_format_pickle(run_dir, folder):
    """ckpt.pkl as the old TrainingRun.save wrote it, from the same state."""
    ckpt = load_checkpoint(str(run_dir))
    opt = ckpt["optimizer"]
    old = {"version": 1, "model": ckpt["model"],
           "optimizer": {"step_count": opt["step_count"], "lr": opt["lr"], "m": opt["m"],
                         "v": opt["v"]},
           **{k: ckpt[k] for k in ("model_config", "train_config", "step", "rng", "sampler",
                                   "best_val_loss", "history", "val_loss")}}
    folder.mkdir()
    with open(folder / LEGACY_NAME, "wb") as fh:
        pickle.dump(old, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return ckpt


@pytest.mark.parametrize("kind", ["dense", "moe-bias"])
def test_convert_checkpoint_with_consent(ckpt_runs, tmp_path, capsys, kind):
    folder = tmp_path / "old"
    original = old_format_pickle(ckpt_runs[kind], folder)
    one_error_line(capsys, ["convert-checkpoint", "--out-dir", folder], "--i-trust-this-file")
    assert sorted(os.listdir(folder)) == [LEGACY_NAME]          # refused: nothing written
    assert main(["convert-checkpoint", "--out-dir", str(folder), "--i-trust-this-file"]) == 0
    assert "converted" in capsys.readouterr().out
    new = load_checkpoint(str(folder))
    for key in ("step", "model_config", "train_config", "rng", "sampler", "history",
                "best_val_loss", "val_loss"):
        assert new[key] == original[key], key
    assert new["model"].keys() == original["model"].keys()
    assert all(np.array_equal(a, new["model"][k]) for k, a in original["model"].items())
    assert all(np.array_equal(a, b) for s in ("m", "v")
               for a, b in zip(original["optimizer"][s], new["optimizer"][s]))
    one_error_line(capsys, ["convert-checkpoint", "--out-dir", folder, "--i-trust-this-file"],
                   "already has a checkpoint in the new format")
    assert main(["sample", "--out-dir", str(folder), "--max-new-tokens", "5"]) == 0


@pytest.mark.parametrize("content, words", [
    (b"\x80\x05garbage", ["cannot be converted"]),
    (pickle.dumps([1, 2, 3]), ["not an old tinysparse checkpoint"]),
    (None, ["no old checkpoint"]),
])
def test_convert_refuses_what_it_cannot_convert(tmp_path, capsys, content, words):
    if content is not None:
        (tmp_path / LEGACY_NAME).write_bytes(content)
    one_error_line(capsys, ["convert-checkpoint", "--out-dir", tmp_path, "--i-trust-this-file"],
                   *words)
    assert not (tmp_path / CKPT_NAME).exists()


def test_convert_reads_nothing_without_the_flag(tmp_path, capsys, monkeypatch):
    def never(path):
        raise AssertionError("the pickle was read without consent")

    monkeypatch.setattr(convert, "_unpickle_trusted", never)
    (tmp_path / LEGACY_NAME).write_bytes(pickle.dumps({}))
    one_error_line(capsys, ["convert-checkpoint", "--out-dir", tmp_path], "--i-trust-this-file")


# Code that reads a pickle or another format that runs code (np.load is safe without
# allow_pickle=True); found in the syntax tree, so docs that name them do not count.
UNSAFE_MODULES = {"pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "torch"}


def unsafe_reads(source):
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in UNSAFE_MODULES
                and node.attr in ("load", "loads", "Unpickler", "open")):
            found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in UNSAFE_MODULES:
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name in ("load", "loads", "Unpickler", "open")]
        elif isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant) and (
                (node.arg == "allow_pickle" and node.value.value is True)
                or (node.arg == "weights_only" and node.value.value is False)):
            found.append(f"{node.arg}={node.value.value}")
    return found


def test_only_the_converter_can_read_a_pickle():
    sources = [p for pattern in ("tinysparse/**/*.py", "cuda_kernels/**/*.py", "lessons/**/*.py")
               for p in ROOT.glob(pattern)]
    assert len(sources) > 30
    readers = {str(p.relative_to(ROOT)): unsafe_reads(p.read_text()) for p in sources}
    readers = {path: found for path, found in readers.items() if found}
    assert readers == {"tinysparse/training/convert.py": ["pickle.Unpickler"]}   # the one, found
    for code in ("np.load(p, allow_pickle=True)", "from pickle import loads", "torch.load(f)",
                 "pickle.load(fh)", "torch.load(f, weights_only=False)"):
        assert unsafe_reads(code), code                           # the scan sees each form
    assert not unsafe_reads("np.load(p)\nx = 'pickle.load(fh)'")
