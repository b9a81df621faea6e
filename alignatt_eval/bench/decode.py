"""Decode speed with and without q/k capture, eager and compiled, on a random-init Gemma-4 E4B.

    python -m alignatt_eval.bench.decode                 # full-size E4B on the GPU (bf16), prints a table
    python -m alignatt_eval.bench.decode --tiny          # scaled-down E4B on CPU in seconds (smoke run)
    python -m alignatt_eval.bench.decode --out results/bench_decode_h100.json

Rows (each a greedy draft of --draft-tokens after a --prompt-tokens prompt, batch 1):
  plain dynamic      generate() with a DynamicCache, stock sdpa
  capture dynamic    the same inside the eager capture (alignatt.mt.capture)
  compiled plain     the decoder's static cache (2048 positions) + generate's torch.compile of the decode
                     step (CUDA graphs on CUDA)
  compiled capture   the same with the graph-safe capture installed (alignatt.mt.static_capture)
  decoder            the translator's decoding path (alignatt.mt.decoding.StaticDecoder), prompt KV reused
ms/token is the decode cost: (time of an N-token draft - time of a 1-token draft) / (N - 1), so the
prefill is left out; the prefill is reported on its own. Replay is the qk-fast replay of one draft.
Bit identity: every step's logits of each capture row against its plain row, tokens across all rows.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from transformers import GenerationConfig, Gemma4ForConditionalGeneration

from alignatt.mt.capture import capture_heads
from alignatt.generation import CACHE_KWARG, generation_with_compile
from alignatt.mt.decoding import DecodeConfig, Request, StaticDecoder, position_indexed_cache
from alignatt.devices import resolve_device, resolve_dtype
from alignatt.mt.replay import replay
from alignatt.mt.static_capture import StaticQKCapture
from alignatt_eval.bench.common import add_common_arguments, default_heads, device_name, emit, fill_defaults, timed_ms
from alignatt_eval.runners.model_configs import gemma4_e4b_config

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Row:
    name: str
    ms_per_token: float
    prefill_ms: float
    draft_ms: float  # a whole draft: prefill + all tokens
    tokens: tuple[int, ...]


def cache_len(args) -> int:
    """The product's static cache length (full layers attend over all of it) for every compiled row; equal
    shapes also let inductor's FX graph cache serve the decoder row from the compiled-capture row."""
    return max(DecodeConfig().max_cache_tokens, args.prompt_tokens + args.draft_tokens)


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int):
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma4ForConditionalGeneration._from_config(gemma4_e4b_config(tiny), dtype=dtype)
    return model.eval()


def generation_config(n_new: int, compiled: bool, args) -> GenerationConfig:
    config = GenerationConfig(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, eos_token_id=[],
                              pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return generation_with_compile(config, compiled, args.backend, args.mode)


class Runner:
    """Times one way of drafting; returns the generated tokens and per-step logits of the last run."""

    def __init__(self, model, prompt: torch.Tensor, args, compiled: bool, capture_factory):
        self.model, self.prompt, self.args = model, prompt, args
        self.compiled, self.capture_factory = compiled, capture_factory
        self.cache = position_indexed_cache(model, cache_len(args)) if compiled else None

    def draft(self, n_new: int):
        kwargs = {}
        if self.cache is not None:
            self.cache.reset()
            kwargs[CACHE_KWARG] = self.cache
        with self.capture_factory(), torch.no_grad():
            return self.model.generate(self.prompt, attention_mask=torch.ones_like(self.prompt),
                                       generation_config=generation_config(n_new, self.compiled, self.args), **kwargs)

    def time_draft(self, n_new: int) -> float:
        return timed_ms(self.model.device, self.draft, n_new)[0]

    def measure(self, name: str) -> tuple[Row, tuple[torch.Tensor, ...]]:
        started = time.perf_counter()
        self.draft(self.args.draft_tokens)  # compiles on the first call
        self.draft(1)
        logger.info("%s: first calls took %.1f s", name, time.perf_counter() - started)
        full = [self.time_draft(self.args.draft_tokens) for _ in range(self.args.repeats)]
        one = [self.time_draft(1) for _ in range(self.args.repeats)]
        output = self.draft(self.args.draft_tokens)
        draft_ms, prefill_ms = statistics.median(full), statistics.median(one)
        row = Row(name, (draft_ms - prefill_ms) / (self.args.draft_tokens - 1), prefill_ms, draft_ms,
                  tuple(output.sequences[0, self.prompt.shape[1]:].tolist()))
        logger.info("%s: %.2f ms/token, prefill %.1f ms, draft %.1f ms", name, row.ms_per_token, prefill_ms, draft_ms)
        return row, tuple(output.logits)


def bit_identical(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def replay_vs_teacher_forced(model, captured, heads, prompt: torch.Tensor,
                             tokens: tuple[int, ...]) -> list[float]:
    """Per head, max |difference| between the attention replayed from a draft's capture (`captured`: rows from
    the last prompt position on) and the eager capture of one teacher-forced forward over the same tokens.
    fp32: rounding only (about 1e-5 on CPU); bf16: prefill and decode round differently, so larger on a
    random-init net."""
    prompt_len = prompt.shape[1]
    drafted = replay(captured, heads)
    fed = torch.cat([prompt[0], torch.tensor(tokens[:-1], device=prompt.device)]).unsqueeze(0)
    with capture_heads(model, heads, query_start_position=prompt_len - 1) as eager, torch.no_grad():
        # Keep the draft rows: Gemma-4's KV-shared layers then compute exactly those rows, like every other layer.
        model(input_ids=fed, logits_to_keep=len(tokens))
    return [float(d) for d in abs(drafted.probs - replay(eager, heads).probs).max(axis=(1, 2))]


def eager_draft_capture(model, heads, prompt: torch.Tensor, args):
    """One eager (DynamicCache) draft inside the eager capture: its tokens and its capture."""
    with capture_heads(model, heads, query_start_position=prompt.shape[1] - 1) as capture, torch.no_grad():
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                generation_config=generation_config(args.draft_tokens, False, args))
    return tuple(output.sequences[0, prompt.shape[1]:].tolist()), capture


def time_replay(capture: StaticQKCapture, heads, prompt_len: int, n_new: int, device, repeats: int) -> float:
    def read_and_replay():
        return replay(capture.sequence(prompt_len - 1, prompt_len + n_new - 1), heads)

    return statistics.median(timed_ms(device, read_and_replay)[0] for _ in range(repeats))


def time_decoder(model, heads, prompt: torch.Tensor, args) -> dict:
    """The product path: consecutive drafts whose prompts share all but the last 32 tokens (the live source
    re-transcribed), so each call reuses the KV of the shared prefix."""
    config = DecodeConfig(decode="compiled", max_cache_tokens=cache_len(args), compile_backend=args.backend,
                          compile_mode=args.mode)
    decoder = StaticDecoder(model, heads, config, compile=True)
    ids = prompt[0].tolist()
    variants = [ids, ids[:-32] + [(token + 1) % 200_000 for token in ids[-32:]]]
    generation = GenerationConfig(max_new_tokens=args.draft_tokens, min_new_tokens=args.draft_tokens,
                                  do_sample=False, eos_token_id=[], pad_token_id=0)

    def draft_and_replay(n: int):
        result = decoder.generate(Request(input_ids=variants[n % 2], generation=generation,
                                          capture_from=len(ids) - 1))
        replay(result.captured, heads)
        return result.reused_tokens

    draft_and_replay(1)  # compiles
    runs = [timed_ms(model.device, draft_and_replay, n) for n in range(args.repeats)]
    return {"draft_with_replay_ms": statistics.median(ms for ms, _ in runs), "reused_prompt_tokens": runs[-1][1]}


def run(args) -> dict:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = build_model(args.tiny, device, dtype, args.seed)
    heads = default_heads(args.tiny, model)
    prompt = torch.randint(3, 200_000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(args.seed))
    prompt = prompt.to(device)
    static_capture = StaticQKCapture(model, heads, cache_len(args))
    plans = [("plain dynamic", False, nullcontext), ("capture dynamic", False, lambda: capture_heads(model, heads)),
             ("compiled plain", True, nullcontext), ("compiled capture", True, lambda: static_capture)]
    rows, logits = {}, {}
    for name, compiled, factory in plans:
        rows[name], logits[name] = Runner(model, prompt, args, compiled, factory).measure(name)
    tokens = rows["compiled capture"].tokens
    compiled_diff = replay_vs_teacher_forced(
        model, static_capture.sequence(args.prompt_tokens - 1, args.prompt_tokens + len(tokens) - 1), heads, prompt,
        tokens)
    # The same check on the eager path: if it differs as much, the gap is GPU numerics, not the graph capture.
    eager_tokens, eager_capture = eager_draft_capture(model, heads, prompt, args)
    eager_diff = replay_vs_teacher_forced(model, eager_capture, heads, prompt, eager_tokens)
    replay_ms = time_replay(static_capture, heads, args.prompt_tokens, args.draft_tokens, device, args.repeats)
    compiled, dynamic = rows["compiled plain"], rows["plain dynamic"]
    return {
        "device": device_name(device),
        "model": "random-init Gemma-4 E4B" + (" (tiny)" if args.tiny else ""), "dtype": str(dtype),
        "torch": torch.__version__, "compile": {"backend": args.backend, "mode": args.mode},
        "prompt_tokens": args.prompt_tokens, "draft_tokens": args.draft_tokens, "repeats": args.repeats,
        "heads": [f"L{h.layer}H{h.head}" for h in heads],
        "rows": [asdict(r) for r in rows.values()],
        "replay_ms_per_draft": replay_ms,
        "replay_vs_teacher_forced_max_abs": max(compiled_diff),
        "replay_vs_teacher_forced_per_head": compiled_diff,
        "eager_replay_vs_teacher_forced_per_head": eager_diff,
        "decoder": time_decoder(model, heads, prompt, args),
        "ratios": {
            "compiled_capture_over_compiled_plain": rows["compiled capture"].ms_per_token / compiled.ms_per_token,
            "capture_dynamic_over_plain_dynamic": rows["capture dynamic"].ms_per_token / dynamic.ms_per_token,
            "plain_dynamic_over_compiled_plain": dynamic.ms_per_token / compiled.ms_per_token,
        },
        "bit_identical": {
            "compiled_capture_vs_compiled_plain": bit_identical(logits["compiled capture"], logits["compiled plain"]),
            "capture_dynamic_vs_plain_dynamic": bit_identical(logits["capture dynamic"], logits["plain dynamic"]),
            "tokens_equal_across_rows": len({r.tokens for r in rows.values()}) == 1,
        },
    }


def format_report(report: dict) -> str:
    lines = [f"{report['model']} on {report['device']}, {report['dtype']}, prompt {report['prompt_tokens']}, "
             f"{report['draft_tokens']}-token drafts, heads {' '.join(report['heads'])}",
             f"{'row':<18}{'ms/token':>10}{'prefill ms':>12}{'draft ms':>10}"]
    for row in report["rows"]:
        lines.append(f"{row['name']:<18}{row['ms_per_token']:>10.2f}{row['prefill_ms']:>12.1f}{row['draft_ms']:>10.1f}")
    lines.append(f"replay per draft: {report['replay_ms_per_draft']:.2f} ms; decoder path (draft + replay, "
                 f"{report['decoder']['reused_prompt_tokens']} prompt tokens reused): "
                 f"{report['decoder']['draft_with_replay_ms']:.1f} ms")
    lines.append(f"replay from the compiled capture vs a teacher-forced pass: max |diff| "
                 f"{report['replay_vs_teacher_forced_max_abs']:.2e}; per head "
                 + " ".join(f"{d:.1e}" for d in report["replay_vs_teacher_forced_per_head"]))
    lines.append("replay from the eager capture vs a teacher-forced pass, per head: "
                 + " ".join(f"{d:.1e}" for d in report["eager_replay_vs_teacher_forced_per_head"]))
    lines += [f"{k}: {v:.3f}" for k, v in report["ratios"].items()]
    lines += [f"{k}: {v}" for k, v in report["bit_identical"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats_full=5, repeats_tiny=2)
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 256 (tiny: 96)")
    parser.add_argument("--draft-tokens", type=int, default=16)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.draft_tokens < 2:
        print("error: --draft-tokens must be at least 2", file=sys.stderr)
        return 2
    fill_defaults(args)
    args.prompt_tokens = args.prompt_tokens or (96 if args.tiny else 256)
    report = run(args)
    emit(report, format_report(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
