"""Tool conversations as the released Olmo 3 Instruct SFT data (Dolci-Instruct-SFT) carries them: rendering,
the Jinja template, the loss mask, vLLM's rendering, file round trips and schema errors.

The reference for the tool parts is Olmo 3's released Instruct chat template (see the posttrain.data.chat
docstring for where this project departs from it on purpose: no injected system prompt, `<|im_end|>\\n` after
every assistant turn).
"""

from __future__ import annotations

import json
import random

import pytest

from posttrain.data import chat
from posttrain.data.chat import IGNORE_INDEX

SPECS = json.dumps([{"name": "get_weather", "description": "Weather of a city",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
CALL = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}])
SEARCH_SPECS = json.dumps([{"name": "search", "parameters": {"type": "object",
                                                             "properties": {"query": {"type": "string"}}}}])

# system with functions; assistant with content and function_calls; environment; final answer
SYSTEM_TOOLS = [
    {"role": "system", "content": "You are a helpful assistant.", "functions": SPECS},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "Let me look that up.", "function_calls": CALL},
    {"role": "environment", "content": '{"temperature": 21, "sky": "clear"}'},
    {"role": "assistant", "content": "It is 21 degrees and clear in Paris."},
]
SYSTEM_TOOLS_TEXT = (
    f"<|im_start|>system\nYou are a helpful assistant. <functions>{SPECS}</functions><|im_end|>\n"
    "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n"
    f"<|im_start|>assistant\nLet me look that up.<function_calls>{CALL}</function_calls><|im_end|>\n"
    '<|im_start|>environment\n{"temperature": 21, "sky": "clear"}<|im_end|>\n'
    "<|im_start|>assistant\nIt is 21 degrees and clear in Paris.<|im_end|>\n"
)
# user with functions; an assistant turn that only calls (content None, as Arrow files give it)
USER_TOOLS = [
    {"role": "user", "content": "Find the capital of Peru.", "functions": SEARCH_SPECS},
    {"role": "assistant", "content": None, "function_calls": 'search(query="capital of Peru")'},
    {"role": "environment", "content": "Lima is the capital of Peru."},
    {"role": "assistant", "content": "The capital of Peru is Lima."},
]
USER_TOOLS_TEXT = (
    f"<|im_start|>user\nFind the capital of Peru.\n<functions>{SEARCH_SPECS}</functions><|im_end|>\n"
    '<|im_start|>assistant\n<function_calls>search(query="capital of Peru")</function_calls><|im_end|>\n'
    "<|im_start|>environment\nLima is the capital of Peru.<|im_end|>\n"
    "<|im_start|>assistant\nThe capital of Peru is Lima.<|im_end|>\n"
)
# multi-turn: empty-content call, a think block before a call, a second round of tools, None-filled fields
MULTI_TURN = [
    {"role": "system", "content": "Answer briefly.", "functions": SEARCH_SPECS, "function_calls": None},
    {"role": "user", "content": "Who wrote Dune?", "functions": None, "function_calls": None},
    {"role": "assistant", "content": "", "functions": None, "function_calls": 'search(query="Dune author")'},
    {"role": "environment", "content": "Frank Herbert wrote Dune (1965).", "functions": None, "function_calls": None},
    {"role": "assistant", "content": "Frank Herbert.", "functions": None, "function_calls": None},
    {"role": "user", "content": "And when was he born?", "functions": None, "function_calls": None},
    {"role": "assistant", "content": "<think>I should search for it.</think>Checking.", "functions": None,
     "function_calls": 'search(query="Frank Herbert born")'},
    {"role": "environment", "content": "Born October 8, 1920.", "functions": None, "function_calls": None},
    {"role": "assistant", "content": "On October 8, 1920.", "functions": None, "function_calls": None},
]
# a Think conversation without tool fields: plain ChatML, as before
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
CONVERSATIONS = {"system_tools": SYSTEM_TOOLS, "user_tools": USER_TOOLS, "multi_turn": MULTI_TURN, "think": THINK}


def none_filled(messages: list[dict]) -> list[dict]:
    """The messages as an Arrow-backed file gives them back: every tool field present, None where absent."""
    return [{"functions": None, "function_calls": None, **m} for m in messages]


def expected_targets(messages: list[dict]) -> str:
    """What carries loss, written out by hand from the format: each assistant turn's text and `<|im_end|>`."""
    out = []
    for m in messages:
        if m["role"] == "assistant":
            calls = m.get("function_calls")
            out.append((m["content"] or "") + (f"<function_calls>{calls}</function_calls>" if calls is not None else "")
                       + "<|im_end|>")
    return "".join(out)


@pytest.fixture(scope="module")
def tokenizer():
    """A small BPE trained like the tiny default's (same code), with the chat template; its corpus holds the tool
    conversations so that merges can cross the boundaries the loss mask has to respect."""
    from posttrain.tiny import datasets as D
    from posttrain.tiny.tokenizer import train_tokenizer

    rng = random.Random(0)
    cfg = D.DataConfig(pool_math=100, pool_ifeval=100, pool_heldout=20, rlvr_dev=10, rlvr_heldout=10,
                       pretrain_documents=200)
    docs = D.pretraining_documents(D.make_pools(cfg, rng), cfg, rng)
    tools = [chat.render(m) for m in CONVERSATIONS.values()] * 5
    return train_tokenizer(docs + tools + ["user\nassistant\nsystem\nenvironment\n"] * 5, vocab_size=700)


# --------------------------------------------------------------------------
# Rendering


def test_system_functions_call_and_environment_render_exactly():
    assert chat.render(SYSTEM_TOOLS) == SYSTEM_TOOLS_TEXT


def test_user_functions_and_call_only_turn_render_exactly():
    assert chat.render(USER_TOOLS) == USER_TOOLS_TEXT
    empty = [dict(m, content="") if m["content"] is None else m for m in USER_TOOLS]
    missing = [{k: v for k, v in m.items() if v is not None} for m in USER_TOOLS]
    assert chat.render(empty) == chat.render(missing) == USER_TOOLS_TEXT


def test_conversation_without_tool_fields_renders_unchanged():
    assert chat.render(THINK) == chat.render(none_filled(THINK)) == THINK_TEXT


def test_generation_prompt_keeps_the_tool_turns():
    prompt = chat.generation_prompt(USER_TOOLS)
    assert prompt == USER_TOOLS_TEXT.rsplit("<|im_start|>assistant\n", 1)[0] + "<|im_start|>assistant\n"


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_jinja_template_matches_render(tokenizer, name):
    messages = CONVERSATIONS[name]
    for variant in (messages, none_filled(messages)):
        assert tokenizer.apply_chat_template(variant, tokenize=False) == chat.render(variant)
        prompt = chat.prompt_messages(variant)
        assert (tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                == chat.render(prompt, add_generation_prompt=True) == chat.generation_prompt(variant))


# --------------------------------------------------------------------------
# The loss mask


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_mask_agrees_with_transformers_assistant_mask(tokenizer, name):
    messages = CONVERSATIONS[name]
    ours = chat.tokenize_conversation(tokenizer, messages)
    theirs = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
    assert ours["input_ids"] == list(theirs["input_ids"])
    assert ours["assistant_masks"] == list(theirs["assistant_masks"])
    assert sum(ours["assistant_masks"]) > 0


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_loss_on_function_calls_not_on_environment(tokenizer, name):
    messages = CONVERSATIONS[name]
    out = chat.tokenize_conversation(tokenizer, messages)
    target = tokenizer.decode([tok for tok in out["labels"] if tok != IGNORE_INDEX])
    prompt = tokenizer.decode([tok for tok, lab in zip(out["input_ids"], out["labels"]) if lab == IGNORE_INDEX])
    assert target == expected_targets(messages)
    for m in messages:
        if m["role"] == "environment":
            assert m["content"] not in target and m["content"] in prompt
        if m.get("functions") is not None:
            assert "<functions>" not in target and m["functions"] in prompt
        if m.get("function_calls") is not None:
            assert f"<function_calls>{m['function_calls']}</function_calls>" in target
    assert "<|im_start|>" not in target


# --------------------------------------------------------------------------
# vLLM renders the same text


@pytest.fixture(scope="module")
def vllm_model(tokenizer, tmp_path_factory):
    """vLLM's ModelConfig and tokenizer for a directory holding the test tokenizer (with CHAT_TEMPLATE) and the tiny
    model's config (no weights: nothing here starts an engine or loads a model)."""
    pytest.importorskip("vllm")
    from vllm.config import ModelConfig
    from vllm.tokenizers import get_tokenizer

    from posttrain.tiny.model import tiny_config

    path = tmp_path_factory.mktemp("vllm_tokenizer")
    tokenizer.save_pretrained(path)
    tiny_config(len(tokenizer), tokenizer.convert_tokens_to_ids(chat.END_OF_TEXT),
                tokenizer.pad_token_id).save_pretrained(path)
    return ModelConfig(model=str(path), tokenizer=str(path)), get_tokenizer(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("name", CONVERSATIONS)
def test_vllm_applies_the_template_like_render(vllm_model, name):
    """`vllm.renderers.hf.safe_apply_chat_template` is where `LLM.chat` and the OpenAI server apply a Hugging Face
    chat template (HfRenderer.render_messages); with no template given it resolves the tokenizer's own."""
    from vllm.renderers.hf import safe_apply_chat_template

    model_config, tokenizer = vllm_model
    messages = CONVERSATIONS[name]
    assert safe_apply_chat_template(model_config, tokenizer, messages, tokenize=False) == chat.render(messages)
    prompt = chat.prompt_messages(messages)
    text = safe_apply_chat_template(model_config, tokenizer, prompt, tokenize=False, add_generation_prompt=True)
    assert text == chat.generation_prompt(messages)


@pytest.mark.slow
def test_vllm_chat_message_parser_drops_tool_fields(vllm_model):
    """What `LLM.chat` and the OpenAI server do before applying the template: `parse_chat_messages` rebuilds each
    message from the OpenAI fields it knows (role, content, tool_calls, reasoning, name, tool_call_id), so
    Dolci's `functions` and `function_calls` never reach the template. Plain ChatML (and `environment` turns)
    come through intact. So tool prompts go to vLLM as text from `generation_prompt`, as the rollout engines
    already send them. This pins the limitation: if vLLM starts passing the fields through, revisit."""
    from vllm.renderers.chat_utils import parse_chat_messages
    from vllm.renderers.hf import resolve_chat_template_content_format, safe_apply_chat_template

    model_config, tokenizer = vllm_model

    def via_chat(messages):
        fmt = resolve_chat_template_content_format(None, None, "auto", tokenizer, model_config=model_config)
        conversation, _, _ = parse_chat_messages(messages, model_config, fmt)
        return safe_apply_chat_template(model_config, tokenizer, conversation, tokenize=False)

    plain = [m for m in USER_TOOLS if "function_calls" not in m and "functions" not in m]
    assert via_chat(THINK) == chat.render(THINK)
    assert via_chat(plain) == chat.render(plain)
    dropped = via_chat(USER_TOOLS)
    assert dropped != chat.render(USER_TOOLS)
    assert "<functions>" not in dropped and "<function_calls>" not in dropped


# --------------------------------------------------------------------------
# File round trips and schemas


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_rows_survive_a_file_round_trip(tmp_path, suffix):
    import datasets

    from posttrain.config import DatasetSpec
    from posttrain.data.schemas import sft_row
    from posttrain.data.sources import read_source

    # rows as written: some messages carry the tool fields, some lack them (the Think row has none at all)
    rows = [{"id": name, "messages": m} for name, m in CONVERSATIONS.items()]
    path = tmp_path / f"dolci.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    read, report = read_source(DatasetSpec(path=str(path)), sft_row, on_bad_row="error")
    assert report.skipped == 0 and len(read) == len(rows)
    by_id = {r["id"]: r["messages"] for r in read}
    for name, messages in CONVERSATIONS.items():
        back = by_id[name]
        if suffix == "parquet":  # Arrow gives every message every field, None where it was absent
            assert all(set(m) >= {"role", "content", "functions", "function_calls"} for m in back)
        assert chat.render(back) == chat.render(messages)
    assert any(m.get("functions", "absent") is None for m in by_id["think"]) == (suffix == "parquet")


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([{"role": "user", "content": "x", "functions": [{"name": "f"}]}, {"role": "assistant", "content": "y"}],
         "messages[0].functions: expected text, got list"),
        (SYSTEM_TOOLS[:2] + [{"role": "assistant", "content": "x", "function_calls": {"name": "f"}}],
         "messages[2].function_calls: expected text, got dict"),
        (SYSTEM_TOOLS[:2] + [{"role": "assistant", "content": None}], "messages[2].content: missing"),
        (SYSTEM_TOOLS[:2] + [{"role": "assistant", "content": None, "function_calls": None}],
         "messages[2].content: missing"),
        (USER_TOOLS[:2] + [{"role": "environment", "content": "x", "function_calls": "f()"}],
         "messages[2].function_calls: only assistant turns carry function calls, not 'environment'"),
        (USER_TOOLS[:1] + [{"role": "assistant", "content": "y", "functions": SPECS}],
         "messages[1].functions: only system and user turns carry functions, not 'assistant'"),
    ],
)
def test_schema_and_renderer_name_the_field(messages, problem):
    from posttrain.data.schemas import sft_row

    assert sft_row({"messages": messages}) == problem
    field = problem.split(":")[0]
    with pytest.raises(chat.ChatFormatError) as err:
        chat.render(messages)
    assert str(err.value).startswith(f"{field}:")


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_tool_rows_are_valid_sft_rows(name):
    from posttrain.data.sft import SFT_ROW

    assert SFT_ROW({"messages": CONVERSATIONS[name]}) is None
    assert SFT_ROW({"messages": none_filled(CONVERSATIONS[name])}) is None


def test_call_only_turn_is_not_empty_but_a_bare_one_is():
    from posttrain.data.sft import nonempty_content

    assert nonempty_content({"messages": USER_TOOLS}) is None
    bare = USER_TOOLS[:1] + [{"role": "assistant", "content": "", "function_calls": None}]
    assert nonempty_content({"messages": bare}) == "messages[1].content: empty"


def test_preference_pair_whose_prompts_differ_only_in_functions_is_caught():
    from posttrain.data.preference import pair_problem

    chosen = USER_TOOLS
    rejected = [dict(USER_TOOLS[0], functions=SPECS)] + USER_TOOLS[1:-1] + [{"role": "assistant", "content": "Lima."}]
    assert pair_problem({"chosen": chosen, "rejected": chosen[:-1] + rejected[-1:]}) is None
    assert "prompt turns differ" in pair_problem({"chosen": chosen, "rejected": rejected})
