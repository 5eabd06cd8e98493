"""rewards.score_batch: worker processes survive hanging and crashing verifiers."""

from __future__ import annotations

import sys
import textwrap
import time
import uuid

import pytest

import rewards

HOSTILE = """
import ctypes, os, time
import rewards

@rewards.register("{prefix}_hang")
def hang(prediction, label, **context):
    if prediction == "hang":
        while True:
            time.sleep(0.1)
    return 1.0

@rewards.register("{prefix}_crash")
def crash(prediction, label, **context):
    if prediction == "segfault":
        ctypes.string_at(0)
    if prediction == "abort":
        os.abort()
    if prediction == "raise":
        raise RuntimeError("verifier bug")
    if prediction == "none":
        return None
    if prediction == "exit":
        os._exit(3)
    return 1.0

@rewards.register("{prefix}_touch")
def touch(prediction, label, **context):
    open(label, "a").close()
    return 1.0

@rewards.register("{prefix}_state")
class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, prediction, label, **context):
        self.calls += 1
        return 0.25
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A plugin module on sys.path with misbehaving verifiers; returns the name prefix."""
    prefix = f"hostile_{uuid.uuid4().hex[:8]}"
    directory = tmp_path_factory.mktemp("plugins")
    (directory / f"{prefix}.py").write_text(HOSTILE.format(prefix=prefix))
    sys.path.insert(0, str(directory))
    rewards.load_plugins([prefix])
    yield prefix
    sys.path.remove(str(directory))


def test_hang_times_out_without_stalling_the_batch(hostile):
    items = [{"verifier": f"{hostile}_hang", "prediction": p} for p in ["ok", "hang", "ok", "ok"]]
    start = time.monotonic()
    results = rewards.score_batch(items, max_workers=2, timeout=1.5)
    elapsed = time.monotonic() - start
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 1.0]
    assert results[1].reason == "timeout" and results[1]["scored"] is False
    assert elapsed < 20


def test_crashes_score_zero_with_the_signal_named(hostile):
    predictions = ["ok", "segfault", "ok", "abort", "raise", "none", "exit", "ok"]
    results = rewards.score_batch([{"verifier": f"{hostile}_crash", "prediction": p} for p in predictions], max_workers=2, timeout=10)
    assert [r.score for r in results] == [1.0, 0, 1.0, 0, 0, 0, 0, 1.0]
    reasons = [r.reason for r in results]
    assert reasons[1] == "crash: worker killed by SIGSEGV"
    assert reasons[3] == "crash: worker killed by SIGABRT"
    assert reasons[4].startswith("error: RuntimeError: verifier bug")
    assert reasons[5] == "cannot score"
    assert reasons[6] == "crash: worker exited with status 3"
    # the pool recovered: the next batch is scored normally
    assert [r.score for r in rewards.score_batch([{"verifier": f"{hostile}_crash", "prediction": "ok"}] * 4, max_workers=2)] == [1.0] * 4


def test_unscored_items_are_counted(hostile):
    rewards.unscored_counts(reset=True)
    rewards.score_batch([{"verifier": f"{hostile}_crash", "prediction": p} for p in ["none", "none", "raise"]], max_workers=2)
    counts = rewards.unscored_counts()
    assert counts[f"{hostile}_crash: cannot score"] == 2 and counts[f"{hostile}_crash: error"] == 1


def test_unknown_verifier_fails_before_anything_runs(hostile, tmp_path):
    marker = tmp_path / "ran"
    items = [{"verifier": f"{hostile}_touch", "prediction": "x", "label": str(marker)}, {"verifier": "no_such_verifier", "prediction": "x"}]
    with pytest.raises(rewards.UnknownNameError, match=r"item 1: unknown verifier 'no_such_verifier'.*Valid: .*math"):
        rewards.score_batch(items, max_workers=2)
    with pytest.raises(ValueError, match="item 0: needs a 'verifier' key"):
        rewards.score_batch([{"prediction": "x"}], max_workers=2)
    assert not marker.exists()
    rewards.score_batch(items[:1], max_workers=2)
    assert marker.exists()


def test_class_verifier_in_workers(hostile):
    results = rewards.score_batch([{"verifier": f"{hostile}_state", "prediction": "x"}] * 3, max_workers=2)
    assert [r.score for r in results] == [0.25] * 3


def test_workers_agree_with_in_process_scoring():
    items = [
        {"verifier": "math", "prediction": f"so \\boxed{{{i % 7}}}", "label": str(i % 5)} for i in range(40)
    ] + [
        {"verifier": "gsm8k", "prediction": "It is 1,200 dollars.", "label": "1200"},
        {"verifier": ["math", "format"], "prediction": "<think>x</think>\\boxed{3}", "label": "3"},
        {"verifier": "ifeval", "prediction": "no commas", "label": {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}},
        {"verifier": "code", "prediction": "def f():\n    return 1", "label": {"tests": ["assert f() == 1", "assert f() == 2"]}},
        {"verifier": "max_length", "prediction": "a b", "label": 4, "num_tokens": 3},
        {"verifier": "string_match", "prediction": None, "label": "x"},
    ]
    expected = [rewards.evaluate(it["verifier"], it["prediction"], it.get("label"), **{k: v for k, v in it.items() if k not in ("verifier", "prediction", "label")}) for it in items]
    for workers in (0, 1, 2):
        got = rewards.score_batch(items, max_workers=workers)
        assert [(r.score, r.reason, r.scored) for r in got] == [(r.score, r.reason, r.scored) for r in expected], workers


def test_options_reach_workers():
    item = {"verifier": "code", "prediction": "def f():\n    return 1", "label": {"tests": ["assert f() == 1", "assert f() == 2"]}}
    assert rewards.score_batch([item], max_workers=2)[0].score == 0.5
    assert rewards.score_batch([item], max_workers=2, options={"code": {"pass_threshold": 0.99}})[0].score == 0.0
    assert rewards.score_batch([{**item, "pass_threshold": 0.5}], max_workers=2, options={"code": {"pass_threshold": 0.99}})[0].score == 1.0


def test_verifier_workers_cannot_import_is_a_startup_error():
    name = f"local_{uuid.uuid4().hex[:8]}"

    @rewards.register(name)
    def local(prediction, label, **context):  # defined inside a function: no worker can import it
        return 1.0

    try:
        with pytest.raises(RuntimeError, match=f"cannot load verifier.*{name}"):
            rewards.score_batch([{"verifier": name, "prediction": "x"}], max_workers=2)
        assert rewards.score_batch([{"verifier": name, "prediction": "x"}], max_workers=0)[0].score == 1.0
        # the pool is still usable afterwards
        assert rewards.score_batch([{"verifier": "gsm8k", "prediction": "4", "label": "4"}], max_workers=2)[0].score == 1.0
    finally:
        del rewards.core.VERIFIERS._items[name]


def test_program_killing_its_parents_does_not_reach_the_worker():
    answer = (
        "import os, signal\n"
        "for attempt in (lambda: os.kill(os.getppid(), signal.SIGKILL), lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL),\n"
        "                lambda: os.kill(os.getppid(), signal.SIGTERM)):\n"
        "    try:\n"
        "        attempt()\n"
        "    except Exception:\n"
        "        pass\n"
        "def f(x):\n"
        "    return x * 2\n"
    )
    label = {"tests": ["assert f(2) == 4", "assert f(3) == 6"]}
    honest = "def f(x):\n    return x + x\n"
    items = [{"verifier": "code", "prediction": p, "label": label} for p in (answer, honest, answer, honest)]
    results = rewards.score_batch(items, max_workers=2, timeout=60)
    assert all(r.scored and not r.reason.startswith(("crash", "timeout")) for r in results)
    assert results[1].score == results[3].score == 1.0


def test_a_worker_that_died_while_idle_is_replaced():
    import os
    import signal

    from rewards import workers

    item = {"verifier": "gsm8k", "prediction": "4", "label": "4"}
    assert rewards.score_batch([item], max_workers=2)[0].score == 1.0
    pool = workers.get_pool(2)
    victim = pool.workers[0].process
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    results = rewards.score_batch([item] * 20, max_workers=2)
    assert [r.score for r in results] == [1.0] * 20
    assert victim not in [w.process for w in pool.workers]


def test_empty_batch():
    assert rewards.score_batch([], max_workers=2) == []


def test_main_script_verifiers_reach_workers(tmp_path):
    """A verifier registered in the script being run (guarded __main__) is found by the workers."""
    import subprocess

    script = tmp_path / "train_script.py"
    script.write_text(textwrap.dedent("""
        import rewards

        @rewards.register("script_local")
        def script_local(prediction, label, **context):
            return 0.5

        if __name__ == "__main__":
            print(rewards.score_batch([{"verifier": "script_local", "prediction": "x"}] * 3, max_workers=2)[2].score)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.5"
