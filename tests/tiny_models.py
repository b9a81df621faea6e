"""Tiny random-init models of the real architectures, built from configs (no downloads)."""
from __future__ import annotations

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Gemma4ForCausalLM, Gemma4TextConfig

SLIDING_WINDOW = 8


def gemma4_text_config(vocab_size: int = 512, sliding_window: int = SLIDING_WINDOW) -> Gemma4TextConfig:
    """Gemma-4 with KV sharing (layers 3-5 reuse 1/2) and per-layer embeddings, as in E4B but tiny."""
    return Gemma4TextConfig(
        vocab_size=vocab_size, vocab_size_per_layer_input=vocab_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
        sliding_window=sliding_window, layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=3, hidden_size_per_layer_input=16, final_logit_softcapping=30.0,
        pad_token_id=0, bos_token_id=2, eos_token_id=1)


def gemma3_text_config(vocab_size: int = 512) -> Gemma3TextConfig:
    return Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"] * 2, pad_token_id=0, bos_token_id=2,
        eos_token_id=1)


def build(kind: str, dtype: torch.dtype = torch.float32, vocab_size: int = 512, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "gemma4":
        model = Gemma4ForCausalLM(gemma4_text_config(vocab_size))
    elif kind == "gemma3":
        model = Gemma3ForCausalLM(gemma3_text_config(vocab_size))
    else:
        raise ValueError(kind)
    model.config._attn_implementation = "sdpa"
    return model.to(dtype).eval()


def build_gemma4_conditional(seed: int = 0, vocab_size: int = 512, sliding_window: int = SLIDING_WINDOW):
    """The class AutoModelForCausalLM returns for Gemma-4 -it checkpoints (text-only here)."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    torch.manual_seed(seed)
    config = Gemma4Config(text_config=gemma4_text_config(vocab_size, sliding_window).to_dict(), vision_config=None,
                          audio_config=None)
    config.get_text_config()._attn_implementation = "sdpa"
    return Gemma4ForConditionalGeneration(config).eval()


def build_qwen3(vocab_size: int, seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0)
    config._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(config).eval()
