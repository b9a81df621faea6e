"""Loading the translator's checkpoint: a Hugging Face id or folder, or a GGUF file dequantised."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from transformers import AutoModelForCausalLM, AutoTokenizer

from alignatt.devices import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from alignatt.mt.translator import TranslatorConfig

DEFAULT_GGUF_CACHE_DIR = "~/.cache/alignatt4llm/gguf"
# resolve(model_id, gguf_file, cache_dir): a regular checkpoint folder holding the GGUF file's weights, or None to
# load the GGUF itself (e.g. `alignatt.accel.gguf_cache.converted_checkpoint`, which converts it once).
ResolveCheckpoint = Callable[[str, str, str], Path | None]


def load_model_and_tokenizer(config: TranslatorConfig, resolve_checkpoint: ResolveCheckpoint | None = None):
    """Load the real checkpoint with sdpa attention (the capture wraps sdpa). A GGUF file is read through
    `resolve_checkpoint` where one is given and `config.gguf_cache_dir` is set, else parsed by transformers."""
    device = resolve_device(config.device)
    source, kwargs = config.model_id, {"revision": config.revision}
    if config.gguf_file:
        converted = None
        if config.gguf_cache_dir and resolve_checkpoint is not None:
            converted = resolve_checkpoint(config.model_id, config.gguf_file, config.gguf_cache_dir)
        source, kwargs = (str(converted), {}) if converted else (source, {**kwargs, "gguf_file": config.gguf_file})
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(config.dtype, device),
                                                 attn_implementation="sdpa", **kwargs)
    return model.to(device).eval(), tokenizer
