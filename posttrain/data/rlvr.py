"""RLVR data: prompts in, typed batches out.

- `load_prompts(config, tokenizer, verifiers)`: a recipe's training mixture
  and held-out rows, checked row by row, as prompts.
- `encode_prompts(rows, tokenizer, max_prompt_length)`: RLVR rows
  (`messages`, `ground_truth`, `verifier`) -> `Prompt`s, the chat template's
  generation prompt tokenized and left-truncated (the end of a prompt, where
  the question and the assistant header are, is what must survive).
- `PromptStream`: an endless, reproducible walk over the training prompts,
  epoch e in the order of a shuffle seeded by (data seed, e). Its state is one
  integer (`cursor`, prompts drawn so far), which is the data position a
  checkpoint records.
- `Group`: one prompt's n sampled responses with their rewards and the policy
  version that generated them.
- `score_groups(groups, ...)`: rewards (with the optional soft overlong
  penalty and format bonus) -> group-relative advantages and the
  equal-reward mask, through the registered pure functions of
  `posttrain.algorithms.advantages`; `score_step(groups, config)` with the
  recipe's settings.
- `rollout_batch(samples, pad_id)`: samples -> one `RolloutBatch` (prompts
  left-padded, responses right-padded to the longest in the batch).
- `plan_update(...)`: a step's samples -> [minibatch][rank][micro-batch] of
  RolloutBatch, every rank with the same number of micro-batches (an idle
  rank gets a zero-weight batch, so collective backward passes line up).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from posttrain.algorithms.advantages import ADVANTAGES, equal_reward_groups, overlong_filter_mask, soft_overlong_penalty
from posttrain.algorithms.masked import AGGREGATIONS
from posttrain.config import RLVRConfig
from posttrain.data.batches import RolloutBatch
from posttrain.data.chat import generation_prompt, is_well_formed
from posttrain.data.mixing import Mixture, mix_section
from posttrain.data.released import rlvr_adapter
from posttrain.data.schemas import rlvr_row_validator
from rewards.core import spec_parts


@dataclass(frozen=True)
class Prompt:
    """One RLVR prompt, ready for an engine and a verifier."""

    index: int  # row in the training (or held-out) rows
    ids: list[int]  # generation prompt tokens (chat template + assistant header), left-truncated
    verifier: Any  # registered verifier name (or names), from the row
    ground_truth: Any  # the verifier's label, from the row


def encode_prompts(rows: Sequence[dict], tokenizer, max_prompt_length: int) -> tuple[list[Prompt], int]:
    """(prompts, how many were left-truncated to `max_prompt_length` tokens)."""
    prompts, truncated = [], 0
    for index, row in enumerate(rows):
        ids = tokenizer(generation_prompt(row["messages"]), add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            ids, truncated = ids[-max_prompt_length:], truncated + 1
        prompts.append(Prompt(index, list(ids), row["verifier"], row["ground_truth"]))
    return prompts, truncated


def heldout_prompts(rows: Sequence[dict], tokenizer, max_prompt_length: int, max_prompts: int | None) -> list[Prompt]:
    """The first `max_prompts` held-out rows (file order) as prompts."""
    rows = list(rows)[:max_prompts] if max_prompts else list(rows)
    return encode_prompts(rows, tokenizer, max_prompt_length)[0]


@dataclass
class PromptData:
    """A recipe's RLVR prompts: the training mixture encoded, and the held-out prompts the loop evaluates on."""

    prompts: list[Prompt]
    heldout: list[Prompt]
    truncated: int  # training prompts left-truncated to `rollout.max_prompt_length`
    fingerprint: str  # of the training rows: a resume must see the same
    mixture: Mixture

    def report(self) -> dict:
        return {"prompts": len(self.prompts), "prompts_truncated": self.truncated, "heldout": len(self.heldout),
                "sources": self.mixture.counts(), "skipped_bad_rows": self.mixture.skipped,
                "fingerprint": self.fingerprint}


def load_prompts(config: RLVRConfig, tokenizer, verifiers: Sequence[str]) -> PromptData:
    """The recipe's training and held-out prompts; every row's verifier must be one of `verifiers`.

    Rows in the released Olmo 3 shape (`prompt`, `dataset`, `ground_truth` lists) are adapted on the way in
    (`posttrain.data.released.rlvr_adapter`, with the recipe's `verifiers.aliases`).
    """
    validate = rlvr_row_validator(verifiers)
    adapt = rlvr_adapter(config.verifiers.aliases, verifiers)
    rollout = config.rollout
    mixture = mix_section(config.data, validate, "train", adapt=adapt)
    prompts, truncated = encode_prompts(mixture.rows, tokenizer, rollout.max_prompt_length)
    fingerprint = hashlib.sha256(json.dumps(mixture.rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
    heldout = heldout_prompts(mix_section(config.data, validate, "heldout", adapt=adapt).rows, tokenizer,
                              rollout.max_prompt_length, config.eval.max_prompts) if config.data.heldout else []
    return PromptData(prompts, heldout, truncated, fingerprint, mixture)


class PromptStream:
    """Prompts in epochs; epoch e visits every prompt once in an order seeded by (seed, e)."""

    def __init__(self, prompts: Sequence[Prompt], seed: int, cursor: int = 0):
        if not prompts:
            raise ValueError("no training prompts")
        self.prompts, self.seed, self.cursor = list(prompts), seed, cursor
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.prompts)))
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is all a run needs
        return self._orders[epoch]

    def take(self, count: int) -> list[Prompt]:
        """The next `count` prompts; advances the cursor."""
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.cursor, len(self.prompts))
            out.append(self.prompts[self._order(epoch)[offset]])
            self.cursor += 1
        return out

    @property
    def epoch(self) -> float:
        return self.cursor / len(self.prompts)


@dataclass
class Group:
    """A prompt's n responses, scored. Lists are (n,), in sample order."""

    prompt: Prompt
    response_ids: list[list[int]]
    engine_logprobs: list[list[float]]
    truncated: list[bool]  # finish reason "length"
    version: int  # policy version (learner steps) of the weights that generated the group (its first tokens)
    rewards: list[float] = field(default_factory=list)  # verifier scores: [0, 1], or [0, k] for a row of k summed verifiers
    unscored: list[str] = field(default_factory=list)  # reasons of items that could not be scored (scored 0)
    texts: list[str] = field(default_factory=list)
    # per sample, (first token, version) where in-flight updates changed the weights (Completion.version_switches)
    version_switches: list[tuple[tuple[int, int], ...]] = field(default_factory=list)

    def token_versions(self, sample: int) -> list[tuple[int, int]]:
        """(token count, version) segments of a sample's response, in order: which weights made which tokens."""
        length = len(self.response_ids[sample])
        switches = self.version_switches[sample] if self.version_switches else ()
        starts = [(0, self.version), *switches]
        ends = [made for made, _ in switches] + [length]
        return [(end - start, version) for (start, version), end in zip(starts, ends) if end > start]

    @property
    def verifier_name(self) -> str:
        return verifier_name(self.prompt.verifier)


def verifier_name(verifier: Any) -> str:
    """A row's verifier spec as one name: "math", or "ifeval+format" for several (whatever the spec's shape)."""
    return verifier if isinstance(verifier, str) else "+".join(name for name, _ in spec_parts(verifier))


@dataclass
class Scored:
    """What `score_groups` computes for a step: per-group tensors, (P, G) unless noted."""

    rewards: torch.Tensor  # (P, G) float32, verifier score plus any overlong penalty
    advantages: torch.Tensor  # (P, G) float32
    equal: torch.Tensor  # (P,) bool, all rewards of the group equal (no gradient)


def score_groups(groups: Sequence[Group], *, advantage: str, overlong: str, overlong_buffer: int,
                 max_response_length: int, format_reward: float = 0.0, style: str = "think") -> Scored:
    """Rewards -> advantages and the equal-reward mask. `overlong`: none, filter or soft_penalty.

    The soft penalty (DAPO) and the format bonus (`format_reward` for a
    response in `style`'s shape) are added to the verifier score before
    advantages are taken and before groups are compared, so a group that
    differs only in length or shape is not equal. Filtering (zero loss weight
    on truncated responses) happens when samples are batched (`step_samples`).
    """
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)  # (P, G)
    if overlong == "soft_penalty":
        lengths = torch.tensor([[len(r) for r in g.response_ids] for g in groups], dtype=torch.float32)
        rewards = rewards + soft_overlong_penalty(lengths.flatten(), max_length=max_response_length,
                                                  buffer=overlong_buffer).view_as(rewards)
    if format_reward:
        rewards = rewards + format_reward * well_formed(groups, style)
    return Scored(rewards, ADVANTAGES.get(advantage)(rewards), equal_reward_groups(rewards))


def score_step(groups: Sequence[Group], config: RLVRConfig) -> Scored:
    """`score_groups` with the recipe's reward shaping and advantage estimator."""
    grpo = config.grpo
    return score_groups(groups, advantage=grpo.advantage, overlong=grpo.overlong, overlong_buffer=grpo.overlong_buffer,
                        max_response_length=config.rollout.max_response_length, format_reward=grpo.format_reward,
                        style=config.variant)


def informative_groups(config: RLVRConfig) -> Callable[[Sequence[Group]], list[bool]]:
    """groups -> [bool]: which groups carry a gradient (not all rewards equal, as `score_step` sees them); every
    group when `grpo.filter_equal_groups` is off. Active sampling counts these."""

    def informative(groups: Sequence[Group]) -> list[bool]:
        if not config.grpo.filter_equal_groups:
            return [True] * len(groups)
        return (~score_step(groups, config).equal).tolist()

    return informative


def well_formed(groups: Sequence[Group], style: str) -> torch.Tensor:
    """(P, G) float32: 1 where a response has `style`'s shape (`posttrain.data.chat.is_well_formed`)."""
    return torch.tensor([[float(is_well_formed(text, style)) for text in g.texts] for g in groups], dtype=torch.float32)


@dataclass(frozen=True)
class Sample:
    """One response with what the loss needs."""

    prompt_ids: list[int]
    response_ids: list[int]
    engine_logprobs: list[float]
    reward: float
    advantage: float
    group: int
    version: int
    truncated: bool
    weight: float = 1.0  # 0: counted nowhere in the loss (overlong filter, padding batches)


def step_samples(groups: Sequence[Group], scored: Scored, *, keep: torch.Tensor, overlong: str) -> list[Sample]:
    """The samples of the groups marked in `keep` (P,) bool; overlong filter -> weight 0 on truncated ones."""
    out = []
    for p, group in enumerate(groups):
        if not bool(keep[p]):
            continue
        for j, ids in enumerate(group.response_ids):
            weight = 0.0 if overlong == "filter" and group.truncated[j] else 1.0
            out.append(Sample(group.prompt.ids, ids, group.engine_logprobs[j], float(scored.rewards[p, j]),
                              float(scored.advantages[p, j]), p, group.version, group.truncated[j], weight))
    return out


def rollout_batch(samples: Sequence[Sample], pad_id: int) -> RolloutBatch:
    """Samples -> RolloutBatch (N = len(samples)); empty responses get one padding token of weight 0."""
    n = len(samples)
    tp = max(len(s.prompt_ids) for s in samples)
    tr = max(max(len(s.response_ids) for s in samples), 1)
    prompt_ids = torch.full((n, tp), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, tp), dtype=torch.long)
    response_ids = torch.full((n, tr), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, tr), dtype=torch.float32)
    engine_logprobs = torch.zeros((n, tr), dtype=torch.float32)
    for i, s in enumerate(samples):
        prompt_ids[i, tp - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
        prompt_mask[i, tp - len(s.prompt_ids):] = 1
        length = len(s.response_ids)
        if length:
            response_ids[i, :length] = torch.tensor(s.response_ids)
            engine_logprobs[i, :length] = torch.tensor(s.engine_logprobs, dtype=torch.float32)
            response_mask[i, :length] = s.weight
    truncated = torch.tensor([s.truncated for s in samples], dtype=torch.bool)
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
        response_lengths=torch.tensor([len(s.response_ids) for s in samples], dtype=torch.long),
        response_mask=response_mask, engine_logprobs=engine_logprobs,
        rewards=torch.tensor([s.reward for s in samples], dtype=torch.float32),
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        group_index=torch.tensor([s.group for s in samples], dtype=torch.long),
        policy_version=torch.tensor([s.version for s in samples], dtype=torch.long),
        truncated=truncated,
    )


def _padding_sample(like: Sample) -> Sample:
    return Sample(like.prompt_ids[-1:], like.response_ids[:1], like.engine_logprobs[:1], 0.0, 0.0, -1, like.version,
                  False, weight=0.0)


@dataclass
class UpdatePlan:
    """A step's update: batches[minibatch][rank] = micro-batches, and each minibatch's loss normaliser."""

    batches: list[list[list[RolloutBatch]]]
    normalizers: list[float]  # the aggregation's count over the whole minibatch (all ranks)
    real_tokens: int = 0  # prompt + response tokens of the step's samples (throughput)


def plan_update(samples: Sequence[Sample], *, minibatches: int, micro_batch_size: int, world_size: int,
                aggregation: str, pad_id: int, seed: int, pack_length: int | None = None) -> UpdatePlan:
    """Shuffle the step's samples (seeded), split them into `minibatches` optimizer updates of equal size
    (the first ones take the remainder), each over `world_size` ranks in micro-batches.

    Unpacked: up to `micro_batch_size` padded samples per micro-batch, samples
    of similar length together to waste less padding. Packed (`pack_length`):
    samples fill micro-batches of up to `pack_length` real tokens (first fit,
    longest first), each run as one row with per-sample masks, and the
    micro-batches go to the rank with the fewest tokens so far. Ranks with
    fewer micro-batches get weightless fillers: every rank runs as many
    forward passes as the others (their collectives must match)."""
    order = list(samples)
    random.Random(seed).shuffle(order)
    count = AGGREGATIONS.get(aggregation).count
    batches, normalizers = [], []
    for m in range(minibatches):
        part = order[m::minibatches]
        if not part:
            continue
        if pack_length is None:
            part.sort(key=sample_tokens)
            micro = [part[i:i + micro_batch_size] for i in range(0, len(part), micro_batch_size)]
            per_rank = [micro[r::world_size] for r in range(world_size)]
        else:
            per_rank = balance(pack_samples(part, pack_length), world_size)
        depth = max(len(chunks) for chunks in per_rank)
        filler = [_padding_sample(part[0])]
        per_rank = [chunks + [filler] * (depth - len(chunks)) for chunks in per_rank]
        ranks = [[_collate(chunk, pad_id, packed=pack_length is not None) for chunk in chunks] for chunks in per_rank]
        total = sum(float(count(b.response_mask)) for rank in ranks for b in rank)
        batches.append(ranks)
        normalizers.append(total)
    return UpdatePlan(batches, normalizers, sum(sample_tokens(s) for s in samples))


def sample_tokens(sample: Sample) -> int:
    return len(sample.prompt_ids) + len(sample.response_ids)


def pack_samples(samples: Sequence[Sample], pack_length: int) -> list[list[Sample]]:
    """First-fit decreasing: samples into bins of at most `pack_length` tokens (a longer sample gets its own)."""
    bins: list[list[Sample]] = []
    room: list[int] = []
    for sample in sorted(samples, key=sample_tokens, reverse=True):
        size = sample_tokens(sample)
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            bins.append([sample])
            room.append(pack_length - size)
        else:
            bins[slot].append(sample)
            room[slot] -= size
    return bins


def balance(bins: list[list[Sample]], world_size: int) -> list[list[list[Sample]]]:
    """Bins to ranks, largest first, each to the rank holding the fewest tokens (ties: the lowest rank)."""
    ranks: list[list[list[Sample]]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for chunk in sorted(bins, key=lambda b: sum(map(sample_tokens, b)), reverse=True):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        ranks[rank].append(chunk)
        load[rank] += sum(map(sample_tokens, chunk))
    return ranks


def _collate(samples: Sequence[Sample], pad_id: int, *, packed: bool) -> RolloutBatch:
    batch = rollout_batch(samples, pad_id)
    batch.packed = packed
    return batch
