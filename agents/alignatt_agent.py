"""SimulEval entry point: AlignAtt4LLM speech-to-text agent (thin glue over alignatt.cascade).

    simuleval --agent agents/alignatt_agent.py --source wavs.txt --target refs.txt \
        --source-segment-size 850 --preset low --target-lang de --eval-latency-unit word --output out/
"""
from __future__ import annotations

import logging
import os
import sys

import numpy as np
from simuleval.agents import SpeechToTextAgent
from simuleval.agents.actions import ReadAction, WriteAction
from simuleval.utils import entrypoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from alignatt.factory import add_arguments, build_cascade  # noqa: E402
from alignatt.heads import HeadsFileError  # noqa: E402
from alignatt.text_units import is_char_level  # noqa: E402

logger = logging.getLogger(__name__)


@entrypoint
class AlignAttAgent(SpeechToTextAgent):
    """Writes every newly accepted target unit once per source chunk; everything left on the final call."""

    def __init__(self, args):
        super().__init__(args)
        try:
            self.cascade = build_cascade(args)
        except (HeadsFileError, ValueError, OSError) as err:
            raise SystemExit(f"alignatt agent: {err}") from err
        self.joiner = "" if is_char_level(self.cascade.translator.prompts.config.target_lang) else " "
        self._n_samples_seen = 0

    @staticmethod
    def add_args(parser):
        add_arguments(parser)

    def reset(self):
        super().reset()
        self.cascade.reset()
        self._n_samples_seen = 0

    def _new_audio(self, states) -> np.ndarray:
        # states.source is a Python list that grows with the talk: convert only what is new.
        new = np.asarray(states.source[self._n_samples_seen:], dtype=np.float32)
        self._n_samples_seen = len(states.source)
        return new

    def policy(self, states=None):
        states = states if states is not None else self.states
        audio = self._new_audio(states)
        rate = states.source_sample_rate or 16000
        units = self.cascade.push(audio, rate) if audio.size else []
        if states.source_finished:
            units += self.cascade.finish()
            return WriteAction(self.joiner.join(units), finished=True)
        if units:
            return WriteAction(self.joiner.join(units), finished=False)
        return ReadAction()
