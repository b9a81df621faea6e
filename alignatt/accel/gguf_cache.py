"""A GGUF checkpoint converted once to a regular transformers checkpoint, so later loads take seconds.

transformers reads a GGUF file's metadata three times per load (tokenizer, config, weights), and for a 262k-token
vocabulary each read walks millions of fields: loading Gemma-3-270M from its GGUF takes minutes on a small CPU,
in every simuleval process and every demo start. The conversion dequantises to float32 exactly as a direct load
does and is stored with save_pretrained; the cache key is the file's resolved path, size, modification time and
the transformers version, so a changed file or a new dequantiser never reads a stale conversion.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)

DONE = "converted.ok"  # written last: a folder without it is an interrupted conversion


def cache_key(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    identity = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|transformers {transformers.__version__}"
    return hashlib.sha1(identity.encode()).hexdigest()[:16]


def converted_checkpoint(model_dir: str, gguf_file: str, cache_dir: str) -> Path | None:
    """Folder of the converted checkpoint of the local file MODEL_DIR/GGUF_FILE, converting it on first use.
    None for a hub id (nothing local to key on): the caller loads the GGUF directly. The `resolve_checkpoint` hook
    of `alignatt.mt.loading.load_model_and_tokenizer`."""
    gguf_path = Path(model_dir) / gguf_file
    if not gguf_path.is_file():
        return None
    folder = Path(cache_dir).expanduser() / f"{gguf_path.stem}-{cache_key(gguf_path)}"
    if (folder / DONE).is_file():
        return folder
    logger.info("converting %s once into %s (later loads skip the GGUF parser)", gguf_path, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
        tokenizer.save_pretrained(staging)
        _plain_copy(AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file,
                                                         dtype=torch.float32)).save_pretrained(staging)
        (staging / DONE).write_text(f"{gguf_path.resolve()}\n")
        os.replace(staging, folder)  # atomic; another process that finished first wins, with the same content
    except OSError:
        if not (folder / DONE).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _plain_copy(model):
    """The same weights in a model without the GGUF quantizer attached (transformers refuses to save those)."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain
