"""Plugging verifiers in: recipe modules (`verifiers.modules`) and the `posttrain.verifiers` entry points."""

from __future__ import annotations

import uuid

import pytest

import rewards
from rewards import core


def _unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def test_module_plugin_from_a_directory_on_sys_path(tmp_path, monkeypatch):
    module = _unique("myrewards")
    (tmp_path / f"{module}.py").write_text(
        "import rewards\n\n"
        f"@rewards.register('{module}_len')\n"
        "def length_is_label(prediction, label, **context):\n"
        "    return len(prediction) == int(label)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert f"{module}_len" not in rewards.names()
    assert rewards.load_plugins([module]) == [f"{module}_len"]
    assert rewards.score(f"{module}_len", "<think>long thoughts</think>abc", 3) == 1.0
    results = rewards.score_batch([{"verifier": f"{module}_len", "prediction": p, "label": 3} for p in ["abc", "ab", "xyz"]], max_workers=2)
    assert [r.score for r in results] == [1.0, 0.0, 1.0]


def test_missing_plugin_module_names_it():
    with pytest.raises(ImportError, match="verifier module 'no_such_plugin_module' .*cannot be imported"):
        rewards.load_plugins(["no_such_plugin_module"])


def _dist_info(root, dist: str, entries: dict[str, str]) -> None:
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{rewards.ENTRY_POINT_GROUP}]\n{lines}\n")


def test_entry_points_register_callables_and_modules(tmp_path, monkeypatch):
    plain = _unique("ep_module")
    decorated = _unique("ep_decorated")
    (tmp_path / f"{plain}.py").write_text(
        "def exact(prediction, label, **context):\n"
        "    return prediction.strip() == str(label)\n"
        "class Half:\n"
        "    def __call__(self, prediction, label, **context):\n"
        "        return 0.5\n"
    )
    (tmp_path / f"{decorated}.py").write_text(
        "import rewards\n"
        f"@rewards.register('{decorated}_yes')\n"
        "def yes(prediction, label, **context):\n"
        "    return prediction == 'yes'\n"
    )
    names = {"exact": _unique("ep_exact"), "half": _unique("ep_half")}
    _dist_info(tmp_path, _unique("ptplugin"), {
        names["exact"]: f"{plain}:exact",
        names["half"]: f"{plain}:Half",
        _unique("ep_pkg"): decorated,  # a module whose import registers its verifiers
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    core.reload_entry_points()
    available = rewards.names()  # entry points load on first use
    assert {names["exact"], names["half"], f"{decorated}_yes"} <= set(available)
    assert rewards.score(names["exact"], " 42 ", 42) == 1.0
    assert rewards.score(names["half"], "x") == 0.5
    assert rewards.score(f"{decorated}_yes", "<think>no</think>yes") == 1.0
    items = [
        {"verifier": names["exact"], "prediction": "7", "label": 7},
        {"verifier": names["exact"], "prediction": "8", "label": 7},
        {"verifier": names["half"], "prediction": "x"},
        {"verifier": f"{decorated}_yes", "prediction": "yes"},
    ]
    assert [r.score for r in rewards.score_batch(items, max_workers=2)] == [1.0, 0.0, 0.5, 1.0]


def test_broken_entry_point_names_itself(tmp_path, monkeypatch):
    name = _unique("ep_broken")
    _dist_info(tmp_path, _unique("ptbroken"), {name: "module_that_is_not_there:thing"})
    monkeypatch.syspath_prepend(str(tmp_path))
    core.reload_entry_points()
    try:
        with pytest.raises(ImportError, match=f"entry point '{name}'.*posttrain.verifiers"):
            rewards.names()
    finally:
        monkeypatch.undo()
        core.reload_entry_points()
        rewards.names()
