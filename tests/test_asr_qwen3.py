"""Qwen3-ASR backend end to end on tiny random-init ASR + aligner models and an offline Qwen tokenizer.

Random weights give garbage words: these tests check structure, the time base and 16 kHz handling, not text.
"""
import dataclasses

import numpy as np
import pytest
import torch

from alignatt.asr.base import Word
from alignatt.asr.qwen3 import Qwen3AsrBackend, Qwen3AsrOptions, attach_times
from alignatt.devices import resolve_dtype
from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer
from alignatt.stream.transcriber import IncrementalTranscriber
from tiny_asr import build_tiny_asr


@pytest.fixture(scope="module")
def parts():
    return build_tiny_asr()


@pytest.fixture(scope="module")
def backend(parts):
    asr, aligner, processor = parts
    return Qwen3AsrBackend(asr, processor, aligner, processor, Qwen3AsrOptions(max_new_tokens=8))


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE_HZ)) * 0.1).astype(np.float32)


def assert_timed_window(words: list[Word], offset_s: float, duration_s: float) -> None:
    for word in words:
        assert isinstance(word, Word) and word.text and not any(ch.isspace() for ch in word.text)
        assert offset_s <= word.start_s <= word.end_s <= offset_s + duration_s + 1e-9
    assert [w.end_s for w in words] == sorted(w.end_s for w in words)
    assert [w.start_s for w in words] == sorted(w.start_s for w in words)


def test_transcribe_returns_timed_words_in_absolute_time(backend):
    words = backend.transcribe(noise(3.0), offset_s=12.5)
    assert words, "the tiny model should emit some (garbage) words"
    assert_timed_window(words, 12.5, 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        words[0].text = "frozen"


def test_alignment_keeps_transcript_tokens_and_punctuation(backend):
    transcript = "Hello, world. This is - a test!"
    words = backend.align(noise(2.0), transcript, offset_s=30.0)
    assert [w.text for w in words] == transcript.split()
    assert_timed_window(words, 30.0, 2.0)
    dash = words[3]
    assert dash.start_s == dash.end_s == words[2].end_s  # standalone punctuation: preceding word's end


def test_offset_shifts_every_time_exactly(backend):
    audio = noise(2.0, seed=1)
    at_zero = backend.align(audio, "one two three", offset_s=0.0)
    at_forty = backend.align(audio, "one two three", offset_s=40.0)
    assert [w.start_s + 40.0 for w in at_zero] == pytest.approx([w.start_s for w in at_forty])
    assert [w.end_s + 40.0 for w in at_zero] == pytest.approx([w.end_s for w in at_forty])


def test_aligner_bins_past_the_window_are_clamped(backend):
    # 64 bins reach 5.04 s; a 1 s window must still yield times inside it.
    assert_timed_window(backend.align(noise(1.0, seed=2), "a b c d e", offset_s=7.0), 7.0, 1.0)


def test_audio_reaches_the_models_as_16_khz(backend):
    seen = {}

    def spy(module, args, kwargs):
        seen["input_ids"] = kwargs["input_ids"]

    handle = backend.aligner_model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        backend.align(noise(2.0), "just checking", offset_s=0.0)
    finally:
        handle.remove()
    audio_tokens = int((seen["input_ids"] == backend.aligner_model.config.audio_token_id).sum())
    assert audio_tokens == 26  # Qwen3-ASR encodes 16 kHz audio at 13 tokens per second


def test_degenerate_inputs(backend):
    assert backend.transcribe(np.zeros(0, dtype=np.float32), offset_s=3.0) == []
    assert backend.align(noise(1.0), "  - ... ", offset_s=0.0) == []
    with pytest.raises(TypeError):
        backend.transcribe(noise(1.0).astype(np.float64), offset_s=0.0)
    with pytest.raises(TypeError):
        backend.transcribe(np.zeros((100, 2), dtype=np.float32), offset_s=0.0)


def test_incremental_transcriber_runs_on_the_backend(backend):
    transcriber = IncrementalTranscriber(backend)
    buffer = AudioBuffer()
    buffer.append(noise(1.5, seed=3))
    first = transcriber.update(buffer)
    buffer.append(noise(1.0, seed=4))
    second = transcriber.update(buffer)
    for result in (first, second):
        assert_timed_window(list(result.tail), result.boundary_s, buffer.duration_s - result.boundary_s)


def test_from_pretrained_loads_local_checkpoints(parts, tmp_path):
    asr, aligner, processor = parts
    asr.save_pretrained(tmp_path / "asr")
    processor.save_pretrained(tmp_path / "asr")
    aligner.save_pretrained(tmp_path / "aligner")
    processor.save_pretrained(tmp_path / "aligner")
    options = Qwen3AsrOptions(asr_model=str(tmp_path / "asr"), aligner_model=str(tmp_path / "aligner"),
                              max_new_tokens=4)
    loaded = Qwen3AsrBackend.from_pretrained(options)
    assert loaded.asr_model.dtype == torch.float32 and loaded.aligner_model.config.num_labels == 64
    words = loaded.align(noise(1.0), "loaded fine", offset_s=5.0)
    assert [w.text for w in words] == ["loaded", "fine"]


def test_options():
    assert Qwen3AsrOptions().asr_model == "Qwen/Qwen3-ASR-1.7B-hf"
    assert Qwen3AsrOptions().aligner_model == "Qwen/Qwen3-ForcedAligner-0.6B-hf"
    assert Qwen3AsrOptions().asr_revision is None and Qwen3AsrOptions().aligner_revision is None
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda:0")) == torch.bfloat16
    with pytest.raises(ValueError):
        Qwen3AsrOptions(dtype="float8")


def test_attach_times_maps_aligner_words_back_onto_tokens():
    aligned = [{"text": t, "start_time": s, "end_time": e}
               for t, s, e in [("don't", 0.0, 0.2), ("stop", 0.3, 0.5), ("你", 0.6, 0.7), ("好", 0.7, 0.8)]]
    timed = attach_times(["\"Don't", "stop,", "—", "你好。"], [1, 1, 0, 2], aligned)
    assert timed == [("\"Don't", 0.0, 0.2), ("stop,", 0.3, 0.5), ("—", 0.5, 0.5), ("你好。", 0.6, 0.8)]
    # A count mismatch falls back to the aligner's own words rather than misplacing times.
    assert attach_times(["a", "b"], [1, 1], aligned[:1]) == [("don't", 0.0, 0.2)]


# --- compiled decoding (static cache + torch.compile; aot_eager traces the same graph on CPU) ------------

COMPILED = dict(decode="compiled", compile_backend="aot_eager", compile_mode="default", max_new_tokens=8)


@pytest.mark.slow
def test_compiled_decoding_transcribes_like_eager(parts, backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    asr, aligner, processor = parts
    compiled = Qwen3AsrBackend(asr, processor, aligner, processor, Qwen3AsrOptions(**COMPILED))
    compiled.warm_up()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # the decode step was compiled at warm-up
    for seconds, seed in ((3.0, 0), (1.5, 4), (4.0, 5)):  # other lengths: no new graph after warm-up
        audio = noise(seconds, seed)
        assert compiled.recognize(audio) == backend.recognize(audio)
    assert counters["stats"]["unique_graphs"] == graphs
    assert compiled.transcribe(noise(3.0), 2.0) == backend.transcribe(noise(3.0), 2.0)


@pytest.mark.slow
def test_compiled_decoding_falls_back_to_eager_past_the_cache(parts, backend, caplog):
    torch._dynamo.reset()
    asr, aligner, processor = parts
    small = Qwen3AsrBackend(asr, processor, aligner, processor, Qwen3AsrOptions(**COMPILED, max_cache_tokens=40))
    audio = noise(3.0)
    assert small.recognize(audio) == backend.recognize(audio)
    assert "exceeds the static cache (40)" in caplog.text


def test_eager_backend_on_cpu_by_default(backend):
    assert backend._static_cache is None
    backend.warm_up()  # nothing to compile: returns at once
    with pytest.raises(ValueError, match="decode must be one of"):
        Qwen3AsrOptions(decode="static")


@pytest.mark.slow
def test_a_compiler_failure_falls_back_to_eager(parts, backend, failing_compile_backend, caplog):
    torch._dynamo.reset()
    asr, aligner, processor = parts
    broken = Qwen3AsrBackend(asr, processor, aligner, processor,
                             Qwen3AsrOptions(**{**COMPILED, "compile_backend": failing_compile_backend}))
    audio = noise(2.5)
    assert broken.recognize(audio) == backend.recognize(audio)
    assert broken._static_cache is None and "compiled ASR decoding failed" in caplog.text
