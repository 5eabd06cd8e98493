"""Shared fixtures, the two tiers, and how the suite spreads over two workers.

Tiers. `make check` runs every test that needs neither the full tiny build nor a trained chain (`-m "not tiny"`);
`make test` runs everything. A test is marked `tiny` here when it asks for a fixture in `TINY_FIXTURES`.

The tiny default is built once per test run, and across runs on one machine it is cached under
$POSTTRAIN_TEST_CACHE (default ~/.cache/posttrain/tests), keyed by `posttrain.tiny.build_key` (its code, seed and
package versions); POSTTRAIN_TEST_TINY=DIR uses (or builds) DIR instead.

Ray. Under pytest-xdist (`make test`, `make check`) one Ray serves the whole run: the controller starts it and the
workers, and every CLI run they start, join it (RAY_ADDRESS). A plain `pytest` run starts Ray where a test needs it.

Chains. Two kinds, each run once per test run and shared by the pytest workers (under pytest-xdist, the first
worker to ask runs it while the others wait for it):
- `plumbing_chains`: `posttrain demo` with a few steps per stage, for what any run must produce (manifests, the
  skip rule, evaluation, report, model cards, exports that load in transformers and vLLM);
- `think_chain`, `instruct_chain`: the tiny recipes as shipped, SFT (`sft_think_dir`, `sft_instruct_dir`) then
  DPO and RLVR, with the held-out suite on every checkpoint, for the tests that assert that each stage learns.
  The two chains are independent after SFT, so the two workers can train one each (`run_order`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("think", "instruct")
TINY_FIXTURES = {"tiny_dir", "sft_think_dir", "sft_instruct_dir", "think_chain", "instruct_chain", "chain",
                 "plumbing_chains"}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that need the tiny build, order the run (`run_order`), deselect `gpu` tests without CUDA."""
    for item in items:
        if TINY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tiny)
    items.sort(key=run_order)  # stable: each bucket keeps the collection's order
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    dropped = [item for item in items if "gpu" in item.keywords]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if "gpu" not in item.keywords]


def chain_variant(item) -> str | None:
    """The one learning chain a test reads ("think", "instruct"), or None (none, or both)."""
    names = set(getattr(item, "fixturenames", ()))
    named = [variant for variant in VARIANTS if f"{variant}_chain" in names]
    if named:
        return named[0] if len(named) == 1 else None
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("variant") if callspec is not None and "chain" in names else None


def run_order(item) -> int:
    """The order xdist hands tests out: the Think chain's tests first (the longest piece of work: the tiny build,
    then the chain; the other worker waits for it), the slow tests that need no tiny build, the Instruct chain's
    tests, the other tests on the tiny build, then the rest. Training the Think chain with the machine to itself
    measured faster (21.5 min for the whole run on 2 cores) than overlapping it with the slow tests (still running
    after 26 min): the chain's Ray workers run at a lower priority than pytest's own processes and lose the CPU."""
    names = set(getattr(item, "fixturenames", ()))
    if chain_variant(item) == "think" or ("sft_think_dir" in names and "sft_instruct_dir" not in names):
        return 0
    if "tiny" not in item.keywords and ("slow" in item.keywords or "e2e" in item.keywords):
        return 1
    if chain_variant(item) == "instruct":
        return 2
    return 3 if "tiny" in item.keywords else 4


# --------------------------------------------------------------------------
# One Ray per test run (under pytest-xdist)

RAY_TEST_CPUS = 8  # logical CPUs: room for both workers' runs side by side (an RLVR run reserves 2 or 3)


def pytest_configure(config):
    """Under pytest-xdist the controller starts one Ray before it starts the workers; they, and every CLI they run,
    join it through RAY_ADDRESS (`init_ray` joins when it is set), instead of each starting a Ray of its own."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None) \
            or os.environ.get("RAY_ADDRESS"):
        return
    import ray

    from posttrain.orchestration.cluster import init_ray

    init_ray(num_cpus=RAY_TEST_CPUS)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    config.stash[RAY_KEY] = True


def pytest_unconfigure(config):
    if config.stash.get(RAY_KEY, False):
        import ray

        ray.shutdown()


RAY_KEY = pytest.StashKey[bool]()


# --------------------------------------------------------------------------
# Work shared by the workers of one test run


def shared_root(tmp_path_factory) -> Path:
    """A directory every worker of this test run sees: the parent of the workers' base temp dirs under xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def run_once(root: Path, name: str, make) -> Path:
    """ROOT/NAME made by `make(ROOT/NAME)` exactly once per test run, whichever worker asks first; the others wait.

    A failed `make` is not retried: the workers that ask later fail at once with its error (ROOT/NAME.failed).
    """
    from filelock import FileLock

    out, failed = root / name, root / f"{name}.failed"
    with FileLock(str(root / f"{name}.lock")):
        if failed.is_file():
            pytest.fail(f"{name} failed earlier in this test run:\n{failed.read_text()}")
        if not (out / ".done").is_file():
            out.mkdir(parents=True, exist_ok=True)
            try:
                make(out)
            except BaseException as err:
                failed.write_text(str(err)[-5000:])
                raise
            (out / ".done").write_text("")
    return out


def run_cli(args: list[str], log: Path, *, timeout: float = 3600, env: dict | None = None) -> float:
    """`python -m posttrain ARGS` from the repository root; LOG holds what it printed. Returns its wall seconds."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "posttrain", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (f"posttrain {' '.join(args[:1])} exited with status {result.returncode}; "
                                    f"stderr's end:\n{result.stderr[-3000:]}\nstdout's end:\n{result.stdout[-1000:]}")
    return seconds


# --------------------------------------------------------------------------
# The tiny default


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """A built tiny default: DIR/base (checkpoint) and DIR/data/NAME/{train,heldout}.jsonl."""
    from filelock import FileLock

    from posttrain import tiny

    explicit = os.environ.get("POSTTRAIN_TEST_TINY")
    cache = Path(os.environ.get("POSTTRAIN_TEST_CACHE", "~/.cache/posttrain/tests")).expanduser()
    out = Path(explicit) if explicit else cache / f"tiny-{tiny.build_key(0)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not tiny.is_built(out):
            tiny.build(out, seed=0)
    return out


def tiny_sft_overrides(tiny: Path, variant: str, model: Path) -> list[str]:
    """Point a tiny SFT recipe (paths under runs/tiny/) at the test run's tiny default and a start checkpoint."""
    data = tiny / "data" / f"sft_{variant}"
    return [f"model.path={model}", f"data.train.0.path={data / 'train.jsonl'}",
            f"data.heldout.0.path={data / 'heldout.jsonl'}", "logging.progress=false"]


# --------------------------------------------------------------------------
# The learning chains: the tiny recipes as shipped


def _sft_run(tiny: Path, variant: str, start: Path):
    def make(out: Path) -> None:
        seconds = run_cli(["sft", "--recipe", f"recipes/tiny/{variant}/sft.yaml", "--output-dir", str(out),
                           *tiny_sft_overrides(tiny, variant, start)], out / "cli.log")
        (out / "cli_wall_s.txt").write_text(f"{seconds:.1f}\n")

    return make


@pytest.fixture(scope="session")
def sft_think_dir(tiny_dir, tmp_path_factory) -> Path:
    """Run dir of `posttrain sft --recipe recipes/tiny/think/sft.yaml` from the tiny base: checkpoint/,
    metrics.jsonl, manifest.json, plots/, cli.log and cli_wall_s.txt (the command's wall seconds)."""
    return run_once(shared_root(tmp_path_factory), "sft_think", _sft_run(tiny_dir, "think", tiny_dir / "base"))


@pytest.fixture(scope="session")
def sft_instruct_dir(tiny_dir, sft_think_dir, tmp_path_factory) -> Path:
    """Run dir of `posttrain sft --recipe recipes/tiny/instruct/sft.yaml`, started from the Think SFT checkpoint
    as in Olmo 3; same layout as `sft_think_dir`."""
    start = sft_think_dir / "checkpoint"
    return run_once(shared_root(tmp_path_factory), "sft_instruct", _sft_run(tiny_dir, "instruct", start))


LEARNING_EVAL_SIZE = "all"  # the learning chains' suite scores the whole held-out split (never tuned on)


def _learning_chain(tiny: Path, variant: str, sft_dir: Path, base: Path | None = None):
    def make(out: Path) -> None:
        shutil.copytree(sft_dir, out / "sft")  # the pipeline's skip rule recognises the SFT run
        base_args = ["--base", str(base)] if base is not None else []
        run_cli(["pipeline", "--variant", variant, "--tiny", str(tiny), "--run-dir", str(out), *base_args,
                 "--eval-size", LEARNING_EVAL_SIZE, "rlvr:eval.every=0", "logging.every=1",
                 "logging.progress=false"], out / "pipeline.log")

    return make


@pytest.fixture(scope="session")
def think_chain(tiny_dir, sft_think_dir, tmp_path_factory) -> Path:
    """The Think chain as shipped: RUN/{sft,dpo,rlvr}, RUN/eval.json (the held-out suite on every checkpoint)."""
    return run_once(shared_root(tmp_path_factory), "chain_think", _learning_chain(tiny_dir, "think", sft_think_dir))


@pytest.fixture(scope="session")
def instruct_chain(tiny_dir, sft_think_dir, sft_instruct_dir, tmp_path_factory) -> Path:
    """The Instruct chain as shipped, from the Think SFT checkpoint; layout as `think_chain`."""
    make = _learning_chain(tiny_dir, "instruct", sft_instruct_dir, base=sft_think_dir / "checkpoint")
    return run_once(shared_root(tmp_path_factory), "chain_instruct", make)


@pytest.fixture
def chain(request) -> Path:
    """The learning chain of the test's `variant` parameter ("think" or "instruct")."""
    return request.getfixturevalue(f"{request.getfixturevalue('variant')}_chain")


# --------------------------------------------------------------------------
# The learning summary: what each learning assertion measured, printed at the end of the run

LEARNING_FILE = "learning.jsonl"


@pytest.fixture
def record(request, tmp_path_factory):
    """record(what, value, threshold): note a learning assertion's measured value for the run's summary."""
    import json

    def note(what: str, value: float, threshold: float) -> None:
        line = {"test": request.node.nodeid, "what": what, "value": value, "threshold": threshold}
        with open(shared_root(tmp_path_factory) / LEARNING_FILE, "a") as handle:
            handle.write(json.dumps(line) + "\n")

    return note


def pytest_terminal_summary(terminalreporter, config):
    """The learning summary: each learning assertion's measured value beside its threshold."""
    import json

    factory = getattr(config, "_tmp_path_factory", None)
    path = factory.getbasetemp() / LEARNING_FILE if factory is not None else None
    if path is None or not path.is_file() or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    terminalreporter.section("learning summary (measured value, threshold)")
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["threshold"] == float("-inf"):
            terminalreporter.write_line(f"    {row['value']:8.3f}           {row['what']}")
            continue
        mark = "ok " if row["value"] >= row["threshold"] else "LOW"
        terminalreporter.write_line(f"{mark} {row['value']:8.3f} >= {row['threshold']:<6.3f} {row['what']}")


# --------------------------------------------------------------------------
# The plumbing chains: every stage, a few steps each

PLUMBING_OVERRIDES = (
    "sft:optim.max_steps=3", "sft:data.train.0.count=96", "sft:data.heldout.0.count=16",
    "dpo:optim.max_steps=3", "dpo:data.train.0.count=48", "dpo:data.heldout.0.count=16",
    "rlvr:grpo.steps=3", "rlvr:eval.every=0", "rlvr:eval.max_prompts=16",
    "logging.progress=false",
)
PLUMBING_EVAL_SIZE = 16


@pytest.fixture(scope="session")
def plumbing_chains(tiny_dir, tmp_path_factory) -> Path:
    """`posttrain demo` on the test run's tiny default with `PLUMBING_OVERRIDES`: RUN/{think,instruct}/{sft,dpo,rlvr},
    eval.json, the report; RUN/demo.log holds what it printed."""

    def make(out: Path) -> None:
        run_cli(["demo", "--tiny", str(tiny_dir), "--run-dir", str(out), "--eval-size", str(PLUMBING_EVAL_SIZE),
                 *PLUMBING_OVERRIDES], out / "demo.log")

    return run_once(shared_root(tmp_path_factory), "plumbing", make)
