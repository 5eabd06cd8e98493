"""Every docstring example in rewards/ runs (each built-in verifier carries one)."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import rewards

MODULES = ["rewards.core", "rewards.math", "rewards.math_expr", "rewards.ifeval", "rewards.ifeval_text", "rewards.code", "rewards.text", "rewards.judge"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
    assert result.attempted > 0


def test_every_builtin_verifier_has_an_example():
    builtin = [n for n in rewards.names() if (rewards.core.origin(n)[0] or "").startswith("rewards.")]
    assert len(builtin) >= 12
    for name in builtin:
        verifier = rewards.get(name)
        doc = inspect.getdoc(verifier if inspect.isfunction(verifier) else type(verifier)) or ""
        assert ">>> " in doc and f'"{name}"' in doc, f"verifier {name!r} has no runnable example"
