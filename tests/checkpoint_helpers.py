"""Shared by test_checkpoint.py and test_checkpoint_refusals.py: tiny runs of every model kind,
and ways to damage or forge a checkpoint's files (not a test module: nothing here is collected).
"""
import json
import struct
from pathlib import Path

from tinysparse.gpt import GPTConfig
from tinysparse.training import TrainConfig
from tinysparse.training.atomic import sha256_hex
from tinysparse.training.checkpoint import CKPT_NAME

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"dense": dict(dropout=0.1),
         "moe-bias": dict(dropout=0.0, n_expert=4, top_k=2, balance="bias"),
         "moe-dropout": dict(dropout=0.1, n_expert=4, top_k=2)}


def model_config(**kw):
    return GPTConfig(**{**dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.0), **kw})


def train_config(out_dir, **kw):
    base = dict(data="synthetic", max_bytes=20_000, batch_size=4, max_iters=4, lr=1e-2,
                warmup_iters=2, eval_interval=2, eval_iters=2, checkpoint_interval=2,
                out_dir=str(out_dir), sample_tokens=0)
    return TrainConfig(**{**base, **kw})


def meta_of(run):
    return json.loads((run / CKPT_NAME).read_text())


def arrays_path(run):
    return run / meta_of(run)["arrays"]["file"]


def forge_arrays(run, data):
    """Replace the arrays with `data` AND record its size and SHA-256 in ckpt.json, as a careless
    or hostile writer would: the checks past the checksum must catch what is wrong."""
    arrays_path(run).write_bytes(data)
    meta = meta_of(run)
    meta["arrays"].update(bytes=len(data), sha256=sha256_hex(data))
    (run / CKPT_NAME).write_text(json.dumps(meta))


def split_safetensors(data):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header, body):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def edit_header(run, edit):
    header, body = split_safetensors(arrays_path(run).read_bytes())
    edit(header)
    forge_arrays(run, join_safetensors(header, body))


def edit_meta(run, edit):
    meta = meta_of(run)
    edit(meta)
    (run / CKPT_NAME).write_text(json.dumps(meta))


def first_param(header):
    return next(k for k in header if k.startswith("model/"))


