"""One field of ckpt.json (checkpoint_schema.field) and the saved configs (check_config): the
types JSON can hold, a missing or overlong value, defaults and unknown fields, each refused with
its exact one-line message."""
import json

from checkpoint_schema_helpers import P, refused
from tinysparse.gpt import GPTConfig
from tinysparse.training.checkpoint_schema import check_config, field
from tinysparse.training.config import TrainConfig


def test_field_types():
    assert field({"a": 3}, "a", int, P) == 3
    value = field({"a": 3}, "a", float, P)
    assert value == 3.0 and type(value) is float           # a JSON integer is a number
    assert field({"a": None}, "a", float, P, optional=True) is None
    with refused("has a = true, which is not an integer"):
        field({"a": True}, "a", int, P)                     # JSON true is not a number
    with refused("has x.a = true, which is not a number"):
        field({"a": True}, "a", float, P, "x")
    with refused("has x.a = null, which is not a number"):
        field({"a": None}, "a", float, P, "x")
    with refused("has no x.b"):
        field({"a": 1}, "b", int, P, "x")
    with refused("has a = a number too large for a float"):
        field({"a": 10 ** 400}, "a", float, P)


def test_long_values_are_shortened_to_40_characters():
    forty = "x" * 38                                         # json.dumps adds the quotes: 40
    with refused(f"has a = {json.dumps(forty)}, which is not an integer"):
        field({"a": forty}, "a", int, P)
    longer = "y" * 39                                        # 41 characters: 37 and "..."
    with refused(f"has a = {json.dumps(longer)[:37]}..., which is not an integer"):
        field({"a": longer}, "a", int, P)


def test_configs_fill_defaults_and_treat_unknown_fields_by_kind():
    model = check_config(GPTConfig, {"n_layer": 2}, P, "model_config", unknown_ok=False)
    assert model == {**GPTConfig().to_dict(), "n_layer": 2}
    train = check_config(TrainConfig, {"max_iters": 7, "lr_decay_iters": None, "wizardry": 1},
                         P, "train_config", unknown_ok=True)
    assert train["max_iters"] == 7 and train["lr_decay_iters"] is None and "wizardry" not in train
    with refused("has model_config fields this tinysparse does not know: a, b",
                 "it was saved by a newer tinysparse: upgrade, or train anew"):
        check_config(GPTConfig, {"b": 1, "a": 2}, P, "model_config", unknown_ok=False)
    with refused('has train_config.lr_decay_iters = "5", which is not an integer or null'):
        check_config(TrainConfig, {"lr_decay_iters": "5"}, P, "train_config", unknown_ok=True)
