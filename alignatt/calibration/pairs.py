"""Parallel sentence pairs for calibration (JSONL with `src_ref` and `tgt_ref`), and their units.

Units are the ones the agent uses: source = whitespace words of the whitespace-normalised source (what
`PromptBuilder.render` lays out), target = `alignatt.text_units` units of the stripped target (single
characters on character-level targets such as zh). Alignment indices refer to these units.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from alignatt.text_units import is_char_level, split_units

logger = logging.getLogger(__name__)


class PairsFileError(ValueError):
    """A pairs file that cannot be read."""


@dataclass(frozen=True)
class SentencePair:
    line: int  # 1-based line of the pairs file (the matching line of an alignment file)
    source: str  # whitespace-normalised, as the prompt lays it out
    target: str  # stripped, as the prompt prefills it
    target_char_level: bool = False

    @property
    def source_units(self) -> list[str]:
        return self.source.split()

    @property
    def target_units(self) -> list[str]:
        return split_units(self.target, self.target_char_level)

    @property
    def n_units(self) -> tuple[int, int]:
        return len(self.source_units), len(self.target_units)


def make_pair(line: int, source: str, target: str, target_lang: str) -> SentencePair:
    return SentencePair(line, " ".join(source.split()), target.strip(), is_char_level(target_lang))


def read_pairs(path: str | Path, target_lang: str, source_field: str = "src_ref",
               target_field: str = "tgt_ref") -> list[SentencePair]:
    """Every line of a JSONL pairs file, in order (blank lines are errors: they would shift alignments)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PairsFileError(f"{path}: cannot read the pairs file ({err})") from err
    pairs = []
    for n, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            source, target = record[source_field], record[target_field]
        except json.JSONDecodeError as err:
            raise PairsFileError(f"{path}:{n}: not a JSON object ({err.msg})") from err
        except (KeyError, TypeError) as err:
            raise PairsFileError(f"{path}:{n}: needs string fields {source_field!r} and {target_field!r}") from err
        if not isinstance(source, str) or not isinstance(target, str):
            raise PairsFileError(f"{path}:{n}: {source_field!r} and {target_field!r} must be strings")
        pairs.append(make_pair(n, source, target, target_lang))
    if not pairs:
        raise PairsFileError(f"{path}: no sentence pairs")
    return pairs


def select_pairs(pairs: list[SentencePair], max_pairs: int | None, dedup: bool = True) -> list[SentencePair]:
    """Drop empty pairs (and repeated pairs when `dedup`), then keep the first `max_pairs`."""
    seen, kept = set(), []
    for pair in pairs:
        if not pair.source or not pair.target:
            logger.warning("line %d: empty source or target, skipped", pair.line)
            continue
        key = (pair.source, pair.target)
        if dedup and key in seen:
            continue
        seen.add(key)
        kept.append(pair)
    if len(kept) < len(pairs):
        logger.info("%d of %d pairs kept (empty or repeated pairs dropped)", len(kept), len(pairs))
    return kept[:max_pairs] if max_pairs else kept
