"""Loaded models kept across cascades, so that a process running many talks or configs loads each model once.

A sweep worker runs one (config, talk) job after another; jobs that differ only in policy, gate or prompt
options share the same translator weights, decoder and ASR backend. Keys hold everything that changes what is
loaded (model id, revision, device, dtype, backend options, decode path), never what only changes how it is
used, so two cascades get the same object exactly when loading it again would give the same model.
"""
from __future__ import annotations

import logging
from typing import Callable, Hashable, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ModelPool:
    """A dictionary of loaded models by identity key; `get` loads on the first request only."""

    def __init__(self):
        self._models: dict[Hashable, object] = {}
        self.loads: list[Hashable] = []  # keys in the order they were loaded (a worker's log and the tests read it)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._models

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        if key not in self._models:
            logger.info("loading %s", key[0] if isinstance(key, tuple) else key)
            self._models[key] = load()
            self.loads.append(key)
        return self._models[key]
