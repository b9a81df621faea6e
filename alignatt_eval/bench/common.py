"""What the GPU benchmarks share: common flags, the heads they capture, CUDA-synchronised timing, output."""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from alignatt.mt.capture import HeadRef
from alignatt.mt.heads import HeadsFile, shipped_heads_path

TINY_HEADS = (HeadRef(1, 3), HeadRef(5, 0), HeadRef(8, 2), HeadRef(11, 1))  # sliding, full, shared x2


def add_common_arguments(parser: argparse.ArgumentParser, repeats_full: int, repeats_tiny: int) -> None:
    parser.add_argument("--tiny", action="store_true", help="scaled-down models on CPU (a smoke run, not a timing)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed runs per row (default {repeats_full}, tiny: {repeats_tiny})")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor, tiny: aot_eager)")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default reduce-overhead, tiny: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the report as JSON")
    parser.set_defaults(repeats_full=repeats_full, repeats_tiny=repeats_tiny)


def fill_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on --tiny (inductor's CPU compile takes minutes; aot_eager traces the same graph)."""
    args.repeats = args.repeats or (args.repeats_tiny if args.tiny else args.repeats_full)
    args.backend = args.backend or ("aot_eager" if args.tiny else "inductor")
    args.mode = args.mode or ("default" if args.tiny else "reduce-overhead")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def default_heads(tiny: bool, model) -> tuple[HeadRef, ...]:
    """The shipped en-de heads of Gemma-4 E4B-it (checked against the model), or fixed heads of each layer
    kind for the tiny model."""
    if tiny:
        return TINY_HEADS
    heads = HeadsFile.load(shipped_heads_path("google/gemma-4-E4B-it", "en-de"))
    heads.check_fits(model.config)
    return tuple(heads.selected())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(device: torch.device, fn, *args):
    """(milliseconds, result) of fn(*args), with the GPU's queued work included."""
    sync(device)
    started = time.perf_counter()
    result = fn(*args)
    sync(device)
    return (time.perf_counter() - started) * 1000, result


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def emit(report: dict, text: str, out: Path | None) -> None:
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
