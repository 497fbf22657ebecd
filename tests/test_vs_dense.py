"""`train --vs-dense` (make train): per-token costs (ledger/compare.py), the ledger line, and the
dense reference run trained once and reused (training/reference.py). Tiny configs, a few steps."""
import os

import numpy as np
import pytest

import tinysparse as ts
from tinysparse.__main__ import main
from tinysparse.engine.tensor import no_grad
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.ledger import count, energy
from tinysparse.ledger.compare import ledger_line, token_costs
from tinysparse.ledger.report import validation_windows
from tinysparse.training import PRESETS, TrainConfig
from tinysparse.training.reference import reference_configs, reference_problem

SMALL = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.0)


def _val(n=600):
    return np.random.default_rng(3).integers(0, 256, n)


def test_dense_costs_are_the_counted_flops_and_all_weights_once_per_batch():
    ts.manual_seed(0)
    model = GPT(GPTConfig(**SMALL)).eval()
    val = _val()
    c = token_costs(model, val, batches=(1, 4, 64), n_windows=5)
    x, _ = validation_windows(val, 5, 8)
    with no_grad(), count(model) as led:
        model(x)
    assert c["flops"] == pytest.approx(led.per_token(x.size).flops)
    total = sum(p.data.nbytes for p in model.parameters())
    assert c["total_bytes"] == total
    assert c["weight_bytes"] == {1: total, 4: total / 4, 64: total / 64}
    em = energy.get_preset("horowitz-45nm")
    for B in (1, 4, 64):
        want = [a + b for a, b in zip(em.compute_joules(c["flops"]), em.memory_joules(total / B))]
        assert c["energy"][B] == pytest.approx(tuple(want), rel=1e-12)
    assert c["experts_read"] == {}


def test_a_single_token_of_a_top1_moe_reads_one_expert_per_layer():
    ts.manual_seed(0)
    model = GPT(GPTConfig(**SMALL, n_expert=8, top_k=1, d_expert=16)).eval()
    c = token_costs(model, _val(), batches=(1, 64))
    assert c["experts_read"][1] == 1.0                    # top-1: exactly one expert
    assert 1.0 < c["experts_read"][64] <= 8.0
    moe = [m for m in model.modules() if type(m).__name__ == "MoE"][0]
    expert_bank = sum(p.data.nbytes for p in moe.experts.parameters())
    fixed = c["total_bytes"] - expert_bank
    assert c["weight_bytes"][1] == pytest.approx(fixed + expert_bank / 8)   # one of 8 experts
    assert c["weight_bytes"][1] < c["total_bytes"]


def test_the_ledger_line_puts_the_ratios_the_right_way_round():
    sparse = {"flops": 1e5, "energy": {1: (1e-6, 2e-6)}, "energy_model": "horowitz-45nm"}
    dense = {"flops": 4e5, "energy": {1: (3e-6, 8e-6)}, "energy_model": "horowitz-45nm"}
    line = ledger_line("tiny-moe", sparse, 1.5, "dense tiny", dense, 1.75, note="cached")
    assert line.startswith("ledger: tiny-moe 100 kFLOP/token vs dense tiny 400 kFLOP (4.00x fewer)")
    assert "(3.50x less, horowitz-45nm)" in line           # (3 + 4) / 2: each end's ratio
    assert "val loss 1.5000 vs 1.7500 nats (cached)" in line
    assert "\n" not in line


def test_the_reference_takes_the_sparse_runs_loop_settings_and_the_tiny_model(tmp_path):
    tcfg = TrainConfig.from_dict({**PRESETS["tiny-moe"]["train"], "max_iters": 7,
                                  "batch_size": 3, "seed": 5, "out_dir": str(tmp_path / "tiny-moe")})
    mcfg, ref = reference_configs(tcfg)
    assert mcfg == GPTConfig(**PRESETS["tiny"]["model"])
    assert (ref.max_iters, ref.batch_size, ref.seed) == (7, 3, 5)
    assert ref.out_dir == str(tmp_path / "tiny-reference") and ref.sample_tokens == 0
    assert reference_problem(mcfg, ref).startswith("no run in")


TINY_MOE = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
            "--n-expert", "4", "--d-expert", "16", "--batch-size", "2", "--eval-iters", "1",
            "--eval-interval", "3", "--warmup-iters", "1", "--data", "synthetic",
            "--max-bytes", "20000", "--sample-tokens", "10", "--max-iters", "3"]


def test_vs_dense_trains_the_reference_once_and_ends_with_the_ledger_line(tmp_path, capsys):
    out = str(tmp_path / "tiny-moe")
    assert main(["train", "--preset", "tiny-moe", "--vs-dense", "--out-dir", out, *TINY_MOE]) == 0
    first = capsys.readouterr().out
    assert "dense reference: no run in" in first
    assert os.path.exists(os.path.join(tmp_path, "tiny-reference", "ckpt.json"))
    last = first.strip().splitlines()[-1]
    assert last.startswith("ledger: tiny-moe ") and " vs dense tiny " in last
    assert "compute map:" in first.strip().splitlines()[-2]
    assert main(["train", "--preset", "tiny-moe", "--vs-dense", "--out-dir", out, *TINY_MOE]) == 0
    again = capsys.readouterr().out
    assert "trained earlier" in again and again.count("training GPT") == 1   # only the sparse run
    # other loop settings: the cached reference no longer fits and is trained anew
    assert main(["train", "--preset", "tiny-moe", "--vs-dense", "--out-dir", out, *TINY_MOE,
                 "--seed", "9"]) == 0
    assert "trained with other seed" in capsys.readouterr().out


def test_vs_dense_refuses_a_dense_model(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--vs-dense", "--out-dir", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --vs-dense sets a sparse model")
