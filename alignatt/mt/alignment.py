"""What the heads say: for each draft token, the source unit its attention points at.

Each draft row's attention on the source span is read per head: z-scored against the earlier rows (causal, so a
row's reading never depends on later tokens; subtracting what every row looks at removes attention sinks),
median-filtered along the source axis, and its peak mapped to the source unit it lies in. The median over heads
is the token's aligned unit. Rows are read once each, as the draft grows, and a row reads the same whether the
draft stopped after it or went on. Whether a token may be written is the policy's call (`alignatt.policy`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.ndimage import median_filter

from alignatt.mt.capture import HeadRef
from alignatt.mt.heads import query_row_position
from alignatt.mt.prompt import RenderedPrompt
from alignatt.mt.replay import DraftAttention, replay, split_draft_attention


@dataclass(frozen=True)
class AlignmentConfig:
    median_filter_width: int = field(default=7, metadata={
        "help": "median filter width along the source axis (tokens), per head"})
    zscore_min_rows: int = field(default=2, metadata={
        "help": "z-score a draft row against earlier rows only once this many earlier rows exist"})
    zscore_eps: float = field(default=1e-6, metadata={"help": "floor of the standard deviation in the z-score"})

    def __post_init__(self):
        if self.median_filter_width < 1:
            raise ValueError("median_filter_width must be >= 1")


@dataclass(frozen=True)
class TokenAlignment:
    """Where one draft token looks, by the chosen heads."""

    head_units: tuple[int, ...]  # source unit each head points at
    aligned_unit: float  # median over heads
    inaccessible_mass: float  # attention mass on source not heard yet, mean over heads


def online_zscore(rows: np.ndarray, min_rows: int, eps: float, first_row: int = 0) -> np.ndarray:
    """(R, S) -> (R - first_row, S) float64: rows first_row.. standardised per column by the rows before each."""
    out = rows[first_row:].astype(np.float64, copy=True)
    for r in range(max(min_rows, first_row), rows.shape[0]):
        earlier = rows[:r]
        out[r - first_row] = (rows[r] - earlier.mean(0)) / np.maximum(earlier.std(0), eps)
    return out


def head_argmax_units(source_attention: np.ndarray, token_units: np.ndarray, config: AlignmentConfig,
                      first_row: int = 0) -> np.ndarray:
    """(H, R, S) attention on source tokens -> (H, R - first_row) unit each head points at, for rows first_row on
    (earlier rows only feed the z-score)."""
    n_heads, n_rows, n_source = source_attention.shape
    width = min(config.median_filter_width, n_source)
    width -= 1 - width % 2  # odd, so the filter stays centred
    result = np.empty((n_heads, n_rows - first_row), dtype=np.int64)
    for h in range(n_heads):
        rows = source_attention[h]
        scores = online_zscore(rows, config.zscore_min_rows, config.zscore_eps, first_row)
        smoothed = median_filter(scores, size=(1, max(width, 1)), mode="nearest")
        result[h] = token_units[smoothed.argmax(axis=1)]
    return result


def read_alignments(source_attention: np.ndarray, token_units: np.ndarray, inaccessible_mass: np.ndarray,
                    config: AlignmentConfig = AlignmentConfig(), first_row: int = 0) -> tuple[TokenAlignment, ...]:
    """The alignment of rows first_row.. of (H, R, S) draft x source attention with (H, R) inaccessible masses."""
    if source_attention.shape[2] == 0 or source_attention.shape[1] <= first_row:
        return ()
    units = head_argmax_units(source_attention, token_units, config, first_row)  # (H, R')
    masses = inaccessible_mass.mean(axis=0)[first_row:]  # (R',)
    return tuple(TokenAlignment(head_units=tuple(int(u) for u in units[:, r]), aligned_unit=float(np.median(units[:, r])),
                                inaccessible_mass=float(masses[r])) for r in range(units.shape[1]))


class AlignmentReader:
    """Reads a draft's rows as they are captured, each row once: replay (`alignatt.mt.replay`) of the new rows
    only, then their alignment against the rows read before."""

    def __init__(self, prompt: RenderedPrompt, heads: Sequence[HeadRef], query_row: str,
                 config: AlignmentConfig = AlignmentConfig()):
        self.prompt = prompt
        self.heads = tuple(heads)
        self.config = config
        self.first_position = query_row_position(prompt.n_tokens, query_row)  # the row judging draft token 0
        self.alignments: list[TokenAlignment] = []
        self._parts: list[DraftAttention] = []

    def read(self, captured, n_tokens: int) -> tuple[TokenAlignment, ...]:
        """Read the rows of the first `n_tokens` draft tokens that were not read yet and are captured (under the
        "own" row the newest token has no row yet); return the alignments of every row read so far."""
        n_read = len(self.alignments)
        if n_tokens <= n_read or len(self.prompt.source_token_positions) == 0:
            return tuple(self.alignments)
        replayed = replay(captured, self.heads, from_position=self.first_position + n_read)
        part = split_draft_attention(replayed, self.prompt.source_token_positions,
                                     self.prompt.source_accessible_mask(), first_row=self.first_position + n_read,
                                     draft_start=self.prompt.n_tokens)
        n_new = min(n_tokens - n_read, part.n_rows)
        if n_new > 0:
            self._parts.append(part.first_rows(n_new))
            attention = self.attention
            self.alignments += read_alignments(attention.source, self.prompt.source_token_units,
                                               attention.mass_inaccessible, self.config, first_row=n_read)
        return tuple(self.alignments)

    @property
    def attention(self) -> DraftAttention | None:
        """The rows read so far (None: none)."""
        return DraftAttention.concatenate(self._parts) if self._parts else None
