"""`posttrain demo`: build the tiny default if missing, then run the Think and Instruct chains on it.

Everything is local and runs on a CPU: the tiny model, tokenizer and toy data
are built from code (`posttrain tiny`), then `posttrain pipeline` runs
SFT -> DPO -> RLVR for each variant under `RUN_DIR/<variant>/`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from posttrain.commands._stage import NOT_BUILT, stage_module
from posttrain.commands.pipeline import VARIANTS

HELP = "build the tiny default (if missing) and run both chains on it, on the CPU"
RECIPES = Path("recipes/tiny")  # like the paths inside the recipes, relative to the repository root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", default="runs/tiny", metavar="DIR", help="tiny default directory, built when missing (default: runs/tiny)")
    parser.add_argument("--run-dir", default="runs/demo", metavar="DIR", help="write RUN_DIR/think and RUN_DIR/instruct (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny default when it is built")


def run(args: argparse.Namespace) -> int:
    tiny_dir = Path(args.tiny)
    tiny = importlib.import_module("posttrain.tiny")  # heavy (torch): only when the demo runs
    if tiny.is_built(tiny_dir):
        print(f"tiny default: {tiny_dir} (already built)")
    else:
        print(f"building the tiny default in {tiny_dir} ...")
        tiny.build(tiny_dir, seed=args.seed)
    pipeline = stage_module("pipeline")
    if pipeline is None:
        print("the pipeline is not built yet: the tiny default is ready, the chains cannot run", file=sys.stderr)
        return NOT_BUILT
    for variant in VARIANTS:
        out = pipeline.run(
            variant=variant,
            recipes=RECIPES / variant,
            base=tiny_dir / "base",
            run_dir=Path(args.run_dir) / variant,
        )
        print(f"{variant} chain done: {out}")
    return 0
