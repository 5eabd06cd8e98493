"""`posttrain sft --recipe PATH [--output-dir DIR] [--resume] [key=value ...]`: run the SFT stage."""

from __future__ import annotations

import argparse

from posttrain.commands._stage import add_stage_arguments, run_stage

HELP = "supervised fine-tuning on chat data (assistant-only loss)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stage_arguments(parser, "sft")


def run(args: argparse.Namespace) -> int:
    return run_stage("sft", args)
