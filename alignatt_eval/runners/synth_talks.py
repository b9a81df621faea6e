"""Synthesise long-form dev talks with espeak-ng, so the whole protocol runs offline.

Each talk's English segments (MCIF per_talk/NAME.en) are spoken one by one, resampled to 16 kHz and
concatenated with a short pause between them into one wav; the offset and duration of every spoken segment go
into a segment YAML aligned line by line with the references. The output is a dev set in the MCIF layout:

    python -m alignatt_eval.runners.synth_talks --talks 3 --max-seconds 120 --out eval/synth/dev3
    -> OUT/wav/NAME.wav, OUT/audio-segments.yaml, OUT/{en,de,it,zh}.txt, OUT/per_talk/NAME.*, OUT/synth.json

espeak-ng speaks about 20% faster than the real talks, with none of their disfluencies: a proxy, not MCIF.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from alignatt_eval.runners.dev_set import MCIF_DEV, DevSet, segment_entry, write_segments

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
LANGS = ("en", "de", "it", "zh")


def require_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install -y espeak-ng "
                           "(needed to synthesise the offline dev talks)")
    return path


def speak(text: str, voice: str = "en-us", rate_wpm: int = 175) -> np.ndarray:
    """16 kHz float32 speech of `text` (read from stdin, so no line is taken for an option)."""
    done = subprocess.run([require_espeak(), "-v", voice, "-s", str(rate_wpm), "--stdout"], input=text.encode(),
                          capture_output=True, check=True)
    samples, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE_HZ:
        g = np.gcd(rate, SAMPLE_RATE_HZ)
        samples = resample_poly(samples, SAMPLE_RATE_HZ // g, rate // g).astype(np.float32)
    return samples


def trim_silence(samples: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """Drop the silence espeak-ng puts around an utterance, so the offset/duration cover the speech."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    return samples[loud[0]: loud[-1] + 1] if loud.size else samples[:0]


def synth_talk(lines: list[str], pause_s: float, voice: str, rate_wpm: int, max_seconds: float | None
               ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One talk: pause, segment, pause, segment, ..., pause. Returns the wav and (offset_s, duration_s) per
    segment kept (segments after `max_seconds` of audio are left out)."""
    pause = np.zeros(int(round(pause_s * SAMPLE_RATE_HZ)), dtype=np.float32)
    pieces, timings, n_samples = [pause], [], len(pause)
    for line in lines:
        if max_seconds is not None and timings and n_samples / SAMPLE_RATE_HZ >= max_seconds:
            break
        speech = trim_silence(speak(line, voice, rate_wpm))
        timings.append((n_samples / SAMPLE_RATE_HZ, len(speech) / SAMPLE_RATE_HZ))
        pieces += [speech, pause]
        n_samples += len(speech) + len(pause)
    return np.concatenate(pieces), timings


def synth_dev_set(out: Path, talks: list[str], source: DevSet = None, pause_s: float = 0.6, voice: str = "en-us",
                  rate_wpm: int = 175, max_segments: int | None = None, max_seconds: float | None = None) -> DevSet:
    source = source or DevSet.load()
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "per_talk").mkdir(exist_ok=True)
    entries, texts = [], {lang: [] for lang in LANGS}
    for talk in talks:
        lines = {lang: source.talk_lines(talk, lang) for lang in LANGS}
        english = lines["en"][:max_segments]
        wav, timings = synth_talk(english, pause_s, voice, rate_wpm, max_seconds)
        soundfile.write(out / "wav" / f"{talk}.wav", wav, SAMPLE_RATE_HZ, subtype="PCM_16")
        entries += [segment_entry(f"{talk}.wav", offset, duration) for offset, duration in timings]
        for lang in LANGS:
            kept = lines[lang][: len(timings)]
            texts[lang] += kept
            (out / "per_talk" / f"{talk}.{lang}").write_text("".join(f"{t}\n" for t in kept), encoding="utf-8")
        logger.info("%s: %d segments, %.1f s", talk, len(timings), len(wav) / SAMPLE_RATE_HZ)
    write_segments(out / "audio-segments.yaml", entries)
    for lang in LANGS:
        (out / f"{lang}.txt").write_text("".join(f"{t}\n" for t in texts[lang]), encoding="utf-8")
    version = subprocess.run([require_espeak(), "--version"], capture_output=True, text=True).stdout.strip()
    (out / "synth.json").write_text(json.dumps({
        "source": str(source.root), "talks": talks, "voice": voice, "rate_wpm": rate_wpm, "pause_s": pause_s,
        "max_segments": max_segments, "max_seconds": max_seconds, "espeak": version}, indent=2) + "\n")
    return DevSet.load(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignatt_eval.runners.synth_talks", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(MCIF_DEV), help="dev set in the MCIF layout (text and segments)")
    parser.add_argument("--talks", type=int, default=None, help="the first N talks (default: all)")
    parser.add_argument("--talk", nargs="+", default=None, help="these talks (wav stems) instead")
    parser.add_argument("--max-segments", type=int, default=None, help="keep the first M segments of each talk")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop a talk at the first segment starting after this much audio")
    parser.add_argument("--voice", default="en-us", help="espeak-ng voice")
    parser.add_argument("--rate-wpm", type=int, default=175, help="espeak-ng speaking rate (words per minute)")
    parser.add_argument("--pause-s", type=float, default=0.6, help="silence between segments")
    parser.add_argument("--out", required=True, help="output folder (MCIF layout, wavs under OUT/wav)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    require_espeak()
    source = DevSet.load(args.data)
    talks = args.talk or source.talks()[: args.talks]
    synth_dev_set(Path(args.out), talks, source, args.pause_s, args.voice, args.rate_wpm, args.max_segments,
                  args.max_seconds)


if __name__ == "__main__":
    main()
