"""Atomic directories, manifests, hashes and resumable-state bookkeeping (posttrain/checkpoints.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain import checkpoints as C


def test_atomic_dir_commits_on_success_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "ckpt"
    with C.atomic_dir(target) as tmp:
        assert tmp != target and not target.exists()
        (tmp / "weights.bin").write_bytes(b"abc")
    assert (target / "weights.bin").read_bytes() == b"abc"

    with pytest.raises(RuntimeError):
        with C.atomic_dir(tmp_path / "broken") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed mid-write")
    assert not (tmp_path / "broken").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind


def test_atomic_dir_replaces_an_existing_target_whole(tmp_path):
    target = tmp_path / "ckpt"
    with C.atomic_dir(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with C.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


KILLED_WRITER = """
import sys, time
from posttrain import checkpoints as C
with C.writing_resumable(sys.argv[1], 20, {"note": "second"}, keep_last=3) as tmp:
    (tmp / "part0").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_never_leaves_a_complete_looking_checkpoint(tmp_path):
    """SIGKILL during a resumable write: the previous checkpoint stays the latest; the debris is swept."""
    with C.writing_resumable(tmp_path, 10, {"note": "first"}, keep_last=3) as tmp:
        (tmp / "part0").write_bytes(b"ok")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    latest = C.latest_resumable(tmp_path)
    assert latest.name == "step_00000010"
    assert C.read_json(latest / C.TRAINER_STATE) == {"note": "first", "step": 10}
    debris = [p for p in (tmp_path / C.RESUMABLE_DIR).iterdir() if p.name.startswith(".")]
    assert debris, "the killed writer's temporary directory should be there to sweep"
    assert C.sweep_temporaries(tmp_path / C.RESUMABLE_DIR) == debris
    assert [p.name for p in (tmp_path / C.RESUMABLE_DIR).iterdir()] == ["step_00000010"]


def test_resumable_keep_last_and_incomplete_directories(tmp_path):
    for step in (5, 10, 15):
        with C.writing_resumable(tmp_path, step, {"data_position": step}, keep_last=2):
            pass
    assert [p.name for p in C.resumable_dirs(tmp_path)] == ["step_00000010", "step_00000015"]
    # a directory without trainer_state.json (written by hand, or by an old crash) is not complete
    (tmp_path / C.RESUMABLE_DIR / "step_00000020").mkdir()
    assert C.latest_resumable(tmp_path).name == "step_00000015"
    assert C.read_json(C.latest_resumable(tmp_path) / C.TRAINER_STATE)["data_position"] == 15
    C.clear_resumable(tmp_path)
    assert C.latest_resumable(tmp_path) is None


def test_directory_hash_tracks_content_and_ignores_the_manifest(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"1234")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text("{}")
    first = C.directory_hash(tmp_path, exclude=(C.MANIFEST,))
    (tmp_path / C.MANIFEST).write_text(json.dumps({"metrics": 1}))
    assert C.directory_hash(tmp_path, exclude=(C.MANIFEST,)) == first
    (tmp_path / "a.bin").write_bytes(b"1235")
    assert C.directory_hash(tmp_path, exclude=(C.MANIFEST,)) != first
    assert len(first) == 16


def test_checkpoint_hash_reads_the_manifest_and_names_hub_models(tmp_path):
    (tmp_path / "w").write_bytes(b"w")
    computed = C.checkpoint_hash(tmp_path)
    C.write_json_atomic(tmp_path / C.MANIFEST, {"content_hash": "cafe"})
    assert C.checkpoint_hash(tmp_path) == "cafe"
    assert C.checkpoint_hash(tmp_path, use_manifest=False) == computed
    assert C.checkpoint_hash("allenai/Olmo-3-1025-7B").startswith("name:")


def test_manifest_records_lineage_and_environment(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "model.safetensors").write_bytes(b"weights")
    manifest = C.build_manifest(stage="sft", config={"optim": {"lr": 1e-4}}, config_hash="abc", parent=parent,
                                data={"examples": 3}, metrics={"loss": 1.5}, wall_time_s=2.0)
    assert manifest["parent"] == {"path": str(parent), "hash": C.directory_hash(parent, exclude=(C.MANIFEST,))}
    assert manifest["packages"]["torch"] and manifest["packages"]["transformers"]
    assert set(manifest["git"]) == {"commit", "dirty"}
    assert manifest["data"] == {"examples": 3} and manifest["metrics"] == {"loss": 1.5}
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"new")
    C.finalize_export(out, manifest)
    written = C.read_json(out / C.MANIFEST)
    assert written["content_hash"] == C.checkpoint_hash(out, use_manifest=False)


def test_write_json_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "state.json"
    C.write_json_atomic(path, {"step": 1})
    C.write_json_atomic(path, {"step": 2})
    assert C.read_json(path) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_manifests_fingerprint_every_data_source_by_content(tmp_path):
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout"
    train.write_text('{"a": 1}\n')
    heldout.mkdir()
    (heldout / "part.jsonl").write_text('{"b": 2}\n')
    config = {"data": {"train": [{"path": str(train)}, {"path": "allenai/some-hub-set", "revision": "v1.2"}],
                       "heldout": [{"path": str(heldout)}]}}
    first = C.data_source_fingerprints(config)  # offline (tests/conftest.py): the hub commit cannot be resolved
    assert first == {str(train): C.source_fingerprint(train), "allenai/some-hub-set": "allenai/some-hub-set@unresolved:v1.2",
                     str(heldout): C.directory_hash(heldout)}
    manifest = C.build_manifest(stage="sft", config=config, config_hash="x", parent=None)
    assert manifest["data_sources"] == first
    train.write_text('{"a": 2}\n')  # same size, other bytes
    assert C.data_source_fingerprints(config)[str(train)] != first[str(train)]


def test_a_complete_export_needs_manifest_config_and_weights_and_ignores_the_model_card(tmp_path):
    target = tmp_path / "checkpoint"
    with C.atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"w")
        C.finalize_export(tmp, {"stage": "sft"})
    assert C.is_complete_export(target)
    stored = C.read_json(target / C.MANIFEST)["content_hash"]
    (target / C.MODEL_CARD).write_text("# card")  # documentation, regenerated: not part of the content
    assert C.checkpoint_hash(target, use_manifest=False) == stored
    (target / "model.safetensors").unlink()
    assert not C.is_complete_export(target)
    assert not C.is_complete_export(tmp_path / "missing")
