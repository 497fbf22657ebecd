"""The command line's parser: `python -m tinysparse --help` and every subcommand's flags.

The flags of `train` are made from the fields of GPTConfig and TrainConfig: each field is a flag
(`n_embd` -> `--n-embd`, default None = not given, so a preset's value stays), its type from the
annotation, its help text from the comment after the field in the dataclass's source. A new field
is a new flag, with nothing to keep in sync. The commands themselves are in __main__.py.
"""
import argparse
import dataclasses
import inspect
import re
import typing

from . import __version__
from .gpt import GPTConfig
from .ledger.energy import PRESETS as LEDGER_ENERGY
from .training.config import PRESETS, TrainConfig
from .training.convert import TRUST_FLAG

_NOT_FLAGS = {"vocab_size"}     # fixed by the byte tokenizer
_EXTRA = {"device": {"choices": ["cpu", "cuda", "auto"], "metavar": "{cpu,cuda,auto}"}, "data": {"metavar": "SPEC"},
          "out_dir": {"help": "run folder: ckpt.json and its ckpt-*.safetensors, config.json, "
                              "log.jsonl (default out/<preset>)"}}


class UsageError(ValueError):
    """Bad combination of flags, found after parsing."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistyped flag or value costs one line, not the whole usage (train's runs
    to 30 lines): "error: tinysparse train: argument --preset: invalid choice ...; see ... --help",
    status 2 as argparse's own."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}; see `python -m {self.prog} --help`\n")


def _field_docs(cls):
    """{field: the comment after it in the class source, with its continuation lines}: the help
    text of each flag, so the comments in the dataclass are the documentation in one place."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs, current = {}, None
    for line in lines:
        field = re.match(r"^\s+(\w+)\s*:[^=#]*=[^#]*#\s*(.+?)\s*$", line)
        more = re.match(r"^\s+#\s*(.+?)\s*$", line)
        if field:
            current = field.group(1)
            docs[current] = field.group(2)
        elif more and current:
            docs[current] += " " + more.group(1)
        else:
            current = None
    return docs


def _flag(name):
    return "--" + name.replace("_", "-")


def _add_config_flags(group, cls):
    """One flag per dataclass field, default None (= not given, keep the preset's value)."""
    docs, hints = _field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in _NOT_FLAGS:
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if args else kind                 # int | None -> int
        kw = {"default": None, "help": docs.get(f.name, "").replace("%", "%%")}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=kind, metavar=f.name.split("_")[-1].upper())
        kw.update(_EXTRA.get(f.name, {}))
        group.add_argument(_flag(f.name), **kw)


def build_parser(bench_arguments=None):
    parser = _Parser(prog="tinysparse", description="Train and sample tiny GPTs "
                                     "(and, later, sparse models) on a from-scratch NumPy engine.")
    parser.add_argument("--version", action="version", version=f"tinysparse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,sample,map,bench,ledger,convert-checkpoint}")

    presets = "; ".join(f"{k}: {v['model']}" for k, v in PRESETS.items())
    tr = sub.add_parser("train", help="train a GPT (then print a sample)",
                        description="Train a GPT, saving checkpoints in the run folder.",
                        epilog=f"presets: {presets}")
    tr.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                    help="model and training settings to start from (default tiny)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --out-dir from its checkpoint (its configs apply; "
                         "training flags given here override them)")
    tr.add_argument("--vs-dense", action="store_true",
                    help="for a sparse model: train the dense tiny preset once with the same loop "
                         "settings (cached beside the run, e.g. out/tiny-reference), then end with "
                         "the compute-map PNG and one ledger line: FLOPs and modelled energy per "
                         "token and both validation losses (what `make train` runs)")
    tr.add_argument("--parallel", choices=["none", "expert"], default="none",
                    help="expert: spread each MoE layer's experts over the MPI ranks (run under "
                         "mpiexec -n P, or make train-parallel NP=P; chapter 11)")
    tr.add_argument("--collective-timeout", type=float, default=None, metavar="SECONDS",
                    help="with --parallel: stop every rank when one collective waits longer "
                         "(a rank died or hangs; default 300)")
    _add_config_flags(tr.add_argument_group("training (TrainConfig)"), TrainConfig)
    _add_config_flags(tr.add_argument_group("model (GPTConfig)"), GPTConfig)

    sa = sub.add_parser("sample", help="print text from a trained run",
                        description="Sample text from the checkpoint of a training run.")
    sa.add_argument("--out-dir", default=PRESETS["tiny"]["train"]["out_dir"],
                    help="run folder to load (default: out/tiny, the tiny preset's, where `train` "
                         "with no --preset saves; `make sample` passes out/$(PRESET))")
    sa.add_argument("--prompt", default="\n", help="text to continue; \\n and \\t are newline and "
                    "tab (default: a newline)")
    sa.add_argument("--max-new-tokens", type=int, default=500, help="bytes to generate (default 500)")
    sa.add_argument("--temperature", type=float, default=0.8,
                    help="> 0; lower is more conservative (default 0.8)")
    sa.add_argument("--top-k", type=int, default=50,
                    help="sample among the k likeliest bytes; 0 for all (default 50)")
    sa.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sa.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")

    mp = sub.add_parser("map", help="draw the compute each token of a text takes (chapter 09)",
                        description="Run a text through a trained model as sampling would (KV "
                        "cache, causal rules, early exits) and draw each byte coloured by its "
                        "matmul FLOPs, what ran per layer, FLOPs against surprisal and by token "
                        "class (tinysparse/adaptive/compute_map.py).")
    mp.add_argument("--out-dir", help="the run folder of the model to map (required)")
    mp.add_argument("--text", help="a text file to map, its first --max-bytes (required)")
    mp.add_argument("--png", help="where to write the picture (default OUT_DIR/compute_map.png)")
    mp.add_argument("--max-bytes", type=int, default=1024, help="bytes of the text (default 1024)")
    mp.add_argument("--dense-run", help="a run folder whose model gives the surprisal (default: "
                    "the mapped model itself)")
    mp.add_argument("--ansi", action="store_true", help="also print the text coloured for a "
                    "terminal (always, when matplotlib is missing)")

    le = sub.add_parser("ledger", help="FLOPs, bytes and energy per token of a trained run",
                        description="Count the FLOPs and bytes a trained run executes per token "
                        "on validation text (tinysparse/ledger/), with modelled and measured "
                        "energy, the analytic estimate, a roofline and, for a MoE, weight bytes "
                        "against batch size.")
    le.add_argument("--out-dir", default=PRESETS["tiny"]["train"]["out_dir"],
                    help="run folder to load (default: out/tiny, the tiny preset's; `make "
                         "ledger` passes out/$(PRESET))")
    le.add_argument("--batch-size", type=int, default=8,
                    help="validation windows of block_size tokens to count (default 8)")
    le.add_argument("--train-step", action="store_true",
                    help="also count one training step (forward + backward)")
    le.add_argument("--energy-model", default="horowitz-45nm", choices=sorted(LEDGER_ENERGY),
                    help="modelled energy preset (default horowitz-45nm)")
    le.add_argument("--no-roofline", action="store_true",
                    help="skip measuring this machine's ceilings and the roofline plot")
    le.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")

    cv = sub.add_parser("convert-checkpoint", help="convert an old pickle checkpoint (ckpt.pkl) "
                        "that you made yourself", description="Convert the ckpt.pkl of a run "
                        "folder (tinysparse's old format) into ckpt.json + a safetensors file. "
                        "Reading a pickle can run any code in it: convert only your own files.")
    cv.add_argument("--out-dir", required=True, help="the run folder that holds ckpt.pkl")
    cv.add_argument(TRUST_FLAG, action="store_true", dest="trust",
                    help="you made this file yourself and accept that reading it runs its code")

    be = sub.add_parser("bench", help="time training steps and MoE layers against PyTorch",
                        description="Benchmarks (see tinysparse/bench/).")
    if bench_arguments is not None:
        bench_arguments(be)
    return parser


def _given(args, cls):
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}
