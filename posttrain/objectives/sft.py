"""What the SFT learner ranks run: the assistant-token cross-entropy of one micro-batch.

`Learner.train_step` and `Learner.evaluate` call `sft_loss(model, batch, ...)`
on each rank. The output layer runs on the labelled positions only, `chunk`
at a time (`posttrain.objectives.forward.label_logprobs`), so a packed 32K
row never holds its (T, V) logits.
"""

from __future__ import annotations

from posttrain.data.batches import SFTBatch
from posttrain.objectives.forward import CHUNK_TOKENS, label_logprobs


def sft_loss(model, batch: SFTBatch, *, normalizer: float, world_size: int, chunk: int = CHUNK_TOKENS):
    """Summed assistant-token cross-entropy of one micro-batch, scaled for step-wide token averaging.

    Ranks' gradients are averaged by the backend (divided by world_size), so
    the loss is multiplied back by world_size: the step's gradient is that of
    sum(all losses) / normalizer.
    """
    logps, mask, _ = label_logprobs(model, batch.model_inputs(), batch.labels, chunk=chunk)
    loss_sum = -logps.sum()
    scaled = loss_sum * (world_size / max(float(normalizer), 1.0))
    return scaled, {"loss_sum": float(loss_sum.detach()), "loss_tokens": float(mask.sum())}
