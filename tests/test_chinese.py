"""Chinese targets: units per character on the real Gemma tokenizer, how units join, sentence ends, and the
per-character emission times OmniSTEval's character-level scoring counts."""
import pytest

from alignatt.cli.omnisteval import scored_delays
from alignatt.policy.gate import complete_units_text
from alignatt.policy.guards import ends_sentence, hold_sentence_end, strip_sentence_final
from alignatt.text_units import join_units, split_units

TRANSLATION = "我们在ACL 2023上提出了一种新方法，名为AlignAtt。"


def test_every_prefix_of_real_tokens_keeps_whole_characters_and_runs(gemma_tok):
    ids = gemma_tok.encode(TRANSLATION, add_special_tokens=False)
    assert gemma_tok.decode(ids) == TRANSLATION
    kept = [complete_units_text(gemma_tok.decode(ids[:n]), None, char_level=True) for n in range(len(ids) + 1)]
    for text in kept:
        assert TRANSLATION.startswith(text) and "\ufffd" not in text
    # A Latin run may still grow while the draft runs out inside it; a CJK character is complete at once.
    assert not any(text.endswith(("AC", "Align")) for text in kept)
    assert kept[-1] == TRANSLATION


def test_units_and_joins():
    units = split_units(TRANSLATION, char_level=True)
    assert units[:5] == ["我", "们", "在", "ACL", "2023"]
    assert units[-5:] == ["，", "名", "为", "AlignAtt", "。"]
    assert join_units(units, char_level=True) == TRANSLATION  # no space between characters, one between runs
    assert join_units(["new", "method", "。"], char_level=True) == "new method。"
    assert join_units(["Es", "war"]) == "Es war"


def test_full_width_sentence_ends():
    assert ends_sentence("我们提出了新方法。") and ends_sentence("真的吗？") and ends_sentence("太好了！」")
    assert not ends_sentence("我们提出了，")
    assert hold_sentence_end("我们提出了新方法。", char_level=True) == "我们提出了新方法"
    assert hold_sentence_end("新方法。然后", char_level=True) == "新方法。然后"  # a full stop inside the text stays
    assert strip_sentence_final("你好。") == "你好"


@pytest.mark.parametrize("units, expected", [
    (["我", "们", "ACL", "2023", "上"], [1, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5]),  # "我们ACL 2023上"
    (["new", "method", "。"], [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3]),  # the space takes the next word's time
])
def test_scored_delays_time_every_character_omnisteval_counts(units, expected):
    delays = list(range(1, len(units) + 1))
    timed = scored_delays(units, delays, "zh")
    assert timed == expected and len(timed) == len(list(join_units(units, char_level=True)))
    assert scored_delays(["Es", "war"], [1, 2], "de") == [1, 2]
