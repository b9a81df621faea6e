"""Drafts of N sessions: one batched generation against each session's draft alone, on a random-init Gemma-4 E4B.

    python -m alignatt_eval.bench.batch_decode                    # full size on the GPU (bf16), compiled decoding
    python -m alignatt_eval.bench.batch_decode --tiny             # scaled-down on CPU (a smoke run, not a timing)
    python -m alignatt_eval.bench.batch_decode --sessions 1 2 4 8 --out results/gpu/batch_decode.json

Each session has its own decoder (static cache, graph-safe capture; compiled on CUDA) and drafts --draft-tokens
after a prompt of --prompt-tokens whose last 32 tokens change at every step (the live source re-transcribed), so
each step reuses the session's cached prefix, as in the server. Per N: the time of one step's drafts run one
session after another (`StaticDecoder.generate`) and as one batch (`alignatt.mt.batching.BatchDecoder`, slot sizes
on the compiled path), and the share of drafts whose tokens differ between the two (batched kernels may round
differently; with random weights near-ties are common, so this is an upper bound for a trained model).
"""
from __future__ import annotations

import argparse
import statistics

import torch
from transformers import GenerationConfig

from alignatt.devices import resolve_device, resolve_dtype
from alignatt.mt.batching import BatchDecoder, BatchRow
from alignatt.mt.decoding import DecodeConfig, Request, StaticDecoder
from alignatt_eval.bench.common import add_common_arguments, default_heads, device_name, emit, fill_defaults, timed_ms
from alignatt_eval.bench.decode import build_model

CHANGED_TAIL = 32  # prompt tokens that change from one step to the next


def session_prompts(n_sessions: int, n_tokens: int, n_steps: int, seed: int) -> list[list[list[int]]]:
    """[session][step] prompt ids: a session's own prefix, its last CHANGED_TAIL tokens new at every step."""
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(n_sessions):
        prefix = torch.randint(3, 200_000, (n_tokens - CHANGED_TAIL,), generator=generator).tolist()
        prompts.append([prefix + torch.randint(3, 200_000, (CHANGED_TAIL,), generator=generator).tolist()
                        for _ in range(n_steps)])
    return prompts


def decoders(model, heads, config: DecodeConfig, n: int) -> list[StaticDecoder]:
    return [StaticDecoder(model, heads, config, compile=config.decode == "compiled") for _ in range(n)]


def measure(model, heads, config: DecodeConfig, n_sessions: int, args) -> dict:
    generation = GenerationConfig(max_new_tokens=args.draft_tokens, min_new_tokens=args.draft_tokens,
                                  do_sample=False, eos_token_id=[], pad_token_id=0)
    n_steps = args.repeats + 1  # the first step fills the caches (and compiles)
    prompts = session_prompts(n_sessions, args.prompt_tokens, n_steps, args.seed)
    alone, together = decoders(model, heads, config, n_sessions), decoders(model, heads, config, n_sessions)
    batch = BatchDecoder(model, config.max_cache_tokens, compile=config.decode == "compiled")

    def requests(step: int) -> list[Request]:
        return [Request(input_ids=prompts[s][step], generation=generation, capture_from=args.prompt_tokens - 1)
                for s in range(n_sessions)]

    def run_alone(step: int):
        return [d.generate(r) for d, r in zip(alone, requests(step))]

    def run_batched(step: int):
        return batch.generate_many([BatchRow(d, r) for d, r in zip(together, requests(step))])

    alone_ms, batched_ms, differ = [], [], 0
    for step in range(n_steps):
        ms_alone, a = timed_ms(model.device, run_alone, step)
        ms_batched, b = timed_ms(model.device, run_batched, step)
        differ += sum(x.token_ids != y.token_ids for x, y in zip(a, b))
        if step:
            alone_ms.append(ms_alone)
            batched_ms.append(ms_batched)
    alone_step, batched_step = statistics.median(alone_ms), statistics.median(batched_ms)
    return {"sessions": n_sessions, "alone_ms": round(alone_step, 1), "batched_ms": round(batched_step, 1),
            "speedup": round(alone_step / batched_step, 2), "drafts_differing": differ,
            "drafts": n_sessions * n_steps}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats_full=5, repeats_tiny=2)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 256 (tiny: 96)")
    parser.add_argument("--draft-tokens", type=int, default=16)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fill_defaults(args)
    args.prompt_tokens = args.prompt_tokens or (96 if args.tiny else 256)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = build_model(args.tiny, device, dtype, args.seed)
    heads = default_heads(args.tiny, model)
    compiled = device.type == "cuda"
    config = DecodeConfig(decode="compiled" if compiled else "static", compile_backend=args.backend,
                          compile_mode=args.mode)
    rows = []
    for n in args.sessions:
        rows.append(measure(model, heads, config, n, args))
        print(rows[-1], flush=True)
    report = {"device": device_name(device), "dtype": str(dtype), "compiled": compiled,
              "model": "random-init Gemma-4 E4B" + (" (tiny)" if args.tiny else ""),
              "prompt_tokens": args.prompt_tokens, "draft_tokens": args.draft_tokens, "repeats": args.repeats,
              "rows": rows}
    lines = [f"{report['model']} on {report['device']}, {report['dtype']}, compiled {compiled}, prompt "
             f"{args.prompt_tokens}, {args.draft_tokens}-token drafts",
             f"{'sessions':>8}{'alone ms':>10}{'batched ms':>12}{'speedup':>9}{'differing':>11}"]
    lines += [f"{r['sessions']:>8}{r['alone_ms']:>10.1f}{r['batched_ms']:>12.1f}{r['speedup']:>9.2f}"
              f"{r['drafts_differing']:>7}/{r['drafts']}" for r in rows]
    emit(report, "\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
