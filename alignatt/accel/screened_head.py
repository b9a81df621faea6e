"""Greedy decoding's LM head on CPU, screened: the fp32 head's own greedy choice at about half its cost.

On CPU the fp32 head of a large vocabulary is a third of a decode step (Gemma-3-270M: 262k x 640, 671 MB read
per token, memory-bound), although greedy decoding needs only the largest processed logit. The screen
  1. computes every logit from an int8 copy of the head (per-row scales, bf16 activations) together with a bound
     on its distance from the fp32 head's value,
  2. computes in fp32 only the rows whose upper bound can still win (the repetition penalty only lowers a score,
     so it is allowed for); every other row is -inf,
  3. after the logits processors, checks that the winner beats every other row by more than fp32 rounding can
     move them. When it does not (a near-tie), the token's logits are recomputed with the full fp32 head.
So the chosen token is always the one the full head would choose. The screen applies the two processors greedy
drafting uses (repetition penalty, tokens suppressed at the first step) itself, so that the fallback can apply
them to the full logits; it is used only where those are the only processors.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                    SuppressTokensAtBeginLogitsProcessor)

logger = logging.getLogger(__name__)

LM_HEAD_MODES = ("auto", "full", "screened")
MAX_CANDIDATE_SHARE = 0.25  # above this share of the rows in fp32, the screen would cost more than it saves
MIN_SCREENED_VOCAB = 32768  # below this the fp32 head is cheap and the screen's fixed costs dominate
SAFETY = 2.0  # the kernel's rounding is bounded from how such kernels sum, not read from its source: doubled
BF16_ROUNDING = 2.0 ** -8  # relative rounding of the kernel's bf16 output (2^-9), with slack
# What generate() builds a logits processor from, with the value that builds none (transformers 5.x,
# GenerationMixin._get_logits_processor). The screen applies the repetition penalty and the first-step
# suppression itself; any other processor, from the call's config or the model's defaults, turns it off.
NEUTRAL = {"guidance_scale": (None, 1.0), "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0),
           "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
           "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
           "forced_eos_token_id": (None,), "remove_invalid_values": (None, False),
           "exponential_decay_length_penalty": (None,), "suppress_tokens": (None,), "watermarking_config": (None,),
           "renormalize_logits": (None, False), "do_sample": (None, False), "num_beams": (None, 1),
           "output_scores": (None, False), "output_logits": (None, False)}
# generate() arguments the decoders pass (the attention mask is passed apart); any other may change the config.
SCREENABLE_KWARGS = {"stopping_criteria", "past_key_values", "cache"}  # the cache's name since transformers 5.24
# The processed scores (1, vocab) of row r of a verification pass, given the tokens before the one it predicts
# (1, n) as generate()'s logits processors see them (`alignatt.accel.draft_reuse`).
RowScores = Callable[[int, torch.Tensor], torch.Tensor]


def dot_rounding(n_terms: int) -> float:
    """gamma_n: any fp32 sum of n products is within gamma_n * sum(|products|) of the exact value."""
    unit = 2.0 ** -24
    return n_terms * unit / (1 - n_terms * unit)


@dataclass(frozen=True)
class QuantisedHead:
    """An int8 copy of an fp32 head (rows scaled to +-127) and what bounds its error per row."""

    weight: torch.Tensor  # (vocab, hidden) fp32, the model's own
    q: torch.Tensor  # (vocab, hidden) int8
    scales: torch.Tensor  # (vocab,) bf16, what torch._weight_int8pack_mm multiplies each row by
    err_max: torch.Tensor  # (vocab,) max |w - scale * q| over the row
    err_norm: torch.Tensor  # (vocab,) ||w - scale * q||_2
    scaled_norm: torch.Tensor  # (vocab,) ||scale * q||_2
    row_norm: torch.Tensor  # (vocab,) ||w||_2

    @classmethod
    def of(cls, weight: torch.Tensor, rows_per_chunk: int = 8192) -> "QuantisedHead":
        weight = weight.detach()
        parts = [cls._quantise(chunk) for chunk in weight.split(rows_per_chunk)]  # chunks stay in cache
        q, scales, err_max, err_norm, scaled_norm, row_norm = (torch.cat(column) for column in zip(*parts))
        return cls(weight, q, scales, err_max, err_norm, scaled_norm, row_norm)

    @staticmethod
    def _quantise(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scales = (rows.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
        q = torch.round(rows / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
        scaled = q.float() * scales.float()[:, None]  # exact: an 8-bit by a 7-bit significand
        err = rows - scaled
        return q, scales, err.abs().amax(dim=1), err.norm(dim=1), scaled.norm(dim=1), rows.norm(dim=1)

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    def approximate(self, hidden: torch.Tensor, safety: float = SAFETY) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, bound) for one hidden row (hidden,): |logit - the fp32 head's logit| <= bound, row by row.

        Part of the bound is exact: the int8 weights' and the bf16 input's error, computed from the very values
        the kernel is given. The rest, what the kernel's fp32 sums and bf16 output add (and the fp32 head's own
        sum), is taken `safety` times."""
        rounded = hidden.to(torch.bfloat16)
        approx = torch._weight_int8pack_mm(rounded[None], self.q, self.scales)[0].float()
        gamma = dot_rounding(self.hidden_size)
        h1, h2 = hidden.abs().sum().item(), hidden.norm().item()
        input_rounding = (hidden - rounded.float()).norm().item()
        bound = torch.minimum(self.err_max * h1, self.err_norm * h2)
        bound.add_(self.scaled_norm, alpha=input_rounding + safety * gamma * rounded.float().norm().item())
        bound.add_(self.row_norm, alpha=safety * gamma * h2)
        bound.add_(approx.abs(), alpha=safety * BF16_ROUNDING)
        return approx, bound

    def exact(self, hidden: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 logits of `rows` and how far another summation order (the full head's) can put each."""
        weight = self.weight.index_select(0, rows)
        values = torch.nn.functional.linear(hidden, weight)
        spread = (weight.abs() @ hidden.abs()) * (2 * dot_rounding(self.hidden_size))
        return values, spread


def self_check(quantised: QuantisedHead, n_probes: int = 6) -> bool:
    """Whether the int8 kernel stays within its bound, without the safety factor, on probes of several scales
    (a kernel that rounds differently from what the bound assumes is caught here, once, instead of trusted)."""
    generator = torch.Generator().manual_seed(0)
    probes = [torch.randn(quantised.hidden_size, generator=generator) * scale
              for scale in (0.1, 1.0, 10.0, 100.0)[:n_probes]]
    rows = quantised.weight[torch.randint(0, quantised.weight.shape[0], (2,), generator=generator)]
    probes += [row / row.norm().clamp_min(1e-12) * 100 for row in rows]  # aligned with a row: one large logit
    for probe in probes:
        approx, bound = quantised.approximate(probe, safety=1.0)
        full = torch.nn.functional.linear(probe, quantised.weight)
        if not bool(((approx - full).abs() <= bound).all()):
            return False
    return True


def pays_off(quantised: QuantisedHead, repeats: int = 3) -> bool:
    """Whether the screen's int8 pass is clearly faster than the fp32 head on this CPU (it is not without
    native bf16/int8 dot products)."""
    hidden = torch.randn(quantised.hidden_size)

    def best_of(run) -> float:
        run()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return min(times)

    screened = best_of(lambda: quantised.approximate(hidden))
    full = best_of(lambda: torch.nn.functional.linear(hidden, quantised.weight))
    return screened < 0.8 * full


@dataclass
class ScreenCounts:
    tokens: int = 0
    fallbacks: int = 0  # tokens recomputed with the full head
    candidates: int = 0  # rows computed in fp32, summed over tokens


@dataclass
class _Pending:
    """What the head left for the processor: the hidden row and what was computed from it."""

    hidden: torch.Tensor  # (1, 1, hidden) as the model's head received it
    rows: torch.Tensor | None = None  # candidate rows (None: the full head ran)
    spread: torch.Tensor | None = None  # per candidate: how far the full head's value may be
    others_max: float = float("-inf")  # upper bound of every non-candidate logit


class _ScreenedHeadModule(nn.Module):
    """Stands in for the model's lm_head during one generate() call."""

    def __init__(self, session: "_Session"):
        super().__init__()
        self.session = session

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.session.head(hidden)


class _Session(LogitsProcessor):
    """One generate() call: the head computes candidate logits, this processor applies the penalty and the
    first-step suppression, then keeps the greedy choice only if it is certain, else recomputes it in full."""

    def __init__(self, screen: "ScreenedHead", generation: GenerationConfig, n_prompt_tokens: int):
        self.screen = screen
        self.penalty = float(generation.repetition_penalty or 1.0)
        suppressed = list(generation.begin_suppress_tokens or ())
        vocab_size = screen.quantised.weight.shape[0]
        self.suppressed = torch.tensor([i for i in suppressed if 0 <= i < vocab_size], dtype=torch.long)
        self.processors = greedy_processors(generation, n_prompt_tokens)
        self.pending: _Pending | None = None

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        quantised = self.screen.quantised
        if hidden.shape[0] != 1 or hidden.shape[1] != 1:  # not one greedy position: nothing to screen
            return self._unscreened(hidden)
        row = hidden[0, 0]
        approx, bound = quantised.approximate(row)
        lower = approx - bound
        if len(self.suppressed):  # a suppressed row cannot be the one every winner must beat
            lower[self.suppressed] = float("-inf")
        best_lower = lower.max().item()
        # The winner's raw logit is at least best_lower, and the penalty (>= 1) can lower it to threshold.
        threshold = best_lower / self.penalty if best_lower > 0 else best_lower * self.penalty
        upper = approx + bound
        is_candidate = upper >= threshold
        rows = is_candidate.nonzero()[:, 0]
        if len(rows) > MAX_CANDIDATE_SHARE * len(approx):  # a flat distribution: the full head is cheaper
            return self._unscreened(hidden)
        others_max = upper.masked_fill_(is_candidate, float("-inf")).max().item()
        values, spread = quantised.exact(row, rows)
        logits = torch.full((1, 1, approx.shape[0]), float("-inf"))
        logits[0, 0, rows] = values
        self.pending = _Pending(hidden, rows, spread, others_max)
        return logits

    def _unscreened(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own head output; the processor then only applies the processors."""
        self.pending = _Pending(hidden)
        return torch.nn.functional.linear(hidden, self.screen.quantised.weight)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        pending, self.pending = self.pending, None
        if pending is None or pending.rows is None:
            return self.processors(input_ids, scores)
        counts = self.screen.counts
        counts.tokens += 1
        counts.candidates += len(pending.rows)
        processed = self.processors(input_ids, scores)
        if self._certain(processed[0], pending):
            return processed
        counts.fallbacks += 1
        return self.processors(input_ids, self.screen.full_logits(pending.hidden)[:, -1].to(torch.float32))

    def _certain(self, processed: torch.Tensor, pending: _Pending) -> bool:
        """The full head would choose the same token: the winner's margin over the best other candidate and over
        every non-candidate exceeds what the full head's rounding (times the penalty) can change."""
        values = processed[pending.rows]
        margins = pending.spread * self.penalty
        if len(values) == 0:
            return False
        best = int(values.argmax())
        best_value = values[best].item()
        if best_value == float("-inf"):
            return False
        others_max = self.screen.softcap(pending.others_max)  # the penalty only lowers a non-candidate
        if best_value - margins[best].item() <= others_max:
            return False
        rest = values.clone()
        rest[best] = float("-inf")
        return bool((best_value - margins[best] > rest + margins).all())


@dataclass(frozen=True)
class GreedyProcessors:
    """The logits processors generate() builds for a config `ScreenedHead.applies` accepts: the repetition penalty
    (every step) and the suppression of begin_suppress_tokens (None when there is none). The suppression is applied
    at the first step only (input ids as long as the prompt): after it, it changes nothing, yet builds a
    vocabulary-sized mask at every token (about 2 ms for Gemma's 262k rows on CPU)."""

    every_step: tuple[LogitsProcessor, ...]
    first_step: LogitsProcessor | None
    n_prompt_tokens: int

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self.every_step:
            scores = processor(input_ids, scores)
        if self.first_step is not None and input_ids.shape[-1] == self.n_prompt_tokens:
            scores = self.first_step(input_ids, scores)
        return scores


def greedy_processors(generation: GenerationConfig, n_prompt_tokens: int) -> GreedyProcessors:
    penalty = float(generation.repetition_penalty or 1.0)
    every_step = (RepetitionPenaltyLogitsProcessor(penalty),) if penalty != 1.0 else ()
    suppressed = list(generation.begin_suppress_tokens or ())
    first_step = SuppressTokensAtBeginLogitsProcessor(suppressed, n_prompt_tokens) if suppressed else None
    return GreedyProcessors(every_step, first_step, n_prompt_tokens)


def merged_generation_config(model, generation: GenerationConfig) -> GenerationConfig | None:
    """The config generate() will decode with: `generation` with the model's defaults where it says None."""
    try:
        return model._prepare_generation_config(generation)[0]
    except Exception as err:  # a private API: if it changes, decode as plainly as possible rather than guess
        logger.warning("cannot read generate()'s merged config (%s): full fp32 head, no draft reuse", err)
        return None


class ScreenedHead:
    """The screen for one model: its int8 head copy, and what it counted."""

    def __init__(self, model, quantised: QuantisedHead):
        self.model = model
        self.quantised = quantised
        self.weight_version = (quantised.weight.data_ptr(), quantised.weight._version)
        self.warned_stale = False
        self.softcap_value = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self.counts = ScreenCounts()

    def head_is_hooked(self) -> bool:
        """Whether hooks change what the model's head returns (the screen would bypass them)."""
        head = self.model.lm_head
        return bool(head._forward_hooks or head._forward_pre_hooks or hasattr(head, "_hf_hook")
                    or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)

    def ready(self) -> bool:
        """Whether the screen may stand in for the head now: nothing hooks the head, and it still holds the weights
        the int8 copy was made from (warned once where it does not)."""
        if self.head_is_hooked():
            return False
        if not self.weights_unchanged():
            if not self.warned_stale:
                logger.warning("LM head: full fp32 (the head's weights changed since its int8 copy was made)")
                self.warned_stale = True
            return False
        return True

    def softcap(self, logit: float) -> float:
        """The model's final soft cap, which it applies after the head (monotone: it keeps every bound)."""
        if self.softcap_value is None or logit in (float("inf"), float("-inf")):
            return logit
        return float(torch.tanh(torch.tensor(logit / self.softcap_value)) * self.softcap_value)

    def capped(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model's forward makes of its head's output (the soft cap, where it has one)."""
        if self.softcap_value is None:
            return logits
        return torch.tanh(logits / self.softcap_value) * self.softcap_value

    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the model's forward returns for `hidden` without the screen (head, then the soft cap)."""
        return self.capped(torch.nn.functional.linear(hidden, self.quantised.weight))

    def processed_rows(self, hidden: torch.Tensor, merged: GenerationConfig, n_prompt_tokens: int) -> RowScores:
        """`RowScores` for the hidden rows (n_rows, hidden) of one pass: row r's processed scores
        as generate() would hand them to its greedy choice after the first r generated tokens, with the full head's
        greedy token, screened like a generate() step (`merged` as `session` takes it)."""
        session = self.session(merged, n_prompt_tokens)

        def scores_of(row: int, context: torch.Tensor) -> torch.Tensor:
            logits = self.capped(session.head(hidden[row].view(1, 1, -1)))[:, -1]
            return session(context, logits)
        return scores_of

    def merged(self, generation: GenerationConfig) -> GenerationConfig | None:
        return merged_generation_config(self.model, generation)

    @staticmethod
    def applies(merged: GenerationConfig) -> bool:
        """Greedy, and no logits processor but the two the screen applies itself."""
        if merged.repetition_penalty is not None and merged.repetition_penalty < 1.0:
            return False  # a penalty below 1 raises scores: the candidates' bound would not hold
        return all(getattr(merged, name, None) in neutral for name, neutral in NEUTRAL.items())

    def weights_unchanged(self) -> bool:
        """Whether the head still holds the weights the int8 copy was made from."""
        weight = self.model.lm_head.weight
        return (weight.data_ptr(), weight._version) == self.weight_version

    def session(self, merged: GenerationConfig, n_prompt_tokens: int) -> _Session:
        """The session of one generate() call that decodes with `merged` (generate()'s merged config)."""
        return _Session(self, merged, n_prompt_tokens)

    def install(self, session: _Session) -> "InstalledHead":
        return InstalledHead(self.model, _ScreenedHeadModule(session))

    def generate_args(self, generation: GenerationConfig, generate_kwargs: dict, n_prompt_tokens: int
                      ) -> tuple[GenerationConfig, dict, ContextManager]:
        """The decoder's `GreedyHead` hook (`alignatt.mt.decoding`): `screened_generate_args`, the full head's
        unchanged arguments where the screen does not serve."""
        generation, kwargs, installed = screened_generate_args(self, generation, generate_kwargs, n_prompt_tokens)
        return generation, kwargs, installed or contextlib.nullcontext()


class InstalledHead:
    """Swaps the model's lm_head for another module (the screened head, a generate() call long) in a block."""

    def __init__(self, model, head: nn.Module):
        self.model = model
        self.head = head
        self.original = None

    def __enter__(self):
        self.original = self.model.lm_head
        self.model.lm_head = self.head
        return self

    def __exit__(self, *exc) -> None:
        self.model.lm_head = self.original


def logits_are_the_head_s(screen: ScreenedHead) -> bool:
    """Whether the model's logits are its head's output (with the soft cap) and nothing else, on a probe: some
    architectures scale them after the head, which the screen's bounds would not know."""
    model, hidden = screen.model, []
    hook = model.lm_head.register_forward_hook(lambda module, inputs, output: hidden.append(inputs[0]))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[1, 2, 3]]) % screen.quantised.weight.shape[0]).logits
    finally:
        hook.remove()
    return len(hidden) == 1 and torch.equal(logits, screen.full_logits(hidden[0]).to(logits.dtype))


def make_screen(model, mode: str, compiled: bool) -> ScreenedHead | None:
    """The screen for `model`, or None where the full head is used (asked for, a GPU, a compiled decode step,
    no fp32 head, a small vocabulary under auto, logits changed after the head, a kernel that fails its check or
    does not pay)."""
    if mode == "full":
        return None
    head = getattr(model, "lm_head", None)
    reason = None
    if compiled:
        reason = "the decode step is compiled"
    elif not isinstance(head, nn.Linear) or head.bias is not None or head.weight.dtype != torch.float32:
        reason = "the head is not a bias-free fp32 Linear"
    elif head.weight.device.type != "cpu":
        reason = f"the head is on {head.weight.device.type}"
    elif not hasattr(torch, "_weight_int8pack_mm"):
        reason = "this torch has no int8 weight-only matmul"
    if reason is None and mode == "auto" and head.weight.shape[0] < MIN_SCREENED_VOCAB:
        reason = f"the vocabulary ({head.weight.shape[0]}) is small"
    if reason is not None:
        return _declined(mode, reason)
    started = time.perf_counter()
    screen = ScreenedHead(model, QuantisedHead.of(head.weight))
    if not logits_are_the_head_s(screen):
        return _declined(mode, "the model changes its logits after the head")
    if not self_check(screen.quantised):
        return _declined(mode, "the int8 kernel exceeds its error bound on this CPU", level=logging.WARNING)
    if mode == "auto" and not pays_off(screen.quantised):
        return _declined(mode, "the int8 screen is not faster on this CPU")
    logger.info("LM head: screened (int8 copy built in %.1f s)", time.perf_counter() - started)
    return screen


def _declined(mode: str, reason: str, level: int = logging.INFO) -> None:
    """No screen: an error where one was asked for, else the full head (logged)."""
    if mode == "screened":
        raise ValueError(f"--mt-lm-head screened is not possible here: {reason}")
    logger.log(level, "LM head: full fp32 (%s)", reason)
    return None


def screened_generate_args(screen: ScreenedHead | None, generation: GenerationConfig, generate_kwargs: dict,
                           n_prompt_tokens: int) -> tuple[GenerationConfig, dict, "InstalledHead | None"]:
    """generate()'s config and kwargs with the screen's session, and the head swap to run it under (None: the
    full head, unchanged arguments)."""
    if screen is None or set(generate_kwargs) - SCREENABLE_KWARGS or not screen.ready():
        return generation, generate_kwargs, None
    merged = screen.merged(generation)
    if merged is None or not ScreenedHead.applies(merged):
        return generation, generate_kwargs, None
    session = screen.session(merged, n_prompt_tokens)
    # The caller's config, not the merged one: generate() merges the model's defaults into it as it would have, and
    # a merged max_length (the model's 20) handed back would read as the caller's and warn on every call. The two
    # processors the session applies are set, not None, so that the model's defaults do not fill them back in; the
    # suppression only where the model has such a default, as generate() turns even [] into a processor that builds
    # a vocabulary-sized mask at every token.
    stripped = copy.deepcopy(generation)
    stripped.repetition_penalty = 1.0
    stripped.begin_suppress_tokens = [] if screen.model.generation_config.begin_suppress_tokens else None
    kwargs = {**generate_kwargs, "logits_processor": LogitsProcessorList([session])}
    return stripped, kwargs, screen.install(session)
