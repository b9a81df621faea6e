"""Configs of the real checkpoints, for random-init models of full size (speed and memory benchmarks), and
scaled-down versions of the same architectures (CPU smoke runs).

Gemma-4 E4B-it: the published config.json as transformers 5.23 reads it (7.46 B text parameters, 2.82 B of them
per-layer embeddings, which this config reproduces exactly). Qwen3-ASR-1.7B-hf and
Qwen3-ForcedAligner-0.6B-hf: the values of their published config.json files. Special-token ids come from
the processor in use, so that an offline processor works with them.
"""
from __future__ import annotations

from transformers import Gemma4Config, Gemma4TextConfig, Qwen3ASRConfig

E4B_LAYER_TYPES = (["sliding_attention"] * 5 + ["full_attention"]) * 7


def gemma4_e4b_config(tiny: bool = False) -> Gemma4Config:
    """The config AutoModelForCausalLM reads for google/gemma-4-E4B-it, text tower only (the class it
    builds, Gemma4ForConditionalGeneration, runs text without the vision and audio towers)."""
    if tiny:
        text = Gemma4TextConfig(
            vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size=64, intermediate_size=128,
            num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=2, head_dim=16, global_head_dim=32,
            sliding_window=64, layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 2,
            num_kv_shared_layers=5, hidden_size_per_layer_input=8, final_logit_softcapping=30.0)
    else:
        text = Gemma4TextConfig(
            vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size=2560, intermediate_size=10240,
            num_hidden_layers=42, num_attention_heads=8, num_key_value_heads=2, head_dim=256, global_head_dim=512,
            sliding_window=512, layer_types=E4B_LAYER_TYPES, num_kv_shared_layers=18,
            hidden_size_per_layer_input=256, final_logit_softcapping=30.0, use_double_wide_mlp=False)
    text._attn_implementation = "sdpa"
    config = Gemma4Config(text_config=text.to_dict(), vision_config=None, audio_config=None)
    config.get_text_config()._attn_implementation = "sdpa"
    return config


def _asr_audio_config(output_dim: int, tiny: bool) -> dict:
    if tiny:
        return dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                    output_dim=output_dim, downsample_hidden_size=8, n_window=50, n_window_infer=800)
    return dict(num_mel_bins=128, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096,
                d_model=1024, output_dim=output_dim, downsample_hidden_size=480, n_window=50, n_window_infer=800,
                conv_chunksize=500)


def _asr_text_config(hidden: int, intermediate: int, vocab: int, tied: bool, max_positions: int,
                     tiny: bool) -> dict:
    # Every field explicit: a text_config dict replaces the class defaults with plain Qwen3 defaults.
    if tiny:
        return dict(model_type="qwen3", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                    tie_word_embeddings=tied)
    return dict(model_type="qwen3", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                max_position_embeddings=max_positions, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                hidden_act="silu", attention_bias=False, tie_word_embeddings=tied)


def _asr_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(audio_token_id=ids("<|audio_pad|>"), timestamp_token_id=ids("<timestamp>"),
                pad_token_id=ids("<|endoftext|>"), eos_token_id=[ids("<|endoftext|>"), ids("<|im_end|>")])


def qwen3_asr_1_7b_config(tokenizer, tiny: bool = False) -> Qwen3ASRConfig:
    """Qwen/Qwen3-ASR-1.7B-hf (tiny: 48-wide)."""
    hidden, intermediate = (48, 96) if tiny else (2048, 6144)
    vocab = max(len(tokenizer), 151936)
    return Qwen3ASRConfig(audio_config=_asr_audio_config(hidden, tiny),
                          text_config=_asr_text_config(hidden, intermediate, vocab, True, 65536, tiny),
                          tie_word_embeddings=True, **_asr_token_ids(tokenizer))


def qwen3_forced_aligner_config(tokenizer, tiny: bool = False) -> Qwen3ASRConfig:
    """Qwen/Qwen3-ForcedAligner-0.6B-hf: 5000 time classes of 80 ms (tiny: 64 classes)."""
    hidden, intermediate = (48, 96) if tiny else (1024, 3072)
    vocab = max(len(tokenizer), 152064)
    config = Qwen3ASRConfig(audio_config=_asr_audio_config(hidden, tiny),
                            text_config=_asr_text_config(hidden, intermediate, vocab, False, 8192, tiny),
                            tie_word_embeddings=False, **_asr_token_ids(tokenizer))
    config.num_labels = 64 if tiny else 5000
    return config
