"""qk-fast replay: recompute attention probabilities of captured rows from captured queries and keys.

Only the chosen heads and the captured rows are recomputed (a few heads x 16 draft rows), in float32,
over the full causal context each row saw, including the sliding-window limit of sliding layers; the
model itself never materialises attention weights (sdpa).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from alignatt.mt.capture import HeadRef, LayerCapture, QKCapture


def visible_key_range(row_position: int, sliding_window: int | None) -> tuple[int, int]:
    """[start, end) of the key positions the row at `row_position` sees: causal, and within the window."""
    start = 0 if sliding_window is None else max(0, row_position + 1 - sliding_window)
    return start, row_position + 1


def replay_layer(cap: LayerCapture, from_position: int = 0) -> torch.Tensor:
    """(B, Hq, R, K) float32 attention probabilities of the captured rows at positions >= `from_position`.

    Row by row over exactly the keys it sees, so that a row's probabilities do not depend on how many rows or keys
    were captured after it (a draft stopped early is judged bit for bit like the same rows of a longer one), and
    rows replayed in several calls equal the same rows replayed at once.
    """
    row_positions = cap.query_positions().tolist()
    if max(row_positions) >= cap.n_keys:
        raise RuntimeError(f"layer {cap.layer}: a query row lies beyond the captured keys")
    first = bisect.bisect_left(row_positions, from_position)
    queries = cap.queries()[:, :, first:].float()  # (B, Hq, R, D)
    keys = cap.keys().float()  # (B, Hq, K, D)
    probs = queries.new_zeros(queries.shape[:3] + (cap.n_keys,))
    for row, position in enumerate(row_positions[first:]):
        start, end = visible_key_range(position, cap.sliding_window)
        scores = torch.matmul(queries[:, :, row:row + 1], keys[:, :, start:end].transpose(-1, -2)) * cap.scaling
        probs[:, :, row:row + 1, start:end] = torch.softmax(scores, dim=-1)
    return probs


@dataclass(frozen=True)
class ReplayedAttention:
    """Attention of the captured rows of one sequence, for an ordered list of heads."""

    heads: tuple[HeadRef, ...]
    probs: np.ndarray  # (H, R, K) float32, rows sum to 1 over visible keys
    row_positions: np.ndarray  # (R,) absolute position of each row


def replay(capture: QKCapture, heads: Sequence[HeadRef], batch_index: int = 0, from_position: int = 0
           ) -> ReplayedAttention:
    """Replay the chosen heads (all captured in `capture`) for one sequence of the batch, on the rows at
    positions >= `from_position`."""
    per_layer = {layer: replay_layer(cap, from_position)[batch_index] for layer, cap in capture.layers.items()}
    probs, positions = [], None
    for ref in heads:
        cap, slot = capture.capture_for(ref)
        probs.append(per_layer[ref.layer][slot])
        layer_positions = cap.query_positions()
        if positions is not None and not torch.equal(positions, layer_positions):
            raise RuntimeError("captured rows differ between layers; capture all heads in one pass")
        positions = layer_positions
    positions = positions[positions >= from_position]
    return ReplayedAttention(heads=tuple(heads), probs=torch.stack(probs).cpu().numpy(),
                             row_positions=positions.numpy())


@dataclass(frozen=True)
class DraftAttention:
    """Where each draft row looks: the draft x source block and the split of its attention mass.

    Row r judges draft token r: either the query at token r's own position or the query that predicts it
    (the last prompt position for r = 0), as `split_draft_attention` was told.
    """

    source: np.ndarray  # (H, R, S) attention on each source-span token
    mass_accessible: np.ndarray  # (H, R) on source tokens already heard
    mass_inaccessible: np.ndarray  # (H, R) on source tokens not yet heard
    mass_draft: np.ndarray  # (H, R) on earlier draft tokens
    mass_other: np.ndarray  # (H, R) everything else: template, instruction, accepted target

    @property
    def n_rows(self) -> int:
        return self.source.shape[1]

    def first_rows(self, n_rows: int) -> "DraftAttention":
        return DraftAttention(*(getattr(self, f.name)[:, :n_rows] for f in fields(self)))

    @staticmethod
    def concatenate(parts: Sequence["DraftAttention"]) -> "DraftAttention":
        """Rows read in several parts, as one block (the same values as reading them at once)."""
        return DraftAttention(*(np.concatenate([getattr(p, f.name) for p in parts], axis=1)
                                for f in fields(DraftAttention)))


def split_draft_attention(replayed: ReplayedAttention, source_positions: np.ndarray,
                          source_accessible: np.ndarray, first_row: int, draft_start: int) -> DraftAttention:
    """Cut the replayed rows into the draft x source block and per-row attention masses.

    source_positions: (S,) prompt positions of the source-span tokens; source_accessible: (S,) bool;
    first_row: position of the row that judges the first draft token (draft_start - 1 for the predicting
    row, draft_start for the token's own row); draft_start: position of the first draft token.
    """
    rows = replayed.row_positions >= first_row
    probs = replayed.probs[:, rows, :]  # (H, R, K)
    source = probs[:, :, source_positions]  # (H, R, S)
    accessible = source[:, :, source_accessible].sum(-1)
    inaccessible = source[:, :, ~source_accessible].sum(-1)
    draft = probs[:, :, draft_start:].sum(-1)
    other = probs.sum(-1) - accessible - inaccessible - draft
    return DraftAttention(source=source, mass_accessible=accessible, mass_inaccessible=inaccessible,
                          mass_draft=draft, mass_other=np.clip(other, 0.0, None))
