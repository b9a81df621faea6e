"""One worker thread owns the models and steps every session, round robin, one step per session and tick.

The event loop only queues audio and reads results: each session's audio waits in an `AudioQueue` until a step
takes it. A tick visits every session once, starting one further along than the last tick did, and steps each
session whose next step is due (a chunk's worth of audio has arrived, or its talk has ended). A session never
takes two steps in one tick, so a client that sends faster than real time (or stalls) delays the others by at
most one of its own steps per tick.

Two ways to take audio:
- live (the default): a step takes every whole chunk that has arrived, so a session that fell behind catches up
  with a longer step, as the demo does; its text then depends on how the steps fell.
- fixed chunks: a step takes exactly one chunk (`step_ms` of audio), never more, so a session's text depends
  only on its audio and equals the text of the same talk served alone, however many talks share the models
  (with batched drafts, up to the rounding of batched kernels).

With batched drafts a tick first runs every due session's step up to its draft (the ASR, one session after
another), then drafts for all of them in one batch (`alignatt.mt.batching`) until every step is done; without,
each session's whole step runs before the next one's.

Queues are bounded: a client whose queue holds `max_queue_s` of audio is not read from until a step takes some
(the server stops reading its socket, and TCP holds the client back).
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from alignatt.mt.batching import DraftBatcher, slot_size
from alignatt.mt.translator import DraftCall, DraftResult
from alignatt.serve.session import CascadeBuilder, Session, SessionOptions
from alignatt.stream.cascade import Cascade, Translation
from alignatt.text_units import split_units

logger = logging.getLogger(__name__)

BATCH_MODES = ("auto", "on", "off")
WARM_UP_SOURCE = "This sentence only warms up the batched drafts of the translator."
IDLE_WAIT_S = 0.5  # the worker looks again this often when no session is due (a new chunk wakes it at once)


@dataclass(frozen=True)
class SchedulerOptions:
    fixed_chunks: bool = field(default=False, metadata={
        "help": "every step takes exactly one step_ms chunk (no catch-up): a session's text is deterministic and "
                "equal to the same talk's text served alone; live clients fall behind on a slow machine"})
    batch_drafts: str = field(default="auto", metadata={
        "help": "on: draft for every session of a tick in one batch (per session where sessions cannot share a "
                "batch: the eager decoding path, other models); off: each session alone; auto: on where the "
                "translator runs on a GPU (on CPU a batch loses the screened LM head and draft reuse and is slower, "
                "results/serve)"})
    max_queue_s: float = field(default=20.0, metadata={
        "help": "audio a session may have waiting for its steps; a client ahead by more is not read from until "
                "a step takes some (backpressure)"})

    def __post_init__(self):
        if self.max_queue_s <= 0:
            raise ValueError(f"max_queue_s must be positive, got {self.max_queue_s}")
        if self.batch_drafts not in BATCH_MODES:
            raise ValueError(f"batch_drafts must be one of {', '.join(BATCH_MODES)}, got {self.batch_drafts!r}")


class AudioQueue:
    """A session's audio that no step has taken yet, at the client's rate, with when each piece arrived.
    The event loop puts; the worker takes."""

    def __init__(self, max_s: float):
        self.max_s = max_s
        self.rate_hz = 16000
        self._lock = threading.Lock()
        self._chunks: deque[np.ndarray] = deque()
        self._arrivals: deque[tuple[int, float]] = deque()  # (samples received once this piece came, wall time)
        self._queued = 0
        self.received = 0  # samples received in this talk
        self.taken = 0  # samples steps took in this talk
        self.first_arrival_s: float | None = None
        self.ended = False
        self.peak = 0  # the most samples it held at once

    @property
    def queued(self) -> int:
        return self._queued

    def full(self) -> bool:
        return self._queued >= self.max_s * self.rate_hz

    def put(self, samples: np.ndarray, now_s: float) -> None:
        with self._lock:
            if self.first_arrival_s is None:
                self.first_arrival_s = now_s
            self._chunks.append(samples)
            self._queued += len(samples)
            self.peak = max(self.peak, self._queued)
            self.received += len(samples)
            self._arrivals.append((self.received, now_s))

    def end(self) -> None:
        self.ended = True

    def take(self, n: int) -> tuple[np.ndarray, float]:
        """The first `n` queued samples, and when the last of them arrived."""
        with self._lock:
            parts, needed = [], n
            while needed > 0:
                chunk = self._chunks.popleft()
                if len(chunk) > needed:
                    self._chunks.appendleft(chunk[needed:])
                    chunk = chunk[:needed]
                parts.append(chunk)
                needed -= len(chunk)
            self._queued -= n
            self.taken += n
            while len(self._arrivals) > 1 and self._arrivals[0][0] <= self.taken - 1:
                self._arrivals.popleft()  # pieces wholly taken before the last taken sample
            arrived_s = self._arrivals[0][1] if self._arrivals else time.monotonic()
        return (np.concatenate(parts) if parts else np.zeros(0, np.int16)), arrived_s

    def restart(self) -> None:
        """A new talk on the same connection (called once the last one's final step ran)."""
        with self._lock:
            self._chunks.clear()
            self._arrivals.clear()
            self._queued = self.received = self.taken = 0
            self.first_arrival_s = None
            self.ended = False


@dataclass(frozen=True)
class StepOutcome:
    """What one step gave a session: sent to its client (and to the metrics log)."""

    units: list[str]
    text: str  # what the units add to the text shown so far
    audio_s: float  # audio the session's steps took so far (the client's clock)
    heard_s: float  # audio the cascade had heard (16 kHz clock; differs from audio_s by resampling only)
    transcript: str  # the open sentence as the ASR has it
    open_units: int  # trailing written units that belong to the still-open sentence
    compute_s: float  # the step's own computation
    waited_s: float  # from the arrival of the step's last audio to the step's start (other sessions' steps)
    lag_s: float  # how far the text trails a real-time speaker when it is sent: waited + compute for a paced client
    final: bool  # the talk's last step (its final pass ran)


@dataclass(frozen=True)
class StepFailure:
    """A session's step raised: that session ends, the others go on."""

    message: str


Notify = Callable[[object], None]  # called on the worker thread with a StepOutcome or a StepFailure


@dataclass
class Slot:
    """A session as the scheduler holds it."""

    session: Session
    queue: AudioQueue
    notify: Notify
    on_space: Callable[[], None]  # the queue has room again (called on the worker thread)
    failed: bool = False


class Scheduler:
    """The worker thread and the sessions it serves. `open`, `end` and `close` may be called from any thread."""

    def __init__(self, builder: CascadeBuilder, options: SchedulerOptions = SchedulerOptions()):
        self.builder = builder
        self.options = options
        self._slots: list[Slot] = []  # the worker's own
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._work = threading.Event()
        self._stopping = False
        self._ids = itertools.count(1)
        self._start_at = 0  # where the next tick begins, for round robin
        self.ticks = 0
        self.tick_history: deque[tuple[str, ...]] = deque(maxlen=10000)  # the sessions each tick stepped
        self.peak_queued_s = 0.0  # the most audio one session had waiting, over all sessions so far
        self._batcher = DraftBatcher()
        self._thread = threading.Thread(target=self._run, name="alignatt-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 120.0) -> None:
        """Stop after the step in progress (a process must not exit while native code runs in the worker)."""
        self._stopping = True
        self._work.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def n_sessions(self) -> int:
        return len(self._slots)

    def open(self, options: SessionOptions, notify: Notify, on_space: Callable[[], None]
             ) -> concurrent.futures.Future:
        """Build a session on the worker thread (it loads nothing new: the models are the pool's); the future
        gives its `Slot`, or the error that building raised."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._command(("open", options, notify, on_space, future))
        return future

    def close(self, slot: Slot) -> None:
        """Forget a session (its client left): its state goes with it."""
        self._command(("close", slot))

    def wake(self) -> None:
        """New audio, or a talk's end, was queued."""
        self._work.set()

    def _command(self, command: tuple) -> None:
        self._commands.put(command)
        self._work.set()

    def _run(self) -> None:
        while not self._stopping:
            self._work.clear()  # before looking: a chunk queued meanwhile sets it again
            self._apply_commands()
            if not self._tick():
                self._work.wait(IDLE_WAIT_S)
        self._slots.clear()

    def _tick(self) -> bool:
        """Step every due session once; False when none was due. (A method, so that no slot outlives the tick in
        a local variable of the loop: a closed session's state goes as soon as the scheduler forgets it.)"""
        due = self._due_slots()
        steps = [self._begin(slot) for slot in due]
        if self._batching([slot.session.cascade for slot in due]):
            self._run_batched(steps)
        else:
            for step in steps:
                self._run_alone(step)
        for step in steps:
            self._end(step)
        if due:
            self.tick_history.append(tuple(slot.session.id for slot in due))
            self.ticks += 1
        return bool(due)

    def _batching(self, cascades: list[Cascade]) -> bool:
        if self.options.batch_drafts != "auto":
            return self.options.batch_drafts == "on"
        return any(cascade.translator.model.device.type == "cuda" for cascade in cascades)

    def warm_up_batches(self, n_sessions: int, first: Cascade) -> None:
        """Before the worker starts: one batched draft per slot size up to `n_sessions` sessions, so that no batched
        decode graph is compiled during a talk (only compiled decoding batches in slot sizes; otherwise nothing
        to do). `first`: a cascade already built with the default options, which tells whether there is."""
        if n_sessions < 2 or not getattr(first.translator.decoder, "compile", False) or not self._batching([first]):
            return
        cascades = [first] + [self.builder.build(self.builder.defaults) for _ in range(n_sessions - 1)]
        for size in sorted({slot_size(n) for n in range(2, n_sessions + 1)}):
            chosen = cascades[:min(size, n_sessions)]
            started = time.monotonic()
            self._batcher.draft_many([(c.translator, DraftCall(WARM_UP_SOURCE, len(WARM_UP_SOURCE.split())))
                                      for c in chosen])
            logger.info("batched drafts of %d sessions compiled in %.1f s", size, time.monotonic() - started)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "open":
                self._open(*command[1:])
            else:
                self._slots = [s for s in self._slots if s is not command[1]]

    def _open(self, options: SessionOptions, notify: Notify, on_space: Callable[[], None],
              future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            session = Session(f"s{next(self._ids)}", options, self.builder.build(options))
        except Exception as err:  # noqa: BLE001 - the client is told; the server goes on
            future.set_exception(err)
            return
        slot = Slot(session, AudioQueue(self.options.max_queue_s), notify, on_space)
        self._slots.append(slot)
        future.set_result(slot)

    def _due_slots(self) -> list[Slot]:
        """The sessions to step this tick, in round-robin order."""
        if not self._slots:
            return []
        start = self._start_at % len(self._slots)
        self._start_at += 1
        ordered = self._slots[start:] + self._slots[:start]
        return [slot for slot in ordered if not slot.failed and self._chunk_due(slot) is not None]

    def _chunk_samples(self, slot: Slot) -> int:
        """One step's worth of audio at the client's rate (as the demo cuts a talk)."""
        return max(1, int(round(slot.queue.rate_hz * slot.session.cascade.options.step_ms / 1000.0)))

    def _chunk_due(self, slot: Slot) -> tuple[int, bool] | None:
        """(samples the next step takes, whether it ends the talk), or None when no step is due."""
        queued, chunk = slot.queue.queued, self._chunk_samples(slot)
        if queued >= chunk and not (slot.queue.ended and not self.options.fixed_chunks):
            return (chunk if self.options.fixed_chunks else queued // chunk * chunk), False
        if slot.queue.ended:
            return queued, True  # the rest (less than a chunk, or all of it when live), then the final pass
        return None

    def _begin(self, slot: Slot) -> "_Running":
        """Take the audio of the slot's next step; its translation has not started."""
        n_samples, final = self._chunk_due(slot)
        was_full = slot.queue.full()
        self.peak_queued_s = max(self.peak_queued_s, slot.queue.peak / slot.queue.rate_hz)
        samples, arrived_s = slot.queue.take(n_samples)
        if was_full and not slot.queue.full():
            slot.on_space()
        cascade = slot.session.cascade
        return _Running(slot, cascade.step(samples, slot.queue.rate_hz, end_of_stream=final), bool(samples.size),
                        final, arrived_s)

    def _run_alone(self, step: "_Running") -> None:
        """The whole step (its ASR and each of its drafts) on the session's own translator."""
        step.began_s = time.monotonic()
        step.advance(None)
        while step.call is not None:
            self._draft_alone(step)

    def _run_batched(self, steps: list["_Running"]) -> None:
        """Every step up to its draft (the ASR, one session after another), then the drafts of all in one batch,
        until every step is done."""
        for step in steps:
            step.began_s = time.monotonic()
            step.advance(None)
        while waiting := [step for step in steps if step.call is not None]:
            pairs = [(step.slot.session.cascade.translator, step.call) for step in waiting]
            try:
                results = self._batcher.draft_many(pairs)
            except Exception:  # noqa: BLE001 - a batch that fails is retried one session at a time
                logger.exception("a batched draft failed: drafting each session alone")
                for step in waiting:
                    self._draft_alone(step)
                continue
            for step, result in zip(waiting, results):
                step.advance(result)

    @staticmethod
    def _draft_alone(step: "_Running") -> None:
        """The draft the step waits for, on its session's own translator."""
        try:
            result = step.slot.session.cascade.draft_alone(step.call)
        except Exception as err:  # noqa: BLE001 - this session fails, the others go on
            step.fail(err)
            return
        step.advance(result)

    def _end(self, step: "_Running") -> None:
        """Tell the client what its step wrote (or that it failed); after a final step, the next talk."""
        slot = step.slot
        if step.error is not None:
            logger.error("session %s failed: %s", slot.session.id, step.error, exc_info=step.error)
            slot.failed = True
            slot.notify(StepFailure(f"{type(step.error).__name__}: {step.error}"))
            return
        outcome = self._outcome(step)
        if outcome is not None:
            slot.notify(outcome)
        if step.final:
            slot.session.new_talk()
            slot.queue.restart()

    def _outcome(self, step: "_Running") -> StepOutcome | None:
        slot, cascade, audio = step.slot, step.slot.session.cascade, step.slot.queue
        units, report = step.units, cascade.last_step if step.had_audio else None
        if report is None and not units and not step.final:
            return None  # the chunk only gathered audio (the first seconds of a talk)
        audio_s = audio.taken / audio.rate_hz
        first = audio.first_arrival_s if audio.first_arrival_s is not None else step.began_s
        text = slot.session.write(units, cascade.heard_s, step.done_s - first)
        open_units = 0 if step.final else len(split_units(cascade.talk.target_prefix, slot.session.char_level))
        transcript = report.transcript if report is not None else ""
        return StepOutcome(units, text, audio_s, cascade.heard_s, transcript,
                           min(open_units, len(slot.session.written)), compute_s=step.done_s - step.began_s,
                           waited_s=max(0.0, step.began_s - step.arrived_s),
                           lag_s=max(0.0, step.done_s - first - audio_s), final=step.final)


@dataclass
class _Running:
    """One session's step in the tick: its translation, paused at `call` (the draft it waits for) until done."""

    slot: Slot
    translation: Translation
    had_audio: bool
    final: bool
    arrived_s: float
    began_s: float = 0.0
    done_s: float = 0.0
    call: DraftCall | None = None
    units: list[str] = field(default_factory=list)
    error: Exception | None = None

    def advance(self, result: DraftResult | None) -> None:
        """Send the draft the step waited for (None to start it) and run it to its next draft or its end."""
        try:
            self.call = self.translation.send(result)
        except StopIteration as done:
            self.units, self.call, self.done_s = done.value, None, time.monotonic()
        except Exception as err:  # noqa: BLE001 - this session fails, the others go on
            self.fail(err)

    def fail(self, err: Exception) -> None:
        self.error, self.call, self.done_s = err, None, time.monotonic()
