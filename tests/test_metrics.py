"""metrics.jsonl, TensorBoard, timers, progress and plots (posttrain/metrics.py)."""

from __future__ import annotations

import json
import sys
import time

import pytest

from posttrain import metrics as M


def test_each_record_is_on_disk_as_soon_as_it_is_logged(tmp_path):
    logger = M.MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, {"loss": 2.5, "lr": 1e-3, "note": "text"})
    records = M.read_metrics(tmp_path)  # before close: flushed per line
    assert records[0]["step"] == 1 and records[0]["loss"] == 2.5 and records[0]["note"] == "text"
    logger.log(2, {"loss": 2.0})
    logger.close()
    assert [r["step"] for r in M.read_metrics(tmp_path / M.METRICS_FILE)] == [1, 2]


def test_resume_drops_the_steps_being_redone(tmp_path):
    with M.MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log(step, {"loss": float(step)})
    with M.MetricsLogger(tmp_path, tensorboard=False, resume_step=3) as logger:
        logger.log(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in M.read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    with M.MetricsLogger(tmp_path, tensorboard=False):  # a fresh run starts a fresh file
        pass
    assert M.read_metrics(tmp_path) == []


def test_a_torn_last_line_is_ignored(tmp_path):
    (tmp_path / M.METRICS_FILE).write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    assert M.read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]


def test_tensorboard_events_are_written(tmp_path):
    with M.MetricsLogger(tmp_path, tensorboard=True) as logger:
        logger.log(1, {"loss": 1.0})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_phase_timers_accumulate_until_popped():
    timers = M.PhaseTimers()
    for _ in range(2):
        with timers("generate"):
            time.sleep(0.01)
    with timers("train"):
        pass
    out = timers.pop()
    assert set(out) == {"time/generate", "time/train"}
    assert out["time/generate"] >= 0.02 and out["time/train"] < out["time/generate"]
    assert timers.pop() == {}


def test_plot_curves_writes_one_png_per_metric(tmp_path):
    with M.MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 11):
            logger.log(step, {"loss": 1.0 / step, "lr": 1e-3, "time/train": 0.1, "time/data": 0.01})
    written = M.plot_curves(tmp_path)
    assert sorted(p.name for p in written) == ["loss.png", "lr.png", "time.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert M.plot_curves(tmp_path, {"missing": ("nothing",)}) == []


def test_progress_bar_counts_from_the_resumed_step():
    bar = M.progress(10, initial=4)
    bar.update(2)
    assert bar.n == 6 and bar.total == 10
    bar.close()


def test_a_wandb_project_without_wandb_installed_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees where it is not installed
    with pytest.raises(RuntimeError, match="pip install wandb"):
        M.MetricsLogger(tmp_path, tensorboard=False, wandb_project="demo")
