"""A small random Olmo 3 checkpoint (head_dim 64, peaked next-token distributions) and references.

`greedy_reference` is the plain definition of greedy decoding (argmax of a
full forward pass, token by token), independent of any engine.
"""

from __future__ import annotations

import pytest
import torch

from posttrain.rollout.testing import build_checkpoint, random_weights

VOCAB = 256
LOGIT_SCALE = 20.0  # peaked distributions: sampled log-probs span about -12 .. 0


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("rollout") / "base", vocab_size=VOCAB, logit_scale=LOGIT_SCALE)


@pytest.fixture(scope="session")
def base_weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="session")
def other_weights(model_dir):
    return random_weights(model_dir, seed=1, logit_scale=LOGIT_SCALE)


@pytest.fixture(scope="session")
def prompts():
    generator = torch.Generator().manual_seed(0)
    lengths = [3, 17, 8, 12, 5, 20]
    return [torch.randint(4, VOCAB, (length,), generator=generator).tolist() for length in lengths]


def load_reference(model_dir, weights: dict | None = None):
    """The `transformers` model (the learner's view), optionally with other weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if weights is not None:
        model.load_state_dict(weights)
    return model


def greedy_reference(model, prompt: list[int], max_tokens: int, stop_id: int) -> list[int]:
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([prompt + tokens])).logits[0, -1]
            tokens.append(int(logits.argmax()))
            if tokens[-1] == stop_id:
                break
    return tokens


def stopping_weights(model, weights: dict, prompt: list[int], stop_id: int, step: int = 2) -> dict:
    """`weights` with the eos output row set to 1.5x the row of the token greedy picks at `step`.

    That token's logit is the step's maximum and positive, so eos now beats it:
    greedy decoding stops at `step` (or earlier, wherever that token would win).
    """
    token = greedy_reference(model, prompt, step + 1, stop_id)[step]
    changed = {name: tensor.clone() for name, tensor in weights.items()}
    changed["lm_head.weight"][stop_id] = 1.5 * weights["lm_head.weight"][token]
    return changed


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """These models are tiny: a second OpenMP thread only spin-waits, and on a busy
    2-core machine that can make generation an order of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
