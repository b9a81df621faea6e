"""Greedy generation for several sessions in one batch: one forward pass per token for every row.

Each session keeps its own decoder (`StaticDecoder`: its prompt KV cache and capture buffers, batch 1); a batch
borrows them for one call:
  1. every row keeps the longest cached prefix of its prompt (as its decoder would) and the batch feeds the same
     number N of trailing positions for every row, N the most any row needs: a row that could reuse more
     recomputes a few cached positions, a row shorter than N is padded inside the block;
  2. rows are left-padded to one length, longest first (row 0 has no padding, so its position ids are the slots
     `StaticQKCapture` writes to), and each row's reused keys and values, and the captured keys of the chosen
     heads, are copied into a batch cache of the same layout;
  3. one generate() call decodes every row, each with its own stopping rule (its budget, its criteria, its
     policy's stop callback reading its own captured rows), and once every row has stopped the rows' new keys,
     values and captured keys are copied back to each session's decoder, so its next call reuses them as if it
     had run alone.
With one row the batch computes exactly what the session's decoder computes. With several, the batched kernels
may round differently (other matrix shapes), so a near-tied greedy token can differ from the session alone.

On a compiled path the batch is padded with idle rows to the next slot size (1, 2, 4, 8, ...), so the decode
step's graph is captured once per slot size rather than once per number of sessions.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import StaticLayer

from alignatt.generation import CACHE_KWARG
from alignatt.mt.capture import HeadRef
from alignatt.mt.decoding import (Generated, Request, StaticDecoder, as_id_list, common_prefix_len,
                                  generate_new_tokens, position_indexed_cache, stopping_criteria)
from alignatt.mt.static_capture import StaticQKCapture
from alignatt.mt.translator import DraftCall, DraftResult, PreparedDraft, Translator


@dataclass(frozen=True)
class BatchRow:
    """One session's request, and the decoder that holds its prompt cache."""

    decoder: StaticDecoder
    request: Request


@dataclass(frozen=True)
class _Layout:
    """Where each row sits in the batch (index = the row's place in the batch, longest prompt first)."""

    order: tuple[int, ...]  # the caller's row index at each batch row
    n_slots: int  # slots of the longest prompt (T)
    n_fed: int  # trailing slots every row feeds (N)
    pads: tuple[int, ...]  # slots before each row's first token
    reused: tuple[int, ...]  # prompt positions each row takes from its session's cache


def generation_key(generation: GenerationConfig) -> str:
    """What batched rows must share: the generation config apart from the token budget."""
    config = generation.to_dict()
    config.pop("max_new_tokens", None)
    return repr(sorted(config.items()))


def slot_size(n_rows: int) -> int:
    """The batch size a compiled decode step is captured for: the next power of two."""
    return 1 << max(0, n_rows - 1).bit_length()


class _RowStops(StoppingCriteria):
    """Each row's own stopping rule inside one batched generate(); remembers how many tokens each row had when it
    stopped. Idle rows stop at once."""

    def __init__(self, rows: Sequence[BatchRow], layout: _Layout, read, end_ids: set[int], n_rows: int):
        self.layout = layout
        self.end_ids = end_ids
        self.budgets = [rows[i].request.generation.max_new_tokens for i in layout.order]
        self.criteria = [stopping_criteria(rows[i].request, lambda n_fed, b=b: read(b, n_fed))
                         for b, i in enumerate(layout.order)]
        self.stopped_at: list[int | None] = [None] * len(layout.order) + [0] * (n_rows - len(layout.order))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        n_generated = input_ids.shape[1] - self.layout.n_slots
        for b, criteria in enumerate(self.criteria):
            if self.stopped_at[b] is None and self._stops(b, criteria, input_ids, n_generated):
                self.stopped_at[b] = n_generated
        return torch.tensor([at is not None for at in self.stopped_at], device=input_ids.device)

    def _stops(self, b: int, criteria: StoppingCriteriaList, input_ids: torch.Tensor, n_generated: int) -> bool:
        if int(input_ids[b, -1]) in self.end_ids or n_generated >= self.budgets[b]:
            return True
        own = input_ids[b:b + 1, self.layout.pads[b]:]  # the row's sequence as it would run alone
        return bool(criteria(own, None).any()) if criteria else False


class _BatchSlot:
    """A batch cache and capture buffers for `n_rows` rows, allocated once and reused by every batch of that size."""

    def __init__(self, model, heads: tuple[HeadRef, ...], n_rows: int, max_cache_tokens: int):
        self.n_rows = n_rows
        self.cache = position_indexed_cache(model, max_cache_tokens)
        self.capture = StaticQKCapture(model, heads, max_cache_tokens, batch_size=n_rows)

    def layers(self):
        return [layer for layer in self.cache.layers if isinstance(layer, StaticLayer)]


def _ensure_initialised(layer: StaticLayer, like: StaticLayer, n_rows: int) -> None:
    if not layer.is_initialized:
        shape = (n_rows,) + tuple(like.keys.shape[1:2]) + (1,)
        layer.lazy_initialization(like.keys.new_empty(shape + like.keys.shape[3:]),
                                  like.values.new_empty(shape + like.values.shape[3:]))


class BatchDecoder:
    """Batched greedy generation over sessions' own static decoders, all of one model.

    A batch cache holds `max_cache_tokens` positions per row (for the proxy about 38 MB a row). Compiled, one is kept
    per slot size (their graphs hold its addresses); eager, only the last `EAGER_SLOTS` sizes used are kept, as the
    number of sessions due varies from tick to tick."""

    EAGER_SLOTS = 2

    def __init__(self, model, max_cache_tokens: int, compile: bool = False):
        self.model = model
        self.max_cache_tokens = max_cache_tokens
        self.compile = compile
        self._slots: dict[tuple[int, tuple[HeadRef, ...]], _BatchSlot] = {}  # least recently used first

    def fits(self, rows: Sequence[BatchRow]) -> bool:
        """One batch can serve these rows: one model, one generation config up to the budget, every prompt and
        budget within the batch cache."""
        longest = max(len(row.request.input_ids) for row in rows)
        budget = max(row.request.generation.max_new_tokens for row in rows)
        return (len({id(row.decoder) for row in rows}) == len(rows)  # one row per session's cache
                and all(isinstance(row.decoder, StaticDecoder) and row.decoder.model is self.model
                    and not row.decoder.compile_failed for row in rows)
                and len({generation_key(row.request.generation) for row in rows}) == 1
                and longest + budget <= min(self.max_cache_tokens, *(r.decoder.config.max_cache_tokens for r in rows)))

    def generate_many(self, rows: Sequence[BatchRow]) -> list[Generated]:
        """Every row's `Generated`, in the rows' order. Rows one batch cannot serve (see `fits`) are not accepted."""
        if not rows:
            return []
        if not self.fits(rows):
            raise ValueError("these rows cannot share one batch (model, generation config or cache length)")
        layout = self._layout(rows)
        n_rows = slot_size(len(rows)) if self.compile else len(rows)
        heads = tuple(sorted({ref for row in rows for ref in row.decoder.heads}, key=lambda r: (r.layer, r.head)))
        slot = self._slot(n_rows, heads)
        for b, i in enumerate(layout.order):
            self._load_row(slot, b, rows[i].decoder, layout.pads[b], layout.reused[b])
        for layer in slot.layers():
            layer.cumulative_length.fill_(layout.n_slots - layout.n_fed)
        input_ids, mask = self._inputs(rows, layout, n_rows)
        generation = rows[0].request.generation
        end_ids = set(as_id_list(generation.eos_token_id))
        read = lambda b, n_fed: slot.capture.sequence(  # noqa: E731
            rows[layout.order[b]].request.capture_from, n_fed, b, layout.pads[b])
        stops = _RowStops(rows, layout, read, end_ids, n_rows)
        budget = max(row.request.generation.max_new_tokens for row in rows)
        config = rows[0].decoder.generation_config(_with_budget(generation, budget))
        with slot.capture:
            output = generate_new_tokens(self.model, input_ids, mask, config, rows[0].decoder.head,
                                         **{CACHE_KWARG: slot.cache,
                                            "stopping_criteria": StoppingCriteriaList([stops])})
        results: list[Generated | None] = [None] * len(rows)
        for b, i in enumerate(layout.order):
            results[i] = self._finish_row(slot, b, rows[i], layout, output[b], stops.stopped_at[b], end_ids)
        return results

    def _layout(self, rows: Sequence[BatchRow]) -> _Layout:
        order = tuple(sorted(range(len(rows)), key=lambda i: -len(rows[i].request.input_ids)))
        lengths = [len(rows[i].request.input_ids) for i in order]
        keep = [self._reusable(rows[i]) for i in order]
        n_slots = lengths[0]
        n_fed = max(length - kept for length, kept in zip(lengths, keep))
        return _Layout(order=order, n_slots=n_slots, n_fed=n_fed, pads=tuple(n_slots - n for n in lengths),
                       reused=tuple(max(0, n - n_fed) for n in lengths))

    @staticmethod
    def _reusable(row: BatchRow) -> int:
        """Prompt positions the row's decoder could take from its cache (as `PromptKV.rewind` would)."""
        decoder, input_ids = row.decoder, row.request.input_ids
        if not decoder.config.reuse_prompt_kv:
            return 0
        return min(common_prefix_len(decoder.prompt_kv.cached_ids, input_ids), len(input_ids) - 1)

    def _slot(self, n_rows: int, heads: tuple[HeadRef, ...]) -> _BatchSlot:
        key = (n_rows, heads)
        slot = self._slots.pop(key, None) or _BatchSlot(self.model, heads, n_rows, self.max_cache_tokens)
        self._slots[key] = slot
        if not self.compile and len(self._slots) > self.EAGER_SLOTS:
            del self._slots[next(iter(self._slots))]
        return slot

    @staticmethod
    def _load_row(slot: _BatchSlot, b: int, decoder: StaticDecoder, pad: int, reused: int) -> None:
        """Copy the session's first `reused` positions (keys, values, captured keys) to batch row `b` after `pad`."""
        if reused == 0:
            return
        for layer, own in zip(slot.layers(), decoder.prompt_kv.cache.layers):
            _ensure_initialised(layer, own, slot.n_rows)
            layer.keys[b, :, pad:pad + reused] = own.keys[0, :, :reused]
            layer.values[b, :, pad:pad + reused] = own.values[0, :, :reused]
        for index, own in decoder.capture.layers.items():
            buffers = slot.capture.layers[index]
            kv = [buffers.unique_kv_heads.index(h) for h in own.unique_kv_heads]
            buffers.keys[b, kv, pad:pad + reused] = own.keys[0, :, :reused]

    def _inputs(self, rows: Sequence[BatchRow], layout: _Layout, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input ids and their attention mask; idle rows repeat row 0."""
        pad_id = rows[0].request.generation.pad_token_id or 0
        ids = torch.full((n_rows, layout.n_slots), pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, layout.n_slots), dtype=torch.long)
        for b, i in enumerate(layout.order):
            ids[b, layout.pads[b]:] = torch.tensor(list(rows[i].request.input_ids))
            mask[b, layout.pads[b]:] = 1
        ids[len(layout.order):], mask[len(layout.order):] = ids[0], mask[0]
        device = self.model.device
        return ids.to(device), mask.to(device)

    def _finish_row(self, slot: _BatchSlot, b: int, row: BatchRow, layout: _Layout, output: torch.Tensor,
                    stopped_at: int | None, end_ids: set[int]) -> Generated:
        """The row's tokens (up to where it stopped), its capture, and its state copied back to its decoder."""
        generated = output.tolist()
        if stopped_at is not None:
            generated = generated[:stopped_at]
        end = next((k for k, token in enumerate(generated) if token in end_ids), None)
        tokens = generated if end is None else generated[:end + 1]
        request, decoder = row.request, row.decoder
        fed = list(request.input_ids) + tokens[:-1]  # the last generated token is never fed back
        self._store_row(slot, b, decoder, layout.pads[b], layout.reused[b], len(fed))
        decoder.prompt_kv.fed(fed)
        if decoder.draft_reuse is not None:
            decoder.draft_reuse.remember(list(request.input_ids) + tokens)
        captured = None
        if request.capture_from is not None:
            captured = slot.capture.sequence(request.capture_from, len(fed), b, layout.pads[b])
        return Generated(tokens, captured, layout.reused[b])

    @staticmethod
    def _store_row(slot: _BatchSlot, b: int, decoder: StaticDecoder, pad: int, reused: int, n_fed: int) -> None:
        """Copy positions reused..n_fed-1 of batch row `b` back to the session's cache and capture buffers."""
        for layer, own in zip(slot.layers(), decoder.prompt_kv.cache.layers):
            _ensure_initialised(own, layer, 1)
            own.keys[0, :, reused:n_fed] = layer.keys[b, :, pad + reused:pad + n_fed]
            own.values[0, :, reused:n_fed] = layer.values[b, :, pad + reused:pad + n_fed]
        for index, own in decoder.capture.layers.items():
            buffers = slot.capture.layers[index]
            kv = [buffers.unique_kv_heads.index(h) for h in own.unique_kv_heads]
            own.keys[0, :, reused:n_fed] = buffers.keys[b, kv, pad + reused:pad + n_fed]
            own.scaling, own.sliding_window = buffers.scaling, buffers.sliding_window


def _with_budget(generation: GenerationConfig, max_new_tokens: int) -> GenerationConfig:
    generation = copy.deepcopy(generation)
    generation.max_new_tokens = max_new_tokens
    return generation


@dataclass
class BatchCounts:
    batches: int = 0  # generate() calls that served several sessions
    rows: int = 0  # drafts they served


class DraftBatcher:
    """Drafts of several sessions at once: rows on one model are drafted in one batch where `BatchDecoder.fits`
    them, every other draft on its translator's own decoder."""

    def __init__(self):
        self._decoders: dict[int, BatchDecoder] = {}  # by id of the model
        self.counts = BatchCounts()

    def draft_many(self, pairs: Sequence[tuple[Translator, DraftCall]]) -> list[DraftResult]:
        results: list[DraftResult | None] = [None] * len(pairs)
        waiting: dict[tuple, list[tuple[int, PreparedDraft]]] = {}
        for index, (translator, call) in enumerate(pairs):
            prepared = translator.prepare_draft(call)
            if isinstance(prepared, DraftResult):
                results[index] = prepared
            else:
                key = (id(translator.model), generation_key(prepared.request.generation))
                waiting.setdefault(key, []).append((index, prepared))
        for group in waiting.values():
            for index, result in self._draft_group(pairs, group):
                results[index] = result
        return results

    def _draft_group(self, pairs, group: list[tuple[int, PreparedDraft]]) -> list[tuple[int, DraftResult]]:
        translators = [pairs[index][0] for index, _ in group]
        rows = [BatchRow(t.decoder, prepared.request) for t, (_, prepared) in zip(translators, group)]
        decoder = self._decoder(translators[0]) if len(rows) > 1 else None
        if decoder is not None and decoder.fits(rows):
            generated = decoder.generate_many(rows)
            self.counts.batches += 1
            self.counts.rows += len(rows)
        else:
            generated = [t.decoder.generate(row.request) for t, row in zip(translators, rows)]
        return [(index, t.complete_draft(prepared, g))
                for t, (index, prepared), g in zip(translators, group, generated)]

    def _decoder(self, translator: Translator) -> BatchDecoder | None:
        own = translator.decoder
        if not isinstance(own, StaticDecoder):
            return None  # the eager path keeps no cache to batch from
        key = id(translator.model)
        if key not in self._decoders:
            self._decoders[key] = BatchDecoder(translator.model, own.config.max_cache_tokens, compile=own.compile)
        return self._decoders[key]
