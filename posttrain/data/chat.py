"""The chat format every stage uses: Olmo-3-style ChatML, Think and Instruct.

A conversation is a list of messages `{"role": ..., "content": ...}` rendered as

    <|im_start|>ROLE\\nCONTENT<|im_end|>\\n            (every turn)
    <|im_start|>assistant\\n                          (the generation prompt)

Assistant content is rendered verbatim. Think data carries its reasoning at the
start of the assistant content, `<think>reasoning</think>answer`; an assistant
message may instead give the reasoning in a `reasoning_content` field, which is
rendered as that same think block. Instruct data has no think block.

Loss goes on assistant tokens only: the assistant content and its closing
`<|im_end|>` (so the model learns to stop), in every assistant turn of a
multi-turn conversation. The role header `<|im_start|>assistant\\n` and the
newline after `<|im_end|>` are prompt, not target.

`CHAT_TEMPLATE` is the same format in Jinja, saved with the tokenizer so that
`transformers.apply_chat_template` and vLLM render exactly what `render` does;
its `{% generation %}` block marks the same assistant span, so transformers'
`return_assistant_tokens_mask=True` and TRL's `assistant_only_loss` agree with
`tokenize_conversation` (tests/data/test_chat.py checks both).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
IGNORE_INDEX = -100  # label value that cross-entropy skips (PyTorch/transformers convention)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{%- if message['reasoning_content'] is defined and message['reasoning_content'] -%}"
    "{{- '<think>' + message['reasoning_content'] + '</think>' -}}"
    "{%- endif -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

Message = Mapping[str, Any]


class ChatFormatError(ValueError):
    """A conversation that cannot be rendered; the message names the turn and field."""


def _check(messages: Sequence[Message]) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatFormatError(f"messages: expected a non-empty list of messages, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"messages[{i}]: expected a mapping, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ChatFormatError(f"messages[{i}].role: expected a non-empty string, got {role!r}")
        if not isinstance(content, str):
            raise ChatFormatError(f"messages[{i}].content: expected a string, got {type(content).__name__}")
        reasoning = message.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise ChatFormatError(f"messages[{i}].reasoning_content: expected a string, got {type(reasoning).__name__}")


def assistant_text(message: Message) -> str:
    """The assistant content as rendered: the think block from `reasoning_content`, if any, then the content."""
    reasoning = message.get("reasoning_content")
    return think_content(reasoning, message["content"]) if reasoning else message["content"]


def render_with_spans(
    messages: Sequence[Message], add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages`; also return the [start, end) character spans that carry loss.

    Each span covers one assistant turn's content and its `<|im_end|>`.
    """
    _check(messages)
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    for message in messages:
        role = message["role"]
        if role == "assistant":
            header, target, tail = f"{IM_START}assistant\n", assistant_text(message) + IM_END, "\n"
            spans.append((length + len(header), length + len(header) + len(target)))
            piece = header + target + tail
        else:
            piece = f"{IM_START}{role}\n{message['content']}{IM_END}\n"
        parts.append(piece)
        length += len(piece)
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts), spans


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as `CHAT_TEMPLATE` renders it."""
    return render_with_spans(messages, add_generation_prompt)[0]


def prompt_messages(messages: Sequence[Message]) -> list[Message]:
    """The turns before the final assistant turn (the whole list if it does not end with one)."""
    _check(messages)
    end = len(messages) - 1 if messages[-1]["role"] == "assistant" else len(messages)
    return list(messages[:end])


def generation_prompt(messages: Sequence[Message]) -> str:
    """Text that asks the model for the next assistant turn: the prompt turns, then `<|im_start|>assistant\\n`.

    A trailing assistant turn (a reference answer) is dropped first, so a full
    SFT/DPO conversation and a bare RLVR prompt give the same prompt.
    """
    return render(prompt_messages(messages), add_generation_prompt=True)


def tokenize_conversation(tokenizer, messages: Sequence[Message], max_length: int | None = None) -> dict[str, list[int]]:
    """Tokenize a conversation for training with loss on assistant tokens only.

    Returns `input_ids`, `labels` (the id where the token is assistant target,
    `IGNORE_INDEX` elsewhere; unshifted, as transformers' causal LMs expect)
    and `assistant_masks` (1 on target tokens). A token is target when its first
    character lies inside an assistant span of `render_with_spans`. With
    `max_length`, all three are cut to that many tokens.
    """
    text, spans = render_with_spans(messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    mask = [0] * len(input_ids)
    span_index = 0
    for i, (start, end) in enumerate(encoding["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1] and end > start:
            mask[i] = 1
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(input_ids, mask)]
    if max_length is not None:
        input_ids, labels, mask = input_ids[:max_length], labels[:max_length], mask[:max_length]
    return {"input_ids": input_ids, "labels": labels, "assistant_masks": mask}


# --------------------------------------------------------------------------
# Think / Instruct answers

_THINK_RE = re.compile(r"^<think>(.*?)</think>(.*)$", re.DOTALL)


def think_content(reasoning: str, answer: str) -> str:
    """A Think assistant content: `<think>reasoning</think>answer`."""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{answer}"


def split_think(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a completion; reasoning is None without a leading think block.

    The answer is the text after the last `</think>`, the part verifiers score.
    """
    match = _THINK_RE.match(text)
    if match is None:
        return None, text.rsplit(THINK_CLOSE, 1)[-1] if THINK_CLOSE in text else text
    return match.group(1), text.rsplit(THINK_CLOSE, 1)[-1]


def _think_shape(text: str) -> bool:
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1 or not text.startswith(THINK_OPEN):
        return False
    return bool(text.split(THINK_CLOSE, 1)[1].strip())


def _instruct_shape(text: str) -> bool:
    return THINK_OPEN not in text and THINK_CLOSE not in text and bool(text.strip())


_SHAPES = {"think": _think_shape, "instruct": _instruct_shape}
STYLES = tuple(_SHAPES)


def is_well_formed(text: str, style: str) -> bool:
    """Does a completion have its style's shape?

    think: exactly one `<think>`, at the very start, exactly one `</think>`
    after it, and a non-blank answer after that. instruct: no think tags at
    all and a non-blank answer.
    """
    if style not in _SHAPES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return _SHAPES[style](text)
