"""`posttrain demo`: build the tiny default if missing, run the Think and Instruct chains on it, write a report.

Everything is local and runs on a CPU. In order:

1. `posttrain tiny`: a few-million-parameter Olmo 3 model, its tokenizer and
   toy datasets, built from code into `--tiny DIR` (skipped when built).
2. The Think chain, SFT -> DPO -> RLVR from the tiny base, into RUN_DIR/think.
3. The Instruct chain into RUN_DIR/instruct; its SFT starts from the Think
   SFT checkpoint, as in Olmo 3.
4. The held-out suite on every checkpoint, and `posttrain report RUN_DIR`.

A second `posttrain demo` skips every stage whose inputs did not change.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from posttrain.commands.pipeline import VARIANTS, eval_size

HELP = "build the tiny default (if missing), run the Think and Instruct chains on it on the CPU, write a report"
RECIPES = Path("recipes/tiny")  # like the paths inside the recipes, relative to the repository root

STAGE_STORY = (
    ("SFT", "supervised fine-tuning on toy chats: the model learns the chat format and the answers"),
    ("DPO", "preference tuning on chosen/rejected pairs (length-normalised DPO, as Olmo 3)"),
    ("RLVR", "reinforcement learning on prompts scored by verifiers (math answers, instruction constraints)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", default="runs/tiny", metavar="DIR", help="tiny default directory, built when missing (default: runs/tiny)")
    parser.add_argument("--run-dir", default="runs/demo", metavar="DIR", help="write RUN_DIR/think and RUN_DIR/instruct (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny default when it is built")
    parser.add_argument("--eval-size", type=eval_size, default=None, metavar="all|N",
                        help="held-out RLVR prompts and DPO pairs scored on every checkpoint: all of them (default), "
                             "the first N, or 0: no evaluation")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides for both chains, e.g. rlvr:grpo.steps=20 (see posttrain pipeline --help)")


def run(args: argparse.Namespace) -> int:
    began = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo is all local: no worker may wait on the hub
    tiny_dir, run_dir = Path(args.tiny), Path(args.run_dir)
    print(introduction(tiny_dir, run_dir), flush=True)
    tiny = importlib.import_module("posttrain.tiny")  # heavy (torch): only when the demo runs
    if tiny.is_built(tiny_dir):
        print(f"== tiny default: {tiny_dir} (already built)", flush=True)
    else:
        print(f"== building the tiny default in {tiny_dir} ...", flush=True)
        tiny.build(tiny_dir, seed=args.seed)
    from posttrain import pipeline

    relocations = () if tiny_dir == pipeline.TINY_ROOT else (pipeline.Relocation(pipeline.TINY_ROOT, tiny_dir),)
    try:
        for variant in VARIANTS:
            base = pipeline.think_sft_checkpoint(run_dir / "think") if variant == "instruct" else None
            print(f"\n== {variant} chain -> {run_dir / variant}", flush=True)
            pipeline.run(variant=variant, recipes=RECIPES / variant, base=base, run_dir=run_dir / variant,
                         overrides=tuple(args.overrides), relocations=relocations, eval_size=args.eval_size)
    except pipeline.PipelineError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    from posttrain.report import summary_text, write_report

    written = write_report(run_dir)
    print("\n" + summary_text(run_dir))
    print(where_to_look(run_dir, written, time.time() - began))
    return 0


def introduction(tiny_dir: Path, run_dir: Path) -> str:
    lines = ["posttrain demo: post-train a tiny Olmo-3-style model into a Think and an Instruct variant, on the CPU.",
             f"  tiny default (model, tokenizer, toy data): {tiny_dir}    runs: {run_dir}", "  stages of each chain:"]
    lines += [f"    {name:5s} {what}" for name, what in STAGE_STORY]
    lines.append("  The Instruct chain starts from the Think SFT checkpoint, as Olmo 3 does.")
    return "\n".join(lines)


def where_to_look(run_dir: Path, written, seconds: float) -> str:
    final = {v: run_dir / v / "rlvr" / "checkpoint" for v in VARIANTS}
    return "\n".join([
        f"demo finished in {seconds / 60:.1f} min. Where to look:",
        f"  report (open in a browser)  {written.html}",
        f"  report (Markdown)           {written.markdown}",
        *(f"  final {v:8s} checkpoint   {path}   (model card: {path}/README.md)" for v, path in final.items()),
        f"  per stage                   {run_dir}/<variant>/<stage>/: metrics.jsonl, manifest.json, plots/, checkpoint/",
        f"  chat with a checkpoint      see {final['think']}/README.md (transformers and vLLM snippets)",
        "  run again                   unchanged stages are skipped; `posttrain pipeline --from STAGE` reruns from a stage",
    ])
