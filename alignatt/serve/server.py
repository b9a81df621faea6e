"""The WebSocket server: simulstream's protocol over many sessions, and the web page from the same port.

Protocol (simulstream 1.0.0's, so `simulstream_wavs_client` drives it; docs/serve.md has the whole of it):
- binary messages are audio: 16-bit little-endian PCM, mono, at the talk's sample rate (default 16 kHz);
- text messages are JSON objects: `sample_rate`, `target_lang`/`source_lang`, `metrics_metadata` (logged),
  `end_of_stream`; and ours: `preset`, `policy`, `wait_k`, `latency_unit`, `token`;
- answers: `{"new": text, "deleted": ""}` per step (plus what the page shows: units, the open sentence, latency),
  `{"end_of_processing": true}` after a talk's final pass, `{"error": code, "message": ...}` on a fault.
Text is append-only, so "deleted" is always empty.

The asyncio loop only moves bytes: audio goes into the session's queue, the worker thread (`scheduler`) steps the
sessions and hands results back through `call_soon_threadsafe`.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs

import numpy as np
import soundfile
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from alignatt.factory import PRESETS
from alignatt.policy.policies import POLICIES
from alignatt.serve.scheduler import Scheduler, Slot, StepFailure, StepOutcome
from alignatt.serve.session import SessionError, SessionOptions, session_options

logger = logging.getLogger(__name__)
METRICS = logging.getLogger("alignatt.serve.metrics")  # simulstream's server-side metrics log, one JSON per line
METRICS.propagate = False

MIN_RATE_HZ, MAX_RATE_HZ = 8000, 192000
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
# Close codes (RFC 6455): policy violation, going away, try again later, internal error.
CLOSE_POLICY, CLOSE_GOING_AWAY, CLOSE_TRY_LATER, CLOSE_ERROR = 1008, 1001, 1013, 1011


@dataclass(frozen=True)
class ServerOptions:
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on (0.0.0.0 for other machines: then use --certfile/--keyfile and --token)"})
    port: int = field(default=8765, metadata={"help": "port for the page (HTTP) and the WebSocket (0: any free)"})
    max_sessions: int = field(default=4, metadata={
        "help": "clients served at once; one more gets a 'busy' message and is closed"})
    token: str | None = field(default=None, metadata={
        "help": "access token clients must give (?token=... in the URL, or a first JSON message {\"token\": ...})"})
    allowed_origin: str = field(default="", metadata={
        "help": "comma-separated browser origins allowed besides the server's own page (e.g. https://example.org)"})
    keep_audio: str | None = field(default=None, metadata={
        "help": "folder where each talk's audio is kept as a wav (off by default: no audio is kept)"})
    certfile: str | None = field(default=None, metadata={"help": "TLS certificate (PEM): serve https:// and wss://"})
    keyfile: str | None = field(default=None, metadata={"help": "TLS private key (PEM) of --certfile"})
    metrics_log: str | None = field(default=None, metadata={
        "help": "write simulstream's server-side metrics log here (JSON lines its scoring tools and OmniSTEval "
                "read)"})
    max_frame_bytes: int = field(default=1 << 20, metadata={
        "help": "largest message a client may send; a larger one closes its connection (code 1009)"})
    shutdown_grace_s: float = field(default=30.0, metadata={
        "help": "on SIGTERM, time open talks get for their final pass before their connections close"})

    def __post_init__(self):
        if self.max_sessions < 1 or self.max_frame_bytes < 2 or self.shutdown_grace_s < 0:
            raise ValueError(f"invalid server options: {self}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("--certfile and --keyfile go together")

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.allowed_origin.split(",") if o.strip())


@dataclass(eq=False)  # one per connection, kept in a set by identity
class Client:
    """One connection: its options so far, its session once audio came, what goes back to it."""

    ws: ServerConnection
    talk_id: int  # the metrics log's id of the current talk
    authorized: bool
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    space: asyncio.Event = field(default_factory=asyncio.Event)  # set: its audio queue has room
    options: SessionOptions | None = None  # None: the server's defaults
    rate_hz: int = 16000
    slot: Slot | None = None
    logged_metadata: bool = False
    talks: int = 0
    audio_file: soundfile.SoundFile | None = None


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files (package data), by URL path."""
    folder = resources.files("alignatt.serve").joinpath("static")
    files = {}
    for entry in folder.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    files["/"] = files["/static/index.html"]
    return files


def setup_metrics_log(path: str | None) -> None:
    METRICS.handlers.clear()
    if path is None:
        METRICS.disabled = True
        return
    METRICS.disabled = False
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    METRICS.addHandler(handler)
    METRICS.setLevel(logging.INFO)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable, *args) -> None:
    """From the worker thread; a result that comes after the loop closed has no one to go to."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


class Server:
    """Serves clients through one `Scheduler` until `request_shutdown`."""

    def __init__(self, scheduler: Scheduler, options: ServerOptions = ServerOptions()):
        self.scheduler = scheduler
        self.options = options
        self.files = static_files()
        self.port: int | None = None
        self._clients: set[Client] = set()
        self._talk_ids = itertools.count(1)
        self._stop: asyncio.Event | None = None
        self._closing = False

    @property
    def n_clients(self) -> int:
        return len(self._clients)

    @property
    def defaults(self) -> SessionOptions:
        return self.scheduler.builder.defaults

    @property
    def languages(self) -> tuple[str, ...]:
        return self.scheduler.builder.languages

    async def run(self, started: Callable[[int], None] | None = None) -> None:
        """Serve until `request_shutdown`; then give open talks their final pass and close."""
        self._stop = asyncio.Event()
        async with serve(self._handle, self.options.host, self.options.port, process_request=self._process_request,
                         max_size=self.options.max_frame_bytes, ssl=self._ssl_context(),
                         ping_timeout=None) as ws_server:  # a client held back by backpressure reads no pongs
            self.port = ws_server.sockets[0].getsockname()[1]
            if started is not None:
                started(self.port)
            await self._stop.wait()
            await self._shut_down()
            ws_server.close()
            await ws_server.wait_closed()

    def request_shutdown(self) -> None:
        """Called on the loop (a signal handler, or call_soon_threadsafe)."""
        if self._stop is not None:
            self._stop.set()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.options.certfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.options.certfile, self.options.keyfile)
        return context

    async def _shut_down(self) -> None:
        """Every open talk ends as if its client had sent end_of_stream; clients without one are told and closed.
        Talks still running after the grace period are closed with 'going away'."""
        self._closing = True
        for client in list(self._clients):
            if client.slot is not None and client.slot.queue.received:
                client.slot.queue.end()
            else:
                await self._refuse(client.ws, "shutting_down", "the server is shutting down", CLOSE_GOING_AWAY)
        self.scheduler.wake()
        deadline = time.monotonic() + self.options.shutdown_grace_s
        while self._clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for client in list(self._clients):
            await self._refuse(client.ws, "shutting_down", "the server is shutting down before this talk's final "
                                                           "pass ran", CLOSE_GOING_AWAY)

    # HTTP: the page, its files and its settings; the Origin check of WebSocket handshakes.

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._http(connection, path)
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request.headers.get("Host", "")):
            logger.warning("refused a WebSocket from origin %s", origin)
            return connection.respond(HTTPStatus.FORBIDDEN, "Origin not allowed\n")
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """The server's own page (same host and port, either scheme) or an origin the flags allow. Clients that
        are not browsers send no Origin at all."""
        origin = origin.rstrip("/")
        return origin in (f"http://{host}", f"https://{host}") or origin in self.options.origins

    def _http(self, connection: ServerConnection, path: str) -> Response:
        if path == "/config.json":
            return _response(json.dumps(self._page_config()).encode(), "application/json")
        if path in self.files:
            return _response(*self.files[path])
        return connection.respond(HTTPStatus.NOT_FOUND, "Not found\n")

    def _page_config(self) -> dict:
        return {"languages": list(self.languages), "presets": sorted(PRESETS), "policies": list(POLICIES),
                "defaults": vars(self.defaults), "token_required": self.options.token is not None,
                "fixed_chunks": self.scheduler.options.fixed_chunks, "max_sessions": self.options.max_sessions}

    # WebSocket: one coroutine per client reads; one task per client writes.

    async def _handle(self, ws: ServerConnection) -> None:
        if self._closing:
            return await self._refuse(ws, "shutting_down", "the server is shutting down", CLOSE_GOING_AWAY)
        if len(self._clients) >= self.options.max_sessions:
            return await self._refuse(ws, "busy", f"the server is serving its {self.options.max_sessions} "
                                                  f"sessions; try again later", CLOSE_TRY_LATER)
        client = Client(ws, next(self._talk_ids), authorized=self._token_in_url(ws))
        self._clients.add(client)
        writer = asyncio.create_task(self._write(client))
        try:
            await self._read(client)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            self._clients.discard(client)
            self._drop_session(client)
            self._close_audio(client)

    async def _refuse(self, ws: ServerConnection, code: str, message: str, close_code: int) -> None:
        try:
            await ws.send(json.dumps({"error": code, "message": message}))
            await ws.close(close_code, code)
        except ConnectionClosed:
            pass

    def _token_in_url(self, ws: ServerConnection) -> bool:
        if self.options.token is None:
            return True
        given = parse_qs(ws.request.path.partition("?")[2]).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.options.token.encode())

    async def _read(self, client: Client) -> None:
        async for message in client.ws:
            if not client.authorized and not await self._authorize(client, message):
                return
            if isinstance(message, bytes):
                await self._on_audio(client, message)
            else:
                await self._on_text(client, message)

    async def _authorize(self, client: Client, message: str | bytes) -> bool:
        """Without the token in the URL, the first message must be JSON carrying it."""
        try:
            token = json.loads(message).get("token", "") if isinstance(message, str) else ""
        except (ValueError, AttributeError):
            token = ""
        if isinstance(token, str) and hmac.compare_digest(token.encode(), self.options.token.encode()):
            client.authorized = True
            return True
        await self._refuse(client.ws, "unauthorized", "a valid access token is required (?token=... in the URL, "
                                                      "or {\"token\": ...} as the first message)", CLOSE_POLICY)
        return False

    async def _error(self, client: Client, code: str, message: str, close: bool = False) -> None:
        """Tell one client what was wrong; `close` for what its talk cannot go on without."""
        if close:
            return await self._refuse(client.ws, code, message, CLOSE_POLICY)
        await client.ws.send(json.dumps({"error": code, "message": message}))

    async def _on_text(self, client: Client, message: str) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            return await self._error(client, "bad_message", "text messages must be JSON objects")
        if not isinstance(data, dict):
            return await self._error(client, "bad_message", "text messages must be JSON objects")
        try:
            self._apply_settings(client, data)
        except SessionError as err:
            return await self._error(client, err.code, str(err), close=err.code != "options_fixed")
        if "metrics_metadata" in data:
            self._log_metadata(client, data["metrics_metadata"])
        if data.get("end_of_stream"):
            await self._end_of_stream(client)

    def _talk_started(self, client: Client) -> bool:
        return client.slot is not None and client.slot.queue.received > 0

    def _apply_settings(self, client: Client, data: dict) -> None:
        """Sample rate and session options, fixed once a talk's audio has started."""
        started = self._talk_started(client)
        if "sample_rate" in data:
            rate = data["sample_rate"]
            if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
                raise SessionError("bad_sample_rate", f"sample_rate must be a whole number of Hz between "
                                                      f"{MIN_RATE_HZ} and {MAX_RATE_HZ}, got {rate!r}")
            if started and rate != client.rate_hz:
                raise SessionError("options_fixed", "the sample rate is fixed once a talk's audio has started")
            client.rate_hz = rate
        options = session_options(data, client.options or self.defaults, self.languages)
        if started and options != client.slot.session.options:
            raise SessionError("options_fixed", "session options are fixed once a talk's audio has started; "
                                                "they may change after end_of_processing")
        client.options = options

    async def _on_audio(self, client: Client, message: bytes) -> None:
        if len(message) % 2:
            return await self._error(client, "bad_audio", "audio must be 16-bit PCM: an even number of bytes")
        if client.slot is not None and client.slot.queue.ended:
            return await self._error(client, "talk_ended", "audio after end_of_stream: a new talk starts after "
                                                           "end_of_processing")
        if not await self._ensure_session(client):
            return
        samples = np.frombuffer(message, dtype="<i2")
        self._keep_audio(client, samples)
        client.slot.queue.put(samples, time.monotonic())
        self.scheduler.wake()
        while client.slot.queue.full() and not client.slot.failed:  # backpressure: stop reading this client
            client.space.clear()
            if not client.slot.queue.full():
                break
            await client.space.wait()

    async def _ensure_session(self, client: Client) -> bool:
        """The session for this talk's options (built at its first audio); False when it could not be built."""
        options = client.options or self.defaults
        if client.slot is not None and client.slot.session.options == options and not client.slot.failed:
            if not client.slot.queue.received:  # a new talk on the same connection may declare another rate
                client.slot.queue.rate_hz = client.rate_hz
            return True
        self._drop_session(client)
        loop = asyncio.get_running_loop()
        future = self.scheduler.open(options, notify=lambda item: _call_soon(loop, client.outbox.put_nowait, item),
                                     on_space=lambda: _call_soon(loop, client.space.set))
        try:
            client.slot = await asyncio.wrap_future(future)
        except Exception as err:  # noqa: BLE001 - the client is told; the server goes on
            logger.exception("could not build a session")
            await self._refuse(client.ws, "session_failed", f"could not start a session: {err}", CLOSE_ERROR)
            return False
        client.slot.queue.rate_hz = client.rate_hz
        session = client.slot.session
        await client.ws.send(json.dumps({"session": {"id": session.id, **vars(session.options),
                                                     "step_ms": session.cascade.options.step_ms,
                                                     "fixed_chunks": self.scheduler.options.fixed_chunks}}))
        return True

    def _drop_session(self, client: Client) -> None:
        if client.slot is not None:
            self.scheduler.close(client.slot)
            client.slot = None

    async def _end_of_stream(self, client: Client) -> None:
        if self._talk_started(client):
            client.slot.queue.end()
            self.scheduler.wake()
            return
        # A talk without audio: nothing to translate.
        await client.ws.send(json.dumps({"new": "", "deleted": ""}))
        await client.ws.send(json.dumps({"end_of_processing": True}))
        self._next_talk(client)

    async def _write(self, client: Client) -> None:
        try:
            await self._write_results(client)
        except ConnectionClosed:
            pass  # the reader sees it too, and ends the session

    async def _write_results(self, client: Client) -> None:
        """The worker's results for this client, in order, as they come."""
        while True:
            item = await client.outbox.get()
            if isinstance(item, StepFailure):
                client.space.set()
                return await self._refuse(client.ws, "step_failed", item.message, CLOSE_ERROR)
            await client.ws.send(json.dumps(self._output(item), ensure_ascii=False))
            self._log_step(client, item)
            if item.final:
                await client.ws.send(json.dumps({"end_of_processing": True}))
                self._next_talk(client)
                if self._closing:
                    await client.ws.close(CLOSE_GOING_AWAY, "server shutting down")
                    return

    def _output(self, item: StepOutcome) -> dict:
        return {"new": item.text, "deleted": "", "units": item.units, "audio_s": round(item.audio_s, 3),
                "heard": item.transcript, "open_units": item.open_units, "lag_s": round(item.lag_s, 3),
                "compute_s": round(item.compute_s, 3), "waited_s": round(item.waited_s, 3), "final": item.final}

    def _next_talk(self, client: Client) -> None:
        self._close_audio(client)
        client.talk_id = next(self._talk_ids)
        client.logged_metadata = False
        client.talks += 1

    # What is written down: the metrics log and, when asked for, the audio.

    def _log_metadata(self, client: Client, metadata) -> None:
        METRICS.info(json.dumps({"id": client.talk_id, "metadata": metadata}, ensure_ascii=False))
        client.logged_metadata = True

    def _log_step(self, client: Client, item: StepOutcome) -> None:
        if not client.logged_metadata:  # simulstream's log reader needs a talk name before its steps
            self._log_metadata(client, {"wav_name": f"talk-{client.talk_id}"})
        unit = client.slot.session.options.latency_unit if client.slot is not None else "word"
        tokens = list(item.text) if unit == "char" else item.units
        METRICS.info(json.dumps({"id": client.talk_id, "total_audio_processed": item.audio_s,
                                 "computation_time": item.compute_s, "generated_tokens": tokens,
                                 "deleted_tokens": [], "waiting_time": item.waited_s}, ensure_ascii=False))

    def _keep_audio(self, client: Client, samples: np.ndarray) -> None:
        if self.options.keep_audio is None:
            return
        if client.audio_file is None:
            folder = Path(self.options.keep_audio)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{client.slot.session.id}-talk{client.talks + 1}.wav"
            client.audio_file = soundfile.SoundFile(folder / name, "w", samplerate=client.rate_hz, channels=1,
                                                    subtype="PCM_16")
        client.audio_file.write(samples)

    def _close_audio(self, client: Client) -> None:
        if client.audio_file is not None:
            client.audio_file.close()
            client.audio_file = None


def _response(body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")])
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)
