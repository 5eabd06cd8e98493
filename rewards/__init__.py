"""Verifiable rewards: a registry of verifiers, the built-in ones, and batch scoring.

    import rewards
    rewards.score("math", "... so the answer is \\\\boxed{4}", "4")        # 1.0
    rewards.names()                                                      # ['code', 'code_stdio', ...]
    rewards.score_batch([{"verifier": "gsm8k", "prediction": "42", "label": "42"}])[0].score

    @rewards.register("shout")
    def shout(prediction, label, **context):
        return prediction.isupper()

A verifier gets the answer text (after the last `</think>`), the row's label
and any context (row keys, recipe `verifiers.options.<name>`) and returns a
float in [0, 1], a bool, `None` ("cannot score": 0, reason counted) or a
`Result`. `score` never raises for anything a model writes; only an unknown
verifier name raises, listing the valid ones. `score_batch` scores in worker
processes that survive hanging and crashing verifiers (rewards/workers.py).

Plugins: `load_plugins(["mypkg.rewards"])` imports modules that register
verifiers (the recipe's `verifiers.modules`); installed packages can declare
entry points in the group `posttrain.verifiers`, loaded on first use.
"""

from rewards.core import (
    ENTRY_POINT_GROUP,
    Result,
    UnknownNameError,
    answer_text,
    evaluate,
    get,
    load_plugins,
    names,
    parse_spec,
    register,
    score,
    unscored_counts,
)
from rewards.workers import close_pools, score_batch

# Built-in verifiers register themselves on import; their heavy libraries load on first use.
from rewards import code, ifeval, judge, math, text  # noqa: E402,F401  isort: skip

__all__ = [
    "ENTRY_POINT_GROUP",
    "Result",
    "UnknownNameError",
    "answer_text",
    "close_pools",
    "evaluate",
    "get",
    "load_plugins",
    "names",
    "parse_spec",
    "register",
    "score",
    "score_batch",
    "unscored_counts",
]
