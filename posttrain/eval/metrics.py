"""Benchmark metrics over sampled responses: pass@K and maj@K, with standard errors over items.

Pure functions: scores (and extracted answers) in, numbers out.

- `pass@K`: the unbiased estimator of Chen et al. 2021 ("Evaluating Large
  Language Models Trained on Code", arXiv 2107.03374, Figure 3): with n
  samples of which c pass, 1 - C(n-c, K) / C(n, K), computed as a product
  for numerical stability. pass@1 is the mean pass rate over the samples.
- `maj@K`: the answer given most often among the first K samples (ties go
  to the one given first; empty answers do not vote) is right.

A sample passes when its score is at least 1 - 1e-6 (a code answer passes
every test; an IFEval answer follows every constraint), as in
`posttrain.eval.heldout`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Optional, Sequence

from posttrain.registry import Registry

PASS = 1.0 - 1e-6
_METRIC = re.compile(r"^(pass|maj)@([1-9][0-9]*)$")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct.

    1 - prod_{i=n-c+1}^{n} (1 - k/i); 1.0 when n - c < k (every k-subset holds a correct one).

    >>> pass_at_k(2, 1, 1)
    0.5
    >>> round(pass_at_k(4, 1, 2), 6)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(5, 4, 2)
    1.0
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_at_k(answers: Sequence[str], correct: Sequence[bool], k: int) -> float:
    """1.0 when the most common non-empty answer among the first k is correct, else 0.0.

    `correct[i]` says whether `answers[i]` is right; answers are compared as
    given (normalise them before). Ties go to the answer seen first.

    >>> majority_at_k(["4", "5", "4"], [True, False, True], 3)
    1.0
    >>> majority_at_k(["5", "4", "5", "4"], [False, True, False, True], 4)  # tie: "5" came first
    0.0
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@{k} needs at least {k} samples; got {len(answers)}")
    votes = Counter(a for a in answers[:k] if a)
    if not votes:
        return 0.0
    winner = votes.most_common(1)[0][0]  # Counter keeps first-seen order among equal counts
    return 1.0 if any(ok for a, ok in zip(answers[:k], correct[:k]) if a == winner) else 0.0


# metric kind -> (item's sample scores, item's answers or None, K) -> the item's value
ItemMetric = Callable[[Sequence[float], Optional[Sequence[str]], int], float]
METRICS: Registry[ItemMetric] = Registry("metric")


@METRICS.register("pass")
def _pass_item(scores: Sequence[float], answers: Optional[Sequence[str]], k: int) -> float:
    return pass_at_k(len(scores), sum(s >= PASS for s in scores), k)


@METRICS.register("maj")
def _maj_item(scores: Sequence[float], answers: Optional[Sequence[str]], k: int) -> float:
    if answers is None:
        raise ValueError(f"maj@{k} needs each sample's extracted answer (task_metrics `answers`)")
    return majority_at_k(answers, [s >= PASS for s in scores], k)


def task_metrics(scores: Sequence[Sequence[float]], metrics: Sequence[str],
                 answers: Optional[Sequence[Sequence[str]]] = None) -> dict[str, dict]:
    """Each metric's mean over items, its standard error over items and the item count.

    scores: one list per item of its samples' scores in [0, 1] (n per item);
    answers: the same shape, each sample's extracted answer (for maj@K).
    Returns {metric: {"value", "stderr", "n"}}; stderr is the sample standard
    deviation over items (ddof 1) divided by sqrt(items), 0 for one item.
    """
    if answers is not None and len(answers) != len(scores):
        raise ValueError(f"{len(scores)} items of scores but {len(answers)} of answers")
    out = {}
    for metric in metrics:
        match = _METRIC.match(metric)
        if match is None:
            raise ValueError(f"unknown metric {metric!r}: expected pass@K or maj@K")
        fn, k = METRICS.get(match.group(1)), int(match.group(2))
        values = [fn(item, None if answers is None else answers[i], k) for i, item in enumerate(scores)]
        out[metric] = {"value": _mean(values), "stderr": _stderr(values), "n": len(values)}
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _stderr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0 if values else float("nan")
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
