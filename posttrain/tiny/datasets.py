"""The toy datasets: SFT chats, DPO pairs, RLVR prompts and the pretraining text.

Everything comes from task pools (tasks.py) split once by prompt into train
and held-out pools; every dataset's train split draws only from the train
pools and its held-out split only from the held-out pools, and the
pretraining text uses train prompts only. So no held-out prompt is ever
trained on, in any stage.

The knobs in `DataConfig` shape what later stages can learn. The main one is
`ifeval_lapse`: the chance that an SFT answer ignores each of its prompt's
instructions. With the default 0.5 an SFT model follows a constraint about
half the time, so RLVR groups have reward variance and the policy can fix the
rest (RL on a model this small moves format and constraints, which the policy
can fix, far more than arithmetic facts). SFT held-out rows always follow their
instructions (they measure the intended behaviour).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable

from posttrain.data.chat import THINK_OPEN
from posttrain.tiny import tasks as T
from posttrain.tiny.lexicon import SYSTEM_PROMPTS, TOPICS

STYLES = ("think", "instruct")
DATASETS = ("sft_think", "sft_instruct", "dpo_think", "dpo_instruct", "rlvr")


@dataclass(frozen=True)
class DataConfig:
    """Sizes and knobs of the toy data (defaults are what `posttrain tiny` builds)."""

    sft_train: int = 4000            # SFT conversations per style
    sft_heldout: int = 300
    dpo_train: int = 3000            # DPO pairs per style
    dpo_heldout: int = 300
    rlvr_train: int = 3000           # RLVR prompts (shared by both variants)
    rlvr_dev: int = 200              # RLVR prompts to tune on (the recipes were tuned on these)
    rlvr_heldout: int = 200          # RLVR prompts to report on, never tuned on; >= 200: pass rates to a few points
    ifeval_fraction: float = 0.5     # share of instruction-following tasks in SFT and DPO
    rlvr_ifeval_fraction: float = 0.6  # share of instruction-following prompts in RLVR (the RL lever)
    two_constraint_fraction: float = 0.35  # share of instruction-following tasks with two constraints
    ifeval_lapse: float = 0.5        # per constraint, chance an SFT train answer ignores it (room for RL)
    math_lapse: float = 0.0          # chance an SFT train math answer is unboxed (a format lever for strict verifiers)
    multi_turn_fraction: float = 0.1  # SFT/DPO conversations with an earlier exchange (loss on every assistant turn)
    system_fraction: float = 0.1     # SFT/DPO conversations opening with a system message
    dpo_rejected: dict = field(default_factory=lambda: {"wrong": 0.5, "partial": 0.3, "malformed": 0.2})
    # kinds of DPO rejected answers: wrong number / no instruction followed; a partial follower
    # (unboxed or some instructions missed); a malformed shape for the style
    pool_math: int = 6000            # distinct math prompts in the train pool
    pool_ifeval: int = 6000          # distinct instruction-following prompts in the train pool
    pool_heldout: int = 600          # distinct prompts per domain in the held-out pool
    pretrain_documents: int = 12000  # plain-text documents in the pretraining corpus

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Pools:
    """Task pools per domain ("math", "ifeval1", "ifeval2"), train and held-out."""

    train: dict[str, list[T.Task]]
    heldout: dict[str, list[T.Task]]


def make_pools(cfg: DataConfig, rng: random.Random) -> Pools:
    n_two = round(cfg.pool_ifeval * cfg.two_constraint_fraction)
    makers: dict[str, tuple[Callable[[random.Random], T.Task], int]] = {
        "math": (T.math_task, cfg.pool_math),
        "ifeval1": (lambda r: T.ifeval_task(r, 1), cfg.pool_ifeval - n_two),
        "ifeval2": (lambda r: T.ifeval_task(r, 2), n_two),
    }
    train, heldout = {}, {}
    for name, (make, size) in makers.items():
        pool = T.task_pool(rng, make, size + cfg.pool_heldout)
        train[name], heldout[name] = T.split_pool(pool, cfg.pool_heldout)
    return Pools(train, heldout)


class _Sampler:
    """Draws tasks from one side of the pools with the configured domain mix.

    With `distinct`, no task is drawn twice (held-out sets measure distinct prompts).
    """

    def __init__(self, pools: dict[str, list[T.Task]], cfg: DataConfig, rng: random.Random, distinct: bool = False):
        self.pools, self.cfg, self.rng, self.distinct = pools, cfg, rng, distinct
        self._left = {name: rng.sample(tasks, len(tasks)) for name, tasks in pools.items()} if distinct else {}

    def draw(self, ifeval_fraction: float) -> T.Task:
        if self.rng.random() < ifeval_fraction:
            name = "ifeval2" if self.rng.random() < self.cfg.two_constraint_fraction else "ifeval1"
        else:
            name = "math"
        if not self.distinct:
            return self.rng.choice(self.pools[name])
        if not self._left[name]:
            raise ValueError(f"held-out pool {name!r} exhausted; raise DataConfig.pool_heldout")
        return self._left[name].pop()


def _lapse_mask(task: T.Task, cfg: DataConfig, rng: random.Random) -> tuple[bool, ...]:
    lapse = cfg.ifeval_lapse if task.domain == "ifeval" else cfg.math_lapse
    return tuple(rng.random() >= lapse for _ in range(task.n_instructions))


def _opening(cfg: DataConfig, rng: random.Random, sampler: _Sampler, style: str) -> list[dict]:
    """Turns before the final prompt: maybe a system message, maybe an earlier (correct) exchange."""
    turns = []
    if rng.random() < cfg.system_fraction:
        turns.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if rng.random() < cfg.multi_turn_fraction:
        earlier = sampler.draw(cfg.ifeval_fraction)
        turns += [{"role": "user", "content": earlier.prompt}, {"role": "assistant", "content": earlier.good.render(style)}]
    return turns


def sft_row(sampler: _Sampler, style: str, lapses: bool) -> dict:
    cfg, rng = sampler.cfg, sampler.rng
    task = sampler.draw(cfg.ifeval_fraction)
    completion = task.following(_lapse_mask(task, cfg, rng)) if lapses else task.good
    messages = _opening(cfg, rng, sampler, style) + [
        {"role": "user", "content": task.prompt},
        {"role": "assistant", "content": completion.render(style)},
    ]
    return {"messages": messages}


def _malformed(task: T.Task, style: str, rng: random.Random) -> str:
    """A correct answer in the wrong shape: Think without its block (or unclosed), Instruct with one."""
    good = task.good
    shapes = {
        "think": (good.instruct, lambda: f"{THINK_OPEN}{good.reasoning} {good.answer}"),
        "instruct": (good.think,),
    }
    return rng.choice(shapes[style])()


def _rejected(task: T.Task, style: str, cfg: DataConfig, rng: random.Random) -> str:
    kinds = list(cfg.dpo_rejected)
    kind = rng.choices(kinds, weights=[cfg.dpo_rejected[k] for k in kinds])[0]
    makers = {
        "wrong": lambda: task.wrong.render(style),
        "partial": lambda: rng.choice(task.partial)[1].render(style),
        "malformed": lambda: _malformed(task, style, rng),
    }
    return makers[kind]()


def dpo_row(sampler: _Sampler, style: str) -> dict:
    cfg, rng = sampler.cfg, sampler.rng
    task = sampler.draw(cfg.ifeval_fraction)
    prompt = _opening(cfg, rng, sampler, style) + [{"role": "user", "content": task.prompt}]
    chosen = task.good.render(style)
    rejected = _rejected(task, style, cfg, rng)
    return {
        "chosen": prompt + [{"role": "assistant", "content": chosen}],
        "rejected": prompt + [{"role": "assistant", "content": rejected}],
    }


def rlvr_row(sampler: _Sampler) -> dict:
    task = sampler.draw(sampler.cfg.rlvr_ifeval_fraction)
    return {
        "messages": [{"role": "user", "content": task.prompt}],
        "ground_truth": task.ground_truth,
        "verifier": task.verifier,
    }


def build_datasets(pools: Pools, cfg: DataConfig, rng: random.Random) -> dict[str, dict[str, list[dict]]]:
    """{dataset name: {split: rows}} for every name in `DATASETS`: train and heldout, and for rlvr a dev split
    drawn from the held-out pool before the heldout one (distinct prompts, none seen in training)."""
    train = _Sampler(pools.train, cfg, rng)

    def held() -> _Sampler:  # each held-out split draws distinct prompts
        return _Sampler(pools.heldout, cfg, rng, distinct=True)

    out: dict[str, dict[str, list[dict]]] = {}
    for style in STYLES:
        sft_held, dpo_held = held(), held()
        out[f"sft_{style}"] = {
            "train": [sft_row(train, style, lapses=True) for _ in range(cfg.sft_train)],
            "heldout": [sft_row(sft_held, style, lapses=False) for _ in range(cfg.sft_heldout)],
        }
        out[f"dpo_{style}"] = {
            "train": [dpo_row(train, style) for _ in range(cfg.dpo_train)],
            "heldout": [dpo_row(dpo_held, style) for _ in range(cfg.dpo_heldout)],
        }
    rlvr_held = held()
    out["rlvr"] = {
        "train": [rlvr_row(train) for _ in range(cfg.rlvr_train)],
        "dev": [rlvr_row(rlvr_held) for _ in range(cfg.rlvr_dev)],
        "heldout": [rlvr_row(rlvr_held) for _ in range(cfg.rlvr_heldout)],
    }
    return out


# --------------------------------------------------------------------------
# pretraining text

def _qa_document(sampler: _Sampler) -> str:
    task = sampler.draw(sampler.cfg.ifeval_fraction)
    return f"Question: {task.prompt}\nAnswer: {task.good.instruct()}"


def _facts_document(rng: random.Random) -> str:
    facts = []
    for _ in range(rng.randint(8, 16)):
        a, b = rng.randint(0, 20), rng.randint(0, 10)
        op = rng.choice(("+", "-", "x"))
        value = {"+": a + b, "-": a - b, "x": a * b}[op]
        if op == "-" and value < 0:
            a, b, value = b, a, -value
        facts.append(f"{a} {op} {b} = {value}.")
    return " ".join(facts)


def _prose_document(rng: random.Random) -> str:
    topic = rng.choice(sorted(TOPICS))
    parts = []
    for _ in range(rng.randint(1, 3)):
        text, title = T.content(topic, rng)
        parts.append(text)
    text = " ".join(parts)
    shape = rng.choice((str, str.lower, str.upper, lambda s: f"<<{title}>>\n{s}", lambda s: f'"{s}"'))
    return shape(text)


def pretraining_documents(pools: Pools, cfg: DataConfig, rng: random.Random) -> list[str]:
    """Plain text of the toy domain: solved questions, arithmetic facts, prose about the topics."""
    sampler = _Sampler(pools.train, cfg, rng)
    makers = (lambda: _qa_document(sampler), lambda: _facts_document(rng), lambda: _prose_document(rng))
    # mostly solved questions: answering from the prompt is the skill later stages build on
    weights = (0.7, 0.15, 0.15)
    return [rng.choices(makers, weights=weights)[0]() for _ in range(cfg.pretrain_documents)]
