"""q/k capture that survives torch.compile and CUDA graphs.

The eager capture (`alignatt.mt.capture.QKCapture`) appends tensors to Python lists: a side effect that a
compiled graph cannot hold and that a replayed CUDA graph would skip. This capture instead writes, with
tensor operations only, into buffers allocated once and marked as static addresses:

    queries[layer]  (B, Hq, max_positions, D)      the chosen query heads, row = cache slot
    keys[layer]     (B, Hkv_u, max_positions, D)   the KV heads serving them, row = cache slot

Rows are placed by the position ids the model hands to attention for batch row 0, so there is no Python step
counter. With one sequence (B = 1) a slot is the absolute position. A left-padded batch (`alignatt.mt.batching`)
puts its longest sequence in row 0, whose positions are the slots; another row's sequence starts `offset` slots
in (its padding) and is read from there.
A buffer row holds whatever the last forward call at that position wrote: the owner must read only
positions that the current sequence fed (or that an earlier call fed with the same token prefix, when
the KV cache of that prefix is reused).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from alignatt.mt.capture import HeadRef, SdpaOverride, check_sdpa, group_heads, new_key_index, text_attention_modules


@dataclass(frozen=True)
class CapturedLayer:
    """The rows of one layer that one sequence fed, in the form `alignatt.mt.replay` reads."""

    layer: int
    query_heads: tuple[int, ...]
    scaling: float
    sliding_window: int | None
    _queries: torch.Tensor  # (1, Hq, R, D)
    _query_positions: torch.Tensor  # (R,) on CPU
    _keys: torch.Tensor  # (1, Hq, K, D), key positions 0..K-1

    def queries(self) -> torch.Tensor:
        return self._queries

    def query_positions(self) -> torch.Tensor:
        return self._query_positions

    def keys(self) -> torch.Tensor:
        return self._keys

    @property
    def n_keys(self) -> int:
        return self._keys.shape[2]


@dataclass(frozen=True)
class CapturedSequence:
    """Captured rows of one sequence for all chosen layers (same interface as `QKCapture` for replay)."""

    layers: dict[int, CapturedLayer]

    def capture_for(self, ref: HeadRef) -> tuple[CapturedLayer, int]:
        cap = self.layers[ref.layer]
        return cap, cap.query_heads.index(ref.head)


class LayerBuffers:
    """Static buffers of one layer and the graph-safe write into them."""

    def __init__(self, module: nn.Module, layer: int, query_heads: tuple[int, ...], kv_heads: tuple[int, ...],
                 max_positions: int, dtype: torch.dtype, device: torch.device, batch_size: int = 1):
        self.module = module
        self.layer = layer
        self.query_heads = query_heads
        unique_kv = tuple(sorted(set(kv_heads)))
        head_dim = int(module.head_dim)
        self.query_index = torch.tensor(query_heads, device=device)
        self.unique_kv_heads = unique_kv
        self.kv_index = torch.tensor(unique_kv, device=device)
        # Expands the unique KV heads to one slice per query head when reading.
        self.kv_slot = torch.tensor([unique_kv.index(kv) for kv in kv_heads], device=device)
        self.queries = torch.zeros((batch_size, len(query_heads), max_positions, head_dim), dtype=dtype,
                                   device=device)
        self.keys = torch.zeros((batch_size, len(unique_kv), max_positions, head_dim), dtype=dtype, device=device)
        for tensor in (self.query_index, self.kv_index, self.queries, self.keys):
            torch._dynamo.mark_static_address(tensor)
        # Filled by the first eager call (generate's prefill is never compiled).
        self.scaling: float | None = None
        self.sliding_window: int | None = None

    def write(self, query: torch.Tensor, key: torch.Tensor, slots: torch.Tensor) -> None:
        """Store every batch row: query rows at their slots (KV-shared prefill computes only the last rows) and
        the new keys at theirs."""
        query_slots = slots[slots.shape[0] - query.shape[2]:]
        self.queries.index_copy_(2, query_slots, query.index_select(1, self.query_index))
        # New slots first: the key tensor of a static layer spans the whole cache.
        new_keys = key.index_select(2, new_key_index(slots, key.shape[2])).index_select(1, self.kv_index)
        self.keys.index_copy_(2, slots, new_keys)

    def read(self, query_start: int, n_positions: int, row: int = 0, offset: int = 0) -> CapturedLayer:
        """Positions query_start..n_positions-1 of the sequence in batch `row`, which starts at slot `offset`."""
        if self.scaling is None:
            raise RuntimeError(f"layer {self.layer}: nothing was captured yet")
        queries = self.queries[row:row + 1, :, offset + query_start:offset + n_positions]
        keys = self.keys[row:row + 1, :, offset:offset + n_positions].index_select(1, self.kv_slot)
        return CapturedLayer(layer=self.layer, query_heads=self.query_heads, scaling=self.scaling,
                             sliding_window=self.sliding_window, _queries=queries.clone(),
                             _query_positions=torch.arange(query_start, n_positions), _keys=keys.clone())


class StaticQKCapture:
    """Install around the model calls of one engine (a context manager, entered once per call), for batches of
    `batch_size` sequences (every call's batch must be that size).

    `max_positions` must cover every slot fed; the owner checks this before each call because an
    out-of-range write inside a CUDA graph is a device-side assert, not a Python error.
    """

    def __init__(self, model: nn.Module, heads: Sequence[HeadRef], max_positions: int, batch_size: int = 1):
        if not heads:
            raise ValueError("StaticQKCapture needs at least one head")
        modules = text_attention_modules(model)
        text_config = model.config.get_text_config()
        check_sdpa(text_config)
        parameter = next(model.parameters())
        self.max_positions = max_positions
        self.batch_size = batch_size
        self.layers: dict[int, LayerBuffers] = {
            layer: LayerBuffers(modules[layer], layer, query_heads, kv_heads, max_positions, parameter.dtype,
                                parameter.device, batch_size)
            for layer, (query_heads, kv_heads) in group_heads(modules, text_config, heads).items()}
        # One bound-method object: a compiled graph guards on the identity of the registered function.
        self._wrapper = self._attention
        self._sdpa = SdpaOverride()

    def _attention(self, module, query, key, value, attention_mask, **kwargs):
        # Identity, not layer index: other models in the process (the ASR) also call "sdpa".
        for buffers in self.layers.values():
            if module is buffers.module:
                slots = kwargs["position_ids"][0]
                if not torch.compiler.is_compiling():
                    buffers.scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
                    buffers.sliding_window = kwargs.get("sliding_window")
                buffers.write(query, key, slots)
        return self._sdpa.stock(module, query, key, value, attention_mask, **kwargs)

    def __enter__(self) -> "StaticQKCapture":
        self._sdpa.install(self._wrapper)
        return self

    def __exit__(self, *exc) -> None:
        self._sdpa.remove()

    def sequence(self, query_start: int, n_positions: int, row: int = 0, offset: int = 0) -> CapturedSequence:
        """Rows query_start..n_positions-1 and keys 0..n_positions-1 of the sequence in batch `row` (which starts
        at slot `offset`), copied out of the buffers."""
        if not 0 <= query_start < n_positions <= self.max_positions - offset or not 0 <= row < self.batch_size:
            raise ValueError(f"cannot read rows {query_start}..{n_positions - 1} of batch row {row} from slot "
                             f"{offset} ({self.batch_size} x {self.max_positions} slots)")
        return CapturedSequence({layer: buffers.read(query_start, n_positions, row, offset)
                                 for layer, buffers in self.layers.items()})
