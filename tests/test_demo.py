"""`python -m alignatt.demo`: the live demo on tiny random-init models, scored by the real OmniSTEval, and the
choice of its default models."""
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from agent_fixtures import SPEECH_DIR, save_tiny_checkpoints
from alignatt import demo

REPO = Path(__file__).resolve().parents[1]
FAST = ["--mt-max-final-tokens", "12", "--mt-max-draft-tokens", "6"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("demo"))


def test_demo_plays_a_talk_and_scores_it_with_omnisteval(checkpoints, tmp_path):
    reference = tmp_path / "reference.de.txt"
    reference.write_text("Dies ist eine synthetische Audiodatei zum Testen Ihres Übersetzungssystems.\n")
    done = subprocess.run(
        [sys.executable, "-m", "alignatt.demo", "--models", "full", "--wav", str(SPEECH_DIR / "simuleval_test.wav"),
         "--reference", str(reference), "--speed", "0", "--out", str(tmp_path / "out"), "--target-lang", "de",
         *checkpoints.agent_flags(), *FAST],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    steps = [line for line in lines if "frontier" in line and "compute" in line]
    assert len(steps) >= 5  # 6.9 s of audio, 850 ms steps, translation from 2 s on
    assert any("heard │" in line for line in lines)
    assert any(line.startswith("OmniSTEval: BLEU") and "LongYAAL CU" in line for line in lines)
    assert "Warning" not in done.stderr  # no tqdm, transformers or heads warning in the demo's own run
    [hypothesis] = [json.loads(line) for line in (tmp_path / "out" / "hypotheses.jsonl").read_text().splitlines()]
    assert len(hypothesis["delays"]) == len(hypothesis["prediction"].split())
    assert hypothesis["delays"] == sorted(hypothesis["delays"])
    assert all(ca >= cu for ca, cu in zip(hypothesis["elapsed_step"], hypothesis["delays"]))
    scores = (tmp_path / "out" / "omnisteval" / "scores.tsv").read_text()
    assert "LongYAAL (CU)" in scores


def test_offline_defaults_fill_only_what_the_user_did_not_set(monkeypatch):
    monkeypatch.setattr(demo, "weights_cached", lambda model_id: False)
    args = demo.parse_args(["--style", "chat"])
    assert args.models == "offline" and args.asr_backend == "whisper" and args.mt_gguf_file.endswith(".gguf")
    assert args.style == "chat"  # the user's flag wins over the proxy default
    assert args.mt_decode == "static" and args.mt_max_cache_tokens == 1024  # prompt KV reuse pays on CPU here
    assert Path(args.heads) == REPO / "calibration" / "results" / "gemma-3-270m.en-de.json"
    assert Path(args.reference) == REPO / "data" / "speech" / "two_cities.de.txt"  # the default talk's reference


def test_full_models_are_used_where_their_weights_are_cached(monkeypatch):
    monkeypatch.setattr(demo, "weights_cached", lambda model_id: True)
    args = demo.parse_args(["--wav", str(SPEECH_DIR / "simuleval_test.wav")])
    assert args.models == "full" and args.asr_backend == "qwen3" and args.heads is None
    assert args.reference is None  # no shipped reference for another talk


def test_offline_demo_without_heads_for_the_direction_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(demo, "weights_cached", lambda model_id: False)
    with pytest.raises(SystemExit, match="calibrated heads for de only"):
        demo.parse_args(["--target-lang", "zh"])


def test_a_missing_wav_is_a_clear_error():
    with pytest.raises(SystemExit, match="no such wav"):
        demo.read_talk("/nonexistent/talk.wav")


class _TimedCascade:
    """Stands in for a Cascade whose every step takes `step_compute_s` of wall time: what `feed` schedules
    around. It records how much audio each push carried."""

    def __init__(self, step_compute_s: float, step_ms: float = 850.0):
        self.options = SimpleNamespace(step_ms=step_ms)
        self.step_compute_s = step_compute_s
        self.pushed: list[int] = []
        self.last_step = None

    def push(self, samples, rate):
        self.pushed.append(len(samples))
        time.sleep(self.step_compute_s)
        self.last_step = SimpleNamespace()  # every push runs a step here
        return ["Wort"]

    def finish(self):
        return []


RATE = 16000
CHUNK = int(RATE * 0.85)


def _talk(chunks: int) -> np.ndarray:
    return np.zeros(chunks * CHUNK, dtype=np.float32)


def test_live_playback_with_catch_up_takes_what_arrived_while_a_slow_step_computed():
    cascade = _TimedCascade(step_compute_s=0.6)  # at 4x, a 0.85 s chunk arrives in 0.21 s
    pushes = list(demo.feed(cascade, _talk(8), RATE, speed=4.0, catch_up=True))
    assert sum(cascade.pushed) == 8 * CHUNK  # all audio pushed, none twice
    assert len(cascade.pushed) < 8 and max(cascade.pushed) > 2 * CHUNK  # steps merged what arrived meanwhile
    assert all(pushed % CHUNK == 0 for pushed in cascade.pushed)  # whole steps: the 850 ms grid is kept
    # While the speaker talks, the text trails by one step's compute (2.4 s of audio at 4x) plus less than a chunk
    # still arriving, not by a backlog.
    for fed in pushes:
        if fed.heard_s < 8 * 0.85:
            assert fed.lag_s(4.0) <= fed.compute_s * 4.0 + 0.85 + 0.1
    assert all(fed.emitted_ms(4.0) >= 1000.0 * fed.heard_s for fed in pushes)  # never before the audio was heard


def test_live_playback_without_catch_up_falls_further_behind_at_each_slow_step():
    cascade = _TimedCascade(step_compute_s=0.6)
    pushes = list(demo.feed(cascade, _talk(8), RATE, speed=4.0, catch_up=False))
    assert cascade.pushed == [CHUNK] * 8
    lags = [fed.lag_s(4.0) for fed in pushes[:-1]]
    assert lags == sorted(lags) and lags[-1] > 8 * (0.6 * 4.0 - 0.85) - 1.0


def test_live_playback_that_keeps_pace_steps_one_chunk_at_a_time():
    cascade = _TimedCascade(step_compute_s=0.0)
    pushes = list(demo.feed(cascade, _talk(4), RATE, speed=4.0, catch_up=True))
    assert cascade.pushed == [CHUNK] * 4
    assert pushes[-1].wall_s >= 4 * 0.85 / 4.0  # it waited for the audio to arrive


def test_as_fast_as_the_models_run_the_ca_time_is_the_audio_heard_plus_the_step():
    fed = demo.Fed(heard_s=2.55, pushed_s=0.85, units=["Es"], compute_s=1.5, wall_s=9.0, report=None)
    assert fed.emitted_ms(0.0) == 4050.0 and fed.lag_s(0.0) == 0.0
    assert fed.emitted_ms(1.0) == 9000.0 and fed.lag_s(1.0) == 9.0 - 2.55  # live: when it appeared


def test_live_demo_keeps_pace_by_taking_bigger_steps(checkpoints):
    """At 50x real time no step of the tiny models computes within its chunk's 17 ms, so the live demo must catch
    up; its CA times are when each word appeared."""
    done = subprocess.run(
        [sys.executable, "-m", "alignatt.demo", "--models", "full", "--wav", str(SPEECH_DIR / "simuleval_test.wav"),
         "--speed", "50", "--target-lang", "de", *checkpoints.agent_flags(), *FAST],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    steps = [line for line in lines if "frontier" in line and "compute" in line]
    assert steps and len(steps) < 6  # 6.9 s of audio: 6 steps of 850 ms from 2 s on, fewer when catching up
    assert any("took" in line and "s of audio" in line for line in steps)
    assert any(line.startswith("live at 50x (catching up): at most") for line in lines)
