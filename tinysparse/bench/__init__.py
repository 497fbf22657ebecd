"""Benchmarks, each side by side with its PyTorch twin in one run: `python -m tinysparse bench`.

Suites, one file each:

    dense.py        step: the dense GPT's training step vs PyTorch's
    moe.py          moe: MoE training steps (tinysparse vs a PyTorch loop over experts) and dense
    layer.py        layer: one MoE layer forward+backward per dispatch backend vs a dense FFN
    gpu_check.py    `make gpu-check`: kernel tests, timings and a short training on a real GPU

common.py holds what they share (alternating timed steps, thread limits, seeded models);
torch_twins.py the PyTorch models, built from tinysparse's weights; profile.py the per-Function
profile (--profile). Imports go one way: suites -> common, profile, torch_twins.
"""
SUITES = ("step", "moe", "layer")


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
    g.add_argument("--suite", choices=SUITES, nargs="+", default=list(SUITES),
                   help="which benchmarks: step (dense GPT vs PyTorch), moe (MoE training steps), "
                        "layer (MoE layer forward+backward per dispatch backend); default all")
    g.add_argument("--dispatch-backend", default="auto",
                   help="MoE dispatch backend of the moe suite (auto, numpy, numba, ...)")
    g.add_argument("--layer-tokens", type=int, default=1024,
                   help="tokens T of the layer suite's forward+backward")
    g.add_argument("--profile", action="store_true",
                   help="also profile tinysparse steps: where the time goes, per Function")
    return parser


def run_bench(args):
    """Run the chosen suites (default: all); 0 when every twin agreed, 1 otherwise, 2 on bad flags."""
    if args.iters < 1 or args.warmup < 0:
        print(f"bench: --iters must be at least 1 and --warmup at least 0, got {args.iters}, {args.warmup}")
        return 2
    suites = getattr(args, "suite", ["step"])
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
    return status
