"""Is one config really better than another? Paired significance of BLEU and chrF between result rows.

A dev set of a few talks has few reference segments (62 on the proxy's held-out talks), so a BLEU difference of a
point can be chance. This takes the result folders that `alignatt_eval.runners.run_dev` and `alignatt_eval.runners.sweep` write (each folder holds
OmniSTEval's resegmented hypotheses, one line per reference segment, and sits beside its row's JSON) and runs
sacrebleu's paired test of every system against the first one, on the same segments OmniSTEval scored:

    python -m alignatt_eval.analysis.compare results/curves/heldout_first/de.wait-k1.cut \
        results/curves/heldout_first/de.low.aligned-b1.cut [--test bs|ar] [--samples N] [--out FILE.tsv]

It prints, per system, the score (equal to OmniSTEval's), the bootstrap 95 % confidence interval, the p-value
against the baseline, and the row's LongYAAL CU. Folders joined by "+" (`heldout/de.x+fresh/de.x`) pool one
config's rows over several sets of talks; its latency is then the segment-weighted mean of the rows'.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from alignatt.text_units import is_char_level

RESEGMENTED = Path("omnisteval") / "instances.resegmented.jsonl"


@dataclass(frozen=True)
class ScoredRun:
    name: str
    lang: str
    predictions: list[str]
    references: list[str]
    longyaal_cu_ms: float | None


@dataclass(frozen=True)
class Comparison:
    name: str
    metric: str
    score: float
    ci_95: float  # half width of the bootstrap interval around the resampled mean
    p_value: float | None  # None for the baseline
    longyaal_cu_ms: float | None


def load_pooled(folders: list[Path]) -> ScoredRun:
    """One config's result folders over several sets of talks, their segments concatenated in order."""
    runs = [load_run(folder) for folder in folders]
    if len(runs) == 1:
        return runs[0]
    if len({run.lang for run in runs}) > 1:
        raise ValueError(f"{' + '.join(run.name for run in runs)}: rows of different languages cannot be pooled")
    n_segments = [len(run.references) for run in runs]
    latencies = [run.longyaal_cu_ms for run in runs]
    latency = (None if None in latencies
               else sum(ms * n for ms, n in zip(latencies, n_segments)) / sum(n_segments))
    return ScoredRun(name="+".join(run.name for run in runs), lang=runs[0].lang,
                     predictions=[p for run in runs for p in run.predictions],
                     references=[r for run in runs for r in run.references], longyaal_cu_ms=latency)


def read_row(folder: Path, *needed: Path) -> dict:
    """The result row (`<folder>.json`) of a result folder of alignatt_eval.runners.run_dev / alignatt_eval.runners.sweep, once the row and the
    files `needed` inside the folder exist."""
    row_path = folder.with_name(folder.name + ".json")
    for path in (row_path, *(folder / name for name in needed)):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a scored result folder of alignatt_eval.runners.run_dev "
                                    "or alignatt_eval.runners.sweep")
    return json.loads(row_path.read_text(encoding="utf-8"))


def load_run(folder: Path) -> ScoredRun:
    """A result folder of alignatt_eval.runners.run_dev / alignatt_eval.runners.sweep: its segments as OmniSTEval scored them, and its row."""
    row = read_row(folder, RESEGMENTED)
    resegmented = folder / RESEGMENTED
    lines = [json.loads(line) for line in resegmented.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ScoredRun(name=folder.name, lang=row["lang"], predictions=[line["prediction"] for line in lines],
                     references=[line["reference"] for line in lines], longyaal_cu_ms=row.get("longyaal_cu_ms"))


def check_comparable(runs: list[ScoredRun]) -> None:
    baseline = runs[0]
    for run in runs[1:]:
        if run.lang != baseline.lang or run.references != baseline.references:
            raise ValueError(f"{run.name} and {baseline.name} were scored on different references "
                             "(other talks or another language): a paired test needs the same segments")


def compare(runs: list[ScoredRun], test: str = "bs", samples: int = 1000) -> list[Comparison]:
    """BLEU and chrF of every run, each system tested against runs[0] with sacrebleu's paired test."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    if len(runs) < 2:
        raise ValueError("compare needs a baseline and at least one system")
    check_comparable(runs)
    # The tokenisation OmniSTEval scores with (alignatt/cli/omnisteval.py), so the scores are the rows' own.
    metrics = {"BLEU": BLEU(tokenize="zh" if is_char_level(runs[0].lang) else "13a"), "chrF": CHRF()}
    paired = PairedTest([(run.name, run.predictions) for run in runs], metrics, [runs[0].references],
                        test_type=test, n_samples=samples, n_ar_confidence=samples if test == "ar" else -1)
    _, results = paired()
    comparisons = []
    for metric, key in (("BLEU", "BLEU"), ("chrF", "chrF2")):
        for run, result in zip(runs, results[key]):
            comparisons.append(Comparison(name=run.name, metric=metric, score=float(result.score),
                                          ci_95=float(result.ci) if result.ci is not None else float("nan"),
                                          p_value=result.p_value, longyaal_cu_ms=run.longyaal_cu_ms))
    return comparisons


def format_table(comparisons: list[Comparison]) -> str:
    rows = ["run\tmetric\tscore\tci_95\tp_value\tlongyaal_cu_ms"]
    for c in comparisons:
        p_value = "(baseline)" if c.p_value is None else f"{c.p_value:.4f}"
        latency = "" if c.longyaal_cu_ms is None else f"{c.longyaal_cu_ms:.0f}"
        rows.append(f"{c.name}\t{c.metric}\t{c.score:.2f}\t{c.ci_95:.2f}\t{p_value}\t{latency}")
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="result folder every other run is tested against (A+B: pooled)")
    parser.add_argument("systems", nargs="+", help="result folders to test against the baseline (A+B: pooled)")
    parser.add_argument("--test", choices=("bs", "ar"), default="bs",
                        help="paired bootstrap resampling or approximate randomisation (default: bs)")
    parser.add_argument("--samples", type=int, default=1000, help="resamples or trials (default: 1000)")
    parser.add_argument("--out", type=Path, help="also write the table here (TSV)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    specs = [args.baseline, *args.systems]
    runs = [load_pooled([Path(folder) for folder in spec.split("+")]) for spec in specs]
    if len({run.name for run in runs}) < len(runs):  # the same config from other studies: name rows as given
        runs = [dataclasses.replace(run, name=spec) for run, spec in zip(runs, specs)]
    table = format_table(compare(runs, args.test, args.samples))
    print(table, end="")
    if args.out:
        args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
