"""A micro setting for stage runs that take seconds: a random 2-layer Olmo 3, its tokenizer, chats and pairs.

Not a test module. Used by tests/stages/test_graceful_stop.py and the micro
runs of tests/e2e/test_sft_e2e.py (which put this directory on sys.path).
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def build(out: Path) -> Path:
    """Write OUT/model (checkpoint + tokenizer) and OUT/train.jsonl (300 think-style chats, some multi-turn)."""
    import torch
    from transformers import Olmo3Config, Olmo3ForCausalLM

    from posttrain.data.chat import think_content
    from posttrain.tiny.tokenizer import train_tokenizer

    out = Path(out)
    rng = random.Random(0)
    rows = []
    for _ in range(300):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        turns = [{"role": "user", "content": f"What is {a} plus {b}?"},
                 {"role": "assistant", "content": think_content(f"{a} + {b} = {a + b}", f"\\boxed{{{a + b}}}")}]
        if rng.random() < 0.3:
            turns = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi " * rng.randint(1, 20)}] + turns
        rows.append({"messages": turns})
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = train_tokenizer([json.dumps(r) for r in rows], vocab_size=320)
    config = Olmo3Config(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512,
                         layer_types=["full_attention"] * 2, sliding_window=512, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    Olmo3ForCausalLM(config).save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return out


def build_pairs(out: Path, *, train: int = 64, heldout: int = 8) -> dict[str, Path]:
    """Write OUT/pairs_train.jsonl and OUT/pairs_heldout.jsonl: think-style sums, chosen right, rejected off by one."""
    from posttrain.data.chat import think_content

    out = Path(out)
    rng = random.Random(1)
    paths = {}
    for split, count in (("train", train), ("heldout", heldout)):
        rows = []
        for _ in range(count):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            user = {"role": "user", "content": f"What is {a} plus {b}?"}
            answer = lambda s: {"role": "assistant", "content": think_content(f"{a} + {b} = {s}", f"\\boxed{{{s}}}")}
            rows.append({"chosen": [user, answer(a + b)], "rejected": [user, answer(a + b + 1)]})
        paths[split] = out / f"pairs_{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
