"""Dev-set runner: the agent over long-form talks through the real `simuleval` CLI, scored with OmniSTEval.

    python -m alignatt_eval.runners.run_dev --data eval/synth/dev3 --lang de --preset low --policy alignatt --n-talks 3 \
        --out results/proxy [agent flags: --mt-model-id ... --heads ... --asr-backend whisper ...]

One simuleval run per talk (the whole talk wav is one instance: long-form), written to
OUT/RUN/talks/NAME/ (instances.log, steps.jsonl, simuleval.log); a talk whose instances.log exists is skipped,
so an interrupted run resumes. `--one-process` runs the pending talks as the instances of one simuleval
process (models loaded once) and then splits its logs per talk. The talks' logs are merged and scored together (OmniSTEval longform: BLEU, chrF,
LongYAAL CU and CA, XCOMET-XL where its weights exist; StreamLAAL with SimulStream's scorer) and the row
lands in OUT/RUN.json and OUT/results.tsv (RUN = LANG.PRESET.POLICY, e.g. de.low.wait-k3; with --step-ms
instead of a preset, e.g. de.500ms.local-agreement).
Flags the runner does not know go to the agent unchanged.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import soundfile
from tqdm import tqdm

from alignatt.policy.policies import POLICIES, PolicySelection
from alignatt.factory import PRESETS
from alignatt.cli.omnisteval import omnisteval_command, run_omnisteval
from alignatt.text_units import is_char_level
from alignatt_eval.runners.dev_set import MCIF_DEV, DevSet, write_segments, segment_entry
from alignatt_eval.analysis.scoring import XCOMET, finite, merge_hypotheses, segment_coverage, stream_laal, xcomet_status

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
AGENT_CLASS = "alignatt_eval.runners.timed_agent.TimedAlignAttAgent"
# Set by the runner from its own options; an agent flag repeating them would contradict it.
RESERVED_FLAGS = ("--target-lang", "--preset", "--policy", "--wait-k", "--source-segment-size", "--output",
                  "--source", "--target", "--eval-latency-unit", "--agent", "--agent-class", "--step-ms")
# Runs a `simuleval ...` command line, given its output folder and number of instances; raises when it fails.
Execute = Callable[[list[str], Path, int], None]
TSV_COLUMNS = ("run", "lang", "preset", "policy", "talks", "audio_s", "bleu", "chrf", "xcomet", "longyaal_cu_ms",
               "longyaal_ca_ms", "streamlaal_cu_ms", "streamlaal_ca_ms", "empty_share", "length_ratio", "compute_s",
               "rtf", "asr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alignatt_eval.runners.run_dev", description=__doc__.splitlines()[0],
                                     allow_abbrev=False,
                                     epilog="Any other flag is passed to the agent (see `simuleval --agent "
                                            "agents/alignatt_agent.py --help`).")
    parser.add_argument("--data", default=str(MCIF_DEV), help="dev set in the MCIF layout (alignatt_eval/runners/dev_set.py)")
    parser.add_argument("--audio-dir", default=None, help="folder of the talk wavs (default: DATA/wav)")
    parser.add_argument("--lang", default="de", help="target language: de, it or zh")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="low",
                        help="operating point; also sets simuleval's --source-segment-size")
    parser.add_argument("--step-ms", type=float, default=None,
                        help="step (chunk) size in ms instead of the preset's (its gate stays), e.g. "
                             "LocalAgreement at 500 or 2000 ms")
    parser.add_argument("--policy", choices=POLICIES, default="alignatt", help="simultaneous policy")
    parser.add_argument("--wait-k", type=int, default=3, help="k of the wait-k policy")
    parser.add_argument("--talks", nargs="+", default=None, help="talks to run (wav stems; default: all)")
    parser.add_argument("--n-talks", type=int, default=None, help="only the first N talks")
    parser.add_argument("--out", default=str(REPO / "results"),
                        help="results folder (a row per run lands here; default: results)")
    parser.add_argument("--name", default=None, help="run name (default: LANG.PRESET.POLICY)")
    parser.add_argument("--comet-model", default=XCOMET,
                        help="COMET model for OmniSTEval, used only if already cached; '' turns COMET off")
    parser.add_argument("--talk-timeout-s", type=float, default=None, help="give up on a talk after this long")
    parser.add_argument("--one-process", action="store_true",
                        help="run all pending talks in one simuleval process (models loaded once)")
    return parser


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser()
    args, agent_flags = parser.parse_known_args(argv)
    clashing = [f for f in agent_flags if f.split("=")[0] in RESERVED_FLAGS]
    if clashing:
        parser.error(f"{', '.join(clashing)}: set by the runner, use its own options (--lang, --preset, ...)")
    return args, agent_flags


def step_ms(args: argparse.Namespace) -> float:
    """The step a run takes: --step-ms, else its preset's."""
    return args.step_ms if args.step_ms is not None else PRESETS[args.preset]["step_ms"]


def operating_point(preset: str, step_ms: float | None = None) -> str:
    """A run's operating point in its name: the preset's name, or the step size when --step-ms replaces it."""
    return preset if step_ms is None else f"{step_ms:g}ms"


class Run:
    """One (language, preset, policy) over a set of talks: paths, commands, and the pieces of the row."""

    def __init__(self, args: argparse.Namespace, agent_flags: list[str], argv: list[str] = ()):
        self.args = args
        self.argv = list(argv)
        self.agent_flags = agent_flags
        self.selection = PolicySelection(args.policy, args.wait_k)
        self.data = DevSet.load(args.data)
        self.audio_dir = Path(args.audio_dir or Path(args.data) / "wav")
        self.talks = list(args.talks or self.data.talks())[: args.n_talks]
        self.name = args.name or f"{args.lang}.{self.operating_point}.{self.selection.label}"
        self.out = Path(args.out)
        self.dir = self.out / self.name
        self.char_level = is_char_level(args.lang)
        self.asr_cached = any(flag.split("=")[0] == "--asr-cache-dir" for flag in agent_flags)
        for talk in self.talks:
            self.data.talk_segments(talk)  # unknown talk: fail before running anything
            if not self.wav(talk).is_file():
                raise FileNotFoundError(f"no audio for talk {talk}: {self.wav(talk)} "
                                        "(synthesise talks with `python -m alignatt_eval.runners.synth_talks`)")

    @property
    def step_ms(self) -> float:
        return step_ms(self.args)

    @property
    def operating_point(self) -> str:
        return operating_point(self.args.preset, self.args.step_ms)

    def wav(self, talk: str) -> Path:
        return (self.audio_dir / self.data.talk_segments(talk)[0].wav).resolve()

    def talk_dir(self, talk: str) -> Path:
        return self.dir / "talks" / talk

    def simuleval_command(self, talk_dir: Path) -> list[str]:
        step = ["--preset", self.args.preset]
        if self.args.step_ms is not None:
            step += ["--step-ms", f"{self.step_ms:g}"]
        return ["simuleval", "--agent-class", AGENT_CLASS, "--source", str(talk_dir / "source.txt"),
                "--target", str(talk_dir / "target.txt"), "--output", str(talk_dir),
                "--source-segment-size", f"{self.step_ms:g}", "--eval-latency-unit",
                "char" if self.char_level else "word", "--no-progress-bar", "--no-scoring",
                "--target-lang", self.args.lang, *step, "--policy", self.args.policy, "--wait-k", str(self.args.wait_k),
                *self.agent_flags]

    def _simuleval(self, talks: list[str], folder: Path, execute: Execute | None = None) -> tuple[list[str], float]:
        """simuleval over `talks` (one instance each) into `folder`; returns the command and its wall time.
        `execute` runs the command (default: a `simuleval` process; a sweep worker runs it in its own process)."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "source.txt").write_text("".join(f"{self.wav(t)}\n" for t in talks), encoding="utf-8")
        joiner = "" if self.char_level else " "
        (folder / "target.txt").write_text(
            "".join(joiner.join(self.data.talk_lines(t, self.args.lang)) + "\n" for t in talks), encoding="utf-8")
        command = self.simuleval_command(folder)
        start = time.perf_counter()
        (execute or self._subprocess)(command, folder, len(talks))
        wall_s = time.perf_counter() - start
        if not (folder / "instances.log").is_file():
            raise RuntimeError(f"simuleval wrote no instances.log for {', '.join(talks)}: {folder}")
        return command, wall_s

    def _subprocess(self, command: list[str], folder: Path, n_talks: int) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        timeout_s = self.args.talk_timeout_s * n_talks if self.args.talk_timeout_s else None
        with (folder / "simuleval.log").open("w", encoding="utf-8") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, timeout=timeout_s)
        if done.returncode != 0:
            tail = (folder / "simuleval.log").read_text(encoding="utf-8")[-3000:]
            raise RuntimeError(f"simuleval failed in {folder} (exit {done.returncode}); "
                               f"log: {folder / 'simuleval.log'}\n{tail}")

    def run_talk(self, talk: str, execute: Execute | None = None) -> None:
        """simuleval on one talk, in a scratch folder renamed into place only once it succeeded."""
        partial = self.talk_dir(talk).with_name(talk + ".partial")
        command, wall_s = self._simuleval([talk], partial, execute)
        (partial / "run.json").write_text(json.dumps({"command": shlex.join(command), "wall_s": round(wall_s, 1)},
                                                     indent=2) + "\n", encoding="utf-8")
        partial.rename(self.talk_dir(talk))

    def run_talks_together(self, talks: list[str]) -> None:
        """simuleval on several talks in one process, then each talk's logs in its own folder, as `run_talk`
        leaves them (wall time shared out by audio length)."""
        batch = self.dir / "batch.partial"
        command, wall_s = self._simuleval(talks, batch)
        instances = sorted((json.loads(line) for line in (batch / "instances.log").read_text().splitlines()),
                           key=lambda instance: instance["index"])
        steps = [json.loads(line) for line in (batch / "steps.jsonl").read_text().splitlines()]
        durations = [soundfile.info(str(self.wav(t))).duration for t in talks]
        for index, talk in enumerate(talks):
            partial = self.talk_dir(talk).with_name(talk + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            (partial / "instances.log").write_text(json.dumps(instances[index], ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
            (partial / "steps.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in steps
                                                         if s["instance"] == index), encoding="utf-8")
            share_s = wall_s * durations[index] / sum(durations)
            (partial / "run.json").write_text(json.dumps({"command": shlex.join(command), "wall_s": round(share_s, 1),
                                                          "batched_talks": len(talks)}, indent=2) + "\n",
                                              encoding="utf-8")
            partial.rename(self.talk_dir(talk))
        shutil.rmtree(batch)

    def write_references(self) -> tuple[Path, Path, Path]:
        """Segmentation, references and sources of the selected talks, in talk order."""
        segments = [s for talk in self.talks for s in self.data.talk_segments(talk)]
        write_segments(self.dir / "segments.yaml", [segment_entry(s.wav, s.offset_s, s.duration_s) for s in segments])
        for lang, name in ((self.args.lang, "references.txt"), ("en", "sources.txt")):
            lines = self.data.lines(lang)
            (self.dir / name).write_text("".join(lines[s.line] + "\n" for s in segments), encoding="utf-8")
        return self.dir / "segments.yaml", self.dir / "references.txt", self.dir / "sources.txt"

    def score(self) -> dict:
        segments, references, sources = self.write_references()
        hypotheses = self.dir / "hypotheses.jsonl"
        merge_hypotheses([self.talk_dir(t) for t in self.talks], hypotheses)
        use_comet, comet_note = xcomet_status(self.args.comet_model)
        command = omnisteval_command(segments, references, sources, hypotheses, self.args.lang,
                                     self.dir / "omnisteval", self.args.comet_model if use_comet else None)
        scores = run_omnisteval(command, self.dir / "omnisteval")
        try:
            laal_cu, laal_ca, laal_note = stream_laal(hypotheses, segments, references, self.args.lang)
        except Exception as err:  # noqa: BLE001 - an optional metric must not sink the row
            laal_cu = laal_ca = None
            laal_note = f"skipped: {type(err).__name__}: {err}"
        coverage = segment_coverage(self.dir / "omnisteval" / "instances.resegmented.jsonl", self.args.lang)
        return self.row(scores, command, comet_note, laal_cu, laal_ca, laal_note, coverage)

    def row(self, scores: dict, omnisteval: list[str], comet_note: str, laal_cu, laal_ca, laal_note,
            coverage: dict) -> dict:
        runs = [json.loads((self.talk_dir(t) / "run.json").read_text()) for t in self.talks]
        steps = [json.loads(line) for t in self.talks
                 for line in (self.talk_dir(t) / "steps.jsonl").read_text().splitlines()]
        audio_s = sum(soundfile.info(str(self.wav(t))).duration for t in self.talks)
        compute_s = sum(s["compute_ms"] for s in steps) / 1000
        return {
            "run": self.name, "lang": self.args.lang, "preset": self.operating_point, "step_ms": self.step_ms,
            "policy": self.selection.label,
            "wait_k": self.args.wait_k if self.args.policy == "wait-k" else None,
            "talks": self.talks, "n_segments": sum(len(self.data.talk_segments(t)) for t in self.talks),
            "audio_s": round(audio_s, 1),
            "bleu": scores.get("BLEU"), "chrf": scores.get("chrF"),
            "xcomet": scores.get("COMET") if comet_note == self.args.comet_model else None, "xcomet_note": comet_note,
            "longyaal_cu_ms": scores.get("LongYAAL (CU)"), "longyaal_ca_ms": scores.get("LongYAAL (CA)"),
            "streamlaal_cu_ms": laal_cu, "streamlaal_ca_ms": laal_ca, "streamlaal_note": laal_note,
            **gate_counts(steps),
            "empty_segments": coverage["empty_segments"], "empty_share": coverage["empty_share"],
            "length_ratio": coverage["length_ratio"],
            "coverage_definition": "reference segments left with no output after OmniSTEval's resegmentation; "
                                   "length_ratio = output / reference words (zh: characters)",
            "asr": "cached" if self.asr_cached else "live",
            "ca_definition": "audio read + compute time of the policy call that wrote the unit (timed agent)"
                             + ("; an ASR answer taken from the cache counts the compute time recorded when it was "
                                "first transcribed" if self.asr_cached else ""),
            "compute_s": round(compute_s, 1), "rtf": round(compute_s / audio_s, 3) if audio_s else None,
            "wall_s": round(sum(r["wall_s"] for r in runs), 1),
            "omnisteval_scores": scores,
            "commands": {"runner": shlex.join(["python", "-m", "alignatt_eval.runners.run_dev", *self.argv]),
                         "simuleval": runs[0]["command"] if runs else None, "omnisteval": shlex.join(omnisteval)},
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        }


def gate_counts(steps: list[dict]) -> dict:
    """How the steps went: drafts run, drafts reused (nothing changed), drafts the gate stopped, and steps that
    held back words after an uncommitted sentence end (absent from logs made before the step log had them)."""
    reports = [s["step"] for s in steps if s.get("step")]
    drafting = [r for r in reports if r["n_draft_tokens"] or r["draft_skipped"]]
    return {"steps": len(reports), "drafts": sum(not r["draft_skipped"] for r in drafting),
            "skipped_drafts": sum(r["draft_skipped"] for r in drafting),
            "gate_stops": sum(bool(r["stop"]) for r in drafting if not r["draft_skipped"]),
            "held_steps": sum(bool(r.get("held")) for r in reports)}


def write_row(out: Path, row: dict) -> None:
    """OUT/RUN.json, and the row in OUT/results.tsv (replacing an earlier row of the same run)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{row['run']}.json").write_text(json.dumps(row, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tsv = out / "results.tsv"
    rows = [line for line in (tsv.read_text(encoding="utf-8").splitlines()[1:] if tsv.is_file() else [])
            if line.split("\t")[0] != row["run"]]

    def cell(key):
        value = row[key]
        if key == "talks":  # "done/planned" when a sweep scored a run over the talks that finished
            planned = row.get("talks_planned", len(value))
            return str(len(value)) if planned == len(value) else f"{len(value)}/{planned}"
        return f"{value:.2f}" if isinstance(value, float) else "" if value is None else str(value)

    rows.append("\t".join(cell(k) for k in TSV_COLUMNS))
    tsv.write_text("\t".join(TSV_COLUMNS) + "\n" + "\n".join(sorted(rows)) + "\n", encoding="utf-8")


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, agent_flags = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = Run(args, agent_flags, argv)
    pending = [t for t in run.talks if not (run.talk_dir(t) / "instances.log").is_file()]
    if len(pending) < len(run.talks):
        logger.info("%s: %d of %d talks already done, skipped", run.name, len(run.talks) - len(pending),
                    len(run.talks))
    if args.one_process and pending:
        run.run_talks_together(pending)
    for talk in tqdm([] if args.one_process else pending, desc=run.name, unit="talk"):
        run.run_talk(talk)
    row = run.score()
    write_row(run.out, row)
    bad = [k for k in ("bleu", "chrf", "longyaal_cu_ms", "longyaal_ca_ms") if not finite(row[k])]
    logger.info("%s: BLEU %s chrF %s LongYAAL CU %s ms CA %s ms StreamLAAL CU %s ms XCOMET %s", run.name,
                *(row[k] for k in ("bleu", "chrf", "longyaal_cu_ms", "longyaal_ca_ms", "streamlaal_cu_ms")),
                row["xcomet"] if row["xcomet"] is not None else row["xcomet_note"])
    if bad:
        logger.warning("%s: not a finite number: %s", run.name, ", ".join(bad))
    return row


if __name__ == "__main__":
    main()
