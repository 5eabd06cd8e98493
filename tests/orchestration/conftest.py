"""Fixtures shared by the Ray tests of this directory."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the module (3 logical CPUs), or the test run's Ray under pytest-xdist (joined)."""
    import ray

    from posttrain.orchestration.cluster import init_ray

    started = not ray.is_initialized()
    init_ray(num_cpus=3)
    yield
    if started:
        ray.shutdown()
