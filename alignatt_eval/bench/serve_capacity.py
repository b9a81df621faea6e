"""Capacity of one `alignatt serve` process: N clients with different talks at once, each sending its audio at
real time, and how far each one's text trails its speaker.

    python -m alignatt_eval.runners.synth_talks --talks 4 --max-seconds 40 --out /tmp/talks
    python -m alignatt_eval.bench.serve_capacity --talks /tmp/talks --sessions 1 2 4 --out results/serve/results.tsv \
        -- --models offline                          # after --: flags for the server (`alignatt serve --help`)

One server is started (models loaded once) and serves every round. First each talk is played alone; then, for
each N, N talks are played at once. Per session: lag behind the speaker at each step (seconds of speech sent so
far minus the audio the step had taken, when its answer arrived: queueing, compute and transport), the wait from
end_of_stream to end_of_processing (the final pass), and its text scored with chrF against the same talk played
alone and against the talk's reference translation. Live mode (the default) catches up with longer steps when a
session falls behind, so a crowded server writes in bigger steps rather than falling ever further behind.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import websockets

from alignatt.serve.session import appended_text
from alignatt.text_units import is_char_level

FRAME_MS = 100.0


@dataclass(frozen=True)
class Talk:
    name: str
    wav: Path
    reference: str | None


@dataclass(frozen=True)
class SessionRun:
    """What one paced client saw."""

    talk: str
    audio_s: float
    lags_s: tuple[float, ...]  # one per step answered before the end of the stream
    final_wait_s: float  # end_of_stream sent -> end_of_processing received
    text: str

    def lag(self, q: float) -> float:
        return float(np.quantile(self.lags_s, q)) if self.lags_s else float("nan")


def read_talks(folder: Path, lang: str) -> list[Talk]:
    """The talks of a synth_talks folder (wav/NAME.wav, per_talk/NAME.LANG), by name."""
    talks = []
    for wav in sorted((folder / "wav").glob("*.wav")):
        reference = folder / "per_talk" / f"{wav.stem}.{lang}"
        text = " ".join(reference.read_text(encoding="utf-8").split()) if reference.is_file() else None
        talks.append(Talk(wav.stem, wav, text))
    if not talks:
        raise SystemExit(f"no talks in {folder}/wav: python -m alignatt_eval.runners.synth_talks --out {folder}")
    return talks


async def _receive(ws, start_s: float, char_level: bool) -> tuple[list[float], float, str]:
    lags, units = [], []
    async for raw in ws:
        message, now = json.loads(raw), time.monotonic()
        if "error" in message:
            raise RuntimeError(f"the server refused the session: {message}")
        if "units" in message:
            units += message["units"]
            if not message["final"]:
                lags.append(now - start_s - message["audio_s"])
        if message.get("end_of_processing"):
            return lags, now, appended_text(units, char_level)
    raise RuntimeError("the server closed the connection before end_of_processing")


async def paced_session(url: str, talk: Talk, lang: str) -> SessionRun:
    """Send the talk's audio at real time (each 100 ms frame once it has been spoken), then end_of_stream."""
    samples, rate = soundfile.read(str(talk.wav), dtype="int16", always_2d=False)
    frame = int(rate * FRAME_MS / 1000)
    async with websockets.connect(url, max_size=None, ping_timeout=None) as ws:  # a crowded server answers late
        await ws.send(json.dumps({"sample_rate": rate, "target_lang": lang,
                                  "metrics_metadata": {"wav_name": talk.name}}))
        start = time.monotonic()
        receiving = asyncio.create_task(_receive(ws, start, is_char_level(lang)))
        for offset in range(0, len(samples), frame):
            end = min(len(samples), offset + frame)
            await asyncio.sleep(max(0.0, start + end / rate - time.monotonic()))
            await ws.send(samples[offset:end].tobytes())
        ended = time.monotonic()
        await ws.send(json.dumps({"end_of_stream": True}))
        lags, done, text = await receiving
    return SessionRun(talk.name, len(samples) / rate, tuple(lags), done - ended, text)


async def play_round(url: str, talks: list[Talk], lang: str) -> list[SessionRun]:
    return list(await asyncio.gather(*(paced_session(url, talk, lang) for talk in talks)))


def start_server(server_flags: list[str], max_sessions: int, log: Path) -> tuple[subprocess.Popen, int]:
    """`alignatt serve` on a free port, its log in `log`; returns once the models are loaded."""
    with log.open("w") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "alignatt.serve", "--port", "0", "--max-sessions",
                                   str(max_sessions), *server_flags], stdout=subprocess.PIPE, stderr=stderr,
                                  text=True)
    line = server.stdout.readline()
    if not line.startswith("serving"):
        server.kill()
        raise SystemExit(f"the server did not start: {log}")
    return server, int(line.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def chrf(hypothesis: str, reference: str | None) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(hypothesis, [reference]).score if reference is not None else float("nan")


def rows(n_sessions: int, runs: list[SessionRun], alone: dict[str, SessionRun], talks: dict[str, Talk]
         ) -> list[dict]:
    return [{"sessions": n_sessions, "talk": run.talk, "audio_s": round(run.audio_s, 1), "steps": len(run.lags_s),
             "lag_mean_s": round(statistics.fmean(run.lags_s), 2) if run.lags_s else float("nan"),
             "lag_p90_s": round(run.lag(0.9), 2), "lag_max_s": round(run.lag(1.0), 2),
             "final_wait_s": round(run.final_wait_s, 2),
             "chrf_vs_alone": round(chrf(run.text, alone[run.talk].text), 1),
             "chrf_vs_reference": round(chrf(run.text, talks[run.talk].reference), 1)} for run in runs]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def print_rows(table: list[dict]) -> None:
    keys = list(table[0])
    print("\t".join(keys))
    for row in table:
        print("\t".join(str(row[key]) for key in keys), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alignatt_eval.bench.serve_capacity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--talks", type=Path, required=True, help="a synth_talks folder (wav/, per_talk/)")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="numbers of talks played at once (each needs that many different talks)")
    parser.add_argument("--target-lang", default="de")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (TSV)")
    parser.add_argument("server_flags", nargs=argparse.REMAINDER, help="after --: flags for alignatt serve")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    server_flags = [flag for flag in args.server_flags if flag != "--"]
    talks = read_talks(args.talks, args.target_lang)
    most = max(args.sessions)
    if most > len(talks):
        raise SystemExit(f"{most} sessions need {most} different talks; {args.talks} holds {len(talks)}")
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    log = Path(tempfile.mkdtemp(prefix="serve-capacity-")) / "server.log"
    server, port = start_server(server_flags, most, log)
    print(f"server log: {log}", flush=True)
    url, by_name = f"ws://127.0.0.1:{port}/ws", {talk.name: talk for talk in talks}
    try:
        alone = {}
        for talk in talks[:most]:  # each talk played alone: the text the crowded rounds are compared with
            [alone[talk.name]] = asyncio.run(play_round(url, [talk], args.target_lang))
        table = rows(1, [alone[talk.name] for talk in talks[:most]], alone, by_name)
        for n_sessions in sorted(set(args.sessions) - {1}):
            table += rows(n_sessions, asyncio.run(play_round(url, talks[:n_sessions], args.target_lang)), alone,
                          by_name)
    finally:
        server.terminate()
        server.wait(timeout=120)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print_rows(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        keys = list(table[0])
        args.out.write_text("\n".join(["\t".join(keys)] + ["\t".join(str(r[k]) for k in keys) for r in table]) + "\n")


if __name__ == "__main__":
    main()
