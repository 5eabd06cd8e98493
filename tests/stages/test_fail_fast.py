"""A recipe the cluster cannot hold fails before the stage reads any data."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.config import load_recipe
from posttrain.orchestration.cluster import ClusterResourceError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", ["sft", "dpo", "rlvr"])
def test_a_recipe_too_big_for_the_cluster_fails_before_its_data_are_read(stage, tiny_dir, tmp_path):
    from posttrain.stages import driver

    missing = tmp_path / "not-there.jsonl"  # reading it would fail with a DataError instead
    config = load_recipe(REPO / "recipes" / "tiny" / "think" / f"{stage}.yaml", [
        f"model.path={tiny_dir / 'base'}", f"data.train.0.path={missing}", f"output.dir={tmp_path / 'run'}",
        "distributed.num_workers=512", "logging.progress=false"])
    with pytest.raises(ClusterResourceError, match=r"learner 512 x \{'CPU': [0-9.]+\}.*; it does not fit: CPU: needs"):
        driver(stage)(config)
