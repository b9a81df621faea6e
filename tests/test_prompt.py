"""Prompt layout and word <-> token maps on real tokenizers (Gemma SentencePiece, Qwen byte-level BPE)."""
import numpy as np
import pytest

from alignatt.mt.prompt import PromptBuilder, PromptConfig, map_source_tokens, read_few_shot
from alignatt_eval.runners.offline_tokenizers import gemma_tokenizer

TOKENIZERS = ["gemma_tok", "qwen_tok"]


def tokens_text(prompt, tokenizer, unit):
    first, end = prompt.unit_token_spans[unit]
    return tokenizer.decode(list(prompt.input_ids[first:end])).strip()


def check_units_round_trip(prompt, tokenizer, source_words):
    assert prompt.n_units == len(source_words)
    for unit, word in enumerate(source_words):
        assert prompt.unit_text(unit) == word
        assert tokens_text(prompt, tokenizer, unit) == word
        positions = prompt.source_token_positions[prompt.source_token_units == unit]
        first, end = prompt.unit_token_spans[unit]
        assert list(positions) == list(range(first, end)), word


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_units_map_to_their_tokens(tok, request):
    tokenizer = request.getfixturevalue(tok)
    source = "Hello, world! Transformers' tokenisation re-uses sub-words: naïve café 2023 hello hello."
    prompt = PromptBuilder(tokenizer).render(source, "Hallo", n_accessible_units=3)
    check_units_round_trip(prompt, tokenizer, source.split())
    multi = [u for u in range(prompt.n_units) if np.sum(prompt.source_token_units == u) > 1]
    assert multi, "the sentence should contain words split into several tokens"
    assert prompt.text.endswith("Hallo")
    assert prompt.n_accessible_units == 3
    assert prompt.source_accessible_mask().sum() == np.isin(prompt.source_token_units, [0, 1, 2]).sum()


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_repeated_words_map_to_distinct_positions(tok, request):
    tokenizer = request.getfixturevalue(tok)
    prompt = PromptBuilder(tokenizer).render("the cat saw the cat")
    spans = prompt.unit_token_spans
    assert spans[0] != spans[3] and spans[1] != spans[4]
    assert tokenizer.decode(list(prompt.input_ids[spans[3][0]:spans[3][1]])).strip() == "the"


def test_source_is_found_even_where_it_also_appears_elsewhere(gemma_tok):
    """A source equal to words of the instruction or of the turn header is located in the user turn."""
    for source in ["model", "German", "user"]:
        prompt = PromptBuilder(gemma_tok, PromptConfig(target_lang="de")).render(source)
        start, end = prompt.source_char_span
        assert prompt.text[start:end] == source
        assert prompt.text[:start].endswith("<start_of_turn>user\n")


def test_empty_source(gemma_tok):
    prompt = PromptBuilder(gemma_tok).render("   ")
    assert prompt.n_units == 0 and prompt.source_token_positions.size == 0
    assert prompt.text.endswith("<start_of_turn>model\n")


def test_long_prompt_beyond_sliding_window(gemma_tok):
    words = [f"word{i}" for i in range(700)]  # > 512 tokens, the E4B sliding window
    prompt = PromptBuilder(gemma_tok).render(" ".join(words), n_accessible_units=650)
    assert prompt.n_tokens > 1024
    check_units_round_trip(prompt, gemma_tok, words)
    assert prompt.source_accessible_mask().sum() == np.sum(prompt.source_token_units < 650)


def test_history_turns_precede_the_live_source(gemma_tok):
    prompt = PromptBuilder(gemma_tok).render("and this one", "und", history=[("First one.", "Erster.")])
    start, _ = prompt.source_char_span
    assert prompt.text.index("First one.") < prompt.text.index("Erster.") < start
    assert prompt.unit_text(0) == "and"


def test_plain_style_for_base_models():
    tokenizer = gemma_tokenizer(chat=False)
    builder = PromptBuilder(tokenizer, PromptConfig(style="plain", target_lang="it"), few_shot=[("Hi.", "Ciao.")])
    prompt = builder.render("Good morning everyone", "Buongiorno")
    assert prompt.text == "English: Hi.\nItalian: Ciao.\n\nEnglish: Good morning everyone\nItalian: Buongiorno"
    assert prompt.input_ids[0] == tokenizer.bos_token_id
    check_units_round_trip(prompt, tokenizer, ["Good", "morning", "everyone"])


def test_chat_style_needs_a_template():
    with pytest.raises(ValueError, match="no chat template"):
        PromptBuilder(gemma_tokenizer(chat=False))


def test_too_many_accessible_units_is_an_error(gemma_tok):
    with pytest.raises(ValueError, match="source has 2"):
        PromptBuilder(gemma_tok).render("two words", n_accessible_units=3)


def test_whitespace_only_tokens_belong_to_no_unit():
    text = "ab  cd"
    offsets = [(0, 2), (2, 3), (3, 4), (4, 6)]  # "ab", " ", " ", "cd"
    positions, units = map_source_tokens(text, offsets, (0, 6), [(0, 2), (4, 6)])
    assert positions.tolist() == [0, 3] and units.tolist() == [0, 1]


def test_few_shot_file_is_read_once_for_agent_and_calibration(tmp_path):
    path = tmp_path / "shots.jsonl"
    path.write_text('{"src_ref": "  Good   morning. ", "tgt_ref": " Guten Morgen. "}\n')
    assert read_few_shot(path) == (("Good morning.", "Guten Morgen."),)
    assert read_few_shot(None) == ()
    path.write_text('{"src_ref": "ok", "tgt_ref": "ok"}\n{"src": "missing"}\n')
    with pytest.raises(ValueError, match="shots.jsonl:2: few-shot lines need"):
        read_few_shot(path)
