"""Scoring of long-form SimulEval runs: OmniSTEval (BLEU, chrF, LongYAAL CU/CA, XCOMET-XL) and StreamLAAL.

Emission times (ms from the start of the talk), per target unit:
- computation-unaware (CU): audio read when the unit was written (SimulEval's `delays`);
- computation-aware (CA): audio read + compute time of the policy call that wrote it (`elapsed_step`, from the
  timed agent's steps.jsonl). SimulEval's own `elapsed` adds the whole talk's compute so far instead.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
from argparse import Namespace
from pathlib import Path

from alignatt.cli.omnisteval import CA_KEY
from alignatt.text_units import is_char_level

logger = logging.getLogger(__name__)

XCOMET = "Unbabel/XCOMET-XL"


def step_ca_delays(instance: dict, steps: list[dict]) -> list[float]:
    """Computation-aware emission time of every unit of `instance`: its delay + its step's compute time.

    A unit's delay is the audio read (ms) when it was written, which identifies the policy call that wrote it.
    """
    compute_ms = {}
    for step in steps:
        if step["written"]:
            compute_ms[round(step["source_ms"], 3)] = step["compute_ms"]
    missing = {d for d in instance["delays"] if round(d, 3) not in compute_ms}
    if missing:
        raise ValueError(f"no timed step wrote at {sorted(missing)[:3]} ms (steps.jsonl does not match the log)")
    return [d + compute_ms[round(d, 3)] for d in instance["delays"]]


def merge_hypotheses(talk_dirs: list[Path], out_path: Path) -> None:
    """One SimulEval JSONL line per talk, with the step-wise CA emission times added under CA_KEY."""
    with out_path.open("w", encoding="utf-8") as out:
        for talk_dir in talk_dirs:
            [instance] = [json.loads(line) for line in (talk_dir / "instances.log").read_text().splitlines()]
            steps = [json.loads(line) for line in (talk_dir / "steps.jsonl").read_text().splitlines()]
            instance[CA_KEY] = step_ca_delays(instance, steps)
            out.write(json.dumps(instance, ensure_ascii=False) + "\n")


def xcomet_status(model: str | None) -> tuple[bool, str]:
    """(usable, note): XCOMET runs only where unbabel-comet and the weights are already on this machine."""
    if not model:
        return False, "skipped: disabled"
    if importlib.util.find_spec("comet") is None:
        return False, "skipped: no weights (unbabel-comet is not installed)"
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "checkpoints/model.ckpt"), str):
        return False, f"skipped: no weights ({model} is not in the Hugging Face cache)"
    return True, model


def segment_coverage(resegmented: Path, lang: str) -> dict:
    """Lost content, from OmniSTEval's resegmented hypotheses (one line per reference segment): how many
    segments received no output at all, and how long the output is against the references overall."""
    lines = [json.loads(line) for line in resegmented.read_text(encoding="utf-8").splitlines()]

    def length(text: str) -> int:
        return len(text.replace(" ", "")) if is_char_level(lang) else len(text.split())

    empty = sum(1 for line in lines if not line["prediction"].strip())
    hyp, ref = sum(length(line["prediction"]) for line in lines), sum(length(line["reference"]) for line in lines)
    return {"segments": len(lines), "empty_segments": empty,
            "empty_share": round(empty / len(lines), 4) if lines else None,
            "length_ratio": round(hyp / ref, 4) if ref else None}


def stream_laal(hypotheses: Path, segments: Path, references: Path, lang: str) -> tuple[float | None, float | None,
                                                                                     str]:
    """StreamLAAL (ms) CU and CA with SimulStream's scorer (mwerSegmenter alignment), where it is installed."""
    try:
        from simulstream.metrics.readers import OutputWithDelays, YamlReferenceReader
        from simulstream.metrics.scorers.latency import LatencyScoringSample
        from simulstream.metrics.scorers.latency.stream_laal import StreamLaal
    except ImportError as err:
        return None, None, f"skipped: simulstream is not installed ({err.name})"
    references_by_wav = YamlReferenceReader(str(segments), str(references)).references
    samples = []
    for line in hypotheses.read_text(encoding="utf-8").splitlines():
        hyp = json.loads(line)
        wav = Path(hyp["source"][0] if isinstance(hyp["source"], list) else hyp["source"]).stem
        output = OutputWithDelays(hyp["prediction"], [d / 1000 for d in hyp["delays"]],
                                  [d / 1000 for d in hyp[CA_KEY]])
        samples.append(LatencyScoringSample(wav, output, references_by_wav[wav]))
    scorer = StreamLaal(Namespace(latency_unit="char" if is_char_level(lang) else "word"))
    scores = scorer.score(samples)
    return scores.ideal_latency * 1000, scores.computational_aware_latency * 1000, "simulstream StreamLAAL"


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
