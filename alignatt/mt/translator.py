"""The LLM translator: greedy drafts with q/k capture, and where each draft token looks (`alignatt.mt.alignment`).

It drafts and reports; what is written is decided by `alignatt.policy`, which may stop a draft early through a
per-token stop rule.

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
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, StopStringCriteria

from alignatt.mt.alignment import AlignmentConfig, AlignmentReader, TokenAlignment
from alignatt.mt.capture import HeadRef
from alignatt.mt.decoding import (DecodeAccel, DecodeConfig, Decoder, Generated, Request, StopWhen, as_id_list,
                                  make_decoder)
from alignatt.mt.loading import DEFAULT_GGUF_CACHE_DIR, ResolveCheckpoint, load_model_and_tokenizer
from alignatt.mt.heads import HeadsFile, check_query_row
from alignatt.mt.prompt import PromptBuilder, PromptConfig, RenderedPrompt
from alignatt.mt.replay import DraftAttention
from alignatt.text_units import is_char_level, unit_spans

logger = logging.getLogger(__name__)

# End-of-turn tokens of chat templates (Gemma-4, Gemma-3, Qwen/ChatML, Llama-3): a generation_config may omit them.
END_OF_TURN_TOKENS = ("<turn|>", "<end_of_turn>", "<|im_end|>", "<|eot_id|>")


@dataclass(frozen=True)
class TranslatorConfig:
    model_id: str = field(default="google/gemma-4-E4B-it", metadata={"help": "Hugging Face id or local path"})
    revision: str | None = field(default=None, metadata={"help": "model revision (branch, tag or commit)"})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside model_id (dequantised)"})
    gguf_cache_dir: str = field(default=DEFAULT_GGUF_CACHE_DIR, metadata={
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

    def final_budget(self, n_source_tokens: int) -> int:
        """Token budget for finishing a committed sentence: grows with the source, bounded by max_final_tokens."""
        return min(self.max_final_tokens, max(32, 3 * n_source_tokens + 24))


@dataclass(frozen=True)
class DraftResult:
    """One drafting step: what was drafted and where each drafted token looks."""

    prompt: RenderedPrompt
    draft_ids: tuple[int, ...]  # generated tokens without the end-of-translation token
    ended: bool  # the draft reached the end of the translation
    attention: DraftAttention | None  # the rows read (None: none); row r is read for draft token r
    alignments: tuple[TokenAlignment, ...]  # one per read row: every draft token that has a row, or up to a stop


# Stops a draft after the token whose alignment it is given (the policy's rule, e.g. the AlignAtt gate).
TokenStop = Callable[[TokenAlignment], bool]


@dataclass(frozen=True)
class DraftCall:
    """The arguments of one `Translator.draft`."""

    source: str
    n_accessible_units: int
    target_prefix: str = ""
    history: tuple[tuple[str, str], ...] = ()
    stop_at: TokenStop | None = None
    max_units: int | None = None


@dataclass(frozen=True)
class PreparedDraft:
    """A draft waiting for its generation: the prompt, the reader of its rows (which the request's stop callback
    also reads) and the generation request."""

    prompt: RenderedPrompt
    reader: AlignmentReader
    request: Request


_PLAIN_END_BY_TOKENIZER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plain_end_criteria(tokenizer, markers: tuple[str, ...]) -> StoppingCriteriaList:
    """Stop where a plain-layout translation ends (`PromptBuilder.plain_end_markers`). Built once per tokenizer and
    markers: transformers would rebuild it from the whole vocabulary on every generate() call given `stop_strings`
    (for Gemma-3's 262k tokens, longer than the draft itself on a small CPU), and even building it once is costly,
    so the cascades of a sweep worker share it."""
    built = _PLAIN_END_BY_TOKENIZER.setdefault(tokenizer, {})
    if markers not in built:
        built[markers] = StoppingCriteriaList([StopStringCriteria(tokenizer, list(markers))])
    return built[markers]


class _TextStop(StoppingCriteria):
    """Ends a generation once `stop(text)` holds for the text written so far (what the policy's final pass
    rules out, e.g. a degenerate loop)."""

    def __init__(self, text_of: Callable[[list[int]], str], n_prompt_tokens: int, stop: Callable[[str], bool]):
        self.text_of = text_of
        self.n_prompt_tokens = n_prompt_tokens
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        stop = self.stop(self.text_of(input_ids[0, self.n_prompt_tokens:].tolist()))
        return torch.full((input_ids.shape[0],), bool(stop), dtype=torch.bool, device=input_ids.device)


class Translator:
    """Drafts translations of a growing source prefix and reports where each draft token looks."""

    def __init__(self, model, tokenizer, heads: Sequence[HeadRef], prompt_config: PromptConfig = PromptConfig(),
                 config: TranslatorConfig = TranslatorConfig(), alignment_config: AlignmentConfig = AlignmentConfig(),
                 few_shot: Sequence[tuple[str, str]] = (), decode_config: DecodeConfig = DecodeConfig(),
                 query_row: str = "own", decoder: Decoder | None = None, accel: DecodeAccel | None = None):
        """`decoder`: one already built for this model, heads and decode config (shared by the cascades of a
        sweep worker, so static buffers and compiled graphs are built once); None builds one, with the hooks
        `accel` gives (see `make_decoder`)."""
        check_query_row(query_row)
        self.model = model
        self.tokenizer = tokenizer
        self.heads = tuple(heads)
        self.config = config
        self.alignment_config = alignment_config
        # Which attention row judges draft token t: its own position ("own", as the published heads were scored)
        # or the position that predicts it ("predicting"). Heads must be read on the rows they were scored on.
        self.query_row = query_row
        self.prompts = PromptBuilder(tokenizer, prompt_config, few_shot)
        self.char_level = is_char_level(prompt_config.target_lang)
        self._eos_ids = self._end_token_ids()
        # Built here, with the models, not on the first draft: it walks the whole vocabulary once (262k tokens for
        # Gemma-3), time a talk's first step should not pay.
        self._plain_end = (plain_end_criteria(tokenizer, self.prompts.plain_end_markers())
                           if prompt_config.style == "plain" else None)
        self.decoder = decoder if decoder is not None else make_decoder(model, self.heads, decode_config, accel)

    @classmethod
    def from_pretrained(cls, config: TranslatorConfig, heads_file: HeadsFile, prompt_config: PromptConfig,
                        alignment_config: AlignmentConfig = AlignmentConfig(),
                        few_shot: Sequence[tuple[str, str]] = (), decode_config: DecodeConfig = DecodeConfig(),
                        accel: DecodeAccel | None = None, resolve_checkpoint: ResolveCheckpoint | None = None
                        ) -> "Translator":
        """`accel`, `resolve_checkpoint`: the hooks of `make_decoder` and `load_model_and_tokenizer`."""
        model, tokenizer = load_model_and_tokenizer(config, resolve_checkpoint)
        heads_file.check_fits(model.config, config.model_id, config.gguf_file)
        return cls(model, tokenizer, heads_file.selected(), prompt_config, config, alignment_config, few_shot,
                   decode_config, heads_file.query_row, accel=accel)

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

    def _request(self, prompt: RenderedPrompt, max_new_tokens: int, capture: bool, must_continue: bool = False,
                 stop_when: StopWhen | None = None, criteria: Sequence[StoppingCriteria] = ()) -> Request:
        generation = self._generation_config(max_new_tokens, must_continue)
        criteria = [*(self._plain_end or ()), *criteria]  # base models: one line per translation
        kwargs = {"stopping_criteria": StoppingCriteriaList(criteria)} if criteria else {}
        return Request(input_ids=prompt.input_ids, generation=generation,
                       capture_from=prompt.n_tokens - 1 if capture else None, generate_kwargs=kwargs,
                       stop_when=stop_when)

    def _generate(self, prompt: RenderedPrompt, max_new_tokens: int, capture: bool, must_continue: bool = False,
                  stop_when: StopWhen | None = None, criteria: Sequence[StoppingCriteria] = ()) -> Generated:
        return self.decoder.generate(self._request(prompt, max_new_tokens, capture, must_continue, stop_when,
                                                   criteria))

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
              history: Sequence[tuple[str, str]] = (), stop_at: TokenStop | None = None,
              max_units: int | None = None) -> DraftResult:
        """Draft after `target_prefix` for the live `source` and read where each draft token looks.

        Generation may stop early, where nothing after could change what a policy writes: after the first token
        `stop_at` stops (read as soon as its row is captured; a token's alignment never depends on later
        tokens), and once the draft has started more than `max_units` target units (its first `max_units` units
        are then complete).
        """
        return self.draft_call(DraftCall(source, n_accessible_units, target_prefix, tuple(history), stop_at,
                                         max_units))

    def draft_call(self, call: DraftCall) -> DraftResult:
        """`draft` for one `DraftCall`, on this translator's own decoder."""
        prepared = self.prepare_draft(call)
        if isinstance(prepared, DraftResult):
            return prepared
        return self.complete_draft(prepared, self.decoder.generate(prepared.request))

    def prepare_draft(self, call: DraftCall) -> PreparedDraft | DraftResult:
        """The generation a draft needs (a DraftResult at once when there is nothing to draft); a decoder runs
        its request, alone (`draft_call`) or batched with other sessions' (`alignatt.mt.batching`)."""
        prompt = self.prompts.render(call.source, call.target_prefix, call.n_accessible_units, call.history)
        if prompt.n_units == 0:
            return DraftResult(prompt, (), False, None, ())
        reader = AlignmentReader(prompt, self.heads, self.query_row, self.alignment_config)
        budget = self.config.draft_budget(len(prompt.source_token_positions))
        request = self._request(prompt, budget, capture=True,
                                stop_when=self._early_stop(prompt, reader, call.stop_at, call.max_units))
        return PreparedDraft(prompt, reader, request)

    def complete_draft(self, prepared: PreparedDraft, generated: Generated) -> DraftResult:
        """The draft and its alignments from the generation of a prepared draft."""
        draft_ids, ended = self._split_end(prepared.prompt, generated.token_ids)
        alignments = prepared.reader.read(generated.captured, len(draft_ids))[:len(draft_ids)]
        attention = prepared.reader.attention.first_rows(len(alignments)) if alignments else None
        return DraftResult(prepared.prompt, tuple(draft_ids), ended, attention, alignments)

    def _early_stop(self, prompt: RenderedPrompt, reader: AlignmentReader, stop_at: TokenStop | None,
                    max_units: int | None) -> StopWhen | None:
        if stop_at is None and max_units is None:
            return None

        def stop(captured, token_ids: list[int]) -> bool:
            if max_units is not None:
                text = self.continuation_text(prompt, token_ids)
                if len(unit_spans(text, self.char_level)) > max_units:
                    return True
            if stop_at is not None:
                n_read = len(reader.alignments)
                return any(map(stop_at, reader.read(captured, len(token_ids))[n_read:]))
            return False
        return stop

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def finish(self, source: str, target_prefix: str = "", history: Sequence[tuple[str, str]] = (),
               must_continue: bool = False, stop_text: Callable[[str], bool] | None = None) -> str:
        """Translate a committed sentence to the end, without any gate, continuing after `target_prefix`.

        `must_continue`: the translation may not end with its first token. `stop_text`: ends the pass once it holds
        for the sentence's text so far (`target_prefix` and the pass's own).
        """
        prompt = self.prompts.render(source, target_prefix, None, history)
        if prompt.n_units == 0:
            return ""
        budget = self.config.final_budget(len(prompt.source_token_positions))
        criteria = ()
        if stop_text is not None:
            criteria = (_TextStop(lambda ids: prompt.target_prefix + self.continuation_text(prompt, ids),
                                  prompt.n_tokens, stop_text),)
        generated = self._generate(prompt, budget, capture=False, must_continue=must_continue, criteria=criteria)
        draft_ids, _ = self._split_end(prompt, generated.token_ids)
        return self.continuation_text(prompt, draft_ids).rstrip()
