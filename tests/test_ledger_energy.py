"""The ledger's energy model (hand-computed), measured energy (a fake RAPL tree), the roofline's
placement, and MoE weight bytes against batch size."""
import itertools
import math

import numpy as np
import pytest

import tinysparse as ts
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.ledger import Figures, measure, moe_bytes, roofline
from tinysparse.ledger.energy import PRESETS, EnergyModel, get_preset
from tinysparse.moe.dispatch import get_backend


def test_energy_model_on_a_hand_computed_example():
    """1e9 FLOPs (6e8 matmul + 4e8 other) and 1e6 bytes, Horowitz 45 nm, float32 from DRAM:
    compute 1e9 x 0.9 pJ = 0.9 mJ to 1e9 x 3.7 pJ = 3.7 mJ; memory 1e6 x 1300/8 pJ = 0.1625 mJ
    to 1e6 x 2600/8 pJ = 0.325 mJ; total 1.0625 to 4.025 mJ. The weights-once floor: 2e5 bytes,
    0.0325 to 0.065 mJ."""
    f = Figures(flops_matmul=6e8, flops_other=4e8, bytes_rw=1e6, weight_bytes_touched=2e5)
    e = PRESETS["horowitz-45nm"].estimate(f)
    assert e.compute == pytest.approx((0.9e-3, 3.7e-3))
    assert e.memory == pytest.approx((1.625e-4, 3.25e-4))
    assert e.total == pytest.approx((1.0625e-3, 4.025e-3))
    floor = PRESETS["horowitz-45nm"].estimate(f, bytes_figure="weight_bytes_touched")
    assert floor.memory == pytest.approx((3.25e-5, 6.5e-5))
    # HBM2 3.97 pJ/bit = 31.76 pJ/byte, half of it at the low end
    hbm = PRESETS["hbm-accelerator"].estimate(f)
    assert hbm.memory == pytest.approx((1e6 * 15.88e-12, 1e6 * 31.76e-12))
    sram = PRESETS["horowitz-45nm"].memory_joules(8, "sram_8kb")      # one 64-bit access: 10 pJ
    assert sram == pytest.approx((10e-12, 10e-12))
    assert PRESETS["horowitz-45nm"].memory_joules(8) == pytest.approx((1.3e-9, 2.6e-9))  # DRAM
    assert PRESETS["horowitz-45nm"].compute_joules(2) == pytest.approx((1.8e-12, 7.4e-12))


def test_energy_model_refuses_what_it_has_no_number_for():
    model = EnergyModel("toy", {"float32": (1.0, 2.0)}, {"dram": (3.0, 4.0)})
    assert model.compute_joules(1e12) == pytest.approx((1.0, 2.0))
    with pytest.raises(ValueError, match="no dtype 'float64'.*float32"):
        model.compute_joules(1, "float64")
    with pytest.raises(ValueError, match="no memory level 'hbm'"):
        model.memory_joules(1, "hbm")
    with pytest.raises(ValueError, match="bytes_figure"):
        model.estimate(Figures(), bytes_figure="bytes")
    with pytest.raises(ValueError, match="horowitz-45nm"):
        get_preset("nope")


def _fake_rapl(root, energy_uj, wrap=10_000_000, packages=1):
    """A powercap tree: packages intel-rapl:N with a core sub-domain intel-rapl:N:0 each (sorted,
    a sub-domain comes between two packages), and a domain without a name file."""
    for n in range(packages):
        for name, sub in ((f"package-{n}", f"intel-rapl:{n}"), ("core", f"intel-rapl:{n}:0")):
            d = root / sub
            d.mkdir(parents=True, exist_ok=True)
            (d / "name").write_text(name + "\n")
            (d / "energy_uj").write_text(f"{energy_uj}\n")
            (d / "max_energy_range_uj").write_text(f"{wrap}\n")
    (root / "intel-rapl:9").mkdir(exist_ok=True)
    return [root / f"intel-rapl:{n}" / "energy_uj" for n in range(packages)]


@pytest.fixture
def no_nvml(monkeypatch):
    def missing():
        raise ImportError("No module named 'pynvml'")
    monkeypatch.setattr(measure, "_Nvml", missing)


def test_rapl_is_read_with_its_wraparound(tmp_path, no_nvml):
    counters = _fake_rapl(tmp_path, 1_000_000, packages=2)
    with measure.EnergyMeter(str(tmp_path)) as meter:
        counters[0].write_text("3500000\n")             # +2.5 J; the core sub-domains are not added
        counters[1].write_text("1250000\n")             # +0.25 J in the second package
    assert meter.joules == 2.75 and "RAPL" in meter.source
    counters[0].write_text("9000000\n")
    with measure.EnergyMeter(str(tmp_path)) as meter:
        counters[0].write_text("500000\n")              # wrapped at 10 J: 1 J + 0.5 J
    assert meter.joules == 1.5
    with measure.EnergyMeter(str(tmp_path)) as meter:
        pass                                             # no change is 0 J, not a wrap
    assert meter.joules == 0.0


def test_nvml_counter_difference_and_errors_pass_through(monkeypatch):
    class FakeNvml:
        source = "fake NVML"
        readings = itertools.count(1000.0, 3.5)          # each read 3.5 J after the last

        def read(self):
            return next(self.readings)
    monkeypatch.setattr(measure, "_Nvml", FakeNvml)
    import time
    t0 = time.perf_counter()
    with measure.EnergyMeter() as meter:
        pass
    outer = time.perf_counter() - t0
    assert meter.joules == 3.5 and meter.source == "fake NVML" and meter.why is None
    assert 0 <= meter.seconds <= outer
    with pytest.raises(KeyError):
        with measure.EnergyMeter():
            raise KeyError("the meter must not swallow errors")


def test_nothing_measurable_says_so(tmp_path, no_nvml):
    with measure.EnergyMeter(str(tmp_path / "no-powercap")) as meter:
        pass
    assert meter.joules is None and meter.source is None
    assert meter.why.startswith("not measurable on this machine")
    assert "nvidia-ml-py" in meter.why and "RAPL" in meter.why
    assert meter.seconds >= 0


def test_roofline_places_ops_by_intensity(tmp_path):
    ceilings = roofline.Ceilings(peak_flops=100e9, bandwidth=10e9, matmul_n=1, copy_bytes=1)
    assert ceilings.ridge == pytest.approx(10.0)
    table = [("copy", Figures(bytes_rw=50)),
             ("dense", Figures(flops_matmul=1000, bytes_rw=10)),
             ("no bytes", Figures(flops_other=5)),
             ("elementwise", Figures(flops_other=100, bytes_rw=100)),
             ("at the ridge", Figures(flops_other=10, bytes_rw=1)),
             ("one flop", Figures(flops_other=1, bytes_rw=1))]
    rows = {r.name: r for r in roofline.place(table, ceilings)}
    # a copy has no FLOPs to place, an op without bytes no intensity
    assert set(rows) == {"dense", "elementwise", "at the ridge", "one flop"}
    assert (rows["dense"].flops, rows["dense"].bytes_rw, rows["dense"].intensity) == (1000, 10, 100)
    assert rows["at the ridge"].bound == "compute" and rows["one flop"].bound == "memory"
    assert rows["dense"].bound == "compute" and rows["dense"].attainable == pytest.approx(100e9)
    assert rows["elementwise"].bound == "memory"
    assert rows["elementwise"].attainable == pytest.approx(10e9)  # 10 GB/s x 1 FLOP/byte
    pytest.importorskip("matplotlib")
    path = roofline.plot(list(rows.values()), ceilings, str(tmp_path / "r.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_ceilings_are_measured_numbers():
    c = roofline.measure_ceilings(matmul_n=64, repeats=1, copy_bytes=1 << 20)
    assert math.isfinite(c.peak_flops) and c.peak_flops > 0
    assert math.isfinite(c.bandwidth) and c.bandwidth > 0 and c.copy_bytes == 1 << 20
    assert roofline.last_level_cache_bytes() > 0


def test_uniform_distinct_experts():
    assert moe_bytes.uniform_distinct_experts(16, 2, 1) == pytest.approx(2.0)
    assert moe_bytes.uniform_distinct_experts(16, 2, 8) == pytest.approx(16 * (1 - (7 / 8) ** 8))
    assert moe_bytes.uniform_distinct_experts(16, 2, 10_000) == pytest.approx(16.0)


def test_distinct_experts_from_a_plan():
    plan = get_backend("numpy").plan(np.array([[0, 3], [3, 1], [0, 3]]), 5)
    use = moe_bytes.expert_use(plan, 3, 5)
    assert use.tolist() == [[True, False, False, True, False], [False, True, False, True, False],
                            [True, False, False, True, False]]
    rng = np.random.default_rng(0)
    assert moe_bytes.mean_distinct(use, 3, rng) == 3.0          # the whole batch: experts 0, 1, 3
    assert moe_bytes.mean_distinct(use, 1, rng) == 2.0
    with pytest.raises(ValueError, match="at least 4 routed tokens"):
        moe_bytes.mean_distinct(use, 4, rng)


def test_moe_bytes_per_token_against_batch(rng):
    """At B = 1 a top-k MoE reads exactly its active weights, as the dense model of equal active
    FLOPs does; from there on it reads more experts than k and its bytes per token exceed it."""
    ts.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32,
                          n_expert=6, top_k=2, d_expert=8, dispatch_backend="numpy"))
    idx = rng.integers(0, 32, (16, 8))
    model.train()
    rows = moe_bytes.bytes_vs_batch(model, idx, batches=(1, 8, 64, 128), n_batches=16)
    assert model.training                                   # its mode is given back
    assert rows[0].distinct == 2.0
    assert rows[0].moe_bytes_per_token == pytest.approx(rows[0].dense_bytes_per_token)
    assert all(r.moe_bytes_per_token > r.dense_bytes_per_token for r in rows[1:])
    assert rows[2].distinct <= 6 and rows[2].uniform == pytest.approx(6.0, abs=1e-9)
    # B = all 128 tokens: every batch is the whole set, so the bytes are exact, counted by hand
    uses, layers = moe_bytes.routing_of(model, idx)
    experts = [int(u.any(axis=0).sum()) for u in uses]
    assert rows[3].distinct == pytest.approx(np.mean(experts))
    per_expert = (16 * 8 + 8 + 8 * 16 + 16) * 4                      # w1, b1, w2, b2 of one expert
    every = sum(p.data.nbytes for p in model.parameters())
    fixed = every - 2 * 6 * per_expert
    assert rows[3].moe_bytes_per_token == pytest.approx((fixed + sum(experts) * per_expert) / 128)
    assert rows[3].dense_bytes_per_token == pytest.approx((fixed + 2 * 2 * per_expert) / 128)
    with pytest.raises(ValueError, match="Mixture-of-Experts"):
        moe_bytes.bytes_vs_batch(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8,
                                               vocab_size=32)), idx)



def test_a_moe_layer_that_no_token_reached_reads_no_expert(rng):
    """A Mixture-of-Depths block whose router chooses no token in eval mode never runs its MoE:
    that layer's routing is all False for this forward (it crashed on None before, and could
    have read the routing of an earlier forward)."""
    ts.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32,
                          n_expert=6, top_k=2, d_expert=8, dispatch_backend="numpy",
                          mod_capacity=0.5, mod_every=2))
    idx = rng.integers(0, 32, (4, 8))
    model.train()
    model(idx)                                                    # every layer has routed once
    routed = [m for m in model.modules() if hasattr(m, "eval_rule")][0]
    routed.router.weight.data[...] = 0.0                          # logits 0: 'causal' runs none
    uses, layers = moe_bytes.routing_of(model, idx)
    assert len(uses) == 2 and uses[0].any(axis=1).all()           # the first block: every token
    assert not uses[1].any()                                      # the routed block: nobody
    rows = moe_bytes.bytes_vs_batch(model, idx, batches=(1, 8), n_batches=4)
    assert rows[0].distinct == 1.0                                # (2 + 0) / 2 layers
