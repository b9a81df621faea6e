"""SourceState: timed units that match the prompt's units, committed-sentence queue, accessibility frontier."""
import pytest

from alignatt.asr.base import Word
from alignatt.stream.source import SourceOptions, SourceState, build_sentence
from alignatt.text_units import split_units
from alignatt.stream.transcriber import Sentence, TranscriptUpdate


def update(committed=(), tail=(), boundary_s=0.0, n_stable=None):
    """An update whose tail is all stable unless `n_stable` says otherwise."""
    sentences = tuple(Sentence(tuple(words), "agreed") for words in committed)
    return TranscriptUpdate(sentences, tuple(tail), boundary_s, len(tail) if n_stable is None else n_stable)


def test_units_match_the_text_units_and_carry_word_end_times():
    sentence = build_sentence([Word("Hello,", 0.0, 0.4), Word("world.", 0.5, 0.9)])
    assert sentence.text == "Hello, world."
    assert [u.text for u in sentence.units] == split_units(sentence.text) == ["Hello,", "world."]
    assert [u.end_s for u in sentence.units] == [0.4, 0.9]


def test_words_with_internal_spaces_split_into_units_timed_by_the_whole_word():
    words = [Word("in", 0.0, 0.2), Word(" New  York ", 0.3, 1.0), Word("today", 1.1, 1.5)]
    sentence = build_sentence(words)
    assert sentence.text == "in New York today"
    assert len(sentence.units) == len(split_units(sentence.text)) == 4
    assert [u.end_s for u in sentence.units] == [0.2, 1.0, 1.0, 1.5]


def test_standalone_punctuation_takes_the_preceding_units_end_time():
    words = [Word("yes", 0.0, 0.3), Word("-", 2.0, 2.0), Word("no", 2.1, 2.4), Word("…", 3.0, 3.0)]
    sentence = build_sentence(words)
    assert [u.text for u in sentence.units] == ["yes", "-", "no", "…"]
    assert [u.end_s for u in sentence.units] == [0.3, 0.3, 2.4, 2.4]
    # The frontier counts the punctuation unit together with the word before it.
    assert sentence.accessible_units(0.3) == 2
    assert sentence.accessible_units(2.4) == 4


def test_empty_words_are_skipped_so_counts_still_match():
    sentence = build_sentence([Word("a", 0.0, 0.1), Word("  ", 0.1, 0.2), Word("b", 0.2, 0.3)])
    assert sentence.text == "a b" and len(sentence.units) == 2


def test_char_level_units_map_to_their_words():
    sentence = build_sentence([Word("你好", 0.0, 0.5), Word("GPU4", 0.6, 0.9), Word("。", 0.9, 0.9)], char_level=True)
    assert [u.text for u in sentence.units] == split_units(sentence.text, char_level=True)
    assert [u.text for u in sentence.units] == ["你", "好", "GPU4", "。"]
    assert [u.end_s for u in sentence.units] == [0.5, 0.5, 0.9, 0.9]


def test_frontier_uses_absolute_time_for_a_sentence_starting_at_30_s():
    state = SourceState()
    first = [Word("It", 28.0, 28.5), Word("ended.", 28.6, 29.9)]
    second = [Word("Then", 30.0, 31.0), Word("more", 31.1, 31.5)]
    state.apply(update(committed=[first], tail=second, boundary_s=29.9))
    assert state.open_text == "Then more"
    # Utterance-relative ends (1.0 s, 1.5 s) would count as heard at 30.5 s: absolute ones are not.
    assert state.accessible_units(30.5) == 0
    assert state.accessible_units(31.0) == 1
    assert state.accessible_units(31.5) == 2


def test_margin_delays_accessibility():
    state = SourceState(SourceOptions(margin_ms=300))
    state.apply(update(tail=[Word("a", 0.0, 1.0), Word("b", 1.0, 2.0)]))
    assert state.accessible_units(1.2) == 0
    assert state.accessible_units(1.3) == 1
    assert state.accessible_units(10.0) == 2


def test_frontier_is_a_prefix():
    # A later unit with an earlier time (aligner noise) never makes the frontier jump over an unheard unit.
    sentence = build_sentence([Word("a", 0.0, 1.0), Word("b", 1.0, 3.0), Word("c", 1.5, 2.0)])
    assert sentence.accessible_units(2.5) == 1


def test_committed_sentences_queue_until_consumed():
    state = SourceState()
    state.apply(update(committed=[[Word("One.", 0, 1)], [Word("Two.", 1, 2)]], tail=[Word("Three", 2, 3)]))
    assert state.has_pending
    first = state.pop_committed()
    assert (first.text, first.reason) == ("One.", "agreed")
    assert state.pop_committed().text == "Two."
    assert state.pop_committed() is None and not state.has_pending
    assert state.n_committed == 2  # counted, not kept: a long talk's memory stays bounded
    state.apply(update(tail=[]))
    assert state.open_text == "" and state.accessible_units(100.0) == 0


def test_negative_margin_is_rejected():
    with pytest.raises(ValueError):
        SourceOptions(margin_ms=-1)


def test_unstable_units_are_not_accessible_however_long_ago_they_ended():
    tail = [Word("we", 0.0, 0.3), Word("propose", 0.4, 0.9), Word("a", 1.0, 1.1), Word("method", 1.2, 1.6)]
    state = SourceState(SourceOptions(margin_ms=0, require_stable=True))
    state.apply(update(tail=tail, n_stable=2))
    assert state.open_sentence.n_stable_units == 2
    assert state.accessible_units(10.0) == 2  # "a method" changed in the last hypothesis
    loose = SourceState(SourceOptions(margin_ms=0, require_stable=False))
    loose.apply(update(tail=tail, n_stable=2))
    assert loose.accessible_units(10.0) == 4


def test_frontier_needs_both_stability_and_the_margin():
    tail = [Word("we", 0.0, 0.3), Word("propose", 0.4, 0.9), Word("a", 1.0, 1.1), Word("method", 1.2, 1.6)]
    state = SourceState(SourceOptions(margin_ms=500, require_stable=True))
    state.apply(update(tail=tail, n_stable=3))
    assert state.accessible_units(1.55) == 2  # "a" ended at 1.1 s: 0.5 s of audio follows it only at 1.6 s
    assert state.accessible_units(1.6) == 3
    assert state.accessible_units(5.0) == 3  # "method" is unstable


def test_committed_sentences_are_stable():
    state = SourceState()
    state.apply(update(committed=[[Word("Done.", 0.0, 0.5)]], tail=[], n_stable=0))
    assert all(u.stable for u in state.pop_committed().units)


def test_words_after_an_uncommitted_sentence_end_wait_for_its_commit():
    tail = [Word("Hi", 0.0, 0.3), Word("there!", 0.4, 0.8), Word("My", 1.0, 1.2), Word("name", 1.3, 1.6)]
    state = SourceState(SourceOptions(margin_ms=0, require_stable=False))
    state.apply(update(tail=tail, n_stable=3))
    assert state.open_text == "Hi there!" and state.held_text == "My name"
    assert state.accessible_units(10.0) == 2 and state.open_sentence.n_stable_units == 2
    # Ellipses and abbreviations do not end a sentence, as in the transcriber.
    state.apply(update(tail=[Word("Dr.", 0.0, 0.3), Word("Smith", 0.4, 0.8), Word("said...", 0.9, 1.2),
                             Word("well", 1.3, 1.6)]))
    assert state.open_text == "Dr. Smith said... well" and state.held_text == ""
    # Once the first sentence commits, the held words are the open sentence.
    state.apply(update(committed=[tail[:2]], tail=tail[2:]))
    assert state.pop_committed().text == "Hi there!" and state.open_text == "My name"
    whole = SourceState(SourceOptions(margin_ms=0, require_stable=False, first_sentence_only=False))
    whole.apply(update(tail=tail, n_stable=3))
    assert whole.open_text == "Hi there! My name" and whole.accessible_units(10.0) == 4
