"""`posttrain tiny --out DIR`: build the embedded tiny default (model, tokenizer, toy data)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build the tiny default: an Olmo-3 base model, tokenizer and toy datasets, from code, on the CPU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/tiny", help="output directory (default: runs/tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, tokenizer, initialisation and pretraining")
    parser.add_argument("--force", action="store_true", help="rebuild even if DIR already holds a build of this seed")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override the number of pretraining steps")


def run(args: argparse.Namespace) -> int:
    from posttrain import tiny
    from posttrain.tiny.builder import read_build_info

    from posttrain.tiny.pretrain import PretrainConfig

    out = Path(args.out)
    steps = args.pretrain_steps or PretrainConfig().steps
    if not args.force and tiny.is_built(out):
        info = read_build_info(out)
        if info.get("seed") == args.seed and info.get("pretrain", {}).get("steps") == steps:
            print(f"{out} already holds the tiny default (seed {args.seed}, {steps} pretraining steps); --force rebuilds it")
            return 0
    try:
        tiny.build(out, seed=args.seed, pretrain_steps=args.pretrain_steps)
    except FileExistsError as err:
        print(f"error: {err}")
        return 2
    info = read_build_info(out)
    pt = info["pretrain"]
    print(f"  base checkpoint: {out / 'base'}  ({info['model']['parameters']:,} parameters)")
    print(f"  datasets:        {out / 'data'}/{{sft,dpo}}_{{think,instruct}}, rlvr  (train.jsonl, heldout.jsonl)")
    print(f"  pretraining:     {pt['steps']} steps, final loss {pt['final_loss']}, {pt['tokens_per_second']:,.0f} tokens/s")
    print(f"  build record:    {out / 'build.json'}")
    return 0
