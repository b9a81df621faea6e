"""Source state read by the translator: committed sentences (a queue), the open sentence, and its frontier.

Units match the prompt's units (`alignatt.text_units`): the text of a sentence is its ASR words joined by single
spaces, and its units are `split_units(text)`, so the unit count of the text always equals the number of timed
units. Each unit is timed by the ASR word it comes from:
- an ASR word containing internal spaces ("New York") yields several units, each with the word's end time
  (conservative: no part of a word is accessible before the whole word has been heard);
- punctuation attached to a word is part of that word's unit;
- a standalone punctuation unit (no letter or digit, e.g. "-") takes the end time of the preceding unit.
Accessibility (the AlignAtt frontier): in a cascade the "edge of the audio" is the ASR's unstable tail, so a unit
is accessible when it is stable (the last two hypotheses of the open span agree on its word, compared as the
transcriber compares words) and at least `margin_ms` of audio follows its end time. Word times and `heard_s` are
both ABSOLUTE stream seconds; the frontier is the number of leading accessible units of the open sentence.
Committed sentences are stable throughout.
With `first_sentence_only` (the default), the open sentence is the open tail's FIRST sentence: when the ASR
already ends a sentence inside the tail but has not committed it (the two hypotheses do not agree through its end
yet), the words after that end are held back until it commits. Translating them now would write their translation into the first sentence's target, and their
own sentence's translation would then write it again.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from alignatt.asr.base import Word
from alignatt.stream.transcriber import CommitReason, TranscriptUpdate
from alignatt.text_units import is_sentence_end, unit_spans

# Float slack so a word ending exactly at the heard time counts as heard despite rounding.
_TIME_EPSILON_S = 1e-9


@dataclass(frozen=True)
class SourceOptions:
    # The engine's neutral values; a run takes its frontier from its preset (alignatt/factory.py, tuned on the
    # proxy's sweep) unless a flag sets it.
    margin_ms: float = field(default=0.0, metadata={
        "help": "audio that must follow a source unit's end time before the unit is accessible (0: off)"})
    require_stable: bool = field(default=True, metadata={
        "help": "a source unit is accessible only once two consecutive ASR hypotheses agree on its word"})
    char_level: bool = field(default=False, metadata={
        "help": "one unit per CJK character in the source (off for English: one unit per word)"})
    first_sentence_only: bool = field(default=True, metadata={
        "help": "the open sentence ends at the first sentence end of the ASR's open tail; the words after it wait "
                "until that sentence commits, so their translation is not written twice"})

    def __post_init__(self):
        if self.margin_ms < 0:
            raise ValueError(f"margin_ms must be >= 0, got {self.margin_ms}")


@dataclass(frozen=True)
class TimedUnit:
    text: str
    end_s: float  # absolute stream time at which the unit has been fully spoken
    stable: bool = True  # the last two ASR hypotheses agree on the word it comes from


@dataclass(frozen=True)
class SourceSentence:
    """Text of one source sentence and its timed units (len(units) == number of units of text)."""

    text: str
    units: tuple[TimedUnit, ...]
    reason: CommitReason | None = None  # None for the open sentence

    def accessible_units(self, heard_s: float, margin_ms: float = 0.0, require_stable: bool = False) -> int:
        """Number of leading units whose end time is at or before heard_s - margin (and that are stable, when
        `require_stable`)."""
        limit_s = heard_s - margin_ms / 1000.0 + _TIME_EPSILON_S
        count = 0
        for unit in self.units:
            if unit.end_s > limit_s or (require_stable and not unit.stable):
                break
            count += 1
        return count

    @property
    def n_stable_units(self) -> int:
        return next((i for i, unit in enumerate(self.units) if not unit.stable), len(self.units))


def build_sentence(words: Sequence[Word], char_level: bool = False, reason: CommitReason | None = None,
                   n_stable_words: int | None = None) -> SourceSentence:
    """Join words into the sentence text and time every unit of that text.

    Units of the first `n_stable_words` words are stable (None: all of them, as in a committed sentence).
    """
    pieces = [" ".join(word.text.split()) for word in words]
    n_stable = len(words) if n_stable_words is None else n_stable_words
    kept = [(piece, word, i < n_stable) for i, (piece, word) in enumerate(zip(pieces, words)) if piece]
    text = " ".join(piece for piece, _, _ in kept)
    starts = []  # character offset of each kept word in `text`
    offset = 0
    for piece, _, _ in kept:
        starts.append(offset)
        offset += len(piece) + 1
    units: list[TimedUnit] = []
    for begin, end in unit_spans(text, char_level):
        _, word, stable = kept[bisect.bisect_right(starts, begin) - 1]
        unit_text = text[begin:end]
        end_s = word.end_s
        # Standalone punctuation is not speech: it becomes accessible with the word it follows.
        if units and not any(ch.isalnum() for ch in unit_text):
            end_s = units[-1].end_s
        units.append(TimedUnit(unit_text, end_s, stable))
    return SourceSentence(text, tuple(units), reason)


def join_sentences(first: SourceSentence, second: SourceSentence) -> SourceSentence:
    """One sentence holding both: the units of `first`, then those of `second` (the text joined by a space)."""
    text = " ".join(part for part in (first.text, second.text) if part)
    return SourceSentence(text, first.units + second.units, second.reason)


def first_sentence_len(words: Sequence[Word]) -> int:
    """Words through the first sentence end (as the transcriber ends sentences), or all of them."""
    return next((index + 1 for index, word in enumerate(words) if is_sentence_end(word.text)), len(words))


class SourceState:
    """Per-talk source side: committed sentences not yet consumed (in order), and the open sentence.

    Memory stays bounded over a long talk: a consumed sentence is dropped."""

    def __init__(self, options: SourceOptions = SourceOptions()):
        self.options = options
        self.n_committed = 0  # sentences committed so far in the talk (the sentences themselves are not kept)
        self._pending: deque[SourceSentence] = deque()  # committed, not yet consumed by the translator
        self._open = SourceSentence("", ())
        self._held: tuple[Word, ...] = ()  # open words after the open sentence's end, waiting for its commit

    def apply(self, update: TranscriptUpdate) -> None:
        """Take one transcriber update: queue its committed sentences and replace the open sentence."""
        for sentence in update.committed:
            built = build_sentence(sentence.words, self.options.char_level, sentence.reason)
            self.n_committed += 1
            self._pending.append(built)
        tail = update.tail
        n_open = first_sentence_len(tail) if self.options.first_sentence_only else len(tail)
        self._held = tail[n_open:]
        self._open = build_sentence(tail[:n_open], self.options.char_level,
                                    n_stable_words=min(update.n_stable_tail_words, n_open))

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

    @property
    def held_text(self) -> str:
        """The open tail's words after the open sentence, held until it commits."""
        return " ".join(word.text for word in self._held)

    def accessible_units(self, heard_s: float) -> int:
        """Frontier of the open sentence: how many of its leading units are accessible (absolute heard_s)."""
        return self._open.accessible_units(heard_s, self.options.margin_ms, self.options.require_stable)
