"""`posttrain` command line: one subcommand per module in posttrain/commands/.

Each command module defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int` (the exit status); `INTERMIXED = True` lets its
positionals come before and after its options (`eval CKPT --suite X key=value`).
Modules are imported only when their command runs, so `posttrain recipe show`
never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from posttrain.registry import Registry

# command name -> module implementing it
COMMANDS: Registry[str] = Registry("command")
for _name, _module in {
    "tiny": "posttrain.commands.tiny",
    "recipe": "posttrain.commands.recipe",
    "sft": "posttrain.commands.sft",
    "dpo": "posttrain.commands.dpo",
    "pairs": "posttrain.commands.pairs",
    "rlvr": "posttrain.commands.rlvr",
    "pipeline": "posttrain.commands.pipeline",
    "verify": "posttrain.commands.verify",
    "demo": "posttrain.commands.demo",
    "plan": "posttrain.commands.plan",
    "report": "posttrain.commands.report",
    "data": "posttrain.commands.data",
    "eval": "posttrain.commands.eval",
}.items():
    COMMANDS.register(_name, _module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description="Post-train Olmo-3-style models: SFT -> DPO -> RLVR.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS.names():
        module = importlib.import_module(COMMANDS.get(name))
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_module=module, _parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse takes positionals in one run: `eval CKPT --suite X key=value` leaves key=value over.
        # A command that sets INTERMIXED takes positionals before and after its options.
        if not getattr(args._module, "INTERMIXED", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args = args._parser.parse_intermixed_args(argv[1:])
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
