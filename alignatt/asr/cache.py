"""A disk cache of ASR transcriptions, for sweeps: the ASR side of a talk does not depend on the policy.

The incremental transcriber feeds the same audio windows to the backend whatever the translation policy does
(commits depend on the ASR output only), so every policy run at the same chunk size asks for the same windows.
The key is a hash of the window's samples, its absolute offset and the backend's identity (class and options),
so a changed model, option or audio can never hit a stale entry. Each entry keeps the compute time the backend
spent when it was recorded; `take_replayed_ms` hands that time back to whoever measures computation-aware
latency, so a cached run reports the ASR cost it skipped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from alignatt.asr.base import AsrBackend, Word

logger = logging.getLogger(__name__)


class CachedAsr(AsrBackend):
    """Wraps a backend; answers repeated windows from `cache_dir`."""

    def __init__(self, backend: AsrBackend, cache_dir: str | Path, identity: str):
        self.backend = backend
        self.cache_dir = Path(cache_dir)
        self.identity = identity  # everything besides the audio that changes the output
        self.hits = self.misses = 0
        self._replayed_ms = 0.0

    def _path(self, audio: np.ndarray, offset_s: float) -> Path:
        digest = hashlib.sha256()
        digest.update(self.identity.encode())
        digest.update(f"{offset_s:.6f}".encode())
        digest.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
        key = digest.hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def transcribe(self, audio: np.ndarray, offset_s: float) -> list[Word]:
        path = self._path(audio, offset_s)
        if path.is_file():
            entry = json.loads(path.read_text(encoding="utf-8"))
            self.hits += 1
            self._replayed_ms += entry["compute_ms"]
            return [Word(*word) for word in entry["words"]]
        started = time.perf_counter()
        words = self.backend.transcribe(audio, offset_s)
        compute_ms = (time.perf_counter() - started) * 1000.0
        self.misses += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"compute_ms": compute_ms,
                                       "words": [[w.text, w.start_s, w.end_s] for w in words]}), encoding="utf-8")
        partial.replace(path)  # atomic: a concurrent run never reads half an entry
        return words

    def take_replayed_ms(self) -> float:
        """ASR compute time answered from the cache since the last call (the recorded, not the replayed, time)."""
        replayed, self._replayed_ms = self._replayed_ms, 0.0
        return replayed

    def warm_up(self) -> None:
        self.backend.warm_up()
