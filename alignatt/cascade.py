"""The per-talk cascade: audio in, newly accepted target units out. Harness-free.

Each chunk: append audio -> re-transcribe the open sentence -> finish every sentence the ASR committed
(translated to the end, without the gate, after what was already accepted for it) -> draft the open
sentence and keep what the AlignAtt gate accepts. Output is append-only: units once returned are final.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer
from alignatt.asr import AsrBackend
from alignatt.baselines import AlignAttPolicy, DraftPolicy, SentenceDecisions
from alignatt.source import SourceOptions, SourceSentence, SourceState
from alignatt.text_units import split_units
from alignatt.transcriber import IncrementalTranscriber, TranscriberOptions
from alignatt.translator import Translator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CascadeOptions:
    step_ms: float = field(default=850.0, metadata={
        "help": "audio gathered before each ASR + translation step (the preset's chunk size)"})
    min_audio_s: float = field(default=2.0, metadata={"help": "translation starts after this much audio"})
    history_sentences: int = field(default=0, metadata={
        "help": "earlier (source, translation) sentence pairs shown in the prompt"})

    def __post_init__(self):
        if self.step_ms < 0 or self.min_audio_s < 0 or self.history_sentences < 0:
            raise ValueError(f"invalid cascade options: {self}")


# Published operating points: chunk size decides the latency regime (IWSLT 2026 low 0-2 s, high 2-4 s).
PRESETS = {"low": {"step_ms": 850.0}, "high": {"step_ms": 1500.0}}


@dataclass
class TalkState:
    """Everything that belongs to one talk; models are shared across talks."""

    audio: AudioBuffer
    transcriber: IncrementalTranscriber
    source: SourceState
    history: deque  # (source, translation) of the last finished sentences
    target_prefix: str = ""  # accepted translation of the open sentence
    unprocessed_s: float = 0.0  # audio appended since the last step
    decisions: SentenceDecisions = field(default_factory=SentenceDecisions)  # the policy's open-sentence state


class Cascade:
    """Incremental ASR + AlignAtt-gated LLM translation for one talk at a time."""

    def __init__(self, asr: AsrBackend, translator: Translator, options: CascadeOptions = CascadeOptions(),
                 transcriber_options: TranscriberOptions = TranscriberOptions(),
                 source_options: SourceOptions = SourceOptions(), policy: DraftPolicy | None = None):
        self.asr = asr
        self.translator = translator
        self.options = options
        self.transcriber_options = transcriber_options
        self.source_options = source_options
        self.policy = policy or AlignAttPolicy()  # decides how much of each draft is written
        self.talk = self._new_talk()

    def _new_talk(self) -> TalkState:
        return TalkState(audio=AudioBuffer(), transcriber=IncrementalTranscriber(self.asr, self.transcriber_options),
                         source=SourceState(self.source_options),
                         history=deque(maxlen=self.options.history_sentences or None))

    def reset(self) -> None:
        """Start a new talk."""
        self.talk = self._new_talk()

    @property
    def heard_s(self) -> float:
        return self.talk.audio.duration_s

    def push(self, samples: np.ndarray, sample_rate_hz: int) -> list[str]:
        """Feed one chunk of audio; return the target units accepted because of it.

        A step (ASR + translation) runs once `step_ms` of audio has gathered since the last one.
        """
        talk = self.talk
        talk.unprocessed_s += talk.audio.append(samples, sample_rate_hz) / SAMPLE_RATE_HZ
        # 1 ms slack: a resampled input may lag its nominal chunk length by a fraction of a millisecond.
        if talk.unprocessed_s * 1000.0 < self.options.step_ms - 1.0 or self.heard_s < self.options.min_audio_s:
            return []
        talk.unprocessed_s = 0.0
        talk.source.apply(talk.transcriber.update(talk.audio))
        talk.audio.discard_before(talk.transcriber.boundary_s)  # committed audio is never read again
        units = self._finish_committed()
        open_sentence = talk.source.open_sentence
        if open_sentence.units:
            units += self._draft(open_sentence)
        return units

    def finish(self) -> list[str]:
        """End of stream: commit and translate everything still open; return the remaining units."""
        talk = self.talk
        talk.audio.finish()
        if talk.audio.num_samples == 0:
            return []
        talk.source.apply(talk.transcriber.finish(talk.audio))
        return self._finish_committed()

    def _draft(self, sentence: SourceSentence) -> list[str]:
        talk = self.talk
        accessible = talk.source.accessible_units(self.heard_s)
        step = self.translator.draft(sentence.text, accessible, talk.target_prefix, tuple(talk.history))
        return self._accept(self.policy.accept(step, self.translator, accessible, talk.decisions))

    def _finish_committed(self) -> list[str]:
        talk, units = self.talk, []
        while (sentence := talk.source.pop_committed()) is not None:
            units += self._accept(self.translator.finish(sentence.text, talk.target_prefix, tuple(talk.history)))
            if self.options.history_sentences:
                talk.history.append((sentence.text, talk.target_prefix))
            talk.target_prefix = ""
            talk.decisions = SentenceDecisions()
        return units

    def _accept(self, new_text: str) -> list[str]:
        """Append accepted text to the open sentence's translation; return its units."""
        if not new_text.strip():
            return []
        talk = self.talk
        talk.target_prefix = (talk.target_prefix + new_text).strip()
        return split_units(new_text, self.translator.char_level)
