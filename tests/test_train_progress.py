"""A training run's progress line, TrainingRun.show_progress (RunReporting's, in
tinysparse/training/reporting.py), called on a stand-in run with chosen step times: without a
terminal every log_interval steps it prints the mean step time and the token rate over those same
steps (not the last step next to the run's average); on a GPU, where a step returns before its
work is done, the bar shows the rate over the steps up to the last read of the device, never one
step's queueing time.

What whole runs print is in test_train_output.py.
"""
from types import SimpleNamespace

import tinysparse.training.loop as train_module


def test_progress_line_reports_step_time_and_token_rate_over_the_same_steps(capsys):
    class Bar:                                   # tqdm without a terminal: lines are printed
        disable = True

        def update(self, n):
            pass

        def set_postfix_str(self, text, refresh):
            pass

    run = SimpleNamespace(step_count=0, cfg=SimpleNamespace(log_interval=2, max_iters=4),
                          loss_value=2.0, opt=SimpleNamespace(lr=1e-3), tokens_per_step=256,
                          moe=None, window_steps=0, window_time=0.0, tokens=0, train_time=0.0,
                          sync_every=1, read_steps=0, read_time=0.0, rate=float("nan"))
    for dt in (0.1, 0.3, 1.0, 1.0):
        run.step_count += 1
        run.tokens, run.train_time = run.tokens + 256, run.train_time + dt
        train_module.TrainingRun.show_progress(run, Bar(), dt)
    # mean step time and tokens / time of the same 2 steps: 256 / 0.2 s, then 256 / 1 s
    # (the old line said "1000.0 ms/step, 427 tok/s": the last step next to the run's average)
    assert capsys.readouterr().out.splitlines() == [
        "step 2/4: loss 2.0000, lr 1.00e-03, 200.0 ms/step, 1,280 tok/s over the last 2 steps",
        "step 4/4: loss 2.0000, lr 1.00e-03, 1000.0 ms/step, 256 tok/s over the last 2 steps"]


def test_progress_rate_on_a_gpu_covers_the_steps_since_the_last_read():
    """On a GPU (losses read every 2 steps here) a step returns before its work is done: the
    bar's rate is that of the window up to the last read, which waited for the device, never
    one step's queueing time."""
    shown = []

    class Bar:
        disable = False

        def update(self, n):
            pass

        def set_postfix_str(self, text, refresh):
            shown.append(text)

    run = SimpleNamespace(step_count=0, cfg=SimpleNamespace(log_interval=2, max_iters=4),
                          loss_value=2.0, opt=SimpleNamespace(lr=1e-3), tokens_per_step=256,
                          moe=None, window_steps=0, window_time=0.0, sync_every=2, read_steps=0,
                          read_time=0.0, rate=float("nan"))
    for dt in (0.001, 0.399, 0.001, 0.199):     # queued fast, then the read waits for the device
        run.step_count += 1
        train_module.TrainingRun.show_progress(run, Bar(), dt)
    assert shown == ["loss 2.0000, nan tok/s", "loss 2.0000, 1,280 tok/s",
                     "loss 2.0000, 1,280 tok/s", "loss 2.0000, 2,560 tok/s"]
