"""`python -m alignatt.demo`: the live demo on tiny random-init models, scored by the real OmniSTEval, and the
choice of its default models."""
import json
import subprocess
import sys
from pathlib import Path

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
