"""`posttrain plan RECIPE [key=value ...]`: what a recipe asks of a cluster, or why it does not add up.

The Olmo 3 recipes name, on their second line, the plan command with the published sizes
(`--parameters`, `--rows`, `--tokens`) that no stage reads and so no recipe key holds. Their
checkpoints are hub names or not written yet, so the memory estimate takes the published Olmo 3
shape within 10% of `--parameters` (or the one `--shape` names), for the GPU `--gpu` names.
"""

from __future__ import annotations

import argparse
import math
import sys

from posttrain.config import RecipeError, load_recipe
from posttrain.memory import GPUS, MARGIN, OLMO3_SHAPES
from posttrain.plan import Assumptions, Facts, PlanError, make_plan, render

HELP = ("show what a recipe asks for (GPUs, nodes, tokens, steps, GPU-hours, memory per GPU); refuse one whose resources"
        " do not add up or that does not fit the GPU's memory")

_DEFAULTS = Assumptions()
_FACTS = Facts()


def count(text: str) -> int:
    """A positive whole count, written plainly or as a float (`7.3e9`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 1 and value == round(value)):
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(value)


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
    parser.add_argument("--gpus-per-node", type=count, default=_FACTS.gpus_per_node,
                        help="GPUs per machine: learners and engines are packed into nodes of this size (default %(default)s)")
    parser.add_argument("--parameters", type=count, help="model parameters (e.g. 7.3e9); default: counted from a local checkpoint")
    parser.add_argument("--rows", type=count,
                        help="rows (examples, pairs or prompts) in the training mixture; default: counted from local .jsonl sources")
    parser.add_argument("--tokens", type=count, help="tokens in one pass over an SFT mixture (SFT steps are counted from it)")
    parser.add_argument("--shape", choices=sorted(OLMO3_SHAPES),
                        help="published Olmo 3 shape for the memory estimate when the checkpoint is not local;"
                             " default: the one within 10%% of --parameters")
    parser.add_argument("--gpu", choices=sorted(GPUS), default=_FACTS.gpu,
                        help=f"GPU whose memory learners and engines must fit, refused above {MARGIN * 100:.0f}%% of it"
                             " (h100 and a100: 80 GB, h200: 141 GB; default %(default)s)")


def facts(args: argparse.Namespace) -> Facts:
    """The plan's facts from parsed `posttrain plan` options."""
    return Facts(gpus_per_node=args.gpus_per_node, parameters=args.parameters, rows=args.rows, tokens=args.tokens,
                 shape=args.shape, gpu=args.gpu)


def run(args: argparse.Namespace) -> int:
    for name in ("peak_tflops", "mfu", "gen_tokens_per_s", "fill"):
        if not getattr(args, name) > 0:
            print(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    assumptions = Assumptions(peak_tflops=args.peak_tflops, mfu=args.mfu, gen_tokens_per_s=args.gen_tokens_per_s, fill=args.fill)
    try:
        config = load_recipe(args.recipe, args.overrides)
        plan = make_plan(config, source=args.recipe, assumptions=assumptions, facts=facts(args))
    except (RecipeError, PlanError) as err:
        print(err, file=sys.stderr)
        return 2
    sys.stdout.write(render(plan, assumptions))
    return 0
