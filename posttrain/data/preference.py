"""DPO rows -> tokenized preference pairs -> `PreferenceBatch`es.

A DPO row is `{"chosen": [...], "rejected": [...]}`, two full conversations
(see `posttrain.data.schemas`). Multi-turn pairs are allowed: everything before
the final assistant turn is the prompt, which both sides must share, and the
final assistant turn is the response that DPO scores.

Tokenization follows TRL's DPO: the prompt and each response are tokenized
separately and concatenated, so both sides share exactly the same prompt
tokens. The prompt is the chat format's generation prompt (`...<|im_start|>
assistant\\n`); a response is the assistant text (think block included) and
its `<|im_end|>`, the same tokens `tokenize_conversation` labels for that turn.
Labels are -100 on the prompt, so summed log-probs cover the response only.

Bad input, each counted in `PairReport` (`posttrain dpo` writes it to the manifest):
- malformed rows (not two valid conversations ending in an assistant turn):
  `data.on_bad_row`, an error `FILE:LINE: field: problem` or a counted skip;
- bad pairs (a missing side, identical responses, prompts that differ between
  the sides): `dpo.on_bad_pair`, the same error or a counted skip;
- pairs whose response lengths differ by more than `dpo.max_length_diff`
  tokens: dropped (Olmo 3 Instruct keeps chat pairs within 100 tokens);
- pairs longer than `data.max_length` (prompt plus the longer response):
  `data.overlong` "drop", or "truncate" the responses to fit (a prompt that
  leaves no room for a response is dropped either way).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from posttrain.config import DataSection, DPOSection
from posttrain.data.batches import IGNORE_INDEX, PreferenceBatch
from posttrain.data.chat import IM_END, assistant_text, generation_prompt
from posttrain.data.mixing import mix
from posttrain.data.released import dpo_adapter
from posttrain.data.schemas import dpo_row

BAD_PAIR = "bad pair: "  # prefix of the problems that dpo.on_bad_pair governs
SIDES = ("chosen", "rejected")


@dataclass(frozen=True)
class TokenizedPair:
    """One preference pair: shared prompt tokens and the two responses' tokens (each ending in <|im_end|>).

    Token ids are int32 arrays: 4 bytes a token, so a large preference set fits the driver's memory.
    """

    prompt: np.ndarray  # (Tp,) int32
    chosen: np.ndarray  # (Tc,) int32
    rejected: np.ndarray  # (Tr,) int32

    def __len__(self) -> int:
        """Tokens of the longer full sequence (prompt plus response)."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


@dataclass
class PairReport:
    """What happened to the rows of one split on their way to pairs."""

    read: int = 0  # rows read from the sources
    malformed_skipped: int = 0  # rows skipped per data.on_bad_row
    bad_pairs_skipped: int = 0  # rows skipped per dpo.on_bad_pair
    length_diff_dropped: int = 0  # pairs beyond dpo.max_length_diff
    overlong_dropped: int = 0  # pairs beyond data.max_length, dropped
    overlong_truncated: int = 0  # pairs beyond data.max_length, responses truncated
    kept: int = 0
    examples: list[str] = field(default_factory=list)  # the first few skip reasons, with file and row

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------
# Reading rows


def pair_problem(row: dict) -> Optional[str]:
    """The first problem of a DPO row, or None; problems of the pair itself start with `BAD_PAIR`.

    Bad pairs are a missing (absent or empty) side or final answer, prompts
    that differ between the sides, and identical final answers (think block
    included). Anything else wrong is a malformed row.
    """
    for side in SIDES:
        if not row.get(side):
            return f"{BAD_PAIR}{side}: missing"
    problem = dpo_row(row)
    if problem:
        return problem
    for side in SIDES:
        if not assistant_text(row[side][-1]).strip():
            return f"{BAD_PAIR}{side}[{len(row[side]) - 1}].content: empty final answer"
    if _prompt_turns(row["chosen"]) != _prompt_turns(row["rejected"]):
        return (f"{BAD_PAIR}rejected: prompt turns differ from chosen's "
                "(both sides must share everything before the last turn)")
    if assistant_text(row["chosen"][-1]) == assistant_text(row["rejected"][-1]):
        return f"{BAD_PAIR}rejected: the final answer is identical to chosen's"
    return None


def _prompt_turns(messages: list[dict]) -> list[tuple]:
    """What the prompt turns render from: role, content, reasoning, tool specs and tool calls."""
    return [(m["role"], m.get("content") or "", m.get("reasoning_content") or None, m.get("functions"),
             m.get("function_calls")) for m in messages[:-1]]


def read_pairs(data: DataSection, dpo: DPOSection, split: str = "train") -> tuple[list[dict], PairReport]:
    """The DPO rows of `data.train` or `data.heldout`, validated under both policies (see the module docstring).

    Training rows are shuffled with the data seed; held-out rows keep file order. Rows in the released Olmo 3
    shapes (a `prompt` with answers or assistant turns) become whole conversations first
    (`posttrain.data.released.dpo_adapter`).
    """
    bad_pairs: list[str] = []

    def policy(problem: str) -> str:
        if problem.startswith(BAD_PAIR):
            bad_pairs.append(problem)
            return dpo.on_bad_pair
        return data.on_bad_row

    specs = data.train if split == "train" else data.heldout
    mixture = mix(specs, pair_problem, seed=data.seed, on_bad_row=policy, shuffle=data.shuffle and split == "train",
                  adapt=dpo_adapter)
    skipped_pairs = len(bad_pairs) if dpo.on_bad_pair == "skip" else 0
    report = PairReport(
        read=sum(s.read for s in mixture.sources),
        malformed_skipped=mixture.skipped - skipped_pairs,
        bad_pairs_skipped=skipped_pairs,
        examples=[e for s in mixture.sources for e in s.examples][:5],
    )
    return mixture.rows, report


# --------------------------------------------------------------------------
# Tokenizing


def split_pair(row: dict) -> tuple[str, str, str]:
    """(prompt text, chosen response text, rejected response text) of a valid pair."""
    prompt = generation_prompt(row["chosen"])
    return prompt, assistant_text(row["chosen"][-1]) + IM_END, assistant_text(row["rejected"][-1]) + IM_END


def tokenize_pairs(
    tokenizer,
    rows: Sequence[dict],
    *,
    max_length: int,
    overlong: str = "drop",
    max_length_diff: Optional[int] = None,
    report: Optional[PairReport] = None,
) -> tuple[list[TokenizedPair], PairReport]:
    """Tokenize valid pairs, then apply the length rules (module docstring); returns the pairs and the counts."""
    if overlong not in ("drop", "truncate"):
        raise ValueError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
    report = report if report is not None else PairReport(read=len(rows))
    texts = [split_pair(row) for row in rows]
    encoded = [_encode(tokenizer, [t[i] for t in texts]) for i in range(3)]
    pairs = []
    for prompt, chosen, rejected in zip(*encoded):
        if max_length_diff is not None and abs(len(chosen) - len(rejected)) > max_length_diff:
            report.length_diff_dropped += 1
            continue
        pair = TokenizedPair(*(np.asarray(ids, dtype=np.int32) for ids in (prompt, chosen, rejected)))
        if len(pair) > max_length:
            room = max_length - len(pair.prompt)
            if overlong == "drop" or room < 1:
                report.overlong_dropped += 1
                continue
            pair = TokenizedPair(pair.prompt, pair.chosen[:room], pair.rejected[:room])
            report.overlong_truncated += 1
        pairs.append(pair)
    report.kept = len(pairs)
    return pairs, report


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def load_pairs(
    tokenizer, data: DataSection, dpo: DPOSection, split: str = "train"
) -> tuple[list[TokenizedPair], PairReport]:
    """Read, validate and tokenize one split of a DPO recipe's data."""
    rows, report = read_pairs(data, dpo, split)
    return tokenize_pairs(
        tokenizer, rows, max_length=data.max_length, overlong=data.overlong, max_length_diff=dpo.max_length_diff,
        report=report,
    )


def fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    """sha256 over every pair's token ids, in order (16 hex digits): the data part of the reference-cache key."""
    digest = hashlib.sha256()
    for pair in pairs:
        for part in (pair.prompt, pair.chosen, pair.rejected):
            digest.update(len(part).to_bytes(4, "little"))
            digest.update(np.ascontiguousarray(part, dtype=np.int32).tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------
# Batching


def _side(prompt: np.ndarray, response: np.ndarray) -> tuple[list[int], list[int]]:
    return prompt.tolist() + response.tolist(), [IGNORE_INDEX] * len(prompt) + response.tolist()


def _pad(rows: list[list[int]], value: int, width: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def collate(
    pairs: Sequence[TokenizedPair],
    indices: Sequence[int],
    pad_id: int,
    ref_logps: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> PreferenceBatch:
    """A right-padded `PreferenceBatch` of `pairs[i]` for i in `indices`.

    ref_logps: the cached (chosen, rejected) reference log-probs of every pair,
    (N,) each; the batch gets rows `indices` of them.
    """
    sides = {}
    for name in SIDES:
        seqs, labels = zip(*(_side(pairs[i].prompt, getattr(pairs[i], name)) for i in indices))
        width = max(len(s) for s in seqs)
        sides[name] = (
            _pad(list(seqs), pad_id, width),
            _pad([[1] * len(s) for s in seqs], 0, width),
            _pad(list(labels), IGNORE_INDEX, width),
            torch.tensor([len(getattr(pairs[i], name)) for i in indices], dtype=torch.long),
        )
    index = torch.tensor(list(indices), dtype=torch.long)
    ref_c, ref_r = (ref_logps[0][index], ref_logps[1][index]) if ref_logps is not None else (None, None)
    return PreferenceBatch(*sides["chosen"], *sides["rejected"], ref_chosen_logps=ref_c, ref_rejected_logps=ref_r,
                           example_index=index)


def concatenated(batch: PreferenceBatch, pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one right-padded (2B, T) batch, for a single forward pass.

    Returns input_ids, attention_mask and labels, each (2B, max(Tc, Tr)).
    """
    width = max(batch.chosen_input_ids.shape[1], batch.rejected_input_ids.shape[1])

    def widen(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

    return {
        "input_ids": torch.cat([widen(batch.chosen_input_ids, pad_id), widen(batch.rejected_input_ids, pad_id)]),
        "attention_mask": torch.cat([widen(batch.chosen_attention_mask, 0), widen(batch.rejected_attention_mask, 0)]),
        "labels": torch.cat([widen(batch.chosen_labels, IGNORE_INDEX), widen(batch.rejected_labels, IGNORE_INDEX)]),
    }


def filler(
    pairs: Sequence[TokenizedPair], pad_id: int, ref_logps: Optional[tuple[torch.Tensor, torch.Tensor]] = None
) -> PreferenceBatch:
    """A one-pair batch marked `example_index = -1`: no loss, no stats; keeps an idle rank in step with the others."""
    batch = collate(pairs, [0], pad_id, ref_logps)
    batch.example_index = torch.tensor([-1])
    return batch
