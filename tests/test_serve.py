"""`alignatt serve` on loopback: many sessions on one set of models, each given exactly its own text; faults of one
client stay with that client. Scripted ASR + tiny translator (tests/serve_fixtures.py)."""
from __future__ import annotations

import asyncio
import gc
import json

import numpy as np
import pytest
import websockets

from alignatt.serve.session import SessionError, SessionOptions, appended_text, session_options
from serve_fixtures import (STEP_MS, ScriptedBuilder, ServerThread, alone, receive_all, run_talk, send_talk,
                            talk_words, tone_talk)
from tiny_models import build_gemma4_conditional

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # slow: talks served to clients, ~80 s


@pytest.fixture(scope="module")
def builder(gemma_tok):
    return ScriptedBuilder(build_gemma4_conditional(vocab_size=len(gemma_tok)), gemma_tok)


@pytest.fixture(scope="module")
def talks():
    return [tone_talk(talk_words(seed)) for seed in range(3)]


@pytest.fixture(scope="module")
def alone_units(builder, talks):
    return [alone(builder, builder.defaults, audio) for audio in talks]


def gather(*coroutines):
    async def both():
        return await asyncio.gather(*coroutines)
    return asyncio.run(both())


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


# Session options and text


def test_session_options_take_a_client_s_choices_and_refuse_what_is_not_served():
    defaults = SessionOptions()
    chosen = session_options({"target_lang": "zh", "preset": "high", "policy": "wait-k", "wait_k": 2}, defaults,
                             ("de", "zh"))
    assert chosen == SessionOptions("zh", "high", "wait-k", 2, latency_unit="char")
    assert session_options({"metrics_metadata": {"wav_name": "x"}}, defaults, ("de",)) == defaults
    for message, code in (({"target_lang": "fr"}, "bad_language"), ({"target_lang": "it"}, "bad_language"),
                          ({"source_lang": "de"}, "bad_language"), ({"preset": "fast"}, "bad_option"),
                          ({"wait_k": 0}, "bad_option"), ({"wait_k": "3"}, "bad_option"),
                          ({"latency_unit": "token"}, "bad_option")):
        with pytest.raises(SessionError) as err:
            session_options(message, defaults, ("de", "zh"))
        assert err.value.code == code, message
    with pytest.raises(SessionError, match="it, zh: no alignment heads"):
        session_options({"target_lang": "it"}, defaults, ("de",))


def test_punctuation_on_its_own_joins_the_word_before_it():
    assert appended_text(["Hallo", ",", "Welt", "."], False) == "Hallo, Welt."
    assert appended_text(["schön", "!", "(ja", ")"], False, previous="sehr") == " schön! (ja)"
    assert appended_text(["你", "好", "，", "ACL", "2023", "。"], True, previous="说") == "你好，ACL 2023。"


# Many sessions at once


def test_concurrent_talks_each_get_exactly_their_text_alone(builder, talks, alone_units):
    """Fixed chunks: three clients with different talks at once, each sending as fast as it can; every client gets
    the units of its talk served alone, in order, and nothing else."""
    with ServerThread(builder, fixed_chunks=True) as served:
        results = gather(*(run_talk(served.url, audio) for audio in talks))
        ticks = list(served.scheduler.tick_history)
    assert all(len(set(units)) > 3 for units in alone_units)  # the talks' texts are not trivial
    for result, expected in zip(results, alone_units):
        assert result.finished and not result.errors
        assert result.units == expected
    assert all(len(tick) == len(set(tick)) for tick in ticks)  # no session steps twice in one tick
    assert max(len(tick) for tick in ticks) >= 2  # the talks were served side by side


def test_batched_drafts_give_each_talk_its_text_alone(gemma_tok, talks):
    """Static decoders, so each tick drafts every due session in one batch: in float64 (batched rounding far below
    any greedy margin) each client gets exactly its talk's text alone, with other languages and policies in the
    same batches; with batching off, the same."""
    import torch
    from alignatt.mt.decoding import DecodeConfig

    model = build_gemma4_conditional(vocab_size=len(gemma_tok)).to(torch.float64)
    static = ScriptedBuilder(model, gemma_tok, decode=DecodeConfig(decode="static", max_cache_tokens=512))
    settings = [{}, {"target_lang": "it"}, {"policy": "wait-k", "wait_k": 2}]
    expected = [alone(static, session_options(s, static.defaults, static.languages), audio)
                for s, audio in zip(settings, talks)]
    for batch in ("on", "off", "auto"):  # auto: off on a CPU
        with ServerThread(static, fixed_chunks=True, batch_drafts=batch) as served:
            results = gather(*(run_talk(served.url, audio, s) for s, audio in zip(settings, talks)))
            counts = served.scheduler._batcher.counts
        assert [r.units for r in results] == expected and all(r.finished for r in results)
        assert (counts.rows > counts.batches > 3) if batch == "on" else counts.batches == 0


def test_round_robin_keeps_every_session_within_one_step_of_the_others(builder, talks):
    """Two clients dump their whole talks at once: once both are served, each tick steps both, so the lead the
    first one took before the second connected changes by at most one step while both have audio waiting."""
    with ServerThread(builder, fixed_chunks=True) as served:
        gather(*(run_talk(served.url, audio) for audio in talks[:2]))
        ticks = list(served.scheduler.tick_history)
    n_chunks = len(talks[0]) // int(16000 * STEP_MS / 1000)
    counts, spread = {}, []
    for tick in ticks:
        for session_id in tick:
            counts[session_id] = counts.get(session_id, 0) + 1
        if len(counts) == 2 and max(counts.values()) < n_chunks:  # both served, both with audio waiting
            spread.append(max(counts.values()) - min(counts.values()))
    assert len(spread) > n_chunks // 2 and max(spread) - min(spread) <= 1


def test_live_mode_catches_up_and_keeps_every_unit(builder, talks):
    """Without fixed chunks a client that sent its whole talk at once is served in a few long steps; the text is
    its own (every unit comes once, in order) and ends with the final pass."""
    with ServerThread(builder, fixed_chunks=False) as served:
        result = gather(run_talk(served.url, talks[0]))[0]
    assert result.finished and not result.errors and result.units
    assert [m for m in result.messages if "units" in m][-1]["final"]


def test_a_session_s_language_and_policy_are_its_own(builder, talks, alone_units):
    it_wait_k = SessionOptions("it", policy="wait-k", wait_k=2)
    with ServerThread(builder, fixed_chunks=True) as served:
        de, it = gather(run_talk(served.url, talks[0]),
                        run_talk(served.url, talks[0], {"target_lang": "it", "policy": "wait-k", "wait_k": 2}))
    assert de.units == alone_units[0]
    assert it.units == alone(builder, it_wait_k, talks[0])
    session = [m["session"] for m in it.messages if "session" in m][0]
    assert (session["target_lang"], session["policy"], session["wait_k"]) == ("it", "wait-k", 2)


def test_backpressure_bounds_the_audio_a_session_holds(builder, talks):
    """A client sending far faster than the steps run: the server stops reading it while its queue is full."""
    with ServerThread(builder, fixed_chunks=True, max_queue_s=1.0) as served:
        result = gather(run_talk(served.url, talks[1]))[0]
        peak = served.scheduler.peak_queued_s
    assert result.finished and result.units
    assert peak <= 1.0 + 0.1 + 1e-6  # the limit, plus the one 100 ms frame that crossed it


# Sessions end


def test_a_client_that_leaves_mid_talk_frees_its_session(builder, talks):
    """Five clients leave halfway through their talks: every session is gone from the scheduler and its cascade
    collected, and resident memory after the fifth is within 30 MB of that after the second."""
    before = len(builder.built)
    with ServerThread(builder, fixed_chunks=True) as served:
        async def leave_midway():
            async with websockets.connect(served.url) as ws:
                await ws.send(json.dumps({"sample_rate": 16000}))
                await send_talk(ws, talks[2], end=False, stop_after_s=2.5)
                await asyncio.sleep(0.3)  # some steps run
        rss = []
        for _ in range(5):
            gather(leave_midway())
            for _ in range(100):
                if served.scheduler.n_sessions == 0 and served.server.n_clients == 0:
                    break
                asyncio.run(asyncio.sleep(0.05))
            assert served.scheduler.n_sessions == 0
            gc.collect()
            rss.append(rss_mb())
        assert all(ref() is None for ref in builder.built[before:])
    assert rss[-1] - rss[1] < 30


def test_above_max_sessions_a_client_is_told_busy_and_the_others_go_on(builder, talks, alone_units):
    with ServerThread(builder, fixed_chunks=True, max_sessions=2) as served:
        async def third_after_others_started():
            await asyncio.sleep(0.3)
            async with websockets.connect(served.url) as ws:
                messages = await receive_all(ws, until_end=False, timeout_s=10)
            return messages, ws.close_code
        first, second, (busy, code) = gather(run_talk(served.url, talks[0], speed=4.0),
                                             run_talk(served.url, talks[1], speed=4.0),
                                             third_after_others_started())
    assert busy[0]["error"] == "busy" and code == 1013
    assert first.units == alone_units[0] and second.units == alone_units[1]


def test_shutdown_gives_open_talks_their_final_pass(builder, talks):
    """What SIGTERM does (`request_shutdown`): a talk in the middle gets its final pass and end_of_processing, then
    'going away'; a client that sent no audio yet is told the server is shutting down."""
    served = ServerThread(builder, fixed_chunks=True).__enter__()

    async def mid_talk():
        async with websockets.connect(served.url) as ws:
            await ws.send(json.dumps({"sample_rate": 16000}))
            await send_talk(ws, talks[2], end=False, stop_after_s=3.0)
            await asyncio.sleep(0.5)
            served.shutdown_soon()
            messages = await receive_all(ws, timeout_s=30)
        return messages, ws.close_code

    async def idle():
        async with websockets.connect(served.url) as ws:
            messages = await receive_all(ws, until_end=False, timeout_s=30)
        return messages, ws.close_code

    (talk, talk_code), (quiet, quiet_code) = gather(mid_talk(), idle())
    served.shutdown()
    assert talk[-1] == {"end_of_processing": True} and talk[-2]["final"] and talk_code == 1001
    assert quiet[0]["error"] == "shutting_down" and quiet_code == 1001


# Faults of one client


def test_malformed_frames_get_an_error_and_the_talk_goes_on(builder, talks, alone_units):
    with ServerThread(builder, fixed_chunks=True) as served:
        async def clumsy():
            async with websockets.connect(served.url) as ws:
                await ws.send("this is not json")
                await ws.send("[1, 2]")
                await ws.send(b"\x01\x02\x03")  # not whole 16-bit samples
                await ws.send(json.dumps({"sample_rate": 16000}))
                receiving = asyncio.create_task(receive_all(ws))
                await send_talk(ws, talks[0])
                return await receiving
        messages, other = gather(clumsy(), run_talk(served.url, talks[1]))
    assert [m["error"] for m in messages if "error" in m] == ["bad_message", "bad_message", "bad_audio"]
    assert [u for m in messages for u in m.get("units", [])] == alone_units[0]
    assert other.units == alone_units[1]


@pytest.mark.parametrize("settings, code", [({"sample_rate": 12}, "bad_sample_rate"),
                                            ({"sample_rate": "16000"}, "bad_sample_rate"),
                                            ({"target_lang": "fr"}, "bad_language"),
                                            ({"preset": "fastest"}, "bad_option")])
def test_bad_settings_end_that_client_only(builder, talks, alone_units, settings, code):
    with ServerThread(builder, fixed_chunks=True) as served:
        async def wrong():
            async with websockets.connect(served.url) as ws:
                await ws.send(json.dumps(settings))
                messages = await receive_all(ws, until_end=False, timeout_s=10)
            return messages, ws.close_code
        (messages, close_code), other = gather(wrong(), run_talk(served.url, talks[1]))
    assert messages[0]["error"] == code and close_code == 1008
    assert other.units == alone_units[1]


def test_an_oversized_frame_closes_that_connection_only(builder, talks, alone_units):
    with ServerThread(builder, fixed_chunks=True, max_frame_bytes=64000) as served:
        async def oversized():
            async with websockets.connect(served.url) as ws:
                await ws.send(json.dumps({"sample_rate": 16000}))
                await ws.send(np.zeros(40000, np.int16).tobytes())
                await receive_all(ws, until_end=False, timeout_s=10)
            return ws.close_code
        close_code, other = gather(oversized(), run_talk(served.url, talks[1]))
    assert close_code == 1009  # message too big
    assert other.units == alone_units[1]


# Access


def test_the_token_is_needed_in_the_url_or_the_first_message(builder, talks):
    short = talks[0][:16000 * 2]
    with ServerThread(builder, fixed_chunks=True, token="s3cret") as served:
        async def without(first: dict | None, path: str = ""):
            async with websockets.connect(served.url + path) as ws:
                if first is not None:
                    await ws.send(json.dumps(first))
                await ws.send(short[:1600].tobytes())
                messages = await receive_all(ws, until_end=False, timeout_s=10)
            return messages, ws.close_code
        (none, none_code), (wrong, wrong_code) = gather(without(None), without({"token": "guess"}))
        in_url = gather(run_talk(served.url + "?token=s3cret", short))[0]
        first = gather(run_talk(served.url, short, {"token": "s3cret"}))[0]
    assert none[0]["error"] == wrong[0]["error"] == "unauthorized" and none_code == wrong_code == 1008
    assert in_url.finished and first.finished and not in_url.errors and not first.errors


def test_browsers_from_other_origins_are_refused(builder, talks):
    short = talks[0][:16000]
    with ServerThread(builder, fixed_chunks=True, allowed_origin="https://talks.example.org") as served:
        own = f"http://127.0.0.1:{served.server.port}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            gather(run_talk(served.url, short, origin="http://evil.example"))
        same = gather(run_talk(served.url, short, origin=own))[0]
        allowed = gather(run_talk(served.url, short, origin="https://talks.example.org"))[0]
    assert refused.value.response.status_code == 403
    assert same.finished and allowed.finished


# The page, TLS, what is written down


def http_get(url: str, **kwargs) -> tuple[int, str, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10, **kwargs) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_the_page_and_its_settings_come_from_the_same_port(builder):
    with ServerThread(builder, fixed_chunks=True, token="s3cret") as served:
        base = f"http://127.0.0.1:{served.server.port}"
        page, script, config, missing, outside = (http_get(base + path) for path in (
            "/?token=s3cret", "/static/app.js", "/config.json", "/static/nothing.js", "/static/../session.py"))
    assert page[0] == 200 and page[1].startswith("text/html") and b"app.js" in page[2]
    assert script[0] == 200 and script[1].startswith("text/javascript") and b"getUserMedia" in script[2]
    settings = json.loads(config[2])
    assert settings["languages"] == ["de", "it"] and settings["token_required"] and settings["fixed_chunks"]
    assert missing[0] == outside[0] == 404


def test_tls_serves_the_page_and_the_websocket(builder, talks, tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    trusted = ssl.create_default_context(cafile=str(cert))
    with ServerThread(builder, fixed_chunks=True, certfile=str(cert), keyfile=str(key)) as served:
        page = http_get(f"https://127.0.0.1:{served.server.port}/", context=trusted)
        result = gather(run_talk(f"wss://127.0.0.1:{served.server.port}/ws", talks[0][:16000], ssl=trusted))[0]
    assert page[0] == 200 and result.finished and not result.errors


def test_audio_is_kept_only_when_asked_and_the_metrics_log_names_every_talk(builder, talks, tmp_path):
    from alignatt.serve.server import setup_metrics_log

    audio = talks[0][:16000 * 2]
    log = tmp_path / "metrics.jsonl"
    setup_metrics_log(str(log))
    try:
        with ServerThread(builder, fixed_chunks=True, keep_audio=str(tmp_path / "kept")) as served:
            gather(run_talk(served.url, audio, {"metrics_metadata": {"wav_name": "first.wav"}}))
            gather(run_talk(served.url, audio))
        with ServerThread(builder, fixed_chunks=True) as served:
            gather(run_talk(served.url, audio))
    finally:
        setup_metrics_log(None)
    kept = sorted((tmp_path / "kept").glob("*.wav"))
    assert len(kept) == 2  # the third server kept nothing
    import soundfile
    assert np.array_equal(soundfile.read(str(kept[0]), dtype="int16")[0], audio)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    names = [line["metadata"]["wav_name"] for line in lines if "metadata" in line]
    assert names[0] == "first.wav" and all(name.startswith("talk-") for name in names[1:]) and len(names) == 3
    steps = [line for line in lines if "generated_tokens" in line]
    assert steps and all(line["deleted_tokens"] == [] and line["computation_time"] >= 0 for line in steps)


def test_the_page_joins_units_as_the_server_does():
    """app.js's joinUnits (run by node, where there is one) against `appended_text`."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("node") is None:
        pytest.skip("no node to run the page's script")
    script = (Path(__file__).resolve().parents[1] / "alignatt" / "serve" / "static" / "app.js").read_text()
    join = re.search(r"const ATTACHING.*?\nfunction joinUnits.*?\n}\n", script, re.S).group(0)
    cases = [(["Hallo", ",", "Welt", "."], False), (["(ja", ")", "nein", "!", "3:0"], False),
             (["你", "好", "，", "ACL", "2023", "。", "new", "method"], True), ([], False)]
    program = join + "".join(f"console.log(JSON.stringify(joinUnits({json.dumps(u)}, {str(c).lower()})));\n"
                             for u, c in cases)
    shown = subprocess.run(["node", "-e", program], capture_output=True, text=True, check=True).stdout.splitlines()
    assert [json.loads(line) for line in shown] == [appended_text(units, char_level) for units, char_level in cases]
