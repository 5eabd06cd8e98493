"""`posttrain dpo --recipe PATH [--output-dir DIR] [--resume] [key=value ...]`: run the DPO stage."""

from __future__ import annotations

import argparse

from posttrain.commands._stage import add_stage_arguments, run_stage

HELP = "preference tuning on chosen/rejected pairs (DPO)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stage_arguments(parser, "dpo")


def run(args: argparse.Namespace) -> int:
    return run_stage("dpo", args)
