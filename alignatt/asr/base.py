"""ASR backend interface: audio window in, timed words out, in ABSOLUTE stream time.

Backends (each in its own module; `alignatt.factory.load_backend` imports the one asked for, as their
dependencies are heavy):
- `alignatt.asr.qwen3.Qwen3AsrBackend` (default): transformers-native Qwen3-ASR + Qwen3-ForcedAligner.
- `alignatt.asr.whisper.WhisperBackend`: faster-whisper with word timestamps (small offline stand-in).

A backend is stateless across calls: the incremental transcriber re-feeds the open sentence's audio each chunk.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from alignatt.audio import SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Word:
    """One recognised word as printed by the ASR (punctuation attached), with absolute stream times in seconds."""

    text: str
    start_s: float
    end_s: float


class AsrBackend(abc.ABC):
    """Transcribes one audio window into timed words."""

    @abc.abstractmethod
    def transcribe(self, audio: np.ndarray, offset_s: float) -> list[Word]:
        """Words of `audio` (float32, mono, 16 kHz), whose first sample is at absolute time `offset_s`.

        Returned times are absolute (offset_s already added), non-decreasing, and inside
        [offset_s, offset_s + len(audio) / 16000].
        """

    def warm_up(self) -> None:
        """Do the one-off work of the first call (compilation) before the talk starts."""


def check_audio(audio: np.ndarray) -> np.ndarray:
    """Reject what a backend must never be given (wrong rank or dtype) instead of transcribing garbage."""
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.dtype != np.float32:
        shape = getattr(audio, "shape", None)
        dtype = getattr(audio, "dtype", type(audio).__name__)
        raise TypeError(f"ASR input must be a 1-D float32 array at 16 kHz; got shape {shape}, dtype {dtype}")
    return audio


def window_duration_s(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE_HZ


def to_absolute(text: str, start_s: float, end_s: float, offset_s: float, duration_s: float) -> Word:
    """Word from window-relative times: clamped into the window (aligners may overshoot), then offset."""
    start = min(max(0.0, float(start_s)), duration_s)
    end = min(max(start, float(end_s)), duration_s)
    return Word(text=text, start_s=offset_s + start, end_s=offset_s + end)


def make_monotonic(words: list[Word]) -> list[Word]:
    """Force non-decreasing start and end times (a later word never ends before an earlier one)."""
    fixed: list[Word] = []
    last_start = last_end = float("-inf")
    for word in words:
        start = max(word.start_s, last_start)
        end = max(word.end_s, last_end, start)
        fixed.append(Word(word.text, start, end))
        last_start, last_end = start, end
    return fixed

