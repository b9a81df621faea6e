"""Runtime capture of post-RoPE queries and keys for chosen attention heads.

The capture sits behind the function transformers registers under "sdpa": it records what the chosen layers
hand to attention and then calls the stock function with the very same arguments, so logits and greedy
tokens stay bit-identical. A new attention name would not: transformers special-cases the literal "sdpa"
(mask construction, logits_to_keep slicing), and eager attention changes bf16 results.

What arrives at the attention function, per layer and per forward call:
  query  (B, H, q_len, D)   post-RoPE; q_len can be 1 during prefill on Gemma-4 KV-shared layers
  key    (B, H_kv, k_len, D) post-RoPE; the keys this call attends to, newest positions last
  position_ids (B, n_new)   absolute positions of the tokens this forward call added
Sliding layers receive only the last window of keys, so keys are stored by absolute position as they
arrive (the last n_new of `key`) rather than taken from the key tensor of a later call. Gemma-4 KV-shared
layers receive the keys of the layer they share with, which is exactly what they attend to.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

logger = logging.getLogger(__name__)

ATTENTION_NAME = "sdpa"


@dataclass(frozen=True)
class HeadRef:
    """One query head of one decoder layer (0-based indices)."""

    layer: int
    head: int


@dataclass
class LayerCapture:
    """Queries and keys recorded for the chosen query heads of one layer."""

    layer: int
    query_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]  # KV head serving each query head (GQA: head // groups)
    scaling: float | None = None
    sliding_window: int | None = None
    query_start_position: int = 0  # rows before this absolute position are not kept
    _query_chunks: list[torch.Tensor] = field(default_factory=list)  # (B, Hq, r, D) each
    _query_positions: list[torch.Tensor] = field(default_factory=list)  # (r,) each
    _key_chunks: list[torch.Tensor] = field(default_factory=list)  # (B, Hkv_unique, n, D) each
    _n_keys: int = 0

    @property
    def unique_kv_heads(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.kv_heads)))

    def record(self, query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, scaling: float | None,
               sliding_window: int | None) -> None:
        self.scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        self.sliding_window = sliding_window
        self._record_keys(key, positions)
        self._record_queries(query, positions)

    def _record_keys(self, key: torch.Tensor, positions: torch.Tensor) -> None:
        n_new = positions.numel()
        first = int(positions[0])
        if first != self._n_keys:
            raise RuntimeError(
                f"layer {self.layer}: capture expected keys from position {self._n_keys} but the model "
                f"added position {first}; start the capture before the first forward call of a sequence")
        kv_index = torch.tensor(self.unique_kv_heads, device=key.device)
        key_index = new_key_index(positions.to(key.device), key.shape[2])
        new_keys = key.index_select(2, key_index).index_select(1, kv_index)  # (B, Hkv_u, n_new, D)
        self._key_chunks.append(new_keys.detach().clone())
        self._n_keys += n_new

    def _record_queries(self, query: torch.Tensor, positions: torch.Tensor) -> None:
        q_len = query.shape[2]
        row_positions = positions[positions.numel() - q_len:]  # KV-shared prefill computes only the last rows
        keep = row_positions >= self.query_start_position
        if not bool(keep.any()):
            return
        head_index = torch.tensor(self.query_heads, device=query.device)
        rows = query.index_select(1, head_index)[:, :, keep.to(query.device), :]  # (B, Hq, r, D)
        self._query_chunks.append(rows.detach().clone())
        self._query_positions.append(row_positions[keep].detach().cpu())

    def queries(self) -> torch.Tensor:
        """(B, Hq, R, D) captured query rows, in the order they were computed."""
        if not self._query_chunks:
            raise RuntimeError(f"layer {self.layer}: no query rows were captured")
        return torch.cat(self._query_chunks, dim=2)

    def query_positions(self) -> torch.Tensor:
        """(R,) absolute position of each captured query row."""
        return torch.cat(self._query_positions)

    def keys(self) -> torch.Tensor:
        """(B, Hq, K, D) keys of absolute positions 0..K-1, one slice per captured query head."""
        if not self._key_chunks:
            raise RuntimeError(f"layer {self.layer}: no keys were captured")
        unique_keys = torch.cat(self._key_chunks, dim=2)
        slot = {kv: i for i, kv in enumerate(self.unique_kv_heads)}
        index = torch.tensor([slot[kv] for kv in self.kv_heads], device=unique_keys.device)
        return unique_keys.index_select(1, index)

    @property
    def n_keys(self) -> int:
        return self._n_keys


def text_attention_modules(model: nn.Module) -> list[nn.Module]:
    """Self-attention modules of the text decoder, indexed by layer (works for *ForCausalLM and the
    multimodal *ForConditionalGeneration wrappers such as Gemma-4)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__}: cannot find the decoder layers")
    modules = [getattr(layer, "self_attn", None) for layer in layers]
    if any(m is None for m in modules):
        raise TypeError(f"{type(model).__name__}: decoder layers have no `self_attn` module")
    return modules


def attention_head_count(module: nn.Module, config) -> int:
    return int(getattr(module, "num_heads", None) or config.num_attention_heads)


def _kv_groups(module: nn.Module) -> int:
    return int(getattr(module, "num_key_value_groups", 1))


def group_heads(modules: Sequence[nn.Module], text_config, heads: Sequence[HeadRef]
                ) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """{layer: (query heads, the KV head serving each)} for the chosen heads, checked against the model."""
    by_layer: dict[int, list[int]] = {}
    for ref in heads:
        if not 0 <= ref.layer < len(modules):
            raise ValueError(f"layer {ref.layer} does not exist: the model has {len(modules)} layers")
        n_heads = attention_head_count(modules[ref.layer], text_config)
        if not 0 <= ref.head < n_heads:
            raise ValueError(f"head {ref.head} does not exist in layer {ref.layer} ({n_heads} query heads)")
        by_layer.setdefault(ref.layer, []).append(ref.head)
    grouped = {}
    for layer, query_heads in sorted(by_layer.items()):
        groups = _kv_groups(modules[layer])
        grouped[layer] = (tuple(query_heads), tuple(h // groups for h in query_heads))
    return grouped


def check_sdpa(text_config) -> None:
    attn_impl = getattr(text_config, "_attn_implementation", None)
    if attn_impl != ATTENTION_NAME:
        raise ValueError(f"capture needs attn_implementation='{ATTENTION_NAME}', the model uses {attn_impl!r}")


def new_key_index(positions: torch.Tensor, key_len: int) -> torch.Tensor:
    """Index, inside the key tensor an attention call receives, of the keys of the call's new positions.

    Caches that hold every position (dynamic full layers, static layers, a sliding layer not yet full)
    hand over keys indexed by absolute position; a full sliding window (dynamic or static, rolled or
    concatenated) ends with the new keys. The last new position tells which case this is. Tensor
    operations only, so the same rule runs inside a compiled graph.
    """
    n_new = positions.shape[0]
    tail = torch.arange(key_len - n_new, key_len, device=positions.device)
    return torch.where(positions[-1:] < key_len, positions, tail)


class SdpaOverride:
    """Puts a wrapper behind the name "sdpa" and later puts back what was registered before (a process-local
    override, or transformers' global function)."""

    def __init__(self):
        self.stock = None  # the function the wrapper must call
        self._saved: tuple[bool, object] | None = None

    @property
    def installed(self) -> bool:
        return self._saved is not None

    def install(self, wrapper) -> None:
        if self.installed:
            return
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        self._saved = (ATTENTION_NAME in local, local.get(ATTENTION_NAME))
        self.stock = ALL_ATTENTION_FUNCTIONS[ATTENTION_NAME]
        ALL_ATTENTION_FUNCTIONS[ATTENTION_NAME] = wrapper

    def remove(self) -> None:
        if not self.installed:
            return
        had_local, previous = self._saved
        # Replaced, never deleted: another thread (the ASR, one step ahead in the demo) may be looking the name up,
        # and transformers' lookup checks for a local entry and then reads it. The global function is what that
        # lookup finds when there is no local entry.
        ALL_ATTENTION_FUNCTIONS[ATTENTION_NAME] = previous if had_local else self.stock
        self._saved = None


class QKCapture:
    """Records post-RoPE q/k of chosen heads while the context is active.

    Use as a context manager around one sequence (a prefill and its decode steps, or one teacher-forced
    forward). Rows at absolute positions below `query_start_position` are not kept, so a long prompt costs
    no query memory; keys are always kept from position 0 because replay needs the full context.
    """

    def __init__(self, model: nn.Module, heads: Sequence[HeadRef], query_start_position: int = 0):
        if not heads:
            raise ValueError("QKCapture needs at least one head")
        self._modules = text_attention_modules(model)
        self._text_config = model.config.get_text_config()
        check_sdpa(self._text_config)
        self.layers: dict[int, LayerCapture] = self._build_layers(heads, query_start_position)
        self._by_module = {id(self._modules[layer]): cap for layer, cap in self.layers.items()}
        self._sdpa = SdpaOverride()

    def _build_layers(self, heads: Sequence[HeadRef], query_start_position: int) -> dict[int, LayerCapture]:
        return {layer: LayerCapture(layer=layer, query_heads=query_heads, kv_heads=kv_heads,
                                    query_start_position=query_start_position)
                for layer, (query_heads, kv_heads) in group_heads(self._modules, self._text_config, heads).items()}

    def capture_for(self, ref: HeadRef) -> tuple[LayerCapture, int]:
        """The layer capture holding `ref` and the head's slot within it."""
        cap = self.layers[ref.layer]
        return cap, cap.query_heads.index(ref.head)

    def _attention(self, module, query, key, value, attention_mask, **kwargs):
        cap = self._by_module.get(id(module))
        if cap is not None:
            positions = kwargs.get("position_ids")
            if positions is None:  # models that do not forward position ids: positions continue the keys
                positions = torch.arange(cap.n_keys, cap.n_keys + query.shape[2])
            else:
                positions = positions[0]
            cap.record(query, key, positions, kwargs.get("scaling"), kwargs.get("sliding_window"))
        return self._sdpa.stock(module, query, key, value, attention_mask, **kwargs)

    def __enter__(self) -> "QKCapture":
        self._sdpa.install(self._attention)
        return self

    def __exit__(self, *exc) -> None:
        self._sdpa.remove()


@contextmanager
def capture_heads(model: nn.Module, heads: Sequence[HeadRef], query_start_position: int = 0
                  ) -> Iterator[QKCapture]:
    """Context manager form of `QKCapture`."""
    with QKCapture(model, heads, query_start_position) as capture:
        yield capture
