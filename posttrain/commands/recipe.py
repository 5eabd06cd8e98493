"""`posttrain recipe show|check`: print a fully resolved recipe, or validate recipe files."""

from __future__ import annotations

import argparse
import json
import sys

from posttrain.config import RecipeError, dump_yaml, load_recipe, to_dict

HELP = "show a fully resolved recipe (bases and overrides applied) or check recipe files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved recipe as YAML (or JSON)", description="print the resolved recipe as YAML (or JSON)")
    show.add_argument("path", metavar="PATH", help="recipe YAML file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. optim.lr=1e-5")
    show.add_argument("--json", action="store_true", help="print one JSON object instead of YAML")
    check = actions.add_parser("check", help="validate recipe files, one line per file", description="validate recipe files, one line per file")
    check.add_argument("paths", nargs="+", metavar="PATH", help="recipe YAML files")
    show.set_defaults(_action=show_recipe)
    check.set_defaults(_action=check_recipes)


def run(args: argparse.Namespace) -> int:
    return args._action(args)


def show_recipe(args: argparse.Namespace) -> int:
    try:
        config = load_recipe(args.path, args.overrides)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(to_dict(config)))
    else:
        sys.stdout.write(dump_yaml(config))
    return 0


def check_recipes(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.paths:
        try:
            config = load_recipe(path)
        except RecipeError as err:
            failed += 1
            print(f"{path}: FAILED\n  " + str(err).replace("\n", "\n  "), file=sys.stderr)
            continue
        print(f"{path}: ok ({config.stage}, {config.variant})")
    return 2 if failed else 0
