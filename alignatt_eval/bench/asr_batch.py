"""Would batching the ASR across sessions pay? faster-whisper (the offline proxy's ASR) on N sessions' windows.

    python -m alignatt_eval.bench.asr_batch --talks /tmp/talks --sessions 2 4 8 [--out results.json]

Each session re-transcribes its open sentence every step: a window of 2-15 s that ends at the audio heard so far.
Here session i's window is a stretch of talk i (lengths cycle through `--window-s`). faster-whisper transcribes
one window at a time (its own seek, timestamp and word-alignment loop); what could be batched is the encoder, which
takes one fixed-length input per batch. So a batch must pad every window's log-mel frames to its longest
window's, and whisper's encoder has no padding mask: a window's encoder output, and so its words, change with the
padding it sees. Measured per batch size:
- encoder time: every window alone at its own fitted length (the server today) against one batched call at the
  longest fitted length, and one at whisper's 30 s window (faster-whisper's BatchedInferencePipeline pads to it);
- words: the share of windows whose transcript changes when its encoder input is padded to the batch's length;
- the encoder's share of a whole transcription (the decode loop stays per window either way).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile

from alignatt.asr.whisper import WhisperBackend, WhisperOptions, _frames, fit_features
from alignatt_eval.bench.serve_capacity import machine

FULL_WINDOW_FRAMES = 3000  # whisper's 30 s


@dataclass(frozen=True)
class Window:
    talk: str
    audio: np.ndarray  # 16 kHz float32

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16000


def windows(folder: Path, n: int, lengths_s: list[float], start_s: float) -> list[Window]:
    """Session i's window: `lengths_s[i % len]` seconds of talk i from `start_s` on."""
    wavs = sorted((folder / "wav").glob("*.wav"))[:n]
    if len(wavs) < n:
        raise SystemExit(f"{n} sessions need {n} talks; {folder}/wav holds {len(wavs)}")
    out = []
    for i, wav in enumerate(wavs):
        audio, rate = soundfile.read(str(wav), dtype="float32")
        if rate != 16000:
            raise SystemExit(f"{wav}: {rate} Hz, expected 16000")
        start = int(start_s * 16000)
        out.append(Window(wav.stem, audio[start:start + int(lengths_s[i % len(lengths_s)] * 16000)]))
    return out


def backend(fit_min_frames: int | None) -> WhisperBackend:
    """The server's ASR (CTranslate2 encoder, int8, fitted window); with `fit_min_frames`, every encoder input
    padded to at least that many frames, as a batch of that length would feed it."""
    options = WhisperOptions(encoder="ctranslate2", encoder_window="fit")
    if fit_min_frames is not None:
        options = replace(options, fit_min_ms=fit_min_frames * 10.0)  # 100 frames per second
    return WhisperBackend.from_options(options)


def fitted(model, window: Window, options: WhisperOptions) -> np.ndarray:
    features = model.feature_extractor(window.audio)
    full = np.zeros((features.shape[0], FULL_WINDOW_FRAMES), features.dtype)
    full[:, :min(features.shape[1], FULL_WINDOW_FRAMES)] = features[:, :FULL_WINDOW_FRAMES]
    return fit_features(full, _frames(options.fit_padding_ms), _frames(options.fit_min_ms))


def encode_s(model, batch: np.ndarray, repeats: int) -> float:
    """Best of `repeats` CTranslate2 encoder calls on a (B, mels, frames) batch."""
    import ctranslate2

    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(batch)), to_cpu=True)
        best = min(best, time.perf_counter() - began)
    return best


def pad_to(features: np.ndarray, frames: int) -> np.ndarray:
    out = np.zeros((features.shape[0], frames), features.dtype)
    out[:, :features.shape[1]] = features
    return out


def transcript(asr: WhisperBackend, window: Window) -> str:
    return " ".join(word.text for word in asr.transcribe(window.audio, 0.0))


def measure(batch: list[Window], production: WhisperBackend, repeats: int) -> dict:
    model = production.model
    features = [fitted(model, w, production.options) for w in batch]
    longest = max(f.shape[1] for f in features)
    alone_s = sum(encode_s(model, f[None], repeats) for f in features)
    padded_s = encode_s(model, np.stack([pad_to(f, longest) for f in features]), repeats)
    full_s = encode_s(model, np.stack([pad_to(f, FULL_WINDOW_FRAMES) for f in features]), repeats)
    padded_asr = backend(longest)
    changed = [transcript(production, w) != transcript(padded_asr, w) for w in batch]
    began = time.perf_counter()
    for w in batch:
        production.transcribe(w.audio, 0.0)
    transcribe_s = time.perf_counter() - began
    return {"sessions": len(batch), "window_s": [round(w.seconds, 1) for w in batch],
            "encoder_frames": [f.shape[1] for f in features], "padded_to_frames": longest,
            "encoder_alone_s": round(alone_s, 3), "encoder_batched_padded_s": round(padded_s, 3),
            "encoder_batched_30s_s": round(full_s, 3), "transcribe_alone_s": round(transcribe_s, 3),
            "encoder_share_of_transcribe": round(alone_s / transcribe_s, 2),
            "windows_whose_words_change_padded": sum(changed)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignatt_eval.bench.asr_batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--talks", type=Path, required=True, help="a synth_talks folder (wav/)")
    parser.add_argument("--sessions", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--window-s", type=float, nargs="+", default=[3.0, 12.0, 6.0, 9.0],
                        help="window lengths, cycled over the sessions")
    parser.add_argument("--start-s", type=float, default=5.0, help="where each talk's window starts")
    parser.add_argument("--repeats", type=int, default=3, help="encoder timings: best of this many")
    parser.add_argument("--out", type=Path, help="also write the rows here (JSON)")
    args = parser.parse_args(argv)
    production = backend(None)
    all_windows = windows(args.talks, max(args.sessions), args.window_s, args.start_s)
    report = {"machine": machine(), "rows": [measure(all_windows[:n], production, args.repeats)
                                             for n in args.sessions]}
    for row in report["rows"]:
        print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
