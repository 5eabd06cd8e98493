"""Warmup-then-decay learning-rate factors (posttrain/learner/schedule.py), worked by hand."""

from __future__ import annotations

import math
import pickle

import pytest

from posttrain.learner.schedule import LRLambda, lr_factor, warmup_steps


def test_linear_warmup_then_linear_decay_to_zero():
    # total 10, W 2: warmup (s+1)/3, then 1 - (s-2)/8
    got = [lr_factor(s, 10, 2, "linear") for s in range(10)]
    want = [1 / 3, 2 / 3, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert got == pytest.approx(want)


def test_cosine_and_constant():
    assert lr_factor(0, 5, 0, "cosine") == pytest.approx(1.0)
    assert lr_factor(2, 4, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert [lr_factor(s, 4, 1, "constant") for s in range(4)] == pytest.approx([0.5, 1, 1, 1])


def test_warmup_steps_from_ratio():
    assert warmup_steps(100, 0.03) == 3  # Olmo 3 SFT: 3% of the steps
    assert warmup_steps(10, 0.0) == 0
    assert warmup_steps(4, 1.0) == 3  # never the whole run


def test_unknown_schedule_names_the_valid_ones():
    with pytest.raises(KeyError, match="constant, cosine, linear"):
        LRLambda(10, 1, "cosin")


def test_the_lambda_pickles():
    fn = pickle.loads(pickle.dumps(LRLambda(10, 2, "linear")))
    assert fn(3) == pytest.approx(7 / 8)
