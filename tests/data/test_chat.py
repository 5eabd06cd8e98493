"""The chat format: exact renderings, the Jinja template, and the assistant-only loss mask."""

from __future__ import annotations

import random

import pytest

from posttrain.data import chat
from posttrain.data.chat import IGNORE_INDEX

THINK = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "<think>I add 2 and 3. 2 + 3 = 5.</think>The answer is \\boxed{5}."},
]
THINK_TEXT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n"
    "<|im_start|>assistant\n<think>I add 2 and 3. 2 + 3 = 5.</think>The answer is \\boxed{5}.<|im_end|>\n"
)
INSTRUCT = [
    {"role": "user", "content": "Describe cats briefly. Write everything in lowercase."},
    {"role": "assistant", "content": "a cat is small, soft and quiet. it sleeps in the sun."},
    {"role": "user", "content": "What is 7 minus 4?"},
    {"role": "assistant", "content": "7 - 4 = 3. The answer is \\boxed{3}."},
]
INSTRUCT_TEXT = (
    "<|im_start|>user\nDescribe cats briefly. Write everything in lowercase.<|im_end|>\n"
    "<|im_start|>assistant\na cat is small, soft and quiet. it sleeps in the sun.<|im_end|>\n"
    "<|im_start|>user\nWhat is 7 minus 4?<|im_end|>\n"
    "<|im_start|>assistant\n7 - 4 = 3. The answer is \\boxed{3}.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def tokenizer():
    """A small BPE trained like the tiny default's (same code, smaller corpus), with the chat template."""
    from posttrain.tiny import datasets as D
    from posttrain.tiny.tokenizer import train_tokenizer

    rng = random.Random(0)
    cfg = D.DataConfig(pool_math=300, pool_ifeval=300, pool_heldout=50, rlvr_dev=20, rlvr_heldout=20,
                       pretrain_documents=500)
    docs = D.pretraining_documents(D.make_pools(cfg, rng), cfg, rng)
    return train_tokenizer(docs + ["user\nassistant\nsystem\n"] * 5, vocab_size=600)


def conversations(n: int = 60) -> list[list[dict]]:
    """Varied conversations from the toy generators: both styles, system turns, multi-turn."""
    from posttrain.tiny import datasets as D

    rng = random.Random(1)
    cfg = D.DataConfig(
        sft_train=n, sft_heldout=1, dpo_train=1, dpo_heldout=1, rlvr_train=1, rlvr_dev=1, rlvr_heldout=1,
        pool_math=200, pool_ifeval=200, pool_heldout=60, multi_turn_fraction=0.4, system_fraction=0.3,
    )
    data = D.build_datasets(D.make_pools(cfg, rng), cfg, rng)
    return [row["messages"] for name in ("sft_think", "sft_instruct") for row in data[name]["train"]]


def test_render_think_exact():
    assert chat.render(THINK) == THINK_TEXT


def test_render_instruct_multi_turn_exact():
    assert chat.render(INSTRUCT) == INSTRUCT_TEXT


def test_reasoning_content_renders_as_think_block():
    split = THINK[:2] + [{"role": "assistant", "reasoning_content": "I add 2 and 3. 2 + 3 = 5.",
                          "content": "The answer is \\boxed{5}."}]
    assert chat.render(split) == THINK_TEXT


def test_generation_prompt_drops_final_answer():
    expected = THINK_TEXT.split("<|im_start|>assistant\n")[0] + "<|im_start|>assistant\n"
    assert chat.generation_prompt(THINK) == expected
    assert chat.generation_prompt(THINK[:2]) == expected
    assert chat.render(THINK[:2], add_generation_prompt=True) == expected


def test_jinja_template_matches_render(tokenizer):
    convs = conversations() + [THINK, INSTRUCT]
    for messages in convs:
        assert tokenizer.apply_chat_template(messages, tokenize=False) == chat.render(messages)
        prompt = chat.prompt_messages(messages)
        assert tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == chat.generation_prompt(messages)
    split = THINK[:2] + [{"role": "assistant", "reasoning_content": "r", "content": "a"}]
    assert tokenizer.apply_chat_template(split, tokenize=False) == chat.render(split)


def test_labels_cover_exactly_the_assistant_turns(tokenizer):
    out = chat.tokenize_conversation(tokenizer, INSTRUCT)
    assert out["input_ids"] == tokenizer(INSTRUCT_TEXT, add_special_tokens=False)["input_ids"]
    target = [tok for tok in out["labels"] if tok != IGNORE_INDEX]
    expected = INSTRUCT[1]["content"] + "<|im_end|>" + INSTRUCT[3]["content"] + "<|im_end|>"
    assert tokenizer.decode(target) == expected
    # the role header and the newline after <|im_end|> are prompt, not target
    assert sum(out["assistant_masks"]) == len(target)
    prompt_part = [tok for tok, lab in zip(out["input_ids"], out["labels"]) if lab == IGNORE_INDEX]
    assert "<|im_start|>assistant\n" in tokenizer.decode(prompt_part)
    assert out["labels"][-1] == IGNORE_INDEX and tokenizer.decode(out["input_ids"][-1:]) == "\n"


def test_mask_agrees_with_transformers_assistant_mask(tokenizer):
    for messages in conversations() + [THINK, INSTRUCT]:
        ours = chat.tokenize_conversation(tokenizer, messages)
        theirs = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert ours["input_ids"] == list(theirs["input_ids"])
        assert ours["assistant_masks"] == list(theirs["assistant_masks"])


def test_think_tokens_are_single_and_survive_decoding(tokenizer):
    out = chat.tokenize_conversation(tokenizer, THINK)
    decoded = tokenizer.decode(out["input_ids"], skip_special_tokens=True)
    assert "<think>" in decoded and "</think>" in decoded and "<|im_start|>" not in decoded
    assert len(tokenizer("<think>", add_special_tokens=False)["input_ids"]) == 1
    assert len(tokenizer("</think>", add_special_tokens=False)["input_ids"]) == 1


def test_max_length_truncates_all_fields(tokenizer):
    out = chat.tokenize_conversation(tokenizer, THINK, max_length=10)
    assert [len(v) for v in out.values()] == [10, 10, 10]


@pytest.mark.parametrize(
    "messages, where",
    [
        ([], "messages"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": "hi"}, {"content": "x"}], "messages[1].role"),
        ([{"role": "assistant", "content": "x", "reasoning_content": 3}], "messages[0].reasoning_content"),
        (["hello"], "messages[0]"),
    ],
)
def test_bad_conversation_names_the_field(messages, where):
    with pytest.raises(chat.ChatFormatError) as err:
        chat.render(messages)
    assert str(err.value).startswith(f"{where}:")


def test_split_think_and_shapes():
    assert chat.split_think("<think>r</think>answer") == ("r", "answer")
    assert chat.split_think("answer only") == (None, "answer only")
    assert chat.split_think("junk</think>tail")[1] == "tail"
    assert chat.is_well_formed("<think>r</think>The answer is 5.", "think")
    assert not chat.is_well_formed("<think>r The answer is 5.", "think")
    assert not chat.is_well_formed("The answer is 5.", "think")
    assert not chat.is_well_formed("<think>r</think>  ", "think")
    assert not chat.is_well_formed("<think>a</think><think>b</think>c", "think")
    assert chat.is_well_formed("The answer is 5.", "instruct")
    assert not chat.is_well_formed("<think>r</think>The answer is 5.", "instruct")
    with pytest.raises(ValueError, match="style"):
        chat.is_well_formed("x", "chatty")
