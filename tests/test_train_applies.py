"""What the training loop actually applies (tinysparse/training/loop.py, evaluation.py), as
opposed to what its helpers compute: the learning rate the optimizer receives at each step, the
clipped gradient it updates with, the splits evaluation reads, that a diverged step never reaches
the update, that evaluation is repeatable, and what the log and the summary say.

Every input is chosen so that a plausible bug gives a different answer: a schedule shifted by one
step, clipping ignored, the splits swapped, an unseeded evaluation generator. The runs are the
1-layer, 16-wide GPT of test_train.py on a 20 kB synthetic corpus (milliseconds a step).
"""
import json
import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest

import tinysparse.training.evaluation as evaluation_module
import tinysparse.training.loop as loop
from tinysparse import optim
from tinysparse.engine import random as ts_random
from tinysparse.engine.tensor import Tensor
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.training import TrainingDiverged, load_run, train
from tinysparse.training.checkpoint import LOG_NAME, load_checkpoint
from tinysparse.training.config import TrainConfig
from tinysparse.training.evaluation import bits_per_byte, evaluate
from tinysparse.training.sampling import sample_text


def model_config(**kw):
    return GPTConfig(**{**dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.0), **kw})


def train_config(out_dir, **kw):
    base = dict(data="synthetic", max_bytes=20_000, batch_size=4, max_iters=8, lr=1e-2,
                min_lr=1e-3, warmup_iters=3, lr_decay_iters=6, eval_interval=4, eval_iters=2,
                checkpoint_interval=4, out_dir=str(out_dir), sample_tokens=0)
    return TrainConfig(**{**base, **kw})


def log_of(out_dir):
    return [json.loads(line) for line in open(out_dir / LOG_NAME)]


def global_norm(params):
    return math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum())
                         for p in params if p.grad is not None))


@pytest.fixture
def updates(monkeypatch):
    """Every AdamW update of the runs in the test: the lr it used and the norm of the gradient
    it read, recorded as the update starts."""
    seen, real = [], optim.AdamW.step

    def step(self):
        seen.append(SimpleNamespace(lr=self.lr, norm=global_norm(self.params)))
        real(self)

    monkeypatch.setattr(optim.AdamW, "step", step)
    return seen


# ----------------------------------------------------------------------------- the learning rate

@pytest.mark.parametrize("decay", [6, None], ids=["lr_decay_iters", "max_iters"])
def test_each_update_gets_the_schedules_rate_for_its_own_step(tmp_path, updates, decay):
    # warm-up 3, cosine to step 6 (or to max_iters 8), then min_lr: the schedule shifted by one
    # step, or decayed over the wrong horizon, differs at every step of this run
    cfg = train_config(tmp_path, lr_decay_iters=decay)
    train(model_config(), cfg)
    horizon = decay or cfg.max_iters
    expected = [optim.cosine_lr(s, cfg.lr, cfg.warmup_iters, horizon, cfg.min_lr)
                for s in range(cfg.max_iters)]
    assert [u.lr for u in updates] == expected
    shifted = [optim.cosine_lr(s + 1, cfg.lr, cfg.warmup_iters, horizon, cfg.min_lr)
               for s in range(cfg.max_iters)]
    assert all(a != b for a, b in zip(expected[:6], shifted[:6]))     # the input discriminates
    log = log_of(tmp_path)
    assert [r["lr"] for r in log] == [None, expected[3], expected[7]]  # steps 0, 4 and 8


def test_a_resumed_run_continues_the_schedule_where_it_stopped(tmp_path, updates):
    cfg = train_config(tmp_path)
    train(model_config(), train_config(tmp_path, max_iters=4))
    train(model_config(), cfg, resume=True)
    assert [u.lr for u in updates] == [optim.cosine_lr(s, cfg.lr, cfg.warmup_iters, 6, cfg.min_lr)
                                       for s in range(8)]


# ----------------------------------------------------------------------------- gradient clipping

def test_the_update_reads_the_clipped_gradient(tmp_path, updates):
    # at initialisation the gradient's global norm is far above 0.01: every step clips
    train(model_config(), train_config(tmp_path, grad_clip=0.01))
    assert len(updates) == 8 and all(u.norm <= 0.01 * (1 + 1e-6) for u in updates)


def test_grad_clip_zero_updates_with_the_whole_gradient(tmp_path, updates, monkeypatch):
    norms, real = [], optim.clip_grad_norm

    def measured(params, max_norm):
        params = list(params)
        norms.append(global_norm(params))
        return real(params, max_norm)

    monkeypatch.setattr(optim, "clip_grad_norm", measured)
    train(model_config(), train_config(tmp_path, grad_clip=0.0))
    assert min(norms) > 0.01                          # so clipping at 0.01 would have changed them
    assert [u.norm for u in updates] == norms         # untouched: 0 means no clipping


# ----------------------------------------------------------------------------- evaluation

class MeanIdModel:
    """A stand-in model whose 'loss' on a batch is the mean of its input ids: evaluation's result
    then tells which split and which windows it read."""

    def __init__(self):
        self.training, self.modes = True, []

    def eval(self):
        self.training = False
        self.modes.append("eval")

    def train(self, mode=True):
        self.training = mode
        self.modes.append("train")

    def __call__(self, x, y):
        assert not self.training
        return None, Tensor(np.array(float(x.mean())))


def split_corpus(train_value=3, val_value=200, n=400):
    return SimpleNamespace(train=np.full(n, train_value, np.uint8), val=np.full(n, val_value, np.uint8))


def test_evaluation_scores_train_on_train_and_val_on_val():
    model = MeanIdModel()
    cfg = SimpleNamespace(seed=1, batch_size=3, eval_iters=2)
    assert evaluate(model, split_corpus(), cfg, 8) == {"train": 3.0, "val": 200.0}
    assert model.modes == ["eval", "train"] and model.training       # back in training mode


def test_evaluation_scores_the_same_batches_every_time_whatever_the_generators_did():
    corpus = SimpleNamespace(train=np.arange(256, dtype=np.uint8).repeat(3),
                             val=np.arange(256, dtype=np.uint8)[::-1].repeat(3))
    cfg = SimpleNamespace(seed=1, batch_size=2, eval_iters=3)
    first = evaluate(MeanIdModel(), corpus, cfg, 8)
    np.random.default_rng().random(7)                 # anything else drawing numbers meanwhile
    ts_random.generator().random(5)
    assert evaluate(MeanIdModel(), corpus, cfg, 8) == first
    # the windows are random (a ramp's windows have different means), so an unseeded generator
    # would give other numbers: that is what the equality above rules out
    rng = np.random.default_rng(0)
    assert len({float(corpus.train[i:i + 8].mean()) for i in rng.integers(0, 700, 10)}) > 1


def test_evaluation_does_not_move_the_training_generators(tmp_path):
    run = loop.TrainingRun(model_config(dropout=0.1), train_config(tmp_path))
    before = (run.sampler.state_dict(), ts_random.get_state())
    run.evaluate(0)
    assert (run.sampler.state_dict(), ts_random.get_state()) == before


def test_bits_per_byte_is_nats_over_ln_2():
    assert bits_per_byte(math.log(2) * 3) == pytest.approx(3.0, rel=1e-15)


def test_the_log_and_the_state_take_each_split_from_evaluation(tmp_path, monkeypatch, capsys):
    scores = iter([(5.0, 4.0), (3.0, 2.0), (2.5, 2.0), (1.5, 2.5)])     # (train, val) per call

    def fake_evaluate(model, corpus, cfg, block_size):
        train_loss, val_loss = next(scores)
        return {"train": train_loss, "val": val_loss}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    summary = train(model_config(), train_config(tmp_path, max_iters=10, eval_interval=4))
    log = log_of(tmp_path)
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in log] == [
        (0, 5.0, 4.0), (4, 3.0, 2.0), (8, 2.5, 2.0), (10, 1.5, 2.5)]
    assert [r["val_bpb"] for r in log] == [bits_per_byte(v) for v in (4.0, 2.0, 2.0, 2.5)]
    assert summary["val_loss"] == 2.5 and summary["best_val_loss"] == 2.0   # last and best
    assert summary["val_bpb"] == bits_per_byte(2.5)
    ckpt = load_checkpoint(str(tmp_path))
    assert (ckpt["val_loss"], ckpt["best_val_loss"]) == (2.5, 2.0)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    # "(best)" only where val improved: a tie (step 8) is not an improvement
    assert lines == [
        f"step      0: train 5.0000, val 4.0000 nats = {4 / math.log(2):.3f} bits/byte  (best)",
        f"step      4: train 3.0000, val 2.0000 nats = {2 / math.log(2):.3f} bits/byte  (best)",
        f"step      8: train 2.5000, val 2.0000 nats = {2 / math.log(2):.3f} bits/byte",
        f"step     10: train 1.5000, val 2.5000 nats = {2.5 / math.log(2):.3f} bits/byte"]


def test_a_resumed_run_remembers_the_best_val_loss_reached_before_it(tmp_path, monkeypatch):
    vals = iter([3.0, 1.0, 2.0])                                    # steps 0, 4 and, resumed, 8

    def fake_evaluate(model, corpus, cfg, block_size):
        return {"train": 9.0, "val": next(vals)}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    train(model_config(), train_config(tmp_path, max_iters=4))
    resumed = train(model_config(), train_config(tmp_path), resume=True)
    assert (resumed["best_val_loss"], resumed["val_loss"]) == (1.0, 2.0)
    assert len(resumed["history"]) == 8                              # the first 4 steps' too


def test_the_log_has_one_line_per_evaluation_and_the_last_step_once(tmp_path):
    train(model_config(), train_config(tmp_path, max_iters=8))           # 8 is an eval step
    assert [r["step"] for r in log_of(tmp_path)] == [0, 4, 8]
    train(model_config(), train_config(tmp_path, max_iters=7))           # a new run, same folder
    log = log_of(tmp_path)
    assert [r["step"] for r in log] == [0, 4, 7]                        # the old log is gone
    assert log[0]["tokens_per_s"] is None and all(r["tokens_per_s"] > 0 for r in log[1:])


# ----------------------------------------------------------------------------- divergence

@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_a_non_finite_step_never_reaches_the_update(tmp_path, updates, monkeypatch, what):
    calls, real_forward, real_clip = [], GPT.forward, optim.clip_grad_norm

    def forward(self, idx, targets=None, ignore_index=None):
        logits, loss = real_forward(self, idx, targets, ignore_index)
        if targets is not None and self.training:
            calls.append(1)
            if what == "loss" and len(calls) == 3:
                loss.data = np.array(np.inf, dtype=loss.data.dtype)
        return logits, loss

    def clip(params, max_norm):
        norm = real_clip(params, max_norm)
        return math.nan if what == "gradient norm" and len(calls) == 3 else norm

    monkeypatch.setattr(GPT, "forward", forward)
    monkeypatch.setattr(optim, "clip_grad_norm", clip)
    value = "inf" if what == "loss" else "nan"
    with pytest.raises(TrainingDiverged, match=fr"^{what} is {value} at step 3; training stopped, "
                                               r"no checkpoint of this run was written yet; lower"):
        train(model_config(), train_config(tmp_path))
    assert len(calls) == 3 and len(updates) == 2      # the third step stopped before its update


def test_the_steps_loss_history_is_each_steps_training_loss(tmp_path, monkeypatch):
    losses, real_forward = [], GPT.forward

    def forward(self, idx, targets=None, ignore_index=None):
        logits, loss = real_forward(self, idx, targets, ignore_index)
        if targets is not None and self.training:
            losses.append(float(loss.data))
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    summary = train(model_config(), train_config(tmp_path, max_iters=5))
    assert summary["history"] == losses and len(losses) == 5
    monkeypatch.setattr(loop, "_sync_interval", lambda device, cfg: 100)   # read as on a GPU
    losses.clear()
    # eval and checkpoint at 3, then the last steps read only because the run ends at 5
    deferred = train(model_config(), train_config(tmp_path / "gpu", max_iters=5, eval_interval=3,
                                                  checkpoint_interval=3))
    assert deferred["history"] == losses == summary["history"]


def test_the_pieces_of_a_step(capsys):
    assert loop._sync_interval("cpu", SimpleNamespace(log_interval=7)) == 1
    assert loop._sync_interval("cuda", SimpleNamespace(log_interval=7)) == 7
    assert loop._host_floats([1, 2.5]) == [1.0, 2.5]
    assert loop._host_floats([np.array(3.0), np.float32(0.25), 2]) == [3.0, 0.25, 2.0]
    assert loop._moe_text(None) == ""
    assert loop._moe_text({"max_over_mean_load": 1.314, "dropped_fraction": 0.004}) == \
        ", load 1.31 max/mean, dropped 0.4%"


def test_a_second_ctrl_c_interrupts_at_once_and_other_threads_keep_the_default():
    flag = loop._SigintFlag()
    flag._handle(2, None)
    assert flag.requested
    with pytest.raises(KeyboardInterrupt):
        flag._handle(2, None)
    entered = []

    def in_a_thread():
        with loop._SigintFlag() as f:               # signal handlers only in the main thread
            entered.append(f._old)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert entered == [None]


def test_ctrl_c_during_an_update_saves_nothing(tmp_path, monkeypatch, capsys):
    real = optim.AdamW.step

    def step(self):
        if self.step_count == 5:                    # the 6th update, half done
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(optim.AdamW, "step", step)
    summary = train(model_config(), train_config(tmp_path, max_iters=10))
    assert summary["status"] == "interrupted" and summary["step"] == 5
    assert load_checkpoint(str(tmp_path))["step"] == 4
    assert (f"interrupted during the update of step 6; nothing saved, the last good checkpoint "
            f"(step 4) is kept in {tmp_path / 'ckpt.json'}") in capsys.readouterr().out


# ----------------------------------------------------------------------------- the summary

def test_the_summary_and_the_header_line(tmp_path, capsys, monkeypatch):
    cfg = train_config(tmp_path, max_iters=6, sample_tokens=12)
    stdout = FlushRecorder()
    monkeypatch.setattr("sys.stdout", stdout)
    summary = train(model_config(), cfg)
    monkeypatch.undo()
    text = "".join(t for kind, t in stdout.events if kind == "write")
    out = text.splitlines()
    model, _, _ = load_run(str(tmp_path))
    n = model.num_parameters()
    assert out[0] == (f"training GPT ({n / 1e6:.2f}M parameters) on {summary_corpus(tmp_path)}, "
                      f"cpu, steps 0->6 of 4x16 tokens, run folder {tmp_path}")
    assert summary["status"] == "done" and summary["step"] == 6
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "model": model_config().to_dict(), "train": cfg.to_dict(), "device": "cpu",
        "n_params": n, "corpus": summary_corpus(tmp_path)}
    assert summary["tokens_per_s"] * summary["train_time_s"] == pytest.approx(6 * 4 * 16)
    assert summary["out_dir"] == str(tmp_path) and summary["moe"] is None
    assert summary["checkpoint"] == str(tmp_path / "ckpt.json")
    # the sample is the trained model's own: 12 bytes after "\n", temperature 0.8, top_k 50, seed 0
    assert summary["sample"] == sample_text(model, "\n", 12, 0.8, 50, seed=0)
    # the header, then the sample itself (a topk model: no causality note), flushed
    assert text.endswith("---- sample (12 bytes, temperature 0.8, top_k 50) ----\n"
                         + summary["sample"] + "\n")
    assert stdout.flushed(summary["sample"][1:])
    train(model_config(), train_config(tmp_path, max_iters=8), resume=True)
    header = capsys.readouterr().out.splitlines()[0]
    assert "steps 6->8 of 4x16 tokens" in header and header.endswith(" (resumed)")


def summary_corpus(run_dir):
    return json.loads((run_dir / "config.json").read_text())["corpus"]


# ----------------------------------------------------------------------------- stopping early

class RequestedFlag(loop._SigintFlag):
    """A Ctrl-C that arrived before the first step."""

    def __enter__(self):
        super().__enter__()
        self.requested = True
        return self


def test_a_run_stopped_before_its_first_step_reports_what_it_has(tmp_path, monkeypatch):
    train(model_config(), train_config(tmp_path, max_iters=4))
    meta = json.loads((tmp_path / "ckpt.json").read_text())
    meta["val_loss"] = None                         # a checkpoint that never evaluated
    (tmp_path / "ckpt.json").write_text(json.dumps(meta))
    monkeypatch.setattr(loop, "_SigintFlag", RequestedFlag)
    summary = train(model_config(), train_config(tmp_path, sample_tokens=5), resume=True)
    assert summary["status"] == "interrupted" and summary["step"] == 4
    assert summary["val_loss"] is None and summary["val_bpb"] is None
    assert summary["tokens_per_s"] is None and summary["train_time_s"] == 0.0
    assert "sample" not in summary                  # only a finished run samples


def test_resume_names_only_the_model_settings_that_differ(tmp_path):
    train(model_config(), train_config(tmp_path, max_iters=2))
    with pytest.raises(ValueError, match=r"^--resume: the checkpoint in .* has model config "
                                         r"\{'n_embd': 16\}; drop the model flags that differ, "
                                         r"or use a new --out-dir$"):
        train(model_config(n_embd=32), train_config(tmp_path, max_iters=4), resume=True)


class FlushRecorder:
    """A stdout that records what was written and when it was flushed."""

    def __init__(self):
        self.events = []

    def write(self, text):
        self.events.append(("write", text))
        return len(text)

    def flush(self):
        self.events.append(("flush", None))

    def isatty(self):
        return False

    def flushed(self, needle):
        """True when the write holding `needle` is followed by a flush before the next write
        (print writes its end="\n" separately)."""
        i = next(i for i, (kind, text) in enumerate(self.events) if kind == "write"
                 and needle in text)
        rest = [kind for kind, text in self.events[i + 1:] if text != "\n"] + ["write"]
        return rest.index("flush") < rest.index("write") if "flush" in rest else False


@pytest.mark.parametrize("when", ["between steps", "during an update"])
def test_each_status_line_is_flushed_at_once(tmp_path, monkeypatch, when):
    # shown at once also when stdout is a pipe (| tee log), not when the buffer fills
    real = optim.AdamW.step

    def step(self):
        if self.step_count == 2:
            if when == "during an update":
                raise KeyboardInterrupt
            loop_flag[0].requested = True
        real(self)

    loop_flag = []

    class Flag(loop._SigintFlag):
        def __enter__(self):
            loop_flag.append(super().__enter__())
            return loop_flag[-1]

    out = FlushRecorder()
    monkeypatch.setattr(loop, "_SigintFlag", Flag)
    monkeypatch.setattr(optim.AdamW, "step", step)
    monkeypatch.setattr("sys.stdout", out)
    train(model_config(), train_config(tmp_path, log_interval=1))
    assert out.flushed("training GPT (") and out.flushed("step      0: train")
    assert out.flushed("step 1/8: loss")                        # a progress line (no terminal)
    assert out.flushed("interrupted during the update" if when == "during an update"
                       else "interrupted at step 3")


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_each_progress_line_shows_its_own_steps_loss_and_rate(tmp_path, capsys, moe):
    cfg = train_config(tmp_path, log_interval=1, eval_interval=5, checkpoint_interval=5)
    summary = train(model_config(n_expert=4, top_k=2) if moe else model_config(), cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "/8: loss" in ln]
    assert [ln.split(":")[0] for ln in lines] == [f"step {k}/8" for k in range(1, 9)]
    for k, line in enumerate(lines, start=1):        # read every step on the CPU, not only at
        lr = optim.cosine_lr(k - 1, cfg.lr, cfg.warmup_iters, 6, cfg.min_lr)   # evaluations
        assert line.startswith(f"step {k}/8: loss {summary['history'][k - 1]:.4f}, lr {lr:.2e}, ")
        assert line.endswith(" over the last 1 steps") != moe           # MoE: then the balance
    if moe:
        assert lines[-1].endswith(" over the last 1 steps" + loop._moe_text(summary["moe"]))


def test_ctrl_c_after_an_update_saves_the_finished_step(tmp_path, monkeypatch, capsys):
    # an interrupt while evaluating (after step 4's update) leaves a consistent state: saved
    real = loop.evaluate

    def evaluate(model, corpus, cfg, block_size):
        if evaluate.calls == 1:
            raise KeyboardInterrupt
        evaluate.calls += 1
        return real(model, corpus, cfg, block_size)

    evaluate.calls = 0
    monkeypatch.setattr(loop, "evaluate", evaluate)
    summary = train(model_config(), train_config(tmp_path, checkpoint_interval=100))
    assert summary["status"] == "interrupted" and summary["step"] == 4
    assert load_checkpoint(str(tmp_path))["step"] == 4
    assert "interrupted at step 4; checkpoint saved" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the bar, the clock

class FakeBar:
    """tqdm's stand-in: what the loop asked the bar to show."""
    made = []
    write = staticmethod(print)

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.postfixes, self.closed = kwargs, [], [], False
        self.disable = True
        FakeBar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def set_postfix_str(self, text, refresh):
        self.postfixes.append((text, refresh))

    def close(self):
        self.closed = True


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_the_bar_counts_steps_from_where_the_run_starts(tmp_path, monkeypatch, moe):
    FakeBar.made, dts, real = [], [], loop.TrainingRun.show_progress

    def show(self, bar, dt):
        dts.append(dt)
        real(self, bar, dt)

    monkeypatch.setattr(loop.TrainingRun, "show_progress", show)
    monkeypatch.setattr(loop, "tqdm", FakeBar)
    config = model_config(n_expert=4, top_k=2) if moe else model_config()
    train(config, train_config(tmp_path, max_iters=4))
    summary = train(config, train_config(tmp_path, max_iters=7), resume=True)
    first, resumed = FakeBar.made
    for bar, start, end in ((first, 0, 4), (resumed, 4, 7)):
        assert bar.kwargs == dict(total=end, initial=start, unit="step", dynamic_ncols=True,
                                  disable=None)
        assert bar.updates == [1] * (end - start) and bar.closed
    # each step's postfix: its loss, its own rate (4 x 16 tokens / its time), the MoE balance
    for (text, refresh), loss, dt in zip(resumed.postfixes, summary["history"][4:], dts[4:]):
        assert text.startswith(f"loss {loss:.4f}, {64 / dt:,.0f} tok/s") and refresh is False
    assert resumed.postfixes[-1][0].endswith(" tok/s" + loop._moe_text(summary["moe"]))
    assert (", load " in resumed.postfixes[-1][0]) == moe


def test_floating_point_warnings_are_silenced_inside_the_loop(tmp_path, monkeypatch):
    # the loop checks every loss and norm itself: NumPy's overflow/invalid/divide warnings
    # during a diverging step would only be noise before the one-line error
    seen, real = [], optim.AdamW.step

    def step(self):
        seen.append(np.geterr())
        real(self)

    monkeypatch.setattr(optim.AdamW, "step", step)
    train(model_config(), train_config(tmp_path, max_iters=2))
    assert all(e["over"] == e["invalid"] == e["divide"] == "ignore" for e in seen) and seen
    assert np.geterr()["over"] != "ignore" or np.geterr()["invalid"] != "ignore"   # restored


def test_train_time_is_the_sum_of_the_steps_times(tmp_path, monkeypatch):
    import time
    dts, real = [], loop.TrainingRun.show_progress

    def show(self, bar, dt):
        dts.append(dt)
        real(self, bar, dt)

    monkeypatch.setattr(loop.TrainingRun, "show_progress", show)
    t0 = time.perf_counter()
    summary = train(model_config(), train_config(tmp_path))
    wall = time.perf_counter() - t0
    assert len(dts) == 8 and summary["train_time_s"] == pytest.approx(sum(dts), rel=1e-12)
    assert 0 < summary["train_time_s"] < wall


def test_a_ctrl_c_after_the_batch_was_drawn_undoes_the_draw(tmp_path, monkeypatch):
    # interrupted inside step 6's forward, after its batch was drawn: the checkpoint of step 5
    # must not skip that batch, or the resumed run trains on other data than an unbroken one
    calls, real_forward = [], GPT.forward

    def forward(self, idx, targets=None, ignore_index=None):
        if targets is not None and self.training:
            calls.append(1)
            if len(calls) == 6:
                raise KeyboardInterrupt
        return real_forward(self, idx, targets, ignore_index)

    monkeypatch.setattr(GPT, "forward", forward)
    summary = train(model_config(dropout=0.1), train_config(tmp_path / "split"))
    assert summary["status"] == "interrupted" and summary["step"] == 5
    monkeypatch.undo()
    resumed = train(model_config(dropout=0.1), train_config(tmp_path / "split"), resume=True)
    straight = train(model_config(dropout=0.1), train_config(tmp_path / "straight"))
    assert resumed["history"] == straight["history"]


def test_a_resumed_run_that_diverges_names_the_checkpoint_it_resumed_from(tmp_path, monkeypatch):
    train(model_config(), train_config(tmp_path, max_iters=4))
    monkeypatch.setattr(optim, "clip_grad_norm", lambda params, max_norm: math.inf)
    with pytest.raises(TrainingDiverged, match=r"gradient norm is inf at step 5; training "
                                               r"stopped, the last good checkpoint \(step 4\) is "
                                               r"kept in "):
        train(model_config(), train_config(tmp_path), resume=True)


# ----------------------------------------------------------------------------- what a run is built from

def test_a_run_is_built_from_its_configs(tmp_path):
    from tinysparse.training.data import BatchSampler
    from tinysparse.training.data import load_corpus as real_load_corpus
    cfg = train_config(tmp_path, seed=11, max_bytes=12_000, weight_decay=0.05)
    run = loop.TrainingRun(model_config(), cfg)
    corpus = real_load_corpus("synthetic", 16, 12_000, seed=11)
    assert np.array_equal(run.corpus.train, corpus.train) and np.array_equal(run.corpus.val,
                                                                             corpus.val)
    x, y = run.sampler.train_batch()
    x_ref, y_ref = BatchSampler(corpus, 4, 16, seed=11).train_batch()
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    assert (run.opt.beta1, run.opt.beta2, run.opt.weight_decay) == (0.9, 0.95, 0.05)  # nanoGPT
    assert run.device == "cpu" and run.sync_every == 1 and run.tokens_per_step == 64


@pytest.mark.skipif(loop.backend.cuda_available(), reason="needs a machine without a GPU")
def test_a_run_on_a_device_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(loop.backend.DeviceError, match="device 'cuda' was requested"):
        train(model_config(), train_config(tmp_path, device="cuda"))


def test_the_rates_in_the_log_and_the_progress_lines(tmp_path, monkeypatch, capsys):
    dts, real = [], loop.TrainingRun.show_progress

    def show(self, bar, dt):
        dts.append(dt)
        real(self, bar, dt)

    monkeypatch.setattr(loop.TrainingRun, "show_progress", show)
    train(model_config(), train_config(tmp_path, log_interval=2))
    for r in log_of(tmp_path)[1:]:                    # tokens / training time so far
        assert r["tokens_per_s"] == pytest.approx(64 * r["step"] / sum(dts[:r["step"]]))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "/8: loss" in ln]
    for k, line in zip((2, 4, 6, 8), lines):        # mean step time over the 2 steps since
        mean = (dts[k - 2] + dts[k - 1]) / 2          # the last line
        assert f", {1000 * mean:.1f} ms/step, {64 / mean:,.0f} tok/s over the last 2 steps" in line


def test_a_moe_runs_evaluation_lines_end_with_the_balance(tmp_path, capsys):
    train(model_config(n_expert=4, top_k=2), train_config(tmp_path))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " nats = " in ln]
    for r, line in zip(log_of(tmp_path)[1:], lines[1:]):
        assert line.endswith(loop._moe_text({"max_over_mean_load": r["moe_max_over_mean_load"],
                                             "dropped_fraction": r["moe_dropped_fraction"]}))


def test_deferred_reads_happen_before_every_evaluation(tmp_path, monkeypatch):
    # as on a GPU: losses read every 100 steps, and before each evaluation (every 3 steps here),
    # so a diverged model is never evaluated and logged
    monkeypatch.setattr(loop, "_sync_interval", lambda device, cfg: 100)
    real = optim.AdamW.step

    def step_then_poison(self):
        real(self)
        if self.step_count == 5:                    # step 6's loss is the first NaN
            self.params[0].data[...] = np.nan

    monkeypatch.setattr(optim.AdamW, "step", step_then_poison)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 6"):
        train(model_config(), train_config(tmp_path, eval_interval=3, checkpoint_interval=100))
    assert [r["step"] for r in log_of(tmp_path)] == [0, 3]
