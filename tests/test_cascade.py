"""The per-talk cascade on a scripted ASR timeline: commit, finish, append-only output, bounded work."""
import numpy as np
import pytest

from alignatt.asr import AsrBackend, Word
from alignatt.audio import SAMPLE_RATE_HZ
from alignatt.cascade import PRESETS, Cascade, CascadeOptions
from alignatt.capture import HeadRef
from alignatt.prompt import PromptConfig
from alignatt.text_units import split_units
from alignatt.transcriber import TranscriberOptions
from alignatt.translator import Translator
from tiny_models import build_gemma4_conditional

HEADS = [HeadRef(2, 0), HeadRef(5, 1), HeadRef(1, 3)]


def timeline(text: str, start_s: float = 0.3, word_s: float = 0.4) -> list[Word]:
    return [Word(w, start_s + i * word_s, start_s + (i + 1) * word_s - 0.05) for i, w in enumerate(text.split())]


class TimelineAsr(AsrBackend):
    """A perfect ASR: the words of a fixed timeline that lie inside the window, in absolute time."""

    def __init__(self, words):
        self.words = words
        self.window_lengths_s = []

    def transcribe(self, audio, offset_s):
        end_s = offset_s + len(audio) / SAMPLE_RATE_HZ
        self.window_lengths_s.append(len(audio) / SAMPLE_RATE_HZ)
        return [w for w in self.words if w.start_s >= offset_s - 1e-6 and w.end_s <= end_s]


class SpyTranslator(Translator):
    """The real translator, recording what it was asked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def draft(self, source, n_accessible_units, target_prefix="", history=()):
        result = super().draft(source, n_accessible_units, target_prefix, history)
        self.calls.append(("draft", source, n_accessible_units, target_prefix, result.new_text))
        return result

    def finish(self, source, target_prefix="", history=()):
        text = super().finish(source, target_prefix, history)
        self.calls.append(("finish", source, None, target_prefix, text))
        return text


@pytest.fixture(scope="module")
def translator(gemma_tok):
    from alignatt.translator import TranslatorConfig

    model = build_gemma4_conditional(vocab_size=len(gemma_tok))
    return SpyTranslator(model, gemma_tok, HEADS, PromptConfig(target_lang="de"), TranslatorConfig(max_final_tokens=8))


def feed(cascade, seconds, chunk_s=0.25):
    outputs = []
    for _ in range(int(round(seconds / chunk_s))):
        outputs.append(cascade.push(np.zeros(int(chunk_s * SAMPLE_RATE_HZ), dtype=np.float32), SAMPLE_RATE_HZ))
    return outputs


TALK = "Hello world, this is it. We propose a new method today. And it works"


def test_talk_end_to_end(translator):
    translator.calls.clear()
    asr = TimelineAsr(timeline(TALK))
    cascade = Cascade(asr, translator, CascadeOptions(step_ms=500, min_audio_s=2.0))
    outputs = feed(cascade, 8.0)
    assert outputs[:7] == [[]] * 7  # nothing before 2 s of audio
    units = [u for out in outputs for u in out] + cascade.finish()
    finished = [c for c in translator.calls if c[0] == "finish"]
    assert [c[1] for c in finished] == ["Hello world, this is it.", "We propose a new method today.", "And it works"]
    # Output = every accepted piece (drafts of the open sentence, then its finish), in order, nothing else;
    # each sentence's prompt prefix is exactly what was accepted for it so far.
    pieces = [c[4] for c in translator.calls]
    assert units == [u for piece in pieces for u in split_units(piece)]
    prefix = ""
    for kind, _, _, target_prefix, text in translator.calls:
        assert target_prefix == prefix.strip()
        prefix = "" if kind == "finish" else prefix + text
    done = []
    for kind, source, accessible, _, _ in translator.calls:
        if kind == "finish":
            done.append(source)
        else:  # a finished sentence never comes back into the live prompt
            assert source and not any(source.startswith(d) for d in done)
            assert 0 <= accessible <= len(source.split())


def test_frontier_is_absolute_time(translator):
    """A second sentence starting at 30 s: its words are not heard at 30.5 s even though they end 1 s into it."""
    translator.calls.clear()
    words = timeline("First sentence here.", start_s=0.3) + timeline("Then more words follow on", start_s=30.0)
    cascade = Cascade(TimelineAsr(words), translator, CascadeOptions(step_ms=500, min_audio_s=0.5),
                      TranscriberOptions(max_open_s=60.0))  # no length guard inside the 28 s pause
    feed(cascade, 31.5, chunk_s=0.5)
    drafts = [c for c in translator.calls if c[0] == "draft" and c[1].startswith("Then")]
    assert drafts, "the open second sentence was drafted"
    # At 31.5 s heard, words ending at 30.35, 30.75, 31.15 are heard (3 of them), not all 5.
    assert drafts[-1][2] == 3


def test_reset_starts_a_new_talk(translator):
    cascade = Cascade(TimelineAsr(timeline(TALK)), translator, CascadeOptions(step_ms=500))
    feed(cascade, 5.0)
    assert cascade.talk.source.committed and cascade.talk.source.open_text  # mid-talk before the reset
    cascade.reset()
    assert cascade.heard_s == 0 and cascade.talk.target_prefix == ""
    assert cascade.talk.source.open_text == "" and not cascade.talk.source.committed


def test_empty_and_silent_talks_write_nothing(translator):
    cascade = Cascade(TimelineAsr([]), translator, CascadeOptions(step_ms=500))
    assert cascade.finish() == []
    assert all(out == [] for out in feed(cascade, 4.0)) and cascade.finish() == []


def test_presets_set_the_step():
    assert PRESETS["low"]["step_ms"] == 850 and PRESETS["high"]["step_ms"] == 1500


class FixedTranslator:
    """Stands in for the LLM where only the cascade's bookkeeping is under test."""

    char_level = False

    def __init__(self):
        self.max_source_words = 0

    def draft(self, source, n_accessible_units, target_prefix="", history=()):
        self.max_source_words = max(self.max_source_words, len(source.split()))
        return type("Step", (), {"new_text": "" if target_prefix else " wort"})()

    def finish(self, source, target_prefix="", history=()):
        return " ende."


def test_twenty_minute_talk_has_bounded_work():
    sentence = "this talk goes on and on without end."
    words, t = [], 0.5
    while t < 20 * 60:
        words += timeline(sentence, start_s=t)
        t += 4.0
    asr, translator = TimelineAsr(words), FixedTranslator()
    cascade = Cascade(asr, translator, CascadeOptions(step_ms=850))
    chunk = np.zeros(int(0.85 * SAMPLE_RATE_HZ), dtype=np.float32)
    n_out = 0
    for _ in range(int(20 * 60 / 0.85)):
        n_out += len(cascade.push(chunk, SAMPLE_RATE_HZ))
    assert n_out >= 500  # a word drafted and a word finished per sentence
    assert max(asr.window_lengths_s) < 10.0  # only the open sentence is re-transcribed
    assert translator.max_source_words <= len(sentence.split())
    assert cascade.heard_s > 19 * 60
    assert cascade.talk.audio.held_samples <= 20 * SAMPLE_RATE_HZ  # audio before the boundary is released
