"""Log-probs and entropy from hidden states, the output layer run chunk by chunk.

A loss over T positions and a vocabulary of V holds T x V logits, their float
copy and the softmax temporaries of its backward: at T = 32K and V = 100K
that is tens of gigabytes per GPU, more than the model itself. Here the
output layer (`head`, e.g. `lm_head`) runs on `chunk` positions at a time
inside a non-reentrant activation checkpoint: the forward keeps only each
chunk's log-probs, the backward recomputes one chunk's logits at a time, so
the peak is O(chunk x V) whatever T is. Callers pass only the positions that
carry a loss (response tokens, assistant tokens), so prompt positions never
reach the output layer at all.

Values and gradients equal those of the whole-sequence computation
(`posttrain.algorithms.losses.gather_logprobs` on full logits) up to float
rounding; tests/objectives/test_forward.py checks both.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Head = Callable[[Tensor], Tensor]


def chunk_logprobs(head: Head, hidden: Tensor, targets: Tensor, temperature: float,
                   entropy_out: Optional[list]) -> Tensor:
    """log softmax(head(hidden) / temperature)[target] for one chunk: hidden (K, H), targets (K,) -> (K,) float32.

    With `entropy_out` (a list), also appends the detached entropy of each
    position's distribution; the backward's recomputation passes None and
    skips it (no-grad work saves nothing for backward, so the checkpoint's
    recomputation check is unaffected).
    """
    logits = head(hidden).float()
    if temperature != 1.0:  # no tempered copy at temperature 1
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    if entropy_out is not None:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            expected = torch.bmm(probs.unsqueeze(1), logits.unsqueeze(2)).view(-1)  # E_p[logit], no (K, V) product
            entropy_out.append(lse - expected)  # H = logsumexp - E_p[logit]
    return picked - lse


def chunked_logprobs(head: Head, hidden: Tensor, targets: Tensor, *, temperature: float = 1.0, chunk: int = 4096,
                     entropy: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """Log-probs of `targets` under softmax(head(hidden) / temperature), `chunk` positions at a time.

    hidden: (K, H) the final hidden states at the positions that predict
    `targets` (K,). Returns (logps (K,) float32 with gradient to hidden and the
    head's parameters, entropy (K,) float32 detached or None). chunk <= 0 runs
    all K positions at once (still without a tempered copy at temperature 1).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    count = hidden.shape[0]
    step = count if chunk <= 0 else chunk
    entropies: Optional[list] = [] if entropy else None
    logps = []
    with_grad = torch.is_grad_enabled()
    for start in range(0, count, max(step, 1)):
        piece, piece_targets = hidden[start:start + step], targets[start:start + step]
        if not with_grad:
            logps.append(chunk_logprobs(head, piece, piece_targets, temperature, entropies))
            continue
        done = [False]  # the first call computes the entropy; the backward's recomputation does not

        def run(h: Tensor, t: Tensor, done=done) -> Tensor:
            out = chunk_logprobs(head, h, t, temperature, None if done[0] else entropies)
            done[0] = True
            return out

        logps.append(checkpoint(run, piece, piece_targets, use_reentrant=False))
    if not logps:  # no positions: the head still runs (on nothing), so its weights get a (zero) gradient on
        # every rank, as data-parallel gradient reduction expects
        logps.append(chunk_logprobs(head, hidden, targets, temperature, entropies))
    out = torch.cat(logps)
    return out, (torch.cat(entropies) if entropy else None)
