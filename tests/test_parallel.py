"""Expert parallelism over MPI (tinysparse/parallel, chapter 11): 2 ranks against one process.

The multi-process tests launch `mpiexec -n 2` (tinysparse.parallel.launch, which sets Open MPI's
run-as-root and oversubscribe settings for the project's own launches) on tests/parallel_worker.py,
float64 tiny configurations, a few steps, each launch under a timeout so a hang fails the test.
They skip, with the reason, where mpi4py or mpiexec is missing (the `parallel` extra; CI has it).
"""
import json
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from tinysparse.parallel import ParallelError, SingleProcess, mpi_available
from tinysparse.parallel.exchange import owner_layout

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import layer_case  # noqa: E402
import parallel_worker  # noqa: E402

LAUNCH_TIMEOUT = 240      # seconds per mpiexec launch on a loaded 2-core machine


def _launch_or_skip():
    if not mpi_available():
        pytest.skip("mpi4py is not installed: pip install -e '.[parallel]'")
    from tinysparse.parallel.launch import mpiexec_path
    try:
        mpiexec_path()
    except ParallelError as e:
        pytest.skip(str(e))


def launch(n, *args, timeout=LAUNCH_TIMEOUT):
    """parallel_worker.py ARGS on n ranks; the CompletedProcess (fails on a timeout)."""
    _launch_or_skip()
    from tinysparse.parallel.launch import run_ranks
    try:
        return run_ranks(n, [sys.executable, os.path.join(HERE, "parallel_worker.py"), *args],
                         timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mpiexec -n {n} {' '.join(args)} ran past {timeout} s: a hang")


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


# ---- the equality with one process -----------------------------------------------------------

@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("single"))
    parallel_worker.train(out, 4, resume=False, single=True, float32=False, n_expert=4,
                          capacity=None)
    return np.load(os.path.join(out, "result.npz"))


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two"))
    _ok(launch(2, "train", out, "4"))
    return out


def _compare(a, b):
    """The largest absolute difference over every array, and whether all are bitwise equal."""
    assert sorted(a.files) == sorted(b.files)
    worst = max(float(np.max(np.abs(a[k] - b[k]))) if a[k].size else 0.0 for k in a.files)
    return worst, all(np.array_equal(a[k], b[k]) for k in a.files)


def test_the_float64_patch_is_undone(single_run):
    """The in-process reference run leaves the training loops building float32 models."""
    import tinysparse.parallel.training as ptraining
    import tinysparse.training.loop as loop
    assert loop.GPT is parallel_worker.GPT and ptraining.GPT is parallel_worker.GPT


def test_two_ranks_train_like_one_process_on_the_global_batch(single_run, two_rank_run):
    """4 AdamW steps of a float64 2-layer MoE (E=4, top-2) on 2 ranks: the losses of every
    step, every parameter and AdamW's first moment agree with one process to 1e-6 (they are
    not bitwise equal: the dense gradients are two half-batch sums added, not one sum)."""
    two = np.load(os.path.join(two_rank_run, "result.npz"))
    assert len(two["history"]) == 4
    worst, _ = _compare(single_run, two)
    assert worst < 1e-6
    assert not np.array_equal(single_run["history"], np.zeros(4))
    # the parameters moved: equality is not two copies of the initial weights
    assert np.max(np.abs(single_run["m/h.0.mlp.experts.w1"])) > 0


def test_the_single_process_stand_in_is_bitwise_one_process(single_run, tmp_path):
    """The parallel code path on SingleProcess (P = 1, no MPI): bitwise the plain training."""
    from tinysparse.parallel.training import train_parallel
    mcfg, tcfg = parallel_worker.tiny_configs(str(tmp_path), 4)
    with parallel_worker.float64_models():
        summary = train_parallel(mcfg, tcfg, SingleProcess())
    assert summary["history"] == list(single_run["history"])
    from tinysparse.training.checkpoint import load_checkpoint
    model = load_checkpoint(str(tmp_path))["model"]
    for name, value in model.items():
        assert np.array_equal(value, single_run[f"model/{name}"]), name


def test_resume_on_two_ranks_is_bit_identical(two_rank_run, tmp_path):
    """2 steps, stop, resume to 4 (2 ranks each time) = 4 steps straight, bit for bit; the
    checkpoint rank 0 wrote holds the full experts (the single-process layout)."""
    out = str(tmp_path)
    _ok(launch(2, "train", out, "2"))
    _ok(launch(2, "train", out, "4", "--resume"))
    straight = np.load(os.path.join(two_rank_run, "result.npz"))
    resumed = np.load(os.path.join(out, "result.npz"))
    for k in straight.files:
        if k != "history":
            assert np.array_equal(straight[k], resumed[k]), k
    assert resumed["model/h.0.mlp.experts.w1"].shape[0] == 4
    comm = json.load(open(os.path.join(two_rank_run, "comm.json")))
    # per token and layer, forward: k=2 rows of C=16 float64 leave and come back, about half of
    # them to the other rank: between 0 and 2*2*16*8 = 512 bytes
    assert 0 < comm["bytes_per_token_layer"]["forward"] < 512
    assert comm["bytes_per_token_layer"]["backward"] > 0


# ---- loads: a rank with no rows, uneven loads, capacity across ranks ------------------------

@pytest.fixture(scope="module")
def layer_runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("layers"))
    _ok(launch(2, "layer", out, "all"))
    return out


@pytest.mark.parametrize("case", layer_case.CASES)
def test_layer_on_two_ranks_equals_one_process(layer_runs, case):
    """Output, input gradient and every parameter gradient of one MoE layer, 2 ranks vs one
    process on the global batch: skewed (rank 1 receives no rows), uneven (3:1), capacity
    (rank 0's experts drop rows from both ranks, the same rows as one process)."""
    layer, x = layer_case.make_layer(case)
    out, dx, grads, loss = layer_case.forward_backward(layer, x, layer_case.output_weights(),
                                                       aux_scale=2.0)
    got = np.load(os.path.join(layer_runs, f"layer-{case}.npz"))
    # rank 0's (out, dx) then rank 1's: each rank's half of the batch
    half = [np.concatenate([o.reshape(-1), d.reshape(-1)]) for o, d in
            zip(np.split(out, 2), np.split(dx, 2))]
    np.testing.assert_allclose(got["out_dx"], np.concatenate(half), rtol=0, atol=1e-12)
    assert got["loss"].sum() == pytest.approx(loss, abs=1e-12)
    for name, g in grads.items():
        shards = got[f"grad/{name}"]
        if ".experts." in f".{name}":                        # each rank holds E/2 experts
            np.testing.assert_allclose(shards.reshape(g.shape), g, rtol=0, atol=1e-12,
                                       err_msg=name)
        else:                                                # replicated: the ranks' sum
            np.testing.assert_allclose(shards.sum(axis=0), g, rtol=0, atol=1e-12, err_msg=name)


def test_ledger_counts_the_rows_that_cross(layer_runs):
    """Skewed: rank 1 sends all its 10 tokens' 2 rows (6 float64 numbers each) to rank 0 and
    gets them back from rank 0: 2*6*8 = 96 bytes per token leave rank 1 in the forward pass
    (and nothing stays), 96 leave rank 0 (the answers it returns), and the backward mirrors it.
    Rank 0's own tokens never leave it: 2 rows there and 2 back, 192 bytes per token kept.
    Rank 0 receives every row: the imbalance max/mean is 2.0."""
    for rank, own in ((0, 192.0), (1, 0.0)):
        led = json.load(open(os.path.join(layer_runs, f"ledger-skewed-{rank}.json")))
        assert led["bytes_per_token_layer"] == {"forward": 96.0, "backward": 96.0}
        assert led["bytes_self_per_token_layer"]["forward"] == own
        assert led["imbalance_max"] == 2.0
        assert led["stats"]["tokens_per_expert"] == [20, 20, 0, 0]
    cap = json.load(open(os.path.join(layer_runs, "ledger-capacity-0.json")))
    layer, x = layer_case.make_layer("capacity")
    layer(x)
    assert cap["stats"]["dropped_fraction"] == pytest.approx(layer.stats["dropped_fraction"])
    assert cap["stats"]["dropped_fraction"] > 0


# ---- the pieces, in one process -------------------------------------------------------------

def test_owner_layout_regroups_by_expert_and_drops_beyond_capacity():
    """Received rows arrive source-major: (rank 0: e0 x2, e1 x1), (rank 1: e0 x3, e1 x0)."""
    recv = np.array([[2, 1], [3, 0]])
    index, offsets = owner_layout(recv)
    assert index.tolist() == [0, 1, 3, 4, 5, 2] and offsets.tolist() == [0, 5, 6]
    index, offsets = owner_layout(recv, capacity=3)          # e0 keeps rank 0's 2 + 1 of rank 1's
    assert index.tolist() == [0, 1, 3, 2] and offsets.tolist() == [0, 3, 4]
    index, offsets = owner_layout(np.zeros((2, 2), dtype=int))
    assert index.size == 0 and offsets.tolist() == [0, 0, 0]


def test_exchange_functions_gradcheck():
    import tinysparse as ts
    from tinysparse.parallel.exchange import all_to_all, put_rows, take_rows
    rng = np.random.default_rng(0)
    x = ts.Tensor(rng.normal(size=(5, 3)), requires_grad=True)
    index = np.array([3, 0, 4])
    assert ts.gradcheck(lambda t: take_rows(t, index), x)
    y = ts.Tensor(rng.normal(size=(3, 3)), requires_grad=True)
    assert ts.gradcheck(lambda t: put_rows(t, index, 6), y)
    assert ts.gradcheck(lambda t: all_to_all(t, [5], [5], SingleProcess()), x)


def test_single_process_allreduce_and_alltoallv_are_identities():
    comm = SingleProcess()
    a = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(comm.allreduce_sum(a), a)
    assert np.array_equal(comm.alltoallv(a, [2], [2]), a)
    with pytest.raises(ValueError, match="send counts add up to 3"):
        comm.alltoallv(a, [3], [3])


class _FakeComm(SingleProcess):
    """A world of `size` ranks for the checks that refuse before any collective."""

    def __init__(self, size):
        self.size = size


def test_n_expert_not_divisible_by_ranks_is_refused():
    from tinysparse.moe import MoE
    from tinysparse.parallel import ExpertParallelMoE
    with pytest.raises(ParallelError, match=r"n_expert=4 is not divisible by the 3 ranks.*--n-expert 6"):
        ExpertParallelMoE(MoE(8, 4, top_k=2), _FakeComm(3))


def test_expert_choice_and_adaptive_routers_are_refused():
    from tinysparse.moe import MoE
    from tinysparse.parallel import ExpertParallelMoE
    from tinysparse.adaptive.null_experts import NullExpertRouter
    with pytest.raises(ParallelError, match="token-choice top-k"):
        ExpertParallelMoE(MoE(8, 4, top_k=2, router="expert_choice"), _FakeComm(2))
    null = NullExpertRouter(8, 4, top_k=2, n_null=2)            # a TopKRouter subclass
    with pytest.raises(ParallelError, match="no null experts or top-p"):
        ExpertParallelMoE(MoE(8, 4, top_k=2, router=null), _FakeComm(2))


def test_batch_not_divisible_by_ranks_is_refused(tmp_path):
    from tinysparse.parallel.training import ParallelTrainingRun
    mcfg, tcfg = parallel_worker.tiny_configs(str(tmp_path), 2, batch_size=5)
    with pytest.raises(ParallelError, match="--batch-size 5 does not split over 2 ranks"):
        ParallelTrainingRun(mcfg, tcfg, _FakeComm(2))


def test_dense_model_is_refused(tmp_path):
    from tinysparse.gpt import GPT, GPTConfig
    from tinysparse.parallel import expert_parallel
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=4))
    with pytest.raises(ParallelError, match="needs a model with MoE layers"):
        expert_parallel(model, _FakeComm(2))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tinysparse", "train", *args], env=env,
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def test_cli_parallel_in_one_process_is_one_line(tmp_path):
    if not mpi_available():
        pytest.skip("mpi4py is not installed")
    proc = _cli("--preset", "tiny-moe", "--parallel", "expert", "--out-dir", str(tmp_path))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --parallel expert needs 2 or more processes")
    assert "Traceback" not in proc.stderr


def test_cli_parallel_without_mpi4py_is_one_line(tmp_path):
    """mpi4py hidden by a module that fails to import: the error names the extra to install."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "mpi4py.py").write_text("raise ImportError('no mpi4py here')\n")
    env = dict(os.environ, PYTHONPATH=f"{block}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = _cli("--preset", "tiny-moe", "--parallel", "expert", "--out-dir", str(tmp_path / "r"),
                env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: --parallel needs mpi4py and an MPI: install the extra")
    assert not (tmp_path / "r" / "ckpt.json").exists()


@pytest.mark.parametrize("mode", ["hang", "die"])
def test_a_rank_that_hangs_or_dies_stops_the_job_and_saves_nothing(tmp_path, mode):
    """Rank 1 sleeps (hang) or exits (die) before its first collective: the job ends with an
    error well before the launch timeout (the 5 s watchdog, or mpiexec seeing a rank exit),
    and the run folder holds no checkpoint, whole or half."""
    proc = launch(2, mode, str(tmp_path), timeout=120)
    assert proc.returncode != 0
    if mode == "hang":
        assert "waited more than 5 s: another rank died or hangs" in proc.stderr
    assert not (tmp_path / "ckpt.json").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".safetensors") or ".tmp" in f]


def test_cli_parallel_with_vs_dense_is_refused_in_one_line(tmp_path):
    """--vs-dense trains a dense reference in one process: not under --parallel expert."""
    proc = _cli("--preset", "tiny-moe", "--parallel", "expert", "--vs-dense", "--out-dir",
                str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: --vs-dense trains its dense reference in one process; drop it with --parallel "
        "expert (or train the two runs apart)"]


def test_warnings_are_said_once_by_the_rank_that_writes(tmp_path, capsys):
    from tinysparse.training import loop
    mcfg, tcfg = parallel_worker.tiny_configs(str(tmp_path), 2, 4)
    tcfg = dataclasses.replace(tcfg, warmup_iters=5)             # never leaves warm-up: a warning
    for writes, said in [(True, 1), (False, 0)]:                 # rank 0 / any other rank
        run = loop.TrainingRun(mcfg, tcfg)
        run.writes = writes
        run.loop, run.finish = (lambda: None), (lambda _: "finished")
        assert loop.run_training(run) == "finished"
        assert capsys.readouterr().err.count("warning: --max-iters 2 is below --warmup-iters 5") == said
