"""`alignatt serve` through the real factory (tiny random-init Qwen3-ASR + Gemma-4 checkpoints on disk): shared
models, per-session decoders, simulstream's own client and log reader, and SIGTERM on the real command."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile
import websockets

from agent_fixtures import SPEECH_DIR, save_tiny_checkpoints
from alignatt.model_pool import ModelPool
from alignatt.serve.cli import language_flags, parse_args
from alignatt.serve.server import setup_metrics_log
from alignatt.serve.session import FactoryBuilder, SessionOptions, appended_text
from serve_fixtures import ServerThread, alone, receive_all

FAST = ["--mt-max-final-tokens", "12", "--mt-max-draft-tokens", "6"]
WAV = SPEECH_DIR / "simuleval_test.wav"  # 6.85 s at 22.05 kHz: resampled on the way in
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # checkpoints loaded through the factory; a subprocess


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    return ["--models", "full", *save_tiny_checkpoints(tmp_path_factory.mktemp("serve")).agent_flags(), *FAST]


@pytest.fixture(scope="module")
def builder(flags):
    return FactoryBuilder(parse_args(flags), ModelPool(), language_flags("full"))


def test_sessions_share_the_models_and_own_their_decoders(builder):
    first, second = builder.build(builder.defaults), builder.build(SessionOptions(policy="wait-k"))
    assert first.translator.model is second.translator.model and first.asr is second.asr
    assert first.translator.decoder is not second.translator.decoder  # prompt cache and draft memory per session
    assert [key[0] for key in builder.models.loads].count("translator") == 1
    assert [key[0] for key in builder.models.loads].count("asr") == 1
    assert builder.languages == ("de",)  # the tiny heads are en-de; no shipped en-it/en-zh heads for them


def test_simulstream_s_own_client_drives_the_server(builder, tmp_path, caplog):
    """simulstream's wav client streams the repo's test wav; its answers and the metrics log (read by simulstream's
    own LogReader) hold the text of the talk served alone."""
    from simulstream.client.wav_reader_client import read_wav_file, stream_wav_files
    from simulstream.metrics.readers import LogReader

    log = tmp_path / "metrics.jsonl"
    setup_metrics_log(str(log))
    caplog.set_level(logging.DEBUG, logger="simulstream.wav_reader_client")
    try:
        with ServerThread(builder, fixed_chunks=True) as served:
            asyncio.run(stream_wav_files(served.url, [str(WAV)], chunk_duration_ms=100, tgt_lang="de"))
    finally:
        setup_metrics_log(None)
    answers = [json.loads(r.getMessage()) for r in caplog.records if r.name == "simulstream.wav_reader_client"
               and r.getMessage().startswith("{")]
    rate, samples = read_wav_file(str(WAV))
    expected = alone(builder, builder.defaults, samples, rate)
    assert expected and answers[-1] == {"end_of_processing": True}
    assert "".join(a.get("new", "") for a in answers) == appended_text(expected, False)
    reader = LogReader(SimpleNamespace(detokenizer_type="simuleval", latency_unit="word"), str(log))
    [(name, output)] = reader.final_outputs_and_latencies().items()
    assert name == WAV.stem and output.final_text == " ".join(expected)
    assert len(output.ideal_delays) == len(expected) and output.ideal_delays == sorted(output.ideal_delays)


def test_sigterm_gives_an_open_talk_its_final_pass(flags, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    server = subprocess.Popen([sys.executable, "-m", "alignatt.serve", *flags, "--port", "0", "--metrics-log",
                               str(tmp_path / "metrics.jsonl")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    try:
        line = server.stdout.readline()  # "serving http://127.0.0.1:PORT/ ..." once the models are loaded
        port = int(line.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        samples, rate = soundfile.read(str(WAV), dtype="int16")

        async def half_a_talk():
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send(json.dumps({"sample_rate": rate}))
                for offset in range(0, len(samples) // 2, rate // 10):
                    await ws.send(samples[offset:offset + rate // 10].tobytes())
                await asyncio.sleep(2.0)
                server.send_signal(signal.SIGTERM)
                messages = await receive_all(ws, timeout_s=120)
            return messages, ws.close_code
        messages, close_code = asyncio.run(half_a_talk())
        assert server.wait(timeout=120) == 0
    finally:
        server.kill()
    assert messages[-1] == {"end_of_processing": True} and messages[-2]["final"] and close_code == 1001
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("generated_tokens" in step for step in steps)
