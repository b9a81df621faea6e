"""Capacity of one `alignatt serve` process: N clients with different talks at once, each sending its audio at
real time, and how far each one's text trails its speaker.

    python -m alignatt_eval.runners.synth_talks --talks 8 --max-seconds 40 --out /tmp/talks
    python -m alignatt_eval.bench.serve_capacity --talks /tmp/talks --sessions 1 2 4 8 --label batched \
        --out results/serve/results.tsv -- --models offline --batch-drafts on   # after --: `alignatt serve` flags
    python -m alignatt_eval.bench.serve_capacity ... --label unbatched -- --models offline --batch-drafts off

One server is started (models loaded once) and serves every round. First each talk is played alone; then, for
each N, N talks are played at once. Per session: lag behind the speaker at each step (seconds of speech sent so
far minus the audio the step had taken, when its answer arrived: queueing, compute and transport), the wait from
end_of_stream to end_of_processing (the final pass), LongYAAL CU and CA against the talk's reference (OmniSTEval,
the talk as one segment: CU times a unit by the audio its step had taken, CA by when the paced client received
it), and its text against the same talk played alone (chrF, and the share of its units that differ) and against
the reference (chrF). A talk played alone is a batch of one, so it is drafted exactly as without batching.
Live mode (the default) catches up with longer steps when a session falls behind, so a crowded server writes in
bigger steps rather than falling ever further behind; with `--fixed-chunks` a session's text depends on its audio
only, so what differs from the talk alone is the batched kernels' rounding.
"""
from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import websockets

from alignatt.cli.omnisteval import score_talk
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
    units: tuple[str, ...]
    cu_ms: tuple[float, ...]  # per unit: audio the step that wrote it had taken
    ca_ms: tuple[float, ...]  # per unit: when the client received it, from its first audio
    lang: str

    @property
    def text(self) -> str:
        return appended_text(list(self.units), is_char_level(self.lang))

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


@dataclass
class _Received:
    lags_s: list[float] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    cu_ms: list[float] = field(default_factory=list)
    ca_ms: list[float] = field(default_factory=list)
    done_s: float = 0.0


async def _receive(ws, start_s: float) -> _Received:
    received = _Received()
    async for raw in ws:
        message, now = json.loads(raw), time.monotonic()
        if "error" in message:
            raise RuntimeError(f"the server refused the session: {message}")
        if "units" in message:
            n_units = len(message["units"])
            received.units += message["units"]
            received.cu_ms += [message["audio_s"] * 1000.0] * n_units
            received.ca_ms += [(now - start_s) * 1000.0] * n_units
            if not message["final"]:
                received.lags_s.append(now - start_s - message["audio_s"])
        if message.get("end_of_processing"):
            received.done_s = now
            return received
    raise RuntimeError("the server closed the connection before end_of_processing")


async def paced_session(url: str, talk: Talk, lang: str) -> SessionRun:
    """Send the talk's audio at real time (each 100 ms frame once it has been spoken), then end_of_stream."""
    samples, rate = soundfile.read(str(talk.wav), dtype="int16", always_2d=False)
    frame = int(rate * FRAME_MS / 1000)
    async with websockets.connect(url, max_size=None, ping_timeout=None) as ws:  # a crowded server answers late
        await ws.send(json.dumps({"sample_rate": rate, "target_lang": lang,
                                  "metrics_metadata": {"wav_name": talk.name}}))
        start = time.monotonic()
        receiving = asyncio.create_task(_receive(ws, start))
        for offset in range(0, len(samples), frame):
            end = min(len(samples), offset + frame)
            await asyncio.sleep(max(0.0, start + end / rate - time.monotonic()))
            await ws.send(samples[offset:end].tobytes())
        ended = time.monotonic()
        await ws.send(json.dumps({"end_of_stream": True}))
        got = await receiving
    return SessionRun(talk.name, len(samples) / rate, tuple(got.lags_s), got.done_s - ended, tuple(got.units),
                      tuple(got.cu_ms), tuple(got.ca_ms), lang)


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


def units_changed(run: SessionRun, alone: SessionRun) -> float:
    """Share of the talk-alone units that this run does not write in the same place (difflib's matching blocks)."""
    matcher = difflib.SequenceMatcher(a=list(alone.units), b=list(run.units), autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return 1.0 - matched / max(len(alone.units), len(run.units), 1)


def text_delays(units: list[str], delays_ms: list[float], lang: str) -> list[float]:
    """The time of every word (character in Chinese) of the text the client shows, as OmniSTEval splits it: a unit
    that attaches to the word before it (a full stop) adds no word, and at character level each character, spaces
    included, takes the time of the unit it came with."""
    char_level, timed, previous = is_char_level(lang), [], None
    for unit, delay_ms in zip(units, delays_ms):
        piece = appended_text([unit], char_level, previous)
        if char_level:
            timed += [delay_ms] * len(piece)
        else:
            continues_word = previous is not None and not piece[:1].isspace()
            timed += [delay_ms] * (len(piece.split()) - continues_word)
        previous = unit
    return timed


def longyaal(run: SessionRun, talk: Talk, out: Path) -> tuple[float, float]:
    """LongYAAL CU and CA (ms) of one session, by OmniSTEval (NaN without a reference or units)."""
    if talk.reference is None or not run.units:
        return float("nan"), float("nan")
    scores = score_talk(talk.wav, run.audio_s, talk.reference, run.text,
                        text_delays(list(run.units), list(run.cu_ms), run.lang),
                        text_delays(list(run.units), list(run.ca_ms), run.lang), run.lang, out)
    return scores["LongYAAL (CU)"], scores["LongYAAL (CA)"]


def rows(label: str, n_sessions: int, runs: list[SessionRun], alone: dict[str, SessionRun],
         talks: dict[str, Talk], scratch: Path) -> list[dict]:
    table = []
    for run in runs:
        cu_ms, ca_ms = longyaal(run, talks[run.talk], scratch / f"{label}-{n_sessions}-{run.talk}")
        table.append({"label": label, **_row(n_sessions, run, alone, talks), "longyaal_cu_ms": round(cu_ms),
                      "longyaal_ca_ms": round(ca_ms)})
    return table


def _row(n_sessions: int, run: SessionRun, alone: dict[str, SessionRun], talks: dict[str, Talk]) -> dict:
    return {"sessions": n_sessions, "talk": run.talk, "audio_s": round(run.audio_s, 1), "steps": len(run.lags_s),
            "lag_mean_s": round(statistics.fmean(run.lags_s), 2) if run.lags_s else float("nan"),
            "lag_p90_s": round(run.lag(0.9), 2), "lag_max_s": round(run.lag(1.0), 2),
            "final_wait_s": round(run.final_wait_s, 2),
            "chrf_vs_alone": round(chrf(run.text, alone[run.talk].text), 1),
            "units_changed": round(units_changed(run, alone[run.talk]), 3),
            "chrf_vs_reference": round(chrf(run.text, talks[run.talk].reference), 1)}


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
    parser.add_argument("--label", default="", help="names this run's rows (e.g. batched, unbatched)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the table here (TSV; rows are appended to an existing table)")
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
    scratch = Path(tempfile.mkdtemp(prefix="serve-capacity-"))
    log = scratch / "server.log"
    server, port = start_server(server_flags, most, log)
    print(f"server log: {log}", flush=True)
    url, by_name = f"ws://127.0.0.1:{port}/ws", {talk.name: talk for talk in talks}
    try:
        alone = {}
        for talk in talks[:most]:  # each talk played alone: the text the crowded rounds are compared with
            [alone[talk.name]] = asyncio.run(play_round(url, [talk], args.target_lang))
        rounds = {1: [alone[talk.name] for talk in talks[:most]]}
        for n_sessions in sorted(set(args.sessions) - {1}):
            rounds[n_sessions] = asyncio.run(play_round(url, talks[:n_sessions], args.target_lang))
    finally:
        server.terminate()
        server.wait(timeout=120)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    table = [row for n_sessions, runs in rounds.items()
             for row in rows(args.label, n_sessions, runs, alone, by_name, scratch)]
    print_rows(table)
    if args.out is not None:
        write_rows(args.out, table)


def write_rows(path: Path, table: list[dict]) -> None:
    """Append to the TSV at `path` (with its header when new)."""
    keys = list(table[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", encoding="utf-8") as out:
        if new:
            out.write("\t".join(keys) + "\n")
        out.writelines("\t".join(str(row[key]) for key in keys) + "\n" for row in table)


if __name__ == "__main__":
    main()
