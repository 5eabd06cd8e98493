"""`posttrain plan RECIPE [key=value ...]`: what a recipe asks of a cluster, or why it does not add up."""

from __future__ import annotations

import argparse
import sys

from posttrain.config import RecipeError, load_recipe
from posttrain.plan import Assumptions, PlanError, make_plan, render

HELP = "show what a recipe asks for (GPUs, nodes, tokens, steps, GPU-hours); refuse one whose resources do not add up"

_DEFAULTS = Assumptions()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="recipe YAML, e.g. recipes/olmo3/7b/think/rlvr.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. distributed.num_workers=32")
    parser.add_argument(
        "--peak-tflops", type=float, default=_DEFAULTS.peak_tflops, help="peak dense bf16 TFLOP/s per GPU (default: H100, %(default)s)"
    )
    parser.add_argument("--mfu", type=float, default=_DEFAULTS.mfu, help="fraction of peak that training reaches (default %(default)s)")
    parser.add_argument(
        "--gen-tokens-per-s",
        type=float,
        default=_DEFAULTS.gen_tokens_per_s,
        help="generated tokens/s per inference GPU for a 7.3B model, scaled by 1/parameters (default %(default)s)",
    )
    parser.add_argument(
        "--fill",
        type=float,
        default=_DEFAULTS.fill,
        help="mean length of DPO pairs and RL prompts/responses as a fraction of their maximum (default %(default)s: upper bounds)",
    )


def run(args: argparse.Namespace) -> int:
    for name in ("peak_tflops", "mfu", "gen_tokens_per_s", "fill"):
        if not getattr(args, name) > 0:
            print(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    assumptions = Assumptions(peak_tflops=args.peak_tflops, mfu=args.mfu, gen_tokens_per_s=args.gen_tokens_per_s, fill=args.fill)
    try:
        config = load_recipe(args.recipe, args.overrides)
        plan = make_plan(config, source=args.recipe, assumptions=assumptions)
    except (RecipeError, PlanError) as err:
        print(err, file=sys.stderr)
        return 2
    sys.stdout.write(render(plan, assumptions))
    return 0
