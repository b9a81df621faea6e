"""alignatt_eval.analysis.asr_study: the ASR half of the cascade scored on its own (WER, when words become stable, cost)."""
from types import SimpleNamespace

import numpy as np
import pytest

from alignatt.asr.base import AsrBackend, Word
from alignatt.audio import SAMPLE_RATE_HZ
from alignatt.stream.cascade import Cascade, CascadeOptions
from alignatt.policy.guards import GuardOptions
from alignatt.stream.transcriber import TranscriberOptions
from alignatt_eval.analysis.asr_study import WordLags, normalised_words, run_talk, summary, word_error_rate

TALK = "Hello world, this is it. We propose a new method today. And it works."
WORD_S = 0.4


class TimelineAsr(AsrBackend):
    """A perfect ASR: the talk's words that end inside the window, in absolute time."""

    def __init__(self, text: str, replace: dict | None = None):
        replace = replace or {}
        self.words = [Word(replace.get(w, w), 0.3 + i * WORD_S, 0.25 + (i + 1) * WORD_S)
                      for i, w in enumerate(text.split())]

    def transcribe(self, audio, offset_s):
        end_s = offset_s + len(audio) / SAMPLE_RATE_HZ
        return [w for w in self.words if w.start_s >= offset_s - 1e-6 and w.end_s <= end_s]


def asr_cascade(asr: AsrBackend, step_ms: float = 500.0) -> Cascade:
    # The study runs only the ASR half: no translator call may happen.
    return Cascade(asr, SimpleNamespace(guards=GuardOptions()), CascadeOptions(step_ms=step_ms, min_audio_s=0.5),
                   TranscriberOptions(stable_words="aligned"))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE_HZ), dtype=np.float32)


def test_a_perfect_asr_commits_the_talk_word_for_word_and_words_become_stable_one_step_after_they_end():
    cascade = asr_cascade(TimelineAsr(TALK))
    result = run_talk(cascade, "talk", silence(7.0), SAMPLE_RATE_HZ, TALK)
    assert result.transcript == TALK
    assert result.wer_percent == 0.0 and result.n_reference_words == 14
    assert result.steps == 14 + 1  # one per 500 ms of the 7 s, and the end of the stream
    # A word is in the first hypothesis after it ends and agreed by the next one, 500 ms later: 0.5 s plus the wait
    # from its end to the next step (words end every 0.4 s, at 0.05-0.45 s before a step: 0.25 s on average).
    assert result.stable_lag_s == pytest.approx(0.75, abs=1e-3)
    assert result.commit_lag_s > result.stable_lag_s


def test_a_misheard_word_counts_as_an_error_and_the_study_resets_between_talks():
    cascade = asr_cascade(TimelineAsr(TALK, replace={"method": "meadow"}))
    first = run_talk(cascade, "a", silence(7.0), SAMPLE_RATE_HZ, TALK)
    second = run_talk(cascade, "b", silence(7.0), SAMPLE_RATE_HZ, TALK)
    assert first.wer_percent == pytest.approx(100 / 14, abs=0.01)
    assert second.transcript == first.transcript  # the second talk starts from a fresh transcriber
    totals = summary([first, second])
    assert totals["wer_percent"] == pytest.approx(100 / 14, abs=0.01) and totals["steps"] == 30


def test_word_lags_count_from_the_first_step_a_word_was_stable_even_when_it_commits_later():
    lags = WordLags()
    lags.open_sentence(n_words=3, n_stable=1, heard_s=2.0)
    lags.open_sentence(n_words=4, n_stable=3, heard_s=3.0)
    lags.commit([Word("a", 0.0, 1.0), Word("b", 1.0, 2.0)], heard_s=4.0)
    assert lags.stable_lags_s == [1.0, 1.0] and lags.commit_lags_s == [3.0, 2.0]
    lags.open_sentence(n_words=1, n_stable=0, heard_s=4.0)  # the third word, now the first after the boundary
    lags.commit([Word("c", 2.0, 2.5)], heard_s=5.0)
    assert lags.stable_lags_s[-1] == 0.5  # stable at 3.0 s, before the boundary moved


def test_words_are_compared_without_case_and_punctuation():
    assert normalised_words("It was -- the Best, of times.") == "it was the best of times"
    assert word_error_rate("It was the best of times.", "it was the best of times") == 0.0
    assert word_error_rate("It was the best of times.", "") == 1.0
