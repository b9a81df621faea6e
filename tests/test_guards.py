"""The guards against premature sentence ends and lost content, as pure functions."""
import pytest

from alignatt.policy.guards import (GuardOptions, cut_loop, drop_loop_copies, ends_in_loop, ends_sentence,
                                    final_pass_must_continue, hold_sentence_end, strip_sentence_final,
                                    trim_repeated_start)


@pytest.mark.parametrize("text,expected", [
    ("we propose a method.", "we propose a method"),
    ("is it?", "is it"),
    ('he said "stop."', 'he said "stop'),
    ("wait...", "wait"),
    ("Hello, world", "Hello, world"),
    ("好的。", "好的"),
    (".", ""),
])
def test_strip_sentence_final(text, expected):
    assert strip_sentence_final(text) == expected


def test_hold_sentence_end_keeps_inner_full_stops_only():
    assert hold_sentence_end(" Ich bin Sarah.", False) == " Ich bin"
    assert hold_sentence_end(" Ich bin Sarah. Heute", False) == " Ich bin Sarah. Heute"
    assert hold_sentence_end(" Ja. Nein!", False) == ""
    assert hold_sentence_end(" Ja, gut", False) == " Ja, gut"
    assert hold_sentence_end("我是萨拉。", True) == "我是萨拉"
    assert ends_sentence("Sarah.”") and not ends_sentence("Sarah,")


def test_trim_repeated_start():
    assert trim_repeated_start("Ich bin Sarah", " bin Sarah und heute", False, 2) == " und heute"
    assert trim_repeated_start("Ich bin Sarah.", " Bin Sarah, und", False, 2) == " und"  # case, punctuation ignored
    # German relative clauses repeat one word legitimately ("die die"): one unit is below the default of 2.
    assert trim_repeated_start("Leute, die", " die Arbeit machen", False, 2) == " die Arbeit machen"
    assert trim_repeated_start("Leute, die", " die Arbeit", False, 0) == " die Arbeit"
    assert trim_repeated_start("a b", " a b", False, 2) == ""


def test_cut_loop_stops_before_the_copy_that_completes_a_loop():
    # Seen on the proxy (held-out talk ccpXHNfaoy, wait-k1): one word for the rest of the budget.
    looping = " indem man Schritt -mitunter -mitunter -mitunter -mitunter -mitunter -mitunter"
    assert cut_loop("Im Alltag", looping, False, 4) == " indem man Schritt -mitunter -mitunter -mitunter"
    # A group of two units (csJIsDTYMW, low preset), compared without case and punctuation.
    assert cut_loop("", "a -von -die -Von -die -von die, -von -die -von", False, 4) == "a -von -die -Von -die -von die,"
    # Copies already written count: the text's first unit would be the fourth.
    assert cut_loop("es geht x x x", " x und y", False, 4) == ""
    assert cut_loop("es geht x x", " x und y", False, 4) == " x und y"
    assert cut_loop("", "哈哈哈哈哈好", True, 4) == "哈哈哈"


def test_a_final_pass_drops_the_copies_and_keeps_what_follows():
    # The drafts were cut at the loop; the final pass goes on with one more copy, then the real translation.
    assert drop_loop_copies("Wir Haus Haus Haus", " Haus und dann gehen wir", False, 4) == " und dann gehen wir"
    assert drop_loop_copies("", " Nein, nein, nein, nein, das war es.", False, 4) == " Nein, nein, nein, das war es."
    # A copy that begins in the written prefix: only its units in the text can go.
    assert drop_loop_copies("a b a b a b a", " b c", False, 4) == " c"
    assert drop_loop_copies("", " x x x x x x y x x", False, 4) == " x x x y x x"
    assert drop_loop_copies("", "哈哈哈哈哈好", True, 4) == "哈哈哈好"


def test_a_loop_with_aborted_copies_between_its_copies_is_a_loop():
    # The demo talk's last sentence (whisper's 30 s window, 2026-12-02): a restarted copy ("in in") hid the loop.
    loop = " in der absoluten Ungeschimpftheit"
    final = loop * 3 + " in" + loop * 3 + " in Weg."
    assert drop_loop_copies(" für gute Autorität", final, False, 4) == loop * 3 + " in Weg."
    assert cut_loop(" für gute Autorität", final, False, 4) == loop * 3
    assert ends_in_loop(loop * 3 + " in der" + loop, False, 4)
    assert not ends_in_loop(loop * 3 + " der" + loop, False, 4)  # "der" does not start a copy
    # A draft that stops inside the fourth copy leaves none of it behind (the demo wrote a stray "in" there), also
    # when the copies were written by earlier drafts; what goes on past the copy's start is written.
    for start in (" in", " in der", " in der absoluten"):
        assert cut_loop(" für gute Autorität", loop * 3 + start, False, 4) == loop * 3
        assert cut_loop(" für gute Autorität" + loop * 3, start, False, 4) == ""
    assert cut_loop(" für gute Autorität", loop * 3 + " in der Stadt", False, 4) == loop * 3 + " in der Stadt"
    assert cut_loop("", "a b a b a b a", False, 4) == "a b a b a b"
    for stutter in (" in in", " in der in"):  # an aborted copy first, as the loop guard allows
        assert cut_loop(" für gute Autorität", loop * 3 + stutter, False, 4) == loop * 3
    assert cut_loop(" a b b b a b b b a b b b", " a", False, 4) == ""  # not only the shortest capped group
    assert cut_loop("", "一个一个一个一", True, 4) == "一个一个一个"
    # A final pass that ends inside that copy (its budget spent) keeps none of it; what follows a loop stays.
    assert drop_loop_copies(" für gute Autorität", loop * 5 + " in der", False, 4) == loop * 3
    assert drop_loop_copies(" für gute Autorität" + loop * 3, " in der", False, 4) == ""
    assert drop_loop_copies(" für gute Autorität", loop * 3 + " in Weg.", False, 4) == loop * 3 + " in Weg."


def test_cut_loop_leaves_ordinary_repetition_alone():
    for text in ("Nein, nein, nein.", "sehr, sehr gut", "die die Arbeit machen", "Schritt für Schritt für Schritt",
                 " 1 000 000 000 000 Euro", " * * * * von fünf",  # digits and punctuation repeat legitimately
                 "es war das Ende, es war das Glück, es war das Leid, es war das Licht"):  # anaphora
        assert cut_loop("", text, False, 4) == text == drop_loop_copies("", text, False, 4)
    assert cut_loop("", "a a a a a", False, 0) == "a a a a a"  # off
    with pytest.raises(ValueError, match="loop_repeats"):
        GuardOptions(loop_repeats=1)


def test_a_generation_ends_in_a_loop_once_its_last_group_repeats():
    assert ends_in_loop(" so, so, so, so", False, 4) and not ends_in_loop(" so, so, so", False, 4)
    assert ends_in_loop(" a -von -die -von -die -von -die -von -die", False, 4)
    assert not ends_in_loop(" -von -die -von -die -von -die -von -di", False, 4)  # the last word is not complete
    assert not ends_in_loop(" x x x x y", False, 4)  # the loop is over
    assert not ends_in_loop(" 1 1 1 1", False, 4) and not ends_in_loop(" x x x x", False, 0)
    assert ends_in_loop("哈哈哈哈", True, 4)


def test_guard_options_reject_negative_repeat():
    with pytest.raises(ValueError):
        GuardOptions(min_repeat_units=-1)


def test_a_final_pass_must_continue_after_an_early_sentence_end():
    assert final_pass_must_continue("Ich bin Sarah.", n_source_units=9, n_units_heard_for_prefix=3)
    assert not final_pass_must_continue("Ich bin Sarah.", n_source_units=3, n_units_heard_for_prefix=3)
    assert not final_pass_must_continue("Ich bin", n_source_units=9, n_units_heard_for_prefix=3)
