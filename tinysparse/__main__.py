"""Command line: python -m tinysparse train | sample | map | bench | ledger | convert-checkpoint
(also installed as `tinysparse`).

    python -m tinysparse train                      # the tiny preset on the stdlib corpus
    python -m tinysparse train --preset small --device cuda
    python -m tinysparse train --resume --max-iters 6000
    python -m tinysparse sample --prompt "def " --max-new-tokens 300
    python -m tinysparse map --out-dir out/tiny-adaptive --text tinysparse/gpt.py   # chapter 09
    python -m tinysparse ledger --out-dir out/tiny --train-step   # FLOPs, bytes, energy per token
    python -m tinysparse convert-checkpoint --out-dir out/tiny --i-trust-this-file   # old ckpt.pkl

The flags of `train` are made from the fields of GPTConfig and TrainConfig (their comments are the
help text), so a new field is a new flag with nothing to keep in sync. A preset sets both configs;
flags given explicitly override it. Bad input ends with exit status 1 and one line on stderr,
"error: <the problem>; <the fix>", never a traceback (TINYSPARSE_DEBUG=1 shows it), before any
work starts: every numeric flag has a range (NaN and inf are outside all of them), checked by
the configs (GPTConfig, TrainConfig), by check_generate_args for `sample` and by
check_bench_arguments for `bench`. Valid settings that are probably not meant get a "warning:"
line instead. Ctrl-C during training saves a checkpoint and exits with status 130.
"""
import argparse
import dataclasses
import inspect
import math
import os
import re
import sys
import typing

from . import __version__
from ._checks import check_int
from .adaptive.compute_map import ansi_text, compute_map
from .engine.backend import DeviceError
from .gpt import GPTConfig, check_generate_args
from .training.checkpoint import LEGACY_NAME, load_checkpoint
from .training.convert import TRUST_FLAG, convert_checkpoint
from .ledger.energy import PRESETS as LEDGER_ENERGY
from .training.config import PRESETS, TrainConfig
from .training.data import load_corpus
from .training.loop import TrainingDiverged, train
from .training.reference import ensure_reference, vs_dense_report
from .training.sampling import causality_warning, load_run, sample_text

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130
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


def _model_config(values):
    try:
        return GPTConfig(**values)
    except ValueError as e:
        named = [_flag(n) for n in values if re.search(rf"\b{n}\b", str(e)) and n not in _NOT_FLAGS]
        raise UsageError(f"{e}; change {' or '.join(named) or 'the model flags'}") from None


def cmd_train(args):
    preset = PRESETS[args.preset]
    model_flags, train_flags = _given(args, GPTConfig), _given(args, TrainConfig)
    out_dir = train_flags.get("out_dir", preset["train"]["out_dir"])
    if args.resume:
        ckpt = load_checkpoint(out_dir, resume=True)
        saved = ckpt["model_config"]
        differ = [k for k, v in model_flags.items() if saved.get(k) != v]
        if differ:
            raise UsageError(f"--resume continues the run in {out_dir}, whose model has "
                             f"{', '.join(f'{k}={saved.get(k)}' for k in differ)}; drop "
                             f"{' '.join(_flag(k) for k in differ)} or train anew in another --out-dir")
        model_values = saved
        train_values = {**ckpt["train_config"], **train_flags, "out_dir": out_dir}
        del ckpt
    else:
        model_values = {**preset["model"], **model_flags}
        train_values = {**preset["train"], **train_flags}
    mcfg = _model_config(model_values)
    tcfg = TrainConfig.from_dict(train_values)
    timeout = args.collective_timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--collective-timeout must be a finite number of seconds > 0, got "
                         f"{timeout}")
    ref_dir = None
    if args.vs_dense:
        if not mcfg.n_expert:
            raise UsageError("--vs-dense sets a sparse model (n_expert > 0) against the dense tiny "
                             "preset; drop it for a dense model, or train a sparse preset")
        if args.parallel == "expert":
            raise UsageError("--vs-dense trains its dense reference in one process; drop it with "
                             "--parallel expert (or train the two runs apart)")
        ref_dir, _ = ensure_reference(tcfg, train)      # before: the run's output ends with its own
    if args.parallel == "expert":
        from .parallel.training import train_from_cli
        summary = train_from_cli(mcfg, tcfg, args.resume, args.collective_timeout)
        if summary is None:             # a rank other than 0: rank 0 reports
            return 0
    elif args.collective_timeout is not None:
        raise UsageError("--collective-timeout applies with --parallel expert only")
    else:
        summary = train(mcfg, tcfg, resume=args.resume)
    if summary["status"] == "interrupted":
        return EXIT_INTERRUPTED
    rate = f"{summary['tokens_per_s']:,.0f} tok/s" if summary["tokens_per_s"] else "no steps run"
    print(f"done: step {summary['step']}, val loss {summary['val_loss']:.4f} nats = "
          f"{summary['val_bpb']:.3f} bits/byte (best {summary['best_val_loss']:.4f}), {rate}, "
          f"{summary['train_time_s']:.0f} s training; run folder {summary['out_dir']} "
          f"(`python -m tinysparse sample --out-dir {summary['out_dir']}`)")
    if ref_dir is not None:
        png, line = vs_dense_report(summary["out_dir"], ref_dir)
        print(f"compute map: {png}" if png else
              "compute map: matplotlib is missing (pip install matplotlib): no picture")
        print(line)
    if "parallel" in summary:
        print(_parallel_line(summary))
    return 0


def _parallel_line(summary):
    """Rank 0's communication ledger of a --parallel expert run, in one line."""
    c = summary["parallel"]
    sent = c["bytes_per_token_layer"]
    steps, sec = max(c["steps"], 1), c["step_seconds"]
    a2a = sec.get("Alltoallv of token rows", 0.0) + sec.get("alltoall of counts", 0.0)
    reduce = sec.get("all-reduce (Allgather)", 0.0)
    imbalance = (f"{c['imbalance_mean']:.2f} on average, {c['imbalance_max']:.2f} at worst"
                 if c["imbalance_mean"] is not None else "no tokens")
    return (f"expert parallel on {c['world_size']} ranks (rank 0): sent {sent['forward']:.0f} + "
            f"{sent['backward']:.0f} bytes per token per MoE layer (forward + backward), "
            f"imbalance (most rows a rank received / the mean) {imbalance}; per step {1e3 * a2a / steps:.1f} ms in "
            f"all-to-all and {1e3 * reduce / steps:.1f} ms in all-reduce (waiting included) of "
            f"{1e3 * summary['train_time_s'] / steps:.1f} ms")


SAMPLE_FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
                "top_k": "--top-k"}


def cmd_sample(args):
    if args.top_k < 0:
        raise UsageError(f"--top-k must be an integer >= 0, got {args.top_k}; use e.g. 50 "
                         f"(0: no cut-off)")
    top_k = args.top_k or None
    check_generate_args(args.max_new_tokens, args.temperature, top_k, names=SAMPLE_FLAGS)
    check_int("--seed", args.seed, low=0)
    # The tokens are bytes: take the prompt's own bytes, as the shell gave them (os.fsencode
    # undoes the surrogate escapes Python puts in sys.argv for bytes that are not UTF-8).
    prompt = os.fsencode(args.prompt).replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    if not prompt:
        raise UsageError("--prompt must not be empty; the model needs a first byte, "
                         "e.g. --prompt 'def '")
    model, (model_config, _), _ = load_run(args.out_dir, args.device)
    leak = causality_warning(model_config)
    if leak:
        print(f"warning: {leak}", file=sys.stderr, flush=True)
    print(sample_text(model, prompt, args.max_new_tokens, args.temperature, top_k, args.seed))
    return 0


def cmd_map(args):
    check_int("--max-bytes", args.max_bytes, low=1)
    if not args.out_dir or not args.text:
        raise UsageError("map needs --out-dir RUN (a trained run) and --text FILE (the text to map)")
    with open(args.text, "rb") as f:
        text = f.read(args.max_bytes)
    if not text:
        raise UsageError(f"--text {args.text} is empty; give a file with at least one byte")
    model, _, _ = load_run(args.out_dir)
    dense = load_run(args.dense_run)[0] if args.dense_run else None
    png = args.png or os.path.join(args.out_dir, "compute_map.png")
    try:
        import matplotlib  # noqa: F401  (the plot extra)
    except ImportError:
        png = None
    summary = compute_map(model, text, png, dense, title=os.path.basename(args.text))
    print(f"{summary['tokens']} bytes, mean {summary['mean_flops']:,.0f} matmul FLOPs per token "
          f"(min {summary['flops'].min():,.0f}, max {summary['flops'].max():,.0f})")
    print(f"Spearman rho (FLOPs vs surprisal under the {'dense' if dense else 'same'} model): "
          f"{summary['spearman']:.3f}")
    for name, (mean, n) in summary["class_means"].items():
        print(f"  {name:<12}{n:>6} bytes  {mean:>12,.0f} FLOPs per token")
    if png is None or args.ansi:
        print(ansi_text(summary["ids"], summary["flops"]))
    print(f"wrote {png}" if png else "matplotlib is missing (pip install matplotlib): no picture")
    return 0


def cmd_ledger(args):
    from .ledger.report import format_report, ledger_report
    check_int("--batch-size", args.batch_size, low=1, hint="e.g. 8")
    model, (mcfg, tcfg), _ = load_run(args.out_dir, args.device)
    corpus = load_corpus(tcfg.data, mcfg.block_size, tcfg.max_bytes, seed=tcfg.seed)
    png = None if args.no_roofline else os.path.join(args.out_dir, "ledger_roofline.png")
    result = ledger_report(model, corpus.val, args.batch_size, args.train_step,
                           args.energy_model, png, measure_roofline=not args.no_roofline)
    print(f"run folder {args.out_dir}")
    print(format_report(result))
    return 0


def cmd_convert(args):
    path = convert_checkpoint(args.out_dir, trust=args.trust)
    print(f"converted: {path} (and its arrays file); the old {LEGACY_NAME} is left as it was: "
          f"delete it once `python -m tinysparse sample --out-dir {args.out_dir}` works")
    return 0


def cmd_bench(args):
    from .bench import check_bench_arguments, run_bench   # lazy: benchmarks may import torch
    check_bench_arguments(args)        # a bad flag is an error line before anything is timed
    return run_bench(args) or 0


def _load_bench():
    """The bench module's add_bench_arguments, or an error message when it cannot be loaded."""
    try:
        from . import bench
    except ModuleNotFoundError as e:
        if e.name == "tinysparse.bench":
            return None, "the bench command is not available: tinysparse/bench/ is missing"
        return None, f"the benchmarks need {e.name!r}, which is not installed; install it with pip"
    except ImportError as e:
        return None, f"cannot load the benchmarks ({e})"
    if not hasattr(bench, "run_bench"):
        return None, "tinysparse/bench/ has no run_bench(args); the bench command is not ready"
    return getattr(bench, "add_bench_arguments", None), None


def _one_line(e):
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    bench_arguments = None
    if argv[:1] == ["bench"]:
        bench_arguments, problem = _load_bench()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_ERROR
    args = build_parser(bench_arguments).parse_args(argv)
    command = {"train": cmd_train, "sample": cmd_sample, "bench": cmd_bench, "map": cmd_map,
               "ledger": cmd_ledger, "convert-checkpoint": cmd_convert}[args.command]
    try:
        return int(command(args))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, KeyError, DeviceError, TrainingDiverged, OSError, MemoryError) as e:
        if os.environ.get("TINYSPARSE_DEBUG"):
            raise
        print(f"error: {_one_line(e)}{_hint(e)}", file=sys.stderr)
        return EXIT_ERROR


def _hint(e):
    """The command line's way out, for errors whose message (the library's) cannot know it."""
    if isinstance(e, OSError):
        return "; check the path and its permissions"
    if isinstance(e, DeviceError) and "--device" not in str(e):
        return "; use --device cpu"
    if isinstance(e, MemoryError):
        return "; out of memory: use a smaller model or batch (--n-embd, --block-size, --batch-size)"
    return ""


if __name__ == "__main__":
    sys.exit(main())
