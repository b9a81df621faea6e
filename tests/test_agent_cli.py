"""The agent under the real `simuleval` CLI, scored by the real `omnisteval`, with tiny random-init models."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from scipy.signal import resample_poly

from agent_fixtures import SPEECH_DIR, save_tiny_checkpoints, write_instance_lists, write_wav

AGENT = str(Path(__file__).resolve().parents[1] / "agents" / "alignatt_agent.py")
FAST = ["--mt-max-final-tokens", "12", "--mt-max-draft-tokens", "6"]
pytestmark = pytest.mark.slow  # simuleval, simulstream and compile subprocesses


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("agent"))


def simuleval(source, target, output, *flags, timeout=600):
    command = ["simuleval", "--agent", AGENT, "--source", source, "--target", target, "--output", str(output),
               "--source-segment-size", "850", "--target-lang", "de", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def read_instances(output):
    return [json.loads(line) for line in (Path(output) / "instances.log").read_text().splitlines()]


def test_simuleval_run_scored_by_omnisteval(checkpoints, tmp_path):
    wav = SPEECH_DIR / "simuleval_test.wav"  # 22.05 kHz: resampled on the way in
    reference = (SPEECH_DIR / "simuleval_test.en.txt").read_text().strip()
    source, target = write_instance_lists(tmp_path, [wav], [reference])
    done = simuleval(source, target, tmp_path / "out", "--preset", "low", *checkpoints.agent_flags(), *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    [instance] = read_instances(tmp_path / "out")
    words = instance["prediction"].split()
    assert words and len(instance["delays"]) == len(words)  # every written word got its own delay
    assert instance["delays"] == sorted(instance["delays"])
    assert instance["delays"][-1] <= instance["source_length"] + 1e-6
    duration_s = soundfile.info(str(wav)).duration
    (tmp_path / "segments.yaml").write_text(f"- {{wav: {wav.name}, offset: 0.0, duration: {duration_s}}}\n")
    scored = subprocess.run(
        ["omnisteval", "longform", "--speech_segmentation", str(tmp_path / "segments.yaml"),
         "--source_sentences_file", target, "--ref_sentences_file", target,
         "--hypothesis_file", str(tmp_path / "out" / "instances.log"), "--hypothesis_format", "jsonl",
         "--lang", "de", "--word_level", "--bleu_tokenizer", "13a", "--output_folder", str(tmp_path / "scores")],
        capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "LongYAAL (CU)" in scored.stdout
    yaal = next(line for line in scored.stdout.splitlines() if "LongYAAL (CU)" in line).split()[-1]
    assert np.isfinite(float(yaal))


def test_bad_audio_never_crashes_mid_talk(checkpoints, tmp_path):
    speech, rate = soundfile.read(str(SPEECH_DIR / "simuleval_test.wav"))
    wavs = [write_wav(tmp_path / "8k.wav", resample_poly(speech, 160, 441), 8000),
            write_wav(tmp_path / "stereo.wav", np.stack([speech, 0.5 * speech], axis=1), rate),
            write_wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000),
            write_wav(tmp_path / "silent.wav", np.zeros(3 * 16000, dtype=np.float32), 16000)]
    source, target = write_instance_lists(tmp_path, wavs, ["a", "b", "c", "d"])
    done = simuleval(source, target, tmp_path / "out", *checkpoints.agent_flags(), *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    instances = read_instances(tmp_path / "out")
    assert len(instances) == 4
    assert instances[2]["prediction"] == ""  # empty wav: empty translation
    for instance in instances:
        assert len(instance["delays"]) == len(instance["prediction"].split())


def test_missing_heads_file_is_a_clear_error(checkpoints, tmp_path):
    source, target = write_instance_lists(tmp_path, [SPEECH_DIR / "simuleval_test.wav"], ["x"])
    flags = checkpoints.agent_flags()
    flags[flags.index("--heads") + 1] = str(tmp_path / "missing.json")
    done = simuleval(source, target, tmp_path / "out", *flags)
    assert done.returncode != 0
    assert "heads file not found" in done.stderr and "Traceback" not in done.stderr


REPO = Path(__file__).resolve().parents[1]
# SimulStream imports the agent as `agents.alignatt_agent`: the repository root must be importable.
SIMULSTREAM_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def simulstream_config(checkpoints, path, **extra):
    config = yaml.safe_load((REPO / "configs" / "simulstream" / "alignatt_low.yaml").read_text())
    flags = checkpoints.agent_flags() + FAST
    config["alignatt"].update({flag[2:].replace("-", "_"): value for flag, value in zip(flags[::2], flags[1::2])})
    config["alignatt"].update(extra)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_simulstream_runs_the_agent(checkpoints, tmp_path):
    wav = SPEECH_DIR / "simuleval_test.wav"
    config = simulstream_config(checkpoints, tmp_path / "config.yaml")
    (tmp_path / "wavs.txt").write_text(f"{wav}\n")
    log = tmp_path / "metrics.jsonl"
    done = subprocess.run(["simulstream_inference", "--speech-processor-config", config, "--wav-list-file",
                           str(tmp_path / "wavs.txt"), "--tgt-lang", "de", "--metrics-log-file", str(log)],
                          capture_output=True, text=True, timeout=600, env=SIMULSTREAM_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [row for row in map(json.loads, log.read_text().splitlines()) if "generated_tokens" in row]
    written = [token for step in steps for token in step["generated_tokens"]]
    assert written and all(not step["deleted_tokens"] for step in steps)  # append-only
    duration_s = soundfile.info(str(wav)).duration
    (tmp_path / "segments.yaml").write_text(f"- {{wav: {wav.name}, offset: 0.0, duration: {duration_s}}}\n")
    (tmp_path / "ref.txt").write_text("a reference\n")
    scored = subprocess.run(
        ["omnisteval", "longform", "--speech_segmentation", str(tmp_path / "segments.yaml"),
         "--ref_sentences_file", str(tmp_path / "ref.txt"), "--hypothesis_file", str(log),
         "--hypothesis_format", "simulstream", "--simulstream_config_file", config, "--lang", "de",
         "--word_level", "--output_folder", str(tmp_path / "scores")],
        capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "LongYAAL (CU)" in scored.stdout


def test_simulstream_config_typo_is_an_error(checkpoints, tmp_path):
    config = simulstream_config(checkpoints, tmp_path / "config.yaml", target_lnag="it")
    (tmp_path / "wavs.txt").write_text(f"{SPEECH_DIR / 'simuleval_test.wav'}\n")
    done = subprocess.run(["simulstream_inference", "--speech-processor-config", config, "--wav-list-file",
                           str(tmp_path / "wavs.txt"), "--metrics-log-file", str(tmp_path / "m.jsonl")],
                          capture_output=True, text=True, timeout=300, env=SIMULSTREAM_ENV)
    assert done.returncode != 0 and "unknown option(s): target_lnag" in done.stderr


COMPILE_SCRIPT = """
import argparse, sys
import soundfile
from torch._dynamo.utils import counters
from alignatt.factory import add_arguments, build_cascade

parser = argparse.ArgumentParser()
parser.add_argument("--wav")
add_arguments(parser)
args = parser.parse_args(sys.argv[1:])
cascade = build_cascade(args)
compiled_at_load = counters["stats"]["unique_graphs"]
audio, rate = soundfile.read(args.wav, dtype="float32")
units = []
for start in range(0, len(audio), rate // 2):
    units += cascade.push(audio[start:start + rate // 2], rate)
units += cascade.finish()
print("graphs", compiled_at_load, counters["stats"]["unique_graphs"], "units", len(units))
"""


def test_compiled_models_compile_nothing_during_the_talk(checkpoints, tmp_path):
    """Compiled decoding (aot_eager traces the CUDA graphs' dynamo graphs on CPU) for the ASR and the translator:
    all graphs exist once the agent is built. Run in a fresh process: transformers invalidates compiled graphs
    when a model class is first constructed, so both models must be loaded before either warms up."""
    wav = write_wav(tmp_path / "talk.wav", soundfile.read(SPEECH_DIR / "simuleval_test.wav")[0][: 22050 * 4], 22050)
    compile_flags = ["--mt-decode", "compiled", "--mt-compile-backend", "aot_eager", "--mt-compile-mode", "default",
                     "--qwen3-decode", "compiled", "--qwen3-compile-backend", "aot_eager",
                     "--qwen3-compile-mode", "default"]
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, "--wav", str(wav), *checkpoints.agent_flags(),
                           *FAST, *compile_flags], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _, at_load, at_end, _, n_units = done.stdout.split()
    assert int(at_load) > 0 and int(n_units) > 0
    assert int(at_end) == int(at_load), done.stderr[-3000:]
