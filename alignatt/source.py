"""Source state read by the translator: committed sentences (a queue), the open sentence, and its frontier.

Units match the prompt's units (`alignatt.text_units`): the text of a sentence is its ASR words joined by single
spaces, and its units are `split_units(text)`, so the unit count of the text always equals the number of timed
units. Each unit is timed by the ASR word it comes from:
- an ASR word containing internal spaces ("New York") yields several units, each with the word's end time
  (conservative: no part of a word is accessible before the whole word has been heard);
- punctuation attached to a word is part of that word's unit;
- a standalone punctuation unit (no letter or digit, e.g. "-") takes the end time of the preceding unit.
Accessibility: a unit is accessible when its end time <= heard_s - margin. Word times and `heard_s` are both
ABSOLUTE stream seconds; the frontier is the number of leading accessible units of the open sentence.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from alignatt.asr import Word
from alignatt.text_units import unit_spans
from alignatt.transcriber import CommitReason, TranscriptUpdate

# Float slack so a word ending exactly at the heard time counts as heard despite rounding.
_TIME_EPSILON_S = 1e-9


@dataclass(frozen=True)
class SourceOptions:
    margin_ms: float = field(default=0.0, metadata={
        "help": "audio that must follow a source unit's end time before the unit is accessible"})
    char_level: bool = field(default=False, metadata={
        "help": "one unit per CJK character in the source (off for English: one unit per word)"})

    def __post_init__(self):
        if self.margin_ms < 0:
            raise ValueError(f"margin_ms must be >= 0, got {self.margin_ms}")


@dataclass(frozen=True)
class TimedUnit:
    text: str
    end_s: float  # absolute stream time at which the unit has been fully spoken


@dataclass(frozen=True)
class SourceSentence:
    """Text of one source sentence and its timed units (len(units) == number of units of text)."""

    text: str
    units: tuple[TimedUnit, ...]
    reason: CommitReason | None = None  # None for the open sentence

    def accessible_units(self, heard_s: float, margin_ms: float = 0.0) -> int:
        """Number of leading units whose end time is at or before heard_s - margin."""
        limit_s = heard_s - margin_ms / 1000.0 + _TIME_EPSILON_S
        count = 0
        for unit in self.units:
            if unit.end_s > limit_s:
                break
            count += 1
        return count


def build_sentence(words: Sequence[Word], char_level: bool = False,
                   reason: CommitReason | None = None) -> SourceSentence:
    """Join words into the sentence text and time every unit of that text."""
    pieces = [" ".join(word.text.split()) for word in words]
    kept = [(piece, word) for piece, word in zip(pieces, words) if piece]
    text = " ".join(piece for piece, _ in kept)
    starts = []  # character offset of each kept word in `text`
    offset = 0
    for piece, _ in kept:
        starts.append(offset)
        offset += len(piece) + 1
    units: list[TimedUnit] = []
    for begin, end in unit_spans(text, char_level):
        word = kept[bisect.bisect_right(starts, begin) - 1][1]
        unit_text = text[begin:end]
        end_s = word.end_s
        # Standalone punctuation is not speech: it becomes accessible with the word it follows.
        if units and not any(ch.isalnum() for ch in unit_text):
            end_s = units[-1].end_s
        units.append(TimedUnit(unit_text, end_s))
    return SourceSentence(text, tuple(units), reason)


class SourceState:
    """Per-talk source side: committed sentences in order, those not yet consumed, and the open sentence."""

    def __init__(self, options: SourceOptions = SourceOptions()):
        self.options = options
        self.committed: list[SourceSentence] = []  # every committed sentence of the talk, in order
        self._pending: deque[SourceSentence] = deque()  # committed, not yet consumed by the translator
        self._open = SourceSentence("", ())

    def apply(self, update: TranscriptUpdate) -> None:
        """Take one transcriber update: queue its committed sentences and replace the open sentence."""
        for sentence in update.committed:
            built = build_sentence(sentence.words, self.options.char_level, sentence.reason)
            self.committed.append(built)
            self._pending.append(built)
        self._open = build_sentence(update.tail, self.options.char_level)

    @property
    def has_pending(self) -> bool:
        """True while sentences committed by the ASR have not been consumed by the translator."""
        return bool(self._pending)

    def pop_committed(self) -> SourceSentence | None:
        """Oldest committed sentence not yet consumed, or None."""
        return self._pending.popleft() if self._pending else None

    @property
    def open_sentence(self) -> SourceSentence:
        return self._open

    @property
    def open_text(self) -> str:
        return self._open.text

    def accessible_units(self, heard_s: float) -> int:
        """Frontier of the open sentence: how many of its leading units have been heard (absolute heard_s)."""
        return self._open.accessible_units(heard_s, self.options.margin_ms)
