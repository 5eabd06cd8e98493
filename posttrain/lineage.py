"""A checkpoint's ancestry, read from the manifests the stages write.

Every exported checkpoint carries `manifest.json` naming its parent (the input
checkpoint's path and content hash). `ancestry(CKPT)` follows those parents
back to the first checkpoint without a manifest (the base model, or a hub
name) and returns the stages oldest first; the model card and the report
print it. Parent paths are as the stage saw them (relative to the directory it
ran in), so a lineage is followed from that same directory; the walk stops,
without failing, where a parent is no longer on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.checkpoints import MANIFEST, read_json

MAX_DEPTH = 32  # a cycle of manifests would be a bug; never loop on it
# Prefixes of the headline held-out numbers stages record in their manifests' metrics (not every diagnostic).
HEADLINE_METRICS = ("heldout_loss", "heldout_pref_acc", "heldout_reward_acc", "eval/pass@1", "before/eval/pass@1")


@dataclass(frozen=True)
class Step:
    """One stage of an ancestry: the checkpoint it wrote and the manifest it wrote with it."""

    checkpoint: Path
    manifest: dict

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "?")

    @property
    def variant(self) -> str:
        return (self.manifest.get("config") or {}).get("variant", "?")

    @property
    def parent(self) -> dict:
        return self.manifest.get("parent") or {}


@dataclass(frozen=True)
class Ancestry:
    """The root input (path and hash) and the stages that led from it to a checkpoint, oldest first."""

    root: dict
    steps: tuple[Step, ...]


def read_manifest(checkpoint: str | Path) -> dict | None:
    path = Path(checkpoint) / MANIFEST
    return read_json(path) if path.is_file() else None


def ancestry(checkpoint: str | Path) -> Ancestry:
    """Follow `parent.path` from `checkpoint` while manifests exist (see the module docstring)."""
    steps: list[Step] = []
    current: Path | None = Path(checkpoint)
    seen: set[str] = set()
    while current is not None and len(steps) < MAX_DEPTH:
        manifest = read_manifest(current)
        if manifest is None or str(current.resolve()) in seen:
            break
        seen.add(str(current.resolve()))
        steps.append(Step(current, manifest))
        parent = (manifest.get("parent") or {}).get("path")
        current = Path(parent) if parent else None
    steps.reverse()
    root = steps[0].parent if steps else {}
    return Ancestry(root=dict(root), steps=tuple(steps))


def summarize(step: Step) -> dict:
    """The lineage facts of one stage, flat, for tables."""
    m = step.manifest
    data_sources = m.get("data_sources") or {}
    git = m.get("git") or {}
    return {
        "stage": step.stage,
        "variant": step.variant,
        "checkpoint": str(step.checkpoint),
        "content_hash": m.get("content_hash"),
        "input": step.parent.get("path"),
        "input_hash": step.parent.get("hash"),
        "recipe_hash": m.get("config_hash"),
        "data": data_sources,
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "packages": m.get("packages") or {},
        "wall_time_s": m.get("wall_time_s"),
        "created_at": m.get("created_at"),
    }
