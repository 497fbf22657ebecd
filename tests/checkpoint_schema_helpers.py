"""Shared by the tests of ckpt.json's and the arrays file's field checks
(tinysparse/training/checkpoint_schema.py; tests/test_checkpoint_schema_*.py): the file name the
messages start with, the exact one-line refusal, and good generator states to change one field
of. Not a test module: nothing here is collected.

test_checkpoint_refusals.py damages whole run folders; the schema tests give each check the
values just inside and just outside its range, where an off-by-one or a dropped condition
changes the answer.
"""
import numpy as np
import pytest

from tinysparse.training.checkpoint_schema import FIX, CheckpointError, bitgen_to_json

P = "run/ckpt.json"


def refused(message, fix=FIX):
    return pytest.raises(CheckpointError, match="^" + _escape(f"{P} {message}; {fix}") + "$")


def _escape(text):
    import re
    return re.escape(text)


def good_state():
    return bitgen_to_json(np.random.default_rng(5).bit_generator.state)


def stream(**change):
    return {"bit_generator": "SplitMix64", "seed": "7", "counter": "3", **change}
