"""Stand-ins for `alignatt serve` tests: a scripted ASR that reads words out of the audio itself, a tiny real
translator, a server running in a thread, and WebSocket clients.

The scripted ASR makes every talk's transcript a function of its own audio only: a word is 0.35 s of a constant
level (word k of `VOCAB` at level k/64) followed by 0.05 s of silence, so a unit of one session that reached
another would change that session's text.
"""
from __future__ import annotations

import asyncio
import json
import threading
import weakref
from dataclasses import dataclass, field, replace

import numpy as np
import websockets

from alignatt.asr.base import AsrBackend, Word
from alignatt.audio import SAMPLE_RATE_HZ
from alignatt.cli.demo import feed
from alignatt.mt.capture import HeadRef
from alignatt.mt.decoding import DecodeConfig
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.translator import Translator, TranslatorConfig
from alignatt.policy.policies import PolicySelection, make_policy
from alignatt.serve.scheduler import Scheduler, SchedulerOptions
from alignatt.serve.server import Server, ServerOptions
from alignatt.serve.session import SessionOptions
from alignatt.stream.cascade import Cascade, CascadeOptions

WORD_S, SOUND_S = 0.4, 0.35
VOCAB = ("good", "morning", "we", "propose", "a", "method.", "it", "works", "well", "today.", "the", "model",
         "reads", "attention", "heads.", "three", "cats", "sat", "down.", "now", "again", "please", "listen.")
HEADS = [HeadRef(2, 0), HeadRef(5, 1), HeadRef(1, 3)]
STEP_MS = 400.0


def tone_talk(words: list[str], rate_hz: int = SAMPLE_RATE_HZ, lead_s: float = 0.2) -> np.ndarray:
    """int16 audio the scripted ASR reads back as `words`."""
    samples = [np.zeros(int(lead_s * rate_hz), np.int16)]
    for word in words:
        level = (VOCAB.index(word) + 1) * 512  # (k / 64) of full scale
        samples += [np.full(int(SOUND_S * rate_hz), level, np.int16),
                    np.zeros(int(round(WORD_S * rate_hz)) - int(SOUND_S * rate_hz), np.int16)]
    return np.concatenate(samples)


def talk_words(seed: int, n_words: int = 9) -> list[str]:
    return list(np.random.default_rng(seed).choice(VOCAB, n_words))


class ToneAsr(AsrBackend):
    """Reads the words of `tone_talk` audio: each whole word slot inside the window, by its level."""

    def __init__(self, lead_s: float = 0.2):
        self.lead_s = lead_s

    def transcribe(self, audio: np.ndarray, offset_s: float) -> list[Word]:
        end_s = offset_s + len(audio) / SAMPLE_RATE_HZ
        first = max(0, int(np.ceil((offset_s - self.lead_s) / WORD_S - 1e-9)))
        words = []
        for slot in range(first, 10**6):
            start_s = self.lead_s + slot * WORD_S
            if start_s + SOUND_S > end_s:
                break
            middle = audio[int((start_s - offset_s + 0.1) * SAMPLE_RATE_HZ):int((start_s - offset_s + 0.25)
                                                                                * SAMPLE_RATE_HZ)]
            k = int(round(float(np.median(middle)) * 64)) if middle.size else 0
            if 1 <= k <= len(VOCAB):
                words.append(Word(VOCAB[k - 1], start_s, start_s + SOUND_S))
        return words


@dataclass
class ScriptedBuilder:
    """Cascades of the scripted ASR and one tiny random-init translator (weights shared, decoder per session)."""

    model: object
    tokenizer: object
    languages: tuple[str, ...] = ("de", "it")
    defaults: SessionOptions = SessionOptions()
    decode: DecodeConfig = DecodeConfig()  # eager on CPU: drafts are not batched; static: they are
    built: list = field(default_factory=list)  # weak references to every cascade built

    def build(self, options: SessionOptions) -> Cascade:
        translator = Translator(self.model, self.tokenizer, HEADS, PromptConfig(target_lang=options.target_lang),
                                TranslatorConfig(max_draft_tokens=6, min_draft_tokens=2, max_final_tokens=8),
                                decode_config=self.decode)
        policy = make_policy(PolicySelection(options.policy, options.wait_k))
        cascade = Cascade(ToneAsr(), translator, CascadeOptions(step_ms=STEP_MS, min_audio_s=0.8), policy=policy)
        self.built.append(weakref.ref(cascade))
        return cascade


def alone(builder, options: SessionOptions, audio: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ) -> list[str]:
    """The units of one talk served alone, one step's chunk at a time (as the demo plays it at --speed 0)."""
    return [unit for fed in feed(builder.build(options), audio, rate_hz) for unit in fed.units]


class ServerThread:
    """A server on a free loopback port, its event loop and worker in background threads."""

    def __init__(self, builder, fixed_chunks: bool = True, **server_options):
        self.scheduler = Scheduler(builder, SchedulerOptions(
            fixed_chunks=fixed_chunks, max_queue_s=server_options.pop("max_queue_s", 20.0),
            batch_drafts=server_options.pop("batch_drafts", "on")))
        self.server = Server(self.scheduler, replace(ServerOptions(port=0), **server_options))
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.scheduler.start()
        try:
            self.loop.run_until_complete(self.server.run(lambda port: self._started.set()))
        finally:
            self.scheduler.stop()
            self.loop.close()

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        assert self._started.wait(30), "the server did not start"
        return self

    def shutdown_soon(self) -> None:
        """What the SIGTERM handler does: ask the server to shut down (from any thread)."""
        self.loop.call_soon_threadsafe(self.server.request_shutdown)

    def shutdown(self, timeout_s: float = 60.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.request_shutdown)
            self._thread.join(timeout_s)

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"


@dataclass
class TalkResult:
    messages: list[dict]
    close_code: int | None

    @property
    def units(self) -> list[str]:
        return [unit for m in self.messages for unit in m.get("units", [])]

    @property
    def errors(self) -> list[str]:
        return [m["error"] for m in self.messages if "error" in m]

    @property
    def finished(self) -> bool:
        return any(m.get("end_of_processing") for m in self.messages)


async def receive_all(ws, until_end: bool = True, timeout_s: float = 60.0) -> list[dict]:
    messages = []
    try:
        async with asyncio.timeout(timeout_s):
            async for raw in ws:
                messages.append(json.loads(raw))
                if until_end and messages[-1].get("end_of_processing"):
                    break
    except websockets.ConnectionClosed:
        pass
    return messages


async def send_talk(ws, audio: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ, frame_ms: float = 100.0,
                    speed: float = 0.0, end: bool = True, stop_after_s: float | None = None) -> None:
    """Audio frames, at `speed` x real time (0: as fast as the socket takes them), then end_of_stream."""
    frame = int(rate_hz * frame_ms / 1000)
    stop = len(audio) if stop_after_s is None else int(stop_after_s * rate_hz)
    for offset in range(0, stop, frame):
        await ws.send(audio[offset:min(offset + frame, stop)].tobytes())
        if speed > 0:
            await asyncio.sleep(frame_ms / 1000 / speed)
    if end:
        await ws.send(json.dumps({"end_of_stream": True}))


async def run_talk(url: str, audio: np.ndarray, settings: dict | None = None, rate_hz: int = SAMPLE_RATE_HZ,
                   speed: float = 0.0, timeout_s: float = 120.0, **connect) -> TalkResult:
    """One client: its settings, its talk, everything the server answered until end_of_processing."""
    async with websockets.connect(url, **connect) as ws:
        await ws.send(json.dumps({"sample_rate": rate_hz, **(settings or {})}))
        receiving = asyncio.create_task(receive_all(ws, timeout_s=timeout_s))
        await send_talk(ws, audio, rate_hz, speed=speed)
        messages = await receiving
    return TalkResult(messages, ws.close_code)
