"""The compute map (adaptive/trace.py, adaptive/compute_map.py, `python -m tinysparse map`)."""
import sys

import numpy as np
import pytest

import tinysparse as ts
from tinysparse.adaptive import compute_map as cm
from tinysparse.adaptive.trace import trace
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.training import PRESETS

TEXT = b"def f(x):\n    return x + 42  # answer\n\nclass A_b:\n    pass\n"


def _model(**extra):
    ts.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, n_layer=3, n_head=2, n_embd=16, block_size=16, **extra))
    for p in model.parameters():
        p.data = p.data * 6
    return model.eval()


ADAPTIVE = dict(n_expert=4, top_k=2, d_expert=8, n_null=2, mod_capacity=0.5, exit_scale=1.0,
                exit_threshold=0.4)


def test_the_trace_is_the_decoding_steps_compute_and_the_models_surprisal():
    model = _model(**ADAPTIVE)
    ids = np.frombuffer(TEXT, dtype=np.uint8).astype(np.int64)
    out = trace(model, ids)
    assert out["flops"].shape == (ids.size,) and out["work"].shape == (3, ids.size)
    assert len(np.unique(out["flops"])) > 3                   # tokens took different compute
    assert (out["work"][1] == 0).any()                         # the MoD block skips tokens
    assert set(np.unique(out["work"][0])) <= {0.0, 0.5, 1.0}   # 0, 1 or 2 real experts of top-2
    assert np.isnan(out["surprisal"][[0, 16, 32]]).all()       # each window's first token
    # the second token's surprisal: -log p under the model given the first, from a plain forward
    with ts.no_grad():
        logits, _ = model(ids[None, :1])
    z = logits.data[0, -1].astype(np.float64)
    expected = -(z[ids[1]] - z.max() - np.log(np.exp(z - z.max()).sum()))
    assert np.isclose(out["surprisal"][1], expected, rtol=1e-4)
    dense = _model()
    with_dense = trace(model, ids, dense)
    np.testing.assert_array_equal(with_dense["flops"], out["flops"])
    assert not np.allclose(with_dense["surprisal"][1:16], out["surprisal"][1:16])


def test_a_dense_token_pays_only_for_its_longer_context():
    """Decoding a dense model: every token runs everything; the t-th of a window attends over t
    keys, 4*C more FLOPs per layer than the one before (the map's only gradient)."""
    out = cm.compute_map(_model(), TEXT)
    assert (out["work"] == 1).all()
    steps = np.diff(out["flops"][:48].reshape(3, 16), axis=1)   # three full windows of 16
    assert (steps == 4 * 16 * 3).all()


def test_token_classes_and_their_means():
    assert [cm.token_class(b) for b in b" \n(x_7\xc3"] == [
        "whitespace", "whitespace", "punctuation", "identifier", "identifier", "digit", "other"]
    means = cm.class_means(np.frombuffer(b"a 1a", dtype=np.uint8), np.array([1.0, 5.0, 7.0, 3.0]))
    assert means == {"whitespace": (5.0, 1), "identifier": (2.0, 2), "digit": (7.0, 1)}
    assert list(cm.class_means(np.frombuffer(b"(1", dtype=np.uint8), np.ones(2))) == [
        "digit", "punctuation"]


def test_spearman_ranks_and_ignores_missing_surprisal():
    flops = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert cm.spearman(flops, np.array([np.nan, 10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert cm.spearman(flops, np.array([np.nan, 4.0, 3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_the_png_and_the_ansi_fallback(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    png = tmp_path / "map.png"
    out = cm.compute_map(_model(**ADAPTIVE), TEXT, png=png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out["tokens"] == len(TEXT)
    text = cm.ansi_text(out["ids"], out["flops"])
    assert "\x1b[48;5;" in text and text.count("\n") == TEXT.count(b"\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # as if it were not installed
    with pytest.raises(ImportError):
        cm.compute_map(_model(), TEXT, png=tmp_path / "no.png")


def test_the_preset_builds_and_the_map_command_runs(tmp_path):
    model = GPT(GPTConfig(**PRESETS["tiny-adaptive"]["model"]))
    assert model.moe_layers() and len([b for b in model.h if hasattr(b, "last")]) == 2
    from test_cli import TINY, assert_one_line_error, run
    proc = run("train", *TINY, "--max-iters", 2, "--out-dir", tmp_path / "run", "--n-layer", 2,
               "--n-expert", 4, "--n-null", 2, "--mod-capacity", 0.5, "--exit-scale", 1,
               "--exit-threshold", 0.5)
    assert proc.returncode == 0, proc.stderr
    text = tmp_path / "t.py"
    text.write_bytes(TEXT)
    m = run("map", "--out-dir", tmp_path / "run", "--text", text, "--png", tmp_path / "m.png")
    assert m.returncode == 0, m.stderr
    assert f"{len(TEXT)} bytes, mean" in m.stdout and "Spearman rho" in m.stdout
    assert "identifier" in m.stdout and (tmp_path / "m.png").exists()
    (tmp_path / "empty.txt").write_bytes(b"")
    assert_one_line_error(run("map", "--out-dir", tmp_path / "run", "--text", tmp_path / "empty.txt"),
                          "--text", "is empty")
    assert_one_line_error(run("map", "--out-dir", tmp_path / "run", "--text", tmp_path / "nope"),
                          "nope")
    assert_one_line_error(run("map", "--out-dir", tmp_path / "run", "--text", text,
                              "--max-bytes", 0), "--max-bytes")
