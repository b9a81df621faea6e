"""Default ASR backend: transformers-native Qwen3-ASR transcription + Qwen3-ForcedAligner word times.

Uses the classes shipped in transformers 5.x (`Qwen3ASRForConditionalGeneration`, `Qwen3ASRForTokenClassification`,
`Qwen3ASRProcessor`) and therefore the `-hf` checkpoints (Qwen/Qwen3-ASR-1.7B-hf, Qwen/Qwen3-ASR-0.6B-hf,
Qwen/Qwen3-ForcedAligner-0.6B-hf). The PyPI package `qwen-asr` (0.0.6) cannot be used: it pins
transformers==4.57.6 and does not import or run on transformers 5.x.

Pipeline per call: the processor's transcription request forces the language ("language English<asr_text>" is
prefilled, so the model emits only the transcript), greedy generation, then the forced aligner classifies each
`<timestamp>` slot of "word<timestamp><timestamp>" into 80 ms bins; `decode_forced_alignment` returns
[{text, start_time, end_time}] in seconds relative to the window. The aligner drops punctuation from its words, so
times are mapped back onto the transcript's whitespace tokens (punctuation kept, as the sentence commit needs it).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from transformers import GenerationConfig, StaticCache

from alignatt.asr.base import AsrBackend, Word, check_audio, make_monotonic, to_absolute, window_duration_s
from alignatt.audio import SAMPLE_RATE_HZ
from alignatt.devices import DTYPES, resolve_device, resolve_dtype
from alignatt.generation import CACHE_KWARG, COMPILE_ERRORS, generation_with_compile, resolve_decode_mode

logger = logging.getLogger(__name__)

QWEN3_ASR_1_7B = "Qwen/Qwen3-ASR-1.7B-hf"
QWEN3_ASR_0_6B = "Qwen/Qwen3-ASR-0.6B-hf"
QWEN3_FORCED_ALIGNER_0_6B = "Qwen/Qwen3-ForcedAligner-0.6B-hf"
ASR_DECODE_MODES = ("auto", "eager", "compiled")


@dataclass(frozen=True)
class Qwen3AsrOptions:
    """Which checkpoints to load and how to run them. Revisions default to None (the hub's current head)."""

    asr_model: str = field(default=QWEN3_ASR_1_7B, metadata={
        "help": f"Qwen3-ASR -hf checkpoint (id or local path), e.g. {QWEN3_ASR_0_6B}"})
    asr_revision: str | None = field(default=None, metadata={"help": "ASR model revision (branch, tag or commit)"})
    aligner_model: str = field(default=QWEN3_FORCED_ALIGNER_0_6B, metadata={
        "help": "Qwen3-ForcedAligner -hf checkpoint (id or local path)"})
    aligner_revision: str | None = field(default=None, metadata={"help": "aligner revision (branch, tag or commit)"})
    device: str = field(default="auto", metadata={"help": "auto (GPU if present), cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 elsewhere), bfloat16, float32"})
    # Forced, not detected: the cascade translates English talks.
    language: str = field(default="English", metadata={"help": "transcription language (name or ISO code)"})
    # ~30 s of open speech is ~120 tokens.
    max_new_tokens: int = field(default=256, metadata={"help": "bound on the transcript tokens per window"})
    decode: str = field(default="auto", metadata={
        "help": "auto (compiled on CUDA, eager elsewhere), eager, compiled (static cache + torch.compile of "
                "the decode step, CUDA graphs with reduce-overhead)"})
    # 13 audio tokens per second: 30 s of open sentence + the request + max_new_tokens fit in 1024.
    max_cache_tokens: int = field(default=1024, metadata={
        "help": "static cache length of compiled decoding; a longer window falls back to eager"})
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend"})
    compile_mode: str = field(default="reduce-overhead", metadata={"help": "torch.compile mode"})

    def __post_init__(self):
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.decode not in ASR_DECODE_MODES:
            raise ValueError(f"decode must be one of {ASR_DECODE_MODES}, got {self.decode!r}")


class Qwen3AsrBackend(AsrBackend):
    """Qwen3-ASR + forced aligner. Construct from loaded objects (tests inject tiny models) or `from_pretrained`."""

    def __init__(self, asr_model, asr_processor, aligner_model, aligner_processor,
                 options: Qwen3AsrOptions = Qwen3AsrOptions()):
        self.asr_model = asr_model.eval()
        self.asr_processor = asr_processor
        self.aligner_model = aligner_model.eval()
        self.aligner_processor = aligner_processor
        self.options = options
        compiled = resolve_decode_mode(options.decode, asr_model.device) == "compiled"
        # The ASR decodes ~3 tokens per second of speech, one launch-bound forward each: on a GPU the compiled
        # step (CUDA graphs) is what keeps a 20 s open sentence inside a chunk.
        self._static_cache = None
        if compiled:
            self._static_cache = StaticCache(config=asr_model.config, max_cache_len=options.max_cache_tokens)
        self._warned_long = False

    @classmethod
    def from_pretrained(cls, options: Qwen3AsrOptions = Qwen3AsrOptions()) -> Qwen3AsrBackend:
        # Explicit model classes: a mismatched Auto class can silently random-initialise weights.
        from transformers import AutoProcessor, Qwen3ASRForConditionalGeneration, Qwen3ASRForTokenClassification

        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        logger.info("loading %s and %s (%s on %s)", options.asr_model, options.aligner_model, dtype, device)
        asr_processor = AutoProcessor.from_pretrained(options.asr_model, revision=options.asr_revision)
        asr_model = Qwen3ASRForConditionalGeneration.from_pretrained(
            options.asr_model, revision=options.asr_revision, dtype=dtype).to(device)
        aligner_processor = AutoProcessor.from_pretrained(options.aligner_model, revision=options.aligner_revision)
        aligner_model = Qwen3ASRForTokenClassification.from_pretrained(
            options.aligner_model, revision=options.aligner_revision, dtype=dtype).to(device)
        return cls(asr_model, asr_processor, aligner_model, aligner_processor, options)

    def transcribe(self, audio: np.ndarray, offset_s: float) -> list[Word]:
        check_audio(audio)
        if len(audio) == 0:
            return []
        return self.align(audio, self.recognize(audio), offset_s)

    def recognize(self, audio: np.ndarray, min_new_tokens: int = 0) -> str:
        """Transcript of the window (punctuated text, no times)."""
        inputs = self.asr_processor.apply_transcription_request(audio=audio, language=self.options.language)
        inputs = inputs.to(self.asr_model.device, self.asr_model.dtype)
        generation = copy.deepcopy(self.asr_model.generation_config)
        generation.update(max_new_tokens=self.options.max_new_tokens, min_new_tokens=min_new_tokens or None,
                          do_sample=False)
        with torch.inference_mode():  # also around the cache reset: its buffers are inference tensors
            try:
                output_ids = self.asr_model.generate(**inputs, **self._decode_kwargs(inputs, generation))
            except COMPILE_ERRORS as err:
                if self._static_cache is None:
                    raise
                # A talk must not die of a compiler error: decode eagerly (slower) from here on.
                logger.error("compiled ASR decoding failed, decoding eagerly from now on: %s", err)
                self._static_cache = None
                output_ids = self.asr_model.generate(**inputs, **self._decode_kwargs(inputs, generation))
        generated = output_ids[:, inputs["input_ids"].shape[1]:]  # (1, new_tokens)
        return self.asr_processor.decode(generated, return_format="transcription_only")[0]

    def _decode_kwargs(self, inputs, generation: GenerationConfig) -> dict:
        """Compiled decoding with the static cache when it holds the window, eager otherwise."""
        options = self.options
        fits = inputs["input_ids"].shape[1] + generation.max_new_tokens <= options.max_cache_tokens
        if self._static_cache is None or not fits:
            if self._static_cache is not None and not self._warned_long:
                logger.warning("ASR window of %d tokens exceeds the static cache (%d): decoding eagerly",
                               inputs["input_ids"].shape[1], options.max_cache_tokens)
                self._warned_long = True
            return {"generation_config": generation_with_compile(generation, False, "", "")}
        self._static_cache.reset()
        return {"generation_config": generation_with_compile(generation, True, options.compile_backend,
                                                             options.compile_mode),
                CACHE_KWARG: self._static_cache}

    def warm_up(self) -> None:
        """Compile the decode step on 2 s of quiet noise (at least two tokens, so a decode step runs)."""
        if self._static_cache is None:
            return
        noise = (1e-3 * np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE_HZ)).astype(np.float32)
        self.recognize(noise, min_new_tokens=2)

    def align(self, audio: np.ndarray, transcript: str, offset_s: float) -> list[Word]:
        """Timed whitespace tokens of `transcript` over `audio` (window starting at absolute `offset_s`)."""
        tokens = transcript.split()
        pieces = [len(self.aligner_processor.split_words_for_alignment(t, self.options.language)) for t in tokens]
        if sum(pieces) == 0:
            return []  # nothing alignable: empty or punctuation-only output is noise, not speech
        aligned = self._run_aligner(audio, transcript)
        duration_s = window_duration_s(audio)
        timed = attach_times(tokens, pieces, aligned)
        return make_monotonic([to_absolute(text, s, e, offset_s, duration_s) for text, s, e in timed])

    def _run_aligner(self, audio: np.ndarray, transcript: str) -> list[dict]:
        inputs, word_lists = self.aligner_processor.prepare_forced_aligner_inputs(
            audio=audio, transcript=transcript, language=self.options.language)
        inputs = inputs.to(self.aligner_model.device, self.aligner_model.dtype)
        with torch.inference_mode():
            logits = self.aligner_model(**inputs).logits  # (1, seq, num_time_bins)
        return self.aligner_processor.decode_forced_alignment(
            logits=logits, input_ids=inputs["input_ids"], word_lists=word_lists,
            timestamp_token_id=self.aligner_model.config.timestamp_token_id)[0]


def attach_times(tokens: list[str], pieces: list[int], aligned: list[dict]) -> list[tuple[str, float, float]]:
    """Give each whitespace token the span of its aligner words (pieces[i] of them, in order).

    A token with no alignable characters (standalone punctuation such as "-") gets the preceding token's end
    time, matching how the source side times standalone punctuation units.
    """
    if sum(pieces) != len(aligned):
        logger.warning("aligner returned %d words for %d expected; using its words without punctuation",
                       len(aligned), sum(pieces))
        return [(a["text"], a["start_time"], a["end_time"]) for a in aligned]
    timed: list[tuple[str, float, float]] = []
    index = 0
    previous_end = aligned[0]["start_time"] if aligned else 0.0
    for token, count in zip(tokens, pieces):
        if count == 0:
            timed.append((token, previous_end, previous_end))
            continue
        start, end = aligned[index]["start_time"], aligned[index + count - 1]["end_time"]
        timed.append((token, start, end))
        index += count
        previous_end = end
    return timed
