"""A causal LM's forward pass to per-token log-probs, with the output layer run only where a loss needs it.

`label_logprobs(model, inputs, labels)` returns what
`posttrain.algorithms.losses.token_logprobs(model(**inputs).logits, labels)`
returns, without ever holding the (B, T, V) logits: the model runs with its
output layer bypassed (its `forward` replaced by the identity for that one
call, so wrappers' hooks still run: DeepSpeed ZeRO-3 gathers, DDP, PEFT),
the final hidden states at the labelled positions are gathered into one
(K, H) tensor, and one more call of the output layer runs
`posttrain.algorithms.chunked.chunked_logprobs` on them, chunk by chunk
(`head_logprobs`). The peak memory of the loss is
then O(chunk x V) instead of O(B x T x V), and prompt and padding positions
cost nothing in the output layer.

Models whose logits are more than `lm_head(hidden)` (soft-capping, a logit
scale) take the plain path: the model's own logits at the labelled
positions, log-probs in one chunk.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posttrain.algorithms.chunked import chunked_logprobs
from posttrain.data.batches import IGNORE_INDEX

CHUNK_TOKENS = 4096  # the default of `model.loss_chunk_tokens`
# config attributes that change logits after the output layer: their models take the plain path
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside DeepSpeed / DDP / PEFT wrappers."""
    while True:
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif hasattr(model, "get_output_embeddings"):
            return model
        elif isinstance(getattr(model, "module", None), nn.Module):  # DeepSpeedEngine, DistributedDataParallel
            model = model.module
        else:
            raise TypeError(f"{type(model).__name__} is not a causal LM (no output embeddings) nor a known wrapper")


def plain_head(lm: nn.Module) -> bool:
    """Are the model's logits exactly its output layer applied to the final hidden states?"""
    config = getattr(lm, "config", None)
    return not any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)


@contextlib.contextmanager
def head_forward(head: nn.Module, forward) -> Iterator[None]:
    """Within the block, calling `head` runs `forward` (an instance attribute shadowing the class's forward),
    with the module's hooks still around it."""
    head.forward = forward
    try:
        yield
    finally:
        del head.forward


def _identity(hidden: Tensor, *args, **kwargs) -> Tensor:
    return hidden


def head_logprobs(head: nn.Module, hidden: Tensor, targets: Tensor, *, temperature: float, chunk: int,
                  entropy: bool) -> tuple[Tensor, Optional[Tensor]]:
    """`chunked_logprobs` through ONE call of the head module, whatever the number of chunks.

    Every rank then calls the output layer once per forward (and DeepSpeed ZeRO-3 gathers its weight once,
    a collective every rank must make equally often), with no positions as well; the backward's
    recomputation of each chunk runs after ZeRO-3's pre-backward hook on the call's output has gathered
    the weight again. A head that is not a plain `nn.Linear` (an adapter on it) is called chunk by chunk.
    """
    if type(head) is not nn.Linear:
        return chunked_logprobs(head, hidden, targets, temperature=temperature, chunk=chunk, entropy=entropy)

    def forward(x: Tensor):
        out = chunked_logprobs(lambda h: F.linear(h, head.weight, head.bias), x, targets, temperature=temperature,
                               chunk=chunk, entropy=entropy)
        return out if entropy else out[0]

    with head_forward(head, forward):
        out = head(hidden)
    return out if entropy else (out, None)


def label_logprobs(model: nn.Module, inputs: dict, labels: Tensor, *, temperature: float = 1.0,
                   chunk: int = CHUNK_TOKENS, entropy: bool = False
                   ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Per-token log-probs of `labels` aligned with them, as `token_logprobs` on the model's logits / temperature.

    inputs: the model's keyword inputs (input_ids (B, T), masks, positions);
    labels: (B, T), IGNORE_INDEX where no log-prob is wanted. Returns
    (logps (B, T) float32, 0 where masked; mask (B, T) bool; entropy (B, T)
    float32 detached, 0 where masked, or None).
    """
    lm = causal_lm(model)
    targets = labels[:, 1:]  # token t is predicted by position t - 1
    where = targets != IGNORE_INDEX  # (B, T-1)
    if plain_head(lm):
        head = lm.get_output_embeddings()
        with head_forward(head, _identity):
            hidden = model(**inputs, use_cache=False).logits  # (B, T, H)
        picked, ent = head_logprobs(head, hidden[:, :-1][where], targets[where], temperature=temperature,
                                    chunk=chunk, entropy=entropy)
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1][where]
        picked, ent = chunked_logprobs(lambda x: x, logits, targets[where], temperature=temperature, chunk=0,
                                       entropy=entropy)
    mask = torch.cat([torch.zeros_like(where[:, :1]), where], dim=1)
    logps = _scatter(picked, mask)
    return logps, mask, (_scatter(ent, mask) if ent is not None else None)


def _scatter(values: Tensor, mask: Tensor) -> Tensor:
    """Values of the True positions of `mask`, in row-major order, back into a zero (B, T) float32 tensor."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=values.device)
    return out.masked_scatter(mask, values.float())

