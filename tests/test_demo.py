"""`python -m alignatt.cli.demo`: the live demo on tiny random-init models, scored by the real OmniSTEval, and the
choice of its default models."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from agent_fixtures import SPEECH_DIR, save_tiny_checkpoints
from alignatt.cli import demo

REPO = Path(__file__).resolve().parents[1]
FAST = ["--mt-max-final-tokens", "12", "--mt-max-draft-tokens", "6"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("demo"))


@pytest.mark.slow
def test_demo_plays_a_talk_and_scores_it_with_omnisteval(checkpoints, tmp_path):
    reference = tmp_path / "reference.de.txt"
    reference.write_text("Dies ist eine synthetische Audiodatei zum Testen Ihres Übersetzungssystems.\n")
    done = subprocess.run(
        [sys.executable, "-m", "alignatt.cli.demo", "--models", "full", "--wav", str(SPEECH_DIR / "simuleval_test.wav"),
         "--reference", str(reference), "--speed", "0", "--out", str(tmp_path / "out"), "--target-lang", "de",
         *checkpoints.agent_flags(), *FAST],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    steps = [line for line in lines if "frontier" in line and "compute" in line]
    assert len(steps) >= 5  # 6.9 s of audio, 850 ms steps, translation from 2 s on
    assert any("heard │" in line for line in lines)
    assert any(line.startswith("OmniSTEval: BLEU") and "LongYAAL CU" in line for line in lines)
    assert any(line.endswith("the ASR running one step ahead of the translator") for line in lines)  # CPU: on
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
    assert args.whisper_encoder_window == "fit"  # less ASR time, so the demo keeps pace
    assert args.mt_draft_reuse_tokens == 4  # fewer forward passes of the translator, the same text
    assert demo.parse_args(["--whisper-encoder-window", "30s"]).whisper_encoder_window == "30s"
    assert Path(args.heads) == REPO / "alignatt" / "mt" / "heads_files" / "gemma-3-270m.en-de.json"
    assert Path(args.reference) == REPO / "alignatt" / "assets" / "speech" / "two_cities.de.txt"  # the default talk's reference


def test_full_models_are_used_where_their_weights_are_cached(monkeypatch):
    monkeypatch.setattr(demo, "weights_cached", lambda model_id: True)
    args = demo.parse_args(["--wav", str(SPEECH_DIR / "simuleval_test.wav")])
    assert args.models == "full" and args.asr_backend == "qwen3" and args.heads is None
    assert args.reference is None  # no shipped reference for another talk


@pytest.mark.parametrize("lang", ["it", "zh"])
def test_the_offline_demo_runs_every_shipped_direction_with_no_other_flag(monkeypatch, lang):
    monkeypatch.setattr(demo, "weights_cached", lambda model_id: False)
    args = demo.parse_args(["--target-lang", lang])
    assert Path(args.heads) == REPO / "alignatt" / "mt" / "heads_files" / f"gemma-3-270m.en-{lang}.json"
    assert Path(args.few_shot_file) == REPO / "alignatt" / "assets" / "few_shot" / f"en-{lang}.jsonl"
    assert Path(args.reference) == REPO / "alignatt" / "assets" / "speech" / f"two_cities.{lang}.txt"
    own = demo.parse_args(["--target-lang", lang, "--heads", "mine.json"])
    assert own.heads == "mine.json" and own.few_shot_file == args.few_shot_file  # the user's own file wins


def test_offline_demo_without_heads_for_the_direction_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(demo, "weights_cached", lambda model_id: False)
    with pytest.raises(SystemExit, match="ship no heads file for en-fr: pass --heads FILE"):
        demo.parse_args(["--target-lang", "fr"])
    with pytest.raises(SystemExit, match="ship no few-shot file for en-fr: pass --few-shot-file"):
        demo.parse_args(["--target-lang", "fr", "--heads", "heads.json"])


def test_a_missing_wav_is_a_clear_error():
    with pytest.raises(SystemExit, match="no such wav"):
        demo.read_talk("/nonexistent/talk.wav")


class _Clock:
    """Stands in for the `time` module in `alignatt.cli.demo`: sleeping and computing move it on, so the playback
    schedule is exact and the tests take no time."""

    def __init__(self):
        self.now_s = 0.0

    def perf_counter(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += max(0.0, seconds)


class _TimedCascade:
    """Stands in for a Cascade whose every step computes `step_compute_s` on `clock` (in its ASR half): what `feed`
    schedules around. It records how much audio each push carried."""

    def __init__(self, clock: _Clock, step_compute_s: float, step_ms: float = 850.0):
        self.options = SimpleNamespace(step_ms=step_ms)
        self.clock = clock
        self.step_compute_s = step_compute_s
        self.pushed: list[int] = []
        self.last_step = None

    def hear(self, samples, rate):
        self.pushed.append(len(samples))
        self.clock.now_s += self.step_compute_s
        return SimpleNamespace(end_of_stream=False)  # every push runs a step here

    def hear_end(self):
        return None

    def translate(self, heard):
        self.last_step = SimpleNamespace()
        return ["Wort"]


RATE = 16000
CHUNK = int(RATE * 0.85)


def _played(monkeypatch, step_compute_s: float, chunks: int, catch_up: bool) -> tuple[_TimedCascade, list]:
    """Play `chunks` chunks of silence at 4x real time (a chunk arrives every 0.2125 s)."""
    clock = _Clock()
    monkeypatch.setattr(demo, "time", clock)
    cascade = _TimedCascade(clock, step_compute_s)
    pushes = list(demo.feed(cascade, np.zeros(chunks * CHUNK, dtype=np.float32), RATE, speed=4.0, catch_up=catch_up))
    return cascade, pushes


def test_live_playback_with_catch_up_takes_what_arrived_while_a_slow_step_computed(monkeypatch):
    cascade, pushes = _played(monkeypatch, step_compute_s=0.6, chunks=8, catch_up=True)  # 2.4 s of audio at 4x
    # The first chunk at 0.21 s; at 0.81 s 3.25 s of audio have arrived (1 more whole chunk), at 1.41 s 5.65 s (3),
    # at 2.01 s the rest (2).
    assert cascade.pushed == [CHUNK, 2 * CHUNK, 3 * CHUNK, 2 * CHUNK]
    # Behind by a step's compute (2.4 s of audio) plus the part of a chunk that had arrived but was not taken (0.7 s,
    # 0.55 s); the last push returns 3.65 s after the talk's end (6.8 s of audio, arrived at 1.7 s).
    assert [fed.lag_s(4.0) for fed in pushes[:-1]] == pytest.approx([2.4, 3.1, 2.95, 3.65])
    assert all(fed.emitted_ms(4.0) >= 1000.0 * fed.heard_s for fed in pushes)  # never before the audio was heard


def test_live_playback_without_catch_up_falls_further_behind_at_each_slow_step(monkeypatch):
    cascade, pushes = _played(monkeypatch, step_compute_s=0.6, chunks=8, catch_up=False)
    assert cascade.pushed == [CHUNK] * 8
    # Each step adds 2.4 s of compute for 0.85 s of audio: 1.55 s more behind each time.
    assert [fed.lag_s(4.0) for fed in pushes[:-1]] == pytest.approx([2.4 + 1.55 * i for i in range(8)])


def test_live_playback_that_keeps_pace_steps_one_chunk_at_a_time(monkeypatch):
    cascade, pushes = _played(monkeypatch, step_compute_s=0.1, chunks=4, catch_up=True)
    assert cascade.pushed == [CHUNK] * 4
    assert pushes[-1].wall_s == pytest.approx(4 * 0.2125 + 0.1)  # it waited for each chunk to arrive


def test_as_fast_as_the_models_run_the_ca_time_is_the_audio_heard_plus_the_step():
    fed = demo.Fed(heard_s=2.55, pushed_s=0.85, units=["Es"], compute_s=1.5, asr_s=0.5, wall_s=9.0, report=None)
    assert fed.emitted_ms(0.0) == 4050.0 and fed.lag_s(0.0) == 0.0
    assert fed.emitted_ms(1.0) == 9000.0 and fed.lag_s(1.0) == 9.0 - 2.55  # live: when it appeared


@pytest.mark.slow
def test_live_demo_keeps_pace_by_taking_bigger_steps(checkpoints):
    """At 200x real time no step of the tiny models computes within its chunk's 4 ms, so the live demo must catch
    up."""
    done = subprocess.run(
        [sys.executable, "-m", "alignatt.cli.demo", "--models", "full", "--wav", str(SPEECH_DIR / "simuleval_test.wav"),
         "--speed", "200", "--target-lang", "de", *checkpoints.agent_flags(), *FAST],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    steps = [line for line in lines if "frontier" in line and "compute" in line]
    assert steps and len(steps) < 6  # 6.9 s of audio: 6 steps of 850 ms from 2 s on, fewer when catching up
    assert any("took" in line and "s of audio" in line for line in steps)
    assert any(line.startswith("live at 200x (catching up): at most") for line in lines)
