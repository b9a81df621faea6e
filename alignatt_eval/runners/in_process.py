"""A `simuleval` command line run inside this process, with the agent built around already loaded models.

The sweep's workers load their models once and run many (config, talk) jobs. Each job is the command line that
`alignatt_eval.runners.run_dev` would start as a process, parsed by SimulEval's own option builders and evaluated by SimulEval's
own evaluator; only the agent's construction differs: it receives the worker's `ModelPool`, so the cascade is
the same one `simuleval` would build, around weights that are loaded already.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from simuleval import options
from simuleval.evaluator import build_evaluator
from simuleval.utils.agent import get_agent_class_from_string

from alignatt.model_pool import ModelPool


@contextlib.contextmanager
def _argv(argv: list[str]):
    """SimulEval's option builders also peek at sys.argv; in a worker that is the worker's own command line."""
    saved = sys.argv
    sys.argv = ["simuleval", *argv]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _log_to(path: Path):
    """The root logger (SimulEval's and the agent's messages) also goes to `path`, as simuleval.log would."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-8s | %(name)-16s | %(message)s"))
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(min(saved_level, logging.INFO) if saved_level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        handler.close()


def simuleval_args(argv: list[str]) -> tuple[type, argparse.Namespace]:
    """The agent class named by --agent-class and the namespace `simuleval ARGV` would give it."""
    with _argv(argv):
        parser = options.general_parser()
        options.add_evaluator_args(parser)
        options.add_scorer_args(parser, argv)
        options.add_slurm_args(parser)
        options.add_dataloader_args(parser, argv)
        known, _ = parser.parse_known_args(argv)
        if not known.agent_class:
            raise ValueError("an in-process simuleval run needs --agent-class")
        agent_class = get_agent_class_from_string(known.agent_class)
        agent_class.add_args(parser)
        return agent_class, parser.parse_args(argv)


def run_simuleval(command: list[str], folder: Path, models: ModelPool) -> None:
    """Evaluate `command` (a `simuleval ...` command line writing into `folder`) in this process."""
    agent_class, args = simuleval_args(command[1:])
    with _log_to(folder / "simuleval.log"):
        try:
            agent = agent_class(args, models)
        except SystemExit as err:  # the agent's clear message for bad options; exiting would end the worker
            raise RuntimeError(str(err)) from err
        args.source_type, args.target_type = agent.source_type, agent.target_type
        build_evaluator(args)(agent)
