"""OmniSTEval, the IWSLT reference scorer, on SimulEval-format hypotheses: BLEU, chrF, LongYAAL CU/CA (and
XCOMET where its weights are cached). The dev-set runner and the demo both call it through here.

Hypotheses are JSONL lines with `prediction`, `delays` (computation-unaware emission time of every target unit,
ms of audio read) and CA_KEY (the same plus the compute time of the step that wrote the unit).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from alignatt.text_units import is_char_level, unit_separators

CA_KEY = "elapsed_step"


def scored_delays(units: list[str], delays_ms: list[float], lang: str) -> list[float]:
    """The emission time of every unit OmniSTEval counts in `join_units(units)`: a word each at word level; at
    character level every character, spaces included (a run such as "ACL" or "2023" is one unit of ours, so each of
    its characters, and the space before it, takes its time)."""
    if not is_char_level(lang):
        return list(delays_ms)
    timed = []
    for separator, unit, delay_ms in zip(unit_separators(units, True), units, delays_ms):
        timed += [delay_ms] * (len(separator) + len(unit))
    return timed


def omnisteval_command(segments: Path, references: Path, sources: Path | None, hypotheses: Path, lang: str,
                       out_dir: Path, comet_model: str | None = None) -> list[str]:
    """The `omnisteval longform` call; `sources` (English lines) is needed only by COMET."""
    if is_char_level(lang):
        level = ["--char_level", "--bleu_tokenizer", "zh"]
    else:
        level = ["--word_level", "--bleu_tokenizer", "13a"]
    command = ["omnisteval", "longform", "--speech_segmentation", str(segments), "--ref_sentences_file",
               str(references), "--hypothesis_file", str(hypotheses), "--hypothesis_format", "jsonl",
               "--lang", lang, *level, "--emission_cu_key", "delays", "--emission_ca_key", CA_KEY,
               "--output_folder", str(out_dir)]
    if sources is not None:
        command += ["--source_sentences_file", str(sources)]
    if comet_model:
        command += ["--comet", "--comet_model", comet_model]
    return command


def read_scores_tsv(path: Path) -> dict[str, float]:
    scores = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        name, value = line.split("\t")
        try:
            scores[name] = float(value)
        except ValueError:
            scores[name] = value
    return scores


def run_omnisteval(command: list[str], out_dir: Path) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # never download a scoring model
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    (out_dir / "omnisteval.log").parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "omnisteval.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise RuntimeError(f"omnisteval failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return read_scores_tsv(out_dir / "scores.tsv")


def score_talk(wav: Path, duration_s: float, reference: str, prediction: str, cu_ms: list[float],
               ca_ms: list[float], lang: str, out: Path) -> dict[str, float]:
    """BLEU, chrF and LongYAAL CU/CA of one talk scored as one reference segment: `prediction` with a CU and a CA
    time per unit OmniSTEval counts in it (word, or character in Chinese), files and scores under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    segments, references, hypotheses = out / "segments.json", out / "references.txt", out / "hypotheses.jsonl"
    segments.write_text(json.dumps([{"wav": wav.name, "offset": 0.0, "duration": duration_s}]))
    references.write_text(" ".join(reference.split()) + "\n", encoding="utf-8")
    hypothesis = {"source": [str(wav.resolve())], "prediction": prediction, "delays": cu_ms, CA_KEY: ca_ms}
    hypotheses.write_text(json.dumps(hypothesis, ensure_ascii=False) + "\n", encoding="utf-8")
    return run_omnisteval(omnisteval_command(segments, references, None, hypotheses, lang, out / "omnisteval"),
                          out / "omnisteval")
