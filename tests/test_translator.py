"""The translator end to end on tiny random-init models with real tokenizers."""
import numpy as np
import pytest
import torch

from alignatt.capture import HeadRef
from alignatt.heads import HeadsFile, HeadScore, HeadsFileError
from alignatt.policy import PolicyConfig, complete_units_text
from alignatt.prompt import PromptConfig
from alignatt.translator import Translator, TranslatorConfig
from eval.offline_tokenizers import gemma_tokenizer
from tiny_models import build_gemma4_conditional, build_qwen3

HEADS = [HeadRef(2, 0), HeadRef(5, 1), HeadRef(1, 3), HeadRef(4, 2)]  # full, KV-shared full, sliding, shared
SOURCE = "We propose a new method for simultaneous speech translation with large language models."


@pytest.fixture(scope="module")
def gemma_model(gemma_tok):
    return build_gemma4_conditional(vocab_size=len(gemma_tok))


@pytest.fixture(scope="module")
def translator(gemma_model, gemma_tok):
    return Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"))


def test_draft_is_the_model_s_own_greedy_output(translator, gemma_model):
    result = translator.draft(SOURCE, 5, "Wir")
    ids = torch.tensor([result.prompt.input_ids])
    with torch.no_grad():
        plain = gemma_model.generate(ids, max_new_tokens=16, do_sample=False, repetition_penalty=1.05,
                                     eos_token_id=translator._eos_ids, pad_token_id=0)
    assert list(result.draft_ids) == plain[0, ids.shape[1]:].tolist()[: len(result.draft_ids)]
    assert len(result.draft_ids) == TranslatorConfig().draft_budget(len(result.prompt.source_token_positions))


def test_accepted_text_is_a_unit_complete_prefix_of_the_draft(translator):
    result = translator.draft(SOURCE, 5, "Wir")
    draft_text = translator.continuation_text(result.prompt, result.draft_ids)
    assert draft_text.startswith(result.new_text)
    accepted = translator.continuation_text(result.prompt, result.draft_ids[: result.gate.n_accepted_tokens])
    assert result.new_text == accepted[: len(result.new_text)]
    assert len(result.gate.verdicts) == min(result.gate.n_accepted_tokens + 1, len(result.draft_ids))


def test_attention_masses_partition_each_row(translator):
    attention = translator.draft(SOURCE, 5, "Wir").attention
    total = attention.mass_accessible + attention.mass_inaccessible + attention.mass_draft + attention.mass_other
    assert np.allclose(total, 1.0, atol=1e-5)
    assert attention.source.shape[0] == len(HEADS)


def test_fully_heard_source_accepts_the_whole_draft(translator):
    result = translator.draft(SOURCE, len(SOURCE.split()), "")
    assert result.gate.n_accepted_tokens == len(result.draft_ids)
    full = translator.continuation_text(result.prompt, result.draft_ids)
    assert result.new_text == complete_units_text(full, "" if result.ended else None, False)


def test_nothing_heard_accepts_nothing(gemma_model, gemma_tok):
    strict = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"),
                        policy_config=PolicyConfig(border_units=0, soft_floor_mass=0.0))
    result = strict.draft(SOURCE, 0, "")
    assert result.gate.n_accepted_tokens == 0 and result.new_text == ""


def test_empty_source_drafts_nothing(translator):
    result = translator.draft("", 0, "")
    assert result.draft_ids == () and result.new_text == ""
    assert translator.finish("  ") == ""


def test_finish_runs_to_the_end_without_gate(gemma_model, gemma_tok):
    translator = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"),
                            TranslatorConfig(max_final_tokens=12))
    text = translator.finish(SOURCE, "Wir")
    prompt = translator.prompts.render(SOURCE, "Wir")
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        plain = gemma_model.generate(ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.05,
                                     eos_token_id=translator._eos_ids, pad_token_id=0)
    assert text and text == translator.continuation_text(prompt, plain[0, ids.shape[1]:].tolist()).rstrip()


def test_chinese_target_trims_per_character(gemma_model, gemma_tok):
    translator = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="zh"))
    assert translator.char_level
    result = translator.draft(SOURCE, len(SOURCE.split()), "我们")
    assert "\ufffd" not in result.new_text


def test_plain_prompt_for_base_models_stops_at_line_end(gemma_model):
    tokenizer = gemma_tokenizer(chat=False)
    translator = Translator(gemma_model, tokenizer, HEADS, PromptConfig(style="plain", target_lang="it"),
                            TranslatorConfig(max_final_tokens=40), few_shot=[("Hello.", "Ciao.")])
    assert "\n" not in translator.finish(SOURCE)
    assert "\n" not in translator.draft(SOURCE, 4).new_text


def test_qwen3_with_chatml_template(qwen_tok):
    model = build_qwen3(len(qwen_tok))
    translator = Translator(model, qwen_tok, [HeadRef(0, 1), HeadRef(2, 3)], PromptConfig(target_lang="it"))
    result = translator.draft(SOURCE, 6, "Proponiamo")
    assert result.prompt.text.endswith("<|im_start|>assistant\nProponiamo")
    assert result.attention.source.shape[2] == len(result.prompt.source_token_positions)


def save_tiny_checkpoint(path, model, tokenizer):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def heads_file_for(model, **overrides):
    text = model.config.get_text_config()
    values = dict(model_id="tiny", direction="en-de", heads=tuple(HeadScore(h.layer, h.head, 0.5) for h in HEADS),
                  num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads)
    values.update(overrides)
    return HeadsFile(**values)


def test_from_pretrained_loads_the_conditional_generation_class(tmp_path, gemma_model, gemma_tok):
    path = save_tiny_checkpoint(tmp_path / "tiny", gemma_model, gemma_tok)
    translator = Translator.from_pretrained(TranslatorConfig(model_id=path, device="cpu"), heads_file_for(gemma_model),
                                            PromptConfig(target_lang="de"))
    assert type(translator.model).__name__ == "Gemma4ForConditionalGeneration"
    assert translator.model.dtype == torch.float32
    reference = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de")).draft(SOURCE, 5, "Wir")
    assert translator.draft(SOURCE, 5, "Wir").draft_ids == reference.draft_ids  # same weights, same drafts


def test_from_pretrained_rejects_heads_of_another_model(tmp_path, gemma_model, gemma_tok):
    path = save_tiny_checkpoint(tmp_path / "tiny", gemma_model, gemma_tok)
    with pytest.raises(HeadsFileError, match="42 layers x 8 heads"):
        Translator.from_pretrained(TranslatorConfig(model_id=path, device="cpu"),
                                   heads_file_for(gemma_model, num_hidden_layers=42, num_attention_heads=8),
                                   PromptConfig(target_lang="de"))
