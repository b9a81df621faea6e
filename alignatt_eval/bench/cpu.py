"""Where a CPU cascade step spends its time, on the offline proxy (faster-whisper base + Gemma-3-270M) and real
speech: the numbers behind the demo's real-time factor.

    python -m alignatt_eval.bench.cpu                                   # the demo talk, the demo's models and flags
    python -m alignatt_eval.bench.cpu --seconds 20 --pipeline           # the ASR a step ahead, as the demo runs on CPU
    python -m alignatt_eval.bench.cpu --seconds 20 --threads 2 --out results/cpu/after.json --mt-decode static

The talk is pushed chunk by chunk as fast as the models run (no real-time waits) under cProfile, and the
cumulative time of each component's entry point is reported:
  asr         the ASR backend re-transcribing the open window (faster-whisper or Qwen3-ASR + aligner)
  mt.prompt   rendering and tokenising the prompt
  mt.generate greedy drafting: prefill and decode steps (with q/k capture)
  mt.replay   recomputing the draft x source attention of the chosen heads
  mt.align    reading where each draft token looks (z-score, median filter, peak per head)
  mt.gate     the AlignAtt decision on those readings
  mt.draft    a whole draft (prompt + generate + replay + reading; replay and reading run inside generate where
              the policy stops drafts early)
  final       final passes of committed sentences (generation without capture)
RTF = wall time / audio. The steps run one after the other unless --pipeline is given: then the ASR of the next
step runs in a thread while this one is translated (the demo's default on CPU), and cProfile sees the translator
only. asr_ms_per_step is the ASR half's wall time in both cases. The translation is printed with a digest, so two
settings can be checked for identical output. Any agent flag may follow (e.g. --mt-decode static,
--whisper-cpu-threads 2).
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import platform
import pstats
import time
from pathlib import Path

COMPONENTS = {  # component: (file suffix, function name) of its entry point, as cProfile names it
    "asr": [("alignatt/asr/whisper.py", "transcribe"), ("alignatt/asr/qwen3.py", "transcribe")],
    "mt.prompt": [("alignatt/mt/prompt.py", "render")],
    "mt.generate": [("alignatt/mt/decoding.py", "generate")],
    "mt.replay": [("alignatt/mt/replay.py", "replay")],
    "mt.align": [("alignatt/mt/alignment.py", "read_alignments")],
    "mt.gate": [("alignatt/policy/gate.py", "gate_draft")],
    "mt.draft": [("alignatt/mt/translator.py", "draft")],
    "final": [("alignatt/mt/translator.py", "finish")],
}


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice on this machine)")
    parser.add_argument("--seconds", type=float, default=None, help="only the first N seconds of the talk")
    parser.add_argument("--out", default=None, help="write the numbers to this JSON file")
    parser.add_argument("--top", type=int, default=0, help="also print the N most expensive functions")
    parser.add_argument("--pipeline", action="store_true",
                        help="the ASR one step ahead of the translator, in a thread, as the demo runs it")
    args, agent_flags = parser.parse_known_args()
    return args, agent_flags


def component_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each component's entry points (outermost calls only: recursion is not double-counted
    because cProfile's cumulative time already excludes it)."""
    totals = dict.fromkeys(COMPONENTS, 0.0)
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for name, entries in COMPONENTS.items():
            if any(filename.endswith(suffix) and function == entry for suffix, entry in entries):
                totals[name] += cumulative
    return totals


def lm_head_summary(cascade) -> dict:
    """How greedy decoding's head ran: screened (alignatt.accel.screened_head) or the full fp32 head."""
    from alignatt.accel.screened_head import ScreenedHead

    screen = getattr(cascade.translator.decoder, "head", None)
    if not isinstance(screen, ScreenedHead):
        return {"mode": "full"}
    counts = screen.counts
    return {"mode": "screened", "tokens": counts.tokens, "fallbacks": counts.fallbacks,
            "fp32_rows_per_token": round(counts.candidates / max(1, counts.tokens), 1)}


def main() -> None:
    args, agent_flags = parse_args()
    import torch

    from alignatt.cli import demo
    from alignatt.factory import build_cascade
    from alignatt.text_units import is_char_level, join_units

    if args.threads:
        torch.set_num_threads(args.threads)
    demo_args = demo.parse_args(["--speed", "0", *agent_flags])
    samples, rate = demo.read_talk(demo_args.wav)
    if args.seconds:
        samples = samples[: int(args.seconds * rate)]
    began = time.perf_counter()
    cascade = build_cascade(demo_args)
    load_s = time.perf_counter() - began
    profile = cProfile.Profile()
    profile.enable()
    pushes = list(demo.feed(cascade, samples, rate, pipeline=args.pipeline))
    profile.disable()
    wall_s = pushes[-1].wall_s
    compute_s = sum(fed.compute_s for fed in pushes)
    steps = [fed.compute_s for fed in pushes if fed.report is not None]
    drafted = [fed.report for fed in pushes if fed.report is not None and not fed.report.draft_skipped]
    units = [unit for fed in pushes for unit in fed.units]
    audio_s = len(samples) / rate
    totals = component_seconds(pstats.Stats(profile))
    if args.pipeline:  # cProfile sees the main thread only: the ASR's time is asr_ms_per_step
        del totals["asr"]
    translation = join_units(units, is_char_level(demo_args.target_lang))
    result = {
        "wav": Path(demo_args.wav).name, "audio_s": round(audio_s, 2), "step_ms": cascade.options.step_ms,
        "models": demo_args.models, "flags": agent_flags,
        "whisper_encoder_window": getattr(demo_args, "whisper_encoder_window", None),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu": platform.processor() or platform.machine(),
        "n_cpus": os.cpu_count(), "load_s": round(load_s, 1), "pipeline": args.pipeline, "steps": len(steps),
        "wall_s": round(wall_s, 2), "rtf": round(wall_s / audio_s, 3),
        "compute_s": round(compute_s, 2), "compute_rtf": round(compute_s / audio_s, 3),
        "step_ms_mean": round(1000 * sum(steps) / max(1, len(steps)), 1),
        "step_ms_max": round(1000 * max(steps, default=0.0), 1),
        "asr_ms_per_step": round(1000 * sum(fed.asr_s for fed in pushes) / max(1, len(steps)), 1),
        "drafts": sum(r.n_draft_tokens > 0 for r in drafted), "draft_tokens": sum(r.n_draft_tokens for r in drafted),
        "components_s": {name: round(seconds, 2) for name, seconds in totals.items()},
        "components_ms_per_step": {name: round(1000 * seconds / max(1, len(steps)), 1)
                                   for name, seconds in totals.items()},
        "lm_head": lm_head_summary(cascade),
        "translation_sha1": hashlib.sha1(translation.encode()).hexdigest()[:12], "translation": translation,
        "note": "cProfile adds a few per cent of overhead (with --pipeline, to the translator's thread only); "
                "components nest (mt.draft holds prompt, generate, replay and gate; final holds its own generate); "
                "asr_ms_per_step is the wall time of the ASR half of the steps",
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.top:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
