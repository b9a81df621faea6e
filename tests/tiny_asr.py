"""Tiny random-init Qwen3-ASR + forced aligner (the processor is the offline one of alignatt_eval.runners.offline_tokenizers)."""
import torch
from transformers import Qwen3ASRForConditionalGeneration, Qwen3ASRForTokenClassification

from alignatt_eval.runners.model_configs import qwen3_asr_1_7b_config, qwen3_forced_aligner_config
from alignatt_eval.runners.offline_tokenizers import ASR_SPECIAL_TOKENS, qwen3_asr_processor


def build_tiny_asr(seed: int = 0):
    """(asr model, aligner model, processor); the aligner has 64 time bins (up to 5.04 s per window)."""
    torch.manual_seed(seed)
    processor = qwen3_asr_processor()
    asr = Qwen3ASRForConditionalGeneration(qwen3_asr_1_7b_config(processor.tokenizer, tiny=True))
    # Random weights favour special tokens (decoded to nothing); suppress them so garbage words come out.
    asr.generation_config.suppress_tokens = processor.tokenizer.convert_tokens_to_ids(ASR_SPECIAL_TOKENS)
    aligner = Qwen3ASRForTokenClassification(qwen3_forced_aligner_config(processor.tokenizer, tiny=True))
    return asr, aligner, processor
