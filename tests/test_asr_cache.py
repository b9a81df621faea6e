"""The ASR disk cache: repeated windows are answered from disk, anything that changes the output is a miss."""
import numpy as np

from alignatt.asr.base import AsrBackend, Word
from alignatt.asr.cache import CachedAsr


class CountingAsr(AsrBackend):
    def __init__(self):
        self.calls = 0

    def transcribe(self, audio, offset_s):
        self.calls += 1
        return [Word(f"w{len(audio)}", offset_s, offset_s + 0.5)]


def test_repeated_windows_hit_and_report_the_recorded_time(tmp_path):
    backend = CountingAsr()
    first = CachedAsr(backend, tmp_path, identity="counting:1")
    audio = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    words = first.transcribe(audio, 3.0)
    recorded_ms = first.take_replayed_ms()
    assert recorded_ms == 0.0 and first.misses == 1
    second = CachedAsr(CountingAsr(), tmp_path, identity="counting:1")  # another process, same cache
    assert second.transcribe(audio.copy(), 3.0) == words and second.hits == 1 and second.backend.calls == 0
    assert second.take_replayed_ms() > 0.0 and second.take_replayed_ms() == 0.0


def test_anything_that_changes_the_output_misses(tmp_path):
    cached = CachedAsr(CountingAsr(), tmp_path, identity="counting:1")
    audio = np.zeros(8000, dtype=np.float32)
    cached.transcribe(audio, 0.0)
    cached.transcribe(audio, 0.5)  # another offset: other absolute times
    changed = audio.copy()
    changed[100] = 0.25
    cached.transcribe(changed, 0.0)  # other audio
    CachedAsr(cached.backend, tmp_path, identity="counting:2").transcribe(audio, 0.0)  # other options
    assert cached.backend.calls == 4
