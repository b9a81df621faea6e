"""The per-talk cascade on a scripted ASR timeline: commit, finish, append-only output, bounded work."""
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from alignatt.asr.base import AsrBackend, Word
from alignatt.audio import SAMPLE_RATE_HZ
from alignatt.stream.cascade import Cascade, CascadeOptions
from alignatt.mt.capture import HeadRef
from alignatt.policy.guards import GuardOptions
from alignatt.mt.alignment import TokenAlignment
from alignatt.policy.policies import AlignAttPolicy
from alignatt.mt.prompt import PromptConfig
from alignatt.stream.source import SourceOptions
from alignatt.text_units import split_units
from alignatt.stream.transcriber import TranscriberOptions
from alignatt.mt.translator import DraftResult, Translator
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
    """The real translator, recording what it was asked; with a `SpyPolicy`, also what each draft wrote."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def draft(self, source, n_accessible_units, target_prefix="", history=(), stop_at=None, max_units=None):
        result = super().draft(source, n_accessible_units, target_prefix, history, stop_at, max_units)
        self.calls.append(["draft", source, n_accessible_units, target_prefix, ""])
        return result

    def finish(self, source, target_prefix="", history=(), must_continue=False, stop_text=None):
        text = super().finish(source, target_prefix, history, must_continue, stop_text)
        self.calls.append(["finish", source, None, target_prefix, text])
        return text


class SpyPolicy(AlignAttPolicy):
    """AlignAtt, noting what each draft wrote in the translator's record of its calls."""

    def decide(self, result, translator, n_accessible_units, state):
        decision = super().decide(result, translator, n_accessible_units, state)
        translator.calls[-1][4] = decision.text  # a reused draft wrote nothing before and writes nothing again
        return decision


HEARD = TokenAlignment((0,), 0.0, 0.0)  # looks at the first source unit: heard whatever the frontier
UNHEARD = TokenAlignment((99,), 99.0, 1.0)  # looks past any frontier


def written_draft(text: str, target_prefix: str) -> DraftResult:
    """A draft (one token per character) whose heads let exactly `text` through: the gate stops the space after it,
    which also completes its last unit."""
    prompt = SimpleNamespace(target_prefix=target_prefix, n_units=1, n_accessible_units=0, unit_text=lambda u: "?")
    return DraftResult(prompt, tuple(map(ord, text + " ")), False, None, (HEARD,) * len(text) + (UNHEARD,))


@pytest.fixture(scope="module")
def translator(gemma_tok):
    from alignatt.mt.translator import TranslatorConfig

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
    cascade = Cascade(asr, translator, CascadeOptions(step_ms=500, min_audio_s=2.0), policy=SpyPolicy())
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
                      TranscriberOptions(max_open_s=60.0),  # no length guard inside the 28 s pause
                      SourceOptions(require_stable=False))  # timing alone: the last word was heard once
    feed(cascade, 31.5, chunk_s=0.5)
    drafts = [c for c in translator.calls if c[0] == "draft" and c[1].startswith("Then")]
    assert drafts, "the open second sentence was drafted"
    # At 31.5 s heard, words ending at 30.35, 30.75, 31.15 are heard (3 of them), not all 5.
    assert drafts[-1][2] == 3


def test_reset_starts_a_new_talk(translator):
    cascade = Cascade(TimelineAsr(timeline(TALK)), translator, CascadeOptions(step_ms=500))
    feed(cascade, 5.0)
    assert cascade.talk.source.n_committed and cascade.talk.source.open_text  # mid-talk before the reset
    cascade.reset()
    assert cascade.heard_s == 0 and cascade.talk.target_prefix == ""
    assert cascade.talk.source.open_text == "" and not cascade.talk.source.n_committed


def test_empty_and_silent_talks_write_nothing(translator):
    cascade = Cascade(TimelineAsr([]), translator, CascadeOptions(step_ms=500))
    assert cascade.finish() == []
    assert all(out == [] for out in feed(cascade, 4.0)) and cascade.finish() == []


class FixedTranslator:
    """Stands in for the LLM where only the cascade's bookkeeping is under test (tokens are code points)."""

    char_level = False

    def __init__(self):
        self.max_source_words = 0

    def draft(self, source, n_accessible_units, target_prefix="", history=(), stop_at=None, max_units=None):
        self.max_source_words = max(self.max_source_words, len(source.split()))
        return written_draft("" if target_prefix else " wort", target_prefix)

    def finish(self, source, target_prefix="", history=(), must_continue=False, stop_text=None):
        return " ende."

    @staticmethod
    def continuation_text(prompt, token_ids):
        return "".join(map(chr, token_ids))

    @staticmethod
    def token_text(token_id):
        return chr(token_id)


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


class ScriptedTranslator(FixedTranslator):
    """Writes `first_text` on its first draft and nothing after; records every call."""

    def __init__(self, first_text=""):
        super().__init__()
        self.first_text = first_text
        self.drafts, self.finishes = [], []

    def draft(self, source, n_accessible_units, target_prefix="", history=(), stop_at=None, max_units=None):
        self.drafts.append((source, n_accessible_units, target_prefix))
        return written_draft(self.first_text if len(self.drafts) == 1 else "", target_prefix)

    def finish(self, source, target_prefix="", history=(), must_continue=False, stop_text=None):
        self.finishes.append((source, target_prefix, must_continue))
        return " fertig."


def test_open_sentence_is_drafted_without_the_asr_s_full_stop():
    translator = ScriptedTranslator()
    cascade = Cascade(TimelineAsr(timeline("Hello world. Then more")), translator,
                      CascadeOptions(step_ms=250, min_audio_s=0.25))
    feed(cascade, 1.25)  # "world." (ends at 1.05 s) is in the hypothesis but not yet committed
    sources = [source for source, _, _ in translator.drafts]
    assert "Hello world" in sources and not any(s.endswith(".") for s in sources)
    off = ScriptedTranslator()
    feed(Cascade(TimelineAsr(timeline("Hello world. Then more")), off, CascadeOptions(step_ms=250, min_audio_s=0.25),
                 guards=GuardOptions(strip_open_punctuation=False)), 1.25)
    assert "Hello world." in [source for source, _, _ in off.drafts]


def test_unchanged_steps_reuse_the_draft_and_say_so():
    translator = ScriptedTranslator()
    cascade = Cascade(TimelineAsr(timeline("And it works")), translator, CascadeOptions(step_ms=250, min_audio_s=0.25))
    reports = []
    for _ in range(16):  # 1.45 s of speech, then a pause: the open sentence stops changing
        cascade.push(np.zeros(SAMPLE_RATE_HZ // 4, dtype=np.float32), SAMPLE_RATE_HZ)
        reports.append(cascade.last_step)
    skipped = [r for r in reports if r.draft_skipped]
    assert skipped
    drafting = [r for r in reports if r.transcript]  # steps before the first word draft nothing
    assert len(translator.drafts) + len(skipped) == len(drafting)
    last = reports[-1]
    assert last.transcript == "And it works" and last.n_source_units == 3
    assert last.n_stable_units == 3 and last.n_accessible_units == 3 and last.written == ""
    # Without the guard every step drafts again.
    again = ScriptedTranslator()
    feed(Cascade(TimelineAsr(timeline("And it works")), again, CascadeOptions(step_ms=250, min_audio_s=0.25),
                 guards=GuardOptions(skip_unchanged_drafts=False)), 4.0)
    assert len(again.drafts) == len(drafting)


def test_frontier_excludes_the_word_the_asr_just_added():
    translator = ScriptedTranslator()
    cascade = Cascade(TimelineAsr(timeline("we propose a new method for this")), translator,
                      CascadeOptions(step_ms=400, min_audio_s=0.4))
    feed(cascade, 2.4, chunk_s=0.4)
    for report in [cascade.last_step]:
        assert report.n_accessible_units == report.n_stable_units < report.n_source_units
    # Each draft's frontier lags what the ASR has: the newest word is not stable yet.
    assert all(accessible < len(source.split()) for source, accessible, _ in translator.drafts)


def test_early_full_stop_makes_the_final_pass_continue():
    translator = ScriptedTranslator(" Ich bin Sarah.")  # a sentence end written early, as the published gate may
    cascade = Cascade(TimelineAsr(timeline("I am Sarah and today I talk about translation.")), translator,
                      CascadeOptions(step_ms=500, min_audio_s=1.0), guards=GuardOptions(hold_sentence_end=False))
    units = [u for out in feed(cascade, 5.0) for u in out] + cascade.finish()
    assert units[:3] == ["Ich", "bin", "Sarah."]
    source, prefix, must_continue = translator.finishes[0]
    assert prefix == "Ich bin Sarah." and must_continue  # 9 source units, only ~1 heard when it was written
    assert units[3:] == ["fertig."]


class FlickeringAsr(TimelineAsr):
    """A perfect ASR except that it spells the first word differently on every call, so the first sentence never
    gets two agreeing hypotheses (as whisper does with a name) and stays open while the next one is heard."""

    def transcribe(self, audio, offset_s):
        words = super().transcribe(audio, offset_s)
        spelled = "Hallo" if len(self.window_lengths_s) % 2 else "Hello"
        return [Word(spelled, w.start_s, w.end_s) if w.text == "Hello" else w for w in words]


def test_the_next_sentence_waits_until_the_open_one_commits():
    options = CascadeOptions(step_ms=250, min_audio_s=0.25)
    frontier = SourceOptions(margin_ms=0, require_stable=False)  # every transcribed word is heard
    translator = ScriptedTranslator()
    cascade = Cascade(FlickeringAsr(timeline("Hello world. Then more words")), translator, options,
                      source_options=frontier)
    feed(cascade, 2.5)
    assert cascade.talk.source.n_committed == 0  # the first sentence never agreed
    assert all("Then" not in source and accessible <= 2 for source, accessible, _ in translator.drafts)
    assert cascade.last_step.held == "Then more words" and cascade.last_step.n_accessible_units == 2
    cascade.finish()  # end of stream: both sentences are finished, each on its own
    assert [source.split(" ", 1)[1] for source, _, _ in translator.finishes] == ["world.", "more words"]
    # Drafting the whole tail instead puts the next sentence into the first one's drafts.
    whole = ScriptedTranslator()
    feed(Cascade(FlickeringAsr(timeline("Hello world. Then more words")), whole, options,
                 source_options=SourceOptions(margin_ms=0, require_stable=False, first_sentence_only=False)), 2.5)
    assert any("Then" in source and accessible > 2 for source, accessible, _ in whole.drafts)


class LateAgreeingAsr(TimelineAsr):
    """Spells the first word differently on each of its first `n_flicker` calls, then as the timeline has it: the
    first sentence commits only after the next one has been heard."""

    def __init__(self, words, n_flicker):
        super().__init__(words)
        self.n_flicker = n_flicker

    def transcribe(self, audio, offset_s):
        words = super().transcribe(audio, offset_s)
        if len(self.window_lengths_s) > self.n_flicker:
            return words
        spelled = "Hallo" if len(self.window_lengths_s) % 2 else "Hello"
        return [Word(spelled, w.start_s, w.end_s) if w.text == "Hello" else w for w in words]


class WordForWordTranslator(ScriptedTranslator):
    """Writes a German word for each source word it may write (the frontier), after what is already accepted."""

    LEXICON = {"hello": "Hallo", "hallo": "Hallo", "world": "Welt", "then": "Dann", "more": "mehr",
               "words": "Wörter"}

    def translate(self, words, target_prefix):
        german = [self.LEXICON[w.rstrip(".").lower()] + "." * w.endswith(".") for w in words]
        return "".join(" " + w for w in german[len(target_prefix.split()):])

    def draft(self, source, n_accessible_units, target_prefix="", history=(), stop_at=None, max_units=None):
        self.drafts.append((source, n_accessible_units, target_prefix))
        return written_draft(self.translate(source.split()[:n_accessible_units], target_prefix), target_prefix)

    def finish(self, source, target_prefix="", history=(), must_continue=False, stop_text=None):
        self.finishes.append((source, target_prefix, must_continue))
        return self.translate(source.split(), target_prefix)


def test_a_sentence_the_translation_ran_past_is_finished_with_the_next_one(monkeypatch):
    options = dict(step_ms=250, min_audio_s=0.25)
    tail = SourceOptions(margin_ms=0, require_stable=False, first_sentence_only=False)

    def talk(carry):
        translator = WordForWordTranslator()
        cascade = Cascade(LateAgreeingAsr(timeline("Hello world. Then more words"), n_flicker=7), translator,
                          CascadeOptions(carry_committed=carry, **options), source_options=tail,
                          guards=GuardOptions(hold_sentence_end=False, hold_draft_end=False))
        units = [u for out in feed(cascade, 2.5) for u in out] + cascade.finish()
        return units, translator.finishes

    # "Dann" is written before "Hello world." commits; finished on its own, the sentence leaves "Then" to the next
    # sentence, which translates it again.
    units, finishes = talk(carry=False)
    assert units == ["Hallo", "Welt", "Dann", "mehr", "Dann", "mehr", "Wörter"]
    assert finishes[0][0].endswith("world.") and finishes[0][1] == "Hallo Welt Dann mehr"
    # Carried, the committed sentence is finished with the next one: every word is translated once.
    units, finishes = talk(carry=True)
    assert units == ["Hallo", "Welt", "Dann", "mehr", "Wörter"]
    assert [source.split(" ", 1)[1] for source, _, _ in finishes] == ["world. Then more words"]
    # A carried unit stays short: at the bound, the sentence is finished on its own again.
    monkeypatch.setattr("alignatt.stream.cascade.MAX_CARRIED_UNITS", 2)
    assert talk(carry=True)[0] == ["Hallo", "Welt", "Dann", "mehr", "Dann", "mehr", "Wörter"]


class ThreadRecordingAsr(TimelineAsr):
    """Records on which thread each call ran and counts the calls begun."""

    def __init__(self, words):
        super().__init__(words)
        self.threads = []
        self.calls_begun = threading.Condition()

    def transcribe(self, audio, offset_s):
        with self.calls_begun:
            self.threads.append(threading.current_thread().name)
            self.calls_begun.notify_all()
        return super().transcribe(audio, offset_s)


class OverlapCheckingCascade(Cascade):
    """With `wait_for_next_asr`, a step's translation waits until the ASR of the next step has begun: it shows
    whether the two ran at the same time (they never do one after the other, so a sequential run must not wait)."""

    def __init__(self, *args, wait_for_next_asr: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.wait_for_next_asr = wait_for_next_asr
        self.translated = 0
        self.overlapped = []

    def translate(self, heard):
        self.translated += 1
        if self.wait_for_next_asr and not heard.end_of_stream and all(self.overlapped):  # one miss is enough
            with self.asr.calls_begun:
                self.overlapped.append(self.asr.calls_begun.wait_for(
                    lambda: len(self.asr.threads) > self.translated, timeout=5))
        return super().translate(heard)


@pytest.mark.slow
def test_the_asr_running_a_step_ahead_writes_the_same_talk(translator):
    """The demo's pipeline: each step's ASR runs in a thread while the step before it is translated, and the talk's
    steps and text are those of one step after the other."""
    from alignatt.cli.demo import feed as play

    samples = np.zeros(8 * SAMPLE_RATE_HZ, dtype=np.float32)
    runs = {}
    for pipeline in (False, True):
        cascade = OverlapCheckingCascade(ThreadRecordingAsr(timeline(TALK)), translator,
                                         CascadeOptions(step_ms=500, min_audio_s=2.0), wait_for_next_asr=pipeline)
        pushes = list(play(cascade, samples, SAMPLE_RATE_HZ, speed=0.0, pipeline=pipeline))
        runs[pipeline] = ([fed.units for fed in pushes], [fed.report for fed in pushes], cascade)
    (units, reports, sequential), (units_ahead, reports_ahead, ahead) = runs[False], runs[True]
    assert units_ahead == units and reports_ahead == reports
    assert sum(map(len, units)) > 5 and sum(report is not None for report in reports) == 13  # 2 s .. 8 s
    assert set(sequential.asr.threads) == {threading.current_thread().name}
    assert set(ahead.asr.threads) == {"asr"}
    # Every step but the end of the stream was translated while the next step's ASR ran (14 ASR calls: 13 steps
    # and the end).
    assert len(ahead.asr.threads) == 14 and ahead.overlapped == [True] * 13
