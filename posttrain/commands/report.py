"""`posttrain report RUN_DIR`: Markdown and HTML of a chain run (or of a directory of chains, e.g. runs/demo)."""

from __future__ import annotations

import argparse
import sys

HELP = "write RUN_DIR/report.md and report.html: stages, held-out metrics after each stage, curves, lineage"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a chain's run directory (RUN_DIR/{sft,dpo,rlvr}) or a directory of chains")


def run(args: argparse.Namespace) -> int:
    from posttrain.report import write_report  # matplotlib: only when a report is written

    try:
        written = write_report(args.run_dir)
    except FileNotFoundError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(f"report of {', '.join(written.chains)}:\n  {written.html}\n  {written.markdown}")
    return 0
