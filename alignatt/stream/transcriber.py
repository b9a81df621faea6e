"""Incremental transcription: re-transcribe the open sentence every chunk, commit sentences on agreement.

Each `update` re-transcribes the audio from the last commit boundary to the end of the buffer (Qwen3-ASR's
log-mel is not prefix-stable, so the whole open span is re-fed). A sentence is committed when two consecutive
hypotheses of that span agree word by word through a sentence-final word (. ? ! 。 ？ ！):
- words are compared after normalisation: case-folded, keeping only letters and digits, so flicker in casing or
  commas ("Hello, world" / "hello world") does not block agreement; the committed text is the LATEST hypothesis;
- the sentence-final punctuation itself must be present in both hypotheses, so the sentence boundary is stable;
- ellipses ("...", "…") and common abbreviations ("Mr.", "e.g.") do not end a sentence;
- every agreed sentence end commits, so one update may commit several sentences.
The committed last word's end time becomes the new boundary. Each update also says how many leading words of the
open tail the previous hypothesis agreed on (`stable_words`: the common prefix, or through the last shared run of
words after aligning both): the source frontier treats only those as stable. A length guard force-commits when the open audio
exceeds `max_open_s`: the agreed prefix if any, else all but the last `force_keep_words` words (cut into sentences
at the latest hypothesis's punctuation); when not even that exists (silence, noise) the audio older than
`drop_keep_s` is dropped. `finish` commits everything at the end.
All times are absolute stream seconds.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Literal, Sequence

from alignatt.asr.base import AsrBackend, Word
from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer
from alignatt.text_units import is_sentence_end

logger = logging.getLogger(__name__)

STABLE_WORDS = ("prefix", "aligned")
# A shared run this short ("the", "and") matches by chance; two words in order rarely do.
_MIN_ALIGNED_RUN = 2

CommitReason = Literal["agreed", "length_guard", "end_of_stream"]


@dataclass(frozen=True)
class TranscriberOptions:
    # The length guard bounds the audio re-transcribed per chunk, hence compute per chunk.
    max_open_s: float = field(default=30.0, metadata={"help": "force a commit when the open audio exceeds this"})
    force_keep_words: int = field(default=3, metadata={
        "help": "words left open by a forced commit when hypotheses do not agree"})
    drop_keep_s: float = field(default=5.0, metadata={
        "help": "audio kept open when a forced commit finds no words at all (silence, noise)"})
    stable_words: str = field(default="prefix", metadata={
        "help": "open words the frontier counts as stable: prefix (up to the first word the last two hypotheses "
                "disagree on) or aligned (also past a disagreement, through the last run of at least two words "
                "that both hypotheses share in the same order)"})

    def __post_init__(self):
        if self.max_open_s <= 0 or self.drop_keep_s < 0 or self.force_keep_words < 0:
            raise ValueError(f"invalid transcriber options: {self}")
        if self.stable_words not in STABLE_WORDS:
            raise ValueError(f"stable_words must be one of {', '.join(STABLE_WORDS)}, got {self.stable_words!r}")
        if self.drop_keep_s >= self.max_open_s:
            raise ValueError("drop_keep_s must be below max_open_s, or dropping would not bound the open audio")


@dataclass(frozen=True)
class Sentence:
    """A committed sentence: its words (absolute times) and why it was committed."""

    words: tuple[Word, ...]
    reason: CommitReason = "agreed"

    @property
    def text(self) -> str:
        return " ".join(word.text for word in self.words)

    @property
    def end_s(self) -> float:
        return self.words[-1].end_s


@dataclass(frozen=True)
class TranscriptUpdate:
    """What one update changed: sentences committed now (in order) and the open sentence's words."""

    committed: tuple[Sentence, ...]
    tail: tuple[Word, ...]
    boundary_s: float  # absolute start of the open audio after this update
    n_stable_tail_words: int = 0  # leading tail words the previous hypothesis agreed on


def normalise(text: str) -> str:
    """Comparison key of a word: case-folded letters and digits only."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def agreed_prefix_len(previous: Sequence[Word], current: Sequence[Word]) -> int:
    """Length of the longest common prefix of two hypotheses, comparing normalised words."""
    count = 0
    for old, new in zip(previous, current):
        if normalise(old.text) != normalise(new.text):
            break
        count += 1
    return count


def aligned_stable_len(previous: Sequence[Word], current: Sequence[Word]) -> int:
    """Leading words of `current` through the end of its last run of at least two words that `previous` has in
    the same order (normalised words, aligned with difflib); never less than the agreed prefix. A whisper
    rewrite of one early word ("Pappy" -> "Papi") then no longer holds back the words the ASR keeps saying."""
    matcher = difflib.SequenceMatcher(None, [normalise(w.text) for w in previous],
                                      [normalise(w.text) for w in current], autojunk=False)
    ends = [block.b + block.size for block in matcher.get_matching_blocks() if block.size >= _MIN_ALIGNED_RUN]
    return max([agreed_prefix_len(previous, current), *ends])


def last_agreed_sentence_end(previous: Sequence[Word], current: Sequence[Word]) -> int:
    """Number of words up to the last sentence end both hypotheses agree on (0 if none)."""
    agreed = agreed_prefix_len(previous, current)
    for index in range(agreed - 1, -1, -1):
        if is_sentence_end(previous[index].text) and is_sentence_end(current[index].text):
            return index + 1
    return 0


def split_sentences(words: Sequence[Word], reason: CommitReason) -> list[Sentence]:
    """Cut words after each sentence-final word; a trailing unpunctuated remainder is a sentence too."""
    sentences: list[Sentence] = []
    start = 0
    for index, word in enumerate(words):
        if is_sentence_end(word.text):
            sentences.append(Sentence(tuple(words[start: index + 1]), reason))
            start = index + 1
    if start < len(words):
        sentences.append(Sentence(tuple(words[start:]), reason))
    return sentences


class IncrementalTranscriber:
    """Owns the commit boundary and the previous hypothesis of one talk; reads audio from an AudioBuffer."""

    def __init__(self, backend: AsrBackend, options: TranscriberOptions = TranscriberOptions()):
        self.backend = backend
        self.options = options
        self._boundary_s = 0.0
        self._previous: list[Word] = []  # last hypothesis of the open span, committed words removed

    @property
    def boundary_s(self) -> float:
        return self._boundary_s

    def update(self, audio: AudioBuffer) -> TranscriptUpdate:
        """Re-transcribe the open audio and commit what two consecutive hypotheses agree on."""
        hypothesis = self._transcribe_open(audio)
        previous, self._previous = self._previous, hypothesis
        stable = self._stable_len(previous, hypothesis)
        cut = last_agreed_sentence_end(previous, hypothesis)
        if cut:
            return self._commit(split_sentences(hypothesis[:cut], "agreed"), hypothesis[cut:], stable - cut)
        if audio.duration_s - self._boundary_s > self.options.max_open_s:
            return self._force_commit(previous, hypothesis, audio.duration_s)
        return self._result([], hypothesis, stable)

    def _stable_len(self, previous: Sequence[Word], hypothesis: Sequence[Word]) -> int:
        if self.options.stable_words == "aligned":
            return aligned_stable_len(previous, hypothesis)
        return agreed_prefix_len(previous, hypothesis)

    def finish(self, audio: AudioBuffer) -> TranscriptUpdate:
        """End of stream (call `audio.finish()` first): commit every remaining word."""
        hypothesis = self._transcribe_open(audio)
        update = self._commit(split_sentences(hypothesis, "end_of_stream"), [])
        self._boundary_s = max(self._boundary_s, audio.duration_s)
        return TranscriptUpdate(update.committed, (), self._boundary_s)

    def _transcribe_open(self, audio: AudioBuffer) -> list[Word]:
        window = audio.view(self._boundary_s)
        if len(window) == 0:
            return []
        # The window starts on a sample, which may sit up to half a sample from the boundary time.
        offset_s = audio.sample_index(self._boundary_s) / SAMPLE_RATE_HZ
        return self.backend.transcribe(window, offset_s)

    def _force_commit(self, previous: list[Word], hypothesis: list[Word], now_s: float) -> TranscriptUpdate:
        agreed = agreed_prefix_len(previous, hypothesis)
        count = agreed or max(0, len(hypothesis) - self.options.force_keep_words)
        if count:
            logger.info("open audio over %.1f s: force-committing %d words", self.options.max_open_s, count)
            return self._commit(split_sentences(hypothesis[:count], "length_guard"), hypothesis[count:],
                                self._stable_len(previous, hypothesis) - count)
        logger.warning("open audio over %.1f s with no committable words: dropping audio before %.1f s (%d words)",
                       self.options.max_open_s, now_s - self.options.drop_keep_s, len(hypothesis))
        self._boundary_s = max(self._boundary_s, now_s - self.options.drop_keep_s)
        self._previous = []
        return self._result([], [], 0)

    def _commit(self, sentences: list[Sentence], rest: list[Word], n_stable_rest: int = 0) -> TranscriptUpdate:
        if sentences:
            self._boundary_s = max(self._boundary_s, sentences[-1].end_s)
            for sentence in sentences:
                logger.debug("commit (%s) %.2f-%.2f s: %s", sentence.reason, sentence.words[0].start_s,
                             sentence.end_s, sentence.text)
        self._previous = list(rest)
        return self._result(sentences, rest, n_stable_rest)

    def _result(self, sentences: list[Sentence], tail: list[Word], n_stable: int) -> TranscriptUpdate:
        return TranscriptUpdate(tuple(sentences), tuple(tail), self._boundary_s, max(0, n_stable))
