"""Word alignments in Pharaoh format: one line per sentence pair, `i-j` links separated by spaces.

`i` is a 0-based source unit, `j` a 0-based target unit (units as in `alignatt.text_units`: whitespace
words, and single CJK characters on character-level targets such as zh). An empty line means no links.
Every problem is reported with the file name and the 1-based line number.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

Link = tuple[int, int]
_LINK = re.compile(r"(\d+)-(\d+)")


class AlignmentFileError(ValueError):
    """An alignment file that cannot be parsed or does not fit its sentence pairs."""


def parse_line(line: str, where: str = "line") -> frozenset[Link]:
    """Links of one Pharaoh line (empty set for an empty line)."""
    links = set()
    for item in line.split():
        match = _LINK.fullmatch(item)
        if match is None:
            raise AlignmentFileError(f"{where}: cannot parse {item!r}: expected links such as '0-1' "
                                     f"(0-based source word - target word), separated by spaces")
        links.add((int(match.group(1)), int(match.group(2))))
    return frozenset(links)


def format_line(links: Iterable[Link]) -> str:
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


def split_lines(text: str) -> list[str]:
    """Lines of a file; a final newline ends the last line rather than adding an empty one."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_pharaoh(path: str | Path) -> list[frozenset[Link]]:
    """All lines of an alignment file, parsed (no range checks: see `check_alignments`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AlignmentFileError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise AlignmentFileError(f"{path}: cannot read the alignment file ({err.strerror})") from err
    return [parse_line(line, f"{path}:{n}") for n, line in enumerate(split_lines(text), start=1)]


def write_pharaoh(path: str | Path, alignments: Iterable[Iterable[Link]]) -> None:
    Path(path).write_text("".join(format_line(links) + "\n" for links in alignments), encoding="utf-8")


def check_alignments(alignments: Sequence[frozenset[Link]], n_units: Sequence[tuple[int, int]],
                     name: str = "alignments") -> None:
    """Raise AlignmentFileError unless there is one line per pair and every link lies inside its pair.

    n_units: (source units, target units) of each pair, in file order.
    """
    if len(alignments) != len(n_units):
        raise AlignmentFileError(f"{name}: {len(alignments)} lines, but there are {len(n_units)} sentence pairs "
                                 f"(one line per pair, an empty line for a pair without links)")
    for n, (links, (n_src, n_tgt)) in enumerate(zip(alignments, n_units), start=1):
        for i, j in sorted(links):
            if i >= n_src:
                raise AlignmentFileError(f"{name}:{n}: link {i}-{j} points at source word {i}, but the source "
                                         f"of pair {n} has {n_src} words (indices are 0-based)")
            if j >= n_tgt:
                raise AlignmentFileError(f"{name}:{n}: link {i}-{j} points at target unit {j}, but the target "
                                         f"of pair {n} has {n_tgt} units (indices are 0-based)")


def links_by_target(links: Iterable[Link], n_target: int) -> list[frozenset[int]]:
    """For each target unit, the source units linked to it."""
    by_target: list[set[int]] = [set() for _ in range(n_target)]
    for i, j in links:
        by_target[j].add(i)
    return [frozenset(s) for s in by_target]
