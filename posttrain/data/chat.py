"""The chat format every stage uses: Olmo-3-style ChatML, Think and Instruct, with tool turns.

A conversation is a list of messages `{"role": ..., "content": ...}` rendered as

    <|im_start|>ROLE\\nCONTENT<|im_end|>\\n            (every turn)
    <|im_start|>assistant\\n                          (the generation prompt)

Assistant content is rendered verbatim. Think data carries its reasoning at the
start of the assistant content, `<think>reasoning</think>answer`; an assistant
message may instead give the reasoning in a `reasoning_content` field, which is
rendered as that same think block. Instruct data has no think block.

Tool use follows the released Olmo 3 Instruct SFT data (Dolci-Instruct-SFT)
and its chat template. Messages may carry two text fields, each a string or
None (Arrow-backed files fill absent fields with None):

- `functions` (tool specs, JSON text) on a system or user turn, appended to its
  content: system `CONTENT <functions>SPECS</functions>`, user
  `CONTENT\\n<functions>SPECS</functions>`;
- `function_calls` on an assistant turn, after its content:
  `CONTENT<function_calls>CALLS</function_calls><|im_end|>`; the content may
  be None or empty when the turn only calls functions.

Tool output comes back as a turn with role `environment`, rendered like any
other turn (`<|im_start|>environment\\nOUTPUT<|im_end|>\\n`; a `tool` turn renders
the same way under its own role name, as before). A non-None `functions` on
another role, or `function_calls` on a non-assistant turn, is an error rather
than silently dropped text.

Where this departs from the released Olmo 3 Instruct template, on purpose: it
injects no default system prompt and no "You do not currently have access to
any functions." sentence when no functions are given, and every assistant turn,
the last one included, ends `<|im_end|>\\n` (the released template ends the last
one with eos). So a conversation without tool fields (the Think data, the tiny
chain) renders exactly as plain ChatML, unchanged.

Loss goes on assistant tokens only: the assistant content (think block
included), its `<function_calls>...</function_calls>` block and its closing
`<|im_end|>` (so the model learns to stop), in every assistant turn of a
multi-turn conversation. The role header `<|im_start|>assistant\\n` and the
newline after `<|im_end|>` are prompt, not target; environment, tool, system and
user turns carry no loss.

`CHAT_TEMPLATE` is the same format in Jinja, saved with the tokenizer so that
`transformers.apply_chat_template` and vLLM render exactly what `render` does;
its `{% generation %}` block marks the same assistant span, so transformers'
`return_assistant_tokens_mask=True` and TRL's `assistant_only_loss` agree with
`tokenize_conversation` (tests/data/test_chat.py and tests/data/test_tool_chat.py
check both). vLLM's own chat entry points (`LLM.chat`, the OpenAI server)
rebuild each message from the OpenAI fields before applying the template and
drop `functions` and `function_calls`, so tool prompts go to vLLM already
rendered (`generation_prompt`, then token ids), as the rollout engines send
every prompt.
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

FUNCTIONS_OPEN, FUNCTIONS_CLOSE = "<functions>", "</functions>"
FUNCTION_CALLS_OPEN, FUNCTION_CALLS_CLOSE = "<function_calls>", "</function_calls>"
# what goes between a turn's content and its `<functions>` block (as in Olmo 3's released Instruct template)
FUNCTIONS_SEPARATOR = {"system": " ", "user": "\n"}

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{%- if message['reasoning_content'] is defined and message['reasoning_content'] -%}"
    "{{- '<think>' + message['reasoning_content'] + '</think>' -}}"
    "{%- endif -%}"
    "{%- if message['content'] is defined and message['content'] is not none -%}"
    "{{- message['content'] -}}"
    "{%- endif -%}"
    "{%- if message['function_calls'] is defined and message['function_calls'] is not none -%}"
    "{{- '<function_calls>' + message['function_calls'] + '</function_calls>' -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] -}}"
    "{%- if message['role'] in ['system', 'user'] and message['functions'] is defined"
    " and message['functions'] is not none -%}"
    "{{- (' ' if message['role'] == 'system' else '\\n') + '<functions>' + message['functions'] + '</functions>' -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

Message = Mapping[str, Any]


class ChatFormatError(ValueError):
    """A conversation that cannot be rendered; the message names the turn and field."""


def _optional_text(message: Message, key: str, where: str) -> str | None:
    value = message.get(key)
    if value is not None and not isinstance(value, str):
        raise ChatFormatError(f"{where}.{key}: expected a string or None, got {type(value).__name__}")
    return value


def _check(messages: Sequence[Message]) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatFormatError(f"messages: expected a non-empty list of messages, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"{where}: expected a mapping, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ChatFormatError(f"{where}.role: expected a non-empty string, got {role!r}")
        _optional_text(message, "reasoning_content", where)
        functions = _optional_text(message, "functions", where)
        calls = _optional_text(message, "function_calls", where)
        # Olmo 3's template ignores misplaced tool fields; an empty one (Arrow-filled data) is let through, a
        # misplaced one that says something is refused rather than silently dropped
        if functions and role not in FUNCTIONS_SEPARATOR:
            raise ChatFormatError(f"{where}.functions: only system and user turns carry functions, not {role!r}")
        if calls and role != "assistant":
            raise ChatFormatError(f"{where}.function_calls: only assistant turns carry function calls, not {role!r}")
        if not isinstance(content, str) and not (content is None and calls is not None):
            raise ChatFormatError(f"{where}.content: expected a string, got {type(content).__name__}")


def assistant_text(message: Message) -> str:
    """The assistant turn as rendered, before its `<|im_end|>`: the think block from `reasoning_content`, if any,
    the content (None reads as empty), then the `<function_calls>` block, if any."""
    reasoning, calls = message.get("reasoning_content"), message.get("function_calls")
    content = message.get("content") or ""
    text = think_content(reasoning, content) if reasoning else content
    return text if calls is None else f"{text}{FUNCTION_CALLS_OPEN}{calls}{FUNCTION_CALLS_CLOSE}"


def _turn_text(message: Message) -> str:
    """A non-assistant turn's text: its content, then its `<functions>` block, if any."""
    functions = message.get("functions")
    if functions is None or message["role"] not in FUNCTIONS_SEPARATOR:
        return message["content"]
    return f"{message['content']}{FUNCTIONS_SEPARATOR[message['role']]}{FUNCTIONS_OPEN}{functions}{FUNCTIONS_CLOSE}"


def render_with_spans(
    messages: Sequence[Message], add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages`; also return the [start, end) character spans that carry loss.

    Each span covers one assistant turn's content (think block included), its `<function_calls>` block
    and its `<|im_end|>`.
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
            piece = f"{IM_START}{role}\n{_turn_text(message)}{IM_END}\n"
        parts.append(piece)
        length += len(piece)
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts), spans


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as `CHAT_TEMPLATE` renders it."""
    return render_with_spans(messages, add_generation_prompt)[0]


def think_spans(text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans of the leading `<think>...</think>` block inside each assistant span."""
    out = []
    for start, end in spans:
        if text.startswith(THINK_OPEN, start):
            close = text.find(THINK_CLOSE, start, end)
            if close != -1:
                out.append((start, close + len(THINK_CLOSE)))
    return out


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
