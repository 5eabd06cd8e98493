"""A toy RLVR setting for the Ray tests: a random 2-layer Olmo 3, its tokenizer, prompts, toy verifiers.

Not a test module. The verifiers here are registered when the module is
imported (`verifiers.modules: [rlvr_toy]`, with this directory on
PYTHONPATH so the reward workers can import it too):

- `toy_parity`: 1 when the answer has an even number of characters; a
  random model scores about half its responses, so groups have variance.
- `toy_raise`: raises (a verifier bug), `toy_exit`: kills its process
  (a crash), `toy_hang`: sleeps past any timeout.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import rewards

HERE = Path(__file__).resolve().parent


@rewards.register("toy_parity")
def toy_parity(prediction, label, **context):
    return len(prediction) % 2 == 0


@rewards.register("toy_raise")
def toy_raise(prediction, label, **context):
    raise RuntimeError("toy verifier bug")


@rewards.register("toy_exit")
def toy_exit(prediction, label, **context):
    os._exit(7)


@rewards.register("toy_hang")
def toy_hang(prediction, label, **context):
    time.sleep(120)
    return 1.0


def build(directory: Path, *, prompts: int = 40, heldout: int = 8, verifiers=("toy_parity",)) -> dict[str, Path]:
    """Write DIR/model (checkpoint + tokenizer), DIR/train.jsonl and DIR/heldout.jsonl; return their paths."""
    import torch
    from transformers import Olmo3ForCausalLM

    from posttrain.tiny.model import tiny_config
    from posttrain.tiny.tokenizer import train_tokenizer

    directory = Path(directory)
    model_dir = directory / "model"
    if not (model_dir / "config.json").is_file():
        corpus = [f"What is {i} plus {j}? The answer is {i + j}." for i in range(30) for j in range(5)]
        tokenizer = train_tokenizer(corpus, vocab_size=320)
        torch.manual_seed(0)
        config = tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
        config.num_hidden_layers, config.layer_types = 2, ["sliding_attention", "full_attention"]
        config.hidden_size, config.intermediate_size = 128, 256
        config.num_attention_heads = config.num_key_value_heads = 2  # head_dim 64
        Olmo3ForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    paths = {"model": model_dir, "train": directory / "train.jsonl", "heldout": directory / "heldout.jsonl"}
    for split, count, offset in (("train", prompts, 0), ("heldout", heldout, 1000)):
        rows = [{"messages": [{"role": "user", "content": f"What is {offset + i} plus {i % 5}?"}],
                 "ground_truth": str(offset + i + i % 5), "verifier": verifiers[i % len(verifiers)]}
                for i in range(count)]
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def recipe(paths: dict[str, Path], out: Path, **overrides) -> "object":
    """A small RLVR config over the toy setting (hf engine, torch backend, no DeepSpeed), with overrides
    given as dotted keys: recipe(paths, out, **{"grpo.steps": 3})."""
    from posttrain.config import apply_overrides, validate

    raw = {
        "stage": "rlvr",
        "model": {"path": str(paths["model"])},
        "data": {"train": [{"path": str(paths["train"])}], "heldout": [{"path": str(paths["heldout"])}]},
        "output": {"dir": str(out), "keep_last": 1},
        "optim": {"lr": 1e-4, "schedule": "constant", "warmup_ratio": 0.0},
        "batch": {"micro_batch_size": 8},
        "deepspeed": {"enabled": False},
        "distributed": {"num_workers": 1, "cpus_per_worker": 1},
        "rollout": {"engine": "hf", "num_engines": 1, "cpus_per_engine": 1, "max_prompt_length": 64,
                    "max_response_length": 12},
        "grpo": {"prompts_per_step": 4, "samples_per_prompt": 4, "steps": 3, "max_async_steps": 1},
        "verifiers": {"modules": ["rlvr_toy"], "timeout": 3.0, "max_workers": 1, "cpus_per_worker": 0},
        "eval": {"every": 0, "max_prompts": 8},
        "logging": {"tensorboard": False, "progress": False},
    }
    origins: dict[str, str] = {}
    apply_overrides(raw, origins, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()])
    return validate(raw, origins)
