"""The AlignAtt agent with a stopwatch on every policy call, for computation-aware latency.

SimulEval's `elapsed` is audio read + the wall time since the talk started, so over a long-form talk it
accumulates every earlier step's compute. The standard computation-aware emission time (SimulStream's: audio
processed + computation time of the step that emitted) needs the compute time of each step, which this
subclass writes to OUTPUT/steps.jsonl, one line per policy call, with the cascade's step report (transcript,
frontier, draft, what stopped it, whether the draft was skipped). Everything else is AlignAttAgent itself.

    PYTHONPATH=. simuleval --agent-class alignatt_eval.runners.timed_agent.TimedAlignAttAgent --output OUT ...
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from simuleval.agents.actions import WriteAction

from agents.alignatt_agent import AlignAttAgent
from alignatt.model_pool import ModelPool

STEPS_FILE = "steps.jsonl"


class TimedAlignAttAgent(AlignAttAgent):
    def __init__(self, args, models: ModelPool | None = None):
        super().__init__(args, models)
        output = getattr(args, "output", None)
        self._steps_path = Path(output) / STEPS_FILE if output else None
        self._n_finished = 0  # instances finished so far: the index of the talk a step belongs to

    def policy(self, states=None):
        states = states if states is not None else self.states
        start = time.perf_counter()
        action = super().policy(states)
        compute_ms = (time.perf_counter() - start) * 1000.0
        # A cached ASR answered in ~0 ms: count the time the ASR took when the answer was recorded.
        take_replayed_ms = getattr(self.cascade.asr, "take_replayed_ms", None)
        if take_replayed_ms is not None:
            compute_ms += take_replayed_ms()
        if self._steps_path is not None:
            rate = states.source_sample_rate or 16000
            written = action.content if isinstance(action, WriteAction) else ""
            step = self.cascade.last_step
            line = json.dumps({"source_ms": len(states.source) * 1000.0 / rate, "compute_ms": compute_ms,
                               "written": written, "finished": bool(states.source_finished),
                               "instance": self._n_finished, "step": dataclasses.asdict(step) if step else None},
                              ensure_ascii=False)
            # Opened per step: a sweep worker builds many agents in one process and must not leak their files.
            with self._steps_path.open("a", encoding="utf-8") as steps:
                steps.write(line + "\n")
        self._n_finished += bool(states.source_finished)
        return action
