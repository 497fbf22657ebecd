"""Benchmarks, each side by side with its PyTorch twin in one run: `python -m tinysparse bench`.

Suites, one file each:

    dense.py        step: the dense GPT's training step vs PyTorch's, and (scaling.py) the
                    same on 1 thread and on --threads: which parts gain from the threads
    moe.py          moe: MoE training steps (tinysparse vs a PyTorch loop over experts) and dense
    layer.py        layer: one MoE layer forward+backward per dispatch backend vs a dense FFN
    grouped.py      gmm: the grouped matmul (forward, dX, dW) per strategy vs one dense matmul
                    of equal FLOPs, the BLAS's speed at both shapes, awkward routings
    grouped_why.py  gmm's table of why: routed/dense = shape x weights x uneven rows, per E
    sampling.py     sampling: tokens/s of GPT.generate with and without the KV cache, and the
                    dense model's cached greedy decoding against its PyTorch twin's (not in
                    the default set: --suite sampling)
    gpu_check.py    `make gpu-check`: kernel tests, timings and a short training on a real GPU

common.py holds what they share (alternating timed steps, thread limits, seeded models);
torch_twins.py the PyTorch models, built from tinysparse's weights; torch_decode.py the twin's
KV-cached greedy decoding; profile.py the per-Function profile (--profile); targets.py the
table of issue 16's targets that every run ends with. Imports go one way: suites -> common,
profile, targets, torch_twins, torch_decode.
"""
SUITES = ("step", "moe", "layer", "gmm", "decode", "sampling")
DEFAULT_SUITES = ("step", "moe", "layer", "gmm", "decode")


def add_bench_arguments(parser):
    g = parser.add_argument_group("bench")
    g.add_argument("--iters", type=int, default=20, help="timed training steps per framework")
    g.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, caches)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--n-embd", type=int, default=128)
    g.add_argument("--block-size", type=int, default=64, help="sequence length T of every sample")
    g.add_argument("--vocab-size", type=int, default=96)
    g.add_argument("--threads", type=int, default=2, help="BLAS / torch threads for both frameworks")
    g.add_argument("--no-torch", action="store_true", help="time tinysparse alone")
    g.add_argument("--settle", type=float, default=0.15,
                   help="seconds to pause (untimed) before each step while alternating frameworks")
    g.add_argument("--suite", choices=SUITES, nargs="+", default=list(DEFAULT_SUITES),
                   help="which benchmarks: step (dense GPT vs PyTorch), moe (MoE training steps), "
                        "layer (MoE layer forward+backward per dispatch backend), gmm (grouped "
                        "matmul vs a dense one of equal FLOPs), decode (cached greedy sampling "
                        "vs the PyTorch twin), sampling (generate with and without the KV cache, "
                        "and decode's table); default step moe layer gmm decode")
    g.add_argument("--dispatch-backend", default="auto",
                   help="MoE dispatch backend of the moe suite (auto, numpy, numba, ...)")
    g.add_argument("--layer-tokens", type=int, default=1024,
                   help="tokens T of the layer suite's forward+backward")
    g.add_argument("--profile", action="store_true",
                   help="also profile tinysparse: where the time goes, per Function (training "
                        "steps, sampling) and per dispatch primitive (MoE layer)")
    return parser


# the smallest value each numeric flag takes (argparse makes them ints, --settle a float)
_AT_LEAST = {"iters": 1, "warmup": 0, "batch_size": 1, "n_layer": 1, "n_head": 1, "n_embd": 1,
             "block_size": 1, "vocab_size": 1, "threads": 1, "layer_tokens": 1}


def check_bench_arguments(args):
    """A ValueError naming the first flag outside its range (NaN and inf included)."""
    from .._checks import check_int, check_number
    for name, low in _AT_LEAST.items():
        if hasattr(args, name):
            check_int(f"--{name.replace('_', '-')}", getattr(args, name), low=low)
    if hasattr(args, "settle"):
        check_number("--settle", args.settle, low=0, hint="it is in seconds (0: no pause)")
    if hasattr(args, "n_embd") and args.n_embd % args.n_head:
        raise ValueError(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")


def run_bench(args):
    """Run the chosen suites (default: all); 0 when every twin agreed, 1 otherwise, 2 on bad flags."""
    try:
        check_bench_arguments(args)
    except ValueError as e:
        print(f"bench: {e}")
        return 2
    suites = getattr(args, "suite", ["step"])
    from . import targets
    targets.reset()
    status = 0
    if "step" in suites:
        from .dense import run_dense_bench
        status |= run_dense_bench(args)
    if "moe" in suites:
        from .moe import run_moe_bench
        status |= run_moe_bench(args)
    if "layer" in suites:
        from .layer import run_layer_bench
        status |= run_layer_bench(args)
    if "gmm" in suites:
        from .grouped import run_grouped_bench
        status |= run_grouped_bench(args)
    if "decode" in suites and "sampling" not in suites:      # sampling prints decode's table too
        from .sampling import run_decode_bench
        status |= run_decode_bench(args)
    if "sampling" in suites:
        from .sampling import run_sampling_bench
        status |= run_sampling_bench(args)
    targets.print_targets()
    return status
