"""Greedy decoding paths for the translator, each with q/k capture.

  eager     DynamicCache, eager q/k capture (`QKCapture`). Any device.
  static    StaticCache, graph-safe capture into static buffers (`StaticQKCapture`), and reuse of the
            prompt's KV for a stable prefix (instruction, few-shot, history) between consecutive calls.
  compiled  static + generate's torch.compile of the decode step (CUDA graphs with mode reduce-overhead).
  auto      compiled on CUDA, eager elsewhere.

Capture never changes the model's outputs: on a given path, logits with and without capture are
bit-identical. The static paths differ from eager in rounding only (attention over a padded cache, a
prefix prefilled in a separate call), which can flip a near-tied greedy token of a random-init net.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from transformers import CompileConfig, GenerationConfig, StaticCache

from alignatt.capture import HeadRef, capture_heads
from alignatt.static_capture import StaticQKCapture

logger = logging.getLogger(__name__)

DECODE_MODES = ("auto", "eager", "static", "compiled")
# What a failed compilation raises (inductor/triton errors arrive wrapped as BackendCompilerFailed; a
# fullgraph recompile past dynamo's limit as FailOnRecompileLimitHit).
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)


def generation_with_compile(generation: GenerationConfig, compile: bool, backend: str, mode: str
                            ) -> GenerationConfig:
    """A copy of `generation` whose decode step generate() compiles (fullgraph, so that a graph break is an
    error rather than a silent slowdown), or never compiles."""
    generation = copy.deepcopy(generation)
    if compile:
        compile_config = CompileConfig(fullgraph=True, backend=backend, mode=mode)
        # generate() compiles only on accelerators unless told otherwise; the user asked for it here.
        compile_config._compile_all_devices = True
        generation.compile_config = compile_config
    else:
        generation.disable_compile = True
    return generation


@dataclass(frozen=True)
class DecodeConfig:
    decode: str = field(default="auto", metadata={
        "help": "auto (compiled on CUDA, eager elsewhere), eager, static (static cache, prompt KV reuse), "
                "compiled (static + torch.compile with CUDA graphs)"})
    max_cache_tokens: int = field(default=2048, metadata={
        "help": "static cache length; a longer prompt + draft falls back to the eager path"})
    reuse_prompt_kv: bool = field(default=True, metadata={
        "help": "keep the KV of the prompt before the live source between calls (static paths)"})
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend"})
    compile_mode: str = field(default="reduce-overhead", metadata={
        "help": "torch.compile mode: reduce-overhead (CUDA graphs), default, max-autotune, ..."})

    def __post_init__(self):
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {self.decode!r}")
        if self.max_cache_tokens < 32:
            raise ValueError(f"max_cache_tokens must be at least 32, got {self.max_cache_tokens}")

    def resolved(self, device: torch.device) -> str:
        if self.decode == "auto":
            return "compiled" if device.type == "cuda" else "eager"
        return self.decode


@dataclass(frozen=True)
class Request:
    """One greedy generation. Rows from `capture_from` on are captured (None: no capture needed);
    the first `stable_len` tokens are expected to recur at the start of the next request."""

    input_ids: Sequence[int]
    generation: GenerationConfig
    capture_from: int | None = None
    stable_len: int = 0
    generate_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Generated:
    token_ids: list[int]
    captured: object | None  # QKCapture or CapturedSequence, both read by alignatt.replay
    reused_tokens: int = 0  # prompt tokens whose KV came from an earlier call


class Decoder(Protocol):
    def generate(self, request: Request) -> Generated: ...

    def warm_up(self, filler_ids: Sequence[int], generation: GenerationConfig) -> None: ...


def _run_generate(model, input_ids: torch.Tensor, generation: GenerationConfig, **kwargs) -> list[int]:
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=generation,
                                **kwargs)
    return output[0, input_ids.shape[1]:].tolist()


class EagerDecoder:
    def __init__(self, model, heads: Sequence[HeadRef]):
        self.model = model
        self.heads = tuple(heads)

    def generate(self, request: Request) -> Generated:
        input_ids = torch.tensor([list(request.input_ids)], device=self.model.device)
        if request.capture_from is None:
            return Generated(_run_generate(self.model, input_ids, request.generation, **request.generate_kwargs), None)
        with capture_heads(self.model, self.heads, query_start_position=request.capture_from) as capture:
            tokens = _run_generate(self.model, input_ids, request.generation, **request.generate_kwargs)
        return Generated(tokens, capture)

    def warm_up(self, filler_ids: Sequence[int], generation: GenerationConfig) -> None:
        """Nothing to compile."""


class PromptKV:
    """A StaticCache and a snapshot of its state after a stable prompt prefix, so that the next prompt
    with the same prefix starts from the snapshot instead of prefilling it again.

    The snapshot is a copy of every cache layer (buffers and lengths): sliding layers keep only the last
    window in a rolling buffer, so rewinding them needs the copy; full layers would only need the length.
    """

    def __init__(self, model, max_cache_len: int):
        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        self.prefix_ids: tuple[int, ...] = ()
        self._snapshot: list[dict[str, object]] = []

    def _layer_state(self, layer) -> dict[str, object]:
        state = {}
        for name in ("keys", "values", "cumulative_length"):
            value = getattr(layer, name, None)
            if isinstance(value, torch.Tensor):
                state[name] = value.clone()
        if hasattr(layer, "cumulative_length_int"):
            state["cumulative_length_int"] = layer.cumulative_length_int
        return state

    def _take_snapshot(self, prefix_ids: Sequence[int]) -> None:
        self.prefix_ids = tuple(prefix_ids)
        self._snapshot = [self._layer_state(layer) for layer in self.cache.layers]

    def _restore(self) -> None:
        for layer, state in zip(self.cache.layers, self._snapshot):
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    getattr(layer, name).copy_(value)  # in place: the compiled graph holds these addresses
                else:
                    setattr(layer, name, value)

    def _prefill(self, token_ids: Sequence[int], start: int) -> None:
        ids = torch.tensor([list(token_ids[start:])], device=self.model.device)
        with torch.no_grad():
            self.model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)

    def prepare(self, input_ids: Sequence[int], stable_len: int) -> int:
        """Fill the cache with the first `stable_len` tokens (from the snapshot when it matches, else by a
        prefill that also becomes the new snapshot); returns how many tokens the snapshot supplied."""
        stable_len = min(stable_len, len(input_ids) - 1)  # generate needs at least one new token
        matches = 0 < len(self.prefix_ids) <= stable_len and tuple(input_ids[:len(self.prefix_ids)]) == self.prefix_ids
        if matches:
            self._restore()
            start = len(self.prefix_ids)
        else:
            self.cache.reset()
            self.prefix_ids, self._snapshot, start = (), [], 0
        if start < stable_len:
            self._prefill(input_ids[:stable_len], start)
            self._take_snapshot(input_ids[:stable_len])
        return start



class StaticDecoder:
    """Static cache + graph-safe capture (+ torch.compile of the decode step when `compile`).

    The capture is installed around every model call of this decoder, needed or not: a compiled graph
    is specialised on the attention function, and the key rows of a reused prefix must have been written
    by the same prefill that filled the cache.
    """

    def __init__(self, model, heads: Sequence[HeadRef], config: DecodeConfig, compile: bool):
        self.model = model
        self.config = config
        self.compile = compile
        self.capture = StaticQKCapture(model, heads, config.max_cache_tokens)
        self.prompt_kv = PromptKV(model, config.max_cache_tokens)
        self.fallback = EagerDecoder(model, heads)
        self.compile_failed = False
        self._warned_long = False

    def _generation_config(self, generation: GenerationConfig) -> GenerationConfig:
        return generation_with_compile(generation, self.compile, self.config.compile_backend, self.config.compile_mode)

    def fits(self, request: Request) -> bool:
        return len(request.input_ids) + request.generation.max_new_tokens <= self.config.max_cache_tokens

    def generate(self, request: Request) -> Generated:
        if self.compile_failed:
            return self.fallback.generate(request)
        if not self.fits(request):
            if not self._warned_long:
                logger.warning("prompt of %d tokens + %d new exceeds the static cache (%d): using the eager path",
                               len(request.input_ids), request.generation.max_new_tokens,
                               self.config.max_cache_tokens)
                self._warned_long = True
            return self.fallback.generate(request)
        try:
            return self._generate_static(request)
        except COMPILE_ERRORS as err:
            if not self.compile:
                raise
            # A talk must not die of a compiler error: decode eagerly (same outputs, slower) from here on.
            logger.error("compiled decoding failed, decoding eagerly from now on: %s", err)
            self.compile_failed = True
            return self.fallback.generate(request)

    def _generate_static(self, request: Request) -> Generated:
        input_ids = torch.tensor([list(request.input_ids)], device=self.model.device)
        stable_len = request.stable_len if self.config.reuse_prompt_kv else 0
        with self.capture:
            reused = self.prompt_kv.prepare(request.input_ids, stable_len)
            tokens = _run_generate(self.model, input_ids, self._generation_config(request.generation),
                                   past_key_values=self.prompt_kv.cache, **request.generate_kwargs)
        captured = None
        if request.capture_from is not None:
            n_fed = len(request.input_ids) + len(tokens) - 1  # the last generated token is never fed back
            captured = self.capture.sequence(request.capture_from, n_fed)
        return Generated(tokens, captured, reused)


    def warm_up(self, filler_ids: Sequence[int], generation: GenerationConfig) -> None:
        """Compile, before the talk, every decode graph a talk can meet. A static sliding layer has two
        branches (window filling up, window rolling), each its own graph: a decode that crosses the
        window compiles both, so no 100-second compile lands mid-talk."""
        if not self.compile:
            return
        text_config = self.model.config.get_text_config()
        window = getattr(text_config, "sliding_window", None) or 0
        n_new = 4
        length = window - n_new // 2 if 0 < window < self.config.max_cache_tokens - n_new else 16
        ids = (list(filler_ids) * (length // max(len(filler_ids), 1) + 1))[:length]
        generation = copy.deepcopy(generation)
        generation.max_new_tokens = generation.min_new_tokens = n_new
        generation.stop_strings = None
        started = time.perf_counter()
        self.generate(Request(input_ids=ids, generation=generation, capture_from=length - 1))
        if not self.compile_failed:
            logger.info("decode graphs compiled in %.1f s (warm-up prompt of %d tokens)",
                        time.perf_counter() - started, length)


def make_decoder(model, heads: Sequence[HeadRef], config: DecodeConfig) -> Decoder:
    mode = config.resolved(model.device)
    logger.info("decoding path: %s", mode)
    if mode == "eager":
        return EagerDecoder(model, heads)
    return StaticDecoder(model, heads, config, compile=mode == "compiled")
