"""The AlignAtt acceptance rule on a decoder-only LLM draft, and trimming to whole target units.

AlignAtt (Papi et al., Interspeech 2023) emits target tokens left to right and stops at the first token
whose attention points at source that has not been heard yet. Here the attention comes from a few
calibrated self-attention heads of the LLM, looking from each draft row onto the source span of the prompt.
Both functions are pure: numpy and strings in, a decision out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import median_filter

from alignatt.text_units import is_cjk_char, unit_spans


@dataclass(frozen=True)
class PolicyConfig:
    border_units: int = field(default=1, metadata={
        "help": "a draft token may look this many units past the last accessible one before it stops the draft"})
    soft_floor_mass: float = field(default=0.03, metadata={
        "help": "a token whose attention mass on inaccessible source is below this is accepted anyway"})
    median_filter_width: int = field(default=7, metadata={
        "help": "median filter width along the source axis (tokens), per head"})
    zscore_min_rows: int = field(default=2, metadata={
        "help": "z-score a draft row against earlier rows only once this many earlier rows exist"})
    zscore_eps: float = field(default=1e-6, metadata={"help": "floor of the standard deviation in the z-score"})

    def __post_init__(self):
        if self.median_filter_width < 1:
            raise ValueError("median_filter_width must be >= 1")
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
    n_accepted_tokens: int  # tokens before the first stop (all of them when none stops)
    verdicts: tuple[TokenVerdict, ...]  # one per examined token, the stopping one last


def online_zscore(rows: np.ndarray, min_rows: int, eps: float) -> np.ndarray:
    """(R, S) -> (R, S): each row standardised per column by the rows before it.

    Causal on purpose: a row's decision must not depend on tokens drafted after it. Subtracting what
    earlier rows attend to removes columns every row looks at (attention sinks on the first source token).
    """
    out = rows.astype(np.float64, copy=True)
    for r in range(min_rows, rows.shape[0]):
        earlier = rows[:r]
        out[r] = (rows[r] - earlier.mean(0)) / np.maximum(earlier.std(0), eps)
    return out


def head_argmax_units(source_attention: np.ndarray, token_units: np.ndarray, config: PolicyConfig) -> np.ndarray:
    """(H, R, S) attention on source tokens -> (H, R) unit index each head points at, per row."""
    n_heads, n_rows, n_source = source_attention.shape
    width = min(config.median_filter_width, n_source)
    width -= 1 - width % 2  # odd, so the filter stays centred
    result = np.empty((n_heads, n_rows), dtype=np.int64)
    for h in range(n_heads):
        scores = online_zscore(source_attention[h], config.zscore_min_rows, config.zscore_eps)
        smoothed = median_filter(scores, size=(1, max(width, 1)), mode="nearest")
        result[h] = token_units[smoothed.argmax(axis=1)]
    return result


def gate_draft(source_attention: np.ndarray, token_units: np.ndarray, inaccessible_mass: np.ndarray,
               n_accessible_units: int, config: PolicyConfig = PolicyConfig()) -> GateDecision:
    """Keep draft tokens until the first one that looks at source not yet heard.

    source_attention: (H, R, S) draft rows x source-span tokens, per head; token_units: (S,) unit of each
    source token; inaccessible_mass: (H, R) attention mass each row puts on inaccessible source.
    A token stops the draft when the median over heads of its aligned unit is >= n_accessible_units +
    border_units, unless its mean inaccessible mass is below soft_floor_mass.
    """
    n_rows = source_attention.shape[1]
    if source_attention.shape[2] == 0:
        return GateDecision(n_accepted_tokens=0, verdicts=())
    units = head_argmax_units(source_attention, token_units, config)  # (H, R)
    masses = inaccessible_mass.mean(axis=0)  # (R,)
    verdicts = []
    for r in range(n_rows):
        aligned = float(np.median(units[:, r]))
        looks_ahead = aligned >= n_accessible_units + config.border_units
        accepted = bool(not looks_ahead or masses[r] < config.soft_floor_mass)
        verdicts.append(TokenVerdict(head_units=tuple(int(u) for u in units[:, r]), aligned_unit=aligned,
                                     inaccessible_mass=float(masses[r]), accepted=accepted))
        if not accepted:
            return GateDecision(n_accepted_tokens=r, verdicts=tuple(verdicts))
    return GateDecision(n_accepted_tokens=n_rows, verdicts=tuple(verdicts))


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
