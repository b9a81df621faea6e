"""Append-only 16 kHz mono float32 audio buffer, fed chunk by chunk, addressed in absolute stream seconds.

Input handling (defined behaviour, not guesses):
- sample rate: anything other than 16 kHz is resampled with `scipy.signal.resample_poly` through a streaming
  wrapper, so chunk boundaries leave no clicks and the time base does not drift (the output equals resampling the
  whole stream at once). The rate is fixed by the first non-empty chunk; a different rate later is an error.
- channels: 1-D input is mono. 2-D input is (frames, channels), the layout soundfile returns; it is downmixed to
  mono by averaging. More than `MAX_CHANNELS` columns is rejected as a likely transposed (channels, frames) array.
- dtype: float32 is used as is, float64 is narrowed, int16 PCM is scaled to [-1, 1); any other dtype (int32, uint8,
  bool, ...) raises TypeError because its full-scale value is ambiguous.
- NaN / inf samples are replaced by 0.0 (a single bad sample must not kill a 2-hour talk), and float samples
  beyond full scale are clipped to [-1, 1] (the ASR's features assume it).
Each of these repairs is logged once per buffer (one talk), not once per chunk.
- an empty chunk is a no-op.

Memory is O(audio kept): samples live in one preallocated numpy array whose capacity doubles when full (amortised
O(1) per sample, never a copy of the talk per chunk), and `discard_before` drops audio no step will read again (the
cascade drops what lies before the committed-sentence boundary), so a long talk holds only its open stretch.
Times stay absolute after a discard. Views returned by `view` stay valid after later appends (an old view may
point at the previous allocation, whose samples are identical) but not after a discard.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.signal import resample_poly

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
MAX_CHANNELS = 8
_INT16_FULL_SCALE = 32768.0


@dataclass(frozen=True)
class Repairs:
    """What `sanitise` changed in one chunk."""

    n_channels: int  # channels averaged into mono (1: none)
    n_nonfinite: int  # NaN / inf samples set to 0
    n_clipped: int  # samples beyond full scale clipped


def sanitise(chunk: np.ndarray | Sequence[float]) -> tuple[np.ndarray, Repairs]:
    """Validate one chunk and return it as 1-D float32 samples in [-1, 1] (no resampling), with its repairs."""
    samples = np.asarray(chunk)
    if samples.ndim not in (1, 2):
        raise ValueError(f"audio chunk must be 1-D (mono) or 2-D (frames, channels); got shape {samples.shape}")
    if samples.ndim == 2 and samples.shape[1] > MAX_CHANNELS:
        raise ValueError(
            f"2-D audio must be (frames, channels); got {samples.shape[1]} channels in shape {samples.shape} "
            "(transpose a (channels, frames) array first)"
        )
    samples = _to_float32(samples)
    bad = ~np.isfinite(samples)
    n_nonfinite = int(bad.sum())
    if n_nonfinite:
        samples = np.where(bad, np.float32(0.0), samples)
    loud = np.abs(samples) > 1.0
    n_clipped = int(loud.sum())
    if n_clipped:
        samples = np.clip(samples, -1.0, 1.0)
    n_channels = samples.shape[1] if samples.ndim == 2 else 1
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    return samples, Repairs(n_channels, n_nonfinite, n_clipped)


def to_float32_mono(chunk: np.ndarray | Sequence[float]) -> np.ndarray:
    """`sanitise` without the report."""
    return sanitise(chunk)[0]


def _to_float32(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.float32:
        return samples
    if samples.dtype == np.float64:
        return samples.astype(np.float32)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / np.float32(_INT16_FULL_SCALE)
    raise TypeError(f"unsupported audio dtype {samples.dtype}: pass float32/float64 in [-1, 1] or int16 PCM")


class StreamResampler:
    """`resample_poly` applied to a stream in pieces, giving the same samples as resampling it in one go.

    Output sample j sits at input position j * down / up. A piece of input is resampled together with enough left
    context that the filter never sees the artificial zero padding at the piece's left edge, and output samples
    whose filter support reaches past the input received so far are held back until more input (or `flush`).
    The hold-back is the filter half-length, under 1 ms of audio for common rates.
    """

    def __init__(self, rate_in_hz: int, rate_out_hz: int = SAMPLE_RATE_HZ):
        gcd = math.gcd(rate_in_hz, rate_out_hz)
        self.up, self.down = rate_out_hz // gcd, rate_in_hz // gcd
        # resample_poly's filter spans 10 * max(up, down) taps per side at the upsampled rate.
        self._half_len_in = math.ceil(10 * max(self.up, self.down) / self.up) + 1
        self._history = np.zeros(0, dtype=np.float32)
        self._history_start = 0  # absolute input index of _history[0]
        self._inputs_seen = 0
        self._outputs_done = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed float32 input; return the output samples that are now final."""
        self._history = np.concatenate([self._history, samples])
        self._inputs_seen += len(samples)
        # Largest j with j * down / up + half_len_in <= inputs_seen - 1.
        last_safe = ((self._inputs_seen - 1 - self._half_len_in) * self.up) // self.down
        return self._emit(last_safe + 1)

    def flush(self) -> np.ndarray:
        """Emit the held-back tail; the total output then has resample_poly's length ceil(n * up / down)."""
        return self._emit(-(-self._inputs_seen * self.up // self.down))

    def _emit(self, stop: int) -> np.ndarray:
        if stop <= self._outputs_done:
            return np.zeros(0, dtype=np.float32)
        # Start the segment on a multiple of `down` so its outputs land on the global output grid.
        first_input = (self._outputs_done * self.down) // self.up - self._half_len_in
        seg_start = max(0, first_input // self.down * self.down)
        segment = self._history[seg_start - self._history_start:]
        resampled = resample_poly(segment, self.up, self.down).astype(np.float32, copy=False)
        offset = seg_start * self.up // self.down
        out = resampled[self._outputs_done - offset: stop - offset]
        self._outputs_done = stop
        self._trim_history(seg_start)
        return out

    def _trim_history(self, keep_from: int) -> None:
        # Only the next segment's left context is needed again, so history stays O(filter length).
        drop = keep_from - self._history_start
        if drop > 0:
            self._history = self._history[drop:].copy()
            self._history_start = keep_from


class AudioBuffer:
    """Append-only mono float32 audio at 16 kHz, with views by absolute stream time."""

    def __init__(self, initial_capacity_s: float = 60.0):
        self._samples = np.zeros(max(1, int(initial_capacity_s * SAMPLE_RATE_HZ)), dtype=np.float32)
        self._size = 0  # samples appended since the start of the stream (absolute)
        self._origin = 0  # absolute index of the first sample still held
        self._input_rate_hz: int | None = None
        self._resampler: StreamResampler | None = None
        self._warned: set[str] = set()  # repairs already logged for this buffer (one talk)

    @property
    def num_samples(self) -> int:
        return self._size

    @property
    def duration_s(self) -> float:
        """Seconds of 16 kHz audio held (the stream time of the end of the buffer)."""
        return self._size / SAMPLE_RATE_HZ

    @property
    def capacity_samples(self) -> int:
        return len(self._samples)

    def append(self, chunk: np.ndarray | Sequence[float], sample_rate_hz: int = SAMPLE_RATE_HZ) -> int:
        """Add one chunk; return the number of 16 kHz samples added (may lag input by <1 ms when resampling)."""
        raw = np.asarray(chunk)
        if raw.size == 0:
            return 0
        samples, repairs = sanitise(raw)
        self._log_repairs(repairs)
        self._check_rate(sample_rate_hz)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        self._write(samples)
        return len(samples)

    def _log_repairs(self, repairs: Repairs) -> None:
        """One warning per kind of repair and talk: a long bad stream must not flood the log."""
        notes = {"channels": (repairs.n_channels > 1, f"multi-channel audio ({repairs.n_channels} channels): "
                                                      "downmixing to mono by averaging"),
                 "nonfinite": (repairs.n_nonfinite > 0, f"replacing {repairs.n_nonfinite} non-finite audio samples "
                                                        "(NaN/inf) with 0.0; later ones are replaced silently"),
                 "clipped": (repairs.n_clipped > 0, f"clipping {repairs.n_clipped} samples beyond full scale to "
                                                    "[-1, 1]; later ones are clipped silently")}
        for kind, (happened, message) in notes.items():
            if happened and kind not in self._warned:
                logger.warning(message)
                self._warned.add(kind)

    def finish(self) -> int:
        """End of stream: write out what the resampler still holds back. Returns samples added."""
        if self._resampler is None:
            return 0
        tail = self._resampler.flush()
        self._write(tail)
        return len(tail)

    def _check_rate(self, sample_rate_hz: int) -> None:
        if sample_rate_hz <= 0 or int(sample_rate_hz) != sample_rate_hz:
            raise ValueError(f"sample rate must be a positive whole number of Hz, got {sample_rate_hz}")
        sample_rate_hz = int(sample_rate_hz)
        if self._input_rate_hz is None:
            self._input_rate_hz = sample_rate_hz
            if sample_rate_hz != SAMPLE_RATE_HZ:
                logger.info("resampling input audio from %d Hz to %d Hz", sample_rate_hz, SAMPLE_RATE_HZ)
                self._resampler = StreamResampler(sample_rate_hz, SAMPLE_RATE_HZ)
        elif sample_rate_hz != self._input_rate_hz:
            raise ValueError(f"sample rate changed mid-stream: {self._input_rate_hz} Hz, then {sample_rate_hz} Hz")

    def _write(self, samples: np.ndarray) -> None:
        held = self._size - self._origin
        needed = held + len(samples)
        if needed > len(self._samples):
            # Doubling keeps the total copy cost linear in the talk length.
            grown = np.zeros(max(needed, 2 * len(self._samples)), dtype=np.float32)
            grown[:held] = self._samples[:held]
            self._samples = grown
        self._samples[held:needed] = samples
        self._size += len(samples)

    def discard_before(self, time_s: float) -> None:
        """Release audio before absolute `time_s`; later reads before it see the first sample still held.

        The copy happens only once the released part is at least as long as the kept part, so each sample is
        moved O(1) times on average.
        """
        cut = self.sample_index(time_s) - self._origin
        kept = self._size - self._origin - cut
        if cut <= 0 or cut < kept:
            return
        self._samples[:kept] = self._samples[cut:cut + kept]
        self._origin += cut

    @property
    def held_samples(self) -> int:
        """Samples held in memory (after discards), as opposed to `num_samples` heard in total."""
        return self._size - self._origin

    def sample_index(self, time_s: float) -> int:
        """Absolute index of the sample at time `time_s`, clamped to the samples held."""
        return min(max(self._origin, round(time_s * SAMPLE_RATE_HZ)), self._size)

    def view(self, start_s: float, end_s: float | None = None) -> np.ndarray:
        """Read-only view (no copy) of the samples in [start_s, end_s); end defaults to the end of the buffer.

        The first sample of the view is at time `sample_index(start_s) / SAMPLE_RATE_HZ`.
        """
        start = self.sample_index(start_s)
        stop = self._size if end_s is None else max(start, self.sample_index(end_s))
        window = self._samples[start - self._origin:stop - self._origin].view()
        window.flags.writeable = False
        return window
