"""Guards against premature sentence endings and lost content, shared by every simultaneous policy.

A translator that sees a source prefix likes to finish it: an ASR hypothesis of a partial sentence often ends
in a full stop, and a draft often ends (EOS, end of turn) where the heard source ends. Written text is final,
so one premature full stop would make every later draft continue a finished sentence. The guards:
- the open sentence enters the prompt without the trailing sentence-final punctuation the ASR put there;
- while the source sentence is open, a draft's end does not complete its last unit, and written text never
  ends in sentence-final punctuation (a full stop inside the text, followed by more, is fine);
- the final pass of a committed sentence is made to continue when the accepted text ended a sentence before the
  whole source had been heard, and it drops a continuation that repeats the end of the accepted text;
- a degenerate loop (one group of units over and over, an aborted copy between two copies allowed) is written
  at most `loop_repeats` - 1 times: a draft's text stops before the next copy (also before the start of one it
  stops inside), a final pass drops the copies (and the start of one it ends inside) and keeps what follows them,
  and a final pass ends once the written text and its own hold a group LOOP_STOP_FACTOR x `loop_repeats` times.
All functions here are pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from alignatt.text_units import CLOSERS, SENTENCE_FINAL, split_units, unit_spans

# The transcriber's sentence ends, plus the ellipsis: a partial hypothesis trailing off must not end the text either.
SENTENCE_FINAL_CHARS = "".join(SENTENCE_FINAL) + "…"


@dataclass(frozen=True)
class GuardOptions:
    strip_open_punctuation: bool = field(default=True, metadata={
        "help": "drop the sentence-final punctuation the ASR puts at the end of the open sentence before drafting"})
    hold_draft_end: bool = field(default=True, metadata={
        "help": "while the sentence is open, a draft that ends (EOS, end of turn, line break) keeps its last unit"})
    hold_sentence_end: bool = field(default=True, metadata={
        "help": "while the sentence is open, written text never ends in sentence-final punctuation"})
    skip_unchanged_drafts: bool = field(default=True, metadata={
        "help": "reuse the last draft when source, frontier and accepted text are unchanged (greedy repeats it)"})
    min_repeat_units: int = field(default=2, metadata={
        "help": "the final pass drops a continuation that starts by repeating at least this many of the last "
                "written units (0: off)"})
    loop_repeats: int = field(default=4, metadata={
        "help": "written text stops before a group of 1-4 units would occur this many times in a row (one "
                "aborted copy between two copies allowed), the degenerate loop of a small translator (0: off)"})

    def __post_init__(self):
        if self.min_repeat_units < 0:
            raise ValueError(f"min_repeat_units must be >= 0, got {self.min_repeat_units}")
        if self.loop_repeats == 1 or self.loop_repeats < 0:
            raise ValueError(f"loop_repeats must be 0 (off) or >= 2, got {self.loop_repeats}")


def ends_sentence(text: str) -> bool:
    """True when `text` ends in sentence-final punctuation (closing quotes and brackets looked through)."""
    return text.rstrip().rstrip(CLOSERS).endswith(tuple(SENTENCE_FINAL_CHARS))


def strip_sentence_final(text: str) -> str:
    """`text` without trailing sentence-final punctuation (and the closers after it): 'talk.' -> 'talk'."""
    stripped = text.rstrip()
    while stripped and ends_sentence(stripped):
        stripped = stripped.rstrip(CLOSERS).rstrip(SENTENCE_FINAL_CHARS).rstrip()
    return stripped


def hold_sentence_end(text: str, char_level: bool) -> str:
    """The longest prefix of `text` (whole units) that does not end in sentence-final punctuation."""
    spans = unit_spans(text, char_level)
    while spans and ends_sentence(text[: spans[-1][1]]):
        spans.pop()
    return text[: spans[-1][1]] if spans else ""


def unit_key(unit: str) -> str:
    """A unit as the guards compare it: case-folded, letters and digits only ("Sarah," and "sarah" match)."""
    return "".join(ch for ch in unit.casefold() if ch.isalnum())


def _keys(text: str, char_level: bool) -> list[str]:
    return [unit_key(unit) for unit in split_units(text, char_level)]


def trim_repeated_start(prefix: str, continuation: str, char_level: bool, min_units: int) -> str:
    """Drop the start of `continuation` when it repeats the last k >= min_units units of `prefix` (the longest
    such k; compared without case and punctuation). A model asked to continue sometimes restarts the clause."""
    if min_units <= 0:
        return continuation
    before = _keys(prefix, char_level)
    spans = unit_spans(continuation, char_level)
    after = [unit_key(continuation[a:b]) for a, b in spans]
    for k in range(min(len(before), len(after)), min_units - 1, -1):
        if before[-k:] == after[:k] and any(before[-k:]):
            return continuation[spans[k - 1][1]:] if k < len(spans) else ""
    return continuation


LOOP_GROUP_UNITS = 4  # the longest group of units a loop repeats ("-von -die -von -die ...")
# A looping final pass would run to its token budget (up to 160 tokens, seconds on a CPU) only to have its
# copies dropped; once the written text and its own hold this many times `loop_repeats` copies, it stops. Text it
# would have written after so long a loop is given up.
LOOP_STOP_FACTOR = 2


def _copy_before(keys: list[str], end: int, group: list[str]) -> int:
    """Where the copy of `group` that ends at `end` (or before an aborted copy there, a proper prefix of `group`
    such as the "in" of "X in in der Y X") starts; -1 when there is none."""
    for aborted in range(len(group)):
        start = end - aborted - len(group)
        if start < 0:
            return -1
        if keys[end - aborted:end] == group[:aborted] and keys[start:start + len(group)] == group:
            return start
    return -1


def _completed_loop_units(keys: list[str], repeats: int) -> int:
    """How many units at the end of `keys` complete a loop: the last copy of a group of 1-4 keys with a letter in it
    that `keys` end with `repeats` times in a row, plus an aborted copy just before it (a small translator
    stutters: "in der absoluten X in der absoluten X in in der absoluten X"); 0: no loop. Digits alone
    ("000 000 000") and punctuation repeat legitimately."""
    for size in range(1, min(LOOP_GROUP_UNITS, len(keys)) + 1):
        group = keys[-size:]
        if not any(ch.isalpha() for key in group for ch in key):
            continue
        start, copies = len(keys) - size, 1
        while copies < repeats and (start := _copy_before(keys, start, group)) >= 0:
            copies += 1
            if copies == 2:
                previous_copy_end = start + size
        if copies == repeats:
            return len(keys) - previous_copy_end
    return 0


def ends_in_loop(text: str, char_level: bool, repeats: int) -> bool:
    """Whether `text` ends with one group of 1-4 units `repeats` times in a row, an aborted copy between two copies
    allowed (compared as `cut_loop` does)."""
    keys = _keys(text, char_level)
    return repeats > 0 and _completed_loop_units(keys, repeats) > 0


def _looping_indices(before: list[str], keys: list[str], repeats: int) -> list[int]:
    """Indices of the unit keys `keys` that repeat a loop (`before` + `keys` holding a group `repeats` times in a
    row), each judged with the earlier ones dropped, so every group keeps `repeats` - 1 copies."""
    seen = list(before)
    kept: list[int] = []
    looping: list[int] = []
    for i, key in enumerate(keys):
        seen.append(key)
        kept.append(i)
        units = _completed_loop_units(seen, repeats)
        if units:
            in_text = min(units, len(kept))  # a copy may begin in `before`, which is written already
            looping.extend(kept[-in_text:])
            del kept[-in_text:], seen[-in_text:]
    return sorted(looping)


def cut_loop(prefix: str, text: str, char_level: bool, repeats: int) -> str:
    """`text` up to the first unit that would make `prefix` + `text` hold a group of 1-4 units `repeats` times in
    a row (compared without case and punctuation), so that a draft's written text stays a prefix of the draft. A
    small translator can fall into repeating one word for the rest of its budget ("-mitunter -mitunter ..."):
    each copy is a word the listener reads and the scorer counts, and no later step can take it back. A draft that
    stops inside the copy that would complete the loop writes none of that copy either."""
    if repeats <= 0:
        return text
    before, spans = _keys(prefix, char_level), unit_spans(text, char_level)
    keys = [unit_key(text[start:end]) for start, end in spans]
    looping = _looping_indices(before, keys, repeats)
    if looping:
        spans, keys = spans[:looping[0]], keys[:looping[0]]
        text = text[:spans[-1][1]] if spans else ""
    return _without_copy_start(before, text, spans, keys, repeats)


def drop_loop_copies(prefix: str, text: str, char_level: bool, repeats: int) -> str:
    """`text` without the units that repeat a loop, keeping what follows it: a final pass that goes on after a
    loop the drafts were cut at ("Haus Haus Haus" written, then " Haus und dann ...") still translates the rest. A
    pass that ends inside the copy that would complete the loop keeps none of that copy."""
    if repeats <= 0:
        return text
    before, spans = _keys(prefix, char_level), unit_spans(text, char_level)
    keys = [unit_key(text[start:end]) for start, end in spans]
    looping = set(_looping_indices(before, keys, repeats))
    if looping:  # each kept unit comes with the whitespace before it in `text`
        text = "".join(text[spans[i - 1][1] if i else 0:end] for i, (_, end) in enumerate(spans) if i not in looping)
        spans = unit_spans(text, char_level)
        keys = [key for i, key in enumerate(keys) if i not in looping]
    return _without_copy_start(before, text, spans, keys, repeats)


def _capped_groups(keys: list[str], repeats: int) -> list[list[str]]:
    """The groups of 1-4 unit keys that `keys` end with and whose next copy would be cut as a loop, first unit
    included (each loop is written as often as allowed)."""
    return [keys[-size:] for size in range(1, min(LOOP_GROUP_UNITS, len(keys)) + 1)
            if _looping_indices(keys, keys[-size:], repeats)[:1] == [0]]


def _starts_a_copy(tail: list[str], group: list[str]) -> bool:
    """Whether `tail` begins a copy of `group` without completing it, after at most one aborted copy (a proper
    prefix of the group, as in `_copy_before`): "in", "in der", "in in", "in der in" for "in der absoluten X"."""
    for aborted in range(len(group)):
        rest = tail[aborted:]
        if tail[:aborted] == group[:aborted] and 0 < len(rest) < len(group) and rest == group[:len(rest)]:
            return True
    return False


def _without_copy_start(before: list[str], text: str, spans: list[tuple[int, int]], keys: list[str],
                        repeats: int) -> str:
    """`text` (its unit `spans` and their `keys`, after written units `before`) without the last units where they
    begin one more copy of a loop written as often as allowed: that copy would be cut once complete, so its first
    words must not be left behind ("... in der absoluten X in der absoluten X in der absoluten X in")."""
    # The longest such tail first: "X in" also begins a copy of the shifted group "der absoluten X in".
    for k in range(min(2 * (LOOP_GROUP_UNITS - 1), len(keys)), 0, -1):
        if any(_starts_a_copy(keys[-k:], group) for group in _capped_groups(before + keys[:-k], repeats)):
            return text[:spans[-k - 1][1]] if k < len(spans) else ""
    return text


# --- the final pass of a committed sentence ----------------------------------------------------------------

def final_pass_must_continue(target_prefix: str, n_source_units: int, n_units_heard_for_prefix: int) -> bool:
    """An accepted text that already ends a sentence, written before the whole source was heard, must not end the
    translation: the rest of the source would be lost."""
    return ends_sentence(target_prefix) and n_source_units > n_units_heard_for_prefix


def final_pass_stop(guards: GuardOptions, char_level: bool) -> Callable[[str], bool] | None:
    """When a final pass may end early: once the sentence's text holds a loop LOOP_STOP_FACTOR x `loop_repeats`
    times (its copies would be dropped anyway). Copies already written count."""
    if not guards.loop_repeats:
        return None
    return lambda text: ends_in_loop(text, char_level, LOOP_STOP_FACTOR * guards.loop_repeats)


def final_pass_text(target_prefix: str, text: str, char_level: bool, guards: GuardOptions) -> str:
    """What a final pass writes after `target_prefix`: without a restarted clause, without a loop's copies."""
    text = trim_repeated_start(target_prefix, text, char_level, guards.min_repeat_units)
    return drop_loop_copies(target_prefix, text, char_level, guards.loop_repeats)
