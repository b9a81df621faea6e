"""Teacher-forced head scoring: TS(l, h) = share of aligned target tokens whose attention argmax, taken over
the WHOLE row (every key position the row sees), lands on a token of a source word aligned to them.

The reference translation is prefilled as the target of the agent's own prompt layout (`PromptBuilder`),
so the rows scored here are the rows the runtime policy reads. Which row judges target token t is declared,
not assumed (`alignatt.mt.heads.QUERY_ROWS`): "own" = the query at t's own position (computed when t is fed
back in; the published Gemma-4 heads were scored so), "predicting" = the query that predicts t, at
position(t) - 1. The teacher-forced sequence holds every target token, so both rows of every token exist.
Queries and keys are recorded with the agent's capture code (`alignatt.mt.capture`) and replayed with
`alignatt.mt.replay`, one layer at a time; only the argmax hits of each row are kept.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from alignatt.mt.capture import HeadRef, attention_head_count, capture_heads, text_attention_modules
from alignatt.mt.heads import check_query_row, query_row_position
from alignatt.mt.prompt import PromptBuilder, RenderedPrompt, map_source_tokens
from alignatt.mt.replay import replay_layer
from alignatt.text_units import unit_spans
from alignatt.calibration.pairs import SentencePair
from alignatt.calibration.pharaoh import Link, links_by_target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringExample:
    """One teacher-forced pair: its prompt and, per aligned target token, the row and the keys that count."""

    pair_index: int  # index into the scored pairs
    input_ids: tuple[int, ...]
    rows: np.ndarray  # (N,) query positions: the row judging each aligned target token (own or predicting)
    allowed: np.ndarray  # (N, T) bool: key position is a token of a source word aligned to the target token
    source_positions: np.ndarray  # (S,) positions of the source-span tokens

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_aligned(self) -> int:
        return len(self.rows)


def target_token_units(prompt: RenderedPrompt, char_level: bool) -> list[tuple[int, frozenset[int]]]:
    """(position, target units the token covers) for every target token of a teacher-forced prompt.

    The first unit is the one `map_source_tokens` gives (that of the token's first non-space character);
    a token spanning several units (multi-character tokens on zh targets) covers them all.
    """
    start, end = prompt.target_char_span
    units = [(start + a, start + b) for a, b in unit_spans(prompt.target_prefix, char_level)]
    positions, first_units = map_source_tokens(prompt.text, prompt.token_offsets, (start, end), units)
    covered = []
    for position, first in zip(positions.tolist(), first_units.tolist()):
        token_end = min(prompt.token_offsets[position][1], end)
        last = first
        while last + 1 < len(units) and units[last + 1][0] < token_end:
            last += 1
        covered.append((position, frozenset(range(first, last + 1))))
    return covered


def build_example(builder: PromptBuilder, pair: SentencePair, links: frozenset[Link], pair_index: int,
                  char_level: bool, *, query_row: str) -> ScoringExample | None:
    """Render the pair teacher-forced and collect its aligned target tokens (None when there are none), each
    with the row `query_row` names."""
    prompt = builder.render(pair.source, target_prefix=pair.target)
    n_src, n_tgt = pair.n_units
    if prompt.n_units != n_src or len(unit_spans(prompt.target_prefix, char_level)) != n_tgt:
        raise RuntimeError(f"pair on line {pair.line}: the prompt splits the sentences into other units")
    sources_of = links_by_target(links, n_tgt)
    rows, allowed = [], []
    for position, units in target_token_units(prompt, char_level):
        aligned = set().union(*(sources_of[u] for u in units))
        keys = prompt.source_token_positions[np.isin(prompt.source_token_units, sorted(aligned))]
        if keys.size == 0:
            continue
        mask = np.zeros(prompt.n_tokens, dtype=bool)
        mask[keys] = True
        rows.append(query_row_position(position, query_row))
        allowed.append(mask)
    if not rows:
        return None
    return ScoringExample(pair_index, prompt.input_ids, np.asarray(rows, dtype=np.int64), np.stack(allowed),
                          prompt.source_token_positions)


def source_chance(example: ScoringExample) -> float:
    """Sum over rows of the hit chance of an argmax drawn uniformly from the source tokens."""
    return float(example.allowed.sum(1).sum() / max(len(example.source_positions), 1))


def all_heads(model) -> list[HeadRef]:
    """Every query head of every decoder layer (KV-shared layers included: they have their own queries)."""
    config = model.config.get_text_config()
    return [HeadRef(layer, head) for layer, module in enumerate(text_attention_modules(model))
            for head in range(attention_head_count(module, config))]


def batches(examples: Sequence[ScoringExample], batch_size: int) -> Iterator[list[ScoringExample]]:
    """Length-sorted batches (little padding)."""
    ordered = sorted(examples, key=lambda e: e.n_tokens)
    for start in range(0, len(ordered), batch_size):
        yield ordered[start:start + batch_size]


def _pad_id(model, tokenizer) -> int:
    for candidate in (getattr(tokenizer, "pad_token_id", None), model.config.get_text_config().pad_token_id,
                      getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.no_grad()
def score_batch(model, batch: Sequence[ScoringExample], heads: Sequence[HeadRef], pad_id: int) -> np.ndarray:
    """(3, B, L, H) counts per pair and head over its aligned tokens: [0] TS hits (whole-row argmax on an
    aligned source word), [1] whole-row argmax anywhere in the source span, [2] hits of the argmax taken over
    the source-span columns only (what a policy that reads only those columns sees).

    Right padding keeps every sequence at positions 0..T-1 (the capture assumes shared position ids);
    padded keys lie after every real row, so the causal mask hides them from the rows scored. Rows are
    kept from the first scored row to the end, so the last target token's row is there under either
    convention ("own": its position, at most n_tokens - 1; "predicting": one before).
    """
    device = model.device
    length = max(e.n_tokens for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for b, example in enumerate(batch):
        ids[b, :example.n_tokens] = torch.tensor(example.input_ids)
        mask[b, :example.n_tokens] = 1
    start = int(min(e.rows.min() for e in batch))
    n_layers = 1 + max(h.layer for h in heads)
    n_heads = 1 + max(h.head for h in heads)
    hits = np.zeros((3, len(batch), n_layers, n_heads), dtype=np.int64)
    # Logits of one position only (the 262k-word vocabulary over every position would dominate memory). A
    # tensor, not the int 1: Gemma-4 skips all but the last rows of its KV-shared layers for an int.
    keep = torch.tensor([length - 1], device=device)
    with capture_heads(model, heads, query_start_position=start) as capture:
        model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=keep)
    for layer, cap in capture.layers.items():  # one layer's attention at a time
        probs = replay_layer(cap)  # (B, Hq, R, K)
        row_positions = cap.query_positions().tolist()
        if row_positions != list(range(start, length)):
            raise RuntimeError(f"layer {layer}: captured rows {row_positions[:3]}... are not {start}..{length - 1}")
        for b, example in enumerate(batch):
            rows = torch.as_tensor(example.rows - start, device=probs.device)
            hits[:, b, layer, list(cap.query_heads)] = _row_counts(probs[b, :, rows, :], example)
        del probs
    return hits


def _row_counts(block: torch.Tensor, example: ScoringExample) -> np.ndarray:
    """(3, Hq) counts of `score_batch` from the (Hq, N, K) attention of one example's aligned rows."""
    argmax = block.argmax(-1).cpu().numpy()  # (Hq, N) key positions
    source = torch.as_tensor(example.source_positions, device=block.device)
    source_argmax = example.source_positions[block[:, :, source].argmax(-1).cpu().numpy()]  # (Hq, N)
    token = np.arange(example.n_aligned)[None, :]
    return np.stack([example.allowed[token, argmax].sum(-1),
                     np.isin(argmax, example.source_positions).sum(-1),
                     example.allowed[token, source_argmax].sum(-1)])


@dataclass(frozen=True)
class HeadScores:
    """Per-pair hits of every head; TS and any split derive from them."""

    hits: np.ndarray  # (P, L, H) aligned tokens each head got right, per scored pair
    counts: np.ndarray  # (P,) aligned target tokens per scored pair
    on_source: np.ndarray  # (P, L, H) aligned tokens whose whole-row argmax lies anywhere in the source span
    hits_source_only: np.ndarray  # (P, L, H) hits of the argmax over the source-span columns only
    pair_indices: np.ndarray  # (P,) index of each scored pair in the pair list
    source_chance: float  # TS of an argmax drawn uniformly over the source tokens
    query_row: str  # which row judged each target token ("own" or "predicting")

    def ts(self, subset: np.ndarray | None = None) -> np.ndarray:
        """(L, H) TS over all scored pairs or a subset of them (indices into the scored pairs)."""
        hits, counts = (self.hits, self.counts) if subset is None else (self.hits[subset], self.counts[subset])
        return hits.sum(0) / max(int(counts.sum()), 1)

    @property
    def n_pairs(self) -> int:
        return len(self.counts)

    @property
    def n_aligned_tokens(self) -> int:
        return int(self.counts.sum())


def score_heads(model, tokenizer, builder: PromptBuilder, pairs: Sequence[SentencePair],
                alignments: Sequence[frozenset[Link]], char_level: bool, batch_size: int = 4,
                progress: bool = True, *, query_row: str) -> HeadScores:
    """Teacher-force every pair with at least one aligned target token and score every head on the rows
    `query_row` names (no default: the convention is part of what the scores mean)."""
    check_query_row(query_row)
    examples = []
    for index, (pair, links) in enumerate(zip(pairs, alignments)):
        example = build_example(builder, pair, links, index, char_level, query_row=query_row)
        if example is None:
            logger.debug("pair on line %d has no aligned target token, skipped", pair.line)
        else:
            examples.append(example)
    if not examples:
        raise ValueError("no pair has an aligned target token: nothing to score")
    logger.info("%d of %d pairs have aligned target tokens (%d tokens)", len(examples), len(pairs),
                sum(e.n_aligned for e in examples))
    heads = all_heads(model)
    pad_id = _pad_id(model, tokenizer)
    by_pair: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(examples), desc="scoring heads", unit="pair", disable=not progress)
    for batch in batches(examples, batch_size):
        for example, hits in zip(batch, score_batch(model, batch, heads, pad_id).transpose(1, 0, 2, 3)):
            by_pair[example.pair_index] = hits  # (3, L, H)
        bar.update(len(batch))
    bar.close()
    examples.sort(key=lambda e: e.pair_index)
    counts = np.asarray([e.n_aligned for e in examples])
    chance = sum(source_chance(e) for e in examples) / counts.sum()
    stacked = np.stack([by_pair[e.pair_index] for e in examples], axis=1)  # (3, P, L, H)
    return HeadScores(hits=stacked[0], counts=counts, on_source=stacked[1], hits_source_only=stacked[2],
                      pair_indices=np.asarray([e.pair_index for e in examples]), source_chance=float(chance),
                      query_row=query_row)
