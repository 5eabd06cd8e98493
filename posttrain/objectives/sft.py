"""What the SFT learner ranks run: the assistant-token cross-entropy of one micro-batch.

`Learner.train_step` and `Learner.evaluate` call `sft_loss(model, batch, ...)`
on each rank; the maths is `posttrain.algorithms.losses.sft_loss_sum`.
"""

from __future__ import annotations

from posttrain.algorithms.losses import sft_loss_sum
from posttrain.data.batches import SFTBatch


def sft_loss(model, batch: SFTBatch, *, normalizer: float, world_size: int):
    """Summed assistant-token cross-entropy of one micro-batch, scaled for step-wide token averaging.

    Ranks' gradients are averaged by the backend (divided by world_size), so
    the loss is multiplied back by world_size: the step's gradient is that of
    sum(all losses) / normalizer.
    """
    logits = model(**batch.model_inputs(), use_cache=False).logits
    loss_sum, count = sft_loss_sum(logits, batch.labels)
    scaled = loss_sum * (world_size / max(float(normalizer), 1.0))
    return scaled, {"loss_sum": float(loss_sum.detach()), "loss_tokens": float(count)}
