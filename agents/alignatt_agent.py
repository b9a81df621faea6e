"""SimulEval entry point: AlignAtt4LLM speech-to-text agent (thin glue over alignatt.stream.cascade).

    simuleval --agent agents/alignatt_agent.py --source wavs.txt --target refs.txt \
        --source-segment-size 850 --preset low --target-lang de --eval-latency-unit word --output out/
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
from simuleval.agents import SpeechToTextAgent
from simuleval.agents.actions import ReadAction, WriteAction
from simuleval.utils import entrypoint

from alignatt.factory import add_arguments, build_cascade, check_known
from alignatt.mt.heads import HeadsFileError
from alignatt.model_pool import ModelPool
from alignatt.text_units import is_char_level

logger = logging.getLogger(__name__)


def engine_options(args):
    """SimulEval hands parsed flags; SimulStream's SimulEvalWrapper hands its YAML, where the engine options
    sit under `alignatt:` and are checked strictly (a typo is an error, not a silently ignored key)."""
    nested = getattr(args, "alignatt", None)
    if nested is None:
        return args
    options = dict(vars(nested))
    check_known(options)
    return SimpleNamespace(**options)


@entrypoint
class AlignAttAgent(SpeechToTextAgent):
    """Writes every newly accepted target unit once per source chunk; everything left on the final call."""

    def __init__(self, args, models: ModelPool | None = None):
        """`models`: already loaded models to build the cascade around (a sweep worker's pool); None loads them."""
        try:
            # Before super(): GenericAgent.__init__ calls reset().
            self.cascade = build_cascade(engine_options(args), models)
        except (HeadsFileError, ValueError, OSError) as err:
            raise SystemExit(f"alignatt agent: {err}") from err
        self.joiner = "" if is_char_level(self.cascade.translator.prompts.config.target_lang) else " "
        self._n_samples_seen = 0
        super().__init__(args)

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
