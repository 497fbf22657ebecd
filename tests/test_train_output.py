"""What a training run prints and reports (tinysparse/training/reporting.py, loop.py): the header
line, config.json, the summary and the sample at the end; the progress lines, each with its own
steps' loss, learning rate and rate (a MoE's load balance after it); the progress bar, counting
steps from where the run starts; the rates in the log; the training time as the sum of the steps'
times; and every status line flushed at once, so it shows also when stdout is a pipe.
"""
import json

import pytest

import tinysparse.training.loop as loop
from tinysparse import optim
from tinysparse.training import load_run, train
from tinysparse.training.sampling import sample_text
from train_helpers import log_of, model_config, train_config


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


# ----------------------------------------------------------------------------- the progress lines

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
