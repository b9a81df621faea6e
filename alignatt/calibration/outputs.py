"""What a calibration run writes: the heads JSON the agent loads, a TSV of every score, a heatmap."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alignatt.mt.heads import HeadScore, HeadsFile
from alignatt.calibration.scoring import HeadScores
from alignatt.calibration.stability import ranking


def make_heads_file(ts: np.ndarray, model_id: str, revision: str | None, direction: str, top_k: int,
                    calibration: dict, query_row: str, n_listed: int = 0) -> HeadsFile:
    """All heads ranked by TS (or the best `n_listed` when > 0), the first `top_k` selected, declaring the
    query row the scores were computed on."""
    ranked = ranking(ts)
    if n_listed > 0:
        ranked = ranked[: max(n_listed, top_k)]
    heads = tuple(HeadScore(layer, head, round(float(ts[layer, head]), 4)) for layer, head in ranked)
    return HeadsFile(model_id=model_id, direction=direction, heads=heads, num_hidden_layers=ts.shape[0],
                     num_attention_heads=ts.shape[1], top_k=top_k, revision=revision, calibration=calibration,
                     query_row=query_row)


def write_tsv(path: str | Path, scores: HeadScores) -> None:
    """One line per head, best first: rank, layer, head, score (TS), hits, n (aligned target tokens), two
    diagnostics: on_source (share of rows whose whole-row argmax lies in the source span) and
    ts_source_only (TS with the argmax taken over the source-span columns only), and query_row (the row
    convention, so the table says what it measured without its heads JSON)."""
    ts, n = scores.ts(), max(scores.n_aligned_tokens, 1)
    hits, on_source, source_only = (a.sum(0) for a in (scores.hits, scores.on_source, scores.hits_source_only))
    lines = ["rank\tlayer\thead\tscore\thits\tn\ton_source\tts_source_only\tquery_row"]
    for rank, (layer, head) in enumerate(ranking(ts), start=1):
        lines.append(f"{rank}\t{layer}\t{head}\t{ts[layer, head]:.4f}\t{int(hits[layer, head])}\t{n}\t"
                     f"{on_source[layer, head] / n:.4f}\t{source_only[layer, head] / n:.4f}\t{scores.query_row}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_heatmap(path: str | Path, ts: np.ndarray, top_k: int, title: str) -> None:
    """Layers (rows) x heads (columns) of TS, the selected heads outlined."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    n_layers, n_heads = ts.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.55 * n_heads), 1.4 + 0.28 * n_layers))
    image = ax.imshow(ts, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(ts.max()), 1e-6),
                      interpolation="nearest")
    for rank, (layer, head) in enumerate(ranking(ts)[:top_k], start=1):
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        ax.text(head, layer, f"{ts[layer, head]:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="TS (argmax on aligned source word)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
