"""`alignatt serve` (or `python -m alignatt.serve`): load the models once and serve many talks over WebSocket.

    alignatt serve                                   # http://127.0.0.1:8765/ : the page; ws://127.0.0.1:8765/ws
    alignatt serve --models offline --max-sessions 2 --metrics-log metrics.jsonl
    alignatt serve --host 0.0.0.0 --certfile cert.pem --keyfile key.pem --token SECRET   # other machines

Every engine flag (`alignatt demo --help` lists them) sets the server-wide default; a client may choose its own
target language, preset, policy, wait-k and latency unit. docs/serve.md describes the protocol.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time

from alignatt.cli.demo import add_models_argument, parse_with_models, proxy_files
from alignatt.factory import add_arguments
from alignatt.mt.heads import HeadsFileError
from alignatt.model_pool import ModelPool
from alignatt.options import add_dataclass_arguments, dataclass_from_args
from alignatt.serve.scheduler import Scheduler, SchedulerOptions
from alignatt.serve.server import METRICS, Server, ServerOptions, setup_metrics_log
from alignatt.serve.session import FactoryBuilder, SessionError
from alignatt.stream.cascade import Cascade

logger = logging.getLogger(__name__)
LANGUAGE_FLAGS = ("heads", "few_shot_file")  # what another target language than the server's own changes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignatt serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    server = parser.add_argument_group("server")
    add_dataclass_arguments(server, ServerOptions)
    add_dataclass_arguments(server, SchedulerOptions)
    add_models_argument(server)
    add_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, with the offline proxy's defaults under --models offline (the user's own flags still win)."""
    return parse_with_models(build_parser(), argv)


def language_flags(models: str):
    """The heads and few-shot flags of a session's language when it is not the server's own."""
    def flags(lang: str) -> dict:
        if models == "full":
            return dict.fromkeys(LANGUAGE_FLAGS)  # the shipped heads of the direction, no few-shot examples
        files = proxy_files(lang)
        if any(key not in files for key in LANGUAGE_FLAGS):
            raise SessionError("bad_language", f"the offline proxy ships no heads or few-shot file for en-{lang}")
        return files
    return flags


def load(args: argparse.Namespace) -> tuple[FactoryBuilder, Cascade]:
    """The models, loaded and warmed up once before any client comes, and the first session built with them (for
    the batched drafts' warm-up; no client gets it)."""
    began = time.perf_counter()
    try:
        builder = FactoryBuilder(args, ModelPool(), language_flags(args.models))
        first = builder.build(builder.defaults)
    except (SessionError, HeadsFileError, ValueError, OSError) as err:
        raise SystemExit(f"alignatt serve: {err}") from err
    loaded_s = time.perf_counter() - began
    METRICS.info(json.dumps({"model_loading_time": loaded_s}))
    logger.info("models loaded in %.1f s; languages served: %s", loaded_s, ", ".join(builder.languages))
    return builder, first


async def serve(server: Server) -> None:
    """Run the worker and the server until SIGTERM or SIGINT; open talks then get their final pass."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_shutdown)
    scheme = "https" if server.options.certfile else "http"

    def started(port: int) -> None:
        host = server.options.host
        print(f"serving {scheme}://{host}:{port}/ (the page) and {scheme.replace('http', 'ws')}://{host}:{port}/ws "
              f"(WebSocket), up to {server.options.max_sessions} sessions", flush=True)
    server.scheduler.start()
    try:
        await server.run(started)
    finally:
        server.scheduler.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        server_options = dataclass_from_args(ServerOptions, args)
        scheduler_options = dataclass_from_args(SchedulerOptions, args)
    except ValueError as err:
        raise SystemExit(f"alignatt serve: {err}") from err
    setup_metrics_log(server_options.metrics_log)
    builder, first = load(args)
    scheduler = Scheduler(builder, scheduler_options)
    scheduler.warm_up_batches(server_options.max_sessions, first)
    del first  # no client gets it: its decoder's cache goes now, not at shutdown
    asyncio.run(serve(Server(scheduler, server_options)))
    return 0
