"""Toy tasks of the tiny default: arithmetic word problems and instruction following.

A `Task` is one prompt with everything the datasets need: its verifier and
label (RLVR), its correct completion (SFT, DPO chosen), completions that follow
only some of its instructions (the SFT "lapse" knob, DPO rejected) and a wrong
completion (DPO rejected).

- math: word problems with small numbers (sums and differences up to 20,
  products up to 25). The answer is `\\boxed{N}`; verifier `math`, label `"N"`.
  The one "instruction" is the boxed format: its lapse answers the right
  number without the box.
- ifeval: "write about TOPIC" plus one or two IFEval constraints
  (see constraints.py); verifier `ifeval`, label
  `{"instruction_id_list": [...], "kwargs": [...]}` stored as a JSON string so
  one jsonl column holds both domains' labels.

Prompts are unique within a pool; `split_pool` cuts held-out tasks off by
prompt, so no held-out prompt ever appears in a training set.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from typing import Callable

from posttrain.data.chat import think_content
from posttrain.tiny import constraints as C
from posttrain.tiny.lexicon import OBJECTS, PEOPLE, REQUESTS, TOPICS


@dataclass(frozen=True)
class Completion:
    """An assistant answer in both styles.

    Think: `<think>reasoning</think>answer`. Instruct: `direct` (the answer
    with whatever working a direct reply shows; `answer` when not given).
    """

    reasoning: str
    answer: str
    direct: str | None = None

    def think(self) -> str:
        return think_content(self.reasoning, self.answer)

    def instruct(self) -> str:
        return self.answer if self.direct is None else self.direct

    def render(self, style: str) -> str:
        """Assistant content in `style` ("think" or "instruct")."""
        return _RENDER[style](self)


_RENDER = {"think": Completion.think, "instruct": Completion.instruct}


@dataclass(frozen=True)
class Task:
    domain: str                  # "math" or "ifeval"
    prompt: str                  # the user turn
    verifier: str                # rewards verifier name
    ground_truth: str            # the verifier's label (JSON text for ifeval)
    good: Completion             # correct and following every instruction
    partial: tuple[tuple[tuple[bool, ...], Completion], ...]  # (which instructions it follows, completion), never all
    wrong: Completion            # a wrong answer (math) or one that follows no instruction (ifeval)

    @property
    def n_instructions(self) -> int:
        return len(self.partial[0][0])

    def following(self, mask: tuple[bool, ...]) -> Completion:
        """The completion that follows exactly the instructions marked True."""
        if all(mask):
            return self.good
        return dict(self.partial)[tuple(mask)]


# --------------------------------------------------------------------------
# arithmetic word problems

_ADD = (
    "{name} has {a} {obj}. {pron} gets {b} more {obj}. How many {obj} does {name} have now?",
    "There are {a} {obj} on a table and {b} {obj} in a box. How many {obj} are there in all?",
    "{name} found {a} {obj} in the morning and {b} {obj} in the afternoon. How many {obj} did {name} find?",
    "What is {a} plus {b}?",
)
_SUB = (
    "{name} has {a} {obj}. {pron} gives {b} {obj} to {other}. How many {obj} does {name} have left?",
    "There were {a} {obj} in a bag. {name} took {b} of them. How many {obj} are left in the bag?",
    "What is {a} minus {b}?",
)
_MUL = (
    "{name} has {a} boxes with {b} {obj} in each box. How many {obj} does {name} have?",
    "What is {a} times {b}?",
)


def _operands_add(rng: random.Random) -> tuple[int, int, int]:
    a, b = rng.randint(1, 10), rng.randint(1, 10)
    return a, b, a + b


def _operands_sub(rng: random.Random) -> tuple[int, int, int]:
    a = rng.randint(2, 20)
    b = rng.randint(1, a - 1)
    return a, b, a - b


def _operands_mul(rng: random.Random) -> tuple[int, int, int]:
    a, b = rng.randint(2, 5), rng.randint(2, 5)
    return a, b, a * b


# operation -> (prompt templates, operand sampler, symbol, think note, weight)
_OPERATIONS: dict[str, tuple[tuple[str, ...], Callable, str, str, float]] = {
    "add": (_ADD, _operands_add, "+", "I add {a} and {b}.", 0.45),
    "sub": (_SUB, _operands_sub, "-", "I take {b} away from {a}.", 0.4),
    "mul": (_MUL, _operands_mul, "x", "I multiply {a} by {b}.", 0.15),
}


def _math_completion(
    story: str, equation: str, value: int, boxed: bool = True, stated: int | None = None
) -> Completion:
    """Working that reaches `value`, then the final answer: `stated` if given (a slip), else `value`."""
    final = value if stated is None else stated
    shown = f"\\boxed{{{final}}}" if boxed else str(final)
    return Completion(
        reasoning=f"{story} {equation} = {value}.",
        answer=f"The answer is {shown}.",
        direct=f"{equation} = {value}. The answer is {shown}.",
    )


def math_task(rng: random.Random) -> Task:
    """One arithmetic word problem."""
    names = list(_OPERATIONS)
    op = rng.choices(names, weights=[_OPERATIONS[n][4] for n in names])[0]
    templates, operands, symbol, note, _ = _OPERATIONS[op]
    (name, pron), (other, _) = rng.sample(PEOPLE, 2)
    a, b, value = operands(rng)
    prompt = rng.choice(templates).format(name=name, pron=pron, other=other, obj=rng.choice(OBJECTS), a=a, b=b)
    equation, story = f"{a} {symbol} {b}", note.format(a=a, b=b)
    wrong_value = value + rng.choice([d for d in (-2, -1, 1, 2) if value + d >= 0])
    # A wrong answer is a miscalculation in the working or, for every other problem, a slip from right working
    # to a wrong final answer (chosen by parity, so no random draw shifts the other data). DPO can teach a tiny
    # model to answer what it worked out; arithmetic facts it cannot learn from a few hundred pairs.
    slip = (a + b) % 2 == 0
    wrong = (_math_completion(story, equation, value, stated=wrong_value) if slip
             else _math_completion(story, equation, wrong_value))
    return Task(
        domain="math",
        prompt=prompt,
        verifier="math",
        ground_truth=str(value),
        good=_math_completion(story, equation, value),
        partial=(((False,), _math_completion(story, equation, value, boxed=False)),),
        wrong=wrong,
    )


# --------------------------------------------------------------------------
# instruction following

def content(topic: str, rng: random.Random) -> tuple[str, str]:
    """(two plain sentences about the topic, a title for it); the first sentence always has commas.

    The "I think that" opening is there for IFEval's case checks, which also
    ask `langdetect` for English: without it, all-caps sentences such as
    "BREAD IS WARM, FRESH AND BROWN." read as German (about 2% of samples);
    with it, none of 6,000 sampled variants (upper, lower, titled, with an
    end phrase) did.
    """
    subject, adjectives, actions, use = TOPICS[topic]
    x, y, z = rng.sample(adjectives, 3)
    first = f"I think that {subject} is {x}, {y} and {z}."
    second = rng.choice(
        (f"It {rng.choice(actions)}.", f"Many people {use}.", f"Often, it {rng.choice(actions)}.")
    )
    title = rng.choice((f"All About {topic.title()}", f"A Note on {topic.title()}", f"{topic.title()}"))
    return f"{first} {second}", title


def ifeval_task(rng: random.Random, n_constraints: int = 1) -> Task:
    """One 'write about a topic' prompt with `n_constraints` compatible IFEval constraints."""
    topic = rng.choice(sorted(TOPICS))
    ids = C.sample_ids(rng, n_constraints)
    cons = [C.make(instruction_id, rng) for instruction_id in ids]
    text, title = content(topic, rng)
    prompt = " ".join([rng.choice(REQUESTS).format(topic=topic)] + [c.phrase for c in cons])
    opening = f"I will write about {topic}."

    def completion(mask: tuple[bool, ...]) -> Completion:
        followed = [c for c, keep in zip(cons, mask) if keep]
        return Completion(" ".join([opening] + [c.note for c in followed]), C.follow(text, title, followed))

    masks = [m for m in itertools.product((True, False), repeat=n_constraints) if not all(m)]
    return Task(
        domain="ifeval",
        prompt=prompt,
        verifier="ifeval",
        ground_truth=json.dumps(C.label(cons)),
        good=completion((True,) * n_constraints),
        partial=tuple((m, completion(m)) for m in masks),
        wrong=completion((False,) * n_constraints),
    )


# --------------------------------------------------------------------------
# pools and the held-out split

def task_pool(rng: random.Random, make: Callable[[random.Random], Task], size: int, max_tries: int = 50) -> list[Task]:
    """`size` tasks with distinct prompts (fails if the generator runs out of new prompts)."""
    seen: dict[str, Task] = {}
    misses = 0
    while len(seen) < size:
        task = make(rng)
        if task.prompt in seen:
            misses += 1
            if misses > max_tries * size:
                raise RuntimeError(f"only {len(seen)} distinct prompts after {misses} repeats; lower the pool size")
            continue
        seen[task.prompt] = task
    return list(seen.values())


def split_pool(tasks: list[Task], n_heldout: int) -> tuple[list[Task], list[Task]]:
    """(train, heldout): the first `n_heldout` tasks are held out; prompts are distinct, so the sets are disjoint."""
    if n_heldout >= len(tasks):
        raise ValueError(f"held-out size {n_heldout} leaves no training tasks out of {len(tasks)}")
    return tasks[n_heldout:], tasks[:n_heldout]
