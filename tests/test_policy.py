"""AlignAtt decisions on hand-made attention (read by `alignatt.mt.alignment`, judged by `alignatt.policy.gate`),
and trimming to whole target units."""
import numpy as np
import pytest

from alignatt.mt.alignment import AlignmentConfig, TokenAlignment, online_zscore, read_alignments
from alignatt.policy.gate import GateConfig, complete_units_text, gate_draft
from alignatt.policy.policies import AlignAttPolicy

UNITS = np.array([0, 0, 1, 2, 3, 4])  # six source tokens, unit 0 split in two tokens
NO_FILTER = AlignmentConfig(median_filter_width=1)


def gate(attention, units, inaccessible, n_accessible_units, reading=AlignmentConfig(), config=GateConfig()):
    """The gate on (H, R, S) attention and (H, R) inaccessible masses, read as the translator reads its drafts."""
    return gate_draft(read_alignments(attention, units, inaccessible, reading), n_accessible_units, config)


def peaked(peaks, n_tokens=6, heads=1, background=0.0):
    """(H, R, S) attention whose row r peaks on source token peaks[r] (the same for every head)."""
    rows = np.full((len(peaks), n_tokens), background)
    for r, token in enumerate(peaks):
        rows[r, token] = 1.0
    return np.repeat(rows[None], heads, axis=0)


def masses(values, heads=1):
    return np.repeat(np.asarray(values, dtype=float)[None], heads, axis=0)


def test_stops_at_first_token_beyond_frontier_plus_border():
    attention = peaked([1, 2, 3, 4, 5])  # units 0, 1, 2, 3, 4
    decision = gate(attention, UNITS, masses([0, 0, 0.9, 0.9, 0.9]), n_accessible_units=2, reading=NO_FILTER)
    assert decision.n_accepted_tokens == 3  # unit 3 >= 2 + border 1
    assert [v.accepted for v in decision.verdicts] == [True, True, True, False]
    assert decision.verdicts[-1].aligned_unit == 3


def test_border_zero_stops_on_the_first_inaccessible_unit():
    decision = gate(peaked([1, 2, 3, 4, 5]), UNITS, masses([0, 0, .9, .9, .9]), 2, NO_FILTER,
                    GateConfig(border_units=0))
    assert decision.n_accepted_tokens == 2


def test_soft_floor_accepts_a_token_with_little_inaccessible_mass():
    attention = peaked([1, 2, 3, 4, 5])
    decision = gate(attention, UNITS, masses([0, 0, 0, 0.01, 0.9]), 2, NO_FILTER)
    assert decision.n_accepted_tokens == 4
    assert decision.verdicts[3].accepted and decision.verdicts[3].aligned_unit == 3


def test_everything_accessible_accepts_the_whole_draft():
    decision = gate(peaked([5, 5, 5, 5]), UNITS, masses([0.9] * 4), n_accessible_units=5, reading=NO_FILTER)
    assert decision.n_accepted_tokens == 4


def test_median_across_heads():
    attention = np.stack([peaked([2])[0], peaked([5])[0], peaked([5])[0]])  # units 1, 4, 4 -> median 4
    assert gate(attention, UNITS, masses([0.5], 3), 2, NO_FILTER).n_accepted_tokens == 0
    attention = np.stack([peaked([2])[0], peaked([2])[0], peaked([5])[0]])  # units 1, 1, 4 -> median 1
    assert gate(attention, UNITS, masses([0.5], 3), 2, NO_FILTER).n_accepted_tokens == 1


def test_zscore_sees_past_an_attention_sink():
    """Every row puts most mass on the first source token; the online z-score finds the moving peak."""
    rows = np.full((4, 6), 0.02)
    rows[:, 0] = 0.8
    for r, token in enumerate([2, 2, 4, 5]):
        rows[r, token] = 0.15
    attention, inaccessible = rows[None], masses([0.2] * 4)
    with_z = gate(attention, UNITS, inaccessible, 1, AlignmentConfig(median_filter_width=1, zscore_min_rows=2))
    assert with_z.n_accepted_tokens == 2 and with_z.verdicts[-1].aligned_unit == 3
    raw = gate(attention, UNITS, inaccessible, 1, AlignmentConfig(median_filter_width=1, zscore_min_rows=99))
    assert raw.n_accepted_tokens == 4  # the sink hides the look-ahead


def test_online_zscore_is_causal():
    rows = np.random.default_rng(0).random((5, 8))
    changed = rows.copy()
    changed[4] += 10
    assert np.array_equal(online_zscore(rows, 2, 1e-6)[:4], online_zscore(changed, 2, 1e-6)[:4])


def test_median_filter_ignores_a_one_token_spike():
    units = np.arange(12)
    row = np.zeros(12)
    row[2:7] = 0.5  # broad bump on accessible units 2..6
    row[10] = 0.9  # lone spike far ahead
    attention, inaccessible = row[None, None], masses([0.9])
    assert gate(attention, units, inaccessible, 7, AlignmentConfig()).n_accepted_tokens == 1
    assert gate(attention, units, inaccessible, 7, NO_FILTER).n_accepted_tokens == 0


def test_empty_source_accepts_nothing():
    decision = gate(np.zeros((2, 3, 0)), np.zeros(0, dtype=int), np.zeros((2, 3)), 0)
    assert decision.n_accepted_tokens == 0 and not decision.stopped


def test_rows_read_in_parts_read_as_rows_read_at_once():
    """The translator reads each draft row once, as it is captured: rows first_row.. read against the rows before
    them give exactly what reading every row at once gives (z-score, median filter and mean over heads included)."""
    rng = np.random.default_rng(3)
    attention = rng.random((3, 9, 6)).astype(np.float32)
    inaccessible = rng.random((3, 9)).astype(np.float32)
    at_once = read_alignments(attention, UNITS, inaccessible)
    in_parts = ()
    for end in (1, 2, 5, 6, 9):
        in_parts += read_alignments(attention[:, :end], UNITS, inaccessible[:, :end], first_row=len(in_parts))
    assert in_parts == at_once and len(at_once) == 9


def test_the_policy_s_stop_rule_stops_where_the_gate_does():
    aligned = [TokenAlignment((u,), float(u), mass) for u, mass in [(0, .9), (2, .9), (3, .01), (3, .5), (1, .9)]]
    policy = AlignAttPolicy(gate=GateConfig(border_units=1, soft_floor_mass=0.03))
    decision = gate_draft(aligned, 2, policy.gate)
    stops = [policy.stop_rule(2)(a) for a in aligned]
    assert decision.n_accepted_tokens == 3 and decision.stopped
    assert stops.index(True) == decision.n_accepted_tokens  # the first token it stops is the gate's stopping one


@pytest.mark.parametrize("accepted, continuation, expected", [
    (" Hallo Wel", "t", " Hallo"),  # word cut inside: drop the partial word
    (" Hallo Welt", " und", " Hallo Welt"),  # next token starts a new word
    (" Hallo Welt", ",", " Hallo"),  # punctuation still belongs to the word
    (" Hallo Welt", None, " Hallo"),  # draft ran out: the last word may go on
    (" Hallo Welt.", "", " Hallo Welt."),  # end of translation
    (" Hallo ", None, " Hallo"),  # trailing space closes the word
    (" Grü\ufffd", None, ""),  # half a multi-byte character
    ("", None, ""),
])
def test_word_trim(accepted, continuation, expected):
    assert complete_units_text(accepted, continuation, char_level=False) == expected


@pytest.mark.parametrize("accepted, continuation, expected", [
    ("我们是", None, "我们是"),  # every CJK character is complete on its own
    ("我们是AC", "L", "我们是"),  # a Latin run inside Chinese is a word
    ("我们是ACL", "的", "我们是ACL"),
    ("我们\ufffd", "x", "我们"),
    ("我们，", None, "我们，"),
])
def test_chinese_char_trim(accepted, continuation, expected):
    assert complete_units_text(accepted, continuation, char_level=True) == expected
