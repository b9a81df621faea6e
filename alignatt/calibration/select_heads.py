"""Score every (layer, head) of a translator LLM for word alignment and write the heads file the agent loads.

    python -m alignatt.calibration.select_heads --model google/gemma-4-E4B-it --pairs en-de.jsonl \
        --align-with eflomal --source-lang en --target-lang de --out heads.json

Reference translations are teacher-forced through the agent's prompt layout; for every aligned target
token one attention row is replayed for all heads (`--query-row`: "own", the row at the token's own
position, as the published Gemma-4 heads were scored, or "predicting", the row that predicts it), and
TS(l, h) is the share of tokens whose argmax over the whole row lands on a token of an aligned source word.
Writes the heads JSON (alignatt-heads/1, calibration metadata and query_row filled), a TSV of all scores
and a heatmap PNG.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from alignatt.mt.heads import DEFAULT_QUERY_ROW, QUERY_ROWS, HeadsFileError
from alignatt.options import add_dataclass_arguments, dataclass_from_args
from alignatt.mt.prompt import PromptBuilder, PromptConfig, read_few_shot
from alignatt.text_units import is_char_level
from alignatt.accel.gguf_cache import converted_checkpoint
from alignatt.mt.loading import load_model_and_tokenizer
from alignatt.mt.translator import TranslatorConfig
from alignatt.calibration.align import ALIGNERS, EflomalSettings, align_pairs, aligner_description
from alignatt.calibration.outputs import make_heads_file, write_heatmap, write_tsv
from alignatt.calibration.pairs import PairsFileError, SentencePair, read_pairs, select_pairs
from alignatt.calibration.pharaoh import AlignmentFileError, Link, check_alignments, read_pharaoh, write_pharaoh
from alignatt.calibration.scoring import score_heads
from alignatt.calibration.stability import half_split_stability, score_summary

logger = logging.getLogger("alignatt.calibration.select_heads")

ROW_DESCRIPTIONS = {"own": "the query at the token's own position", "predicting": "the query that predicts the token"}


def score_definition(query_row: str) -> str:
    """The TS definition recorded in the heads file, naming the row that judged each token."""
    return (f"TS(l,h): share of aligned target tokens whose attention argmax over the whole row "
            f"({ROW_DESCRIPTIONS[query_row]}, all key positions it sees) lands on a token of an aligned source word")


@dataclass(frozen=True)
class CalibrationOptions:
    model: str | None = field(default=None, metadata={"help": "Hugging Face id or local directory (required)"})
    revision: str | None = field(default=None, metadata={"help": "model revision (branch, tag or commit)"})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside --model (dequantised)"})
    model_name: str | None = field(default=None, metadata={
        "help": "model id recorded in the heads file (default: --model), e.g. the hub id of a local copy"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float32"})
    pairs: str | None = field(default=None, metadata={"help": "JSONL sentence pairs with src_ref, tgt_ref (required)"})
    alignments: str | None = field(default=None, metadata={
        "help": "Pharaoh word alignments, one line per line of --pairs (0-based source word - target unit)"})
    align_with: str | None = field(default=None, metadata={"help": f"built-in aligner instead: {', '.join(ALIGNERS)}"})
    align_extra: str | None = field(default=None, metadata={
        "help": "more JSONL pairs to train the built-in aligner on (not scored)"})
    save_alignments: str | None = field(default=None, metadata={"help": "write the built-in aligner's links here"})
    few_shot_file: str | None = field(default=None, metadata={
        "help": "JSONL (src_ref, tgt_ref) examples shown before the source in plain prompts: the agent's "
                "--few-shot-file"})
    max_pairs: int | None = field(default=None, metadata={"help": "score at most this many pairs (the first ones)"})
    dedup: bool = field(default=True, metadata={"help": "drop repeated pairs before scoring"})
    batch_size: int = field(default=4, metadata={"help": "sequences per forward pass"})
    top_k: int = field(default=4, metadata={"help": "heads the agent uses (the file's top_k)"})
    threshold: float = field(default=0.5, metadata={"help": "report how many heads score at least this"})
    n_listed: int = field(default=0, metadata={"help": "heads listed in the JSON, best first (0: all)"})
    splits: int = field(default=20, metadata={"help": "random half splits for the stability check"})
    seed: int = field(default=0, metadata={"help": "seed of the half splits"})
    out: str | None = field(default=None, metadata={"help": "heads JSON to write (required)"})
    tsv: str | None = field(default=None, metadata={"help": "TSV of all scores (default: --out with .tsv)"})
    heatmap: str | None = field(default=None, metadata={"help": "heatmap PNG (default: --out with .png)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    query_row: str = field(default=DEFAULT_QUERY_ROW, metadata={
        "help": f"attention row that judges target token t: {' or '.join(QUERY_ROWS)} (own: t's own position, "
                "as the published heads; predicting: the row that predicts t, at t - 1)"})

    def __post_init__(self):
        for name in ("model", "pairs", "out"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        if (self.alignments is None) == (self.align_with is None):
            raise ValueError("give exactly one of --alignments FILE and --align-with ALIGNER")
        if self.align_with is not None and self.align_with not in ALIGNERS:
            raise ValueError(f"--align-with must be one of {', '.join(ALIGNERS)}")
        if self.query_row not in QUERY_ROWS:
            raise ValueError(f"--query-row must be one of {', '.join(QUERY_ROWS)}")
        if self.batch_size < 1 or self.top_k < 1 or self.splits < 1:
            raise ValueError("--batch-size, --top-k and --splits must be >= 1")

    def path(self, given: str | None, suffix: str) -> Path:
        return Path(given) if given else Path(self.out).with_suffix(suffix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alignatt.calibration.select_heads", description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, CalibrationOptions)
    add_dataclass_arguments(parser, PromptConfig)
    add_dataclass_arguments(parser, EflomalSettings, prefix="eflomal_")
    return parser


def load_alignments(options: CalibrationOptions, pairs: list[SentencePair], target_lang: str,
                    settings: EflomalSettings) -> tuple[list[frozenset[Link]], dict]:
    """Links for every line of the pairs file, and a description of where they came from."""
    if options.alignments:
        alignments = read_pharaoh(options.alignments)
        check_alignments(alignments, [p.n_units for p in pairs], name=options.alignments)
        return alignments, {"file": options.alignments}
    extra = read_pairs(options.align_extra, target_lang) if options.align_extra else []
    alignments = align_pairs(pairs + extra, settings)[: len(pairs)]
    if options.save_alignments:
        write_pharaoh(options.save_alignments, alignments)
    return alignments, {**aligner_description(settings), "trained_on_pairs": len(pairs) + len(extra),
                        "extra_training_data": options.align_extra}


def drop_few_shot_pairs(pairs: list[SentencePair], few_shot: tuple[tuple[str, str], ...]) -> list[SentencePair]:
    """The pairs that share neither their source nor their target with a few-shot example: the prompt shows
    those examples with their translation, so scoring them again would score a copy, not an alignment."""
    sources, targets = {s for s, _ in few_shot}, {t for _, t in few_shot}
    kept = [p for p in pairs if p.source not in sources and p.target not in targets]
    if len(kept) < len(pairs):
        logger.info("%d pairs left out of scoring: they are few-shot examples", len(pairs) - len(kept))
    return kept


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(options: CalibrationOptions, prompt_config: PromptConfig, settings: EflomalSettings,
        argv: list[str]) -> dict:
    started = time.perf_counter()
    char_level = is_char_level(prompt_config.target_lang)
    all_pairs = read_pairs(options.pairs, prompt_config.target_lang)
    alignments, alignment_source = load_alignments(options, all_pairs, prompt_config.target_lang, settings)
    few_shot = read_few_shot(options.few_shot_file)
    not_shown = drop_few_shot_pairs(all_pairs, few_shot)
    pairs = select_pairs(not_shown, options.max_pairs, options.dedup)
    pair_links = [alignments[p.line - 1] for p in pairs]
    model, tokenizer = load_model_and_tokenizer(TranslatorConfig(
        model_id=options.model, revision=options.revision, gguf_file=options.gguf_file, device=options.device,
        dtype=options.dtype), resolve_checkpoint=converted_checkpoint)
    builder = PromptBuilder(tokenizer, prompt_config, few_shot)
    scores = score_heads(model, tokenizer, builder, pairs, pair_links, char_level, options.batch_size,
                         options.progress, query_row=options.query_row)
    ts = scores.ts()
    stability = half_split_stability(scores, options.top_k, options.splits, options.seed)
    summary = score_summary(ts, tuple(sorted({0.3, 0.5, 0.7, options.threshold})), options.top_k)
    calibration = {
        "tool": "python -m alignatt.calibration.select_heads " + " ".join(argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "score": score_definition(scores.query_row),
        "data": {"file": options.pairs, "sha256": file_sha256(options.pairs), "lines": len(all_pairs),
                 "few_shot_lines_dropped": len(all_pairs) - len(not_shown), "pairs_selected": len(pairs),
                 "pairs_scored": scores.n_pairs,
                 "aligned_target_tokens": scores.n_aligned_tokens, "max_pairs": options.max_pairs,
                 "dedup": options.dedup},
        "alignments": alignment_source,
        "prompt": {"style": prompt_config.style, "source_lang": prompt_config.source_lang,
                   "target_lang": prompt_config.target_lang, "few_shot_file": options.few_shot_file,
                   "n_few_shot": len(few_shot), "target_units": "characters" if char_level else "words"},
        "model_loading": {"gguf_file": options.gguf_file, "dtype": str(next(model.parameters()).dtype),
                          "device": str(model.device)},
        "scores": {**summary, "threshold": options.threshold,
                   "heads_above_threshold": int((ts >= options.threshold).sum()),
                   "source_chance": round(scores.source_chance, 4)},
        "stability": {"method": "random half splits of the scored pairs", **stability.as_dict()},
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    direction = f"{prompt_config.source_lang}-{prompt_config.target_lang}"
    heads_file = make_heads_file(ts, options.model_name or options.model, options.revision, direction,
                                 options.top_k, calibration, scores.query_row, options.n_listed)
    heads_file.check_fits(model.config)
    heads_file.save(options.out)
    write_tsv(options.path(options.tsv, ".tsv"), scores)
    write_heatmap(options.path(options.heatmap, ".png"), ts, options.top_k,
                  f"{heads_file.model_id} {direction}\nTS over {scores.n_aligned_tokens} aligned tokens, "
                  f"{scores.n_pairs} pairs")
    best = heads_file.heads[0]
    logger.info("best head L%dH%d TS %.3f (%s rows), median %.3f; half-split top-%d overlap %.2f; wrote %s",
                best.layer, best.head, best.score, scores.query_row, summary["median"], options.top_k,
                stability.topk_overlap_mean, options.out)
    return calibration


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        options = dataclass_from_args(CalibrationOptions, args)
        run(options, dataclass_from_args(PromptConfig, args),
            dataclass_from_args(EflomalSettings, args, prefix="eflomal_"), argv)
    except (AlignmentFileError, PairsFileError, HeadsFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
