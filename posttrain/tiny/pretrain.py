"""Short CPU pretraining of the tiny model on plain text of the toy domain.

Next-token cross-entropy on documents joined by `<|endoftext|>` and cut into
fixed-length blocks (documents may straddle blocks, as in ordinary LM
pretraining). AdamW, linear warmup then cosine decay to 10% of the peak,
gradient clipping at 1.0. A fixed number of steps (never a time budget) and a
seeded block order make the weights a function of the seed: the same seed on
the same machine gives the same weight hash.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class PretrainConfig:
    # optimizer steps: 922k tokens, a few minutes on 2 CPU cores. Copying a question's numbers into the
    # working (induction) forms between 600 and 900 steps, and later stages build on that skill.
    steps: int = 900
    block: int = 128           # tokens per sequence
    batch: int = 8             # sequences per step (at equal tokens, more and smaller steps reach a lower loss)
    lr: float = 2e-3           # peak learning rate (tiny models take large ones)
    warmup: float = 0.05       # fraction of steps of linear warmup
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    log_every: int = 25

    def to_dict(self) -> dict:
        return asdict(self)


def pack(token_lists: list[list[int]], separator: int, block: int) -> torch.Tensor:
    """Documents joined by `separator` and cut into full blocks: (N, block) int64."""
    stream = [tok for ids in token_lists for tok in (*ids, separator)]
    n = len(stream) // block
    if n == 0:
        raise ValueError(f"corpus of {len(stream)} tokens is shorter than one block of {block}")
    return torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    warmup = max(1, round(cfg.warmup * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _order(n_blocks: int, total: int, generator: torch.Generator) -> torch.Tensor:
    """`total` block indices: seeded permutations of all blocks, one epoch after another."""
    epochs = -(-total // n_blocks)
    return torch.cat([torch.randperm(n_blocks, generator=generator) for _ in range(epochs)])[:total]


def pretrain(model, blocks: torch.Tensor, cfg: PretrainConfig, seed: int, log: Callable[[str], None] = print) -> dict:
    """Train `model` in place on `blocks` (N, block); returns loss curve and throughput."""
    generator = torch.Generator().manual_seed(seed)
    order = _order(blocks.shape[0], cfg.steps * cfg.batch, generator)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )
    model.train()
    losses: list[tuple[int, float]] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        batch = blocks[order[step * cfg.batch:(step + 1) * cfg.batch]]  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - start
            losses.append((step, round(loss.item(), 4)))
            log(f"  pretrain step {step + 1}/{cfg.steps}  loss {loss.item():.3f}  "
                f"{(step + 1) * cfg.batch * cfg.block / elapsed:,.0f} tokens/s")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    tokens = cfg.steps * cfg.batch * cfg.block
    return {
        "steps": cfg.steps,
        "tokens": tokens,
        "corpus_tokens": int(blocks.numel()),
        "epochs": round(tokens / blocks.numel(), 3),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        # CPU time over all threads: on a busy machine this, not wall time, says what the work costs
        "cpu_seconds": round(cpu_seconds, 2),
        "threads": torch.get_num_threads(),
        "final_loss": losses[-1][1] if losses else None,
        "losses": losses,
    }
