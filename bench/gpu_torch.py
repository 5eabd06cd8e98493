"""The learner at Olmo 3 shapes on one GPU, with torch and transformers alone (no vllm, ray or deepspeed).

`python bench/gpu_check.py --torch-only` runs this; so does `python bench/gpu_torch.py`. On a random-init
Olmo 3 7B (bf16, gradient checkpointing, built on the device) it prints, one line each:

- rlvr loss: peak memory and tokens/s of one 32K-token sequence's forward and backward through the RLVR
  loss, whole logits (the path before chunking: (T, V) logits, a tempered copy, float copies, entropy over
  the full tensor) against chunked (`posttrain.objectives.forward.label_logprobs`, response positions only);
- packed sft row: a 32K row of 16 documents, forward and backward through the chunked SFT loss, with
  `sdpa` (a (1, 1, T, T) document mask) and `flex_attention` (block masks; first call compiles, reported
  apart);
- mfu: bf16 model FLOPs utilisation of forward + backward on packed 16K rows at 1B and 7B shapes (model
  FLOPs: 6 x parameters x tokens + causal attention; checkpointing's recompute not counted);
- state dict copies: device -> host (pageable and pinned) and host -> device of the 7B's weights;
- rlvr update, packed against padded: one step's 64 samples (prompts of 64-192 tokens, responses of 8-256
  drawn uniformly: the 256-token workload) through forward and backward of the policy-gradient loss, as
  padded micro-batches of 1 and of 16 samples (sorted by length) and as rows packed up to 4096 tokens
  (`RolloutBatch.packed_sequences`) under sdpa and flex attention.

`--device cpu --shape tiny --tokens 1024` runs the same code on the CPU (its twin, for CI-less checks);
memory figures are CUDA-only. A run that runs out of memory prints OOM for that line and goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from posttrain.memory import OLMO3_SHAPES, olmo3_shape  # noqa: E402
from posttrain.objectives.forward import label_logprobs  # noqa: E402

# what a random-init model needs beyond its shape (the shapes: 3 of every 4 layers slide over the window)
RUNTIME = dict(max_position_embeddings=65536, pad_token_id=1, eos_token_id=100257, rms_norm_eps=1e-6)
SHAPES = {
    "7b": OLMO3_SHAPES["7b"],  # the published Olmo 3 7B, as `posttrain plan` counts it
    "1b": olmo3_shape(2048, 16, 16, 16, 8192),
    "tiny": {**olmo3_shape(64, 4, 2, 2, 128), "vocab_size": 1000, "sliding_window": 64, "eos_token_id": 999},
}
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (SXM)


def build(shape: str, device: torch.device, attn: str = "sdpa"):
    from transformers import Olmo3Config, Olmo3ForCausalLM

    values = {key: value for key, value in {**RUNTIME, **SHAPES[shape]}.items() if key != "model_type"}
    config = Olmo3Config(**values, attn_implementation=attn)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        try:
            model = Olmo3ForCausalLM._from_config(config, dtype=dtype)
        except TypeError:  # transformers before 4.56 names it torch_dtype
            model = Olmo3ForCausalLM._from_config(config, torch_dtype=dtype)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def measure(device: torch.device, fn: Callable[[], None]) -> dict:
    """Seconds and peak allocated GiB of fn() (CUDA), or {'oom': True}."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        fn()
    except torch.OutOfMemoryError:
        return {"oom": True}
    except Exception as error:  # noqa: BLE001 - a backend that fails is a result to print, not the end of the run
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    if device.type == "cuda":
        torch.cuda.synchronize()
        return {"s": time.perf_counter() - start, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"s": time.perf_counter() - start, "peak_gib": None}


def free_grads(model) -> None:
    model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- the RLVR loss at 32K


def rlvr_whole_logits(model, ids: torch.Tensor, prompt: int, temperature: float = 1.0) -> None:
    """The loss path the chunked one replaced: full logits, a tempered copy, float log-probs, full entropy."""
    logits = model(input_ids=ids, use_cache=False).logits[:, prompt - 1:-1]
    logits = logits / temperature  # the old path always copied
    flat = logits.float()
    logps = torch.gather(flat, -1, ids[:, prompt:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(flat, dim=-1)
    with torch.no_grad():
        logp = torch.log_softmax(logits.detach().float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(dim=-1)
    advantage = 0.5
    loss = -(advantage * torch.exp(logps - logps.detach())).mean()
    loss.backward()
    del entropy


def rlvr_chunked(model, ids: torch.Tensor, prompt: int, chunk: int = 4096) -> None:
    labels = ids.clone()
    labels[:, :prompt] = -100
    logps, mask, entropy = label_logprobs(model, {"input_ids": ids}, labels, temperature=1.0, chunk=chunk,
                                          entropy=True)
    loss = -(0.5 * torch.exp(logps - logps.detach()))[mask].mean()
    loss.backward()


# --------------------------------------------------------------------------- packed SFT rows


def packed_row(tokens: int, documents: int, vocab: int, device: torch.device) -> dict:
    """One row of `documents` equal documents: ids, positions restarting per document, labels (first token -100)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (1, tokens), generator=g)
    per = tokens // documents
    positions = (torch.arange(tokens) % per).unsqueeze(0)
    labels = ids.clone()
    labels[positions == 0] = -100
    return {"input_ids": ids.to(device), "position_ids": positions.to(device), "labels": labels.to(device)}


def sft_step(model, row: dict, chunk: int = 4096) -> None:
    inputs = {"input_ids": row["input_ids"], "position_ids": row["position_ids"]}
    logps, mask, _ = label_logprobs(model, inputs, row["labels"], chunk=chunk)
    (-logps.sum() / mask.sum()).backward()


def set_attention(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


# --------------------------------------------------------------------------- MFU


def model_flops_per_token(config, document: int) -> float:
    """6 x parameters (embeddings' lookup excluded, the output layer included) + causal attention, fwd + bwd."""
    h, layers, inter, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter
    dense = 6 * (layers * per_layer + h * vocab)
    windows = [min(document, config.sliding_window) if t == "sliding_attention" else document
               for t in config.layer_types]
    attention = sum(6 * 2 * h * w / 2 for w in windows)  # QK^T and AV, causal: half the context on average
    return dense + attention


def mfu(model, device: torch.device, tokens: int, documents: int, steps: int, peak: float | None) -> dict:
    row = packed_row(tokens, documents, model.config.vocab_size, device)
    sft_step(model, row)  # warm-up
    free_grads(model)
    result = measure(device, lambda: [sft_step(model, row) for _ in range(steps)])
    free_grads(model)
    if "s" not in result:
        return result
    tokens_per_s = tokens * steps / result["s"]
    flops = model_flops_per_token(model.config, tokens // documents) * tokens_per_s
    return {**result, "tokens_per_s": tokens_per_s, "tflops": flops / 1e12,
            "mfu": flops / peak if peak else None}


# --------------------------------------------------------------------------- host <-> device


def copies(model, device: torch.device) -> dict:
    state = {k: v.detach() for k, v in model.state_dict().items()}
    size = sum(v.numel() * v.element_size() for v in state.values())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"gib": size / 2**30}
    start = time.perf_counter()
    host = {k: v.to("cpu") for k, v in state.items()}
    sync()
    out["to_host_pageable_s"] = time.perf_counter() - start
    if device.type == "cuda":
        pinned = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in state.items()}
        start = time.perf_counter()
        for k, v in state.items():
            pinned[k].copy_(v, non_blocking=True)
        sync()
        out["to_host_pinned_s"] = time.perf_counter() - start
        start = time.perf_counter()
        back = {k: v.to(device, non_blocking=True) for k, v in pinned.items()}
        sync()
        out["to_device_pinned_s"] = time.perf_counter() - start
        del back, pinned
    start = time.perf_counter()
    back = {k: v.to(device) for k, v in host.items()}
    sync()
    out["to_device_pageable_s"] = time.perf_counter() - start
    del back, host
    return out


# --------------------------------------------------------------------------- RLVR updates: packed vs padded


def workload(count: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    import random

    rng = random.Random(seed)
    return [([rng.randrange(2, vocab) for _ in range(rng.randint(64, 192))],
             [rng.randrange(2, vocab) for _ in range(rng.randint(8, 256))]) for _ in range(count)]


def rollout(samples: list, packed: bool):
    """A RolloutBatch of (prompt, response) token lists: prompts left-padded, responses right-padded.

    What posttrain.data.rlvr's rollout_batch and pack_samples do, written again here (as `layouts` does):
    that module needs pydantic and the verifiers, which the GPU machine does not have."""
    from posttrain.data.batches import RolloutBatch

    n, tp, tr = len(samples), max(len(p) for p, _ in samples), max(len(r) for _, r in samples)
    prompt_ids, prompt_mask = torch.zeros(n, tp, dtype=torch.long), torch.zeros(n, tp, dtype=torch.long)
    response_ids, response_mask = torch.zeros(n, tr, dtype=torch.long), torch.zeros(n, tr)
    for i, (p, r) in enumerate(samples):
        prompt_ids[i, tp - len(p):], prompt_mask[i, tp - len(p):] = torch.tensor(p), 1
        response_ids[i, :len(r)], response_mask[i, :len(r)] = torch.tensor(r), 1.0
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                        response_lengths=torch.tensor([len(r) for _, r in samples]), response_mask=response_mask,
                        engine_logprobs=torch.zeros(n, tr), rewards=torch.zeros(n),
                        advantages=torch.linspace(-1, 1, n), group_index=torch.arange(n),
                        policy_version=torch.zeros(n, dtype=torch.long), truncated=torch.zeros(n, dtype=torch.bool),
                        packed=packed)


def layouts(samples: list, pack_length: int) -> dict[str, list]:
    by_length = sorted(samples, key=lambda s: len(s[0]) + len(s[1]))
    bins: list[list] = []
    for sample in reversed(by_length):  # first fit, longest first
        size = len(sample[0]) + len(sample[1])
        slot = next((b for b in bins if sum(len(p) + len(r) for p, r in b) + size <= pack_length), None)
        slot.append(sample) if slot is not None else bins.append([sample])
    return {"padded_mb1": [rollout([s], False) for s in samples],
            "padded_mb16": [rollout(by_length[i:i + 16], False) for i in range(0, len(by_length), 16)],
            f"packed_{pack_length}": [rollout(b, True) for b in bins]}


def policy_update(model, batches: list, device: torch.device) -> None:
    total = sum(float(b.response_mask.sum()) for b in batches)
    for batch in batches:
        batch = batch.to(device)
        if batch.packed:
            ids, positions, labels, index = batch.packed_sequences()
            row, _, _ = label_logprobs(model, {"input_ids": ids, "position_ids": positions}, labels)
            logps = torch.where(index >= 0, row[0][index.clamp(min=0)], torch.zeros((), device=device))
        else:
            input_ids, attention_mask, position_ids = batch.sequences()
            full, _, _ = label_logprobs(model, {"input_ids": input_ids, "attention_mask": attention_mask,
                                                "position_ids": position_ids}, batch.response_labels())
            logps = full[:, batch.prompt_ids.shape[1]:]
        ratio = torch.exp(logps - logps.detach())
        (-(batch.advantages[:, None] * ratio * batch.response_mask).sum() / total).backward()


def packing(model, device: torch.device, attentions: list[str], repeats: int = 2) -> dict:
    samples = workload(64, model.config.vocab_size)
    out: dict = {"tokens": sum(len(p) + len(r) for p, r in samples)}
    for attn in attentions:
        set_attention(model, attn)
        for name, batches in layouts(samples, 4096).items():
            if attn != "sdpa" and not name.startswith("packed"):
                continue  # padded rows are timed once, under sdpa
            policy_update(model, batches, device)  # warm-up (flex: compiles; shapes vary, so twice)
            policy_update(model, batches[::-1], device)
            free_grads(model)
            times = [measure(device, lambda: policy_update(model, batches, device)) for _ in range(repeats)]
            free_grads(model)
            seconds = [t["s"] for t in times if "s" in t]
            out[f"{name}_{attn}"] = {"update_s": min(seconds) if seconds else None, "forward_passes": len(batches),
                                     "peak_gib": times[-1].get("peak_gib"), **({} if seconds else times[-1])}
            show(f"rlvr update, {out['tokens']} tokens in 64 samples, {name} ({attn})", out[f"{name}_{attn}"])
    set_attention(model, "sdpa")
    return out


def show(label: str, result: dict) -> None:
    if result.get("oom"):
        print(f"{label}: OOM", flush=True)
        return
    parts = [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if v is not None]
    print(f"{label}: " + ", ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    parser.add_argument("--small-shape", default="1b", choices=sorted(SHAPES), help="the second MFU shape")
    parser.add_argument("--tokens", type=int, default=32768, help="sequence length of the loss and SFT checks")
    parser.add_argument("--mfu-tokens", type=int, default=16384)
    parser.add_argument("--skip", default="", help="comma-separated: rlvr,sft,flex,mfu,pack,copy")
    parser.add_argument("--repeat", type=int, default=1, help="RLVR loss runs per variant, alternated")
    parser.add_argument("--rlvr-flex", action="store_true", help="also time the RLVR loss with flex attention")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device(args.device)
    if device.type == "cpu":
        skip.add("flex")  # torch's flex attention has no backward on the CPU
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_torch: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    results: dict = {"device": name, "torch": torch.__version__, "shape": args.shape, "tokens": args.tokens}
    print(f"device {name}, torch {torch.__version__}", flush=True)

    start = time.perf_counter()
    model = build(args.shape, device)
    params = sum(p.numel() for p in model.parameters())
    results["build_s"], results["parameters"] = time.perf_counter() - start, params
    print(f"built random Olmo 3 {args.shape}: {params / 1e9:.2f}B parameters in {results['build_s']:.1f} s", flush=True)
    vocab = model.config.vocab_size

    if "rlvr" not in skip:
        prompt = min(1024, args.tokens // 8)
        ids = torch.randint(2, vocab, (1, args.tokens), generator=torch.Generator().manual_seed(0)).to(device)
        rlvr_chunked(model, ids[:, : args.tokens // 8], prompt // 8)  # warm-up: kernels load, the allocator grows
        free_grads(model)
        variants = [("chunked", rlvr_chunked), ("whole_logits", rlvr_whole_logits)]

        def timed(fn, key: str, label: str) -> None:
            result = measure(device, lambda: fn(model, ids, prompt))
            free_grads(model)
            if "s" in result:
                result["tokens_per_s"] = args.tokens / result["s"]
            results[key] = result
            show(f"rlvr loss {args.tokens} tokens, {label}", result)

        for rep in range(args.repeat):  # alternated, so neither runs only first
            for name, fn in variants:
                timed(fn, f"rlvr_{name}_{rep}", f"{name} (sdpa), run {rep + 1}")
        if "flex" not in skip and args.rlvr_flex:
            set_attention(model, "flex_attention")
            rlvr_chunked(model, ids, prompt)  # compiles
            free_grads(model)
            for name, fn in variants:
                timed(fn, f"rlvr_{name}_flex", f"{name} (flex_attention)")
            set_attention(model, "sdpa")

    if "sft" not in skip:
        row = packed_row(args.tokens, 16, vocab, device)
        attentions = ["sdpa"] + ([] if "flex" in skip else ["flex_attention"])
        for attn in attentions:
            set_attention(model, attn)
            first = measure(device, lambda: sft_step(model, row))  # flex: compiles here
            free_grads(model)
            result = measure(device, lambda: sft_step(model, row))
            free_grads(model)
            if "s" in result:
                result["tokens_per_s"] = args.tokens / result["s"]
                result["first_call_s"] = first.get("s")
            results[f"sft_{attn}"] = result
            show(f"packed sft row {args.tokens} tokens / 16 documents, {attn}", result)
        set_attention(model, "sdpa")

    flex_trains = "s" in results.get("sft_flex_attention", {})
    documents = max(1, args.mfu_tokens // 4096)  # MFU rows: documents of 4096 tokens (fewer tokens: one document)
    if "mfu" not in skip:
        attn = "flex_attention" if flex_trains else "sdpa"
        set_attention(model, attn)
        results[f"mfu_{args.shape}"] = mfu(model, device, args.mfu_tokens, documents, 3, peak)
        show(f"mfu {args.shape} ({attn}, {args.mfu_tokens}-token rows of {args.mfu_tokens // documents}-token documents)",
             results[f"mfu_{args.shape}"])

    if "pack" not in skip:
        results["packing"] = packing(model, device, ["sdpa"] + ([] if "flex" in skip else ["flex_attention"]))

    if "copy" not in skip:
        results["state_dict_copy"] = copies(model, device)
        show(f"state dict copies ({args.shape})", results["state_dict_copy"])

    if "mfu" not in skip:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        small = build(args.small_shape, device)
        set_attention(small, "flex_attention" if flex_trains else "sdpa")
        results[f"mfu_{args.small_shape}"] = mfu(small, device, args.mfu_tokens, documents, 3,
                                                 peak)
        show(f"mfu {args.small_shape} ({'flex_attention' if flex_trains else 'sdpa'})", results[f"mfu_{args.small_shape}"])

    results["total_s"] = time.perf_counter() - start
    print(json.dumps(results, default=lambda x: round(x, 4) if isinstance(x, float) else str(x)), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
