"""Progress on every step a person waits on: one tqdm display (rbench.core.progress) for training
and each attack of the evaluation, live on a terminal and silent elsewhere and under -q; epoch
counters that never pass the total; a sweep's live job counts and its log folder."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import registered, tiny_digits

from rbench.core import progress
from rbench.core.config import RunConfig, Stages
from rbench.core.suites import get_suite
from rbench.evaluate import accuracy as ev
from rbench.store.cache import Store


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (tqdm then draws its bars)."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def terminal() -> Iterator[Terminal]:
    """sys.stderr as a terminal for the block (set inside the test: pytest's capture resets
    sys.stderr between a fixture's setup and the test)."""
    screen, saved = Terminal(), sys.stderr
    sys.stderr = screen
    try:
        yield screen
    finally:
        sys.stderr = saved


@pytest.mark.parametrize(
    "epoch, total, shown",
    [(0, 5, "1/5"), (4, 5, "5/5"), (0, 2.49091, "1/2.49"), (1, 2.49091, "2/2.49")]
    + [(2, 2.49091, "2.49/2.49"), (0, 0.2, "0.2/0.2"), (9, 10.0, "10/10")],
)
def test_the_epoch_counter_reads_whole_epochs_then_the_fraction(epoch, total, shown):
    assert progress.epoch_counter(epoch, total) == shown


def test_a_fractional_phase_logs_epochs_that_never_pass_the_total(make_ctx, trained_digits_model):
    ctx = make_ctx(ratio=1, epochs=2)
    ctx.quiet = False
    screen, saved = io.StringIO(), sys.stderr
    sys.stderr = screen
    try:
        ctx.fit(trained_digits_model, epochs=1.5, lr=0.01, loss="ce", tag="phase")
    finally:
        sys.stderr = saved
    lines = [line for line in screen.getvalue().splitlines() if "phase epoch" in line]
    assert [line.split("phase epoch ")[1].split(":")[0] for line in lines] == ["1/1.5", "1.5/1.5"]
    assert "%|" not in screen.getvalue()  # not a terminal: no bar


def test_a_training_phase_shows_its_bar_on_a_terminal_and_nothing_under_quiet(
    make_ctx, trained_digits_model
):
    ctx = make_ctx(ratio=1, epochs=2)
    ctx.quiet = False
    with terminal() as screen:
        ctx.fit(trained_digits_model, epochs=0.5, lr=0.01, loss="ce", tag="fine-tuning")
    shown = screen.getvalue()
    assert "fine-tuning 0.5/0.5" in shown and "batch" in shown and "%|" in shown
    ctx.quiet = True
    with terminal() as screen:
        ctx.fit(trained_digits_model, epochs=0.5, lr=0.01, loss="ce", tag="fine-tuning")
    assert screen.getvalue() == ""


def test_an_attack_reports_points_attacked_and_robust_so_far(digits, trained_digits_model):
    suite = get_suite("digits")
    seen = []
    correct = ev.pgd_correct(
        trained_digits_model,
        digits.test.head(30),
        suite.threat,
        suite.protocol("quick").pgd,
        "cpu",
        batch_size=10,
        progress=lambda done, robust: seen.append((done, robust)),
    )
    assert [d for d, _ in seen] == [10, 20, 30]
    assert seen[-1][1] == int(correct.sum())
    assert all(a[1] <= b[1] for a, b in zip(seen, seen[1:], strict=False))


def _runner(tmp_path, suite, quiet: bool):
    """What the evaluation stage reads of a runner."""
    runner = SimpleNamespace(
        cfg=RunConfig(method="magnitude", ratio=4, suite=suite.name, quiet=quiet),
        suite=suite,
        protocol=suite.protocol("quick"),
        device=torch.device("cpu"),
        store=Store(tmp_path / "cache"),
        stages=Stages(keys={"evaluate": "test-progress"}),
    )
    runner.say = lambda message: None if quiet else progress.note(message)
    return runner


def test_autoattack_shows_points_and_robust_points_per_chunk(
    tmp_path, digits, trained_digits_model
):
    from rbench.evaluation import autoattack

    suite = tiny_digits(
        "digits-progress", dense_epochs=1, compress_epochs=1, n_eval=20, batch_size=10
    )
    points = digits.test.head(20)
    with terminal() as screen:
        correct, _ = autoattack(_runner(tmp_path, suite, False), trained_digits_model, points)
    shown = screen.getvalue()
    assert "AutoAttack (quick)" in shown
    assert "10/20" in shown and "20/20" in shown
    assert f"robust {int(correct.sum())}/20" in shown
    # the per-chunk log lines went through tqdm.write: a line of its own, not inside a bar
    assert any(line.startswith("evaluate: autoattack-10-20") for line in shown.splitlines())
    # under -q nothing at all, and the cached chunks give the same result
    with terminal() as screen:
        again, _ = autoattack(_runner(tmp_path, suite, True), trained_digits_model, points)
    assert screen.getvalue() == "" and torch.equal(again, correct)


@pytest.mark.slow
def test_a_sweep_prints_its_log_folder_and_live_job_counts(tmp_path, monkeypatch):
    import pdb

    from rbench.sweep import sweep

    # submitit's debug executor runs the jobs in this process (no worker start-up), and opens
    # the debugger on a job's exception: not here
    monkeypatch.setattr(pdb, "post_mortem", lambda *args, **kwargs: None)

    suite = tiny_digits("digits-sweep-counts", dense_epochs=1, compress_epochs=0.2, n_eval=10)
    with registered(suite) as name:
        base = RunConfig(
            method="",
            ratio=1,
            suite=name,
            results_dir=str(tmp_path / "r"),
            cache_dir=str(tmp_path / "c"),
            quiet=True,
        )
        messages: list[str] = []
        results = sweep(base, ["dense"], [1, 4], [0], executor="debug", say=messages.append)
    assert results["dense-r1-s0"]["status"] == "done"
    assert results["dense-r4-s0"]["status"] == "failed"
    logs = next(m for m in messages if m.startswith("sweep: logs in "))
    assert Path(logs.split("sweep: logs in ")[1].split(" (")[0]).is_dir()
    counts = [m for m in messages if re.match(r"sweep: \d+/\d+ done, ", m)]
    assert counts[0] == "sweep: 0/2 done, 1 running, 0 failed, 1 waiting"
    assert counts[-1] == "sweep: 1/2 done, 0 running, 1 failed, 0 waiting"
    assert any(
        m.startswith("  done   dense-r1-s0: AutoAttack ") and m.endswith("%") for m in messages
    )
    assert any(m.startswith("  start  dense-r4-s0: job ") for m in messages)
