"""Benchmark tasks: every file loads; hand-written rows in each hub schema become items that the task's verifier
scores right (a correct response passes, a wrong one fails); suites, released numbers; user tasks without a fork."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import rewards
from posttrain.eval import task_data as D
from posttrain.eval import tasks as T
from posttrain.eval.metrics import PASS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
BUILTIN = {"gsm8k", "minerva_math", "aime2024", "aime2025", "humaneval", "humanevalplus", "mbppplus", "livecodebench",
           "ifeval", "ifbench", "alpacaeval"}


def fence(code: str) -> str:
    return f"Here is the completed function:\n\n```python\n{code}\n```"


def items_of(name: str, fixture: str | None = None) -> tuple[T.TaskSpec, list[D.EvalItem]]:
    task = T.get_task(name)
    return task, D.load_items(task, path=str(FIXTURES / (fixture or name)))


def scores(task: T.TaskSpec, items: list[D.EvalItem], predictions: list[str]) -> list[rewards.Result]:
    batch = [{"verifier": item.verifier, "prediction": p, "label": item.label} for item, p in zip(items, predictions)]
    return rewards.score_batch(batch, max_workers=1, options=task.verifier_options)


# --------------------------------------------------------------------------
# The task files


def test_every_builtin_task_file_loads_with_known_verifiers_and_olmo3_sampling():
    assert set(T.task_names()) == BUILTIN
    for name in T.task_names():
        task = T.get_task(name)
        assert task.name == name and task.description
        rewards.parse_spec(task.verifier)  # raises on an unknown verifier
        assert set(task.verifier_options) <= set(rewards.names())
        assert (task.sampling.temperature, task.sampling.top_p, task.sampling.max_tokens) == (0.6, 0.95, 32768)
        assert task.primary in task.metrics
    assert T.get_task("aime2025").sampling.n == 32 and "maj@32" in T.get_task("aime2025").metrics


def test_only_known_commits_are_pinned():
    pinned = {name: T.get_task(name).dataset.revision for name in T.task_names()}
    assert pinned.pop("humanevalplus") == "d32357cf319e50e9c8d8dab5ea876c72b0fd321b"
    assert pinned.pop("mbppplus") == "b2d74c91837c3f2a20c1299ae98133cbe7cfa077"
    assert set(pinned.values()) == {None}


def test_a_task_is_checked_when_it_loads(tmp_path):
    base = T.get_task("gsm8k").model_dump()
    with pytest.raises(ValueError, match="needs at least 8 samples"):
        T.TaskSpec.model_validate({**base, "metrics": ["pass@1", "pass@8"]})
    with pytest.raises(ValueError, match="primary"):
        T.TaskSpec.model_validate({**base, "primary": "maj@1"})
    with pytest.raises(ValueError, match="not pass@K or maj@K"):
        T.TaskSpec.model_validate({**base, "metrics": ["accuracy"], "primary": "accuracy"})
    with pytest.raises(ValueError, match="unknown label parser 'gsm8k_finall'. Did you mean 'gsm8k_final'"):
        T.TaskSpec.model_validate({**base, "label_parser": "gsm8k_finall"})
    with pytest.raises(ValueError, match="Extra inputs"):
        T.TaskSpec.model_validate({**base, "temperature": 0.0})
    with pytest.raises(KeyError, match="gsm8k"):
        T.get_task("gsm8kk")


def test_suites_list_loadable_tasks_and_the_released_numbers_name_them():
    for name, variant in (("olmo3-think", "think"), ("olmo3-instruct", "instruct")):
        suite = T.get_suite(name)
        assert suite.variant == variant and "humanevalplus" in suite.tasks
        numbers, source = T.released_numbers(name)
        assert set(numbers) <= set(suite.tasks) and "2512.13961" in source
    think, _ = T.released_numbers("olmo3-think")
    instruct, _ = T.released_numbers("olmo3-instruct")
    assert think["minerva_math"] == {"sft": 94.4, "dpo": 92.4, "final": 95.1}
    assert think["aime2024"] == {"final": 71.6} and think["livecodebench"] == {"final": 75.2}
    assert instruct["aime2025"] == {"sft": 7.2, "dpo": 20.4, "final": 32.5} and instruct["ifbench"] == {"final": 32.3}


# --------------------------------------------------------------------------
# Items from hand-written rows, scored by each task's verifier


# task -> per fixture row: (a correct response, a wrong one)
RESPONSES = {
    "gsm8k": [("48 / 2 = 24 in May, and 48 + 24 = 72.\nAnswer: 72", "Answer: 70"),
              ("<think>1000*2+250</think>Answer: 2,250", "Answer: 2,000")],
    "minerva_math": [(r"So the point is $\boxed{\left( 3, \frac{\pi}{2} \right)}$.", r"$\boxed{(3, \pi)}$"),
                     (r"<think>3/6 + 2/6</think>The sum is $\boxed{\frac{5}{6}}$.", r"$\boxed{\frac{2}{5}}$")],
    "aime2024": [(r"The walk takes $\boxed{204}$ minutes.", r"$\boxed{240}$"), (r"$\boxed{33}$", r"$\boxed{34}$")],
    "aime2025": [(r"<think>b+7 divides 56</think>$\boxed{70}$", r"$\boxed{16}$"), (r"$\boxed{588}$", r"$\boxed{585}$")],
    "humaneval": [(fence("def add(a: int, b: int) -> int:\n    return a + b"), fence("def add(a, b):\n    return a - b"))],
    "humanevalplus": [(fence("def add(x: int, y: int):\n    return x + y"), fence("def add(x, y):\n    return x + y + (x > 400)"))],
    "mbppplus": [
        (fence("def similar_elements(a, b):\n    return tuple(set(a) & set(b))"),
         fence("def similar_elements(a, b):\n    return tuple(set(a) | set(b))")),
        # no `import math` in the program: the test script's use of math needs the row's test_imports
        (fence("def is_not_prime(n):\n    if n < 2:\n        return True\n    i = 2\n    while i * i <= n:\n"
               "        if n % i == 0:\n            return True\n        i += 1\n    return False"),
         fence("def is_not_prime(n):\n    return n % 2 == 0")),
    ],
    "livecodebench": [
        (fence("a, b = map(int, input().split())\nprint(a + b)"), fence("a, b = map(int, input().split())\nprint(a - b)")),
        (fence("from typing import List\n\nclass Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
               "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
               "                return [seen[target - x], i]\n            seen[x] = i"),
         fence("class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]")),
    ],
    "ifeval": [
        ("*Raymond the count*\n\n" + "word " * 310 + "\n\n*His wars*\n\n*His death*",
         "*Raymond the count*\n\n" + "word, " * 310 + "\n\n*His wars*\n\n*His death*"),
        ("<<Ode to a cat>>\nSoft paws on the sill.", "Ode to a cat: soft paws on the sill."),
    ],
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_a_correct_response_passes_and_a_wrong_one_fails(name):
    fixture = "humaneval/problems.jsonl" if name == "humaneval" else None
    task, items = items_of(name, fixture)
    cases = RESPONSES[name]
    assert len(items) == len(cases)
    for item in items:
        assert item.messages[-1]["role"] == "user" and item.messages[-1]["content"]
        assert item.id.startswith(f"{name}/")
    results = scores(task, items * 2, [good for good, _ in cases] + [bad for _, bad in cases])
    right, wrong = results[:len(items)], results[len(items):]
    assert all(r.score >= PASS for r in right), [r.reason for r in right]
    assert all(r.score < PASS for r in wrong), [r.reason for r in wrong]


def test_labels_are_parsed_as_the_verifiers_expect():
    assert [i.label for i in items_of("gsm8k")[1]] == ["72", "2250"]
    assert [i.label for i in items_of("aime2024")[1]] == ["204", "33"]
    assert [i.label for i in items_of("aime2025")[1]] == ["70", "588"]
    prompt = items_of("minerva_math")[1][1].messages[0]["content"]
    assert prompt.endswith("Present the answer in LaTex format: \\boxed{Your answer}")
    mbpp = items_of("mbppplus")[1][1]
    assert mbpp.label["tests"][0].startswith("import math\n") and "assert is_not_prime(2) == False" in mbpp.messages[0]["content"]
    ifeval = items_of("ifeval")[1][0].label
    assert ifeval["instruction_id_list"][1] == "detectable_format:number_highlighted_sections"
    assert ifeval["kwargs"][1]["num_highlights"] == 3


def test_livecodebench_decodes_private_tests_and_routes_by_test_type():
    task, (stdin, functional) = items_of("livecodebench")
    assert task.system and stdin.messages[0]["role"] == "system"
    assert stdin.verifier == "code_stdio" and functional.verifier == "code"
    assert stdin.label["tests"] == [{"input": "1 2\n", "output": "3\n"}, {"input": "10 20\n", "output": "30\n"},
                                    {"input": "-5 5\n", "output": "0\n"}]
    assert len(functional.label["tests"]) == 3 and "Solution().twoSum(*[[3, 2, 4], 6])" in functional.label["tests"][1]
    assert not functional.row["private_test_cases"].startswith("[")  # the fixture holds them encoded, as the hub does


def test_a_private_test_pickle_that_names_code_is_refused(tmp_path):
    import base64
    import json
    import os
    import pickle
    import zlib

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    row = json.loads((FIXTURES / "livecodebench" / "test.jsonl").read_text().splitlines()[0])
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Boom()))).decode()
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="cannot decode: the pickle names"):
        D.load_items(T.get_task("livecodebench"), path=str(tmp_path))


def test_ifbench_instructions_the_ifeval_verifier_lacks_are_reported_unscored_not_hidden():
    task, (unknown, known) = items_of("ifbench")
    assert "UNSCORED" in task.description
    rewards.unscored_counts(reset=True)
    results = scores(task, [unknown, known, known], ["Golden light wakes slowly", "<<Rain>>", "Rain"])
    assert results[0].scored is False and "count:word_count_range" in results[0].reason
    assert results[1].score == 1.0 and results[2].score == 0.0 and results[1].scored and results[2].scored
    assert rewards.unscored_counts() == {"ifeval: error": 1}


def test_alpacaeval_items_carry_the_reference_and_an_unset_judge_is_reported_unscored():
    task, (item,) = items_of("alpacaeval")
    assert item.verifier == "llm_judge"
    assert "1. Sarah Jessica Parker" in item.label and "famous actors" in item.label
    assert item.messages == [{"role": "user", "content": item.row["instruction"]}]
    rewards.unscored_counts(reset=True)
    (result,) = scores(task, [item], ["Hugh Jackman and Idina Menzel."])
    assert result.scored is False and "endpoint" in result.reason
    assert rewards.unscored_counts() == {"llm_judge: error": 1}


@pytest.mark.slow
def test_all_164_canonical_humaneval_solutions_pass():
    task = T.get_task("humaneval")
    items = D.load_items(task)
    assert len(items) == 164
    predictions = [f"```python\n{item.row['prompt']}{item.row['canonical_solution']}\n```" for item in items]
    batch = [{"verifier": item.verifier, "prediction": p, "label": item.label} for item, p in zip(items, predictions)]
    results = rewards.score_batch(batch, max_workers=2, options=task.verifier_options)
    failed = {item.id: r.reason for item, r in zip(items, results) if r.score < 1.0}
    assert not failed and len(results) == 164


def test_limit_takes_the_first_rows():
    task = T.get_task("gsm8k")
    assert [i.label for i in D.load_items(task, limit=1, path=str(FIXTURES / "gsm8k"))] == ["72"]


# --------------------------------------------------------------------------
# User tasks: a YAML path, an entry point


USER_TASK = """\
description: word problems, my way
dataset: {path: %s, split: test}
fields: {q: question}
system: Be brief.
prompt: "Q: {q}"
label: answer
label_parser: gsm8k_final
verifier: gsm8k
"""


def test_a_user_task_from_a_yaml_path(tmp_path):
    path = tmp_path / "my_gsm.yaml"
    path.write_text(USER_TASK % (FIXTURES / "gsm8k"))
    task = T.get_task(str(path))
    assert task.name == "my_gsm"
    items = D.load_items(task)
    assert items[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert items[0].messages[1]["content"].startswith("Q: Natalia") and items[0].label == "72"


def test_a_user_task_from_an_entry_point(tmp_path, monkeypatch):
    yaml_path = tmp_path / "from_file.yaml"
    yaml_path.write_text(USER_TASK % (FIXTURES / "gsm8k"))
    (tmp_path / "my_eval_tasks.py").write_text(
        "from posttrain.eval.tasks import TaskSpec\n"
        f"SPEC = {{'prompt': '{{question}}', 'label': 'answer', 'label_parser': 'gsm8k_final', 'verifier': 'gsm8k',\n"
        f"        'dataset': {{'path': {str(FIXTURES / 'gsm8k')!r}}}}}\n"
        "BUILT = TaskSpec(name='built', **SPEC)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    EP = importlib.metadata.EntryPoint
    points = [EP("from_dict", "my_eval_tasks:SPEC", T.ENTRY_POINT_GROUP),
              EP("from_spec", "my_eval_tasks:BUILT", T.ENTRY_POINT_GROUP),
              EP("from_yaml", str(yaml_path), T.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [p for p in points if p.group == group])
    assert T.get_task("from_dict").name == "from_dict"
    assert T.get_task("from_spec").name == "built"
    assert T.get_task("from_yaml").name == "from_file"
    for name in ("from_dict", "from_spec", "from_yaml"):
        assert [i.label for i in D.load_items(T.get_task(name))] == ["72", "2250"]
    with pytest.raises(KeyError, match="from_dict"):
        T.get_task("from_dic")
