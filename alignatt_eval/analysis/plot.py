"""Quality-latency plot of result rows: chrF, BLEU (and XCOMET-XL where scored) vs computation-unaware LongYAAL.

    python -m alignatt_eval.analysis.plot results/*.json --out results/quality_latency.png

One line per (policy, language) through its operating points (presets, k for wait-k, gate settings for
AlignAtt; a run named *published* is a family of its own), the Pareto front over all runs of a language
circled, the IWSLT 2026 latency regimes shaded (low 0-2 s, high 2-4 s).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from alignatt_eval.analysis.scoring import finite  # noqa: E402

logger = logging.getLogger(__name__)

COLORS = {"alignatt": "tab:red", "alignatt published": "tab:orange", "local-agreement": "tab:blue",
          "wait-k": "tab:green"}
REGIMES_S = (("low", 0.0, 2.0), ("high", 2.0, 4.0))


def load_rows(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        row = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(row, dict) and "run" in row and finite(row.get("longyaal_cu_ms")):
            rows.append(row)
        else:
            logger.warning("%s: not a result row with a finite LongYAAL, left out", path)
    return rows


def family(row: dict) -> str:
    policy = row["policy"]
    if policy.startswith("wait-k"):
        return "wait-k"
    return f"{policy} published" if "published" in row["run"] else policy


def point_label(row: dict) -> str:
    match = re.fullmatch(r"wait-k(\d+)", row["policy"])
    if match:
        return f"k={match.group(1)} {row['preset']}"
    rest = row["run"].split(".", 1)[-1].removeprefix(f"{row['preset']}.")  # run names: LANG[.PRESET].POLICY[-SETTING]
    setting = rest.removeprefix(row["policy"]).strip("-.")
    return f"{row['preset']} {setting}".strip()


def pareto_front(rows: list[dict], key: str) -> list[dict]:
    """Rows no other row beats: none has lower-or-equal CU LongYAAL and higher-or-equal `key`, one of them strictly."""
    scored = [r for r in rows if finite(r.get(key))]

    def beats(a, b):
        return (a["longyaal_cu_ms"] <= b["longyaal_cu_ms"] and a[key] >= b[key]
                and (a["longyaal_cu_ms"], a[key]) != (b["longyaal_cu_ms"], b[key]))

    return sorted((r for r in scored if not any(beats(o, r) for o in scored)), key=lambda r: r["longyaal_cu_ms"])


def plot(rows: list[dict], out: Path) -> Path:
    metrics = [("chrf", "chrF"), ("bleu", "BLEU")]
    metrics += [("xcomet", "XCOMET-XL")] if any(finite(r.get("xcomet")) for r in rows) else []
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4.6), squeeze=False)
    lines = defaultdict(list)
    for row in rows:
        lines[(family(row), row["lang"])].append(row)
    langs = {lang for _, lang in lines}
    for ax, (key, name) in zip(axes[0], metrics):
        for _, low_s, high_s in REGIMES_S:
            ax.axvspan(low_s, high_s, color="0.93" if low_s == 0 else "0.97", zorder=0)
        for (policy, lang), group in sorted(lines.items()):
            group = sorted((r for r in group if finite(r.get(key))), key=lambda r: r["longyaal_cu_ms"])
            if not group:
                continue
            x = [r["longyaal_cu_ms"] / 1000 for r in group]
            y = [r[key] for r in group]
            label = policy if len(langs) == 1 else f"{policy} (en-{lang})"
            ax.plot(x, y, marker="o", color=COLORS.get(policy, "0.3"), label=label,
                    linestyle="-" if len(langs) == 1 else ["-", "--", ":"][sorted(langs).index(lang) % 3])
            for xi, yi, row in zip(x, y, group):
                ax.annotate(point_label(row), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for lang in sorted(langs):
            front = pareto_front([r for r in rows if r["lang"] == lang], key)
            ax.plot([r["longyaal_cu_ms"] / 1000 for r in front], [r[key] for r in front], drawstyle="steps-post",
                    color="black", linestyle=":", marker="o", markerfacecolor="none", markersize=11, zorder=3,
                    label="Pareto front" if len(langs) == 1 else f"Pareto front (en-{lang})")
        ax.set_xlabel("LongYAAL, computation-unaware (s)")
        ax.set_ylabel(name)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(" and ".join(name for _, name in metrics) + " vs latency", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m alignatt_eval.analysis.plot", description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="result rows (OUT/RUN.json files written by alignatt_eval.runners.run_dev)")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = load_rows(args.rows)
    if not rows:
        raise SystemExit("no result rows with finite scores to plot")
    path = plot(rows, Path(args.out))
    logger.info("wrote %s (%d runs)", path, len(rows))
    return path


if __name__ == "__main__":
    main()
