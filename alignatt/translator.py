"""The LLM translator: greedy drafts with q/k capture, replay, and the AlignAtt gate.

Works with any decoder-only Hugging Face chat model that runs on sdpa attention (Gemma-4, Gemma-3,
Qwen3, ...). Gemma-4 -it checkpoints load through AutoModelForCausalLM as Gemma4ForConditionalGeneration;
Gemma4ForCausalLM.from_pretrained on them would silently random-initialise the weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from alignatt.capture import HeadRef
from alignatt.decoding import DecodeConfig, Request, make_decoder
from alignatt.devices import resolve_device, resolve_dtype
from alignatt.heads import HeadsFile
from alignatt.policy import GateDecision, PolicyConfig, complete_units_text, gate_draft
from alignatt.prompt import PromptBuilder, PromptConfig, RenderedPrompt
from alignatt.replay import DraftAttention, replay, split_draft_attention
from alignatt.text_units import is_char_level

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranslatorConfig:
    model_id: str = field(default="google/gemma-4-E4B-it", metadata={"help": "Hugging Face id or local path"})
    revision: str | None = field(default=None, metadata={"help": "model revision (branch, tag or commit)"})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside model_id (dequantised)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float32, float16"})
    max_draft_tokens: int = field(default=16, metadata={"help": "upper bound of a draft"})
    min_draft_tokens: int = field(default=4, metadata={"help": "lower bound of a draft"})
    draft_tokens_over_source: int = field(default=8, metadata={
        "help": "a draft is at most this many tokens longer than the source span"})
    max_final_tokens: int = field(default=160, metadata={"help": "bound on finishing a committed sentence"})
    repetition_penalty: float = field(default=1.05, metadata={"help": "greedy decoding repetition penalty"})

    def draft_budget(self, n_source_tokens: int) -> int:
        return min(self.max_draft_tokens, max(self.min_draft_tokens, n_source_tokens + self.draft_tokens_over_source))


@dataclass(frozen=True)
class DraftResult:
    """One drafting step: what was drafted, what the heads saw, and what was accepted."""

    prompt: RenderedPrompt
    draft_ids: tuple[int, ...]  # generated tokens without the end-of-translation token
    ended: bool  # the draft reached the end of the translation
    attention: DraftAttention | None  # None when the source is empty
    gate: GateDecision
    new_text: str  # accepted text to append to the target prefix, trimmed to whole units


def load_model_and_tokenizer(config: TranslatorConfig):
    """Load the real checkpoint with sdpa attention (the capture wraps sdpa)."""
    device = resolve_device(config.device)
    kwargs = {"revision": config.revision}
    if config.gguf_file:
        kwargs["gguf_file"] = config.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(config.model_id, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(config.model_id, dtype=resolve_dtype(config.dtype, device),
                                                 attn_implementation="sdpa", **kwargs)
    return model.to(device).eval(), tokenizer


class Translator:
    """Drafts translations of a growing source prefix and keeps the part the heads say is safe."""

    def __init__(self, model, tokenizer, heads: Sequence[HeadRef], prompt_config: PromptConfig = PromptConfig(),
                 config: TranslatorConfig = TranslatorConfig(), policy_config: PolicyConfig = PolicyConfig(),
                 few_shot: Sequence[tuple[str, str]] = (), decode_config: DecodeConfig = DecodeConfig()):
        self.model = model
        self.tokenizer = tokenizer
        self.heads = tuple(heads)
        self.config = config
        self.policy_config = policy_config
        self.prompts = PromptBuilder(tokenizer, prompt_config, few_shot)
        self.char_level = is_char_level(prompt_config.target_lang)
        self._eos_ids = self._end_token_ids()
        self.decoder = make_decoder(model, self.heads, decode_config)

    @classmethod
    def from_pretrained(cls, config: TranslatorConfig, heads_file: HeadsFile, prompt_config: PromptConfig,
                        policy_config: PolicyConfig = PolicyConfig(), few_shot: Sequence[tuple[str, str]] = (),
                        decode_config: DecodeConfig = DecodeConfig()) -> "Translator":
        model, tokenizer = load_model_and_tokenizer(config)
        heads_file.check_fits(model.config, config.model_id)
        return cls(model, tokenizer, heads_file.selected(), prompt_config, config, policy_config, few_shot,
                   decode_config)

    def _end_token_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _generation_config(self, max_new_tokens: int) -> GenerationConfig:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._eos_ids[0]
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                repetition_penalty=self.config.repetition_penalty,
                                eos_token_id=self._eos_ids, pad_token_id=pad)

    def warm_up(self) -> None:
        """Compile the decoder's graphs now (compiled decoding only) rather than on the first draft."""
        filler = self.prompts.render("This sentence only warms up the translator.", "", None)
        self.decoder.warm_up(filler.input_ids, self._generation_config(self.config.max_draft_tokens))

    def _generate(self, prompt: RenderedPrompt, max_new_tokens: int, capture: bool):
        generation = self._generation_config(max_new_tokens)
        kwargs = {}
        if self.prompts.config.style == "plain":  # base models: one line per translation
            kwargs = {"stop_strings": ["\n"], "tokenizer": self.tokenizer}
        return self.decoder.generate(Request(
            input_ids=prompt.input_ids, generation=generation,
            capture_from=prompt.n_tokens - 1 if capture else None, generate_kwargs=kwargs))

    def continuation_text(self, prompt: RenderedPrompt, token_ids: Sequence[int]) -> str:
        """Text that `token_ids` add after the prompt (decoded with the prompt's last token as anchor, so
        leading spaces survive tokenizers that strip them at the start of a decode)."""
        anchor = list(prompt.input_ids[-1:])
        base = self.tokenizer.decode(anchor, skip_special_tokens=True)
        full = self.tokenizer.decode(anchor + list(token_ids), skip_special_tokens=True)
        text = full[len(base):] if full.startswith(base) else self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return text

    def _split_end(self, prompt: RenderedPrompt, generated: list[int]) -> tuple[list[int], bool]:
        """Drop the end-of-translation token (or, for plain prompts, the line break) and say if it came."""
        for i, token in enumerate(generated):
            if token in self._eos_ids:
                return generated[:i], True
            if self.prompts.config.style == "plain" and "\n" in self.continuation_text(prompt, generated[: i + 1]):
                return generated[:i], True
        return generated, False

    def draft(self, source: str, n_accessible_units: int, target_prefix: str = "",
              history: Sequence[tuple[str, str]] = ()) -> DraftResult:
        """Draft after `target_prefix` for the live `source` and accept what the gate allows."""
        prompt = self.prompts.render(source, target_prefix, n_accessible_units, history)
        if prompt.n_units == 0:
            return DraftResult(prompt, (), False, None, GateDecision(0, ()), "")
        budget = self.config.draft_budget(len(prompt.source_token_positions))
        generated = self._generate(prompt, budget, capture=True)
        draft_ids, ended = self._split_end(prompt, generated.token_ids)
        attention = split_draft_attention(replay(generated.captured, self.heads), prompt.source_token_positions,
                                          prompt.source_accessible_mask(), draft_start=prompt.n_tokens)
        n_rows = len(draft_ids)
        gate = gate_draft(attention.source[:, :n_rows], prompt.source_token_units,
                          attention.mass_inaccessible[:, :n_rows], n_accessible_units, self.policy_config)
        new_text = self._accepted_text(prompt, draft_ids, gate.n_accepted_tokens, ended)
        return DraftResult(prompt, tuple(draft_ids), ended, attention, gate, new_text)

    def _accepted_text(self, prompt: RenderedPrompt, draft_ids: list[int], n_accepted: int, ended: bool) -> str:
        accepted = self.continuation_text(prompt, draft_ids[:n_accepted])
        if n_accepted < len(draft_ids):
            continuation = self.continuation_text(prompt, draft_ids[: n_accepted + 1])[len(accepted):]
        else:
            continuation = "" if ended else None
        return complete_units_text(accepted, continuation, self.char_level)

    def finish(self, source: str, target_prefix: str = "", history: Sequence[tuple[str, str]] = ()) -> str:
        """Translate a committed sentence to the end, without the gate, continuing after `target_prefix`."""
        prompt = self.prompts.render(source, target_prefix, None, history)
        if prompt.n_units == 0:
            return ""
        generated = self._generate(prompt, self.config.max_final_tokens, capture=False)
        draft_ids, _ = self._split_end(prompt, generated.token_ids)
        return self.continuation_text(prompt, draft_ids).rstrip()
