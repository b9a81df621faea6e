"""The `alignatt` command: one entry point for the project's tools, each also runnable as `python -m MODULE`.

    alignatt demo [--target-lang de] [--speed 0] ...     play a talk through the cascade
    alignatt trace --source "..." --accessible 3 ...     where one draft's tokens look, and the gate's verdicts
    alignatt calibrate ...                               select alignment heads, write a heads file
    alignatt synth-talks / run-dev / sweep ...           the offline evaluation (from a checkout: it reads data/)
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # its `main(argv)` runs the command
    summary: str


COMMANDS = {
    "demo": Command("alignatt.cli.demo", "play a talk through the cascade in simulated real time"),
    "serve": Command("alignatt.serve.cli", "serve many talks at once over WebSocket (and a web page) from one process"),
    "trace": Command("alignatt.cli.trace", "trace one draft: its tokens, where each head looks, the gate's verdicts"),
    "calibrate": Command("alignatt.calibration.select_heads", "select alignment heads and write a heads file"),
    "synth-talks": Command("alignatt_eval.runners.synth_talks", "synthesise the offline dev talks with espeak-ng"),
    "run-dev": Command("alignatt_eval.runners.run_dev", "run the agent on a dev set under simuleval and score it"),
    "sweep": Command("alignatt_eval.runners.sweep", "run a grid of configs x talks on Ray and score every row"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignatt", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(f"  {name:<12} {c.summary}" for name, c in COMMANDS.items()))
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own flags (COMMAND --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    result = importlib.import_module(command.module).main(args.args)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
