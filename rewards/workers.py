"""`score_batch`: scoring in worker processes that survive hangs and crashes.

A pool of long-lived worker processes scores items; the caller's process
never runs verifier code. Each worker takes a few items at a time and
reports after each one, so the parent always knows which item is running
and since when. An item that runs past `timeout` gets its worker killed
(SIGKILL) and scores 0 with reason "timeout"; an item whose worker dies
(a segfault, `os.abort`, the OOM killer) scores 0 with the signal named.
Either way the worker is replaced and the rest of its items go to the
queue again. Exceptions inside verifiers are caught in the worker (see
`rewards.core.evaluate`).

Workers start from a fork server that has already imported `rewards` and
`math_verify`, so starting or replacing one costs a fork, not an
interpreter start. Pools are kept per size and reused across calls.

Verifiers registered in any importable module work in workers: before
scoring, the parent sends each worker its `sys.path` and, for every
verifier the batch uses, the module (and qualified name) that defined it;
the worker imports those modules (registering the verifiers) and reports
the names it has. A verifier a worker cannot load is a start-up error.
Verifiers defined in the main script are found when that script guards its
entry point with `if __name__ == "__main__":`, as multiprocessing requires.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Iterable, Mapping, Optional, Sequence

from rewards import core

DEFAULT_TIMEOUT = 30.0
_MAIN = ("__main__", "__mp_main__")


@dataclass
class Task:
    index: int
    verifier: Any
    prediction: Any
    label: Any
    context: dict


# --------------------------------------------------------------------------
# Worker side


def worker_main(conn, setup: dict) -> None:
    """Loop: ("setup", dict) -> ("ready", names, errors); ("run", [Task], options) -> ("done", index, score, reason, scored) per task."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn.send(("ready",) + _apply_setup(setup))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "setup":
            conn.send(("ready",) + _apply_setup(message[1]))
        elif message[0] == "run":
            _, tasks, options = message
            for task in tasks:
                result = core.evaluate(task.verifier, task.prediction, task.label, options=options, **task.context)
                conn.send(("done", task.index, result.score, result.reason, result.scored))
        else:
            return


def _apply_setup(setup: dict) -> tuple[list[str], dict[str, str]]:
    for path in setup.get("sys_path", []):
        if path not in sys.path:
            sys.path.append(path)
    errors: dict[str, str] = {}
    for name, module, qualname, raw in setup.get("verifiers", []):
        if name in core.VERIFIERS:
            continue
        try:
            _load_verifier(name, module, qualname, raw)
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
    return core.VERIFIERS.names(), errors


def _load_verifier(name: str, module: Optional[str], qualname: Optional[str], raw: bool) -> None:
    if module and module not in _MAIN:
        imported = importlib.import_module(module)
        if name not in core.VERIFIERS and qualname and "<" not in qualname:
            obj = imported
            for part in qualname.split("."):
                obj = getattr(obj, part)
            core.register(name, raw=raw)(obj)
    if name not in core.VERIFIERS:
        core.get(name)  # entry points, or a clear error naming what is missing


# --------------------------------------------------------------------------
# Parent side


@dataclass
class Worker:
    process: Any
    conn: Any
    inflight: deque = field(default_factory=deque)
    since: float = 0.0  # when the item at inflight[0] started


class Pool:
    """A fixed number of scoring workers; replaces any it has to kill or that die."""

    def __init__(self, size: int):
        self.size = size
        self.ctx = _context()
        self.setup: dict = {"sys_path": [], "verifiers": []}
        self.loaded: set[str] = set()
        self.workers: list[Worker] = []
        self.lock = threading.Lock()

    def prepare(self, names: Iterable[str]) -> None:
        """Make sure every worker has these verifiers; raise (and start afresh next time) if one cannot load them."""
        wanted = sorted(set(names) - self.loaded)
        new_paths = [p for p in sys.path if p not in self.setup["sys_path"]]
        if not wanted and not new_paths and len(self.workers) == self.size:
            return
        setup = {
            "sys_path": self.setup["sys_path"] + new_paths,
            "verifiers": self.setup["verifiers"] + [(n, *core.origin(n), n in core._RAW) for n in wanted],
        }
        try:
            for worker in self.workers:
                worker.conn.send(("setup", setup))
            for worker in self.workers:
                self._check_ready(self._receive_ready(worker), setup)
            while len(self.workers) < self.size:
                self.workers.append(self._start(setup))
        except BaseException:
            self.close()  # workers may hold half of the new setup; the next call starts clean ones
            raise
        self.setup = setup
        self.loaded.update(wanted)

    def _start(self, setup: dict) -> Worker:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=worker_main, args=(child, setup), daemon=True, name="rewards-worker")
        process.start()
        child.close()
        worker = Worker(process, parent)
        try:
            self._check_ready(self._receive_ready(worker), setup)
        except BaseException:
            self._kill(worker)
            raise
        return worker

    def _receive_ready(self, worker: Worker) -> tuple:
        try:
            return worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(5)
            raise RuntimeError(f"a reward worker died while loading verifiers ({_death(worker.process.exitcode)})") from None

    def _check_ready(self, message: tuple, setup: dict) -> None:
        _, names, errors = message
        missing = {n for n, *_ in setup["verifiers"]} - set(names)
        if missing:
            details = "; ".join(f"{n}: {errors.get(n, 'not registered after import')}" for n in sorted(missing))
            raise RuntimeError(
                f"reward workers cannot load verifier(s) {sorted(missing)}: {details}. "
                "Register verifiers at the top level of an importable module (or pass max_workers=0 to score in-process)."
            )

    def run(self, tasks: Sequence[Task], timeout: float, chunk: int, options: Optional[dict] = None) -> list[core.Result]:
        results: list[Optional[core.Result]] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        remaining = len(tasks)
        for worker in list(self.workers):
            if not worker.process.is_alive():  # died while idle (the OOM killer, say)
                self._replace(worker, results, queue, "")
        while remaining:
            now = time.monotonic()
            for worker in list(self.workers):
                if queue and not worker.inflight:
                    batch = [queue.popleft() for _ in range(min(chunk, len(queue)))]
                    try:
                        worker.conn.send(("run", [tasks[i] for i in batch], options))
                    except OSError:  # it died since: its replacement takes the batch next round
                        queue.extendleft(reversed(batch))
                        self._replace(worker, results, queue, "")
                        continue
                    worker.inflight.extend(batch)
                    worker.since = now
            busy = [w for w in self.workers if w.inflight]
            if not busy:
                continue
            next_deadline = min(w.since for w in busy) + timeout
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], max(0.0, next_deadline - time.monotonic()))
            for worker in list(busy):
                done = self._drain(worker, results)
                remaining -= done
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    remaining -= self._replace(worker, results, queue, _death(self._join(worker)))
                elif worker.inflight and time.monotonic() - worker.since > timeout:
                    self._kill(worker)
                    remaining -= self._replace(worker, results, queue, "timeout")
        return results  # type: ignore[return-value]

    def _drain(self, worker: Worker, results: list) -> int:
        """Read every finished item the worker has reported; how many."""
        done = 0
        try:
            while worker.conn.poll():
                _, index, score, reason, scored = worker.conn.recv()
                results[index] = core.Result(score, reason, scored)
                worker.inflight.popleft()
                worker.since = time.monotonic()
                done += 1
        except (EOFError, OSError):
            pass
        return done

    def _replace(self, worker: Worker, results: list, queue: deque, reason: str) -> int:
        """Score the item the worker was on as failed, requeue the rest, start a new worker."""
        failed = 0
        if worker.inflight:
            results[worker.inflight.popleft()] = core.Result(0.0, reason, scored=False)
            failed = 1
        queue.extendleft(reversed(worker.inflight))
        worker.inflight.clear()
        worker.conn.close()
        self.workers[self.workers.index(worker)] = self._start(self.setup)
        return failed

    def _join(self, worker: Worker) -> Optional[int]:
        worker.process.join(5)
        return worker.process.exitcode

    def _kill(self, worker: Worker) -> None:
        if worker.process.is_alive():
            os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(5)

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(("stop",))
            except (OSError, ValueError):
                pass
        for worker in self.workers:
            worker.process.join(2)
            if worker.process.is_alive():
                self._kill(worker)
            worker.conn.close()
        self.workers.clear()


def _death(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        return f"crash: worker killed by {signal.Signals(-exitcode).name}"
    return f"crash: worker exited with status {exitcode}"


def _context():
    """Fork server where available (cheap starts from a warm parent), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["rewards._warm"])
        return ctx
    return multiprocessing.get_context("spawn")


_POOLS: dict[int, Pool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(size: int) -> Pool:
    with _POOLS_LOCK:
        if size not in _POOLS:
            _POOLS[size] = Pool(size)
        return _POOLS[size]


@atexit.register
def close_pools() -> None:
    """Stop every worker (also run at interpreter exit)."""
    with _POOLS_LOCK:
        for pool in _POOLS.values():
            with pool.lock:
                pool.close()
        _POOLS.clear()


def tasks_from(items: Sequence[Mapping[str, Any]]) -> tuple[list[Task], set[str]]:
    """Tasks for the items, and the verifier names they use; raises before anything runs."""
    tasks, names = [], set()
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or "verifier" not in item:
            raise ValueError(f"item {index}: needs a 'verifier' key (and 'prediction', 'label'), got {str(item)[:120]}")
        try:
            parts = core.parse_spec(item["verifier"])
        except core.UnknownNameError as err:
            raise core.UnknownNameError(f"item {index}: {err}") from None
        names.update(name for name, _ in parts)
        context = {k: v for k, v in item.items() if k not in ("verifier", "prediction", "label")}
        tasks.append(Task(index, item["verifier"], item.get("prediction"), item.get("label"), context))
    return tasks, names


def score_batch(items: Sequence[Mapping[str, Any]], max_workers: Optional[int] = None, timeout: Optional[float] = None,
                options: Optional[Mapping[str, Mapping]] = None) -> list[core.Result]:
    """Score items in worker processes; one `Result` per item, in order.

    items: dicts {"verifier": name (or list/weights), "prediction": str,
    "label": ..., other keys are context}. Every verifier name is checked
    before anything runs. `max_workers`: worker processes (default: CPU
    count; 0 scores in this process, without timeout or crash protection).
    `timeout`: seconds per item (default 30). `options`: per-verifier
    default context, e.g. the recipe's `verifiers.options`.
    """
    items = list(items)
    tasks, names = tasks_from(items)
    if not tasks:
        return []
    if max_workers == 0:
        return [core.evaluate(t.verifier, t.prediction, t.label, options=options, **t.context) for t in tasks]
    size = max(1, max_workers or os.cpu_count() or 1)
    pool = get_pool(size)
    with pool.lock:
        pool.prepare(names)
        chunk = max(1, min(32, len(tasks) // (size * 8)))
        results = pool.run(tasks, DEFAULT_TIMEOUT if timeout is None else float(timeout), chunk, dict(options) if options else None)
    for task, result in zip(tasks, results):
        if not result.scored:
            core.record_unscored(core.parse_spec(task.verifier)[0][0], result.reason)
    return results
