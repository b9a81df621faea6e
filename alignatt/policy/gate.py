"""The AlignAtt acceptance rule on a decoder-only LLM draft, and trimming to whole target units.

AlignAtt (Papi et al., Interspeech 2023) emits target tokens left to right and stops at the first token
whose attention points at source that has not been heard yet. Here the attention comes from a few
calibrated self-attention heads of the LLM, looking from each draft row onto the source span of the prompt;
the translator reports where each token looks (`alignatt.mt.alignment.TokenAlignment`), this module judges it.
The functions are pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from alignatt.mt.alignment import TokenAlignment
from alignatt.text_units import is_cjk_char, unit_spans


@dataclass(frozen=True)
class GateConfig:
    border_units: int = field(default=1, metadata={
        "help": "a draft token may look this many units past the last accessible one before it stops the draft"})
    soft_floor_mass: float = field(default=0.03, metadata={
        "help": "a token whose attention mass on inaccessible source is below this is accepted anyway"})

    def __post_init__(self):
        if self.border_units < 0 or self.soft_floor_mass < 0:
            raise ValueError("border_units and soft_floor_mass must be >= 0")


@dataclass(frozen=True)
class TokenVerdict:
    """Why one draft token was accepted or stopped the draft."""

    head_units: tuple[int, ...]  # source unit each head points at
    aligned_unit: float  # median over heads
    inaccessible_mass: float  # mean over heads
    accepted: bool


@dataclass(frozen=True)
class GateDecision:
    n_accepted_tokens: int  # tokens before the first stop (every judged token when none stops)
    verdicts: tuple[TokenVerdict, ...]  # one per examined token, the stopping one last

    @property
    def stopped(self) -> bool:
        return bool(self.verdicts) and not self.verdicts[-1].accepted


def judge_token(alignment: TokenAlignment, n_accessible_units: int, config: GateConfig = GateConfig()
                ) -> TokenVerdict:
    """A token stops the draft when its aligned unit (median over heads) is >= n_accessible_units + border_units,
    unless its mean attention mass on inaccessible source is below soft_floor_mass."""
    looks_ahead = alignment.aligned_unit >= n_accessible_units + config.border_units
    accepted = bool(not looks_ahead or alignment.inaccessible_mass < config.soft_floor_mass)
    return TokenVerdict(alignment.head_units, alignment.aligned_unit, alignment.inaccessible_mass, accepted)


def gate_draft(alignments: Sequence[TokenAlignment], n_accessible_units: int, config: GateConfig = GateConfig()
               ) -> GateDecision:
    """Keep draft tokens until the first one that looks at source not yet heard (tokens without a judged row,
    such as a last token not fed back yet, are not examined)."""
    verdicts = []
    for alignment in alignments:
        verdicts.append(judge_token(alignment, n_accessible_units, config))
        if not verdicts[-1].accepted:
            return GateDecision(n_accepted_tokens=len(verdicts) - 1, verdicts=tuple(verdicts))
    return GateDecision(n_accepted_tokens=len(verdicts), verdicts=tuple(verdicts))


def describe_stop(gate: GateDecision, prompt, stopped_token: str) -> str:
    """The token that stopped a draft (its text `stopped_token`) and the source unit it looked at, for step logs
    ("" when nothing stopped it)."""
    if not gate.stopped:
        return ""
    verdict = gate.verdicts[-1]
    unit = min(int(verdict.aligned_unit), prompt.n_units - 1)
    return (f"{stopped_token!r} looks at unit {verdict.aligned_unit:g} {prompt.unit_text(unit)!r}, "
            f"frontier {prompt.n_accessible_units}")


def complete_units_text(accepted: str, continuation: str | None, char_level: bool) -> str:
    """The longest prefix of `accepted` that ends on a complete target unit.

    `continuation` is the text the draft went on with after the accepted tokens; None when nothing is
    known (the draft ran out of tokens), "" when the translation ended there (EOS). The last unit is
    complete when the continuation leaves it unchanged (starts a new unit), or when it is a CJK character
    in a character-level language. Undecodable tails (a multi-byte character cut between tokens) are dropped.
    """
    accepted = accepted.rstrip("\ufffd")
    spans = unit_spans(accepted, char_level)
    if not spans:
        return ""
    if continuation == "":
        return accepted.rstrip()
    last_start, last_end = spans[-1]
    if last_end < len(accepted):  # trailing whitespace already closes the last unit
        return accepted[:last_end]
    if continuation is not None and spans[-1] in unit_spans(accepted + continuation, char_level):
        return accepted
    if char_level and is_cjk_char(accepted[last_start:last_end]):
        return accepted
    return accepted[:last_start].rstrip()
