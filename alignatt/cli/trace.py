"""Trace one drafting step: the draft tokens, where each selected head looks, and the gate's verdict.

    python -m alignatt.cli.trace --model-id google/gemma-4-E4B-it --target-lang de \
        --source "We propose a new method for simultaneous" --accessible 5 --prefix "Wir schlagen"
"""
from __future__ import annotations

import argparse
import logging
import sys

from alignatt.mt.alignment import AlignmentConfig
from alignatt.mt.decoding import DecodeConfig
from alignatt.accel.gguf_cache import converted_checkpoint
from alignatt.accel.options import AccelOptions
from alignatt.mt.heads import HeadsFile, HeadsFileError, shipped_heads_path
from alignatt.mt.prompt import PromptConfig, read_few_shot
from alignatt.mt.translator import DraftResult, Translator, TranslatorConfig
from alignatt.options import add_dataclass_arguments, dataclass_from_args
from alignatt.policy.gate import GateConfig, describe_stop
from alignatt.policy.guards import GuardOptions
from alignatt.policy.policies import AlignAttPolicy, Decision, SentenceDecisions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alignatt.cli.trace", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="source prefix (English words)")
    parser.add_argument("--accessible", type=int, default=None,
                        help="number of source words already heard (default: all)")
    parser.add_argument("--prefix", default="", help="target text accepted so far")
    parser.add_argument("--heads", default=None, help="heads JSON (default: the shipped file for the model)")
    parser.add_argument("--few-shot-file", default=None, help="JSONL of {src_ref, tgt_ref} for --style plain")
    add_dataclass_arguments(parser, TranslatorConfig)
    add_dataclass_arguments(parser, PromptConfig)
    add_dataclass_arguments(parser, AlignmentConfig)
    add_dataclass_arguments(parser, GateConfig)
    add_dataclass_arguments(parser, GuardOptions)
    return parser


def format_trace(result: DraftResult, translator: Translator, decision: Decision) -> str:
    prompt = result.prompt
    words = [("" if u < prompt.n_accessible_units else "~") + prompt.unit_text(u) for u in range(prompt.n_units)]
    lines = ["source units (~ = not yet heard): " + " ".join(f"{i}:{w}" for i, w in enumerate(words)),
             f"heads: {', '.join(f'L{h.layer}H{h.head}' for h in translator.heads)}",
             f"{'#':>3} {'token':<16} {'per-head unit':<24} {'median':>6} {'inacc':>6}  verdict"]
    for i, token in enumerate(result.draft_ids):
        piece = repr(translator.tokenizer.decode([token]))
        if i < len(decision.gate.verdicts):
            v = decision.gate.verdicts[i]
            verdict = "accept" if v.accepted else "STOP"
            lines.append(f"{i:>3} {piece:<16} {str(list(v.head_units)):<24} {v.aligned_unit:>6.1f} "
                         f"{v.inaccessible_mass:>6.3f}  {verdict}")
        else:
            stopped = decision.gate.stopped
            # Under "own" rows the last token was never fed back: it has no row and waits for the next draft.
            lines.append(f"{i:>3} {piece:<16} {'':<24} {'':>6} {'':>6}  "
                         f"{'(after stop)' if stopped else '(no row yet)'}")
    lines.append(f"draft ended: {result.ended}; rows: {translator.query_row}")
    if decision.gate.stopped:
        stopped_token = translator.token_text(result.draft_ids[decision.gate.n_accepted_tokens])
        lines.append(f"stopped: {describe_stop(decision.gate, prompt, stopped_token)}")
    lines.append(f"accepted text: {result.prompt.target_prefix!r} + {decision.text!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = dataclass_from_args(TranslatorConfig, args)
    prompt_config = dataclass_from_args(PromptConfig, args)
    try:
        heads = HeadsFile.load(args.heads or shipped_heads_path(
            config.model_id, f"{prompt_config.source_lang}-{prompt_config.target_lang}"))
        # One draft: compiling the decoder would cost more than it saves.
        translator = Translator.from_pretrained(config, heads, prompt_config, dataclass_from_args(AlignmentConfig, args),
                                                read_few_shot(args.few_shot_file), DecodeConfig(decode="eager"),
                                                accel=AccelOptions().decode_hooks,
                                                resolve_checkpoint=converted_checkpoint)
    except HeadsFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_words = len(args.source.split())
    accessible = n_words if args.accessible is None else args.accessible
    if not 0 <= accessible <= n_words:
        print(f"error: --accessible must lie in [0, {n_words}]", file=sys.stderr)
        return 2
    policy = AlignAttPolicy(guards=dataclass_from_args(GuardOptions, args), gate=dataclass_from_args(GateConfig, args))
    result = translator.draft(args.source, accessible, args.prefix)  # the whole draft: every token's verdict shows
    print(format_trace(result, translator, policy.decide(result, translator, accessible, SentenceDecisions())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
