"""Built-in word aligner: eflomal (Östling & Tiedemann 2016; PyPI eflomal 2.0.0), trained on the pairs
themselves, no downloaded weights. Also scores an alignment against a hand-made gold file (AER).

    python -m alignatt.calibration.align --pairs pairs.jsonl --target-lang de --out pairs.pharaoh
    python -m alignatt.calibration.align --pairs pairs.jsonl --target-lang de --gold data/gold/en-de.fleurs.jsonl
    python -m alignatt.calibration.align --pairs pairs.jsonl --target-lang de --gold GOLD --alignments links.pharaoh

The aligner sees word tokens, not units: each unit is split into its runs of word characters (so
"Luna." gives "luna", "five-match" gives "five" "match", a CJK character stays one token) and
punctuation-only units are left out. Links between tokens become links between their units.
eflomal aligns both directions; they are symmetrised by intersection (default: precise links) or
grow-diag-final-and (Koehn et al. 2005).
eflomal samples with no fixed seed: two runs can differ in a few links.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from alignatt.calibration.pairs import SentencePair, read_pairs
from alignatt.calibration.pharaoh import Link, check_alignments, parse_line, read_pharaoh, split_lines, write_pharaoh

logger = logging.getLogger(__name__)

ALIGNERS = ("eflomal",)
_WORD = re.compile(r"\w+")
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class EflomalSettings:
    model: int = field(default=3, metadata={"help": "eflomal model: 1 IBM1, 2 +HMM, 3 +HMM+fertility"})
    n_samplers: int = field(default=3, metadata={"help": "independent samplers averaged by eflomal"})
    rel_iterations: float = field(default=1.0, metadata={"help": "iterations relative to eflomal's default"})
    # A 4-character prefix is a crude stemmer that helps much on a few hundred pairs (AER on the en-de
    # gold: about 0.25 with whole words, 0.17 with prefixes; results/calibration/aligner_quality.md).
    prefix_len: int = field(default=4, metadata={"help": "cut tokens to this many characters (0: keep)"})
    # Head scores need precise links more than many links: a wrong link penalises a correct head, a missing
    # one only leaves a token unscored. The intersection has about 0.96 precision at 0.76 recall on the gold.
    symmetrisation: str = field(default="intersection", metadata={
        "help": "intersection, grow-diag-final-and, union, forward or reverse"})

    def __post_init__(self):
        if self.symmetrisation not in SYMMETRISATIONS:
            raise ValueError(f"symmetrisation must be one of {sorted(SYMMETRISATIONS)}")


def word_tokens(units: Sequence[str]) -> tuple[list[str], list[int]]:
    """Aligner tokens of a unit sequence and the unit each token comes from."""
    tokens, owners = [], []
    for u, unit in enumerate(units):
        for piece in _WORD.findall(unit):
            tokens.append(piece)
            owners.append(u)
    return tokens, owners


def grow_diag_final_and(forward: set[Link], reverse: set[Link]) -> set[Link]:
    """Symmetrise two directional alignments: start from their intersection, grow into neighbouring
    union links that align a yet unaligned word, then add union links joining two unaligned words."""
    union = forward | reverse
    links = forward & reverse
    aligned_src = {i for i, _ in links}
    aligned_tgt = {j for _, j in links}

    def add(i: int, j: int) -> None:
        links.add((i, j))
        aligned_src.add(i)
        aligned_tgt.add(j)

    grew = True
    while grew:
        grew = False
        for i, j in sorted(links):
            for di, dj in _NEIGHBOURS:
                cand = (i + di, j + dj)
                if cand in union and cand not in links and (cand[0] not in aligned_src or cand[1] not in aligned_tgt):
                    add(*cand)
                    grew = True
    for direction in (forward, reverse):
        for i, j in sorted(direction):
            if i not in aligned_src and j not in aligned_tgt:
                add(i, j)
    return links


SYMMETRISATIONS = {
    "grow-diag-final-and": grow_diag_final_and,
    "intersection": lambda f, r: f & r,
    "union": lambda f, r: f | r,
    "forward": lambda f, r: set(f),
    "reverse": lambda f, r: set(r),
}


def _run_eflomal(sources: list[str], targets: list[str], settings: EflomalSettings) -> tuple[list[str], list[str]]:
    try:
        import eflomal
    except ImportError as err:
        raise RuntimeError("the built-in aligner needs eflomal: pip install eflomal==2.0.0") from err
    aligner = eflomal.Aligner(model=settings.model, n_samplers=settings.n_samplers,
                              rel_iterations=settings.rel_iterations, source_prefix_len=settings.prefix_len,
                              target_prefix_len=settings.prefix_len)
    with tempfile.TemporaryDirectory() as tmp:
        fwd, rev = Path(tmp, "fwd"), Path(tmp, "rev")
        aligner.align(sources, targets, links_filename_fwd=str(fwd), links_filename_rev=str(rev), quiet=True)
        return split_lines(fwd.read_text()), split_lines(rev.read_text())


def align_pairs(pairs: Sequence[SentencePair], settings: EflomalSettings = EflomalSettings()
                ) -> list[frozenset[Link]]:
    """Unit-level links for every pair (empty for pairs with no word on one side)."""
    tokenised = [(word_tokens(p.source_units), word_tokens(p.target_units)) for p in pairs]
    fed = [n for n, ((s, _), (t, _)) in enumerate(tokenised) if s and t]
    start = time.perf_counter()
    fwd_lines, rev_lines = _run_eflomal([" ".join(tokenised[n][0][0]) for n in fed],
                                        [" ".join(tokenised[n][1][0]) for n in fed], settings)
    if len(fwd_lines) != len(fed) or len(rev_lines) != len(fed):
        raise RuntimeError(f"eflomal returned {len(fwd_lines)}/{len(rev_lines)} lines for {len(fed)} pairs")
    logger.info("eflomal aligned %d pairs in %.1f s", len(fed), time.perf_counter() - start)
    result: list[frozenset[Link]] = [frozenset()] * len(pairs)
    symmetrise = SYMMETRISATIONS[settings.symmetrisation]
    for n, fwd, rev in zip(fed, fwd_lines, rev_lines):
        token_links = symmetrise(set(parse_line(fwd, f"eflomal output {n}")),
                                 set(parse_line(rev, f"eflomal output {n}")))
        (_, src_owner), (_, tgt_owner) = tokenised[n]
        result[n] = frozenset((src_owner[i], tgt_owner[j]) for i, j in token_links)
    return result


def aligner_description(settings: EflomalSettings) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        eflomal_version = version("eflomal")
    except PackageNotFoundError:
        eflomal_version = None
    return {"name": "eflomal", "version": eflomal_version, **asdict(settings),
            "tokens": "runs of word characters per unit, punctuation-only units left out"}


# --- gold evaluation -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoldPair:
    source: str
    target: str
    sure: frozenset[Link]
    possible: frozenset[Link]  # includes the sure links


def read_gold(path: str | Path) -> list[GoldPair]:
    """JSONL: {"src", "tgt", "sure": "i-j ...", "possible": "i-j ..." (possible-only links)}."""
    gold = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        record = json.loads(line)
        sure = parse_line(record["sure"], f"{path}:{n} sure")
        gold.append(GoldPair(" ".join(record["src"].split()), record["tgt"].strip(), sure,
                             sure | parse_line(record.get("possible", ""), f"{path}:{n} possible")))
    return gold


@dataclass(frozen=True)
class AlignmentQuality:
    sentences: int
    predicted: int
    sure: int
    precision: float  # |A & P| / |A|
    recall: float  # |A & S| / |S|
    aer: float  # 1 - (|A & S| + |A & P|) / (|A| + |S|)  (Och & Ney 2003)


def alignment_quality(predicted: Sequence[frozenset[Link]], gold: Sequence[GoldPair]) -> AlignmentQuality:
    a = sum(len(p) for p in predicted)
    s = sum(len(g.sure) for g in gold)
    a_s = sum(len(p & g.sure) for p, g in zip(predicted, gold))
    a_p = sum(len(p & g.possible) for p, g in zip(predicted, gold))
    return AlignmentQuality(sentences=len(gold), predicted=a, sure=s, precision=a_p / max(a, 1),
                            recall=a_s / max(s, 1), aer=1.0 - (a_s + a_p) / max(a + s, 1))


def evaluate_against_gold(pairs: Sequence[SentencePair], alignments: Sequence[frozenset[Link]],
                          gold: Sequence[GoldPair]) -> AlignmentQuality:
    """Score the alignments of the pairs whose texts match a gold pair (first occurrence)."""
    by_text = {}
    for pair, links in zip(pairs, alignments):
        by_text.setdefault((pair.source, pair.target), links)
    missing = [g for g in gold if (g.source, g.target) not in by_text]
    if missing:
        raise ValueError(f"{len(missing)} gold pairs are not in the pairs file, e.g. {missing[0].source!r}")
    return alignment_quality([by_text[(g.source, g.target)] for g in gold], gold)


def build_parser() -> argparse.ArgumentParser:
    from alignatt.options import add_dataclass_arguments

    parser = argparse.ArgumentParser(prog="python -m alignatt.calibration.align", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, nargs="+", help="JSONL pairs (src_ref, tgt_ref); extra files "
                        "after the first only add training data")
    parser.add_argument("--target-lang", required=True, help="target language (zh: aligned per character)")
    parser.add_argument("--out", help="write Pharaoh links for the first pairs file here")
    parser.add_argument("--gold", help="hand-aligned JSONL to score against (precision, recall, AER)")
    parser.add_argument("--alignments", help="with --gold: score this Pharaoh file (any aligner) instead of "
                        "running eflomal; one line per line of the first pairs file")
    parser.add_argument("--repeats", type=int, default=1, help="with --gold: run the aligner this many times")
    add_dataclass_arguments(parser, EflomalSettings, prefix="eflomal_")
    return parser


def main(argv: list[str] | None = None) -> int:
    from alignatt.options import dataclass_from_args

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = dataclass_from_args(EflomalSettings, args, prefix="eflomal_")
    files = [read_pairs(path, args.target_lang) for path in args.pairs]
    pairs = [p for f in files for p in f]
    if args.alignments:
        if not args.gold:
            raise SystemExit("error: --alignments needs --gold")
        alignments = read_pharaoh(args.alignments)
        check_alignments(alignments, [p.n_units for p in files[0]], name=args.alignments)
        print(json.dumps(asdict(evaluate_against_gold(files[0], alignments, read_gold(args.gold)))))
        return 0
    for repeat in range(args.repeats):
        alignments = align_pairs(pairs, settings)[: len(files[0])]
        if args.out and repeat == 0:
            write_pharaoh(args.out, alignments)
            logger.info("wrote %s", args.out)
        if args.gold:
            quality = evaluate_against_gold(files[0], alignments, read_gold(args.gold))
            print(json.dumps(asdict(quality)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
