"""`posttrain rlvr --recipe PATH [--output-dir DIR] [--resume] [key=value ...]`: run the RLVR stage."""

from __future__ import annotations

import argparse

from posttrain.commands._stage import add_stage_arguments, run_stage

HELP = "reinforcement learning with verifiable rewards (GRPO-style)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stage_arguments(parser, "rlvr")


def run(args: argparse.Namespace) -> int:
    return run_stage("rlvr", args)
