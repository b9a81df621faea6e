"""Robustness of a head ranking: does it survive scoring on half of the data?

Random half splits of the scored pairs: overlap of the two halves' top-k sets, Spearman and Kendall rank
correlation of all head scores, and how often the two halves agree on the best head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from alignatt.calibration.scoring import HeadScores


def ranking(ts: np.ndarray) -> list[tuple[int, int]]:
    """(layer, head) pairs by TS, best first; ties by layer, then head."""
    layers, heads = np.unravel_index(np.arange(ts.size), ts.shape)
    order = sorted(range(ts.size), key=lambda n: (-ts.flat[n], layers[n], heads[n]))
    return [(int(layers[n]), int(heads[n])) for n in order]


@dataclass(frozen=True)
class HalfSplitStability:
    n_splits: int
    top_k: int
    topk_overlap_mean: float  # |top-k(A) & top-k(B)| / k, averaged over splits
    topk_overlap_min: float
    top1_agreement: float  # share of splits whose halves pick the same best head
    spearman_mean: float  # rank correlation of all head scores between the halves
    kendall_mean: float
    full_topk_in_half_topk: float  # share of the full data's top-k found in a half's top-k, averaged
    example_split: dict  # the first split's top-k lists, for the record

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def half_split_stability(scores: HeadScores, top_k: int, n_splits: int = 20, seed: int = 0) -> HalfSplitStability:
    if scores.n_pairs < 2:
        raise ValueError(f"the half-split stability check needs at least two scored pairs, got {scores.n_pairs}: "
                         "give more pairs, or check that the alignments link target words")
    rng = np.random.default_rng(seed)
    full_top = set(ranking(scores.ts())[:top_k])
    overlaps, top1, spearman, kendall, recovered, example = [], [], [], [], [], {}
    for split in range(n_splits):
        order = rng.permutation(scores.n_pairs)
        half_a, half_b = order[: scores.n_pairs // 2], order[scores.n_pairs // 2:]
        ts_a, ts_b = scores.ts(half_a), scores.ts(half_b)
        rank_a, rank_b = ranking(ts_a), ranking(ts_b)
        overlaps.append(len(set(rank_a[:top_k]) & set(rank_b[:top_k])) / top_k)
        top1.append(rank_a[0] == rank_b[0])
        # nan when one half scores every head alike; nanmean skips it
        spearman.append(float(stats.spearmanr(ts_a.ravel(), ts_b.ravel())[0]))
        kendall.append(float(stats.kendalltau(ts_a.ravel(), ts_b.ravel())[0]))
        recovered += [len(full_top & set(rank_a[:top_k])) / top_k, len(full_top & set(rank_b[:top_k])) / top_k]
        if split == 0:
            example = {"half_a_top_k": [list(h) for h in rank_a[:top_k]],
                       "half_b_top_k": [list(h) for h in rank_b[:top_k]],
                       "pairs_per_half": [len(half_a), len(half_b)]}
    return HalfSplitStability(n_splits=n_splits, top_k=top_k, topk_overlap_mean=float(np.mean(overlaps)),
                              topk_overlap_min=float(np.min(overlaps)), top1_agreement=float(np.mean(top1)),
                              spearman_mean=float(np.nanmean(spearman)), kendall_mean=float(np.nanmean(kendall)),
                              full_topk_in_half_topk=float(np.mean(recovered)), example_split=example)


def score_summary(ts: np.ndarray, thresholds: tuple[float, ...], top_k: int) -> dict:
    """How far the best heads stand above the typical head."""
    flat = np.sort(ts.ravel())[::-1]
    median = float(np.median(flat))
    return {
        "best": round(float(flat[0]), 4),
        "top_k_mean": round(float(flat[:top_k].mean()), 4),
        "median": round(median, 4),
        "mean": round(float(flat.mean()), 4),
        "p90": round(float(np.percentile(flat, 90)), 4),
        "best_minus_median": round(float(flat[0]) - median, 4),
        "heads_above": {f"{t:g}": int((flat >= t).sum()) for t in thresholds},
        "n_heads": int(flat.size),
    }
