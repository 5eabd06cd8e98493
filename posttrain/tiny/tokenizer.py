"""The tiny tokenizer: byte-level BPE trained on the toy corpus, with the chat template.

Byte-level BPE (GPT-2 pre-tokenization) from the `tokenizers` library, trained
on text generated from the seed, so the vocabulary fits the toy domain.
Special tokens `<|endoftext|>` (document separator), `<|pad|>`, `<|im_start|>`,
`<|im_end|>` (end of a turn, the eos) are never split; `<think>` and
`</think>` are single tokens that are not special, so decoders keep them
(vLLM and `decode(skip_special_tokens=True)` would otherwise drop the think
block the Think style and its verifiers rely on).

Training is deterministic: the same corpus gives the same tokenizer.json.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from posttrain.data.chat import CHAT_TEMPLATE, END_OF_TEXT, IM_END, IM_START, PAD, THINK_CLOSE, THINK_OPEN

SPECIAL_TOKENS = (END_OF_TEXT, PAD, IM_START, IM_END)  # ids 0..3, in this order
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2048, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most `vocab_size` tokens (think tokens included), with the chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # offsets keep their leading spaces, so a token's offset says exactly where it starts
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in THINK_TOKENS])
    return wrap(backend, model_max_length)


def wrap(backend: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around a trained backend: eos `<|im_end|>`, pad `<|pad|>`, no bos."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD,
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [END_OF_TEXT, IM_START]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
