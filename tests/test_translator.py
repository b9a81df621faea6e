"""The translator end to end on tiny random-init models with real tokenizers."""
import copy
import dataclasses
import functools

import numpy as np
import pytest
import torch

from alignatt.mt.capture import HeadRef
from alignatt.mt.decoding import Generated
from alignatt.mt.heads import HeadsFile, HeadScore, HeadsFileError
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.translator import Translator, TranslatorConfig
from alignatt.policy.gate import GateConfig, complete_units_text
from alignatt.policy.guards import GuardOptions, final_pass_stop, final_pass_text
from alignatt.policy.policies import AlignAttPolicy, SentenceDecisions, may_end
from alignatt_eval.runners.offline_tokenizers import gemma_tokenizer, qwen_tokenizer
from tiny_models import build_gemma4_conditional, build_qwen3

HEADS = [HeadRef(2, 0), HeadRef(5, 1), HeadRef(1, 3), HeadRef(4, 2)]  # full, KV-shared full, sliding, shared
SOURCE = "We propose a new method for simultaneous speech translation with large language models."


@pytest.fixture(scope="module")
def gemma_model(gemma_tok):
    return build_gemma4_conditional(vocab_size=len(gemma_tok))


@pytest.fixture(scope="module")
def translator(gemma_model, gemma_tok):
    return Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"))


def decided(translator, result, n_heard, policy=AlignAttPolicy()):
    """What AlignAtt writes from a draft, with the gate's verdicts."""
    return policy.decide(result, translator, n_heard, SentenceDecisions())


def gated(translator, source, n_heard, prefix="", policy=AlignAttPolicy()):
    """A draft as the cascade makes it under AlignAtt (stopped after the first token the gate stops), and what the
    policy writes from it."""
    result = translator.draft(source, n_heard, prefix, stop_at=policy.stop_rule(n_heard))
    return result, decided(translator, result, n_heard, policy)


def finished(translator, source, prefix="", guards=GuardOptions(), **kwargs):
    """A final pass with the guards the cascade applies to it."""
    text = translator.finish(source, prefix, stop_text=final_pass_stop(guards, translator.char_level), **kwargs)
    return final_pass_text(prefix, text, translator.char_level, guards)


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
    decision = decided(translator, result, 5)
    draft_text = translator.continuation_text(result.prompt, result.draft_ids)
    assert draft_text.startswith(decision.text)
    accepted = translator.continuation_text(result.prompt, result.draft_ids[: decision.gate.n_accepted_tokens])
    assert decision.text == accepted[: len(decision.text)]
    assert len(decision.gate.verdicts) == min(decision.gate.n_accepted_tokens + 1, len(result.draft_ids))


def test_a_draft_stopped_at_the_gate_reads_its_tokens_as_the_whole_draft_does(translator):
    whole = translator.draft(SOURCE, 5, "Wir")
    early, decision = gated(translator, SOURCE, 5, "Wir")
    assert decision.gate.stopped, "the premise: the gate stops this draft"
    assert len(early.draft_ids) < len(whole.draft_ids) and early.draft_ids == whole.draft_ids[: len(early.draft_ids)]
    assert early.alignments == whole.alignments[: len(early.alignments)]  # each row read once, the same either way
    assert decision == decided(translator, whole, 5)


def test_attention_masses_partition_each_row(translator):
    attention = translator.draft(SOURCE, 5, "Wir").attention
    total = attention.mass_accessible + attention.mass_inaccessible + attention.mass_draft + attention.mass_other
    assert np.allclose(total, 1.0, atol=1e-5)
    assert attention.source.shape[0] == len(HEADS)


def judged_tokens(result, query_row):
    """Draft tokens that have a row to be judged by: under "own" the last generated token was never fed back."""
    n = len(result.draft_ids)
    return n if query_row == "predicting" or result.ended else n - 1


@pytest.mark.parametrize("query_row", ["own", "predicting"])
def test_fully_heard_source_accepts_every_judged_token(gemma_model, gemma_tok, query_row):
    translator = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"), query_row=query_row)
    policy = AlignAttPolicy(guards=GuardOptions(hold_sentence_end=False))
    result = translator.draft(SOURCE, len(SOURCE.split()), "")
    decision = decided(translator, result, len(SOURCE.split()), policy)
    assert decision.gate.n_accepted_tokens == len(decision.gate.verdicts) == judged_tokens(result, query_row)
    assert len(result.alignments) == judged_tokens(result, query_row)
    accepted = translator.continuation_text(result.prompt, result.draft_ids[: decision.gate.n_accepted_tokens])
    rest = translator.continuation_text(result.prompt, result.draft_ids)[len(accepted):]
    expected = complete_units_text(accepted, rest if rest else ("" if may_end(result, policy.guards) else None), False)
    assert decision.text == expected


def eager_attention(model, ids):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return eager(torch.tensor([ids]), output_attentions=True).attentions


@pytest.mark.parametrize("query_row", ["own", "predicting"])
def test_gate_reads_the_model_s_own_attention_on_the_declared_rows(gemma_model, gemma_tok, query_row):
    translator = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"), query_row=query_row)
    result = translator.draft(SOURCE, 5, "Wir")
    prompt, n = result.prompt, judged_tokens(result, query_row)
    reference = eager_attention(gemma_model, list(prompt.input_ids) + list(result.draft_ids))
    # Row of draft token t (at position n_tokens + t): its own position, or the one before it.
    rows = np.arange(n) + prompt.n_tokens - (1 if query_row == "predicting" else 0)
    for h, ref in enumerate(HEADS):
        expected = reference[ref.layer][0, ref.head][rows][:, prompt.source_token_positions].numpy()
        assert np.allclose(result.attention.source[h, :n], expected, atol=2e-5)
    assert result.attention.n_rows >= n


@pytest.mark.slow
def test_end_of_turn_is_a_stop_id_even_if_the_generation_config_omits_it(gemma_model, gemma_tok):
    gemma_model.generation_config.eos_token_id = 1  # only <eos>, as some checkpoints ship it
    translator = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"))
    assert gemma_tok.convert_tokens_to_ids("<end_of_turn>") in translator._eos_ids
    qwen_model = build_qwen3(len(qwen_tokenizer()))
    qwen = Translator(qwen_model, qwen_tokenizer(), [HeadRef(0, 1)], PromptConfig(target_lang="it"))
    assert qwen_tokenizer().convert_tokens_to_ids("<|im_end|>") in qwen._eos_ids


def favouring_model(token_ids, vocab_size, seed):
    """A tiny model whose greedy output is always one of `token_ids` (their logits dominate)."""
    model = build_gemma4_conditional(vocab_size=vocab_size, seed=seed)

    def favour(module, inputs, output):
        output[..., token_ids] += 1000.0
        return output

    model.lm_head.register_forward_hook(favour)
    return model


def eos_first_model(gemma_tok):
    """A tiny model whose greedy translation always ends at once."""
    return favouring_model([1, gemma_tok.convert_tokens_to_ids("<end_of_turn>")], len(gemma_tok), seed=1)


def test_final_pass_after_an_early_full_stop_goes_on(gemma_tok):
    translator = Translator(eos_first_model(gemma_tok), gemma_tok, HEADS, PromptConfig(target_lang="de"))
    source = "I am Sarah and today I will talk about machine translation."
    assert translator.finish(source, "Ich bin Sarah.") == ""  # the model would stop after the early full stop
    rest = translator.finish(source, "Ich bin Sarah.", must_continue=True)
    assert rest.strip(), "the rest of the source sentence must still be translated"


def test_draft_end_is_held_while_the_sentence_is_open(gemma_tok):
    translator = Translator(eos_first_model(gemma_tok), gemma_tok, HEADS, PromptConfig(target_lang="de"))
    # A draft that ends at once: its end completes nothing by default, and ends the text when the guard is off.
    first = translator.draft(SOURCE, len(SOURCE.split()), "Wir")
    assert first.ended and not may_end(first, GuardOptions())
    assert may_end(first, GuardOptions(hold_draft_end=False))


def looping_model(gemma_tok, word=" Haus"):
    """A tiny model whose greedy translation repeats one word for the rest of its budget."""
    return favouring_model(gemma_tok.encode(word, add_special_tokens=False), len(gemma_tok), seed=2)


@pytest.mark.slow
def test_a_degenerate_loop_is_cut_in_drafts_and_final_passes(gemma_tok):
    translator = Translator(looping_model(gemma_tok), gemma_tok, HEADS, PromptConfig(target_lang="de"))
    loose = GuardOptions(loop_repeats=0)
    assert finished(translator, SOURCE, "Wir", loose).split().count("Haus") > 10  # what the model writes
    assert finished(translator, SOURCE, "Wir") == " Haus Haus Haus"
    assert finished(translator, SOURCE, "Wir Haus Haus") == " Haus"  # copies already written count
    everything_heard = len(SOURCE.split())
    assert gated(translator, SOURCE, everything_heard, "Wir")[1].text == " Haus Haus Haus"
    assert gated(translator, SOURCE, everything_heard, "Wir",
                 AlignAttPolicy(guards=loose))[1].text.split().count("Haus") > 3


def test_a_looping_final_pass_stops_early_with_the_same_text(gemma_tok):
    translator = Translator(looping_model(gemma_tok), gemma_tok, HEADS, PromptConfig(target_lang="de"))
    generate = translator.decoder.generate
    generated_tokens = []

    def recording(request, stop=True):
        if not stop:  # what the model generates without the loop stop
            request = dataclasses.replace(request, generate_kwargs={})
        generated = generate(request)
        generated_tokens.append(len(generated.token_ids))
        return generated

    translator.decoder.generate = recording
    stopped = finished(translator, SOURCE, "Wir")
    translator.decoder.generate = functools.partial(recording, stop=False)
    assert stopped == finished(translator, SOURCE, "Wir") == " Haus Haus Haus"
    haus_tokens = len(gemma_tok.encode(" Haus", add_special_tokens=False))
    assert generated_tokens[0] == 8 * haus_tokens < generated_tokens[1]  # 2 x loop_repeats copies, then it stops
    translator.decoder.generate = recording
    assert finished(translator, SOURCE, "Wir Haus Haus Haus") == ""
    assert generated_tokens[-1] == 5 * haus_tokens  # the copies already written count


def test_finish_budget_grows_with_the_source():
    config = TranslatorConfig(max_final_tokens=160)
    assert [config.final_budget(n) for n in (0, 2, 3, 20, 50, 60)] == [32, 32, 33, 84, 160, 160]


def test_nothing_heard_accepts_nothing(gemma_model, gemma_tok):
    translator = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"))
    strict = AlignAttPolicy(gate=GateConfig(border_units=0, soft_floor_mass=0.0))
    result, decision = gated(translator, SOURCE, 0, "", strict)
    assert decision.gate.n_accepted_tokens == 0 and decision.text == ""
    assert len(result.alignments) == 1  # the draft stopped after its first token


def test_empty_source_drafts_nothing(translator):
    result = translator.draft("", 0, "")
    assert result.draft_ids == () and result.alignments == ()
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
    assert "\ufffd" not in gated(translator, SOURCE, len(SOURCE.split()), "我们")[1].text


@pytest.mark.slow
def test_plain_prompt_for_base_models_stops_at_line_end(gemma_model):
    tokenizer = gemma_tokenizer(chat=False)
    translator = Translator(gemma_model, tokenizer, HEADS, PromptConfig(style="plain", target_lang="it"),
                            TranslatorConfig(max_final_tokens=40), few_shot=[("Hello.", "Ciao.")])
    assert "\n" not in translator.finish(SOURCE)
    assert "\n" not in gated(translator, SOURCE, 4)[1].text


@pytest.mark.slow
def test_plain_translation_ends_where_the_model_starts_another_example(gemma_model):
    """A base model that copies English for a while can go on with the prompt's layout on the same line (held-out
    talk DyXpuURBMP, 2026-12-02: "... namely Sebastian's German: Hallo, ich bin Kelly, ..." and the talk's start
    translated again): the label ends the translation, as a line break does."""
    tokenizer = gemma_tokenizer(chat=False)
    translator = Translator(gemma_model, tokenizer, HEADS, PromptConfig(style="plain", target_lang="de"),
                            few_shot=[("Hello.", "Hallo.")])
    scripted = tokenizer.encode(" namely Sebastian's German: Hallo, ich bin Kelly", add_special_tokens=False)
    translator.decoder.generate = lambda request: Generated(scripted, None)
    assert translator.finish(SOURCE, "Wir danken") == " namely Sebastian's"
    prompt = translator.prompts.render(SOURCE)
    for text, kept in ((" namely English: Hello", " namely"), (" eins\nGerman: zwei", " eins"), (" eins", " eins")):
        draft_ids, ended = translator._split_end(prompt, tokenizer.encode(text, add_special_tokens=False))
        assert translator.continuation_text(prompt, draft_ids) == kept and ended == (kept != text)
    # Generation stops there too, and not at a word that only begins like a label.
    stop = translator._plain_end[0]
    for text, stops in ((" Sebastian's German:", True), (" Germany", False), (" English:", True)):
        ids = torch.tensor([tokenizer.encode("English: x\nGerman:" + text, add_special_tokens=False)])
        assert bool(stop(ids, None)[0]) == stops


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


@pytest.mark.slow
def test_from_pretrained_loads_the_conditional_generation_class(tmp_path, gemma_model, gemma_tok):
    path = save_tiny_checkpoint(tmp_path / "tiny", gemma_model, gemma_tok)
    translator = Translator.from_pretrained(TranslatorConfig(model_id=path, device="cpu"), heads_file_for(gemma_model),
                                            PromptConfig(target_lang="de"))
    assert type(translator.model).__name__ == "Gemma4ForConditionalGeneration"
    assert translator.model.dtype == torch.float32
    reference = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de")).draft(SOURCE, 5, "Wir")
    assert translator.draft(SOURCE, 5, "Wir").draft_ids == reference.draft_ids  # same weights, same drafts


@pytest.mark.slow
def test_from_pretrained_rejects_heads_of_another_model(tmp_path, gemma_model, gemma_tok):
    path = save_tiny_checkpoint(tmp_path / "tiny", gemma_model, gemma_tok)
    with pytest.raises(HeadsFileError, match="42 layers x 8 heads"):
        Translator.from_pretrained(TranslatorConfig(model_id=path, device="cpu"),
                                   heads_file_for(gemma_model, num_hidden_layers=42, num_attention_heads=8),
                                   PromptConfig(target_lang="de"))
