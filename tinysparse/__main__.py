"""Command line: python -m tinysparse train | sample | map | bench | ledger | convert-checkpoint
(also installed as `tinysparse`).

    python -m tinysparse train                      # the tiny preset on the stdlib corpus
    python -m tinysparse train --preset small --device cuda
    python -m tinysparse train --resume --max-iters 6000
    python -m tinysparse sample --prompt "def " --max-new-tokens 300
    python -m tinysparse map --out-dir out/tiny-adaptive --text tinysparse/gpt.py   # chapter 09
    python -m tinysparse ledger --out-dir out/tiny --train-step   # FLOPs, bytes, energy per token
    python -m tinysparse convert-checkpoint --out-dir out/tiny --i-trust-this-file   # old ckpt.pkl

The flags of `train` are made from the fields of GPTConfig and TrainConfig (cli_parser.py: their
comments are the help text), so a new field is a new flag with nothing to keep in sync. A preset sets both configs;
flags given explicitly override it. Bad input ends with exit status 1 and one line on stderr,
"error: <the problem>; <the fix>", never a traceback (TINYSPARSE_DEBUG=1 shows it), before any
work starts: every numeric flag has a range (NaN and inf are outside all of them), checked by
the configs (GPTConfig, TrainConfig), by check_generate_args for `sample` and by
check_bench_arguments for `bench`. Valid settings that are probably not meant get a "warning:"
line instead. Ctrl-C during training saves a checkpoint and exits with status 130.
"""
import math
import os
import re
import sys

from ._checks import check_int
from .adaptive.compute_map import ansi_text, compute_map
from .cli_parser import _NOT_FLAGS, UsageError, _flag, _given, build_parser
from .engine.backend import DeviceError
from .adaptive.decode import check_generate_args
from .gpt import GPTConfig
from .training.checkpoint import LEGACY_NAME, load_checkpoint
from .training.convert import convert_checkpoint
from .training.config import PRESETS, TrainConfig
from .training.data import load_corpus
from .training.loop import TrainingDiverged, train
from .training.reference import ensure_reference, vs_dense_report
from .training.sampling import causality_warning, load_run, sample_text

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


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
