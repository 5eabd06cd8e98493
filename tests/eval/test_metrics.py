"""pass@k against brute force over subsets, maj@k by hand, task_metrics' means and standard errors worked out."""

from __future__ import annotations

import math
from itertools import combinations

import pytest

from posttrain.eval.metrics import majority_at_k, pass_at_k, task_metrics


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (the first c correct) that hold at least one correct sample."""
    subsets = list(combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_is_the_share_of_k_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_1_is_the_pass_rate_and_bad_arguments_raise():
    assert pass_at_k(32, 8, 1) == pytest.approx(0.25)
    assert pass_at_k(10, 0, 10) == 0.0 and pass_at_k(10, 1, 10) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_votes_over_the_first_k_answers():
    answers, correct = ["4", "5", "5", "4", "4"], [True, False, False, True, True]
    assert majority_at_k(answers, correct, 3) == 0.0  # "5" twice in the first three
    assert majority_at_k(answers, correct, 5) == 1.0  # "4" three times in five
    assert majority_at_k(answers, correct, 1) == 1.0
    assert majority_at_k(["5", "4"], [False, True], 2) == 0.0  # a tie goes to the answer given first
    assert majority_at_k(["", "", "4"], [False, False, True], 3) == 1.0  # no answer does not vote
    assert majority_at_k(["", ""], [False, False], 2) == 0.0
    with pytest.raises(ValueError):
        majority_at_k(["4"], [True], 2)


def test_task_metrics_by_hand():
    """Three items, two samples each: pass rates 1/2, 1, 0 -> pass@1 1/2, sample sd 1/2, stderr 1/(2 sqrt 3);
    pass@2: 1, 1, 0 -> 2/3, sd 1/sqrt 3, stderr 1/3. A score counts as a pass from 1 - 1e-6."""
    scores = [[1.0, 0.5], [0.9999995, 1.0], [0.0, 0.99]]
    answers = [["4", "3"], ["7", "7"], ["1", "2"]]
    out = task_metrics(scores, ["pass@1", "pass@2", "maj@2"], answers)
    assert out["pass@1"]["value"] == pytest.approx(0.5) and out["pass@1"]["stderr"] == pytest.approx(0.5 / math.sqrt(3))
    assert out["pass@2"]["value"] == pytest.approx(2 / 3) and out["pass@2"]["stderr"] == pytest.approx(1 / 3)
    assert out["maj@2"]["value"] == pytest.approx(2 / 3)  # "4" (tie, first), "7", "1"
    assert {m["n"] for m in out.values()} == {3}
    assert task_metrics([[1.0]], ["pass@1"]) == {"pass@1": {"value": 1.0, "stderr": 0.0, "n": 1}}


def test_task_metrics_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="needs each sample's extracted answer"):
        task_metrics([[1.0, 0.0]], ["maj@2"])
    with pytest.raises(ValueError, match="pass@K or maj@K"):
        task_metrics([[1.0]], ["accuracy"])
    with pytest.raises(ValueError):
        task_metrics([[1.0]], ["pass@2"])  # one sample cannot give pass@2
