"""What a run reports as it goes: metrics.jsonl, TensorBoard, W&B, progress, timers, plots.

- `MetricsLogger.log(step, values)` appends one JSON line per call to
  `RUN/metrics.jsonl` (flushed at once, so `tail -f` and a killed run both
  see every logged step), writes TensorBoard scalars under `RUN/tensorboard`
  and, when a W&B project is configured, logs there too.
- On resume the logger drops lines with a step beyond the resumed one (they
  came from the part of the killed run that is being redone) and TensorBoard
  purges the same steps, so the curves have no doubled segments.
- `PhaseTimers`: `with timers("generate"): ...` accumulates wall seconds per
  phase; `timers.pop()` returns `{"time/generate": s, ...}` for the next log.
- `progress(...)`: a tqdm bar with ETA (disabled with `logging.progress: false`).
- `plot_curves(RUN)`: PNG curves from metrics.jsonl (matplotlib, Agg backend).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (a directory means its metrics.jsonl); a torn last line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
    return records


def _scalar(value: Any) -> float | None:
    """A plain float for numbers and 0-d tensors/arrays; None for anything else."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class MetricsLogger:
    """Appends step records to RUN/metrics.jsonl and mirrors scalars to TensorBoard / W&B."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_config: dict | None = None,
        resume_step: int | None = None,
        run_name: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._start = time.time()
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)
        self._wandb = None
        if wandb_project:
            try:
                import wandb  # optional: only needed when a project is configured
            except ImportError:
                raise RuntimeError(f"logging.wandb_project is {wandb_project!r} but the wandb package is not "
                                   "installed: pip install wandb, or unset logging.wandb_project") from None

            self._wandb = wandb.init(project=wandb_project, name=run_name or self.run_dir.name,
                                     config=wandb_config or {}, dir=str(self.run_dir), resume="allow")

    def _truncate_after(self, step: int) -> None:
        kept = [r for r in read_metrics(self.path) if r.get("step", -1) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    def log(self, step: int, values: dict[str, Any]) -> dict:
        """Write one record {"step", "wall_s", **values}; non-scalar values go to the JSON line only."""
        record = {"step": int(step), "wall_s": round(time.time() - self._start, 3)}
        for key, value in values.items():
            scalar = _scalar(value)
            record[key] = scalar if scalar is not None else value
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, float) and math.isfinite(v)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, global_step=step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        return record

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PhaseTimers:
    """Wall-clock seconds per named phase, accumulated until `pop()`.

        timers = PhaseTimers()
        with timers("forward_backward"):
            ...
        logger.log(step, {**metrics, **timers.pop()})   # {"time/forward_backward": 0.41}
    """

    def __init__(self, prefix: str = "time/"):
        self.prefix = prefix
        self._totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._totals[phase] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = {f"{self.prefix}{name}": seconds for name, seconds in self._totals.items()}
        self._totals.clear()
        return out


class TrainingClock:
    """Seconds of training: the time since `start` without the spans run under `excluding` (evaluations), plus
    `before` (the time of the runs this one resumed)."""

    def __init__(self, before: float = 0.0):
        self.before, self.started, self.excluded = before, None, 0.0

    def start(self) -> None:
        self.started, self.excluded = time.time(), 0.0

    def seconds(self) -> float:
        return self.before + (time.time() - self.started - self.excluded if self.started is not None else 0.0)

    @contextlib.contextmanager
    def excluding(self) -> Iterator[dict]:
        """Time a span off the clock; the yielded dict gets its length under "seconds" at the end."""
        span, began = {}, time.perf_counter()
        try:
            yield span
        finally:
            span["seconds"] = time.perf_counter() - began
            if self.started is not None:
                self.excluded += span["seconds"]


def progress(total: int, *, initial: int = 0, desc: str = "", enabled: bool = True, unit: str = "step"):
    """A tqdm progress bar with ETA; a no-op bar when disabled."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                smoothing=0.1)


# --------------------------------------------------------------------------
# Plots


def plot_curves(
    run_dir: str | Path,
    groups: dict[str, Iterable[str]] | None = None,
    *,
    x: str = "step",
) -> list[Path]:
    """One PNG per group under RUN/plots/<group>.png, plotting each named metric against `x`.

    groups: {figure name: metric keys}. By default every numeric key of the
    records gets its own figure (timers grouped under "time"); keys absent
    from every record are skipped, and a group with no data writes no file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if groups is None:
        groups = _default_groups(records, x)
    out_dir = run_dir / PLOTS_DIR
    written = []
    for name, keys in groups.items():
        series = {k: [(r[x], r[k]) for r in records if _scalar(r.get(k)) is not None and x in r] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for key, points in series.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=key, linewidth=1.2)
        ax.set_xlabel(x)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name.replace('/', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _default_groups(records: list[dict], x: str) -> dict[str, tuple[str, ...]]:
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in (x, "wall_s") and _scalar(value) is not None:
                keys.setdefault(key, None)
    groups: dict[str, list[str]] = {}
    for key in keys:
        group = key.split("/", 1)[0] if key.startswith("time/") else key
        groups.setdefault(group, []).append(key)
    return {name: tuple(members) for name, members in groups.items()}
