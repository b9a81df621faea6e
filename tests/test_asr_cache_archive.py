"""The curves study's recorded ASR answers (results/curves/asr_cache.tar.xz) and the keys that find them.

`alignatt_eval/studies/curves.sh` unpacks the archive into eval/synth/ before a grid runs, so that a rerun on any
machine replays the transcripts the committed rows ran on (whisper writes other words on other CPUs). That holds only
while `CachedAsr` builds the keys the archive was written with: sha256 of the backend identity, the window's offset
and its float32 samples, stored as asr_cache/KEY[:2]/KEY.json. These tests pin the member names, the entry format,
the key scheme, the identity string the sweep's whisper settings give today and, where espeak-ng 1.51 is installed,
real windows of two talks against the archive.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from alignatt.asr.base import AsrBackend, Word
from alignatt.asr.cache import CachedAsr
from alignatt.asr.whisper import WhisperBackend, WhisperOptions

ARCHIVE = Path(__file__).resolve().parents[1] / "results" / "curves" / "asr_cache.tar.xz"
MEMBER = re.compile(r"asr_cache/([0-9a-f]{2})/(\1[0-9a-f]{62})\.json")
# The identity the archive's answers were recorded under (third to fifth sessions: faster-whisper base, int8, CPU,
# greedy beam with faster-whisper's sampling fallback, whisper's 30 s window, CTranslate2's encoder), before
# WhisperOptions had encoder_window, fit_padding_ms, fit_min_ms (sixth session), temperature_fallback (seventh) and
# encoder (tenth).
RECORDED_IDENTITY = ("whisper:WhisperOptions(model_dir=None, device='cpu', compute_type='int8', cpu_threads=0, "
                     "language='en', beam_size=1)")
# The identity the sweep's whisper settings give today (`--asr-backend whisper`, CTranslate2's encoder, as the
# grids that replay recorded answers name it): entries recorded since the seventh session carry it.
SWEEP_IDENTITY = ("whisper:WhisperOptions(model_dir=None, device='cpu', compute_type='int8', cpu_threads=0, "
                  "language='en', beam_size=1, encoder_window='30s', fit_padding_ms=3000.0, fit_min_ms=10000.0, "
                  "temperature_fallback=False)")
# Windows from the start of a talk (offset 0, whole steps of audio) as the sweep transcribed them, on the talks of
# alignatt_eval.runners.synth_talks with its defaults (espeak-ng 1.51, en-us, 175 wpm, 0.6 s pauses).
KNOWN = {  # (talk, window ms): key
    ("OiqEWDVtWk", 3 * 850): "cbf2d0a1619f14cf0ecb776ea4d31104b5ef54ac270b78dbfb45dfb884ed9c74",
    ("OiqEWDVtWk", 2 * 1500): "dd2d2b30e6db13a1d624db7deec37ea1884d0f5263d852b8dad2fea192ba52f3",
    ("miPjvjWOvI", 3 * 850): "1aa5d03b58226227a59f786f963917ffda436178e28bdb45450449e6cf2c6427",
}
SAMPLE_RATE_HZ = 16000


def member(key: str) -> str:
    return f"asr_cache/{key[:2]}/{key}.json"


def key_of(identity: str, offset_s: float, audio: np.ndarray) -> str:
    """The key as the archive's entries were written: written out here, so a change in CachedAsr fails a test."""
    digest = hashlib.sha256()
    digest.update(identity.encode())
    digest.update(f"{offset_s:.6f}".encode())
    digest.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    return digest.hexdigest()


class NoAsr(AsrBackend):
    """Every answer must come from the cache."""

    def transcribe(self, audio: np.ndarray, offset_s: float) -> list[Word]:
        raise AssertionError("the cache missed")


@pytest.fixture(scope="module")
def names() -> list[str]:
    with tarfile.open(ARCHIVE) as archive:
        return [info.name for info in archive.getmembers() if info.isfile()]


def test_members_are_cache_entries(names):
    assert len(names) > 2000
    assert [name for name in names if not MEMBER.fullmatch(name)] == []
    assert {member(key) for key in KNOWN.values()} <= set(names)


def test_entry_format():
    with tarfile.open(ARCHIVE) as archive:
        entry = json.load(archive.extractfile(member(KNOWN["OiqEWDVtWk", 3 * 850])))
    assert set(entry) == {"compute_ms", "words"} and entry["compute_ms"] > 0
    assert all(isinstance(text, str) and 0 <= start <= end for text, start, end in entry["words"])
    assert " ".join(text for text, _, _ in entry["words"]) == "Hi, I'm Sarah Patti from the universe"


def test_cached_asr_reads_the_archive_layout(tmp_path):
    audio = np.linspace(-0.5, 0.5, 13600, dtype=np.float32)
    key = key_of(RECORDED_IDENTITY, 1.25, audio)
    path = tmp_path / "asr_cache" / key[:2] / f"{key}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"compute_ms": 12.5, "words": [["Hi,", 1.3, 1.5]]}), encoding="utf-8")
    cached = CachedAsr(NoAsr(), tmp_path / "asr_cache", identity=RECORDED_IDENTITY)
    assert cached.transcribe(audio, 1.25) == [Word("Hi,", 1.3, 1.5)]
    assert (cached.hits, cached.take_replayed_ms()) == (1, 12.5)


def test_sweep_identity():
    # WhisperBackend.cache_identity only reads the options; no model is loaded.
    assert WhisperBackend(None, WhisperOptions(encoder="ctranslate2")).cache_identity == SWEEP_IDENTITY


def test_the_recorded_settings_reach_the_archive():
    recorded = WhisperOptions(encoder="ctranslate2", temperature_fallback=True)
    assert WhisperBackend(None, recorded).cache_identity == RECORDED_IDENTITY
    others = [WhisperOptions(encoder="ctranslate2"), WhisperOptions(encoder="ctranslate2", encoder_window="fit",
                                                                    temperature_fallback=True)]
    assert RECORDED_IDENTITY not in {WhisperBackend(None, options).cache_identity for options in others}


def espeak_151() -> bool:
    path = shutil.which("espeak-ng")
    return bool(path) and " 1.51 " in subprocess.run([path, "--version"], capture_output=True, text=True).stdout


@pytest.mark.skipif(not espeak_151(), reason="needs espeak-ng 1.51, which synthesised the study's talks")
def test_recorded_windows_hit_the_archive(tmp_path):
    import soundfile

    from alignatt_eval.runners.dev_set import DevSet
    from alignatt_eval.runners.synth_talks import synth_talk

    source = DevSet.load()
    wanted = {member(key) for key in KNOWN.values()}
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(tmp_path, members=[info for info in archive.getmembers() if info.name in wanted])
    cached = CachedAsr(NoAsr(), tmp_path / "asr_cache", identity=RECORDED_IDENTITY)
    for talk in sorted({talk for talk, _ in KNOWN}):
        wav, _ = synth_talk(source.talk_lines(talk, "en"), 0.6, "en-us", 175, max_seconds=3.0)
        buffer = io.BytesIO()  # as the sweep read it: the 16-bit wav synth_talks writes
        soundfile.write(buffer, wav, SAMPLE_RATE_HZ, subtype="PCM_16", format="WAV")
        buffer.seek(0)
        audio, _ = soundfile.read(buffer, dtype="float32")
        for (name, window_ms), key in KNOWN.items():
            if name == talk:
                window = audio[: window_ms * SAMPLE_RATE_HZ // 1000]
                assert key_of(RECORDED_IDENTITY, 0.0, window) == key
                assert cached.transcribe(window, 0.0)[0].text == "Hi,"
    assert cached.hits == len(KNOWN)
