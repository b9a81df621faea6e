"""The per-talk cascade: audio in, newly accepted target units out. Harness-free.

Each chunk: append audio -> re-transcribe the open sentence -> finish every sentence the ASR committed
(translated to the end, without the gate, after what was already accepted for it) -> draft the open
sentence and write what the policy (`alignatt.policy`: the AlignAtt gate by default) decides. Output is append-only: units once returned are final. With
`carry_committed`, a committed sentence whose written translation may already run into the next one is finished
together with the next one instead.
Every step leaves a `StepReport` (what was heard, the frontier, the draft, what stopped it, what was written).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np

from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer
from alignatt.asr.base import AsrBackend
from alignatt.policy.gate import describe_stop
from alignatt.policy.guards import (GuardOptions, final_pass_must_continue, final_pass_stop, final_pass_text,
                                    strip_sentence_final)
from alignatt.policy.policies import AlignAttPolicy, Decision, DraftPolicy, SentenceDecisions
from alignatt.stream.source import SourceOptions, SourceSentence, SourceState, join_sentences
from alignatt.text_units import split_units
from alignatt.stream.transcriber import IncrementalTranscriber, TranscriberOptions, TranscriptUpdate
from alignatt.mt.translator import DraftCall, DraftResult, Translator

logger = logging.getLogger(__name__)

# A cascade step as a generator: it yields each draft it needs, is sent the draft, and returns the units written.
Translation = Generator[DraftCall, DraftResult, list[str]]


def run_translation(translation: Translation, draft: Callable[[DraftCall], DraftResult]) -> list[str]:
    """Run a translation to its end, each draft by `draft`; return the units it wrote."""
    try:
        call = next(translation)
        while True:
            call = translation.send(draft(call))
    except StopIteration as done:
        return done.value


# A carried unit is finished once it reaches this many source units, so the prompt stays short even when the
# written text keeps running past sentence ends.
MAX_CARRIED_UNITS = 80


@dataclass(frozen=True)
class CascadeOptions:
    step_ms: float = field(default=850.0, metadata={
        "help": "audio gathered before each ASR + translation step (the chunk size)"})
    min_audio_s: float = field(default=2.0, metadata={"help": "translation starts after this much audio"})
    history_sentences: int = field(default=0, metadata={
        "help": "earlier (source, translation) sentence pairs shown in the prompt"})
    carry_committed: bool = field(default=False, metadata={
        "help": "a sentence the ASR commits after the frontier had passed its end when text was last written is "
                "not finished on its own: it is translated on with the next sentence, whose words the written text "
                "may already translate, so they are not translated again (with --no-source-first-sentence-only)"})
    whole_drafts: bool = field(default=False, metadata={
        "help": "draft to the end, and draft when the policy can write nothing: slower, the same written text "
                "(by default a draft stops where the rest could not be written); the step log shows whole drafts"})

    def __post_init__(self):
        if self.step_ms < 0 or self.min_audio_s < 0 or self.history_sentences < 0:
            raise ValueError(f"invalid cascade options: {self}")


@dataclass(frozen=True)
class StepReport:
    """What one cascade step saw and did: the step log and the demo read it."""

    heard_s: float
    transcript: str  # the open sentence as the ASR has it now (before guards)
    held: str  # open words after the open sentence's end, held until that sentence commits
    n_committed: int  # sentences the ASR committed in this step
    n_source_units: int  # units of the open sentence
    n_stable_units: int  # leading units the last two hypotheses agree on
    n_accessible_units: int  # the frontier
    draft: str  # text of the draft after the accepted prefix ("" when no draft)
    draft_skipped: bool  # source, frontier and prefix unchanged: the last draft was reused
    n_draft_tokens: int
    n_accepted_tokens: int  # tokens the gate let through
    stop: str  # the token that stopped the draft and the source unit it looked at ("" if none)
    quota: int | None  # the most units the policy could write in this step (None: no bound; 0: nothing drafted)
    written: str  # text written in this step (final passes and the draft)
    n_drafted_units: int  # the last units of `written` that came from the draft (the rest: final passes)


@dataclass(frozen=True)
class Heard:
    """One ASR step, ready to be translated."""

    update: TranscriptUpdate
    heard_s: float  # audio heard when the ASR ran
    end_of_stream: bool = False


@dataclass(frozen=True)
class _DraftKey:
    """Everything a draft depends on: with the same key, greedy decoding repeats the same draft."""

    source: str
    n_accessible_units: int
    target_prefix: str
    history: tuple
    stops_early: bool  # the draft stopped after the first token the policy's stop rule stopped
    max_units: int | None  # the draft stopped once it started more units than this


@dataclass
class TalkState:
    """Everything that belongs to one talk; models are shared across talks."""

    audio: AudioBuffer
    transcriber: IncrementalTranscriber
    source: SourceState
    history: deque  # (source, translation) of the last finished sentences
    target_prefix: str = ""  # accepted translation of the open sentence
    prefix_heard_units: int = 0  # frontier of the open sentence when its prefix last grew
    unprocessed_s: float = 0.0  # audio appended since the last step
    decisions: SentenceDecisions = field(default_factory=SentenceDecisions)  # the policy's open-sentence state
    last_draft: tuple[_DraftKey, DraftResult] | None = None
    carried: SourceSentence | None = None  # committed source still translated together with the open sentence


class Cascade:
    """Incremental ASR + AlignAtt-gated LLM translation for one talk at a time."""

    def __init__(self, asr: AsrBackend, translator: Translator, options: CascadeOptions = CascadeOptions(),
                 transcriber_options: TranscriberOptions = TranscriberOptions(),
                 source_options: SourceOptions = SourceOptions(), policy: DraftPolicy | None = None,
                 guards: GuardOptions = GuardOptions()):
        """`guards` act on the source (open-sentence punctuation) and the final pass; the policy, which applies
        them to the drafts it writes from, should hold the same."""
        self.asr = asr
        self.translator = translator
        self.options = options
        self.transcriber_options = transcriber_options
        self.source_options = source_options
        self.guards = guards
        self.policy = policy or AlignAttPolicy(guards=guards)  # decides how much of each draft is written
        self.talk = self._new_talk()
        self.last_step: StepReport | None = None  # the step the last push() or translate() ran (None: none ran)

    def _new_talk(self) -> TalkState:
        return TalkState(audio=AudioBuffer(), transcriber=IncrementalTranscriber(self.asr, self.transcriber_options),
                         source=SourceState(self.source_options),
                         history=deque(maxlen=self.options.history_sentences or None))

    def reset(self) -> None:
        """Start a new talk."""
        self.talk = self._new_talk()
        self.last_step = None

    @property
    def heard_s(self) -> float:
        return self.talk.audio.duration_s

    def push(self, samples: np.ndarray, sample_rate_hz: int) -> list[str]:
        """Feed one chunk of audio; return the target units accepted because of it.

        A step (ASR + translation) runs once `step_ms` of audio has gathered since the last one.
        """
        return self._drafting_here(self.step(samples, sample_rate_hz))

    def finish(self) -> list[str]:
        """End of stream: commit and translate everything still open; return the remaining units."""
        return self._drafting_here(self.step(np.zeros(0, np.float32), SAMPLE_RATE_HZ, end_of_stream=True))

    def step(self, samples: np.ndarray, sample_rate_hz: int, end_of_stream: bool = False) -> Translation:
        """`push` (when `samples` is not empty), then `finish` (when `end_of_stream`), as one `Translation`: it
        pauses at each draft it needs, so that a server can draft for several talks at once."""
        units = []
        if samples.size:
            self.last_step = None
            heard = self.hear(samples, sample_rate_hz)
            if heard is not None:
                units += yield from self.translation(heard)
        if end_of_stream:
            heard = self.hear_end()
            if heard is not None:
                units += yield from self.translation(heard)
        return units

    def _drafting_here(self, translation: Translation) -> list[str]:
        """Run a translation with every draft on this cascade's own translator."""
        return run_translation(translation, self.draft_alone)

    def draft_alone(self, call: DraftCall) -> DraftResult:
        """One draft on this cascade's own translator."""
        return self.translator.draft(call.source, call.n_accessible_units, call.target_prefix, call.history,
                                     stop_at=call.stop_at, max_units=call.max_units)

    def hear(self, samples: np.ndarray, sample_rate_hz: int) -> Heard | None:
        """The ASR half of `push`: gather the chunk and, once a step's worth has gathered, re-transcribe the open
        audio. It touches only the audio and the transcriber, so it may run (in another thread) while `translate`
        works on the previous step; the translation is the same as push's as long as every step is translated
        in order. `reset` must not run meanwhile."""
        talk = self.talk
        talk.unprocessed_s += talk.audio.append(samples, sample_rate_hz) / SAMPLE_RATE_HZ
        # 1 ms slack: a resampled input may lag its nominal chunk length by a fraction of a millisecond.
        if talk.unprocessed_s * 1000.0 < self.options.step_ms - 1.0 or self.heard_s < self.options.min_audio_s:
            return None
        talk.unprocessed_s = 0.0
        update = talk.transcriber.update(talk.audio)
        talk.audio.discard_before(talk.transcriber.boundary_s)  # committed audio is never read again
        return Heard(update, self.heard_s)

    def hear_end(self) -> Heard | None:
        """The ASR half of `finish`: commit every word still open (None when the talk held no audio)."""
        talk = self.talk
        talk.audio.finish()
        if talk.audio.num_samples == 0:
            return None
        return Heard(talk.transcriber.finish(talk.audio), self.heard_s, end_of_stream=True)

    def translate(self, heard: Heard) -> list[str]:
        """The translation half of `push` and `finish`: apply one ASR step and return the units it accepts."""
        return self._drafting_here(self.translation(heard))

    def translation(self, heard: Heard) -> Translation:
        """`translate` as a `Translation` that pauses at its draft."""
        talk = self.talk
        talk.source.apply(heard.update)
        if heard.end_of_stream:
            return self._finish_committed(end_of_stream=True)
        units = self._finish_committed()
        open_sentence = talk.source.open_sentence
        accessible = talk.source.accessible_units(heard.heard_s)
        if talk.carried is not None:  # committed, hence heard, and drafted before the open words
            open_sentence = join_sentences(talk.carried, open_sentence)
            accessible += len(talk.carried.units)
        step, decision, skipped, quota, drafted = None, None, False, None, []
        if open_sentence.units:
            step, skipped, accessible, quota = yield from self._draft(open_sentence, accessible)
            if step is not None:
                decision = self.policy.decide(step, self.translator, accessible, talk.decisions)
                drafted = self._accept(decision.text)
            if drafted:
                talk.prefix_heard_units = accessible
        self.last_step = self._report(heard.heard_s, open_sentence, len(heard.update.committed), accessible, step,
                                      decision, skipped, quota, units, drafted)
        return units + drafted

    def _draft(self, sentence: SourceSentence, accessible: int
               ) -> Generator[DraftCall, DraftResult, tuple[DraftResult | None, bool, int, int | None]]:
        """Draft the open sentence (or reuse the last draft when nothing it depends on changed, or skip it when
        the policy can write nothing); also return the frontier in the drafted source's units and the quota."""
        talk = self.talk
        source = strip_sentence_final(sentence.text) if self.guards.strip_open_punctuation else sentence.text
        n_units = len(split_units(source, self.source_options.char_level))  # stripping may drop a "." unit
        accessible = min(accessible, n_units)
        quota = self.policy.quota(accessible, talk.decisions)
        whole = self.options.whole_drafts
        if quota == 0 and not whole:
            return None, False, accessible, quota
        stop_at = None if whole else self.policy.stop_rule(accessible)
        key = _DraftKey(source, accessible, talk.target_prefix, tuple(talk.history),
                        stops_early=stop_at is not None, max_units=None if whole else quota)
        if self.guards.skip_unchanged_drafts and talk.last_draft is not None and talk.last_draft[0] == key:
            return talk.last_draft[1], True, accessible, quota
        step = yield DraftCall(key.source, accessible, key.target_prefix, key.history, stop_at=stop_at,
                               max_units=key.max_units)
        talk.last_draft = (key, step)
        return step, False, accessible, quota

    def _finish_committed(self, end_of_stream: bool = False) -> list[str]:
        """Translate every committed sentence to its end (a carried one goes on with the next, until the stream
        ends)."""
        talk, units = self.talk, []
        while (sentence := talk.source.pop_committed()) is not None:
            if talk.carried is not None:
                sentence, talk.carried = join_sentences(talk.carried, sentence), None
            if self._carries(sentence):
                talk.carried = sentence
            else:
                units += self._finish_sentence(sentence)
        if end_of_stream and talk.carried is not None:
            units += self._finish_sentence(talk.carried)
            talk.carried = None
        return units

    def _finish_sentence(self, sentence: SourceSentence) -> list[str]:
        talk, char_level = self.talk, self.translator.char_level
        must_continue = final_pass_must_continue(talk.target_prefix, len(sentence.units), talk.prefix_heard_units)
        text = self.translator.finish(sentence.text, talk.target_prefix, tuple(talk.history),
                                      must_continue=must_continue, stop_text=final_pass_stop(self.guards, char_level))
        units = self._accept(final_pass_text(talk.target_prefix, text, char_level, self.guards))
        if self.options.history_sentences:
            talk.history.append((sentence.text, talk.target_prefix))
        talk.target_prefix = ""
        talk.prefix_heard_units = 0
        talk.decisions = SentenceDecisions()
        talk.last_draft = None
        return units

    def _carries(self, sentence: SourceSentence) -> bool:
        """Whether a committed sentence goes on with the next one: the frontier had passed its end when text was
        last written, so that text may already translate the next sentence's words."""
        return (self.options.carry_committed and sentence.reason == "agreed"
                and self.talk.prefix_heard_units > len(sentence.units)
                and len(sentence.units) < MAX_CARRIED_UNITS)

    def _report(self, heard_s: float, sentence: SourceSentence, n_committed: int, accessible: int,
                step: DraftResult | None, decision: Decision | None, skipped: bool, quota: int | None,
                finished: list[str], drafted: list[str]) -> StepReport:
        draft = self.translator.continuation_text(step.prompt, step.draft_ids) if step else ""
        stop = ""
        if step is not None and decision.gate.stopped:
            stopped_token = self.translator.token_text(step.draft_ids[decision.gate.n_accepted_tokens])
            stop = describe_stop(decision.gate, step.prompt, stopped_token)
        return StepReport(
            heard_s=heard_s, transcript=sentence.text, held=self.talk.source.held_text, n_committed=n_committed,
            n_source_units=len(sentence.units), n_stable_units=sentence.n_stable_units,
            n_accessible_units=accessible, draft=draft, draft_skipped=skipped,
            n_draft_tokens=len(step.draft_ids) if step else 0,
            n_accepted_tokens=decision.gate.n_accepted_tokens if step else 0, stop=stop, quota=quota,
            written=(("" if self.translator.char_level else " ").join(finished + drafted)),
            n_drafted_units=len(drafted))

    def _accept(self, new_text: str) -> list[str]:
        """Append accepted text to the open sentence's translation; return its units."""
        if not new_text.strip():
            return []
        talk = self.talk
        talk.target_prefix = (talk.target_prefix + new_text).strip()
        return split_units(new_text, self.translator.char_level)
