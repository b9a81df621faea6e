"""The incremental ASR on its own: what a step costs, how many words it gets wrong, and how late words become
stable. It compares ASR settings (whisper's encoder window, its backend) without the translator, whose failures
on the offline proxy swamp the ASR's effect on BLEU.

    python -m alignatt_eval.analysis.asr_study --out results/asr/30s.json -- --whisper-encoder-window 30s
    python -m alignatt_eval.analysis.asr_study --out results/asr/fit.json -- --whisper-encoder-window fit

Talks: the demo's real-speech talk, plus the synthetic talks of `--talks-dir` (`alignatt_eval.runners.synth_talks` layout:
wav/ID.wav, per_talk/ID.en), by default the held-out talks 7-12. Each talk is pushed step by step through the
cascade's own ASR half (`Cascade.hear`: the preset's step, transcriber and source options, any agent flag after
`--`; the demo's offline defaults otherwise), as fast as the ASR runs. Reported per talk and in all:
  wer_percent    word error rate of the committed transcript against the English text (jiwer; case and
                 punctuation removed)
  stable_lag_s   mean time from a committed word's end (as the ASR timed it) to the first step at which its
                 position in the open sentence was among the agreed words (its commit if it never was): when the
                 frontier could first reach it. Positions are counted from the commit boundary, so where a later
                 hypothesis inserts or drops an earlier word, or a forced commit takes words no hypothesis agreed
                 on, the lag is that of the position, not of the word; agreement may also be withdrawn later.
  commit_lag_s   the same, to its sentence's commit
  asr_ms_per_step and asr_rtf: the ASR's wall time per step and per second of audio
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from alignatt.cli import demo

DEMO_TALK = (demo.DEFAULT_WAV, demo.DEFAULT_WAV.parent / "two_cities.en.txt")
HELD_OUT = ("miPjvjWOvI", "rOwZgUjcwB", "wJAPXMIoIG", "ccpXHNfaoy", "csJIsDTYMW", "DyXpuURBMP")
_NOT_WORD = re.compile(r"[^\w\s']+")


@dataclass
class WordLags:
    """When the words of the open sentence first became stable, by their index after the commit boundary."""

    first_stable_s: list[float | None] = field(default_factory=list)
    stable_lags_s: list[float] = field(default_factory=list)
    commit_lags_s: list[float] = field(default_factory=list)

    def commit(self, words, heard_s: float) -> None:
        """Words committed at `heard_s`, which were the first len(words) of the open sentence."""
        for index, word in enumerate(words):
            stable_s = self.first_stable_s[index] if index < len(self.first_stable_s) else None
            self.stable_lags_s.append((heard_s if stable_s is None else stable_s) - word.end_s)
            self.commit_lags_s.append(heard_s - word.end_s)
        del self.first_stable_s[:len(words)]

    def open_sentence(self, n_words: int, n_stable: int, heard_s: float) -> None:
        """The open sentence after this step's commits: `n_words` words, of which the first `n_stable` agreed."""
        del self.first_stable_s[n_words:]
        self.first_stable_s += [None] * (n_words - len(self.first_stable_s))
        for index in range(n_stable):
            if self.first_stable_s[index] is None:
                self.first_stable_s[index] = heard_s


@dataclass(frozen=True)
class TalkResult:
    talk: str
    audio_s: float
    steps: int
    asr_s: float
    asr_ms_max: float
    wer_percent: float
    n_reference_words: int
    stable_lag_s: float | None  # None: nothing was committed
    commit_lag_s: float | None
    transcript: str


def normalised_words(text: str) -> str:
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer
    return jiwer.wer(normalised_words(reference), normalised_words(hypothesis) or "<empty>")


def run_talk(cascade, talk: str, samples: np.ndarray, rate: int, reference: str) -> TalkResult:
    """Push one talk through the cascade's ASR half, step by step, and score what it committed."""
    cascade.reset()
    chunk = max(1, int(round(rate * cascade.options.step_ms / 1000.0)))
    lags, committed, step_ms = WordLags(), [], []
    for offset in range(0, len(samples) + chunk, chunk):  # the last pass ends the stream
        began = time.perf_counter()
        heard = cascade.hear(samples[offset:offset + chunk], rate) if offset < len(samples) else cascade.hear_end()
        elapsed_ms = (time.perf_counter() - began) * 1000.0
        if heard is None:
            continue
        step_ms.append(elapsed_ms)
        for sentence in heard.update.committed:
            lags.commit(sentence.words, heard.heard_s)
            committed.append(sentence.text)
        lags.open_sentence(len(heard.update.tail), heard.update.n_stable_tail_words, heard.heard_s)
    transcript = " ".join(committed)
    return TalkResult(talk=talk, audio_s=round(len(samples) / rate, 2), steps=len(step_ms),
                      asr_s=round(sum(step_ms) / 1000.0, 2), asr_ms_max=round(max(step_ms, default=0.0), 1),
                      wer_percent=round(100.0 * word_error_rate(reference, transcript), 2),
                      n_reference_words=len(normalised_words(reference).split()),
                      stable_lag_s=mean_s(lags.stable_lags_s), commit_lag_s=mean_s(lags.commit_lags_s),
                      transcript=transcript)


def mean_s(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def summary(results: list[TalkResult]) -> dict:
    """Totals over talks: WER weighted by reference words, lags by talk, time by audio."""
    words = sum(r.n_reference_words for r in results)
    stable = [r.stable_lag_s for r in results if r.stable_lag_s is not None]
    commit = [r.commit_lag_s for r in results if r.commit_lag_s is not None]
    audio_s = sum(r.audio_s for r in results)
    steps = sum(r.steps for r in results)
    asr_s = sum(r.asr_s for r in results)
    return {"talks": len(results), "audio_s": round(audio_s, 1), "steps": steps,
            "wer_percent": round(sum(r.wer_percent * r.n_reference_words for r in results) / max(1, words), 2),
            "stable_lag_s": mean_s(stable), "commit_lag_s": mean_s(commit),
            "asr_ms_per_step": round(1000.0 * asr_s / max(1, steps), 1),
            "asr_ms_max": max(r.asr_ms_max for r in results), "asr_rtf": round(asr_s / max(audio_s, 1e-9), 3)}


def talk_inputs(args) -> list[tuple[str, Path, Path]]:
    talks = [] if args.no_demo_talk else [("two_cities", *DEMO_TALK)]
    root = Path(args.talks_dir)
    for talk in args.talk:
        talks.append((talk, root / "wav" / f"{talk}.wav", root / "per_talk" / f"{talk}.en"))
    missing = [str(path) for _, *paths in talks for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"missing talk files (python -m alignatt_eval.runners.synth_talks writes the synthetic ones): {missing}")
    return talks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignatt_eval.analysis.asr_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--talks-dir", default="eval/synth/proxy12", help="synthetic talks (alignatt_eval.runners.synth_talks)")
    parser.add_argument("--talk", nargs="*", default=list(HELD_OUT), help="talk ids of --talks-dir")
    parser.add_argument("--no-demo-talk", action="store_true", help="leave out the demo's real-speech talk")
    parser.add_argument("--out", default=None, help="write the numbers to this JSON file")
    args, agent_flags = parser.parse_known_args(argv)
    agent_flags = [flag for flag in agent_flags if flag != "--"]

    from alignatt.factory import build_cascade

    agent_args = demo.parse_args(["--speed", "0", *agent_flags])
    cascade = build_cascade(agent_args)
    results = []
    for talk, wav, text in talk_inputs(args):
        samples, rate = demo.read_talk(str(wav))
        results.append(run_talk(cascade, talk, samples, rate, text.read_text(encoding="utf-8")))
        row = results[-1]
        print(f"{talk}: WER {row.wer_percent:.2f} %, stable lag {row.stable_lag_s} s, commit lag {row.commit_lag_s} s, "
              f"ASR {1000 * row.asr_s / max(1, row.steps):.0f} ms/step", flush=True)
    report = {"flags": agent_flags, "asr_backend": agent_args.asr_backend,
              "whisper_encoder_window": getattr(agent_args, "whisper_encoder_window", None),
              "step_ms": cascade.options.step_ms, "summary": summary(results), "talks": [asdict(r) for r in results]}
    print(json.dumps(report["summary"], indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
