"""Typed batches: the only things that cross Ray boundaries.

Plain dataclasses of tensors with a shape comment on every field. They pickle
as they are (Ray ships them with cloudpickle), `.to(device)` moves every
tensor, and construction checks that the shapes agree, so a malformed batch
fails where it is built rather than deep inside a forward pass.

Shape letters: B batch rows, T tokens per row, N samples (prompts x group
size), Tp prompt tokens, Tr response tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100


class _TensorBatch:
    """Shared behaviour: `.to(device)`, shape checks. Subclasses are dataclasses of tensors."""

    def to(self, device: torch.device | str, non_blocking: bool = False):
        """A copy with every tensor field on `device` (None fields stay None)."""
        moved: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            moved[field.name] = value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
        return dataclasses.replace(self, **moved)  # type: ignore[type-var]

    def _check_shapes(self, expected: dict[str, tuple[str, ...]]) -> None:
        """Every non-None field must have the named dims; equal letters mean equal sizes."""
        sizes: dict[str, int] = {}
        for name, dims in expected.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, Tensor) or value.dim() != len(dims):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{type(self).__name__}.{name}: expected shape ({', '.join(dims)}), got {got}")
            for letter, size in zip(dims, value.shape):
                if sizes.setdefault(letter, size) != size:
                    raise ValueError(
                        f"{type(self).__name__}.{name}: dim {letter} is {size}, other fields have {sizes[letter]}"
                    )


@dataclass
class SFTBatch(_TensorBatch):
    """Token ids for next-token training, packed or padded.

    Packed: several documents per row, position_ids restart at 0 at every
    document and attention_mask is None, which makes Olmo-3 in transformers
    attend within documents only (see posttrain/data/packing.py). Padded:
    one document per row and attention_mask marks the real tokens.
    Call the model with use_cache=False on packed batches: with a cache,
    transformers skips the document detection.
    """

    input_ids: Tensor  # (B, T) int64
    labels: Tensor  # (B, T) int64, aligned with input_ids (unshifted); -100 = no loss
    position_ids: Tensor  # (B, T) int64, restarting at 0 at each document
    attention_mask: Tensor | None = None  # (B, T) int64 1 = real token; None when packed
    row_lengths: Tensor | None = None  # (B,) int64 real (non-padding) tokens per row, right-padded rows

    def __post_init__(self) -> None:
        per_token = {name: ("B", "T") for name in ("input_ids", "labels", "position_ids", "attention_mask")}
        self._check_shapes({**per_token, "row_lengths": ("B",)})

    def model_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for a Hugging Face causal LM forward (labels excluded)."""
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    @property
    def num_loss_tokens(self) -> int:
        """Tokens that carry loss (labels != -100, excluding position 0 of a row, which nothing predicts)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass
class PreferenceBatch(_TensorBatch):
    """Chosen and rejected conversations for the same prompts, right-padded.

    labels are -100 on prompt and padding tokens, so `sequence_logprobs` on
    them sums over the response only; *_lengths are those response token
    counts. The reference log-probs are filled from the on-disk cache when it
    exists, so the reference model need not be in memory while training.
    """

    chosen_input_ids: Tensor  # (B, Tc) int64
    chosen_attention_mask: Tensor  # (B, Tc) int64
    chosen_labels: Tensor  # (B, Tc) int64, -100 outside the response
    chosen_lengths: Tensor  # (B,) int64 response tokens
    rejected_input_ids: Tensor  # (B, Tr) int64
    rejected_attention_mask: Tensor  # (B, Tr) int64
    rejected_labels: Tensor  # (B, Tr) int64, -100 outside the response
    rejected_lengths: Tensor  # (B,) int64 response tokens
    ref_chosen_logps: Tensor | None = None  # (B,) float32 summed over response tokens
    ref_rejected_logps: Tensor | None = None  # (B,) float32 summed over response tokens
    example_index: Tensor | None = None  # (B,) int64 row in the preference dataset (cache key)

    def __post_init__(self) -> None:
        self._check_shapes(
            {
                "chosen_input_ids": ("B", "Tc"),
                "chosen_attention_mask": ("B", "Tc"),
                "chosen_labels": ("B", "Tc"),
                "chosen_lengths": ("B",),
                "rejected_input_ids": ("B", "Tr"),
                "rejected_attention_mask": ("B", "Tr"),
                "rejected_labels": ("B", "Tr"),
                "rejected_lengths": ("B",),
                "ref_chosen_logps": ("B",),
                "ref_rejected_logps": ("B",),
                "example_index": ("B",),
            }
        )

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen_logps is not None and self.ref_rejected_logps is not None


@dataclass
class RolloutBatch(_TensorBatch):
    """Sampled responses with everything the policy update needs.

    Prompts are left-padded and responses right-padded, so prompt + response
    is one contiguous run of real tokens per row (`sequences()`). The engine's
    per-token log-probs feed truncated importance sampling; old_logprobs and
    ref_logprobs are filled by the learner's log-prob phase.
    """

    prompt_ids: Tensor  # (N, Tp) int64, left-padded
    prompt_mask: Tensor  # (N, Tp) int64 1 = real prompt token
    response_ids: Tensor  # (N, Tr) int64, right-padded
    response_lengths: Tensor  # (N,) int64 generated tokens; the rest of the row is padding
    response_mask: Tensor  # (N, Tr) float32 loss weight: 1 on generated tokens, 0 on padding or filtered rows
    engine_logprobs: Tensor  # (N, Tr) float32 log-prob of each response token under the engine
    rewards: Tensor  # (N,) float32
    advantages: Tensor  # (N,) float32
    group_index: Tensor  # (N,) int64 which prompt's group the sample belongs to
    policy_version: Tensor  # (N,) int64 learner step of the weights that generated it
    truncated: Tensor  # (N,) bool, response hit the length limit
    old_logprobs: Tensor | None = None  # (N, Tr) float32 learner log-probs before the update
    ref_logprobs: Tensor | None = None  # (N, Tr) float32 reference-policy log-probs
    packed: bool = False  # the learner runs the samples as one packed row (`packed_sequences`)

    def __post_init__(self) -> None:
        per_token = ("N", "Tr")
        self._check_shapes(
            {
                "prompt_ids": ("N", "Tp"),
                "prompt_mask": ("N", "Tp"),
                "response_ids": per_token,
                "response_lengths": ("N",),
                "response_mask": per_token,
                "engine_logprobs": per_token,
                "rewards": ("N",),
                "advantages": ("N",),
                "group_index": ("N",),
                "policy_version": ("N",),
                "truncated": ("N",),
                "old_logprobs": per_token,
                "ref_logprobs": per_token,
            }
        )

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def staleness(self, learner_step: int) -> Tensor:
        """How many learner steps behind each sample's weights are: (N,) int64 (0 = on-policy)."""
        return learner_step - self.policy_version

    def sequences(self) -> tuple[Tensor, Tensor, Tensor]:
        """(input_ids, attention_mask, position_ids), each (N, Tp + Tr), for a learner forward.

        Positions count real tokens from 0, so left padding does not shift them.
        The response's log-probs are the last Tr positions of `token_logprobs`
        run with labels = input_ids.
        """
        input_ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        steps = torch.arange(self.response_ids.shape[1], device=self.response_ids.device)
        response_real = steps.unsqueeze(0) < self.response_lengths.unsqueeze(1)  # (N, Tr)
        attention_mask = torch.cat([self.prompt_mask.long(), response_real.long()], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return input_ids, attention_mask, position_ids

    def response_real(self) -> Tensor:
        """(N, Tr) bool: generated tokens (the rest of each response row is padding)."""
        steps = torch.arange(self.response_ids.shape[1], device=self.response_ids.device)
        return steps.unsqueeze(0) < self.response_lengths.unsqueeze(1)

    def response_labels(self) -> Tensor:
        """(N, Tp + Tr) labels for `sequences()`: the generated tokens, IGNORE_INDEX on prompts and padding."""
        prompt = torch.full_like(self.prompt_ids, IGNORE_INDEX)
        return torch.cat([prompt, self.response_ids.masked_fill(~self.response_real(), IGNORE_INDEX)], dim=1)

    def packed_sequences(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The samples' real tokens end to end in one row: (input_ids (1, L), position_ids (1, L), labels (1, L),
        index (N, Tr)).

        Positions restart at 0 at every sample, which makes transformers attend
        within each sample only (as packed SFT rows do); labels are the
        generated tokens; index[i, j] is where response token j of sample i
        sits in the row (-1 on padding), to bring per-token values back to
        the (N, Tr) layout of the loss.
        """
        real = torch.cat([self.prompt_mask.bool(), self.response_real()], dim=1)  # (N, Tp + Tr)
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        positions = real.long().cumsum(dim=1) - 1
        labels = self.response_labels()
        where = real.flatten().long().cumsum(dim=0).view_as(real) - 1  # place of each real token in the row
        index = where[:, self.prompt_ids.shape[1]:].masked_fill(~self.response_real(), -1)
        return ids[real].unsqueeze(0), positions[real].unsqueeze(0), labels[real].unsqueeze(0), index
