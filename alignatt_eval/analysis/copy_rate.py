"""How much of the written text copies the English source instead of translating it.

A small translator sometimes goes on in English, word by word; the gate lets such words through, since each looks
at source already heard. The rule, fixed before any row is measured: a written unit is a copy when its key
(case-folded, letters and digits only) is the key of a word of the talk's English source, has a letter in it,
and is not the key of a word of the reference translation. Names, numbers and terms that a translation keeps
("ACL", "BERT", "Sarah", "2023") occur in the reference too, so they never count; neither do numbers or
punctuation. For a character-level target (zh) only its Latin runs can copy.

    python -m alignatt_eval.analysis.copy_rate ROW_DIR [ROW_DIR ...] --data DEV_SET --lang de [--out FILE.tsv]

ROW_DIR is a run folder of `alignatt_eval.runners.run_dev` (talks/NAME/instances.log); DEV_SET the dev set the row
ran on (its per_talk/NAME.en and NAME.LANG give the source and the reference of each talk).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from alignatt.policy.guards import unit_key
from alignatt.text_units import is_char_level, split_units


@dataclass(frozen=True)
class CopyCount:
    n_units: int  # written units
    n_copied: int  # of them, copies of a source word

    @property
    def share(self) -> float:
        return self.n_copied / self.n_units if self.n_units else 0.0

    def __add__(self, other: "CopyCount") -> "CopyCount":
        return CopyCount(self.n_units + other.n_units, self.n_copied + other.n_copied)


def keys(text: str, char_level: bool = False) -> set[str]:
    return {unit_key(unit) for unit in split_units(text, char_level)}


def count_copies(written: str, source: str, reference: str, lang: str) -> CopyCount:
    """Copies of `source` words among the units of `written` (by the rule above)."""
    char_level = is_char_level(lang)
    copyable = keys(source) - keys(reference, char_level)
    units = [unit_key(unit) for unit in split_units(written, char_level)]
    copied = sum(1 for key in units if key in copyable and any(ch.isalpha() for ch in key))
    return CopyCount(len(units), copied)


def row_copies(row: Path, data: Path, lang: str) -> CopyCount:
    """The copies of every talk of a run folder, added up."""
    total = CopyCount(0, 0)
    for log in sorted(row.glob("talks/*/instances.log")):
        if log.parent.suffix == ".partial":  # a talk still running, or stopped before it finished
            continue
        talk = log.parent.name
        [instance] = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = (data / "per_talk" / f"{talk}.en").read_text(encoding="utf-8")
        reference = (data / "per_talk" / f"{talk}.{lang}").read_text(encoding="utf-8")
        total += count_copies(instance["prediction"], source, reference, lang)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignatt_eval.analysis.copy_rate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="run folders (talks/NAME/instances.log)")
    parser.add_argument("--data", required=True, help="the dev set the rows ran on (per_talk/NAME.en, NAME.LANG)")
    parser.add_argument("--lang", required=True, help="target language")
    parser.add_argument("--out", default=None, help="also write the table as TSV")
    args = parser.parse_args(argv)
    lines = ["row\tunits\tcopied\tshare"]
    for row in map(Path, args.rows):
        count = row_copies(row, Path(args.data), args.lang)
        lines.append(f"{row.name}\t{count.n_units}\t{count.n_copied}\t{count.share:.4f}")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
