"""The LLM translator: greedy drafts with q/k capture, replay, and the AlignAtt gate.

Works with any decoder-only Hugging Face chat model that runs on sdpa attention (Gemma-4, Gemma-3,
Qwen3, ...). Gemma-4 -it checkpoints load through AutoModelForCausalLM as Gemma4ForConditionalGeneration;
Gemma4ForCausalLM.from_pretrained on them would silently random-initialise the weights.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, StoppingCriteria,
                          StoppingCriteriaList, StopStringCriteria)

from alignatt.mt.capture import HeadRef
from alignatt.mt.decoding import DecodeConfig, Decoder, Request, StopWhen, as_id_list, make_decoder
from alignatt.devices import resolve_device, resolve_dtype
from alignatt.accel.gguf_cache import DEFAULT_CACHE_DIR, converted_checkpoint
from alignatt.policy.guards import (LOOP_STOP_FACTOR, GuardOptions, cut_loop, drop_loop_copies, ends_in_loop,
                             final_pass_budget, hold_sentence_end, trim_repeated_start)
from alignatt.mt.heads import HeadsFile, check_query_row, query_row_position
from alignatt.policy.gate import GateDecision, PolicyConfig, complete_units_text, gate_draft
from alignatt.mt.prompt import PromptBuilder, PromptConfig, RenderedPrompt
from alignatt.mt.replay import DraftAttention, replay, split_draft_attention
from alignatt.text_units import is_char_level, unit_spans

logger = logging.getLogger(__name__)

# End-of-turn tokens of chat templates (Gemma-4, Gemma-3, Qwen/ChatML, Llama-3): a generation_config may omit them.
END_OF_TURN_TOKENS = ("<turn|>", "<end_of_turn>", "<|im_end|>", "<|eot_id|>")


@dataclass(frozen=True)
class TranslatorConfig:
    model_id: str = field(default="google/gemma-4-E4B-it", metadata={"help": "Hugging Face id or local path"})
    revision: str | None = field(default=None, metadata={"help": "model revision (branch, tag or commit)"})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside model_id (dequantised)"})
    gguf_cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={
        "help": "where a local GGUF file is converted once to a regular checkpoint ('' parses the GGUF each load)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float32, float16"})
    max_draft_tokens: int = field(default=16, metadata={"help": "upper bound of a draft"})
    min_draft_tokens: int = field(default=4, metadata={"help": "lower bound of a draft"})
    draft_tokens_over_source: int = field(default=8, metadata={
        "help": "a draft is at most this many tokens longer than the source span"})
    max_final_tokens: int = field(default=160, metadata={
        "help": "bound on finishing a committed sentence (the budget is min(this, max(32, 3 x source tokens + 24)))"})
    repetition_penalty: float = field(default=1.05, metadata={"help": "greedy decoding repetition penalty"})

    def backbone_key(self) -> tuple:
        """The fields that decide which weights are loaded and where (not how they are used)."""
        return (self.model_id, self.revision, self.gguf_file, self.gguf_cache_dir, self.device, self.dtype)

    def draft_budget(self, n_source_tokens: int) -> int:
        return min(self.max_draft_tokens, max(self.min_draft_tokens, n_source_tokens + self.draft_tokens_over_source))


@dataclass(frozen=True)
class DraftResult:
    """One drafting step: what was drafted, what the heads saw, and what was accepted."""

    prompt: RenderedPrompt
    draft_ids: tuple[int, ...]  # generated tokens without the end-of-translation token
    ended: bool  # the draft reached the end of the translation
    may_end: bool  # the end completes the draft's last unit (it ended and the hold_draft_end guard is off)
    attention: DraftAttention | None  # None when the source is empty; row r judges draft token r
    gate: GateDecision
    new_text: str  # accepted text to append to the target prefix, trimmed to whole units


def load_model_and_tokenizer(config: TranslatorConfig):
    """Load the real checkpoint with sdpa attention (the capture wraps sdpa)."""
    device = resolve_device(config.device)
    source, kwargs = config.model_id, {"revision": config.revision}
    if config.gguf_file:
        converted = None
        if config.gguf_cache_dir:
            converted = converted_checkpoint(config.model_id, config.gguf_file, config.gguf_cache_dir)
        source, kwargs = (str(converted), {}) if converted else (source, {**kwargs, "gguf_file": config.gguf_file})
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(config.dtype, device),
                                                 attn_implementation="sdpa", **kwargs)
    return model.to(device).eval(), tokenizer


_PLAIN_END_BY_TOKENIZER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plain_end_criteria(tokenizer, markers: tuple[str, ...]) -> StoppingCriteriaList:
    """Stop where a plain-layout translation ends (`PromptBuilder.plain_end_markers`). Built once per tokenizer and
    markers: transformers would rebuild it from the whole vocabulary on every generate() call given `stop_strings`
    (1.7 s per draft for Gemma-3's 262k tokens on 2 CPU cores), and even a built one costs 1-3 s, which the
    cascades of a sweep worker share."""
    built = _PLAIN_END_BY_TOKENIZER.setdefault(tokenizer, {})
    if markers not in built:
        built[markers] = StoppingCriteriaList([StopStringCriteria(tokenizer, list(markers))])
    return built[markers]


class _LoopStop(StoppingCriteria):
    """Ends a generation whose text ends with one group of units `repeats` times in a row (see guards)."""

    def __init__(self, text_of: Callable[[list[int]], str], n_prompt_tokens: int, char_level: bool, repeats: int):
        self.text_of = text_of
        self.n_prompt_tokens = n_prompt_tokens
        self.char_level = char_level
        self.repeats = repeats

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        looping = ends_in_loop(self.text_of(input_ids[0, self.n_prompt_tokens:].tolist()), self.char_level,
                               self.repeats)
        return torch.full((input_ids.shape[0],), looping, dtype=torch.bool, device=input_ids.device)


class Translator:
    """Drafts translations of a growing source prefix and keeps the part the heads say is safe."""

    def __init__(self, model, tokenizer, heads: Sequence[HeadRef], prompt_config: PromptConfig = PromptConfig(),
                 config: TranslatorConfig = TranslatorConfig(), policy_config: PolicyConfig = PolicyConfig(),
                 few_shot: Sequence[tuple[str, str]] = (), decode_config: DecodeConfig = DecodeConfig(),
                 guards: GuardOptions = GuardOptions(), query_row: str = "own", decoder: Decoder | None = None):
        """`decoder`: one already built for this model, heads and decode config (shared by the cascades of a
        sweep worker, so static buffers and compiled graphs are built once); None builds one."""
        check_query_row(query_row)
        self.model = model
        self.tokenizer = tokenizer
        self.heads = tuple(heads)
        self.config = config
        self.policy_config = policy_config
        self.guards = guards
        # Which attention row judges draft token t: its own position ("own", as the published heads were scored)
        # or the position that predicts it ("predicting"). Heads must be read on the rows they were scored on.
        self.query_row = query_row
        self.prompts = PromptBuilder(tokenizer, prompt_config, few_shot)
        self.char_level = is_char_level(prompt_config.target_lang)
        self._eos_ids = self._end_token_ids()
        # Built here, with the models, not on the first draft: it walks the whole vocabulary once (4 s for
        # Gemma-3's 262k tokens on 2 CPU cores), time a talk's first step should not pay.
        self._plain_end = (plain_end_criteria(tokenizer, self.prompts.plain_end_markers())
                           if prompt_config.style == "plain" else None)
        self.decoder = decoder if decoder is not None else make_decoder(model, self.heads, decode_config)

    @classmethod
    def from_pretrained(cls, config: TranslatorConfig, heads_file: HeadsFile, prompt_config: PromptConfig,
                        policy_config: PolicyConfig = PolicyConfig(), few_shot: Sequence[tuple[str, str]] = (),
                        decode_config: DecodeConfig = DecodeConfig(), guards: GuardOptions = GuardOptions()
                        ) -> "Translator":
        model, tokenizer = load_model_and_tokenizer(config)
        heads_file.check_fits(model.config, config.model_id, config.gguf_file)
        return cls(model, tokenizer, heads_file.selected(), prompt_config, config, policy_config, few_shot,
                   decode_config, guards, heads_file.query_row)

    def _end_token_ids(self) -> list[int]:
        """EOS ids of the generation config and the tokenizer, plus the template's end-of-turn token."""
        ids = as_id_list(self.model.generation_config.eos_token_id)
        candidates = [self.tokenizer.eos_token_id] + [self._vocab_id(token) for token in END_OF_TURN_TOKENS]
        ids += [i for i in candidates if i is not None and i not in ids]
        return ids

    def _vocab_id(self, token: str) -> int | None:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            return None
        return token_id

    def _line_break_ids(self) -> list[int]:
        """Tokens that are a line break on their own (the end of a plain-style translation)."""
        ids = {i for text in ("\n", "\n\n") for i in self.tokenizer.encode(text, add_special_tokens=False)}
        return sorted(i for i in ids if self.tokenizer.decode([i]).strip() == "")

    def _generation_config(self, max_new_tokens: int, must_continue: bool = False) -> GenerationConfig:
        """Greedy; `must_continue` forbids ending the translation with the first new token."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._eos_ids[0]
        suppress = None
        if must_continue:
            suppress = self._eos_ids + (self._line_break_ids() if self.prompts.config.style == "plain" else [])
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                repetition_penalty=self.config.repetition_penalty,
                                eos_token_id=self._eos_ids, pad_token_id=pad, begin_suppress_tokens=suppress)

    def warm_up(self) -> None:
        """Compile the decoder's graphs now (compiled decoding only) rather than on the first draft."""
        filler = self.prompts.render("This sentence only warms up the translator.", "", None)
        self.decoder.warm_up(filler.input_ids, self._generation_config(self.config.max_draft_tokens))

    def _generate(self, prompt: RenderedPrompt, max_new_tokens: int, capture: bool, must_continue: bool = False,
                  stop_when: StopWhen | None = None, criteria: Sequence[StoppingCriteria] = ()):
        generation = self._generation_config(max_new_tokens, must_continue)
        criteria = [*(self._plain_end or ()), *criteria]  # base models: one line per translation
        kwargs = {"stopping_criteria": StoppingCriteriaList(criteria)} if criteria else {}
        return self.decoder.generate(Request(
            input_ids=prompt.input_ids, generation=generation,
            capture_from=prompt.n_tokens - 1 if capture else None, generate_kwargs=kwargs, stop_when=stop_when))

    def continuation_text(self, prompt: RenderedPrompt, token_ids: Sequence[int]) -> str:
        """Text that `token_ids` add after the prompt (decoded with the prompt's last token as anchor, so
        leading spaces survive tokenizers that strip them at the start of a decode)."""
        anchor = list(prompt.input_ids[-1:])
        base = self.tokenizer.decode(anchor, skip_special_tokens=True)
        full = self.tokenizer.decode(anchor + list(token_ids), skip_special_tokens=True)
        text = full[len(base):] if full.startswith(base) else self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return text

    def _split_end(self, prompt: RenderedPrompt, generated: list[int]) -> tuple[list[int], bool]:
        """Drop the end-of-translation token (for plain prompts: the tokens from the line break or label that ends
        the translation on) and say if it came."""
        markers = self.prompts.plain_end_markers() if self.prompts.config.style == "plain" else ()
        for i, token in enumerate(generated):
            if token in self._eos_ids:
                return generated[:i], True
            text = self.continuation_text(prompt, generated[: i + 1]) if markers else ""
            ends = [text.find(marker) for marker in markers if marker in text]
            if ends:  # the tokens that end before the marker (a label spans tokens: " German", ":")
                kept = next(j for j in range(i, -1, -1)
                            if len(self.continuation_text(prompt, generated[:j])) <= min(ends))
                return generated[:kept], True
        return generated, False

    def draft(self, source: str, n_accessible_units: int, target_prefix: str = "",
              history: Sequence[tuple[str, str]] = (), until_rejected: bool = False,
              max_units: int | None = None) -> DraftResult:
        """Draft after `target_prefix` for the live `source` and accept what the gate allows.

        Generation may stop early, where nothing after could change what a policy writes: `until_rejected` at
        the first token the gate stops (the gate is causal: a token's verdict never depends on later tokens);
        `max_units` once the draft has started more than that many target units (its first `max_units` units
        are then complete).
        """
        prompt = self.prompts.render(source, target_prefix, n_accessible_units, history)
        if prompt.n_units == 0:
            return DraftResult(prompt, (), False, False, None, GateDecision(0, ()), "")
        budget = self.config.draft_budget(len(prompt.source_token_positions))
        stop_when = self._early_stop(prompt, n_accessible_units, until_rejected, max_units)
        generated = self._generate(prompt, budget, capture=True, stop_when=stop_when)
        draft_ids, ended = self._split_end(prompt, generated.token_ids)
        attention, gate = self._judge(prompt, generated.captured, len(draft_ids), n_accessible_units)
        may_end = ended and not self.guards.hold_draft_end
        new_text = self._accepted_text(prompt, draft_ids, gate.n_accepted_tokens, may_end)
        new_text = cut_loop(prompt.target_prefix, new_text, self.char_level, self.guards.loop_repeats)
        if self.guards.hold_sentence_end:
            new_text = hold_sentence_end(new_text, self.char_level)
        return DraftResult(prompt, tuple(draft_ids), ended, may_end, attention, gate, new_text)

    def _judge(self, prompt: RenderedPrompt, captured, n_draft_tokens: int, n_accessible_units: int
               ) -> tuple[DraftAttention, GateDecision]:
        """Replay the heads on the draft rows captured so far and gate the first `n_draft_tokens` tokens."""
        first_row = query_row_position(prompt.n_tokens, self.query_row)  # the row judging the first draft token
        attention = split_draft_attention(replay(captured, self.heads), prompt.source_token_positions,
                                          prompt.source_accessible_mask(), first_row=first_row,
                                          draft_start=prompt.n_tokens)
        # Under "own" the last generated token was never fed back, so it has no row: it is never judged, and
        # waits for the next draft (it is the end of the draft, usually an incomplete unit anyway).
        n_rows = min(n_draft_tokens, attention.n_rows)
        if n_rows == 0:
            return attention, GateDecision(0, ())
        gate = gate_draft(attention.source[:, :n_rows], prompt.source_token_units,
                          attention.mass_inaccessible[:, :n_rows], n_accessible_units, self.policy_config)
        return attention, gate

    def _early_stop(self, prompt: RenderedPrompt, n_accessible_units: int, until_rejected: bool,
                    max_units: int | None) -> StopWhen | None:
        if not until_rejected and max_units is None:
            return None

        def stop(captured, token_ids: list[int]) -> bool:
            if max_units is not None:
                text = self.continuation_text(prompt, token_ids)
                if len(unit_spans(text, self.char_level)) > max_units:
                    return True
            if until_rejected:
                gate = self._judge(prompt, captured, len(token_ids), n_accessible_units)[1]
                return bool(gate.verdicts) and not gate.verdicts[-1].accepted
            return False
        return stop

    def describe_stop(self, result: DraftResult) -> str:
        """The token that stopped the draft and the source unit it looked at ("" when nothing stopped it)."""
        verdicts = result.gate.verdicts
        if not verdicts or verdicts[-1].accepted:
            return ""
        verdict, prompt = verdicts[-1], result.prompt
        token = self.tokenizer.decode([result.draft_ids[result.gate.n_accepted_tokens]])
        unit = min(int(verdict.aligned_unit), prompt.n_units - 1)
        return (f"{token!r} looks at unit {verdict.aligned_unit:g} {prompt.unit_text(unit)!r}, "
                f"frontier {prompt.n_accessible_units}")

    def _accepted_text(self, prompt: RenderedPrompt, draft_ids: list[int], n_accepted: int, may_end: bool) -> str:
        accepted = self.continuation_text(prompt, draft_ids[:n_accepted])
        if n_accepted < len(draft_ids):
            continuation = self.continuation_text(prompt, draft_ids[: n_accepted + 1])[len(accepted):]
        else:
            continuation = "" if may_end else None
        return complete_units_text(accepted, continuation, self.char_level)

    def finish(self, source: str, target_prefix: str = "", history: Sequence[tuple[str, str]] = (),
               must_continue: bool = False) -> str:
        """Translate a committed sentence to the end, without the gate, continuing after `target_prefix`.

        `must_continue`: the accepted text ended a sentence before the whole source was heard, so the
        translation may not end right there (its first token cannot end it).
        """
        prompt = self.prompts.render(source, target_prefix, None, history)
        if prompt.n_units == 0:
            return ""
        budget = final_pass_budget(len(prompt.source_token_positions), self.config.max_final_tokens)
        criteria = ()
        if self.guards.loop_repeats:
            # Copies already written count, as they do when the copies are dropped below.
            criteria = (_LoopStop(lambda ids: prompt.target_prefix + self.continuation_text(prompt, ids),
                                  prompt.n_tokens, self.char_level, LOOP_STOP_FACTOR * self.guards.loop_repeats),)
        generated = self._generate(prompt, budget, capture=False, must_continue=must_continue, criteria=criteria)
        draft_ids, _ = self._split_end(prompt, generated.token_ids)
        text = self.continuation_text(prompt, draft_ids).rstrip()
        text = trim_repeated_start(prompt.target_prefix, text, self.char_level, self.guards.min_repeat_units)
        return drop_loop_copies(prompt.target_prefix, text, self.char_level, self.guards.loop_repeats)
