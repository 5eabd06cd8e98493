"""`posttrain data check --recipe R [key=value ...]`: read a recipe's data as its stage would, and report.

Runs on a laptop: no GPU, no Ray. The tokenizer is the recipe's `model.path`
(or `--tokenizer`). Exit status 0 when the data are usable, 1 when the stage
would fail on them (an unreadable source, a misspelled column, an unknown
verifier, malformed rows under `data.on_bad_row: error`), 2 for a bad recipe.
See posttrain/data/check.py for what is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain.config import RecipeError, load_recipe

HELP = "check a recipe's data: row counts, bad rows, token lengths, what the length limits drop, an example per source"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help=HELP, description=HELP)
    check.add_argument("--recipe", required=True, metavar="PATH", help="an sft, dpo or rlvr recipe")
    check.add_argument("--tokenizer", metavar="PATH", help="tokenizer to measure with (default: the recipe's model.path)")
    check.add_argument("--limit", type=int, metavar="N", help="DPO and RLVR: tokenise at most N of each source's taken rows (SFT sources are "
                       "tokenised whole, into the token cache the run reuses)")
    check.add_argument("--json", metavar="FILE", type=Path, help="also write the report as JSON")
    check.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. data.train.0.path=FILE")
    check.set_defaults(_action=run_check)


def run(args: argparse.Namespace) -> int:
    return args._action(args)


def run_check(args: argparse.Namespace) -> int:
    try:
        config = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    from posttrain.data.check import check_data

    source = args.tokenizer or config.model.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as err:  # offline hub name, missing directory: say which and how to point elsewhere
        print(f"cannot load the tokenizer from {source!r} ({type(err).__name__}: {err}); "
              "give --tokenizer PATH or model.path=PATH", file=sys.stderr)
        return 2
    report = check_data(config, tokenizer, limit=args.limit)
    print(report.render())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 1 if report.failed else 0
