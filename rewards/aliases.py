"""Verifier names as open-instruct's datasets write them -> the names registered here.

The released Olmo 3 RL rows name their verifier in a `dataset` column
(`math`, `code_stdio`, `general-quality_ref`, ...). open-instruct looks each
up by `name.lower()`, exactly (`open_instruct/ground_truth_utils.py`); so does
`resolve`, through `ALIASES` and then a recipe's `verifiers.aliases`, which
wins. Names open-instruct has and this project has no verifier for (`flan`,
`puzzle`, `re_search`, `re_search_f1`) are not in the table: a row naming one
stays an error at load time (`posttrain.data.released`).

>>> resolve("string_matcher")
'string_match'
>>> resolve("General-Quality_Ref")
'llm_judge'
>>> resolve("puzzle", {"puzzle": "string_match"})
'string_match'
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

_SAME = ("gsm8k", "math", "strict_math", "ifeval", "string_f1", "max_length", "up_to_max_length", "code", "code_stdio")
# open-instruct's LLM-judge verifiers: one judge here, its prompt and model set by `verifiers.options.llm_judge`
_JUDGES = ("general-quality", "general-quality_rubric", "general-quality_ref", "general-safety", "general-factuality",
           "general-creative_writing", "general-refusal", "general-web_instruct_general_verifier")

ALIASES: Mapping[str, str] = MappingProxyType({
    **{name: name for name in _SAME},  # the same verifier under the same name
    "ifeval_old": "ifeval",  # the older IFEval label format; `ifeval` reads the same constraint dicts
    "string_matcher": "string_match",
    **{name: "llm_judge" for name in _JUDGES},
})


def resolve(name: str, extra: Mapping[str, str] = MappingProxyType({})) -> str:
    """The registered name for a data's verifier name: `extra` (a recipe's `verifiers.aliases`), then `ALIASES`,
    both case-insensitively; a name in neither comes back unchanged (a registered or plugin name, or an error
    for the caller to report)."""
    key = name.lower()
    for table in (extra, ALIASES):
        for alias, target in table.items():
            if alias.lower() == key:
                return target
    return name
