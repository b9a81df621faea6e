"""Greedy decoding paths for the translator, each with q/k capture.

  eager     DynamicCache, eager q/k capture (`QKCapture`). Any device.
  static    StaticCache, graph-safe capture into static buffers (`StaticQKCapture`), and reuse of the
            KV of the longest prefix a call shares with the previous one (instruction, history, unchanged
            source words); with a draft-reuse verifier (`DraftVerifier`), a call's first tokens, proposed from
            earlier calls, are verified with its prompt in one pass.
  compiled  static + generate's torch.compile of the decode step (CUDA graphs with mode reduce-overhead).
  auto      compiled on CUDA, eager elsewhere.

Speed-ups that keep the greedy tokens plug in through two hooks, `GreedyHead` (the LM head of a generate() call)
and `DraftVerifier` (draft reuse on the static path), which `make_decoder` asks a `DecodeAccel` for. Without one
the decoder uses the model's own head and generate() alone; this package never imports an implementation
(`alignatt.accel` has them, and `alignatt.factory` plugs them in).

Capture never changes the model's outputs: on a given path, logits with and without capture are
bit-identical. The static paths differ from eager in rounding only (attention over a padded cache, a
prefix computed by an earlier call, tokens verified in one pass), which can flip a near-tied greedy token of a
random-init net.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol, Sequence

import torch
from transformers import GenerationConfig, StaticCache, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import StaticLayer

from alignatt.generation import CACHE_KWARG, COMPILE_ERRORS, generation_with_compile, resolve_decode_mode
from alignatt.mt.capture import HeadRef, capture_heads
from alignatt.mt.static_capture import StaticQKCapture

logger = logging.getLogger(__name__)

DECODE_MODES = ("auto", "eager", "static", "compiled")
@dataclass(frozen=True)
class DecodeConfig:
    decode: str = field(default="auto", metadata={
        "help": "auto (compiled on CUDA, eager elsewhere), eager, static (static cache, prompt KV reuse), "
                "compiled (static + torch.compile with CUDA graphs)"})
    max_cache_tokens: int = field(default=2048, metadata={
        "help": "static cache length; a longer prompt + draft falls back to the eager path"})
    reuse_prompt_kv: bool = field(default=True, metadata={
        "help": "start each call after the longest prefix it shares with the previous one (static paths)"})
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend"})
    compile_mode: str = field(default="reduce-overhead", metadata={
        "help": "torch.compile mode: reduce-overhead (CUDA graphs), default, max-autotune, ..."})

    def __post_init__(self):
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {self.decode!r}")
        if self.max_cache_tokens < 32:
            raise ValueError(f"max_cache_tokens must be at least 32, got {self.max_cache_tokens}")

    def resolved(self, device: torch.device) -> str:
        return resolve_decode_mode(self.decode, device)


# Called after every generated token with the capture so far (every position but the newest token's) and the
# generated token ids; True ends the generation there.
StopWhen = Callable[[object, list[int]], bool]


@dataclass(frozen=True)
class Request:
    """One greedy generation. Rows from `capture_from` on are captured (None: no capture needed)."""

    input_ids: Sequence[int]
    generation: GenerationConfig
    capture_from: int | None = None
    generate_kwargs: dict = field(default_factory=dict)
    stop_when: StopWhen | None = None

    def __post_init__(self):
        if self.stop_when is not None and self.capture_from is None:
            raise ValueError("a stop callback reads the capture: set capture_from")


class _CaptureWatch(StoppingCriteria):
    """Ends generation when `stop_when` says so, given `read(n_fed)`: the capture of the first n_fed positions."""

    def __init__(self, read: Callable[[int], object], stop_when: StopWhen, n_prompt_tokens: int):
        self.read = read
        self.stop_when = stop_when
        self.n_prompt_tokens = n_prompt_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        generated = input_ids[0, self.n_prompt_tokens:].tolist()
        stop = self.stop_when(self.read(input_ids.shape[1] - 1), generated)  # the newest token is not fed yet
        return torch.full((input_ids.shape[0],), bool(stop), dtype=torch.bool, device=input_ids.device)


def _generate_kwargs(request: Request, read: Callable[[int], object]) -> dict:
    """The request's generate() arguments, with its stop callback added to its stopping criteria."""
    if request.stop_when is None:
        return request.generate_kwargs
    return {**request.generate_kwargs, "stopping_criteria": stopping_criteria(request, read)}


def stopping_criteria(request: Request, read: Callable[[int], object]) -> StoppingCriteriaList:
    """The request's stopping criteria and its stop callback (which counts the tokens after the request's prompt)."""
    criteria = list(request.generate_kwargs.get("stopping_criteria", ()))
    if request.stop_when is not None:
        criteria.append(_CaptureWatch(read, request.stop_when, len(request.input_ids)))
    return StoppingCriteriaList(criteria)


@dataclass(frozen=True)
class Generated:
    token_ids: list[int]
    captured: object | None  # QKCapture or CapturedSequence, both read by alignatt.mt.replay
    reused_tokens: int = 0  # prompt tokens whose KV came from an earlier call


class Decoder(Protocol):
    def generate(self, request: Request) -> Generated: ...

    def warm_up(self, filler_ids: Sequence[int], generation: GenerationConfig) -> None: ...


class GreedyHead(Protocol):
    """The LM head greedy generate() calls decode with; it must choose the tokens the model's own head would."""

    def generate_args(self, generation: GenerationConfig, generate_kwargs: dict, n_prompt_tokens: int
                      ) -> tuple[GenerationConfig, dict, ContextManager]:
        """generate()'s config and kwargs for one call over `n_prompt_tokens` of prompt, and the context to run it
        in (which installs the head for the call)."""


class ModelHead:
    """The model's own head: generate() as the caller asked for it."""

    def generate_args(self, generation: GenerationConfig, generate_kwargs: dict, n_prompt_tokens: int
                      ) -> tuple[GenerationConfig, dict, ContextManager]:
        return generation, generate_kwargs, contextlib.nullcontext()


MODEL_HEAD = ModelHead()

# forward(sequence, n_rows): one forward pass of the model over `sequence` after the positions the call reuses from
# the static cache, with the head on its last `n_rows` positions; the cache then holds `sequence`.
PassForward = Callable[[list[int], int], Any]


class DraftVerifier(Protocol):
    """Draft reuse on the static path: a call's first tokens, proposed from earlier calls, verified with its prompt
    in one forward pass; the tokens generate() would give, up to the rounding of a pass over several positions."""

    def verify(self, request: Request, forward: PassForward, criteria: StoppingCriteriaList
               ) -> tuple[list[int], bool]:
        """The call's verified first tokens (none when nothing is proposed or the request is not one it can verify),
        and whether generate() would have stopped within them (an end token, the budget, `criteria`)."""

    def remember(self, token_ids: Sequence[int]) -> None:
        """A call's prompt and generated tokens, where later calls' proposals come from."""


@dataclass(frozen=True)
class DecodeHooks:
    """What a decoder uses besides the model and generate(): its greedy head and, on the static path without
    compilation, a draft-reuse verifier."""

    head: GreedyHead = MODEL_HEAD
    draft_reuse: DraftVerifier | None = None


# What make_decoder asks for a model's hooks, given the resolved decoding path ("eager", "static", "compiled").
DecodeAccel = Callable[[Any, str], DecodeHooks]


def generate_new_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation: GenerationConfig,
                        head: GreedyHead, **kwargs) -> torch.Tensor:
    """(B, new) the tokens generate() adds after `input_ids` (B, n), with `head` installed for the call."""
    generation, kwargs, installed = head.generate_args(generation, kwargs, input_ids.shape[1])
    with torch.no_grad(), installed:
        output = model.generate(input_ids, attention_mask=attention_mask, generation_config=generation, **kwargs)
    return output[:, input_ids.shape[1]:]


def _run_generate(model, input_ids: torch.Tensor, generation: GenerationConfig, head: GreedyHead,
                  **kwargs) -> list[int]:
    return generate_new_tokens(model, input_ids, torch.ones_like(input_ids), generation, head, **kwargs)[0].tolist()


class EagerDecoder:
    def __init__(self, model, heads: Sequence[HeadRef], head: GreedyHead = MODEL_HEAD):
        self.model = model
        self.heads = tuple(heads)
        self.head = head

    def generate(self, request: Request) -> Generated:
        input_ids = torch.tensor([list(request.input_ids)], device=self.model.device)
        if request.capture_from is None:
            return Generated(_run_generate(self.model, input_ids, request.generation, self.head,
                                           **request.generate_kwargs), None)
        with capture_heads(self.model, self.heads, query_start_position=request.capture_from) as capture:
            kwargs = _generate_kwargs(request, lambda n_fed: capture)  # the live capture holds what was fed
            tokens = _run_generate(self.model, input_ids, request.generation, self.head, **kwargs)
        return Generated(tokens, capture)

    def warm_up(self, filler_ids: Sequence[int], generation: GenerationConfig) -> None:
        """Nothing to compile."""


def position_indexed_cache(model, max_cache_len: int) -> StaticCache:
    """A StaticCache whose sliding-window layers are full-length buffers indexed by position, like the
    full layers; the window is applied by the attention mask, as on the eager path.

    transformers' rolling StaticSlidingWindowLayer keeps a Python int that becomes a symbolic input of the
    compiled decode step (CUDA graphs re-record for each of its values, i.e. for each new position), has a
    second graph once the window fills, and cannot be rewound once it has rolled. The cost is memory and
    reads of max_cache_len keys instead of a window: for E4B at 2048 tokens, ~80 MB and ~1% of a token's
    weight traffic.
    """
    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    for index, layer in enumerate(cache.layers):
        if getattr(layer, "is_sliding", False):
            cache.layers[index] = StaticLayer(max_cache_len=max_cache_len)
    return cache


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(1 for _ in itertools.takewhile(lambda pair: pair[0] == pair[1], zip(a, b)))


class PromptKV:
    """A position-indexed static cache that remembers which tokens its positions hold, so that a new
    prompt starts after the longest prefix it shares with what was fed last (instruction, history, the
    source words the ASR did not change, even accepted target that was drafted): rewinding is setting the
    length, as later writes overwrite the positions after it and the causal mask hides the rest.
    """

    def __init__(self, model, max_cache_len: int):
        self.cache = position_indexed_cache(model, max_cache_len)
        self.cached_ids: tuple[int, ...] = ()  # token at each position whose K/V the cache holds

    def rewind(self, input_ids: Sequence[int], reuse: bool) -> int:
        """Keep the longest cached prefix of `input_ids` (at least one token is left to feed: generate needs
        one) and return its length."""
        keep = min(common_prefix_len(self.cached_ids, input_ids), len(input_ids) - 1) if reuse else 0
        for layer in self.cache.layers:
            if isinstance(layer, StaticLayer):
                layer.cumulative_length.fill_(keep)  # in place: the compiled graph holds this address
        self.cached_ids = self.cached_ids[:keep]
        return keep

    def fed(self, token_ids: Sequence[int]) -> None:
        """Record what the cache holds after a call that fed `token_ids` (prompt + generated, last excluded)."""
        self.cached_ids = tuple(token_ids)


class StaticDecoder:
    """Static cache + graph-safe capture (+ torch.compile of the decode step when `compile`).

    The capture is installed around every model call of this decoder, needed or not: a compiled graph
    is specialised on the attention function, and the key rows of a reused prefix must have been written
    by the same call that filled the cache at those positions.
    """

    def __init__(self, model, heads: Sequence[HeadRef], config: DecodeConfig, compile: bool,
                 head: GreedyHead = MODEL_HEAD, draft_reuse: DraftVerifier | None = None):
        self.model = model
        self.config = config
        self.compile = compile
        self.head = head
        self.heads = tuple(heads)
        self.capture = StaticQKCapture(model, heads, config.max_cache_tokens)
        self.prompt_kv = PromptKV(model, config.max_cache_tokens)
        self.fallback = EagerDecoder(model, heads, head)
        # Not with compiled decoding: an eager pass between graph replays would be the one part left uncompiled.
        self.draft_reuse = draft_reuse if not compile else None
        self.compile_failed = False
        self._warned_long = False

    def generation_config(self, generation: GenerationConfig) -> GenerationConfig:
        """`generation` as this decoder runs it (with its compile settings)."""
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
        input_ids = list(request.input_ids)
        read = lambda n_fed: self.capture.sequence(request.capture_from, n_fed)  # noqa: E731
        with self.capture:
            reused = self.prompt_kv.rewind(input_ids, self.config.reuse_prompt_kv)
            verified, finished = self._verify_draft(request, read, reused)
            rest = []
            if not finished:
                generation = request.generation
                if verified:  # generate() goes on after the verified tokens, on the cache the pass filled
                    self.prompt_kv.rewind(input_ids + verified, reuse=True)
                    generation = after_tokens(generation, len(verified), self.model)
                rest = _run_generate(self.model, torch.tensor([input_ids + verified], device=self.model.device),
                                     self.generation_config(generation), self.head,
                                     **{CACHE_KWARG: self.prompt_kv.cache}, **_generate_kwargs(request, read))
        tokens = verified + rest
        fed = input_ids + tokens[:-1]  # the last generated token is never fed back
        self.prompt_kv.fed(fed)
        if self.draft_reuse is not None:
            self.draft_reuse.remember(input_ids + tokens)
        captured = None
        if request.capture_from is not None:
            captured = self.capture.sequence(request.capture_from, len(fed))
        return Generated(tokens, captured, reused)

    def _verify_draft(self, request: Request, read: Callable[[int], object], reused: int
                      ) -> tuple[list[int], bool]:
        """The call's first tokens as the draft-reuse verifier accepts them (none without one), and whether
        generate() would have stopped within them."""
        if self.draft_reuse is None:
            return [], False

        def forward(sequence: list[int], n_rows: int):
            output = self._forward(sequence, reused, n_rows)
            self.prompt_kv.fed(sequence)
            return output
        return self.draft_reuse.verify(request, forward, stopping_criteria(request, read))

    def _forward(self, sequence: list[int], reused: int, n_rows: int):
        """The model's forward over `sequence` after its `reused` cached positions, with the head on the last
        `n_rows`."""
        ids = torch.tensor([sequence], device=self.model.device)
        inputs = self.model.prepare_inputs_for_generation(
            ids, next_sequence_length=len(sequence) - reused, **{CACHE_KWARG: self.prompt_kv.cache},
            attention_mask=torch.ones_like(ids), position_ids=torch.arange(len(sequence), device=ids.device)[None],
            use_cache=True, logits_to_keep=n_rows, is_first_iteration=True)
        with torch.no_grad():
            return self.model(**inputs, return_dict=True)

    def warm_up(self, filler_ids: Sequence[int], generation: GenerationConfig) -> None:
        """Compile the decode step before the talk (with position-indexed caches one graph serves every
        prompt length), so no 100-second compile lands on the first chunk."""
        if not self.compile:
            return
        generation = copy.deepcopy(generation)
        generation.max_new_tokens = generation.min_new_tokens = 4  # several decode steps, whatever the model says
        generation.stop_strings = None
        started = time.perf_counter()
        self.generate(Request(input_ids=list(filler_ids), generation=generation, capture_from=len(filler_ids) - 1))
        if not self.compile_failed:
            logger.info("decode step compiled in %.1f s", time.perf_counter() - started)


def as_id_list(token_ids: int | Sequence[int] | None) -> list[int]:
    """A generation config's token id field (one id, several or none) as a list."""
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


def after_tokens(generation: GenerationConfig, n_tokens: int, model) -> GenerationConfig:
    """`generation` for a generate() call that goes on after `n_tokens` tokens of the same generation: fewer new
    tokens, and no suppression of the first token (it is no longer the first). None would let generate() fill
    in the model's own begin_suppress_tokens; [] only where there is one, as generate() turns even [] into a
    processor."""
    generation = copy.deepcopy(generation)
    generation.max_new_tokens -= n_tokens
    generation.begin_suppress_tokens = [] if model.generation_config.begin_suppress_tokens else None
    return generation


def stop_within(head: list[int], input_ids: list[int], merged: GenerationConfig,
                criteria: StoppingCriteriaList) -> tuple[list[int], bool]:
    """`head` up to where generate() would have stopped, token by token (an end token, the token budget, the
    stopping criteria), and whether it stopped there."""
    ends = set(as_id_list(merged.eos_token_id))
    for n_tokens in range(1, len(head) + 1):
        sequence = torch.tensor([input_ids + head[:n_tokens]])
        if head[n_tokens - 1] in ends or n_tokens >= merged.max_new_tokens or bool(criteria(sequence, None).any()):
            return head[:n_tokens], True
    return head, False


def make_decoder(model, heads: Sequence[HeadRef], config: DecodeConfig, accel: DecodeAccel | None = None) -> Decoder:
    """The decoder for `config`'s path on this model, with the hooks `accel` gives for that path (None: the model's
    own head, no draft reuse)."""
    mode = config.resolved(model.device)
    logger.info("decoding path: %s", mode)
    hooks = accel(model, mode) if accel is not None else DecodeHooks()
    if mode == "eager":
        return EagerDecoder(model, heads, hooks.head)
    return StaticDecoder(model, heads, config, compile=mode == "compiled", head=hooks.head,
                         draft_reuse=hooks.draft_reuse)
